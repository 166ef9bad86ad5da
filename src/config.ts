// Every server setting in one place: CLI flag, environment variable, default and validation.
// The CLI help, the Dockerfile and the Kubernetes manifests are all derived from or checked
// against this table, so a setting exists exactly once.
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { BLOCK_SIZE_MULTIPLE } from './engine/kv-cache.js';
import { loraModulesSchema } from './server/lora/module-spec.js';

interface SettingSpec {
  flag: string;
  env: string;
  help: string;
  schema: z.ZodType;
  /** An on/off setting: `--flag` and `--no-flag` on the command line, true/false (1/0, yes/no, on/off) in the environment. */
  switch?: true;
  /** A list: the flag may be given several times, the environment variable is comma-separated. */
  repeatable?: true;
}

const int = (min: number) => z.coerce.number().int().min(min);
/** --max-seqs-in-flight by default: this many sequences per batch slot (256 at --max-num-seqs 32). */
export const SEQS_IN_FLIGHT_PER_BATCH_SLOT = 8;
/** "a,b , c" -> ['a', 'b', 'c']; absent -> [] */
const csv = z
  .string()
  .optional()
  .transform((v) => (v ?? '').split(',').map((x) => x.trim()).filter((x) => x.length > 0));

export const SETTINGS = {
  model: {
    flag: 'model',
    env: 'GPT2_MODEL',
    help: 'Model folder (exported). Default: models/gpt2 if present, else the tiny random model (created once)',
    schema: z.string().min(1).optional(),
  },
  host: { flag: 'host', env: 'GPT2_HOST', help: 'Address to listen on', schema: z.string().default('0.0.0.0') },
  port: { flag: 'port', env: 'GPT2_PORT', help: 'Port to listen on', schema: int(0).max(65535).default(8000) },
  servedModelName: {
    flag: 'served-model-name',
    env: 'GPT2_SERVED_MODEL_NAME',
    help: 'Model id clients must send (default: the model folder name)',
    schema: z.string().min(1).optional(),
  },
  chatTemplate: {
    flag: 'chat-template',
    env: 'GPT2_CHAT_TEMPLATE',
    help:
      "Chat template for /v1/chat/completions: a Jinja file, or the template itself. Default: the model folder's " +
      'tokenizer_config.json chat_template, else a built-in "User:/Assistant:" transcript for base models (docs/api.md)',
    schema: z.string().min(1).optional(),
  },
  apiKeys: {
    flag: 'api-key',
    env: 'GPT2_API_KEY',
    help:
      'Require "Authorization: Bearer <key>" on /v1/*, /tokenize and /detokenize (a websocket may send it as a subprotocol: docs/api.md). ' +
      'Repeat the flag (or comma-separate the variable) for several keys: each is a tenant, and no prefix-cache hit crosses tenants',
    schema: csv,
    repeatable: true,
  },
  apiKeysFile: {
    flag: 'api-keys-file',
    env: 'GPT2_API_KEYS_FILE',
    help:
      'A file of API keys, one "KEY NAME" per line (# comments and blank lines ignored), joining --api-key\'s: each is a tenant, ' +
      'named in logs and metrics by NAME (keys given by flag are key0, key1, ...). Re-read on SIGHUP; a bad file at start is an error, on reload it is logged and the old keys stay',
    schema: z.string().min(1).optional(),
  },
  schedulingPolicy: {
    flag: 'scheduling-policy',
    env: 'GPT2_SCHEDULING_POLICY',
    help:
      "fcfs: a tenant's requests in arrival order, and a request's `priority` must be 0 (vLLM's rule); priority: lower `priority` first within a tenant, " +
      'and a waiting request preempts running ones of its tenant with a higher value. Either way tenants share the batch fairly (the one with the fewest running sequences is admitted next)',
    schema: z.enum(['fcfs', 'priority']).default('fcfs'),
  },
  executionProvider: {
    flag: 'execution-provider',
    env: 'GPT2_EXECUTION_PROVIDER',
    help: 'cpu, cuda, webgpu (KV cache on the device), or auto (CUDA, else WebGPU on a hardware GPU, else CPU)',
    schema: z.enum(['auto', 'cpu', 'cuda', 'webgpu']).default('auto'),
  },
  intraOpThreads: {
    flag: 'intra-op-threads',
    env: 'GPT2_INTRA_OP_THREADS',
    help: 'ONNX Runtime intra-op threads (0 = one per core)',
    schema: int(0).default(0),
  },
  ortProfile: {
    flag: 'ort-profile',
    env: 'GPT2_ORT_PROFILE',
    help: "Profile every model step with ONNX Runtime's profiler; the trace (Chrome trace JSON, per kernel) is written as PREFIX_<date>.json at shutdown. CPU and CUDA only. Slows steps: for finding where time goes, not for serving",
    schema: z.string().min(1).optional(),
  },
  maxNumSeqs: {
    flag: 'max-num-seqs',
    env: 'GPT2_MAX_NUM_SEQS',
    help: 'Most sequences in one running batch',
    schema: int(1).default(32),
  },
  maxNumBatchedTokens: {
    flag: 'max-num-batched-tokens',
    env: 'GPT2_MAX_NUM_BATCHED_TOKENS',
    help: 'Token budget of one model step (decode tokens plus prefill chunks)',
    schema: int(1).default(512),
  },
  maxStepMs: {
    flag: 'max-step-ms',
    env: 'GPT2_MAX_STEP_MS',
    help:
      "Time cap of a step that carries decoding streams, so a prefill cannot stall them: milliseconds, 'auto' " +
      '(2x the predicted cost of a decode step of every running and queued sequence, up to max-num-seqs; more when prompts are most ' +
      "of the requests' work, so that prefill keeps its share) or 0 (token budget only)",
    schema: z.union([z.literal('auto'), int(0)]).default('auto'),
  },
  kvCacheTokens: {
    flag: 'kv-cache-tokens',
    env: 'GPT2_KV_CACHE_TOKENS',
    help: 'KV cache capacity in tokens over all sequences (rounded up to whole blocks)',
    schema: int(1).default(32768),
  },
  blockSize: {
    flag: 'block-size',
    env: 'GPT2_BLOCK_SIZE',
    help: `Tokens per KV cache block, a multiple of ${BLOCK_SIZE_MULTIPLE} (what the attention kernels are built for)`,
    schema: int(1)
      .max(1024)
      .refine((v) => v % BLOCK_SIZE_MULTIPLE === 0, `must be a multiple of ${BLOCK_SIZE_MULTIPLE} (the KV layout the attention kernels are built and tested for)`)
      .default(16),
  },
  enablePromptTokensDetails: {
    flag: 'enable-prompt-tokens-details',
    env: 'GPT2_ENABLE_PROMPT_TOKENS_DETAILS',
    help: "Report usage.prompt_tokens_details.cached_tokens (vLLM's flag; off by default: a prefix-cache hit tells a client that someone sent that prompt before)",
    schema: z.stringbool().default(false),
    switch: true,
  },
  prefixCaching: {
    flag: 'prefix-caching',
    env: 'GPT2_PREFIX_CACHING',
    help: 'Turn off automatic prefix caching (on by default, --prefix-caching: full KV blocks stay cached, LRU, and prompts that start with them skip their prefill)',
    schema: z.stringbool().default(true),
    switch: true,
  },
  speculative: {
    flag: 'speculative',
    env: 'GPT2_SPECULATIVE',
    help:
      'Speculative decoding: off; ngram (drafts copied from where the sequence\'s last tokens occurred before in its prompt or output); ' +
      'or draft (a smaller model, --draft-model). Drafts are verified exactly: greedy and seeded output is the same as without (docs/design.md#speculative-decoding)',
    schema: z.enum(['off', 'ngram', 'draft']).default('off'),
  },
  numSpeculativeTokens: {
    flag: 'num-speculative-tokens',
    env: 'GPT2_NUM_SPECULATIVE_TOKENS',
    help: 'Most draft tokens a sequence proposes per step (the scheduler drafts fewer, or none, where they do not pay)',
    schema: int(1).max(16).default(4),
  },
  promptLookupMin: {
    flag: 'prompt-lookup-min',
    env: 'GPT2_PROMPT_LOOKUP_MIN',
    help: 'ngram: shortest run of last tokens matched against the context',
    schema: int(1).default(2),
  },
  promptLookupMax: {
    flag: 'prompt-lookup-max',
    env: 'GPT2_PROMPT_LOOKUP_MAX',
    help: 'ngram: longest run of last tokens matched (longest first)',
    schema: int(1).default(5),
  },
  draftModel: {
    flag: 'draft-model',
    env: 'GPT2_DRAFT_MODEL',
    help: 'draft: the exported folder of a smaller GPT-2 with the same tokenizer (e.g. distilgpt2 for gpt2-medium)',
    schema: z.string().min(1).optional(),
  },
  enableLora: {
    flag: 'enable-lora',
    env: 'GPT2_ENABLE_LORA',
    help: "Serve LoRA adapters (PEFT folders) beside the base model: a request's `model` may name one (vLLM's flag; cpu and cuda only)",
    schema: z.stringbool().default(false),
    switch: true,
  },
  loraModules: {
    flag: 'lora-modules',
    env: 'GPT2_LORA_MODULES',
    help:
      'With --enable-lora: an adapter served from the start, as name=path or {"name": ..., "path": ..., "base_model_name": ...} ' +
      '(its parent in /v1/models). Repeat the flag for several (the variable is comma-separated); each is read and checked at start, a bad one stops it',
    schema: loraModulesSchema,
    repeatable: true,
  },
  maxLoras: {
    flag: 'max-loras',
    env: 'GPT2_MAX_LORAS',
    help: 'With --enable-lora: distinct adapters one batch may run (each takes a slot of every step); requests of more wait',
    schema: int(1).default(1),
  },
  maxLoraRank: {
    flag: 'max-lora-rank',
    env: 'GPT2_MAX_LORA_RANK',
    help: 'With --enable-lora: the highest adapter rank served (up to 512); every adapter is padded to it in the step graph, and higher ones are refused',
    schema: int(1).max(512).default(16),
  },
  maxCpuLoras: {
    flag: 'max-cpu-loras',
    env: 'GPT2_MAX_CPU_LORAS',
    help:
      'With --enable-lora: adapters held in memory at once; the least recently used idle one is dropped for another, and read again from its folder when asked for ' +
      '(default: --max-loras; at least --max-loras)',
    schema: int(1).optional(),
  },
  allowRuntimeLoraUpdating: {
    flag: 'allow-runtime-lora-updating',
    env: 'GPT2_ALLOW_RUNTIME_LORA_UPDATING',
    help: 'With --enable-lora: serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter (behind --api-key), which add and remove adapters while serving',
    schema: z.stringbool().default(false),
    switch: true,
  },
  maxConcurrentRequests: {
    flag: 'max-concurrent-requests',
    env: 'GPT2_MAX_CONCURRENT_REQUESTS',
    help: 'Requests in flight at once (completions and chats, HTTP or websocket, and /tokenize); more get 429 before any work is done',
    schema: int(1).default(256),
  },
  maxConcurrentRequestsPerKey: {
    flag: 'max-concurrent-requests-per-key',
    env: 'GPT2_MAX_CONCURRENT_REQUESTS_PER_KEY',
    help: 'Requests (completions, chats, /tokenize) one API key may have in flight at once; more get 429 before any work is done (without keys: all requests together). Default: no limit but --max-concurrent-requests',
    schema: int(1).optional(),
  },
  maxSeqsInFlight: {
    flag: 'max-seqs-in-flight',
    env: 'GPT2_MAX_SEQS_IN_FLIGHT',
    help:
      'Sequences (prompts x max(n, best_of)) of the completions in flight at once: more get 429 before any work, and a request ' +
      `that alone brings more gets 400 (default: ${SEQS_IN_FLIGHT_PER_BATCH_SLOT} x --max-num-seqs)`,
    schema: int(1).optional(),
  },
  maxPromptsPerRequest: {
    flag: 'max-prompts-per-request',
    env: 'GPT2_MAX_PROMPTS_PER_REQUEST',
    help: 'Prompts one completion request may carry (a list of strings or of token-id lists)',
    schema: int(1).default(64),
  },
  maxStepFailures: {
    flag: 'max-step-failures',
    env: 'GPT2_MAX_STEP_FAILURES',
    help: 'Model steps that may fail in a row before the engine is declared dead (the process then exits 1)',
    schema: int(1).default(3),
  },
  stepTimeoutMs: {
    flag: 'step-timeout-ms',
    env: 'GPT2_STEP_TIMEOUT_MS',
    help: 'Work pending and no engine step finished for this long: the engine is stuck (/health 503, exit 1); 0 disables',
    schema: int(0).default(60000),
  },
  stallTimeoutMs: {
    flag: 'stall-timeout-ms',
    env: 'GPT2_STALL_TIMEOUT_MS',
    help: 'A client that reads nothing for this long while its stream is paused is cut off and its request cancelled',
    schema: int(1).default(30000),
  },
  wsHighWaterMark: {
    flag: 'ws-high-water-mark',
    env: 'GPT2_WS_HIGH_WATER_MARK',
    help: "Websocket: bytes waiting to be sent above which the socket's requests pause (resume below half)",
    schema: int(1024).default(1024 * 1024),
  },
  wsPingIntervalMs: {
    flag: 'ws-ping-interval-ms',
    env: 'GPT2_WS_PING_INTERVAL_MS',
    help: 'Websocket: ping every this many ms; a socket that missed the previous pong is closed (0 disables)',
    schema: int(0).default(30000),
  },
  drainTimeoutMs: {
    flag: 'drain-timeout-ms',
    env: 'GPT2_DRAIN_TIMEOUT_MS',
    help: 'On SIGTERM/SIGINT, how long in-flight requests may finish before they are cancelled',
    schema: int(0).default(30000),
  },
  maxBodyBytes: {
    flag: 'max-body-bytes',
    env: 'GPT2_MAX_BODY_BYTES',
    help: 'Largest accepted request body, 413 above it (default: 1 KiB per token of the model context, 1 MiB for GPT-2)',
    schema: int(1024).optional(),
  },
  allowedOrigins: {
    flag: 'allowed-origins',
    env: 'GPT2_ALLOWED_ORIGINS',
    help: 'CORS: comma-separated origins allowed to call the API from a browser, or * for any (default: CORS off)',
    schema: csv,
  },
  allowedMethods: {
    flag: 'allowed-methods',
    env: 'GPT2_ALLOWED_METHODS',
    help: 'CORS: comma-separated methods allowed (with --allowed-origins)',
    schema: csv.default(['GET', 'POST', 'OPTIONS']),
  },
  allowedHeaders: {
    flag: 'allowed-headers',
    env: 'GPT2_ALLOWED_HEADERS',
    help: "CORS: comma-separated request headers allowed (with --allowed-origins; default: whatever the browser asks for)",
    schema: csv,
  },
  playground: {
    flag: 'playground',
    env: 'GPT2_PLAYGROUND',
    help: 'Do not serve the browser playground at / (it is on by default; --playground turns it on). With --api-key the page asks for the key',
    schema: z.stringbool().default(true),
    switch: true,
  },
  logLevel: {
    flag: 'log-level',
    env: 'GPT2_LOG_LEVEL',
    help: 'pino level: fatal, error, warn, info, debug, trace, silent',
    schema: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  },
} satisfies Record<string, SettingSpec>;

