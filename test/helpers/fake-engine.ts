// A deterministic EngineClient without a model, for route tests.
//
// Tokenizer: one token per UTF-16 code unit (token id = char code; vocabulary 65536; EOS = 0),
// so detokenize(tokenize(s)) === s and tests can write token-id prompts by hand ([72, 105] = "Hi").
// Generation: choice j of a prompt of length L emits at step k the letter
// 'a' + ((L - 1 + j + k) % 26) (so a one-token prompt starts at "a"; see fakeText), with logprob
// logprobOf(j, k) (default: a constant per choice, so best_of has a known order: 0, 3, 1, 4, 2).
// It honours maxTokens, minTokens, n, echo (prompt event), logprobs (top alternatives), stop
// strings (held back while they might still match, flushed at finish), stop token ids and
// ignoreEos (with `eosAtStep`). It records submits, cancels and shutdowns for assertions.
import type { FastifyInstance } from 'fastify';
import { loadConfig, type ServerConfig } from '../../src/config.js';
import { buildApp, type AppOptions } from '../../src/server/app.js';
import type {
  EngineClient,
  EngineError,
  EngineEvent,
  EngineRequest,
  EngineStats,
  ModelInfo,
  TokenLogprob,
  TopLogprob,
} from '../../src/engine/types.js';

export interface FakeEngineOptions {
  name?: string;
  contextLength?: number;
  /** Pause before the first step (ms). */
  firstTokenDelayMs?: number;
  /** Pause between steps (ms); 0 still yields to the event loop between steps. */
  tokenDelayMs?: number;
  /** Each generated token's text is its letter repeated this many times (large deltas). */
  textRepeat?: number;
  /** Logprob of choice j's token at step k. */
  logprobOf?: (choice: number, step: number) => number;
  /** An error for this request: at once, or after `afterSteps` steps. */
  errorOn?: (req: EngineRequest) => (EngineError & { afterSteps?: number }) | undefined;
  /** submit() throws synchronously (a broken engine). */
  throwOnSubmit?: boolean;
  /** At most this many requests at once; more get `overloaded`. */
  maxActive?: number;
  /** The model emits EOS (id 0) at this step unless ignoreEos or minTokens says otherwise. */
  eosAtStep?: number;
  /** stats() waits this long (health timeout tests) or fails. */
  statsDelayMs?: number;
  statsFail?: boolean;
  /** Skip the prompt event even with echo (tests the edge's fallback). */
  noPromptEvent?: boolean;
}

interface RequestState {
  req: EngineRequest;
  cancelled: boolean;
  finished: boolean;
  wake: (() => void) | null;
  yielded: number;
}

const LETTERS = 26;
const A = 'a'.charCodeAt(0);

/** What the fake generates: `count` tokens of choice `choice` for a prompt of `promptLength` tokens. */
export function fakeText(promptLength: number, choice: number, count: number): string {
  let out = '';
  for (let k = 0; k < count; k++) out += String.fromCharCode(letterCode(promptLength, choice, k));
  return out;
}

function letterCode(promptLength: number, choice: number, step: number): number {
  return A + ((promptLength - 1 + choice + step) % LETTERS);
}

export function defaultLogprob(choice: number, _step: number): number {
  return -(((choice * 7) % 5) + 1) / 10;
}

export class FakeEngine implements EngineClient {
  readonly model: ModelInfo;
  readonly submitted: EngineRequest[] = [];
  /** Ids cancelled through cancel() or by ending the iteration early, in order. */
  readonly cancelled: string[] = [];
  readonly shutdownCalls: Array<{ drainMs?: number }> = [];
  /** Events handed out per request id. */
  readonly yielded = new Map<string, number>();
  private readonly active = new Map<string, RequestState>();
  private shuttingDown = false;
  private promptTokensTotal = 0;
  private generatedTokensTotal = 0;
  private steps = 0;

  constructor(readonly options: FakeEngineOptions = {}) {
    this.model = {
      name: options.name ?? 'fake-gpt2',
      contextLength: options.contextLength ?? 64,
      vocabSize: 65536,
      eosTokenId: 0,
      weights: { dtype: 'float32' },
    };
  }

  tokenize(text: string): number[] {
    const ids: number[] = [];
    for (let i = 0; i < text.length; i++) ids.push(text.charCodeAt(i));
    return ids;
  }

  detokenize(tokens: number[]): string {
    return tokens.map((t) => (t === 0 ? '<|endoftext|>' : String.fromCharCode(t))).join('');
  }

