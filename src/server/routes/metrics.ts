// GET /metrics: Prometheus text exposition of this app's registry. Engine figures come from the
// engine's last heartbeat (no round trip, so a busy or stuck engine cannot hang a scrape).
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { DEFAULT_TENANT } from '../../engine/fair-share.js';

export const metricsRoutes: FastifyPluginAsyncZod = async (app) => {
  app.get('/metrics', async (_request, reply) => {
    const engine = app.serving.engine;
    if (engine) {
      const stats = engine.stats();
      app.metrics.applyEngineStats(stats, app.tenants.authRequired ? app.tenants.names : [DEFAULT_TENANT]);
      const { lora } = app.serving;
      if (lora) app.metrics.applyLoraStats(stats.adapters, (id) => lora.nameOf(id), app.appOptions.now() / 1000);
    }
    app.metrics.inflightRequests.set(app.serving.inflightRequests);
    reply.header('content-type', app.metrics.registry.contentType);
    return app.metrics.registry.metrics();
  });
};