type Settings = typeof SETTINGS;
export type ServerConfig = { [K in keyof Settings]: z.output<Settings[K]['schema']> };

export class ConfigError extends Error {}

/** Resolves flags over environment over defaults; throws ConfigError naming the bad setting. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ServerConfig {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean }> = {};
  for (const spec of Object.values(SETTINGS) as SettingSpec[]) {
    if (spec.switch) {
      options[spec.flag] = { type: 'boolean' };
      options[`no-${spec.flag}`] = { type: 'boolean' };
    } else {
      options[spec.flag] = spec.repeatable ? { type: 'string', multiple: true } : { type: 'string' };
    }
  }
  let values: Record<string, string | boolean | Array<string | boolean> | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new ConfigError(`${(err as Error).message} (see --help)`);
  }
  const out: Record<string, unknown> = {};
  /** Settings given by flag or environment (not defaulted). */
  const setByUser = new Set<string>();
  for (const [key, spec] of Object.entries(SETTINGS) as Array<[string, SettingSpec]>) {
    const given = values[spec.flag];
    // A repeated flag's values go through the same parsing as the variable's comma-separated list.
    const flagValue = Array.isArray(given) ? given.join(',') : given;
    const raw = spec.switch ? switchValue(values, spec.flag) ?? env[spec.env] : flagValue ?? env[spec.env];
    const parsed = spec.schema.safeParse(raw === '' ? undefined : raw);
    if (!parsed.success) {
      const why = parsed.error.issues.map((i) => i.message).join('; ');
      throw new ConfigError(`--${spec.flag} / ${spec.env}: ${why} (got ${JSON.stringify(raw)})`);
    }
    out[key] = parsed.data;
    if (raw !== undefined && raw !== '') setByUser.add(key);
  }
  const config = out as ServerConfig;
  if (config.maxNumBatchedTokens < config.maxNumSeqs) {
    // Every running sequence decodes one token per step, so a smaller budget could starve some.
    throw new ConfigError(
      `--max-num-batched-tokens (${config.maxNumBatchedTokens}) must be >= --max-num-seqs (${config.maxNumSeqs}): each running sequence needs a token per step`,
    );
  }
  if (config.maxSeqsInFlight !== undefined && config.maxSeqsInFlight < config.maxNumSeqs) {
    // A prompt's choices run in one batch, so a request of up to --max-num-seqs choices must be admissible.
    throw new ConfigError(
      `--max-seqs-in-flight (${config.maxSeqsInFlight}) must be >= --max-num-seqs (${config.maxNumSeqs}): a prompt's choices, up to a full batch, must be admissible`,
    );
  }
  if (config.promptLookupMin > config.promptLookupMax) {
    throw new ConfigError(`--prompt-lookup-min (${config.promptLookupMin}) must be <= --prompt-lookup-max (${config.promptLookupMax})`);
  }
  if ((config.speculative === 'draft') !== (config.draftModel !== undefined)) {
    throw new ConfigError(
      config.speculative === 'draft' ? '--speculative draft needs --draft-model DIR' : `--draft-model is only used with --speculative draft (got --speculative ${config.speculative})`,
    );
  }
  checkLoraSettings(config, setByUser);
  return config;
}

