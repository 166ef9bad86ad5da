// manifest.json: what a model folder promises to the server. The server trusts nothing else
// about the graph, and refuses a folder whose contract it does not speak.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { CONTRACT_VERSION } from './serving-graph.js';
import { weightPlan, type WeightPlan } from './weight-format.js';

export const MANIFEST_FILE = 'manifest.json';
export const GRAPH_FILE = 'model.onnx';
export const GRAPH_DATA_FILE = 'model.onnx.data';
export const EXPORTER_VERSION = '0.1.0';

/** How quantized weights are stored and computed (absent for float32 folders). */
const QuantizationSchema = z.object({
  bits: z.union([z.literal(4), z.literal(8)]),
  /** Block along the input dimension of MatMulNBits / GatherBlockQuantized weights. */
  blockSize: z.number().int().positive(),
  /** The op of the layers' weight matrices. */
  linearOp: z.enum(['MatMulNBits', 'MatMulIntegerToFloat']),
  /** How that op quantizes activations (both int8 with int32 accumulation). */
  activations: z.enum(['int8 per block', 'int8 per token']),
  embeddingOp: z.literal('GatherBlockQuantized'),
  headOp: z.literal('MatMulNBits'),
});

export const ManifestSchema = z.object({
  format: z.literal('gpt2-serve-model'),
  contractVersion: z.number().int(),
  graph: z.object({ file: z.string(), externalData: z.string(), opset: z.number().int() }),
  /** Weights; F16/BF16 checkpoints are widened to float32 (or rounded to float16, or quantized). */
  dtype: z.enum(['float32', 'float16', 'int8', 'int4']),
  quantization: QuantizationSchema.optional(),
  kvLayout: z.string(),
  numLayers: z.number().int().positive(),
  numHeads: z.number().int().positive(),
  hiddenSize: z.number().int().positive(),
  headDim: z.number().int().positive(),
  vocabSize: z.number().int().positive(),
  contextLength: z.number().int().positive(),
  eosTokenId: z.number().int().nonnegative(),
  tiedHead: z.boolean(),
  exporter: z.object({ name: z.string(), version: z.string() }),
  source: z.object({
    checkpointSha256: z.string().regex(/^[0-9a-f]{64}$/),
    checkpointDtype: z.string(),
    tokenizer: z.string(),
    /** The LoRA adapter merged into the weights at export (--merge-lora), if any. */
    mergedLora: z
      .object({
        path: z.string(),
        adapterSha256: z.string().regex(/^[0-9a-f]{64}$/),
        rank: z.number().int().positive(),
        alpha: z.number(),
        rslora: z.boolean(),
        /** lora_alpha / r (or / sqrt(r) with rslora). */
        scale: z.number(),
        /** Adapted layer matrices. */
        modules: z.number().int().positive(),
      })
      .optional(),
  }),
}).refine((m) => (m.dtype === 'float32' || m.dtype === 'float16') === (m.quantization === undefined), {
  message: 'quantization is required for int8/int4 weights and absent for float32/float16',
  path: ['quantization'],
});
export type Manifest = z.infer<typeof ManifestSchema>;

/** The manifest's record of a weight plan. */
export function manifestWeights(plan: WeightPlan): Pick<Manifest, 'dtype' | 'quantization'> {
  if (plan.dtype === 'fp32') return { dtype: 'float32' };
  if (plan.dtype === 'fp16') return { dtype: 'float16' };
  const { linear, embedding, head } = plan;
  if (linear.op === 'Gemm' || embedding.op === 'Gather' || head.op === 'Gemm') throw new Error(`${plan.dtype}: every weight op must be quantized`);
  return {
    dtype: plan.dtype,
    quantization: {
      bits: linear.bits,
      blockSize: plan.blockSize,
      linearOp: linear.op,
      activations: linear.op === 'MatMulNBits' ? 'int8 per block' : 'int8 per token',
      embeddingOp: embedding.op,
      headOp: head.op,
    },
  };
}

/** The weight plan a folder was exported with (the inverse of manifestWeights). */
export function manifestPlan(m: Pick<Manifest, 'dtype' | 'quantization'>): WeightPlan {
  if (!m.quantization) return weightPlan({ dtype: m.dtype === 'float16' ? 'fp16' : 'fp32' });
  return weightPlan({ dtype: m.dtype === 'int8' ? 'int8' : 'int4', blockSize: m.quantization.blockSize, int8Op: m.quantization.linearOp });
}

/** One line for logs and /v1/models: `int8 (MatMulIntegerToFloat, block 32)`. */
export function describeWeights(m: Pick<Manifest, 'dtype' | 'quantization'>): string {
  return m.quantization ? `${m.dtype} (${m.quantization.linearOp}, block ${m.quantization.blockSize})` : m.dtype;
}

export const KV_LAYOUT = 'per layer: past_key_{l}/past_value_{l} float32 [heads, pool_blocks, block_size, head_dim]';

/**
 * A model folder that cannot be served. The message is one line: the folder, what is missing or
 * wrong, and the command that makes a good folder.
 */
export class ModelFolderError extends Error {
  constructor(
    readonly dir: string,
    readonly problem: string,
  ) {
    super(
      `${dir} cannot be served: ${problem}. Make a model folder there with ` +
        `\`npm run download -- openai-community/gpt2 --out ${dir}\` or \`npm run export -- --checkpoint CHECKPOINT_DIR --out ${dir}\``,
    );
    this.name = 'ModelFolderError';
  }
}

/** Reads and checks a model folder's manifest and files; throws ModelFolderError. */
export function readManifest(dir: string): Manifest {
  const file = join(dir, MANIFEST_FILE);
  if (!existsSync(dir)) throw new ModelFolderError(dir, 'the folder does not exist');
  if (!existsSync(file)) throw new ModelFolderError(dir, `it is not an exported model folder (no ${MANIFEST_FILE})`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new ModelFolderError(dir, `${MANIFEST_FILE} is not valid JSON (${(err as Error).message})`);
  }
  const version = (raw as { contractVersion?: unknown })?.contractVersion;
  if (typeof version === 'number' && version !== CONTRACT_VERSION) {
    throw new ModelFolderError(
      dir,
      `its graph contract version ${version} is not supported by this server (it speaks version ${CONTRACT_VERSION}); re-export the checkpoint with this version's exporter`,
    );
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    const why = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ModelFolderError(dir, `${MANIFEST_FILE} is invalid (${why})`);
  }
  const missing = [parsed.data.graph.file, parsed.data.graph.externalData, 'tokenizer.json'].filter((f) => !existsSync(join(dir, f)));
  if (missing.length > 0) throw new ModelFolderError(dir, `${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} missing`);
  return parsed.data;
}
