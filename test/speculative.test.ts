// Speculative decoding: prompt lookup's drafts, and exact verification. The engine runs the real
// tiny model under the production defaults ('auto' step planning, default threads); a scripted
// proposer drafts the continuation the engine gives without speculation, with every third
// draft wrong, so that each verification path runs (all kept, a mismatch in the middle, the first
// draft rejected) and output must still be the same bits.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { lookupDraft } from '../src/engine/prompt-lookup.js';
import { BlockAllocator } from '../src/engine/kv-cache.js';
import { KvCacheManager } from '../src/engine/kv-cache-manager.js';
import { Scheduler, Sequence, type ScheduledRow } from '../src/engine/scheduler.js';
import { Speculator, type DraftProposer } from '../src/engine/speculation.js';
import type { EngineClient, EngineOptions, SamplingParams } from '../src/engine/types.js';
import { ConstraintCompiler } from '../src/structured/constraint.js';
import { collect, outputBits, request, runAll, type Spec } from './helpers/engine-run.js';
import { InProcessEngine } from './helpers/in-process-engine.js';
import { engineOptions, tinyModel } from './helpers/tiny-model.js';

const SPECULATION: EngineOptions['speculation'] = { method: 'ngram', numTokens: 4, lookupMin: 2, lookupMax: 5 };
const prompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);

let dir: string;
before(async () => {
  dir = await tinyModel(1);
});

test('prompt lookup drafts what followed the latest earlier occurrence of the longest matching tail', () => {
  // tail [7, 8] occurs at 1 and at 5; the latest one (5) is followed by 9, 1.
  assert.deepEqual(lookupDraft([3, 7, 8, 4, 5, 7, 8, 9, 1, 7, 8], 2, 3, 4), [9, 1, 7, 8]);
  assert.deepEqual(lookupDraft([3, 7, 8, 4, 5, 7, 8, 9, 1, 7, 8], 2, 3, 1), [9]);
  // the 3-token tail [1, 7, 8] beats the 2-token one: it occurs once, followed by 2.
  assert.deepEqual(lookupDraft([1, 7, 8, 2, 7, 8, 6, 1, 7, 8], 2, 3, 2), [2, 7]);
  // the draft stops at the end of the context
  assert.deepEqual(lookupDraft([5, 6, 5, 6], 2, 2, 4), [5, 6]);
  // no earlier occurrence of any tail of length >= min: nothing
  assert.deepEqual(lookupDraft([1, 2, 3, 4, 2, 5], 2, 4, 4), []);
  assert.deepEqual(lookupDraft([1, 2, 3, 1], 2, 2, 4), []);
  assert.deepEqual(lookupDraft([1, 2, 3, 1], 1, 2, 4), [2, 3, 1]);
  assert.deepEqual(lookupDraft([9], 1, 3, 4), []);
  assert.deepEqual(lookupDraft([5, 6, 5, 6], 2, 2, 0), []);
});

/**
 * Drafts the continuation of whichever known sequence starts with the drafting sequence's tokens,
 * every third draft position (by absolute position) made wrong; counts what it proposed.
 */
class ScriptedProposer implements DraftProposer {
  proposed = 0;
  wrong = 0;
  constructor(private readonly known: number[][]) {}

  propose(seqs: readonly Sequence[], max: readonly number[]): number[][] {
    return seqs.map((seq, i) => {
      const L = seq.tokens.length;
      const next = this.known.find((k) => k.length > L && seq.tokens.every((t, j) => t === k[j]));
      if (!next) return [];
      const draft = next.slice(L, L + max[i]!).map((t, j) => ((L + j) % 3 === 0 ? (t + 1) % 50000 : t));
      this.proposed += draft.length;
      this.wrong += draft.filter((_, j) => (L + j) % 3 === 0).length;
      return draft;
    });
  }
}

const compiler = new ConstraintCompiler();
function choiceConstraint(): SamplingParams['constraint'] {
  const r = compiler.compile({ kind: 'regex', pattern: '(ab|cd)+[0-9]{2,6}', where: 'test' });
  if ('error' in r) throw new Error(r.error);
  return r.ok;
}

