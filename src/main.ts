// CLI entry: `gpt2-serve [serve] [flags]` (npm start). Resolves the model folder, starts the
// engine, listens, drains gracefully on SIGTERM/SIGINT, and re-reads --api-keys-file on SIGHUP. Every setting has a flag and an
// environment variable (src/config.ts); --help lists them.
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { ConfigError, configHelp, defaultBodyLimit, loadConfig, type ServerConfig } from './config.js';
import { ModelFolderError, readManifest } from './model/manifest.js';
import { EngineStartError } from './engine/start-error.js';
import type { EngineClient, EngineOptions } from './engine/types.js';
import { describeWeights } from './model/manifest.js';
import { CONTRACT_VERSION } from './model/serving-graph.js';
import { buildApp } from './server/app.js';
import { LoraModuleError } from './server/lora/registry.js';
import { Tenants } from './server/tenants.js';
import { hugePages, hugePagesAdvice } from './util/huge-pages.js';

export const DEFAULT_MODEL_DIR = path.join('models', 'gpt2');
export const TINY_MODEL_DIR = path.join('models', 'tiny-random-gpt2');
const MANIFEST = 'manifest.json';

const USAGE = `Usage: npm start -- [serve] [options]      (or: node dist/src/main.js serve [options])

Serves a GPT-2 model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
/v1/completions/ws, /v1/models, /health, /metrics, /tokenize, /detokenize) and a browser
playground at /. Flags override environment variables. Without --model it serves models/gpt2 if
present, else a tiny random model (noise; get GPT-2 with \`npm run download -- openai-community/gpt2\`).

Options:
`;

export interface ServeDeps {
  startEngine?: (options: EngineOptions) => Promise<EngineClient>;
  makeTinyModel?: (options: { out: string; force?: boolean }) => Promise<unknown>;
  logger?: Logger;
  /** Called as soon as the app exists (before listening), e.g. to install signal handlers. */
  onApp?: (app: FastifyInstance) => void;
}

export interface Serving {
  app: FastifyInstance;
  engine: EngineClient;
  address: string;
}

/** --model if given; else models/gpt2 if exported there; else the tiny random model, created once. */
export async function resolveModelDir(
  configured: string | undefined,
  logger: Logger,
  makeTiny: (options: { out: string; force?: boolean }) => Promise<unknown>,
): Promise<string> {
  if (configured) return path.resolve(configured);
  const gpt2 = path.resolve(DEFAULT_MODEL_DIR);
  if (existsSync(path.join(gpt2, MANIFEST))) return gpt2;
  const tiny = path.resolve(TINY_MODEL_DIR);
  if (!existsSync(path.join(tiny, MANIFEST))) {
    logger.info({ dir: tiny }, 'creating the tiny random model (once)');
    await makeTiny({ out: tiny });
  } else if (contractOf(path.join(tiny, MANIFEST)) !== CONTRACT_VERSION) {
    // The server made this folder itself, for an older graph contract: make it again.
    logger.info({ dir: tiny }, `the tiny random model was exported for another graph contract: creating it again for contract ${CONTRACT_VERSION}`);
    await makeTiny({ out: tiny, force: true });
  }
  logger.warn(
    { dir: tiny },
    'serving the tiny random model: its output is noise. Get GPT-2 with `npm run download -- openai-community/gpt2` (then restart)',
  );
  return tiny;
}

