// The ModelRunner for the WebGPU execution provider with the KV pool resident on the device
// (issue 12). The pool is made once by a one-node zeros session as device buffers and never
// leaves the device: each step uploads token ids, positions, lengths and block tables, and
// downloads the argmax of each row (and logits where a row asks). No host copy of the pool
// exists. The graphs are src/model/webgpu-graph.ts; the binding's rules this file follows are in
// docs/webgpu-notes.md (fetch the full output list every run, never read a device tensor's data,
// dispose device tensors yourself and before the session is released).
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { readGpt2Config } from '../model/gpt2-checkpoint.js';
import { exportedWeights } from '../model/exported-weights.js';
import { manifestPlan, type Manifest } from '../model/manifest.js';
import { GraphBuilder } from '../model/onnx-builder.js';
import { buildWebGpuGraph, buildZerosGraph, cacheName, floatTypeOf, type DeviceDtype } from '../model/webgpu-graph.js';
import { NULL_BLOCK, poolShape, type KvStorage, type PoolShape } from './kv-cache.js';
import { rowOutput, type ModelRunner, type RowOutput, type RunnerRow } from './runner.js';
import type { OrtLogLevel } from './types.js';
import { createWebGpuSession } from './webgpu.js';
import { concatFloat32 } from '../util/concat-float32.js';

export interface WebGpuRunnerOptions {
  modelDir: string;
  manifest: Manifest;
  dtype: DeviceDtype;
  /** KV blocks in the pool, the null block included. */
  numBlocks: number;
  /** A power of two >= 16 for the fp16 graph (PagedAttention's constraint). */
  blockSize: number;
  /** ONNX Runtime's process-wide log level. */
  ortLogLevel?: OrtLogLevel;
  /** Extra session options (tests ask for verbose logs to check node placement). */
  session?: ort.InferenceSession.SessionOptions;
}

/**
 * The step graph's float type for a folder: fp32 weights compute in fp32 (the ScatterND graph,
 * exact against the CPU provider, for small pools); fp16 and quantized folders in fp16 (the
 * PagedAttention graph, the production path).
 */
export function deviceDtypeFor(m: Pick<Manifest, 'dtype'>): DeviceDtype {
  return m.dtype === 'float32' ? 'fp32' : 'fp16';
}

/** Host bytes of one step: inputs uploaded and outputs downloaded. */
export interface StepTransfer {
  up: number;
  down: number;
}

const NO_LOGITS = new Float32Array(0);
const OPSET = 20;
/**
 * Most tokens of one row per session.run. On Mesa's software driver a row of 32 or more new tokens
 * gets wrong attention from both MultiHeadAttention (fp32) and PagedAttention (fp16), while
 * shorter rows match the CPU provider (docs/webgpu-notes.md, "Found while building the runner");
 * longer chunks are run as several passes of at most this many tokens per row (each pass attends
 * to the K/V the previous one wrote). Not checked on a hardware GPU.
 */
export const MAX_ROW_TOKENS_PER_RUN = 16;

export class WebGpuRunner implements ModelRunner {
  readonly vocabSize: number;
  /** Shape only: a device pool has no synchronous block copy (forks recompute instead). */
  readonly pool: KvStorage;
  /** What the last step moved between host and device. */
  lastTransfer: StepTransfer = { up: 0, down: 0 };
  private modelMs = 0;
  private readonly outputNames: string[];
  private disposed = false;

  private constructor(
    private readonly session: ort.InferenceSession,
    /** Made the first pools; kept until they are disposed (disposing a tensor whose session is released crashes the process). */
    private readonly zerosSession: ort.InferenceSession,
    /** Per layer key then value: `cacheName(kind, l)` -> device tensor. */
    private readonly caches: Map<string, ort.Tensor>,
    readonly dtype: DeviceDtype,
    shape: PoolShape,
    vocabSize: number,
  ) {
    this.pool = { shape };
    this.vocabSize = vocabSize;
    this.outputNames = [...session.outputNames];
  }

