// POST /v1/completions with `stream: true`, on the real engine: the Server-Sent Events byte for
// byte, usage chunks, echo/logprobs in chunks, errors before and after the stream began,
// disconnects, and flow control for a client that stops reading.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import request from 'supertest';
import type { FastifyInstance } from 'fastify';
import { MODEL, greedy, gpt2Tokenizer, parseSse, serveTest, spyOn, waitFor, type EngineSetup } from './helpers/serving.js';
import type { ServerConfig } from '../src/config.js';

type T = { after: (fn: () => Promise<unknown>) => void };
type Chunk = { choices: Array<{ index: number; text: string; finish_reason: string | null; logprobs: unknown }>; usage?: unknown };

async function setup(t: T, setupOpts: EngineSetup = {}, config: Partial<ServerConfig> = {}) {
  const server = await serveTest(t, { ...setupOpts, config });
  return { ...server, spy: spyOn(server.engine) };
}

function stream(app: FastifyInstance, body: Record<string, unknown>) {
  return request(app.server)
    .post('/v1/completions')
    .send({ model: MODEL, stream: true, ...body });
}

async function listen(app: FastifyInstance): Promise<number> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  return (app.server.address() as AddressInfo).port;
}

/** A streaming POST whose response the test controls (pause, destroy). */
function rawStream(port: number, body: Record<string, unknown>, onResponse: (res: http.IncomingMessage) => void = () => {}): http.ClientRequest {
  const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' } }, onResponse);
  req.on('error', () => {});
  req.end(JSON.stringify({ model: MODEL, stream: true, ...body }));
  return req;
}

function textsByIndex(events: unknown[]): Map<number, string> {
  const texts = new Map<number, string>();
  for (const e of events) {
    if (e === '[DONE]') continue;
    for (const c of (e as Chunk).choices) texts.set(c.index, (texts.get(c.index) ?? '') + c.text);
  }
  return texts;
}

test('SSE bytes: one data: line per delta, a final chunk per choice, the usage chunk, then [DONE]', async (t) => {
  const { app } = await setup(t);
  const res = await stream(app, { prompt: 'Hello world', n: 2, max_tokens: 3, temperature: 0, stream_options: { include_usage: true } }).expect(200);
  assert.equal(res.headers['content-type'], 'text/event-stream; charset=utf-8');
  assert.equal(res.headers['cache-control'], 'no-cache');
  assert.ok(res.headers['x-request-id']);
  const events = parseSse(res.text);
  // Byte for byte: each event is `data: <JSON>\n\n` of exactly the payload, keys in OpenAI's order.
  assert.equal(res.text, events.map((e) => `data: ${e === '[DONE]' ? e : JSON.stringify(e)}\n\n`).join(''));
  const chunks = events.slice(0, -1) as Array<Record<string, unknown> & Chunk>;
  for (const c of chunks) {
    assert.deepEqual(Object.keys(c), ['id', 'object', 'created', 'model', 'system_fingerprint', 'choices', 'usage']);
    assert.equal(c.id, 'cmpl-test');
    assert.equal(c.object, 'text_completion');
    assert.equal(c.created, 1_700_000_000);
    assert.equal(c.model, MODEL);
    assert.match(String(c.system_fingerprint), /^fp_[0-9a-f]{10}$/);
  }
  const { text } = await greedy('Hello world', 3);
  assert.deepEqual(Object.fromEntries(textsByIndex(events)), { 0: text, 1: text });
  const finals = chunks.filter((c) => c.choices[0]?.finish_reason === 'length').map((c) => c.choices[0]!.index);
  assert.deepEqual(finals.sort(), [0, 1]);
  for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
  assert.deepEqual(chunks.at(-1), { ...chunks.at(-1), choices: [], usage: { prompt_tokens: 2, completion_tokens: 6, total_tokens: 8 } });
  assert.equal(events.at(-1), '[DONE]');
});

