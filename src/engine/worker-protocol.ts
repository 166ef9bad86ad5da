// Messages across the engine worker's port. Events travel as one batch per model step, each with
// the heartbeat the main thread's liveness monitor reads.
import type { EventBatch } from './engine-core.js';
import type { EngineCommand } from './engine-loop.js';
import type { EngineHeartbeat, ModelInfo } from './types.js';

export type ToWorker = EngineCommand | { type: 'shutdown'; drainMs: number };

export type FromWorker =
  | { type: 'ready'; model: ModelInfo }
  /** The engine gave up (start-up failed, or too many failed steps); the worker should be ended. */
  | { type: 'fatal'; message: string }
  | { type: 'log'; message: string }
  | { type: 'events'; batch: EventBatch; heartbeat: EngineHeartbeat };
