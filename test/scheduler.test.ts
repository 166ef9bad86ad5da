// Scheduling policy without a model: plans are checked directly and "runner results" are
// simulated by committing plans and appending tokens by hand (as vLLM's scheduler tests do).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockAllocator, NULL_BLOCK } from '../src/engine/kv-cache.js';
import { KvCacheManager } from '../src/engine/kv-cache-manager.js';
import { SPARE_AFTER_PREEMPTIONS, Scheduler, Sequence } from '../src/engine/scheduler.js';
import { runStep } from './helpers/scheduler-steps.js';

let arrival = 0;
const seq = (id: string, promptLength: number, choice = 0) =>
  new Sequence(id, choice, Array.from({ length: promptLength }, (_, i) => i + 1), promptLength, arrival++);

/** Admission keeps no room for output unless `reserve` says so: most tests here are about blocks. */
function make(opts: { blocks: number; blockSize?: number; maxNumSeqs?: number; budget?: number; reserve?: number }) {
  const allocator = new BlockAllocator(opts.blocks + 1);
  const s = new Scheduler(
    { maxNumSeqs: opts.maxNumSeqs ?? 8, maxNumBatchedTokens: opts.budget ?? 64, blockSize: opts.blockSize ?? 4, admissionReserveTokens: opts.reserve ?? 0 },
    new KvCacheManager(allocator, opts.blockSize ?? 4),
  );
  allocators.set(s, allocator);
  return s;
}
/** The allocator under a scheduler's KV cache manager, for what only it shows (reference counts) and for squeezing the pool. */
const allocators = new Map<Scheduler, BlockAllocator>();
const refCount = (s: Scheduler, block: number) => allocators.get(s)!.refCount(block);
/** A pool with a block copy (host memory); a fork without one recomputes the partly filled block. */
const COPYING = { copyBlock: () => {} };

test('block allocator: all-or-nothing allocation, null block never handed out, double free caught', () => {
  const a = new BlockAllocator(5);
  assert.equal(a.freeCount, 4);
  const got = a.allocate(3)!;
  assert.equal(got.length, 3);
  assert.ok(!got.includes(NULL_BLOCK));
  assert.equal(a.allocate(2), null);
  assert.equal(a.freeCount, 1, 'a failed allocation takes nothing');
  a.share([got[0]]);
  a.release([got[0]]);
  assert.equal(a.freeCount, 1, 'a shared block stays allocated until its last reader releases it');
  a.release(got);
  assert.equal(a.freeCount, 4);
  assert.throws(() => a.release([got[1]]), /double free/);
});

test('new sequences are prefilled, then decode one token per step, sharing every step', () => {
  const s = make({ blocks: 16 });
  const a = seq('a', 5);
  const b = seq('b', 3);
  s.add(a);
  s.add(b);
  let plan = runStep(s);
  assert.deepEqual(plan.rows.map((r) => [r.seq.requestId, r.start, r.count, r.sample]), [['a', 0, 5, true], ['b', 0, 3, true]]);
  assert.equal(s.kv.blocksOf(a).length, 2);
  assert.equal(s.kv.blocksOf(b).length, 1);
  plan = runStep(s);
  assert.deepEqual(plan.rows.map((r) => [r.seq.requestId, r.start, r.count]), [['a', 5, 1], ['b', 3, 1]]);
  // b's 5th token needs a second block; a's 7th fits its second block.
  runStep(s);
  assert.equal(s.kv.blocksOf(b).length, 2);
});

test('a running sequence joins and leaves between steps; its blocks return at once', () => {
  const s = make({ blocks: 8 });
  const a = seq('a', 4);
  s.add(a);
  runStep(s);
  const b = seq('b', 4);
  s.add(b);
  const plan = runStep(s);
  assert.deepEqual(plan.rows.map((r) => [r.seq.requestId, r.count]), [['a', 1], ['b', 4]]);
  const before = s.kv.freeBlocks;
  s.finish(a);
  assert.equal(s.kv.freeBlocks, before + s.kv.blocksOf(a).length + 2);
  assert.deepEqual(runStep(s).rows.map((r) => r.seq.requestId), ['b']);
});

