// GET /v1/models and GET /v1/models/:model (OpenAI list / retrieve shapes).
import type { FastifyInstance } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { ApiError } from '../openai/errors.js';

function modelCard(app: FastifyInstance, created: number) {
  const engine = app.serving.requireEngine();
  return {
    id: app.serving.modelId,
    object: 'model' as const,
    created,
    owned_by: 'gpt2-serve',
    root: engine.model.name,
    max_model_len: engine.model.contextLength,
    ...engine.model.weights,
    // Which chat template /v1/chat/completions renders with (see docs/api.md).
    chat_template: engine.chatTemplate.source,
  };
}

export const modelsRoutes: FastifyPluginAsyncZod = async (app) => {
  const created = Math.floor(app.appOptions.now() / 1000);
  app.get('/v1/models', async () => ({ object: 'list' as const, data: [modelCard(app, created)] }));
  app.get('/v1/models/:model', { schema: { params: z.object({ model: z.string() }) } }, async (request) => {
    const card = modelCard(app, created);
    if (request.params.model !== card.id) {
      throw new ApiError('model_not_found', `The model \`${request.params.model.slice(0, 200)}\` does not exist`, 'model');
    }
    return card;
  });
};
