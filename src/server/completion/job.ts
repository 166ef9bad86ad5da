// One OpenAI completion or chat completion request in flight, from admission to its last output. It is registered
// (and counted against --max-concurrent-requests) before any work is done; prepare() validates
// and tokenizes off the main thread; start() submits one engine request per prompt, whose events
// all land in one queue, read in order by outputs(). Cancellation is immediate: cancel() tells
// the engine and ends outputs(). pause()/resume() are the flow control of a client that stopped
// reading: the engine keeps the requests out of its steps, so nothing piles up here.
import type { EngineClient, EngineEvent, EngineRequest, FinishReason, TokenLogprob } from '../../engine/types.js';
import { AsyncQueue } from '../../util/async-queue.js';
import { ApiError, fromEngineError } from '../openai/errors.js';
import { makeUsage, type CompletionUsage, type ResponseMeta } from '../openai/responses.js';
import type { ValidCompletionRequest } from './request.js';

/**
 * Validates a request that needs the model (and tokenizes its prompts, off the main thread):
 * a completion's body, or a chat's rendered conversation. Throws ApiError.
 */
export type RequestResolver = (engine: EngineClient, options: { forceStream?: boolean }) => Promise<ValidCompletionRequest>;

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

/** One prompt's engine request. */
interface Source {
  engineId: string;
  accepted: boolean;
  /** `done` or `error` arrived (or the job cancelled it). */
  finished: boolean;
  generated: number;
  completionTokens: number | null;
  /** Prompt tokens the prefix cache served (from `done`). */
  cachedTokens: number;
  lastTokenAt: Map<number, number>;
}

export interface JobContext {
  engine: EngineClient;
  meta: ResponseMeta;
  observer?: JobObserver;
  clock?: () => number;
  forceStream?: boolean;
  /** --enable-prompt-tokens-details: usage reports cached tokens. */
  promptTokensDetails?: boolean;
  /** Prefix-cache isolation keys of the request's tenant (EngineRequest.cacheKeys); its cache_salt adds one. */
  cacheKeys?: readonly string[];
  /** EngineRequest.tenant and .priority: who sent it (for fair admission) and its `priority`. */
  tenant?: string;
  priority?: number;
  /** EngineRequest.adapter: the engine id of the LoRA adapter leased for it (start.ts); absent: the base model. */
  adapter?: number;
  /** Resolves once the engine has that adapter (LoraLease.ready); the request is submitted after it. */
  adapterReady?: Promise<void>;
}

export class CompletionJob {
  readonly startedAt: number;
  readonly meta: ResponseMeta;
  firstTokenAt: number | null = null;
  /** Set by prepare(). */
  request!: ValidCompletionRequest;
  private readonly engine: EngineClient;
  private readonly clock: () => number;
  private readonly sources: Source[] = [];
  private readonly events = new AsyncQueue<[prompt: number, event: EngineEvent]>();
  private cancelReason: string | null = null;
  private cancelError: ApiError | null = null;
  private paused = false;
  private acceptance: { resolve: () => void; reject: (err: Error) => void } | null = null;
  private readonly accepted: Promise<void>;
  /** Rejects when the job is cancelled: what submit() waits for ends at once then. */
  private readonly cancellation: Promise<never>;
  private rejectCancellation: (err: Error) => void = () => {};

  constructor(
    private readonly resolve: RequestResolver,
    private readonly ctx: JobContext,
  ) {
    this.engine = ctx.engine;
    this.meta = ctx.meta;
    this.clock = ctx.clock ?? (() => performance.now());
    this.startedAt = this.clock();
    this.accepted = new Promise<void>((resolve, reject) => (this.acceptance = { resolve, reject }));
    this.accepted.catch(() => {}); // a job that is never awaited for acceptance (JSON) must not warn
    this.cancellation = new Promise<never>((_, reject) => (this.rejectCancellation = reject));
    this.cancellation.catch(() => {});
  }

  get promptTokens(): number {
    return this.request?.prompts.reduce((sum, p) => sum + p.tokens.length, 0) ?? 0;
  }

  /** Prompt tokens served from the prefix cache, over all prompts. */
  get cachedTokens(): number {
    return this.sources.reduce((sum, s) => sum + s.cachedTokens, 0);
  }

  /** OpenAI's usage; cached tokens only with --enable-prompt-tokens-details. */
  get usage(): CompletionUsage {
    return makeUsage(this.promptTokens, this.completionTokens, this.ctx.promptTokensDetails ? this.cachedTokens : 0);
  }

  /** Generated tokens over all choices (best_of included): the engine's count, or what arrived so far. */
  get completionTokens(): number {
    return this.sources.reduce((sum, s) => sum + (s.completionTokens ?? s.generated), 0);
  }

