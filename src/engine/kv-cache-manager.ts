// The one owner of KV blocks (vLLM v1's KVCacheManager). The scheduler decides who runs; this
// decides which blocks hold what: every sequence's block table, the prefix cache's names for full
// blocks, lookahead slots for speculative tokens, forks of n > 1 choices, and the draft model's
// blocks as a group of their own. BlockAllocator (kv-cache.ts) stays the free list, reference
// counts and name index underneath; once sequences exist nothing else takes or frees blocks (only
// start-up calibration borrows scratch blocks before), so the seams between prefix caching,
// speculation and forks are all here.
//
// A sequence's table outlives a preemption (its block hashes are still true, as its tokens only
// grow, and its cached-token count is recorded once) and goes when the sequence is finished.
import { blockHash, blocksFor, type BlockAllocator, type BlockHash, type KvGroup, type KvStorage } from './kv-cache.js';
import type { Sequence } from './scheduler.js';

class BlockTable {
  blocks: number[] = [];
  /** Leading blocks already offered to the prefix cache (named, or taken from it). */
  registered = 0;
  /** Names of its full blocks so far (a memo: the sequence's tokens only ever grow). */
  readonly hashes: BlockHash[] = [];
  /**
   * Tokens its first prefix-cache lookup found (usage's cached_tokens). Recorded once, as vLLM
   * does: after a preemption the blocks found again are mostly its own.
   */
  cachedTokens: number | undefined = undefined;
}

const NO_BLOCKS: readonly number[] = [];

export class KvCacheManager {
  private readonly tables = new Map<Sequence, BlockTable>();
  /** The draft model's blocks per sequence: the 'draft' group, same ids, its own pool. */
  private readonly drafts = new Map<Sequence, number[]>();
  /** Tokens admissions looked up in the prefix cache, and those found (vLLM's queries / hits). */
  prefixCacheQueries = 0;
  prefixCacheHits = 0;
  /**
   * Told whenever a sequence's draft blocks go (its sequence finished or was preempted, or the
   * pool needed them): the draft model's own state for it is stale from then on.
   */
  onDraftDropped?: (seq: Sequence) => void;

  constructor(
    private readonly allocator: BlockAllocator,
    readonly blockSize: number,
  ) {}

  /** Blocks that hold tokens (the null block excluded). */
  get totalBlocks(): number {
    return this.allocator.numBlocks - 1;
  }

  /** Blocks an allocation can take (free ones, and cached ones nobody reads). */
  get freeBlocks(): number {
    return this.allocator.freeCount;
  }

  get usedBlocks(): number {
    return this.allocator.usedCount;
  }

  /** Block ids `group` was ever handed: its pool's blocks whose pages are committed. */
  touchedBlocks(group: KvGroup): number {
    return this.allocator.touchedCount(group);
  }

  /** The sequence's block table, as the runner reads it. */
  blocksOf(seq: Sequence): readonly number[] {
    return this.tables.get(seq)?.blocks ?? NO_BLOCKS;
  }

  /** Prompt tokens the sequence's first prefix-cache lookup found (undefined: none was made). */
  cachedTokens(seq: Sequence): number | undefined {
    return this.tables.get(seq)?.cachedTokens;
  }

  /**
   * Admission's prefix-cache lookup: the sequence takes the cached blocks its tokens start with.
   * Its last token is never taken: it is computed for the logits that pick the next one. Returns
   * the tokens the blocks taken hold (the sequence computes from there).
   */
  takeCachedPrefix(seq: Sequence): number {
    if (!this.allocator.prefixCaching || !seq.usesPrefixCache) return 0;
    const bs = this.blockSize;
    const table = this.tableOf(seq);
    const hashes = this.hashes(seq, table, Math.floor((seq.tokens.length - 1) / bs));
    const hit = this.allocator.cachedPrefix(hashes);
    table.blocks = this.allocator.acquireCached(hashes.slice(0, hit));
    table.registered = hit;
    table.cachedTokens ??= hit * bs;
    return hit * bs;
  }

  /** Counts an admission's lookup once the admission went through. */
  countLookup(queried: number, hit: number): void {
    this.prefixCacheQueries += queried;
    this.prefixCacheHits += hit;
  }

  /**
   * Blocks for `positions` positions of `seq`, all or nothing: false (and nothing taken) when the
   * pool cannot give them; the scheduler then makes room or preempts.
   */
  allocateSlots(seq: Sequence, positions: number): boolean {
    const table = this.tableOf(seq);
    const need = blocksFor(positions, this.blockSize) - table.blocks.length;
    if (need <= 0) return true;
    const got = this.allocator.allocate(need);
    if (!got) return false;
    table.blocks.push(...got);
    return true;
  }

  /**
   * Lookahead slots for speculative tokens: blocks for `positions` positions as far as free blocks
   * allow (a draft never preempts anything). Returns the positions the table now covers.
   */
  allocateLookahead(seq: Sequence, positions: number): number {
    const table = this.tableOf(seq);
    const need = blocksFor(positions, this.blockSize) - table.blocks.length;
    if (need > 0) table.blocks.push(...(this.allocator.allocate(Math.min(need, this.allocator.freeCount)) ?? []));
    return table.blocks.length * this.blockSize;
  }

