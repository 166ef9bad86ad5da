// One table of every error the edge reports: code -> HTTP status and OpenAI error `type`.
// Every error body the server sends is `{"error":{"message","type","param","code"}}`; websocket
// error frames carry the same object. Nothing else (no stack, no internal message) leaves the server.
import type { EngineError } from '../../engine/types.js';

export const ERROR_TABLE = {
  // 400: the request is malformed or out of range; `param` names the field.
  invalid_value: { status: 400, type: 'invalid_request_error' },
  missing_required_parameter: { status: 400, type: 'invalid_request_error' },
  invalid_json: { status: 400, type: 'invalid_request_error' },
  unsupported_parameter: { status: 400, type: 'invalid_request_error' },
  context_length_exceeded: { status: 400, type: 'invalid_request_error' },
  // 401: the API key is missing or wrong (OpenAI uses this code and type).
  invalid_api_key: { status: 401, type: 'invalid_request_error' },
  // 403: a websocket upgrade from a browser page of another origin (see ws-origin.ts).
  origin_not_allowed: { status: 403, type: 'invalid_request_error' },
  // 404: unknown model or route; also an unknown id in a websocket `completion.cancel`.
  model_not_found: { status: 404, type: 'invalid_request_error' },
  not_found: { status: 404, type: 'invalid_request_error' },
  request_not_found: { status: 404, type: 'invalid_request_error' },
  // 409: a websocket `completion.create` reuses an id that is still in flight on that socket.
  duplicate_id: { status: 409, type: 'invalid_request_error' },
  // 413: body (or websocket message) larger than --max-body-bytes.
  request_too_large: { status: 413, type: 'invalid_request_error' },
  // 415: body that is not JSON.
  unsupported_media_type: { status: 415, type: 'invalid_request_error' },
  // 426: plain GET on the websocket route.
  upgrade_required: { status: 426, type: 'invalid_request_error' },
  // 429: --max-concurrent-requests completions, or --max-seqs-in-flight sequences, are in flight; sent with Retry-After.
  overloaded: { status: 429, type: 'rate_limit_error' },
  // 500: a bug or an engine failure; the message is generic, the details are logged.
  internal_error: { status: 500, type: 'server_error' },
  // 503: not serving completions right now: loading, draining, or the engine died (the process
  // then exits so that its supervisor restarts it).
  model_loading: { status: 503, type: 'server_error' },
  shutting_down: { status: 503, type: 'server_error' },
  engine_unavailable: { status: 503, type: 'server_error' },
  // 503 from /ready only: --max-concurrent-requests completions are in flight.
  at_capacity: { status: 503, type: 'server_error' },
} as const satisfies Record<string, { status: number; type: string }>;

export type ErrorCode = keyof typeof ERROR_TABLE;

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: ErrorCode };
}

export class ApiError extends Error {
  readonly code: ErrorCode;
  readonly param: string | null;
  readonly statusCode: number;
  /** Extra response headers (Retry-After, WWW-Authenticate). */
  readonly headers: Record<string, string>;

  constructor(code: ErrorCode, message: string, param: string | null = null, headers: Record<string, string> = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.param = param;
    this.statusCode = ERROR_TABLE[code].status;
    this.headers = headers;
  }

  get type(): string {
    return ERROR_TABLE[this.code].type;
  }

  toBody(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** Seconds a client should wait after a 429; requests in flight turn over quickly. */
export const RETRY_AFTER_SECONDS = 1;

/** Maps an engine error event to what the client sees. Internal messages are not passed on. */
export function fromEngineError(err: EngineError): ApiError {
  const apiErr =
    err.code === 'shutting_down'
      ? new ApiError('shutting_down', 'The server is shutting down')
      : err.code === 'engine_unavailable'
        ? new ApiError('engine_unavailable', 'The inference engine is unavailable; the server is restarting')
        : new ApiError('internal_error', 'The engine failed while processing the request');
  apiErr.cause = err.message; // for the server log only
  return apiErr;
}

/** The 429 of admission control; `why` names the limit reached. */
export function overloadedError(why: string): ApiError {
  return new ApiError('overloaded', `The server is overloaded: ${why}. Retry shortly`, null, {
    'retry-after': String(RETRY_AFTER_SECONDS),
  });
}

/** Turns anything thrown into an ApiError; unknown errors become a generic 500. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const e = err as { statusCode?: number; code?: string; message?: string } | null;
  const status = typeof e?.statusCode === 'number' ? e.statusCode : 500;
  switch (e?.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError('request_too_large', 'Request body is too large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError('unsupported_media_type', 'Content-Type must be application/json');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ApiError('invalid_json', 'Request body is empty; expected a JSON object');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new ApiError('invalid_json', 'Request body is not valid JSON');
    default:
      break;
  }
  if (status === 413) return new ApiError('request_too_large', 'Request body is too large');
  if (status === 415) return new ApiError('unsupported_media_type', 'Content-Type must be application/json');
  if (status === 404) return new ApiError('not_found', 'Not found');
  if (status >= 400 && status < 500) {
    // Fastify's own 4xx errors (bad content-length, JSON with __proto__, ...) carry safe messages.
    return new ApiError('invalid_value', String(e?.message ?? 'Bad request').split('\n')[0]!);
  }
  return new ApiError('internal_error', 'Internal server error');
}
