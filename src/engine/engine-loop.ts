// Drives an EngineCore: step while there is work, sleep while there is none, hand each step's
// events to a sink in one batch. The same loop runs inside the worker and in-process.
import { loadTokenizer } from '../model/tokenizer.js';
import { readManifest } from '../model/manifest.js';
import { EngineCore, type EventBatch } from './engine-core.js';
import { BlockAllocator } from './kv-cache.js';
import { createOnnxRunner } from './runner.js';
import { Scheduler } from './scheduler.js';
import type { EngineOptions, EngineRequest, EngineStats, ModelInfo } from './types.js';
import { basename } from 'node:path';

export class EngineLoop {
  private wake: (() => void) | null = null;
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(
    readonly core: EngineCore,
    private readonly sink: (batch: EventBatch) => void,
    private readonly log: (msg: string) => void,
  ) {
    this.done = this.run();
  }

  add(request: EngineRequest): void {
    this.core.add(request);
    this.flush(this.core.takeEvents()); // immediate answers: validation errors, echo
    this.notify();
  }

  cancel(id: string): void {
    this.core.cancel(id);
  }

  stats(): EngineStats {
    return this.core.stats();
  }

  /** Stop admitting, let open requests finish for up to drainMs, end the rest, stop the loop. */
  async shutdown(drainMs: number): Promise<void> {
    this.core.startDraining();
    const deadline = Date.now() + drainMs;
    while (this.core.openRequests > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.flush(this.core.abortAll({ code: 'shutting_down', message: 'The server shut down before the request finished.' }));
    this.stopped = true;
    this.notify();
    await this.done;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private flush(batch: EventBatch): void {
    if (batch.length) this.sink(batch);
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      if (!this.core.hasWork()) {
        await new Promise<void>((resolve) => (this.wake = resolve));
        continue;
      }
      try {
        this.flush(await this.core.step());
      } catch (err) {
        this.log(`engine step failed: ${(err as Error).stack ?? err}`);
        this.flush(this.core.abortAll({ code: 'internal_error', message: 'The model step failed; see the server log.' }));
      }
      // Let messages (new requests, cancels) in between steps even if the runner never yielded.
      await new Promise((r) => setImmediate(r));
    }
  }
}

/** Loads the model folder and wires runner, scheduler and core together. */
export async function buildEngineCore(options: EngineOptions, log: (msg: string) => void): Promise<{ core: EngineCore; model: ModelInfo; provider: string }> {
  const manifest = readManifest(options.modelDir);
  const tokenizer = await loadTokenizer(options.modelDir);
  const numBlocks = Math.ceil(options.kvCacheTokens / options.blockSize) + 1; // + the null block
  const { runner, provider } = await createOnnxRunner({
    modelDir: options.modelDir,
    manifest,
    executionProvider: options.executionProvider,
    intraOpThreads: options.intraOpThreads,
    numBlocks,
    blockSize: options.blockSize,
    log,
  });
  const scheduler = new Scheduler(
    { maxNumSeqs: options.maxNumSeqs, maxNumBatchedTokens: Math.max(options.maxNumBatchedTokens, options.maxNumSeqs), blockSize: options.blockSize },
    new BlockAllocator(numBlocks),
  );
  const core = new EngineCore(runner, scheduler, tokenizer, {
    contextLength: manifest.contextLength,
    eosTokenId: manifest.eosTokenId,
    maxQueue: options.maxQueue,
  });
  const model: ModelInfo = {
    name: options.servedModelName ?? basename(options.modelDir),
    contextLength: manifest.contextLength,
    vocabSize: manifest.vocabSize,
    eosTokenId: manifest.eosTokenId,
    weights: { dtype: manifest.dtype, ...(manifest.quantization ? { quantization: manifest.quantization } : {}) },
  };
  return { core, model, provider };
}
