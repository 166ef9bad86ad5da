// Logits processors and the sampler, per sequence. Runs for every sequence on every step, so:
// no full sort of the vocabulary (top-k/top-p use a radix histogram over the float bits, then sort
// only the one boundary bucket), no per-step allocation beyond tiny result objects, and sparse
// edits (bias, penalties, masks) are undone after sampling so the row stays the raw distribution
// for logprobs.
import type { TokenConstraint } from '../structured/token-mask.js';
import { Rng } from '../util/rng.js';
import type { SamplingParams } from './types.js';

export interface TopEntry {
  tokenId: number;
  logprob: number;
}

export interface SampleResult {
  token: number;
  /** Raw model logprob of `token`; 0 when neither logprobs nor a cumulative score was asked for. */
  logprob: number;
  /** Raw top alternatives, best first; null unless logprobs were requested. */
  top: TopEntry[] | null;
}

const BUCKET_SHIFT = 18; // float32 bits >>> 18: sign, exponent and 5 mantissa bits
const BUCKETS = 1 << (32 - BUCKET_SHIFT);
const GREEDY_BELOW = 1e-5;

/** Buffers shared by all sequences of one engine; sampling is sequential, so one set suffices. */
export class SamplerScratch {
  readonly probs: Float32Array;
  readonly probBits: Uint32Array;
  readonly boundary: Float32Array;
  readonly counts = new Uint32Array(BUCKETS);
  readonly mass = new Float64Array(BUCKETS);
  readonly editIndex: number[] = [];
  readonly editValue: number[] = [];
  /** The row a constraint leaves (disallowed tokens at -Infinity); the raw row stays intact. */
  readonly masked: Float32Array;

  constructor(readonly vocabSize: number) {
    this.probs = new Float32Array(vocabSize);
    this.masked = new Float32Array(vocabSize);
    this.probBits = new Uint32Array(this.probs.buffer);
    this.boundary = new Float32Array(vocabSize);
  }
}

/** A sequence's position in its structured-output constraint. */
export class ConstraintCursor {
  state: number;

  constructor(readonly constraint: TokenConstraint) {
    this.state = constraint.start;
  }
}

export class SequenceSampler {
  private readonly rng: Rng;
  private readonly outputCounts = new Map<number, number>();
  private readonly seen: Set<number> | null;
  private readonly stopIds: Set<number>;
  private readonly wantLogprob: boolean;

  constructor(
    private readonly params: SamplingParams,
    promptTokens: readonly number[],
    private readonly eosTokenId: number,
    seed: number,
    private readonly cursor: ConstraintCursor | null = null,
  ) {
    this.rng = new Rng(seed);
    this.seen = params.repetitionPenalty !== 1 ? new Set(promptTokens) : null;
    this.stopIds = new Set(params.stopTokenIds);
    this.wantLogprob = params.logprobs !== null || params.n > 1;
  }

  /**
   * Whether the next pick needs the logits row at all. A plain greedy pick (no logprobs, no
   * processor that could change the row) uses the graph's argmax, so the runner need not fetch
   * 50257 floats per row for it.
   */
  needsLogits(outputLength: number): boolean {
    const p = this.params;
    const untouched =
      p.logitBias.length === 0 && p.presencePenalty === 0 && p.frequencyPenalty === 0 && !this.seen && outputLength >= p.minTokens && !this.cursor;
    return !(p.temperature < GREEDY_BELOW && !this.wantLogprob && untouched);
  }

  /** Records an emitted token for the penalties and the constraint. */
  observe(token: number): void {
    this.outputCounts.set(token, (this.outputCounts.get(token) ?? 0) + 1);
    this.seen?.add(token);
    if (this.cursor) this.cursor.state = this.cursor.constraint.advance(this.cursor.state, token);
  }

  /**
   * Picks the next token from a row of raw logits (temporarily modified, restored before return).
   * `rawArgmax`, the row's largest logit when the caller already knows it, spares greedy
   * decoding a pass over the vocabulary as long as no processor changed the row.
   */
  sample(logits: Float32Array, outputLength: number, scratch: SamplerScratch, rawArgmax = -1): SampleResult {
    const p = this.params;
    const top = p.logprobs !== null ? topLogits(logits, p.logprobs) : null;
    const lse = this.wantLogprob ? logSumExp(logits) : NaN;

    this.applyEdits(logits, outputLength, scratch);
    const greedy = p.temperature < GREEDY_BELOW;
    let token: number;
    if (this.cursor) {
      // The constraint's mask comes before temperature and the filters: they only see allowed
      // tokens. A greedy pick needs no masked row, only the best allowed logit.
      const { constraint, state } = this.cursor;
      const row = greedy ? logits : constraint.maskInto(state, logits, scratch.masked);
      token = greedy ? constraint.argmaxAllowed(state, logits) : this.draw(row, scratch);
      if (row[token] === -Infinity) {
        // Edits (min_tokens' EOS ban) blanked every allowed token: the constraint wins.
        restoreEdits(logits, scratch);
        scratch.editIndex.length = 0;
        token = constraint.argmaxAllowed(state, logits);
      }
    } else {
      token = greedy && rawArgmax >= 0 && scratch.editIndex.length === 0 ? rawArgmax : greedy ? argmax(logits) : this.draw(logits, scratch);
    }
    restoreEdits(logits, scratch);

    return {
      token,
      logprob: this.wantLogprob ? logits[token] - lse : 0,
      top: top ? top.map((id) => ({ tokenId: id, logprob: logits[id] - lse })) : null,
    };
  }

