// Streaming completions over Server-Sent Events, as an OpenAI client sends them: POST
// /v1/completions (or /v1/chat/completions) with stream and stream_options.include_usage; the
// usage chunk gives the exact token counts, `data: [DONE]` ends the stream. With --api responses,
// POST /v1/responses with stream: the Responses event stream (`event: <type>` blocks, no [DONE]),
// which ends with `response.completed` or `response.incomplete`, whose `response.usage` gives
// the counts; an `error` event is a failure. node:http rather than fetch: no headers/body timeouts of its own (a request queued
// behind a long baseline run may wait minutes for its headers) and less client CPU per chunk.
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import { StreamTimer, completionBody, responsesUsage, type RequestResult } from './request-result.js';
import { chunkText, describeError, type BenchApi, type Transport, type TransportOptions } from './transport.js';
import type { BenchRequest } from './workload.js';

/** Splits an SSE byte stream (as text) into the payloads of its `data:` fields, one per event. */
export class SseParser {
  private buffer = '';

  push(text: string): string[] {
    this.buffer += text.replace(/\r\n?/g, '\n');
    const out: string[] = [];
    let end: number;
    while ((end = this.buffer.indexOf('\n\n')) >= 0) {
      const event = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const data: string[] = [];
      for (const line of event.split('\n')) {
        if (line.startsWith('data:')) data.push(line.slice(line.startsWith('data: ') ? 6 : 5));
      }
      if (data.length) out.push(data.join('\n'));
    }
    return out;
  }
}

interface StreamMessage {
  /** A Responses event's type. */
  type?: unknown;
  choices?: unknown;
  usage?: { prompt_tokens: number; completion_tokens: number } | null;
  error?: { code?: unknown; message?: unknown };
  /** The response object of a Responses `response.*` event. */
  response?: { usage?: unknown };
}

const PATHS: Record<BenchApi, string> = { completions: '/v1/completions', chat: '/v1/chat/completions', responses: '/v1/responses' };
/** The events that end a Responses stream (the body ends after them). */
const RESPONSE_ENDS = new Set(['response.completed', 'response.incomplete']);

export function sseTransport(opts: TransportOptions): Transport {
  const responses = opts.api === 'responses';
  const url = new URL(PATHS[opts.api], opts.baseUrl);
  const lib = url.protocol === 'https:' ? https : http;
  const agent = new lib.Agent({ keepAlive: true, maxSockets: Infinity });
  const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'text/event-stream' };
  if (opts.apiKey) headers.authorization = `Bearer ${opts.apiKey}`;

  const send = (request: BenchRequest, runStart: number): Promise<RequestResult> =>
    new Promise((resolve) => {
      const body = JSON.stringify({
        ...completionBody(opts.model, request, opts.api),
        stream: true,
        ...(responses ? {} : { stream_options: { include_usage: true } }),
      });
      const timer = new StreamTimer(request, runStart);
      let settled = false;
      const settle = (r: RequestResult) => {
        if (settled) return;
        settled = true;
        clearTimeout(deadline);
        resolve(r);
      };
      const req = lib.request(url, { method: 'POST', agent, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) } });
      const deadline = setTimeout(() => {
        settle(timer.fail(performance.now(), `timed out after ${opts.requestTimeoutMs} ms`));
        req.destroy();
      }, opts.requestTimeoutMs);
      req.on('error', (err) => settle(timer.fail(performance.now(), `request failed: ${err.message}`)));
      req.on('response', (res) => {
        res.setEncoding('utf8');
        if (res.statusCode !== 200) {
          let text = '';
          res.on('data', (s: string) => (text += s));
          res.on('end', () => settle(timer.fail(performance.now(), describeError(res.statusCode ?? 0, text))));
          res.on('error', (err) => settle(timer.fail(performance.now(), `response failed: ${err.message}`)));
          return;
        }
        const parser = new SseParser();
        let doneAt = -1;
        let streamError: string | null = null;
        res.on('data', (text: string) => {
          const now = performance.now();
          for (const data of parser.push(text)) {
            if (data === '[DONE]') {
              doneAt = now;
              continue;
            }
            let msg: StreamMessage;
            try {
              msg = JSON.parse(data) as StreamMessage;
            } catch {
              streamError ??= `invalid JSON in the stream: ${data.slice(0, 80)}`;
              continue;
            }
            if (msg.error) {
              streamError ??= describeError(null, data);
              continue;
            }
            if (responses && msg.type === 'error') {
              streamError ??= describeError(null, JSON.stringify({ error: msg }));
              continue;
            }
            if (responses && typeof msg.type === 'string' && RESPONSE_ENDS.has(msg.type)) {
              timer.usage = responsesUsage(msg.response?.usage);
              doneAt = now;
              continue;
            }
            if (msg.usage) timer.usage = msg.usage;
            if (chunkText(msg).length > 0) timer.textChunk(now);
          }
        });
        res.on('end', () => {
          const now = performance.now();
          if (streamError !== null) settle(timer.fail(now, streamError));
          else if (doneAt < 0) settle(timer.fail(now, `the stream ended without ${responses ? 'response.completed or response.incomplete' : '[DONE]'}`));
          else settle(timer.finish(doneAt));
        });
        res.on('error', (err) => settle(timer.fail(performance.now(), `response failed: ${err.message}`)));
        res.on('aborted', () => settle(timer.fail(performance.now(), 'the server closed the stream')));
        res.on('close', () => settle(timer.fail(performance.now(), 'the connection closed before the stream ended')));
      });
      req.end(body);
    });

  return {
    kind: 'sse',
    send,
    close: async () => agent.destroy(),
  };
}
