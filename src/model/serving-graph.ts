// The serving graph: one ONNX Runtime run computes a step for every row of the batch (decode
// rows of one token and prefill chunks together, of different past lengths), reading their KV
// cache from a block pool that the engine owns in JS memory (a zero-copy input) and returning
// only the small things the engine needs: logits at the requested positions and the new K/V
// rows, which the engine writes into its pool itself.
//
// Tokens are flat ("varlen"): every weight matmul runs on exactly the step's T new tokens, with no
// padding, and one run carries the whole step. Only attention needs rows, and it runs in groups:
// DECODE_GROUPS decode groups (rows of one query) and PREFILL_GROUPS prefill groups, whose rows
// are query tiles of chunks (the runner cuts chunks so that a tile's keys end where its queries
// do, and spreads the tiles over the groups by key span), each row reading its own blocks. A group
// with no rows is fed zero-size tensors and skipped by an If node.
//
// Exact under any schedule: a token's K/V and logits are bit-identical however its prompt was
// chunked and whatever shares the step. Each row gathers its blocks (past and new positions), the
// step's new K/V of its sequence are scattered into that copy at their positions, and every query
// attends over keys laid out by position with one causal softmax and one weighted sum, as a
// one-row product (see groupAttention). The weight matmuls compute each row independently.
//
// With --enable-lora the runner builds this graph again at load time, over the exported
// weights, with per-row LoRA adapters: each row's low-rank delta is added to the four Conv1D
// layers (lora-graph.ts, whose inputs come on top of these). The exported graph has none.
//
// Contract (manifest.contractVersion 6; 5 had one decode group, 4 one prefill group and dummy
// rows in empty groups, 3 attended over [past | chunk] with two sums, 2 had a [batch, seq] layout
// and one run per row shape):
//   inputs
//     input_ids            int64 [T]          new tokens of every row, concatenated
//     positions            int64 [T]          each token's position in its sequence
//     decode_{g}_token_index   int64 [Bg, 1]  flat index of each decode row's token
//     decode_{g}_block_table   int64 [Bg, nbg] pool blocks of each decode row's past, in order;
//                                             padded with block 0
//     prefill_{g}_token_index  int64 [Bg, Sg] flat indexes of each tile's queries, padded (with
//                                             the tile's last query) to the group's longest tile
//     prefill_{g}_block_table  int64 [Bg, nbg] blocks of each tile's keys (past and new)
//     prefill_{g}_new_tokens   int64 [ng]     flat indexes of the tokens each tile scatters into
//                                             its keys (its sequence's new ones up to its last query)
//     prefill_{g}_new_slots    int64 [ng, 2]  (row, position) of each of them
//     unpack_index         int64 [T]          flat token t's attention output is row
//                                             unpack_index[t] of [decode group 0 outputs (B0);
//                                             ...; prefill group 0 outputs (B0 x S0, row-major); ...]
//     logits_index         int64 [n]          flat token indexes whose logits to return
//     past_key_{l}, past_value_{l}
//                          float [heads, pool_blocks, block_size, head_dim]
//   outputs
//     logits               float [n, vocab]
//     argmax               int64 [n]          the largest logit of each returned row
//     new_key_{l}, new_value_{l}
//                          float [T, heads * head_dim]   K/V of the step's tokens, flat
// The pool is head-major so that gathering a row's blocks yields [heads, rows, tokens, head_dim]
// with a free reshape. Block size is not baked in; it is the pool's shape.
import type { Gpt2Config } from './gpt2-checkpoint.js';
import type { LoraModule } from './lora-adapter.js';
import { addLoraDelta, loraStepInputs } from './lora-graph.js';
import { DataType, GraphBuilder } from './onnx-builder.js';
import type { WeightPlan } from './weight-format.js';
import { WeightOps, type WeightSource } from './weight-ops.js';

export const CONTRACT_VERSION = 6;
/**
 * Prefill attention groups. The runner cuts chunks into query tiles (a tile's keys end where its
 * queries do) and spreads them over the groups by key span, so that a long chunk's early queries
 * do not compute scores over the keys after them only to mask them. An empty group has no rows.
 */
