// KV memory in fixed-size blocks. The allocator is pure bookkeeping (synchronous, no model, unit
// tested on its own) that only the KV cache manager (kv-cache-manager.ts) drives; the pool holds
// the actual float32 storage the graph reads zero-copy.
//
// Block 0 is reserved as the null block: block tables are padded with it and it is never written,
// so the graph can gather padding without bounds checks.
//
// Automatic prefix caching (vLLM's APC): a full block is named by a hash of its tokens and of
// everything before it (the parent block's hash), so equal names mean equal K/V (the graph
// computes a token's K/V bit-identically however its prompt was chunked). A block whose last
// reader lets go keeps its contents and its name, on an LRU list, until the pool needs the room;
// a sequence whose prompt starts with named blocks takes them instead of recomputing them.
import { createHash } from 'node:crypto';

export const NULL_BLOCK = 0;

/**
 * The name of a full block: a digest of the parent block's name and the block's token ids; the
 * first block of a chain mixes in the chain's extra keys instead of a parent.
 */
export type BlockHash = string;

/**
 * `extraKeys` (first block only) keep chains apart that must never share K/V although their
 * tokens agree: the LoRA adapter a sequence runs with, and a cache salt (vLLM's `cache_salt`,
 * against prefix-cache timing side channels between users). Each key is length-prefixed, so
 * no two lists of keys digest alike.
 */
export function blockHash(parent: BlockHash | null, tokens: ArrayLike<number>, extraKeys: readonly string[] = []): BlockHash {
  const h = createHash('sha256');
  if (parent !== null) h.update(parent, 'base64');
  else {
    for (const key of extraKeys) {
      const bytes = Buffer.from(key, 'utf8');
      h.update(new Uint8Array(Uint32Array.of(bytes.length).buffer));
      h.update(bytes);
    }
  }
  h.update(new Uint8Array(Int32Array.from(tokens).buffer));
  return h.digest('base64');
}

/**
 * A KV block holds a multiple of this many tokens: the layout the attention graphs are built and
 * tested for (the WebGPU PagedAttention kernel requires a power of two >= 16 outright).
 */
export const BLOCK_SIZE_MULTIPLE = 16;

/**
 * Who writes a block's K/V: the served model, or a draft model (its own pool, same block ids).
 * The allocator counts, per group, the block ids ever handed out: their pages are the ones the OS
 * has committed, since a pool's pages are committed only as its blocks are first written.
 */
export type KvGroup = 'target' | 'draft';
const GROUP_BIT: Record<KvGroup, number> = { target: 1, draft: 2 };

export class BlockAllocator {
  /** Unnamed free blocks, a stack: the most recently freed (warm, committed) are reused first. */
  private readonly free: number[] = [];
  private readonly refs: Uint16Array;
  /** Bit g set: group g has used the block (its pages in that group's pool are committed). */
  private readonly touchedBy: Uint8Array;
  private readonly touched: Record<KvGroup, number> = { target: 0, draft: 0 };
  /** Named (cached) blocks, by name, whether in use or not. */
  private readonly byHash = new Map<BlockHash, number>();
  private readonly hashOf = new Map<number, BlockHash>();
  /** Named blocks nobody reads, in eviction order (least recently released first, a table's tail before its head). */
  private readonly evictable = new Set<number>();

  /**
   * `numBlocks` includes the null block, so `numBlocks - 1` are allocatable. Without
   * `prefixCaching`, blocks are never named and a released block is free at once.
   */
  constructor(
    readonly numBlocks: number,
    readonly prefixCaching = false,
  ) {
    if (numBlocks < 2) throw new Error('the KV cache needs at least one block besides the null block');
    this.refs = new Uint16Array(numBlocks);
    this.touchedBy = new Uint8Array(numBlocks);
    // Highest ids at the bottom of the stack so low ids are handed out first (tidier tables in tests).
    for (let b = numBlocks - 1; b >= 1; b--) this.free.push(b);
  }

  /** Blocks an allocation can take: free ones and cached ones nobody reads. */
  get freeCount(): number {
    return this.free.length + this.evictable.size;
  }

  /** Blocks some sequence reads. */
  get usedCount(): number {
    return this.numBlocks - 1 - this.freeCount;
  }

  /** Cached blocks nobody reads (counted free: an allocation evicts them). */
  get cachedIdleCount(): number {
    return this.evictable.size;
  }

  /** Block ids `group` has ever been handed: the blocks of its pool that hold committed pages. */
  touchedCount(group: KvGroup): number {
    return this.touched[group];
  }

