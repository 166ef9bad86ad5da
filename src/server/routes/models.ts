// GET /v1/models and GET /v1/models/:model (OpenAI list / retrieve shapes): the base model, and
// with --enable-lora one card per adapter in vLLM's shape (`root`: its folder, `parent`: the base).
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

function adapterCards(app: FastifyInstance, created: number) {
  const engine = app.serving.requireEngine();
  return (app.serving.lora?.cards ?? []).map((a) => ({
    id: a.name,
    object: 'model' as const,
    created,
    owned_by: 'gpt2-serve',
    root: a.path,
    parent: a.parent ?? app.serving.modelId,
    max_model_len: engine.model.contextLength,
  }));
}

export const modelsRoutes: FastifyPluginAsyncZod = async (app) => {
  const created = Math.floor(app.appOptions.now() / 1000);
  app.get('/v1/models', async () => ({ object: 'list' as const, data: [modelCard(app, created), ...adapterCards(app, created)] }));
  app.get('/v1/models/:model', { schema: { params: z.object({ model: z.string() }) } }, async (request) => {
    const { model } = request.params;
    const card = [modelCard(app, created), ...adapterCards(app, created)].find((c) => c.id === model);
    if (!card) throw new ApiError('model_not_found', `The model \`${model.slice(0, 200)}\` does not exist`, 'model');
    return card;
  });
};
