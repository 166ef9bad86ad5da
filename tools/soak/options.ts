// The soak test's command line: parsing, validation (errors name the flag) and help.
import { DEFAULT_MODEL_DIR, parseToolFlags, UsageError } from '../bench/options.js';

export const USAGE = `Usage: npm run soak -- [--duration S] [--model DIR] [options]
       (or: node dist/tools/soak.js [options])

Starts the server on 127.0.0.1 and drives a bounded, seeded mix of hostile and ordinary clients
for --duration seconds: SSE streams read to the end or dropped after a few chunks, plain JSON
requests, websockets multiplexing completions (some cancelled, some sockets closed mid-stream),
stalled readers over SSE and websockets that the server must pause and cut off, and bad inputs
that must get their 4xx. /health is polled every 100 ms throughout. At the end it waits for the
server to go quiet, scrapes /metrics and prints requests by scenario and outcome plus the checks:
no unexpected 5xx, every outcome one its scenario allows, KV blocks and in-flight requests back to
0, RSS growth past the warm-up peak under 10 % (net of the KV cache's committed pages, which grow
toward the pool's size as blocks are first used), nothing logged at error level, the server still up. Exits 1
when a check fails (and names it), 2 on bad usage.

  --duration S               seconds of traffic (default 120). Warm-up: at least 15 % of it, until
                             every kind of request was answered 3 times; RSS at the end, net of
                             the KV cache's committed pages, must stay within 10 % of the most
                             held in warm-up
  --model DIR                model folder (default ${DEFAULT_MODEL_DIR}: a GPT-2-small-shaped
                             random model, made once as the serving benchmark makes it)
  --concurrency N            client loops running at once (default 16; more than
                             --max-concurrent-requests, so overload is exercised)
  --seed N                   seed of the request mix and every request body (default 0)
  --max-concurrent-requests N   passed to the server (default 16): beyond it, 429
  --stall-timeout-ms MS      passed to the server (default 3000): stalled readers are cut off after it
  --server-arg ARG           extra flag for the server, repeatable (e.g. --server-arg=--max-num-seqs=8)
  --request-timeout-s S      a request unfinished after S seconds counts as unexpected (default 120)
  --json FILE                write the whole result as JSON
  --server-log FILE          write the server's log to FILE (it logs at warn unless
                             --server-arg=--log-level=info)
  -h, --help
`;

export interface SoakOptions {
  durationS: number;
  model: string;
  /** True when --model was not given: the default folder is made if missing. */
  defaultModel: boolean;
  concurrency: number;
  seed: number;
  maxConcurrentRequests: number;
  stallTimeoutMs: number;
  serverArgs: string[];
  requestTimeoutS: number;
  json: string | null;
  serverLog: string | null;
}

/** Server flags the soak sets itself. */
const OWNED_SERVER_FLAGS: Record<string, string> = {
  '--model': 'use --model',
  '--host': 'the soak serves on 127.0.0.1',
  '--port': 'the soak picks a free port',
  '--max-concurrent-requests': 'use --max-concurrent-requests',
  '--stall-timeout-ms': 'use --stall-timeout-ms',
};

function num(name: string, raw: string | undefined, fallback: number, min: number, integer = true): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < min || (integer && !Number.isInteger(n))) {
    throw new UsageError(`--${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got ${JSON.stringify(raw)}`);
  }
  return n;
}

/** Returns null for --help. */
export function parseSoakArgs(argv: string[]): SoakOptions | null {
  const values = parseToolFlags(argv, {
    duration: { type: 'string' },
    model: { type: 'string' },
    concurrency: { type: 'string' },
    seed: { type: 'string' },
    'max-concurrent-requests': { type: 'string' },
    'stall-timeout-ms': { type: 'string' },
    'server-arg': { type: 'string', multiple: true },
    'request-timeout-s': { type: 'string' },
    json: { type: 'string' },
    'server-log': { type: 'string' },
  });
  if (values === null) return null;
  const str = (k: string) => values[k] as string | undefined;
  const serverArgs = (values['server-arg'] as string[] | undefined) ?? [];
  for (const [flag, why] of Object.entries(OWNED_SERVER_FLAGS)) {
    if (serverArgs.some((a) => a === flag || a.startsWith(`${flag}=`))) throw new UsageError(`--server-arg ${flag}: ${why}`);
  }
  return {
    durationS: num('duration', str('duration'), 120, 1, false),
    model: str('model') ?? DEFAULT_MODEL_DIR,
    defaultModel: str('model') === undefined,
    concurrency: num('concurrency', str('concurrency'), 16, 1),
    seed: num('seed', str('seed'), 0, 0),
    maxConcurrentRequests: num('max-concurrent-requests', str('max-concurrent-requests'), 16, 1),
    stallTimeoutMs: num('stall-timeout-ms', str('stall-timeout-ms'), 3000, 100),
    serverArgs,
    requestTimeoutS: num('request-timeout-s', str('request-timeout-s'), 120, 1, false),
    json: str('json') ?? null,
    serverLog: str('server-log') ?? null,
  };
}
