// The engine on the tiny model: continuous batching, KV memory, preemption, cancellation,
// limits, every sampling parameter, and batch invariance.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { WorkerEngine } from '../src/engine/client.js';
import type { Scheduler } from '../src/engine/scheduler.js';
import type { EngineClient, EngineOptions } from '../src/engine/types.js';
import { assertBatchInvariance, collect, events, outputBits, request } from './helpers/engine-run.js';
import { InProcessEngine } from './helpers/in-process-engine.js';
import { argmax, ReferenceGpt2 } from './helpers/reference-gpt2.js';
import { engineOptions, tinyModel } from './helpers/tiny-model.js';

let dir: string;
let engine: EngineClient;
let ref: ReferenceGpt2;
const EOS = 50256;

const text = async (e: EngineClient, ids: number[]) => (await e.decode([ids]))[0];
const prompt = (n: number, salt = 0) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);

async function withEngine<T>(overrides: Partial<EngineOptions>, fn: (e: EngineClient) => Promise<T>): Promise<T> {
  const e = await InProcessEngine.start(engineOptions(dir, overrides));
  try {
    return await fn(e);
  } finally {
    await e.shutdown();
  }
}

before(async () => {
  dir = await tinyModel(1);
  ref = new ReferenceGpt2(join(dir, 'checkpoint'));
  engine = await InProcessEngine.start(engineOptions(dir));
});
after(() => engine.shutdown());

test('greedy output equals the reference GPT-2, with finish reason, usage and text', async () => {
  const p = prompt(9);
  const r = await collect(engine, request(p, { maxTokens: 20 }));
  assert.equal(r.error, null);
  assert.deepEqual(r.choices[0].tokens, ref.greedy(p, 20));
  assert.equal(r.choices[0].finish, 'length');
  assert.deepEqual(r.usage, { promptTokens: 9, completionTokens: 20 });
  assert.equal(r.choices[0].text, (await text(engine, r.choices[0].tokens)));
});

test('batch invariance under the production defaults: greedy and seeded requests give bit-identical output alone and in changing batches of 1..32', async () => {
  await withEngine({ maxStepMs: 'auto', intraOpThreads: 0 }, assertBatchInvariance);
});

test('preemption under KV pressure recomputes exactly: output bit-identical to an unpreempted run (greedy and seeded, penalties, logprobs)', async () => {
  // The recomputed prefill re-runs generated tokens as a chunk; the graph computes them
  // bit-identically to the decode steps they replace.
  const specs = Array.from({ length: 6 }, (_, i) => ({
    prompt: prompt(20, i),
    params: { maxTokens: 160, ignoreEos: true, logprobs: 2, ...(i % 2 ? { temperature: 0.9, seed: 50 + i, presencePenalty: 0.5 } : {}) },
  }));
  const expected = await Promise.all(specs.map((s) => collect(engine, request(s.prompt, s.params))));
  // 20 blocks of 16 tokens: admission keeps room for 128 more tokens of each sequence, so two run
  // together, and both outgrow that room on the way to 180 tokens (12 blocks each).
  await withEngine({ kvCacheTokens: 20 * 16, blockSize: 16, maxStepMs: 'auto', intraOpThreads: 0 }, async (small) => {
    const got = await Promise.all(specs.map((s) => collect(small, request(s.prompt, s.params))));
    assert.deepEqual(got.map(outputBits), expected.map(outputBits));
    assert.deepEqual(got.map((c) => c.choices[0]!.text), expected.map((c) => c.choices[0]!.text));
    const stats = await small.stats();
    assert.ok(stats.preemptions > 0, `expected preemptions, got ${stats.preemptions}`);
    assert.equal(stats.kvBlocksUsed, 0);
  });
});

