// POST /v1/load_lora_adapter {lora_name, lora_path} and POST /v1/unload_lora_adapter {lora_name}:
// vLLM's runtime LoRA updating, registered only with --allow-runtime-lora-updating. Under /v1, so
// behind --api-key like the rest of the API. Answers are vLLM's plain-text success lines.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { ApiError } from '../openai/errors.js';

const LoadBodySchema = z.object({
  lora_name: z.string().min(1),
  lora_path: z.string().min(1),
});

const UnloadBodySchema = z.object({
  lora_name: z.string().min(1),
});

export const loraRoutes: FastifyPluginAsyncZod = async (app) => {
  app.post('/v1/load_lora_adapter', { schema: { body: LoadBodySchema } }, async (request, reply) => {
    // The registry puts adapters into the engine, so the engine must be up.
    app.serving.requireEngine();
    const { lora_name: name, lora_path: path } = request.body;
    await app.serving.lora!.load(name, path);
    request.log.info({ adapter: name, path }, 'LoRA adapter loaded');
    reply.type('text/plain; charset=utf-8');
    return `Success: LoRA adapter '${name}' added successfully.`;
  });

  app.post('/v1/unload_lora_adapter', { schema: { body: UnloadBodySchema } }, async (request, reply) => {
    app.serving.requireEngine();
    const { lora_name: name } = request.body;
    if (!app.serving.lora!.unload(name)) {
      throw new ApiError('model_not_found', `The LoRA adapter \`${name.slice(0, 200)}\` cannot be found`, 'lora_name');
    }
    request.log.info({ adapter: name }, 'LoRA adapter unloaded');
    reply.type('text/plain; charset=utf-8');
    return `Success: LoRA adapter '${name}' removed successfully.`;
  });
};
