// GET /health (liveness) and GET /ready (readiness), answered by the main thread from the
// engine's last heartbeat: never a round trip to the engine, so they answer at once however
// busy the engine is, and a loaded server is never reported dead.
//
// /health: 200 while the engine is alive; 503 while the model loads, after a failed load, while
//   draining, and when the engine is dead or stuck (work pending, no step for --step-timeout-ms).
// /ready:  /health, and also 503 `at_capacity` while --max-concurrent-requests completions are
//   in flight, so a load balancer sends new work elsewhere without the pod being restarted.
import type { FastifyInstance } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { ApiError } from '../openai/errors.js';

function alive(app: FastifyInstance): { status: 'ok' } {
  const state = app.serving;
  if (state.phase === 'draining' || state.phase === 'stopped') {
    throw new ApiError('shutting_down', 'The server is shutting down');
  }
  const health = state.requireEngine().health();
  if (health.state !== 'ok') throw new ApiError('engine_unavailable', `The engine is ${health.state}: ${health.reason}`);
  return { status: 'ok' };
}

export const healthRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get('/health', async () => alive(app));
  app.get('/ready', async () => {
    alive(app);
    const full = app.serving.atCapacity;
    if (full) throw new ApiError('at_capacity', full);
    return { status: 'ready' as const };
  });
};
