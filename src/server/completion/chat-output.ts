// Turns a chat job's outputs into OpenAI's chat shapes: the whole `chat.completion`, or the
// stream of `chat.completion.chunk`s (SSE and websocket share it). Chat has one prompt (the
// rendered conversation), so a choice's index is its engine choice. With tools, each choice's
// text goes through a ToolCallParser: calls become `tool_calls`, the rest `content`.
import type { TokenLogprob } from '../../engine/types.js';
import {
  makeChatChunk,
  makeChatResponse,
  toChatLogprobs,
  type ChatChoice,
  type ChatCompletionChunk,
  type ChatCompletionResponse,
  type ChatDelta,
  type ChatFinishReason,
  type ChatLogprobs,
  type ChatTokenLogprob,
  type ChatToolCall,
  type ChatToolCallDelta,
} from '../openai/chat-responses.js';
import type { CompletionJob } from './job.js';
import { textEvents, toolCallId, ToolCallParser, type ToolCallEvent } from './tool-call-parser.js';

/** Runs the job to the end and builds the non-streaming response. */
export async function collectChat(job: CompletionJob): Promise<ChatCompletionResponse> {
  const { n, logprobs, chat } = job.request;
  const role = chat?.role ?? 'assistant';
  const acc = Array.from({ length: n }, () => ({
    content: chat?.echo ?? '',
    calls: [] as ChatToolCall[],
    parser: chat?.toolCalls ? new ToolCallParser() : null,
    logprobs: logprobs !== null ? ([] as ChatTokenLogprob[]) : null,
    finishReason: 'length' as ChatFinishReason,
  }));
  for await (const out of job.outputs()) {
    const c = acc[out.choice];
    if (!c || out.prompt !== 0) continue;
    for (const e of textEvents(c.parser, out.text, out.type === 'finish')) {
      if (e.type === 'content') c.content += e.text;
      else if (e.type === 'call') c.calls.push({ id: toolCallId(job.meta.id, out.choice, e.index), type: 'function', function: { name: e.name, arguments: '' } });
      else c.calls[e.index]!.function.arguments += e.text;
    }
    if (out.type === 'delta') {
      if (c.logprobs && out.logprobs) for (const lp of toChatLogprobs(out.logprobs, logprobs ?? 0)) c.logprobs.push(lp);
    } else if (out.type === 'finish') {
      c.finishReason = finishReason(out.reason, c.calls.length);
    }
  }
  const choices: ChatChoice[] = acc.map((c, index) => ({
    index,
    message:
      c.calls.length > 0
        ? { role, content: c.content === '' ? null : c.content, refusal: null, tool_calls: c.calls }
        : { role, content: c.content, refusal: null },
    logprobs: c.logprobs ? { content: c.logprobs, refusal: null } : null,
    finish_reason: c.finishReason,
  }));
  return makeChatResponse(job.meta, choices, job.usage);
}

/**
 * Streams the job as OpenAI does: per choice a first chunk with the role (and, with `echo`, one
 * with the echoed content), one chunk per text delta (with tools: per piece of content or of a
 * call, which the official clients assemble by `index`), a last chunk per choice with its
 * finish_reason, then (with include_usage) a usage chunk with `choices: []`.
 */
export async function* chatChunks(job: CompletionJob, options: { includeUsage: boolean }): AsyncGenerator<ChatCompletionChunk, void, undefined> {
  const { n, logprobs, chat } = job.request;
  const { meta } = job;
  const usageField = options.includeUsage ? null : undefined;
  const role = chat?.role ?? 'assistant';
  const parsers = Array.from({ length: n }, () => (chat?.toolCalls ? new ToolCallParser() : null));
  for (let index = 0; index < n; index++) {
    yield makeChatChunk(meta, [{ index, delta: { role, content: '', refusal: null }, logprobs: null, finish_reason: null }], usageField);
    if (chat?.echo) yield makeChatChunk(meta, [{ index, delta: { content: chat.echo }, logprobs: null, finish_reason: null }], usageField);
  }
  const chatLogprobs = (records: TokenLogprob[] | null): ChatLogprobs | null =>
    logprobs !== null ? { content: toChatLogprobs(records ?? [], logprobs), refusal: null } : null;
  for await (const out of job.outputs()) {
    if (out.prompt !== 0) continue;
    const parser = parsers[out.choice] ?? null;
    const delta = chatDelta(textEvents(parser, out.text, out.type === 'finish'), meta.id, out.choice);
    if (out.type === 'delta') {
      const lp = chatLogprobs(out.logprobs);
      // Text held back (a possible stop string, a call's unfinished name) and no logprobs: nothing to send yet.
      if (delta === null && (lp === null || lp.content.length === 0)) continue;
      yield makeChatChunk(meta, [{ index: out.choice, delta: delta ?? {}, logprobs: lp, finish_reason: null }], usageField);
    } else if (out.type === 'finish') {
      const reason = finishReason(out.reason, parser?.callCount ?? 0);
      yield makeChatChunk(meta, [{ index: out.choice, delta: delta ?? {}, logprobs: null, finish_reason: reason }], usageField);
    }
  }
  if (options.includeUsage) yield makeChatChunk(meta, [], job.usage);
}

/** One chunk's delta for a piece of text's events (pieces of one call merged), or null if none. */
function chatDelta(events: ToolCallEvent[], responseId: string, choice: number): ChatDelta | null {
  if (events.length === 0) return null;
  let content: string | undefined;
  const calls: ChatToolCallDelta[] = [];
  for (const e of events) {
    if (e.type === 'content') content = (content ?? '') + e.text;
    else if (e.type === 'call') calls.push({ index: e.index, id: toolCallId(responseId, choice, e.index), type: 'function', function: { name: e.name, arguments: '' } });
    else {
      const last = calls[calls.length - 1];
      if (last?.index === e.index) last.function.arguments += e.text;
      else calls.push({ index: e.index, function: { arguments: e.text } });
    }
  }
  const delta: ChatDelta = {};
  if (content !== undefined) delta.content = content;
  if (calls.length > 0) delta.tool_calls = calls;
  return delta;
}

/** A choice that called tools and ended on its own finished with `tool_calls`. */
function finishReason(reason: 'stop' | 'length', calls: number): ChatFinishReason {
  return reason === 'stop' && calls > 0 ? 'tool_calls' : reason;
}