  get activeCount(): number {
    return this.active.size;
  }

  submit(request: EngineRequest): AsyncIterable<EngineEvent> {
    if (this.options.throwOnSubmit) throw new Error('engine worker crashed: secret internal detail');
    this.submitted.push(structuredClone(request));
    const state: RequestState = { req: request, cancelled: false, finished: false, wake: null, yielded: 0 };
    const gen = this.run(state);
    const self = this;
    return {
      [Symbol.asyncIterator]() {
        return {
          async next() {
            const r = await gen.next();
            if (!r.done) {
              state.yielded++;
              self.yielded.set(request.id, state.yielded);
            }
            return r;
          },
          async return() {
            if (!state.finished) self.recordCancel(state);
            state.wake?.();
            return gen.return(undefined);
          },
        };
      },
    };
  }

  cancel(id: string): void {
    const state = this.active.get(id);
    if (!state || state.finished) return;
    this.recordCancel(state);
    state.wake?.();
  }

  async stats(): Promise<EngineStats> {
    if (this.options.statsDelayMs) await new Promise((r) => setTimeout(r, this.options.statsDelayMs));
    if (this.options.statsFail) throw new Error('stats failed');
    let running = 0;
    for (const s of this.active.values()) running += s.req.params.n;
    return {
      waiting: 0,
      running,
      kvBlocksTotal: 100,
      kvBlocksUsed: running,
      kvUsage: running / 100,
      blockSize: 16,
      steps: this.steps,
      preemptions: 0,
      promptTokensTotal: this.promptTokensTotal,
      generatedTokensTotal: this.generatedTokensTotal,
    };
  }

