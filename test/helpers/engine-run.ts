// Helpers that collect an engine request's events into a plain result.
import assert from 'node:assert/strict';
import type { EngineClient, EngineEvent, EngineRequest, SamplingParams } from '../../src/engine/types.js';
import { AsyncQueue } from '../../src/util/async-queue.js';

export const DEFAULT_PARAMS: SamplingParams = {
  maxTokens: 16,
  minTokens: 0,
  temperature: 0,
  topP: 1,
  topK: 0,
  minP: 0,
  presencePenalty: 0,
  frequencyPenalty: 0,
  repetitionPenalty: 1,
  logitBias: [],
  seed: null,
  logprobs: null,
  echo: false,
  stop: [],
  stopTokenIds: [],
  ignoreEos: false,
  n: 1,
  constraint: null,
};

let nextId = 0;
export function request(promptTokens: number[], params: Partial<SamplingParams> = {}): EngineRequest {
  return { id: `req-${nextId++}`, promptTokens, params: { ...DEFAULT_PARAMS, ...params } };
}

export interface ChoiceResult {
  tokens: number[];
  text: string;
  finish: string | null;
  cumulativeLogprob: number;
  logprobs: Array<{ tokenId: number; logprob: number | null; top: Array<{ tokenId: number; logprob: number }> }>;
}

export interface RunResult {
  events: EngineEvent[];
  choices: ChoiceResult[];
  prompt: Extract<EngineEvent, { type: 'prompt' }> | null;
  error: Extract<EngineEvent, { type: 'error' }>['error'] | null;
  usage: { promptTokens: number; completionTokens: number } | null;
  /** Prompt tokens served from the prefix cache (from `done`). */
  cachedTokens: number;
}

/** The request's events as an async iterable; leaving the loop early cancels the request. */
export function events(engine: EngineClient, req: EngineRequest): AsyncIterable<EngineEvent> {
  const queue = new AsyncQueue<EngineEvent>();
  engine.submit(req, (ev) => {
    queue.push(ev);
    if (ev.type === 'done' || ev.type === 'error') queue.close();
  });
  return {
    [Symbol.asyncIterator]: () => ({
      next: () => queue.next(),
      return: async () => {
        engine.cancel(req.id);
        queue.clear();
        return { value: undefined, done: true };
      },
    }),
  };
}

export async function collect(engine: EngineClient, req: EngineRequest): Promise<RunResult> {
  const result: RunResult = { events: [], choices: [], prompt: null, error: null, usage: null, cachedTokens: 0 };
  const choice = (i: number) =>
    (result.choices[i] ??= { tokens: [], text: '', finish: null, cumulativeLogprob: 0, logprobs: [] });
  for await (const ev of events(engine, req)) {
    result.events.push(ev);
    if (ev.type === 'prompt') result.prompt = ev;
    else if (ev.type === 'delta') {
      const c = choice(ev.choice);
      c.tokens.push(...ev.tokenIds);
      c.text += ev.text;
      if (ev.logprobs) c.logprobs.push(...ev.logprobs);
    } else if (ev.type === 'finish') {
      const c = choice(ev.choice);
      c.text += ev.text;
      c.finish = ev.reason;
      c.cumulativeLogprob = ev.cumulativeLogprob;
    } else if (ev.type === 'done') {
      result.usage = { promptTokens: ev.promptTokens, completionTokens: ev.completionTokens };
      result.cachedTokens = ev.cachedTokens;
    }
    else if (ev.type === 'error') result.error = ev.error;
  }
  return result;
}

/** What exactness promises is equal: token ids and every logprob value (deepEqual compares numbers with Object.is). */
export function outputBits(r: RunResult): unknown {
  return r.choices.map((c) => ({ tokens: c.tokens, logprobs: c.logprobs.map((l) => [l.tokenId, l.logprob, l.top.map((t) => [t.tokenId, t.logprob])]), cumulative: c.cumulativeLogprob }));
}

/**
 * Batch invariance, the product guarantee: 32 greedy and seeded requests (penalties on some)
 * give bit-identical output (tokens and logprobs) alone and in batches that grow from 1 to 32
 * (staggered arrivals) and shrink as short requests finish. Prompts of 100-190 tokens, so that
 * under a time-capped step planner ('auto') they are chunked differently alone and together.
 * Returns the tokens so that callers can check them further.
 */
export async function assertBatchInvariance(engine: EngineClient): Promise<number[][]> {
  const prompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);
  const penalties = (i: number): Partial<SamplingParams> =>
    i % 3 === 0 ? { presencePenalty: 0.6, frequencyPenalty: 0.4 } : i % 3 === 1 ? { repetitionPenalty: 1.3 } : {};
  const specs = Array.from({ length: 32 }, (_, i) => ({
    prompt: prompt(100 + ((i * 37) % 91), i),
    params: {
      maxTokens: 12 + (i % 5),
      logprobs: 2,
      ...penalties(i),
      ...(i % 2 === 0 ? {} : { temperature: 0.9, topP: 0.95, seed: 1000 + i }),
    },
  }));
  const alone: RunResult[] = [];
  for (const s of specs) alone.push(await collect(engine, request(s.prompt, s.params)));
  const together = await Promise.all(
    specs.map(async (s, i) => {
      await new Promise((r) => setTimeout(r, i * 3));
      return collect(engine, request(s.prompt, s.params));
    }),
  );
  assert.deepEqual(together.map(outputBits), alone.map(outputBits));
  assert.equal((await engine.stats()).kvBlocksUsed, 0, 'every block is freed');
  return alone.map((r) => r.choices[0]!.tokens);
}

/** A request to run: its prompt and the parameters it sets. */
export interface Spec {
  prompt: number[];
  params: Partial<SamplingParams>;
}

/** Runs the specs one after another, or together with staggered arrivals (3 ms apart). */
export async function runAll(engine: EngineClient, list: Spec[], together: boolean): Promise<RunResult[]> {
  if (!together) {
    const out: RunResult[] = [];
    for (const s of list) out.push(await collect(engine, request(s.prompt, s.params)));
    return out;
  }
  return Promise.all(
    list.map(async (s, i) => {
      await new Promise((r) => setTimeout(r, i * 3));
      return collect(engine, request(s.prompt, s.params));
    }),
  );
}
