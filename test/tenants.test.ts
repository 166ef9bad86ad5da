// Sharing one server between tenants (API keys), through the app on the real engine around the
// scripted runner: --api-keys-file and its reload (directly, and by SIGHUP to the CLI), fair
// admission and priority, --max-concurrent-requests-per-key, per-tenant gauges, and the bounded
// work of chat and /tokenize before admission.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import request from 'supertest';
import { ConfigError, loadConfig, type ServerConfig } from '../src/config.js';
import type { EngineClient, EngineEvent, EngineRequest, EventSink } from '../src/engine/types.js';
import { reloadApiKeys } from '../src/main.js';
import { RENDER_SLACK } from '../src/server/completion/chat-bounds.js';
import { tenantKeys } from '../src/server/tenants.js';
import { spawnServer } from './helpers/server-process.js';
import { MODEL, memoryLogger, serveTest, spyOn, waitFor, type EngineSetup } from './helpers/serving.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
type T = { after: (fn: () => Promise<unknown>) => void };

function keysFile(text: string): string {
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'keys-')), 'keys.txt');
  writeFileSync(file, text);
  return file;
}

/** Holds engine submissions until released: requests stay admitted (in flight) meanwhile. */
function gateSubmissions(engine: EngineClient) {
  const held: Array<{ req: EngineRequest; go: () => void }> = [];
  const real = engine.submit.bind(engine);
  engine.submit = (req: EngineRequest, sink: EventSink) => held.push({ req, go: () => real(req, sink) });
  return held;
}

/**
 * Records, per engine request id, the order in which first tokens and ends arrive; `onFirstToken`
 * runs as the event is delivered, so what it sends the engine is applied before its next step.
 */
function recordOrder(engine: EngineClient, onFirstToken: (id: string) => void = () => {}) {
  const firstToken: string[] = [];
  const done: string[] = [];
  const real = engine.submit.bind(engine);
  engine.submit = (req: EngineRequest, sink: EventSink) =>
    real(req, (ev: EngineEvent) => {
      if (ev.type === 'delta' && !firstToken.includes(req.id)) {
        firstToken.push(req.id);
        onFirstToken(req.id);
      }
      if (ev.type === 'done') done.push(req.id);
      sink(ev);
    });
  return { firstToken, done };
}

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
const complete = (app: { server: unknown }, key: string | null, body: Record<string, unknown>) =>
  request(app.server as never)
    .post('/v1/completions')
    .set(key ? bearer(key) : {})
    .send({ model: MODEL, prompt: 'Hello', max_tokens: 2, ...body })
    .then((r) => r);

async function setup(t: T, config: Partial<ServerConfig>, engine: EngineSetup['engine'] = {}) {
  return serveTest(t, { config, engine });
}

