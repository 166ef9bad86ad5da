// Starting the engine: src/main.ts's serve() imports this module only when it starts one, so
// that what never starts an engine (--help, a bad setting) does not load ONNX Runtime.
import { WorkerEngine } from './client.js';
import type { EngineClient, EngineOptions } from './types.js';

/** Starts the engine in a worker thread, its tokenizer in another. */
export function startEngine(options: EngineOptions, log: (msg: string) => void = () => {}): Promise<EngineClient> {
  return WorkerEngine.start(options, log);
}
