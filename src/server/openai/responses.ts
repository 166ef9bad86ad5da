// OpenAI response shapes of the Completions API and the helpers that build them. Key order
// follows OpenAI's own responses (it is visible in the SSE bytes).
import type { TokenLogprob } from '../../engine/types.js';

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: Array<number | null>;
  top_logprobs: Array<Record<string, number> | null>;
  text_offset: number[];
}

export interface CompletionChoice {
  text: string;
  index: number;
  logprobs: CompletionLogprobs | null;
  finish_reason: 'stop' | 'length' | null;
}

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Present when some prompt tokens' K/V came from the prefix cache. */
  prompt_tokens_details?: { cached_tokens: number };
}

interface CompletionEnvelope {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: CompletionChoice[];
}

export interface CompletionResponse extends CompletionEnvelope {
  usage: CompletionUsage;
}

export interface CompletionChunk extends CompletionEnvelope {
  /** Present (null, or the totals in the last chunk) only with `stream_options.include_usage`. */
  usage?: CompletionUsage | null;
}

/** What every response and chunk of one request shares. */
export interface ResponseMeta {
  id: string;
  created: number;
  model: string;
  systemFingerprint: string;
}

/** Length in Unicode code points, which is how OpenAI and vLLM count `text_offset`. */
export function codePointLength(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // A high surrogate followed by a low one is one code point.
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

export function emptyLogprobs(): CompletionLogprobs {
  return { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
}

/**
 * Converts engine logprob records to OpenAI's legacy format, starting at text offset `offset`.
 * `top_logprobs` holds the requested alternatives plus the chosen token (so up to logprobs + 1
 * entries); it is null where the token has no logprob (the first prompt token).
 * Returns the fragment and the offset after it.
 */
export function toOpenAILogprobs(records: TokenLogprob[], offset: number): { logprobs: CompletionLogprobs; offset: number } {
  const out = emptyLogprobs();
  let at = offset;
  for (const r of records) {
    out.tokens.push(r.token);
    out.token_logprobs.push(r.logprob);
    if (r.logprob === null) {
      out.top_logprobs.push(null);
    } else {
      const top: Record<string, number> = {};
      for (const alt of r.top) {
        if (!(alt.token in top)) top[alt.token] = alt.logprob;
      }
      if (!(r.token in top)) top[r.token] = r.logprob;
      out.top_logprobs.push(top);
    }
    out.text_offset.push(at);
    at += codePointLength(r.token);
  }
  return { logprobs: out, offset: at };
}

export function appendLogprobs(into: CompletionLogprobs, more: CompletionLogprobs): void {
  into.tokens.push(...more.tokens);
  into.token_logprobs.push(...more.token_logprobs);
  into.top_logprobs.push(...more.top_logprobs);
  into.text_offset.push(...more.text_offset);
}

export function makeUsage(promptTokens: number, completionTokens: number, cachedTokens = 0): CompletionUsage {
  const usage: CompletionUsage = { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens };
  if (cachedTokens > 0) usage.prompt_tokens_details = { cached_tokens: cachedTokens };
  return usage;
}

/** The fields a full response and every chunk of one request share. */
export function makeEnvelope(meta: ResponseMeta, choices: CompletionChoice[]): CompletionEnvelope {
  return { id: meta.id, object: 'text_completion', created: meta.created, model: meta.model, system_fingerprint: meta.systemFingerprint, choices };
}

export function makeChunk(meta: ResponseMeta, choices: CompletionChoice[], usage?: CompletionUsage | null): CompletionChunk {
  const chunk: CompletionChunk = makeEnvelope(meta, choices);
  if (usage !== undefined) chunk.usage = usage;
  return chunk;
}

/** One Server-Sent Event carrying a JSON payload. */
export function sseData(payload: unknown): string {
  return `data: ${serializeChunk(payload)}\n\n`;
}

/** Logprobs with more tokens than this are serialized once and reused (echoed prompts). */
const SHARED_LOGPROBS_TOKENS = 64;
const serializedLogprobs = new WeakMap<object, string>();
const PLACEHOLDER = 'gpt2-serve:serialized-logprobs';

/**
 * JSON.stringify of a chunk or response, except that a large `logprobs` object is serialized
 * once and its text reused: with `echo`, `logprobs` and n choices, every choice's first chunk
 * carries the same prompt logprobs (megabytes for a long prompt), which would otherwise be
 * serialized n times on the main thread.
 */
export function serializeChunk(payload: unknown): string {
  let raw: string | null = null;
  const json = JSON.stringify(payload, (key, value: unknown) => {
    if (key !== 'logprobs' || raw !== null || !isLarge(value)) return value;
    raw = serializedLogprobs.get(value) ?? null;
    if (raw === null) serializedLogprobs.set(value, (raw = JSON.stringify(value)));
    return PLACEHOLDER;
  });
  // A JSON string cannot contain an unescaped quote, so `"logprobs":"<placeholder>"` is the field.
  return raw === null ? json : json.replace(`"logprobs":"${PLACEHOLDER}"`, () => `"logprobs":${raw}`);
}

function isLarge(value: unknown): value is CompletionLogprobs {
  return typeof value === 'object' && value !== null && ((value as CompletionLogprobs).tokens?.length ?? 0) > SHARED_LOGPROBS_TOKENS;
}

export const SSE_DONE = 'data: [DONE]\n\n';