test('an echo+logprobs request preempted after its first tokens keeps the prompt logprobs it emitted once, bit for bit', async () => {
  // The recomputed prefill covers the prompt again, but only for the K/V: its logits rows are not
  // fetched, so the prompt logprobs already sent must not be rebuilt from them.
  const specs = Array.from({ length: 4 }, (_, i) => ({
    prompt: prompt(20, i),
    params: { maxTokens: 160, ignoreEos: true, echo: true, logprobs: 2 },
  }));
  const alone = await Promise.all(specs.map((s) => collect(engine, request(s.prompt, s.params))));
  const promptBits = (r: Awaited<ReturnType<typeof collect>>) => r.prompt!.tokens.map((t) => [t.tokenId, t.logprob, t.top.map((x) => [x.tokenId, x.logprob])]);
  await withEngine({ kvCacheTokens: 20 * 16, blockSize: 16, admissionReserveTokens: 0, intraOpThreads: 0 }, async (small) => {
    const scheduler = (small as unknown as { loop: { core: { scheduler: Scheduler } } }).loop.core.scheduler;
    const preemptedWithOutput = new Set<string>();
    const internals = scheduler as unknown as { preempt(seq: { requestId: string; outputLength: number }): void };
    const preempt = internals.preempt.bind(scheduler);
    internals.preempt = (seq) => {
      if (seq.outputLength > 0) preemptedWithOutput.add(seq.requestId);
      preempt(seq);
    };
    const got = await Promise.all(specs.map((s) => collect(small, request(s.prompt, s.params))));
    assert.ok(preemptedWithOutput.size > 0, 'some request was preempted after producing output');
    for (const r of got) assert.equal(r.events.filter((e) => e.type === 'prompt').length, 1, 'the prompt is emitted once');
    assert.deepEqual(got.map(promptBits), alone.map(promptBits));
    assert.deepEqual(got.map(outputBits), alone.map(outputBits));
    assert.equal((await small.stats()).kvBlocksUsed, 0);
  });
});

test('KV memory follows tokens held: at most one partly used block per sequence', async () => {
  await withEngine({ blockSize: 16 }, async (e) => {
    const streams = [5, 17, 33].map((n, i) => events(e, request(prompt(n, i), { maxTokens: 200, ignoreEos: true })));
    const iters = streams.map((s) => s[Symbol.asyncIterator]());
    for (const it of iters) for (let k = 0; k < 3; k++) await it.next();
    const stats = await e.stats();
    // Each sequence holds prompt + a few tokens: blocks = ceil(tokens / 16), never max length.
    assert.ok(stats.kvBlocksUsed <= 1 + 2 + 3 + 3, `blocks used ${stats.kvBlocksUsed}`);
    assert.ok(stats.kvBlocksUsed >= 1 + 2 + 3);
    for (const it of iters) await it.return!();
  });
});

test('a cancelled request stops within a step and frees its memory', async () => {
  await withEngine({}, async (e) => {
    const it = events(e, request(prompt(30), { maxTokens: 500, ignoreEos: true }))[Symbol.asyncIterator]();
    const other = collect(e, request(prompt(10, 3), { maxTokens: 30 }));
    await it.next();
    await it.next();
    assert.ok((await e.stats()).kvBlocksUsed > 0);
    await it.return!();
    const stepsAtCancel = (await e.stats()).steps;
    const result = await other;
    assert.equal(result.choices[0].tokens.length, 30, 'the other request is unaffected');
    const stats = await e.stats();
    assert.equal(stats.kvBlocksUsed, 0);
    assert.equal(stats.running, 0);
    assert.ok(stats.steps - stepsAtCancel <= 31, 'the cancelled request no longer makes steps');
    assert.ok(stats.generatedTokensTotal < 500 + 30);
  });
});

test('invariants the edge guarantees are asserted: a violation ends that request with an internal error naming it', async () => {
  const r = await collect(engine, request(prompt(1000), { maxTokens: 100 }));
  assert.equal(r.error?.code, 'internal_error');
  assert.match(r.error!.message, /1100 tokens exceed the context length 1024/);
  const empty = await collect(engine, request([], {}));
  assert.match(empty.error!.message, /the prompt is empty/);
  const outOfVocab = await collect(engine, request([50257], {}));
  assert.match(outOfVocab.error!.message, /a prompt token is outside 0\.\.50256/);
  const fine = await collect(engine, request(prompt(5), { maxTokens: 3 }));
  assert.equal(fine.choices[0].tokens.length, 3, 'the engine carries on');
});

test('sampling: temperature with seed is reproducible, seeds differ, and greedy equals top_k=1, tiny top_p, min_p=1', async () => {
  const p = prompt(6);
  const greedy = (await collect(engine, request(p, { maxTokens: 12 }))).choices[0].tokens;
  const seeded = (seed: number, extra = {}) => collect(engine, request(p, { maxTokens: 12, temperature: 1.5, seed, ...extra }));
  assert.deepEqual((await seeded(5)).choices[0].tokens, (await seeded(5)).choices[0].tokens);
  assert.notDeepEqual((await seeded(5)).choices[0].tokens, (await seeded(6)).choices[0].tokens);
  assert.notDeepEqual((await seeded(5)).choices[0].tokens, greedy, 'temperature 1.5 on a random model does not follow greedy');
  assert.deepEqual((await seeded(5, { topK: 1 })).choices[0].tokens, greedy);
  assert.deepEqual((await seeded(5, { topP: 1e-9 })).choices[0].tokens, greedy);
  assert.deepEqual((await seeded(5, { minP: 1 })).choices[0].tokens, greedy);
});

