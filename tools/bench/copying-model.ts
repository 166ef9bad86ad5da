// A GPT-2 checkpoint whose greedy output continues a passage it has seen earlier in its context:
// weights constructed by hand (no training) as an induction circuit, so that prompt-lookup
// speculative decoding has something to accept. Random weights never repeat their prompt, and a
// real checkpoint cannot be downloaded by tests. Same seed and shape, same bytes.
//
// The residual stream is cut into coordinate blocks, each holding one feature:
//   tok     u(t): the token's output code, kOut = outHeads * headDim wide (the LM head reads it)
//   match   c(t): the token's matching code, kM = headDim / 8 wide
//   prev1..prev8  c of the token 1..8 positions back (written by the previous-token heads)
//   pos     sinusoids of the position at 16 frequencies, as (cos, sin, -cos, -sin)
// wte rows are u(t) + c(t) (random unit vectors, each mean-free over its block), wpe rows are the
// position code. Every vector written anywhere is mean-free and the blocks are orthogonal, so
// every LayerNorm only scales by a constant that is known here, and the weights undo it.
//
// Previous-token heads (8, filling layer 0's heads, then layer 1's): head d attends from position
// i to i - d: its query is the position code rotated back by d positions, its key the position
// code, so the score is BETA_PREV * sum_m cos(w_m (i - d - j)), sharply largest at j = i - d. Its
// value is c(t_j), which c_proj writes into prev_d.
// Induction heads (the next layer, heads 0..outHeads-1, all with the same query and key): the
// query is [c(t_i), .., c(t_i-7)], the key [prev1, .., prev8] = [c(t_j-1), .., c(t_j-8)], one
// head-dimension slice each, so position j scores highest when the 8 tokens before it are the 8
// tokens ending at i: where the current 8-gram was seen before. Shorter n-grams repeat in
// technical prose (copying passages of the docs, a 3-gram version got 71% of 600 tokens right,
// a 6-gram one 95% of 2400, this one 100% of 2400). The value is u(t_j), the token that
// followed, written into tok with gain COPY_GAIN: its logit then outranks the current token's.
// Splitting u over several heads with the same attention carries a wider code than one head
// could, so fewer vocabulary entries come close.
// Every other weight is zero (a zero c_proj makes its layer the identity), LayerNorms are 1 and 0.
// Heads must be 64 wide or more; unused layers and heads still run their full matrix products, so
// a GPT-2-small-shaped copying model costs what GPT-2-small costs.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expectedShapes } from '../../src/model/gpt2-checkpoint.js';
import type { Manifest } from '../../src/model/manifest.js';
import { writeSafetensors } from '../../src/model/safetensors.js';
import { makeModelFolder, tinyConfig, type MakeTinyOptions, type TinyShape } from '../../src/model/tiny.js';
import { Rng } from '../../src/util/rng.js';

/** The shape the tests use: 64-wide heads, room for one output head, 8 previous-token heads in 2 layers. */
export const COPYING_TEST_SHAPE: TinyShape = { layers: 3, heads: 4, embd: 256, positions: 1024 };

/** How many tokens before a position the induction head compares. */
export const NGRAM = 8;
/** Frequencies of the position code, geometric from FREQ_MAX down to 2*pi/4096 rad/position. */
const FREQS = 16;
const FREQ_MAX = 2.5;
/**
 * Score scale of the previous-token heads: with these frequencies every wrong position scores at
 * least 3.4 units below the right one (34 nats), so even 1023 of them hold < 1e-12 of the weight.
 */
const BETA_PREV = 10;
/** Score per matching token of the induction head: a full 8-gram beats 7 of 8 by 12 nats. */
const BETA_MATCH = 12;
/** Gain of the copied token's output code over the current token's. */
const COPY_GAIN = 8;

