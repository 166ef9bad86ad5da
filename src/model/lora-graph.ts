// Per-row LoRA adapters in the serving graph (Punica / S-LoRA's idea, in plain ONNX ops): the
// adapters a step uses sit in slots of stacked matrices, every token carries its row's slot (-1:
// the base model), and each adapted layer adds every row's own low-rank delta to the base
// layer's output:
//
//   h     = x · A_all^T            [T, slots x R]   (A_all: the slots' lora_A, stacked, [slots x R, in])
//   h'    = h where the column's slot is the token's slot, else 0
//   y     = base + h' · B_all      [T, out]         (B_all: the slots' scaled lora_B^T, [slots x R, out])
//
// Every adapter is zero-padded to rank R (--max-lora-rank), so a slot is R columns wide.
//
// Exact beside any mix: a row's delta is bit-identical alone and with any other rows and slots in
// the step. ONNX Runtime's float Gemm (MLAS) picks its kernel and the blocking of the inner
// dimension by the product's shape: a one-row product takes separate M=1 kernels, and the inner
// dimension is cut into slices whose length depends on N (here the slot count) and on how the
// product is split across threads. With A transposed (transA) MLAS takes neither shortcut: no M=1
// kernel, and inner slices of a fixed 128 whatever N, and each output is one fused multiply-add
// chain per slice, row by row. So both products read their left side transposed. In the second,
// the inner dimension is the slots' ranks, cut into slices of 128 (one slice up to 128 columns):
// another slot's columns add exact zeros (h' is 0 there, and adapters are finite) to the chain,
// before or after the row's own, and a slice of only other slots' columns adds an exact zero to
// the output, so long as no slot straddles a slice boundary: R is a power of two
// (loraRankProblem). A base row's h' is all zeros: y = base exactly.
// ONNX Runtime's optimizer would fold a Transpose feeding a Gemm into transA = 0, which is the
// shape-dependent path again; a Reshape to the tensor's own runtime shape sits between them so
// that it cannot (test/lora-serving.test.ts checks the bits).
//
// Inputs (contract 6; see serving-graph.ts):
//   lora_slot            int64 [T]                 each token's slot, -1 for the base model
//   lora_column_slot     int64 [slots x R]         the slot of each stacked rank column
//   lora_{l}_{module}_a  float [slots x R, in]     per layer and adapted module (LORA_INPUT_MODULES)
//   lora_{l}_{module}_b  float [slots x R, out]
// A step without adapters feeds zero slots (zero-size tensors) and an If node skips the deltas.
import type { Gpt2Config } from './gpt2-checkpoint.js';
import { LORA_MODULES, loraModuleShape, type LoraAdapter, type LoraModule } from './lora-adapter.js';
import { DataType, type GraphBuilder } from './onnx-builder.js';

/** Slot ranks the graph is exact for: powers of two, so that slots tile MLAS's 128-column slices. */
export const MAX_LORA_SLOT_RANK = 512;

/** Why `rank` cannot be the slots' rank (--max-lora-rank), or null. */
export function loraRankProblem(rank: number): string | null {
  if (!Number.isInteger(rank) || rank < 1 || rank > MAX_LORA_SLOT_RANK || (rank & (rank - 1)) !== 0) {
    return `the maximum LoRA rank must be a power of two from 1 to ${MAX_LORA_SLOT_RANK} (slots must tile the 128-column slices that keep adapter rows exact), got ${rank}`;
  }
  return null;
}

/** A module's name in graph input names (`attn.c_attn` -> `attn_c_attn`). */
export function loraInputModule(module: LoraModule): string {
  return module.replace('.', '_');
}

export const loraInputName = (layer: number, module: LoraModule, half: 'a' | 'b'): string => `lora_${layer}_${loraInputModule(module)}_${half}`;

/** The step-wide LoRA inputs, declared once per graph. */
export interface LoraStepInputs {
  slot: string;
  /** [T, slots x R] bool: the column belongs to the token's slot. */
  mask: string;
  /** One-element bool: the step has any slot. */
  active: string;
}

export function loraStepInputs(g: GraphBuilder): LoraStepInputs {
  const slot = g.input('lora_slot', DataType.INT64, ['tokens']);
  const columns = g.input('lora_column_slot', DataType.INT64, ['lora_columns']);
  const mask = g.op('Equal', [g.op('Unsqueeze', [slot, g.constInt64([1])]), g.op('Unsqueeze', [columns, g.constInt64([0])])]);
  const active = g.op('Greater', [g.op('Shape', [columns]), g.constInt64([0])]);
  return { slot, mask, active };
}

/** `base` (the layer's output for input x, [T, out]) plus each row's adapter delta. */
export function addLoraDelta(g: GraphBuilder, step: LoraStepInputs, x: string, base: string, layer: number, module: LoraModule, embd: number): string {
  const [inF, outF] = loraModuleShape(module, embd);
  const a = g.input(loraInputName(layer, module, 'a'), DataType.FLOAT, ['lora_columns', inF]);
  const b = g.input(loraInputName(layer, module, 'b'), DataType.FLOAT, ['lora_columns', outF]);
  return g.ifElse(
    step.active,
    [DataType.FLOAT],
    (sub) => {
      const transposed = (t: string) => {
        const tt = sub.op('Transpose', [t], { perm: [1, 0] });
        return sub.op('Reshape', [tt, sub.op('Shape', [tt])]);
      };
      const h = sub.op('Gemm', [transposed(x), a], { transA: 1, transB: 1 }); // [T, slots x R]
      const own = sub.op('Where', [step.mask, h, sub.constFloat([0], [])]);
      return [sub.op('Gemm', [transposed(own), b, base], { transA: 1, beta: { float: 1 } })];
    },
    () => [base],
  )[0]!;
}

/**
 * An adapter in the graph's slot layout: per layer and module, lora_A zero-padded to `rank` rows
 * ([rank, in]) and `scale * lora_B^T` zero-padded likewise ([rank, out]); null where the adapter
 * leaves the module alone. c_attn's query columns carry the attention's 1/sqrt(head_dim), folded
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
    const packedA = new Float32Array(rank * inF);
    packedA.set(a); // [r, in] rows first, then zero rows
    const packedB = new Float32Array(rank * outF);
    for (let k = 0; k < r; k++) {
      for (let o = 0; o < outF; o++) {
        const q = pair.module === 'attn.c_attn' && o < E ? queryScale : 1;
        packedB[k * outF + o] = Math.fround(Math.fround(adapter.scale * b[o * r + k]) * q);
      }
    }
    layers[pair.layer]![LORA_MODULES.indexOf(pair.module)] = { a: packedA, b: packedB };
    bytes += packedA.byteLength + packedB.byteLength;
  }
  return { rank, layers, bytes };
}
