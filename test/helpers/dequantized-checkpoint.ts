// The "dequantize-then-fp32" twin of a quantized export: a float32 checkpoint whose weights are
// exactly what the quantized graph's kernels multiply by. It is built by running the real graph
// builder with a weight source that quantizes like the exporter and then dequantizes, so it
// follows the plan (which tensors, which layout, the folded attention scale) without restating it.
// The dequantizers (the inverse of src/model/quantize.ts's layouts) are here too: the server
// never dequantizes, the kernels read the codes.
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Gpt2Weights, readGpt2Config } from '../../src/model/gpt2-checkpoint.js';
import { GraphBuilder } from '../../src/model/onnx-builder.js';
import { blockCount, quantizeBlockwise, quantizePerColumn, type BlockwiseTensor, type PerColumnTensor, type QuantBits } from '../../src/model/quantize.js';
import { SafetensorsFile, writeSafetensors } from '../../src/model/safetensors.js';
import { buildServingGraph } from '../../src/model/serving-graph.js';
import type { WeightPlan } from '../../src/model/weight-format.js';
import { quantizedNames, type WeightSource } from '../../src/model/weight-ops.js';

type Transform = ((data: Float32Array) => void) | undefined;

/** One quantized matrix of the graph: what its quantization costs. */
export interface QuantizedMatrix {
  name: string;
  /** ||W - dequantized W||_F / ||W||_F, measured. */
  weightError: number;
  bits: number;
  /** Weights sharing one scale: the block, or the whole column (per-column int8). */
  weightBlock: number;
  /** Values per activation quantization block: the kernel's block, or the whole row (per token). */
  activationBlock: number;
}

/**
 * Writes config.json, tokenizer.json and the dequantized model.safetensors to `out`; returns the
 * graph's quantized matrices in the order the graph uses them.
 */
export function writeDequantizedCheckpoint(checkpoint: string, out: string, plan: WeightPlan): QuantizedMatrix[] {
  const config = readGpt2Config(checkpoint);
  const file = new SafetensorsFile(join(checkpoint, 'model.safetensors'));
  const weights = new Gpt2Weights(file, config);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  const shapeOf = (name: string) => file.tensors.get(name === 'lm_head.weight' || !file.tensors.has(`transformer.${name}`) ? name : `transformer.${name}`)!.shape;
  /**
   * Export-time transforms scale entries by constant factors (the folded attention scale); the
   * checkpoint must hold the unscaled weights, so the factors are found by transforming ones.
   */
  const unscale = (data: Float32Array, transform: Transform) => {
    if (!transform) return data;
    const factors = new Float32Array(data.length).fill(1);
    transform(factors);
    return data.map((v, i) => v / factors[i]);
  };
  const load = (name: string, transform: Transform) => {
    const data = weights.read(name);
    transform?.(data);
    return data;
  };
  const matrices: QuantizedMatrix[] = [];
  const record = (name: string, original: Float32Array, dequantized: Float32Array, bits: number, weightBlock: number, activationBlock: number) => {
    if (matrices.some((m) => m.name === name)) return; // the tied embedding, used twice
    let diff = 0;
    let norm = 0;
    for (let i = 0; i < original.length; i++) {
      diff += (original[i] - dequantized[i]) ** 2;
      norm += original[i] ** 2;
    }
    matrices.push({ name, weightError: Math.sqrt(diff / norm), bits, weightBlock, activationBlock });
  };
  const source: WeightSource = {
    float(name) {
      if (!tensors.has(name)) tensors.set(name, { shape: shapeOf(name), data: weights.read(name) });
      return name;
    },
    blockwise(name, n, k, layout, bits, blockSize, transform) {
      const original = load(name, transform);
      const dq = dequantizeBlockwise(quantizeBlockwise(original, n, k, layout, bits, blockSize), n, k, bits, blockSize); // [n, k]
      const data = layout === 'out-in' ? dq : transpose(dq, n, k);
      record(name, original, data, bits, blockSize, blockSize);
      tensors.set(name, { shape: shapeOf(name), data: unscale(data, transform) });
      return quantizedNames(name);
    },
    perColumn(name, k, n, transform) {
      const original = load(name, transform);
      const dq = dequantizePerColumn(quantizePerColumn(original, k, n), k, n);
      record(name, original, dq, 8, k, k);
      tensors.set(name, { shape: shapeOf(name), data: unscale(dq, transform) });
      return quantizedNames(name);
    },
    view: (_of, name) => name,
  };
  try {
    buildServingGraph(new GraphBuilder(), config, source, weights.tiedHead, plan);
  } finally {
    file.close();
  }
  mkdirSync(out, { recursive: true });
  writeSafetensors(join(out, 'model.safetensors'), tensors);
  for (const f of ['config.json', 'tokenizer.json']) copyFileSync(join(checkpoint, f), join(out, f));
  return matrices;
}

/** [rows, cols] -> [cols, rows] */
function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

/** [n, k] float32 weights exactly as the kernels see them. */
export function dequantizeBlockwise(t: BlockwiseTensor, n: number, k: number, bits: QuantBits, blockSize: number): Float32Array {
  const kb = blockCount(k, blockSize);
  const blob = (blockSize * bits) / 8;
  const zero = 1 << (bits - 1);
  const mask = (1 << bits) - 1;
  const out = new Float32Array(n * k);
  for (let row = 0; row < n; row++) {
    for (let col = 0; col < k; col++) {
      const b = Math.floor(col / blockSize);
      const bit = (col - b * blockSize) * bits;
      const code = (t.data[(row * kb + b) * blob + (bit >> 3)] >> (bit & 7)) & mask;
      out[row * k + col] = (code - zero) * t.scales[row * kb + b];
    }
  }
  return out;
}

/** [k, n] float32 weights exactly as the kernel sees them. */
export function dequantizePerColumn(t: PerColumnTensor, k: number, n: number): Float32Array {
  const out = new Float32Array(k * n);
  for (let row = 0; row < k; row++) {
    for (let col = 0; col < n; col++) out[row * n + col] = t.data[row * n + col] * t.scales[col];
  }
  return out;
}
