// The --dtype / --block-size / --int8-op flags shared by export, download and model:tiny.
import { DEFAULT_QUANT_BLOCK_SIZE, WEIGHT_DTYPES, type WeightDtype, type WeightFormatOptions } from '../src/model/weight-format.js';

export const WEIGHT_FLAGS = {
  dtype: { type: 'string', default: 'fp32' },
  'block-size': { type: 'string', default: String(DEFAULT_QUANT_BLOCK_SIZE) },
  'int8-op': { type: 'string', default: 'MatMulIntegerToFloat' },
} as const;

export const WEIGHT_USAGE = `  --dtype fp32|fp16|int8|int4   weights (default fp32); fp16 halves them (the WebGPU runner computes
                                in fp16); int8/int4 are quantized per block at export
  --block-size N                quantization block along the input dimension: 16 or 32 (default ${DEFAULT_QUANT_BLOCK_SIZE})
  --int8-op OP                  int8 layers: MatMulIntegerToFloat (default; int8 per-token activations,
                                fastest for batches) or MatMulNBits (int8 per-block activations)
`;

export function parseWeightFlags(values: { dtype?: string; 'block-size'?: string; 'int8-op'?: string }): WeightFormatOptions {
  const dtype = values.dtype ?? 'fp32';
  if (!(WEIGHT_DTYPES as readonly string[]).includes(dtype)) throw new Error(`--dtype must be one of ${WEIGHT_DTYPES.join(', ')}, got ${dtype}`);
  const blockSize = Number(values['block-size'] ?? DEFAULT_QUANT_BLOCK_SIZE);
  if (!Number.isInteger(blockSize) || blockSize <= 0) throw new Error(`--block-size must be a positive integer, got ${values['block-size']}`);
  const int8Op = values['int8-op'] ?? 'MatMulIntegerToFloat';
  if (int8Op !== 'MatMulIntegerToFloat' && int8Op !== 'MatMulNBits') throw new Error(`--int8-op must be MatMulIntegerToFloat or MatMulNBits, got ${int8Op}`);
  return { dtype: dtype as WeightDtype, blockSize, int8Op };
}