test('long prompts are chunked under the token budget while decodes keep flowing', () => {
  const s = make({ blocks: 64, budget: 8 });
  const a = seq('a', 3);
  s.add(a);
  runStep(s);
  const long = seq('long', 20);
  s.add(long);
  const counts: Array<Array<[string, number, boolean]>> = [];
  for (let i = 0; i < 4; i++) counts.push(runStep(s).rows.map((r) => [r.seq.requestId, r.count, r.sample]));
  assert.deepEqual(counts, [
    [['a', 1, true], ['long', 7, false]],
    [['a', 1, true], ['long', 7, false]],
    [['a', 1, true], ['long', 6, true]],
    [['a', 1, true], ['long', 1, true]],
  ]);
});

test('admission waits for memory, first come first served, and respects max_num_seqs', () => {
  const s = make({ blocks: 4, maxNumSeqs: 2 });
  const a = seq('a', 8); // 2 blocks
  const b = seq('b', 12); // 3 blocks: does not fit beside a
  const c = seq('c', 2);
  s.add(a);
  s.add(b);
  s.add(c);
  assert.deepEqual(runStep(s).rows.map((r) => r.seq.requestId), ['a'], 'b blocks the queue; c does not jump it');
  s.finish(a);
  assert.deepEqual(runStep(s).rows.map((r) => r.seq.requestId), ['b', 'c'], 'b first, then c fits beside it');
  const d = seq('d', 1);
  s.add(d);
  s.finish(b);
  runStep(s);
  assert.equal(s.running.length, 2, 'c and d run');
  const e = seq('e', 1);
  s.add(e);
  runStep(s);
  assert.equal(s.running.length, 2, 'max_num_seqs holds e back');
  assert.equal(s.waiting[0], e);
});

test('out of memory mid-generation preempts the newest sequence, which later resumes with every token', () => {
  const s = make({ blocks: 4, blockSize: 4 });
  const old = seq('old', 4);
  const young = seq('young', 4);
  s.add(old);
  s.add(young);
  runStep(s); // each holds 1 full block and has 1 generated token pending
  runStep(s); // each needs a 2nd block: 4 used
  for (let i = 0; i < 3; i++) runStep(s); // fill the 2nd blocks: 8 tokens each cached
  assert.equal(s.kv.freeBlocks, 0);
  const youngTokens = [...young.tokens];
  const plan = runStep(s); // old needs a 3rd block: young is evicted
  assert.deepEqual(plan.preempted, [young]);
  assert.deepEqual(plan.rows.map((r) => r.seq.requestId), ['old']);
  assert.equal(young.status, 'waiting');
  assert.equal(young.numComputed, 0);
  assert.deepEqual(young.tokens, youngTokens, 'generated tokens are kept for the recompute');
  assert.equal(s.waiting[0], young);
  s.finish(old);
  const resumed = runStep(s);
  assert.deepEqual(resumed.rows.map((r) => [r.seq.requestId, r.start, r.count, r.sample]), [['young', 0, youngTokens.length, true]]);
});

test('a sequence that cannot get a block preempts itself when it is the newest', () => {
  const s = make({ blocks: 2, blockSize: 2 });
  const a = seq('a', 2);
  const b = seq('b', 2);
  s.add(a);
  s.add(b);
  runStep(s);
  const plan = runStep(s); // both need a 2nd block, none free: b (newest) goes, a gets b's block
  assert.deepEqual(plan.preempted, [b]);
  assert.deepEqual(plan.rows.map((r) => r.seq.requestId), ['a']);
  assert.equal(s.preemptionCount, 1);
});

/** A 6-token prompt prefilled in one step, and `n` more choices of it not yet forked. */
function prefilledParent(opts: Parameters<typeof make>[0], n: number) {
  const s = make(opts);
  const parent = seq('r', 6, 0);
  parent.unforked = n;
  s.add(parent);
  runStep(s);
  const children = Array.from({ length: n }, (_, c) => new Sequence('r', c + 1, parent.tokens.slice(0, 6), 6, parent.arrival));
  return { s, parent, children: children as [Sequence, ...Sequence[]] };
}

