// Engine worker entry, the module WorkerEngine spawns: the engine with its options and no hooks.
import { workerData } from 'node:worker_threads';
import type { EngineOptions } from './types.js';
import { runEngineWorker } from './worker-loop.js';

await runEngineWorker(workerData as EngineOptions);
