// Operational endpoints and cross-cutting behaviour on the real engine: /v1/models, /health,
// /ready, /metrics, /tokenize, /detokenize, 404/413/415, the API key, CORS, x-request-id, request
// logging, graceful drain.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import request from 'supertest';
import { loadConfig, type ServerConfig } from '../src/config.js';
import type { EngineClient } from '../src/engine/types.js';
import type { AppOptions } from '../src/server/app.js';
import { MODEL, greedy, makeApp, memoryLogger, parseSse, serveTest, spyOn, startTestEngine, waitFor, type EngineSetup } from './helpers/serving.js';

type T = { after: (fn: () => Promise<unknown>) => void };

async function setup(t: T, setupOpts: EngineSetup = {}, config: Partial<ServerConfig> = {}, app: AppOptions = {}) {
  const server = await serveTest(t, { ...setupOpts, config, app });
  return { ...server, spy: spyOn(server.engine) };
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
    data: [{ id: MODEL, object: 'model', created: 1_700_000_000, owned_by: 'gpt2-serve', root: MODEL, max_model_len: 1024, dtype: 'float32', chat_template: 'built-in' }],
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

test('/health: 503 while the model loads, 200 once the engine is up', async (t) => {
  const loading = deferred<EngineClient>();
  const app = makeApp(loading.promise);
  await app.ready();
  t.after(() => app.close());
  const early = await request(app.server).get('/health').expect(503);
  assert.deepEqual(early.body, {
    error: { message: 'The model is still loading; retry shortly', type: 'server_error', param: null, code: 'model_loading' },
  });
  await request(app.server).get('/ready').expect(503);
  const completion = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A' }).expect(503);
  assert.equal(completion.body.error.code, 'model_loading');
  await request(app.server).get('/v1/models').expect(503);
  const engine = await startTestEngine();
  t.after(() => engine.shutdown());
  loading.resolve(engine);
  await loading.promise;
  const ok = await request(app.server).get('/health').expect(200);
  assert.deepEqual(ok.body, { status: 'ok' });
  assert.deepEqual((await request(app.server).get('/ready').expect(200)).body, { status: 'ready' });
});

test('/health: 503 when the model failed to load', async (t) => {
  const failed = makeApp(Promise.reject(new Error('bad model')));
  await failed.ready();
  t.after(() => failed.close());
  await new Promise((r) => setImmediate(r));
  const res = await request(failed.server).get('/health').expect(503);
  assert.equal(res.body.error.code, 'engine_unavailable');
});

test('/health answers from the heartbeat in milliseconds while the engine is busy with long steps', async (t) => {
  // Every step blocks the engine thread for 1.5 s; /health must not wait for one. (Steps this long
  // leave room for a loaded machine's scheduling delays below the bound.)
  const { app } = await setup(t, { worker: true, runner: { stepDelayMs: 1500 } });
  const pending = request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', max_tokens: 3 }).then((r) => r);
  await new Promise((r) => setTimeout(r, 300));
  const times: number[] = [];
  for (let i = 0; i < 10; i++) {
    const started = performance.now();
    await request(app.server).get('/health').expect(200);
    times.push(performance.now() - started);
  }
  assert.ok(Math.max(...times) < 750, `slowest /health ${Math.max(...times).toFixed(1)} ms while steps take 1500 ms`);
  assert.equal((await pending).status, 200);
});

test('/ready: 503 at_capacity while --max-concurrent-requests are in flight; /health stays 200 (a busy pod is alive)', async (t) => {
  const { app, spy } = await setup(t, { worker: true, runner: { stepDelayMs: 5 } }, { maxConcurrentRequests: 1 });
  const pending = request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', max_tokens: 60 }).then((r) => r);
  await waitFor(() => spy.submitted.length === 1, 30_000, 'request in flight');
  const ready = await request(app.server).get('/ready').expect(503);
  assert.equal(ready.body.error.code, 'at_capacity');
  await request(app.server).get('/health').expect(200);
  await pending;
  await request(app.server).get('/ready').expect(200);
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
  expectLine(/^gpt2_num_sequences_paused 0$/m);
  expectLine(/^gpt2_num_requests_inflight 0$/m);
  expectLine(/^gpt2_kv_cache_usage_ratio 0$/m);
  expectLine(/^gpt2_kv_cache_blocks_used 0$/m);
  expectLine(/^gpt2_prompt_tokens_total 1$/m);
  expectLine(/^gpt2_generation_tokens_total 4$/m);
  expectLine(/^gpt2_engine_steps_total 4$/m);
  expectLine(/^gpt2_engine_step_seconds_total \d/m);
  // Counters follow the engine's totals across scrapes without double counting.
  await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', max_tokens: 2 }).expect(200);
  const again = await request(app.server).get('/metrics').expect(200);
  assert.match(again.text, /^gpt2_prompt_tokens_total 2$/m);
  assert.match(again.text, /^gpt2_generation_tokens_total 6$/m);
  assert.match(again.text, /^gpt2_http_requests_total\{method="GET",route="\/metrics",status="200"\} 1$/m);
});

test('/metrics gauges show running sequences and requests in flight; registries are per app', async (t) => {
  const { app, engine } = await setup(t, { worker: true, runner: { stepDelayMs: 5 } });
  const other = await setup(t);
  const pending = request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', n: 3, max_tokens: 200 }).then((r) => r);
  await waitFor(() => engine.stats().running === 3, 30_000, 'request running');
  const res = await request(app.server).get('/metrics').expect(200);
  assert.match(res.text, /^gpt2_num_sequences_running 3$/m);
  assert.match(res.text, /^gpt2_num_requests_inflight 1$/m);
  assert.match(res.text, /^gpt2_kv_cache_blocks_used [1-9]/m);
  await pending;
  const otherRes = await request(other.app.server).get('/metrics').expect(200);
  assert.doesNotMatch(otherRes.text, /route="\/v1\/completions"/);
});

test('/tokenize and /detokenize', async (t) => {
  const { app } = await setup(t);
  const tok = await request(app.server).post('/tokenize').send({ prompt: 'Hello world<|endoftext|>' }).expect(200);
  assert.deepEqual(tok.body, { tokens: [15496, 995, 50256], count: 3, max_model_len: 1024 });
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
  const detok = await request(app.server).post('/detokenize').send({ tokens: [15496, 995] }).expect(200);
  assert.deepEqual(detok.body, { prompt: 'Hello world' });
  const range = await request(app.server).post('/detokenize').send({ tokens: [72, 70000] }).expect(400);
  assert.equal(range.body.error.message, '`tokens[1]`: token id 70000 is out of range (vocabulary size 50257)');
  const type = await request(app.server).post('/detokenize').send({ tokens: 'abc' }).expect(400);
  assert.equal(type.body.error.param, 'tokens');
});

test('unknown routes are 404 in the OpenAI error shape', async (t) => {
  const { app } = await setup(t);
  const res = await request(app.server).get('/nope').expect(404);
  assert.deepEqual(res.body, { error: { message: 'Not found: GET /nope', type: 'invalid_request_error', param: null, code: 'not_found' } });
  const v1 = await request(app.server).post('/v1/embeddings').send({}).expect(404);
  assert.equal(v1.body.error.code, 'not_found');
  const ws = await request(app.server).get('/v1/completions/ws').expect(426);
  assert.equal(ws.body.error.code, 'upgrade_required');
});

test('a body over --max-body-bytes is 413', async (t) => {
  const { spy: engine, app } = await setup(t, {}, { maxBodyBytes: 1024 });
  const res = await request(app.server)
    .post('/v1/completions')
    .send({ model: MODEL, prompt: 'x'.repeat(2000) })
    .expect(413);
  assert.deepEqual(res.body, {
    error: { message: 'Request body is too large', type: 'invalid_request_error', param: null, code: 'request_too_large' },
  });
  assert.equal(engine.submitted.length, 0);
});

test('API key: Bearer required on /v1/*, /tokenize, /detokenize; /health, /ready and /metrics stay open', async (t) => {
  const { spy: engine, app } = await setup(t, {}, { apiKeys: ['sk-test-123'] });
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
  await request(app.server).get('/ready').expect(200);
  await request(app.server).get('/metrics').expect(200);
});

test('API keys are tenants: --api-key repeated or GPT2_API_KEY comma-separated; each key works, and no prefix-cache hit crosses tenants', async (t) => {
  assert.deepEqual(loadConfig(['--api-key', 'sk-a', '--api-key', 'sk-b'], {}).apiKeys, ['sk-a', 'sk-b']);
  assert.deepEqual(loadConfig([], { GPT2_API_KEY: 'sk-a, sk-b' }).apiKeys, ['sk-a', 'sk-b']);
  assert.deepEqual(loadConfig([], {}).apiKeys, []);
  const { app, spy } = await setup(t, {}, { apiKeys: ['sk-a', 'sk-b'], enablePromptTokensDetails: true });
  const prompt = Array.from({ length: 40 }, (_, i) => 3000 + i);
  const as = async (key: string) =>
    (await request(app.server).post('/v1/completions').set('authorization', `Bearer ${key}`).send({ model: MODEL, prompt, max_tokens: 3, temperature: 0 }).expect(200)).body;
  const cached = (b: { usage: { prompt_tokens_details?: { cached_tokens: number } } }) => b.usage.prompt_tokens_details?.cached_tokens ?? 0;
  const a1 = await as('sk-a');
  assert.equal(cached(await as('sk-a')), 32, 'a tenant hits its own cache');
  const b1 = await as('sk-b');
  assert.equal(cached(b1), 0, 'the other tenant does not');
  assert.equal(cached(await as('sk-b')), 32);
  assert.deepEqual(b1.choices, a1.choices, 'the same output either way');
  await request(app.server).post('/v1/completions').set('authorization', 'Bearer sk-c').send({ model: MODEL, prompt: 'A' }).expect(401);
  assert.equal(spy.submitted.length, 4);
});

test('CORS is off by default; --allowed-origins answers preflights and tags responses for browsers', async (t) => {
  const { app: closed } = await setup(t);
  const none = await request(closed.server).options('/v1/completions').set('origin', 'https://app.example').set('access-control-request-method', 'POST');
  assert.equal(none.headers['access-control-allow-origin'], undefined);
  const { app } = await setup(t, {}, { allowedOrigins: ['https://app.example'], allowedHeaders: ['content-type', 'authorization'] });
  const preflight = await request(app.server)
    .options('/v1/completions')
    .set('origin', 'https://app.example')
    .set('access-control-request-method', 'POST')
    .set('access-control-request-headers', 'content-type')
    .expect(204);
  assert.equal(preflight.headers['access-control-allow-origin'], 'https://app.example');
  assert.match(preflight.headers['access-control-allow-methods'], /POST/);
  assert.equal(preflight.headers['access-control-allow-headers'], 'content-type, authorization');
  const res = await request(app.server).post('/v1/completions').set('origin', 'https://app.example').send({ model: MODEL, prompt: 'A', max_tokens: 1 }).expect(200);
  assert.equal(res.headers['access-control-allow-origin'], 'https://app.example');
  assert.match(res.headers['access-control-expose-headers'], /x-request-id/);
  const foreign = await request(app.server).post('/v1/completions').set('origin', 'https://evil.example').send({ model: MODEL, prompt: 'A', max_tokens: 1 });
  assert.equal(foreign.headers['access-control-allow-origin'], undefined);
  const { app: any } = await setup(t, {}, { allowedOrigins: ['*'] });
  const star = await request(any.server).get('/v1/models').set('origin', 'https://whoever.example').expect(200);
  assert.equal(star.headers['access-control-allow-origin'], '*');
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

test('logging: one info line per finished request with id, status, tokens, TTFT, duration; never the prompt', async (t) => {
  const { lines, logger } = memoryLogger();
  // Runs 0-2 and 3-4 serve the first two requests; the fourth request's only step is run 5, and fails.
  const { app } = await setup(t, { runner: { failRuns: [5] } }, {}, { logger });
  const secret = 'TOP-SECRET-PROMPT';
  await request(app.server).post('/v1/completions').set('x-request-id', 'log-1').send({ model: MODEL, prompt: secret, max_tokens: 3 }).expect(200);
  await request(app.server)
    .post('/v1/completions')
    .set('x-request-id', 'log-2')
    .send({ model: MODEL, prompt: secret, max_tokens: 2, stream: true })
    .expect(200);
  await request(app.server).post('/v1/completions').set('x-request-id', 'log-3').send({ model: MODEL, prompt: secret, temperature: 7 }).expect(400);
  await request(app.server).post('/v1/completions').set('x-request-id', 'log-4').send({ model: MODEL, prompt: secret, max_tokens: 1 }).expect(500);
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
  assert.equal(first.promptTokens, 8); // 'TOP-SECRET-PROMPT' in GPT-2 tokens
  assert.equal(first.completionTokens, 3);
  assert.equal(typeof first.ttftMs, 'number');
  assert.equal(typeof first.durationMs, 'number');
  assert.equal(finished[1]!.completionTokens, 2);
  assert.equal(finished[3]!.error, 'internal_error');
  const all = JSON.stringify(lines);
  assert.ok(!all.includes(secret), 'prompt text never logged');
});

test('engine internals never reach a client, but the server log has them', async (t) => {
  const { lines, logger } = memoryLogger();
  const { app } = await setup(t, { runner: { failRuns: [0] } }, {}, { logger });
  const res = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A' }).expect(500);
  assert.deepEqual(Object.keys(res.body.error), ['message', 'type', 'param', 'code']);
  assert.doesNotMatch(res.text, /injected|scripted|\.ts:\d+|\n\s+at /);
  assert.ok(lines.some((l) => l.level === 50 && JSON.stringify(l).includes('injected failure at run 0')));
});

test('drain: /health and new completions get 503 at once, in-flight streams finish, engine shuts down, app closes', async (t) => {
  const { spy, app, engine } = await setup(t, { worker: true, runner: { stepDelayMs: 10 } });
  const inflight = request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', max_tokens: 20, stream: true, temperature: 0 }).then((r) => r);
  await waitFor(() => (spy.delivered.get('cmpl-test-0')?.length ?? 0) > 3, 30_000, 'stream started');
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
  assert.equal(text, (await greedy('A', 20)).text);
  await draining;
  assert.equal(app.server.listening, false);
  const late: string[] = [];
  engine.submit({ id: 'late', promptTokens: [1], params: { ...spy.submitted[0]!.params } }, (e) => late.push(e.type === 'error' ? e.error.code : e.type));
  await waitFor(() => late.length > 0, 30_000, 'an answer');
  assert.deepEqual(late, ['shutting_down'], 'the engine was shut down');
});

test('drain timeout: what is still running is cut off with an error event, then [DONE]', async (t) => {
  const { spy, app } = await setup(t, { worker: true, runner: { stepDelayMs: 10 } });
  const inflight = request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A', max_tokens: 500, stream: true }).then((r) => r);
  await waitFor(() => (spy.delivered.get('cmpl-test-0')?.length ?? 0) > 3, 30_000, 'stream started');
  const started = Date.now();
  await app.drain({ timeoutMs: 100 });
  assert.ok(Date.now() - started < 2000);
  const res = await inflight;
  const events = parseSse(res.text);
  assert.equal(events.at(-1), '[DONE]');
  const err = events.at(-2) as { error: { code: string } };
  assert.equal(err.error.code, 'shutting_down', JSON.stringify(err));
});

test('a body over the limit gets its 413 even when the client reads only after sending it all (no reset)', async (t) => {
  const { app } = await setup(t, {}, { maxBodyBytes: 64 * 1024 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as import('node:net').AddressInfo;
  const size = 4 << 20;
  const socket = (await import('node:net')).connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  let received = '';
  let failure: string | null = null;
  socket.on('error', (err) => (failure = err.message));
  // Headers first; the server answers from the Content-Length at once, before the body.
  socket.write(`POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${size}\r\n\r\n`);
  socket.pause(); // a client that reads its answer only once it has sent everything
  await new Promise((r) => setTimeout(r, 200));
  await new Promise<void>((resolve) => socket.write(Buffer.alloc(size, 0x61), () => resolve()));
  socket.on('data', (d) => (received += d.toString('latin1')));
  socket.resume();
  await waitFor(() => received.includes('request_too_large') || failure !== null, 30_000, 'the answer');
  assert.equal(failure, null, 'no reset');
  assert.match(received, /^HTTP\/1\.1 413 /);
  // The rest of the body was read and discarded: the connection serves the next request.
  socket.write('GET /health HTTP/1.1\r\nhost: x\r\n\r\n');
  await waitFor(() => /HTTP\/1\.1 200 [\s\S]*"status":"ok"/.test(received), 30_000, 'the next answer on the same connection');
  socket.destroy();
});

test('a body over the limit from a client that asked for Connection: close: its 413 arrives, then a clean close (no reset)', async (t) => {
  const { app } = await setup(t, {}, { maxBodyBytes: 64 * 1024 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as import('node:net').AddressInfo;
  const size = 4 << 20;
  const socket = (await import('node:net')).connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await new Promise((r) => socket.once('connect', r));
  let received = '';
  let failure: string | null = null;
  let ended = false;
  socket.on('error', (err) => (failure = err.message));
  socket.on('end', () => (ended = true));
  socket.write(`POST /v1/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${size}\r\n\r\n`);
  socket.pause();
  await new Promise((r) => setTimeout(r, 200));
  await new Promise<void>((resolve) => socket.write(Buffer.alloc(size, 0x61), () => resolve()));
  socket.on('data', (d) => (received += d.toString('latin1')));
  socket.resume();
  await waitFor(() => ended || failure !== null, 30_000, 'the server closing its side');
  assert.equal(failure, null, 'no reset');
  assert.match(received, /^HTTP\/1\.1 413 [\s\S]*request_too_large/);
  socket.destroy();
});
