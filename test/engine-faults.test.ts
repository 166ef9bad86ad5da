// Faults injected into the real engine (scripted runner, in-process and in its worker) and what
// the edge makes of them: a step that throws once, steps that always throw, a worker that exits,
// a step that hangs, and hostile prompts while other streams run.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import request from 'supertest';
import type { EngineClient } from '../src/engine/types.js';
import { collect, request as engineRequest } from './helpers/engine-run.js';
import { MODEL, greedy, parseSse, serveTest, spyOn, startTestEngine, waitFor } from './helpers/serving.js';

const prompt = (n: number, salt = 0) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);

function deathOf(engine: EngineClient): Promise<string> {
  return new Promise((resolve) => engine.onDead(resolve));
}

test('a step that throws once fails the requests in that step only; the queue behind it runs', async (t) => {
  // One sequence at a time: run 0 prefills a, run 1 (a decode step) throws; b waits meanwhile.
  const engine = await startTestEngine({ runner: { failRuns: [1] }, engine: { maxNumSeqs: 1 } });
  t.after(() => engine.shutdown());
  const [a, b] = await Promise.all([collect(engine, engineRequest(prompt(5), { maxTokens: 8 })), collect(engine, engineRequest(prompt(5, 1), { maxTokens: 8 }))]);
  assert.equal(a.error?.code, 'internal_error');
  assert.match(a.error!.message, /The model step failed: scripted runner: injected failure at run 1/);
  assert.equal(b.error, null);
  assert.deepEqual(b.choices[0]!.tokens, (await greedy(prompt(5, 1), 8)).ids);
  assert.equal(engine.health().state, 'ok');
  assert.equal(engine.stats().consecutiveFailedSteps, 0, 'a good step resets the count');
  assert.equal(engine.stats().kvBlocksUsed, 0);
});

for (const worker of [false, true]) {
  test(`steps that keep failing: after --max-step-failures the engine is dead, every request hears it, later ones at once (${worker ? 'worker' : 'in-process'})`, async (t) => {
    const engine = await startTestEngine({ worker, runner: { failFrom: 2, stepDelayMs: 2 }, engine: { maxNumSeqs: 1, maxConsecutiveStepFailures: 3 } });
    t.after(() => engine.shutdown());
    const died = deathOf(engine);
    await collect(engine, engineRequest(prompt(3), { maxTokens: 2 })); // runs 0 and 1 succeed
    // One sequence at a time: three steps fail a request each, the fourth request never runs.
    const results = await Promise.all([0, 1, 2, 3].map((i) => collect(engine, engineRequest(prompt(4, i), { maxTokens: 50 }))));
    assert.match(await died, /3 model steps failed in a row/);
    const codes = results.map((r) => r.error?.code);
    assert.ok(codes.every((c) => c === 'internal_error' || c === 'engine_unavailable'), JSON.stringify(codes));
    assert.ok(codes.includes('engine_unavailable'), 'the requests still open when it died hear that it died');
    assert.equal(engine.health().state, 'dead');
    // Answered at once: before the event loop's next turn, so without any wait on the engine.
    const late = collect(engine, engineRequest(prompt(3), { maxTokens: 2 }));
    const nextTurn = new Promise<'next turn'>((r) => setImmediate(() => r('next turn')));
    assert.equal(await Promise.race([late.then(() => 'answered'), nextTurn]), 'answered');
    assert.equal((await late).error?.code, 'engine_unavailable');
  });
}

test('the engine worker exits mid-stream: open requests end with engine_unavailable, onDead says why', async (t) => {
  const engine = await startTestEngine({ worker: true, runner: { exitAtRun: 5, stepDelayMs: 2 } });
  t.after(() => engine.shutdown());
  const died = deathOf(engine);
  const r = await collect(engine, engineRequest(prompt(4), { maxTokens: 100 }));
  assert.equal(r.error?.code, 'engine_unavailable');
  assert.ok(r.choices[0]!.tokens.length > 0 && r.choices[0]!.tokens.length < 100, 'it was mid-stream');
  assert.match(await died, /the engine worker exited \(code 3\)/);
  assert.equal((await collect(engine, engineRequest(prompt(2), { maxTokens: 2 }))).error?.code, 'engine_unavailable');
});

test('a step that hangs: work pending and no heartbeat for --step-timeout-ms makes the engine stuck, then dead', async (t) => {
  const hangMs = 10_000;
  const engine = await startTestEngine({ worker: true, runner: { hangAtRun: 3, hangMs }, engine: { stepTimeoutMs: 400 } });
  t.after(() => engine.shutdown());
  const died = deathOf(engine);
  const started = Date.now();
  const r = await collect(engine, engineRequest(prompt(4), { maxTokens: 100 }));
  assert.equal(r.error?.code, 'engine_unavailable');
  assert.match(await died, /stuck: work is pending and the engine reported no progress for \d+ ms/);
  // The bound is the hang, not the machine's speed: a monitor that waited for the run to return fails it.
  assert.ok(Date.now() - started < hangMs / 2, `given up after ${Date.now() - started} ms, not after the ${hangMs} ms hang`);
});

