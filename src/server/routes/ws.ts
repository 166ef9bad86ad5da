// GET /v1/completions/ws: many streaming completions, chat completions and responses multiplexed
// over one websocket.
//
// Client -> server:
//   {"type":"completion.create","id":"<client id>", ...the /v1/completions body}
//   {"type":"chat.completion.create","id":"<client id>", ...the /v1/chat/completions body}
//   {"type":"response.create","id":"<client id>", ...the /v1/responses body}
//   {"type":"completion.cancel","id":"<client id>"}   (any kind; "chat.completion.cancel" and
//                                                      "response.cancel" are the same)
//   {"type":"ping"}                                   (answered with {"type":"pong"})
// Server -> client (chat's frames are "chat.completion.chunk" and "chat.completion.done"):
//   {"type":"completion.chunk","id","completion_id", ...the SSE chunk without its own id}
//   {"type":"response.output_text.delta", ..., "id"}   (a response's events, each with the client id)
//   {"type":"completion.done","id","completion_id","usage"}       (+ "cancelled":true after a cancel;
//                                                      a response's is "response.done")
//   {"type":"error","id","error":{message,type,param,code}}        (id null if unknown; socket stays open)
//
// Flow control: once more than --ws-high-water-mark bytes wait to be sent (ws.bufferedAmount),
// every request of the socket pauses in the engine and the server stops reading the socket's
// frames (so a client that floods requests without reading cannot grow the buffer either); both
// resume when the buffer is below half the mark. A socket that does not drain for
// --stall-timeout-ms is dead: its requests are cancelled and it is terminated. Server memory per
// socket is thus about the mark plus a step or two of tokens.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { RawData, WebSocket } from 'ws';
import { CHAT_FORMAT, COMPLETION_FORMAT, type ResponseFormat } from '../completion/api.js';
import { StallGuard } from '../completion/flow-control.js';
import { type CompletionJob, JobCancelledError } from '../completion/job.js';
import { responsesFormat } from '../completion/responses-output.js';
import { admitChat, admitCompletion, admitResponse, type AdmittedCompletion } from '../completion/start.js';
import { responseSettings } from '../openai/response-object.js';
import { ResponsesBodySchema } from '../openai/responses-schema.js';
import { ChatBodySchema } from '../openai/chat-schema.js';
import { CompletionBodySchema } from '../openai/completion-schema.js';
import { ApiError, toApiError } from '../openai/errors.js';
import { serializeChunk } from '../openai/responses.js';
import { parseOrThrow } from '../openai/zod-errors.js';
import { CLIENT_CLOSED, logServerFailure, statsOf } from '../telemetry.js';

const WS_ROUTE = '/v1/completions/ws';
const MAX_ID_LENGTH = 256;
const OPEN = 1;
const DRAIN_POLL_MS = 25;

type Started = { admitted: AdmittedCompletion; format: ResponseFormat };

/** What a create frame of each kind admits, and how its outputs are framed. */
const CREATE_FRAMES: Record<string, (app: FastifyInstance, msg: Record<string, unknown>, tenant: string | null) => Started> = {
  // The websocket always streams; `type` and `id` are not body fields and are stripped.
  'completion.create': (app, msg, tenant) => ({
    admitted: admitCompletion(app, parseOrThrow(CompletionBodySchema, { ...msg, stream: true }), { forceStream: true, tenant }),
    format: COMPLETION_FORMAT,
  }),
  'chat.completion.create': (app, msg, tenant) => ({
    admitted: admitChat(app, parseOrThrow(ChatBodySchema, { ...msg, stream: true }), { forceStream: true, tenant }),
    format: CHAT_FORMAT,
  }),
  'response.create': (app, msg, tenant) => {
    const body = parseOrThrow(ResponsesBodySchema, { ...msg, stream: true });
    return { admitted: admitResponse(app, body, { forceStream: true, tenant }), format: responsesFormat(responseSettings(body)) };
  },
};
const CANCEL_FRAMES = new Set(['completion.cancel', 'chat.completion.cancel', 'response.cancel']);

interface WsRequest {
  id: string;
  job: CompletionJob;
  cancelledByClient: boolean;
}

class WsSession {
  /** This socket's requests by client id (cancel frames name them). */
  private readonly requests = new Map<string, WsRequest>();
  private closed = false;
  private alive = true;
  private pingTimer: NodeJS.Timeout | null = null;
  private drainPoll: NodeJS.Timeout | null = null;
  private completions = 0;
  private readonly guard: StallGuard;

  constructor(
    private readonly app: FastifyInstance,
    private readonly socket: WebSocket,
    private readonly request: FastifyRequest,
  ) {
    this.guard = new StallGuard(app.config.stallTimeoutMs, {
      pause: () => {
        for (const req of this.requests.values()) req.job.pause();
        socket.pause();
      },
      resume: () => {
        for (const req of this.requests.values()) req.job.resume();
        socket.resume();
      },
      stalled: () => this.stall(),
    });
  }

