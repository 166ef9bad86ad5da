// Every server setting in one place: CLI flag, environment variable, default and validation.
// The CLI help, the Dockerfile and the Kubernetes manifests are all derived from or checked
// against this table, so a setting exists exactly once.
import { parseArgs } from 'node:util';
import { z } from 'zod';

interface SettingSpec {
  flag: string;
  env: string;
  help: string;
  schema: z.ZodType;
}

const int = (min: number) => z.coerce.number().int().min(min);

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
  apiKey: {
    flag: 'api-key',
    env: 'GPT2_API_KEY',
    help: 'Require "Authorization: Bearer <key>" on /v1/*, /tokenize and /detokenize',
    schema: z.string().min(1).optional(),
  },
  executionProvider: {
    flag: 'execution-provider',
    env: 'GPT2_EXECUTION_PROVIDER',
    help: 'cpu, cuda, or auto (CUDA when available, else CPU)',
    schema: z.enum(['auto', 'cpu', 'cuda']).default('auto'),
  },
  intraOpThreads: {
    flag: 'intra-op-threads',
    env: 'GPT2_INTRA_OP_THREADS',
    help: 'ONNX Runtime intra-op threads (0 = one per core)',
    schema: int(0).default(0),
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
  kvCacheTokens: {
    flag: 'kv-cache-tokens',
    env: 'GPT2_KV_CACHE_TOKENS',
    help: 'KV cache capacity in tokens over all sequences (rounded up to whole blocks)',
    schema: int(1).default(32768),
  },
  blockSize: {
    flag: 'block-size',
    env: 'GPT2_BLOCK_SIZE',
    help: 'Tokens per KV cache block',
    schema: int(1).max(1024).default(16),
  },
  maxQueue: {
    flag: 'max-queue',
    env: 'GPT2_MAX_QUEUE',
    help: 'Requests that may wait for admission; more are rejected with 429',
    schema: int(0).default(256),
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
    help: 'Largest accepted request body (413 above it)',
    schema: int(1024).default(4 * 1024 * 1024),
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
  const options: Record<string, { type: 'string' }> = {};
  for (const spec of Object.values(SETTINGS)) options[spec.flag] = { type: 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new ConfigError(`${(err as Error).message} (see --help)`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(SETTINGS) as Array<[string, SettingSpec]>) {
    const raw = values[spec.flag] ?? env[spec.env];
    const parsed = spec.schema.safeParse(raw === '' ? undefined : raw);
    if (!parsed.success) {
      const why = parsed.error.issues.map((i) => i.message).join('; ');
      throw new ConfigError(`--${spec.flag} / ${spec.env}: ${why} (got ${JSON.stringify(raw)})`);
    }
    out[key] = parsed.data;
  }
  return out as ServerConfig;
}

export function configHelp(): string {
  const rows = Object.values(SETTINGS as Record<string, SettingSpec>).map((spec) => {
    const def = spec.schema.safeParse(undefined);
    const shown = def.success && def.data !== undefined ? ` (default: ${String(def.data)})` : '';
    return `  --${spec.flag.padEnd(24)} ${spec.help}${shown}\n  ${' '.repeat(26)} env ${spec.env}`;
  });
  return rows.join('\n');
}
