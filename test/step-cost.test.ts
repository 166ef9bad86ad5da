// Planning steps by predicted time: the cost model on its own, the scheduler under a synthetic
// cost, and the engine keeping a stream's gaps small while a long prompt arrives.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockAllocator } from '../src/engine/kv-cache.js';
import { KvCacheManager } from '../src/engine/kv-cache-manager.js';
import { MIN_PREFILL_CHUNK, Scheduler, Sequence } from '../src/engine/scheduler.js';
import { StepCostModel, attendedBy, growth, plus, rowShape, type StepCost, type StepShape } from '../src/engine/step-cost.js';
import { events, request } from './helpers/engine-run.js';
import { startTestEngine } from './helpers/serving.js';

// A decode row's key costs five times a chunk's query-key pair, as in the exact graph (step-cost.ts).
const truth = (s: StepShape) => 20 + 0.5 * s.tokens + 0.0001 * s.attended + 0.00002 * (s.chunkAttended ?? 0);
/** A plan's rows as one step shape. */
const stepShape = (rows: ReadonlyArray<{ start: number; count: number }>): StepShape => rows.reduce<StepShape>((s, r) => plus(s, rowShape(r.start, r.count)), { tokens: 0, attended: 0 });

test('cost model: least squares on calibration runs recovers a linear cost; online updates follow a change', () => {
  const m = new StepCostModel();
  assert.equal(m.predictMs(rowShape(0, 512)), 0, 'before any timing it predicts 0: plan by tokens only');
  const shapes: StepShape[] = [
    { tokens: 1, attended: 17 },
    { tokens: 8, attended: 8 * 257 },
    { tokens: 32, attended: 32 * 257 },
    rowShape(0, 32),
    rowShape(0, 128),
    rowShape(0, 512),
    { tokens: 10, attended: 0, chunkAttended: 2 * attendedBy(256, 5), chunkPast: 512 },
  ];
  m.fit(shapes.map((shape) => ({ shape, ms: truth(shape) })));
  for (const s of [...shapes, { tokens: 64, attended: 50_000 }, plus({ tokens: 8, attended: 8 * 300 }, rowShape(40, 200))]) assert.ok(Math.abs(m.predictMs(s) - truth(s)) < 0.5, `${JSON.stringify(s)}: ${m.predictMs(s)}`);
  // The machine gets twice as slow: predictions follow within a few dozen steps.
  for (let k = 0; k < 200; k++) {
    const s = shapes[k % shapes.length]!;
    m.observe(s, 2 * truth(s));
  }
  const s = plus({ tokens: 20, attended: 20_000 }, rowShape(0, 80));
  assert.ok(Math.abs(m.predictMs(s) - 2 * truth(s)) / (2 * truth(s)) < 0.05, `${m.predictMs(s)} vs ${2 * truth(s)}`);
});

test('cost model: a fit on cold calibration runs never predicts that more tokens cost less', () => {
  // Start-up runs timed on a server as they were before each shape was run twice: the first run of
  // a shape faults in its KV pages (32 rows at 256 cached tokens: 2066 ms, ~190 ms warm). The
  // unconstrained least-squares fit on them predicted 0 ms for a 512-token prefill.
  const cold: Array<[number, number, number]> = [
    [1, 17, 32], [1, 257, 97], [8, 136, 108], [8, 2056, 510], [32, 544, 321], [32, 8224, 2066],
    [32, attendedBy(0, 32), 71], [128, attendedBy(0, 128), 194], [512, attendedBy(0, 512), 1154],
  ];
  const m = new StepCostModel();
  m.fit(cold.map(([tokens, attended, ms]) => ({ shape: { tokens, attended }, ms })));
  const one = m.predictMs({ tokens: 1, attended: 17 });
  for (const shape of [{ tokens: 512, attended: 16_641 }, { tokens: 400, attended: 14_000 }, { tokens: 32, attended: 4_800 }]) {
    assert.ok(m.predictMs(shape) >= one, `${JSON.stringify(shape)}: ${m.predictMs(shape)} ms < one row's ${one} ms`);
  }
});

let arrival = 0;
const seq = (id: string, len: number, maxOutput = Infinity) =>
  new Sequence(id, 0, Array.from({ length: len }, (_, i) => i + 1), len, arrival++, maxOutput);
const exact: StepCost = { predictMs: truth };

function decodingScheduler(maxStepMs: number | 'auto', streams = 8, maxOutput = Infinity) {
  const s = new Scheduler({ maxNumSeqs: 16, maxNumBatchedTokens: 512, blockSize: 16, maxStepMs }, new KvCacheManager(new BlockAllocator(400), 16));
  for (let i = 0; i < streams; i++) s.add(seq(`d${i}`, 20, maxOutput));
  // Prefill them, then give each its sampled token: they now decode one token per step.
  const plan = s.schedule();
  s.commit(plan);
  for (const r of plan.rows) r.seq.tokens.push(7);
  return s;
}

