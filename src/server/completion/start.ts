// Shared by the HTTP and websocket routes of both APIs: from a parsed body to an admitted job.
import type { FastifyInstance } from 'fastify';
import type { ChatBody } from '../openai/chat-schema.js';
import type { CompletionBody } from '../openai/completion-schema.js';
import { jobObserver } from '../telemetry.js';
import { resolveChatRequest } from './chat-request.js';
import { checkFanOut } from './fan-out.js';
import { CompletionJob, type RequestResolver } from './job.js';
import { resolveCompletionRequest } from './request.js';
import { resolveResponsesRequest } from './responses-request.js';
import type { ResponsesBody } from '../openai/responses-schema.js';

export interface AdmittedCompletion {
  job: CompletionJob;
  /** Call when the response is fully written (or abandoned); drain waits for it. */
  end: () => void;
}

/** How a request is admitted: `tenant` is its API key's (FastifyRequest.tenant). */
export interface AdmitOptions {
  forceStream?: boolean;
  tenant?: number | null;
}

export function admitCompletion(app: FastifyInstance, body: CompletionBody, options: AdmitOptions = {}): AdmittedCompletion {
  return admit(app, 'cmpl-', body, (engine, limits, o) => resolveCompletionRequest(body, engine, limits, o), options);
}

export function admitChat(app: FastifyInstance, body: ChatBody, options: AdmitOptions = {}): AdmittedCompletion {
  // One conversation is one prompt.
  return admit(app, 'chatcmpl-', { prompt: null, n: body.n, best_of: null }, (engine, limits, o) => resolveChatRequest(body, engine, limits, o), options);
}

export function admitResponse(app: FastifyInstance, body: ResponsesBody, options: AdmitOptions = {}): AdmittedCompletion {
  return admit(app, 'resp_', { prompt: null, n: 1, best_of: null }, (engine, limits, o) => resolveResponsesRequest(body, engine, limits, o), options);
}

/**
 * Admits a request (a completion, a chat or a response) before any work is done on it: throws ApiError 503
 * (loading, draining, engine dead), 400 (a fan-out no admission could take: checkFanOut) or 429
 * (--max-concurrent-requests or --max-seqs-in-flight reached). The caller then runs job.submit().
 */
function admit(
  app: FastifyInstance,
  idPrefix: string,
  fanOut: Pick<CompletionBody, 'prompt' | 'n' | 'best_of'>,
  resolve: RequestResolver,
  options: AdmitOptions,
): AdmittedCompletion {
  const state = app.serving;
  const engine = state.acceptNewWork();
  const sequences = checkFanOut(fanOut, {
    maxPromptsPerRequest: app.config.maxPromptsPerRequest,
    maxNumSeqs: engine.model.maxNumSeqs,
    maxSeqsInFlight: state.maxSeqsInFlight,
  });
  const opts = app.appOptions;
  const job = new CompletionJob(resolve, {
    engine,
    limits: { servedModel: state.modelId },
    meta: { id: `${idPrefix}${opts.newId()}`, created: Math.floor(opts.now() / 1000), model: state.modelId, systemFingerprint: state.systemFingerprint },
    observer: jobObserver(app),
    clock: opts.clock,
    forceStream: options.forceStream,
    promptTokensDetails: app.config.enablePromptTokensDetails,
    // Each tenant's prefix-cache entries are its own: no hit, and so no timing, crosses tenants.
    cacheKeys: options.tenant == null ? [] : [`tenant:${options.tenant}`],
  });
  return { job, end: state.admit(job, sequences) };
}
