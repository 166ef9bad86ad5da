// The benchmark's command line: parsing, validation (errors name the flag) and help.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { ProgressMode } from './progress.js';
import { BENCH_APIS, type BenchApi, type TransportKind } from './transport.js';

export const DEFAULT_MODEL_DIR = 'models/bench-gpt2-small';
/** The default model of --workload grounded: GPT-2-small shapes whose greedy output copies its context. */
export const DEFAULT_COPY_MODEL_DIR = 'models/bench-gpt2-small-copy';
export const DEFAULT_BASELINE_ARGS = ['--max-num-seqs', '1'];
export const DEFAULT_LORA_DIR = 'models/bench-lora';
/** vLLM's default --max-lora-rank. */
export const DEFAULT_LORA_RANK = 16;
export const WORKLOADS = ['random', 'grounded'] as const;
export type WorkloadKind = (typeof WORKLOADS)[number];

export const USAGE = `Usage: npm run bench -- [--url URL | --model DIR] [options]
       (or: node dist/tools/bench-serving.js [options])

Benchmarks the server through its public API, as a client would: streaming completions over SSE
or the websocket, a seeded workload of random token-id prompts (or, --workload grounded, passages
of English to repeat) with ignore_eos (exact output lengths), at fixed concurrencies (closed loop)
or Poisson arrival rates. Metrics follow vLLM's benchmark_serving: throughput, TTFT, TPOT, ITL and
end-to-end latency (mean, median, p90, p99); where the server counts speculative decoding, each
run's draft acceptance rate and mean acceptance length from its /metrics.

Target (default: --model ${DEFAULT_MODEL_DIR}, a GPT-2-small-shaped random model made once;
with --workload grounded --model ${DEFAULT_COPY_MODEL_DIR}, the same shapes with weights that
copy their context; a folder named like these, with -int8, -int4 or -fp16 after, is made too):
  --url URL                  a running server (e.g. http://127.0.0.1:8000)
  --model DIR                start the server on this model folder (stopped at the end)
  --server-arg ARG           extra flag for the started server(s), repeatable
                             (e.g. --server-arg=--kv-cache-tokens=8192)
  --baseline                 also start a server with --max-num-seqs 1 (no batching), run the same
                             workload on it level by level, and print the speedup (needs --model)
  --baseline-args ARGS       the baseline server's flags instead of --max-num-seqs 1, after the
                             --server-arg ones (e.g. --server-arg=--speculative=ngram --baseline
                             --baseline-args="--speculative off": speculation on over off)

Workload:
  --workload random|grounded random token ids (default), or grounded: "<passage>\n\nRepeat the
                             passage:\n<its first 8 tokens>", the passage cut from the prose of
                             README.md and docs/*.md, a different one per request and run
  --concurrency LIST         requests in flight, comma-separated sweep (default 1,4,16,32); with
                             --rate it caps requests in flight instead (default: no cap)
  --rate LIST                Poisson arrival rates in requests/s, comma-separated (open loop)
  --requests N               requests per run (default: max(4, 2 x concurrency); 32 per rate)
  --prompt-tokens N          prompt length in tokens (default 128)
  --output-tokens N          output length in tokens, exact through ignore_eos (default 64)
  --shared-prefix-tokens N   every prompt starts with the same N tokens, then its own
                             --prompt-tokens (default 0; measures prefix caching; random only)
  --seed N                   workload seed (default 0)
  --transport sse|ws         Server-Sent Events (default) or the websocket endpoint
  --api completions|chat|responses
                             /v1/completions with the prompt ids (default), /v1/chat/completions
                             with the prompt detokenized into one user message, or /v1/responses
                             with that text as its input (max_output_tokens; the Responses event
                             stream, TTFT and ITL from its output_text deltas); a chat's or
                             response's prompt is the rendered conversation: a few tokens more
  --api-key KEY              sent as a bearer token (default: $OPENAI_API_KEY, if set)
  --request-timeout-s S      a request unfinished after S seconds is an error (default 600)
  --hostile-prompt-bytes N   during every run, also send completions with an N-byte prompt, one
                             after another; each must be refused (400/413) while the streams and
                             the /health and /v1/models probes carry on (e.g. 4194304)

LoRA (with --model, not --url):
  --lora-adapters N          make N random LoRA adapters for the model (bench-lora-0 ...: every
                             layer; c_attn, attn c_proj, c_fc, mlp c_proj), start the server with
                             --enable-lora --max-loras N --max-lora-rank R (unless --server-arg
                             sets those two) --lora-modules bench-lora-i=DIR ..., and name them in
                             turn as the requests' "model" (default 0: no adapters)
  --lora-rank R              the adapters' rank (default ${DEFAULT_LORA_RANK}; lora_alpha is 2R)
  --lora-base-share F        this fraction of the requests names the base model instead, spread
                             evenly (default 0)
  --lora-dir DIR             where the adapters are made once and reused (default ${DEFAULT_LORA_DIR})

Output:
  --out FILE                 JSON: configuration, software versions, machine, every run
  --svg FILE                 SVG chart: throughput and p50/p99 latency against the sweep
  --from FILE                run nothing: print the tables of a saved --out file (and chart it
                             with --svg)
  --progress auto|bar|lines|none   progress on stderr (default auto: a bar on a terminal)
  -h, --help
`;

