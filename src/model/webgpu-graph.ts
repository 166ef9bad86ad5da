// The WebGPU step graphs: the serving graph's computation with the KV pool resident on the device
// (issue 12; the measured facts behind every choice are in docs/webgpu-notes.md). Built at load
// time from an exported folder: the same weights (model.onnx.data, read through model.onnx's
// initializers) under a graph whose pool size and block size are fixed by the runner. Two variants:
//
//   fp16 (production): activations and pool in float16; com.microsoft.PagedAttention reads each
//     row's blocks and writes the step's new K/V rows into the pool in place (the pools are
//     inputs only, never outputs), so a step moves only token ids, positions, lengths and block
//     tables up, and argmax (plus logits when asked) down.
//   fp32 (exact comparison with the CPU provider; small pools): PagedAttention has no float32
//     kernel, so ScatterND writes the new rows into a new pool that is returned (as a device
//     buffer) and fed back next step, and MultiHeadAttention reads the rows' blocks. Each step
//     copies every layer's pool on the device.
//
// Contract (both variants; int32 throughout, because an int64-to-int32 Cast runs on the CPU):
//   inputs
//     input_ids            int32 [T]        the step's new tokens, rows concatenated
//     positions            int32 [T]        each token's position in its sequence
//     block_table          int32 [B, W]     each row's blocks covering its past and new tokens;
//                                           padding entries are the null block 0
//     head_index           int32 [m]        flat tokens that go through ln_f and the head
//     logits_rows          int32 [n]        rows of head_index whose logits to return (may be empty)
//     key_cache_{l}, value_cache_{l}        [num_blocks, block_size, heads, head_dim], fp16 / fp32
//   fp16 only
//     cumulative_sequence_length int32 [B+1]  0, len0, len0+len1, ... (new tokens per row)
//     past_seqlens         int32 [B]        tokens cached per row before this step
//     attention_metadata   int32 [2]        [longest chunk, longest past+chunk], in CPU memory: the
//                                           kernel would otherwise read the lengths back every node
//   fp32 only
//     write_slots          int64 [T, 1]     pool row (block * block_size + offset) of each new token
//     query_index          int32 [B, S]     flat token of each row's query s (padding repeats one)
//     unpack_index         int32 [T]        row-major [B, S] position of flat token t's output
//     attention_bias       float [B, 1, S, L]  0 where query s of row b sees key slot p of its
//                                           table (L = W * block_size), -inf elsewhere
//   outputs
//     argmax               int64 [m]        largest logit of each head row
//     logits               float32 [n, vocab]
//     key_cache_out_{l}, value_cache_out_{l} (fp32 only) the updated pools, to feed back
import type { Manifest } from './manifest.js';
import { DataType, type DataTypeId, GraphBuilder } from './onnx-builder.js';
import type { WeightPlan } from './weight-format.js';
import { WeightOps, type WeightSource } from './weight-ops.js';

export type DeviceDtype = 'fp16' | 'fp32';

export interface DevicePoolShape {
  numBlocks: number;
  blockSize: number;
}

const MS = 'com.microsoft';

export function floatTypeOf(dtype: DeviceDtype): DataTypeId {
  return dtype === 'fp16' ? DataType.FLOAT16 : DataType.FLOAT;
}

/** Names of a layer's pool tensors (inputs; `out` for the fp32 variant's outputs). */
export const cacheName = (kind: 'key' | 'value', layer: number, out = false) => `${kind}_cache${out ? '_out' : ''}_${layer}`;

