// The contract between the HTTP edge and the inference engine. Everything here is plain data
// (structured-clone safe) because it crosses a worker_threads MessagePort.
import type { ChatRenderRequest, ChatTemplateInfo } from '../model/chat-template.js';
import type { LoraAdapter } from '../model/lora-adapter.js';
import type { Manifest } from '../model/manifest.js';
import type { ChatEncoding } from '../model/tokenizer-thread.js';
import type { CompiledConstraint, CompileResult, ConstraintSpec } from '../structured/constraint.js';
import type { SchedulingPolicy } from './fair-share.js';

/** Fully resolved sampling settings: the edge applies defaults and validates ranges before this. */
export interface SamplingParams {
  /** Tokens to generate at most (per choice). */
  maxTokens: number;
  /** EOS and stop token ids are ignored until this many tokens exist. */
  minTokens: number;
  /** 0 means greedy. */
  temperature: number;
  /** 1 disables nucleus filtering. */
  topP: number;
  /** 0 disables top-k filtering. */
  topK: number;
  /** 0 disables min-p filtering. */
  minP: number;
  presencePenalty: number;
  frequencyPenalty: number;
  /** 1 disables it; > 1 discourages tokens already in prompt or output (CTRL/HF semantics). */
  repetitionPenalty: number;
  /** [tokenId, bias] pairs added to the logits before sampling. */
  logitBias: Array<[number, number]>;
  /** Seeds the request's own RNG; null draws a random seed. */
  seed: number | null;
  /** Alternatives to report per token (0..20); null means no logprobs at all. */
  logprobs: number | null;
  /** Also report the prompt tokens (with logprobs when `logprobs` is set). */
  echo: boolean;
  /** Generation stops before any of these strings; the stop text is not emitted. */
  stop: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
  /** Independent completions of the same prompt; they share its prefill. */
  n: number;
  /**
   * Structured output: every sampled token keeps the output a prefix of a string this automaton
   * accepts, and EOS comes only once it is complete. null: free text.
   */
  constraint: CompiledConstraint | null;
}

export interface EngineRequest {
  /** Unique per engine; the edge generates it. */
  id: string;
  promptTokens: number[];
  params: SamplingParams;
  /**
   * Prefix-cache isolation: mixed into the first block's name, so cached blocks are shared only
   * between requests with the same keys (the edge's: the tenant, and vLLM's `cache_salt`).
   * Absent or empty: the shared cache.
   */
  cacheKeys?: readonly string[];
  /** Who sent it (an API key's name; absent: the default tenant): admission is fair between tenants. */
  tenant?: string;
  /** Lower is admitted first within its tenant, under the `priority` scheduling policy (default 0). */
  priority?: number;
  /**
   * The LoRA adapter it runs with: an id given to EngineClient.addAdapter (never reused, so the
   * prefix cache keeps each load's blocks apart). Absent: the base model.
   */
  adapter?: number;
}

export type FinishReason = 'stop' | 'length';

/** A token as logprobs name it. */
export interface LogprobToken {
  /** Its text, or `bytes:\xNN...` when its bytes are not valid UTF-8 alone (Tokenizer.tokenText). */
  token: string;
  tokenId: number;
  /** Its raw bytes, only where `token` is that placeholder (elsewhere they are token's UTF-8). */
  bytes?: number[];
}

export interface TopLogprob extends LogprobToken {
  logprob: number;
}

/** Logprob record of one emitted (or echoed) token. */
export interface TokenLogprob extends LogprobToken {
  /** null only for the first prompt token, which has no preceding context. */
  logprob: number | null;
  top: TopLogprob[];
}

/**
 * Events of one request, in order. A request yields `accepted` once it is queued in the engine,
 * then `prompt` at most once (echo), then any number of `delta` events per choice, exactly one
 * `finish` per choice, then `done`; or an `error` at any point, after which nothing follows.
 */
export type EngineEvent =
  | {
      /** The engine queued the request: a streaming response may commit to 200 now. */
      type: 'accepted';
    }
  | {
      type: 'prompt';
      /** Prompt tokens as text pieces, with logprobs when requested. */
      tokens: TokenLogprob[];
      text: string;
    }
  | {
      type: 'delta';
      choice: number;
      /** Text newly safe to emit (complete UTF-8, not a possible stop-string prefix). */
      text: string;
      tokenIds: number[];
      /** One entry per token in tokenIds when logprobs were requested. */
      logprobs: TokenLogprob[] | null;
    }
  | {
      type: 'finish';
      choice: number;
      reason: FinishReason;
      /**
       * Sum of the sampled tokens' logprobs under the unmodified model distribution (for best_of);
       * computed when logprobs were requested or n > 1, else 0.
       */
      cumulativeLogprob: number;
      /** Final text flushed at finish (held-back text that turned out not to be a stop string). */
      text: string;
      completionTokens: number;
    }
  /** cachedTokens: prompt tokens whose K/V came from the prefix cache (OpenAI's usage.prompt_tokens_details.cached_tokens). */
  | { type: 'done'; promptTokens: number; completionTokens: number; cachedTokens: number }
  | { type: 'error'; error: EngineError };

