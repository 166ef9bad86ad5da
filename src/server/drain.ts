// Graceful shutdown of an app (SIGTERM, SIGINT, or the engine's death): /health and new
// completions answer 503 at once, in-flight completions may finish for up to timeoutMs, then
// whatever is left ends with an error its client can read (JSON 503, an SSE error event then
// [DONE], a websocket error frame), websockets get a close frame, and the app closes.
import type { FastifyInstance } from 'fastify';
import { ApiError } from './openai/errors.js';

export async function drain(app: FastifyInstance, timeoutMs: number): Promise<void> {
  const state = app.serving;
  if (state.phase === 'ready' || state.phase === 'loading' || state.phase === 'failed') state.phase = 'draining';
  const started = Date.now();
  app.log.info({ inflight: state.inflightRequests, timeoutMs }, 'draining');
  const engine = state.engine;
  if (engine) {
    // The engine stops admitting, lets running requests finish for up to timeoutMs, ends the rest.
    const shutdown = engine.shutdown({ drainMs: timeoutMs }).catch((err: unknown) => {
      app.log.error({ err }, 'engine shutdown failed');
    });
    await Promise.race([shutdown, delay(timeoutMs + 5000)]);
  }
  const left = Math.max(0, timeoutMs - (Date.now() - started));
  if (!(await state.waitIdle(left + 1000))) {
    // Past the deadline: end what is left so each client hears why, then give them a moment.
    state.cancelAll(new ApiError('shutting_down', 'The server shut down before the request finished'));
    await state.waitIdle(1000);
  }
  state.phase = 'stopped';
  // Every response is written or abandoned by now; a keep-alive connection (or a client that
  // never read its last bytes) must not hold the exit for Fastify's 72 s keep-alive timeout.
  app.server.closeAllConnections?.();
  // Websockets get a close frame (1001 "going away"); one that does not close within a second
  // (a client that stopped reading) is terminated rather than holding up the exit.
  const wss = app.websocketServer;
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  const wsDeadline = Date.now() + 1000;
  while (wss.clients.size > 0 && Date.now() < wsDeadline) await delay(20);
  for (const ws of wss.clients) ws.terminate();
  await app.close();
  app.log.info({ durationMs: Date.now() - started }, 'drained');
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
