// GET /health at a fixed interval while a run's load is on: the liveness latency an orchestrator
// sees under load (answered from the engine's heartbeat, so it should stay in milliseconds however
// busy the engine is). One probe in flight at a time, on its own connection pool.
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';

export interface HealthProbe {
  /** Stops probing; resolves with every probe's latency in ms (failed probes count as failures). */
  stop(): Promise<{ latenciesMs: number[]; failures: number }>;
}

export function startHealthProbe(baseUrl: string, intervalMs: number): HealthProbe {
  const url = new URL('/health', baseUrl);
  const lib = url.protocol === 'https:' ? https : http;
  const agent = new lib.Agent({ keepAlive: true, maxSockets: 1 });
  const latenciesMs: number[] = [];
  let failures = 0;
  let stopped = false;
  const once = () =>
    new Promise<void>((resolve) => {
      const started = performance.now();
      lib
        .get(url, { agent }, (res) => {
          res.resume();
          res.on('end', () => {
            if (res.statusCode === 200) latenciesMs.push(performance.now() - started);
            else failures++;
            resolve();
          });
        })
        .on('error', () => {
          failures++;
          resolve();
        });
    });
  const loop = (async () => {
    while (!stopped) {
      const started = performance.now();
      await once();
      const wait = intervalMs - (performance.now() - started);
      if (wait > 0 && !stopped) await new Promise((r) => setTimeout(r, wait));
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      agent.destroy();
      return { latenciesMs, failures };
    },
  };
}
