// The soak's clients: what each kind does, which outcomes are correct for it (the table's rows),
// and how often the mix sends it. A task is what one client loop runs at a time; a websocket task
// yields one record per completion it carried.
import type { Rng } from '../../src/util/rng.js';
import { httpRequest, sseCompletion, type HttpTarget, type SseResult } from './http-client.js';
import { errorOutcome, httpErrorOutcome, statusOfCode, type Outcome, type RequestRecord } from './outcome.js';
import {
  between,
  bodyTooLarge,
  CANCELLED_TOKENS,
  fieldOutOfRange,
  floodCompletion,
  invalidJson,
  manyPrompts,
  ordinaryCompletion,
  pick,
  promptTooLong,
  READ_TOKENS,
  tokenIdOutOfRange,
  unknownModel,
  type BadInput,
  type ModelFacts,
} from './requests.js';
import { runWsSocket, wsExchange, type WsCompletionPlan, type WsTarget } from './ws-client.js';

export interface SoakContext {
  facts: ModelFacts;
  http: HttpTarget;
  ws: WsTarget;
  /** The server's --stall-timeout-ms: a stalled reader resumes well after it, to find itself cut off. */
  stallTimeoutMs: number;
}

export interface RowSpec {
  name: string;
  describe: string;
  /** The outcomes that are correct for this kind of client; any other is a failed check. */
  allowed: readonly Outcome[];
}

const GOOD: readonly Outcome[] = ['completed', 'overloaded'];
const CANCELS: readonly Outcome[] = ['cancelled', 'completed', 'overloaded'];
const STALLS: readonly Outcome[] = ['stall_cutoff', 'overloaded'];
/** Refused by the body parser or the schema, before admission: never a 429. */
const REFUSED_EARLY: readonly Outcome[] = ['expected_4xx'];
/** Refused after admission (model, lengths, prompt count, ids): a full server answers 429 first. */
const REFUSED_LATE: readonly Outcome[] = ['expected_4xx', 'overloaded'];

export const ROWS: readonly RowSpec[] = [
  { name: 'sse', describe: 'SSE, read to the end', allowed: GOOD },
  { name: 'sse_disconnect', describe: 'SSE, client disconnects after 0-3 chunks', allowed: CANCELS },
  { name: 'json', describe: 'plain JSON', allowed: GOOD },
  { name: 'ws_stream', describe: 'websocket, read to the end', allowed: GOOD },
  { name: 'ws_cancel', describe: 'websocket, completion.cancel after 1-3 chunks', allowed: CANCELS },
  { name: 'ws_close', describe: 'websocket closed by the client mid-stream', allowed: CANCELS },
  { name: 'sse_stall', describe: 'SSE reader stops reading after the first chunk', allowed: STALLS },
  { name: 'ws_stall', describe: 'websocket reader stops reading after the first frame (a pong)', allowed: STALLS },
  { name: 'bad_json', describe: 'bad input: invalid JSON', allowed: REFUSED_EARLY },
  { name: 'bad_field', describe: 'bad input: field out of range', allowed: REFUSED_EARLY },
  { name: 'bad_model', describe: 'bad input: unknown model', allowed: REFUSED_LATE },
  { name: 'bad_too_long', describe: 'bad input: prompt over the context', allowed: REFUSED_LATE },
  { name: 'bad_huge_body', describe: 'bad input: body over --max-body-bytes', allowed: REFUSED_EARLY },
  { name: 'bad_many_prompts', describe: 'bad input: 1000-5000 prompts', allowed: REFUSED_LATE },
  { name: 'bad_token_ids', describe: 'bad input: token id out of range', allowed: REFUSED_LATE },
  { name: 'bad_ws_frame', describe: 'bad input: websocket frame over the limit (close 1009)', allowed: REFUSED_EARLY },
  { name: 'bad_ws_message', describe: 'bad input: websocket frames not JSON, bad field, unknown id', allowed: REFUSED_EARLY },
];

export interface Task {
  name: string;
  /** The table rows its records go to (the first takes a failure of the soak's own client). */
  rows: readonly string[];
  /** Relative frequency in the mix. */
  weight: number;
  /** At most this many at once (a stalled reader holds batch slots and KV blocks until cut off). */
  maxConcurrent?: number;
  /** Not again until this long after the last one ended (a flood costs the engine seconds). */
  cooldownMs?: number;
  run(ctx: SoakContext, rng: Rng): Promise<RequestRecord[]>;
}

/**
 * A stalled reader's flood (echo and logprobs of a long prompt for 16 choices) costs the engine
 * seconds on GPT-2-small shapes, so each kind runs one at a time, and after warm-up with this gap
 * between: a handful per two minutes, and the rest of the traffic stays meaningful.
 */
const STALL_COOLDOWN_MS = 20_000;

/** When a stalled reader resumes: the stall timeout plus as much again (at least a second) of margin. */
export function stallPauseMs(stallTimeoutMs: number): number {
  return stallTimeoutMs + Math.max(1000, stallTimeoutMs);
}