test('scheduler: with streams decoding, a long prompt is spread over steps that fit the time cap', () => {
  const s = decodingScheduler(60);
  s.add(seq('long', 600));
  const plan = s.schedule(exact);
  const decode = plan.rows.filter((r) => r.count === 1);
  const prefill = plan.rows.find((r) => r.seq.requestId === 'long')!;
  assert.equal(decode.length, 8, 'every stream decodes');
  const shape = stepShape(plan.rows);
  assert.ok(truth(shape) <= 60, `predicted ${truth(shape)} ms`);
  assert.ok(prefill.count > MIN_PREFILL_CHUNK && prefill.count < 600, `chunk ${prefill.count}`);
  // One more token would not have fitted.
  assert.ok(truth(plus(shape, growth(prefill.start, prefill.count))) > 60);
});

test("scheduler: 'auto' caps a step at twice a decode step of the batch being formed; without streams only the token budget applies", () => {
  const s = decodingScheduler('auto');
  s.add(seq('long', 600));
  const plan = s.schedule(exact);
  // 8 streams decode at 21 attended tokens each; with the queued prompt the batch becomes 9 rows.
  const settled = { tokens: 9, attended: 9 * 21 };
  const shape = stepShape(plan.rows);
  const prefill = plan.rows.find((r) => r.seq.requestId === 'long')!;
  assert.ok(truth(shape) <= 2 * truth(settled) + 1e-9);
  assert.ok(truth(plus(shape, growth(prefill.start, prefill.count))) > 2 * truth(settled), 'the cap is used, not undercut');
  // Nobody streams: the prompt gets the whole token budget.
  const idle = new Scheduler({ maxNumSeqs: 16, maxNumBatchedTokens: 512, blockSize: 16, maxStepMs: 'auto' }, new KvCacheManager(new BlockAllocator(400), 16));
  idle.add(seq('alone', 600));
  assert.equal(idle.schedule(exact).rows[0]!.count, 512);
});

test("scheduler: 'auto' while a batch ramps up: one stream decoding and a queue of prompts get the cap of the full batch, not of one row", () => {
  // A step's predicted cost and its prefill tokens, one stream decoding (21 attended tokens) and `queued` prompts waiting.
  const stepWith = (queued: number, paused = 0) => {
    const s = decodingScheduler('auto', 1);
    for (let i = 0; i < paused; i++) {
      s.add(seq(`p${i}`, 200));
      s.pause(`p${i}`);
    }
    for (let i = 0; i < queued; i++) s.add(seq(`q${i}`, 200));
    const rows = s.schedule(exact).rows;
    const prefill = rows.filter((r) => r.count > 1).reduce((n, r) => n + r.count, 0);
    return { prefill, ms: truth(stepShape(rows)) };
  };
  const cap = (rows: number) => 2 * truth({ tokens: rows, attended: rows * 21 });
  const alone = stepWith(1); // the batch becomes 2 rows
  const ramping = stepWith(15); // the batch becomes 16 rows (max_num_seqs)
  assert.ok(alone.ms <= cap(2), `${alone.ms} ms`);
  assert.ok(ramping.ms <= cap(16) && ramping.ms > cap(2), `${ramping.ms} ms: the 16-row batch's cap, not the 2-row one's`);
  assert.ok(ramping.prefill > alone.prefill, `${ramping.prefill} vs ${alone.prefill} tokens`);
  // Paused sequences are not part of the batch being formed.
  assert.deepEqual(stepWith(1, 14), alone);
});

