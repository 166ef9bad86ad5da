// Worker entry: reads and checks one LoRA adapter folder (read-off-thread.ts), so that the
// thread serving HTTP does not stop for the tens of milliseconds a safetensors file takes to read,
// convert and check. The matrices are transferred back, not copied.
import { parentPort, workerData } from 'node:worker_threads';
import { readLoraAdapter } from '../../model/lora-adapter.js';
import type { AdapterReadReply, AdapterReadRequest } from './read-off-thread.js';

const port = parentPort!;
const { dir, base, maxRank } = workerData as AdapterReadRequest;
let reply: AdapterReadReply;
let transfer: ArrayBuffer[] = [];
try {
  const adapter = readLoraAdapter(dir, base, { maxRank });
  reply = { ok: true, adapter };
  transfer = [...new Set(adapter.pairs.flatMap((p) => [p.a.buffer, p.b.buffer]))] as ArrayBuffer[];
} catch (err) {
  reply = { ok: false, message: (err as Error).message };
}
port.postMessage(reply, transfer);