test('sampling: top_k and top_p only ever pick tokens inside their sets (reference logits)', async () => {
  const p = prompt(4);
  const logits = ref.logitsAll(p).at(-1)!;
  const order = [...logits.keys()].sort((a, b) => logits[b] - logits[a]);
  const top5 = new Set(order.slice(0, 5));
  const probs = order.map((i) => Math.exp(logits[i] - logits[order[0]]));
  const total = probs.reduce((a, b) => a + b, 0);
  let acc = 0;
  const nucleus = new Set<number>();
  for (let k = 0; acc < 0.5 * total; k++) {
    nucleus.add(order[k]);
    acc += probs[k];
  }
  for (let seed = 0; seed < 40; seed++) {
    const k = (await collect(engine, request(p, { maxTokens: 1, temperature: 3, topK: 5, seed }))).choices[0].tokens[0];
    assert.ok(top5.has(k), `top_k=5 picked ${k}`);
    const t = (await collect(engine, request(p, { maxTokens: 1, temperature: 1, topP: 0.5, seed }))).choices[0].tokens[0];
    assert.ok(nucleus.has(t), `top_p=0.5 picked ${t}`);
  }
});

test('sampling: logit_bias, penalties, stop strings, stop token ids, EOS handling, min_tokens', async () => {
  const p = prompt(7);
  const greedy = (await collect(engine, request(p, { maxTokens: 16 }))).choices[0];

  const forced = await collect(engine, request(p, { maxTokens: 3, logitBias: [[262, 100]] }));
  assert.deepEqual(forced.choices[0].tokens, [262, 262, 262]);
  const penalized = await collect(engine, request(p, { maxTokens: 3, logitBias: [[262, 100]], frequencyPenalty: 2, presencePenalty: 2 }));
  assert.deepEqual(penalized.choices[0].tokens, [262, 262, 262], 'a +100 bias outweighs penalties of 2');
  const repeated = await collect(engine, request(p, { maxTokens: 3, logitBias: [[262, 100]], repetitionPenalty: 1e6 }));
  assert.deepEqual(repeated.choices[0].tokens.filter((t) => t === 262), [262], 'repetition_penalty suppresses a repeat');

  // A stop string spanning the 2nd..3rd tokens: everything before it is emitted, nothing after.
  const full = greedy.text;
  const t1 = (await text(engine, greedy.tokens.slice(0, 1)));
  const t3 = (await text(engine, greedy.tokens.slice(0, 3)));
  const stopText = t3.slice(t1.length + 1);
  const stopped = await collect(engine, request(p, { maxTokens: 16, stop: [stopText] }));
  assert.equal(stopped.choices[0].finish, 'stop');
  assert.equal(stopped.choices[0].text, full.slice(0, full.indexOf(stopText)));

  const stopId = greedy.tokens[4];
  const byId = await collect(engine, request(p, { maxTokens: 16, stopTokenIds: [stopId] }));
  assert.equal(byId.choices[0].finish, 'stop');
  assert.deepEqual(byId.choices[0].tokens, greedy.tokens.slice(0, greedy.tokens.indexOf(stopId) + 1));

  const eos = await collect(engine, request(p, { maxTokens: 8, logitBias: [[EOS, 100]] }));
  assert.deepEqual(eos.choices[0].tokens, [EOS]);
  assert.equal(eos.choices[0].finish, 'stop');
  assert.equal(eos.choices[0].text, '', 'EOS adds no text');
  const ignored = await collect(engine, request(p, { maxTokens: 8, logitBias: [[EOS, 100]], ignoreEos: true }));
  assert.equal(ignored.choices[0].tokens.length, 8);
  assert.equal(ignored.choices[0].finish, 'length');
  const minTokens = await collect(engine, request(p, { maxTokens: 20, logitBias: [[EOS, 100]], minTokens: 5 }));
  assert.equal(minTokens.choices[0].tokens.length, 6);
  assert.ok(!minTokens.choices[0].tokens.slice(0, 5).includes(EOS));
  assert.equal(minTokens.choices[0].tokens[5], EOS);
});

