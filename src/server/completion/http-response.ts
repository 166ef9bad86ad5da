// The HTTP response of an admitted job, for both APIs: JSON, or Server-Sent Events with
// `stream: true`.
//
// A request is admitted (or refused with 429) before any work, validated and tokenized off the
// main thread, then submitted. A stream sends its 200 headers as soon as the engine has queued
// the request, so a client sees the response start even while it waits for a batch slot.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { toApiError } from '../openai/errors.js';
import { CLIENT_CLOSED, logServerFailure, recordFinished, statsOf } from '../telemetry.js';
import type { ResponseFormat } from './api.js';
import { StallGuard } from './flow-control.js';
import { JobCancelledError } from './job.js';
import type { AdmittedCompletion } from './start.js';

export async function respond(
  app: FastifyInstance,
  request: FastifyRequest,
  reply: FastifyReply,
  { job, end }: AdmittedCompletion,
  format: ResponseFormat,
): Promise<unknown> {
  const res = reply.raw;
  const startedAt = app.appOptions.clock();
  const onClose = () => {
    // The connection closed before the response was complete: the client is gone.
    if (!res.writableEnded) job.cancel('client disconnected');
  };
  res.on('close', onClose);
  // Gone already (while the body was being read)?
  if (request.raw.socket?.destroyed) onClose();
  let status = 200;
  const finish = (hijacked: boolean, error?: string) => {
    res.off('close', onClose);
    end();
    request.completionStats = statsOf(job, error);
    const elapsed = app.appOptions.clock() - startedAt;
    app.metrics.e2eLatency.observe({ status: String(status) }, elapsed / 1000);
    if (hijacked) recordFinished(app, request, status, reply.elapsedTime);
  };

  /** Before anything was sent: a gone client ends quietly, anything else is an OpenAI error. */
  const failBeforeResponse = (err: unknown) => {
    if (err instanceof JobCancelledError) {
      status = CLIENT_CLOSED;
      reply.hijack();
      finish(true, 'client_closed');
      return reply;
    }
    const apiErr = toApiError(err);
    logServerFailure(request.log, apiErr);
    status = apiErr.statusCode;
    finish(false, apiErr.code);
    throw apiErr;
  };

  try {
    await job.submit();
    if (!job.request.stream) {
      const response = await format.collect(job);
      finish(false);
      return response;
    }
    await job.ready();
  } catch (err) {
    return failBeforeResponse(err);
  }

  reply.hijack();
  res.writeHead(200, {
    ...(reply.getHeaders() as Record<string, string>),
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  res.flushHeaders(); // the client learns now that its request is queued, not at the first token
  let errorCode: string | undefined;
  let stalled = false;
  const guard = new StallGuard(app.config.stallTimeoutMs, {
    pause: () => job.pause(),
    resume: () => job.resume(),
    stalled: () => {
      stalled = true;
      job.cancel('client stalled');
    },
  });
  const onDrain = () => guard.drained();
  res.on('drain', onDrain);
  const stream = format.stream(job, { includeUsage: job.request.includeUsage });
  try {
    for await (const chunk of stream.chunks) {
      if (!res.write(format.sse.chunk(chunk))) guard.full();
    }
    res.write(format.sse.end);
  } catch (err) {
    if (err instanceof JobCancelledError) {
      status = CLIENT_CLOSED;
      errorCode = stalled ? 'client_stalled' : 'client_closed';
      if (stalled) res.destroy();
    } else {
      // The headers are out: the error travels as an event, then the stream ends normally.
      const apiErr = toApiError(err);
      logServerFailure(request.log, apiErr);
      status = apiErr.statusCode;
      errorCode = apiErr.code;
      if (!res.destroyed) {
        res.write(format.sse.chunk(stream.error(apiErr)));
        res.write(format.sse.end);
      }
    }
  } finally {
    guard.dispose();
    res.off('drain', onDrain);
    if (!res.destroyed) res.end();
    finish(true, errorCode);
  }
  return reply;
}
