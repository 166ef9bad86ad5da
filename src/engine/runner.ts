// Runs the serving graph for a set of rows (sequence chunks) and writes their new K/V into the
// pool. The runner sees rows, never requests: the scheduler decides what runs.
import { readdirSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { exportedWeights } from '../model/exported-weights.js';
import { readGpt2Config } from '../model/gpt2-checkpoint.js';
import { manifestPlan, type Manifest } from '../model/manifest.js';
import { GraphBuilder } from '../model/onnx-builder.js';
import { buildServingGraph } from '../model/serving-graph.js';
import { KvPool, NULL_BLOCK, poolShape, type KvStorage } from './kv-cache.js';
import { hugePages, largeBlocksOnHugePages } from '../util/huge-pages.js';
import { UsedBlocksFeed, WholePoolFeed, type KvFeed } from './kv-feed.js';
import { LoraSlots, type RowAdapter } from './lora-slots.js';
import { createSession, WEIGHTS_READ_LIMITS, type ExecutionProvider } from './ort-session.js';
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
  /** The LoRA adapter the row runs with (absent: the base model). */
  adapter?: RowAdapter;
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
  /** The engine dropped this adapter (LoRA runners only): its slot may go to another. */
  releaseAdapter?(id: number): void;
  /** Milliseconds spent inside session.run since the last call. */
  takeModelMs(): number;
  dispose(): Promise<void>;
}

const NO_LOGITS = new Float32Array(0);
const NO_TOKENS = new BigInt64Array(0);
/** lora_every_token: every token of the step has the one slot fed (lora-graph.ts), or not. */
const ONE_SLOT_FOR_ALL = new ort.Tensor('bool', new Uint8Array([1]), [1]);
const ONE_SLOT_FOR_SOME = new ort.Tensor('bool', new Uint8Array([0]), [1]);

export class OnnxRunner implements ModelRunner {
  private modelMs = 0;
  /** Every output but the logits: ORT copies each fetched output, and logits are the big one. */
  private readonly withoutLogits: string[];
  /** The graph's attention groups (serving-graph.ts, read from its inputs) and the decode groups' key budget. */
  private readonly layout: StepLayout;

  constructor(
    private readonly session: ort.InferenceSession,
    readonly pool: KvPool,
    private readonly feed: KvFeed,
    readonly vocabSize: number,
    private readonly profile?: { prefix: string; log: (msg: string) => void },
    /** The adapters' slots, when the graph was built with LoRA inputs (--enable-lora). */
    private readonly loras: LoraSlots | null = null,
    decodeGroupKeys?: number,
  ) {
    this.withoutLogits = session.outputNames.filter((n) => n !== 'logits');
    const groups = (kind: string) => session.inputNames.filter((n) => new RegExp(`^${kind}_\\d+_token_index$`).test(n)).length;
    const keyBytes = 2 * pool.shape.heads * pool.shape.headDim * 4; // K and V of one key, one layer
    this.layout = { decodeGroups: groups('decode'), prefillGroups: groups('prefill'), decodeGroupKeys: decodeGroupKeys ?? Math.floor(DECODE_GROUP_KV_BYTES / keyBytes) };
  }

