// Which ModelRunner the engine drives: ONNX Runtime, or a module named in EngineOptions.runner
// (a deterministic runner with injected faults, for tests that need the real engine around it).
import type { Manifest } from '../model/manifest.js';
import { createOnnxRunner, type ModelRunner } from './runner.js';
import type { EngineOptions } from './types.js';

/** What a runner module's `createRunner` receives. */
export interface RunnerContext {
  manifest: Manifest;
  /** KV blocks in the pool, the null block included. */
  numBlocks: number;
  blockSize: number;
  /** EngineOptions.runner.options, as given. */
  options: unknown;
  log: (msg: string) => void;
}

export async function createRunner(
  options: EngineOptions,
  ctx: { manifest: Manifest; numBlocks: number; log: (msg: string) => void },
): Promise<ModelRunner> {
  if (options.runner) {
    const mod = (await import(options.runner.url)) as { createRunner?: (c: RunnerContext) => Promise<ModelRunner> };
    if (typeof mod.createRunner !== 'function') throw new Error(`${options.runner.url} does not export createRunner`);
    return mod.createRunner({ ...ctx, blockSize: options.blockSize, options: options.runner.options });
  }
  const { runner } = await createOnnxRunner({
    modelDir: options.modelDir,
    manifest: ctx.manifest,
    executionProvider: options.executionProvider,
    intraOpThreads: options.intraOpThreads,
    ortLogLevel: options.ortLogLevel,
    numBlocks: ctx.numBlocks,
    blockSize: options.blockSize,
    log: ctx.log,
  });
  return runner;
}
