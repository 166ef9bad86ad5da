// The engine's public entry: everything outside src/engine/ goes through here.
import { InProcessEngine, WorkerEngine } from './client.js';
import type { EngineClient, EngineOptions } from './types.js';

export type { EngineClient, EngineOptions } from './types.js';
export { InProcessEngine, WorkerEngine };

/** Starts the engine in a worker thread (default) or in this thread. */
export async function startEngine(
  options: EngineOptions,
  opts: { inProcess?: boolean; log?: (msg: string) => void } = {},
): Promise<EngineClient> {
  const log = opts.log ?? (() => {});
  return opts.inProcess ? InProcessEngine.start(options, log) : WorkerEngine.start(options, log);
}
