// GET /v1/completions/ws: many streaming completions multiplexed over one websocket.
//
// Client -> server:
//   {"type":"completion.create","id":"<client id>", ...the /v1/completions body}
//   {"type":"completion.cancel","id":"<client id>"}
//   {"type":"ping"}                                   (answered with {"type":"pong"})
// Server -> client:
//   {"type":"completion.chunk","id","completion_id", ...the SSE chunk without its own id}
//   {"type":"completion.done","id","completion_id","usage"}       (+ "cancelled":true after a cancel)
//   {"type":"error","id","error":{message,type,param,code}}        (id null if unknown; socket stays open)
//
// Backpressure policy: engine output is pulled only while the socket's send buffer
// (ws.bufferedAmount) is at most wsHighWaterMark; above it every request of that socket pauses
// (the engine keeps its own bounded per-request output) until the buffer is below half the mark.
// A socket whose buffer does not drain for stallTimeoutMs is treated as dead: all its requests are
// cancelled in the engine and the socket is terminated. Server memory per socket is thus bounded
// by about wsHighWaterMark plus one frame.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { RawData, WebSocket } from 'ws';
import { startCompletion, type StartedCompletion } from '../completion-start.js';
import { completionChunks } from '../openai/completion-output.js';
import { type CompletionJob, JobCancelledError } from '../openai/completion-job.js';
import { CompletionBodySchema } from '../openai/completion-schema.js';
import { ApiError, toApiError } from '../openai/errors.js';
import { makeUsage } from '../openai/responses.js';
import { parseOrThrow } from '../openai/zod-errors.js';
import { statsOf } from '../telemetry.js';
import { CLIENT_CLOSED } from './completions.js';

const WS_ROUTE = '/v1/completions/ws';
const MAX_ID_LENGTH = 256;
const OPEN = 1;

interface WsRequest {
  id: string;
  job: CompletionJob;
  cancelledByClient: boolean;
}

class WsSession {
  private readonly inflight = new Map<string, WsRequest>();
  private closed = false;
  private alive = true;
  private pingTimer: NodeJS.Timeout | null = null;
  private gate: Promise<void> | null = null;
  private completions = 0;

  constructor(
    private readonly app: FastifyInstance,
    private readonly socket: WebSocket,
    private readonly request: FastifyRequest,
  ) {}

  start(): void {
    const { socket } = this;
    socket.on('message', (data) => this.onMessage(data));
    socket.on('pong', () => {
      this.alive = true;
    });
    socket.on('close', (code) => this.onClose(code));
    const interval = this.app.appOptions.wsPingIntervalMs;
    if (interval > 0) {
      this.pingTimer = setInterval(() => {
        if (!this.alive) {
          this.request.log.info({ wsRequests: this.inflight.size }, 'websocket missed a pong; closing it');
          socket.terminate();
          return;
        }
        this.alive = false;
        socket.ping();
      }, interval);
      this.pingTimer.unref();
    }
  }

  private send(frame: unknown): void {
    if (this.socket.readyState === OPEN) this.socket.send(JSON.stringify(frame));
  }

  private sendError(id: string | null, err: ApiError): void {
    this.send({ type: 'error', id, error: err.toBody().error });
  }

