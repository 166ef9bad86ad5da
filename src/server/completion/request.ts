// Validate at the edge into a distinct type: a parsed body plus the model becomes a
// ValidCompletionRequest (defaults resolved, prompts tokenized, vocabulary, context length and KV
// capacity checked), from which the engine requests are built. The engine only asserts these.
//
// Order matters for a server under attack: every check that costs O(1) per prompt runs before
// the one costly step, tokenization, which runs off the main thread (engine.encode).
import type { EngineClient, ModelInfo, SamplingParams } from '../../engine/types.js';
import { END_OF_TEXT } from '../../model/tokenizer.js';
import type { CompletionBody } from '../openai/completion-schema.js';
import type { ConstraintSpec } from '../../structured/constraint.js';
import { ApiError } from '../openai/errors.js';
import { compileStructuredOutput, structuredOutputSpec } from '../openai/structured-output.js';

export const DEFAULT_MAX_TOKENS = 16;

export interface ResolvedPrompt {
  tokens: number[];
  /** Text echoed back with `echo` (the string as sent, or the detokenized ids); '' without echo. */
  text: string;
  /** max_tokens for this prompt (explicit, default 16, or what the context leaves when null). */
  maxTokens: number;
}

export interface ValidCompletionRequest {
  prompts: ResolvedPrompt[];
  /** Choices returned per prompt. */
  n: number;
  /** Choices generated per prompt (>= n); the n with the best cumulative logprob are returned. */
  bestOf: number;
  stream: boolean;
  includeUsage: boolean;
  echo: boolean;
  logprobs: number | null;
  /** Engine sampling settings except maxTokens, which is per prompt. */
  params: Omit<SamplingParams, 'maxTokens'>;
  /** Set for a chat completion (see chat-request.ts). */
  chat?: ChatDetails;
  /** The request's `cache_salt`: the job adds it to the tenant's EngineRequest.cacheKeys. */
  cacheSalt?: string;
}

export interface ChatDetails {
  /** The role of the generated message ("assistant", or the final message's when it is continued). */
  role: string;
  /** With `echo`: the final message's content, which starts every choice's content; else null. */
  echo: string | null;
  /** The output may hold tool calls (TOOL_CALL_FORMAT), to be returned as `tool_calls`. */
  toolCalls: boolean;
}

export interface ResolveOptions {
  forceStream?: boolean;
  /** The constraint decided by the caller (chat's tools), instead of the body's structured output. */
  constraint?: ConstraintSpec | null;
}

type RawPrompt = string | number[];

export async function resolveCompletionRequest(
  body: CompletionBody,
  engine: EngineClient,
  options: ResolveOptions = {},
): Promise<ValidCompletionRequest> {
  // `model` was checked at admission (start.ts), where an adapter's name is leased.
  const model = engine.model;
  const echo = body.echo ?? false;
  const n = body.n ?? 1;
  const bestOf = body.best_of ?? n;
  const logprobs = body.logprobs ?? null;
  const stream = options.forceStream ?? body.stream ?? false;

  if (body.stop_token_ids) checkTokenIds(body.stop_token_ids, model.vocabSize, 'stop_token_ids');
  const logitBias = resolveLogitBias(body.logit_bias, model.vocabSize);

  // The prompt count, like the other limits on fan-out, was checked before admission (checkFanOut).
  const raw = promptList(body);
  const where = (i: number) => (raw.length > 1 ? `prompt[${i}]: ` : '');
  const singleIdList = Array.isArray(body.prompt) && typeof body.prompt[0] === 'number';
  // Refuse what cannot fit before tokenizing: a text of L UTF-16 units has at least L UTF-8 bytes,
  // and no token covers more than maxTokenBytes bytes, so it encodes to >= ceil(L / maxTokenBytes)
  // tokens. A prompt that cannot fit the context thus costs no BPE at all. (Bodies larger still
  // never get here: the body limit, --max-body-bytes, refuses them before they are parsed.)
  raw.forEach((p, i) => {
    const atLeast = typeof p === 'string' ? Math.ceil(p.length / model.maxTokenBytes) : p.length;
    checkLength(model, atLeast, body.max_tokens, where(i), typeof p === 'string');
    if (typeof p !== 'string') checkTokenIds(p, model.vocabSize, singleIdList ? 'prompt' : `prompt[${i}]`, 'prompt');
  });

  const minTokens = body.min_tokens ?? 0;
  if (body.max_tokens !== null) checkMinTokens(minTokens, body.max_tokens ?? DEFAULT_MAX_TOKENS);

  const constraintSpec = options.constraint !== undefined ? options.constraint : structuredOutputSpec(body);
  if (constraintSpec && body.ignore_eos) {
    throw new ApiError('invalid_value', '`ignore_eos`: cannot be combined with a structured output (its end is where the output is complete)', 'ignore_eos');
  }
  const [tokenized, constraint] = await Promise.all([tokenizePrompts(raw, engine, echo), compileStructuredOutput(constraintSpec, engine)]);
  const prompts: ResolvedPrompt[] = tokenized.map((p, i) => ({
    ...p,
    maxTokens: checkLength(model, p.tokens.length, body.max_tokens, where(i), false),
  }));

  for (const p of prompts) checkMinTokens(minTokens, p.maxTokens);

  const topK = body.top_k ?? 0;
  return {
    prompts,
    n,
    bestOf,
    stream,
    includeUsage: stream && (body.stream_options?.include_usage ?? false),
    echo,
    logprobs,
    ...(body.cache_salt ? { cacheSalt: body.cache_salt } : {}),
    params: {
      minTokens,
      temperature: body.temperature ?? 1,
      topP: body.top_p ?? 1,
      topK: topK === -1 ? 0 : topK,
      minP: body.min_p ?? 0,
      presencePenalty: body.presence_penalty ?? 0,
      frequencyPenalty: body.frequency_penalty ?? 0,
      repetitionPenalty: body.repetition_penalty ?? 1,
      logitBias,
      seed: body.seed ?? null,
      logprobs,
      echo,
      stop: body.stop ?? [],
      stopTokenIds: body.stop_token_ids ?? [],
      ignoreEos: body.ignore_eos ?? false,
      n: bestOf,
      constraint,
    },
  };
}