export function engineOptions(config: ServerConfig, modelDir: string): EngineOptions {
  return {
    modelDir,
    servedModelName: config.servedModelName,
    chatTemplate: config.chatTemplate,
    executionProvider: config.executionProvider,
    intraOpThreads: config.intraOpThreads,
    // ONNX Runtime prints plain text to stderr; the log is JSON, so it speaks only when debugging.
    ortLogLevel: config.logLevel === 'trace' ? 'verbose' : config.logLevel === 'debug' ? 'warning' : 'fatal',
    ...(config.ortProfile !== undefined ? { ortProfile: config.ortProfile } : {}),
    maxNumSeqs: config.maxNumSeqs,
    maxNumBatchedTokens: config.maxNumBatchedTokens,
    maxStepMs: config.maxStepMs,
    kvCacheTokens: config.kvCacheTokens,
    blockSize: config.blockSize,
    prefixCaching: config.prefixCaching,
    schedulingPolicy: config.schedulingPolicy,
    ...(config.enableLora ? { lora: { maxLoras: config.maxLoras, maxRank: config.maxLoraRank } } : {}),
    speculation: {
      method: config.speculative,
      numTokens: config.numSpeculativeTokens,
      lookupMin: config.promptLookupMin,
      lookupMax: config.promptLookupMax,
      draftModelDir: config.draftModel,
    },
    maxConsecutiveStepFailures: config.maxStepFailures,
    stepTimeoutMs: config.stepTimeoutMs,
  };
}

/**
 * Listens first (so /health answers 503 while the model loads), then waits for the engine.
 * Rejects if the engine fails to load (the app is closed by then).
 */
export async function serve(config: ServerConfig, deps: ServeDeps = {}): Promise<Serving> {
  const logger = deps.logger ?? pino({ level: config.logLevel });
  const makeTiny =
    deps.makeTinyModel ??
    (async (o: { out: string; force?: boolean }) => {
      const { makeTinyModel } = await import('./model/tiny.js');
      return makeTinyModel(o);
    });
  const start =
    deps.startEngine ??
    (async (o: EngineOptions) => {
      const { startEngine } = await import('./engine/index.js');
      return startEngine(o, (msg: string) => logger.info(msg));
    });

  const modelDir = await resolveModelDir(config.model, logger, makeTiny);
  // A folder that cannot be served fails here, before listening, with what to do about it.
  const { contextLength } = readManifest(modelDir);
  let startEngine!: (engine: Promise<EngineClient>) => void;
  const enginePromise = new Promise<EngineClient>((resolve) => (startEngine = resolve));
  // Built before the engine starts: a bad --lora-modules adapter fails here, before the model loads.
  const app = buildApp(enginePromise, { ...config, model: modelDir, maxBodyBytes: config.maxBodyBytes ?? defaultBodyLimit(contextLength) }, { logger, defaultMetrics: true });
  startEngine(start(engineOptions(config, modelDir)));
  deps.onApp?.(app);
  await app.listen({ host: config.host, port: config.port });
  const address = listeningUrl(config.host, (app.server.address() as AddressInfo).port);
  logger.info({ address, modelDir }, 'listening; loading the model');
  let engine: EngineClient;
  try {
    engine = await enginePromise;
  } catch (err) {
    await app.close();
    throw err;
  }
  const pages = hugePages();
  logger.info(
    {
      model: app.serving.modelId,
      contextLength: engine.model.contextLength,
      weights: describeWeights(engine.model.weights),
      chatTemplate: engine.chatTemplate.source,
      address,
      memory: memoryOutlook(engine),
      hugePages: pages,
    },
    'model loaded; serving',
  );
  const advice = hugePagesAdvice(pages);
  if (advice) logger.warn(advice);
  return { app, engine, address };
}

/**
 * Memory now and the most it should reach: the KV pools commit their pages as blocks are first
 * written, so RSS grows by what they have not committed yet; the rest of what the process holds
 * (weights, sessions) is in place once the model is loaded.
 */
function memoryOutlook(engine: EngineClient): { rssMiB: number; kvCacheMiB: number; kvCommittedMiB: number; expectedMaxRssMiB: number } {
  const mib = (bytes: number) => Math.round(bytes / 2 ** 20);
  const rss = process.memoryUsage.rss();
  const committed = engine.stats().kvBytesCommitted;
  const pools = engine.model.kvCacheBytes;
  return { rssMiB: mib(rss), kvCacheMiB: mib(pools), kvCommittedMiB: mib(committed), expectedMaxRssMiB: mib(rss - committed + pools) };
}

