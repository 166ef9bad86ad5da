// buildApp(engine, config) -> a Fastify instance with every route, not listening (tests use it
// with supertest or app.inject; main.ts listens). The engine may be passed as a promise: until it
// resolves /health answers 503 and completions 503 `model_loading`.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import Fastify, { LogController, type FastifyInstance, type FastifyRequest, type FastifyServerOptions, type FastifyReply } from 'fastify';
import fp from 'fastify-plugin';
import cors from '@fastify/cors';
import websocket from '@fastify/websocket';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { WebSocket } from 'ws';
import type { z } from 'zod';
import { defaultBodyLimit, maxCpuLoras, seqsInFlightLimit, type ServerConfig } from '../config.js';
import type { EngineClient } from '../engine/types.js';
import { readGpt2Config, type Gpt2Config } from '../model/gpt2-checkpoint.js';
import { LoraModuleError, LoraRegistry, servedBaseName } from './lora/registry.js';
import { makeApiKeyCheck, selectWebsocketProtocol } from './auth.js';
import { makeWebsocketOriginCheck } from './ws-origin.js';
import { drain } from './drain.js';
import { ServerMetrics } from './metrics.js';
import { ApiError, toApiError } from './openai/errors.js';
import { parseOrThrow } from './openai/zod-errors.js';
import { completionsRoutes } from './routes/completions.js';
import { responsesRoutes } from './routes/responses.js';
import { healthRoutes } from './routes/health.js';
import { loraRoutes } from './routes/lora.js';
import { metricsRoutes } from './routes/metrics.js';
import { modelsRoutes } from './routes/models.js';
import { playgroundRoutes } from './routes/playground.js';
import { tokenizeRoutes } from './routes/tokenize.js';
import { wsRoutes } from './routes/ws.js';
import { ServingState } from './state.js';
import { Tenants } from './tenants.js';
import { recordFinished } from './telemetry.js';
import type { AppOptions, ResolvedAppOptions } from './types.js';

export type { AppOptions } from './types.js';

const REQUEST_ID = /^[A-Za-z0-9._:\-]{1,128}$/;

/** Honours a sane incoming x-request-id, else makes a UUID. */
function genReqId(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  if (typeof given === 'string' && REQUEST_ID.test(given)) return given;
  return randomUUID();
}

function resolveOptions(opts: AppOptions): ResolvedAppOptions {
  return {
    now: opts.now ?? Date.now,
    newId: opts.newId ?? (() => randomUUID().replace(/-/g, '')),
    clock: opts.clock ?? (() => performance.now()),
    defaultMetrics: opts.defaultMetrics ?? false,
  };
}

/** The app-wide decorations and hooks, not encapsulated so every route plugin sees them. */
const core = fp(
  async (
    app: FastifyInstance,
    o: { engine: EngineClient | Promise<EngineClient>; config: ServerConfig; options: ResolvedAppOptions; lora: LoraRegistry | null },
  ) => {
    const state = new ServingState(
      o.engine,
      o.config.servedModelName,
      o.config.maxConcurrentRequests,
      seqsInFlightLimit(o.config),
      o.config.maxConcurrentRequestsPerKey,
      o.lora,
    );
    app.decorate('serving', state);
    app.decorate('config', o.config);
    app.decorate('metrics', new ServerMetrics({ defaultMetrics: o.options.defaultMetrics, ...(o.config.enableLora ? { maxLoras: o.config.maxLoras } : {}) }));
    app.decorate('appOptions', o.options);
    app.decorateRequest('completionStats', null);
    app.decorateRequest('finishRecorded', false);
    app.decorateRequest('tenant', null);

    // Zod validates bodies; failures become OpenAI-shaped 400s naming the field.
    app.setValidatorCompiler<z.ZodType>(({ schema }) => (data: unknown) => {
      try {
        return { value: parseOrThrow(schema, data) };
      } catch (error) {
        return { error: error as Error };
      }
    });

    app.addHook('onRequest', async (request, reply) => {
      reply.header('x-request-id', request.id);
    });
    const originCheck = makeWebsocketOriginCheck(o.config.allowedOrigins);
    app.addHook('onRequest', async (request) => originCheck(request));
    const tenants = Tenants.fromConfig(o.config);
    app.decorate('tenants', tenants);
    if (tenants.authRequired) {
      const check = makeApiKeyCheck(tenants);
      app.addHook('onRequest', async (request) => {
        request.tenant = check(request);
      });
    }
    app.addHook('onResponse', async (request, reply) => {
      recordFinished(app, request, reply.statusCode, reply.elapsedTime);
    });

    app.setErrorHandler((err, request, reply) => {
      const apiErr = toApiError(err);
      if (apiErr.statusCode >= 500 && !(err instanceof ApiError)) {
        request.log.error({ err }, 'unhandled error');
      }
      if (apiErr.code === 'request_too_large') lingerForTheRestOfTheBody(request, reply);
      reply.code(apiErr.statusCode).headers(apiErr.headers).send(apiErr.toBody());
    });
    app.setNotFoundHandler((request, reply) => {
      const path = request.url.split('?')[0]!.slice(0, 200);
      const err = new ApiError('not_found', `Not found: ${request.method} ${path}`);
      reply.code(404).send(err.toBody());
    });

    let draining: Promise<void> | null = null;
    app.decorate('drain', (options: { timeoutMs?: number } = {}) => {
      draining ??= drain(app, options.timeoutMs ?? o.config.drainTimeoutMs);
      return draining;
    });
  },
  { name: 'gpt2-serve-core', fastify: '5.x' },
);