  /**
   * Takes `n` fresh blocks for `group`, or returns null (and takes none) when fewer are available.
   * Order: unnamed free blocks, warm before never used ones, then named blocks nobody reads, in
   * eviction order. A never used block goes before a cached one: the pool's size is the user's
   * choice (--kv-cache-tokens), and what it does not hold for running sequences serves as prefix
   * cache, even though every page of it is then committed in the end (docs/design.md, "KV memory").
   */
  allocate(n: number, group: KvGroup = 'target'): number[] | null {
    if (n > this.freeCount) return null;
    const out = this.free.splice(Math.max(0, this.free.length - n), n).reverse();
    for (const b of this.evictable) {
      if (out.length === n) break;
      this.evictable.delete(b);
      this.byHash.delete(this.hashOf.get(b)!);
      this.hashOf.delete(b);
      out.push(b);
    }
    const bit = GROUP_BIT[group];
    for (const b of out) {
      this.refs[b] = 1;
      if ((this.touchedBy[b]! & bit) === 0) {
        this.touchedBy[b]! |= bit;
        this.touched[group]++;
      }
    }
    return out;
  }

  /** Another sequence now also reads these blocks (n > 1 choices share the prompt). */
  share(blocks: readonly number[]): void {
    for (const b of blocks) this.refs[b]++;
  }

  refCount(block: number): number {
    return this.refs[block];
  }

  /**
   * The reader of `blocks` (a block table, in order) lets go. Named blocks join the eviction order
   * tail first: a chain is found from its first block on, so evicting its head first would leave
   * the rest unreachable while it still took room (vLLM frees in reverse order for the same reason).
   */
  release(blocks: readonly number[]): void {
    for (let i = blocks.length - 1; i >= 0; i--) {
      const b = blocks[i]!;
      if (b === NULL_BLOCK || this.refs[b] === 0) throw new Error(`double free of KV block ${b}`);
      if (--this.refs[b] > 0) continue;
      if (this.hashOf.has(b)) this.evictable.add(b);
      else this.free.push(b);
    }
  }

  /** How many of `hashes`, from the first on, name cached blocks. */
  cachedPrefix(hashes: readonly BlockHash[]): number {
    let n = 0;
    while (n < hashes.length && this.byHash.has(hashes[n]!)) n++;
    return n;
  }

  /** Takes the cached blocks named by `hashes` (all cached, see cachedPrefix) for a new reader. */
  acquireCached(hashes: readonly BlockHash[]): number[] {
    return hashes.map((h) => {
      const b = this.byHash.get(h)!;
      if (this.refs[b]++ === 0) this.evictable.delete(b);
      return b;
    });
  }

  /**
   * Names a block its reader has just filled. A name already held by another block (two
   * sequences computed the same prefix at once) stays with that one; this block stays unnamed.
   */
  register(block: number, hash: BlockHash): void {
    if (!this.prefixCaching || this.byHash.has(hash) || this.hashOf.has(block)) return;
    this.byHash.set(hash, block);
    this.hashOf.set(block, hash);
  }
}

/** Blocks needed to hold `tokens` tokens. */
export function blocksFor(tokens: number, blockSize: number): number {
  return Math.ceil(tokens / blockSize);
}

export interface PoolShape {
  layers: number;
  heads: number;
  headDim: number;
  numBlocks: number;
  blockSize: number;
}

/**
 * What the engine needs of a runner's KV storage, wherever it lives: its shape, and a block copy
 * for copy-on-write where the storage can make one synchronously. Device-resident pools cannot
 * (no op copies a block in place), and a fork then recomputes its partly filled block (KvCacheManager.fork).
 */
export interface KvStorage {
  readonly shape: PoolShape;
  copyBlock?(from: number, to: number): void;
}

/** Bytes of process memory one block takes in `storage` (0 for a pool in device memory). */
export function hostBlockBytes(storage: KvStorage): number {
  return storage instanceof KvPool ? KvPool.blockBytes(storage.shape) : 0;
}

/** Host memory a pool has committed, given how many of its blocks were ever written. */
export function committedBytes(storage: KvStorage, touchedBlocks: number): number {
  if (!(storage instanceof KvPool)) return 0;
  return (storage.committedUpFront ? storage.shape.numBlocks : touchedBlocks) * hostBlockBytes(storage);
}

