// Turns a CompletionJob's outputs into OpenAI's shapes: the whole response (with best_of
// selection) or the stream of chunks (SSE and websocket share it).
// Choice indexes are prompt-major: index = promptIndex * n + j.
import type { TokenLogprob } from '../../engine/types.js';
import type { CompletionJob } from './job.js';
import {
  appendLogprobs,
  codePointLength,
  emptyLogprobs,
  makeChunk,
  makeEnvelope,
  toOpenAILogprobs,
  type CompletionChoice,
  type CompletionChunk,
  type CompletionLogprobs,
  type CompletionResponse,
} from '../openai/responses.js';

interface ChoiceAccumulator {
  text: string;
  logprobs: CompletionLogprobs | null;
  /** Next text_offset of a generated token. */
  offset: number;
  finishReason: 'stop' | 'length' | null;
  cumulativeLogprob: number;
}

/** Runs the job to the end and builds the non-streaming response. */
export async function collectCompletion(job: CompletionJob): Promise<CompletionResponse> {
  const { n, bestOf, prompts, logprobs } = job.request;
  const acc: ChoiceAccumulator[][] = prompts.map(() =>
    Array.from({ length: bestOf }, () => ({
      text: '',
      logprobs: logprobs !== null ? emptyLogprobs() : null,
      offset: 0,
      finishReason: null,
      cumulativeLogprob: 0,
    })),
  );
  const echoed = new EchoedLogprobs();
  for await (const out of job.outputs()) {
    const c = acc[out.prompt]?.[out.choice];
    if (!c) continue;
    if (out.type === 'echo') {
      c.text = out.text + c.text;
      if (c.logprobs && out.logprobs) {
        const prompt = copyLogprobs(echoed.of(out.logprobs));
        appendLogprobs(prompt, c.logprobs);
        c.logprobs = prompt;
      }
      c.offset = codePointLength(out.text);
    } else if (out.type === 'delta') {
      c.text += out.text;
      if (c.logprobs && out.logprobs) {
        const frag = toOpenAILogprobs(out.logprobs, c.offset);
        appendLogprobs(c.logprobs, frag.logprobs);
        c.offset = frag.offset;
      }
    } else {
      c.text += out.text;
      c.finishReason = out.reason;
      c.cumulativeLogprob = out.cumulativeLogprob;
    }
  }
  const choices: CompletionChoice[] = [];
  acc.forEach((perPrompt, p) => {
    let order = perPrompt.map((_, j) => j);
    if (bestOf > n) {
      // best_of: keep the n candidates with the highest cumulative logprob, best first.
      order = order.sort((a, b) => perPrompt[b]!.cumulativeLogprob - perPrompt[a]!.cumulativeLogprob || a - b).slice(0, n);
    }
    order.forEach((j, rank) => {
      const c = perPrompt[j]!;
      choices.push({ text: c.text, index: p * n + rank, logprobs: c.logprobs, finish_reason: c.finishReason ?? 'length' });
    });
  });
  return { ...makeEnvelope(job.meta, choices), usage: job.usage };
}

/**
 * Streams the job as chunks: the echoed prompt per choice (with `echo`), one chunk per text
 * delta, one final chunk per choice carrying its finish_reason, then (with include_usage) a
 * usage chunk with `choices: []`. Streaming never has best_of > n (validation rejects it).
 */
export async function* completionChunks(job: CompletionJob, options: { includeUsage: boolean }): AsyncGenerator<CompletionChunk, void, undefined> {
  const { n, logprobs } = job.request;
  const { meta } = job;
  const usageField = options.includeUsage ? null : undefined;
  const offsets = new Map<number, number>();
  // Being one object for every choice, the echoed logprobs are serialized once (serializeChunk).
  const echoed = new EchoedLogprobs();
  for await (const out of job.outputs()) {
    const index = out.prompt * n + out.choice;
    if (out.type === 'echo') {
      const lp = logprobs !== null ? echoed.of(out.logprobs ?? []) : null;
      offsets.set(index, codePointLength(out.text));
      yield makeChunk(meta, [{ text: out.text, index, logprobs: lp, finish_reason: null }], usageField);
    } else if (out.type === 'delta') {
      let lp: CompletionLogprobs | null = null;
      if (logprobs !== null) {
        const frag = toOpenAILogprobs(out.logprobs ?? [], offsets.get(index) ?? 0);
        offsets.set(index, frag.offset);
        lp = frag.logprobs;
      }
      // Text held back by the engine (possible stop string) and no logprobs: nothing to send yet.
      if (out.text === '' && (lp === null || lp.tokens.length === 0)) continue;
      yield makeChunk(meta, [{ text: out.text, index, logprobs: lp, finish_reason: null }], usageField);
    } else {
      const lp = logprobs !== null ? emptyLogprobs() : null;
      yield makeChunk(meta, [{ text: out.text, index, logprobs: lp, finish_reason: out.reason }], usageField);
    }
  }
  if (options.includeUsage) {
    yield makeChunk(meta, [], job.usage);
  }
}

/** Every choice of a prompt echoes the same prompt logprobs: they are converted once per prompt. */
class EchoedLogprobs {
  private readonly converted = new WeakMap<TokenLogprob[], CompletionLogprobs>();

  of(records: TokenLogprob[]): CompletionLogprobs {
    let lp = this.converted.get(records);
    if (!lp) this.converted.set(records, (lp = toOpenAILogprobs(records, 0).logprobs));
    return lp;
  }
}

function copyLogprobs(lp: CompletionLogprobs): CompletionLogprobs {
  return { tokens: lp.tokens.slice(), token_logprobs: lp.token_logprobs.slice(), top_logprobs: lp.top_logprobs.slice(), text_offset: lp.text_offset.slice() };
}
