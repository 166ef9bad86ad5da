// npm run bench -- [--url URL | --model DIR] [--concurrency 1,4,16,32] [--prompt-tokens N]
//                  [--output-tokens N] [--requests N] [--rate R] [--transport sse|ws] [--baseline]
//                  [--workload random|grounded] [--baseline-args ARGS]
//                  [--out FILE] [--svg FILE]          (--help for everything)
// Serving benchmark through the public API; the modules are in tools/bench/ (docs/benchmark.md).
import { benchMain } from './bench/bench.js';
import { UsageError } from './bench/options.js';
import { stopServersOnSignals } from './bench/server-process.js';

stopServersOnSignals('bench');

benchMain(process.argv.slice(2)).then(
  (result) => {
    const runs = result ? result.runs.concat(result.baseline?.runs ?? []) : [];
    // A failed request, a failed /health or /v1/models probe, or a huge prompt that was not refused.
    const failed = runs.some((m) => m.errors + (m.health_failures ?? 0) + (m.models_failures ?? 0) + (m.hostile_unexpected ?? 0) > 0);
    process.exitCode = failed ? 1 : 0;
  },
  (err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`bench: ${message}\n`);
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
