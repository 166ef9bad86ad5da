// The one "request finished" log line and the request counter, shared by normal replies
// (onResponse hook) and hijacked ones (SSE, websocket completions) that call it themselves.
// Prompt text is never logged here; at info level only sizes and timings.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { CompletionJob, JobObserver } from './completion/job.js';
import type { ApiError } from './openai/errors.js';
import type { CompletionStats } from './types.js';

/** Status recorded for a request whose client went away (nginx's convention). */
export const CLIENT_CLOSED = 499;

export function routeLabel(request: FastifyRequest): string {
  return request.routeOptions?.url ?? 'unmatched';
}

export function recordFinished(
  app: FastifyInstance,
  request: FastifyRequest,
  status: number,
  durationMs: number,
  extra: Record<string, unknown> = {},
): void {
  if (request.finishRecorded) return;
  request.finishRecorded = true;
  const route = routeLabel(request);
  app.metrics.requests.inc({ method: request.method, route, status: String(status) });
  const stats = request.completionStats;
  request.log.info(
    {
      method: request.method,
      url: request.url.split('?')[0],
      status,
      promptTokens: stats?.promptTokens,
      completionTokens: stats?.completionTokens,
      ttftMs: stats?.ttftMs ?? undefined,
      error: stats?.error,
      // Which API key (its name), never the key.
      tenant: request.tenant ?? undefined,
      durationMs: Math.round(durationMs * 10) / 10,
      ...extra,
    },
    'request finished',
  );
}

export function jobObserver(app: FastifyInstance): JobObserver {
  return {
    firstToken: (s) => app.metrics.timeToFirstToken.observe(s),
    interToken: (s) => app.metrics.interTokenLatency.observe(s),
  };
}

export function statsOf(job: CompletionJob, error?: string): CompletionStats {
  return {
    promptTokens: job.promptTokens,
    completionTokens: job.completionTokens,
    ttftMs: job.firstTokenAt === null ? null : Math.round((job.firstTokenAt - job.startedAt) * 10) / 10,
    ...(error ? { error } : {}),
  };
}

/** A completion that failed on the server's side: one error line with the engine's reason. */
export function logServerFailure(log: FastifyRequest['log'], err: ApiError, extra: Record<string, unknown> = {}): void {
  if (err.statusCode >= 500) log.error({ code: err.code, cause: err.cause, ...extra }, 'completion failed');
}
