// POST /tokenize {prompt} -> {tokens, count, max_model_len}; POST /detokenize {tokens} -> {prompt}
// (vLLM's shapes; `model` is optional and, when given, must name the served model). Both run on
// the tokenizer thread, never on the main thread.
import type { FastifyInstance } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { DetokenizeBodySchema, TokenizeBodySchema } from '../openai/completion-schema.js';
import { ApiError } from '../openai/errors.js';

function checkModel(app: FastifyInstance, model: string | null | undefined): void {
  if (model != null && model !== app.serving.modelId) {
    throw new ApiError('model_not_found', `The model \`${model.slice(0, 200)}\` does not exist`, 'model');
  }
}

export const tokenizeRoutes: FastifyPluginAsyncZod = async (app) => {
  app.post('/tokenize', { schema: { body: TokenizeBodySchema } }, async (request) => {
    const engine = app.serving.requireEngine();
    checkModel(app, request.body.model);
    const [tokens] = await engine.encode([request.body.prompt]);
    return { tokens: tokens!, count: tokens!.length, max_model_len: engine.model.contextLength };
  });

  app.post('/detokenize', { schema: { body: DetokenizeBodySchema } }, async (request) => {
    const engine = app.serving.requireEngine();
    checkModel(app, request.body.model);
    const { tokens } = request.body;
    const vocab = engine.model.vocabSize;
    const bad = tokens.findIndex((t) => t >= vocab);
    if (bad >= 0) {
      throw new ApiError('invalid_value', `\`tokens[${bad}]\`: token id ${tokens[bad]} is out of range (vocabulary size ${vocab})`, 'tokens');
    }
    const [prompt] = await engine.decode([tokens]);
    return { prompt: prompt! };
  });
};
