// The engine worker's body: owns the model runner, the KV pool and the scheduler loop, so that a
// model step (blocking native work) never stalls HTTP handling. worker.ts, the entry WorkerEngine
// spawns, runs it with the options alone; hooks exist for tests, whose own worker entry passes a
// scripted runner (functions cannot travel in workerData).
import { parentPort } from 'node:worker_threads';
import { EngineLoop, buildEngineCore, type EngineHooks } from './engine-loop.js';
import type { EngineOptions } from './types.js';
import type { FromWorker, ToWorker } from './worker-protocol.js';

export async function runEngineWorker(options: EngineOptions, hooks: EngineHooks = {}): Promise<void> {
  const port = parentPort!;
  const post = (msg: FromWorker) => port.postMessage(msg);
  const log = (message: string) => post({ type: 'log', message });
  try {
    const { core, model } = await buildEngineCore(options, log, hooks);
    const loop = new EngineLoop(core, (batch, heartbeat) => post({ type: 'events', batch, heartbeat }), {
      log,
      maxConsecutiveStepFailures: options.maxConsecutiveStepFailures,
      onFatal: (message) => post({ type: 'fatal', message }),
    });
    port.on('message', (msg: ToWorker) => {
      if (msg.type === 'shutdown') void loop.shutdown(msg.drainMs).then(() => port.close());
      else loop.send(msg);
    });
    post({ type: 'ready', model });
  } catch (err) {
    post({ type: 'fatal', message: (err as Error).message });
  }
}
