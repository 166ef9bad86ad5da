// The app's serving state: the engine (possibly still loading), the served model id, the phase
// that /health and the routes consult (loading -> ready -> draining -> stopped, or failed), and
// the one registry of requests in flight (completions, chats, /tokenize), which is also admission
// control: a request is counted before any work is done on it, and refused with 429 past
// --max-concurrent-requests requests, --max-concurrent-requests-per-key requests of its tenant,
// or --max-seqs-in-flight sequences (a request brings prompts x max(n, best_of)).
import { createHash } from 'node:crypto';
import type { EngineClient } from '../engine/types.js';
import type { LoraRegistry } from './lora/registry.js';
import { ApiError, overloadedError } from './openai/errors.js';

/** What admission counts: a completion job, or work that finishes on its own soon (/tokenize). */
export interface InFlightWork {
  /** Ends it now (drain timeout, engine death); its client gets `error`. */
  cancel(reason: string, error: ApiError): void;
}

interface Held {
  sequences: number;
  tenant: string;
}

export type Phase = 'loading' | 'ready' | 'failed' | 'draining' | 'stopped';

export class ServingState {
  phase: Phase = 'loading';
  engine: EngineClient | null = null;
  modelId = '';
  systemFingerprint = '';
  /** Requests admitted and not yet fully answered, with their sequences and tenant. */
  private readonly inflight = new Map<InFlightWork, Held>();
  private inflightSeqs = 0;
  private readonly inflightByTenant = new Map<string, number>();
  private idleWaiters: Array<() => void> = [];

  constructor(
    engine: EngineClient | Promise<EngineClient>,
    private readonly servedModelName: string | undefined,
    readonly maxConcurrentRequests: number,
    readonly maxSeqsInFlight: number,
    /** --max-concurrent-requests-per-key; undefined: no limit of its own. */
    readonly maxRequestsPerTenant?: number,
    /** The LoRA adapters served beside the base model (--enable-lora), else null. */
    readonly lora: LoraRegistry | null = null,
  ) {
    if (isPromise(engine)) {
      engine.then(
        (e) => this.setEngine(e),
        () => {
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
    // Before the first request can name an adapter: it must be in the engine by then.
    this.lora?.attach(engine);
    if (this.phase === 'loading') this.phase = 'ready';
  }

  /** The engine, for work that may run while draining (tokenize, model list). */
  requireEngine(): EngineClient {
    if (this.engine) return this.engine;
    if (this.phase === 'loading') throw new ApiError('model_loading', 'The model is still loading; retry shortly');
    if (this.phase === 'failed') throw new ApiError('engine_unavailable', 'The model failed to load');
    throw new ApiError('shutting_down', 'The server is shutting down');
  }

  /** The engine, for new completions: refused (503) unless ready and alive. */
  acceptNewWork(): EngineClient {
    if (this.phase === 'draining' || this.phase === 'stopped') {
      throw new ApiError('shutting_down', 'The server is shutting down and accepts no new requests');
    }
    const engine = this.requireEngine();
    if (engine.health().state !== 'ok') {
      throw new ApiError('engine_unavailable', 'The inference engine is unavailable; the server is restarting');
    }
    return engine;
  }

  /** Why one more completion would not be admitted now (readiness), or null. */
  get atCapacity(): string | null {
    if (this.inflight.size >= this.maxConcurrentRequests) return `${this.maxConcurrentRequests} requests are in flight (--max-concurrent-requests)`;
    if (this.inflightSeqs >= this.maxSeqsInFlight) return `${this.inflightSeqs} sequences are in flight (--max-seqs-in-flight ${this.maxSeqsInFlight})`;
    return null;
  }

  /**
   * Counts `work` of `tenant` and its `sequences` in flight, or throws 429 when
   * --max-concurrent-requests requests are, when --max-concurrent-requests-per-key of the
   * tenant's are, or when its sequences would take the total past --max-seqs-in-flight (a request
   * that alone brings more was refused before: checkFanOut). Returns the release to call once its
   * response is fully written or abandoned (drain waits for that).
   */
  admit(work: InFlightWork, sequences: number, tenant: string): () => void {
    const full = this.atCapacity;
    if (full) throw overloadedError(full);
    const ofTenant = this.inflightByTenant.get(tenant) ?? 0;
    if (this.maxRequestsPerTenant !== undefined && ofTenant >= this.maxRequestsPerTenant) {
      throw overloadedError(`this API key has ${ofTenant} requests in flight (--max-concurrent-requests-per-key ${this.maxRequestsPerTenant})`);
    }
    if (this.inflightSeqs + sequences > this.maxSeqsInFlight) {
      throw overloadedError(`${this.inflightSeqs} sequences are in flight and this request brings ${sequences} (--max-seqs-in-flight ${this.maxSeqsInFlight})`);
    }
    this.inflight.set(work, { sequences, tenant });
    this.inflightSeqs += sequences;
    this.inflightByTenant.set(tenant, ofTenant + 1);
    return () => {
      const held = this.inflight.get(work);
      if (held === undefined) return;
      this.inflight.delete(work);
      this.inflightSeqs -= held.sequences;
      const left = this.inflightByTenant.get(held.tenant)! - 1;
      // Only tenants with requests in flight stay: the map never outgrows the configured keys' names.
      if (left > 0) this.inflightByTenant.set(held.tenant, left);
      else this.inflightByTenant.delete(held.tenant);
      if (this.inflight.size > 0) return;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    };
  }

  /** Ends every request still in flight; their clients get `error` (drain timeout, engine death). */
  cancelAll(error: ApiError): void {
    for (const work of this.inflight.keys()) work.cancel('server shutdown', error);
  }

  get inflightRequests(): number {
    return this.inflight.size;
  }

  /** Resolves when no request is in flight, or after timeoutMs (returns false then). */
  waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.inflight.size === 0) return Promise.resolve(true);
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
