// buildApp(engine, config) -> a Fastify instance with every route, not listening (tests use it
// with supertest or app.inject; main.ts listens). The engine may be passed as a promise: until it
// resolves /health answers 503 and completions 503 `model_loading`.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import fp from 'fastify-plugin';
import websocket from '@fastify/websocket';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { z } from 'zod';
import type { ServerConfig } from '../config.js';
import type { EngineClient } from '../engine/types.js';
import { makeApiKeyCheck } from './auth.js';
import { ServerMetrics } from './metrics.js';
import { ApiError, toApiError } from './openai/errors.js';
import { parseOrThrow } from './openai/zod-errors.js';
import { completionsRoutes } from './routes/completions.js';
import { healthRoutes } from './routes/health.js';
import { metricsRoutes } from './routes/metrics.js';
import { modelsRoutes } from './routes/models.js';
import { tokenizeRoutes } from './routes/tokenize.js';
import { wsRoutes } from './routes/ws.js';
import { ServingState } from './state.js';
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
    healthTimeoutMs: opts.healthTimeoutMs ?? 5000,
    stallTimeoutMs: opts.stallTimeoutMs ?? 30_000,
    wsHighWaterMark: opts.wsHighWaterMark ?? 1024 * 1024,
    wsPingIntervalMs: opts.wsPingIntervalMs ?? 30_000,
  };
}

/** The app-wide decorations and hooks, not encapsulated so every route plugin sees them. */
const core = fp(
  async (app: FastifyInstance, o: { engine: EngineClient | Promise<EngineClient>; config: ServerConfig; options: ResolvedAppOptions }) => {
    const state = new ServingState(o.engine, o.config.servedModelName);
    app.decorate('serving', state);
    app.decorate('metrics', new ServerMetrics({ defaultMetrics: o.options.defaultMetrics }));
    app.decorate('appOptions', o.options);
    app.decorateRequest('completionStats', null);
    app.decorateRequest('finishRecorded', false);

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
    if (o.config.apiKey) {
      const check = makeApiKeyCheck(o.config.apiKey);
      app.addHook('onRequest', async (request) => check(request));
    }
    app.addHook('onResponse', async (request, reply) => {
      recordFinished(app, request, reply.statusCode, reply.elapsedTime);
    });

    app.setErrorHandler((err, request, reply) => {
      const apiErr = toApiError(err);
      if (apiErr.statusCode >= 500 && !(err instanceof ApiError)) {
        request.log.error({ err }, 'unhandled error');
      }
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

async function drain(app: FastifyInstance, timeoutMs: number): Promise<void> {
  const state = app.serving;
  if (state.phase === 'ready' || state.phase === 'loading' || state.phase === 'failed') state.phase = 'draining';
  const started = Date.now();
  app.log.info({ inflight: state.inflightRequests, timeoutMs }, 'draining');
  const engine = state.engine;
  if (engine) {
    // The engine stops admitting, lets running requests finish for up to timeoutMs, cancels the rest.
    const shutdown = engine.shutdown({ drainMs: timeoutMs }).catch((err: unknown) => {
      app.log.error({ err }, 'engine shutdown failed');
    });
    await Promise.race([shutdown, delay(timeoutMs + 5000)]);
  }
  const left = Math.max(0, timeoutMs - (Date.now() - started));
  if (!(await state.waitIdle(left + 1000))) {
    // Past the deadline: end what is left so each client hears why, then give them a moment.
    state.cancelAll(new ApiError('shutting_down', 'The server shut down before the request finished'));
    await state.waitIdle(1000);
  }
  state.phase = 'stopped';
  if (state.inflightRequests > 0) app.server.closeAllConnections?.();
  // Websockets get a close frame (1001 "going away"); one that does not close within a second
  // (a client that stopped reading) is terminated rather than holding up the exit.
  const wss = app.websocketServer;
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  const wsDeadline = Date.now() + 1000;
  while (wss.clients.size > 0 && Date.now() < wsDeadline) await delay(20);
  for (const ws of wss.clients) ws.terminate();
  await app.close();
  app.log.info({ durationMs: Date.now() - started }, 'drained');
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export function buildApp(
  engine: EngineClient | Promise<EngineClient>,
  config: ServerConfig,
  opts: AppOptions = {},
): FastifyInstance {
  const options = resolveOptions(opts);
  const fastifyOptions: FastifyServerOptions = {
    bodyLimit: config.maxBodyBytes,
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
  app.register(websocket, { options: { maxPayload: config.maxBodyBytes } });
  app.register(core, { engine, config, options });
  const typed = app.withTypeProvider<ZodTypeProvider>();
  typed.register(completionsRoutes);
  typed.register(wsRoutes);
  typed.register(modelsRoutes);
  typed.register(healthRoutes);
  typed.register(metricsRoutes);
  typed.register(tokenizeRoutes);
  return app;
}
