// POST /v1/responses: OpenAI's Responses API, stateless. JSON, or the Responses event stream
// (Server-Sent Events with `event:` names) with `stream: true`. Nothing is stored, so the routes
// that read or change a stored response answer 404 saying so.
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { respond } from '../completion/http-response.js';
import { responsesFormat } from '../completion/responses-output.js';
import { admitResponse } from '../completion/start.js';
import { ApiError } from '../openai/errors.js';
import { responseSettings } from '../openai/response-object.js';
import { ResponsesBodySchema } from '../openai/responses-schema.js';

export const responsesRoutes: FastifyPluginAsyncZod = async (app) => {
  app.post('/v1/responses', { schema: { body: ResponsesBodySchema } }, async (request, reply) =>
    respond(app, request, reply, admitResponse(app, request.body, { tenant: request.tenant }), responsesFormat(responseSettings(request.body))),
  );
  const stored = { schema: { params: z.object({ id: z.string() }) } };
  const notStored = (id: string) => {
    throw new ApiError('not_found', `No response \`${id.slice(0, 100)}\`: this server is stateless and stores no responses`, 'response_id');
  };
  app.get('/v1/responses/:id', stored, async (request) => notStored(request.params.id));
  app.delete('/v1/responses/:id', stored, async (request) => notStored(request.params.id));
  app.post('/v1/responses/:id/cancel', stored, async (request) => notStored(request.params.id));
};
