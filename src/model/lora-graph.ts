// Per-row LoRA adapters in the serving graph (Punica / S-LoRA's idea, in plain ONNX ops): the
// adapters a step uses sit in slots of stacked matrices, and each adapted layer adds every
// token's own low-rank delta to the base layer's output. Tokens are grouped by slot, and each
// token is its own pair of matrix-vector products with its slot's matrices:
//
//   x_s   = x[gather[s]] as columns         [k, n, in, 1] (k slots, n tokens each, padded)
//   h     = A_s · x_s                       [k, n, R, 1]  (A_s: the slot's lora_A, [R, in])
//   d     = B_s · h                         [k, n, out, 1] (B_s: its scale x lora_B, [out, R])
//   y     = base + [d; d_big; 0][unpack]    [T, out]      (the base model's tokens take the zero row)
//
// A batch is rectangular, so every slot is padded to the fullest one's token count: a step with a
// prompt chunk of one adapter beside decode rows of others would compute the chunk's length for
// every slot. So the runner may take the slots with many tokens out into a second group (the big
// groups, lora_big_*: their matrices gathered by slot, only in steps that have them), each group
// padded to its own fullest slot.
//
// A step whose every token has one adapter (lora_every_token: one stream, or all streams on one
// fine-tune) is fed that slot alone and multiplies the layer's input as it is, [1, T, in, 1]: the
// same products, without the gather, the unpack and the big groups' If, four nodes per module
// fewer. Every adapter is zero-padded to rank R (--max-lora-rank), so a slot is R wide.
//
// Exact beside any mix: a token's delta is bit-identical alone and with any other tokens, slots
// and adapters in the step. ONNX Runtime's float MatMul (MLAS) picks its kernel and the blocking
// of the inner dimension by the product's shape; a product with one column (N = 1, contiguous)
// goes to a matrix-vector kernel whose order of summation depends only on the inner length. The
// slot's matrix is the left operand and broadcasts over the slot's tokens, so every token is a
// product of its own, whatever n and k are (written the other way round, with the tokens on the
// left and the slot's matrix broadcast on the right, ONNX Runtime folds a batch of one slot into
// the rows of one product, which changes the kernel with the token count). The matrices are read
// as they are, without MLAS's packing copies. A base token adds an exact zero.
//
// Inputs, on top of the serving graph's (serving-graph.ts):
//   lora_gather          int64 [k, n]          each slot's tokens (flat indexes), padded with token 0
//   lora_big_slots       int64 [b]             slots taken out into big groups (b may be 0)
//   lora_big_gather      int64 [b, m]          their tokens, padded likewise
//   lora_unpack          int64 [T]             where each token's delta is in [d (k x n); d_big (b x m); 0]
//   lora_every_token     bool [1]              every token has the one slot fed (k = 1); the four above are then unused
//   lora_{l}_{module}_a  float [k, 1, R, in]   per layer and module: each slot's lora_A, zero-padded rows
//   lora_{l}_{module}_b  float [k, 1, out, R]  each slot's scale x lora_B (c_attn's query rows times
//                                              1/sqrt(head_dim), as the exporter folds them), zero-padded columns
// A step without adapters feeds zero slots (zero-size tensors) and If nodes skip the deltas.
import type { Gpt2Config } from './gpt2-checkpoint.js';
import { LORA_MODULES, loraModuleShape, type LoraAdapter, type LoraModule } from './lora-adapter.js';
import { DataType, type GraphBuilder } from './onnx-builder.js';

/** A module's name in graph input names (`attn.c_attn` -> `attn_c_attn`). */
export function loraInputModule(module: LoraModule): string {
  return module.replace('.', '_');
}

export const loraInputName = (layer: number, module: LoraModule, half: 'a' | 'b'): string => `lora_${layer}_${loraInputModule(module)}_${half}`;

/** The step-wide LoRA inputs, declared once per graph. */
export interface LoraStepInputs {
  gather: string;
  bigSlots: string;
  bigGather: string;
  unpack: string;
  /** One-element bools: every token of the step has the one slot fed; the step has any slot; it has big groups. */
  everyToken: string;
  active: string;
  bigActive: string;
}

export function loraStepInputs(g: GraphBuilder): LoraStepInputs {
  const gather = g.input('lora_gather', DataType.INT64, ['lora_slots', 'lora_tokens']);
  const bigSlots = g.input('lora_big_slots', DataType.INT64, ['lora_big']);
  const bigGather = g.input('lora_big_gather', DataType.INT64, ['lora_big', 'lora_big_tokens']);
  const unpack = g.input('lora_unpack', DataType.INT64, ['tokens']);
  const everyToken = g.input('lora_every_token', DataType.BOOL, [1]);
  const some = (t: string) => g.op('Greater', [g.op('Shape', [t], { start: 0, end: 1 }), g.constInt64([0])]);
  return { gather, bigSlots, bigGather, unpack, everyToken, active: some(gather), bigActive: some(bigSlots) };
}

