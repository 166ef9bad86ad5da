// The real server for route tests: buildApp over the real engine (in-process, or in its worker
// with the tokenizer thread) driving the ScriptedRunner on the tiny model's manifest and real
// GPT-2 tokenizer. Routes thus exercise the real queueing, flow control, cancellation and error
// paths; only the model's arithmetic is scripted (see scripted-runner.ts).
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { loadConfig, type ServerConfig } from '../../src/config.js';
import { WorkerEngine } from '../../src/engine/client.js';
import type { EngineClient, EngineEvent, EngineOptions, EngineRequest, EventSink } from '../../src/engine/types.js';
import { loadTokenizer, type Tokenizer } from '../../src/model/tokenizer.js';
import { buildApp, type AppOptions } from '../../src/server/app.js';
import { spawnWorker } from '../../src/util/spawn-worker.js';
import { InProcessEngine } from './in-process-engine.js';
import { greedyTokens, scriptedRunner, type ScriptedRunnerOptions } from './scripted-runner.js';
import type { ScriptedWorkerData } from './scripted-worker.js';
import { engineOptions, tinyModel } from './tiny-model.js';

export const MODEL = 'tiny-model';
export const VOCAB = 50257;
export const EOS = 50256;

export interface EngineSetup {
  /** Run the engine in its worker thread (and tokenize in the tokenizer thread). */
  worker?: boolean;
  runner?: ScriptedRunnerOptions;
  engine?: Partial<EngineOptions>;
}

export async function startTestEngine(setup: EngineSetup = {}): Promise<EngineClient> {
  const options = engineOptions(await tinyModel(), { servedModelName: MODEL, ...setup.engine });
  return setup.worker ? startScriptedWorkerEngine(options, setup.runner) : InProcessEngine.start(options, () => {}, { runner: scriptedRunner(setup.runner) });
}

/** The production WorkerEngine, its worker running the scripted runner (scripted-worker.ts). */
export function startScriptedWorkerEngine(options: EngineOptions, runner: ScriptedRunnerOptions = {}, log?: (msg: string) => void): Promise<WorkerEngine> {
  return WorkerEngine.start(options, log, (o) => spawnWorker(import.meta.url, 'scripted-worker', { options: o, runner } satisfies ScriptedWorkerData));
}

/** The server's defaults, with overrides; never reads the real environment. */
export function testConfig(overrides: Partial<ServerConfig> = {}): ServerConfig {
  return { ...loadConfig([], {}), ...overrides };
}

/** An app with pinned ids and clock, so responses are byte-for-byte stable. */
export function makeApp(engine: EngineClient | Promise<EngineClient>, config: Partial<ServerConfig> = {}, opts: AppOptions = {}): FastifyInstance {
  let n = 0;
  return buildApp(engine, testConfig(config), {
    now: () => 1_700_000_000_000,
    newId: () => (n++ === 0 ? 'test' : `test${n - 1}`),
    ...opts,
  });
}

export interface TestServer {
  app: FastifyInstance;
  engine: EngineClient;
}

type After = { after: (fn: () => Promise<unknown>) => void };

/** A ready app over a fresh engine; both are closed after the test. */
export async function serveTest(t: After, setup: EngineSetup & { config?: Partial<ServerConfig>; app?: AppOptions } = {}): Promise<TestServer> {
  const engine = await startTestEngine(setup);
  const app = makeApp(engine, setup.config, setup.app);
  t.after(async () => {
    app.server.closeAllConnections(); // clients a test left hanging
    await app.close();
    await engine.shutdown();
  });
  await app.ready();
  return { app, engine };
}

let tokenizer: Promise<Tokenizer> | null = null;

/** The real GPT-2 tokenizer the tiny model carries (for expected texts). */
export async function gpt2Tokenizer(): Promise<Tokenizer> {
  tokenizer ??= tinyModel().then((dir) => loadTokenizer(dir));
  return tokenizer;
}

/** What the engine must generate greedily for `prompt` (text or ids): its ids and text. */
export async function greedy(prompt: string | number[], count: number): Promise<{ ids: number[]; text: string; promptIds: number[] }> {
  const tok = await gpt2Tokenizer();
  const promptIds = typeof prompt === 'string' ? tok.encode(prompt) : prompt;
  const ids = greedyTokens(promptIds, count, VOCAB);
  return { ids, text: tok.decode(ids), promptIds };
}

/** Parses an SSE body into its `data:` payloads ("[DONE]" kept as the string). */
export function parseSse(body: string): unknown[] {
  return body
    .split('\n\n')
    .filter((block) => block.length > 0)
    .map((block) => {
      if (!block.startsWith('data: ')) throw new Error(`not an SSE data block: ${JSON.stringify(block)}`);
      const data = block.slice('data: '.length);
      return data === '[DONE]' ? data : JSON.parse(data);
    });
}

/**
 * Resolves when `predicate` holds, polling; rejects after `timeoutMs`. The bound only catches a
 * hang: a loaded machine may take many times as long as a quiet one, so what a test means by "at
 * once" or "early" it asserts with counts (tokens delivered, steps run), never with this bound.
 */
export async function waitFor(predicate: () => boolean, timeoutMs = 30_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Records what reaches the engine, then lets the real engine do its work (a spy, not a fake). */
export interface EngineSpy {
  submitted: EngineRequest[];
  cancelled: string[];
  paused: string[];
  resumed: string[];
  /** Texts sent to the tokenizer. */
  encoded: string[];
  /** Events delivered per engine request id. */
  delivered: Map<string, EngineEvent[]>;
}

export function spyOn(engine: EngineClient): EngineSpy {
  const spy: EngineSpy = { submitted: [], cancelled: [], paused: [], resumed: [], encoded: [], delivered: new Map() };
  const real = {
    submit: engine.submit.bind(engine),
    cancel: engine.cancel.bind(engine),
    pause: engine.pause.bind(engine),
    resume: engine.resume.bind(engine),
    encode: engine.encode.bind(engine),
  };
  Object.assign(engine, {
    submit: (req: EngineRequest, sink: EventSink) => {
      spy.submitted.push(structuredClone(req));
      const seen: EngineEvent[] = [];
      spy.delivered.set(req.id, seen);
      real.submit(req, (ev) => {
        seen.push(ev);
        sink(ev);
      });
    },
    cancel: (id: string) => (spy.cancelled.push(id), real.cancel(id)),
    pause: (id: string) => (spy.paused.push(id), real.pause(id)),
    resume: (id: string) => (spy.resumed.push(id), real.resume(id)),
    encode: (texts: string[]) => (spy.encoded.push(...texts), real.encode(texts)),
  });
  return spy;
}

/** A logger that keeps its JSON lines, parsed, for a test to inspect. */
export function memoryLogger(): { lines: Array<Record<string, unknown>>; logger: Logger } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  return { lines, logger: pino({ level: 'info' }, sink) };
}
