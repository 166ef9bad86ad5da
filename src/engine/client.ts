// The EngineClient: WorkerEngine runs the engine loop in a worker thread and the tokenizer in
// another, so the main thread never waits on a model step or a tokenizer. BaseEngineClient, what
// it shares with the tests' in-process engine (test/helpers/in-process-engine.ts), routes a step's
// event batch to per-request sinks and judges liveness from heartbeats.
//
// Death is final: when the worker exits or errors, the engine gives up after repeated step
// failures, or work is pending with no progress for stepTimeoutMs, every open request gets an
// `engine_unavailable` error event, new requests get one at once, and onDead listeners run (the
// CLI drains what can still be answered and exits non-zero so that a supervisor restarts it).
import type { Worker } from 'node:worker_threads';
import { loadChatTemplate, type ChatRenderRequest, type ChatTemplateInfo, type ChatTemplateSpec } from '../model/chat-template.js';
import type { LoraAdapter } from '../model/lora-adapter.js';
import { TokenizerThread, type ChatEncoding, type TextCodec } from '../model/tokenizer-thread.js';
import { spawnWorker } from '../util/spawn-worker.js';
import type { EventBatch } from './engine-core.js';
import type { EngineCommand } from './engine-loop.js';
import { EMPTY_STATS, LivenessMonitor } from './liveness.js';
import { EngineStartError } from './start-error.js';
import type {
  EngineClient,
  EngineEvent,
  EngineHealth,
  EngineHeartbeat,
  EngineOptions,
  EngineRequest,
  EngineStats,
  EventSink,
  ModelInfo,
} from './types.js';
import type { FromWorker, ToWorker } from './worker-protocol.js';
import type { CompileResult, ConstraintSpec } from '../structured/constraint.js';

export abstract class BaseEngineClient implements EngineClient {
  /** The one main-thread registry of engine requests: id -> where its events go. */
  private readonly sinks = new Map<string, EventSink>();
  private readonly liveness: LivenessMonitor;
  private readonly deathListeners: Array<(reason: string) => void> = [];
  private readonly stuckTimer: NodeJS.Timeout | null = null;
  /** shutdown() was called: the engine ending is expected, not a death. */
  protected closing = false;

  readonly chatTemplate: ChatTemplateInfo;

  constructor(
    readonly model: ModelInfo,
    private readonly codec: TextCodec,
    chatTemplate: ChatTemplateSpec,
    stepTimeoutMs: number,
  ) {
    this.chatTemplate = { source: chatTemplate.source, stop: chatTemplate.stop };
    // Until the engine's first heartbeat: nothing running, and the KV memory already committed (pools on huge pages).
    this.liveness = new LivenessMonitor(stepTimeoutMs, undefined, { ...EMPTY_STATS, kvBytesCommitted: model.kvCommittedAtStartBytes });
    if (stepTimeoutMs > 0) {
      this.stuckTimer = setInterval(() => this.checkProgress(), Math.min(1000, Math.max(10, stepTimeoutMs / 4)));
      this.stuckTimer.unref();
    }
  }

  submit(request: EngineRequest, sink: EventSink): void {
    if (this.sinks.has(request.id)) throw new Error(`duplicate engine request id ${request.id}`);
    const refusal = this.liveness.dead ? this.deathEvent() : this.closing ? SHUTTING_DOWN : null;
    if (refusal) {
      queueMicrotask(() => sink(refusal));
      return;
    }
    this.sinks.set(request.id, sink);
    this.command({ type: 'add', request });
  }

  cancel(id: string): void {
    if (this.sinks.delete(id)) this.command({ type: 'cancel', id });
  }

  pause(id: string): void {
    if (this.sinks.has(id)) this.command({ type: 'pause', id });
  }

  resume(id: string): void {
    if (this.sinks.has(id)) this.command({ type: 'resume', id });
  }

  stats(): EngineStats {
    return this.liveness.latestStats();
  }

  health(): EngineHealth {
    return this.liveness.check();
  }

  onDead(listener: (reason: string) => void): void {
    this.deathListeners.push(listener);
  }

  encode(texts: string[]): Promise<number[][]> {
    return this.codec.encode(texts);
  }

  decode(lists: number[][]): Promise<string[]> {
    return this.codec.decode(lists);
  }

  encodeChat(request: ChatRenderRequest): Promise<ChatEncoding> {
    return this.codec.encodeChat(request);
  }

  compileConstraint(spec: ConstraintSpec): Promise<CompileResult> {
    return this.codec.compileConstraint(spec);
  }

  addAdapter(id: number, adapter: LoraAdapter): void {
    if (!this.model.lora) throw new Error('LoRA adapters need an engine started with LoRA enabled');
    if (!this.liveness.dead && !this.closing) this.command({ type: 'addAdapter', id, adapter });
  }

  removeAdapter(id: number): void {
    if (!this.liveness.dead && !this.closing) this.command({ type: 'removeAdapter', id });
  }

  async shutdown(options: { drainMs?: number } = {}): Promise<void> {
    this.closing = true;
    if (this.stuckTimer) clearInterval(this.stuckTimer);
    if (!this.liveness.dead) await this.stopLoop(options.drainMs ?? 0);
    // Whatever the engine did not answer (it died while draining) hears why now.
    this.failOpen(SHUTTING_DOWN);
    await this.codec.close();
  }

