// Engine worker entry: owns the ONNX session, the KV pool and the scheduler loop, so that a
// model step (tens of milliseconds of blocking native work) never stalls HTTP handling.
import { parentPort, workerData } from 'node:worker_threads';
import { EngineLoop, buildEngineCore } from './engine-loop.js';
import type { EngineOptions } from './types.js';
import type { FromWorker, ToWorker } from './worker-protocol.js';

const port = parentPort!;
const post = (msg: FromWorker) => port.postMessage(msg);
const log = (message: string) => post({ type: 'log', message });

try {
  const { core, model } = await buildEngineCore(workerData as EngineOptions, log);
  const loop = new EngineLoop(core, (batch) => post({ type: 'events', batch }), log);
  port.on('message', (msg: ToWorker) => {
    switch (msg.type) {
      case 'add':
        return loop.add(msg.request);
      case 'cancel':
        return loop.cancel(msg.id);
      case 'stats':
        return post({ type: 'stats', id: msg.id, stats: loop.stats() });
      case 'shutdown':
        void loop.shutdown(msg.drainMs).then(() => port.close());
    }
  });
  post({ type: 'ready', model });
} catch (err) {
  post({ type: 'fatal', message: (err as Error).message });
}