/** The four prompt shapes as a list; null or absent is one empty string (see tokenizePrompts). */
function promptList(body: CompletionBody): RawPrompt[] {
  const raw = body.prompt;
  if (raw == null) return [''];
  if (typeof raw === 'string') return [raw];
  if (typeof raw[0] === 'number') return [raw as number[]];
  return raw as RawPrompt[];
}

/**
 * Checks `promptTokens` (exact, or a lower bound when `lowerBound`) against the context and the
 * KV cache, and returns the prompt's max_tokens: explicit, the default, or (null) what is left.
 */
function checkLength(model: ModelInfo, promptTokens: number, maxTokensField: number | null | undefined, where: string, lowerBound: boolean): number {
  // No sequence can outgrow the context, nor the KV cache (which holds whole sequences).
  const limit = Math.min(model.contextLength, model.kvCacheTokens);
  const what = model.kvCacheTokens < model.contextLength ? `maximum sequence length (KV cache capacity) is ${limit}` : `maximum context length is ${limit}`;
  const has = lowerBound ? `at least ${promptTokens}` : `${promptTokens}`;
  if (maxTokensField === null) {
    // null: generate up to the end of the context (vLLM's behaviour).
    if (promptTokens > limit) {
      throw new ApiError(
        'context_length_exceeded',
        `${where}This model's ${what} tokens. However, your prompt has ${has} tokens. Please reduce the prompt.`,
        'prompt',
      );
    }
    return limit - promptTokens;
  }
  const maxTokens = maxTokensField ?? DEFAULT_MAX_TOKENS;
  if (promptTokens + maxTokens > limit) {
    throw new ApiError(
      'context_length_exceeded',
      `${where}This model's ${what} tokens. However, you requested ${lowerBound ? 'at least ' : ''}${promptTokens + maxTokens} tokens ` +
        `(${has} in the prompt, ${maxTokens} for the completion). Please reduce the prompt or max_tokens.`,
      'prompt',
    );
  }
  return maxTokens;
}

function checkMinTokens(minTokens: number, maxTokens: number): void {
  if (minTokens > maxTokens) throw new ApiError('invalid_value', `\`min_tokens\`: must be <= \`max_tokens\` (${maxTokens})`, 'min_tokens');
}

function checkTokenIds(ids: number[], vocabSize: number, field: string, param = field): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (id < 0 || id >= vocabSize) {
      throw new ApiError('invalid_value', `\`${field}[${i}]\`: token id ${id} is out of range (vocabulary size ${vocabSize})`, param);
    }
  }
}

function resolveLogitBias(bias: Record<string, number> | null | undefined, vocabSize: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [key, value] of Object.entries(bias ?? {})) {
    const id = Number(key);
    if (id >= vocabSize) {
      throw new ApiError('invalid_value', `\`logit_bias\`: token id ${key} is out of range (vocabulary size ${vocabSize})`, 'logit_bias');
    }
    out.push([id, value]);
  }
  return out;
}

/**
 * Token ids (and, with echo, text) of each prompt, in one round trip to the tokenizer thread.
 * An empty text is generated "as if from the beginning of a new document", as OpenAI does: from
 * `<|endoftext|>`.
 */
async function tokenizePrompts(raw: RawPrompt[], engine: EngineClient, echo: boolean): Promise<Array<{ tokens: number[]; text: string }>> {
  const texts = raw.filter((p): p is string => typeof p === 'string');
  const idLists = echo ? raw.filter((p): p is number[] => typeof p !== 'string') : [];
  const [encoded, decoded] = await Promise.all([
    texts.length ? engine.encode(texts) : Promise.resolve([]),
    idLists.length ? engine.decode(idLists) : Promise.resolve([]),
  ]);
  const eos = engine.model.eosTokenId;
  let t = 0;
  let d = 0;
  return raw.map((p) => {
    if (typeof p === 'string') {
      const tokens = encoded[t++]!;
      return tokens.length > 0 ? { tokens, text: echo ? p : '' } : { tokens: [eos], text: echo ? END_OF_TEXT : '' };
    }
    return { tokens: p, text: echo ? decoded[d++]! : '' };
  });
}