export const PREFILL_GROUPS = 4;
/**
 * Decode attention groups. Each group's If gathers its rows' past K/V and reads that copy back
 * at once, so a group whose copy fits in the CPU's cache reads the pool from memory once; one
 * group of all rows (32 rows x 576 keys is 113 MB a layer) went to memory three times. The
 * runner fills as many groups as the copy size calls for (packStep). An empty group still costs
 * an If per layer and its mask per step, which a one-row step pays for every group it does not
 * use; more groups would help many rows of long contexts at that price (docs/benchmark.md,
 * "Decode groups").
 */
export const DECODE_GROUPS = 4;
export const OPSET = 20; // Gelu with approximate='tanh' is opset 20

export function buildServingGraph(g: GraphBuilder, config: Gpt2Config, weights: WeightSource, tiedHead: boolean, plan: WeightPlan, opts: { lora?: boolean } = {}): void {
  const { n_layer: L, n_head: H, n_embd: E, n_positions: P, vocab_size: V } = config;
  const D = E / H;
  const eps = config.layer_norm_epsilon;
  const ops = new WeightOps(g, plan, weights);
  const weight = (name: string, dims: number[]) => weights.float(name, dims);

  const inputIds = g.input('input_ids', DataType.INT64, ['tokens']);
  const positions = g.input('positions', DataType.INT64, ['tokens']);
  const group = (name: string, queries: string): AttentionGroup => ({
    tokenIndex: g.input(`${name}_token_index`, DataType.INT64, [`${name}_rows`, queries]),
    blockTable: g.input(`${name}_block_table`, DataType.INT64, [`${name}_rows`, `${name}_blocks`]),
  });
  // A decode row's only new key is its query's own: nothing to scatter into its gathered past.
  const decodes: AttentionGroup[] = Array.from({ length: DECODE_GROUPS }, (_, i) => group(`decode_${i}`, 'one'));
  const prefills: AttentionGroup[] = Array.from({ length: PREFILL_GROUPS }, (_, i) => {
    const name = `prefill_${i}`;
    return {
      ...group(name, `${name}_queries`),
      scatter: scatterInto(g, H, D, {
        tokens: g.input(`${name}_new_tokens`, DataType.INT64, [`${name}_new`]),
        slots: g.input(`${name}_new_slots`, DataType.INT64, [`${name}_new`, 2]),
      }),
    };
  });
  const groups = [...decodes, ...prefills];
  const unpackIndex = g.input('unpack_index', DataType.INT64, ['tokens']);
  const logitsIndex = g.input('logits_index', DataType.INT64, ['n_logits']);
  const lora = opts.lora ? loraStepInputs(g) : null;
  const linear = (x: string, layer: number, module: LoraModule, k: number, n: number, transform?: (w: Float32Array) => void) => {
    const base = ops.linear(x, `h.${layer}.${module}`, k, n, transform);
    return lora ? addLoraDelta(g, lora, x, base, layer, module, E) : base;
  };

  const tokenRows = ops.embedding(inputIds, V, E);
  const wpe = weight('wpe.weight', [P, E]);
  let hidden = g.op('Add', [tokenRows, g.op('Gather', [wpe, positions], { axis: 0 })]); // [T, E]

  // Masks shared by all layers (0 where a key is visible, -inf where not).
  const blockSize = g.op('Shape', ['past_key_0'], { start: 2, end: 3 });
  const layouts = groups.map((group) => causalMask(g, group, positions, blockSize));
  const nonEmpty = groups.map((group) => g.op('Greater', [g.op('Shape', [group.tokenIndex], { start: 0, end: 1 }), g.constInt64([0])]));
  const noRows = g.constFloat([], [0, E]);
  const scale = 1 / Math.sqrt(D);

  for (let l = 0; l < L; l++) {
    const h = `h.${l}.`;
    const pool = {
      key: g.input(`past_key_${l}`, DataType.FLOAT, [H, 'pool_blocks', 'block_size', D]),
      value: g.input(`past_value_${l}`, DataType.FLOAT, [H, 'pool_blocks', 'block_size', D]),
    };

    const x1 = layerNorm(g, hidden, weight(`${h}ln_1.weight`, [E]), weight(`${h}ln_1.bias`, [E]), eps);
    // The 1/sqrt(head_dim) attention scale is folded into the query columns of c_attn.
    const qkv = linear(x1, l, 'attn.c_attn', E, 3 * E, (w) => scaleColumns(w, 3 * E, E, scale));
    // The groups take their rows' q, k and v from qkv; the new K/V are outputs for the pool.
    const [k, v] = g.opN('Split', [qkv, g.constInt64([E, E, E])], 3, { axis: 1 }, [`q_${l}`, `new_key_${l}`, `new_value_${l}`]).slice(1);
    g.output(k, k, DataType.FLOAT, ['tokens', E]);
    g.output(v, v, DataType.FLOAT, ['tokens', E]);
    const heads = { H, D, E };
    // An empty group costs one If node: its attention's nodes do not run.
    const outs = groups.map((group, i) => g.ifElse(nonEmpty[i]!, [DataType.FLOAT], (sub) => [groupAttention(sub, heads, { qkv, k, v }, group, layouts[i]!, pool)], () => [noRows])[0]!); // [rows * S, E] each
    const merged = g.op('Gather', [g.op('Concat', outs, { axis: 0 }), unpackIndex], { axis: 0 }); // [T, E]
    const attnOut = linear(merged, l, 'attn.c_proj', E, E);
    hidden = g.op('Add', [hidden, attnOut]);

    const x2 = layerNorm(g, hidden, weight(`${h}ln_2.weight`, [E]), weight(`${h}ln_2.bias`, [E]), eps);
    const fc = linear(x2, l, 'mlp.c_fc', E, 4 * E);
    const mlpOut = linear(g.op('Gelu', [fc], { approximate: 'tanh' }), l, 'mlp.c_proj', 4 * E, E);
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
  /** [rows, S]: each row's queries as flat token indexes (S = 1 for decode rows). */
  tokenIndex: string;
  /** [rows, blocks]: blocks covering the keys before each row's last query. */
  blockTable: string;
  /** Prefill only: puts the chunk's new K or V rows into a gathered copy of its past (scatterInto). */
  scatter?: (g: GraphBuilder, gathered: string, fresh: string) => string;
}

/** A group's key bias and how its scores split into [earlier keys | own key] (causalMask): once per step, for every layer. */
interface KeyLayout {
  mask: string;
  /** [keys, 1]: key slots per row (blocks x block size), then the own key. */
  splitSizes: string;
}

/**
 * Key bias [rows, S, 1, keys]: query j of a row (at position positions[tokenIndex[row, j]]) sees
 * gathered key p when p < its position; its own key is a separate term (see groupAttention).
 * Keys sit at their own position, so one rule covers past and chunk alike.
 */
function causalMask(g: GraphBuilder, group: AttentionGroup, positions: string, blockSize: string): KeyLayout {
  const keys = g.op('Mul', [g.op('Shape', [group.blockTable], { start: 1, end: 2 }), blockSize]);
  const range = g.op('Range', [g.constInt64([0], []), g.op('Squeeze', [keys]), g.constInt64([1], [])]); // [keys]
  const queryPos = g.op('Unsqueeze', [g.op('Gather', [positions, group.tokenIndex], { axis: 0 }), g.constInt64([-1, -2])]); // [rows, S, 1, 1]
  const visible = g.op('Less', [range, queryPos]); // [rows, S, 1, keys]
  return { mask: g.op('Where', [visible, g.constFloat([0], []), g.constFloat([-Infinity], [])]), splitSizes: g.op('Concat', [keys, g.constInt64([1])], { axis: 0 }) };
}

/**
 * Attention of one group of rows, computed the same way for every query whatever its row's
 * chunk: the keys before the query, in position order, then the query's own key as one more
 * term. The row's earlier keys are gathered from the pool by its block table; a prefill chunk's
 * own new K/V are scattered into that copy at their positions (decode rows have none). Scores
 * are [earlier keys | own key] under one softmax; the weighted sum is the earlier keys' product
 * plus the own key's term. Each query is its own matrix-vector product (the S axis is a
 * broadcast batch axis): ONNX Runtime's CPU GEMM picks its kernel and summation blocking by the
 * product's shape, and a one-row product has one path whose per-element order depends only on
 * the key's position (docs/design.md, "Exact under any schedule"). Returns [rows * S, E].
 */
function groupAttention(
  g: GraphBuilder,
  { H, D, E }: { H: number; D: number; E: number },
  flat: { qkv: string; k: string; v: string },
  group: AttentionGroup,
  { mask, splitSizes }: KeyLayout,
  pool: { key: string; value: string },
): string {
  // The rows' q, k and v in one gather: [rows, S] flat indexes -> [rows, S, 3, H, 1, D] -> [3, H, rows, S, 1, D].
  // (A group runs only when it has rows, so Reshape may infer and copy dimensions.)
  const perQuery = g.op('Transpose', [g.op('Reshape', [g.op('Gather', [flat.qkv, group.tokenIndex], { axis: 0 }), g.constInt64([0, 0, 3, H, 1, D])])], { perm: [2, 3, 0, 1, 4, 5] });
  const part = (i: number) => g.op('Gather', [perQuery, g.constInt64([i], [])], { axis: 0 }); // [H, rows, S, 1, D]
  const q = part(0);
  const ownValue = part(2);
  const ownKeyColumn = g.op('Reshape', [part(1), g.constInt64([0, 0, 0, D, 1])]); // [.., 1, D] -> [.., D, 1]: the same bytes
  const earlier = (pooled: string, fresh: string) => {
    // [H, pool, bs, D] gathered by [rows, blocks] -> [H, rows, 1, blocks * bs, D]; a prefill
    // row's chunk keys are scattered into [H, rows, keys, D] first.
    const gathered = g.op('Gather', [pooled, group.blockTable], { axis: 1 });
    if (!group.scatter) return g.op('Reshape', [gathered, g.constInt64([0, 0, 1, -1, D])]);
    return g.op('Unsqueeze', [group.scatter(g, g.op('Reshape', [gathered, g.constInt64([0, 0, -1, D])]), fresh), g.constInt64([2])]);
  };
  const keys = earlier(pool.key, flat.k);
  const values = earlier(pool.value, flat.v);
  const scoresEarlier = g.op('Add', [g.op('MatMul', [q, g.op('Transpose', [keys], { perm: [0, 1, 2, 4, 3] })]), mask]); // [H, rows, S, 1, keys]
  const scoreOwn = g.op('MatMul', [q, ownKeyColumn]); // [H, rows, S, 1, 1]
  const probs = g.op('Softmax', [g.op('Concat', [scoresEarlier, scoreOwn], { axis: -1 })], { axis: -1 });
  const [probsEarlier, probOwn] = g.opN('Split', [probs, splitSizes], 2, { axis: -1 });
  const attn = g.op('Add', [g.op('MatMul', [probsEarlier, values]), g.op('Mul', [probOwn, ownValue])]); // [H, rows, S, 1, D]
  return g.op('Reshape', [g.op('Transpose', [attn], { perm: [1, 2, 3, 0, 4] }), g.constInt64([-1, E])]);
}

/**
 * ScatterND of a chunk's new K/V rows into its gathered [H, rows, keys, D] copy, at their (row,
 * position). ONNX Runtime's CPU ScatterND copies its input, so this costs one copy of the
 * gathered keys: prefill only, where the chunk's queries outweigh it.
 */
function scatterInto(g: GraphBuilder, H: number, D: number, at: { tokens: string; slots: string }): (g: GraphBuilder, gathered: string, fresh: string) => string {
  const n = g.op('Shape', [at.tokens], { start: 0, end: 1 });
  const heads = g.op('Expand', [g.op('Reshape', [g.op('Range', [g.constInt64([0], []), g.constInt64([H], []), g.constInt64([1], [])]), g.constInt64([H, 1, 1])]), g.op('Concat', [g.constInt64([H]), n, g.constInt64([1])], { axis: 0 })]);
  const slots = g.op('Expand', [g.op('Unsqueeze', [at.slots, g.constInt64([0])]), g.op('Concat', [g.constInt64([H]), n, g.constInt64([2])], { axis: 0 })]);
  const index = g.op('Concat', [heads, slots], { axis: 2 }); // [H, n, 3] = (head, row, position)
  return (g, gathered, fresh) => {
    const updates = g.op('Transpose', [g.op('Reshape', [g.op('Gather', [fresh, at.tokens], { axis: 0 }), g.constInt64([-1, H, D])])], { perm: [1, 0, 2] }); // [H, n, D]
    return g.op('ScatterND', [gathered, index, updates]);
  };
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
