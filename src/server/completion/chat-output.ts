// Turns a chat job's outputs into OpenAI's chat shapes: the whole `chat.completion`, or the
// stream of `chat.completion.chunk`s (SSE and websocket share it). Chat has one prompt (the
// rendered conversation), so a choice's index is its engine choice.
import type { TokenLogprob } from '../../engine/types.js';
import {
  makeChatChunk,
  makeChatResponse,
  toChatLogprobs,
  type ChatChoice,
  type ChatCompletionChunk,
  type ChatCompletionResponse,
  type ChatLogprobs,
  type ChatTokenLogprob,
} from '../openai/chat-responses.js';
import type { CompletionJob } from './job.js';

/** Runs the job to the end and builds the non-streaming response. */
export async function collectChat(job: CompletionJob): Promise<ChatCompletionResponse> {
  const { n, logprobs, chat } = job.request;
  const role = chat?.role ?? 'assistant';
  const acc = Array.from({ length: n }, () => ({
    content: chat?.echo ?? '',
    logprobs: logprobs !== null ? ([] as ChatTokenLogprob[]) : null,
    finishReason: 'length' as 'stop' | 'length',
  }));
  for await (const out of job.outputs()) {
    const c = acc[out.choice];
    if (!c || out.prompt !== 0) continue;
    c.content += out.text;
    if (out.type === 'delta') {
      if (c.logprobs && out.logprobs) for (const lp of toChatLogprobs(out.logprobs, logprobs ?? 0)) c.logprobs.push(lp);
    } else if (out.type === 'finish') {
      c.finishReason = out.reason;
    }
  }
  const choices: ChatChoice[] = acc.map((c, index) => ({
    index,
    message: { role, content: c.content, refusal: null },
    logprobs: c.logprobs ? { content: c.logprobs, refusal: null } : null,
    finish_reason: c.finishReason,
  }));
  return makeChatResponse(job.meta, choices, job.usage);
}

/**
 * Streams the job as OpenAI does: per choice a first chunk with the role (and, with `echo`, one
 * with the echoed content), one chunk per text delta, a last chunk per choice with its
 * finish_reason, then (with include_usage) a usage chunk with `choices: []`.
 */
export async function* chatChunks(job: CompletionJob, options: { includeUsage: boolean }): AsyncGenerator<ChatCompletionChunk, void, undefined> {
  const { n, logprobs, chat } = job.request;
  const { meta } = job;
  const usageField = options.includeUsage ? null : undefined;
  const role = chat?.role ?? 'assistant';
  for (let index = 0; index < n; index++) {
    yield makeChatChunk(meta, [{ index, delta: { role, content: '', refusal: null }, logprobs: null, finish_reason: null }], usageField);
    if (chat?.echo) yield makeChatChunk(meta, [{ index, delta: { content: chat.echo }, logprobs: null, finish_reason: null }], usageField);
  }
  const chatLogprobs = (records: TokenLogprob[] | null): ChatLogprobs | null =>
    logprobs !== null ? { content: toChatLogprobs(records ?? [], logprobs), refusal: null } : null;
  for await (const out of job.outputs()) {
    if (out.prompt !== 0) continue;
    if (out.type === 'delta') {
      const lp = chatLogprobs(out.logprobs);
      // Text held back by the engine (possible stop string) and no logprobs: nothing to send yet.
      if (out.text === '' && (lp === null || lp.content.length === 0)) continue;
      yield makeChatChunk(meta, [{ index: out.choice, delta: { content: out.text }, logprobs: lp, finish_reason: null }], usageField);
    } else if (out.type === 'finish') {
      const delta = out.text === '' ? {} : { content: out.text };
      yield makeChatChunk(meta, [{ index: out.choice, delta, logprobs: null, finish_reason: out.reason }], usageField);
    }
  }
  if (options.includeUsage) yield makeChatChunk(meta, [], job.usage);
}
