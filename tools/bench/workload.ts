// The seeded workload: random token-id prompts of a fixed length (vLLM's "random" dataset with
// range ratio 1) and, for rate runs, Poisson arrival times. Request i's prompt depends only on
// (seed, i), so a run of N requests is the first N of the same stream, and a --baseline server
// sees the very same prompts. Runs of a sweep take distinct seeds (runSeed): a server with
// prefix caching would otherwise find the previous run's prompts in its cache. With
// sharedPrefixTokens, every prompt starts with the same tokens (one per seed) before its own.
// The grounded workload (makeGroundedWorkload) quotes English passages instead, for speculative
// decoding to find its drafts in.
import { Rng } from '../../src/util/rng.js';

/** Token ids 0..50255: GPT-2's vocabulary without <|endoftext|> (50256). */
export const PROMPT_VOCAB = 50256;

export interface BenchRequest {
  index: number;
  promptIds: number[];
  outputTokens: number;
  /** The `model` the request names instead of the served base model (a LoRA adapter). */
  model?: string;
  /** --api chat: the prompt as text (the ids detokenized), sent as one user message. */
  promptText?: string;
  /** Grounded workload: the passage tokens that a faithful copy outputs next. */
  reference?: number[];
}

export interface WorkloadSpec {
  seed: number;
  requests: number;
  promptTokens: number;
  outputTokens: number;
  /** Exclusive upper bound of the prompt ids (default PROMPT_VOCAB). */
  vocab?: number;
  /** Tokens every prompt starts with (default 0), before its own promptTokens. */
  sharedPrefixTokens?: number;
}

/** The workload seed of the sweep's `run`-th run (0-based). */
export function runSeed(seed: number, run: number): number {
  return (seed + run * 1_000_033) >>> 0;
}

export function makeWorkload(spec: WorkloadSpec): BenchRequest[] {
  const vocab = spec.vocab ?? PROMPT_VOCAB;
  const draw = (rng: Rng, n: number) => Array.from({ length: n }, () => Math.floor(rng.next() * vocab));
  const prefix = draw(new Rng((spec.seed ^ 0x5a4ed) >>> 0), spec.sharedPrefixTokens ?? 0);
  const rng = new Rng(spec.seed);
  const out: BenchRequest[] = [];
  for (let index = 0; index < spec.requests; index++) {
    out.push({ index, promptIds: [...prefix, ...draw(rng, spec.promptTokens)], outputTokens: spec.outputTokens });
  }
  return out;
}

/**
 * Send times in ms from the start of a run for a Poisson process of `rate` requests/s: the first
 * request at 0, then exponential gaps of mean 1/rate (vLLM's gamma intervals with burstiness 1).
 * Seeded apart from the prompts (seed + a constant), so prompts do not depend on the rate.
 */
export function poissonArrivals(seed: number, rate: number, count: number): number[] {
  if (!(rate > 0)) throw new RangeError(`rate must be > 0, got ${rate}`);
  const rng = new Rng((seed ^ 0x5eed_a771) >>> 0);
  const times: number[] = [];
  let t = 0;
  for (let i = 0; i < count; i++) {
    times.push(t);
    t += (-Math.log(1 - rng.next()) / rate) * 1000;
  }
  return times;
}

/** What follows the passage in a grounded prompt, before the passage's first GROUNDED_LEAD_TOKENS tokens again. */
export const GROUNDED_INSTRUCTION = '\n\nRepeat the passage:\n';
export const GROUNDED_LEAD_TOKENS = 8;

export interface GroundedSpec {
  seed: number;
  requests: number;
  /** The whole prompt's length: passage, instruction and lead together. */
  promptTokens: number;
  outputTokens: number;
  /** Paragraphs of English to cut passages from (passages.ts). */
  paragraphs: readonly string[];
  encode(text: string): number[];
}

/** The shortest --prompt-tokens that leaves a grounded prompt a passage of 2 x its lead. */
export function minGroundedPromptTokens(encode: (text: string) => number[]): number {
  return encode(GROUNDED_INSTRUCTION).length + 3 * GROUNDED_LEAD_TOKENS;
}

/**
 * The input-grounded workload: `<passage>\n\nRepeat the passage:\n<its first 8 tokens>`, exactly
 * promptTokens long. Request i's passage starts at a seeded paragraph and word of `paragraphs` and
 * runs on through the following ones, so requests (and runs, whose seeds differ) quote different
 * text and share no prefix for the prefix cache to find. `reference` is the passage after the lead:
 * what a faithful copy outputs next.
 */
export function makeGroundedWorkload(spec: GroundedSpec): BenchRequest[] {
  const instruction = spec.encode(GROUNDED_INSTRUCTION);
  const passageTokens = spec.promptTokens - instruction.length - GROUNDED_LEAD_TOKENS;
  if (passageTokens < 2 * GROUNDED_LEAD_TOKENS) throw new RangeError(`grounded prompts need ${minGroundedPromptTokens(spec.encode)} tokens or more, got ${spec.promptTokens}`);
  const n = spec.paragraphs.length;
  if (n === 0) throw new RangeError('no paragraphs to quote');
  const rng = new Rng((spec.seed ^ 0x6a0d) >>> 0);
  const out: BenchRequest[] = [];
  for (let index = 0; index < spec.requests; index++) {
    const first = Math.floor(rng.next() * n);
    const words = spec.paragraphs[first]!.split(' ');
    let ids = spec.encode(words.slice(Math.floor((rng.next() * words.length) / 2)).join(' '));
    // Paragraphs joined by a space: encoding " word..." pieces apart gives the ids of the whole text.
    for (let p = first + 1; ids.length < passageTokens; p++) ids = ids.concat(spec.encode(` ${spec.paragraphs[p % n]!}`));
    const passage = ids.slice(0, passageTokens);
    out.push({
      index,
      promptIds: [...passage, ...instruction, ...passage.slice(0, GROUNDED_LEAD_TOKENS)],
      outputTokens: spec.outputTokens,
      reference: passage.slice(GROUNDED_LEAD_TOKENS),
    });
  }
  return out;
}
