// Operational endpoints and cross-cutting behaviour: /v1/models, /health, /metrics, /tokenize,
// /detokenize, 404/413/415, the API key, x-request-id, request logging, graceful drain.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { pino } from 'pino';
import request from 'supertest';
import type { ServerConfig } from '../src/config.js';
import { FakeEngine, makeApp, parseSse, waitFor, type FakeEngineOptions } from './helpers/fake-engine.js';
import type { AppOptions } from '../src/server/app.js';

const MODEL = 'fake-gpt2';

async function setup(
  t: { after: (fn: () => Promise<unknown>) => void },
  options: FakeEngineOptions = {},
  config: Partial<ServerConfig> = {},
  opts: AppOptions = {},
) {
  const engine = new FakeEngine(options);
  const app = makeApp(engine, config, opts);
  await app.ready();
  t.after(() => app.close());
  return { engine, app };
}

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

test('GET /v1/models lists the served model in OpenAI list shape; /v1/models/:id retrieves it', async (t) => {
  const { app } = await setup(t);
  const res = await request(app.server).get('/v1/models').expect(200);
  assert.deepEqual(res.body, {
    object: 'list',
    data: [{ id: MODEL, object: 'model', created: 1_700_000_000, owned_by: 'gpt2-serve', root: MODEL, max_model_len: 64, dtype: 'float32' }],
  });
  const one = await request(app.server).get(`/v1/models/${MODEL}`).expect(200);
  assert.equal(one.body.id, MODEL);
  const missing = await request(app.server).get('/v1/models/gpt-4').expect(404);
  assert.equal(missing.body.error.code, 'model_not_found');
});

test('--served-model-name renames the model clients must send', async (t) => {
  const { app } = await setup(t, {}, { servedModelName: 'my-gpt' });
  const res = await request(app.server).get('/v1/models').expect(200);
  assert.equal(res.body.data[0].id, 'my-gpt');
  await request(app.server).post('/v1/completions').send({ model: 'my-gpt', prompt: 'A', max_tokens: 1 }).expect(200);
  const wrong = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A' }).expect(404);
  assert.equal(wrong.body.error.code, 'model_not_found');
});

test('/health: 503 while the model loads, 200 once the engine answers', async (t) => {
  const loading = deferred<FakeEngine>();
  const app = makeApp(loading.promise);
  await app.ready();
  t.after(() => app.close());
  const early = await request(app.server).get('/health').expect(503);
  assert.deepEqual(early.body, {
    error: { message: 'The model is still loading; retry shortly', type: 'server_error', param: null, code: 'model_loading' },
  });
  const completion = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A' }).expect(503);
  assert.equal(completion.body.error.code, 'model_loading');
  await request(app.server).get('/v1/models').expect(503);
  loading.resolve(new FakeEngine());
  await loading.promise;
  const ok = await request(app.server).get('/health').expect(200);
  assert.deepEqual(ok.body, { status: 'ok' });
});

test('/health: 503 when the model failed to load, or the engine does not answer in time', async (t) => {
  const failed = makeApp(Promise.reject(new Error('bad model')));
  await failed.ready();
  t.after(() => failed.close());
  await new Promise((r) => setImmediate(r));
  const res = await request(failed.server).get('/health').expect(503);
  assert.equal(res.body.error.code, 'engine_unavailable');

  const { app: slow } = await setup(t, { statsDelayMs: 300 }, {}, { healthTimeoutMs: 50 });
  const slowRes = await request(slow.server).get('/health').expect(503);
  assert.equal(slowRes.body.error.code, 'engine_unavailable');

  const { app: broken } = await setup(t, { statsFail: true });
  await request(broken.server).get('/health').expect(503);
});

