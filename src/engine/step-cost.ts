// A model of what a step costs, so the scheduler can plan steps by time and not only by tokens:
// every stream in the batch waits for the whole step, so a step that also prefills a long prompt
// is a stall for all of them (issue: smooth streams under load).
//
// A step's milliseconds are modelled as linear in four features of its shape:
//   tokens         new tokens fed (decode rows + prefill chunk tokens): the weight matmuls
//   attended       keys the decode rows (one new token each) attend to: each key's K/V read out
//                  of the pool once (a decode group's gathered copy, then its products)
//   chunkAttended  query-key pairs of the rows of more than one token (prefill chunks,
//                  speculative verification rows): the exact graph makes each query its own
//                  matrix-vector product over its keys (docs/design.md), work per pair and not a
//                  read per key, so a pair costs several times less than a decode row's key and
//                  the two cannot share one weight (docs/benchmark.md, "Step costs")
//   chunkPast      cached keys of the rows of more than one token: the graph copies a chunk row's
//                  gathered past once more to add its new keys (serving-graph.ts), which a decode
//                  row does not need
// plus a constant (the per-run overhead). Fitted by least squares on timed runs at start-up, then
// corrected online by recursive least squares with forgetting, so it follows the machine's load
// and whatever the runner really costs.

export interface StepShape {
  tokens: number;
  /** Keys the step's one-token rows attend to. */
  attended: number;
  /** Query-key pairs of the step's rows of more than one token (0 when absent). */
  chunkAttended?: number;
  /** Cached keys of the step's rows of more than one token (0 when absent). */
  chunkPast?: number;
}

export interface StepCost {
  predictMs(shape: StepShape): number;
}

/** Keys attended by a chunk of `count` tokens at positions start..start+count-1 (causal). */
export function attendedBy(start: number, count: number): number {
  return count * start + (count * (count + 1)) / 2;
}

/** The shape of one row of `count` tokens after `start` cached ones. */
export function rowShape(start: number, count: number): Required<StepShape> {
  const keys = attendedBy(start, count);
  return count > 1 ? { tokens: count, attended: 0, chunkAttended: keys, chunkPast: start } : { tokens: count, attended: keys, chunkAttended: 0, chunkPast: 0 };
}

/** `shape` with `more` added (a new object). */
export function plus(shape: StepShape, more: StepShape): Required<StepShape> {
  return {
    tokens: shape.tokens + more.tokens,
    attended: shape.attended + more.attended,
    chunkAttended: (shape.chunkAttended ?? 0) + (more.chunkAttended ?? 0),
    chunkPast: (shape.chunkPast ?? 0) + (more.chunkPast ?? 0),
  };
}

/** What a row of `count` tokens after `start` cached ones adds to a step when it grows by one token. */
export function growth(start: number, count: number): Required<StepShape> {
  const before = rowShape(start, count);
  const after = rowShape(start, count + 1);
  return { tokens: 1, attended: after.attended - before.attended, chunkAttended: after.chunkAttended - before.chunkAttended, chunkPast: after.chunkPast - before.chunkPast };
}

const N = 5;
/** Feature scales keep the normal equations well conditioned (tokens ~ 1..512, keys ~ 1..1e6, chunkPast ~ 0..3e4). */
const TOKEN_SCALE = 1 / 100;
const ATTENDED_SCALE = 1 / 100_000;
const CHUNK_PAST_SCALE = 1 / 10_000;

function features(shape: StepShape): [number, number, number, number, number] {
  return [1, shape.tokens * TOKEN_SCALE, shape.attended * ATTENDED_SCALE, (shape.chunkAttended ?? 0) * ATTENDED_SCALE, (shape.chunkPast ?? 0) * CHUNK_PAST_SCALE];
}

export class StepCostModel implements StepCost {
  private readonly w = new Float64Array(N);
  /** RLS inverse-covariance estimate, row-major N x N. */
  private readonly p = new Float64Array(N * N);
  private readonly px = new Float64Array(N);

