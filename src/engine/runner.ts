// Runs the serving graph for a set of rows (sequence chunks) and writes their new K/V into the
// pool. The runner sees rows, never requests: the scheduler decides what runs.
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import type { Manifest } from '../model/manifest.js';
import { KvPool, NULL_BLOCK, type KvStorage } from './kv-cache.js';
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
  /** Index of the largest logit in the row's j-th logits row (verification checks every one). */
  argmaxAt(j: number): number;
}

export interface ModelRunner {
  readonly vocabSize: number;
  /** The KV storage the rows' blocks index (host memory, or the device's). */
  readonly pool: KvStorage;
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

  /** One session.run for the whole step: decode rows and prefill chunks together (contract v3). */
  async run(rows: readonly RunnerRow[]): Promise<RowOutput[]> {
    const step = packStep(rows, this.pool.shape.blockSize);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int64(step.inputIds),
      positions: int64(step.positions),
      unpack_index: int64(step.unpackIndex),
      logits_index: int64(step.logitsIndex),
    };
    feeds.decode_token_index = int64(step.decode.tokenIndex, [step.decode.rows, 1]);
    feeds.prefill_token_index = int64(step.prefill.tokenIndex, [step.prefill.rows, step.prefill.chunk]);
    feeds.prefill_new_tokens = int64(step.prefill.newTokens);
    feeds.prefill_new_slots = int64(step.prefill.newSlots, [step.prefill.newTokens.length, 2]);
    this.feed.addFeeds(feeds, [
      { name: 'decode_block_table', table: step.decode.blockTable, dims: [step.decode.rows, step.decode.tableWidth] },
      { name: 'prefill_block_table', table: step.prefill.blockTable, dims: [step.prefill.rows, step.prefill.tableWidth] },
    ]);

    const start = performance.now();
    const fetchLogits = rows.some((r) => r.fetchLogits);
    const result = await this.session.run(feeds, fetchLogits ? this.session.outputNames : this.withoutLogits);
    this.modelMs += performance.now() - start;

    const logits = fetchLogits ? (result.logits.data as Float32Array) : NO_LOGITS;
    const argmax = result.argmax.data as BigInt64Array;
    const V = this.vocabSize;
    const out: RowOutput[] = new Array(rows.length);
    let logitsRow = 0;
    rows.forEach((r, i) => {
      const n = r.tokens.length - r.logitsFrom;
      out[i] = rowOutput(fetchLogits ? logits.subarray(logitsRow * V, (logitsRow + n) * V) : NO_LOGITS, argmax.subarray(logitsRow, logitsRow + n));
      logitsRow += n;
    });
    for (let l = 0; l < this.pool.shape.layers; l++) {
      const keys = result[`new_key_${l}`].data as Float32Array;
      const values = result[`new_value_${l}`].data as Float32Array;
      rows.forEach((r, i) => this.pool.writeTokens(l, keys, values, step.firstToken[i]!, r.tokens.length, r.pastLength, r.blocks));
    }
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
}

/** A row's output from its logits rows and their argmax (one per logits row, a view). */
export function rowOutput(logits: Float32Array, argmaxes: BigInt64Array): RowOutput {
  const n = argmaxes.length;
  return {
    logits,
    argmax: n > 0 ? Number(argmaxes[n - 1]) : -1,
    argmaxAt: (j) => (j < n ? Number(argmaxes[j]) : -1),
  };
}

function int64(data: BigInt64Array, dims: number[] = [data.length]): ort.Tensor {
  return new ort.Tensor('int64', data, dims);
}

/** One attention group's feeds (see serving-graph.ts). */
interface GroupFeeds {
  rows: number;
  /** Queries per row: 1 for decode rows, the longest chunk for prefill rows. */
  chunk: number;
  tokenIndex: BigInt64Array;
  /** Blocks of the keys each row's queries attend to besides their own, padded with the null block. */
  blockTable: BigInt64Array;
  tableWidth: number;
  /** Prefill: flat indexes of the chunks' tokens, and their (row, position) pairs. */
  newTokens: BigInt64Array;
  newSlots: BigInt64Array;
}

export interface PackedStep {
  inputIds: BigInt64Array;
  positions: BigInt64Array;
  decode: GroupFeeds;
  prefill: GroupFeeds;
  unpackIndex: BigInt64Array;
  logitsIndex: BigInt64Array;
  /** Flat index of each row's first token (rows in the caller's order). */
  firstToken: number[];
}

/**
 * Lays a step's rows out as the graph wants them: tokens flat in the caller's row order, rows of
 * one token in the decode group, longer chunks in the prefill group (padded to the longest chunk
 * among themselves), a dummy row in a group that would be empty.
 */
