// Draft-model speculation on real tiny models, under the production defaults ('auto' step
// planning, default threads). The target as its own draft guesses exactly what it will pick, so
// every draft must be kept; a different model guesses badly, so verification rejects most drafts,
// and output must be the target's bits either way. The draft's KV blocks are the KV cache manager's
// 'draft' group: none may be left behind by finishing, cancelling or preempting a sequence.
import assert from 'node:assert/strict';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { DraftModelProposer } from '../src/engine/draft-model.js';
import { BlockAllocator, blocksFor } from '../src/engine/kv-cache.js';
import { KvCacheManager } from '../src/engine/kv-cache-manager.js';
import { Scheduler, Sequence } from '../src/engine/scheduler.js';
import type { EngineOptions, SamplingParams } from '../src/engine/types.js';
import { readManifest } from '../src/model/manifest.js';
import { events, outputBits, request, runAll, type Spec } from './helpers/engine-run.js';
import { InProcessEngine } from './helpers/in-process-engine.js';
import { greedyTokens, ScriptedRunner } from './helpers/scripted-runner.js';
import { engineOptions, tempDir, tinyModel } from './helpers/tiny-model.js';

const prompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);
const draftWith = (dir: string): EngineOptions['speculation'] => ({ method: 'draft', numTokens: 4, lookupMin: 2, lookupMax: 5, draftModelDir: dir });

let target: string;
let other: string;
before(async () => {
  [target, other] = await Promise.all([tinyModel(1), tinyModel(2)]);
});

/**
 * The proposer on the scripted runner, whose next token depends on every token it reads back
 * through a row's block table: a draft cache that holds a stale or misplaced token guesses
 * something other than the greedy continuation of the sequence.
 */
function scripted(opts: { blocks: number; maxCatchUp?: number; failRuns?: number[] }) {
  const V = 1000;
  const scheduler = new Scheduler({ maxNumSeqs: 8, maxNumBatchedTokens: 64, blockSize: 4 }, new KvCacheManager(new BlockAllocator(opts.blocks + 1), 4));
  const runner = new ScriptedRunner(V, opts.blocks + 1, 4, { failRuns: opts.failRuns });
  const logs: string[] = [];
  const proposer = new DraftModelProposer(runner, scheduler, { maxCatchUp: opts.maxCatchUp ?? 64, contextLength: 1024, log: (m) => logs.push(m) });
  const seq = (n: number, salt: number) => new Sequence(`s${salt}`, 0, prompt(n, salt).map((t) => t % V), n, salt);
  return { V, scheduler, proposer, seq, logs };
}

test('draft caches: rolled back to what verification kept, caught up, batched; greedy guesses of the true context', async () => {
  const { V, proposer, seq, scheduler } = scripted({ blocks: 64 });
  const a = seq(10, 1);
  const b = seq(7, 2);
  assert.deepEqual(await proposer.propose([a, b], [3, 2]), [greedyTokens(a.tokens, 3, V), greedyTokens(b.tokens, 2, V)]);
  // a: the first draft kept, then the target picked another token; b: both kept, plus one.
  const [a1] = greedyTokens(a.tokens, 1, V);
  a.tokens.push(a1!, 5);
  b.tokens.push(...greedyTokens(b.tokens, 2, V), 9);
  assert.deepEqual(await proposer.propose([a, b], [4, 1]), [greedyTokens(a.tokens, 4, V), greedyTokens(b.tokens, 1, V)]);
  // The first draft kept, the second not, then steps without drafts: the cache's guesses from the
  // second on must go, though the sequence has grown past them.
  a.tokens.push(greedyTokens(a.tokens, 1, V)[0]!, 7, 8, 9);
  assert.deepEqual(await proposer.propose([a], [2]), [greedyTokens(a.tokens, 2, V)]);
  // Nothing kept at all: the cache goes back to the sequence's last token.
  a.tokens.push(7);
  assert.deepEqual(await proposer.propose([a], [2]), [greedyTokens(a.tokens, 2, V)]);
  // The draft caches are all that holds blocks here, and the manager counts them as used.
  assert.equal(scheduler.kv.usedBlocks, blocksFor(a.tokens.length + 1, 4) + blocksFor(b.tokens.length, 4));
  proposer.forget(a);
  proposer.forget(b);
  assert.equal(scheduler.kv.usedBlocks, 0);
});

