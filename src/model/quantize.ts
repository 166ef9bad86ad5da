// Weight quantization done by the exporter, one tensor at a time, in the byte layouts that ONNX
// Runtime's quantized kernels read. Pure functions over Float32Arrays: the exporter streams
// tensors through them (the tests' dequantizers, which build reference models from these layouts,
// are in test/helpers/dequantized-checkpoint.ts).
//
// Two encodings:
//   blockwise   `com.microsoft.MatMulNBits` B / `GatherBlockQuantized` data. A matrix of N rows
//               (output features) by K (input features) becomes uint8 [N, ceil(K/bs), bs*bits/8]:
//               element k of row n at bit offset k*bits of the row, least significant bits first,
//               K padded with zeros to a block; scales float32 [N, ceil(K/bs)]; no zero-point
//               tensor, so the kernels use their default 2^(bits-1). Symmetric, as ONNX Runtime's
//               own MlasQ4GemmPackB and llama.cpp's Q4_0 do it: the value of largest magnitude m in
//               a block maps exactly to the code 0 (scale = m / -2^(bits-1)), so every code is used.
//   per-column  `com.microsoft.MatMulIntegerToFloat` B: int8 [K, N] with one float32 scale per
//               output column (scale = max|w| / 127, codes -127..127).
// Dequantized weight = (code - zero point) * scale in both.

export type QuantBits = 4 | 8;

export interface BlockwiseTensor {
  /** [n, kBlocks, blobBytes] */
  data: Uint8Array;
  /** [n, kBlocks] */
  scales: Float32Array;
}

export interface PerColumnTensor {
  /** [k, n] */
  data: Int8Array;
  /** [n] */
  scales: Float32Array;
}

/**
 * Where element (n, k) sits in the source array: `out-in` for [N, K] row-major (a tied
 * embedding used as the LM head), `in-out` for [K, N] (GPT-2's Conv1D weights).
 */
export type SourceLayout = 'out-in' | 'in-out';

export function blockCount(k: number, blockSize: number): number {
  return Math.ceil(k / blockSize);
}

export function quantizeBlockwise(w: Float32Array, n: number, k: number, layout: SourceLayout, bits: QuantBits, blockSize: number): BlockwiseTensor {
  if (w.length !== n * k) throw new Error(`quantizeBlockwise: ${w.length} values for a ${n}x${k} matrix`);
  const kb = blockCount(k, blockSize);
  const blob = (blockSize * bits) / 8;
  const data = new Uint8Array(n * kb * blob);
  const scales = new Float32Array(n * kb);
  const zero = 1 << (bits - 1);
  const maxCode = (1 << bits) - 1;
  const at = layout === 'out-in' ? (row: number, col: number) => row * k + col : (row: number, col: number) => col * n + row;
  for (let row = 0; row < n; row++) {
    for (let b = 0; b < kb; b++) {
      const start = b * blockSize;
      const end = Math.min(k, start + blockSize);
      let m = 0;
      for (let col = start; col < end; col++) {
        const v = w[at(row, col)];
        if (Math.abs(v) > Math.abs(m)) m = v;
      }
      const scale = Math.fround(m / -zero);
      scales[row * kb + b] = scale;
      const inv = scale === 0 ? 0 : 1 / scale;
      const base = (row * kb + b) * blob;
      for (let col = start; col < end; col++) {
        const code = Math.min(maxCode, Math.max(0, Math.round(w[at(row, col)] * inv) + zero));
        const bit = (col - start) * bits;
        data[base + (bit >> 3)] |= code << (bit & 7);
      }
      // Padding past K keeps code 0, which the kernels never read as a weight.
    }
  }
  return { data, scales };
}

/** `w` is [k, n] (GPT-2's Conv1D layout, which is already MatMulIntegerToFloat's B layout). */
export function quantizePerColumn(w: Float32Array, k: number, n: number): PerColumnTensor {
  if (w.length !== n * k) throw new Error(`quantizePerColumn: ${w.length} values for a ${k}x${n} matrix`);
  const amax = new Float32Array(n);
  for (let row = 0; row < k; row++) {
    for (let col = 0; col < n; col++) amax[col] = Math.max(amax[col], Math.abs(w[row * n + col]));
  }
  const scales = amax.map((a) => a / 127);
  const inv = scales.map((s) => (s === 0 ? 0 : 1 / s));
  const data = new Int8Array(k * n);
  for (let row = 0; row < k; row++) {
    for (let col = 0; col < n; col++) data[row * n + col] = Math.max(-127, Math.min(127, Math.round(w[row * n + col] * inv[col])));
  }
  return { data, scales };
}
