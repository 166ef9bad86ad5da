// OpenAI's Responses API shapes: the `response` object, its output items, and the streamed
// events. Key order follows OpenAI's own responses.
import type { ResponsesBody, ResponsesTool } from './responses-schema.js';
import type { CompletionUsage } from './responses.js';

export interface OutputText {
  type: 'output_text';
  text: string;
  annotations: [];
  logprobs: [];
}

export type ItemStatus = 'in_progress' | 'completed' | 'incomplete';

export interface MessageItem {
  id: string;
  type: 'message';
  status: ItemStatus;
  role: 'assistant';
  content: OutputText[];
}

export interface FunctionCallItem {
  id: string;
  type: 'function_call';
  status: ItemStatus;
  arguments: string;
  call_id: string;
  name: string;
}

export type OutputItem = MessageItem | FunctionCallItem;

export interface ResponseUsage {
  input_tokens: number;
  input_tokens_details: { cached_tokens: number };
  output_tokens: number;
  output_tokens_details: { reasoning_tokens: number };
  total_tokens: number;
}

/** The request's settings as a response repeats them (with the defaults that applied). */
export interface ResponseSettings {
  instructions: string | null;
  max_output_tokens: number | null;
  parallel_tool_calls: boolean;
  temperature: number;
  text: { format: NonNullable<NonNullable<ResponsesBody['text']>['format']> };
  tool_choice: NonNullable<ResponsesBody['tool_choice']>;
  tools: ResponsesTool[];
  top_p: number;
  metadata: Record<string, string>;
  user: string | null;
}

export interface ResponseObject {
  id: string;
  object: 'response';
  created_at: number;
  status: 'in_progress' | 'completed' | 'incomplete';
  background: false;
  error: null;
  incomplete_details: { reason: 'max_output_tokens' } | null;
  instructions: string | null;
  max_output_tokens: number | null;
  model: string;
  output: OutputItem[];
  parallel_tool_calls: boolean;
  previous_response_id: null;
  reasoning: { effort: null; summary: null };
  /** Always false: this server is stateless, whatever the request asked. */
  store: false;
  temperature: number;
  text: ResponseSettings['text'];
  tool_choice: ResponseSettings['tool_choice'];
  tools: ResponsesTool[];
  top_p: number;
  truncation: 'disabled';
  usage: ResponseUsage | null;
  user: string | null;
  metadata: Record<string, string>;
}

export function responseSettings(body: ResponsesBody): ResponseSettings {
  return {
    instructions: body.instructions ?? null,
    max_output_tokens: body.max_output_tokens ?? null,
    parallel_tool_calls: body.parallel_tool_calls ?? true,
    temperature: body.temperature ?? 1,
    text: { format: body.text?.format ?? { type: 'text' } },
    tool_choice: body.tool_choice ?? 'auto',
    tools: body.tools ?? [],
    top_p: body.top_p ?? 1,
    metadata: body.metadata ?? {},
    user: body.user ?? null,
  };
}

export function makeResponseObject(
  head: { id: string; createdAt: number; model: string },
  settings: ResponseSettings,
  state: { status: ResponseObject['status']; output: OutputItem[]; usage: CompletionUsage | null },
): ResponseObject {
  return {
    id: head.id,
    object: 'response',
    created_at: head.createdAt,
    status: state.status,
    background: false,
    error: null,
    incomplete_details: state.status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
    instructions: settings.instructions,
    max_output_tokens: settings.max_output_tokens,
    model: head.model,
    output: state.output,
    parallel_tool_calls: settings.parallel_tool_calls,
    previous_response_id: null,
    reasoning: { effort: null, summary: null },
    store: false,
    temperature: settings.temperature,
    text: settings.text,
    tool_choice: settings.tool_choice,
    tools: settings.tools,
    top_p: settings.top_p,
    truncation: 'disabled',
    usage: state.usage && responseUsage(state.usage),
    user: settings.user,
    metadata: settings.metadata,
  };
}

function responseUsage(u: CompletionUsage): ResponseUsage {
  return {
    input_tokens: u.prompt_tokens,
    input_tokens_details: { cached_tokens: u.prompt_tokens_details?.cached_tokens ?? 0 },
    output_tokens: u.completion_tokens,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: u.total_tokens,
  };
}

/** A streamed event: its `type` (also the SSE event name), its fields, and its place in the stream. */
export type ResponseEvent = { type: string; sequence_number: number } & Record<string, unknown>;