/** The pool shape of a model folder's graph. */
export function poolShape(manifest: { numLayers: number; numHeads: number; headDim: number }, numBlocks: number, blockSize: number): PoolShape {
  return { layers: manifest.numLayers, heads: manifest.numHeads, headDim: manifest.headDim, numBlocks, blockSize };
}

/**
 * `32768 tokens in 2048 blocks of 16, 2305.1 MiB` (GPT-2 small): what the pool takes once every block was used.
 * Its pages are committed as blocks are first written, and prefix caching keeps freed blocks until
 * the pool needs them, so a busy server's memory reaches all of it.
 */
export function describePool(shape: PoolShape): string {
  const blocks = shape.numBlocks - 1; // the null block holds no tokens
  const mib = (shape.numBlocks * KvPool.blockBytes(shape)) / 2 ** 20;
  return `${blocks * shape.blockSize} tokens in ${blocks} blocks of ${shape.blockSize}, ${mib.toFixed(1)} MiB`;
}

/**
 * Per layer, a key and a value array laid out [heads, numBlocks, blockSize, headDim]. Allocated
 * zero-filled once; on 4 KiB pages the OS commits pages only as blocks are first written, so
 * resident memory follows the blocks actually used. Committing it all at start, as vLLM and
 * llama.cpp do, would make memory predictable but slowed a server's start more than it is worth
 * where first touches of memory are slow (docs/benchmark.md, "Figures behind the code"); with
 * prefix caching a busy server reaches every block in the end anyway, and the startup log gives
 * the size it will reach (describePool).
 *
 * On transparent huge pages (src/util/huge-pages.ts) a first write commits 2 MiB, and one block
 * is a slice of every head's span in all 2 x layers arrays: a few blocks commit most of the pool.
 * There the pool is committed at construction (`committedUpFront`), so that what the process
 * reports as committed is what it holds, not a guess at the kernel's page boundaries.
 */
export class KvPool implements KvStorage {
  readonly keys: Float32Array[] = [];
  readonly values: Float32Array[] = [];
  readonly blockFloats: number;

  constructor(
    readonly shape: PoolShape,
    readonly committedUpFront = false,
  ) {
    const perLayer = shape.heads * shape.numBlocks * shape.blockSize * shape.headDim;
    for (let l = 0; l < shape.layers; l++) {
      this.keys.push(new Float32Array(perLayer));
      this.values.push(new Float32Array(perLayer));
    }
    this.blockFloats = shape.blockSize * shape.headDim;
    // One write per 4 KiB page: where the kernel could not give a huge page, the small ones are committed too.
    if (committedUpFront) for (const a of [...this.keys, ...this.values]) for (let i = 0; i < a.length; i += 1024) a[i] = 0;
  }

  /** Bytes one block takes across all layers, keys and values. */
  static blockBytes(shape: Omit<PoolShape, 'numBlocks'>): number {
    return shape.layers * 2 * shape.heads * shape.blockSize * shape.headDim * 4;
  }

  /**
   * Copies a row's new K/V from the graph's flat outputs ([tokens, heads * headDim]) into the
   * pool: flat token `first + i` goes to position `pastLength + i` of that row's blocks.
   */
  writeTokens(
    layer: number,
    newKey: Float32Array,
    newValue: Float32Array,
    first: number,
    count: number,
    pastLength: number,
    blocks: readonly number[],
  ): void {
    const { heads, headDim: D, blockSize: bs, numBlocks } = this.shape;
    const E = heads * D;
    const keys = this.keys[layer];
    const values = this.values[layer];
    for (let i = 0; i < count; i++) {
      const pos = pastLength + i;
      const block = blocks[(pos / bs) | 0];
      const slot = pos % bs;
      for (let h = 0; h < heads; h++) {
        const src = (first + i) * E + h * D;
        const dst = ((h * numBlocks + block) * bs + slot) * D;
        for (let d = 0; d < D; d++) {
          keys[dst + d] = newKey[src + d];
          values[dst + d] = newValue[src + d];
        }
      }
    }
  }

  /** Copy-on-write for a shared, partly filled block: the fork gets its own copy. */
  copyBlock(from: number, to: number): void {
    const { heads, numBlocks } = this.shape;
    const n = this.blockFloats;
    for (let l = 0; l < this.shape.layers; l++) {
      for (const arr of [this.keys[l], this.values[l]]) {
        for (let h = 0; h < heads; h++) {
          const base = h * numBlocks;
          arr.copyWithin((base + to) * n, (base + from) * n, (base + from + 1) * n);
        }
      }
    }
  }
}