  start(): void {
    const { socket } = this;
    socket.on('message', (data) => this.onMessage(data));
    socket.on('pong', () => {
      this.alive = true;
    });
    socket.on('close', (code) => this.onClose(code));
    const interval = this.app.config.wsPingIntervalMs;
    if (interval > 0) {
      this.pingTimer = setInterval(() => {
        if (this.guard.paused) return; // the stall timeout judges a socket we stopped reading
        if (!this.alive) {
          this.request.log.info({ wsRequests: this.requests.size }, 'websocket missed a pong; closing it');
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
    if (this.socket.readyState !== OPEN) return;
    this.socket.send(serializeChunk(frame));
    if (this.socket.bufferedAmount > this.app.config.wsHighWaterMark && !this.guard.paused) {
      this.guard.full();
      this.watchDrain();
    }
  }

  /** ws has no public 'drain'; a short poll of bufferedAmount stands in for it. */
  private watchDrain(): void {
    if (this.drainPoll) return;
    this.drainPoll = setInterval(() => {
      if (!this.guard.paused || this.closed) return this.stopDrainWatch();
      if (this.socket.bufferedAmount <= this.app.config.wsHighWaterMark / 2) {
        this.stopDrainWatch();
        this.guard.drained();
      }
    }, DRAIN_POLL_MS);
  }

  private stopDrainWatch(): void {
    if (this.drainPoll) clearInterval(this.drainPoll);
    this.drainPoll = null;
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
    const create = typeof type === 'string' && Object.hasOwn(CREATE_FRAMES, type) ? CREATE_FRAMES[type]! : null;
    if (!create && !(typeof type === 'string' && CANCEL_FRAMES.has(type))) {
      this.sendError(
        validId ? id : null,
        new ApiError('invalid_value', '`type`: must be "completion.create", "chat.completion.create", "response.create", "completion.cancel" or "ping"', 'type'),
      );
      return;
    }
    if (!validId) {
      this.sendError(null, new ApiError('invalid_value', `\`id\`: must be a non-empty string of at most ${MAX_ID_LENGTH} characters`, 'id'));
      return;
    }
    if (create) this.create(id, msg as Record<string, unknown>, create);
    else this.cancel(id);
  }

  private cancel(id: string): void {
    const req = this.requests.get(id);
    if (!req) {
      this.sendError(id, new ApiError('request_not_found', `No request with id \`${id}\` is in flight on this socket`, 'id'));
      return;
    }
    req.cancelledByClient = true;
    req.job.cancel('cancelled by client');
  }

  private create(id: string, msg: Record<string, unknown>, kind: (typeof CREATE_FRAMES)[string]): void {
    if (this.requests.has(id)) {
      this.sendError(id, new ApiError('duplicate_id', `A request with id \`${id}\` is already in flight on this socket`, 'id'));
      return;
    }
    const startedAt = this.app.appOptions.clock();
    let started: Started;
    try {
      started = kind(this.app, msg, this.request.tenant);
    } catch (err) {
      const apiErr = toApiError(err);
      this.sendError(id, apiErr);
      this.record(id, apiErr.statusCode, startedAt, null, apiErr.code);
      return;
    }
    const req: WsRequest = { id, job: started.admitted.job, cancelledByClient: false };
    if (this.guard.paused) req.job.pause();
    this.requests.set(id, req);
    this.completions++;
    void this.pump(req, started.admitted.end, startedAt, started.format);
  }

  private async pump(req: WsRequest, end: () => void, startedAt: number, format: ResponseFormat): Promise<void> {
    const { job } = req;
    let status = 200;
    let errorCode: string | undefined;
    try {
      await job.submit();
      await job.ready();
      for await (const chunk of format.stream(job, { includeUsage: false }).chunks) this.send(format.wsFrame(chunk, req.id));
      this.send({ type: `${format.frame}.done`, id: req.id, completion_id: job.meta.id, usage: job.usage });
    } catch (err) {
      if (err instanceof JobCancelledError) {
        status = CLIENT_CLOSED;
        if (req.cancelledByClient) {
          errorCode = 'cancelled_by_client';
          this.send({
            type: `${format.frame}.done`,
            id: req.id,
            completion_id: job.meta.id,
            usage: job.usage,
            cancelled: true,
          });
        } else {
          errorCode = 'client_closed';
        }
      } else {
        const apiErr = toApiError(err);
        logServerFailure(this.request.log, apiErr, { wsId: req.id });
        status = apiErr.statusCode;
        errorCode = apiErr.code;
        this.sendError(req.id, apiErr);
      }
    } finally {
      this.requests.delete(req.id);
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

  private stall(): void {
    this.request.log.warn(
      { wsRequests: this.requests.size, bufferedAmount: this.socket.bufferedAmount },
      'websocket client stopped reading; cancelling its requests and closing it',
    );
    this.closed = true;
    for (const req of this.requests.values()) req.job.cancel('client stalled');
    this.socket.terminate();
  }

  private onClose(code: number): void {
    this.closed = true;
    this.guard.dispose();
    this.stopDrainWatch();
    if (this.pingTimer) clearInterval(this.pingTimer);
    for (const req of this.requests.values()) req.job.cancel('socket closed');
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
