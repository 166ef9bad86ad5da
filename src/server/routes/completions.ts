// POST /v1/completions: JSON, or Server-Sent Events with `stream: true`.
import type { ServerResponse } from 'node:http';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { startCompletion } from '../completion-start.js';
import { collectCompletion, completionChunks } from '../openai/completion-output.js';
import { JobCancelledError } from '../openai/completion-job.js';
import { CompletionBodySchema } from '../openai/completion-schema.js';
import { toApiError } from '../openai/errors.js';
import { SSE_DONE, sseData } from '../openai/responses.js';
import { recordFinished, statsOf } from '../telemetry.js';

/** Status recorded for a request whose client went away (nginx's convention). */
export const CLIENT_CLOSED = 499;

class StalledError extends Error {}

/** Waits until `res` can take more bytes; rejects if the client leaves or reads nothing for `timeoutMs`. */
function drained(res: ServerResponse, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      clearTimeout(timer);
      res.off('drain', onDrain);
      res.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(new JobCancelledError('client disconnected'));
    const timer = setTimeout(() => done(new StalledError()), timeoutMs);
    res.on('drain', onDrain);
    res.on('close', onClose);
  });
}

export const completionsRoutes: FastifyPluginAsyncZod = async (app) => {
  app.post('/v1/completions', { schema: { body: CompletionBodySchema } }, async (request, reply) => {
    const { job, meta, end } = startCompletion(app, request.body);
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
      if (apiErr.code === 'internal_error') request.log.error({ err: job.failure ?? err }, 'completion failed');
      status = apiErr.statusCode;
      finish(false, apiErr.code);
      throw apiErr;
    };

    if (!job.request.stream) {
      try {
        const response = await collectCompletion(job, meta);
        finish(false);
        return response;
      } catch (err) {
        return failBeforeResponse(err);
      }
    }

    // Streaming: wait for every prompt's first engine event so a rejection still gets its status.
    try {
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
    let errorCode: string | undefined;
    try {
      for await (const chunk of completionChunks(job, meta, { includeUsage: job.request.includeUsage })) {
        if (!res.write(sseData(chunk))) await drained(res, app.appOptions.stallTimeoutMs);
      }
      res.write(SSE_DONE);
    } catch (err) {
      if (err instanceof JobCancelledError) {
        status = CLIENT_CLOSED;
        errorCode = 'client_closed';
      } else if (err instanceof StalledError) {
        status = CLIENT_CLOSED;
        errorCode = 'client_stalled';
        job.cancel('client stalled');
        res.destroy();
      } else {
        // The headers are out: the error travels as an event, then the stream ends normally.
        const apiErr = toApiError(err);
        if (apiErr.code === 'internal_error') request.log.error({ err: job.failure ?? err }, 'completion failed');
        status = apiErr.statusCode;
        errorCode = apiErr.code;
        if (!res.destroyed) {
          res.write(sseData(apiErr.toBody()));
          res.write(SSE_DONE);
        }
      }
    } finally {
      if (!res.destroyed) res.end();
      finish(true, errorCode);
    }
    return reply;
  });
};
