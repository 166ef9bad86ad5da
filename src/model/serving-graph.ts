// The serving graph: one ONNX Runtime run computes a step for a whole batch of sequences with
// different past lengths, reading their KV cache from a block pool that the engine owns in JS
// memory (a zero-copy input) and returning only the small things the engine needs: logits at the
// requested positions and the new K/V rows, which the engine writes into its pool itself.
//
// Contract (manifest.contractVersion 2; version 1 had no argmax output):
//   inputs
//     input_ids      int64 [batch, seq]      new tokens, right-padded per row
//     past_lengths   int64 [batch]           tokens already cached per row; new token i sits at
//                                            position past_lengths[b] + i
//     block_table    int64 [batch, blocks]   pool blocks holding each row's past, in order;
//                                            entries past the row's length point at block 0
//     logits_index   int64 [n]               flat row*seq+col positions whose logits to return
//     past_key_{l}, past_value_{l}
//                    float [heads, pool_blocks, block_size, head_dim]
//   outputs
//     logits         float [n, vocab]
//     argmax         int64 [n]               the largest logit of each returned row
//     new_key_{l}, new_value_{l}
//                    float [heads, batch, seq, head_dim]
// The pool is head-major so that gathering a row's blocks yields [heads, batch, tokens, head_dim]
// with a free reshape: no Transpose ever copies the cache. Block size is not baked in; it is the
// pool's shape, so the engine may choose it at start-up.
import type { Gpt2Config } from './gpt2-checkpoint.js';
import { DataType, GraphBuilder } from './onnx-builder.js';
import type { WeightPlan } from './weight-format.js';
import { WeightOps, type WeightSource } from './weight-ops.js';

export const CONTRACT_VERSION = 2;
export const OPSET = 20; // Gelu with approximate='tanh' is opset 20