  /** Engine output: one step's events plus the heartbeat that says the engine is alive. */
  protected deliver(batch: EventBatch, heartbeat: EngineHeartbeat): void {
    this.liveness.heartbeat(heartbeat);
    for (const [id, event] of batch) {
      const sink = this.sinks.get(id);
      if (!sink) continue; // cancelled on this side; the engine has been told
      if (event.type === 'done' || event.type === 'error') this.sinks.delete(id);
      sink(event);
    }
  }

  /** The engine is gone for good: every open request and every later one gets an error. */
  protected die(reason: string): void {
    if (this.liveness.dead || this.closing) return;
    this.liveness.markDead(reason);
    if (this.stuckTimer) clearInterval(this.stuckTimer);
    this.failOpen(this.deathEvent());
    void this.abandon()
      .then(() => this.codec.close())
      .catch(() => {});
    for (const listener of this.deathListeners) listener(reason);
  }

  /** Posts a command to the loop (whichever thread it runs on). */
  protected abstract post(command: ToWorker): void;
  /** Graceful: drain for up to drainMs and stop the loop. */
  protected abstract stopLoop(drainMs: number): Promise<void>;
  /** After death: release what is left of the loop (terminate the worker). */
  protected abstract abandon(): Promise<void>;

  private command(command: EngineCommand): void {
    this.liveness.commandSent();
    this.post(command);
  }

  private checkProgress(): void {
    const health = this.liveness.check();
    if (health.state === 'stuck') this.die(`the engine is stuck: ${health.reason}`);
  }

  private deathEvent(): EngineEvent {
    return { type: 'error', error: { code: 'engine_unavailable', message: `The engine is unavailable: ${this.health().reason}` } };
  }

  private failOpen(event: EngineEvent): void {
    const open = [...this.sinks.values()];
    this.sinks.clear();
    for (const sink of open) sink(event);
  }
}

const SHUTTING_DOWN: EngineEvent = {
  type: 'error',
  error: { code: 'shutting_down', message: 'The server shut down before the request finished.' },
};

export class WorkerEngine extends BaseEngineClient {
  private readonly exited: Promise<void>;

  private constructor(
    model: ModelInfo,
    codec: TokenizerThread,
    chat: ChatTemplateSpec,
    private readonly worker: Worker,
    options: EngineOptions,
    log: (msg: string) => void,
  ) {
    super(model, codec, chat, options.stepTimeoutMs);
    let failure = '';
    worker.on('message', (msg: FromWorker) => {
      if (msg.type === 'events') this.deliver(msg.batch, msg.heartbeat);
      else if (msg.type === 'log') log(msg.message);
      else if (msg.type === 'fatal') this.die(msg.message);
    });
    worker.on('error', (err) => {
      failure = `: ${err.message}`;
      log(`engine worker error: ${err.stack ?? err}`);
    });
    this.exited = new Promise((resolve) =>
      worker.once('exit', (code) => {
        this.die(`the engine worker exited (code ${code})${failure}`);
        resolve();
      }),
    );
  }

  /**
   * `spawn` starts the engine's worker thread. The server keeps the default (worker.ts); tests
   * give one that starts their own entry, which runs the same runEngineWorker with a scripted
   * runner (test/helpers/scripted-worker.ts): the narrowest seam that puts a test's model inside
   * the real worker, since functions cannot travel to a worker and no option should load code.
   */
  static async start(
    options: EngineOptions,
    log: (msg: string) => void = () => {},
    spawn: (options: EngineOptions) => Worker = (o) => spawnWorker(import.meta.url, 'worker', o),
  ): Promise<WorkerEngine> {
    let engine: WorkerEngine | null = null;
    const chat = chatTemplateOf(options);
    const codecStart = TokenizerThread.start({ modelDir: options.modelDir, chatTemplate: chat }, (reason) => engine?.die(reason));
    const worker = spawn(options);
    try {
      const [codec, model] = await Promise.all([codecStart, waitReady(worker, log)]);
      for (const event of ['message', 'error', 'exit']) worker.removeAllListeners(event); // not Node's own listeners
      engine = new WorkerEngine(model, codec, chat, worker, options, log);
      return engine;
    } catch (err) {
      void worker.terminate();
      void codecStart.then((c) => c.close(), () => {});
      throw new EngineStartError(options.modelDir, (err as Error).message);
    }
  }

  protected post(command: ToWorker): void {
    this.worker.postMessage(command);
  }

  protected async stopLoop(drainMs: number): Promise<void> {
    this.post({ type: 'shutdown', drainMs });
    await this.exited;
  }

  protected async abandon(): Promise<void> {
    await this.worker.terminate();
  }
}

/** The chat template, chosen before anything starts: one that does not parse fails the start. */
export function chatTemplateOf(options: EngineOptions): ChatTemplateSpec {
  try {
    return loadChatTemplate(options.modelDir, options.chatTemplate);
  } catch (err) {
    throw new EngineStartError(options.modelDir, (err as Error).message);
  }
}

function waitReady(worker: Worker, log: (msg: string) => void): Promise<ModelInfo> {
  return new Promise<ModelInfo>((resolve, reject) => {
    worker.on('message', (msg: FromWorker) => {
      if (msg.type === 'log') log(msg.message);
      else if (msg.type === 'ready') resolve(msg.model);
      else if (msg.type === 'fatal') reject(new Error(msg.message));
    });
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`engine worker exited with code ${code} during start-up`)));
  });
}
