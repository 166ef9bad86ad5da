// Tiny models for tests: made once per process under the OS temp folder (seeded, so every run
// and every test file sees the same weights).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { makeCopyingModel } from '../../tools/bench/copying-model.js';
import { makeTinyModel, type MakeTinyOptions, type TinyShape } from '../../src/model/tiny.js';
import type { WeightDtype } from '../../src/model/weight-format.js';
import type { EngineOptions } from '../../src/engine/types.js';

const made = new Map<string, Promise<string>>();
let root: string | null = null;

export function tempDir(prefix = 'gpt2-serve-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** The exported tiny model folder for this seed/shape (its checkpoint is in `<dir>/checkpoint`). */
export function tinyModel(seed = 1, shape: Partial<TinyShape> = {}): Promise<string> {
  const key = JSON.stringify([seed, shape]);
  let dir = made.get(key);
  if (!dir) {
    if (!root) {
      root = tempDir();
      const r = root;
      process.on('exit', () => rmSync(r, { recursive: true, force: true }));
    }
    const out = join(root, `tiny-${made.size}`);
    dir = makeTinyModel({ out, seed, shape }).then(() => out);
    made.set(key, dir);
  }
  return dir;
}

/** DialoGPT's own chat template: every turn followed by <|endoftext|>, no generation prompt. */
export const DIALOGPT_TEMPLATE = '{% for message in messages %}{{ message.content }}{{ eos_token }}{% endfor %}';

const variants = new Map<string, Promise<string>>();

/** The tiny model (seed 1, so tinyModel()'s weights where the vocabularies agree) made with `options`, once per process. */
function tinyVariant(name: string, options: Omit<MakeTinyOptions, 'out' | 'seed'>): Promise<string> {
  let dir = variants.get(name);
  if (!dir) {
    dir = tinyModel().then(async () => {
      const out = join(root!, `tiny-${name}`);
      await makeTinyModel({ out, seed: 1, ...options });
      return out;
    });
    variants.set(name, dir);
  }
  return dir;
}

/**
 * A DialoGPT-shaped model folder: the tiny model (seed 1, so the same weights as tinyModel())
 * whose checkpoint carries DialoGPT's tokenizer_config.json, copied into the folder by the export.
 */
export function dialoGptModel(): Promise<string> {
  return tinyVariant('dialogpt', {
    tokenizerConfig: { model_max_length: 1024, bos_token: '<|endoftext|>', eos_token: '<|endoftext|>', chat_template: DIALOGPT_TEMPLATE },
  });
}

/** A ChatML fine-tune's end-of-turn token: an added special token. */
export const IM_END = '<|im_end|>';
export const IM_END_ID = 50257;

/** The tiny model with IM_END added as special token 50257, its vocabulary grown to 50,258 as a fine-tune's is. */
export function imEndModel(): Promise<string> {
  return tinyVariant('im-end', { specialTokens: [IM_END] });
}

export function engineOptions(modelDir: string, overrides: Partial<EngineOptions> = {}): EngineOptions {
  return {
    modelDir,
    executionProvider: 'cpu',
    intraOpThreads: 1,
    maxNumSeqs: 32,
    maxNumBatchedTokens: 512,
    // Token budget only: start-up calibration would add runs (and shift scripted-runner run indexes).
    maxStepMs: 0,
    kvCacheTokens: 8192,
    blockSize: 16,
    prefixCaching: true,
    maxConsecutiveStepFailures: 3,
    stepTimeoutMs: 60_000,
    ...overrides,
  };
}

const copying = new Map<string, Promise<string>>();

/**
 * A model folder whose greedy output continues a passage seen earlier in its prompt
 * (tools/bench/copying-model.ts; the test shape, seed 0), exported in `dtype`.
 */
export function copyingModel(dtype: WeightDtype = 'fp32'): Promise<string> {
  let dir = copying.get(dtype);
  if (!dir) {
    const out = join(tempDir(), `copying-${dtype}`);
    process.on('exit', () => rmSync(dirname(out), { recursive: true, force: true }));
    dir = makeCopyingModel({ out, seed: 0, weights: { dtype } }).then(() => out);
    copying.set(dtype, dir);
  }
  return dir;
}
