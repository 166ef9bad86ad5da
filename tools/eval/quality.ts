// How far a model's next-token distributions are from a reference model's (a quantized export
// against the float32 one), teacher-forced over a fixed token stream: both models read the same
// tokens and every position's distributions are compared. The figures are the ones llama.cpp's
// `llama-perplexity --kl-divergence` reports: mean and p99 KL divergence, and how often the top
// token agrees, overall and where the reference is not near a tie.
import { createOnnxRunner, type OnnxRunner } from '../../src/engine/runner.js';
import { readManifest } from '../../src/model/manifest.js';
import { concatFloat32 } from '../../src/util/concat-float32.js';
import { Rng } from '../../src/util/rng.js';

export interface QualityOptions {
  model: string;
  reference: string;
  /** Positions compared (default 2048). */
  positions?: number;
  /** Tokens per sequence; the stream is cut into sequences of this length (default 512). */
  window?: number;
  /** Top-1 agreement is also reported where the reference's top-1/top-2 logit margin exceeds this. */
  margin?: number;
  /** Seed of the token stream. */
  seed?: number;
  intraOpThreads?: number;
}

export interface QualityReport {
  positions: number;
  meanKld: number;
  p99Kld: number;
  maxKld: number;
  /** Share of positions whose argmax tokens agree. */
  top1Agreement: number;
  margin: number;
  /** Positions where the reference's top-1 logit beats its top-2 by more than `margin`. */
  confidentPositions: number;
  confidentTop1Agreement: number;
}

/** KV block size and prefill chunk length of the teacher-forced runs. */
const BLOCK_SIZE = 16;
const CHUNK = 128;

/** Per-position statistics, accumulated across chunks. */
export class QualityAccumulator {
  private readonly klds: number[] = [];
  private agree = 0;
  private confident = 0;
  private confidentAgree = 0;

  constructor(readonly margin: number) {}

  /** One position: the reference's and the model's logits over the same vocabulary. */
  add(reference: Float32Array, model: Float32Array): void {
    this.klds.push(klDivergence(reference, model));
    const [top1, top2] = topTwo(reference);
    const same = top1 === argmaxOf(model);
    if (same) this.agree++;
    if (reference[top1] - reference[top2] > this.margin) {
      this.confident++;
      if (same) this.confidentAgree++;
    }
  }

  report(): QualityReport {
    const n = this.klds.length;
    const sorted = Float64Array.from(this.klds).sort();
    return {
      positions: n,
      meanKld: this.klds.reduce((a, b) => a + b, 0) / n,
      p99Kld: sorted[Math.min(n - 1, Math.ceil(0.99 * n) - 1)],
      maxKld: sorted[n - 1],
      top1Agreement: this.agree / n,
      margin: this.margin,
      confidentPositions: this.confident,
      confidentTop1Agreement: this.confident ? this.confidentAgree / this.confident : 1,
    };
  }
}

/** KL(P || Q) in nats for the softmax distributions of two logit vectors, in float64. */
export function klDivergence(p: ArrayLike<number>, q: ArrayLike<number>): number {
  const lp = logSoftmax(p);
  const lq = logSoftmax(q);
  let kld = 0;
  for (let i = 0; i < lp.length; i++) kld += Math.exp(lp[i]) * (lp[i] - lq[i]);
  return Math.max(0, kld); // rounding can leave a tiny negative for equal distributions
}

function logSoftmax(x: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) max = Math.max(max, x[i]);
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += Math.exp(x[i] - max);
  const logZ = max + Math.log(sum);
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] - logZ;
  return out;
}

function argmaxOf(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

function topTwo(x: ArrayLike<number>): [number, number] {
  let a = x[0] >= x[1] ? 0 : 1;
  let b = 1 - a;
  for (let i = 2; i < x.length; i++) {
    if (x[i] > x[a]) {
      b = a;
      a = i;
    } else if (x[i] > x[b]) b = i;
  }
  return [a, b];
}

/** The fixed token stream: seeded uniform token ids (random-weight models have no "real" text). */
export function tokenStream(length: number, vocab: number, seed: number): number[] {
  const rng = new Rng(seed);
  return Array.from({ length }, () => rng.nextUint32() % vocab);
}

async function openRunner(dir: string, window: number, threads: number): Promise<OnnxRunner> {
  const manifest = readManifest(dir);
  if (window > manifest.contextLength) throw new Error(`${dir}: window ${window} exceeds the context length ${manifest.contextLength}`);
  const { runner } = await createOnnxRunner({
    modelDir: dir,
    manifest,
    executionProvider: 'cpu',
    intraOpThreads: threads,
    numBlocks: Math.ceil(window / BLOCK_SIZE) + 1,
    blockSize: BLOCK_SIZE,
    log: () => {},
  });
  return runner;
}

/** Feeds `tokens` as one sequence in chunks; calls `each(chunkStart, logits)` with every chunk's logits. */
async function teacherForce(runner: OnnxRunner, tokens: number[], each: (start: number, logits: Float32Array) => void): Promise<void> {
  const blocks = Array.from({ length: Math.ceil(tokens.length / BLOCK_SIZE) }, (_, i) => 1 + i);
  for (let start = 0; start < tokens.length; start += CHUNK) {
    const chunk = tokens.slice(start, start + CHUNK);
    const [out] = await runner.run([{ tokens: chunk, pastLength: start, blocks, logitsFrom: 0, fetchLogits: true }]);
    each(start, out.logits);
  }
}

export async function evaluateQuality(opts: QualityOptions): Promise<QualityReport> {
  const positions = opts.positions ?? 2048;
  const window = opts.window ?? 512;
  const threads = opts.intraOpThreads ?? 0;
  const refManifest = readManifest(opts.reference);
  const manifest = readManifest(opts.model);
  if (manifest.vocabSize !== refManifest.vocabSize) throw new Error(`vocabulary sizes differ: ${manifest.vocabSize} vs ${refManifest.vocabSize}`);
  const V = manifest.vocabSize;
  const stream = tokenStream(positions, V, opts.seed ?? 0);
  const acc = new QualityAccumulator(opts.margin ?? 0.1);
  const reference = await openRunner(opts.reference, window, threads);
  const model = await openRunner(opts.model, window, threads);
  try {
    for (let s = 0; s < positions; s += window) {
      const seq = stream.slice(s, s + window);
      // The reference's logits for the whole sequence are kept (window x vocab floats), then the
      // model's chunks are compared against them as they come.
      const refLogits: Float32Array[] = [];
      await teacherForce(reference, seq, (_start, logits) => refLogits.push(logits.slice()));
      const ref = concatFloat32(refLogits);
      await teacherForce(model, seq, (start, logits) => {
        for (let i = 0; i < logits.length / V; i++) acc.add(ref.subarray((start + i) * V, (start + i + 1) * V), logits.subarray(i * V, (i + 1) * V));
      });
    }
  } finally {
    await reference.dispose();
    await model.dispose();
  }
  return acc.report();
}

