// The request body of POST /v1/chat/completions (and of websocket `chat.completion.create`):
// OpenAI's fields, vLLM's chat extras, and the generation fields shared with Completions, taken
// from completion-schema.ts's SamplingFields so that a field added there reaches chat too. What
// this server cannot do (images, audio, the legacy `functions`) is a 400 `unsupported_parameter`
// naming the field, never a silent drop.
import { z } from 'zod';
import { refineSamplingFields, SamplingFields } from './completion-schema.js';
import { ShallowJsonObject } from './json-depth.js';
import { FunctionFields, MAX_TOOLS } from './tools.js';

const unsupported = { code: 'unsupported_parameter' } as const;

/** A text part; any other part type (image_url, input_audio, file) is refused with its name. */
const ContentPart = z
  .object({ type: z.string(), text: z.string().optional() })
  .superRefine((part, ctx) => {
    if (part.type !== 'text') {
      ctx.addIssue({ code: 'custom', path: ['type'], message: 'only "text" content parts are supported by this server (no images, audio or files)', params: unsupported });
    } else if (typeof part.text !== 'string') {
      ctx.addIssue({ code: 'custom', path: ['text'], message: 'is required for a text part' });
    }
  });

/** A call the assistant made earlier in the conversation (OpenAI's shape). */
const AssistantToolCall = z.object({
  id: z.string(),
  type: z.literal('function'),
  function: z.object({ name: z.string(), arguments: z.string() }),
});

const Message = z
  .object({
    role: z.string(),
    content: z.union([z.string(), z.array(ContentPart).min(1)], { error: 'must be a string or an array of text parts' }).nullish(),
    name: z.string().nullish(),
    tool_calls: z.array(AssistantToolCall).nullish(),
    tool_call_id: z.string().nullish(),
    function_call: z.unknown().optional(),
    audio: z.unknown().optional(),
  })
  .superRefine((m, ctx) => {
    if (m.role === 'function') {
      ctx.addIssue({ code: 'custom', path: ['role'], message: '"function" messages (the legacy functions API) are not supported; use tools and "tool" messages', params: unsupported });
      return;
    }
    if (!['system', 'developer', 'user', 'assistant', 'tool'].includes(m.role)) {
      ctx.addIssue({ code: 'custom', path: ['role'], message: 'must be one of "system", "developer", "user", "assistant", "tool"' });
      return;
    }
    for (const field of ['function_call', 'audio'] as const) {
      if (m[field] != null) ctx.addIssue({ code: 'custom', path: [field], message: 'is not supported by this server', params: unsupported });
    }
    if (m.tool_calls != null && m.role !== 'assistant') ctx.addIssue({ code: 'custom', path: ['tool_calls'], message: 'only assistant messages carry tool calls' });
    if (m.role === 'tool' && m.tool_call_id == null) ctx.addIssue({ code: 'custom', path: ['tool_call_id'], message: 'is required in a "tool" message' });
    const mayBeEmpty = m.role === 'assistant';
    if (m.content == null && !mayBeEmpty) ctx.addIssue({ code: 'custom', path: ['content'], message: 'is required' });
  });

/** A function tool, OpenAI Chat's shape. */
const ChatTool = z.object({ type: z.literal('function'), function: z.object(FunctionFields) });

const ChatToolChoice = z.union(
  [z.enum(['none', 'auto', 'required']), z.object({ type: z.literal('function'), function: z.object({ name: z.string() }) })],
  { error: 'must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}' },
);

/** Request fields that ask for what this server does not do: refused when set (not null). */
const UNSUPPORTED_FIELDS = ['functions', 'function_call', 'audio', 'prediction', 'web_search_options'] as const;

export const ChatBodySchema = z
  .object({
    ...SamplingFields,
    messages: z.array(Message).min(1),
    max_completion_tokens: z.number().int().min(0).nullish(),
    logprobs: z.boolean().nullish(),
    top_logprobs: z.number().int().min(0).max(20).nullish(),
    modalities: z.array(z.string()).nullish(),
    tools: z.array(ChatTool).max(MAX_TOOLS).nullish(),
    tool_choice: ChatToolChoice.nullish(),
    parallel_tool_calls: z.boolean().nullish(),
    ...Object.fromEntries(UNSUPPORTED_FIELDS.map((f) => [f, z.unknown().optional()])),
    // vLLM extras of chat
    echo: z.boolean().nullish(),
    add_generation_prompt: z.boolean().nullish(),
    continue_final_message: z.boolean().nullish(),
    chat_template_kwargs: ShallowJsonObject.nullish(),
  })
  .superRefine((body, ctx) => {
    const b = body as Record<string, unknown>;
    for (const field of UNSUPPORTED_FIELDS) {
      if (b[field] != null) ctx.addIssue({ code: 'custom', path: [field], message: 'is not supported by this server', params: unsupported });
    }
    if (body.modalities != null && body.modalities.some((m) => m !== 'text')) {
      ctx.addIssue({ code: 'custom', path: ['modalities'], message: 'only "text" is supported by this server', params: unsupported });
    }
    if (body.top_logprobs != null && body.logprobs !== true) {
      ctx.addIssue({ code: 'custom', path: ['top_logprobs'], message: 'requires `logprobs` to be true' });
    }
    if (body.add_generation_prompt === true && body.continue_final_message === true) {
      ctx.addIssue({
        code: 'custom',
        path: ['continue_final_message'],
        message: 'cannot be true together with `add_generation_prompt` (set add_generation_prompt to false to continue the final message)',
      });
    }
    refineSamplingFields(body, ctx, body.max_completion_tokens ?? body.max_tokens);
  });

export type ChatBody = z.output<typeof ChatBodySchema>;
export type ChatMessage = ChatBody['messages'][number];
