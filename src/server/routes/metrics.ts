// GET /metrics: Prometheus text exposition of this app's registry. Engine figures are refreshed
// from engine.stats() on each scrape (bounded by healthTimeoutMs, so a stuck engine cannot hang it).
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { EngineStats } from '../../engine/types.js';

export const metricsRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get('/metrics', async (request, reply) => {
    const engine = app.serving.engine;
    if (engine) {
      let timer: NodeJS.Timeout | undefined;
      try {
        const stats = await Promise.race([
          engine.stats(),
          new Promise<EngineStats>((_, reject) => {
            timer = setTimeout(() => reject(new Error('engine.stats() timed out')), app.appOptions.healthTimeoutMs);
          }),
        ]);
        app.metrics.applyEngineStats(stats);
      } catch (err) {
        request.log.warn({ err }, 'engine stats unavailable for /metrics');
      } finally {
        clearTimeout(timer);
      }
    }
    reply.header('content-type', app.metrics.registry.contentType);
    return app.metrics.registry.metrics();
  });
};