test('fork shares full blocks and copies the partial one; abort frees everything', () => {
  const { s, parent, children: [child] } = prefilledParent({ blocks: 8, blockSize: 4 }, 1);
  const copies: Array<[number, number]> = [];
  s.fork(parent, child, { copyBlock: (from, to) => copies.push([from, to]) });
  assert.deepEqual(copies, [[s.kv.blocksOf(parent)[1], s.kv.blocksOf(child)[1]]], 'the partly filled block, copied');
  assert.equal(s.kv.blocksOf(child)[0], s.kv.blocksOf(parent)[0]);
  assert.equal(refCount(s, s.kv.blocksOf(parent)[0]!), 2);
  assert.equal(child.numComputed, 6);
  assert.equal(s.running.length, 2);
  assert.equal(s.abort('r'), true);
  assert.equal(s.kv.usedBlocks, 0);
  assert.equal(s.abort('r'), false, 'abort is idempotent');
});

test('without a block copy (a device pool), a fork shares full blocks and recomputes the partial one as a chunk', () => {
  const { s, parent, children: [child] } = prefilledParent({ blocks: 8, blockSize: 4 }, 1);
  s.fork(parent, child);
  assert.deepEqual(s.kv.blocksOf(child), [s.kv.blocksOf(parent)[0]]);
  assert.equal(child.numComputed, 4);
  child.tokens.push(777); // the engine samples the fork's first token at once
  const plan = runStep(s);
  assert.deepEqual(plan.rows.map((r) => [r.seq.choice, r.start, r.count, r.sample]), [[0, 6, 1, true], [1, 4, 3, true]]);
  assert.equal(s.kv.blocksOf(child).length, 2);
  assert.notEqual(s.kv.blocksOf(child)[1], s.kv.blocksOf(parent)[1], 'the child writes its own copy of the partial block');
  assert.equal(s.abort('r'), true);
  assert.equal(s.kv.usedBlocks, 0);
});

test('a paused sequence takes no part in steps, keeps its blocks, and resumes where it was', () => {
  const s = make({ blocks: 16 });
  const a = seq('a', 5);
  const b = seq('b', 3);
  s.add(a);
  s.add(b);
  runStep(s);
  s.pause('a');
  assert.ok(s.hasWork(), 'b still runs');
  let plan = runStep(s);
  assert.deepEqual(plan.rows.map((r) => r.seq.requestId), ['b']);
  assert.equal(s.kv.blocksOf(a).length, 2, 'a keeps its blocks while memory allows');
  assert.equal(s.pausedCount, 1);
  s.pause('b');
  assert.equal(s.hasWork(), false, 'nothing to step while everything is paused');
  assert.equal(s.schedule().rows.length, 0);
  s.resume('a');
  plan = runStep(s);
  assert.deepEqual(plan.rows.map((r) => [r.seq.requestId, r.start, r.count]), [['a', 5, 1]]);
});

test('paused sequences are preempted first: for a growing sequence, and for the head of the queue', () => {
  // 4 blocks of 4 tokens. a (3 tokens) and b (4) run a block each; b pauses.
  const s = make({ blocks: 4 });
  const a = seq('a', 3);
  const b = seq('b', 4);
  s.add(a);
  s.add(b);
  runStep(s);
  s.pause('b');
  runStep(s); // a: 5 tokens, 4 of them cached in its one block
  const c = seq('c', 8);
  s.add(c);
  // a grows into a second block (1 left), c needs 2: b (paused) is preempted for it, not a.
  let plan = runStep(s);
  assert.deepEqual(plan.preempted.map((q) => q.requestId), ['b']);
  assert.deepEqual(plan.rows.map((r) => r.seq.requestId), ['a', 'c']);
  assert.equal(b.status, 'waiting');
  assert.equal(s.kv.blocksOf(b).length, 0, "the paused sequence's blocks went back to the pool");
  // Resumed, b waits at the front of the queue and recomputes once memory allows.
  s.resume('b');
  s.finish(c);
  plan = runStep(s);
  assert.deepEqual(plan.rows.map((r) => [r.seq.requestId, r.start]), [['a', 5], ['b', 0]]);
});

