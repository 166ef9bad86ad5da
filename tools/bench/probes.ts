// What a run's load does to everyone else, measured while the load is on:
//   - GET /health (liveness, from the engine's heartbeat) and GET /v1/models (a cheap API call)
//     probed at a fixed interval, one probe of each in flight at a time on its own connection;
//   - optionally, a hostile client sending one huge prompt after another, each of which must be
//     refused (413 or 400) without stalling the streams or the probes.
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';

export interface ProbeResult {
  latenciesMs: number[];
  /** Probes that failed (not 200, or no answer). */
  failures: number;
}

export interface HostileResult {
  /** Huge prompts sent and refused with 400 or 413, as they must be. */
  refused: number;
  /** Any other answer (or none): a robustness failure. */
  unexpected: number;
}

interface Loop<T> {
  stop(): Promise<T>;
}

function libFor(url: URL): typeof http | typeof https {
  return url.protocol === 'https:' ? https : http;
}

/** Runs `once` back to back, at most every intervalMs, until stopped. */
export function repeat(intervalMs: number, once: () => Promise<void>): { stop(): Promise<void> } {
  let stopped = false;
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
    },
  };
}

/** GET `path` every intervalMs; the latencies of the 200s, and the failures. */
export function startProbe(baseUrl: string, path: string, intervalMs: number, apiKey: string | null = null): Loop<ProbeResult> {
  const url = new URL(path, baseUrl);
  const lib = libFor(url);
  const agent = new lib.Agent({ keepAlive: true, maxSockets: 1 });
  const headers = apiKey ? { authorization: `Bearer ${apiKey}` } : {};
  const result: ProbeResult = { latenciesMs: [], failures: 0 };
  const loop = repeat(intervalMs, () => {
    const started = performance.now();
    return new Promise<void>((resolve) => {
      lib
        .get(url, { agent, headers }, (res) => {
          res.resume();
          res.on('end', () => {
            if (res.statusCode === 200) result.latenciesMs.push(performance.now() - started);
            else result.failures++;
            resolve();
          });
        })
        .on('error', () => {
          result.failures++;
          resolve();
        });
    });
  });
  return {
    async stop() {
      await loop.stop();
      agent.destroy();
      return result;
    },
  };
}

/** POSTs completions whose prompt is `bytes` long, one every intervalMs at most, until stopped. */
export function startHostilePrompts(baseUrl: string, model: string, bytes: number, intervalMs: number, apiKey: string | null = null): Loop<HostileResult> {
  const url = new URL('/v1/completions', baseUrl);
  const lib = libFor(url);
  const body = Buffer.from(JSON.stringify({ model, prompt: 'a'.repeat(bytes), max_tokens: 1 }));
  const headers: Record<string, string> = { 'content-type': 'application/json', 'content-length': String(body.length) };
  if (apiKey) headers.authorization = `Bearer ${apiKey}`;
  const result: HostileResult = { refused: 0, unexpected: 0 };
  const loop = repeat(intervalMs, () => {
    return new Promise<void>((resolve) => {
      let status = 0;
      let settled = false;
      const settle = () => {
        if (settled) return;
        settled = true;
        if (status === 400 || status === 413) result.refused++;
        else result.unexpected++;
        resolve();
      };
      const req = lib.request(url, { method: 'POST', headers, agent: false }, (res) => {
        status = res.statusCode ?? 0;
        res.resume();
        res.on('end', settle);
      });
      // A server that refuses from the Content-Length may close before the whole body is sent:
      // a refusal all the same if its 413 arrived; an error with no answer is not.
      req.on('error', () => setTimeout(settle, 50));
      req.end(body);
    });
  });
  return { stop: () => loop.stop().then(() => result) };
}
