// Shared by the HTTP and websocket routes: from a parsed body to an admitted CompletionJob.
import type { FastifyInstance } from 'fastify';
import type { CompletionBody } from '../openai/completion-schema.js';
import { jobObserver } from '../telemetry.js';
import { checkFanOut } from './fan-out.js';
import { CompletionJob } from './job.js';

export interface AdmittedCompletion {
  job: CompletionJob;
  /** Call when the response is fully written (or abandoned); drain waits for it. */
  end: () => void;
}

/**
 * Admits a completion before any work is done on it: throws ApiError 503 (loading, draining,
 * engine dead), 400 (a fan-out no admission could take: checkFanOut) or 429
 * (--max-concurrent-requests or --max-seqs-in-flight reached). The caller then runs job.submit().
 */
export function admitCompletion(app: FastifyInstance, body: CompletionBody, options: { forceStream?: boolean } = {}): AdmittedCompletion {
  const state = app.serving;
  const engine = state.acceptNewWork();
  const sequences = checkFanOut(body, {
    maxPromptsPerRequest: app.config.maxPromptsPerRequest,
    maxNumSeqs: engine.model.maxNumSeqs,
    maxSeqsInFlight: state.maxSeqsInFlight,
  });
  const opts = app.appOptions;
  const job = new CompletionJob(body, {
    engine,
    limits: { servedModel: state.modelId },
    meta: { id: `cmpl-${opts.newId()}`, created: Math.floor(opts.now() / 1000), model: state.modelId, systemFingerprint: state.systemFingerprint },
    observer: jobObserver(app),
    clock: opts.clock,
    forceStream: options.forceStream,
  });
  return { job, end: state.admit(job, sequences) };
}