  /** `forgetting` < 1 weights recent steps more: 0.98 forgets half of the past in ~35 steps. */
  constructor(private readonly forgetting = 0.98) {
    for (let i = 0; i < N; i++) this.p[i * N + i] = 1e4;
  }

  predictMs(shape: StepShape): number {
    return Math.max(0, dot(this.w, features(shape)));
  }

  /**
   * Least squares over the calibration runs with every weight >= 0 (a ridge term keeps it defined
   * for few of them). A step's cost cannot fall as it gets more tokens or keys; an unconstrained
   * fit on noisy runs can have it do so and then predict ~0 ms for a long prefill.
   */
  fit(samples: ReadonlyArray<{ shape: StepShape; ms: number }>): void {
    const a = new Float64Array(N * N);
    const b = new Float64Array(N);
    for (const { shape, ms } of samples) {
      const x = features(shape);
      for (let i = 0; i < N; i++) {
        b[i] += x[i]! * ms;
        for (let j = 0; j < N; j++) a[i * N + j] += x[i]! * x[j]!;
      }
    }
    for (let i = 0; i < N; i++) a[i * N + i] += 1e-6;
    this.w.set(nonNegativeLeastSquares(a, b));
    this.p.set(invert(a, N));
  }

  /** One measured step: w moves toward explaining it (recursive least squares). */
  observe(shape: StepShape, ms: number): void {
    const x = features(shape);
    const px = this.px.fill(0);
    for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) px[i] += this.p[i * N + j]! * x[j]!;
    const denom = this.forgetting + dot(x, px);
    const err = ms - dot(this.w, x);
    for (let i = 0; i < N; i++) this.w[i] += (px[i]! / denom) * err;
    for (let i = 0; i < N; i++) {
      for (let j = 0; j < N; j++) this.p[i * N + j] = (this.p[i * N + j]! - (px[i]! * px[j]!) / denom) / this.forgetting;
    }
  }
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

/**
 * argmin |Xw - y|^2 over w >= 0, from the normal equations A = X'X, b = X'y: with five unknowns
 * every set of free weights can be tried (the others held at 0); the best feasible one wins.
 */
function nonNegativeLeastSquares(a: Float64Array, b: Float64Array): Float64Array {
  let best = new Float64Array(N);
  let bestLoss = 0; // w = 0
  for (let mask = 1; mask < 1 << N; mask++) {
    const free = [...Array(N).keys()].filter((i) => mask & (1 << i));
    const k = free.length;
    const sub = new Float64Array(k * k);
    for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) sub[i * k + j] = a[free[i]! * N + free[j]!]!;
    const inv = invert(sub, k);
    const w = new Float64Array(N);
    for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) w[free[i]!] += inv[i * k + j]! * b[free[j]!]!;
    if (w.some((v) => v < 0)) continue;
    // |Xw - y|^2 = w'Aw - 2 w'b + const
    const aw = new Float64Array(N);
    for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) aw[i] += a[i * N + j]! * w[j]!;
    const loss = dot(w, aw) - 2 * dot(w, b);
    if (loss < bestLoss) {
      best = w;
      bestLoss = loss;
    }
  }
  return best;
}

/** Inverse of a symmetric positive definite n x n matrix (Gauss-Jordan; n <= 5 here). */
function invert(m: Float64Array, n: number): Float64Array {
  const a = Float64Array.from(m);
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) out[i * n + i] = 1;
  for (let c = 0; c < n; c++) {
    const pivot = a[c * n + c]!;
    for (let j = 0; j < n; j++) {
      a[c * n + j] /= pivot;
      out[c * n + j] /= pivot;
    }
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = a[r * n + c]!;
      if (f === 0) continue;
      for (let j = 0; j < n; j++) {
        a[r * n + j] -= f * a[c * n + j]!;
        out[r * n + j] -= f * out[c * n + j]!;
      }
    }
  }
  return out;
}