test('draft caches: a long catch-up is spread over calls without drafts; drafts shrink to the spare blocks; a failed run costs only the drafts', async () => {
  const chunked = scripted({ blocks: 64, maxCatchUp: 8 });
  const long = chunked.seq(20, 3);
  assert.deepEqual(await chunked.proposer.propose([long], [3]), [[]]);
  assert.deepEqual(await chunked.proposer.propose([long], [3]), [[]]);
  assert.deepEqual(await chunked.proposer.propose([long], [3]), [greedyTokens(long.tokens, 3, chunked.V)]);

  // 9 blocks of 4: a running sequence of 14 tokens holds 4 of them (13 computed); its draft cache
  // may take the other 5 less one of headroom for the target's next step: 16 positions, of which
  // it feeds 13 + 1 + (drafts - 1), so 3 drafts, not 4.
  const tight = scripted({ blocks: 9 });
  const s = tight.seq(13, 4);
  tight.scheduler.add(s);
  tight.scheduler.schedule();
  s.tokens.push(1);
  assert.equal(tight.scheduler.kv.freeBlocks, 5);
  assert.deepEqual(await tight.proposer.propose([s], [4]), [greedyTokens(s.tokens, 3, tight.V)]);
  assert.equal(tight.scheduler.kv.freeBlocks, 1, 'one block left for the target');
  assert.equal(tight.scheduler.preemptionCount, 0);

  const failing = scripted({ blocks: 16, failRuns: [3] }); // the second call's first run
  const f = failing.seq(9, 5);
  assert.equal((await failing.proposer.propose([f], [3]))[0]!.length, 3);
  f.tokens.push(2);
  assert.deepEqual(await failing.proposer.propose([f], [3]), [[]]);
  assert.match(failing.logs.join('\n'), /draft model run failed/);
  assert.equal(failing.scheduler.kv.usedBlocks, 0, 'its caches were dropped');
  assert.deepEqual(await failing.proposer.propose([f], [3]), [greedyTokens(f.tokens, 3, failing.V)]);
});

async function withEngine<T>(options: Partial<EngineOptions>, fn: (e: InProcessEngine) => Promise<T>): Promise<T> {
  const e = await InProcessEngine.start(engineOptions(target, { maxStepMs: 'auto', intraOpThreads: 0, ...options }));
  try {
    return await fn(e);
  } finally {
    await e.shutdown();
  }
}

test('the target as its own draft model: every greedy draft is kept, and output is bit-identical', async () => {
  // ignore_eos: a draft that ends the sequence is verified but not counted as kept.
  const list: Spec[] = [0, 1, 2].map((i) => ({ prompt: prompt(110 + 30 * i, i), params: { maxTokens: 40, logprobs: 2, ignoreEos: true } }));
  const expected = await withEngine({}, (e) => runAll(e, list, false));
  await withEngine({ speculation: draftWith(target) }, async (e) => {
    const alone = await runAll(e, list, false);
    assert.deepEqual(alone.map(outputBits), expected.map(outputBits));
    const together = await runAll(e, list, true);
    assert.deepEqual(together.map(outputBits), expected.map(outputBits));
    const s = e.stats();
    // How many drafts pay is the drafting rule's call on measured costs (a draft run costs about
    // a target step here), so it varies with the machine's load; the first ones are always made,
    // before proposing's cost has been measured.
    assert.ok(s.specDecodeDraftTokens > 0, `drafts were verified (${s.specDecodeDraftTokens})`);
    assert.equal(s.specDecodeAcceptedTokens, s.specDecodeDraftTokens, 'acceptance 100 %');
    assert.ok(s.steps < 2 * list.length * 40, `fewer steps than tokens (${s.steps})`);
    assert.equal(s.kvBlocksUsed, 0);
  });
});

