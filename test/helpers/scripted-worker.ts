// The engine worker's entry for tests: the production worker body (runEngineWorker) with the
// scripted runner in place of ONNX Runtime. WorkerEngine starts it through its `spawn` argument
// (serving.ts); workerData carries the engine's options and the runner's.
import { workerData } from 'node:worker_threads';
import type { EngineOptions } from '../../src/engine/types.js';
import { runEngineWorker } from '../../src/engine/worker-loop.js';
import { scriptedRunner, type ScriptedRunnerOptions } from './scripted-runner.js';

export interface ScriptedWorkerData {
  options: EngineOptions;
  runner: ScriptedRunnerOptions;
}

const data = workerData as ScriptedWorkerData;
await runEngineWorker(data.options, { runner: scriptedRunner(data.runner) });