/**
 * An error on an open websocket. ws reports a client's protocol error (a frame over
 * --max-body-bytes, bad UTF-8, a bad opcode) after it has already answered it with a close frame
 * (1009, 1007, 1002) and set its own timer to drop the socket should the client not answer:
 * terminating here, as @fastify/websocket's default handler does, would race that frame (the
 * client, still sending its big frame, would see a reset and code 1006), and the client's mistake
 * is no server error. Anything else is ours: log it and drop the socket.
 */
function onWebsocketError(this: FastifyInstance, error: Error, socket: WebSocket, request: FastifyRequest): void {
  if (socket.readyState === socket.CLOSING || socket.readyState === socket.CLOSED) {
    request.log.info({ error: error.message }, 'websocket closed after a protocol error by the client');
    return;
  }
  request.log.error({ err: error }, 'websocket error');
  socket.terminate();
}

/**
 * A body over the limit is refused before it is read, while the client may still be sending it.
 * Closing the connection then (Fastify's choice, and Node's for a request that said
 * `Connection: close`) resets it with unread data, and a client that reads its answer only after
 * sending loses the 413 to that reset. So, like nginx's lingering close, keep the connection and
 * let Node read and discard the rest of the body (it does so for any unread body of a kept-alive
 * connection), unless the client announced an absurd size; a client that asked for the
 * connection to close gets its FIN once the body is in.
 */
function lingerForTheRestOfTheBody(request: FastifyRequest, reply: FastifyReply): void {
  const declared = Number(request.headers['content-length']);
  if (!Number.isFinite(declared) || declared > MAX_DISCARDED_BODY_BYTES) return;
  reply.removeHeader('connection');
  reply.raw.shouldKeepAlive = true;
  if (!/\bclose\b/i.test(request.headers.connection ?? '')) return;
  const { raw } = request;
  const close = () => raw.socket.end();
  reply.raw.once('finish', () => (raw.complete ? close() : raw.once('end', close)));
}

/** A refused body up to this size is read and discarded rather than reset (see above). */
const MAX_DISCARDED_BODY_BYTES = 64 * 1024 * 1024;

/**
 * The LoRA adapters of --enable-lora, every --lora-modules one read and checked against the model
 * folder's config.json (config.model: main passes the resolved folder). Throws LoraModuleError.
 */
function openLoraRegistry(config: ServerConfig, read: AppOptions['readLoraAdapter']): LoraRegistry | null {
  if (!config.enableLora) return null;
  if (config.model === undefined) throw new Error('--enable-lora: the model folder must be resolved before the app is built');
  let baseConfig: Gpt2Config;
  try {
    baseConfig = readGpt2Config(config.model);
  } catch (err) {
    throw new LoraModuleError(null, `--enable-lora: adapters are checked against the model's config.json: ${(err as Error).message}`);
  }
  return LoraRegistry.open(config.loraModules, {
    baseConfig,
    baseModel: servedBaseName(config.servedModelName, config.model),
    maxRank: config.maxLoraRank,
    maxCpuLoras: maxCpuLoras(config),
    ...(read ? { read } : {}),
  });
}

/**
 * Throws LoraModuleError, at once, for a --lora-modules adapter that cannot be served (before
 * anything listens).
 */
export function buildApp(
  engine: EngineClient | Promise<EngineClient>,
  config: ServerConfig,
  opts: AppOptions = {},
): FastifyInstance {
  const lora = openLoraRegistry(config, opts.readLoraAdapter);
  const options = resolveOptions(opts);
  const fastifyOptions: FastifyServerOptions = {
    // main.ts passes the limit sized to the served model's context; 1024 is GPT-2's.
    bodyLimit: config.maxBodyBytes ?? defaultBodyLimit(1024),
    genReqId,
    requestIdHeader: false,
    // One "request finished" line per request comes from our own hook instead of Fastify's two.
    logController: new LogController({ requestIdLogLabel: 'reqId', disableRequestLogging: true }),
    return503OnClosing: true,
  };
  const app = (opts.logger
    ? Fastify({ ...fastifyOptions, loggerInstance: opts.logger })
    : Fastify({ ...fastifyOptions, logger: false })) as unknown as FastifyInstance;

  // The websocket plugin first: its onRequest hook marks upgrade requests before ours may reject
  // them (401), so that it then destroys the socket of a refused upgrade.
  app.register(websocket, {
    options: { maxPayload: fastifyOptions.bodyLimit, handleProtocols: selectWebsocketProtocol },
    errorHandler: onWebsocketError,
  });
  if (config.allowedOrigins.length > 0) {
    // Browser clients (off unless --allowed-origins is set, as in vLLM).
    app.register(cors, {
      origin: config.allowedOrigins.includes('*') ? '*' : config.allowedOrigins,
      methods: config.allowedMethods,
      ...(config.allowedHeaders.length > 0 ? { allowedHeaders: config.allowedHeaders } : {}),
      exposedHeaders: ['x-request-id', 'retry-after'],
    });
  }
  app.register(core, { engine, config, options, lora });
  const typed = app.withTypeProvider<ZodTypeProvider>();
  typed.register(completionsRoutes);
  typed.register(responsesRoutes);
  typed.register(wsRoutes);
  typed.register(modelsRoutes);
  typed.register(healthRoutes);
  typed.register(metricsRoutes);
  typed.register(tokenizeRoutes);
  // vLLM's rule: without the permission the routes do not exist (404).
  if (lora && config.allowRuntimeLoraUpdating) typed.register(loraRoutes);
  if (config.playground) app.register(playgroundRoutes);
  return app;
}