export function buildWebGpuGraph(
  g: GraphBuilder,
  m: Manifest,
  weights: WeightSource,
  plan: WeightPlan,
  dtype: DeviceDtype,
  pool: DevicePoolShape,
  layerNormEpsilon: number,
): void {
  if (plan.linear.op === 'MatMulIntegerToFloat') {
    throw new Error(`${plan.dtype} weights have no WebGPU kernel (MatMulIntegerToFloat); export fp16, fp32, int4, or int8 with --int8-op MatMulNBits`);
  }
  const { numLayers: L, numHeads: H, hiddenSize: E, headDim: D, vocabSize: V, contextLength: P } = m;
  const eps = { float: layerNormEpsilon };
  const floatType = floatTypeOf(dtype);
  const ops = new WeightOps(g, plan, weights);
  const weight = (name: string, dims: number[]) => weights.float(name, dims);
  const poolDims = [pool.numBlocks, pool.blockSize, H, D];

  const inputIds = g.input('input_ids', DataType.INT32, ['tokens']);
  const positions = g.input('positions', DataType.INT32, ['tokens']);
  const blockTable = g.input('block_table', DataType.INT32, ['rows', 'table_blocks']);
  const headIndex = g.input('head_index', DataType.INT32, ['head_rows']);
  const logitsRows = g.input('logits_rows', DataType.INT32, ['logits_rows']);
  const attention =
    dtype === 'fp16'
      ? pagedAttention(g, { H, E }, blockTable)
      : scatterAttention(g, { H, E, blockSize: pool.blockSize, numBlocks: pool.numBlocks }, blockTable);

  let hidden = g.op('Add', [ops.embedding(inputIds, V, E), g.op('Gather', [weight('wpe.weight', [P, E]), positions], { axis: 0 })]); // [T, E]
  for (let l = 0; l < L; l++) {
    const h = `h.${l}.`;
    const cache = {
      key: g.input(cacheName('key', l), floatType, poolDims),
      value: g.input(cacheName('value', l), floatType, poolDims),
    };
    const x1 = layerNorm(g, hidden, weight(`${h}ln_1.weight`, [E]), weight(`${h}ln_1.bias`, [E]), eps);
    // c_attn's query columns carry the 1/sqrt(head_dim) scale (folded in at export).
    const qkv = ops.linear(x1, `${h}attn.c_attn`, E, 3 * E);
    const attnOut = ops.linear(attention(qkv, cache, l), `${h}attn.c_proj`, E, E);
    hidden = g.op('Add', [hidden, attnOut]);
    const x2 = layerNorm(g, hidden, weight(`${h}ln_2.weight`, [E]), weight(`${h}ln_2.bias`, [E]), eps);
    const fc = ops.linear(x2, `${h}mlp.c_fc`, E, 4 * E);
    hidden = g.op('Add', [hidden, ops.linear(g.op('Gelu', [fc], { approximate: 'tanh' }), `${h}mlp.c_proj`, 4 * E, E)]);
  }

  const picked = g.op('Gather', [hidden, headIndex], { axis: 0 });
  const final = layerNorm(g, picked, weight('ln_f.weight', [E]), weight('ln_f.bias', [E]), eps);
  const headLogits = ops.head(final, V, E, m.tiedHead, 'head_logits'); // [m, V] in the graph's type
  g.output(g.op('ArgMax', [headLogits], { axis: 1, keepdims: 0 }, 'argmax'), 'argmax', DataType.INT64, ['head_rows']);
  const asked = g.op('Gather', [headLogits, logitsRows], { axis: 0 });
  const logits = dtype === 'fp16' ? g.op('Cast', [asked], { to: DataType.FLOAT }, 'logits') : g.op('Identity', [asked], {}, 'logits');
  g.output(logits, 'logits', DataType.FLOAT, ['logits_rows', V]);
}

type Attention = (qkv: string, cache: { key: string; value: string }, layer: number) => string;

