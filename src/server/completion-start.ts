// Shared by the HTTP and websocket routes: from a parsed body to a started CompletionJob.
import type { FastifyInstance } from 'fastify';
import type { CompletionBody } from './openai/completion-schema.js';
import { resolveCompletionRequest } from './openai/completion-request.js';
import { CompletionJob } from './openai/completion-job.js';
import type { ResponseMeta } from './openai/responses.js';
import { jobObserver } from './telemetry.js';

export interface StartedCompletion {
  job: CompletionJob;
  meta: ResponseMeta;
  /** Call when the response is fully written (or abandoned); drain waits for it. */
  end: () => void;
}

/** Throws ApiError (503 draining/loading, 404 model, 400 limits) before anything reaches the engine. */
export function startCompletion(app: FastifyInstance, body: CompletionBody, options: { forceStream?: boolean } = {}): StartedCompletion {
  const state = app.serving;
  const engine = state.acceptNewWork();
  const valid = resolveCompletionRequest(body, engine, state.modelId, options);
  const opts = app.appOptions;
  const meta: ResponseMeta = {
    id: `cmpl-${opts.newId()}`,
    created: Math.floor(opts.now() / 1000),
    model: state.modelId,
    systemFingerprint: state.systemFingerprint,
  };
  const job = new CompletionJob(engine, valid, meta.id, jobObserver(app), opts.clock);
  const end = state.beginRequest(job);
  job.start();
  return { job, meta, end };
}
