// The request body of POST /v1/responses (and of websocket `response.create`): the stateless part
// of OpenAI's Responses API, as vLLM and llama.cpp's server serve it. Input items are messages,
// function calls and their outputs; what needs stored state (previous_response_id, conversation,
// background) or that a GPT-2 server has no use for (reasoning, images, built-in tools) is a 400
// naming the field, never a silent drop.
import { z } from 'zod';
import { SamplingFields } from './completion-schema.js';
import { ShallowJsonObject } from './json-depth.js';
import { FunctionFields, MAX_TOOLS } from './tools.js';

const unsupported = { code: 'unsupported_parameter' } as const;

/** input_text (what users write) and output_text (earlier assistant turns sent back). */
const ContentPart = z
  .object({ type: z.string(), text: z.string().optional() })
  .superRefine((part, ctx) => {
    if (part.type !== 'input_text' && part.type !== 'output_text') {
      ctx.addIssue({ code: 'custom', path: ['type'], message: `"${part.type.slice(0, 40)}" content is not supported by this server (only "input_text" and "output_text")`, params: unsupported });
    } else if (typeof part.text !== 'string') {
      ctx.addIssue({ code: 'custom', path: ['text'], message: 'is required' });
    }
  });

const MessageItem = z.object({
  type: z.literal('message').optional(),
  role: z.enum(['user', 'assistant', 'system', 'developer']),
  content: z.union([z.string(), z.array(ContentPart)], { error: 'must be a string or an array of input_text parts' }),
  id: z.string().nullish(),
  status: z.string().nullish(),
});

const FunctionCallItem = z.object({
  type: z.literal('function_call'),
  call_id: z.string().min(1),
  name: z.string().min(1),
  arguments: z.string(),
  id: z.string().nullish(),
  status: z.string().nullish(),
});

const FunctionCallOutputItem = z.object({
  type: z.literal('function_call_output'),
  call_id: z.string().min(1),
  output: z.union([z.string(), z.array(ContentPart)], { error: 'must be a string or an array of input_text parts' }),
  id: z.string().nullish(),
  status: z.string().nullish(),
});

const ITEM_SCHEMAS = { message: MessageItem, function_call: FunctionCallItem, function_call_output: FunctionCallOutputItem } as const;

export type InputItem = z.output<typeof MessageItem> | z.output<typeof FunctionCallItem> | z.output<typeof FunctionCallOutputItem>;

/** One input item, checked by its `type` (a message may leave it out), with errors at its own fields. */
const InputItemSchema = z
  .looseObject({ type: z.string().optional() })
  .superRefine((item, ctx) => {
    const type = item.type ?? 'message';
    if (!Object.hasOwn(ITEM_SCHEMAS, type)) {
      ctx.addIssue({
        code: 'custom',
        path: ['type'],
        message: `"${type.slice(0, 40)}" items are not supported by this server (only "message", "function_call" and "function_call_output")`,
        params: unsupported,
      });
      return;
    }
    const parsed = ITEM_SCHEMAS[type as keyof typeof ITEM_SCHEMAS].safeParse(item, { reportInput: true });
    if (!parsed.success) for (const issue of parsed.error.issues) ctx.addIssue(issue as z.core.$ZodRawIssue);
  })
  .transform((item) => item as unknown as InputItem);

/** A function tool, the Responses shape (flat, unlike Chat's `{function: {...}}`). */
const ResponsesTool = z
  .looseObject({ type: z.string() })
  .superRefine((tool, ctx) => {
    if (tool.type !== 'function') {
      ctx.addIssue({ code: 'custom', path: ['type'], message: `"${tool.type.slice(0, 40)}" tools are not supported by this server (only "function")`, params: unsupported });
      return;
    }
    const parsed = z.object(FunctionFields).safeParse(tool, { reportInput: true });
    if (!parsed.success) for (const issue of parsed.error.issues) ctx.addIssue(issue as z.core.$ZodRawIssue);
  })
  .transform((tool) => tool as unknown as { type: 'function' } & z.output<z.ZodObject<typeof FunctionFields>>);

const ResponsesToolChoice = z.union([z.enum(['none', 'auto', 'required']), z.object({ type: z.literal('function'), name: z.string() })], {
  error: 'must be "none", "auto", "required" or {"type": "function", "name": ...}',
});

