// The request body of POST /v1/completions (and of websocket `completion.create`), with OpenAI's
// exact field names plus the vLLM extras. Ranges follow OpenAI's API reference and vLLM where
// OpenAI is silent; checks that need the model (vocabulary, context length) live in
// completion-request.ts. Unknown fields are stripped (ignored), as OpenAI-compatible servers do.
import { z } from 'zod';
import { ShallowJsonObject } from './json-depth.js';

const PROMPT_SHAPE =
  'must be a string, an array of strings, an array of token ids, or an array of token-id arrays';

const tokenIds = z.array(z.number().int());

/**
 * string | string[] | number[] | number[][]; null or absent means "<|endoftext|>" (OpenAI's
 * default). Token-id lists are never empty (OpenAI's schema: minItems 1); an empty string is
 * allowed and, like OpenAI, generates from "<|endoftext|>".
 */
export const PromptSchema = z.union(
  [z.string(), z.array(z.string()).min(1), tokenIds.min(1), z.array(tokenIds.min(1)).min(1)],
  { error: PROMPT_SHAPE },
);

/** A single string is one stop sequence; at most 4, none empty. */
export const StopSchema = z.preprocess(
  (v) => (typeof v === 'string' ? [v] : v),
  z.array(z.string().min(1)).max(4),
);

const JsonSchemaValue = z.union([ShallowJsonObject, z.boolean()], { error: 'must be a JSON Schema (an object)' });

/**
 * Structured outputs, in OpenAI's spelling (`response_format`) and vLLM's (`guided_*`, and the
 * newer `structured_outputs`). Shared by every endpoint that samples text; at most one may be
 * given (structured-output.ts turns them into one API-neutral constraint).
 */
export const structuredOutputFields = {
  response_format: z
    .discriminatedUnion('type', [
      z.object({ type: z.literal('text') }),
      z.object({ type: z.literal('json_object') }),
      z.object({
        type: z.literal('json_schema'),
        json_schema: z.object({
          name: z.string().max(64).regex(/^[A-Za-z0-9_-]+$/, 'must be a-z, A-Z, 0-9, underscores and dashes').optional(),
          description: z.string().nullish(),
          schema: JsonSchemaValue.nullish(),
          strict: z.boolean().nullish(),
        }),
      }),
    ], { error: '`type` must be one of text, json_object, json_schema' })
    .nullish(),
  guided_json: z.union([z.string(), JsonSchemaValue]).nullish(),
  guided_regex: z.string().nullish(),
  guided_choice: z.array(z.string()).min(1).max(1024).nullish(),
  guided_grammar: z.string().nullish(),
  structured_outputs: z
    .object({
      json: z.union([z.string(), JsonSchemaValue]).nullish(),
      regex: z.string().nullish(),
      choice: z.array(z.string()).min(1).max(1024).nullish(),
      grammar: z.string().nullish(),
      json_object: z.boolean().nullish(),
    })
    .nullish(),
};

/**
 * The generation fields both APIs share (Completions and Chat Completions take them with the same
 * names, ranges and defaults). A field added here reaches both request schemas; fields of one
 * API only go in its own schema (below, and chat-schema.ts).
 */
export const SamplingFields = {
  model: z.string(),
  max_tokens: z.number().int().min(0).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  n: z.number().int().min(1).max(128).nullish(),
  stream: z.boolean().nullish(),
  stream_options: z
    .object({ include_usage: z.boolean().nullish(), continuous_usage_stats: z.boolean().nullish() })
    .nullish(),
  stop: StopSchema.nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  logit_bias: z.record(z.string(), z.number().min(-100).max(100)).nullish(),
  seed: z.number().int().nullish(),
  user: z.string().nullish(),
  // vLLM extras
  top_k: z.number().int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).max(2).nullish(),
  min_tokens: z.number().int().min(0).nullish(),
  ignore_eos: z.boolean().nullish(),
  stop_token_ids: z.array(z.number().int().min(0)).nullish(),
  // vLLM: prefix-cache entries are shared only between requests with the same salt.
  cache_salt: z.string().min(1).max(256).nullish(),
  // vLLM's: lower is scheduled first, within the request's tenant; non-zero only with --scheduling-policy priority.
  priority: z.number().int().min(-(2 ** 31)).max(2 ** 31 - 1).nullish(),
  ...structuredOutputFields,
};

const SamplingFieldsSchema = z.object(SamplingFields);
type SamplingFieldsBody = z.output<typeof SamplingFieldsSchema>;

/** Cross-field checks of the shared fields; each API's schema runs them in its superRefine. */
export function refineSamplingFields(body: SamplingFieldsBody, ctx: z.RefinementCtx, maxTokens = body.max_tokens): void {
  if (body.stream_options != null && body.stream !== true) {
    ctx.addIssue({ code: 'custom', path: ['stream_options'], message: 'is only allowed when `stream` is true' });
  }
  if (body.min_tokens != null && maxTokens != null && body.min_tokens > maxTokens) {
    ctx.addIssue({ code: 'custom', path: ['min_tokens'], message: `must be <= \`max_tokens\` (${maxTokens})` });
  }
  if (body.logit_bias != null) {
    for (const key of Object.keys(body.logit_bias)) {
      if (!/^(0|[1-9]\d{0,9})$/.test(key)) {
        ctx.addIssue({ code: 'custom', path: ['logit_bias', key], message: 'keys must be token ids (non-negative integers)' });
        break;
      }
    }
  }
}

export const CompletionBodySchema = z
  .object({
    ...SamplingFields,
    prompt: PromptSchema.nullish(),
    suffix: z.string().nullish(),
    best_of: z.number().int().min(1).max(128).nullish(),
    logprobs: z.number().int().min(0).max(20).nullish(),
    echo: z.boolean().nullish(),
  })
  .superRefine((body, ctx) => {
    if (body.suffix != null) {
      ctx.addIssue({
        code: 'custom',
        path: ['suffix'],
        message: 'is not supported by this server',
        params: { code: 'unsupported_parameter' },
      });
    }
    const n = body.n ?? 1;
    if (body.best_of != null && body.best_of < n) {
      ctx.addIssue({ code: 'custom', path: ['best_of'], message: `must be >= \`n\` (${n})` });
    }
    if (body.stream === true && body.best_of != null && body.best_of > n) {
      ctx.addIssue({
        code: 'custom',
        path: ['best_of'],
        message: 'cannot be streamed: with `stream` it must equal `n` or be omitted',
        params: { code: 'unsupported_parameter' },
      });
    }
    refineSamplingFields(body, ctx);
  });

export type CompletionBody = z.output<typeof CompletionBodySchema>;

export const TokenizeBodySchema = z.object({
  model: z.string().nullish(),
  prompt: z.string(),
  add_special_tokens: z.boolean().nullish(),
});

export const DetokenizeBodySchema = z.object({
  model: z.string().nullish(),
  tokens: z.array(z.number().int().min(0)),
});
