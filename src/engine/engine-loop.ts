// Drives an EngineCore: apply the inbox, step while there is work, wait while there is none, and
// report each step's events with a heartbeat (the edge's only liveness source). The same loop
// runs inside the worker and, for tests, on their own thread. The core is only touched here,
// between steps.
import { basename } from 'node:path';
import type { LoraAdapter } from '../model/lora-adapter.js';
import { loadTokenizer, type Tokenizer } from '../model/tokenizer.js';
import { readManifest } from '../model/manifest.js';
import { AsyncQueue } from '../util/async-queue.js';
import { EngineCore, type EventBatch } from './engine-core.js';
import { BLOCK_SIZE_MULTIPLE, BlockAllocator, committedBytes, describePool, hostBlockBytes, poolShape } from './kv-cache.js';
import { KvCacheManager } from './kv-cache-manager.js';
import { calibrateStepCost } from './calibrate.js';
import { DraftModelProposer } from './draft-model.js';
import { createRunner, type RunnerContext } from './runner-factory.js';
import type { ModelRunner } from './runner.js';
import { PromptLookupProposer, Speculator, type DraftProposer } from './speculation.js';
import { StepCostModel } from './step-cost.js';
import { Scheduler } from './scheduler.js';
import type { EngineError, EngineHeartbeat, EngineOptions, EngineRequest, ModelInfo } from './types.js';

/** What the client asks of the engine; each one counts as applied (see LivenessMonitor). */
export type EngineCommand =
  | { type: 'add'; request: EngineRequest }
  | { type: 'cancel'; id: string }
  | { type: 'pause'; id: string }
  | { type: 'resume'; id: string }
  | { type: 'addAdapter'; id: number; adapter: LoraAdapter }
  | { type: 'removeAdapter'; id: number };

/** `drain` says when it was applied: from then on every command sent before it counts as open work. */
type Internal = { type: 'drain'; applied: () => void } | { type: 'stop'; error: EngineError };

export interface EngineLoopOptions {
  log: (msg: string) => void;
  /** This many failed steps in a row and the engine gives up (ends every request, onFatal). */
  maxConsecutiveStepFailures: number;
  onFatal: (reason: string) => void;
}

export type LoopSink = (batch: EventBatch, heartbeat: EngineHeartbeat) => void;

export class EngineLoop {
  private readonly inbox = new AsyncQueue<EngineCommand | Internal>();
  private applied = 0;
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(
    readonly core: EngineCore,
    private readonly sink: LoopSink,
    private readonly opts: EngineLoopOptions,
  ) {
    this.done = this.run();
  }

  send(command: EngineCommand): void {
    this.inbox.push(command);
  }

  /** Stop admitting, let open requests finish for up to drainMs, end the rest, stop the loop. */
  async shutdown(drainMs: number): Promise<void> {
    const deadline = Date.now() + drainMs;
    // Requests still in the inbox are open too: wait until the loop has taken everything sent before.
    // (A loop that stopped on its own never applies it.)
    await Promise.race([new Promise<void>((applied) => this.inbox.push({ type: 'drain', applied })), this.done]);
    while (!this.stopped && this.core.openRequests > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.inbox.push({ type: 'stop', error: { code: 'shutting_down', message: 'The server shut down before the request finished.' } });
    await this.done;
    // Device-resident pools (WebGPU) are freed only by dispose, and must be before the session is.
    await this.core.disposeRunner();
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      for (let cmd = this.inbox.shift(); cmd && !this.stopped; cmd = this.inbox.shift()) this.apply(cmd);
      if (this.stopped) break;
      // Immediate answers (accepted, refusals, echo) go out before the step, not after it.
      const answers = this.core.takeEvents();
      if (!this.core.hasWork()) {
        this.report(answers);
        const next = await this.inbox.next();
        if (next.done) break;
        this.apply(next.value);
        continue;
      }
      if (answers.length) this.report(answers);
      this.report(await this.core.step());
      const failed = this.core.failedStepsInARow;
      if (failed > 0) this.opts.log(`engine step failed (${failed} in a row): ${String((this.core.lastError as Error)?.stack ?? this.core.lastError)}`);
      if (failed >= this.opts.maxConsecutiveStepFailures) {
        this.fatal(`${failed} model steps failed in a row; the last error: ${String((this.core.lastError as Error)?.message ?? this.core.lastError).split('\n')[0]}`);
        break;
      }
      // Let messages (new requests, cancels) in between steps even if the runner never yielded.
      await new Promise((r) => setImmediate(r));
    }
  }

  private apply(cmd: EngineCommand | Internal): void {
    switch (cmd.type) {
      case 'drain':
        this.core.startDraining();
        return cmd.applied();
      case 'stop':
        this.report(this.core.abortAll(cmd.error));
        this.stopped = true;
        this.inbox.close();
        return;
    }
    this.applied++;
    if (cmd.type === 'add') this.core.add(cmd.request);
    else if (cmd.type === 'cancel') this.core.cancel(cmd.id);
    else if (cmd.type === 'pause') this.core.pause(cmd.id);
    else if (cmd.type === 'resume') this.core.resume(cmd.id);
    else if (cmd.type === 'addAdapter') this.core.addAdapter(cmd.id, cmd.adapter);
    else this.core.removeAdapter(cmd.id);
  }