const TextFormat = z.discriminatedUnion(
  'type',
  [
    z.object({ type: z.literal('text') }),
    z.object({ type: z.literal('json_object') }),
    z.object({
      type: z.literal('json_schema'),
      name: z.string().nullish(),
      description: z.string().nullish(),
      schema: ShallowJsonObject,
      strict: z.boolean().nullish(),
    }),
  ],
  { error: 'must be {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "schema": ...}' },
);

/** Fields that need state this server does not keep, or that ask for what GPT-2 cannot do. */
const REFUSED: Record<string, string> = {
  previous_response_id: 'this server is stateless and stores no responses: send the whole conversation in `input`',
  conversation: 'this server is stateless and keeps no conversations: send the whole conversation in `input`',
  prompt: 'stored prompts are not supported by this server',
  context_management: 'is not supported by this server',
  max_tool_calls: 'is not supported by this server',
  top_logprobs: 'is not supported on /v1/responses by this server (use /v1/chat/completions for logprobs)',
};

export const ResponsesBodySchema = z
  .object({
    model: SamplingFields.model,
    input: z.union([z.string(), z.array(InputItemSchema).min(1)], { error: 'must be a string or an array of input items' }),
    instructions: z.string().nullish(),
    max_output_tokens: z.number().int().min(1).nullish(),
    temperature: SamplingFields.temperature,
    top_p: SamplingFields.top_p,
    // vLLM's extras, as on its /v1/responses
    seed: SamplingFields.seed,
    top_k: SamplingFields.top_k,
    min_p: SamplingFields.min_p,
    repetition_penalty: SamplingFields.repetition_penalty,
    cache_salt: SamplingFields.cache_salt,
    priority: SamplingFields.priority,
    ignore_eos: SamplingFields.ignore_eos,
    tools: z.array(ResponsesTool).max(MAX_TOOLS).nullish(),
    tool_choice: ResponsesToolChoice.nullish(),
    parallel_tool_calls: z.boolean().nullish(),
    text: z.object({ format: TextFormat.nullish(), verbosity: z.string().nullish() }).nullish(),
    stream: z.boolean().nullish(),
    stream_options: z.object({ include_obfuscation: z.boolean().nullish() }).nullish(),
    store: z.boolean().nullish(),
    background: z.boolean().nullish(),
    metadata: z.record(z.string(), z.string()).nullish(),
    user: z.string().nullish(),
    safety_identifier: z.string().nullish(),
    prompt_cache_key: z.string().nullish(),
    service_tier: z.string().nullish(),
    truncation: z.enum(['auto', 'disabled']).nullish(),
    reasoning: z.object({ effort: z.string().nullish(), summary: z.string().nullish(), generate_summary: z.string().nullish() }).nullish(),
    include: z.array(z.string()).nullish(),
    ...Object.fromEntries(Object.keys(REFUSED).map((f) => [f, z.unknown().optional()])),
  })
  .superRefine((body, ctx) => {
    const b = body as Record<string, unknown>;
    for (const [field, why] of Object.entries(REFUSED)) {
      if (b[field] != null) ctx.addIssue({ code: 'custom', path: [field], message: why, params: unsupported });
    }
    if (body.background === true) ctx.addIssue({ code: 'custom', path: ['background'], message: 'background responses need stored state; this server is stateless', params: unsupported });
    if (body.truncation === 'auto') {
      ctx.addIssue({ code: 'custom', path: ['truncation'], message: '"auto" (dropping earlier input to fit) is not supported; the request must fit the context', params: unsupported });
    }
    const r = body.reasoning;
    if (r != null && (r.effort != null || r.summary != null || r.generate_summary != null)) {
      ctx.addIssue({ code: 'custom', path: ['reasoning'], message: 'this model does not reason', params: unsupported });
    }
    // Reasoning content is never produced, so asking to include it is harmless; anything else is not served.
    const other = (body.include ?? []).find((i) => i !== 'reasoning.encrypted_content');
    if (other !== undefined) ctx.addIssue({ code: 'custom', path: ['include'], message: `"${other.slice(0, 60)}" is not supported by this server`, params: unsupported });
    if (body.stream_options != null && body.stream !== true) {
      ctx.addIssue({ code: 'custom', path: ['stream_options'], message: 'is only allowed when `stream` is true' });
    }
  });

export type ResponsesBody = z.output<typeof ResponsesBodySchema>;
export type ResponsesTool = NonNullable<ResponsesBody['tools']>[number];