const LORA_SETTINGS = ['loraModules', 'maxLoras', 'maxLoraRank', 'maxCpuLoras', 'allowRuntimeLoraUpdating'] as const;

/** The LoRA settings mean nothing without --enable-lora: giving one anyway is a mistake worth a stop. */
function checkLoraSettings(config: ServerConfig, given: ReadonlySet<string>): void {
  if (!config.enableLora) {
    const stray = LORA_SETTINGS.filter((k) => given.has(k) && (k !== 'allowRuntimeLoraUpdating' || config.allowRuntimeLoraUpdating));
    if (stray.length > 0) {
      throw new ConfigError(`${stray.map((k) => `--${SETTINGS[k].flag}`).join(', ')} ${stray.length > 1 ? 'are' : 'is'} only used with --enable-lora`);
    }
    return;
  }
  if (maxCpuLoras(config) < config.maxLoras) {
    // A batch holds up to --max-loras adapters, all of which must be in memory.
    throw new ConfigError(`--max-cpu-loras (${config.maxCpuLoras}) must be >= --max-loras (${config.maxLoras}): the adapters a batch runs must all be in memory`);
  }
}

/** Adapters held in memory at once: --max-cpu-loras, or its default, --max-loras (vLLM's rule). */
export function maxCpuLoras(config: Pick<ServerConfig, 'maxCpuLoras' | 'maxLoras'>): number {
  return config.maxCpuLoras ?? config.maxLoras;
}

