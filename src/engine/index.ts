// The engine's public entry: everything outside src/engine/ goes through here.
import { WorkerEngine } from './client.js';
import type { EngineClient, EngineOptions } from './types.js';

export type { EngineClient, EngineOptions } from './types.js';
export { InProcessEngine, WorkerEngine } from './client.js';

/** Starts the engine in a worker thread, its tokenizer in another. */
export function startEngine(options: EngineOptions, log: (msg: string) => void = () => {}): Promise<EngineClient> {
  return WorkerEngine.start(options, log);
}
