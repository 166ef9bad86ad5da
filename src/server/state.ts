// The app's serving state: the engine (possibly still loading), the served model id, and the
// phase that /health and the completion routes consult (loading -> ready -> draining -> stopped).
import { createHash } from 'node:crypto';
import type { EngineClient } from '../engine/types.js';
import type { CompletionJob } from './openai/completion-job.js';
import { ApiError } from './openai/errors.js';

export type Phase = 'loading' | 'ready' | 'failed' | 'draining' | 'stopped';

export class ServingState {
  phase: Phase = 'loading';
  engine: EngineClient | null = null;
  modelId = '';
  systemFingerprint = '';
  loadError: unknown = undefined;
  /** Completion requests (HTTP or websocket) still writing to a client. */
  private inflight = 0;
  private readonly jobs = new Set<CompletionJob>();
  private idleWaiters: Array<() => void> = [];

  constructor(
    engine: EngineClient | Promise<EngineClient>,
    private readonly servedModelName: string | undefined,
  ) {
    if (isPromise(engine)) {
      engine.then(
        (e) => this.setEngine(e),
        (err) => {
          this.loadError = err;
          if (this.phase === 'loading') this.phase = 'failed';
        },
      );
    } else {
      this.setEngine(engine);
    }
  }

  private setEngine(engine: EngineClient): void {
    this.engine = engine;
    this.modelId = this.servedModelName ?? engine.model.name;
    const m = engine.model;
    this.systemFingerprint =
      'fp_' + createHash('sha256').update(`gpt2-serve:${this.modelId}:${m.contextLength}:${m.vocabSize}`).digest('hex').slice(0, 10);
    if (this.phase === 'loading') this.phase = 'ready';
  }

  /** The engine, for work that may run while draining (tokenize, model list). */
  requireEngine(): EngineClient {
    if (this.engine) return this.engine;
    if (this.phase === 'loading') throw new ApiError('model_loading', 'The model is still loading; retry shortly');
    if (this.phase === 'failed') throw new ApiError('engine_unavailable', 'The model failed to load');
    throw new ApiError('shutting_down', 'The server is shutting down');
  }

  /** The engine, for new completions: refused (503) unless ready. */
  acceptNewWork(): EngineClient {
    if (this.phase === 'draining' || this.phase === 'stopped') {
      throw new ApiError('shutting_down', 'The server is shutting down and accepts no new requests');
    }
    return this.requireEngine();
  }

  beginRequest(job: CompletionJob): () => void {
    this.inflight++;
    this.jobs.add(job);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.inflight--;
      this.jobs.delete(job);
      if (this.inflight === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      }
    };
  }

  /** Ends every job still in flight; their clients get `error` (used when the drain timeout passes). */
  cancelAll(error: ApiError): void {
    for (const job of this.jobs) job.cancel('server shutdown', error);
  }

  get inflightRequests(): number {
    return this.inflight;
  }

  /** Resolves when no completion is in flight, or after timeoutMs (returns false then). */
  waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.inflight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.idleWaiters.push(done);
    });
  }
}

function isPromise<T>(v: T | Promise<T>): v is Promise<T> {
  return typeof (v as { then?: unknown })?.then === 'function';
}