/** `base` (the layer's output for input x, [T, out]) plus each token's adapter delta. */
export function addLoraDelta(g: GraphBuilder, step: LoraStepInputs, x: string, base: string, layer: number, module: LoraModule, embd: number): string {
  const [inF, outF] = loraModuleShape(module, embd);
  const a = g.input(loraInputName(layer, module, 'a'), DataType.FLOAT, ['lora_slots', 1, 'lora_rank', inF]);
  const b = g.input(loraInputName(layer, module, 'b'), DataType.FLOAT, ['lora_slots', 1, outF, 'lora_rank']);
  // One batched product per token: tokens [k, n] gathered from x as columns [k, n, in, 1], each
  // multiplied by its slot's A [k, 1, R, in], then B [k, 1, out, R] (the slot's matrices broadcast
  // over its tokens); the deltas flat, [k x n, out].
  const deltas = (sub: GraphBuilder, aSlots: string, bSlots: string, tokens: string) => {
    const h = sub.op('MatMul', [aSlots, sub.op('Unsqueeze', [sub.op('Gather', [x, tokens], { axis: 0 }), sub.constInt64([-1])])]); // [k, n, R, 1]
    return sub.op('Reshape', [sub.op('MatMul', [bSlots, h]), sub.constInt64([-1, outF])]); // [k, n, out, 1] -> [k x n, out]
  };
  // Every token one adapter's (one stream, or all streams on one fine-tune): the same products on
  // x as it is, without the gather, the unpack and the big groups' If.
  const everyToken = (sub: GraphBuilder) => {
    const h = sub.op('MatMul', [a, sub.op('Unsqueeze', [x, sub.constInt64([0, -1])])]); // [1, T, R, 1]
    return [sub.op('Add', [base, sub.op('Reshape', [sub.op('MatMul', [b, h]), sub.constInt64([-1, outF])])])];
  };
  const someTokens = (sub: GraphBuilder) => {
    const small = deltas(sub, a, b, step.gather);
    // The big groups' slots are gathered (a copy of their matrices), only in steps that have them.
    const big = sub.ifElse(
      step.bigActive,
      [DataType.FLOAT],
      (s) => [deltas(s, s.op('Gather', [a, step.bigSlots], { axis: 0 }), s.op('Gather', [b, step.bigSlots], { axis: 0 }), step.bigGather)],
      (s) => [s.constFloat([], [0, outF])],
    )[0]!;
    const rows = sub.op('Concat', [small, big, sub.constFloat(new Array(outF).fill(0), [1, outF])], { axis: 0 });
    return [sub.op('Add', [base, sub.op('Gather', [rows, step.unpack], { axis: 0 })])];
  };
  return g.ifElse(step.everyToken, [DataType.FLOAT], everyToken, (sub) => sub.ifElse(step.active, [DataType.FLOAT], someTokens, () => [base]))[0]!;
}

/**
 * An adapter in the graph's slot layout: per layer and module, lora_A zero-padded to `rank` rows
 * ([rank, in]) and `scale * lora_B` zero-padded to `rank` columns ([out, rank]); null where the
 * adapter leaves the module alone. c_attn's query columns carry the attention's 1/sqrt(head_dim), folded
 * into the base weights by the exporter (serving-graph.ts), so the delta's do too.
 */
export interface PackedLora {
  rank: number;
  /** [layer][module index in LORA_MODULES] */
  layers: Array<Array<{ a: Float32Array; b: Float32Array } | null>>;
  /** Bytes of the packed matrices (what the adapter costs in memory, per copy). */
  bytes: number;
}

export function packLoraAdapter(adapter: LoraAdapter, config: Pick<Gpt2Config, 'n_layer' | 'n_embd' | 'n_head'>, rank: number): PackedLora {
  if (adapter.rank > rank) throw new Error(`${adapter.dir}: LoRA adapter rank ${adapter.rank} is over --max-lora-rank ${rank}`);
  const E = config.n_embd;
  const queryScale = 1 / Math.sqrt(E / config.n_head);
  const layers = Array.from({ length: config.n_layer }, () => LORA_MODULES.map(() => null as { a: Float32Array; b: Float32Array } | null));
  let bytes = 0;
  for (const pair of adapter.pairs) {
    const { inFeatures: inF, outFeatures: outF, a, b } = pair;
    const r = adapter.rank;
    const packedA = new Float32Array(rank * inF); // [R, in]: lora_A [r, in], zero rows after r
    packedA.set(a);
    const packedB = new Float32Array(outF * rank); // [out, R]: scale x lora_B [out, r], zero columns after r
    for (let o = 0; o < outF; o++) {
      const q = pair.module === 'attn.c_attn' && o < E ? queryScale : 1;
      for (let k = 0; k < r; k++) packedB[o * rank + k] = Math.fround(Math.fround(adapter.scale * b[o * r + k]!) * q);
    }
    layers[pair.layer]![LORA_MODULES.indexOf(pair.module)] = { a: packedA, b: packedB };
    bytes += packedA.byteLength + packedB.byteLength;
  }
  return { rank, layers, bytes };
}