export interface CopyingLayout {
  headDim: number;
  /** Width of the matching code c(t). */
  kM: number;
  /** Layers 0..inductionLayer-1 hold the previous-token heads, NGRAM of them in order. */
  inductionLayer: number;
  /** Heads of the induction layer that carry the copied token's output code (kOut = outHeads * headDim). */
  outHeads: number;
  kOut: number;
  /** First residual coordinate of each block. */
  tok: number;
  match: number;
  /** prev[d - 1]: c of the token d positions back. */
  prev: number[];
  pos: number;
  /** Coordinates used (the rest stay zero). */
  used: number;
}

export function copyingLayout(shape: TinyShape): CopyingLayout {
  const { layers, heads, embd } = shape;
  const headDim = embd / heads;
  const why = (reason: string) => new Error(`a copying model needs ${reason}; got ${layers} layers, ${heads} heads, ${embd} wide`);
  if (!Number.isInteger(headDim)) throw why('a width divisible by the head count');
  if (headDim < 2 * FREQS || headDim < NGRAM * 8) throw why(`heads ${Math.max(2 * FREQS, NGRAM * 8)} wide or more`);
  const inductionLayer = Math.ceil(NGRAM / heads);
  if (layers <= inductionLayer) throw why(`${inductionLayer + 1} layers or more at ${heads} heads`);
  const kM = Math.floor(headDim / NGRAM);
  const fixed = (1 + NGRAM) * kM + 4 * FREQS;
  const outHeads = Math.min(heads, Math.floor((embd - fixed) / headDim));
  if (outHeads < 1) throw why(`${fixed + headDim} residual coordinates or more`);
  const kOut = outHeads * headDim;
  const tok = 0;
  const match = kOut;
  const prev = Array.from({ length: NGRAM }, (_, d) => match + (d + 1) * kM);
  const pos = match + (NGRAM + 1) * kM;
  return { headDim, kM, inductionLayer, outHeads, kOut, tok, match, prev, pos, used: pos + 4 * FREQS };
}

/** Writes `<out>/checkpoint/` (config.json, model.safetensors, tokenizer.json) and exports it to `<out>`. */
export async function makeCopyingModel(opts: MakeTinyOptions): Promise<Manifest> {
  const shape = { ...COPYING_TEST_SHAPE, ...opts.shape };
  return makeModelFolder(opts, (dir, vocabSize) => {
    writeFileSync(join(dir, 'config.json'), JSON.stringify(tinyConfig(shape, vocabSize), null, 2) + '\n');
    writeSafetensors(join(dir, 'model.safetensors'), copyingTensors(shape, opts.seed ?? 0, vocabSize));
  });
}