  static async create(opts: WebGpuRunnerOptions): Promise<WebGpuRunner> {
    const { manifest: m, dtype, numBlocks, blockSize } = opts;
    if (dtype === 'fp16' && (blockSize < 16 || (blockSize & (blockSize - 1)) !== 0)) {
      throw new Error(`--block-size ${blockSize}: the WebGPU fp16 graph needs a power of two of at least 16 (PagedAttention)`);
    }
    if (opts.ortLogLevel) ort.env.logLevel = opts.ortLogLevel;
    const g = new GraphBuilder();
    const weights = exportedWeights(g, join(opts.modelDir, m.graph.file), floatTypeOf(dtype));
    buildWebGpuGraph(g, m, weights, manifestPlan(m), dtype, { numBlocks, blockSize }, readGpt2Config(opts.modelDir).layer_norm_epsilon);
    const bytes = g.encode({ opset: OPSET, producerVersion: 'webgpu-runner', doc: `WebGPU ${dtype} step graph`, metadata: {} });
    const cacheOutputs = dtype === 'fp32' ? Array.from({ length: m.numLayers }, (_, l) => [cacheName('key', l, true), cacheName('value', l, true)]).flat() : [];
    const session = await createWebGpuSession(bytes, {
      ...opts.session,
      // Outputs by position (the binding matches locations to the fetch list's order): the full list every run.
      preferredOutputLocation: { argmax: 'cpu', logits: 'cpu', ...Object.fromEntries(cacheOutputs.map((n) => [n, 'gpu-buffer' as const])) },
      // The graph is built in memory; its initializers name model.onnx.data in the model folder.
      extra: { session: { model_external_initializers_file_folder_path: opts.modelDir } },
    });
    let zeros: { session: ort.InferenceSession; caches: Map<string, ort.Tensor> };
    try {
      zeros = await zeroPools(m, dtype, numBlocks, blockSize);
    } catch (err) {
      await session.release();
      throw err;
    }
    return new WebGpuRunner(session, zeros.session, zeros.caches, dtype, poolShape(m, numBlocks, blockSize), m.vocabSize);
  }

  /** Bytes the device pool takes (keys and values, every layer). */
  get poolBytes(): number {
    const { layers, heads, headDim, numBlocks, blockSize } = this.pool.shape;
    return 2 * layers * numBlocks * blockSize * heads * headDim * (this.dtype === 'fp16' ? 2 : 4);
  }

  /** Where the pool's tensors are now (all 'gpu-buffer' unless something went wrong). */
  poolLocations(): string[] {
    return [...this.caches.values()].map((t) => t.location);
  }

  async run(rows: readonly RunnerRow[]): Promise<RowOutput[]> {
    if (this.disposed) throw new Error('the WebGPU runner is disposed');
    const longest = Math.max(0, ...rows.map((r) => r.tokens.length));
    if (longest <= MAX_ROW_TOKENS_PER_RUN) return this.runOnce(rows);
    const parts = rows.map(() => ({ logits: [] as Float32Array[], argmaxes: [] as number[] }));
    const moved: StepTransfer = { up: 0, down: 0 };
    for (let offset = 0; offset < longest; offset += MAX_ROW_TOKENS_PER_RUN) {
      const which: number[] = [];
      const pass: RunnerRow[] = [];
      rows.forEach((r, i) => {
        const n = Math.min(MAX_ROW_TOKENS_PER_RUN, r.tokens.length - offset);
        if (n <= 0) return;
        which.push(i);
        pass.push({
          tokens: Array.from({ length: n }, (_, j) => r.tokens[offset + j]!),
          pastLength: r.pastLength + offset,
          blocks: r.blocks,
          logitsFrom: Math.min(n, Math.max(0, r.logitsFrom - offset)),
          fetchLogits: r.fetchLogits,
        });
      });
      const out = await this.runOnce(pass);
      moved.up += this.lastTransfer.up;
      moved.down += this.lastTransfer.down;
      out.forEach((o, k) => {
        const part = parts[which[k]!]!;
        if (o.logits.length > 0) part.logits.push(o.logits);
        for (let j = 0; o.argmaxAt(j) >= 0; j++) part.argmaxes.push(o.argmaxAt(j));
      });
    }
    this.lastTransfer = moved;
    return parts.map((p) =>
      rowOutput(p.logits.length === 0 ? NO_LOGITS : p.logits.length === 1 ? p.logits[0]! : concatFloat32(p.logits), BigInt64Array.from(p.argmaxes, BigInt)),
    );
  }

