// Shared by the HTTP and websocket routes of the three APIs: from a parsed body to an admitted job.
import type { FastifyInstance } from 'fastify';
import type { EngineClient } from '../../engine/types.js';
import type { ServerConfig } from '../../config.js';
import { DEFAULT_TENANT } from '../../engine/fair-share.js';
import { checkChatWork } from './chat-bounds.js';
import { ApiError } from '../openai/errors.js';
import type { ChatBody } from '../openai/chat-schema.js';
import type { CompletionBody } from '../openai/completion-schema.js';
import { jobObserver } from '../telemetry.js';
import { resolveChatRequest, type ChatResolveOptions } from './chat-request.js';
import { checkFanOut } from './fan-out.js';
import { CompletionJob, type RequestResolver } from './job.js';
import type { LoraLease } from '../lora/registry.js';
import { resolveCompletionRequest } from './request.js';
import { responsesAsChat } from './responses-request.js';
import type { ResponsesBody } from '../openai/responses-schema.js';

export interface AdmittedCompletion {
  job: CompletionJob;
  /** Call when the response is fully written (or abandoned); drain waits for it. */
  end: () => void;
}

/** How a request is admitted: `tenant` is its API key's name (FastifyRequest.tenant). */
export interface AdmitOptions {
  forceStream?: boolean;
  tenant?: string | null;
}

/** What admission reads of a body before any work: its model, its fan-out and its scheduling priority. */
type AdmissionFields = Pick<CompletionBody, 'model' | 'prompt' | 'n' | 'best_of' | 'priority'>;

export function admitCompletion(app: FastifyInstance, body: CompletionBody, options: AdmitOptions = {}): AdmittedCompletion {
  return admit(app, 'cmpl-', body, (engine, o) => resolveCompletionRequest(body, engine, o), options);
}

export function admitChat(app: FastifyInstance, body: ChatBody, options: AdmitOptions = {}): AdmittedCompletion {
  return admitConversation(app, 'chatcmpl-', body, {}, options);
}

export function admitResponse(app: FastifyInstance, body: ResponsesBody, options: AdmitOptions = {}): AdmittedCompletion {
  const { chat, resolveOptions } = responsesAsChat(body);
  return admitConversation(app, 'resp_', chat, resolveOptions, options);
}

/** A chat, or a response as the chat it is: one conversation is one prompt. */
function admitConversation(app: FastifyInstance, idPrefix: string, chat: ChatBody, resolveOptions: ChatResolveOptions, options: AdmitOptions): AdmittedCompletion {
  return admit(
    app,
    idPrefix,
    { model: chat.model, prompt: null, n: chat.n, best_of: null, priority: chat.priority },
    (engine, o) => resolveChatRequest(chat, engine, { ...o, ...resolveOptions }),
    options,
    (model) => checkChatWork(chat, model, resolveOptions.fields?.messages),
  );
}

/**
 * Admits a request (a completion, a chat or a response) before any work is done on it: throws
 * ApiError 503 (loading, draining, engine dead), 404 (a `model` that is neither the base model
 * nor a LoRA adapter), 400 (a fan-out no admission could take:
 * checkFanOut; a `priority` under fcfs) or 429 (--max-concurrent-requests,
 * --max-concurrent-requests-per-key or --max-seqs-in-flight reached). `checkSize` is the
 * request's own O(1) size check (a conversation's, chat-bounds.ts), run once the server is known
 * to take work. The caller then runs job.submit().
 */
function admit(
  app: FastifyInstance,
  idPrefix: string,
  fields: AdmissionFields,
  resolve: RequestResolver,
  options: AdmitOptions,
  checkSize?: (model: EngineClient['model']) => void,
): AdmittedCompletion {
  const state = app.serving;
  const engine = state.acceptNewWork();
  const model = fields.model;
  const isAdapter = checkModel(app, model);
  checkSize?.(engine.model);
  const priority = checkPriority(fields.priority, app.config.schedulingPolicy);
  const sequences = checkFanOut(fields, {
    maxPromptsPerRequest: app.config.maxPromptsPerRequest,
    maxNumSeqs: engine.model.maxNumSeqs,
    maxSeqsInFlight: state.maxSeqsInFlight,
  });
  const opts = app.appOptions;
  // Counted before the adapter is leased (which may start reading it from disk), so an overloaded
  // server refuses the request first; the job, made once the adapter's id is known, is what drain cancels.
  let job: CompletionJob | null = null;
  const release = state.admit({ cancel: (reason, error) => job?.cancel(reason, error) }, sequences, options.tenant ?? DEFAULT_TENANT);
  let lease: LoraLease | null = null;
  try {
    lease = isAdapter ? state.lora!.acquire(model) : null;
  } catch (err) {
    release();
    throw err;
  }
  if (lease) app.metrics.loraRequests?.inc({ adapter: model });
  job = new CompletionJob(resolve, {
    engine,
    // Responses name the model as the request did: the base model or the adapter.
    meta: { id: `${idPrefix}${opts.newId()}`, created: Math.floor(opts.now() / 1000), model, systemFingerprint: state.systemFingerprint },
    observer: jobObserver(app),
    clock: opts.clock,
    forceStream: options.forceStream,
    promptTokensDetails: app.config.enablePromptTokensDetails,
    // Each tenant's prefix-cache entries are its own: no hit, and so no timing, crosses tenants.
    // Keyed by the key's name, which a reload of --api-keys-file keeps.
    cacheKeys: options.tenant == null ? [] : [`tenant:${options.tenant}`],
    // Without keys, the engine's default tenant.
    tenant: options.tenant ?? undefined,
    priority,
    ...(lease ? { adapter: lease.adapter, adapterReady: lease.ready } : {}),
  });
  return {
    job,
    end: () => {
      lease?.release();
      release();
    },
  };
}

/**
 * Whether `model` names a LoRA adapter (true) or the base model (false); throws 404 for anything
 * else. Checked at admission, before any work, so that the adapter can be leased.
 */
function checkModel(app: FastifyInstance, model: string): boolean {
  const state = app.serving;
  if (model === state.modelId) return false;
  if (state.lora?.has(model)) return true;
  const served = state.lora ? `\`${state.modelId}\` and the LoRA adapters GET /v1/models lists` : `\`${state.modelId}\``;
  throw new ApiError('model_not_found', `The model \`${model.slice(0, 200)}\` does not exist. This server serves ${served}`, 'model');
}

/**
 * vLLM's rule: a non-zero `priority` is refused (400) unless --scheduling-policy is priority,
 * rather than silently ignored.
 */
function checkPriority(priority: number | null | undefined, policy: ServerConfig['schedulingPolicy']): number {
  const value = priority ?? 0;
  if (value !== 0 && policy !== 'priority') {
    throw new ApiError('invalid_value', `\`priority\`: got ${value}, but priority scheduling is not enabled (--scheduling-policy priority)`, 'priority');
  }
  return value;
}