export function copyingTensors(shape: TinyShape, seed: number, vocabSize?: number): Map<string, { shape: number[]; data: Float32Array }> {
  const config = tinyConfig(shape, vocabSize);
  const E = shape.embd;
  const lay = copyingLayout(shape);
  const { headDim: D, kM } = lay;
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const [name, dims] of expectedShapes(shape.layers, E, config.vocab_size, shape.positions, true)) {
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
    if (/ln_\w+\.weight$/.test(name)) data.fill(1);
    tensors.set(name, { shape: dims, data });
  }
  const get = (name: string) => tensors.get(name)!.data;

  const rng = new Rng(seed);
  const wte = get('wte.weight');
  for (let t = 0; t < config.vocab_size; t++) {
    writeUnitCode(wte, t * E + lay.tok, lay.kOut, rng);
    writeUnitCode(wte, t * E + lay.match, kM, rng);
  }
  const freqs = Array.from({ length: FREQS }, (_, m) => FREQ_MAX * Math.pow((2 * Math.PI) / 4096 / FREQ_MAX, m / (FREQS - 1)));
  // Amplitude 1/sqrt(2M): the position code has norm 1, like the token codes.
  const amp = 1 / Math.sqrt(2 * FREQS);
  const wpe = get('wpe.weight');
  const cosAt = (m: number) => lay.pos + m;
  const sinAt = (m: number) => lay.pos + FREQS + m;
  for (let p = 0; p < shape.positions; p++) {
    for (let m = 0; m < FREQS; m++) {
      const c = amp * Math.cos(freqs[m]! * p);
      const s = amp * Math.sin(freqs[m]! * p);
      wpe[p * E + cosAt(m)] = c;
      wpe[p * E + sinAt(m)] = s;
      wpe[p * E + lay.pos + 2 * FREQS + m] = -c;
      wpe[p * E + lay.pos + 3 * FREQS + m] = -s;
    }
  }

  // LayerNorm's factor on a layer's input: tok, match and pos (norm 1 each), plus the prev
  // blocks that the layers before it wrote (norm 1 each, as the attention is sharp).
  const eps = config.layer_norm_epsilon;
  const lnScale = (layer: number) => 1 / Math.sqrt((3 + Math.min(NGRAM, layer * shape.heads)) / E + eps);
  // GPT-2 divides scores by sqrt(headDim); the query weights multiply it back.
  const rootD = Math.sqrt(D);

  // Conv1D weights are [in, out]: element (row r, column c) of an [E, n] matrix is at r * n + c.
  for (let d = 1; d <= NGRAM; d++) {
    const layer = Math.floor((d - 1) / shape.heads);
    const head = ((d - 1) % shape.heads) * D;
    const attn = get(`h.${layer}.attn.c_attn.weight`);
    const proj = get(`h.${layer}.attn.c_proj.weight`);
    const s = lnScale(layer);
    const f = (BETA_PREV * rootD) / (s * s * amp * amp);
    const q = (row: number, col: number, v: number) => (attn[row * 3 * E + head + col] = v);
    const k = (row: number, col: number, v: number) => (attn[row * 3 * E + E + head + col] = v);
    const v = (row: number, col: number, x: number) => (attn[row * 3 * E + 2 * E + head + col] = x);
    for (let m = 0; m < FREQS; m++) {
      // Query = code(i - d): (cos w(i-d), sin w(i-d)) from (cos wi, sin wi) by a rotation.
      const cd = Math.cos(freqs[m]! * d);
      const sd = Math.sin(freqs[m]! * d);
      q(cosAt(m), 2 * m, f * cd);
      q(sinAt(m), 2 * m, f * sd);
      q(sinAt(m), 2 * m + 1, f * cd);
      q(cosAt(m), 2 * m + 1, -f * sd);
      k(cosAt(m), 2 * m, 1);
      k(sinAt(m), 2 * m + 1, 1);
    }
    for (let r = 0; r < kM; r++) {
      v(lay.match + r, r, 1);
      proj[(head + r) * E + lay.prev[d - 1]! + r] = 1 / s;
    }
  }

  const attn1 = get(`h.${lay.inductionLayer}.attn.c_attn.weight`);
  const proj1 = get(`h.${lay.inductionLayer}.attn.c_proj.weight`);
  const s1 = lnScale(lay.inductionLayer);
  const f1 = (BETA_MATCH * rootD) / (s1 * s1);
  // Query blocks [match, prev1, prev2] against key blocks [prev1, prev2, prev3].
  const queryBlocks = [lay.match, ...lay.prev.slice(0, NGRAM - 1)];
  for (let h = 0; h < lay.outHeads; h++) {
    const head = h * D;
    for (let n = 0; n < NGRAM; n++) {
      for (let r = 0; r < kM; r++) {
        attn1[(queryBlocks[n]! + r) * 3 * E + head + n * kM + r] = f1;
        attn1[(lay.prev[n]! + r) * 3 * E + E + head + n * kM + r] = 1;
      }
    }
    for (let r = 0; r < D; r++) {
      attn1[(lay.tok + head + r) * 3 * E + 2 * E + head + r] = 1;
      proj1[(head + r) * E + lay.tok + head + r] = COPY_GAIN / s1;
    }
  }
  return tensors;
}

/** A random unit vector with zero mean over data[at, at + width) (LayerNorm then leaves it alone). */
function writeUnitCode(data: Float32Array, at: number, width: number, rng: Rng): void {
  const v = Array.from({ length: width }, () => rng.gaussian());
  const mean = v.reduce((a, b) => a + b, 0) / width;
  const norm = Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0));
  for (let i = 0; i < width; i++) data[at + i] = (v[i]! - mean) / norm;
}