  /** After a verification: lookahead blocks that only held rejected drafts go back to the pool. */
  freeLookahead(seq: Sequence): void {
    const table = this.tables.get(seq);
    const keep = blocksFor(seq.tokens.length, this.blockSize);
    if (table && table.blocks.length > keep) this.allocator.release(table.blocks.splice(keep));
  }

  /**
   * The sequence's first `computed` tokens are in its blocks: full blocks get their names, so a
   * later prompt can find them.
   */
  commit(seq: Sequence, computed: number): void {
    if (!this.allocator.prefixCaching) return;
    const table = this.tables.get(seq);
    const full = Math.floor(computed / this.blockSize);
    if (!table || full <= table.registered) return;
    const hashes = this.hashes(seq, table, full);
    for (let i = table.registered; i < full; i++) this.allocator.register(table.blocks[i]!, hashes[i]!);
    table.registered = full;
  }

  /**
   * A new choice continuing from `parent`'s first `computed` tokens: full blocks are shared, the
   * partly filled last block is copied on write in `storage`. A storage without a block copy (a
   * device-resident pool) or no free block for the copy leaves the child to recompute that
   * block's tokens (fewer than a block). Returns the tokens the child has computed.
   */
  fork(parent: Sequence, child: Sequence, computed: number, storage?: Pick<KvStorage, 'copyBlock'>): number {
    const from = this.blocksOf(parent);
    const full = Math.floor(computed / this.blockSize);
    const copy = storage?.copyBlock && computed % this.blockSize !== 0 ? this.allocator.allocate(1) : null;
    const shared = from.slice(0, full);
    this.allocator.share(shared);
    const table = this.tableOf(child);
    table.blocks = copy ? [...shared, ...copy] : shared;
    if (!copy) return full * this.blockSize;
    storage!.copyBlock!(from[full]!, copy[0]!);
    return computed;
  }

  /** Gives the sequence's blocks back, tail first (rollback of an admission); its table stays. */
  free(seq: Sequence): void {
    const table = this.tables.get(seq);
    if (!table) return;
    this.allocator.release(table.blocks);
    table.blocks = [];
    table.registered = 0;
  }

  /** A preemption: the sequence's blocks and its draft blocks go; it keeps its table for the recompute. */
  evict(seq: Sequence): void {
    this.free(seq);
    this.dropDraft(seq);
  }

  /** The sequence is finished or cancelled: everything held for it goes. */
  remove(seq: Sequence): void {
    this.evict(seq);
    this.tables.delete(seq);
  }

  /** The draft model's block table for `seq`. */
  draftBlocksOf(seq: Sequence): readonly number[] {
    return this.drafts.get(seq) ?? NO_BLOCKS;
  }

  /**
   * Draft blocks for `positions` positions of `seq`, taking at most `most` new ones (the caller
   * keeps them within what is free). Returns the blocks taken.
   */
  growDraft(seq: Sequence, positions: number, most: number): number {
    let table = this.drafts.get(seq);
    if (!table) this.drafts.set(seq, (table = []));
    const need = Math.min(blocksFor(positions, this.blockSize) - table.length, Math.max(0, most));
    if (need <= 0) return 0;
    table.push(...this.allocator.allocate(need, 'draft')!);
    return need;
  }

  /** The sequence's draft blocks go (whether it holds any or not, the draft model hears of it). */
  dropDraft(seq: Sequence): void {
    const table = this.drafts.get(seq);
    if (table) {
      this.drafts.delete(seq);
      if (table.length > 0) this.allocator.release(table);
    }
    this.onDraftDropped?.(seq);
  }

  /**
   * Room before a preemption: drops the largest draft table (a draft cache is rebuilt by a draft
   * prefill, a preempted sequence by a target one). False when no draft blocks are held.
   */
  reclaimDraft(): boolean {
    let largest: Sequence | undefined;
    let most = 0;
    for (const [seq, table] of this.drafts) {
      if (table.length > most) {
        most = table.length;
        largest = seq;
      }
    }
    if (!largest) return false;
    this.dropDraft(largest);
    return true;
  }

  private tableOf(seq: Sequence): BlockTable {
    let table = this.tables.get(seq);
    if (!table) this.tables.set(seq, (table = new BlockTable()));
    return table;
  }

  /**
   * The prefix-cache names of the sequence's first `count` blocks (each full of known tokens).
   * The chain's root mixes in the sequence's LoRA adapter (its load id; '' for the base model),
   * always as the first key so that no cache salt can pose as one, then its cache keys (the
   * tenant's, a cache salt): only sequences with the same adapter and keys share blocks.
   */
  private hashes(seq: Sequence, table: BlockTable, count: number): readonly BlockHash[] {
    const bs = this.blockSize;
    const memo = table.hashes;
    for (let i = memo.length; i < count; i++) {
      const root = i === 0 ? [seq.adapter === null ? '' : `lora:${seq.adapter}`, ...seq.cacheKeys] : undefined;
      memo.push(blockHash(i === 0 ? null : memo[i - 1]!, seq.tokens.slice(i * bs, (i + 1) * bs), root));
    }
    return memo.length === count ? memo : memo.slice(0, count);
  }
}