export function buildServingGraph(g: GraphBuilder, config: Gpt2Config, weights: WeightSource, tiedHead: boolean, plan: WeightPlan): void {
  const { n_layer: L, n_head: H, n_embd: E, n_positions: P, vocab_size: V } = config;
  const D = E / H;
  const eps = config.layer_norm_epsilon;
  const ops = new WeightOps(g, plan, weights);
  const weight = (name: string, dims: number[]) => weights.float(name, dims);

  const inputIds = g.input('input_ids', DataType.INT64, ['batch', 'seq']);
  const pastLengths = g.input('past_lengths', DataType.INT64, ['batch']);
  const blockTable = g.input('block_table', DataType.INT64, ['batch', 'blocks']);
  const logitsIndex = g.input('logits_index', DataType.INT64, ['n_logits']);

  const tokenRows = ops.embedding(inputIds, V, E);
  const wpe = weight('wpe.weight', [P, E]);

  // Positions: past_lengths[b] + arange(seq), clamped so that padding never indexes past wpe.
  const idsShape = g.op('Shape', [inputIds]);
  const seqLen = g.op('Gather', [idsShape, g.constInt64([1])], { axis: 0 });
  const seqRange = g.op('Range', [g.constInt64([0], []), g.op('Squeeze', [seqLen]), g.constInt64([1], [])]);
  const positions = g.op('Min', [
    g.op('Add', [g.op('Unsqueeze', [pastLengths, g.constInt64([1])]), g.op('Unsqueeze', [seqRange, g.constInt64([0])])]),
    g.constInt64([P - 1], []),
  ]);
  const embedded = g.op('Add', [tokenRows, g.op('Gather', [wpe, positions], { axis: 0 })]);
  let hidden = g.op('Reshape', [embedded, g.constInt64([-1, E])]); // [tokens, E]: every matmul is 2-D

  // Masks shared by all layers. Past: key p of row b is visible when p < past_lengths[b].
  // New keys: causal within the row. Padding queries see at least themselves, so no row of
  // the softmax is all -inf.
  const qkvShape = g.op('Concat', [idsShape, g.constInt64([H, D])], { axis: 0 }); // [B, S, H, D]
  const negInf = g.constFloat([-Infinity], []);
  const zero = g.constFloat([0], []);
  const pastTokens = g.op('Mul', [g.op('Shape', [blockTable], { start: 1, end: 2 }), g.op('Shape', [`past_key_0`], { start: 2, end: 3 })]);
  const pastRange = g.op('Range', [g.constInt64([0], []), g.op('Squeeze', [pastTokens]), g.constInt64([1], [])]);
  const pastVisible = g.op('Less', [g.op('Unsqueeze', [pastRange, g.constInt64([0])]), g.op('Unsqueeze', [pastLengths, g.constInt64([1])])]);
  const pastBias = g.op('Unsqueeze', [g.op('Where', [pastVisible, zero, negInf]), g.constInt64([1])]); // [B, 1, T]
  const causal = g.op('LessOrEqual', [g.op('Unsqueeze', [seqRange, g.constInt64([0])]), g.op('Unsqueeze', [seqRange, g.constInt64([1])])]);
  const newBias = g.op('Where', [causal, zero, negInf]); // [S, S]
  const splitSizes = g.op('Concat', [pastTokens, seqLen], { axis: 0 });
  const scale = 1 / Math.sqrt(D);

  for (let l = 0; l < L; l++) {
    const h = `h.${l}.`;
    const pastKey = g.input(`past_key_${l}`, DataType.FLOAT, [H, 'pool_blocks', 'block_size', D]);
    const pastValue = g.input(`past_value_${l}`, DataType.FLOAT, [H, 'pool_blocks', 'block_size', D]);

    const x1 = layerNorm(g, hidden, weight(`${h}ln_1.weight`, [E]), weight(`${h}ln_1.bias`, [E]), eps);
    // The 1/sqrt(head_dim) attention scale is folded into the query columns of c_attn.
    const qkv = ops.linear(x1, `${h}attn.c_attn`, E, 3 * E, (w) => scaleColumns(w, 3 * E, E, scale));
    const [q, k, v] = g.opN('Split', [qkv, g.constInt64([E, E, E])], 3, { axis: 1 });
    const toHeads = (t: string, name?: string) => g.op('Transpose', [g.op('Reshape', [t, qkvShape])], { perm: [2, 0, 1, 3] }, name);
    const qh = toHeads(q);
    const kNew = toHeads(k, `new_key_${l}`);
    const vNew = toHeads(v, `new_value_${l}`);
    g.output(kNew, kNew, DataType.FLOAT, [H, 'batch', 'seq', D]);
    g.output(vNew, vNew, DataType.FLOAT, [H, 'batch', 'seq', D]);

    // [H, pool, bs, D] gathered by [B, blocks] -> [H, B, blocks, bs, D] -> [H, B, T, D]
    const kPast = g.op('Reshape', [g.op('Gather', [pastKey, blockTable], { axis: 1 }), g.constInt64([0, 0, -1, D])]);
    const vPast = g.op('Reshape', [g.op('Gather', [pastValue, blockTable], { axis: 1 }), g.constInt64([0, 0, -1, D])]);
    const scoresPast = g.op('Add', [g.op('MatMul', [qh, g.op('Transpose', [kPast], { perm: [0, 1, 3, 2] })]), pastBias]);
    const scoresNew = g.op('Add', [g.op('MatMul', [qh, g.op('Transpose', [kNew], { perm: [0, 1, 3, 2] })]), newBias]);
    const probs = g.op('Softmax', [g.op('Concat', [scoresPast, scoresNew], { axis: -1 })], { axis: -1 });
    const [probsPast, probsNew] = g.opN('Split', [probs, splitSizes], 2, { axis: -1 });
    const attn = g.op('Add', [g.op('MatMul', [probsPast, vPast]), g.op('MatMul', [probsNew, vNew])]); // [H, B, S, D]
    const merged = g.op('Reshape', [g.op('Transpose', [attn], { perm: [1, 2, 0, 3] }), g.constInt64([-1, E])]);
    const attnOut = ops.linear(merged, `${h}attn.c_proj`, E, E);
    hidden = g.op('Add', [hidden, attnOut]);

    const x2 = layerNorm(g, hidden, weight(`${h}ln_2.weight`, [E]), weight(`${h}ln_2.bias`, [E]), eps);
    const fc = ops.linear(x2, `${h}mlp.c_fc`, E, 4 * E);
    const mlpOut = ops.linear(g.op('Gelu', [fc], { approximate: 'tanh' }), `${h}mlp.c_proj`, 4 * E, E);
    hidden = g.op('Add', [hidden, mlpOut]);
  }

  // Only the requested positions go through ln_f and the vocabulary projection.
  const picked = g.op('Gather', [hidden, logitsIndex], { axis: 0 });
  const final = layerNorm(g, picked, weight('ln_f.weight', [E]), weight('ln_f.bias', [E]), eps);
  const logits = ops.head(final, V, E, tiedHead, 'logits');
  g.output(logits, logits, DataType.FLOAT, ['n_logits', V]);
  // Greedy picks are the common case; a vectorized ArgMax here beats a JS loop over cold logits.
  g.output(g.op('ArgMax', [logits], { axis: 1, keepdims: 0 }, 'argmax'), 'argmax', DataType.INT64, ['n_logits']);
}

function layerNorm(g: GraphBuilder, x: string, scale: string, bias: string, eps: number): string {
  return g.op('LayerNormalization', [x, scale, bias], { axis: -1, epsilon: { float: eps } });
}

/** Multiplies the first `count` entries of every `rowLength`-long row by `factor`. */
function scaleColumns(data: Float32Array, rowLength: number, count: number, factor: number): void {
  for (let row = 0; row < data.length; row += rowLength) {
    for (let i = 0; i < count; i++) data[row + i] *= factor;
  }
}