function judgeSse(scenario: string, r: SseResult, expectedTokens: number | null, stalled = false): RequestRecord {
  const base = { scenario, status: r.status || null, ms: r.ms };
  if (r.status === 0) return { ...base, outcome: 'unexpected', code: null, detail: r.detail ?? r.end };
  if (r.status !== 200) return { ...base, ...httpErrorOutcome(r.status, r.errorBody, r.retryAfter) };
  if (r.errorEventCode !== null) {
    // After the 200 the error travels as an event: only an engine failure (5xx) has a reason to.
    const status = statusOfCode(r.errorEventCode);
    const judged = status !== null && status >= 500 ? errorOutcome(status, r.errorEventCode) : { outcome: 'unexpected' as const, detail: `error event ${r.errorEventCode}` };
    return { ...base, ...judged, code: r.errorEventCode };
  }
  // A timeout, a transport failure, or a chunk that is not JSON.
  if (r.detail !== null) return { ...base, outcome: 'unexpected', code: null, detail: r.detail };
  switch (r.end) {
    case 'done':
      if (expectedTokens !== null && r.completionTokens !== expectedTokens) {
        return { ...base, outcome: 'unexpected', code: null, detail: `usage reported ${r.completionTokens} tokens, expected ${expectedTokens}` };
      }
      return { ...base, outcome: 'completed', code: null };
    case 'client_abort':
      return { ...base, outcome: 'cancelled', code: null };
    case 'server_closed':
      return stalled
        ? { ...base, outcome: 'stall_cutoff', code: null }
        : { ...base, outcome: 'unexpected', code: null, detail: 'the server ended the stream without [DONE]' };
    default:
      return { ...base, outcome: 'unexpected', code: null, detail: r.detail ?? r.end };
  }
}

async function badHttp(ctx: SoakContext, scenario: string, bad: BadInput): Promise<RequestRecord[]> {
  const r = await httpRequest(ctx.http, 'POST', '/v1/completions', bad.body);
  const base = { scenario, status: r.status || null, ms: r.ms };
  if (r.error !== null) return [{ ...base, outcome: 'unexpected', code: null, detail: `${bad.what}: ${r.error}` }];
  const judged = httpErrorOutcome(r.status, r.body, r.retryAfter);
  if (r.status === bad.status && judged.code !== null && bad.codes.includes(judged.code)) return [{ ...base, outcome: 'expected_4xx', code: judged.code }];
  if (judged.outcome === 'unexpected') judged.detail = `${bad.what}: got ${r.status} ${judged.code ?? r.body.slice(0, 80)}, expected ${bad.status} ${bad.codes.join('|')}`;
  return [{ ...base, ...judged }];
}

const http = (name: string, weight: number, make: (rng: Rng, facts: ModelFacts) => BadInput): Task => ({
  name,
  rows: [name],
  weight,
  run: (ctx, rng) => badHttp(ctx, name, make(rng, ctx.facts)),
});