test('SSE without include_usage: chunks have no usage field and no usage chunk is sent', async (t) => {
  const { app } = await setup(t);
  const res = await stream(app, { prompt: 'A', max_tokens: 1, temperature: 0 }).expect(200);
  const events = parseSse(res.text);
  assert.equal(events.length, 3);
  for (const e of events.slice(0, -1)) assert.ok(!('usage' in (e as object)));
  assert.deepEqual((events[0] as Chunk).choices, [{ text: (await greedy('A', 1)).text, index: 0, logprobs: null, finish_reason: null }]);
  assert.deepEqual((events[1] as Chunk).choices, [{ text: '', index: 0, logprobs: null, finish_reason: 'length' }]);
});

test('streamed echo + logprobs: the prompt chunk first, offsets continue across chunks', async (t) => {
  const { app } = await setup(t);
  const tok = await gpt2Tokenizer();
  const res = await stream(app, { prompt: 'Hello world', max_tokens: 2, echo: true, logprobs: 1, temperature: 0 }).expect(200);
  const choices = (parseSse(res.text).slice(0, -1) as Chunk[]).map((e) => e.choices[0]!);
  const { ids } = await greedy('Hello world', 2);
  const lp = (i: number) => choices[i]!.logprobs as { tokens: string[]; text_offset: number[]; token_logprobs: Array<number | null> };
  assert.equal(choices[0]!.text, 'Hello world');
  assert.deepEqual(lp(0).tokens, ['Hello', ' world']);
  assert.deepEqual(lp(0).text_offset, [0, 5]);
  assert.equal(lp(0).token_logprobs[0], null);
  assert.deepEqual(lp(1).tokens, [tok.tokenText(ids[0]!)]);
  assert.deepEqual(lp(1).text_offset, [11]);
  assert.deepEqual(lp(2).text_offset, [11 + [...tok.tokenText(ids[0]!)].length]);
  assert.equal(choices[3]!.finish_reason, 'length');
});

test('streamed stop strings: held-back text never leaks the stop text', async (t) => {
  const { app } = await setup(t);
  const tok = await gpt2Tokenizer();
  const { ids } = await greedy('Hello world', 10);
  const res = await stream(app, { prompt: 'Hello world', max_tokens: 10, stop: [tok.tokenText(ids[3]!)], temperature: 0 }).expect(200);
  const events = parseSse(res.text);
  assert.equal(textsByIndex(events).get(0), tok.decode(ids.slice(0, 3)));
  assert.equal((events.at(-2) as Chunk).choices[0]!.finish_reason, 'stop');
});

test('several prompts stream with prompt-major indexes', async (t) => {
  const { app } = await setup(t);
  const res = await stream(app, { prompt: ['A', 'Hello world'], n: 2, max_tokens: 2, temperature: 0, stream_options: { include_usage: true } }).expect(200);
  const events = parseSse(res.text);
  const [a, hw] = [(await greedy('A', 2)).text, (await greedy('Hello world', 2)).text];
  assert.deepEqual(Object.fromEntries(textsByIndex(events)), { 0: a, 1: a, 2: hw, 3: hw });
  assert.deepEqual((events.at(-2) as { usage: unknown }).usage, { prompt_tokens: 3, completion_tokens: 8, total_tokens: 11 });
});

test('an error before the engine accepted the request is a normal JSON error with its status (no SSE)', async (t) => {
  const { app, engine } = await setup(t);
  const closing = engine.shutdown(); // the engine refuses new work from now on; the app does not know yet
  const res = await stream(app, { prompt: 'A' }).expect(503);
  assert.match(res.headers['content-type'], /^application\/json/);
  assert.equal(res.body.error.code, 'shutting_down');
  await closing;
});

