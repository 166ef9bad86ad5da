// One run's figures, as vLLM's benchmark_serving computes them (calculate_metrics):
// throughputs over the run's duration from successful requests; TTFT, TPOT, ITL and E2E latency
// summarized over successful requests; TPOT = (e2e - ttft) / (output tokens - 1) per request with
// more than one output token; ITL pools every request's gaps.
import type { HostileResult, ProbeResult } from './probes.js';
import type { RequestResult } from './request-result.js';
import type { SpecDecodeMetrics } from './spec-metrics.js';
import { summarize, type Summary } from './stats.js';

export interface RunMetrics {
  /** Requests in flight at most (null: uncapped Poisson run). */
  concurrency: number | null;
  /** Poisson arrival rate in requests/s (null: closed loop at `concurrency`). */
  request_rate: number | null;
  num_requests: number;
  completed: number;
  errors: number;
  /** Up to five distinct error messages. */
  error_samples: string[];
  duration_s: number;
  total_input_tokens: number;
  total_output_tokens: number;
  /** Completed requests/s. */
  request_throughput: number;
  /** Output tokens/s. */
  output_throughput: number;
  /** (Input + output) tokens/s. */
  total_token_throughput: number;
  ttft_ms: Summary;
  tpot_ms: Summary;
  itl_ms: Summary;
  e2el_ms: Summary;
  /** GET /health latency while the run's load was on (absent in results made before it existed). */
  health_ms?: Summary;
  /** /health probes that failed (non-200 or no answer) during the run. */
  health_failures?: number;
  /** GET /v1/models latency while the run's load was on. */
  models_ms?: Summary;
  models_failures?: number;
  /** With --hostile-prompt-bytes: huge prompts refused (400/413) and answered otherwise during the run. */
  hostile_refused?: number;
  hostile_unexpected?: number;
  /** Speculative decoding during the run, from the server's /metrics (absent where it has no such counters). */
  spec_decode?: SpecDecodeMetrics;
}

/** What the probes saw during a run (tools/bench/probes.ts). */
export interface RunProbes {
  health: ProbeResult;
  models: ProbeResult;
  hostile: HostileResult | null;
}

export function computeMetrics(
  results: readonly RequestResult[],
  durationMs: number,
  run: { concurrency: number | null; rate: number | null },
  probes?: RunProbes,
): RunMetrics {
  const ok = results.filter((r) => r.ok);
  const failed = results.filter((r) => !r.ok);
  const totalIn = ok.reduce((s, r) => s + r.promptTokens, 0);
  const totalOut = ok.reduce((s, r) => s + r.outputTokens, 0);
  const tpots = ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2eMs - r.ttftMs) / (r.outputTokens - 1));
  const itls: number[] = [];
  for (const r of ok) for (const gap of r.itlMs) itls.push(gap);
  const seconds = durationMs / 1000;
  const per = (n: number) => (seconds > 0 ? n / seconds : 0);
  return {
    concurrency: run.concurrency,
    request_rate: run.rate,
    num_requests: results.length,
    completed: ok.length,
    errors: failed.length,
    error_samples: [...new Set(failed.map((r) => r.error ?? 'unknown error'))].slice(0, 5),
    duration_s: seconds,
    total_input_tokens: totalIn,
    total_output_tokens: totalOut,
    request_throughput: per(ok.length),
    output_throughput: per(totalOut),
    total_token_throughput: per(totalIn + totalOut),
    ttft_ms: summarize(ok.map((r) => r.ttftMs)),
    tpot_ms: summarize(tpots),
    itl_ms: summarize(itls),
    e2el_ms: summarize(ok.map((r) => r.e2eMs)),
    ...(probes
      ? {
          health_ms: summarize(probes.health.latenciesMs),
          health_failures: probes.health.failures,
          models_ms: summarize(probes.models.latenciesMs),
          models_failures: probes.models.failures,
          ...(probes.hostile ? { hostile_refused: probes.hostile.refused, hostile_unexpected: probes.hostile.unexpected } : {}),
        }
      : {}),
  };
}