/** In the order a run first starts them: the slow stalled readers first, to overlap the rest. */
export const TASKS: readonly Task[] = [
  {
    name: 'sse_stall',
    rows: ['sse_stall'],
    weight: 1.5,
    maxConcurrent: 1,
    cooldownMs: STALL_COOLDOWN_MS,
    async run(ctx, rng) {
      const r = await sseCompletion(ctx.http, floodCompletion(rng, ctx.facts), { stallForMs: stallPauseMs(ctx.stallTimeoutMs) });
      return [judgeSse('sse_stall', r, null, true)];
    },
  },
  {
    name: 'ws_stall',
    rows: ['ws_stall'],
    weight: 1.5,
    maxConcurrent: 1,
    cooldownMs: STALL_COOLDOWN_MS,
    run(ctx, rng) {
      const flood = floodCompletion(rng, ctx.facts);
      return runWsSocket(ctx.ws, { completions: [{ id: 'flood', scenario: 'ws_stall', body: flood, expectedTokens: null }], stallForMs: stallPauseMs(ctx.stallTimeoutMs) });
    },
  },
  {
    name: 'sse',
    rows: ['sse'],
    weight: 22,
    async run(ctx, rng) {
      const c = ordinaryCompletion(rng, ctx.facts);
      return [judgeSse('sse', await sseCompletion(ctx.http, c.body), c.expectedTokens)];
    },
  },
  {
    name: 'sse_disconnect',
    rows: ['sse_disconnect'],
    weight: 10,
    async run(ctx, rng) {
      const c = ordinaryCompletion(rng, ctx.facts, CANCELLED_TOKENS);
      return [judgeSse('sse_disconnect', await sseCompletion(ctx.http, c.body, { abortAfterChunks: between(rng, 0, 3) }), c.expectedTokens)];
    },
  },
  {
    name: 'json',
    rows: ['json'],
    weight: 14,
    async run(ctx, rng) {
      const c = ordinaryCompletion(rng, ctx.facts);
      const r = await httpRequest(ctx.http, 'POST', '/v1/completions', JSON.stringify(c.body));
      const base = { scenario: 'json', status: r.status || null, ms: r.ms };
      if (r.error !== null) return [{ ...base, outcome: 'unexpected', code: null, detail: r.error }];
      if (r.status !== 200) return [{ ...base, ...httpErrorOutcome(r.status, r.body, r.retryAfter) }];
      let tokens: unknown;
      try {
        tokens = (JSON.parse(r.body) as { usage?: { completion_tokens?: unknown } }).usage?.completion_tokens;
      } catch {
        return [{ ...base, outcome: 'unexpected', code: null, detail: '200 with a body that is not JSON' }];
      }
      return tokens === c.expectedTokens
        ? [{ ...base, outcome: 'completed', code: null }]
        : [{ ...base, outcome: 'unexpected', code: null, detail: `usage reported ${String(tokens)} tokens, expected ${c.expectedTokens}` }];
    },
  },
  {
    // Several completions on one socket: the first read to the end, the second cancelled, the rest either.
    name: 'ws_mux',
    rows: ['ws_stream', 'ws_cancel'],
    weight: 14,
    run(ctx, rng) {
      const completions: WsCompletionPlan[] = [];
      for (let i = 0, m = between(rng, 2, 5); i < m; i++) {
        const cancel = i === 1 || (i > 1 && rng.next() < 0.4);
        const c = ordinaryCompletion(rng, ctx.facts, cancel ? CANCELLED_TOKENS : READ_TOKENS);
        completions.push({
          id: `c${i}`,
          scenario: cancel ? 'ws_cancel' : 'ws_stream',
          body: c.body,
          expectedTokens: c.expectedTokens,
          ...(cancel ? { cancelAfterChunks: between(rng, 1, 3) } : {}),
        });
      }
      return runWsSocket(ctx.ws, { completions });
    },
  },
  {
    name: 'ws_close',
    rows: ['ws_close'],
    weight: 6,
    run(ctx, rng) {
      const completions: WsCompletionPlan[] = [];
      for (let i = 0, m = between(rng, 2, 4); i < m; i++) {
        const c = ordinaryCompletion(rng, ctx.facts, CANCELLED_TOKENS);
        completions.push({ id: `c${i}`, scenario: 'ws_close', body: c.body, expectedTokens: c.expectedTokens });
      }
      return runWsSocket(ctx.ws, { completions, closeAfterChunks: between(rng, 1, 4), closeHow: rng.next() < 0.5 ? 'close' : 'terminate' });
    },
  },
  http('bad_json', 3, invalidJson),
  http('bad_field', 4, fieldOutOfRange),
  http('bad_model', 3, unknownModel),
  http('bad_too_long', 4, promptTooLong),
  http('bad_huge_body', 2, bodyTooLarge),
  http('bad_many_prompts', 3, manyPrompts),
  http('bad_token_ids', 3, tokenIdOutOfRange),
  {
    name: 'bad_ws_frame',
    rows: ['bad_ws_frame'],
    weight: 2,
    async run(ctx, rng) {
      const frame = JSON.stringify({ type: 'completion.create', id: 'big', model: ctx.facts.model, prompt: 'a'.repeat(ctx.facts.maxBodyBytes + between(rng, 1, 64 * 1024)) });
      const r = await wsExchange(ctx.ws, [frame], 1);
      const base = { scenario: 'bad_ws_frame', status: r.closeCode, code: null, ms: r.ms };
      if (r.closeCode === 1009) return [{ ...base, outcome: 'expected_4xx' }];
      return [{ ...base, outcome: 'unexpected', detail: r.error ?? `expected close 1009, got ${r.closeCode ?? 'no close'} after ${JSON.stringify(r.frames).slice(0, 120)}` }];
    },
  },
  {
    name: 'bad_ws_message',
    rows: ['bad_ws_message'],
    weight: 3,
    async run(ctx, rng) {
      const badField = pick(rng, [{ temperature: 9 }, { n: 0 }, { max_tokens: -5 }, { logprobs: 99 }]);
      const expected: Array<{ id: string | null; code: string }> = [
        { id: null, code: 'invalid_json' },
        { id: 'bad', code: 'invalid_value' },
        { id: 'nobody', code: 'request_not_found' },
      ];
      const r = await wsExchange(
        ctx.ws,
        ['{"type": "completion.create", "id": ', JSON.stringify({ type: 'completion.create', id: 'bad', model: ctx.facts.model, prompt: 'Hello', ...badField }), JSON.stringify({ type: 'completion.cancel', id: 'nobody' })],
        expected.length,
      );
      return expected.map((want, i): RequestRecord => {
        const frame = r.frames[i] as { type?: unknown; id?: unknown; error?: { code?: unknown } } | undefined;
        const code = typeof frame?.error?.code === 'string' ? frame.error.code : null;
        const base = { scenario: 'bad_ws_message', status: statusOfCode(code), code, ms: r.ms };
        if (frame?.type === 'error' && frame.id === want.id && code === want.code) return { ...base, outcome: 'expected_4xx' };
        if (base.status !== null && base.status >= 500) return { ...base, outcome: 'server_error', detail: `frame ${i}: ${code}` };
        return { ...base, outcome: 'unexpected', detail: r.error ?? `frame ${i}: expected error ${want.code} for id ${want.id}, got ${JSON.stringify(frame ?? `nothing (close ${r.closeCode})`).slice(0, 120)}` };
      });
    },
  },
];
