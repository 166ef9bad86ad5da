// The soak's HTTP clients, on node:http so that each can misbehave on purpose: drop the connection
// after a few chunks, or stop reading and resume much later. They never reject: what happened is
// in the result, and every request ends by its timeout at the latest.
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import { SseParser } from '../bench/sse-client.js';
import { errorCode } from './outcome.js';

export interface HttpTarget {
  baseUrl: string;
  agent: http.Agent;
  requestTimeoutMs: number;
}

export interface HttpReply {
  /** 0 when no response arrived (see `error`). */
  status: number;
  retryAfter: string | undefined;
  body: string;
  /** A transport failure or the timeout. */
  error: string | null;
  ms: number;
}

/** One request whose whole reply is read. */
export function httpRequest(target: HttpTarget, method: string, path: string, body: string | null): Promise<HttpReply> {
  const start = performance.now();
  return new Promise((resolve) => {
    let settled = false;
    const settle = (r: Omit<HttpReply, 'ms'>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ ...r, ms: performance.now() - start });
    };
    const headers: Record<string, string> = body === null ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) };
    const req = http.request(new URL(path, target.baseUrl), { method, agent: target.agent, headers });
    const timer = setTimeout(() => {
      settle({ status: 0, retryAfter: undefined, body: '', error: `no reply after ${target.requestTimeoutMs} ms` });
      req.destroy();
    }, target.requestTimeoutMs);
    req.on('error', (err) => settle({ status: 0, retryAfter: undefined, body: '', error: `request failed: ${err.message}` }));
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => (text += s));
      res.on('end', () => settle({ status: res.statusCode ?? 0, retryAfter: header(res, 'retry-after'), body: text, error: null }));
      res.on('error', (err) => settle({ status: 0, retryAfter: undefined, body: text, error: `response failed: ${err.message}` }));
    });
    req.end(body ?? undefined);
  });
}

function header(res: http.IncomingMessage, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

export interface SsePlan {
  /** Drop the connection after this many chunks (0: as soon as the 200 headers arrive). */
  abortAfterChunks?: number;
  /** Stop reading at the first bytes of the stream and resume after this many ms. */
  stallForMs?: number;
}

export interface SseResult {
  /** HTTP status; 0 when no response arrived. */
  status: number;
  retryAfter: string | undefined;
  /** The error body of a non-200 reply. */
  errorBody: string;
  /** How the stream ended: [DONE], dropped by this client, ended by the server without [DONE], or timed out. */
  end: 'done' | 'client_abort' | 'server_closed' | 'timeout' | 'transport_error';
  /** Chunks (data events) before the end. */
  chunks: number;
  /** The `code` of an error event in the stream. */
  errorEventCode: string | null;
  /** completion_tokens of the usage chunk. */
  completionTokens: number | null;
  detail: string | null;
  ms: number;
}

/** A streaming completion (`stream: true` is added) read according to `plan`. */
export function sseCompletion(target: HttpTarget, body: Record<string, unknown>, plan: SsePlan = {}): Promise<SseResult> {
  const start = performance.now();
  const text = JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } });
  return new Promise((resolve) => {
    const result: Omit<SseResult, 'ms' | 'end'> = {
      status: 0,
      retryAfter: undefined,
      errorBody: '',
      chunks: 0,
      errorEventCode: null,
      completionTokens: null,
      detail: null,
    };
    let settled = false;
    let resumeTimer: NodeJS.Timeout | null = null;
    const settle = (end: SseResult['end'], detail?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (resumeTimer) clearTimeout(resumeTimer);
      resolve({ ...result, end, detail: detail ?? result.detail, ms: performance.now() - start });
    };
    const req = http.request(new URL('/v1/completions', target.baseUrl), {
      method: 'POST',
      agent: target.agent,
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', 'content-length': String(Buffer.byteLength(text)) },
    });
    const timer = setTimeout(() => {
      settle('timeout', `unfinished after ${target.requestTimeoutMs} ms`);
      req.destroy();
    }, target.requestTimeoutMs);
    const abort = () => {
      settle('client_abort');
      req.destroy();
    };
    req.on('error', (err) => settle('transport_error', `request failed: ${err.message}`));
    req.on('response', (res) => {
      result.status = res.statusCode ?? 0;
      result.retryAfter = header(res, 'retry-after');
      res.setEncoding('utf8');
      if (result.status !== 200) {
        res.on('data', (s: string) => (result.errorBody += s));
        res.on('end', () => settle('server_closed'));
        res.on('error', (err) => settle('transport_error', `response failed: ${err.message}`));
        return;
      }
      if (plan.abortAfterChunks === 0) return abort();
      const parser = new SseParser();
      let sawDone = false;
      res.on('data', (s: string) => {
        if (plan.stallForMs !== undefined && resumeTimer === null && !settled) {
          // A client that stops reading: its socket fills, then the server's send buffer.
          res.pause();
          resumeTimer = setTimeout(() => res.resume(), plan.stallForMs);
        }
        for (const data of parser.push(s)) {
          if (data === '[DONE]') {
            sawDone = true;
            continue;
          }
          result.chunks++;
          readChunk(result, data);
          if (plan.abortAfterChunks !== undefined && result.chunks >= plan.abortAfterChunks) return abort();
        }
      });
      const ended = () => settle(sawDone ? 'done' : 'server_closed');
      res.on('end', ended);
      res.on('aborted', ended);
      res.on('close', ended);
      res.on('error', () => ended());
    });
    req.end(text);
  });
}

function readChunk(result: Omit<SseResult, 'ms' | 'end'>, data: string): void {
  let msg: { error?: unknown; usage?: { completion_tokens?: unknown } | null };
  try {
    msg = JSON.parse(data) as typeof msg;
  } catch {
    result.detail ??= `invalid JSON in the stream: ${data.slice(0, 80)}`;
    return;
  }
  if (msg.error) result.errorEventCode ??= errorCode(msg) ?? 'unknown';
  const tokens = msg.usage?.completion_tokens;
  if (typeof tokens === 'number') result.completionTokens = tokens;
}
