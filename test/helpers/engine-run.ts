// Helpers that collect an engine request's events into a plain result.
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
  const result: RunResult = { events: [], choices: [], prompt: null, error: null, usage: null };
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
    } else if (ev.type === 'done') result.usage = { promptTokens: ev.promptTokens, completionTokens: ev.completionTokens };
    else if (ev.type === 'error') result.error = ev.error;
  }
  return result;
}
