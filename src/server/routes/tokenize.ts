// POST /tokenize {prompt} -> {tokens, count, max_model_len}; POST /detokenize {tokens} -> {prompt}
// (vLLM's shapes; `model` is optional and, when given, must name the served model or one of its
// LoRA adapters, which share its tokenizer). Both run on
// the tokenizer thread, never on the main thread.
//
// Tokenizing is the costly step completions guard (request.ts), so /tokenize is admitted like
// them: counted against --max-concurrent-requests (and the key's own limit) while it runs, and a
// text that could not fit the context even at maxTokenBytes per token is refused without BPE.
import type { FastifyInstance } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { DEFAULT_TENANT } from '../../engine/fair-share.js';
import type { ModelInfo } from '../../engine/types.js';
import { DetokenizeBodySchema, TokenizeBodySchema } from '../openai/completion-schema.js';
import { ApiError } from '../openai/errors.js';

/** Throws 400 for a text of more UTF-16 units than max_model_len tokens of maxTokenBytes can hold. */
function checkTokenizeLength(prompt: string, model: ModelInfo): void {
  const atLeast = Math.ceil(prompt.length / model.maxTokenBytes);
  if (atLeast > model.contextLength) {
    throw new ApiError(
      'context_length_exceeded',
      `This model's maximum context length is ${model.contextLength} tokens. However, your prompt has at least ${atLeast} tokens. Please reduce the prompt.`,
      'prompt',
    );
  }
}

function checkModel(app: FastifyInstance, model: string | null | undefined): void {
  if (model != null && model !== app.serving.modelId && !app.serving.lora?.has(model)) {
    throw new ApiError('model_not_found', `The model \`${model.slice(0, 200)}\` does not exist`, 'model');
  }
}

export const tokenizeRoutes: FastifyPluginAsyncZod = async (app) => {
  app.post('/tokenize', { schema: { body: TokenizeBodySchema } }, async (request) => {
    const engine = app.serving.requireEngine();
    checkModel(app, request.body.model);
    checkTokenizeLength(request.body.prompt, engine.model);
    // Nothing to cancel on drain: it ends on its own within one tokenizer trip.
    const end = app.serving.admit({ cancel: () => {} }, 0, request.tenant ?? DEFAULT_TENANT);
    try {
      const [tokens] = await engine.encode([request.body.prompt]);
      return { tokens: tokens!, count: tokens!.length, max_model_len: engine.model.contextLength };
    } finally {
      end();
    }
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
