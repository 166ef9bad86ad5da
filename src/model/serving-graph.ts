// The serving graph: one ONNX Runtime run computes a step for every row of the batch (decode
// rows of one token and prefill chunks together, of different past lengths), reading their KV
// cache from a block pool that the engine owns in JS memory (a zero-copy input) and returning
// only the small things the engine needs: logits at the requested positions and the new K/V
// rows, which the engine writes into its pool itself.
//
// Tokens are flat ("varlen"): every weight matmul runs on exactly the step's T new tokens, with no
// padding, and one run carries the whole step. Only attention needs rows, and it runs in two
// groups: decode rows (one query each, over their own past) and prefill rows (a chunk each,
// padded to the longest chunk among prefill rows only, causal), each row reading its own blocks.
//
// Contract (manifest.contractVersion 3; 2 had a [batch, seq] layout and one run per row shape):
//   inputs
//     input_ids            int64 [T]          new tokens of every row, concatenated
//     positions            int64 [T]          each token's position in its sequence
//     decode_token_index   int64 [Bd]         flat index of each decode row's token
//     decode_past_lengths  int64 [Bd]         tokens cached per decode row
//     decode_block_table   int64 [Bd, nbd]    pool blocks of each decode row's past, in order;
//                                             entries past the row's length point at block 0
//     prefill_token_index  int64 [Bp, Sp]     flat indexes of each prefill row's tokens, padded
//                                             (with any valid index) to the longest chunk
//     prefill_lengths      int64 [Bp]         tokens of each prefill row's chunk
//     prefill_past_lengths int64 [Bp]         tokens cached per prefill row before its chunk
//     prefill_block_table  int64 [Bp, nbp]    as decode_block_table
//     unpack_index         int64 [T]          flat token t's attention output is row
//                                             unpack_index[t] of [decode outputs (Bd);
//                                             prefill outputs (Bp x Sp, row-major)]
//     logits_index         int64 [n]          flat token indexes whose logits to return
//     past_key_{l}, past_value_{l}
//                          float [heads, pool_blocks, block_size, head_dim]
//   outputs
//     logits               float [n, vocab]
//     argmax               int64 [n]          the largest logit of each returned row
//     new_key_{l}, new_value_{l}
//                          float [T, heads * head_dim]   K/V of the step's tokens, flat
// A group with no rows gets one dummy row (token 0, no past, length 1, the null block) whose
// output nothing unpacks: zero-size tensors are never fed. The pool is head-major so that
// gathering a row's blocks yields [heads, rows, tokens, head_dim] with a free reshape: no
// Transpose ever copies the cache. Block size is not baked in; it is the pool's shape.
import type { Gpt2Config } from './gpt2-checkpoint.js';
import { DataType, GraphBuilder } from './onnx-builder.js';
import type { WeightPlan } from './weight-format.js';
import { WeightOps, type WeightSource } from './weight-ops.js';

export const CONTRACT_VERSION = 3;
export const OPSET = 20; // Gelu with approximate='tanh' is opset 20