  async shutdown(options: { drainMs?: number } = {}): Promise<void> {
    this.shutdownCalls.push(options);
    this.shuttingDown = true;
    const deadline = Date.now() + (options.drainMs ?? 0);
    while (this.active.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    for (const state of this.active.values()) this.cancel(state.req.id);
  }

  private recordCancel(state: RequestState): void {
    if (state.cancelled) return;
    state.cancelled = true;
    this.cancelled.push(state.req.id);
  }

  private sleep(ms: number, state: RequestState): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        state.wake = null;
        resolve();
      };
      const timer = ms > 0 ? setTimeout(done, ms) : setTimeout(done, 0);
      state.wake = done;
    });
  }


  private top(tokenId: number, logprob: number, count: number): TopLogprob[] {
    const out: TopLogprob[] = [];
    for (let i = 0; i < count; i++) {
      const id = i === 0 ? tokenId : A + ((tokenId - A + 13 + i) % LETTERS);
      out.push({ token: String.fromCharCode(id), tokenId: id, logprob: i === 0 ? logprob : logprob - i });
    }
    return out;
  }

  private async *run(state: RequestState): AsyncGenerator<EngineEvent, void, undefined> {
    const { req } = state;
    const p = req.params;
    const opts = this.options;
    try {
      if (this.shuttingDown) {
        yield { type: 'error', error: { code: 'shutting_down', message: 'engine is shutting down' } };
        return;
      }
      const planned = opts.errorOn?.(req);
      if (planned && !planned.afterSteps) {
        yield { type: 'error', error: { code: planned.code, message: planned.message } };
        return;
      }
      if (opts.maxActive !== undefined && this.active.size >= opts.maxActive) {
        yield { type: 'error', error: { code: 'overloaded', message: 'queue full' } };
        return;
      }
      this.active.set(req.id, state);
      this.promptTokensTotal += req.promptTokens.length;

      if (p.echo && !opts.noPromptEvent) {
        const tokens: TokenLogprob[] = req.promptTokens.map((id, i) => ({
          token: this.detokenize([id]),
          tokenId: id,
          logprob: i === 0 ? null : -1.5,
          top: i === 0 || p.logprobs === null ? [] : this.top(id, -1.5, p.logprobs),
        }));
        yield { type: 'prompt', tokens: p.logprobs === null ? tokens.map((t) => ({ ...t, top: [] })) : tokens, text: this.detokenize(req.promptTokens) };
      }
      await this.sleep(opts.firstTokenDelayMs ?? 0, state);

      // `pending` is generated text not yet emitted: a possible stop-string prefix is held back.
      const choices = Array.from({ length: p.n }, () => ({ pending: '', tokens: 0, cum: 0, done: false }));
      let total = 0;
      for (let step = 0; ; step++) {
        if (state.cancelled) {
          yield { type: 'error', error: { code: 'cancelled', message: 'cancelled' } };
          return;
        }
        if (planned?.afterSteps !== undefined && step >= planned.afterSteps) {
          yield { type: 'error', error: { code: planned.code, message: planned.message } };
          return;
        }
        if (choices.every((c) => c.done)) break;
        this.steps++;
        for (let j = 0; j < choices.length; j++) {
          const c = choices[j]!;
          if (c.done) continue;
          const finish = (reason: 'stop' | 'length', flush: string): EngineEvent => {
            c.done = true;
            c.pending = '';
            return { type: 'finish', choice: j, reason, cumulativeLogprob: c.cum, text: flush, completionTokens: c.tokens };
          };
          if (c.tokens >= p.maxTokens) {
            yield finish('length', c.pending);
            continue;
          }
          const id = opts.eosAtStep === step ? 0 : letterCode(req.promptTokens.length, j, step);
          const mayStop = c.tokens >= p.minTokens;
          if ((id === 0 && !p.ignoreEos && mayStop) || (p.stopTokenIds.includes(id) && mayStop)) {
            c.tokens++;
            total++;
            this.generatedTokensTotal++;
            yield finish('stop', c.pending);
            continue;
          }
          c.tokens++;
          total++;
          this.generatedTokensTotal++;
          const lp = (opts.logprobOf ?? defaultLogprob)(j, step);
          c.cum += lp;
          c.pending += String.fromCharCode(id).repeat(opts.textRepeat ?? 1);
          const logprobs: TokenLogprob[] | null =
            p.logprobs === null
              ? null
              : [{ token: String.fromCharCode(id), tokenId: id, logprob: lp, top: this.top(id, lp, p.logprobs) }];
          // Stop strings: cut at the earliest match; otherwise hold back a possible stop prefix.
          let cut = -1;
          for (const s of p.stop) {
            const at = c.pending.indexOf(s);
            if (at >= 0 && (cut < 0 || at < cut)) cut = at;
          }
          if (cut >= 0 && mayStop) {
            const text = c.pending.slice(0, cut);
            yield { type: 'delta', choice: j, text, tokenIds: [id], logprobs };
            yield finish('stop', '');
            continue;
          }
          let hold = 0;
          for (const s of p.stop) {
            for (let k = Math.min(s.length - 1, c.pending.length); k > hold; k--) {
              if (c.pending.endsWith(s.slice(0, k))) {
                hold = k;
                break;
              }
            }
          }
          const text = c.pending.slice(0, c.pending.length - hold);
          c.pending = c.pending.slice(c.pending.length - hold);
          yield { type: 'delta', choice: j, text, tokenIds: [id], logprobs };
          if (c.tokens >= p.maxTokens) yield finish('length', c.pending);
        }
        if (!choices.every((c) => c.done)) await this.sleep(opts.tokenDelayMs ?? 0, state);
      }
      state.finished = true;
      yield { type: 'done', promptTokens: req.promptTokens.length, completionTokens: total };
    } finally {
      state.finished = true;
      this.active.delete(req.id);
    }
  }
}

// ---- shared test plumbing (kept here: this is the one helper module of the route tests) ----


/** The server's defaults, with overrides; never reads the real environment. */
export function testConfig(overrides: Partial<ServerConfig> = {}): ServerConfig {
  return { ...loadConfig([], {}), ...overrides };
}

/** An app over a FakeEngine with pinned ids and clock, so responses are byte-for-byte stable. */
export function makeApp(
  engine: FakeEngine | Promise<FakeEngine> = new FakeEngine(),
  config: Partial<ServerConfig> = {},
  opts: AppOptions = {},
): FastifyInstance {
  let n = 0;
  return buildApp(engine, testConfig(config), {
    now: () => 1_700_000_000_000,
    newId: () => (n++ === 0 ? 'test' : `test${n - 1}`),
    ...opts,
  });
}

/** Parses an SSE body into its `data:` payloads ("[DONE]" kept as the string). */
export function parseSse(body: string): unknown[] {
  return body
    .split('\n\n')
    .filter((block) => block.length > 0)
    .map((block) => {
      if (!block.startsWith('data: ')) throw new Error(`not an SSE data block: ${JSON.stringify(block)}`);
      const data = block.slice('data: '.length);
      return data === '[DONE]' ? data : JSON.parse(data);
    });
}

/** Resolves when `predicate` holds, polling; rejects after `timeoutMs`. */
export async function waitFor(predicate: () => boolean, timeoutMs = 2000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
