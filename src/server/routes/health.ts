// GET /health: 200 when the model is loaded and the engine answers; 503 while loading, draining,
// after a failed load, or when engine.stats() does not answer within healthTimeoutMs.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { ApiError } from '../openai/errors.js';

export const healthRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get('/health', async () => {
    const state = app.serving;
    if (state.phase === 'draining' || state.phase === 'stopped') {
      throw new ApiError('shutting_down', 'The server is shutting down');
    }
    const engine = state.requireEngine();
    const timeoutMs = app.appOptions.healthTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        engine.stats(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error('timeout')), timeoutMs);
        }),
      ]);
    } catch {
      throw new ApiError('engine_unavailable', 'The engine is not responding');
    } finally {
      clearTimeout(timer);
    }
    return { status: 'ok' as const };
  });
};
