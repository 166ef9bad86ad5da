// The client side of one benchmark run: a transport sends a request through the public API and
// resolves with what it measured. It never rejects: a failed request is a result with ok false.
import type { RequestResult } from './request-result.js';
import type { BenchRequest } from './workload.js';

export type TransportKind = 'sse' | 'ws';

/** Which OpenAI API the requests use (--api). */
export type BenchApi = 'completions' | 'chat' | 'responses';
export const BENCH_APIS: readonly BenchApi[] = ['completions', 'chat', 'responses'];

/**
 * The text a streamed message (SSE event or websocket frame) of any API carries: a completion
 * chunk's `choices[0].text`, a chat chunk's `choices[0].delta.content`, or the `delta` of a
 * Responses `response.output_text.delta` event (its other events carry no text).
 */
export function chunkText(msg: unknown): string {
  const m = msg as { type?: unknown; delta?: unknown; choices?: Array<{ text?: unknown; delta?: { content?: unknown } }> } | null;
  if (m?.type === 'response.output_text.delta') return typeof m.delta === 'string' ? m.delta : '';
  const c = Array.isArray(m?.choices) ? m.choices[0] : undefined;
  const text = c?.text ?? c?.delta?.content;
  return typeof text === 'string' ? text : '';
}

export interface Transport {
  readonly kind: TransportKind;
  /** `runStart` (performance.now()) anchors the result's sentAtMs. */
  send(request: BenchRequest, runStart: number): Promise<RequestResult>;
  close(): Promise<void>;
}

export interface TransportOptions {
  /** Server root, e.g. http://127.0.0.1:8000 */
  baseUrl: string;
  model: string;
  api: BenchApi;
  apiKey?: string;
  /** A request still unfinished after this long is abandoned and counted as an error. */
  requestTimeoutMs: number;
}

/** The OpenAI error body's message, or the raw text. */
export function describeError(status: number | null, text: string): string {
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    if (body.error) return `${status === null ? '' : `HTTP ${status} `}${String(body.error.code ?? '')}: ${String(body.error.message ?? '')}`.trim();
  } catch {
    // not JSON
  }
  return `${status === null ? '' : `HTTP ${status}: `}${text.slice(0, 200)}`;
}