test('HTTP: once the engine is dead, completions get 503 engine_unavailable and /health 503 at once', async (t) => {
  const { app, engine } = await serveTest(t, { runner: { failFrom: 0 }, engine: { maxConsecutiveStepFailures: 1 } });
  const died = deathOf(engine);
  const first = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A' });
  assert.ok([500, 503].includes(first.status));
  await died;
  const started = Date.now();
  const res = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'A' }).expect(503);
  assert.deepEqual(res.body.error, {
    message: 'The inference engine is unavailable; the server is restarting',
    type: 'server_error',
    param: null,
    code: 'engine_unavailable',
  });
  const health = await request(app.server).get('/health').expect(503);
  assert.match(health.body.error.message, /The engine is dead: 1 model steps failed in a row/);
  // Not after a timeout: the step timeout (60 s here) is what a server that waited on the dead engine would take.
  assert.ok(Date.now() - started < 10_000, `answered after ${Date.now() - started} ms`);
});

/** Streams run while `hostile` is sent; returns the largest gap between consecutive SSE chunks. */
async function largestGapDuring(app: import('fastify').FastifyInstance, hostile: () => Promise<unknown>): Promise<{ gapMs: number; modelsMs: number[] }> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as import('node:net').AddressInfo;
  const base = `http://127.0.0.1:${port}`;
  let gapMs = 0;
  let stop = false;
  const streams = Array.from({ length: 8 }, async (_, i) => {
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: `stream ${i}`, max_tokens: 1000, stream: true }),
    });
    const reader = res.body!.getReader();
    let last = performance.now();
    let measuring = false;
    while (!stop) {
      const { done } = await reader.read();
      if (done) break;
      const now = performance.now();
      if (measuring) gapMs = Math.max(gapMs, now - last);
      measuring = true;
      last = now;
    }
    await reader.cancel();
  });
  await new Promise((r) => setTimeout(r, 300));
  const modelsMs: number[] = [];
  const probe = (async () => {
    while (!stop) {
      const started = performance.now();
      await fetch(`${base}/v1/models`).then((r) => r.arrayBuffer());
      modelsMs.push(performance.now() - started);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  await hostile();
  await new Promise((r) => setTimeout(r, 200));
  stop = true;
  await Promise.all([...streams, probe]);
  return { gapMs, modelsMs };
}

test('a 4 MiB prompt and a long one that must be tokenized are refused without stalling other streams', async (t) => {
  // Body limit raised so that the 4 MiB prompt is parsed and refused by the length bound (the
  // default limit refuses it earlier, from its Content-Length).
  const { app, engine } = await serveTest(t, { worker: true, runner: { stepDelayMs: 5 }, config: { maxBodyBytes: 8 << 20 } });
  const spy = spyOn(engine);
  let tokenizingMs = 0;
  const { gapMs, modelsMs } = await largestGapDuring(app, async () => {
    const huge = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'a'.repeat(4 << 20) });
    assert.equal(huge.status, 400);
    assert.match(huge.body.error.message, /at least 32768 in the prompt/);
    // Under the bound, so it is tokenized (about a second of BPE, on the tokenizer thread).
    const started = performance.now();
    const long = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'a'.repeat(120_000) });
    tokenizingMs = performance.now() - started;
    assert.equal(long.status, 400);
    assert.match(long.body.error.message, /maximum context length is 1024 tokens/);
  });
  assert.equal(spy.encoded.filter((s) => s.length > 100_000).length, 1, 'only the long prompt reached the tokenizer');
  // Had the BPE run on the main thread, every stream would have stalled for all of it. (Relative
  // bounds: the machine running the tests is shared, so absolute times vary.)
  t.diagnostic(`tokenizing took ${tokenizingMs.toFixed(0)} ms, largest gap ${gapMs.toFixed(0)} ms`);
  // Long enough that a main-thread BPE would show as a gap far above a step's 5 ms (the floor is a
  // fraction of what the development machines take, so a faster machine still passes).
  assert.ok(tokenizingMs > 150, `tokenizing took ${tokenizingMs.toFixed(0)} ms`);
  assert.ok(gapMs < tokenizingMs / 2, `largest inter-token gap of the other streams: ${gapMs.toFixed(0)} ms, while tokenizing took ${tokenizingMs.toFixed(0)} ms`);
  modelsMs.sort((a, b) => a - b);
  assert.ok(modelsMs.length > 10);
  assert.ok(modelsMs.at(-1)! < tokenizingMs / 2, `slowest GET /v1/models: ${modelsMs.at(-1)!.toFixed(0)} ms`);
});

test('the default body limit is sized to the context: a 4 MiB body is 413 before it is read', async (t) => {
  const { app } = await serveTest(t);
  const res = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'a'.repeat(4 << 20) }).expect(413);
  assert.equal(res.body.error.code, 'request_too_large');
  // The limit (1 MiB) still admits a full-context prompt of GPT-2's longest token.
  const longest = 'ÃÂ'.repeat(32); // 128 bytes: GPT-2's longest token
  const full = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: longest.repeat(1000), max_tokens: 1, stream: true }).expect(200);
  assert.equal(parseSse(full.text).at(-1), '[DONE]');
});