test('the startup log gives the KV cache size, and the draft model cache beside it', async () => {
  const logs: string[] = [];
  const e = await InProcessEngine.start(engineOptions(target, { speculation: draftWith(other) }), (m) => logs.push(m));
  await e.shutdown();
  // 8192 tokens in 512 blocks of 16, plus the null block; each token holds K and V of every layer.
  const { numLayers, hiddenSize } = readManifest(target);
  const mib = ((513 * 16 * numLayers * 2 * hiddenSize * 4) / 2 ** 20).toFixed(1);
  assert.ok(logs.includes(`KV cache: 8192 tokens in 512 blocks of 16, ${mib} MiB`), logs.join('\n'));
  assert.ok(logs.includes(`draft model KV cache: 8192 tokens in 512 blocks of 16, ${mib} MiB`), logs.join('\n'));
});

/** Greedy and seeded requests with the processors that keep state from token to token, n > 1. */
function mixed(): Spec[] {
  const kinds: Array<Partial<SamplingParams>> = [
    { logprobs: 3 },
    { temperature: 0.9, topP: 0.95, seed: 11, logprobs: 1 },
    { presencePenalty: 0.6, frequencyPenalty: 0.4, logprobs: 2 },
    { repetitionPenalty: 1.3, temperature: 0.7, seed: 5 },
    { n: 3, temperature: 1, seed: 9, logprobs: 1 },
    { n: 2, logprobs: 2, stop: ['e'] },
  ];
  return kinds.map((params, i) => ({ prompt: prompt(100 + ((i * 37) % 91), i), params: { maxTokens: 40, ...params } }));
}

test('a different draft model: drafts are rejected, output stays bit-identical (greedy, seeded, penalties, n > 1), and every block is freed', async () => {
  const list = mixed();
  const expected = await withEngine({}, (e) => runAll(e, list, false));
  await withEngine({ speculation: draftWith(other) }, async (e) => {
    // One request streamed alone: its draft cache's blocks count in the shared pool while it runs.
    const single = list[0]!;
    let mostUsed = 0;
    for await (const ev of events(e, request(single.prompt, single.params))) if (ev.type === 'delta') mostUsed = Math.max(mostUsed, e.stats().kvBlocksUsed);
    const targetBlocks = blocksFor(single.prompt.length + 40, 16);
    assert.ok(mostUsed > targetBlocks, `the draft cache's blocks are counted (${mostUsed} used, the target needs ${targetBlocks})`);

    const alone = await runAll(e, list, false);
    assert.deepEqual(alone.map(outputBits), expected.map(outputBits));
    const together = await runAll(e, list, true);
    assert.deepEqual(together.map(outputBits), expected.map(outputBits));
    const s = e.stats();
    // Few: a draft model that is never right, and costs a run per draft token, soon stops paying
    // (how soon depends on measured costs, so on the machine's load; the first drafts are always
    // made, before proposing's cost has been measured).
    assert.ok(s.specDecodeDrafts > 0, `verifications ran (${s.specDecodeDrafts})`);
    assert.ok(s.specDecodeDraftTokens > s.specDecodeAcceptedTokens, `drafts were rejected (${s.specDecodeAcceptedTokens} of ${s.specDecodeDraftTokens} kept)`);
    assert.equal(s.kvBlocksUsed, 0, 'target and draft blocks are all freed');
  });
});

test('cancellation and preemption under KV pressure leave no block behind, and output stays identical', async () => {
  // 36 blocks of 16 for 3 sequences that grow to 10, 13 and 15 blocks, their draft caches, and a
  // request cancelled after 5 tokens: draft caches are dropped for the target's blocks, then a
  // sequence is preempted (both seen on this setup with a probe in draft-model.ts).
  const pressure: Partial<EngineOptions> = { kvCacheTokens: 576, admissionReserveTokens: 0, prefixCaching: false };
  const list: Spec[] = [0, 1, 2].map((i) => ({ prompt: prompt(100 + 37 * i, i), params: { maxTokens: 60, ignoreEos: true, ...(i === 1 ? { temperature: 0.8, seed: 3 } : {}) } }));
  const expected = await withEngine(pressure, (e) => runAll(e, list, false));
  await withEngine({ ...pressure, speculation: draftWith(other) }, async (e) => {
    const cancelled = (async () => {
      let deltas = 0;
      for await (const ev of events(e, request(prompt(150, 99), { maxTokens: 40 }))) if (ev.type === 'delta' && ++deltas === 5) break;
    })();
    const together = await runAll(e, list, true);
    await cancelled;
    assert.deepEqual(together.map(outputBits), expected.map(outputBits));
    const s = e.stats();
    assert.ok(s.preemptions > 0, 'a sequence was preempted');
    assert.ok(s.specDecodeDrafts > 0, 'drafts were verified');
    assert.equal(s.kvBlocksUsed, 0, 'target and draft blocks are all freed');
  });
});