/** What the server listens on, as a URL (0.0.0.0 stays 0.0.0.0: every interface, not just loopback). */
export function listeningUrl(host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/**
 * The engine died (worker exit, repeated step failures, stuck): its requests have had their
 * errors; answer what can still be answered, then exit 1 so that Docker or Kubernetes restarts us.
 */
export function exitOnEngineDeath(serving: Serving, config: ServerConfig, logger: Logger): void {
  serving.engine.onDead((reason) => {
    logger.fatal({ reason }, 'the inference engine died; draining, then exiting with status 1 so that a supervisor restarts the server');
    serving.app
      .drain({ timeoutMs: Math.min(config.drainTimeoutMs, 5000) })
      .catch((err: unknown) => logger.error({ err }, 'drain after engine death failed'))
      .finally(() => process.exit(1));
  });
}

/** SIGTERM/SIGINT: drain (503 for new work, in-flight requests finish up to the timeout), exit 0. */
export function installSignalHandlers(app: FastifyInstance, config: ServerConfig, logger: Logger): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: exiting without waiting');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal, drainTimeoutMs: config.drainTimeoutMs }, 'shutting down');
    app.drain({ timeoutMs: config.drainTimeoutMs }).then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  if (config.apiKeysFile !== undefined) process.on('SIGHUP', () => reloadApiKeys(app, logger));
}

/** SIGHUP: re-reads --api-keys-file; a bad file is logged and the keys in use stay (never a crash). */
export function reloadApiKeys(app: FastifyInstance, logger: Logger): void {
  try {
    app.tenants.reload();
    logger.info({ tenants: app.tenants.names }, 'API keys reloaded');
  } catch (err) {
    logger.error({ problem: (err as Error).message }, 'API keys not reloaded: the keys in use stay');
  }
}

export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env, deps: ServeDeps = {}): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${USAGE}${configHelp()}\n`);
    return;
  }
  let args = argv;
  if (args[0] !== undefined && !args[0].startsWith('-')) {
    if (args[0] !== 'serve') {
      process.stderr.write(
        `error: unknown command "${args[0]}" (commands: serve; models: npm run download / npm run model:tiny; see --help)\n`,
      );
      process.exit(2);
    }
    args = args.slice(1);
  }
  let config: ServerConfig;
  try {
    config = loadConfig(args, env);
    // A bad --api-keys-file stops the start here, naming its line, before the model loads.
    Tenants.fromConfig(config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`error: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = deps.logger ?? pino({ level: config.logLevel });
  // ONNX Runtime would otherwise try to upload telemetry (and print a plain-text warning into the
  // JSON log where no CA bundle exists). Set before the engine loads the native library.
  process.env.ORT_DISABLE_TELEMETRY ??= '1';
  try {
    // Signals while the model loads must drain too, so handlers go in as soon as the app exists.
    const serving = await serve(config, { ...deps, logger, onApp: (app) => installSignalHandlers(app, config, logger) });
    exitOnEngineDeath(serving, config, logger);
  } catch (err) {
    // A model folder or model that cannot be loaded is an operator's problem, not a bug: one line
    // that says what to do, no stack.
    if (err instanceof ModelFolderError) logger.fatal({ modelDir: err.dir, problem: err.problem }, err.message);
    else if (err instanceof EngineStartError) logger.fatal({ modelDir: err.modelDir }, err.message);
    else if (err instanceof LoraModuleError) logger.fatal({ adapter: err.adapter }, err.message);
    else logger.fatal({ err }, 'failed to start');
    process.exit(1);
  }
}

function isEntryPoint(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(entry)).href;
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`error: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}

function contractOf(manifestFile: string): unknown {
  try {
    return (JSON.parse(readFileSync(manifestFile, 'utf8')) as { contractVersion?: unknown }).contractVersion;
  } catch {
    return undefined;
  }
}