test('/metrics: Prometheus exposition with requests by status, latency histograms, engine gauges and token counters', async (t) => {
  const { app } = await setup(t);
  await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'Hi', max_tokens: 4 }).expect(200);
  await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'Hi', temperature: 9 }).expect(400);
  const res = await request(app.server).get('/metrics').expect(200);
  assert.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  const text = res.text;
  const expectLine = (re: RegExp) => assert.match(text, re);
  expectLine(/^gpt2_http_requests_total\{method="POST",route="\/v1\/completions",status="200"\} 1$/m);
  expectLine(/^gpt2_http_requests_total\{method="POST",route="\/v1\/completions",status="400"\} 1$/m);
  expectLine(/^gpt2_time_to_first_token_seconds_count 1$/m);
  expectLine(/^gpt2_inter_token_latency_seconds_count 3$/m);
  expectLine(/^gpt2_e2e_request_latency_seconds_count\{status="200"\} 1$/m);
  expectLine(/^# TYPE gpt2_num_requests_waiting gauge$/m);
  expectLine(/^gpt2_num_requests_waiting 0$/m);
  expectLine(/^gpt2_num_sequences_running 0$/m);
  expectLine(/^gpt2_kv_cache_usage_ratio 0$/m);
  expectLine(/^gpt2_prompt_tokens_total 2$/m);
  expectLine(/^gpt2_generation_tokens_total 4$/m);
  // Counters follow the engine's totals across scrapes without double counting.
  await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', max_tokens: 2 }).expect(200);
  const again = await request(app.server).get('/metrics').expect(200);
  assert.match(again.text, /^gpt2_prompt_tokens_total 3$/m);
  assert.match(again.text, /^gpt2_generation_tokens_total 6$/m);
  assert.match(again.text, /^gpt2_http_requests_total\{method="GET",route="\/metrics",status="200"\} 1$/m);
});

test('/metrics gauges show running sequences while a request is in flight; registries are per app', async (t) => {
  const { engine, app } = await setup(t, { tokenDelayMs: 20 });
  const other = await setup(t);
  const pending = request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', n: 3, max_tokens: 20 }).then((r) => r);
  await waitFor(() => engine.activeCount === 1, 1000, 'request running');
  const res = await request(app.server).get('/metrics').expect(200);
  assert.match(res.text, /^gpt2_num_sequences_running 3$/m);
  assert.match(res.text, /^gpt2_kv_cache_usage_ratio 0\.03$/m);
  await pending;
  const otherRes = await request(other.app.server).get('/metrics').expect(200);
  assert.doesNotMatch(otherRes.text, /route="\/v1\/completions"/);
});

test('/tokenize and /detokenize', async (t) => {
  const { app } = await setup(t);
  const tok = await request(app.server).post('/tokenize').send({ prompt: 'Hi!' }).expect(200);
  assert.deepEqual(tok.body, { tokens: [72, 105, 33], count: 3, max_model_len: 64 });
  await request(app.server).post('/tokenize').send({ model: MODEL, prompt: 'x' }).expect(200);
  const wrongModel = await request(app.server).post('/tokenize').send({ model: 'nope', prompt: 'x' }).expect(404);
  assert.equal(wrongModel.body.error.code, 'model_not_found');
  const missing = await request(app.server).post('/tokenize').send({}).expect(400);
  assert.deepEqual(missing.body.error, {
    message: '`prompt`: is required',
    type: 'invalid_request_error',
    param: 'prompt',
    code: 'missing_required_parameter',
  });
  const detok = await request(app.server).post('/detokenize').send({ tokens: [72, 105, 33] }).expect(200);
  assert.deepEqual(detok.body, { prompt: 'Hi!' });
  const range = await request(app.server).post('/detokenize').send({ tokens: [72, 70000] }).expect(400);
  assert.equal(range.body.error.message, '`tokens[1]`: token id 70000 is out of range (vocabulary size 65536)');
  const type = await request(app.server).post('/detokenize').send({ tokens: 'abc' }).expect(400);
  assert.equal(type.body.error.param, 'tokens');
});

test('unknown routes are 404 in the OpenAI error shape', async (t) => {
  const { app } = await setup(t);
  const res = await request(app.server).get('/nope').expect(404);
  assert.deepEqual(res.body, { error: { message: 'Not found: GET /nope', type: 'invalid_request_error', param: null, code: 'not_found' } });
  const v1 = await request(app.server).post('/v1/chat/completions').send({}).expect(404);
  assert.equal(v1.body.error.code, 'not_found');
  const ws = await request(app.server).get('/v1/completions/ws').expect(426);
  assert.equal(ws.body.error.code, 'upgrade_required');
});

