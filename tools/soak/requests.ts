// Seeded request bodies: ordinary completions small enough that GPT-2-small shapes on a 2-core CPU
// serve many of them in a run, the flood a stalled reader asks for, and the bad inputs with the
// answer each must get.
import { readFileSync } from 'node:fs';
import { PROMPT_VOCAB } from '../bench/workload.js';
import type { Rng } from '../../src/util/rng.js';

/** What a soak client needs to know about the server it talks to. */
export interface ModelFacts {
  /** The served model id. */
  model: string;
  contextLength: number;
  /** The server's body limit (--max-body-bytes or its default for the context). */
  maxBodyBytes: number;
  /** Prompt length of a stalled reader's flood (floodPromptTokens). */
  floodPromptTokens: number;
}

/** An integer in [lo, hi]. */
export function between(rng: Rng, lo: number, hi: number): number {
  return lo + Math.floor(rng.next() * (hi - lo + 1));
}

export function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[Math.floor(rng.next() * items.length)]!;
}

function promptIds(rng: Rng, length: number): number[] {
  const ids = new Array<number>(length);
  for (let i = 0; i < length; i++) ids[i] = Math.floor(rng.next() * PROMPT_VOCAB);
  return ids;
}

export interface Completion {
  body: Record<string, unknown>;
  /** Tokens the server must report generating (ignore_eos makes lengths exact). */
  expectedTokens: number;
}

/**
 * New tokens of a completion read to the end, and of one its client cancels or drops after a few
 * chunks: long enough that the cancel lands first even on the tiny model (and cut short anyway).
 */
export const READ_TOKENS: readonly [number, number] = [4, 32];
export const CANCELLED_TOKENS: readonly [number, number] = [64, 128];

/**
 * An ordinary completion: 8-64 random prompt tokens, `tokens` new ones, mostly one choice, greedy
 * or seeded sampling.
 */
export function ordinaryCompletion(rng: Rng, facts: ModelFacts, tokens: readonly [number, number] = READ_TOKENS): Completion {
  const maxTokens = between(rng, tokens[0], tokens[1]);
  const r = rng.next();
  const n = r < 0.8 ? 1 : r < 0.95 ? 2 : 3;
  const greedy = rng.next() < 0.5;
  return {
    body: {
      model: facts.model,
      prompt: promptIds(rng, between(rng, 8, 64)),
      max_tokens: maxTokens,
      n,
      temperature: greedy ? 0 : 0.8,
      ...(greedy ? {} : { seed: between(rng, 0, 1_000_000) }),
      ignore_eos: true,
    },
    expectedTokens: maxTokens * n,
  };
}

/** Choices of a flood; each gets the echoed prompt with its logprobs. */
const FLOOD_CHOICES = 16;
/** Bytes of SSE or websocket output per echoed prompt token and choice with 20 logprobs (about 640 measured). */
const ECHO_BYTES_PER_TOKEN = 600;

/**
 * Bytes the kernel holds for a loopback client that reads nothing: the server's send buffer at
 * its autotuning maximum plus the client's initial receive buffer (which does not grow while
 * nothing is read). Linux's own figures when readable, else its defaults.
 */
export function loopbackBufferBytes(): number {
  const field = (file: string, i: number, fallback: number) => {
    try {
      return Number(readFileSync(file, 'utf8').trim().split(/\s+/)[i]) || fallback;
    } catch {
      return fallback;
    }
  };
  return field('/proc/sys/net/ipv4/tcp_wmem', 2, 4 * 2 ** 20) + field('/proc/sys/net/ipv4/tcp_rmem', 1, 128 * 2 ** 10);
}

/**
 * Prompt tokens a stalled reader's flood needs so that its output outgrows the socket buffers, the
 * websocket high-water mark (1 MiB by default) and a margin: the server's own send buffer must
 * fill for it to pause the stream. Capped by the context.
 */
export function floodPromptTokens(contextLength: number, bufferBytes = loopbackBufferBytes()): number {
  const bytes = bufferBytes + 3 * 2 ** 20;
  return Math.max(64, Math.min(contextLength - 32, Math.ceil(bytes / (FLOOD_CHOICES * ECHO_BYTES_PER_TOKEN))));
}

/**
 * What a stalled reader asks for: a prompt echoed with 20 logprobs to each of 16 choices, several
 * MB of output before the first generated token (the route tests' flood, sized to the socket buffers).
 */
export function floodCompletion(rng: Rng, facts: ModelFacts): Record<string, unknown> {
  return {
    model: facts.model,
    prompt: promptIds(rng, facts.floodPromptTokens),
    n: FLOOD_CHOICES,
    echo: true,
    logprobs: 20,
    // Paused at the echo, it never gets to generate; should the server fail to pause it, it ends soon.
    max_tokens: Math.min(16, facts.contextLength - facts.floodPromptTokens),
    temperature: 0,
    ignore_eos: true,
  };
}

/** A bad input and the answer it must get. */
export interface BadInput {
  /** What is wrong, for the report. */
  what: string;
  /** The raw body (JSON text unless it is deliberately not). */
  body: string;
  status: number;
  codes: readonly string[];
}