test("scheduler: 'auto' gives prefill at least the prompts' share of the work the requests bring, so a prompt-heavy load does not queue up", () => {
  const planned = (streamTokens: number) => {
    const s = decodingScheduler('auto', 8, streamTokens);
    s.add(seq('long', 600, 16));
    const rows = s.schedule(exact).rows;
    const shape = stepShape(rows);
    const long = rows.find((r) => r.seq.requestId === 'long')!;
    return { ms: truth(shape), prefill: long.count, shape, grown: plus(shape, growth(long.start, long.count)) };
  };
  const settled = { tokens: 9, attended: 9 * 21 };
  const decodeMs = truth(settled);
  // Streams that may run on for 10,000 tokens each: prompts are a sliver of the work; 2x applies.
  const long = planned(10_000);
  assert.ok(long.ms <= 2 * decodeMs + 1e-9 && long.ms > 1.9 * decodeMs, `${long.ms} ms vs decode ${decodeMs} ms`);
  // Streams of at most 5 tokens (20-token prompts) and a 600-token prompt for 16: prompts are most
  // of the work (8 x 20 + 600 tokens against 8 x 5 + 16 decode rows, each 1/9 of a 9-row step).
  const short = planned(5);
  const promptMs = truth(stepShape([...Array.from({ length: 8 }, () => ({ start: 0, count: 20 })), { start: 0, count: 600 }])) - truth({ tokens: 0, attended: 0 });
  const decodeWorkMs = ((8 * 5 + 16) * decodeMs) / 9;
  const cap = decodeMs / (1 - promptMs / (promptMs + decodeWorkMs));
  assert.ok(cap > 2 * decodeMs, 'the share-based cap is the larger one here');
  assert.ok(short.ms <= cap + 1e-9, `${short.ms} ms vs cap ${cap} ms`);
  assert.ok(truth(short.grown) > cap, 'the cap is used, not undercut');
  assert.ok(short.prefill > long.prefill, `${short.prefill} vs ${long.prefill} tokens`);
});

test('scheduler: the first prompt in line advances at least a minimum chunk even when the cap is spent; later ones wait', () => {
  const s = decodingScheduler(1); // 1 ms: the decode rows alone exceed it
  s.add(seq('first', 300));
  s.add(seq('second', 300));
  const plan = s.schedule(exact);
  assert.deepEqual(
    plan.rows.filter((r) => r.count > 1).map((r) => [r.seq.requestId, r.count]),
    [['first', MIN_PREFILL_CHUNK]],
  );
  assert.equal(plan.rows.filter((r) => r.count === 1).length, 8, 'decode rows are never cut');
});

test('engine: with the time cap a long prompt is spread over the steps of a decoding batch; without it, one step takes it all', async (t) => {
  // Each run costs 8 ms + 0.25 ms per token: a 900-token prefill in one step would take ~230 ms,
  // where a decode step of the batch takes ~9 ms. (Plans are checked, not wall-clock gaps: the
  // machine running the tests is shared.)
  const prefillChunksWhileDecoding = async (maxStepMs: number | 'auto') => {
    const engine = await startTestEngine({ runner: { stepDelayMs: 8, msPerToken: 0.25 }, engine: { maxStepMs, maxNumBatchedTokens: 1024 } });
    t.after(() => engine.shutdown());
    const scheduler = (engine as unknown as { loop: { core: { scheduler: Scheduler } } }).loop.core.scheduler;
    const plan = scheduler.schedule.bind(scheduler);
    const chunks: number[] = [];
    const maxOutputs = new Set<number>();
    scheduler.schedule = (cost) => {
      const p = plan(cost);
      const decoding = p.rows.filter((r) => r.count === 1).length;
      for (const r of p.rows) if (r.count > 1 && decoding > 0) chunks.push(r.count);
      for (const r of p.rows) maxOutputs.add(r.seq.maxOutput);
      return p;
    };
    // The prompt arrives once every stream has its first token, so that they decode beside it
    // (a fixed sleep leaves that to the machine's load).
    const decoding: Array<Promise<void>> = [];
    const streams = [0, 1, 2, 3].map(async (i) => {
      let first!: () => void;
      decoding.push(new Promise((r) => (first = r)));
      for await (const ev of events(engine, request([100 + i], { maxTokens: 200, ignoreEos: true }))) if (ev.type === 'delta') first();
    });
    await Promise.all(decoding);
    for await (const ev of events(engine, request(Array(900).fill(11), { maxTokens: 1 }))) void ev;
    await Promise.all(streams);
    assert.deepEqual([...maxOutputs].sort((a, b) => a - b), [1, 200], "the scheduler sees each request's max_tokens as its decode work");
    return chunks;
  };
  const capped = await prefillChunksWhileDecoding('auto');
  assert.ok(capped.length >= 5, `the prompt took ${capped.length} steps beside the streams`);
  assert.ok(Math.max(...capped) < 200, `largest chunk beside the streams: ${Math.max(...capped)} tokens`);
  const uncapped = await prefillChunksWhileDecoding(0);
  assert.deepEqual(uncapped, [900], 'without a time cap the whole prompt goes into one step');
});

test('start-up calibration fits any KV cache, even one smaller than its usual shapes', async (t) => {
  const engine = await startTestEngine({ engine: { maxStepMs: 'auto', kvCacheTokens: 64, blockSize: 16 } });
  t.after(() => engine.shutdown());
  const r = [];
  for await (const ev of events(engine, request([1, 2, 3], { maxTokens: 5 }))) r.push(ev.type);
  assert.equal(r.at(-1), 'done');
  assert.equal(engine.stats().kvBlocksUsed, 0, 'calibration gave its blocks back');
});
