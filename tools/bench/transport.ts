// The client side of one benchmark run: a transport sends a request through the public API and
// resolves with what it measured. It never rejects: a failed request is a result with ok false.
import type { RequestResult } from './request-result.js';
import type { BenchRequest } from './workload.js';

export type TransportKind = 'sse' | 'ws';

/** Which OpenAI API the requests use (--api). */
export type BenchApi = 'completions' | 'chat';

/** The text a streamed chunk (SSE chunk or websocket frame) of either API carries. */
export function chunkText(choices: unknown): string {
  const c = (choices as Array<{ text?: unknown; delta?: { content?: unknown } }> | undefined)?.[0];
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