/** Greedy and seeded requests with every processor that keeps state from token to token. */
function specs(): Spec[] {
  const kinds: Array<Partial<SamplingParams>> = [
    { logprobs: 3 },
    { temperature: 0.9, topP: 0.95, seed: 11, logprobs: 1 },
    { presencePenalty: 0.6, frequencyPenalty: 0.4, logprobs: 2 },
    { repetitionPenalty: 1.3, temperature: 0.7, seed: 5 },
    { logitBias: [[100, 2], [200, -1]], minTokens: 20, stopTokenIds: [300] },
    { n: 3, temperature: 1, seed: 9, logprobs: 1 },
    { stop: ['e', 'th'], temperature: 0.8, seed: 2 },
    { constraint: choiceConstraint(), temperature: 1, seed: 4, logprobs: 1 },
  ];
  return kinds.map((params, i) => ({ prompt: prompt(100 + ((i * 37) % 91), i), params: { maxTokens: 40, ...params } }));
}

async function withEngine<T>(options: Partial<EngineOptions>, proposer: DraftProposer | undefined, fn: (e: InProcessEngine) => Promise<T>): Promise<T> {
  const e = await InProcessEngine.start(engineOptions(dir, { maxStepMs: 'auto', intraOpThreads: 0, ...options }), () => {}, { draftProposer: proposer });
  try {
    return await fn(e);
  } finally {
    await e.shutdown();
  }
}

test('verified drafts give bit-identical output: greedy and seeded, penalties, bias, min_tokens, stops, n > 1, constraints, logprobs; alone and in a batch', async () => {
  const list = specs();
  const expected = await withEngine({}, undefined, (e) => runAll(e, list, false));
  const known = expected.flatMap((r, i) => r.choices.map((c) => [...list[i]!.prompt, ...c.tokens]));
  const proposer = new ScriptedProposer(known);
  await withEngine({ speculation: SPECULATION }, proposer, async (e) => {
    const alone = await runAll(e, list, false);
    assert.deepEqual(alone.map(outputBits), expected.map(outputBits));
    const together = await runAll(e, list, true);
    assert.deepEqual(together.map(outputBits), expected.map(outputBits));
    const stats = e.stats();
    assert.equal(stats.kvBlocksUsed, 0, 'rejected drafts leave no block behind');
    assert.ok(stats.specDecodeDrafts > 50, `verifications ran (${stats.specDecodeDrafts})`);
    assert.ok(stats.specDecodeAcceptedTokens > 100, `drafts were kept (${stats.specDecodeAcceptedTokens})`);
    assert.ok(stats.specDecodeDraftTokens - stats.specDecodeAcceptedTokens > 50, 'drafts were rejected');
    assert.ok(stats.steps < 2 * list.length * 40, `fewer steps than tokens (${stats.steps})`);
  });
});

test("accepted drafts' K/V are the sequence's: a prompt that continues a speculated output hits the prefix cache and matches a run without either", async () => {
  const first: Spec = { prompt: prompt(90, 7), params: { maxTokens: 60 } };
  const [plain] = await withEngine({}, undefined, (e) => runAll(e, [first], false));
  const output = plain!.choices[0]!.tokens;
  const follow: Spec = { prompt: [...first.prompt, ...output.slice(0, 50)], params: { maxTokens: 20, logprobs: 2 } };
  const [expected] = await withEngine({ prefixCaching: false }, undefined, (e) => runAll(e, [follow], false));
  const proposer = new ScriptedProposer([[...first.prompt, ...output]]);
  await withEngine({ speculation: SPECULATION }, proposer, async (e) => {
    await runAll(e, [first], false);
    assert.ok(e.stats().specDecodeAcceptedTokens > 20);
    const [got] = await runAll(e, [follow], false);
    // 140 tokens: 8 full blocks of 16, of which the first 5 came from the prompt's prefill and
    // 3 were filled by verification steps.
    assert.equal(got!.cachedTokens, 128);
    assert.deepEqual(outputBits(got!), outputBits(expected!));
  });
});

