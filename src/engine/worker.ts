// Engine worker entry: owns the model runner, the KV pool and the scheduler loop, so that a model
// step (tens of milliseconds of blocking native work) never stalls HTTP handling.
import { parentPort, workerData } from 'node:worker_threads';
import { EngineLoop, buildEngineCore } from './engine-loop.js';
import type { EngineOptions } from './types.js';
import type { FromWorker, ToWorker } from './worker-protocol.js';

const port = parentPort!;
const post = (msg: FromWorker) => port.postMessage(msg);
const log = (message: string) => post({ type: 'log', message });
const options = workerData as EngineOptions;

try {
  const { core, model } = await buildEngineCore(options, log);
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
