// The graph's weight-reading ops (the layers' matrices, the token embedding, the LM head) as small
// functions that emit float32 or quantized ONNX ops according to the model's WeightPlan. The rest
// of the serving graph never sees how weights are stored.
import type { GraphBuilder } from './onnx-builder.js';
import type { QuantBits, SourceLayout } from './quantize.js';
import type { WeightPlan } from './weight-format.js';

/** Initializer names of a quantized tensor. */
export interface QuantizedRef {
  data: string;
  scales: string;
}

/**
 * Where the graph's weights come from. The exporter reads each tensor from the checkpoint,
 * quantizes it and writes it to the external data file; a benchmark may instead point at the
 * initializers of an exported model. Names are derived from the checkpoint tensor name, so two
 * sources agree on them.
 */
export interface WeightSource {
  /** A float32 tensor; `transform` may rewrite the data first (constant folding at export time). */
  float(name: string, dims: number[], transform?: (data: Float32Array) => void): string;
  /** Blockwise-quantized [n, kBlocks, blob] with scales [n, kBlocks] (MatMulNBits' B). */
  blockwise(name: string, n: number, k: number, layout: SourceLayout, bits: QuantBits, blockSize: number, transform?: (data: Float32Array) => void): QuantizedRef;
  /** int8 [k, n] with scales [n] (MatMulIntegerToFloat's B); the source is [k, n]. */
  perColumn(name: string, k: number, n: number, transform?: (data: Float32Array) => void): QuantizedRef;
  /** The bytes of initializer `of` again, under another name and shape. */
  view(of: string, name: string, dims: number[]): string;
}

export const quantizedNames = (name: string): QuantizedRef => ({ data: `${name}.quant`, scales: `${name}.scales` });

const MS = 'com.microsoft';
/** MatMulNBits: activations quantized to int8 per block, int32 accumulation (AVX512-VNNI/AVX2 kernels). */
const ACCURACY_INT8 = 4;

export class WeightOps {
  /** uint8 128 per row of the [tokens, E] activations: the zero point of every per-row quantization. */
  private zeroPointRows: string | null = null;
  /** wte is read once, whether one op or two (embedding and tied head) use it. */
  private wteQuantized: QuantizedRef | null = null;
  private wteFloat: string | null = null;

  constructor(
    private readonly g: GraphBuilder,
    readonly plan: WeightPlan,
    private readonly weights: WeightSource,
  ) {}

  /**
   * x [tokens, k] times GPT-2 Conv1D weight `${name}.weight` [k, n], plus `${name}.bias`.
   * Every call must see the same number of rows (the per-row zero points are shared).
   */
  linear(x: string, name: string, k: number, n: number, transform?: (data: Float32Array) => void): string {
    const { g, weights } = this;
    const plan = this.plan.linear;
    const bias = () => weights.float(`${name}.bias`, [n], transform);
    if (plan.op === 'Gemm') return g.op('Gemm', [x, weights.float(`${name}.weight`, [k, n], transform), bias()]);
    if (plan.op === 'MatMulNBits') {
      const w = weights.blockwise(`${name}.weight`, n, k, 'in-out', plan.bits, this.plan.blockSize, transform);
      return this.matMulNBits(x, w, k, n, plan.bits, bias());
    }
    // Symmetric int8 per row, stored as uint8 with zero point 128 (the u8s8 GEMM is the fast one):
    // scale = max|x| / 127 per row, so codes stay within 1..255.
    const w = weights.perColumn(`${name}.weight`, k, n, transform);
    const amax = g.op('ReduceMax', [g.op('Abs', [x]), g.constInt64([1])], { keepdims: 1 }); // [tokens, 1]
    const scale = g.op('Max', [g.op('Mul', [amax, g.constFloat([1 / 127], [])]), g.constFloat([1e-30], [])]); // all-zero rows stay zero
    const codes = g.op('QuantizeLinear', [x, g.op('Reshape', [scale, g.constInt64([-1])]), this.rowZeroPoints(x)], { axis: 0 });
    const zero = g.constUint8([128], []);
    const unscaled = g.op('MatMulIntegerToFloat', [codes, w.data, g.constFloat([1], []), w.scales, zero], {}, undefined, MS);
    return g.op('Add', [g.op('Mul', [unscaled, scale]), bias()]);
  }

  /** Token embedding rows [.., E] for int64 ids of any shape. */
  embedding(ids: string, vocab: number, embd: number): string {
    const plan = this.plan.embedding;
    if (plan.op === 'Gather') return this.g.op('Gather', [this.floatEmbedding(vocab, embd), ids], { axis: 0 });
    const wte = this.quantizedEmbedding(vocab, embd, plan.bits);
    // GatherBlockQuantized reads the rows as [vocab, embd*bits/8]: the same bytes as MatMulNBits' B.
    const rows = this.weights.view(wte.data, 'wte.weight.rows', [vocab, (embd * plan.bits) / 8]);
    return this.g.op('GatherBlockQuantized', [rows, ids, wte.scales], { bits: plan.bits, block_size: this.plan.blockSize, gather_axis: 0, quantize_axis: 1 }, undefined, MS);
  }

  /** final [n, E] -> logits [n, vocab], named `outName`. Call after `embedding` when tied. */
  head(final: string, vocab: number, embd: number, tiedHead: boolean, outName: string): string {
    const plan = this.plan.head;
    if (plan.op === 'Gemm') {
      const w = tiedHead ? this.floatEmbedding(vocab, embd) : this.weights.float('lm_head.weight', [vocab, embd]);
      return this.g.op('Gemm', [final, w], { transB: 1 }, outName);
    }
    const w = tiedHead
      ? this.quantizedEmbedding(vocab, embd, plan.bits)
      : this.weights.blockwise('lm_head.weight', vocab, embd, 'out-in', plan.bits, this.plan.blockSize);
    return this.matMulNBits(final, w, embd, vocab, plan.bits, undefined, outName);
  }

  private floatEmbedding(vocab: number, embd: number): string {
    this.wteFloat ??= this.weights.float('wte.weight', [vocab, embd]);
    return this.wteFloat;
  }

  private quantizedEmbedding(vocab: number, embd: number, bits: QuantBits): QuantizedRef {
    this.wteQuantized ??= this.weights.blockwise('wte.weight', vocab, embd, 'out-in', bits, this.plan.blockSize);
    return this.wteQuantized;
  }

  private matMulNBits(x: string, w: QuantizedRef, k: number, n: number, bits: QuantBits, bias?: string, outName?: string): string {
    const inputs = bias ? [x, w.data, w.scales, '', '', bias] : [x, w.data, w.scales];
    return this.g.op('MatMulNBits', inputs, { K: k, N: n, bits, block_size: this.plan.blockSize, accuracy_level: ACCURACY_INT8 }, outName, MS);
  }

  private rowZeroPoints(x: string): string {
    this.zeroPointRows ??= this.g.op('Expand', [this.g.constUint8([128], []), this.g.op('Shape', [x], { start: 0, end: 1 })]);
    return this.zeroPointRows;
  }
}

