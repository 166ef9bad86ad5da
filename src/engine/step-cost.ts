// A model of what a step costs, so the scheduler can plan steps by time and not only by tokens:
// every stream in the batch waits for the whole step, so a step that also prefills a long prompt
// is a stall for all of them (issue: smooth streams under load).
//
// A step's milliseconds are modelled as linear in two features of its shape:
//   tokens    new tokens fed (decode rows + prefill chunk tokens): the weight matmuls
//   attended  keys the new tokens attend to, summed: reading the KV cache
// plus a constant (the per-run overhead). Fitted by least squares on timed runs at start-up, then
// corrected online by recursive least squares with forgetting, so it follows the machine's load
// and whatever the runner really costs.

export interface StepShape {
  tokens: number;
  attended: number;
}

export interface StepCost {
  predictMs(shape: StepShape): number;
}

/** Keys attended by a chunk of `count` tokens at positions start..start+count-1 (causal). */
export function attendedBy(start: number, count: number): number {
  return count * start + (count * (count + 1)) / 2;
}

const N = 3;
/** Feature scales keep the normal equations well conditioned (tokens ~ 1..512, attended ~ 1..1e6). */
const TOKEN_SCALE = 1 / 100;
const ATTENDED_SCALE = 1 / 100_000;

function features(shape: StepShape): [number, number, number] {
  return [1, shape.tokens * TOKEN_SCALE, shape.attended * ATTENDED_SCALE];
}

export class StepCostModel implements StepCost {
  private readonly w = new Float64Array(N);
  /** RLS inverse-covariance estimate, row-major N x N. */
  private readonly p = new Float64Array(N * N);
  private readonly px = new Float64Array(N);
  private samples = 0;

  /** `forgetting` < 1 weights recent steps more: 0.98 forgets half of the past in ~35 steps. */
  constructor(private readonly forgetting = 0.98) {
    for (let i = 0; i < N; i++) this.p[i * N + i] = 1e4;
  }

  /** Whether any timing has been seen: before that the model predicts 0 (plan by tokens only). */
  get ready(): boolean {
    return this.samples > 0;
  }

  predictMs(shape: StepShape): number {
    const x = features(shape);
    let y = 0;
    for (let i = 0; i < N; i++) y += this.w[i]! * x[i]!;
    return Math.max(0, y);
  }

  /** Ordinary least squares over the calibration runs (a ridge term keeps it defined for few of them). */
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
    const inv = invert3(a);
    for (let i = 0; i < N; i++) {
      let s = 0;
      for (let j = 0; j < N; j++) s += inv[i * N + j]! * b[j]!;
      this.w[i] = s;
    }
    this.p.set(inv);
    this.samples += samples.length;
  }

  /** One measured step: w moves toward explaining it (recursive least squares). */
  observe(shape: StepShape, ms: number): void {
    const x = features(shape);
    const px = this.px.fill(0);
    for (let i = 0; i < N; i++) for (let j = 0; j < N; j++) px[i] += this.p[i * N + j]! * x[j]!;
    let denom = this.forgetting;
    for (let i = 0; i < N; i++) denom += x[i]! * px[i]!;
    const err = ms - this.predictRaw(x);
    for (let i = 0; i < N; i++) this.w[i] += (px[i]! / denom) * err;
    for (let i = 0; i < N; i++) {
      for (let j = 0; j < N; j++) this.p[i * N + j] = (this.p[i * N + j]! - (px[i]! * px[j]!) / denom) / this.forgetting;
    }
    this.samples++;
  }

  private predictRaw(x: readonly number[]): number {
    let y = 0;
    for (let i = 0; i < N; i++) y += this.w[i]! * x[i]!;
    return y;
  }
}

/** Inverse of a symmetric positive definite 3 x 3 matrix (adjugate over determinant). */
function invert3(m: Float64Array): Float64Array {
  const [a, b, c, d, e, f, g, h, i] = m as unknown as number[];
  const A = e! * i! - f! * h!;
  const B = -(d! * i! - f! * g!);
  const C = d! * h! - e! * g!;
  const det = a! * A + b! * B + c! * C;
  const out = new Float64Array([
    A,
    -(b! * i! - c! * h!),
    b! * f! - c! * e!,
    B,
    a! * i! - c! * g!,
    -(a! * f! - c! * d!),
    C,
    -(a! * h! - b! * g!),
    a! * e! - b! * d!,
  ]);
  for (let k = 0; k < 9; k++) out[k] /= det;
  return out;
}
