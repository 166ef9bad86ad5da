// What one benchmark request measured, and the timer both transports use to measure it, with
// vLLM benchmark_serving's definitions: TTFT is the time from sending to the first chunk that
// carries text (with --api responses, the first `response.output_text.delta` event: the
// created/in_progress/item events before it carry none); ITL is every gap between successive
// text-carrying chunks (one chunk may carry several tokens when the server holds back an
// incomplete UTF-8 sequence); end-to-end latency ends when the response is complete (SSE: `data:
// [DONE]`, or a Responses stream's `response.completed` / `response.incomplete` event; websocket:
// the `.done` frame). TPOT is derived later from these and the token count.
import { performance } from 'node:perf_hooks';
import type { BenchApi } from './transport.js';
import type { BenchRequest } from './workload.js';

export interface RequestResult {
  index: number;
  ok: boolean;
  /** Why the request counts as an error (HTTP status, error event, wrong token count, ...). */
  error?: string;
  /** Sent, in ms since the start of the run. */
  sentAtMs: number;
  promptTokens: number;
  /** completion_tokens of the streamed usage. */
  outputTokens: number;
  ttftMs: number;
  e2eMs: number;
  itlMs: number[];
  /** Text-carrying chunks received. */
  chunks: number;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
}

export class StreamTimer {
  private readonly start = performance.now();
  private first = -1;
  private last = -1;
  readonly itl: number[] = [];
  chunks = 0;
  usage: Usage | null = null;

  constructor(
    private readonly request: BenchRequest,
    private readonly runStart: number,
  ) {}

  /** A chunk with text arrived at `now` (performance.now()). */
  textChunk(now: number): void {
    if (this.first < 0) this.first = now;
    else this.itl.push(now - this.last);
    this.last = now;
    this.chunks++;
  }

  /** The response is complete: check it and produce the result. */
  finish(now: number): RequestResult {
    const problem = this.check();
    return this.result(now, problem);
  }

  fail(now: number, error: string): RequestResult {
    return this.result(now, error);
  }

  private check(): string | undefined {
    const u = this.usage;
    if (!u) return 'the response carried no usage';
    if (u.completion_tokens !== this.request.outputTokens) {
      return `expected ${this.request.outputTokens} output tokens, got ${u.completion_tokens}`;
    }
    // A chat's (or a response's) prompt length is the rendered conversation's, which only the server knows.
    if (this.request.promptText === undefined && u.prompt_tokens !== this.request.promptIds.length) {
      return `expected ${this.request.promptIds.length} prompt tokens, got ${u.prompt_tokens}`;
    }
    if (this.first < 0) return 'no text chunk arrived';
    return undefined;
  }

  private result(now: number, error: string | undefined): RequestResult {
    const r: RequestResult = {
      index: this.request.index,
      ok: error === undefined,
      sentAtMs: this.start - this.runStart,
      promptTokens: this.usage?.prompt_tokens ?? 0,
      outputTokens: this.usage?.completion_tokens ?? 0,
      ttftMs: this.first < 0 ? 0 : this.first - this.start,
      e2eMs: now - this.start,
      itlMs: this.itl,
      chunks: this.chunks,
    };
    if (error !== undefined) r.error = error;
    return r;
  }
}

/**
 * The body of a benchmark request (greedy, exact length through ignore_eos): /v1/completions with
 * the prompt ids, /v1/chat/completions with the prompt text as one user message, or /v1/responses
 * with the prompt text as its string `input` (one user message too) and max_output_tokens. Its
 * `model` is the request's own (a LoRA adapter) where it names one, else the served model.
 */
export function completionBody(served: string, request: BenchRequest, api: BenchApi): Record<string, unknown> {
  const model = request.model ?? served;
  if (api === 'completions') return { model, prompt: request.promptIds, max_tokens: request.outputTokens, temperature: 0, ignore_eos: true };
  if (request.promptText === undefined) throw new Error(`--api ${api} sends the prompt as text: withPromptText first`);
  if (api === 'chat') return { model, messages: [{ role: 'user', content: request.promptText }], max_tokens: request.outputTokens, temperature: 0, ignore_eos: true };
  return { model, input: request.promptText, max_output_tokens: request.outputTokens, temperature: 0, ignore_eos: true };
}

/** A Responses `usage` ({input_tokens, output_tokens, ...}) as the counts a result records. */
export function responsesUsage(usage: unknown): Usage | null {
  const u = usage as { input_tokens?: unknown; output_tokens?: unknown } | null | undefined;
  if (typeof u?.input_tokens !== 'number' || typeof u.output_tokens !== 'number') return null;
  return { prompt_tokens: u.input_tokens, completion_tokens: u.output_tokens };
}
