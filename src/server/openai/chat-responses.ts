// OpenAI response shapes of the Chat Completions API (`chat.completion`, `chat.completion.chunk`)
// and the helpers that build them. Key order follows OpenAI's own responses.
import type { TokenLogprob } from '../../engine/types.js';
import type { CompletionUsage, ResponseMeta } from './responses.js';

export interface ChatTopLogprob {
  token: string;
  logprob: number;
  /** UTF-8 bytes of `token`. */
  bytes: number[];
}

export interface ChatTokenLogprob extends ChatTopLogprob {
  top_logprobs: ChatTopLogprob[];
}

export interface ChatLogprobs {
  content: ChatTokenLogprob[];
  refusal: null;
}

export interface ChatMessageOut {
  role: string;
  content: string;
  refusal: null;
}

export interface ChatChoice {
  index: number;
  message: ChatMessageOut;
  logprobs: ChatLogprobs | null;
  finish_reason: 'stop' | 'length';
}

export interface ChatCompletionResponse {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: ChatChoice[];
  usage: CompletionUsage;
}

export interface ChatDelta {
  role?: string;
  content?: string;
  refusal?: null;
}

export interface ChatChunkChoice {
  index: number;
  delta: ChatDelta;
  logprobs: ChatLogprobs | null;
  finish_reason: 'stop' | 'length' | null;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: ChatChunkChoice[];
  /** Present (null, or the totals in the last chunk) only with `stream_options.include_usage`. */
  usage?: CompletionUsage | null;
}

/** Engine logprob records in chat's shape, with the `top` most likely alternatives per token. */
export function toChatLogprobs(records: TokenLogprob[], top: number): ChatTokenLogprob[] {
  return records.map((r) => ({
    token: r.token,
    logprob: r.logprob ?? 0,
    bytes: utf8Bytes(r.token),
    top_logprobs: r.top.slice(0, top).map((alt) => ({ token: alt.token, logprob: alt.logprob, bytes: utf8Bytes(alt.token) })),
  }));
}

function utf8Bytes(s: string): number[] {
  return Array.from(Buffer.from(s, 'utf8'));
}

export function makeChatResponse(meta: ResponseMeta, choices: ChatChoice[], usage: CompletionUsage): ChatCompletionResponse {
  return { id: meta.id, object: 'chat.completion', created: meta.created, model: meta.model, system_fingerprint: meta.systemFingerprint, choices, usage };
}

export function makeChatChunk(meta: ResponseMeta, choices: ChatChunkChoice[], usage?: CompletionUsage | null): ChatCompletionChunk {
  const chunk: ChatCompletionChunk = {
    id: meta.id,
    object: 'chat.completion.chunk',
    created: meta.created,
    model: meta.model,
    system_fingerprint: meta.systemFingerprint,
    choices,
  };
  if (usage !== undefined) chunk.usage = usage;
  return chunk;
}