  /**
   * Validates and tokenizes (off the main thread), then submits one engine request per prompt.
   * Throws ApiError (400) or JobCancelledError.
   */
  async submit(): Promise<void> {
    // An adapter read again from its folder loads meanwhile (LoraRegistry), beside tokenizing; a
    // client that leaves meanwhile ends the wait.
    const [request] = await Promise.race([Promise.all([this.resolve(this.engine, { forceStream: this.ctx.forceStream }), this.ctx.adapterReady]), this.cancellation]);
    if (this.cancelReason !== null) throw this.cancelledError();
    this.request = request;
    const { prompts, params } = request;
    prompts.forEach((prompt, i) => {
      const src: Source = { engineId: `${this.meta.id}-${i}`, accepted: false, finished: false, generated: 0, completionTokens: null, cachedTokens: 0, lastTokenAt: new Map() };
      this.sources.push(src);
      const cacheKeys = [...(this.ctx.cacheKeys ?? []), ...(request.cacheSalt === undefined ? [] : [`salt:${request.cacheSalt}`])];
      const engineRequest: EngineRequest = {
        id: src.engineId,
        promptTokens: prompt.tokens,
        params: { ...params, maxTokens: prompt.maxTokens },
        ...(cacheKeys.length > 0 ? { cacheKeys } : {}),
        ...(this.ctx.tenant !== undefined ? { tenant: this.ctx.tenant } : {}),
        ...(this.ctx.priority ? { priority: this.ctx.priority } : {}),
        ...(this.ctx.adapter !== undefined ? { adapter: this.ctx.adapter } : {}),
      };
      this.engine.submit(engineRequest, (event) =>
        this.onEvent(i, event),
      );
      if (this.paused) this.engine.pause(src.engineId);
    });
  }

  /**
   * Resolves once the engine accepted every prompt's request, so that a streaming response can
   * commit to 200 then (and a refusal still gets its own status). Throws ApiError or JobCancelledError.
   */
  ready(): Promise<void> {
    return this.accepted;
  }

  /** The merged outputs. Throws ApiError on an engine error (the other prompts are cancelled). */
  async *outputs(): AsyncGenerator<JobOutput, void, undefined> {
    try {
      for (let open = this.sources.length; open > 0; ) {
        const next = await this.events.next();
        if (next.done) throw this.cancelledError();
        const [p, event] = next.value;
        const src = this.sources[p]!;
        if (event.type === 'error') throw fromEngineError(event.error);
        if (event.type === 'done') {
          src.completionTokens = event.completionTokens;
          src.cachedTokens = event.cachedTokens;
          open--;
        } else {
          yield* this.map(p, src, event);
        }
      }
      if (this.cancelReason !== null) throw this.cancelledError();
    } finally {
      this.abortSources();
    }
  }

  /**
   * Ends the job at once: the engine drops its requests and ready()/outputs() throw `error` if
   * given (the server ended the request and the client should hear why), else JobCancelledError.
   */
  cancel(reason: string, error?: ApiError): void {
    if (this.cancelReason !== null) return;
    this.cancelReason = reason;
    this.cancelError = error ?? null;
    this.abortSources();
    this.acceptance?.reject(this.cancelledError());
    this.rejectCancellation(this.cancelledError());
    this.events.clear();
  }

  /** The client stopped reading: the engine keeps this job's requests out of its steps. */
  pause(): void {
    if (this.paused) return;
    this.paused = true;
    for (const src of this.sources) if (!src.finished) this.engine.pause(src.engineId);
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    for (const src of this.sources) if (!src.finished) this.engine.resume(src.engineId);
  }

  private onEvent(p: number, event: EngineEvent): void {
    const src = this.sources[p]!;
    if (event.type === 'done' || event.type === 'error') src.finished = true;
    if (event.type === 'error') {
      this.acceptance?.reject(fromEngineError(event.error));
    } else if (event.type === 'accepted') {
      src.accepted = true;
      if (this.sources.length === this.request.prompts.length && this.sources.every((s) => s.accepted)) this.acceptance?.resolve();
      return;
    }
    this.events.push([p, event]);
  }

  private cancelledError(): Error {
    return this.cancelError ?? new JobCancelledError(this.cancelReason ?? 'cancelled');
  }

  private *map(p: number, src: Source, ev: EngineEvent): Generator<JobOutput> {
    const { echo, bestOf, logprobs } = this.request;
    if (ev.type === 'prompt') {
      if (!echo) return;
      for (let j = 0; j < bestOf; j++) {
        yield { type: 'echo', prompt: p, choice: j, text: this.request.prompts[p]!.text, logprobs: logprobs !== null ? ev.tokens : null };
      }
    } else if (ev.type === 'delta') {
      const count = ev.tokenIds.length;
      if (count > 0) {
        const now = this.clock();
        src.generated += count;
        if (this.firstTokenAt === null) {
          this.firstTokenAt = now;
          this.ctx.observer?.firstToken?.((now - this.startedAt) / 1000);
        }
        const last = src.lastTokenAt.get(ev.choice);
        if (last !== undefined) this.ctx.observer?.interToken?.((now - last) / 1000 / count);
        src.lastTokenAt.set(ev.choice, now);
      }
      yield { type: 'delta', prompt: p, choice: ev.choice, text: ev.text, logprobs: logprobs !== null ? ev.logprobs : null };
    } else if (ev.type === 'finish') {
      yield { type: 'finish', prompt: p, choice: ev.choice, text: ev.text, reason: ev.reason, cumulativeLogprob: ev.cumulativeLogprob };
    }
  }

  /** Cancels every engine request that has not ended. */
  private abortSources(): void {
    for (const src of this.sources) {
      if (src.finished) continue;
      src.finished = true;
      this.engine.cancel(src.engineId);
    }
  }
}