  /** One session.run: every row's tokens at once. */
  private async runOnce(rows: readonly RunnerRow[]): Promise<RowOutput[]> {
    const step = packDeviceStep(rows, this.pool.shape.blockSize, this.dtype);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int32(step.inputIds),
      positions: int32(step.positions),
      block_table: int32(step.blockTable, [rows.length, step.tableWidth]),
      head_index: int32(step.headIndex),
      logits_rows: int32(step.logitsRows),
    };
    if (step.paged) {
      feeds.cumulative_sequence_length = int32(step.paged.cumulative);
      feeds.past_seqlens = int32(step.paged.past);
      feeds.attention_metadata = int32(step.paged.metadata);
    }
    if (step.scatter) {
      const { writeSlots, queryIndex, unpackIndex, bias, queries, keys } = step.scatter;
      feeds.write_slots = new ort.Tensor('int64', writeSlots, [writeSlots.length, 1]);
      feeds.query_index = int32(queryIndex, [rows.length, queries]);
      feeds.unpack_index = int32(unpackIndex);
      feeds.attention_bias = new ort.Tensor('float32', bias, [rows.length, 1, queries, keys]);
    }
    let up = 0;
    for (const t of Object.values(feeds)) up += (t.data as ArrayBufferView).byteLength;
    for (const [name, t] of this.caches) feeds[name] = t;

    const start = performance.now();
    const result = await this.session.run(feeds, this.outputNames);
    this.modelMs += performance.now() - start;
    if (step.scatter) this.takeNewPools(result);

    const argmax = result.argmax.data as BigInt64Array;
    const logits = result.logits.data as Float32Array;
    this.lastTransfer = { up, down: argmax.byteLength + logits.byteLength };
    const V = this.vocabSize;
    return rows.map((r, i) => {
      const count = r.tokens.length - r.logitsFrom;
      const at = step.logitsAt[i]!;
      const head = step.headStart[i]!;
      return rowOutput(at >= 0 ? logits.subarray(at * V, (at + count) * V) : NO_LOGITS, argmax.subarray(head, head + Math.max(count, 0)));
    });
  }

  /** fp32: the step returned new pools; the old ones are disposed (the binding never frees them). */
  private takeNewPools(result: ort.InferenceSession.OnnxValueMapType): void {
    for (const [name, old] of this.caches) {
      const next = result[name.replace('_cache_', '_cache_out_')] as ort.Tensor;
      this.caches.set(name, next);
      old.dispose();
    }
  }

  takeModelMs(): number {
    const ms = this.modelMs;
    this.modelMs = 0;
    return ms;
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    // Device tensors before the session: disposing after session.release() crashes the process.
    for (const t of this.caches.values()) t.dispose();
    this.caches.clear();
    await this.session.release();
    await this.zerosSession.release();
  }
}

/** The pools, zero-filled on the device by a one-node session (the caller releases it after the pools). */
async function zeroPools(m: Manifest, dtype: DeviceDtype, numBlocks: number, blockSize: number): Promise<{ session: ort.InferenceSession; caches: Map<string, ort.Tensor> }> {
  const g = new GraphBuilder();
  buildZerosGraph(g, dtype);
  const zeros = await createWebGpuSession(g.encode({ opset: OPSET, producerVersion: 'webgpu-runner', doc: 'zeros', metadata: {} }), {
    preferredOutputLocation: 'gpu-buffer',
  });
  const caches = new Map<string, ort.Tensor>();
  try {
    const shape = new ort.Tensor('int64', BigInt64Array.from([numBlocks, blockSize, m.numHeads, m.headDim].map(BigInt)), [4]);
    for (let l = 0; l < m.numLayers; l++) {
      for (const kind of ['key', 'value'] as const) caches.set(cacheName(kind, l), (await zeros.run({ shape })).zeros as ort.Tensor);
    }
  } catch (err) {
    for (const t of caches.values()) t.dispose();
    await zeros.release();
    throw err;
  }
  return { session: zeros, caches };
}

function int32(data: Int32Array, dims: number[] = [data.length]): ort.Tensor {
  return new ort.Tensor('int32', data, dims);
}

export interface DeviceStep {
  inputIds: Int32Array;
  positions: Int32Array;
  /** [rows, tableWidth]: blocks covering each row's past and new tokens. */
  blockTable: Int32Array;
  tableWidth: number;
  /** Flat tokens through the head: each row's tokens from logitsFrom on (one dummy when none). */
  headIndex: Int32Array;
  /** Head rows whose logits come back (rows that asked). */
  logitsRows: Int32Array;
  /** Per row: its first head row. */
  headStart: number[];
  /** Per row: its first row in the logits output, -1 when it asked for none. */
  logitsAt: number[];
  paged?: { cumulative: Int32Array; past: Int32Array; metadata: Int32Array };
  scatter?: { writeSlots: BigInt64Array; queryIndex: Int32Array; unpackIndex: Int32Array; bias: Float32Array; queries: number; keys: number };
}