test('the drafting rule: a draft is added while its chance of being kept pays for its share of the step (by batch size and measured acceptance)', async () => {
  // A step costs 10 ms plus 1 ms a token: one stream's token costs 11 ms and a draft 1 ms more
  // (kept with chance >= 1/11 pays); in a batch of 32 a token costs 42/32 ms (>= 0.76 pays).
  const cost = { predictMs: (s: { tokens: number }) => 10 + s.tokens };
  const proposer: DraftProposer = { propose: (seqs, max) => seqs.map((_, i) => Array.from({ length: max[i]! }, () => 7)) };
  const speculator = new Speculator({ numTokens: 4, lookupMin: 2, lookupMax: 5 }, proposer, cost);
  const scheduler = new Scheduler({ maxNumSeqs: 32, maxNumBatchedTokens: 512, blockSize: 16 }, new KvCacheManager(new BlockAllocator(512), 16));
  const sequences = Array.from({ length: 32 }, (_, i) => {
    const seq = new Sequence(`r${i}`, 0, prompt(40, i), 39, i, 100);
    seq.status = 'running';
    assert.ok(scheduler.kv.allocateSlots(seq, 40));
    seq.numComputed = 39;
    return seq;
  });
  const draftsOf = async (seqs: Sequence[]) => {
    const rows: ScheduledRow[] = seqs.map((seq) => ({ seq, start: seq.numComputed, count: 1, sample: true }));
    await speculator.addDrafts(rows, scheduler, () => true, 1024);
    return rows.map((r) => r.draft?.length ?? 0);
  };
  // Acceptance starts at 1/2: alone, 1/2, 1/4 and 1/8 pay, 1/16 does not.
  assert.deepEqual(await draftsOf([sequences[0]!]), [3]);
  // In a full batch nothing at 1/2 pays.
  assert.deepEqual(await draftsOf(sequences), new Array(32).fill(0));
  // A sequence whose drafts were kept (41 of 41: rate 42/43) drafts all 4 even in a full batch.
  for (let i = 0; i < 10; i++) speculator.record(sequences[1]!, 4, 4);
  speculator.record(sequences[1]!, 1, 1);
  const full = await draftsOf(sequences);
  assert.equal(full[1], 4);
  assert.equal(full.reduce((a, b) => a + b), 4);
  // One whose drafts are always rejected stops drafting: its rate falls below 1/11 ...
  const loser = sequences[2]!;
  const history: number[] = [];
  for (let step = 0; step < 60; step++) {
    const [d] = await draftsOf([loser]);
    history.push(d!);
    if (d! > 0) speculator.record(loser, d!, 0);
  }
  // rate 1/2: 3 drafts; 1/3: 2 (1/9 > 1/11); 1/3.97: 1; ... below 1/11 after about 10 rejections.
  assert.deepEqual(history.slice(0, 3), [3, 2, 1], 'fewer drafts as rejections come in');
  assert.ok(history.indexOf(0) > 3 && history.indexOf(0) < 15, `stops drafting: ${history.join(',')}`);
  // ... and tries again now and then as old evidence fades (ACCEPTANCE_DECAY per step).
  const retries = history.slice(20).filter((d) => d > 0).length;
  assert.ok(retries >= 1 && retries <= 6, `${retries} retries in 40 steps`);
  assert.equal(speculator.stats.acceptedTokens, 41);
});

test('blocks for drafts come only from free ones, and those holding only rejected drafts go back at once', () => {
  const allocator = new BlockAllocator(5, true); // 4 usable blocks
  const scheduler = new Scheduler({ maxNumSeqs: 4, maxNumBatchedTokens: 64, blockSize: 16 }, new KvCacheManager(allocator, 16));
  const seq = new Sequence('r', 0, prompt(31, 3), 31, 0, 100);
  seq.status = 'running';
  assert.ok(scheduler.kv.allocateSlots(seq, 32));
  seq.numComputed = 31; // position 31 is pending: it and 4 drafts need a third block
  assert.equal(scheduler.kv.allocateLookahead(seq, 31 + 1 + 4), 48);
  assert.equal(allocator.freeCount, 1);
  scheduler.commit({ rows: [{ seq, start: 31, count: 5, sample: true, draft: [1, 2, 3, 4] }], preempted: [] });
  assert.equal(seq.numComputed, 32, 'only the pending token is computed until verification keeps drafts');
  seq.tokens.push(9); // the pick at position 31 differed from the first draft
  scheduler.kv.freeLookahead(seq);
  assert.equal(scheduler.kv.blocksOf(seq).length, 2, 'the third block held only rejected drafts');
  assert.equal(allocator.freeCount, 2);
  assert.equal(allocator.cachedIdleCount, 0, 'a block of rejected drafts is never named for the prefix cache');
  // A kept draft counts as computed.
  seq.tokens.push(1, 2);
  scheduler.acceptDraftToken(seq);
  assert.equal(seq.numComputed, 33);
  // With no free block, a row drafts only into the room its blocks already have.
  allocator.allocate(allocator.freeCount); // others took every free block
  assert.equal(scheduler.kv.allocateLookahead(seq, 33 + 1 + 4), 32);
});