test('a draft model with a shorter context drafts only within it: no run past it, output bit-identical, every block freed', async () => {
  // The draft attends to 64 positions, the target to 1024. One prompt is longer than the draft's
  // context (its catch-up, 16 tokens a call, would run past it); the other drafts, then grows past it.
  const short = await tinyModel(2, { positions: 64 });
  const options: Partial<EngineOptions> = { maxNumBatchedTokens: 16, maxNumSeqs: 4 };
  const list: Spec[] = [
    { prompt: prompt(100, 1), params: { maxTokens: 30, ignoreEos: true, logprobs: 2 } },
    { prompt: prompt(40, 2), params: { maxTokens: 60, ignoreEos: true, temperature: 0.8, seed: 4 } },
  ];
  const expected = await withEngine(options, (e) => runAll(e, list, false));
  const logs: string[] = [];
  const e = await InProcessEngine.start(engineOptions(target, { maxStepMs: 'auto', intraOpThreads: 0, ...options, speculation: draftWith(short) }), (m) => logs.push(m));
  try {
    assert.ok(logs.includes('draft model context: 64 positions, the target 1024: sequences longer than 64 tokens are not drafted'), logs.join('\n'));
    const alone = await runAll(e, list, false);
    const together = await runAll(e, list, true);
    assert.deepEqual(alone.map(outputBits), expected.map(outputBits));
    assert.deepEqual(together.map(outputBits), expected.map(outputBits));
    assert.doesNotMatch(logs.join('\n'), /draft model run failed/);
    const s = e.stats();
    assert.ok(s.specDecodeDrafts > 0, 'drafts were verified within the draft context');
    assert.equal(s.kvBlocksUsed, 0, 'target and draft blocks are all freed');
  } finally {
    await e.shutdown();
  }
});

test('a draft model whose token ids mean something else, or that cannot be served, is refused at start, naming the folders', async () => {
  const copy = (edit: (dir: string) => void) => {
    const dir = join(tempDir(), 'draft');
    cpSync(other, dir, { recursive: true });
    edit(dir);
    return dir;
  };
  const editJson = (file: string, change: (json: any) => void) => {
    const json = JSON.parse(readFileSync(file, 'utf8'));
    change(json);
    writeFileSync(file, JSON.stringify(json));
  };
  // The graph of these copies still has the GPT-2 vocabulary: the check reads the manifest and
  // the tokenizer, and refuses before anything runs.
  const cases: Array<[string, (dir: string) => void, RegExp]> = [
    ['vocabulary size', (d) => editJson(join(d, 'manifest.json'), (m) => (m.vocabSize = 50000)), /a vocabulary of 50000 tokens, not 50257/],
    ['end of text', (d) => editJson(join(d, 'manifest.json'), (m) => (m.eosTokenId = 0)), /end of text is token 0, not 50256/],
    [
      'a token',
      (d) =>
        editJson(join(d, 'tokenizer.json'), (t) => {
          // Swap the ids of "a" and "b".
          const v = t.model.vocab;
          [v.a, v.b] = [v.b, v.a];
        }),
      /token 64 is "b", not "a"/,
    ],
  ];
  for (const [what, edit, message] of cases) {
    const dir = copy(edit);
    await assert.rejects(
      InProcessEngine.start(engineOptions(target, { speculation: draftWith(dir) })),
      (err: Error) => message.test(err.message) && err.message.includes(dir) && err.message.includes(target),
      what,
    );
  }
  // A draft folder that cannot be served at all: the flag is named, not only the target.
  const missing = join(tempDir(), 'no-such-draft');
  await assert.rejects(InProcessEngine.start(engineOptions(target, { speculation: draftWith(missing) })), (err: Error) =>
    err.message.includes(`--draft-model ${missing}: ${missing} cannot be served: the folder does not exist`),
  );
});