/** A switch's command-line value as the environment would spell it (both --x and --no-x: an error). */
function switchValue(values: Record<string, unknown>, flag: string): string | undefined {
  const on = values[flag] === true;
  const off = values[`no-${flag}`] === true;
  if (on && off) throw new ConfigError(`--${flag} and --no-${flag} were both given`);
  return on ? 'true' : off ? 'false' : undefined;
}

/** Sequences the completions in flight may bring: --max-seqs-in-flight, or its default. */
export function seqsInFlightLimit(config: Pick<ServerConfig, 'maxSeqsInFlight' | 'maxNumSeqs'>): number {
  return config.maxSeqsInFlight ?? SEQS_IN_FLIGHT_PER_BATCH_SLOT * config.maxNumSeqs;
}

/** Body limit when --max-body-bytes is not given: 1 KiB per context token (1 MiB for GPT-2's 1024). */
export function defaultBodyLimit(contextLength: number): number {
  // GPT-2's longest token is 128 bytes; JSON can escape a byte as 6 characters (\u00XX), so a
  // full-context prompt of the longest tokens needs 1024 x 128 x 6 bytes = 768 KiB < 1 MiB.
  return contextLength * 1024;
}

export function configHelp(): string {
  const rows = Object.values(SETTINGS as Record<string, SettingSpec>).map((spec) => {
    if (spec.switch) {
      // The flag that changes something: --no-x for what is on by default, --x for what is off.
      const on = spec.schema.safeParse(undefined).data === true;
      return `  --${(on ? `no-${spec.flag}` : spec.flag).padEnd(24)} ${spec.help}\n  ${' '.repeat(26)} env ${spec.env}=${on ? 'false' : 'true'}`;
    }
    const def = spec.schema.safeParse(undefined);
    const value = def.success ? (Array.isArray(def.data) ? def.data.join(',') : def.data) : undefined;
    const shown = value !== undefined && value !== '' ? ` (default: ${String(value)})` : '';
    return `  --${spec.flag.padEnd(24)} ${spec.help}${shown}\n  ${' '.repeat(26)} env ${spec.env}`;
  });
  return rows.join('\n');
}
