// How the KV pool reaches the graph. This is where CPU and GPU strategies differ (design.md):
// on CPU an input tensor wraps the JS array without copying, so the whole pool is passed and the
// graph gathers the blocks it needs; through onnxruntime-node's CUDA provider every input is
// copied host-to-device on every run, so passing a 2 GB pool would copy 2 GB per step. There we
// pass only the blocks the batch uses, renumbered, which is the least a step can copy.
import * as ort from 'onnxruntime-node';
import type { KvPool } from './kv-cache.js';

/** A block table input of the graph (one per attention group). */
export interface BlockTableFeed {
  name: string;
  table: BigInt64Array;
  dims: [number, number];
}

export interface KvFeed {
  /** Adds the block tables and past_key_{l} / past_value_{l} to `feeds`. */
  addFeeds(feeds: Record<string, ort.Tensor>, tables: readonly BlockTableFeed[]): void;
}

/** CPU: the pool itself, zero-copy; tensors are built once and reused every step. */
export class WholePoolFeed implements KvFeed {
  private readonly tensors: Record<string, ort.Tensor> = {};

  constructor(pool: KvPool) {
    const { heads, numBlocks, blockSize, headDim } = pool.shape;
    const dims = [heads, numBlocks, blockSize, headDim];
    for (let l = 0; l < pool.shape.layers; l++) {
      this.tensors[`past_key_${l}`] = new ort.Tensor('float32', pool.keys[l], dims);
      this.tensors[`past_value_${l}`] = new ort.Tensor('float32', pool.values[l], dims);
    }
  }

  addFeeds(feeds: Record<string, ort.Tensor>, tables: readonly BlockTableFeed[]): void {
    Object.assign(feeds, this.tensors);
    for (const t of tables) feeds[t.name] = new ort.Tensor('int64', t.table, t.dims);
  }
}

/** Devices without zero-copy inputs: only the blocks this batch reads, renumbered from 1. */
export class UsedBlocksFeed implements KvFeed {
  constructor(private readonly pool: KvPool) {}

  addFeeds(feeds: Record<string, ort.Tensor>, tables: readonly BlockTableFeed[]): void {
    // One renumbering for every table, so a block two groups share is copied once.
    const remap = new Map<bigint, number>([[0n, 0]]);
    for (const { name, table, dims } of tables) {
      const compact = new BigInt64Array(table.length);
      for (let i = 0; i < table.length; i++) {
        let id = remap.get(table[i]);
        if (id === undefined) remap.set(table[i], (id = remap.size));
        compact[i] = BigInt(id);
      }
      feeds[name] = new ort.Tensor('int64', compact, dims);
    }
    const { heads, numBlocks, blockSize, headDim, layers } = this.pool.shape;
    const used = remap.size;
    const n = this.pool.blockFloats;
    for (let l = 0; l < layers; l++) {
      for (const [kind, src] of [['key', this.pool.keys[l]], ['value', this.pool.values[l]]] as const) {
        const dst = new Float32Array(heads * used * n);
        for (const [from, to] of remap) {
          if (to === 0) continue; // the null block stays zero
          for (let h = 0; h < heads; h++) {
            const s = (h * numBlocks + Number(from)) * n;
            dst.set(src.subarray(s, s + n), (h * used + to) * n);
          }
        }
        feeds[`past_${kind}_${l}`] = new ort.Tensor('float32', dst, [heads, used, blockSize, headDim]);
      }
    }
  }
}