  /** One session.run for the whole step: decode rows and prefill chunks together (serving-graph.ts, contract 6). */
  async run(rows: readonly RunnerRow[]): Promise<RowOutput[]> {
    const step = packStep(rows, this.pool.shape.blockSize, this.layout);
    const feeds: Record<string, ort.Tensor> = {
      input_ids: int64(step.inputIds),
      positions: int64(step.positions),
      unpack_index: int64(step.unpackIndex),
      logits_index: int64(step.logitsIndex),
    };
    const groups: Array<[string, GroupFeeds]> = [
      ...step.decode.map((g, i) => [`decode_${i}`, g] as [string, GroupFeeds]),
      ...step.prefill.map((g, i) => [`prefill_${i}`, g] as [string, GroupFeeds]),
    ];
    for (const [name, g] of groups) {
      feeds[`${name}_token_index`] = int64(g.tokenIndex, [g.rows, g.chunk]);
      if (name.startsWith('decode')) continue;
      feeds[`${name}_new_tokens`] = int64(g.newTokens);
      feeds[`${name}_new_slots`] = int64(g.newSlots, [g.newTokens.length, 2]);
    }
    this.feed.addFeeds(
      feeds,
      groups.map(([name, g]) => ({ name: `${name}_block_table`, table: g.blockTable, dims: [g.rows, g.tableWidth] })),
    );
    this.addLoraFeeds(feeds, rows, step);

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

  /**
   * The step's adapters placed in slots and their tokens grouped by slot (lora-graph.ts): slots
   * with many more tokens than the rest (a prompt chunk beside decode rows) go to the big groups,
   * so that no group pads every slot to a chunk's length; lora_unpack says where each token's
   * delta is (the base model's tokens take the zero row after all of them).
   */
  private addLoraFeeds(feeds: Record<string, ort.Tensor>, rows: readonly RunnerRow[], step: PackedStep): void {
    if (!this.loras) return;
    const T = step.inputIds.length;
    const adapters = new Map<number, RowAdapter['weights']>();
    for (const r of rows) if (r.adapter) adapters.set(r.adapter.id, r.adapter.weights);
    const noSlots = () => {
      feeds.lora_gather = int64(NO_TOKENS, [0, 0]);
      feeds.lora_big_slots = int64(NO_TOKENS);
      feeds.lora_big_gather = int64(NO_TOKENS, [0, 0]);
      feeds.lora_unpack = int64(new BigInt64Array(T));
    };
    if (adapters.size === 0) {
      noSlots();
      feeds.lora_every_token = ONE_SLOT_FOR_SOME;
      Object.assign(feeds, this.loras.feeds(0));
      return;
    }
    const { slotOf, count } = this.loras.place(adapters);
    if (adapters.size === 1 && rows.every((r) => r.adapter)) {
      noSlots();
      feeds.lora_every_token = ONE_SLOT_FOR_ALL;
      Object.assign(feeds, this.loras.slotFeeds(slotOf.values().next().value!));
      return;
    }
    feeds.lora_every_token = ONE_SLOT_FOR_SOME;
    const tokensOf: number[][] = Array.from({ length: count }, () => []);
    rows.forEach((r, i) => {
      if (!r.adapter) return;
      const list = tokensOf[slotOf.get(r.adapter.id)!]!;
      for (let j = 0; j < r.tokens.length; j++) list.push(step.firstToken[i]! + j);
    });
    const big = bigGroups(tokensOf.map((t) => t.length));
    const isBig = new Set(big);
    // At least one (padding) token per slot: ONNX Runtime broadcasts a slot over 1 token or more, not 0.
    const n = Math.max(1, ...tokensOf.map((t, slot) => (isBig.has(slot) ? 0 : t.length)));
    const m = Math.max(0, ...big.map((slot) => tokensOf[slot]!.length));
    const gather = new BigInt64Array(count * n);
    const bigGather = new BigInt64Array(big.length * m);
    const unpack = new BigInt64Array(T).fill(BigInt(count * n + big.length * m));
    const place = (into: BigInt64Array, offset: number, at: number, tokens: number[]) =>
      tokens.forEach((token, j) => {
        into[at + j] = BigInt(token);
        unpack[token] = BigInt(offset + at + j);
      });
    tokensOf.forEach((tokens, slot) => {
      if (!isBig.has(slot)) place(gather, 0, slot * n, tokens);
    });
    big.forEach((slot, i) => place(bigGather, count * n, i * m, tokensOf[slot]!));
    feeds.lora_gather = int64(gather, [count, n]);
    feeds.lora_big_slots = int64(BigInt64Array.from(big, BigInt));
    feeds.lora_big_gather = int64(bigGather, [big.length, m]);
    feeds.lora_unpack = int64(unpack);
    Object.assign(feeds, this.loras.feeds(count));
  }

  /** An adapter the engine dropped: its slot may be taken by the next. */
  releaseAdapter(id: number): void {
    this.loras?.release(id);
  }

  takeModelMs(): number {
    const ms = this.modelMs;
    this.modelMs = 0;
    return ms;
  }

  async dispose(): Promise<void> {
    if (this.profile) {
      this.session.endProfiling();
      const file = newestProfile(this.profile.prefix);
      this.profile.log(`ONNX Runtime profile written: ${file ?? `${this.profile.prefix}_*.json (not found)`}`);
    }
    await this.session.release();
  }
}

/** The trace ONNX Runtime wrote last for `prefix` (it appends the date to the prefix), or null. */
export function newestProfile(prefix: string): string | null {
  const dir = dirname(resolve(prefix));
  const start = basename(prefix);
  const files = readdirSync(dir).filter((f) => f.startsWith(start) && f.endsWith('.json'));
  if (files.length === 0) return null;
  const path = (f: string) => join(dir, f);
  return path(files.reduce((a, b) => (statSync(path(a)).mtimeMs >= statSync(path(b)).mtimeMs ? a : b)));
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

/**
 * Queries per prefill tile. A chunk is cut into tiles whose keys end where their queries do, so a
 * long chunk's early queries do not score the keys after them (which the mask would discard).
 */
const TILE = 128;

/** One attention group's feeds (see serving-graph.ts). */
interface GroupFeeds {
  rows: number;
  /** Queries per row: 1 for decode rows, the longest tile for prefill rows. */
  chunk: number;
  tokenIndex: BigInt64Array;
  /** Blocks of the keys each row's queries attend to besides their own, padded with the null block. */
  blockTable: BigInt64Array;
  tableWidth: number;
  /** Prefill: flat indexes of the tokens each row scatters into its keys, and their (row, position) pairs. */
  newTokens: BigInt64Array;
  newSlots: BigInt64Array;
}

/** The graph's attention groups, and how many past keys one decode group should gather at most. */
export interface StepLayout {
  decodeGroups: number;
  prefillGroups: number;
  decodeGroupKeys: number;
}

/**
 * The K/V bytes (all heads, one layer) that one decode group gathers, at most, when the rows
 * allow: a copy this size is still in the cache when the group's products read it back
 * (measured: docs/benchmark.md, "Decode groups").
 */
const DECODE_GROUP_KV_BYTES = 16 * 2 ** 20;

export interface PackedStep {
  inputIds: BigInt64Array;
  positions: BigInt64Array;
  /** One per decode group of the graph (some may have no rows). */
  decode: GroupFeeds[];
  /** One per prefill group of the graph (some may have no rows). */
  prefill: GroupFeeds[];
  unpackIndex: BigInt64Array;
  logitsIndex: BigInt64Array;
  /** Flat index of each row's first token (rows in the caller's order). */
  firstToken: number[];
}

/** A row of an attention group: some consecutive queries of one sequence. */
interface AttentionRow {
  /** Flat index of the first query. */
  first: number;
  queries: number;
  blocks: readonly number[];
  /** Keys before the last query, its own excluded for decode rows (a multiple of the block size once padded). */
  span: number;
  /** Prefill: the step's tokens of this sequence up to the last query (flat index and position of the first), scattered into the row's keys. */
  scatterFrom: number;
  scatterPosition: number;
}

/**
 * Lays a step's rows out as the graph wants them: tokens flat in the caller's row order, rows of
 * one token in the decode groups (as many as their past keys need, decodeSplit), longer chunks
 * cut into tiles of at most TILE queries that are spread over the prefill groups by key span
 * (each group pads its rows to its longest tile and widest span). A group with no rows gets
 * zero-size feeds.
 */
export function packStep(rows: readonly RunnerRow[], blockSize: number, layout: StepLayout): PackedStep {
  const T = rows.reduce((n, r) => n + r.tokens.length, 0);
  const inputIds = new BigInt64Array(T);
  const positions = new BigInt64Array(T);
  const firstToken: number[] = new Array(rows.length);
  const decodeRows: AttentionRow[] = [];
  const tiles: AttentionRow[] = [];
  let t = 0;
  let nLogits = 0;
  rows.forEach((r, i) => {
    firstToken[i] = t;
    for (let j = 0; j < r.tokens.length; j++, t++) {
      inputIds[t] = BigInt(r.tokens[j]!);
      positions[t] = BigInt(r.pastLength + j);
    }
    const n = r.tokens.length;
    const at = (j: number, queries: number): AttentionRow => ({
      first: firstToken[i]! + j,
      queries,
      blocks: r.blocks,
      // A decode row attends to its past (and its own key apart); a tile also to the chunk's tokens up to its last.
      span: r.pastLength + (n === 1 ? 0 : j + queries),
      scatterFrom: firstToken[i]!,
      scatterPosition: r.pastLength,
    });
    if (n === 1) decodeRows.push(at(0, 1));
    else for (let j = 0; j < n; j += TILE) tiles.push(at(j, Math.min(TILE, n - j)));
    nLogits += n - r.logitsFrom;
  });
  const decodeGroups = decodeSplit(decodeRows, blockSize, layout.decodeGroups, layout.decodeGroupKeys);
  const groups = [...decodeGroups, ...spread(tiles, blockSize, layout.prefillGroups)];
  const feeds = groups.map((members, g) => groupFeeds(members, blockSize, g >= layout.decodeGroups));
  // Group outputs are concatenated in order, each [rows x chunk] row-major.
  const unpackIndex = new BigInt64Array(T);
  let base = 0;
  groups.forEach((members, g) => {
    const chunk = feeds[g]!.chunk;
    members.forEach((row, m) => {
      for (let j = 0; j < row.queries; j++) unpackIndex[row.first + j] = BigInt(base + m * chunk + j);
    });
    base += feeds[g]!.rows * chunk;
  });
  const logitsIndex = new BigInt64Array(Math.max(nLogits, 1));
  let li = 0;
  rows.forEach((r, i) => {
    for (let j = r.logitsFrom; j < r.tokens.length; j++) logitsIndex[li++] = BigInt(firstToken[i]! + j);
  });
  return { inputIds, positions, decode: feeds.slice(0, layout.decodeGroups), prefill: feeds.slice(layout.decodeGroups), unpackIndex, logitsIndex, firstToken };
}

/**
 * Decode rows into `count` groups (the later ones possibly empty): as few groups as keep each
 * within `keys` padded past keys, at most `count`, cut from the rows sorted by past length into
 * runs of about equal padded keys, so that rows of like length share a group's padding.
 */
function decodeSplit(rows: AttentionRow[], blockSize: number, count: number, keys: number): AttentionRow[][] {
  const groups: AttentionRow[][] = Array.from({ length: count }, () => []);
  if (rows.length === 0) return groups;
  const padded = (row: AttentionRow) => Math.max(1, Math.ceil(row.span / blockSize)) * blockSize;
  const sorted = [...rows].sort((a, b) => a.span - b.span);
  const total = sorted.reduce((sum, row) => sum + padded(row), 0);
  const used = Math.min(count, sorted.length, Math.max(1, Math.ceil(total / keys)));
  let g = 0;
  let sum = 0;
  for (const row of sorted) {
    // On to the next group when this row would sit mostly past this one's share of the keys.
    if (g < used - 1 && sum + padded(row) / 2 > ((g + 1) * total) / used) g++;
    groups[g]!.push(row);
    sum += padded(row);
  }
  return groups;
}

/**
 * Splits the tiles into `count` groups (some possibly empty) so that the attention work, each
 * group's rows x longest tile x widest span, is least: sorted by span, cut where a dynamic
 * programme over the cut points says.
 */
function spread(tiles: AttentionRow[], blockSize: number, count: number): AttentionRow[][] {
  const sorted = [...tiles].sort((a, b) => a.span - b.span);
  const n = sorted.length;
  const width = (row: AttentionRow) => Math.ceil(row.span / blockSize);
  // best[g][j]: least work for the first j tiles in g groups; cut[g][j]: where its last group starts.
  const best = Array.from({ length: count + 1 }, () => new Array<number>(n + 1).fill(Infinity));
  const cut = Array.from({ length: count + 1 }, () => new Array<number>(n + 1).fill(0));
  best[0]![0] = 0;
  for (let g = 1; g <= count; g++) {
    for (let j = 0; j <= n; j++) {
      // Tiles i..j-1 as the last group (none when i == j): rows x longest tile x widest span.
      let queries = 0;
      for (let i = j; i >= 0; i--) {
        if (i < j) queries = Math.max(queries, sorted[i]!.queries);
        const w = best[g - 1]![i]! + (i < j ? (j - i) * queries * width(sorted[j - 1]!) : 0);
        if (w < best[g]![j]!) {
          best[g]![j] = w;
          cut[g]![j] = i;
        }
      }
    }
  }
  const groups: AttentionRow[][] = [];
  for (let g = count, j = n; g > 0; g--) {
    const i = cut[g]![j]!;
    groups.unshift(sorted.slice(i, j));
    j = i;
  }
  return groups;
}

/** `chunks`: a prefill group, whose rows' keys include the step's tokens of their sequence (scattered into their gathered past). */
function groupFeeds(members: readonly AttentionRow[], blockSize: number, chunks: boolean): GroupFeeds {
  const n = members.length;
  const chunk = Math.max(1, ...members.map((row) => row.queries));
  // Key slots are padded to a multiple of the block size (a multiple of 16, see config.ts): the
  // attention kernels then take every real key down the same vector path however long the row is.
  const tableWidth = Math.max(1, ...members.map((row) => Math.ceil(row.span / blockSize)));
  const scattered = (row: AttentionRow) => row.first + row.queries - row.scatterFrom;
  const newCount = chunks ? members.reduce((sum, row) => sum + scattered(row), 0) : 0;
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
  members.forEach((row, m) => {
    // Padding queries repeat the row's last query; their outputs are never unpacked.
    for (let j = 0; j < chunk; j++) g.tokenIndex[m * chunk + j] = BigInt(row.first + Math.min(j, row.queries - 1));
    const used = Math.ceil(row.span / blockSize);
    for (let k = 0; k < used; k++) g.blockTable[m * tableWidth + k] = BigInt(row.blocks[k]!);
    if (!chunks) return;
    for (let j = 0; j < scattered(row); j++, t++) {
      g.newTokens[t] = BigInt(row.scatterFrom + j);
      g.newSlots[2 * t] = BigInt(m);
      g.newSlots[2 * t + 1] = BigInt(row.scatterPosition + j);
    }
  });
  return g;
}

/**
 * A big group costs a copy of its slot's matrices, about as much as this many tokens' products
 * (a copy moves (in + out) x R floats once; a token's two products read them and multiply).
 */
const BIG_GROUP_COPY_TOKENS = 8;

/**
 * Which slots go to the big groups, given each slot's token count: the most tokens first, as
 * many as make the padded work least. The small group pads every slot to its fullest non-big
 * slot; the big groups pad to the fullest big one, and each costs a copy of its matrices.
 */
export function bigGroups(counts: readonly number[]): number[] {
  const order = counts.map((_, slot) => slot).sort((a, b) => counts[b]! - counts[a]!);
  let best: number[] = [];
  let bestCost = counts.length * (counts[order[0]!] ?? 0);
  for (let j = 1; j <= order.length; j++) {
    const rest = j < order.length ? counts[order[j]!]! : 0;
    const cost = counts.length * rest + j * (counts[order[0]!]! + BIG_GROUP_COPY_TOKENS);
    if (cost < bestCost) {
      bestCost = cost;
      best = order.slice(0, j);
    }
  }
  return best;
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
  /** Past keys one decode group gathers at most, when rows allow (default: DECODE_GROUP_KV_BYTES' worth); tests set it low to spread a few rows. */
  decodeGroupKeys?: number;
  /** --ort-profile: ONNX Runtime's profiler on; the trace is written when the runner is disposed. */
  profilePrefix?: string;
  /** --enable-lora: slots for this many adapters per step, each padded to this rank. */
  lora?: { maxLoras: number; maxRank: number };
}

export async function createOnnxRunner(opts: CreateRunnerOptions): Promise<{ runner: OnnxRunner; provider: ExecutionProvider }> {
  const graphFile = join(opts.modelDir, opts.manifest.graph.file);
  const { session, provider } = await createSession(opts.lora ? loraGraph(opts.modelDir, opts.manifest, graphFile) : graphFile, {
    ...opts,
    externalData: join(opts.modelDir, opts.manifest.graph.externalData),
  });
  const onHugePages = largeBlocksOnHugePages(hugePages());
  const pool = new KvPool(poolShape(opts.manifest, opts.numBlocks, opts.blockSize), onHugePages);
  if (onHugePages) opts.log('KV cache: on transparent huge pages, so committed at start (a first write commits 2 MiB of every head\'s span)');
  const feedName = opts.feed ?? (provider === 'cpu' ? 'whole-pool' : 'used-blocks');
  const feed = feedName === 'whole-pool' ? new WholePoolFeed(pool) : new UsedBlocksFeed(pool);
  const profile = opts.profilePrefix === undefined ? undefined : { prefix: opts.profilePrefix, log: opts.log };
  const loras = opts.lora ? new LoraSlots(opts.manifest.numLayers, opts.manifest.hiddenSize, opts.lora.maxLoras, opts.lora.maxRank) : null;
  return { runner: new OnnxRunner(session, pool, feed, opts.manifest.vocabSize, profile, loras, opts.decodeGroupKeys), provider };
}

/**
 * The exported graph again, with LoRA inputs (lora-graph.ts), over the folder's own weights: the
 * exported file has none, so a server without --enable-lora runs no LoRA node at all.
 */
function loraGraph(modelDir: string, manifest: Manifest, graphFile: string): Uint8Array {
  // A graph given as bytes has no folder: ONNX Runtime finds its weights only in the buffer the
  // session is handed (ort-session.ts), which holds at most buffer.constants.MAX_LENGTH bytes.
  const weights = join(modelDir, manifest.graph.externalData);
  if (statSync(weights).size > WEIGHTS_READ_LIMITS.maxBytes) {
    throw new Error(`--enable-lora: ${weights} is larger than one buffer (${WEIGHTS_READ_LIMITS.maxBytes} bytes); export the model with smaller weights (--dtype fp16, int8 or int4)`);
  }
  const g = new GraphBuilder();
  buildServingGraph(g, readGpt2Config(modelDir), exportedWeights(g, graphFile), manifest.tiedHead, manifestPlan(manifest), { lora: true });
  return g.encode({ opset: manifest.graph.opset, producerVersion: 'load-time', doc: 'GPT-2 serving graph with LoRA inputs', metadata: {} });
}