export function packStep(rows: readonly RunnerRow[], blockSize: number): PackedStep {
  const T = rows.reduce((n, r) => n + r.tokens.length, 0);
  const inputIds = new BigInt64Array(T);
  const positions = new BigInt64Array(T);
  const firstToken: number[] = new Array(rows.length);
  const decodeRows: number[] = [];
  const prefillRows: number[] = [];
  let t = 0;
  let nLogits = 0;
  rows.forEach((r, i) => {
    firstToken[i] = t;
    for (let j = 0; j < r.tokens.length; j++, t++) {
      inputIds[t] = BigInt(r.tokens[j]!);
      positions[t] = BigInt(r.pastLength + j);
    }
    (r.tokens.length === 1 ? decodeRows : prefillRows).push(i);
    nLogits += r.tokens.length - r.logitsFrom;
  });
  const chunk = Math.max(1, ...prefillRows.map((i) => rows[i]!.tokens.length));
  const decode = groupFeeds(rows, decodeRows, 1, firstToken, blockSize, false);
  const prefill = groupFeeds(rows, prefillRows, chunk, firstToken, blockSize, true);
  const unpackIndex = new BigInt64Array(T);
  decodeRows.forEach((i, d) => (unpackIndex[firstToken[i]!] = BigInt(d)));
  prefillRows.forEach((i, p) => {
    for (let j = 0; j < rows[i]!.tokens.length; j++) unpackIndex[firstToken[i]! + j] = BigInt(decode.rows + p * chunk + j);
  });
  const logitsIndex = new BigInt64Array(Math.max(nLogits, 1));
  let li = 0;
  rows.forEach((r, i) => {
    for (let j = r.logitsFrom; j < r.tokens.length; j++) logitsIndex[li++] = BigInt(firstToken[i]! + j);
  });
  return { inputIds, positions, decode, prefill, unpackIndex, logitsIndex, firstToken };
}

/** `chunks`: the prefill group, whose rows' tokens are also keys of their later tokens (scattered into their gathered past). */
function groupFeeds(rows: readonly RunnerRow[], members: number[], chunk: number, firstToken: number[], blockSize: number, chunks: boolean): GroupFeeds {
  // An empty group gets one dummy row: flat token 0 (every step has one) at position 0 of the
  // null block. Its K/V land only in the step's gathered copy of the null block, never the pool.
  const n = Math.max(members.length, 1);
  // A decode row attends to its past (and its own key apart); a chunk also to its own tokens.
  const span = (i: number) => rows[i]!.pastLength + (chunks ? rows[i]!.tokens.length : 0);
  // Key slots are padded to a multiple of the block size (a multiple of 16, see config.ts): the
  // attention kernels then take every real key down the same vector path however long the row is.
  const tableWidth = Math.max(1, ...members.map((i) => Math.ceil(span(i) / blockSize)));
  const newCount = !chunks || members.length === 0 ? 1 : members.reduce((sum, i) => sum + rows[i]!.tokens.length, 0);
  const g: GroupFeeds = {
    rows: n,
    chunk,
    tokenIndex: new BigInt64Array(n * chunk),
    blockTable: new BigInt64Array(n * tableWidth).fill(BigInt(NULL_BLOCK)),
    tableWidth,
    newTokens: new BigInt64Array(newCount),
    newSlots: new BigInt64Array(newCount * 2),
  };
  let t = 0;
  members.forEach((i, m) => {
    const r = rows[i]!;
    const len = r.tokens.length;
    // Padding queries repeat the row's last token; their outputs are never unpacked.
    for (let j = 0; j < chunk; j++) g.tokenIndex[m * chunk + j] = BigInt(firstToken[i]! + Math.min(j, len - 1));
    const used = Math.ceil(span(i) / blockSize);
    for (let k = 0; k < used; k++) g.blockTable[m * tableWidth + k] = BigInt(r.blocks[k]!);
    for (let j = 0; j < len && chunks; j++, t++) {
      g.newTokens[t] = BigInt(firstToken[i]! + j);
      g.newSlots[2 * t] = BigInt(m);
      g.newSlots[2 * t + 1] = BigInt(r.pastLength + j);
    }
  });
  return g;
}

export interface CreateRunnerOptions {
  modelDir: string;
  manifest: Manifest;
  executionProvider: Exclude<ExecutionProviderChoice, 'webgpu'>;
  /** Why this provider was chosen, for its log line (runner-factory's auto). */
  why?: string;
  intraOpThreads: number;
  ortLogLevel?: OrtLogLevel;
  numBlocks: number;
  blockSize: number;
  log: (msg: string) => void;
  /** Overrides the provider's natural feeding strategy (tests run both on CPU). */
  feed?: 'whole-pool' | 'used-blocks';
}

export async function createOnnxRunner(opts: CreateRunnerOptions): Promise<{ runner: OnnxRunner; provider: ExecutionProvider }> {
  const { session, provider } = await createSession(join(opts.modelDir, opts.manifest.graph.file), {
    ...opts,
    externalData: join(opts.modelDir, opts.manifest.graph.externalData),
  });
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
