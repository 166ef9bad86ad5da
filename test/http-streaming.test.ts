// POST /v1/completions with `stream: true`: the Server-Sent Events byte for byte, usage chunks,
// echo/logprobs in chunks, errors before and after the stream began, and disconnects.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import request from 'supertest';
import type { FastifyInstance } from 'fastify';
import { FakeEngine, makeApp, parseSse, waitFor, type FakeEngineOptions } from './helpers/fake-engine.js';

const MODEL = 'fake-gpt2';

async function setup(t: { after: (fn: () => Promise<unknown>) => void }, options: FakeEngineOptions = {}) {
  const engine = new FakeEngine(options);
  const app = makeApp(engine);
  await app.ready();
  t.after(() => app.close());
  return { engine, app };
}

function stream(app: FastifyInstance, body: Record<string, unknown>) {
  return request(app.server)
    .post('/v1/completions')
    .send({ model: MODEL, stream: true, ...body });
}

function fingerprintOf(text: string): string {
  const m = /"system_fingerprint":"(fp_[0-9a-f]{10})"/.exec(text);
  assert.ok(m, 'chunks carry a system_fingerprint');
  return m[1]!;
}

test('SSE bytes: one data: line per delta, a final chunk per choice, the usage chunk, then [DONE]', async (t) => {
  const { app } = await setup(t);
  const res = await stream(app, { prompt: 'A', n: 2, max_tokens: 2, stream_options: { include_usage: true } }).expect(200);
  assert.equal(res.headers['content-type'], 'text/event-stream; charset=utf-8');
  assert.equal(res.headers['cache-control'], 'no-cache');
  assert.ok(res.headers['x-request-id']);
  const fp = fingerprintOf(res.text);
  const head = `{"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"fake-gpt2","system_fingerprint":"${fp}"`;
  const chunk = (text: string, index: number, finish: string | null) =>
    `data: ${head},"choices":[{"text":"${text}","index":${index},"logprobs":null,"finish_reason":${finish === null ? 'null' : `"${finish}"`}}],"usage":null}\n\n`;
  const expected =
    chunk('a', 0, null) +
    chunk('b', 1, null) +
    chunk('b', 0, null) +
    chunk('', 0, 'length') +
    chunk('c', 1, null) +
    chunk('', 1, 'length') +
    `data: ${head},"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":4,"total_tokens":5}}\n\n` +
    'data: [DONE]\n\n';
  assert.equal(res.text, expected);
});

test('SSE bytes without include_usage: chunks have no usage field and no usage chunk is sent', async (t) => {
  const { app } = await setup(t);
  const res = await stream(app, { prompt: 'A', max_tokens: 1 }).expect(200);
  const fp = fingerprintOf(res.text);
  const head = `{"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"fake-gpt2","system_fingerprint":"${fp}"`;
  assert.equal(
    res.text,
    `data: ${head},"choices":[{"text":"a","index":0,"logprobs":null,"finish_reason":null}]}\n\n` +
      `data: ${head},"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}]}\n\n` +
      'data: [DONE]\n\n',
  );
});

test('streamed echo + logprobs: the prompt chunk first, offsets continue across chunks', async (t) => {
  const { app } = await setup(t);
  const res = await stream(app, { prompt: 'Hi', max_tokens: 2, echo: true, logprobs: 1 }).expect(200);
  const events = parseSse(res.text) as Array<{ choices: Array<{ text: string; logprobs: unknown; finish_reason: string | null }> }>;
  assert.equal(events.at(-1), '[DONE]');
  const choices = events.slice(0, -1).map((e) => e.choices[0]!);
  assert.deepEqual(choices, [
    {
      text: 'Hi',
      index: 0,
      logprobs: { tokens: ['H', 'i'], token_logprobs: [null, -1.5], top_logprobs: [null, { i: -1.5 }], text_offset: [0, 1] },
      finish_reason: null,
    },
    {
      text: 'b',
      index: 0,
      logprobs: { tokens: ['b'], token_logprobs: [-0.1], top_logprobs: [{ b: -0.1 }], text_offset: [2] },
      finish_reason: null,
    },
    {
      text: 'c',
      index: 0,
      logprobs: { tokens: ['c'], token_logprobs: [-0.1], top_logprobs: [{ c: -0.1 }], text_offset: [3] },
      finish_reason: null,
    },
    { text: '', index: 0, logprobs: { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] }, finish_reason: 'length' },
  ]);
});

test('streamed stop strings: held-back text arrives in the final chunk; matched stop text never does', async (t) => {
  const { app } = await setup(t);
  const flushed = parseSse((await stream(app, { prompt: 'A', max_tokens: 3, stop: 'cx' }).expect(200)).text);
  assert.deepEqual(
    flushed.slice(0, -1).map((e) => {
      const c = (e as { choices: Array<{ text: string; finish_reason: string | null }> }).choices[0]!;
      return [c.text, c.finish_reason];
    }),
    [
      ['a', null],
      ['b', null],
      ['c', 'length'],
    ],
  );
  const stopped = parseSse((await stream(app, { prompt: 'A', max_tokens: 10, stop: ['cd'] }).expect(200)).text);
  const text = stopped
    .slice(0, -1)
    .map((e) => (e as { choices: Array<{ text: string }> }).choices[0]!.text)
    .join('');
  assert.equal(text, 'ab');
  assert.equal((stopped.at(-2) as { choices: Array<{ finish_reason: string }> }).choices[0]!.finish_reason, 'stop');
});