test('a paused running sequence gives up its batch slot to the head of the queue', () => {
  const s = make({ blocks: 16, maxNumSeqs: 1 });
  const a = seq('a', 3);
  const b = seq('b', 3);
  s.add(a);
  s.add(b);
  runStep(s);
  assert.equal(b.status, 'waiting', 'the batch holds one sequence');
  s.pause('a');
  const plan = runStep(s);
  assert.deepEqual(plan.rows.map((r) => r.seq.requestId), ['b']);
  assert.deepEqual(plan.preempted.map((q) => q.requestId), ['a']);
  assert.equal(s.running.length, 1);
});

/** What the engine does once a prompt is prefilled: forks its other choices, each sampling a token. */
function forkChoices(s: Scheduler, parent: Sequence, canCopy = true): Sequence[] {
  const children: Sequence[] = [];
  for (let c = 1; parent.unforked > 0; c++) {
    const child = new Sequence(parent.requestId, c, parent.tokens.slice(0, parent.promptLength), parent.promptLength, parent.arrival);
    s.fork(parent, child, canCopy ? COPYING : undefined);
    child.tokens.push(2000 + c);
    children.push(child);
  }
  return children;
}

test("a request's choices are admitted as one unit: it waits for a batch slot for each, then every choice shares the prompt's blocks", () => {
  const s = make({ blocks: 16, maxNumSeqs: 4 });
  const x = seq('x', 2);
  const y = seq('y', 2);
  s.add(x);
  s.add(y);
  runStep(s);
  const r = seq('r', 6);
  r.unforked = 2;
  const late = seq('late', 2);
  s.add(r);
  s.add(late);
  let plan = runStep(s);
  assert.deepEqual(plan.rows.map((row) => row.seq.requestId), ['x', 'y'], 'three choices do not fit beside two; late does not jump the queue');
  s.finish(x);
  plan = runStep(s);
  assert.deepEqual(plan.rows.map((row) => [row.seq.requestId, row.count]), [['y', 1], ['r', 6]]);
  const children = forkChoices(s, r);
  assert.equal(refCount(s, s.kv.blocksOf(r)[0]!), 3, 'the full prompt block is shared by all three choices');
  plan = runStep(s);
  assert.deepEqual(plan.rows.map((row) => [row.seq.requestId, row.seq.choice, row.count]), [['y', 0, 1], ['r', 0, 1], ['r', 1, 1], ['r', 2, 1]], 'no choice recomputes the prompt');
  assert.ok(children.every((c) => c.status === 'running'));
  assert.equal(late.status, 'waiting', 'the batch is full');
});

test('the slots of choices still to fork are held while their prompt is prefilled over several steps', () => {
  const s = make({ blocks: 16, maxNumSeqs: 2, budget: 4 });
  const r = seq('r', 10);
  r.unforked = 1;
  s.add(r);
  const b = seq('b', 1);
  s.add(b);
  const chunks: Array<Array<[string, number]>> = [];
  for (let i = 0; i < 3; i++) chunks.push(runStep(s).rows.map((row) => [row.seq.requestId, row.count]));
  assert.deepEqual(chunks, [[['r', 4]], [['r', 4]], [['r', 2]]], 'b waits: the batch slot it could take is the second choice’s');
  forkChoices(s, r);
  assert.deepEqual(runStep(s).rows.map((row) => [row.seq.choice, row.count]), [[0, 1], [1, 1]]);
  assert.equal(b.status, 'waiting');
});