/** Lays a step's rows out as the WebGPU graph of `dtype` wants them (see webgpu-graph.ts). */
export function packDeviceStep(rows: readonly RunnerRow[], blockSize: number, dtype: DeviceDtype): DeviceStep {
  const T = rows.reduce((n, r) => n + r.tokens.length, 0);
  const B = rows.length;
  const inputIds = new Int32Array(T);
  const positions = new Int32Array(T);
  const tableWidth = Math.max(1, ...rows.map((r) => Math.ceil((r.pastLength + r.tokens.length) / blockSize)));
  const blockTable = new Int32Array(B * tableWidth).fill(NULL_BLOCK);
  const headStart: number[] = new Array(B);
  const logitsAt: number[] = new Array(B);
  const head: number[] = [];
  const logitsRows: number[] = [];
  const firstToken: number[] = new Array(B);
  let t = 0;
  rows.forEach((r, i) => {
    firstToken[i] = t;
    for (let j = 0; j < r.tokens.length; j++, t++) {
      inputIds[t] = r.tokens[j]!;
      positions[t] = r.pastLength + j;
    }
    const used = Math.ceil((r.pastLength + r.tokens.length) / blockSize);
    for (let k = 0; k < used; k++) blockTable[i * tableWidth + k] = r.blocks[k]!;
    headStart[i] = head.length;
    logitsAt[i] = r.fetchLogits && r.logitsFrom < r.tokens.length ? logitsRows.length : -1;
    for (let j = r.logitsFrom; j < r.tokens.length; j++) {
      if (r.fetchLogits) logitsRows.push(head.length);
      head.push(firstToken[i]! + j);
    }
  });
  const step: DeviceStep = {
    inputIds,
    positions,
    blockTable,
    tableWidth,
    headIndex: Int32Array.from(head.length > 0 ? head : [0]),
    logitsRows: Int32Array.from(logitsRows),
    headStart,
    logitsAt,
  };
  if (dtype === 'fp16') {
    const cumulative = new Int32Array(B + 1);
    const past = new Int32Array(B);
    let longestChunk = 0;
    let longestTotal = 0;
    rows.forEach((r, i) => {
      cumulative[i + 1] = cumulative[i]! + r.tokens.length;
      past[i] = r.pastLength;
      longestChunk = Math.max(longestChunk, r.tokens.length);
      longestTotal = Math.max(longestTotal, r.pastLength + r.tokens.length);
    });
    step.paged = { cumulative, past, metadata: Int32Array.from([longestChunk, longestTotal]) };
  } else {
    step.scatter = scatterFeeds(rows, blockSize, tableWidth, firstToken, T);
  }
  return step;
}

/** The fp32 graph's feeds: write slots, per-row queries padded to the longest chunk, the mask. */
function scatterFeeds(rows: readonly RunnerRow[], blockSize: number, tableWidth: number, firstToken: number[], T: number): NonNullable<DeviceStep['scatter']> {
  const S = Math.max(...rows.map((r) => r.tokens.length));
  const L = tableWidth * blockSize;
  const writeSlots = new BigInt64Array(T);
  const queryIndex = new Int32Array(rows.length * S);
  const unpackIndex = new Int32Array(T);
  const bias = new Float32Array(rows.length * S * L).fill(-Infinity);
  rows.forEach((r, i) => {
    const n = r.tokens.length;
    for (let j = 0; j < n; j++) {
      const pos = r.pastLength + j;
      writeSlots[firstToken[i]! + j] = BigInt(r.blocks[Math.floor(pos / blockSize)]! * blockSize + (pos % blockSize));
      unpackIndex[firstToken[i]! + j] = i * S + j;
    }
    for (let s = 0; s < S; s++) {
      // Padding queries repeat the row's last token (their outputs are never unpacked).
      const j = Math.min(s, n - 1);
      queryIndex[i * S + s] = firstToken[i]! + j;
      bias.fill(0, (i * S + s) * L, (i * S + s) * L + r.pastLength + j + 1);
    }
  });
  return { writeSlots, queryIndex, unpackIndex, bias, queries: S, keys: L };
}