export function buildServingGraph(g: GraphBuilder, config: Gpt2Config, weights: WeightSource, tiedHead: boolean, plan: WeightPlan): void {
  const { n_layer: L, n_head: H, n_embd: E, n_positions: P, vocab_size: V } = config;
  const D = E / H;
  const eps = config.layer_norm_epsilon;
  const ops = new WeightOps(g, plan, weights);
  const weight = (name: string, dims: number[]) => weights.float(name, dims);

  const inputIds = g.input('input_ids', DataType.INT64, ['tokens']);
  const positions = g.input('positions', DataType.INT64, ['tokens']);
  const decode: AttentionGroup = {
    tokenIndex: g.input('decode_token_index', DataType.INT64, ['decode_rows']),
    pastLengths: g.input('decode_past_lengths', DataType.INT64, ['decode_rows']),
    blockTable: g.input('decode_block_table', DataType.INT64, ['decode_rows', 'decode_blocks']),
  };
  const prefill: AttentionGroup & { lengths: string } = {
    tokenIndex: g.input('prefill_token_index', DataType.INT64, ['prefill_rows', 'chunk']),
    lengths: g.input('prefill_lengths', DataType.INT64, ['prefill_rows']),
    pastLengths: g.input('prefill_past_lengths', DataType.INT64, ['prefill_rows']),
    blockTable: g.input('prefill_block_table', DataType.INT64, ['prefill_rows', 'prefill_blocks']),
  };
  const unpackIndex = g.input('unpack_index', DataType.INT64, ['tokens']);
  const logitsIndex = g.input('logits_index', DataType.INT64, ['n_logits']);

  const tokenRows = ops.embedding(inputIds, V, E);
  const wpe = weight('wpe.weight', [P, E]);
  let hidden = g.op('Add', [tokenRows, g.op('Gather', [wpe, positions], { axis: 0 })]); // [T, E]

  // Masks shared by all layers (0 where a key is visible, -inf where not).
  const blockSize = g.op('Shape', ['past_key_0'], { start: 2, end: 3 });
  const decodePastBias = pastMask(g, decode, blockSize); // [Bd, 1, past]
  const prefillPastBias = pastMask(g, prefill, blockSize); // [Bp, 1, past]
  const prefillNewBias = chunkMask(g, prefill); // [Bp, Sp, Sp]
  const scale = 1 / Math.sqrt(D);

  for (let l = 0; l < L; l++) {
    const h = `h.${l}.`;
    const pool = {
      key: g.input(`past_key_${l}`, DataType.FLOAT, [H, 'pool_blocks', 'block_size', D]),
      value: g.input(`past_value_${l}`, DataType.FLOAT, [H, 'pool_blocks', 'block_size', D]),
    };

    const x1 = layerNorm(g, hidden, weight(`${h}ln_1.weight`, [E]), weight(`${h}ln_1.bias`, [E]), eps);
    // The 1/sqrt(head_dim) attention scale is folded into the query columns of c_attn.
    const qkv = ops.linear(x1, `${h}attn.c_attn`, E, 3 * E, (w) => scaleColumns(w, 3 * E, E, scale));
    const [q, k, v] = g.opN('Split', [qkv, g.constInt64([E, E, E])], 3, { axis: 1 }, [`q_${l}`, `new_key_${l}`, `new_value_${l}`]);
    g.output(k, k, DataType.FLOAT, ['tokens', E]);
    g.output(v, v, DataType.FLOAT, ['tokens', E]);
    const heads = { H, D, E };
    const decodeOut = groupAttention(g, heads, { q, k, v }, decode, decodePastBias, null, pool); // [Bd, E]
    const prefillOut = groupAttention(g, heads, { q, k, v }, prefill, prefillPastBias, prefillNewBias, pool); // [Bp * Sp, E]
    const merged = g.op('Gather', [g.op('Concat', [decodeOut, prefillOut], { axis: 0 }), unpackIndex], { axis: 0 }); // [T, E]
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

/** The rows of one attention group: which flat tokens they are, and where their past lives. */
interface AttentionGroup {
  /** [rows] (decode: one token each) or [rows, chunk] (prefill). */
  tokenIndex: string;
  pastLengths: string;
  blockTable: string;
}

/** Past-key bias [rows, 1, past]: key p is visible when p < past_lengths[row]. */
function pastMask(g: GraphBuilder, group: AttentionGroup, blockSize: string): string {
  const pastTokens = g.op('Mul', [g.op('Shape', [group.blockTable], { start: 1, end: 2 }), blockSize]);
  const range = g.op('Range', [g.constInt64([0], []), g.op('Squeeze', [pastTokens]), g.constInt64([1], [])]);
  const visible = g.op('Less', [g.op('Unsqueeze', [range, g.constInt64([0])]), g.op('Unsqueeze', [group.pastLengths, g.constInt64([1])])]);
  return g.op('Unsqueeze', [g.op('Where', [visible, g.constFloat([0], []), g.constFloat([-Infinity], [])]), g.constInt64([1])]);
}

/**
 * New-key bias of prefill rows [rows, chunk, chunk]: query i sees chunk key j when j <= i and j
 * is inside the row's chunk. A padding query (i >= length) still sees key 0, so no row of the
 * softmax is all -inf.
 */
function chunkMask(g: GraphBuilder, group: AttentionGroup & { lengths: string }): string {
  const chunk = g.op('Shape', [group.tokenIndex], { start: 1, end: 2 });
  const range = g.op('Range', [g.constInt64([0], []), g.op('Squeeze', [chunk]), g.constInt64([1], [])]);
  const causal = g.op('LessOrEqual', [g.op('Unsqueeze', [range, g.constInt64([0])]), g.op('Unsqueeze', [range, g.constInt64([1])])]); // [S, S]
  const inChunk = g.op('Less', [g.op('Unsqueeze', [range, g.constInt64([0, 1])]), g.op('Unsqueeze', [group.lengths, g.constInt64([1, 2])])]); // [B, 1, S]
  return g.op('Where', [g.op('And', [causal, inChunk]), g.constFloat([0], []), g.constFloat([-Infinity], [])]);
}

/**
 * Attention of one group of rows: their queries against their own past (gathered from the pool
 * by their block table) and their own new keys (causal for chunks; a decode row's one new key is
 * always visible). Returns [rows * queries per row, E], row-major.
 */
function groupAttention(
  g: GraphBuilder,
  { H, D, E }: { H: number; D: number; E: number },
  flat: { q: string; k: string; v: string },
  group: AttentionGroup,
  pastBias: string,
  newBias: string | null,
  pool: { key: string; value: string },
): string {
  // [rows(, chunk)] flat indexes -> [rows, S, H, D] -> [H, rows, S, D]
  const rows = g.op('Shape', [group.tokenIndex], { start: 0, end: 1 });
  const perRow = newBias === null ? g.constInt64([1]) : g.op('Shape', [group.tokenIndex], { start: 1, end: 2 });
  const headsShape = g.op('Concat', [rows, perRow, g.constInt64([H, D])], { axis: 0 });
  const toHeads = (t: string) => g.op('Transpose', [g.op('Reshape', [g.op('Gather', [t, group.tokenIndex], { axis: 0 }), headsShape])], { perm: [2, 0, 1, 3] });
  const q = toHeads(flat.q);
  const k = toHeads(flat.k);
  const v = toHeads(flat.v);
  // [H, pool, bs, D] gathered by [rows, blocks] -> [H, rows, blocks, bs, D] -> [H, rows, T, D]
  const kPast = g.op('Reshape', [g.op('Gather', [pool.key, group.blockTable], { axis: 1 }), g.constInt64([0, 0, -1, D])]);
  const vPast = g.op('Reshape', [g.op('Gather', [pool.value, group.blockTable], { axis: 1 }), g.constInt64([0, 0, -1, D])]);
  const scoresPast = g.op('Add', [g.op('MatMul', [q, g.op('Transpose', [kPast], { perm: [0, 1, 3, 2] })]), pastBias]);
  const scoresNewRaw = g.op('MatMul', [q, g.op('Transpose', [k], { perm: [0, 1, 3, 2] })]);
  const scoresNew = newBias === null ? scoresNewRaw : g.op('Add', [scoresNewRaw, newBias]);
  const pastLen = g.op('Shape', [kPast], { start: 2, end: 3 });
  const probs = g.op('Softmax', [g.op('Concat', [scoresPast, scoresNew], { axis: -1 })], { axis: -1 });
  const [probsPast, probsNew] = g.opN('Split', [probs, g.op('Concat', [pastLen, perRow], { axis: 0 })], 2, { axis: -1 });
  const attn = g.op('Add', [g.op('MatMul', [probsPast, vPast]), g.op('MatMul', [probsNew, v])]); // [H, rows, S, D]
  return g.op('Reshape', [g.op('Transpose', [attn], { perm: [1, 2, 0, 3] }), g.constInt64([-1, E])]);
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