test("admission counts the choices' copies of the partly filled prompt block", () => {
  const s = make({ blocks: 4 });
  const o = seq('o', 3);
  s.add(o);
  runStep(s); // o: one block
  const r = seq('r', 6); // 2 blocks, the second partly filled
  r.unforked = 2; // + 2 copies: 4 blocks, 3 free
  s.add(r);
  assert.deepEqual(runStep(s).rows.map((row) => row.seq.requestId), ['o'], 'r waits rather than leave its choices to recompute the prompt');
  s.finish(o);
  assert.deepEqual(runStep(s).rows.map((row) => row.seq.requestId), ['r']);
  forkChoices(s, r);
  assert.equal(s.kv.freeBlocks, 0, 'two shared blocks, a copy each');
  assert.deepEqual(runStep(s).rows.map((row) => [row.seq.choice, row.start, row.count]), [[0, 6, 1], [1, 6, 1], [2, 6, 1]]);
});

test('without a free block for its copy, a fork still shares the full blocks and recomputes only the partly filled one', () => {
  const { s, parent, children: [child] } = prefilledParent({ blocks: 8, blockSize: 4 }, 1);
  const allocator = allocators.get(s)!;
  const taken = allocator.allocate(allocator.freeCount)!; // others grew into every free block
  const copies: number[] = [];
  s.fork(parent, child, { copyBlock: (from) => copies.push(from) });
  assert.deepEqual(copies, [], 'no block to copy into');
  assert.deepEqual(s.kv.blocksOf(child), [s.kv.blocksOf(parent)[0]]);
  child.tokens.push(777);
  allocator.release(taken);
  const plan = runStep(s);
  assert.deepEqual(plan.rows.map((r) => [r.seq.choice, r.start, r.count]), [[0, 6, 1], [1, 4, 3]]);
});

test('admission keeps room for the output to come: for every running sequence and the newcomer, up to what max_tokens leaves', () => {
  // Blocks of 4, room kept for 8 more tokens per sequence. When b comes, a has 5 tokens (its
  // prompt and a sampled one) in 2 blocks: it claims blocksFor(5 + 8) - 2 = 2 more; b (4 tokens)
  // claims blocksFor(4 + 8) = 3.
  const run = (blocks: number, bMaxOutput = Infinity) => {
    const s = make({ blocks, reserve: 8 });
    const a = seq('a', 4);
    s.add(a);
    runStep(s);
    const b = new Sequence('b', 0, [1, 2, 3, 4], 4, arrival++, bMaxOutput);
    s.add(b);
    runStep(s);
    return b.status;
  };
  assert.equal(run(6), 'waiting', '4 free blocks, 5 claimed');
  assert.equal(run(7), 'running');
  assert.equal(run(6, 1), 'running', 'b may generate 1 token: it claims blocksFor(5) = 2');
  // Alone in the batch a sequence needs only its prompt's blocks, however much room it may want.
  const alone = make({ blocks: 2, reserve: 1000 });
  const big = seq('big', 8);
  alone.add(big);
  runStep(alone);
  assert.equal(big.status, 'running');
});

test('with room kept for output, sequences that all grow through their blocks are not preempted', () => {
  // 12 blocks of 4; each sequence: a 4-token prompt and 12 tokens of output (4 blocks in all).
  const preemptionsWith = (reserve: number) => {
    const s = make({ blocks: 12, reserve });
    const seqs = Array.from({ length: 5 }, (_, i) => new Sequence(`s${i}`, 0, [1, 2, 3, 4], 4, arrival++, 12));
    for (const q of seqs) s.add(q);
    for (let step = 0; step < 200 && seqs.some((q) => q.status !== 'finished'); step++) {
      runStep(s);
      for (const q of seqs) if (q.status === 'running' && q.outputLength >= 12 && q.numComputed === q.tokens.length - 1) s.finish(q);
    }
    assert.ok(seqs.every((q) => q.status === 'finished'), 'every sequence completed');
    return s.preemptionCount;
  };
  assert.ok(preemptionsWith(0) > 0, 'admitting on the prompt alone overcommits the pool');
  assert.equal(preemptionsWith(12), 0);
});

