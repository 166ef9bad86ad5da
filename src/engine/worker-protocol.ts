// Messages across the engine worker's port. Events travel as one batch per model step.
import type { EventBatch } from './engine-core.js';
import type { EngineRequest, EngineStats, ModelInfo } from './types.js';

export type ToWorker =
  | { type: 'add'; request: EngineRequest }
  | { type: 'cancel'; id: string }
  | { type: 'stats'; id: number }
  | { type: 'shutdown'; drainMs: number };

export type FromWorker =
  | { type: 'ready'; model: ModelInfo }
  | { type: 'fatal'; message: string }
  | { type: 'log'; message: string }
  | { type: 'events'; batch: EventBatch }
  | { type: 'stats'; id: number; stats: EngineStats };