test('several prompts stream with prompt-major indexes', async (t) => {
  const { app } = await setup(t);
  const res = await stream(app, { prompt: ['A', 'BBB'], n: 2, max_tokens: 2, stream_options: { include_usage: true } }).expect(200);
  const events = parseSse(res.text);
  const texts = new Map<number, string>();
  const finished = new Set<number>();
  for (const e of events.slice(0, -2) as Array<{ choices: Array<{ index: number; text: string; finish_reason: string | null }> }>) {
    const c = e.choices[0]!;
    texts.set(c.index, (texts.get(c.index) ?? '') + c.text);
    if (c.finish_reason) finished.add(c.index);
  }
  assert.deepEqual(Object.fromEntries(texts), { 0: 'ab', 1: 'bc', 2: 'cd', 3: 'de' });
  assert.deepEqual([...finished].sort(), [0, 1, 2, 3]);
  assert.deepEqual((events.at(-2) as { usage: unknown }).usage, { prompt_tokens: 4, completion_tokens: 8, total_tokens: 12 });
});

test('an error before the first token is a normal JSON error with its status (no SSE)', async (t) => {
  const { engine, app } = await setup(t, { errorOn: () => ({ code: 'overloaded', message: 'queue full' }) });
  const res = await stream(app, { prompt: 'A' }).expect(429);
  assert.match(res.headers['content-type'], /^application\/json/);
  assert.equal(res.headers['retry-after'], '1');
  assert.equal(res.body.error.code, 'overloaded');
  assert.equal(engine.submitted.length, 1);
});

test('an error after streaming began is sent as an error event, then [DONE]', async (t) => {
  const { app } = await setup(t, {
    errorOn: () => ({ code: 'internal_error', message: 'kv cache corrupted (secret detail)', afterSteps: 2 }),
  });
  const res = await stream(app, { prompt: 'A', max_tokens: 10 }).expect(200);
  const fp = fingerprintOf(res.text);
  const head = `{"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"fake-gpt2","system_fingerprint":"${fp}"`;
  assert.equal(
    res.text,
    `data: ${head},"choices":[{"text":"a","index":0,"logprobs":null,"finish_reason":null}]}\n\n` +
      `data: ${head},"choices":[{"text":"b","index":0,"logprobs":null,"finish_reason":null}]}\n\n` +
      'data: {"error":{"message":"The engine failed while processing the request","type":"server_error","param":null,"code":"internal_error"}}\n\n' +
      'data: [DONE]\n\n',
  );
});

test('a client that disconnects mid-stream cancels the engine request at once', async (t) => {
  const { engine, app } = await setup(t, { tokenDelayMs: 20 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const firstChunk = new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' } },
      (res) => res.once('data', () => resolve(res)),
    );
    req.on('error', reject);
    req.end(JSON.stringify({ model: MODEL, prompt: 'A', max_tokens: 60, stream: true }));
  });
  const res = await firstChunk;
  assert.equal(res.statusCode, 200);
  const before = Date.now();
  res.destroy();
  await waitFor(() => engine.cancelled.includes('cmpl-test-0'), 1000, 'engine cancel');
  assert.ok(Date.now() - before < 200);
  await waitFor(() => engine.activeCount === 0, 1000, 'engine idle');
  assert.ok((engine.yielded.get('cmpl-test-0') ?? 0) < 20);
});

test('a disconnect while waiting for the first token (queued) cancels too', async (t) => {
  const { engine, app } = await setup(t, { firstTokenDelayMs: 5000 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' } });
  req.on('error', () => {});
  req.end(JSON.stringify({ model: MODEL, prompt: 'A', stream: true }));
  await waitFor(() => engine.activeCount === 1, 1000, 'request admitted');
  req.destroy();
  await waitFor(() => engine.cancelled.includes('cmpl-test-0'), 1000, 'engine cancel');
});

test('SSE backpressure: a client that stops reading pauses generation, and is cut off after the stall timeout', async (t) => {
  const engine = new FakeEngine({ textRepeat: 20_000, contextLength: 100_000 });
  const app = makeApp(engine, {}, { stallTimeoutMs: 1500 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  let response: http.IncomingMessage | null = null;
  t.after(async () => {
    response?.destroy();
    await app.close();
  });
  const req = http.request(
    { host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' } },
    (res) => {
      response = res;
      res.pause();
      res.on('error', () => {});
    },
  );
  req.on('error', () => {});
  req.end(JSON.stringify({ model: MODEL, prompt: 'A', max_tokens: 10_000, stream: true }));
  const pulled = () => engine.yielded.get('cmpl-test-0') ?? 0;
  let last = -1;
  let since = Date.now();
  await waitFor(
    () => {
      const now = pulled();
      if (now !== last || now === 0) {
        last = now;
        since = Date.now();
      }
      return Date.now() - since >= 200;
    },
    5000,
    'generation to pause',
  );
  assert.ok(last < 2000, `pulled ${last} of 10000 events`);
  assert.equal(engine.cancelled.length, 0);
  await waitFor(() => engine.cancelled.includes('cmpl-test-0'), 3000, 'stalled request cancelled');
  assert.ok(pulled() - last <= 1, 'nothing more was pulled before the cut-off');
  await waitFor(() => engine.activeCount === 0, 1000, 'engine idle');
});
