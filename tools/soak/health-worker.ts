// The health probe's thread (see HealthProbe): GET /health every periodMs on its own keep-alive
// connection, posting what it measured once a second and a final batch when told to stop.
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { httpRequest } from './http-client.js';
import { repeat } from '../bench/probes.js';
import { ownTarget, type HealthBatch } from './probes.js';

/** Probes slower than this are kept with their time, to find what held the server up. */
const SLOW_PROBE_MS = 100;
const POST_EVERY_MS = 1000;

const { baseUrl, periodMs, timeoutMs } = workerData as { baseUrl: string; periodMs: number; timeoutMs: number };
const target = ownTarget(baseUrl, timeoutMs);
const started = performance.now();
let batch: HealthBatch = { latenciesMs: [], failures: [], slow: [], final: false };

const post = (final: boolean) => {
  parentPort!.postMessage({ ...batch, final });
  batch = { latenciesMs: [], failures: [], slow: [], final: false };
};

const loop = repeat(periodMs, async () => {
  const r = await httpRequest(target, 'GET', '/health', null);
  const atS = (performance.now() - started) / 1000;
  batch.latenciesMs.push(r.ms);
  if (r.ms >= SLOW_PROBE_MS) batch.slow.push({ atS, ms: r.ms });
  if (r.status !== 200) batch.failures.push({ atS, status: r.status, error: r.error ?? (r.body.slice(0, 200) || null) });
});
const timer = setInterval(() => post(false), POST_EVERY_MS);

parentPort!.once('message', () => {
  clearInterval(timer);
  void loop.stop().then(() => {
    target.agent.destroy();
    post(true);
  });
});
