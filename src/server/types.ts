// Options of buildApp and the decorations it adds to Fastify's types. Every setting comes from
// ServerConfig (src/config.ts); these options only pin what tests need to pin.
import type { FastifyBaseLogger } from 'fastify';
import type { ServerConfig } from '../config.js';
import type { LoraAdapter } from '../model/lora-adapter.js';
import type { ServerMetrics } from './metrics.js';
import type { ServingState } from './state.js';
import type { Tenants } from './tenants.js';

export interface AppOptions {
  /** A pino logger (main passes one); omitted or false: no logging (tests). */
  logger?: FastifyBaseLogger | false;
  /** Wall clock in ms, for `created` (tests pin it). */
  now?: () => number;
  /** Suffix of completion ids `cmpl-<suffix>` (tests pin it). */
  newId?: () => string;
  /** Monotonic clock in ms, for latencies. */
  clock?: () => number;
  /** Also export prom-client's process metrics (main turns this on). */
  defaultMetrics?: boolean;
  /** Reads a LoRA adapter folder while serving (default: in a worker thread); tests inject slow or failing reads. */
  readLoraAdapter?: (dir: string) => Promise<LoraAdapter>;
}

export type ResolvedAppOptions = Required<Omit<AppOptions, 'logger' | 'readLoraAdapter'>>;

/** Per-request figures for the "request finished" log line. */
export interface CompletionStats {
  promptTokens: number;
  completionTokens: number;
  ttftMs: number | null;
  error?: string;
}

declare module 'fastify' {
  interface FastifyInstance {
    serving: ServingState;
    metrics: ServerMetrics;
    config: ServerConfig;
    /** The API keys and their names; main re-reads --api-keys-file into it on SIGHUP. */
    tenants: Tenants;
    appOptions: ResolvedAppOptions;
    /**
     * Graceful shutdown: /health and new completions answer 503 at once, in-flight requests may
     * finish for up to timeoutMs (default --drain-timeout-ms), the engine shuts down, the app closes.
     */
    drain(options?: { timeoutMs?: number }): Promise<void>;
  }
  interface FastifyRequest {
    completionStats: CompletionStats | null;
    /** Set once the "request finished" line was written (hijacked replies write it themselves). */
    finishRecorded: boolean;
    /** With API keys: the name of the key the request carried (its tenant); null otherwise. */
    tenant: string | null;
  }
}