/** Receives one request's events in order; the last one is `done` or `error`. */
export type EventSink = (event: EngineEvent) => void;

/**
 * Why the engine ended a request. The edge validates requests before they reach the engine, so
 * an engine error is never the client's fault: it is the engine's state (draining, dead) or a bug.
 */
export type EngineErrorCode =
  /** The engine is draining and accepts no new requests. */
  | 'shutting_down'
  /** The engine died (worker exit, repeated step failures, no progress) or is dead already. */
  | 'engine_unavailable'
  /** The model step that computed this request failed, or an engine invariant broke (a bug). */
  | 'internal_error';

export interface EngineError {
  code: EngineErrorCode;
  message: string;
}

export interface EngineStats {
  /** Requests waiting for admission (paused ones included). */
  waiting: number;
  /** Sequences in the running batch (choices count individually; paused ones included). */
  running: number;
  /** Sequences whose client stopped reading: kept out of steps until resumed. */
  paused: number;
  /** Per tenant with sequences in the engine: its running and waiting sequences (each choice counts). */
  tenants: Array<{ tenant: string; running: number; waiting: number }>;
  /** Per LoRA adapter (EngineRequest.adapter) with sequences in the engine: the same counts. */
  adapters: Array<{ adapter: number; running: number; waiting: number }>;
  kvBlocksTotal: number;
  kvBlocksUsed: number;
  /** kvBlocksUsed / kvBlocksTotal */
  kvUsage: number;
  /**
   * Process memory the KV pools have committed: pages are committed as blocks are first written,
   * so this grows toward the pools' full size (the startup log gives it) and never shrinks.
   * Device-resident pools count 0.
   */
  kvBytesCommitted: number;
  blockSize: number;
  steps: number;
  /** Steps whose model run failed, in a row; 0 after any step that succeeded. */
  consecutiveFailedSteps: number;
  /** Milliseconds the last step took, model run and everything around it. */
  lastStepMs: number;
  /** Milliseconds of all steps so far. */
  stepMsTotal: number;
  preemptions: number;
  promptTokensTotal: number;
  generatedTokensTotal: number;
  /** Tokens admissions looked up in the prefix cache, and those found there. */
  prefixCacheQueries: number;
  prefixCacheHits: number;
  /** Speculative decoding: verifications (sequence steps with drafts), draft tokens verified, and kept. */
  specDecodeDrafts: number;
  specDecodeDraftTokens: number;
  specDecodeAcceptedTokens: number;
}

/** What the engine reports after every step and whenever it goes idle: the edge's liveness source. */
export interface EngineHeartbeat {
  stats: EngineStats;
  /** The engine has schedulable work, so another step follows without any new message. */
  busy: boolean;
  /** Commands (add, cancel, pause, resume) applied so far, counted like the client counts them. */
  applied: number;
}

export interface ModelInfo {
  /** Name the model folder was exported as. */
  name: string;
  contextLength: number;
  vocabSize: number;
  eosTokenId: number;
  /** Tokens the KV cache holds over all sequences: no single sequence can be longer. */
  kvCacheTokens: number;
  /**
   * Process memory the KV pools (a draft model's included) take once every block has been written:
   * what kvBytesCommitted grows toward. 0 for pools in device memory.
   */
  kvCacheBytes: number;
  /** Of kvCacheBytes, what was committed before serving: all of it for pools on huge pages (KvPool.committedUpFront), else 0. */
  kvCommittedAtStartBytes: number;
  /** Sequences one batch runs (--max-num-seqs): a prompt's choices, admitted together, fit in it. */
  maxNumSeqs: number;
  /**
   * Bytes of the longest token (added tokens included). A text of L UTF-16 code units has at
   * least L UTF-8 bytes, so it cannot encode to fewer than ceil(L / maxTokenBytes) tokens.
   */
  maxTokenBytes: number;
  /** Weight dtype and, when quantized, how (the manifest's record). */
  weights: Pick<Manifest, 'dtype' | 'quantization'>;
  /** LoRA serving (--enable-lora), or null when off. */
  lora: LoraOptions | null;
}

export interface LoraOptions {
  /** Distinct adapters the running batch may hold (--max-loras): each takes a slot of the step graph. */
  maxLoras: number;
  /** Every adapter is padded to this rank; higher ranks are refused (--max-lora-rank). */
  maxRank: number;
}

/**
 * ok; stuck (work pending, no heartbeat for stepTimeoutMs: a hung native call); dead (the worker
 * exited, maxConsecutiveStepFailures steps failed in a row, or it was stuck and was given up).
 */
export type EngineHealthState = 'ok' | 'stuck' | 'dead';

export interface EngineHealth {
  state: EngineHealthState;
  /** Why the state is not ok (for /health and the log). */
  reason: string | null;
  /** Milliseconds since the engine last reported progress (a step, or going idle). */
  sinceLastHeartbeatMs: number;
  consecutiveFailedSteps: number;
}