  private onMessage(data: RawData): void {
    const text = Buffer.isBuffer(data)
      ? data.toString('utf8')
      : Array.isArray(data)
        ? Buffer.concat(data).toString('utf8')
        : Buffer.from(data).toString('utf8');
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      this.sendError(null, new ApiError('invalid_json', 'Message is not valid JSON'));
      return;
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
      this.sendError(null, new ApiError('invalid_value', 'Message must be a JSON object'));
      return;
    }
    const { type, id } = msg as { type?: unknown; id?: unknown };
    if (type === 'ping') {
      this.send(typeof id === 'string' ? { type: 'pong', id } : { type: 'pong' });
      return;
    }
    const validId = typeof id === 'string' && id.length > 0 && id.length <= MAX_ID_LENGTH;
    if (type !== 'completion.create' && type !== 'completion.cancel') {
      this.sendError(
        validId ? id : null,
        new ApiError('invalid_value', '`type`: must be "completion.create", "completion.cancel" or "ping"', 'type'),
      );
      return;
    }
    if (!validId) {
      this.sendError(
        null,
        new ApiError('invalid_value', `\`id\`: must be a non-empty string of at most ${MAX_ID_LENGTH} characters`, 'id'),
      );
      return;
    }
    if (type === 'completion.cancel') this.cancel(id);
    else this.create(id, msg as Record<string, unknown>);
  }

  private cancel(id: string): void {
    const req = this.inflight.get(id);
    if (!req) {
      this.sendError(id, new ApiError('request_not_found', `No request with id \`${id}\` is in flight on this socket`, 'id'));
      return;
    }
    req.cancelledByClient = true;
    req.job.cancel('cancelled by client');
  }

  private create(id: string, msg: Record<string, unknown>): void {
    if (this.inflight.has(id)) {
      this.sendError(id, new ApiError('duplicate_id', `A request with id \`${id}\` is already in flight on this socket`, 'id'));
      return;
    }
    const startedAt = this.app.appOptions.clock();
    let started: StartedCompletion;
    try {
      // The websocket always streams; `type` and `id` are not body fields and are stripped.
      const body = parseOrThrow(CompletionBodySchema, { ...msg, stream: true });
      started = startCompletion(this.app, body, { forceStream: true });
    } catch (err) {
      const apiErr = toApiError(err);
      this.sendError(id, apiErr);
      this.record(id, apiErr.statusCode, startedAt, null, apiErr.code);
      return;
    }
    const req: WsRequest = { id, job: started.job, cancelledByClient: false };
    this.inflight.set(id, req);
    this.completions++;
    void this.pump(req, started, startedAt);
  }

  private async pump(req: WsRequest, { job, meta, end }: StartedCompletion, startedAt: number): Promise<void> {
    let status = 200;
    let errorCode: string | undefined;
    try {
      await job.ready();
      for await (const chunk of completionChunks(job, meta, { includeUsage: false })) {
        await this.writable();
        const { id: completionId, ...rest } = chunk;
        this.send({ type: 'completion.chunk', id: req.id, completion_id: completionId, ...rest });
      }
      this.send({
        type: 'completion.done',
        id: req.id,
        completion_id: meta.id,
        usage: makeUsage(job.promptTokens, job.completionTokens),
      });
    } catch (err) {
      if (err instanceof JobCancelledError) {
        status = CLIENT_CLOSED;
        if (req.cancelledByClient) {
          errorCode = 'cancelled_by_client';
          this.send({
            type: 'completion.done',
            id: req.id,
            completion_id: meta.id,
            usage: makeUsage(job.promptTokens, job.completionTokens),
            cancelled: true,
          });
        } else {
          errorCode = 'client_closed';
        }
      } else {
        const apiErr = toApiError(err);
        if (apiErr.code === 'internal_error') this.request.log.error({ err: job.failure ?? err, wsId: req.id }, 'completion failed');
        status = apiErr.statusCode;
        errorCode = apiErr.code;
        this.sendError(req.id, apiErr);
      }
    } finally {
      this.inflight.delete(req.id);
      end();
      this.record(req.id, status, startedAt, job, errorCode);
    }
  }

  private record(id: string, status: number, startedAt: number, job: CompletionJob | null, error?: string): void {
    const durationMs = this.app.appOptions.clock() - startedAt;
    this.app.metrics.requests.inc({ method: 'WS', route: WS_ROUTE, status: String(status) });
    if (job) this.app.metrics.e2eLatency.observe({ status: String(status) }, durationMs / 1000);
    const stats = job ? statsOf(job) : null;
    this.request.log.info(
      {
        wsId: id,
        status,
        promptTokens: stats?.promptTokens,
        completionTokens: stats?.completionTokens,
        ttftMs: stats?.ttftMs ?? undefined,
        error,
        durationMs: Math.round(durationMs * 10) / 10,
      },
      'request finished',
    );
  }

  /** Resolves when the socket can take more output; see the backpressure policy above. */
  private async writable(): Promise<void> {
    if (this.closed) throw new JobCancelledError('socket closed');
    if (this.socket.bufferedAmount <= this.app.appOptions.wsHighWaterMark) return;
    this.gate ??= this.waitForDrain().finally(() => {
      this.gate = null;
    });
    await this.gate;
  }

  private waitForDrain(): Promise<void> {
    const { wsHighWaterMark, stallTimeoutMs, clock } = this.app.appOptions;
    const since = clock();
    // ws has no public 'drain'; its net.Socket has. A slow poll backs it up (and times the stall).
    const raw = (this.socket as unknown as { _socket?: NodeJS.EventEmitter })._socket;
    return new Promise((resolve, reject) => {
      const settle = (err?: Error) => {
        clearInterval(poll);
        raw?.off('drain', check);
        if (err) reject(err);
        else resolve();
      };
      const check = () => {
        if (this.closed) return settle(new JobCancelledError('socket closed'));
        if (this.socket.bufferedAmount <= wsHighWaterMark / 2) return settle();
        if (clock() - since >= stallTimeoutMs) {
          this.stall();
          return settle(new JobCancelledError('client stalled'));
        }
      };
      const poll = setInterval(check, 25);
      raw?.on('drain', check);
      check();
    });
  }

  private stall(): void {
    this.request.log.warn(
      { wsRequests: this.inflight.size, bufferedAmount: this.socket.bufferedAmount },
      'websocket client stopped reading; cancelling its requests and closing it',
    );
    for (const req of this.inflight.values()) req.job.cancel('client stalled');
    this.closed = true;
    this.socket.terminate();
  }

  private onClose(code: number): void {
    this.closed = true;
    if (this.pingTimer) clearInterval(this.pingTimer);
    for (const req of this.inflight.values()) req.job.cancel('socket closed');
    this.request.log.info({ code, completions: this.completions }, 'websocket closed');
  }
}

export const wsRoutes: FastifyPluginAsyncZod = async (app) => {
  app.route({
    method: 'GET',
    url: WS_ROUTE,
    handler: async () => {
      throw new ApiError('upgrade_required', 'This endpoint speaks WebSocket: connect with an Upgrade request', null, {
        upgrade: 'websocket',
      });
    },
    wsHandler: (socket, request) => {
      new WsSession(app, socket, request).start();
    },
  });
};
