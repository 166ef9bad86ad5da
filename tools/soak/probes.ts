// What the soak watches besides its own requests: GET /health every 100 ms (latency and status,
// as a liveness probe would see them; from a worker thread) and GET /metrics every second (memory,
// requests in flight, KV blocks, sequences), each on a connection of its own.
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Worker } from 'node:worker_threads';
import { repeat } from '../bench/probes.js';
import { spawnWorker } from '../../src/util/spawn-worker.js';
import { httpRequest, type HttpTarget } from './http-client.js';

/** The server metrics the soak reads (names as GET /metrics exposes them). */
export const METRICS = {
  rssBytes: 'gpt2_process_resident_memory_bytes',
  kvCommittedBytes: 'gpt2_kv_cache_committed_bytes',
  inflight: 'gpt2_num_requests_inflight',
  kvBlocksUsed: 'gpt2_kv_cache_blocks_used',
  running: 'gpt2_num_sequences_running',
  paused: 'gpt2_num_sequences_paused',
  waiting: 'gpt2_num_requests_waiting',
} as const;

export type MetricKey = keyof typeof METRICS;
export type MetricValues = Record<MetricKey, number>;

/**
 * The unlabelled samples of a Prometheus text exposition: name -> value. (The soak reads only
 * gauges without labels; a dependency for the full format would buy nothing here.)
 */
export function parsePrometheus(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)\s+(\S+)/.exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

/** The soak's metrics from one scrape; throws naming a missing metric. */
export async function scrapeMetrics(target: HttpTarget): Promise<MetricValues> {
  const r = await httpRequest(target, 'GET', '/metrics', null);
  if (r.status !== 200) throw new Error(`GET /metrics: ${r.error ?? `HTTP ${r.status}`}`);
  const all = parsePrometheus(r.body);
  const out = {} as MetricValues;
  for (const [key, name] of Object.entries(METRICS) as Array<[MetricKey, string]>) {
    const v = all.get(name);
    if (v === undefined) throw new Error(`GET /metrics has no ${name}`);
    out[key] = v;
  }
  return out;
}

export function ownTarget(baseUrl: string, timeoutMs: number): HttpTarget {
  return { baseUrl, agent: new http.Agent({ keepAlive: true, maxSockets: 1 }), requestTimeoutMs: timeoutMs };
}

export interface HealthFailure {
  /** Seconds since the probe started. */
  atS: number;
  status: number;
  error: string | null;
}

/** What the health worker posts: the probes since its last post. */
export interface HealthBatch {
  latenciesMs: number[];
  failures: HealthFailure[];
  slow: Array<{ atS: number; ms: number }>;
  /** The last batch: the worker has stopped. */
  final: boolean;
}

/**
 * GET /health every periodMs from a worker thread of its own, so that the soak's clients (parsing
 * megabytes of stalled readers' output on the main thread) do not delay the probes: the latency
 * measured is the server's.
 */
export class HealthProbe {
  readonly latenciesMs: number[] = [];
  readonly failures: HealthFailure[] = [];
  readonly slow: Array<{ atS: number; ms: number }> = [];
  private worker: Worker | null = null;
  private finished: Promise<void> = Promise.resolve();

  constructor(
    private readonly baseUrl: string,
    private readonly periodMs = 100,
    private readonly timeoutMs = 5000,
  ) {}

  start(): void {
    const worker = spawnWorker(import.meta.url, 'health-worker', { baseUrl: this.baseUrl, periodMs: this.periodMs, timeoutMs: this.timeoutMs });
    this.worker = worker;
    this.finished = new Promise((resolve) => {
      worker.on('message', (batch: HealthBatch) => {
        this.latenciesMs.push(...batch.latenciesMs);
        this.failures.push(...batch.failures);
        this.slow.push(...batch.slow);
        if (batch.final) resolve();
      });
      worker.once('error', (err) => {
        this.failures.push({ atS: -1, status: 0, error: `the health probe failed: ${err.message}` });
        resolve();
      });
      worker.once('exit', () => resolve());
    });
  }

  /** Stops probing; resolves once every probe's result is in. Idempotent. */
  async stop(): Promise<void> {
    const worker = this.worker;
    this.worker = null;
    if (worker) {
      worker.postMessage('stop');
      await this.finished;
      await worker.terminate();
    }
  }
}

export interface MetricsSample extends MetricValues {
  /** Seconds since the sampler started. */
  atS: number;
}

export class MetricsSampler {
  readonly samples: MetricsSample[] = [];
  readonly errors: string[] = [];
  private readonly target: HttpTarget;
  private loop: { stop(): Promise<void> } | null = null;
  private readonly started = performance.now();

  constructor(
    baseUrl: string,
    private readonly periodMs = 1000,
    timeoutMs = 5000,
  ) {
    this.target = ownTarget(baseUrl, timeoutMs);
  }

  /** One scrape now, kept with the others; null (and the error kept) when it failed. */
  async sample(): Promise<MetricsSample | null> {
    try {
      const s = { atS: (performance.now() - this.started) / 1000, ...(await scrapeMetrics(this.target)) };
      this.samples.push(s);
      return s;
    } catch (err) {
      this.errors.push((err as Error).message);
      return null;
    }
  }

  start(): void {
    this.loop = repeat(this.periodMs, () => this.sample().then(() => {}));
  }

  /** Idempotent. */
  async stop(): Promise<void> {
    await this.loop?.stop();
    this.target.agent.destroy();
  }
}
