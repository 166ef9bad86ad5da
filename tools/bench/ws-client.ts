// Streaming completions over the websocket endpoint (GET /v1/completions/ws, docs/api.md): every
// request of a run is multiplexed on one connection, opened before the run's clock starts.
// `completion.chunk` frames carry text, `completion.done` the usage, `error` a failure (with
// --api chat: `chat.completion.chunk` and `chat.completion.done`; with --api responses, a
// `response.create` frame, the Responses events as frames, text in `response.output_text.delta`,
// then `response.done` with the usage in the completions shape).
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import { StreamTimer, completionBody, type RequestResult } from './request-result.js';
import { chunkText, describeError, type Transport, type TransportOptions } from './transport.js';
import type { BenchRequest } from './workload.js';

interface Frame {
  type?: unknown;
  id?: unknown;
  choices?: unknown;
  usage?: { prompt_tokens: number; completion_tokens: number };
  error?: unknown;
}

interface Pending {
  timer: StreamTimer;
  settle: (r: RequestResult) => void;
}

export function wsUrl(baseUrl: string): string {
  const url = new URL('/v1/completions/ws', baseUrl);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

export async function wsTransport(opts: TransportOptions): Promise<Transport> {
  const socket = new WebSocket(wsUrl(opts.baseUrl), {
    perMessageDeflate: false,
    headers: opts.apiKey ? { authorization: `Bearer ${opts.apiKey}` } : {},
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('open', () => resolve());
    socket.once('error', (err) => reject(new Error(`websocket ${wsUrl(opts.baseUrl)}: ${err.message}`)));
  });
  const pending = new Map<string, Pending>();
  let nextId = 0;
  let closedWhy: string | null = null;
  const frame = { completions: 'completion', chat: 'chat.completion', responses: 'response' }[opts.api];

  socket.on('message', (data: WebSocket.RawData) => {
    const now = performance.now();
    let msg: Frame;
    try {
      msg = JSON.parse(data.toString()) as Frame;
    } catch {
      return;
    }
    const p = typeof msg.id === 'string' ? pending.get(msg.id) : undefined;
    if (!p) return;
    if (msg.type === `${frame}.done`) {
      p.timer.usage = msg.usage ?? null;
      p.settle(p.timer.finish(now));
    } else if (msg.type === 'error') {
      p.settle(p.timer.fail(now, describeError(null, JSON.stringify({ error: msg.error }))));
    } else if (chunkText(msg).length > 0) {
      p.timer.textChunk(now);
    }
  });
  const failAll = (why: string) => {
    closedWhy ??= why;
    const now = performance.now();
    for (const p of [...pending.values()]) p.settle(p.timer.fail(now, why));
  };
  socket.on('close', (code) => failAll(`websocket closed (code ${code})`));
  socket.on('error', (err) => failAll(`websocket error: ${err.message}`));

  const send = (request: BenchRequest, runStart: number): Promise<RequestResult> =>
    new Promise((resolve) => {
      const id = `bench-${nextId++}`;
      const timer = new StreamTimer(request, runStart);
      if (closedWhy !== null) {
        resolve(timer.fail(performance.now(), closedWhy));
        return;
      }
      const deadline = setTimeout(() => {
        settle(timer.fail(performance.now(), `timed out after ${opts.requestTimeoutMs} ms`));
        if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: `${frame}.cancel`, id }));
      }, opts.requestTimeoutMs);
      const settle = (r: RequestResult) => {
        if (!pending.has(id)) return;
        pending.delete(id);
        clearTimeout(deadline);
        resolve(r);
      };
      pending.set(id, { timer, settle });
      socket.send(JSON.stringify({ type: `${frame}.create`, id, ...completionBody(opts.model, request, opts.api) }));
    });

  const close = () =>
    new Promise<void>((resolve) => {
      if (socket.readyState === WebSocket.CLOSED) return resolve();
      const force = setTimeout(() => socket.terminate(), 2000);
      socket.once('close', () => {
        clearTimeout(force);
        resolve();
      });
      socket.close(1000);
    });

  return { kind: 'ws', send, close };
}
