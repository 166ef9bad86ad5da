// OpenAI response shapes of the Chat Completions API (`chat.completion`, `chat.completion.chunk`)
// and the helpers that build them. Key order follows OpenAI's own responses.
import type { LogprobToken, TokenLogprob } from '../../engine/types.js';
import { pythonBytesRepr } from '../../model/tokenizer.js';
import type { CompletionUsage, ResponseMeta } from './responses.js';

export interface ChatTopLogprob {
  token: string;
  logprob: number;
  /** The token's raw bytes (those of `token`'s text unless it is part of a character). */
  bytes: number[];
}

export interface ChatTokenLogprob extends ChatTopLogprob {
  top_logprobs: ChatTopLogprob[];
}

export interface ChatLogprobs {
  content: ChatTokenLogprob[];
  refusal: null;
}

export type ChatFinishReason = 'stop' | 'length' | 'tool_calls';

export interface ChatToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export interface ChatMessageOut {
  role: string;
  /** null when the message is only tool calls, as OpenAI's. */
  content: string | null;
  refusal: null;
  /** Present only when the model called tools. */
  tool_calls?: ChatToolCall[];
}

export interface ChatChoice {
  index: number;
  message: ChatMessageOut;
  logprobs: ChatLogprobs | null;
  finish_reason: ChatFinishReason;
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

/** A piece of a streamed call: the first carries `id`, `type` and the name, the rest arguments. */
export interface ChatToolCallDelta {
  index: number;
  id?: string;
  type?: 'function';
  function: { name?: string; arguments: string };
}

export interface ChatDelta {
  role?: string;
  content?: string;
  refusal?: null;
  tool_calls?: ChatToolCallDelta[];
}

export interface ChatChunkChoice {
  index: number;
  delta: ChatDelta;
  logprobs: ChatLogprobs | null;
  finish_reason: ChatFinishReason | null;
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
    ...chatToken(r, r.logprob ?? 0),
    top_logprobs: r.top.slice(0, top).map((alt) => chatToken(alt, alt.logprob)),
  }));
}

/**
 * As OpenAI's chat names a token: `bytes` are its raw bytes, so that a character split over tokens
 * is whole again when they are concatenated; a token that is only part of a character shows them
 * as `\xNN` escapes (legacy completions' `bytes:` placeholder, without the prefix).
 */
function chatToken(t: LogprobToken, logprob: number): ChatTopLogprob {
  if (t.bytes) return { token: pythonBytesRepr(t.bytes), logprob, bytes: t.bytes };
  return { token: t.token, logprob, bytes: Array.from(Buffer.from(t.token, 'utf8')) };
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
