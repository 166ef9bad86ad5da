// readLoraAdapter in a worker thread of its own, for the adapters the server reads while it
// serves (an adapter --max-cpu-loras let go and a request names again, POST
// /v1/load_lora_adapter). Reads are rare, so each starts a worker and lets it end.
import type { Gpt2Config } from '../../model/gpt2-checkpoint.js';
import type { LoraAdapter } from '../../model/lora-adapter.js';
import { spawnWorker } from '../../util/spawn-worker.js';

export interface AdapterReadRequest {
  dir: string;
  base: Gpt2Config;
  maxRank: number;
}

export type AdapterReadReply = { ok: true; adapter: LoraAdapter } | { ok: false; message: string };

/** The adapter in `dir`, or a rejection whose message says what is wrong with it (readLoraAdapter's). */
export function readLoraAdapterOffThread(request: AdapterReadRequest): Promise<LoraAdapter> {
  return new Promise((resolve, reject) => {
    const worker = spawnWorker(import.meta.url, 'read-worker', request);
    let settled = false;
    worker.once('message', (reply: AdapterReadReply) => {
      settled = true;
      if (reply.ok) resolve(reply.adapter);
      else reject(new Error(reply.message));
    });
    worker.once('error', (err) => {
      if (settled) return;
      settled = true;
      reject(err);
    });
    worker.once('exit', (code) => {
      if (!settled) reject(new Error(`the adapter reader thread exited (code ${code}) without an answer`));
    });
  });
}