  private applyEdits(logits: Float32Array, outputLength: number, scratch: SamplerScratch): void {
    const p = this.params;
    scratch.editIndex.length = 0;
    scratch.editValue.length = 0;
    const edit = (i: number, v: number) => {
      scratch.editIndex.push(i);
      scratch.editValue.push(logits[i]);
      logits[i] = v;
    };
    for (const [id, bias] of p.logitBias) edit(id, logits[id] + bias);
    if (this.seen) {
      for (const id of this.seen) {
        const v = logits[id];
        edit(id, v > 0 ? v / p.repetitionPenalty : v * p.repetitionPenalty);
      }
    }
    if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
      for (const [id, count] of this.outputCounts) edit(id, logits[id] - p.frequencyPenalty * count - p.presencePenalty);
    }
    if (outputLength < p.minTokens) {
      if (!p.ignoreEos) edit(this.eosTokenId, -Infinity);
      for (const id of this.stopIds) edit(id, -Infinity);
    }
  }

  /** Temperature, then min-p, top-k and top-p over what is left (vLLM's order), then one draw. */
  private draw(logits: Float32Array, scratch: SamplerScratch): number {
    const { temperature, topK, topP, minP } = this.params;
    const probs = scratch.probs;
    const V = logits.length;
    const max = logits[argmax(logits)];
    const invT = 1 / temperature;
    let total = 0;
    for (let i = 0; i < V; i++) total += probs[i] = Math.exp((logits[i] - max) * invT);

    // probs are relative to the most likely token (which has 1), so min-p is a plain threshold.
    let floor = minP > 0 ? minP : 0;
    if (topK > 0 && topK < V) floor = Math.max(floor, topThreshold(scratch, floor, 'count', topK));
    if (topP < 1) {
      const kept = floor > 0 ? keptMass(probs, floor) : total;
      floor = Math.max(floor, topThreshold(scratch, floor, 'mass', topP * kept));
    }
    const mass = floor > 0 ? keptMass(probs, floor) : total;
    const u = this.rng.next() * mass;
    let acc = 0;
    let last = 0;
    for (let i = 0; i < V; i++) {
      const v = probs[i];
      if (v < floor || v === 0) continue;
      acc += v;
      last = i;
      if (acc > u) return i;
    }
    return last;
  }
}

function restoreEdits(logits: Float32Array, scratch: SamplerScratch): void {
  // Reverse order: a token edited twice gets its first saved (raw) value back.
  for (let k = scratch.editIndex.length - 1; k >= 0; k--) logits[scratch.editIndex[k]] = scratch.editValue[k];
}

export function argmax(v: Float32Array): number {
  let best = 0;
  let bestValue = v[0];
  for (let i = 1; i < v.length; i++) {
    if (v[i] > bestValue) {
      bestValue = v[i];
      best = i;
    }
  }
  return best;
}

function logSumExp(v: Float32Array): number {
  const max = v[argmax(v)];
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += Math.exp(v[i] - max);
  return max + Math.log(sum);
}

function keptMass(probs: Float32Array, floor: number): number {
  let sum = 0;
  for (let i = 0; i < probs.length; i++) if (probs[i] >= floor) sum += probs[i];
  return sum;
}

/**
 * The value t such that the largest entries of `scratch.probs` that are >= t (and >= floor)
 * just reach `target` in count or in mass. Ties at t are all kept. O(V) plus a sort of one bucket.
 */
function topThreshold(scratch: SamplerScratch, floor: number, mode: 'count' | 'mass', target: number): number {
  const { probs, probBits, counts, mass, boundary } = scratch;
  counts.fill(0);
  mass.fill(0);
  for (let i = 0; i < probs.length; i++) {
    const v = probs[i];
    if (v < floor || v === 0) continue;
    const b = probBits[i] >>> BUCKET_SHIFT;
    counts[b]++;
    mass[b] += v;
  }
  let acc = 0;
  let bucket = BUCKETS - 1;
  for (; bucket >= 0; bucket--) {
    const add = mode === 'count' ? counts[bucket] : mass[bucket];
    if (acc + add >= target) break;
    acc += add;
  }
  if (bucket < 0) return floor; // everything together does not reach the target: keep all
  let n = 0;
  for (let i = 0; i < probs.length; i++) {
    const v = probs[i];
    if (v >= floor && v !== 0 && probBits[i] >>> BUCKET_SHIFT === bucket) boundary[n++] = v;
  }
  const values = boundary.subarray(0, n).sort();
  for (let k = n - 1; k >= 0; k--) {
    acc += mode === 'count' ? 1 : values[k];
    if (acc >= target) return values[k];
  }
  return values[0];
}

/** Ids of the k largest logits, best first: one pass keeping a small sorted window. */
function topLogits(v: Float32Array, k: number): number[] {
  const ids: number[] = [];
  if (k <= 0) return ids;
  let min = -Infinity;
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    if (ids.length === k && x <= min) continue;
    let pos = ids.length === k ? k - 1 : ids.length;
    while (pos > 0 && v[ids[pos - 1]] < x) pos--;
    ids.splice(pos, 0, i);
    if (ids.length > k) ids.pop();
    min = ids.length === k ? v[ids[k - 1]] : -Infinity;
  }
  return ids;
}

/** Raw logprob of `token` and the top `k` alternatives in one row (echoed prompt tokens). */
export function scoreToken(logits: Float32Array, token: number, k: number): { logprob: number; top: TopEntry[] } {
  const lse = logSumExp(logits);
  return {
    logprob: logits[token] - lse,
    top: topLogits(logits, k).map((id) => ({ tokenId: id, logprob: logits[id] - lse })),
  };
}