test('the 200 and its headers go out once the engine queues the request, before any token', async (t) => {
  // One sequence at a time: the second request waits in the engine's queue behind the first.
  const { app, spy } = await setup(t, { worker: true, runner: { stepDelayMs: 20 }, engine: { maxNumSeqs: 1 } });
  const port = await listen(app);
  // 60 steps of at least 20 ms: the second request's tokens cannot come within 100 ms of its
  // headers unless the first had all but finished before the second was even queued.
  const first = rawStream(port, { prompt: 'a', max_tokens: 60 });
  t.after(async () => first.destroy());
  await waitFor(() => spy.submitted.length === 1, 30_000, 'the first request');
  let headersAt = 0;
  const second = new Promise<http.IncomingMessage>((resolve) =>
    rawStream(port, { prompt: 'b', max_tokens: 3 }, (res) => {
      headersAt = Date.now();
      resolve(res);
    }),
  );
  const res = await second;
  assert.equal(res.statusCode, 200);
  const waiting = spy.delivered.get('cmpl-test1-0')!;
  assert.deepEqual(waiting.map((e) => e.type), ['accepted'], 'headers came with acceptance, while the request still waits');
  const body = await new Promise<string>((resolve) => {
    let text = '';
    res.on('data', (d) => (text += d));
    res.on('end', () => resolve(text));
  });
  assert.ok(Date.now() - headersAt > 100, 'the tokens came later, after the first request finished');
  assert.equal(parseSse(body).at(-1), '[DONE]');
});

test('an error after streaming began is sent as an error event, then [DONE]', async (t) => {
  const { app } = await setup(t, { runner: { failRuns: [2] } });
  const res = await stream(app, { prompt: 'Hello world', max_tokens: 10, temperature: 0 }).expect(200);
  const events = parseSse(res.text);
  const { ids } = await greedy('Hello world', 2);
  const tok = await gpt2Tokenizer();
  assert.deepEqual(
    events.slice(0, 2).map((e) => (e as Chunk).choices[0]!.text),
    ids.map((id) => tok.decode([id])),
  );
  assert.deepEqual(events.slice(2), [
    { error: { message: 'The engine failed while processing the request', type: 'server_error', param: null, code: 'internal_error' } },
    '[DONE]',
  ]);
  assert.doesNotMatch(res.text, /injected|scripted|at .*\.ts/, 'the engine internals stay in the log');
});

test('a client that disconnects mid-stream cancels the engine request at once', async (t) => {
  const { app, spy, engine } = await setup(t, { runner: { stepDelayMs: 10 } });
  const port = await listen(app);
  const res = await new Promise<http.IncomingMessage>((resolve) => rawStream(port, { prompt: 'A', max_tokens: 500 }, (r) => r.once('data', () => resolve(r))));
  assert.equal(res.statusCode, 200);
  res.destroy();
  await waitFor(() => spy.cancelled.includes('cmpl-test-0'), 30_000, 'engine cancel');
  await waitFor(() => engine.stats().running === 0, 30_000, 'engine idle');
  assert.ok(spy.delivered.get('cmpl-test-0')!.length < 100);
  assert.equal(engine.stats().kvBlocksUsed, 0);
});

test('a disconnect while the request waits in the engine queue cancels it too', async (t) => {
  const { app, spy, engine } = await setup(t, { runner: { stepDelayMs: 20 }, engine: { maxNumSeqs: 1 } });
  const port = await listen(app);
  rawStream(port, { prompt: 'first', max_tokens: 100 });
  const req = rawStream(port, { prompt: 'A' });
  await waitFor(() => spy.delivered.get('cmpl-test1-0')?.some((e) => e.type === 'accepted') ?? false, 30_000, 'second request queued');
  assert.equal(engine.stats().waiting, 1);
  req.destroy();
  await waitFor(() => spy.cancelled.includes('cmpl-test1-0'), 30_000, 'engine cancel');
  await waitFor(() => engine.stats().waiting === 0, 30_000, 'queue empty');
});

// One 900-token prompt echoed with 20 logprobs to each of 16 choices: ~10 MB of SSE before the
// first generated token, more than the loopback socket buffers of a client that reads nothing.
const FLOOD = { prompt: Array(900).fill(11), n: 16, echo: true, logprobs: 20, max_tokens: 100, temperature: 0 };