test('a sequence preempted twice is passed over as a victim while another can go', () => {
  const setup = (youngPreemptions: number) => {
    const s = make({ blocks: 2, blockSize: 2 });
    const old = seq('old', 2);
    const young = seq('young', 2);
    young.preemptions = youngPreemptions;
    s.add(old);
    s.add(young);
    runStep(s);
    return { plan: runStep(s), old, young }; // both need a 2nd block, none is free
  };
  const fresh = setup(1);
  assert.deepEqual(fresh.plan.preempted, [fresh.young], 'the newest goes, having the least to redo');
  const spared = setup(SPARE_AFTER_PREEMPTIONS);
  assert.deepEqual(spared.plan.preempted, [spared.old], 'the twice-preempted newest is spared: the older one goes');
  assert.deepEqual(spared.plan.rows.map((r) => r.seq.requestId), ['young']);
  assert.equal(spared.old.preemptions, 1);
});

test("the draft group's blocks share the pool: dropped before anything is preempted or an admission waits, and the draft model hears whenever its sequence ends or is preempted", () => {
  const s = make({ blocks: 4 });
  const dropped: string[] = [];
  s.kv.onDraftDropped = (q) => dropped.push(`${q.requestId}:${q.status}`);
  /** What a draft model's cache takes: `n` more blocks of the 'draft' group. */
  const takeDraft = (q: Sequence, n: number) => assert.equal(s.kv.growDraft(q, (s.kv.draftBlocksOf(q).length + n) * 4, n), n);
  const a = seq('a', 4);
  s.add(a);
  runStep(s);
  takeDraft(a, 3);
  assert.equal(s.kv.freeBlocks, 0);
  // a's 5th token needs a block: the draft blocks go, nothing is preempted.
  runStep(s);
  assert.deepEqual([s.preemptionCount, s.kv.blocksOf(a).length, s.kv.draftBlocksOf(a).length, dropped], [0, 2, 0, ['a:running']]);
  // A newcomer that does not fit beside the draft blocks: they go, and it is admitted.
  takeDraft(a, 2);
  const b = seq('b', 4);
  s.add(b);
  runStep(s);
  assert.deepEqual([s.preemptionCount, b.status, dropped], [0, 'running', ['a:running', 'a:running']]);
  // Nothing held any more: a block for a is a preemption of b, which the draft model hears of.
  for (let i = 0; i < 3; i++) runStep(s);
  assert.equal(s.preemptionCount, 1);
  assert.deepEqual(dropped.slice(2), ['b:waiting']);
  s.finish(a);
  assert.deepEqual(dropped.slice(3), ['a:finished']);
  s.abort('b');
  assert.deepEqual(dropped.slice(4), ['b:finished']);
  assert.equal(s.kv.freeBlocks, 4);
});

test('--max-loras: a waiting sequence whose adapter would be one too many is passed over, not the queue behind it; it is admitted when that adapter leaves', () => {
  const allocator = new BlockAllocator(65);
  const s = new Scheduler({ maxNumSeqs: 8, maxNumBatchedTokens: 64, blockSize: 4, admissionReserveTokens: 0, maxLoras: 1 }, new KvCacheManager(allocator, 4));
  const withAdapter = (id: string, adapter: number | null) => new Sequence(id, 0, [1, 2, 3, 4, 5], 5, arrival++, 10, true, [], undefined, 0, adapter);
  const [a1, b2, base, a1b] = [withAdapter('a1', 1), withAdapter('b2', 2), withAdapter('base', null), withAdapter('a1b', 1)];
  for (const q of [a1, b2, base, a1b]) s.add(q);
  runStep(s);
  assert.deepEqual(s.running.map((q) => q.requestId), ['a1', 'base', 'a1b'], 'adapter 2 waits; the base request and adapter 1 behind it go');
  assert.deepEqual(s.waiting.map((q) => q.requestId), ['b2']);
  assert.deepEqual([...s.adapterLoad()], [[1, { running: 2, waiting: 0 }], [2, { running: 0, waiting: 1 }]]);
  s.finish(a1);
  runStep(s);
  assert.equal(b2.status, 'waiting', 'adapter 1 still runs (a1b)');
  s.finish(a1b);
  runStep(s);
  assert.equal(b2.status, 'running', 'admitted once no other adapter holds the slot');
});