test('logprobs: the chosen token and up to 20 alternatives match the reference log-softmax', async () => {
  const p = prompt(5);
  const r = await collect(engine, request(p, { maxTokens: 4, logprobs: 20 }));
  const seq = ref.newSequence();
  let logits = p.map((t) => seq.step(t)).at(-1)!;
  r.choices[0].logprobs.forEach((lp, i) => {
    const max = Math.max(...logits);
    const lse = max + Math.log(logits.reduce((s, v) => s + Math.exp(v - max), 0));
    assert.equal(lp.tokenId, argmax(logits));
    assert.ok(Math.abs(lp.logprob! - (logits[lp.tokenId] - lse)) < 1e-3);
    assert.equal(lp.top.length, 20);
    const best = [...logits.keys()].sort((a, b) => logits[b] - logits[a]).slice(0, 20);
    assert.deepEqual(lp.top.map((t) => t.tokenId), best);
    lp.top.forEach((t) => assert.ok(Math.abs(t.logprob - (logits[t.tokenId] - lse)) < 1e-3));
    logits = seq.step(r.choices[0].tokens[i]);
  });
  const cumulative = r.choices[0].logprobs.reduce((s, lp) => s + lp.logprob!, 0);
  assert.ok(Math.abs(r.choices[0].cumulativeLogprob - cumulative) < 1e-4);
});

test('echo: prompt text and prompt logprobs (first token null), also when chunked', async () => {
  const p = prompt(40);
  const expected = ref.logitsAll(p);
  await withEngine({ maxNumBatchedTokens: 16, maxNumSeqs: 4 }, async (e) => {
    const r = await collect(e, request(p, { maxTokens: 2, echo: true, logprobs: 2 }));
    assert.equal(r.prompt?.text, (await text(e, p)));
    assert.equal(r.prompt!.tokens.length, 40);
    assert.equal(r.prompt!.tokens[0].logprob, null);
    for (let i = 1; i < 40; i++) {
      const l = expected[i - 1];
      const max = Math.max(...l);
      const lse = max + Math.log(l.reduce((s, v) => s + Math.exp(v - max), 0));
      assert.ok(Math.abs(r.prompt!.tokens[i].logprob! - (l[p[i]] - lse)) < 1e-3, `prompt token ${i}`);
      assert.equal(r.prompt!.tokens[i].top.length, 2);
    }
    assert.deepEqual(r.events.slice(0, 2).map((e) => e.type), ['accepted', 'prompt'], 'the prompt comes first, once queued');
  });
  const plain = await collect(engine, request(p, { maxTokens: 0, echo: true }));
  assert.equal(plain.prompt?.text, (await text(engine, p)));
  assert.deepEqual(plain.usage, { promptTokens: 40, completionTokens: 0 });
});

test('n > 1 shares the prompt prefill: greedy choices agree, seeded choices differ, memory is released', async () => {
  await withEngine({}, async (e) => {
    const p = prompt(21);
    const before = await e.stats();
    const g = await collect(e, request(p, { maxTokens: 6, n: 3 }));
    assert.equal(g.choices.length, 3);
    assert.deepEqual(g.choices[1].tokens, g.choices[0].tokens);
    assert.deepEqual(g.choices[2].tokens, g.choices[0].tokens);
    assert.deepEqual(g.usage, { promptTokens: 21, completionTokens: 18 });
    const s = await collect(e, request(p, { maxTokens: 6, n: 4, temperature: 1.5, seed: 9 }));
    assert.equal(new Set(s.choices.map((c) => c.tokens.join())).size, 4);
    const after = await e.stats();
    assert.equal(after.kvBlocksUsed, 0);
    // One prefill per request: steps with 21 prompt tokens were run twice in all, not 7 times.
    assert.equal(after.promptTokensTotal - before.promptTokensTotal, 42);
  });
});

test("in a busy batch a request's choices wait for room together, then share its prompt: it is prefilled once", async () => {
  await withEngine({ maxNumSeqs: 4 }, async (e) => {
    const scheduler = (e as unknown as { loop: { core: { scheduler: Scheduler } } }).loop.core.scheduler;
    const promptTokensFed = new Map<string, number>();
    const plan = scheduler.schedule.bind(scheduler);
    scheduler.schedule = (cost) => {
      const p = plan(cost);
      for (const r of p.rows) {
        const fed = Math.max(0, Math.min(r.start + r.count, r.seq.promptLength) - r.start);
        promptTokensFed.set(r.seq.requestId, (promptTokensFed.get(r.seq.requestId) ?? 0) + fed);
      }
      return p;
    };
    // Three streams take three of the four batch slots, and are decoding when the request comes.
    const decoding: Array<Promise<void>> = [];
    const streams = [0, 1, 2].map(async (i) => {
      let first!: () => void;
      decoding.push(new Promise((r) => (first = r)));
      for await (const ev of events(e, request(prompt(5, i), { maxTokens: 60, ignoreEos: true }))) if (ev.type === 'delta') first();
    });
    await Promise.all(decoding);
    const params = { maxTokens: 5, n: 3, temperature: 1.2, seed: 3 };
    const r = await collect(e, { ...request(prompt(40, 7), params), id: 'fan' });
    await Promise.all(streams);
    assert.equal(promptTokensFed.get('fan'), 40, 'the prompt was computed once for its three choices');
    const roomy = await collect(engine, request(prompt(40, 7), params));
    assert.deepEqual(r.choices.map((c) => c.tokens), roomy.choices.map((c) => c.tokens), 'same seeds, same choices as in a roomy batch');
    const stats = await e.stats();
    assert.equal(stats.preemptions, 0);
    assert.equal(stats.kvBlocksUsed, 0);
  });
});

