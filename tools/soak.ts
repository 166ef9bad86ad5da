// npm run soak -- [--duration S] [--model DIR] [--concurrency N] [--seed S] [--json FILE]   (--help)
// Soak test through the public API; the modules are in tools/soak/. Exit 1 when a check fails.
import { UsageError } from './bench/options.js';
import { stopServersOnSignals } from './bench/server-process.js';
import { soakMain } from './soak/soak.js';

stopServersOnSignals('soak');

soakMain(process.argv.slice(2)).then(
  (result) => {
    process.exitCode = result === null || result.ok ? 0 : 1;
  },
  (err: unknown) => {
    process.stderr.write(`soak: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
