// EngineClient implementations. Both route a step's event batch to per-request streams; they
// differ only in where the loop runs: a worker thread (production: the main thread never waits
// on a model step) or this thread (tests that want to step the engine deterministically).
import { Worker } from 'node:worker_threads';
import { loadTokenizer, type Tokenizer } from '../model/tokenizer.js';
import type { EventBatch } from './engine-core.js';
import { EngineLoop, buildEngineCore } from './engine-loop.js';
import { EventStream } from './event-stream.js';
import type { EngineClient, EngineEvent, EngineOptions, EngineRequest, EngineStats, ModelInfo } from './types.js';
import type { FromWorker, ToWorker } from './worker-protocol.js';

abstract class BaseEngineClient implements EngineClient {
  private readonly streams = new Map<string, EventStream>();

  constructor(
    readonly model: ModelInfo,
    private readonly tokenizer: Tokenizer,
  ) {}

  submit(request: EngineRequest): AsyncIterable<EngineEvent> {
    if (this.streams.has(request.id)) throw new Error(`duplicate request id ${request.id}`);
    const stream = new EventStream(() => {
      this.streams.delete(request.id);
      this.sendCancel(request.id);
    });
    this.streams.set(request.id, stream);
    this.sendAdd(request);
    return stream;
  }

  cancel(id: string): void {
    const stream = this.streams.get(id);
    if (stream) void stream.return();
    else this.sendCancel(id);
  }

  tokenize(text: string): number[] {
    return this.tokenizer.encode(text);
  }

  detokenize(tokens: number[]): string {
    return this.tokenizer.decode(tokens);
  }

  /** Ends every open stream with an error (the worker died). */
  protected failAll(message: string): void {
    this.dispatch([...this.streams.keys()].map((id) => [id, { type: 'error', error: { code: 'internal_error', message } }]));
  }

  protected dispatch(batch: EventBatch): void {
    for (const [id, event] of batch) {
      const stream = this.streams.get(id);
      if (!stream) continue; // cancelled on this side; the engine has been told
      stream.push(event);
      if (event.type === 'done' || event.type === 'error') this.streams.delete(id);
    }
  }

  abstract stats(): Promise<EngineStats>;
  abstract shutdown(options?: { drainMs?: number }): Promise<void>;
  protected abstract sendAdd(request: EngineRequest): void;
  protected abstract sendCancel(id: string): void;
}

export class InProcessEngine extends BaseEngineClient {
  private loop!: EngineLoop;

  static async start(options: EngineOptions, log: (msg: string) => void = () => {}): Promise<InProcessEngine> {
    const { core, model } = await buildEngineCore(options, log);
    const engine = new InProcessEngine(model, await loadTokenizer(options.modelDir));
    engine.loop = new EngineLoop(core, (batch) => engine.dispatch(batch), log);
    return engine;
  }

  async stats(): Promise<EngineStats> {
    return this.loop.stats();
  }

  shutdown(options: { drainMs?: number } = {}): Promise<void> {
    return this.loop.shutdown(options.drainMs ?? 0);
  }

  protected sendAdd(request: EngineRequest): void {
    // Deferred so that a consumer always attaches before the first event, as with the worker.
    queueMicrotask(() => this.loop.add(request));
  }

  protected sendCancel(id: string): void {
    this.loop.cancel(id);
  }
}

export class WorkerEngine extends BaseEngineClient {
  private nextStatsId = 0;
  private readonly pendingStats = new Map<number, (s: EngineStats) => void>();
  private exited: Promise<void>;

  private constructor(
    model: ModelInfo,
    tokenizer: Tokenizer,
    private readonly worker: Worker,
  ) {
    super(model, tokenizer);
    worker.on('message', (msg: FromWorker) => {
      if (msg.type === 'events') this.dispatch(msg.batch);
      else if (msg.type === 'stats') {
        this.pendingStats.get(msg.id)?.(msg.stats);
        this.pendingStats.delete(msg.id);
      }
    });
    this.exited = new Promise((resolve) =>
      worker.once('exit', (code) => {
        this.failAll(`The engine worker exited (code ${code}).`);
        resolve();
      }),
    );
  }

  static async start(options: EngineOptions, log: (msg: string) => void = () => {}): Promise<WorkerEngine> {
    const tokenizer = await loadTokenizer(options.modelDir);
    const worker = spawnWorker(options);
    const model = await new Promise<ModelInfo>((resolve, reject) => {
      const onMessage = (msg: FromWorker) => {
        if (msg.type === 'log') log(msg.message);
        else if (msg.type === 'ready') resolve(msg.model);
        else if (msg.type === 'fatal') reject(new Error(msg.message));
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`engine worker exited with code ${code} during start-up`)));
    });
    worker.removeAllListeners('message');
    worker.removeAllListeners('error');
    worker.removeAllListeners('exit');
    const engine = new WorkerEngine(model, tokenizer, worker);
    worker.on('message', (msg: FromWorker) => msg.type === 'log' && log(msg.message));
    worker.on('error', (err) => log(`engine worker error: ${err.stack ?? err}`));
    return engine;
  }

  stats(): Promise<EngineStats> {
    const id = this.nextStatsId++;
    return new Promise((resolve) => {
      this.pendingStats.set(id, resolve);
      this.post({ type: 'stats', id });
    });
  }

  async shutdown(options: { drainMs?: number } = {}): Promise<void> {
    this.post({ type: 'shutdown', drainMs: options.drainMs ?? 0 });
    await this.exited;
  }

  protected sendAdd(request: EngineRequest): void {
    this.post({ type: 'add', request });
  }

  protected sendCancel(id: string): void {
    this.post({ type: 'cancel', id });
  }

  private post(msg: ToWorker): void {
    this.worker.postMessage(msg);
  }
}

/** Built code runs worker.js; under tsx (tests, dev) the worker registers tsx before loading worker.ts. */
function spawnWorker(options: EngineOptions): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./worker.js', import.meta.url), { workerData: options });
  const entry = new URL('./worker.ts', import.meta.url).href;
  const bootstrap = `import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(bootstrap, { eval: true, workerData: options });
}