const json = (v: unknown) => JSON.stringify(v);

/** Invalid JSON: 400 invalid_json, decided by the body parser before any admission. */
export function invalidJson(rng: Rng, facts: ModelFacts): BadInput {
  const whole = json({ model: facts.model, prompt: 'Hello', max_tokens: 4 });
  const body = pick(rng, [whole.slice(0, between(rng, 1, whole.length - 1)), 'not json', `${whole},`, "{'model': 'x'}"]);
  return { what: 'invalid JSON', body, status: 400, codes: ['invalid_json'] };
}

/** One field out of range (or of the wrong shape): 400 naming the field, decided by the schema. */
export function fieldOutOfRange(rng: Rng, facts: ModelFacts): BadInput {
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['temperature 2.5', { temperature: 2.5 }, 'invalid_value'],
    ['top_p 0', { top_p: 0 }, 'invalid_value'],
    ['n 0', { n: 0 }, 'invalid_value'],
    ['max_tokens -1', { max_tokens: -1 }, 'invalid_value'],
    ['logprobs 21', { logprobs: 21 }, 'invalid_value'],
    ['presence_penalty 3', { presence_penalty: 3 }, 'invalid_value'],
    ['five stop strings', { stop: ['a', 'b', 'c', 'd', 'e'] }, 'invalid_value'],
    ['an empty token list', { prompt: [[]] }, 'invalid_value'],
    ['max_tokens "ten"', { max_tokens: 'ten' }, 'invalid_value'],
    ['suffix', { suffix: 'x' }, 'unsupported_parameter'],
  ];
  const [what, fields, code] = pick(rng, cases);
  return { what, body: json({ model: facts.model, prompt: 'Hello', max_tokens: 4, ...fields }), status: 400, codes: [code] };
}

/** A model the server does not serve: 404 model_not_found. */
export function unknownModel(rng: Rng, facts: ModelFacts): BadInput {
  return { what: 'unknown model', body: json({ model: `no-such-model-${between(rng, 0, 9999)}`, prompt: 'Hello', max_tokens: 4 }), status: 404, codes: ['model_not_found'] };
}

/**
 * A prompt that cannot fit the context: token ids (counted at once), a text that must be tokenized
 * to learn it is too long (the tokenizer thread), or a text so long it is refused without
 * tokenizing (the length bound). 400 context_length_exceeded.
 */
export function promptTooLong(rng: Rng, facts: ModelFacts): BadInput {
  const ctx = facts.contextLength;
  // GPT-2's longest token is 128 bytes: a text of more than 128 x ctx characters cannot fit.
  const hugeChars = Math.floor(facts.maxBodyBytes * 0.8);
  const kinds = hugeChars > 128 * ctx ? 3 : 2;
  const kind = between(rng, 0, kinds - 1);
  if (kind === 0) {
    return { what: 'token ids over the context', body: json({ model: facts.model, prompt: promptIds(rng, ctx + between(rng, 1, 200)), max_tokens: 4 }), status: 400, codes: ['context_length_exceeded'] };
  }
  if (kind === 1) {
    // " hello" is one GPT-2 token: ctx + k of them are ctx + k tokens.
    return { what: 'text over the context (tokenized)', body: json({ model: facts.model, prompt: ' hello'.repeat(ctx + between(rng, 1, 500)) }), status: 400, codes: ['context_length_exceeded'] };
  }
  return { what: 'text far over the context (refused before tokenizing)', body: json({ model: facts.model, prompt: 'a'.repeat(hugeChars) }), status: 400, codes: ['context_length_exceeded'] };
}

/** A body over --max-body-bytes: 413 request_too_large. */
export function bodyTooLarge(rng: Rng, facts: ModelFacts): BadInput {
  const prompt = 'a'.repeat(facts.maxBodyBytes + between(rng, 1, 64 * 1024));
  return { what: 'body over the limit', body: json({ model: facts.model, prompt }), status: 413, codes: ['request_too_large'] };
}

/** Thousands of prompts in one request: 400 (--max-prompts-per-request). */
export function manyPrompts(rng: Rng, facts: ModelFacts): BadInput {
  const count = between(rng, 1000, 5000);
  return { what: `${count} prompts`, body: json({ model: facts.model, prompt: new Array<string>(count).fill('a'), max_tokens: 1 }), status: 400, codes: ['invalid_value'] };
}

/** A token id outside the vocabulary: 400 invalid_value. */
export function tokenIdOutOfRange(rng: Rng, facts: ModelFacts): BadInput {
  const ids = promptIds(rng, between(rng, 1, 16));
  const bad = rng.next() < 0.2 ? -1 : PROMPT_VOCAB + 1 + between(rng, 0, 1_000_000);
  ids.splice(between(rng, 0, ids.length), 0, bad);
  return { what: `token id ${bad}`, body: json({ model: facts.model, prompt: ids, max_tokens: 4 }), status: 400, codes: ['invalid_value'] };
}