/** fp16: PagedAttention on the packed QKV, writing the new rows into the caches in place. */
function pagedAttention(g: GraphBuilder, { H, E }: { H: number; E: number }, blockTable: string): Attention {
  const cumulative = g.input('cumulative_sequence_length', DataType.INT32, ['rows_plus_one']);
  const past = g.input('past_seqlens', DataType.INT32, ['rows']);
  const metadata = g.input('attention_metadata', DataType.INT32, [2]);
  return (qkv, cache) => {
    // Inputs by index: query (packed QKV), key, value, key_cache, value_cache, cumulative lengths,
    // past lengths, block table, then rotary / slot mapping / sinks / norms / scales (unused),
    // attention_metadata at 16. The cache outputs are left out: that is what makes the update in place.
    const inputs = [qkv, '', '', cache.key, cache.value, cumulative, past, blockTable, '', '', '', '', '', '', '', '', metadata];
    return g.op('PagedAttention', inputs, { num_heads: H, kv_num_heads: H, scale: { float: 1 } }, undefined, MS); // [T, E]
  };
}

/** fp32: ScatterND writes the new rows into new pools (graph outputs); MultiHeadAttention reads the rows' blocks. */
function scatterAttention(
  g: GraphBuilder,
  { H, E, blockSize, numBlocks }: { H: number; E: number; blockSize: number; numBlocks: number },
  blockTable: string,
): Attention {
  const writeSlots = g.input('write_slots', DataType.INT64, ['tokens', 1]);
  const queryIndex = g.input('query_index', DataType.INT32, ['rows', 'queries']);
  const unpackIndex = g.input('unpack_index', DataType.INT32, ['tokens']);
  const bias = g.input('attention_bias', DataType.FLOAT, ['rows', 1, 'queries', 'keys']);
  const D = E / H;
  return (qkv, cache, l) => {
    const [q, k, v] = g.opN('Split', [qkv, g.constInt64([E, E, E])], 3, { axis: 1 });
    // [blocks, bs, H, D] -> [blocks * bs, E] (a free reshape), new rows scattered in by slot.
    const write = (pool: string, rows: string, out: string) => {
      const flat = g.op('ScatterND', [g.op('Reshape', [pool, g.constInt64([numBlocks * blockSize, E])]), writeSlots, rows]);
      g.output(g.op('Reshape', [flat, g.constInt64([numBlocks, blockSize, H, D])], {}, out), out, DataType.FLOAT, [numBlocks, blockSize, H, D]);
      return flat;
    };
    // Each row's blocks in table order: [blocks, bs * E] gathered by [B, W] -> [B, W * bs, E].
    const rowsOf = (flat: string) =>
      g.op('Reshape', [g.op('Gather', [g.op('Reshape', [flat, g.constInt64([numBlocks, blockSize * E])]), blockTable], { axis: 0 }), g.constInt64([0, -1, E])]);
    const keys = rowsOf(write(cache.key, k, cacheName('key', l, true)));
    const values = rowsOf(write(cache.value, v, cacheName('value', l, true)));
    const queries = g.op('Gather', [q, queryIndex], { axis: 0 }); // [B, S, E]
    const out = g.op('MultiHeadAttention', [queries, keys, values, '', '', bias], { num_heads: H, scale: { float: 1 } }, undefined, MS); // [B, S, E]
    return g.op('Gather', [g.op('Reshape', [out, g.constInt64([-1, E])]), unpackIndex], { axis: 0 }); // [T, E]
  };
}

/** Layer norm with float32 statistics whatever the activations' type (stash_type 1). */
function layerNorm(g: GraphBuilder, x: string, scale: string, bias: string, epsilon: { float: number }): string {
  return g.op('LayerNormalization', [x, scale, bias], { axis: -1, epsilon, stash_type: 1 });
}

/** The one-node graph that makes a zero-filled device buffer of any shape (the pools). */
export function buildZerosGraph(g: GraphBuilder, dtype: DeviceDtype): void {
  const shape = g.input('shape', DataType.INT64, [4]);
  g.output(g.op('Expand', [g.constZero(floatTypeOf(dtype)), shape], {}, 'zeros'), 'zeros', floatTypeOf(dtype), ['a', 'b', 'c', 'd']);
}
