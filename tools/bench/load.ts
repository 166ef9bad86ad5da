// Drives one run: sends a workload through a transport either at a fixed concurrency (closed
// loop: N clients, each sends its next request when the previous one completes) or at Poisson
// arrival times (open loop), optionally capped at N requests in flight (vLLM's max-concurrency).
import { performance } from 'node:perf_hooks';
import type { RequestResult } from './request-result.js';
import type { Transport } from './transport.js';
import { poissonArrivals, type BenchRequest } from './workload.js';

export interface LoadSpec {
  requests: BenchRequest[];
  /** Requests in flight at most; null: no cap (rate runs only). */
  concurrency: number | null;
  /** Poisson arrivals at this many requests/s; null: send as fast as the concurrency allows. */
  rate: number | null;
  seed: number;
}

export interface LoadProgress {
  done: number;
  total: number;
  errors: number;
  outputTokens: number;
  elapsedMs: number;
}

export interface LoadResult {
  results: RequestResult[];
  /** From the first send to the last completion (vLLM's benchmark duration). */
  durationMs: number;
}

export async function runLoad(transport: Transport, spec: LoadSpec, onProgress?: (p: LoadProgress) => void): Promise<LoadResult> {
  const { requests, concurrency, rate } = spec;
  if (rate === null && concurrency === null) throw new Error('a run needs a concurrency or a rate');
  const total = requests.length;
  const results: RequestResult[] = new Array(total);
  const start = performance.now();
  let done = 0;
  let errors = 0;
  let outputTokens = 0;
  let lastEnd = start;

  const one = async (request: BenchRequest) => {
    const r = await transport.send(request, start);
    lastEnd = Math.max(lastEnd, performance.now());
    results[request.index] = r;
    done++;
    if (r.ok) outputTokens += r.outputTokens;
    else errors++;
    onProgress?.({ done, total, errors, outputTokens, elapsedMs: performance.now() - start });
  };

  if (rate === null) {
    let next = 0;
    const client = async () => {
      while (next < total) await one(requests[next++]!);
    };
    await Promise.all(Array.from({ length: Math.min(concurrency!, total) }, client));
  } else {
    const arrivals = poissonArrivals(spec.seed, rate, total);
    const slots = new Semaphore(concurrency ?? Infinity);
    const inflight: Promise<void>[] = [];
    for (const request of requests) {
      const wait = start + arrivals[request.index]! - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      await slots.acquire();
      inflight.push(one(request).finally(() => slots.release()));
    }
    await Promise.all(inflight);
  }
  return { results, durationMs: lastEnd - start };
}

class Semaphore {
  private free: number;
  private readonly waiters: Array<() => void> = [];

  constructor(size: number) {
    this.free = size;
  }

  acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const w = this.waiters.shift();
    if (w) w();
    else this.free++;
  }
}