export interface BenchOptions {
  url: string | null;
  model: string | null;
  /** True when --model was not given and the default model folder is used (made if missing). */
  defaultModel: boolean;
  serverArgs: string[];
  baseline: boolean;
  /** Flags the baseline server gets after serverArgs (default DEFAULT_BASELINE_ARGS). */
  baselineArgs: string[];
  workload: WorkloadKind;
  concurrency: number[];
  /** Whether --concurrency was given (with --rate it is then a cap). */
  concurrencyGiven: boolean;
  rates: number[] | null;
  requests: number | null;
  promptTokens: number;
  /** Tokens every prompt starts with (the prefix-caching workload). */
  sharedPrefixTokens: number;
  outputTokens: number;
  seed: number;
  transport: TransportKind;
  api: BenchApi;
  apiKey: string | null;
  requestTimeoutS: number;
  out: string | null;
  svg: string | null;
  /** A saved result to report (and chart) instead of running. */
  from: string | null;
  progress: ProgressMode;
  /** Size of the hostile prompts sent during every run; null: none. */
  hostilePromptBytes: number | null;
  /** LoRA adapters to make and serve (0: none). */
  loraAdapters: number;
  loraRank: number;
  /** Fraction of the requests that name the base model when adapters are served. */
  loraBaseShare: number;
  loraDir: string;
}

export class UsageError extends Error {}

function intFlag(name: string, raw: string, min: number): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return n;
}

function list(name: string, raw: string, parse: (s: string) => number): number[] {
  const items = raw.split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) throw new UsageError(`--${name} needs at least one value`);
  const values = items.map(parse);
  return [...new Set(values)];
}

type FlagValues = Record<string, string | boolean | string[] | undefined>;

/**
 * A tool's flags (node:util parseArgs, strict, no positionals, -h/--help added): the values, or
 * null for --help. A bad flag is a UsageError. Shared by the benchmark and the soak test.
 */
export function parseToolFlags(argv: string[], options: NonNullable<ParseArgsConfig['options']>): FlagValues | null {
  let values: FlagValues;
  try {
    ({ values } = parseArgs({ args: argv, strict: true, allowPositionals: false, options: { ...options, help: { type: 'boolean', short: 'h' } } }));
  } catch (err) {
    throw new UsageError(`${(err as Error).message} (see --help)`);
  }
  return values.help ? null : values;
}

