// One OpenAI completion request in flight: one engine request per prompt, their event streams
// merged into a single ordered stream of outputs tagged (prompt, choice). Pull-based: the engine
// iterators are only advanced when the consumer asks for more, so a slow consumer (a client that
// does not read) stops pulling instead of buffering here. Cancellation is immediate: cancel()
// calls engine.cancel() for every unfinished engine request and wakes the consumer.
import type { EngineClient, EngineEvent, FinishReason, TokenLogprob } from '../../engine/types.js';
import type { ValidCompletionRequest } from './completion-request.js';
import { ApiError, fromEngineError } from './errors.js';

export type JobOutput =
  | { type: 'echo'; prompt: number; choice: number; text: string; logprobs: TokenLogprob[] | null }
  | { type: 'delta'; prompt: number; choice: number; text: string; logprobs: TokenLogprob[] | null }
  | {
      type: 'finish';
      prompt: number;
      choice: number;
      text: string;
      reason: FinishReason;
      cumulativeLogprob: number;
    };

/** Thrown out of ready()/outputs() once the job was cancelled (client gone, socket closed, cancel frame). */
export class JobCancelledError extends Error {
  constructor(readonly reason: string) {
    super(`request cancelled: ${reason}`);
    this.name = 'JobCancelledError';
  }
}

export interface JobObserver {
  /** Seconds from the job's start to its first generated token. */
  firstToken?(seconds: number): void;
  /** Seconds between consecutive tokens of one choice. */
  interToken?(seconds: number): void;
}

interface Source {
  prompt: number;
  engineId: string;
  iterator: AsyncIterator<EngineEvent> | null;
  /** A done or error event arrived, or the iterator ended. */
  finished: boolean;
  /** Something (event, end or failure) arrived at least once. */
  heard: boolean;
  echoed: boolean;
  generated: number;
  completionTokens: number | null;
  lastTokenAt: Map<number, number>;
}

type Delivery = { src: Source; result: IteratorResult<EngineEvent> } | { src: Source; failure: unknown };

const noop = () => {};

export class CompletionJob {
  readonly startedAt: number;
  firstTokenAt: number | null = null;
  /** The first exception an engine iterator threw (for the server log; clients get a generic 500). */
  failure: unknown = undefined;
  private readonly sources: Source[] = [];
  private readonly queue: Delivery[] = [];
  private wake: (() => void) | null = null;
  private cancelReason: string | null = null;
  private cancelError: ApiError | null = null;
  private open = 0;
  private startedFlag = false;

  constructor(
    private readonly engine: EngineClient,
    readonly request: ValidCompletionRequest,
    /** The OpenAI completion id (cmpl-...); engine request ids derive from it. */
    readonly id: string,
    private readonly observer: JobObserver = {},
    private readonly clock: () => number = () => performance.now(),
  ) {
    this.startedAt = clock();
  }

  get cancelled(): boolean {
    return this.cancelReason !== null;
  }

  get promptTokens(): number {
    return this.request.prompts.reduce((sum, p) => sum + p.tokens.length, 0);
  }

  /** Generated tokens over all choices (best_of included): the engine's count, or what arrived so far. */
  get completionTokens(): number {
    return this.sources.reduce((sum, s) => sum + (s.completionTokens ?? s.generated), 0);
  }

  /** Submits one engine request per prompt. */
  start(): void {
    if (this.startedFlag || this.cancelReason !== null) return;
    this.startedFlag = true;
    const { prompts, params, echo, logprobs, bestOf } = this.request;
    prompts.forEach((prompt, i) => {
      const src: Source = {
        prompt: i,
        engineId: `${this.id}-${i}`,
        iterator: null,
        finished: false,
        heard: false,
        echoed: false,
        generated: 0,
        completionTokens: null,
        lastTokenAt: new Map(),
      };
      this.sources.push(src);
      this.open++;
      try {
        if (prompt.maxTokens === 0 && !(echo && logprobs !== null)) {
          // Nothing to generate and no prompt logprobs to compute: answer without the engine.
          src.iterator = zeroTokenStream(bestOf, prompt.tokens.length);
        } else {
          src.iterator = this.engine
            .submit({ id: src.engineId, promptTokens: prompt.tokens, params: { ...params, maxTokens: prompt.maxTokens } })
            [Symbol.asyncIterator]();
        }
      } catch (failure) {
        this.deliver({ src, failure });
        return;
      }
      this.pull(src);
    });
  }

  /**
   * Resolves once every prompt's engine request has produced its first event, so that a request
   * the engine rejects (overloaded, too long) can still get a proper HTTP status before a
   * streaming response commits to 200. Throws the mapped ApiError, or JobCancelledError.
   */
  async ready(): Promise<void> {
    this.start();
    for (;;) {
      if (this.cancelReason !== null) throw this.cancelledError();
      for (const d of this.queue) {
        const err = deliveryError(d);
        if (err) {
          this.abortSources();
          throw err;
        }
      }
      if (this.sources.every((s) => s.heard)) return;
      await this.sleep();
    }
  }

  /** The merged outputs. Throws ApiError on an engine error (other prompts are cancelled). */
  async *outputs(): AsyncGenerator<JobOutput, void, undefined> {
    this.start();
    try {
      while (this.open > 0) {
        if (this.cancelReason !== null) throw this.cancelledError();
        const d = this.queue.shift();
        if (!d) {
          await this.sleep();
          continue;
        }
        const { src } = d;
        if (src.finished) continue;
        if ('failure' in d) {
          this.finish(src);
          throw deliveryError(d)!;
        }
        if (d.result.done) {
          // The engine ended the stream without `done` (treat like done).
          this.finish(src);
          continue;
        }
        const ev = d.result.value;
        if (ev.type === 'error') {
          this.finish(src);
          if (ev.error.code === 'cancelled' && this.cancelReason !== null) throw this.cancelledError();
          throw fromEngineError(ev.error);
        }
        yield* this.map(src, ev);
        if (ev.type === 'done') {
          this.finish(src);
          // Let the engine's iterator run its cleanup; the request is complete, so this cancels nothing.
          void Promise.resolve()
            .then(() => src.iterator?.return?.())
            .catch(noop);
        } else if (!src.finished) {
          this.pull(src);
        }
      }
      // cancel() may have finished every source while we slept.
      if (this.cancelReason !== null) throw this.cancelledError();
    } finally {
      if (this.open > 0) this.abortSources();
    }
  }