test('a body over --max-body-bytes is 413', async (t) => {
  const { engine, app } = await setup(t, {}, { maxBodyBytes: 1024 });
  const res = await request(app.server)
    .post('/v1/completions')
    .send({ model: MODEL, prompt: 'x'.repeat(2000) })
    .expect(413);
  assert.deepEqual(res.body, {
    error: { message: 'Request body is too large', type: 'invalid_request_error', param: null, code: 'request_too_large' },
  });
  assert.equal(engine.submitted.length, 0);
});

test('API key: Bearer required on /v1/*, /tokenize, /detokenize; /health and /metrics stay open', async (t) => {
  const { engine, app } = await setup(t, {}, { apiKey: 'sk-test-123' });
  const none = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A' }).expect(401);
  assert.equal(none.headers['www-authenticate'], 'Bearer');
  assert.equal(none.body.error.code, 'invalid_api_key');
  assert.equal(none.body.error.type, 'invalid_request_error');
  const wrong = await request(app.server)
    .post('/v1/completions')
    .set('authorization', 'Bearer sk-test-124')
    .send({ model: MODEL, prompt: 'A' })
    .expect(401);
  assert.equal(wrong.body.error.message, 'Incorrect API key provided');
  await request(app.server).post('/v1/completions').set('authorization', 'Bearer sk-test-12').send({ model: MODEL, prompt: 'A' }).expect(401);
  await request(app.server).post('/v1/completions').set('authorization', 'sk-test-123').send({ model: MODEL, prompt: 'A' }).expect(401);
  assert.equal(engine.submitted.length, 0);
  await request(app.server)
    .post('/v1/completions')
    .set('authorization', 'Bearer sk-test-123')
    .send({ model: MODEL, prompt: 'A', max_tokens: 1 })
    .expect(200);
  await request(app.server).get('/v1/models').set('authorization', 'bearer sk-test-123').expect(200);
  await request(app.server).get('/v1/models').expect(401);
  await request(app.server).get('/v1/anything').expect(401);
  await request(app.server).post('/tokenize').send({ prompt: 'x' }).expect(401);
  await request(app.server).post('/detokenize').send({ tokens: [1] }).expect(401);
  await request(app.server).post('/tokenize').set('authorization', 'Bearer sk-test-123').send({ prompt: 'x' }).expect(200);
  await request(app.server).get('/health').expect(200);
  await request(app.server).get('/metrics').expect(200);
});

test('x-request-id is honoured and echoed (also on errors and streams), or generated', async (t) => {
  const { app } = await setup(t);
  const given = await request(app.server).get('/health').set('x-request-id', 'req-abc.123').expect(200);
  assert.equal(given.headers['x-request-id'], 'req-abc.123');
  const generated = await request(app.server).get('/health').expect(200);
  assert.match(generated.headers['x-request-id'], /^[0-9a-f-]{36}$/);
  const unsafe = await request(app.server).get('/health').set('x-request-id', 'bad id\twith spaces').expect(200);
  assert.match(unsafe.headers['x-request-id'], /^[0-9a-f-]{36}$/);
  const err = await request(app.server).get('/nope').set('x-request-id', 'r404').expect(404);
  assert.equal(err.headers['x-request-id'], 'r404');
  const sse = await request(app.server)
    .post('/v1/completions')
    .set('x-request-id', 'r-sse')
    .send({ model: MODEL, prompt: 'A', max_tokens: 1, stream: true })
    .expect(200);
  assert.equal(sse.headers['x-request-id'], 'r-sse');
});

function memoryLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(JSON.parse(line));
      cb();
    },
  });
  return { lines, logger: pino({ level: 'info' }, sink) };
}

