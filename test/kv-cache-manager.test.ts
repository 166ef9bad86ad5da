// The KV cache manager alone, without a scheduler or a model: which blocks a sequence's table
// holds, who else reads them (reference counts, observed on the allocator underneath), which
// cached blocks an allocation evicts first, and how block names chain with extra keys.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockAllocator } from '../src/engine/kv-cache.js';
import { KvCacheManager } from '../src/engine/kv-cache-manager.js';
import { Sequence } from '../src/engine/scheduler.js';

const BS = 4;
let arrival = 0;

function manager(blocks: number, prefixCaching = true) {
  const allocator = new BlockAllocator(blocks + 1, prefixCaching);
  return { kv: new KvCacheManager(allocator, BS), allocator };
}

const tokens = (n: number, salt: number) => Array.from({ length: n }, (_, i) => salt * 1000 + i + 1);
const seq = (ids: readonly number[], cacheKeys: readonly string[] = []) =>
  new Sequence(`r${arrival}`, 0, [...ids], ids.length, arrival++, Infinity, true, cacheKeys);

/** Admission and prefill as the engine does them: the cache lookup, slots for every token, their K/V committed. Returns the tokens found cached. */
function prefill(kv: KvCacheManager, s: Sequence): number {
  const hit = kv.takeCachedPrefix(s);
  assert.ok(kv.allocateSlots(s, s.tokens.length), 'room for the prompt');
  kv.commit(s, s.tokens.length);
  return hit;
}

test("eviction: a released table's tail goes before its head, so under pressure a prompt's head is still found", () => {
  const { kv } = manager(8);
  const prompt = tokens(16, 1);
  const a = seq(prompt);
  prefill(kv, a); // 4 full blocks, all named
  kv.remove(a);
  assert.equal(kv.freeBlocks, 8, 'cached blocks nobody reads count as free');
  // 4 never used blocks, then 2 of a's cached ones: its last two.
  const b = seq(tokens(24, 2));
  prefill(kv, b);
  kv.remove(b);
  assert.equal(kv.takeCachedPrefix(seq(prompt)), 8, "the first two blocks of a's prompt survived");
});

test('eviction: least recently released first, across tables', () => {
  const { kv } = manager(8);
  const first = seq(tokens(8, 1));
  const second = seq(tokens(8, 2));
  prefill(kv, first);
  prefill(kv, second);
  kv.remove(first);
  kv.remove(second);
  // 4 never used blocks, then 2 cached ones: the first table's, released earlier.
  prefill(kv, seq(tokens(24, 3)));
  assert.equal(kv.takeCachedPrefix(seq(tokens(9, 1))), 0, 'the first prompt was evicted');
  assert.equal(kv.takeCachedPrefix(seq(tokens(9, 2))), 8, 'the second is still cached');
});

test('refcounts: a fork shares full blocks and copies the partly filled one; preempting or cancelling any reader leaves the others theirs', () => {
  const { kv, allocator } = manager(8);
  const parent = seq(tokens(6, 1));
  prefill(kv, parent);
  const [p0, p1] = kv.blocksOf(parent) as [number, number];
  const copies: Array<[number, number]> = [];
  const copied = seq(parent.tokens);
  assert.equal(kv.fork(parent, copied, 6, { copyBlock: (from, to) => copies.push([from, to]) }), 6, 'a copy: all 6 tokens computed');
  const [c0, c1] = kv.blocksOf(copied) as [number, number];
  assert.deepEqual([c0, copies], [p0, [[p1, c1]]]);
  assert.notEqual(c1, p1);
  const recomputes = seq(parent.tokens);
  assert.equal(kv.fork(parent, recomputes, 6), 4, 'no block copy (a device pool): the partly filled block is recomputed');
  assert.deepEqual(kv.blocksOf(recomputes), [p0]);
  assert.deepEqual([allocator.refCount(p0), allocator.refCount(p1), allocator.refCount(c1)], [3, 1, 1]);
  assert.equal(kv.usedBlocks, 3);

  kv.evict(copied); // preempted
  assert.deepEqual(kv.blocksOf(copied), []);
  assert.deepEqual([allocator.refCount(p0), allocator.refCount(c1), kv.usedBlocks], [2, 0, 2]);
  kv.remove(parent); // cancelled
  assert.deepEqual([allocator.refCount(p0), allocator.refCount(p1), kv.usedBlocks], [1, 0, 1]);
  kv.remove(recomputes);
  assert.equal(kv.usedBlocks, 0);
  assert.throws(() => allocator.release([p0]), /double free/, 'every reader let go exactly once');
});

