// Which weight dtype a model folder is exported in, and what that means for the graph: the op
// that each kind of weight goes through. The exporter, the graph and the manifest all read the
// plan from here, so "int8" means one thing everywhere.
import type { QuantBits } from './quantize.js';

export const WEIGHT_DTYPES = ['fp32', 'fp16', 'int8', 'int4'] as const;
export type WeightDtype = (typeof WEIGHT_DTYPES)[number];

export const DEFAULT_QUANT_BLOCK_SIZE = 32;
/**
 * Block sizes whose kernels give a row the same result whatever the other rows of the batch.
 * At larger blocks MatMulNBits (accuracy_level 4) computes a single row through a different
 * accumulation order than several rows (results differ in the last bits), so a request's output
 * would depend on its batch neighbours (what was checked, and on which kernels:
 * docs/quantization.md).
 */
export const BATCH_INVARIANT_BLOCK_SIZES: readonly number[] = [16, 32];

/** The op a layer's four weight matrices (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) go through. */
export type LinearPlan =
  | { op: 'Gemm' }
  /** Blockwise weights; activations quantized to int8 per block inside the kernel (accuracy_level 4). */
  | { op: 'MatMulNBits'; bits: QuantBits }
  /**
   * int8 weights per output column; activations quantized to int8 per row (token) by the graph,
   * then the general u8s8 integer GEMM. Integer accumulation is exact, so a row's result cannot
   * depend on the other rows.
   */
  | { op: 'MatMulIntegerToFloat'; bits: 8 };

export type EmbeddingPlan = { op: 'Gather' } | { op: 'GatherBlockQuantized'; bits: QuantBits };
export type HeadPlan = { op: 'Gemm' } | { op: 'MatMulNBits'; bits: QuantBits };

export interface WeightPlan {
  dtype: WeightDtype;
  /** Quantization block along the input dimension (MatMulNBits, GatherBlockQuantized). */
  blockSize: number;
  linear: LinearPlan;
  /** wte lookup; wpe (3 MB) always stays float32. */
  embedding: EmbeddingPlan;
  /** The vocabulary projection; when tied it reads the embedding's quantized bytes. */
  head: HeadPlan;
}

export interface WeightFormatOptions {
  dtype: WeightDtype;
  blockSize?: number;
  /** int8 only: the op of the layers' weights (see LinearPlan). */
  int8Op?: 'MatMulIntegerToFloat' | 'MatMulNBits';
}

export function weightPlan(opts: WeightFormatOptions): WeightPlan {
  const blockSize = opts.blockSize ?? DEFAULT_QUANT_BLOCK_SIZE;
  // fp16 stores every float tensor as float16: the GPU graphs compute in it, the CPU graph widens
  // the weights to float32 once at load (ONNX Runtime folds the Cast into a float32 initializer).
  if (opts.dtype === 'fp32' || opts.dtype === 'fp16') return { dtype: opts.dtype, blockSize, linear: { op: 'Gemm' }, embedding: { op: 'Gather' }, head: { op: 'Gemm' } };
  if (!BATCH_INVARIANT_BLOCK_SIZES.includes(blockSize)) {
    throw new Error(
      `--block-size ${blockSize}: use ${BATCH_INVARIANT_BLOCK_SIZES.join(' or ')} (ONNX Runtime's quantized kernels compute a row differently alone and in a batch at larger blocks, which would make outputs depend on the batch)`,
    );
  }
  const bits: QuantBits = opts.dtype === 'int8' ? 8 : 4;
  const linear: LinearPlan =
    opts.dtype === 'int8' && (opts.int8Op ?? 'MatMulIntegerToFloat') === 'MatMulIntegerToFloat'
      ? { op: 'MatMulIntegerToFloat', bits: 8 }
      : { op: 'MatMulNBits', bits };
  return { dtype: opts.dtype, blockSize, linear, embedding: { op: 'GatherBlockQuantized', bits }, head: { op: 'MatMulNBits', bits } };
}

/** Checks the model's shapes against the plan before any weight is read. */
export function checkPlanFits(plan: WeightPlan, hiddenSize: number): void {
  // GatherBlockQuantized reads a row as hiddenSize*bits/8 bytes with no padding between blocks.
  if (plan.embedding.op === 'GatherBlockQuantized' && hiddenSize % plan.blockSize !== 0) {
    throw new Error(`n_embd ${hiddenSize} is not a multiple of the quantization block size ${plan.blockSize}; pick --block-size 16`);
  }
}