test('logging: one info line per finished request with id, status, tokens, TTFT, duration; never the prompt', async (t) => {
  const { lines, logger } = memoryLogger();
  const { app } = await setup(t, { errorOn: (r) => (r.promptTokens.length > 20 ? { code: 'internal_error', message: 'boom' } : undefined) }, {}, { logger });
  const secret = 'TOP-SECRET-PROMPT';
  await request(app.server).post('/v1/completions').set('x-request-id', 'log-1').send({ model: MODEL, prompt: secret, max_tokens: 3 }).expect(200);
  await request(app.server)
    .post('/v1/completions')
    .set('x-request-id', 'log-2')
    .send({ model: MODEL, prompt: secret, max_tokens: 2, stream: true })
    .expect(200);
  await request(app.server).post('/v1/completions').set('x-request-id', 'log-3').send({ model: MODEL, prompt: secret, temperature: 7 }).expect(400);
  await request(app.server)
    .post('/v1/completions')
    .set('x-request-id', 'log-4')
    .send({ model: MODEL, prompt: `${secret}-${secret}`, max_tokens: 1 })
    .expect(500);
  const finished = lines.filter((l) => l.msg === 'request finished');
  assert.deepEqual(
    finished.map((l) => [l.reqId, l.status]),
    [
      ['log-1', 200],
      ['log-2', 200],
      ['log-3', 400],
      ['log-4', 500],
    ],
  );
  const first = finished[0]!;
  assert.equal(first.level, 30);
  assert.equal(first.promptTokens, secret.length);
  assert.equal(first.completionTokens, 3);
  assert.equal(typeof first.ttftMs, 'number');
  assert.equal(typeof first.durationMs, 'number');
  assert.equal(finished[1]!.completionTokens, 2);
  assert.equal(finished[3]!.error, 'internal_error');
  const all = JSON.stringify(lines);
  assert.ok(!all.includes(secret), 'prompt text never logged');
});

test('stack traces never reach a client, even for unexpected exceptions', async (t) => {
  const { lines, logger } = memoryLogger();
  const { app } = await setup(t, { throwOnSubmit: true }, {}, { logger });
  const res = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A' }).expect(500);
  assert.deepEqual(Object.keys(res.body.error), ['message', 'type', 'param', 'code']);
  assert.doesNotMatch(res.text, /secret internal detail|\.ts:\d+|\n\s+at /);
  // ... but the server log has the details.
  assert.ok(lines.some((l) => l.level === 50 && JSON.stringify(l).includes('secret internal detail')));
});

test('drain: /health and new completions get 503 at once, in-flight streams finish, engine shuts down, app closes', async (t) => {
  const { engine, app } = await setup(t, { tokenDelayMs: 10 });
  const inflight = request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', max_tokens: 20, stream: true }).then((r) => r);
  await waitFor(() => (engine.yielded.get('cmpl-test-0') ?? 0) > 2, 2000, 'stream started');
  const draining = app.drain({ timeoutMs: 5000 });
  const health = await app.inject({ method: 'GET', url: '/health' });
  assert.equal(health.statusCode, 503);
  assert.equal(health.json().error.code, 'shutting_down');
  const fresh = await app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'A' } });
  assert.equal(fresh.statusCode, 503);
  assert.equal(fresh.json().error.code, 'shutting_down');
  const res = await inflight;
  const events = parseSse(res.text);
  assert.equal(events.at(-1), '[DONE]');
  const text = events
    .slice(0, -1)
    .map((e) => (e as { choices: Array<{ text: string }> }).choices[0]!.text)
    .join('');
  assert.equal(text, 'abcdefghijklmnopqrst');
  await draining;
  assert.deepEqual(engine.shutdownCalls, [{ drainMs: 5000 }]);
  assert.equal(app.server.listening, false);
});

test('drain timeout: what is still running is cut off with an error event, then [DONE]', async (t) => {
  const { engine, app } = await setup(t, { tokenDelayMs: 20 });
  const inflight = request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', max_tokens: 60, stream: true }).then((r) => r);
  await waitFor(() => (engine.yielded.get('cmpl-test-0') ?? 0) > 2, 2000, 'stream started');
  const started = Date.now();
  await app.drain({ timeoutMs: 100 });
  assert.ok(Date.now() - started < 2000);
  const res = await inflight;
  const events = parseSse(res.text);
  assert.equal(events.at(-1), '[DONE]');
  const err = events.at(-2) as { error: { code: string } };
  assert.ok(['cancelled', 'shutting_down'].includes(err.error.code), JSON.stringify(err));
  assert.ok(engine.cancelled.includes('cmpl-test-0'));
});