/** Returns null for --help. */
export function parseBenchArgs(argv: string[], env: NodeJS.ProcessEnv = process.env): BenchOptions | null {
  const values = parseToolFlags(argv, {
    url: { type: 'string' },
    model: { type: 'string' },
    'server-arg': { type: 'string', multiple: true },
    baseline: { type: 'boolean' },
    'baseline-args': { type: 'string' },
    workload: { type: 'string' },
    concurrency: { type: 'string' },
    rate: { type: 'string' },
    requests: { type: 'string' },
    'prompt-tokens': { type: 'string' },
    'output-tokens': { type: 'string' },
    'shared-prefix-tokens': { type: 'string' },
    seed: { type: 'string' },
    transport: { type: 'string' },
    api: { type: 'string' },
    'api-key': { type: 'string' },
    'request-timeout-s': { type: 'string' },
    out: { type: 'string' },
    svg: { type: 'string' },
    from: { type: 'string' },
    progress: { type: 'string' },
    'hostile-prompt-bytes': { type: 'string' },
    'lora-adapters': { type: 'string' },
    'lora-rank': { type: 'string' },
    'lora-base-share': { type: 'string' },
    'lora-dir': { type: 'string' },
  });
  if (values === null) return null;
  const str = (k: string) => values[k] as string | undefined;
  const url = str('url') ?? null;
  if (url !== null && str('model') !== undefined) throw new UsageError('--url and --model exclude each other');
  if (url !== null) {
    try {
      const u = new URL(url);
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error();
    } catch {
      throw new UsageError(`--url must be an http(s) URL, got ${JSON.stringify(url)}`);
    }
  }
  const baseline = values.baseline === true;
  if (baseline && url !== null) throw new UsageError('--baseline starts its own servers: use it with --model, not --url');
  const baselineArgsRaw = str('baseline-args');
  if (baselineArgsRaw !== undefined && !baseline) throw new UsageError('--baseline-args sets the --baseline server\'s flags: give --baseline too');
  const baselineArgs = baselineArgsRaw === undefined ? DEFAULT_BASELINE_ARGS : baselineArgsRaw.split(/\s+/).filter(Boolean);
  if (baselineArgs.length === 0) throw new UsageError('--baseline-args needs at least one flag');
  const workload = str('workload') ?? 'random';
  if (!(WORKLOADS as readonly string[]).includes(workload)) throw new UsageError(`--workload must be ${WORKLOADS.join(' or ')}, got ${JSON.stringify(workload)}`);
  const sharedPrefixTokens = intFlag('shared-prefix-tokens', str('shared-prefix-tokens') ?? '0', 0);
  if (sharedPrefixTokens > 0 && workload !== 'random') throw new UsageError('--shared-prefix-tokens applies to --workload random');
  const serverArgs = (values['server-arg'] as string[] | undefined) ?? [];
  if (serverArgs.length && url !== null) throw new UsageError('--server-arg applies to a started server, not to --url');
  const transport = str('transport') ?? 'sse';
  if (transport !== 'sse' && transport !== 'ws') throw new UsageError(`--transport must be sse or ws, got ${JSON.stringify(transport)}`);
  const api = (str('api') ?? 'completions') as BenchApi;
  if (!BENCH_APIS.includes(api)) throw new UsageError(`--api must be completions, chat or responses, got ${JSON.stringify(api)}`);
  const progress = str('progress') ?? 'auto';
  if (!['auto', 'bar', 'lines', 'none'].includes(progress)) throw new UsageError(`--progress must be auto, bar, lines or none`);
  const rates =
    str('rate') === undefined
      ? null
      : list('rate', str('rate')!, (s) => {
          const r = Number(s);
          if (!(r > 0) || !Number.isFinite(r)) throw new UsageError(`--rate values must be numbers > 0, got ${JSON.stringify(s)}`);
          return r;
        });
  const loraAdapters = intFlag('lora-adapters', str('lora-adapters') ?? '0', 0);
  for (const flag of ['lora-rank', 'lora-base-share', 'lora-dir']) {
    if (str(flag) !== undefined && loraAdapters === 0) throw new UsageError(`--${flag} applies to the adapters of --lora-adapters N (N > 0)`);
  }
  if (loraAdapters > 0 && url !== null) throw new UsageError('--lora-adapters makes the adapters and starts the server with them: use it with --model, not --url');
  const loraBaseShare = Number(str('lora-base-share') ?? '0');
  if (!(loraBaseShare >= 0 && loraBaseShare < 1)) throw new UsageError(`--lora-base-share must be a fraction in [0, 1), got ${JSON.stringify(str('lora-base-share'))}`);
  const concurrencyRaw = str('concurrency');
  const timeout = Number(str('request-timeout-s') ?? '600');
  if (!(timeout > 0)) throw new UsageError('--request-timeout-s must be > 0');
  return {
    url: url === null ? null : url.replace(/\/+$/, '').replace(/\/v1$/, ''),
    model: url === null ? (str('model') ?? (workload === 'grounded' ? DEFAULT_COPY_MODEL_DIR : DEFAULT_MODEL_DIR)) : null,
    defaultModel: url === null && str('model') === undefined,
    serverArgs,
    baseline,
    baselineArgs,
    workload: workload as WorkloadKind,
    concurrency: list('concurrency', concurrencyRaw ?? '1,4,16,32', (s) => intFlag('concurrency', s, 1)),
    concurrencyGiven: concurrencyRaw !== undefined,
    rates,
    requests: str('requests') === undefined ? null : intFlag('requests', str('requests')!, 1),
    promptTokens: intFlag('prompt-tokens', str('prompt-tokens') ?? '128', 1),
    outputTokens: intFlag('output-tokens', str('output-tokens') ?? '64', 1),
    sharedPrefixTokens,
    seed: intFlag('seed', str('seed') ?? '0', 0),
    transport,
    api,
    apiKey: str('api-key') ?? env.OPENAI_API_KEY ?? null,
    requestTimeoutS: timeout,
    out: str('out') ?? null,
    svg: str('svg') ?? null,
    from: str('from') ?? null,
    progress: progress as ProgressMode,
    hostilePromptBytes: str('hostile-prompt-bytes') === undefined ? null : intFlag('hostile-prompt-bytes', str('hostile-prompt-bytes')!, 1),
    loraAdapters,
    loraRank: intFlag('lora-rank', str('lora-rank') ?? String(DEFAULT_LORA_RANK), 1),
    loraBaseShare,
    loraDir: str('lora-dir') ?? DEFAULT_LORA_DIR,
  };
}

export interface RunPlan {
  concurrency: number | null;
  rate: number | null;
  requests: number;
}

/** The runs of a sweep, in order. */
export function planRuns(o: Pick<BenchOptions, 'concurrency' | 'concurrencyGiven' | 'rates' | 'requests'>): RunPlan[] {
  if (o.rates === null) {
    return o.concurrency.map((c) => ({ concurrency: c, rate: null, requests: o.requests ?? Math.max(4, 2 * c) }));
  }
  const caps: Array<number | null> = o.concurrencyGiven ? o.concurrency : [null];
  return o.rates.flatMap((rate) => caps.map((c) => ({ concurrency: c, rate, requests: o.requests ?? Math.max(32, 2 * (c ?? 0)) })));
}