/**
 * What the HTTP edge needs from an engine: WorkerEngine (and the tests' in-process engine).
 * Tokenization runs off the calling thread in the worker-backed engine, so it is asynchronous.
 */
export interface EngineClient {
  readonly model: ModelInfo;
  /**
   * Starts a request; its events go to `sink` in order. Never throws for engine state: a dead or
   * draining engine answers with an `error` event (delivered asynchronously, like every event).
   */
  submit(request: EngineRequest, sink: EventSink): void;
  /** Idempotent; unknown or finished ids are ignored. No event follows a cancel. */
  cancel(id: string): void;
  /** The client stopped reading: keep the request out of steps (its KV blocks may be reclaimed). */
  pause(id: string): void;
  resume(id: string): void;
  /** The figures of the engine's latest heartbeat (no round trip). */
  stats(): EngineStats;
  /** Liveness from the heartbeat: dead, stuck (work pending, no progress), or ok. */
  health(): EngineHealth;
  /** Called once if the engine dies; every open request has had its `error` event by then. */
  onDead(listener: (reason: string) => void): void;
  /** Stops admitting, lets running requests finish for up to drainMs, then ends the rest. */
  shutdown(options?: { drainMs?: number }): Promise<void>;
  /** Token ids of each text (added tokens such as `<|endoftext|>` recognized). */
  encode(texts: string[]): Promise<number[][]>;
  /** Text of each token-id list (byte-exact, U+FFFD for broken UTF-8). */
  decode(lists: number[][]): Promise<string[]>;
  /** The chat template requests are rendered with (chosen at start-up). */
  readonly chatTemplate: ChatTemplateInfo;
  /** Renders a conversation with the chat template and tokenizes it, off the calling thread. */
  encodeChat(request: ChatRenderRequest): Promise<ChatEncoding>;
  /** Compiles a structured-output constraint off the calling thread (cached per distinct spec). */
  compileConstraint(spec: ConstraintSpec): Promise<CompileResult>;
  /**
   * Gives the engine a LoRA adapter (read and checked by readLoraAdapter) under a new `id`; requests
   * submitted after this call may name it. Only with model.lora set.
   */
  addAdapter(id: number, adapter: LoraAdapter): void;
  /**
   * The engine drops adapter `id` once no request uses it: running and waiting ones finish with
   * it, and the edge must not submit new ones naming it. Unknown ids are ignored.
   */
  removeAdapter(id: number): void;
}

export interface SpeculationOptions {
  /** off; ngram: prompt lookup; draft: a smaller model proposes (draftModelDir). */
  method: 'off' | 'ngram' | 'draft';
  /** Most draft tokens per sequence and step. */
  numTokens: number;
  /** ngram: the shortest and longest runs of last tokens matched against the context. */
  lookupMin: number;
  lookupMax: number;
  draftModelDir?: string;
}

export type ExecutionProviderChoice = 'auto' | 'cpu' | 'cuda' | 'webgpu';

export type OrtLogLevel = 'verbose' | 'info' | 'warning' | 'error' | 'fatal';

export interface EngineOptions {
  /** Exported model folder (model.onnx, manifest.json, tokenizer.json, config.json). */
  modelDir: string;
  /** Model id reported to clients; defaults to the folder name. */
  servedModelName?: string;
  /** --chat-template: a file or the template itself; overrides tokenizer_config.json's. */
  chatTemplate?: string;
  executionProvider: ExecutionProviderChoice;
  /** 0 lets ONNX Runtime use one thread per core. */
  intraOpThreads: number;
  /** ONNX Runtime's own logging (plain text on stderr): 'fatal' keeps it out of a JSON log. */
  ortLogLevel?: OrtLogLevel;
  /** --ort-profile: ONNX Runtime's profiler on the model's session, its trace written at dispose. */
  ortProfile?: string;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  /** Time cap of steps with decoding streams (ms, 'auto', or 0 for tokens only); see SchedulerConfig. */
  maxStepMs: number | 'auto';
  kvCacheTokens: number;
  blockSize: number;
  /** Automatic prefix caching: full KV blocks are kept, named by their tokens, and reused. */
  prefixCaching: boolean;
  /** Speculative decoding (off when absent). */
  speculation?: SpeculationOptions;
  /** Output tokens admission keeps room for per sequence (tests set 0 to force preemption); see SchedulerConfig. */
  admissionReserveTokens?: number;
  /** fcfs (default) or priority (a request's `priority` orders its tenant's requests, and may preempt); see fair-share.ts. */
  schedulingPolicy?: SchedulingPolicy;
  /** LoRA serving (--enable-lora): slots for per-request adapters in every step. */
  lora?: LoraOptions;
  /** Consecutive failed model steps after which the engine declares itself dead. */
  maxConsecutiveStepFailures: number;
  /** Work pending and no step finished for this long: the engine is stuck (dead). 0 disables. */
  stepTimeoutMs: number;
}