test('speculation: lookahead slots come only from free blocks, and those that held only rejected drafts go back', () => {
  const { kv, allocator } = manager(4);
  const s = seq(tokens(6, 1));
  prefill(kv, s); // 2 blocks
  s.tokens.push(50); // sampled: position 6 is pending
  assert.equal(kv.allocateLookahead(s, 6 + 1 + 4), 12, 'the pending token and 4 drafts: a third block');
  const lookahead = kv.blocksOf(s)[2]!;
  assert.equal(kv.usedBlocks, 3);
  kv.commit(s, 7); // only the pending token is the sequence's until verification
  s.tokens.push(99); // the first draft was rejected: position 7 is pending
  kv.freeLookahead(s);
  assert.deepEqual([kv.blocksOf(s).length, allocator.refCount(lookahead), allocator.cachedIdleCount], [2, 0, 0], 'freed, and never named');
  // Kept drafts keep their block.
  assert.equal(kv.allocateLookahead(s, 7 + 1 + 2), 12);
  s.tokens.push(5, 6, 7); // both kept, and the pick after them
  kv.freeLookahead(s);
  assert.equal(kv.blocksOf(s).length, 3);
  // With no free block a row drafts only into the room its blocks already have.
  allocator.allocate(kv.freeBlocks);
  assert.equal(kv.allocateLookahead(s, 10 + 1 + 4), 12);
});

test('hash chains: extra keys at the root keep equal tokens apart; equal keys share', () => {
  const { kv } = manager(16);
  const prompt = tokens(9, 1);
  const salted = seq(prompt, ['salt-a']);
  prefill(kv, salted);
  kv.remove(salted);
  assert.equal(kv.takeCachedPrefix(seq(prompt, ['salt-b'])), 0, 'another key');
  assert.equal(kv.takeCachedPrefix(seq(prompt)), 0, 'no key');
  assert.equal(kv.takeCachedPrefix(seq(prompt, ['salt-a'])), 8, 'the same key');
  const two = seq(prompt, ['a', 'b']);
  prefill(kv, two);
  assert.equal(kv.takeCachedPrefix(seq(prompt, ['ab'])), 0, 'keys are not concatenated');
  assert.equal(kv.takeCachedPrefix(seq(prompt, ['a', 'b'])), 8);
});

test('cached tokens: recorded at the first lookup only, through preemptions, until the table goes', () => {
  const { kv } = manager(16);
  const shared = tokens(8, 1);
  prefill(kv, seq([...shared, 7]));
  const s = seq([...shared, ...tokens(8, 2)]);
  assert.equal(prefill(kv, s), 8);
  assert.equal(kv.cachedTokens(s), 8);
  kv.evict(s); // preempted: its own blocks are cached now
  assert.equal(kv.takeCachedPrefix(s), 12, 'found again, its own blocks included');
  assert.equal(kv.cachedTokens(s), 8, 'not counted again');
  kv.free(s); // an admission rolled back
  assert.equal(kv.cachedTokens(s), 8);
  kv.remove(s);
  assert.equal(kv.cachedTokens(s), undefined);
  assert.equal(kv.cachedTokens(seq(shared)), undefined, 'no lookup, nothing recorded');
});

test("the draft group: its blocks count as used, and go whole (largest first) when the pool needs room or their sequence goes", () => {
  const { kv, allocator } = manager(8);
  const dropped: string[] = [];
  kv.onDraftDropped = (s) => dropped.push(s.requestId);
  const a = seq(tokens(4, 1));
  const b = seq(tokens(4, 2));
  assert.equal(kv.growDraft(a, 8, 8), 2);
  assert.equal(kv.growDraft(b, 12, 2), 2, 'no more than it may take');
  assert.equal(kv.growDraft(b, 12, 8), 1);
  assert.deepEqual([kv.usedBlocks, kv.touchedBlocks('draft'), kv.touchedBlocks('target')], [5, 5, 0]);
  assert.equal(kv.reclaimDraft(), true);
  assert.deepEqual([dropped, kv.draftBlocksOf(b), kv.draftBlocksOf(a).length, kv.usedBlocks], [[b.requestId], [], 2, 2]);
  assert.ok(kv.allocateSlots(a, 4));
  kv.evict(a); // preempted: its draft blocks go too
  assert.deepEqual([dropped, kv.usedBlocks, allocator.cachedIdleCount], [[b.requestId, a.requestId], 0, 0]);
  assert.equal(kv.reclaimDraft(), false, 'nothing held');
  kv.remove(b);
  assert.deepEqual(dropped, [b.requestId, a.requestId, b.requestId], 'the draft model hears of every sequence that goes');
});