  private fatal(reason: string): void {
    this.report(this.core.abortAll({ code: 'engine_unavailable', message: reason }));
    this.stopped = true;
    this.inbox.close();
    this.opts.onFatal(reason);
  }

  private report(batch: EventBatch): void {
    this.sink(batch, { stats: this.core.stats(), busy: !this.stopped && this.core.hasWork(), applied: this.applied });
  }
}

/**
 * What the engine can be given besides its (structured-clone-safe) options: tests' scripts, as
 * functions, so that no setting can load one. The server never passes any. A test hands them to
 * buildEngineCore in its own thread, or through its own worker entry (runEngineWorker).
 */
export interface EngineHooks {
  /** Replaces the speculation method's own drafts (tests that script acceptances and rejections). */
  draftProposer?: DraftProposer;
  /** Replaces ONNX Runtime (tests that need the real engine around a scripted model, faults included). */
  runner?: (ctx: RunnerContext & { blockSize: number }) => Promise<ModelRunner>;
}

/** Loads the model folder and wires runner, scheduler and core together. */
export async function buildEngineCore(
  options: EngineOptions,
  log: (msg: string) => void,
  hooks: EngineHooks = {},
): Promise<{ core: EngineCore; model: ModelInfo; tokenizer: Tokenizer }> {
  if (options.blockSize % BLOCK_SIZE_MULTIPLE !== 0) throw new Error(`block size ${options.blockSize} is not a multiple of ${BLOCK_SIZE_MULTIPLE}`);
  const manifest = readManifest(options.modelDir);
  const tokenizer = await loadTokenizer(options.modelDir);
  const numBlocks = Math.ceil(options.kvCacheTokens / options.blockSize) + 1; // + the null block
  const runner = await (hooks.runner ? hooks.runner({ manifest, numBlocks, blockSize: options.blockSize, log }) : createRunner(options, { manifest, numBlocks, log }));
  log(`KV cache: ${describePool(poolShape(manifest, numBlocks, options.blockSize))}`);
  const allocator = new BlockAllocator(numBlocks, options.prefixCaching);
  const kv = new KvCacheManager(allocator, options.blockSize);
  const scheduler = new Scheduler(
    {
      maxNumSeqs: options.maxNumSeqs,
      maxNumBatchedTokens: options.maxNumBatchedTokens,
      blockSize: options.blockSize,
      maxStepMs: options.maxStepMs,
      admissionReserveTokens: options.admissionReserveTokens,
      policy: options.schedulingPolicy,
      maxLoras: options.lora?.maxLoras ?? 0,
    },
    kv,
  );
  const speculation = options.speculation?.method ?? 'off';
  let proposer = speculation === 'off' ? undefined : hooks.draftProposer;
  if (speculation === 'draft' && !proposer) {
    proposer = await DraftModelProposer.load(options, { manifest, tokenizer }, scheduler, numBlocks, log).catch(async (err: unknown) => {
      await runner.dispose();
      throw err;
    });
  }
  if (speculation === 'ngram') proposer ??= new PromptLookupProposer(options.speculation!);
  let cost: StepCostModel | undefined;
  // Speculation decides by predicted step costs whether drafts pay, so it needs the model too.
  if (options.maxStepMs !== 0 || speculation !== 'off') {
    cost = new StepCostModel();
    // Before any sequence exists, so its scratch blocks go straight to the allocator, not through
    // the manager's tables.
    const samples = await calibrateStepCost(runner, allocator, { ...options, contextLength: manifest.contextLength });
    cost.fit(samples);
    log(`step cost calibrated on ${samples.length} timed runs: ${samples.map((s) => `${s.shape.tokens} tok ${s.ms.toFixed(0)} ms`).join(', ')}`);
  }
  const speculator = proposer && new Speculator(options.speculation!, proposer, cost);
  const draftKv = proposer instanceof DraftModelProposer ? proposer.pool : undefined;
  const lora = options.lora ? { ...options.lora, model: { n_layer: manifest.numLayers, n_embd: manifest.hiddenSize, n_head: manifest.numHeads } } : undefined;
  const core = new EngineCore(runner, scheduler, tokenizer, { contextLength: manifest.contextLength, eosTokenId: manifest.eosTokenId, cost, speculator, draftKv, lora });
  const model: ModelInfo = {
    name: options.servedModelName ?? basename(options.modelDir),
    contextLength: manifest.contextLength,
    vocabSize: manifest.vocabSize,
    eosTokenId: manifest.eosTokenId,
    kvCacheTokens: (numBlocks - 1) * options.blockSize,
    kvCacheBytes: numBlocks * (hostBlockBytes(runner.pool) + (draftKv ? hostBlockBytes(draftKv) : 0)),
    kvCommittedAtStartBytes: committedBytes(runner.pool, 0) + (draftKv ? committedBytes(draftKv, 0) : 0),
    maxNumSeqs: options.maxNumSeqs,
    maxTokenBytes: tokenizer.maxTokenBytes,
    weights: { dtype: manifest.dtype, ...(manifest.quantization ? { quantization: manifest.quantization } : {}) },
    lora: options.lora ?? null,
  };
  return { core, model, tokenizer };
}
