// Runs the serving graph for a set of rows (sequence chunks) and writes their new K/V into the
// pool. The runner sees rows, never requests: the scheduler decides what runs.
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Manifest } from '../model/manifest.js';
import { KvPool, NULL_BLOCK } from './kv-cache.js';
import { UsedBlocksFeed, WholePoolFeed, type KvFeed } from './kv-feed.js';
import { createSession, type ExecutionProvider } from './ort-session.js';
import type { ExecutionProviderChoice, OrtLogLevel } from './types.js';

export interface RunnerRow {
  /** Tokens to feed this step. */
  tokens: ArrayLike<number>;
  /** Tokens of this row already in the cache; tokens[i] sits at position pastLength + i. */
  pastLength: number;
  /** The row's blocks, covering at least pastLength + tokens.length positions. */
  blocks: readonly number[];
  /** Logits are computed for positions logitsFrom..tokens.length-1 (tokens.length: none). */
  logitsFrom: number;
  /** Copy those logits out; without it only their argmax comes back (greedy picks). */
  fetchLogits: boolean;
}

export interface RowOutput {
  /** The row's logits rows ([count, vocab] flattened, a view); empty when none were asked. */
  logits: Float32Array;
  /** Index of the largest logit in the row's last logits row (-1 when none were asked). */
  argmax: number;
}

export interface ModelRunner {
  readonly vocabSize: number;
  readonly pool: KvPool;
  run(rows: readonly RunnerRow[]): Promise<RowOutput[]>;
  /** Milliseconds spent inside session.run since the last call. */
  takeModelMs(): number;
  dispose(): Promise<void>;
}

const NO_LOGITS = new Float32Array(0);

export class OnnxRunner implements ModelRunner {
  private modelMs = 0;
  /** Every output but the logits: ORT copies each fetched output, and logits are the big one. */
  private readonly withoutLogits: string[];

  constructor(
    private readonly session: ort.InferenceSession,
    readonly pool: KvPool,
    private readonly feed: KvFeed,
    readonly vocabSize: number,
  ) {
    this.withoutLogits = session.outputNames.filter((n) => n !== 'logits');
  }

  async run(rows: readonly RunnerRow[]): Promise<RowOutput[]> {
    const out: RowOutput[] = new Array(rows.length);
    // Decode rows (one token) and prefill chunks run separately: padding 32 decode rows to a
    // 256-token chunk would multiply their matmul work by 256.
    const decode: number[] = [];
    const prefill: number[] = [];
    rows.forEach((r, i) => (r.tokens.length === 1 ? decode : prefill).push(i));
    if (decode.length) await this.runGroup(rows, decode, out);
    if (prefill.length) await this.runGroup(rows, prefill, out);
    return out;
  }

  takeModelMs(): number {
    const ms = this.modelMs;
    this.modelMs = 0;
    return ms;
  }

  async dispose(): Promise<void> {
    await this.session.release();
  }

  private async runGroup(rows: readonly RunnerRow[], group: number[], out: RowOutput[]): Promise<void> {
    const B = group.length;
    let S = 0;
    let pastBlocks = 1;
    let nLogits = 0;
    const bs = this.pool.shape.blockSize;
    for (const i of group) {
      const r = rows[i];
      S = Math.max(S, r.tokens.length);
      pastBlocks = Math.max(pastBlocks, Math.ceil(r.pastLength / bs));
      nLogits += r.tokens.length - r.logitsFrom;
    }
    const ids = new BigInt64Array(B * S);
    const past = new BigInt64Array(B);
    const table = new BigInt64Array(B * pastBlocks).fill(BigInt(NULL_BLOCK));
    const logitsIndex = new BigInt64Array(Math.max(nLogits, 1));
    let li = 0;
    group.forEach((i, b) => {
      const r = rows[i];
      for (let t = 0; t < r.tokens.length; t++) ids[b * S + t] = BigInt(r.tokens[t]);
      past[b] = BigInt(r.pastLength);
      const used = Math.ceil(r.pastLength / bs);
      for (let k = 0; k < used; k++) table[b * pastBlocks + k] = BigInt(r.blocks[k]);
      for (let t = r.logitsFrom; t < r.tokens.length; t++) logitsIndex[li++] = BigInt(b * S + t);
    });
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [B, S]),
      past_lengths: new ort.Tensor('int64', past, [B]),
      logits_index: new ort.Tensor('int64', logitsIndex, [logitsIndex.length]),
    };
    this.feed.addFeeds(feeds, table, [B, pastBlocks]);

    const start = performance.now();
    const fetchLogits = group.some((i) => rows[i].fetchLogits);
    const result = await this.session.run(feeds, fetchLogits ? this.session.outputNames : this.withoutLogits);
    this.modelMs += performance.now() - start;

    const logits = fetchLogits ? (result.logits.data as Float32Array) : NO_LOGITS;
    const argmax = result.argmax.data as BigInt64Array;
    const V = this.vocabSize;
    let row = 0;
    group.forEach((i, b) => {
      const r = rows[i];
      const n = r.tokens.length - r.logitsFrom;
      out[i] = { logits: fetchLogits ? logits.subarray(row * V, (row + n) * V) : NO_LOGITS, argmax: n > 0 ? Number(argmax[row + n - 1]) : -1 };
      row += n;
      for (let l = 0; l < this.pool.shape.layers; l++) {
        this.pool.writeRows(
          l,
          result[`new_key_${l}`].data as Float32Array,
          result[`new_value_${l}`].data as Float32Array,
          B,
          S,
          b,
          r.tokens.length,
          r.pastLength,
          r.blocks,
        );
      }
    });
  }
}

export interface CreateRunnerOptions {
  modelDir: string;
  manifest: Manifest;
  executionProvider: ExecutionProviderChoice;
  intraOpThreads: number;
  ortLogLevel?: OrtLogLevel;
  numBlocks: number;
  blockSize: number;
  log: (msg: string) => void;
  /** Overrides the provider's natural feeding strategy (tests run both on CPU). */
  feed?: 'whole-pool' | 'used-blocks';
}

export async function createOnnxRunner(opts: CreateRunnerOptions): Promise<{ runner: OnnxRunner; provider: ExecutionProvider }> {
  const { session, provider } = await createSession(join(opts.modelDir, opts.manifest.graph.file), opts);
  const pool = new KvPool({
    layers: opts.manifest.numLayers,
    heads: opts.manifest.numHeads,
    headDim: opts.manifest.headDim,
    numBlocks: opts.numBlocks,
    blockSize: opts.blockSize,
  });
  const feedName = opts.feed ?? (provider === 'cpu' ? 'whole-pool' : 'used-blocks');
  const feed = feedName === 'whole-pool' ? new WholePoolFeed(pool) : new UsedBlocksFeed(pool);
  return { runner: new OnnxRunner(session, pool, feed, opts.manifest.vocabSize), provider };
}
