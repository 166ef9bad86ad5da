// The contract between the HTTP edge and the inference engine. Everything here is plain data
// (structured-clone safe) because it crosses a worker_threads MessagePort.
import type { Manifest } from '../model/manifest.js';

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
}

export interface EngineRequest {
  /** Unique per engine; the edge generates it. */
  id: string;
  promptTokens: number[];
  params: SamplingParams;
}

export type FinishReason = 'stop' | 'length';

export interface TopLogprob {
  token: string;
  tokenId: number;
  logprob: number;
}

/** Logprob record of one emitted (or echoed) token. */
export interface TokenLogprob {
  token: string;
  tokenId: number;
  /** null only for the first prompt token, which has no preceding context. */
  logprob: number | null;
  top: TopLogprob[];
}

/**
 * Events of one request, in order. A request yields `prompt` at most once (echo), then any
 * number of `delta` events per choice, exactly one `finish` per choice, then `done`; or an
 * `error` at any point, after which nothing follows.
 */
export type EngineEvent =
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
  | { type: 'done'; promptTokens: number; completionTokens: number }
  | { type: 'error'; error: EngineError };

export type EngineErrorCode =
  | 'context_length_exceeded'
  | 'overloaded'
  | 'shutting_down'
  | 'invalid_request'
  | 'cancelled'
  | 'internal_error';

export interface EngineError {
  code: EngineErrorCode;
  message: string;
}

export interface EngineStats {
  /** Requests waiting for admission. */
  waiting: number;
  /** Sequences in the running batch (choices count individually). */
  running: number;
  kvBlocksTotal: number;
  kvBlocksUsed: number;
  /** kvBlocksUsed / kvBlocksTotal */
  kvUsage: number;
  blockSize: number;
  steps: number;
  preemptions: number;
  promptTokensTotal: number;
  generatedTokensTotal: number;
}

export interface ModelInfo {
  /** Name the model folder was exported as. */
  name: string;
  contextLength: number;
  vocabSize: number;
  eosTokenId: number;
  /** Weight dtype and, when quantized, how (the manifest's record). */
  weights: Pick<Manifest, 'dtype' | 'quantization'>;
}

/** What the HTTP edge needs from an engine; in-process and worker-backed engines implement it. */
export interface EngineClient {
  readonly model: ModelInfo;
  /** Yields the request's events; ending the iteration early (break/return) cancels the request. */
  submit(request: EngineRequest): AsyncIterable<EngineEvent>;
  /** Idempotent; unknown or finished ids are ignored. */
  cancel(id: string): void;
  stats(): Promise<EngineStats>;
  /** Stops admitting, lets running requests finish for up to drainMs, then cancels the rest. */
  shutdown(options?: { drainMs?: number }): Promise<void>;
  tokenize(text: string): number[];
  detokenize(tokens: number[]): string;
}

export type ExecutionProviderChoice = 'auto' | 'cpu' | 'cuda';

export interface EngineOptions {
  /** Exported model folder (model.onnx, manifest.json, tokenizer.json, config.json). */
  modelDir: string;
  /** Model id reported to clients; defaults to the folder name. */
  servedModelName?: string;
  executionProvider: ExecutionProviderChoice;
  /** 0 lets ONNX Runtime use one thread per core. */
  intraOpThreads: number;
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  kvCacheTokens: number;
  blockSize: number;
  maxQueue: number;
}