test('SSE flow control: a client that stops reading pauses its sequences in the engine; after the stall timeout they are cancelled', async (t) => {
  // The stall clock starts when the socket fills, before the engine reports every sequence paused
  // (which takes longer on a loaded machine): the timeout leaves seconds between the two.
  const { app, spy, engine } = await setup(t, { worker: true }, { stallTimeoutMs: 5000 });
  const port = await listen(app);
  let response: http.IncomingMessage | null = null;
  t.after(async () => response?.destroy());
  rawStream(port, FLOOD, (res) => {
    response = res;
    res.pause();
    res.on('error', () => {});
  });
  await waitFor(() => engine.stats().paused === 16, 15_000, 'every sequence paused in the engine');
  const delivered = () => spy.delivered.get('cmpl-test-0')!.length;
  const atPause = delivered();
  const stepsPaused = engine.stats().steps;
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(engine.stats().steps, stepsPaused, 'no step runs for a paused stream');
  assert.ok(delivered() - atPause <= 2 * 16, `output after the pause is bounded by a step or two (${delivered() - atPause} events)`);
  assert.ok(engine.stats().generatedTokensTotal < 16 * 100, 'paused long before the end');
  assert.equal(spy.cancelled.length, 0, 'a pause shorter than the stall timeout cancels nothing');
  await waitFor(() => spy.cancelled.includes('cmpl-test-0'), 10_000, 'stalled request cancelled');
  await waitFor(() => engine.stats().running + engine.stats().waiting === 0, 30_000, 'engine idle');
  assert.equal(engine.stats().kvBlocksUsed, 0);
});

test('SSE flow control: a slow reader that resumes before the stall timeout gets everything, and others keep streaming meanwhile', async (t) => {
  const { app, spy, engine } = await setup(t, { worker: true }, { stallTimeoutMs: 20_000 });
  const port = await listen(app);
  let resume: () => void = () => {};
  const body = new Promise<string>((resolve) =>
    rawStream(port, FLOOD, (res) => {
      res.pause();
      resume = () => res.resume();
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve(text));
    }),
  );
  await waitFor(() => engine.stats().paused === 16, 15_000, 'the stream to pause');
  // Another client is served while the slow one is paused.
  const other = await stream(app, { prompt: 'other', max_tokens: 5, temperature: 0 }).expect(200);
  assert.equal(textsByIndex(parseSse(other.text)).get(0), (await greedy('other', 5)).text);
  resume();
  const events = parseSse(await body);
  assert.equal(events.at(-1), '[DONE]');
  const texts = textsByIndex(events);
  const tok = await gpt2Tokenizer();
  const want = tok.decode(FLOOD.prompt) + (await greedy(FLOOD.prompt, 100)).text;
  for (let i = 0; i < 16; i++) assert.equal(texts.get(i), want, `choice ${i} is complete and exact`);
  assert.ok(spy.resumed.includes('cmpl-test-0'));
  assert.equal(spy.cancelled.length, 0);
  assert.equal(engine.stats().kvBlocksUsed, 0);
});

test('serializeChunk is JSON.stringify, with large shared logprobs serialized once and spliced in', async () => {
  const { serializeChunk } = await import('../src/server/openai/responses.js');
  const big = { tokens: Array.from({ length: 100 }, (_, i) => `t${i}`), token_logprobs: Array(100).fill(-1), top_logprobs: Array(100).fill(null), text_offset: Array.from({ length: 100 }, (_, i) => i) };
  let reads = 0;
  const counted = new Proxy(big, { get: (o, k) => (k === 'tokens' && reads++, Reflect.get(o, k)) });
  const chunk = (index: number, text: string) => ({ id: 'c', choices: [{ text, index, logprobs: counted, finish_reason: null }] });
  const tricky = 'gpt2-serve:serialized-logprobs","logprobs":"gpt2-serve:serialized-logprobs';
  for (const [i, text] of [[0, 'a'], [1, tricky], [2, '$&$1']] as const) {
    assert.equal(serializeChunk(chunk(i, text)), JSON.stringify(chunk(i, text)));
  }
  const before = reads;
  for (let i = 0; i < 10; i++) serializeChunk(chunk(i, 'x'));
  assert.ok(reads - before <= 10, 'the big object is not walked again (only its size is checked)');
  const small = { id: 'c', choices: [{ text: 'a', index: 0, logprobs: { tokens: ['a'], token_logprobs: [-1], top_logprobs: [{ a: -1 }], text_offset: [0] } }] };
  assert.equal(serializeChunk(small), JSON.stringify(small));
});
