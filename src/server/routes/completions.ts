// POST /v1/completions and POST /v1/chat/completions: JSON, or Server-Sent Events with
// `stream: true`. Both take the same path once the body is parsed (completion/http-response.ts).
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { CHAT_FORMAT, COMPLETION_FORMAT } from '../completion/api.js';
import { respond } from '../completion/http-response.js';
import { admitChat, admitCompletion } from '../completion/start.js';
import { ChatBodySchema } from '../openai/chat-schema.js';
import { CompletionBodySchema } from '../openai/completion-schema.js';

export const completionsRoutes: FastifyPluginAsyncZod = async (app) => {
  app.post('/v1/completions', { schema: { body: CompletionBodySchema } }, async (request, reply) =>
    respond(app, request, reply, admitCompletion(app, request.body, { tenant: request.tenant }), COMPLETION_FORMAT),
  );
  app.post('/v1/chat/completions', { schema: { body: ChatBodySchema } }, async (request, reply) =>
    respond(app, request, reply, admitChat(app, request.body, { tenant: request.tenant }), CHAT_FORMAT),
  );
};