test('keys file: "KEY NAME" lines, comments and blanks skipped; a bad line, a repeated key or name is an error naming the line, never the key', () => {
  const keys = tenantKeys(['sk-flag'], { path: 'k.txt', text: '# team keys\n\nsk-alice alice\n  sk-bob   bob.team-2  \n' });
  assert.deepEqual(keys.map((k) => k.name), ['key0', 'alice', 'bob.team-2']);
  const refused = (text: string, flags: string[] = []) => {
    try {
      tenantKeys(flags, { path: 'k.txt', text });
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      assert.ok(!err.message.includes('sk-secret'), 'the key is never in the message');
      return err.message;
    }
    assert.fail(`accepted: ${JSON.stringify(text)}`);
  };
  assert.match(refused('sk-a a\nsk-secret\n'), /^k\.txt:2: expected "KEY NAME".*found 1 field$/);
  assert.match(refused('sk-a a\nsk-b b extra\n'), /^k\.txt:2: .*found 3 fields/);
  assert.match(refused('sk-secret a\n# x\nsk-secret b\n'), /^k\.txt:3: this key was already given \(k\.txt:1\)$/);
  assert.match(refused('sk-secret a\n', ['sk-secret']), /^k\.txt:1: this key was already given \(--api-key #1\)$/);
  assert.match(refused('sk-a alice\nsk-b alice\n'), /^k\.txt:2: the name "alice" was already given/);
  assert.match(refused('sk-a key0\n', ['sk-flag']), /^k\.txt:1: the name "key0" was already given/);
  assert.match(refused('sk-secret al"ice\n'), /^k\.txt:1: the name must be/);
  assert.equal(loadConfig(['--api-keys-file', 'k.txt'], {}).apiKeysFile, 'k.txt');
});

test('a bad keys file stops the CLI at start: one line naming the file and line, exit 2', () => {
  const file = keysFile('sk-a alice\nsk-b\n');
  const res = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts'), '--api-keys-file', file], {
    cwd: ROOT,
    env: { PATH: process.env.PATH },
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(res.status, 2, res.stderr);
  assert.equal(res.stderr.trim(), `error: ${file}:2: expected "KEY NAME" (two fields separated by spaces), found 1 field`);
});

test('keys file: names reach the engine, cache keys and log line; a reload swaps keys at once, a bad reload keeps them', async (t) => {
  const file = keysFile('sk-alice alice\n');
  const log = memoryLogger();
  const { app, engine } = await serveTest(t, { config: { apiKeys: ['sk-flag'], apiKeysFile: file }, app: { logger: log.logger } });
  const spy = spyOn(engine);
  assert.equal((await complete(app, 'sk-alice', {})).status, 200);
  assert.equal((await complete(app, 'sk-flag', {})).status, 200);
  assert.deepEqual(spy.submitted.map((r) => [r.tenant, r.cacheKeys]), [['alice', ['tenant:alice']], ['key0', ['tenant:key0']]]);
  const finished = log.lines.filter((l) => l.msg === 'request finished' && l.url === '/v1/completions');
  assert.deepEqual(finished.map((l) => l.tenant), ['alice', 'key0']);
  assert.ok(!JSON.stringify(log.lines).includes('sk-'), 'no key in the log');

  writeFileSync(file, 'sk-alice2 alice\nsk-carol carol\n');
  reloadApiKeys(app, log.logger);
  assert.equal((await complete(app, 'sk-alice', {})).status, 401, 'the old key is gone at once');
  assert.equal((await complete(app, 'sk-alice2', {})).status, 200);
  assert.equal((await complete(app, 'sk-carol', {})).status, 200);
  assert.equal((await complete(app, 'sk-flag', {})).status, 200, 'flag keys stay');
  assert.equal(spy.submitted.at(-3)!.tenant, 'alice', 'a new key under the same name is the same tenant');

  writeFileSync(file, 'sk-dave dave\nsk-erin\n');
  reloadApiKeys(app, log.logger);
  const error = log.lines.find((l) => l.msg === 'API keys not reloaded: the keys in use stay');
  assert.match(String(error?.problem), /keys\.txt:2: expected "KEY NAME"/);
  assert.equal((await complete(app, 'sk-carol', {})).status, 200);
  assert.equal((await complete(app, 'sk-dave', {})).status, 401);

  writeFileSync(file, '# nobody\n');
  reloadApiKeys(app, log.logger);
  assert.equal((await complete(app, 'sk-carol', {})).status, 401, 'an emptied file removes its keys, and never turns auth off');
  assert.equal((await complete(app, null, {})).status, 401);
});

test('SIGHUP makes the server re-read --api-keys-file; a bad file on reload is logged and changes nothing', async (t) => {
  const file = keysFile('sk-one one\n');
  const server = await spawnServer(t, ['--api-keys-file', file], {});
  const models = (key: string) => fetch(new URL('/v1/models', server.url), { headers: bearer(key) }).then((r) => r.status);
  assert.equal(await models('sk-one'), 200);
  assert.equal(await models('sk-two'), 401);
  writeFileSync(file, 'sk-two two\n');
  server.kill('SIGHUP');
  await waitFor(() => server.logs.some((l) => l.msg === 'API keys reloaded'), 30_000, 'reload log line');
  assert.deepEqual(server.logs.find((l) => l.msg === 'API keys reloaded')!.tenants, ['two']);
  assert.equal(await models('sk-two'), 200);
  assert.equal(await models('sk-one'), 401);
  writeFileSync(file, 'oops\n');
  server.kill('SIGHUP');
  await waitFor(() => server.logs.some((l) => l.msg === 'API keys not reloaded: the keys in use stay'), 30_000, 'error log line');
  assert.equal(await models('sk-two'), 200, 'still serving with the keys in use');
});

test('fair share through HTTP: with alice holding the batch, bob gets the next slot before her older queued requests', async (t) => {
  const file = keysFile('sk-alice alice\nsk-bob bob\n');
  const { app, engine } = await setup(t, { apiKeysFile: file }, { maxNumSeqs: 2 });
  const order = recordOrder(engine);
  const held = gateSubmissions(engine);
  const responses = [
    complete(app, 'sk-alice', { prompt: 'a1', max_tokens: 4 }),
    complete(app, 'sk-alice', { prompt: 'a2', max_tokens: 4 }),
    complete(app, 'sk-alice', { prompt: 'a3', max_tokens: 4 }),
  ];
  await waitFor(() => held.length === 3, 30_000, "alice's requests");
  responses.push(complete(app, 'sk-bob', { prompt: 'b1', max_tokens: 4 }));
  await waitFor(() => held.length === 4, 30_000, "bob's request");
  // Into the engine's queue at once, in arrival order: alice's three, then bob's.
  for (const h of held) h.go();
  for (const r of await Promise.all(responses)) assert.equal(r.status, 200);
  assert.deepEqual(held.map((h) => h.req.tenant), ['alice', 'alice', 'alice', 'bob']);
  // Strict arrival order would start alice's three first; fair share starts bob's second.
  assert.deepEqual(order.firstToken.slice(0, 2), [held[0]!.req.id, held[3]!.req.id], `first tokens: ${order.firstToken.join(' ')}`);
});

test('priority through HTTP: a priority -10 request preempts a running priority 0 one, whose output is unchanged', async (t) => {
  const { app, engine } = await setup(t, { schedulingPolicy: 'priority' }, { maxNumSeqs: 2, schedulingPolicy: 'priority' });
  const reference = await Promise.all(['first', 'second'].map((prompt) => complete(app, null, { prompt, max_tokens: 40, temperature: 0 })));
  // The urgent request reaches the engine as the second running stream delivers its first token.
  let held: ReturnType<typeof gateSubmissions> = [];
  const order = recordOrder(engine, () => {
    if (order.firstToken.length === 2) held.find((h) => h.req.priority === -10)!.go();
  });
  held = gateSubmissions(engine);
  const long = ['first', 'second'].map((prompt) => complete(app, null, { prompt, max_tokens: 40, temperature: 0 }));
  const urgent = complete(app, null, { prompt: 'urgent', max_tokens: 2, priority: -10 });
  await waitFor(() => held.length === 3, 30_000, 'all three tokenized');
  for (const h of held) if (h.req.priority !== -10) h.go();
  assert.equal((await urgent).status, 200);
  const outputs = await Promise.all(long);
  const ids = held.map((h) => h.req.id);
  const urgentId = held.find((h) => h.req.priority === -10)!.req.id;
  for (const id of ids.filter((i) => i !== urgentId)) {
    assert.ok(order.done.indexOf(urgentId) < order.done.indexOf(id), `the urgent request ended first: ${order.done.join(' ')}`);
  }
  assert.equal(engine.stats().preemptions, 1, 'a running request was preempted for it');
  assert.deepEqual(
    outputs.map((r) => r.body.choices[0].text),
    reference.map((r) => r.body.choices[0].text),
    'preemption changes no output',
  );
});

test('priority: a non-zero value is a 400 under --scheduling-policy fcfs (vLLM), accepted under priority; chat takes it too', async (t) => {
  const { app } = await setup(t, {});
  const res = await complete(app, null, { priority: 3 });
  assert.equal(res.status, 400);
  assert.equal(res.body.error.param, 'priority');
  assert.match(res.body.error.message, /priority scheduling is not enabled/);
  assert.equal((await complete(app, null, { priority: 0 })).status, 200);
  const chat = await request(app.server).post('/v1/chat/completions').send({ model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, priority: -1 });
  assert.equal(chat.status, 400);
  assert.equal(chat.body.error.param, 'priority');
  assert.equal((await complete(app, null, { priority: 1.5 })).status, 400, 'an integer');
});

test('--max-concurrent-requests-per-key: past it a 429 with Retry-After for that key only, released when a request ends', async (t) => {
  const { app, engine } = await setup(t, { apiKeys: ['sk-a', 'sk-b'], maxConcurrentRequestsPerKey: 1 });
  const held = gateSubmissions(engine);
  const a1 = complete(app, 'sk-a', {});
  await waitFor(() => held.length === 1, 30_000, 'a request of key a in flight');
  const refused = await complete(app, 'sk-a', {});
  assert.equal(refused.status, 429);
  assert.equal(refused.body.error.code, 'overloaded');
  assert.match(refused.body.error.message, /--max-concurrent-requests-per-key 1/);
  assert.ok(Number(refused.headers['retry-after']) > 0);
  const tokenize = await request(app.server).post('/tokenize').set(bearer('sk-a')).send({ prompt: 'Hi' });
  assert.equal(tokenize.status, 429, '/tokenize counts against the key too');
  const b1 = complete(app, 'sk-b', {});
  await waitFor(() => held.length === 2, 30_000, 'key b admitted meanwhile');
  for (const h of held) h.go();
  assert.equal((await a1).status, 200);
  assert.equal((await b1).status, 200);
  const again = complete(app, 'sk-a', {});
  await waitFor(() => held.length === 3, 30_000, 'key a admitted again once its request ended');
  held[2]!.go();
  assert.equal((await again).status, 200);
});

test('per-tenant gauges: running and waiting sequences by key name (never the key), idle tenants at 0', async (t) => {
  const file = keysFile('sk-alice-secret alice\nsk-bob-secret bob\n');
  const { app, engine } = await setup(t, { apiKeysFile: file }, { maxNumSeqs: 1 });
  const spy = spyOn(engine);
  // Paused as its first token is delivered: it stays in the batch, out of steps, a state that holds still.
  recordOrder(engine, (id) => id === spy.submitted[0]?.id && engine.pause(id));
  const scrape = async () => (await request(app.server).get('/metrics').expect(200)).text;
  const gauge = (text: string, which: string, tenant: string) => Number(new RegExp(`^gpt2_tenant_sequences_${which}\\{tenant="${tenant}"\\} (\\d+)$`, 'm').exec(text)?.[1]);
  const idle = await scrape();
  assert.equal(gauge(idle, 'running', 'alice'), 0);
  assert.equal(gauge(idle, 'waiting', 'bob'), 0);
  const alice = request(app.server).post('/v1/completions').set(bearer('sk-alice-secret')).send({ model: MODEL, prompt: 'A', max_tokens: 30, stream: true }).then((r) => r);
  await waitFor(() => spy.submitted.length === 1, 30_000, "alice's request");
  const running = async () => gauge(await scrape(), 'running', 'alice') === 1;
  for (let i = 0; !(await running()); i++) if (i > 3000) assert.fail('alice never counted running');
  // bob takes the paused sequence's slot; alice's goes back to the queue.
  assert.equal((await complete(app, 'sk-bob-secret', { max_tokens: 2 })).status, 200);
  let text = await scrape();
  for (let i = 0; gauge(text, 'waiting', 'alice') !== 1; i++) {
    if (i > 3000) assert.fail(`alice never counted waiting:\n${text}`);
    text = await scrape();
  }
  assert.equal(gauge(text, 'running', 'bob'), 0);
  assert.ok(!text.includes('secret'), 'no key in a label');
  assert.ok(!/tenant="(?!alice"|bob")/.test(text), 'no other tenant label');
  engine.resume(spy.submitted[0]!.id);
  assert.equal((await alice).status, 200);
});

test('without keys, every request counts under the tenant "default"', async (t) => {
  const { app } = await setup(t, {});
  assert.equal((await complete(app, null, {})).status, 200);
  const text = (await request(app.server).get('/metrics').expect(200)).text;
  assert.match(text, /^gpt2_tenant_sequences_running\{tenant="default"\} 0$/m);
});

test('chat: a conversation with more text than a fitting prompt could render is refused before the template runs', async (t) => {
  const { app, engine } = await setup(t, {});
  let renders = 0;
  const realEncodeChat = engine.encodeChat.bind(engine);
  engine.encodeChat = (r) => (renders++, realEncodeChat(r));
  const most = 1024 * engine.model.maxTokenBytes * RENDER_SLACK;
  const half = 'x'.repeat(most / 2);
  const tooMuch = await request(app.server)
    .post('/v1/chat/completions')
    .send({ model: MODEL, messages: [{ role: 'system', content: half }, { role: 'user', content: [{ type: 'text', text: half }], name: 'u' }] });
  assert.equal(tooMuch.status, 400);
  assert.equal(tooMuch.body.error.code, 'context_length_exceeded');
  assert.equal(tooMuch.body.error.param, 'messages');
  assert.match(tooMuch.body.error.message, new RegExp(`text is ${most + 1} characters; this server renders at most ${most}`));
  assert.equal(renders, 0, 'refused before rendering');
  const justUnder = await request(app.server)
    .post('/v1/chat/completions')
    .send({ model: MODEL, messages: [{ role: 'user', content: 'hello '.repeat(Math.floor((most - 100) / 6)) }] });
  assert.equal(justUnder.status, 400, 'rendered, then refused by its token count');
  assert.equal(renders, 1);
});

test('/tokenize: a text that cannot fit the context is refused without BPE; it is admission-controlled', async (t) => {
  const { app, engine } = await setup(t, { maxConcurrentRequests: 1 });
  const spy = spyOn(engine);
  const long = 'x'.repeat(1024 * engine.model.maxTokenBytes + 1);
  const refused = await request(app.server).post('/tokenize').send({ prompt: long });
  assert.equal(refused.status, 400);
  assert.equal(refused.body.error.code, 'context_length_exceeded');
  assert.equal(spy.encoded.length, 0, 'never tokenized');
  const fits = await request(app.server).post('/tokenize').send({ prompt: 'hello '.repeat(Math.floor((1024 * engine.model.maxTokenBytes) / 6)) });
  assert.equal(fits.status, 200, 'at most maxTokenBytes per token, it could fit: tokenized');
  // A /tokenize in flight holds the one slot: a completion meanwhile gets 429.
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const realEncode = engine.encode.bind(engine);
  let tokenizing = false;
  engine.encode = async (texts) => ((tokenizing = true), await gate, realEncode(texts));
  const pending = request(app.server).post('/tokenize').send({ prompt: 'Hi' }).then((r) => r);
  await waitFor(() => tokenizing, 30_000, '/tokenize in flight');
  const busy = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: [1, 2], max_tokens: 1 });
  assert.equal(busy.status, 429);
  release();
  assert.equal((await pending).status, 200);
  assert.equal((await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: [1, 2], max_tokens: 1 })).status, 200);
});
