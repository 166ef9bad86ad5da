// Validate at the edge into a distinct type: a parsed body plus the model becomes a
// ValidCompletionRequest (defaults resolved, prompts tokenized, vocabulary and context length
// checked), from which the engine requests are built. Nothing here talks to the engine's queue.
import type { EngineClient, SamplingParams } from '../../engine/types.js';
import type { CompletionBody } from './completion-schema.js';
import { ApiError } from './errors.js';

export const DEFAULT_MAX_TOKENS = 16;

export interface ResolvedPrompt {
  tokens: number[];
  /** Text echoed back with `echo` (the string as sent, or the detokenized ids). */
  text: string;
  /** max_tokens for this prompt (explicit, default 16, or what the context leaves when null). */
  maxTokens: number;
}

export interface ValidCompletionRequest {
  model: string;
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
}

function checkTokenIds(ids: number[], vocabSize: number, field: string, param = field): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    if (id < 0 || id >= vocabSize) {
      throw new ApiError(
        'invalid_value',
        `\`${field}[${i}]\`: token id ${id} is out of range (vocabulary size ${vocabSize})`,
        param,
      );
    }
  }
}

/** Normalizes the four prompt shapes to a list of { tokens, text }. */
function tokenizePrompts(body: CompletionBody, engine: EngineClient, wantText: boolean): Array<{ tokens: number[]; text: string }> {
  const { vocabSize, eosTokenId } = engine.model;
  const raw = body.prompt;
  const eosPrompt = () => ({ tokens: [eosTokenId], text: wantText ? engine.detokenize([eosTokenId]) : '' });
  if (raw == null) return [eosPrompt()];
  const list: Array<string | number[]> =
    typeof raw === 'string'
      ? [raw]
      : typeof raw[0] === 'number'
        ? [raw as number[]]
        : (raw as Array<string | number[]>);
  return list.map((item, i) => {
    if (typeof item === 'string') {
      const tokens = engine.tokenize(item);
      // An empty prompt is generated "as if from the beginning of a new document", as OpenAI does.
      return tokens.length === 0 ? eosPrompt() : { tokens, text: item };
    }
    checkTokenIds(item, vocabSize, list.length === 1 && typeof raw[0] === 'number' ? 'prompt' : `prompt[${i}]`, 'prompt');
    if (item.length === 0) return eosPrompt();
    return { tokens: item, text: wantText ? engine.detokenize(item) : '' };
  });
}

export function resolveCompletionRequest(
  body: CompletionBody,
  engine: EngineClient,
  servedModel: string,
  options: { forceStream?: boolean } = {},
): ValidCompletionRequest {
  if (body.model !== servedModel) {
    throw new ApiError(
      'model_not_found',
      `The model \`${body.model.slice(0, 200)}\` does not exist. This server serves \`${servedModel}\``,
      'model',
    );
  }
  const { contextLength, vocabSize } = engine.model;
  const echo = body.echo ?? false;
  const n = body.n ?? 1;
  const bestOf = body.best_of ?? n;
  const logprobs = body.logprobs ?? null;
  const stream = options.forceStream ?? body.stream ?? false;

  if (body.stop_token_ids) checkTokenIds(body.stop_token_ids, vocabSize, 'stop_token_ids');
  const logitBias: Array<[number, number]> = [];
  for (const [key, bias] of Object.entries(body.logit_bias ?? {})) {
    const id = Number(key);
    if (id >= vocabSize) {
      throw new ApiError(
        'invalid_value',
        `\`logit_bias\`: token id ${key} is out of range (vocabulary size ${vocabSize})`,
        'logit_bias',
      );
    }
    logitBias.push([id, bias]);
  }

  const tokenized = tokenizePrompts(body, engine, echo);
  const prompts: ResolvedPrompt[] = tokenized.map((p, i) => {
    const where = tokenized.length > 1 ? `prompt[${i}]: ` : '';
    const promptLen = p.tokens.length;
    if (body.max_tokens === null) {
      // null: generate up to the end of the context (vLLM's behaviour).
      if (promptLen > contextLength) {
        throw new ApiError(
          'context_length_exceeded',
          `${where}This model's maximum context length is ${contextLength} tokens. However, your prompt has ${promptLen} tokens. Please reduce the prompt.`,
          'prompt',
        );
      }
      return { ...p, maxTokens: contextLength - promptLen };
    }
    const maxTokens = body.max_tokens ?? DEFAULT_MAX_TOKENS;
    if (promptLen + maxTokens > contextLength) {
      throw new ApiError(
        'context_length_exceeded',
        `${where}This model's maximum context length is ${contextLength} tokens. However, you requested ${promptLen + maxTokens} tokens (${promptLen} in the prompt, ${maxTokens} for the completion). Please reduce the prompt or max_tokens.`,
        'prompt',
      );
    }
    return { ...p, maxTokens };
  });

  const minTokens = body.min_tokens ?? 0;
  for (const p of prompts) {
    if (minTokens > p.maxTokens) {
      throw new ApiError('invalid_value', `\`min_tokens\`: must be <= \`max_tokens\` (${p.maxTokens})`, 'min_tokens');
    }
  }

  const topK = body.top_k ?? 0;
  return {
    model: servedModel,
    prompts,
    n,
    bestOf,
    stream,
    includeUsage: stream && (body.stream_options?.include_usage ?? false),
    echo,
    logprobs,
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
    },
  };
}