  /**
   * Cancels every unfinished engine request at once; ready()/outputs() then throw `error` if
   * given (the server ended the request and the client should hear why), else JobCancelledError.
   */
  cancel(reason: string, error?: ApiError): void {
    // Nothing to cancel once the consumer has seen every request's end.
    if (this.cancelReason !== null || (this.startedFlag && this.open === 0)) return;
    this.cancelReason = reason;
    this.cancelError = error ?? null;
    this.abortSources();
    this.wakeUp();
  }

  private cancelledError(): Error {
    return this.cancelError ?? new JobCancelledError(this.cancelReason ?? 'cancelled');
  }

  private *map(src: Source, ev: EngineEvent): Generator<JobOutput> {
    const { echo, bestOf, logprobs } = this.request;
    const p = src.prompt;
    if (ev.type === 'prompt') {
      if (echo && !src.echoed) {
        src.echoed = true;
        for (let j = 0; j < bestOf; j++) {
          yield { type: 'echo', prompt: p, choice: j, text: this.request.prompts[p]!.text, logprobs: logprobs !== null ? ev.tokens : null };
        }
      }
      return;
    }
    if (echo && !src.echoed && (ev.type === 'delta' || ev.type === 'finish')) {
      // The engine did not send the prompt event: echo the text; logprobs, if asked, are unknown (null).
      src.echoed = true;
      const prompt = this.request.prompts[p]!;
      const records =
        logprobs !== null
          ? prompt.tokens.map((id) => ({ token: this.engine.detokenize([id]), tokenId: id, logprob: null, top: [] }))
          : null;
      for (let j = 0; j < bestOf; j++) yield { type: 'echo', prompt: p, choice: j, text: prompt.text, logprobs: records };
    }
    if (ev.type === 'delta') {
      const count = ev.tokenIds.length;
      if (count > 0) {
        const now = this.clock();
        src.generated += count;
        if (this.firstTokenAt === null) {
          this.firstTokenAt = now;
          this.observer.firstToken?.((now - this.startedAt) / 1000);
        }
        const last = src.lastTokenAt.get(ev.choice);
        if (last !== undefined) this.observer.interToken?.((now - last) / 1000 / count);
        src.lastTokenAt.set(ev.choice, now);
      }
      yield { type: 'delta', prompt: p, choice: ev.choice, text: ev.text, logprobs: logprobs !== null ? ev.logprobs : null };
    } else if (ev.type === 'finish') {
      yield {
        type: 'finish',
        prompt: p,
        choice: ev.choice,
        text: ev.text,
        reason: ev.reason,
        cumulativeLogprob: ev.cumulativeLogprob,
      };
    } else if (ev.type === 'done') {
      src.completionTokens = ev.completionTokens;
    }
  }

  private pull(src: Source): void {
    const it = src.iterator;
    if (!it) return;
    let next: Promise<IteratorResult<EngineEvent>>;
    try {
      next = it.next();
    } catch (failure) {
      this.deliver({ src, failure });
      return;
    }
    next.then(
      (result) => this.deliver({ src, result }),
      (failure) => this.deliver({ src, failure }),
    );
  }

  private deliver(d: Delivery): void {
    d.src.heard = true;
    if ('failure' in d && this.failure === undefined) this.failure = d.failure ?? new Error('engine iterator failed');
    if (d.src.finished || this.cancelReason !== null) return;
    this.queue.push(d);
    this.wakeUp();
  }

  private finish(src: Source): void {
    if (src.finished) return;
    src.finished = true;
    this.open--;
  }

  private abortSources(): void {
    for (const src of this.sources) {
      if (src.finished) continue;
      this.finish(src);
      this.engine.cancel(src.engineId);
      const it = src.iterator;
      if (it?.return) {
        try {
          void Promise.resolve(it.return()).catch(noop);
        } catch {
          // An iterator whose return() throws has nothing left to clean up.
        }
      }
    }
    this.queue.length = 0;
  }

  private sleep(): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  }

  private wakeUp(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }
}

function deliveryError(d: Delivery): ApiError | null {
  if ('failure' in d) {
    const f = d.failure as { code?: unknown; message?: unknown } | null;
    // A thrown EngineError-shaped object keeps its meaning; anything else is internal.
    if (f && typeof f.code === 'string' && typeof f.message === 'string' && !(f instanceof Error)) {
      return fromEngineError(f as Parameters<typeof fromEngineError>[0]);
    }
    if (f instanceof ApiError) return f;
    return new ApiError('internal_error', 'The engine failed while processing the request');
  }
  if (!d.result.done && d.result.value.type === 'error') return fromEngineError(d.result.value.error);
  return null;
}

/** The event stream of a request with max_tokens 0: every choice finishes at once with "length". */
async function* zeroTokenStream(choices: number, promptTokens: number): AsyncGenerator<EngineEvent> {
  for (let choice = 0; choice < choices; choice++) {
    yield { type: 'finish', choice, reason: 'length', cumulativeLogprob: 0, text: '', completionTokens: 0 };
  }
  yield { type: 'done', promptTokens, completionTokens: 0 };
}