test('the worker-backed engine streams the same tokens and shuts down cleanly', async () => {
  const w = await WorkerEngine.start(engineOptions(dir));
  try {
    const p = prompt(12);
    const [a, b] = await Promise.all([collect(w, request(p, { maxTokens: 10 })), collect(w, request(prompt(3, 1), { maxTokens: 5 }))]);
    assert.deepEqual(a.choices[0].tokens, ref.greedy(p, 10));
    assert.equal(b.choices[0].tokens.length, 5);
    const stats = await w.stats();
    assert.ok(stats.steps > 0);
  } finally {
    await w.shutdown({ drainMs: 1000 });
  }
});

test('shutdown drains running requests, then ends the rest with an error', async () => {
  // What finishes within the drain is decided by the test, not by the machine's speed: both
  // requests start paused (a stalled reader), so neither can finish before shutdown begins; the
  // short one is resumed once the drain has begun and must complete, the long one never is.
  const e = await InProcessEngine.start(engineOptions(dir));
  const shortReq = request(prompt(4), { maxTokens: 3 });
  const longReq = request(prompt(4, 2), { maxTokens: 900, ignoreEos: true });
  const short = collect(e, shortReq);
  const long = collect(e, longReq);
  e.pause(shortReq.id);
  e.pause(longReq.id);
  const draining = e.shutdown({ drainMs: 2000 });
  e.resume(shortReq.id);
  const s = await short;
  assert.equal(s.error, null);
  assert.equal(s.choices[0].tokens.length, 3);
  await draining;
  const l = await long;
  assert.equal(l.error?.code, 'shutting_down');
  assert.equal(l.choices.length, 0, 'the paused request never ran');
  const late = await collect(e, request(prompt(4), { maxTokens: 3 }));
  assert.equal(late.error?.code, 'shutting_down');
});

test('execution providers: auto falls back to CPU with one line saying why; cuda without its libraries is a clear error', async () => {
  const { createSession, cudaProviderPath } = await import('../src/engine/ort-session.js');
  const { existsSync } = await import('node:fs');
  const file = join(dir, 'model.onnx');
  const lines: string[] = [];
  const auto = await createSession(file, { executionProvider: 'auto', intraOpThreads: 1, log: (m) => lines.push(m) });
  assert.equal(lines.length, 1);
  if (!existsSync(cudaProviderPath())) {
    assert.equal(auto.provider, 'cpu');
    assert.match(lines[0], /^execution provider: cpu \(auto: the CUDA provider library is not installed .*ONNXRUNTIME_NODE_INSTALL=cuda12/);
    await assert.rejects(createSession(file, { executionProvider: 'cuda', intraOpThreads: 1, log: () => {} }), /--execution-provider cuda: the CUDA provider library is not installed/);
  } else {
    assert.match(lines[0], /^execution provider: (cuda|cpu)/);
  }
  await auto.session.release();
  const cpuLines: string[] = [];
  const cpu = await createSession(file, { executionProvider: 'cpu', intraOpThreads: 1, log: (m) => cpuLines.push(m) });
  assert.deepEqual(cpuLines, ['execution provider: cpu (requested)']);
  await cpu.session.release();
});

test("n larger than max_num_seqs breaks an invariant the edge guarantees: a request's choices run in one batch", async () => {
  await withEngine({ maxNumSeqs: 2 }, async (e) => {
    const r = await collect(e, request(prompt(9), { maxTokens: 5, n: 3 }));
    assert.equal(r.error?.code, 'internal_error');
    assert.match(r.error!.message, /n 3 exceeds max_num_seqs 2/);
    const fits = await collect(e, request(prompt(9), { maxTokens: 5, n: 2, temperature: 1.2, seed: 3 }));
    assert.equal(fits.choices.length, 2);
    assert.equal((await e.stats()).kvBlocksUsed, 0);
  });
});
