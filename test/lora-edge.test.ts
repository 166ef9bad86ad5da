// Multi-LoRA serving at the HTTP edge (vLLM's interface): the flags, /v1/models' adapter cards,
// requests naming an adapter (every API, the websocket, /tokenize) reaching the real engine with
// the adapter's id, load/unload at runtime, the LoRA metrics, and --max-cpu-loras eviction. The
// engine is the real one around the scripted runner, which ignores adapters: what is checked here
// is which adapter id each engine request carries, and which adapters the engine is given.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import request from 'supertest';
import WebSocket from 'ws';
import { ConfigError, loadConfig, maxCpuLoras, type ServerConfig } from '../src/config.js';
import type { EngineClient } from '../src/engine/types.js';
import { engineOptions as serverEngineOptions } from '../src/main.js';
import { readGpt2Config } from '../src/model/gpt2-checkpoint.js';
import { readLoraAdapter, type LoraAdapter } from '../src/model/lora-adapter.js';
import type { AppOptions } from '../src/server/app.js';
import { LoraModuleError } from '../src/server/lora/registry.js';
import { loraTensors, peftConfig, writePeftAdapter } from './helpers/peft-adapter.js';
import { MODEL, makeApp, memoryLogger, parseSse, spyOn, startTestEngine, waitFor, type EngineSetup, type EngineSpy } from './helpers/serving.js';
import { tempDir, tinyModel } from './helpers/tiny-model.js';

type T = { after: (fn: () => Promise<unknown>) => void };

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** A PEFT adapter folder for the tiny model (rank `rank`, every layer and module) under `root`. */
async function adapterDir(root: string, name: string, rank = 4, seed = 1): Promise<string> {
  const { n_embd, n_layer } = readGpt2Config(await tinyModel());
  const dir = path.join(root, name);
  writePeftAdapter(dir, peftConfig({ r: rank }), loraTensors({ embd: n_embd, layers: [...Array(n_layer).keys()], rank, seed }));
  return dir;
}

interface AdapterSpy {
  /** [engine id, adapter folder] per addAdapter, in order. */
  added: Array<[number, string]>;
  removed: number[];
}

function spyOnAdapters(engine: EngineClient): AdapterSpy {
  const spy: AdapterSpy = { added: [], removed: [] };
  const add = engine.addAdapter.bind(engine);
  const remove = engine.removeAdapter.bind(engine);
  engine.addAdapter = (id: number, adapter: LoraAdapter) => {
    spy.added.push([id, adapter.dir]);
    add(id, adapter);
  };
  engine.removeAdapter = (id: number) => {
    spy.removed.push(id);
    remove(id);
  };
  return spy;
}

interface LoraServer {
  app: FastifyInstance;
  engine: EngineClient;
  spy: EngineSpy;
  adapters: AdapterSpy;
  /** Adapter folders by name (written for the test). */
  dirs: Record<string, string>;
  root: string;
}

/**
 * A ready app with --enable-lora over a fresh engine started with the same LoRA options, serving
 * adapters `names` (written as PEFT folders) through --lora-modules. The spies are on before the
 * app starts, so the adapters it gives the engine at start are seen too.
 */
async function serveLora(t: T, names: string[], config: Partial<ServerConfig> = {}, setup: EngineSetup = {}, appOptions: AppOptions = {}): Promise<LoraServer> {
  const root = tempDir('gpt2-serve-lora-');
  t.after(async () => rmSync(root, { recursive: true, force: true }));
  const dirs: Record<string, string> = {};
  for (const [i, name] of names.entries()) dirs[name] = await adapterDir(root, name, 4, i + 1);
  const maxLoras = config.maxLoras ?? 1;
  const maxRank = config.maxLoraRank ?? 16;
  const engine = await startTestEngine({ ...setup, engine: { ...setup.engine, lora: { maxLoras, maxRank } } });
  const spy = spyOn(engine);
  const adapters = spyOnAdapters(engine);
  const app = makeApp(engine, {
    enableLora: true,
    model: await tinyModel(),
    servedModelName: MODEL,
    loraModules: names.map((name) => ({ name, path: dirs[name]! })),
    maxLoras,
    maxLoraRank: maxRank,
    ...config,
  }, appOptions);
  t.after(async () => {
    app.server.closeAllConnections();
    await app.close();
    await engine.shutdown();
  });
  await app.ready();
  return { app, engine, spy, adapters, dirs, root };
}

async function listen(app: FastifyInstance): Promise<number> {
  await app.listen({ host: '127.0.0.1', port: 0 });
  return (app.server.address() as AddressInfo).port;
}

/** A streaming completion whose body the test reads as it comes. */
function openStream(port: number, body: Record<string, unknown>): { text: () => string; done: Promise<string>; status: Promise<number> } {
  let text = '';
  let setStatus!: (s: number) => void;
  const status = new Promise<number>((r) => (setStatus = r));
  const done = new Promise<string>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' } }, (res) => {
      setStatus(res.statusCode!);
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve(text));
    });
    req.on('error', reject);
    req.end(JSON.stringify({ stream: true, ...body }));
  });
  return { text: () => text, done, status };
}

test('--enable-lora flags: both --lora-modules forms, repeated or comma-separated, and vLLM\'s defaults', async () => {
  const json = '{"name": "b", "path": "/ad/b,1", "base_model_name": "gpt2"}';
  const config = loadConfig(['--enable-lora', '--lora-modules', 'a=/ad/a', '--lora-modules', json]);
  assert.deepEqual(config.loraModules, [
    { name: 'a', path: '/ad/a' },
    { name: 'b', path: '/ad/b,1', baseModelName: 'gpt2' },
  ]);
  assert.deepEqual(loadConfig([], { GPT2_ENABLE_LORA: 'true', GPT2_LORA_MODULES: `a=/ad/a, ${json}` }).loraModules, config.loraModules);
  assert.equal(config.maxLoras, 1);
  assert.equal(config.maxLoraRank, 16);
  assert.equal(maxCpuLoras(config), 1, '--max-cpu-loras defaults to --max-loras');
  assert.equal(maxCpuLoras(loadConfig(['--enable-lora', '--max-loras', '3'], {})), 3);
  assert.equal(config.allowRuntimeLoraUpdating, false);
  assert.deepEqual(serverEngineOptions(loadConfig(['--enable-lora', '--max-loras', '2', '--max-lora-rank', '8'], {}), '/m').lora, { maxLoras: 2, maxRank: 8 });
  assert.equal(serverEngineOptions(loadConfig([], {}), '/m').lora, undefined);
  assert.deepEqual(loadConfig([], {}).loraModules, []);
});

test('LoRA flag errors: any LoRA setting without --enable-lora, bad modules, --max-cpu-loras below --max-loras', () => {
  const fails = (args: string[], pattern: RegExp, env: NodeJS.ProcessEnv = {}) =>
    assert.throws(() => loadConfig(args, env), (e: Error) => e instanceof ConfigError && pattern.test(e.message), `${args.join(' ')} -> ${pattern}`);
  fails(['--lora-modules', 'a=/x'], /^--lora-modules is only used with --enable-lora$/);
  fails(['--max-loras', '2', '--allow-runtime-lora-updating'], /^--max-loras, --allow-runtime-lora-updating are only used with --enable-lora$/);
  fails([], /--max-lora-rank is only used with --enable-lora/, { GPT2_MAX_LORA_RANK: '8' });
  fails(['--enable-lora', '--max-loras', '2', '--max-cpu-loras', '1'], /--max-cpu-loras \(1\) must be >= --max-loras \(2\)/);
  fails(['--enable-lora', '--lora-modules', 'just-a-name'], /^--lora-modules \/ GPT2_LORA_MODULES: "just-a-name" is neither name=path nor/);
  fails(['--enable-lora', '--lora-modules', '=/x'], /is neither name=path nor/);
  fails(['--enable-lora', '--lora-modules', '{"name": "a"'], /is not valid JSON/);
  fails(['--enable-lora', '--lora-modules', '{"name": "a"}'], /expected \{"name"/);
  fails(['--enable-lora', '--lora-modules', 'a=/x', '--lora-modules', '{"name": "a", "path": "/y"}'], /the adapter name "a" is given twice/);
  fails(['--enable-lora', '--max-lora-rank', '0'], /^--max-lora-rank \/ GPT2_MAX_LORA_RANK: /);
  // Off is off: saying so without --enable-lora is no mistake.
  assert.equal(loadConfig(['--no-allow-runtime-lora-updating'], {}).enableLora, false);
});

test('a --lora-modules adapter that cannot be served stops the start, naming it and why', async (t) => {
  const root = tempDir('gpt2-serve-lora-');
  t.after(async () => rmSync(root, { recursive: true, force: true }));
  const model = await tinyModel();
  const ok = await adapterDir(root, 'ok');
  const big = await adapterDir(root, 'big', 32);
  const engine = await startTestEngine({ engine: { lora: { maxLoras: 1, maxRank: 16 } } });
  t.after(() => engine.shutdown());
  const build = (loraModules: ServerConfig['loraModules']) => () => makeApp(engine, { enableLora: true, model, servedModelName: MODEL, loraModules });
  assert.throws(build([{ name: 'big', path: big }]), (e: Error) => e instanceof LoraModuleError && /^--lora-modules big: .*big: LoRA adapter refused: rank r = 32 is over the maximum LoRA rank 16/.test(e.message));
  const refused = (pattern: RegExp) => (e: Error) => e instanceof LoraModuleError && pattern.test(e.message);
  assert.throws(build([{ name: 'gone', path: path.join(root, 'nope') }]), refused(/^--lora-modules gone: .*nope: LoRA adapter folder does not exist$/));
  assert.throws(build([{ name: MODEL, path: ok }]), refused(/^--lora-modules tiny-model: the name `tiny-model` is the base model's$/));

  // The CLI: one fatal log line naming the adapter, exit 1, before the model loads.
  const res = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'main.ts'), '--model', model, '--port', '0', '--enable-lora', '--lora-modules', `big=${big}`], {
    cwd: ROOT,
    env: { PATH: process.env.PATH },
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(res.status, 1, res.stderr);
  const fatal = res.stdout.trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; adapter?: string }).find((l) => l.level === 60);
  assert.ok(fatal, res.stdout);
  assert.equal(fatal.adapter, 'big');
  assert.match(fatal.msg, /^--lora-modules big: .*rank r = 32 is over/);
});

test('/v1/models: the base card, then one per adapter with root (its folder) and parent; GET /v1/models/{adapter}', async (t) => {
  const { app, dirs } = await serveLora(t, ['sql', 'chat']);
  const list = await request(app.server).get('/v1/models').expect(200);
  assert.equal(list.body.data.length, 3);
  assert.equal(list.body.data[0].id, MODEL);
  assert.deepEqual(list.body.data.slice(1), [
    { id: 'sql', object: 'model', created: 1_700_000_000, owned_by: 'gpt2-serve', root: dirs.sql, parent: MODEL, max_model_len: 1024 },
    { id: 'chat', object: 'model', created: 1_700_000_000, owned_by: 'gpt2-serve', root: dirs.chat, parent: MODEL, max_model_len: 1024 },
  ]);
  const one = await request(app.server).get('/v1/models/sql').expect(200);
  assert.deepEqual(one.body, list.body.data[1]);
  await request(app.server).get(`/v1/models/${MODEL}`).expect(200);
  const missing = await request(app.server).get('/v1/models/nope').expect(404);
  assert.equal(missing.body.error.code, 'model_not_found');
});

test('base_model_name of the JSON form is the adapter\'s parent', async (t) => {
  const root = tempDir('gpt2-serve-lora-');
  t.after(async () => rmSync(root, { recursive: true, force: true }));
  const dir = await adapterDir(root, 'x');
  const { app } = await serveLora(t, [], { loraModules: [{ name: 'x', path: dir, baseModelName: 'openai-community/gpt2' }] });
  const res = await request(app.server).get('/v1/models/x').expect(200);
  assert.equal(res.body.parent, 'openai-community/gpt2');
});

test('model = an adapter: every API reaches the engine with its id and answers with its name; the base model with none', async (t) => {
  const { app, spy, adapters } = await serveLora(t, ['sql', 'chat'], { maxLoras: 2, maxCpuLoras: 2 }, {});
  assert.deepEqual(adapters.added.map(([id]) => id), [1, 2], 'both adapters go into the engine at start');
  const idOf = (name: string) => adapters.added.find(([, dir]) => dir.endsWith(`/${name}`))![0];

  const completion = await request(app.server).post('/v1/completions').send({ model: 'sql', prompt: 'SELECT', max_tokens: 2 }).expect(200);
  assert.equal(completion.body.model, 'sql');
  assert.equal(spy.submitted.at(-1)!.adapter, idOf('sql'));

  const chat = await request(app.server).post('/v1/chat/completions').send({ model: 'chat', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }).expect(200);
  assert.equal(chat.body.model, 'chat');
  assert.equal(spy.submitted.at(-1)!.adapter, idOf('chat'));

  const streamed = await request(app.server).post('/v1/chat/completions').send({ model: 'chat', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, stream: true }).expect(200);
  for (const chunk of parseSse(streamed.text).slice(0, -1)) assert.equal((chunk as { model: string }).model, 'chat');

  const response = await request(app.server).post('/v1/responses').send({ model: 'sql', input: 'hi', max_output_tokens: 2 }).expect(200);
  assert.equal(response.body.model, 'sql');
  assert.equal(spy.submitted.at(-1)!.adapter, idOf('sql'));

  const base = await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'SELECT', max_tokens: 2 }).expect(200);
  assert.equal(base.body.model, MODEL);
  assert.equal(spy.submitted.at(-1)!.adapter, undefined);

  // The websocket's frames too.
  const port = await listen(app);
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/completions/ws`);
  const frames: Array<Record<string, unknown>> = [];
  ws.on('message', (d) => frames.push(JSON.parse(String(d)) as Record<string, unknown>));
  await new Promise((r) => ws.once('open', r));
  ws.send(JSON.stringify({ type: 'completion.create', id: 'w', model: 'chat', prompt: 'x', max_tokens: 2 }));
  ws.send(JSON.stringify({ type: 'completion.create', id: 'u', model: 'nope', prompt: 'x', max_tokens: 2 }));
  await waitFor(() => frames.some((f) => f.id === 'w' && f.type === 'completion.done') && frames.some((f) => f.id === 'u'));
  ws.close();
  assert.ok(frames.filter((f) => f.id === 'w' && f.type === 'completion.chunk').every((f) => f.model === 'chat'));
  assert.equal(spy.submitted.at(-1)!.adapter, idOf('chat'));
  assert.deepEqual((frames.find((f) => f.id === 'u') as { error: { code: string } }).error.code, 'model_not_found');

  // Same tokenizer: /tokenize and /detokenize take the adapters' names.
  const tok = await request(app.server).post('/tokenize').send({ model: 'sql', prompt: 'Hello world' }).expect(200);
  assert.deepEqual(tok.body.tokens, [15496, 995]);
  await request(app.server).post('/detokenize').send({ model: 'chat', tokens: [15496] }).expect(200);
  const wrongTok = await request(app.server).post('/tokenize').send({ model: 'nope', prompt: 'x' }).expect(404);
  assert.equal(wrongTok.body.error.code, 'model_not_found');
});

test('an unknown model is 404 model_not_found in OpenAI\'s shape, before any work', async (t) => {
  const { app, spy } = await serveLora(t, ['sql']);
  const res = await request(app.server).post('/v1/completions').send({ model: 'nope', prompt: 'x' }).expect(404);
  assert.deepEqual(res.body, {
    error: {
      message: 'The model `nope` does not exist. This server serves `tiny-model` and the LoRA adapters GET /v1/models lists',
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_not_found',
    },
  });
  assert.equal(spy.submitted.length, 0);
  assert.equal(spy.encoded.length, 0, 'not even tokenized');
});

test('load and unload at runtime: only with --allow-runtime-lora-updating, behind the API key, with vLLM\'s answers and clean errors', async (t) => {
  const off = await serveLora(t, ['sql']);
  await request(off.app.server).post('/v1/load_lora_adapter').send({ lora_name: 'x', lora_path: off.dirs.sql }).expect(404);
  await request(off.app.server).post('/v1/unload_lora_adapter').send({ lora_name: 'sql' }).expect(404);

  const { app, root, spy, adapters } = await serveLora(t, ['sql'], { allowRuntimeLoraUpdating: true, apiKeys: ['sk-1'], maxCpuLoras: 3 });
  const auth = { authorization: 'Bearer sk-1' };
  const fresh = await adapterDir(root, 'fresh', 8, 9);
  const noKey = await request(app.server).post('/v1/load_lora_adapter').send({ lora_name: 'fresh', lora_path: fresh }).expect(401);
  assert.equal(noKey.body.error.code, 'invalid_api_key');
  await request(app.server).post('/v1/unload_lora_adapter').send({ lora_name: 'sql' }).expect(401);

  const loaded = await request(app.server).post('/v1/load_lora_adapter').set(auth).send({ lora_name: 'fresh', lora_path: fresh }).expect(200);
  assert.equal(loaded.text, "Success: LoRA adapter 'fresh' added successfully.");
  assert.deepEqual(adapters.added.at(-1), [2, fresh]);
  const models = await request(app.server).get('/v1/models').set(auth).expect(200);
  assert.deepEqual(models.body.data.map((m: { id: string }) => m.id), [MODEL, 'sql', 'fresh']);
  await request(app.server).post('/v1/completions').set(auth).send({ model: 'fresh', prompt: 'x', max_tokens: 1 }).expect(200);
  assert.equal(spy.submitted.at(-1)!.adapter, 2);

  const refused = async (body: Record<string, unknown>, status: number, code: string, param: string, message: RegExp) => {
    const res = await request(app.server).post('/v1/load_lora_adapter').set(auth).send(body).expect(status);
    assert.equal(res.body.error.code, code, JSON.stringify(body));
    assert.equal(res.body.error.param, param);
    assert.match(res.body.error.message, message);
  };
  await refused({ lora_name: 'fresh', lora_path: fresh }, 400, 'invalid_value', 'lora_name', /the LoRA adapter `fresh` has already been loaded/);
  await refused({ lora_name: MODEL, lora_path: fresh }, 400, 'invalid_value', 'lora_name', /is the base model's/);
  await refused({ lora_name: 'gone', lora_path: path.join(root, 'missing') }, 400, 'invalid_value', 'lora_path', /missing: LoRA adapter folder does not exist/);
  const big = await adapterDir(root, 'big', 32);
  await refused({ lora_name: 'big', lora_path: big }, 400, 'invalid_value', 'lora_path', /rank r = 32 is over the maximum LoRA rank 16/);
  await refused({ lora_name: 'x' }, 400, 'missing_required_parameter', 'lora_path', /`lora_path`/);
  await refused({ lora_path: fresh }, 400, 'missing_required_parameter', 'lora_name', /`lora_name`/);
  await request(app.server).post('/v1/load_lora_adapter').set(auth).send('nonsense').set('content-type', 'application/json').expect(400);
  assert.equal((await request(app.server).get('/v1/models').set(auth)).body.data.length, 3, 'nothing refused was registered');

  const unloaded = await request(app.server).post('/v1/unload_lora_adapter').set(auth).send({ lora_name: 'fresh' }).expect(200);
  assert.equal(unloaded.text, "Success: LoRA adapter 'fresh' removed successfully.");
  assert.deepEqual(adapters.removed, [2]);
  const again = await request(app.server).post('/v1/unload_lora_adapter').set(auth).send({ lora_name: 'fresh' }).expect(404);
  assert.equal(again.body.error.code, 'model_not_found');
  assert.equal(again.body.error.param, 'lora_name');
  const gone = await request(app.server).post('/v1/completions').set(auth).send({ model: 'fresh', prompt: 'x' }).expect(404);
  assert.equal(gone.body.error.code, 'model_not_found');
  await request(app.server).get('/v1/models/fresh').set(auth).expect(404);
  await request(app.server).post('/v1/unload_lora_adapter').set(auth).send({}).expect(400);

  // A name unloaded may be loaded again: a new id, never the old one.
  await request(app.server).post('/v1/load_lora_adapter').set(auth).send({ lora_name: 'fresh', lora_path: fresh }).expect(200);
  assert.deepEqual(adapters.added.at(-1), [3, fresh]);
});

test('unloading an adapter while its request streams: the stream completes, new requests get 404, the engine drops it after', async (t) => {
  // 200 steps of at least 5 ms: the stream outlasts what the test does meanwhile, however loaded the machine.
  const { app, adapters } = await serveLora(t, ['sql'], { allowRuntimeLoraUpdating: true }, { worker: true, runner: { stepDelayMs: 5 } });
  const port = await listen(app);
  const stream = openStream(port, { model: 'sql', prompt: 'x', max_tokens: 200 });
  assert.equal(await stream.status, 200);
  await waitFor(() => stream.text().includes('"text"'), 30_000, 'the first token');
  await request(app.server).post('/v1/unload_lora_adapter').send({ lora_name: 'sql' }).expect(200);
  assert.deepEqual(adapters.removed, [], 'in use: the engine keeps it');
  await request(app.server).post('/v1/completions').send({ model: 'sql', prompt: 'x' }).expect(404);
  const events = parseSse(await stream.done);
  assert.equal(events.at(-1), '[DONE]');
  const finish = events.slice(0, -1).map((e) => (e as { choices: Array<{ finish_reason: string | null }> }).choices[0]?.finish_reason).filter(Boolean);
  assert.deepEqual(finish, ['length'], 'all 200 tokens');
  await waitFor(() => adapters.removed.length === 1, 30_000, 'the removal');
  assert.deepEqual(adapters.removed, [1]);
});

test('metrics: vllm:lora_requests_info names the adapters of running and waiting requests; gpt2_lora_requests_total counts per adapter', async (t) => {
  // One adapter per batch: a request for a second adapter waits for the first's to end.
  const { app, engine } = await serveLora(t, ['sql', 'chat'], { maxLoras: 1, maxCpuLoras: 2 }, { worker: true, runner: { stepDelayMs: 5 } });
  const idle = await request(app.server).get('/metrics').expect(200);
  assert.match(idle.text, /^vllm:lora_requests_info\{max_lora="1",running_lora_adapters="",waiting_lora_adapters=""\} 1700000000$/m);

  const port = await listen(app);
  const first = openStream(port, { model: 'sql', prompt: 'x', max_tokens: 200 });
  await waitFor(() => first.text().includes('"text"'), 30_000, 'sql running');
  const second = openStream(port, { model: 'chat', prompt: 'y', max_tokens: 2 });
  await waitFor(() => engine.stats().adapters.some((a) => a.waiting > 0), 30_000, 'chat waiting');
  const busy = await request(app.server).get('/metrics').expect(200);
  const series = busy.text.split('\n').filter((l) => l.startsWith('vllm:lora_requests_info'));
  assert.deepEqual(series, ['vllm:lora_requests_info{max_lora="1",running_lora_adapters="sql",waiting_lora_adapters="chat"} 1700000000'], 'one series at a time');
  await Promise.all([first.done, second.done]);
  await request(app.server).post('/v1/completions').send({ model: 'sql', prompt: 'z', max_tokens: 1 }).expect(200);
  await request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'z', max_tokens: 1 }).expect(200);
  const after = await request(app.server).get('/metrics').expect(200);
  assert.match(after.text, /^gpt2_lora_requests_total\{adapter="sql"\} 2$/m);
  assert.match(after.text, /^gpt2_lora_requests_total\{adapter="chat"\} 1$/m);
  assert.doesNotMatch(after.text, /adapter="tiny-model"/);
});

test('without --enable-lora there are no LoRA metrics', async (t) => {
  const engine = await startTestEngine();
  const app = makeApp(engine);
  t.after(async () => {
    await app.close();
    await engine.shutdown();
  });
  await app.ready();
  const res = await request(app.server).get('/metrics').expect(200);
  assert.doesNotMatch(res.text, /lora/);
});

test('--max-cpu-loras: the least recently used idle adapter leaves the engine; it is read again, under a new id, when asked for', async (t) => {
  const { app, spy, adapters, dirs } = await serveLora(t, ['sql', 'chat', 'code'], { maxLoras: 1, maxCpuLoras: 2 });
  assert.deepEqual(adapters.added, [
    [1, dirs.sql],
    [2, dirs.chat],
  ], 'the first --max-cpu-loras at start');
  const complete = (model: string) => request(app.server).post('/v1/completions').send({ model, prompt: 'x', max_tokens: 1 }).expect(200);
  await complete('chat');
  await complete('code');
  assert.deepEqual(adapters.added.at(-1), [3, dirs.code]);
  assert.deepEqual(adapters.removed, [1], 'sql: least recently used');
  assert.equal(spy.submitted.at(-1)!.adapter, 3);
  await complete('sql');
  assert.deepEqual(adapters.added.at(-1), [4, dirs.sql], 'read again, new id');
  assert.deepEqual(adapters.removed, [1, 2], 'chat was used before code');
  assert.equal(spy.submitted.at(-1)!.adapter, 4);
});

test('--max-cpu-loras: with every adapter in use the limit is exceeded for a while, and the surplus leaves as requests end', async (t) => {
  const { app, engine, adapters } = await serveLora(t, ['sql', 'chat'], { maxLoras: 1, maxCpuLoras: 1 }, { worker: true, runner: { stepDelayMs: 5 } });
  assert.deepEqual(adapters.added.map(([id]) => id), [1]);
  const port = await listen(app);
  const first = openStream(port, { model: 'sql', prompt: 'x', max_tokens: 200 });
  await waitFor(() => first.text().includes('"text"'), 30_000, 'sql running');
  const second = openStream(port, { model: 'chat', prompt: 'y', max_tokens: 2 });
  await waitFor(() => engine.stats().adapters.some((a) => a.adapter === 2 && a.waiting > 0), 30_000, 'chat waiting');
  assert.deepEqual(adapters.added.map(([id]) => id), [1, 2]);
  assert.deepEqual(adapters.removed, [], 'sql is in use: both stay');
  await first.done;
  await waitFor(() => adapters.removed.length > 0, 30_000, 'sql leaving');
  assert.deepEqual(adapters.removed, [1], 'sql, idle now, leaves; chat is in use');
  await second.done;
  assert.deepEqual(adapters.removed, [1], 'one in memory: nothing more leaves');
});

test('an adapter whose folder went away since start is a clean 500 for its requests, the reason in the log; the rest serve on', async (t) => {
  const { logger, lines } = memoryLogger();
  const { app, dirs } = await serveLora(t, ['sql', 'chat'], { maxCpuLoras: 1 }, {}, { logger });
  rmSync(dirs.chat!, { recursive: true });
  const res = await request(app.server).post('/v1/completions').send({ model: 'chat', prompt: 'x', max_tokens: 1 }).expect(500);
  assert.deepEqual(res.body.error, { message: 'The LoRA adapter `chat` could not be read from its folder', type: 'server_error', param: null, code: 'internal_error' });
  const logged = lines.find((l) => l.code === 'internal_error');
  assert.match(String(logged?.cause), /chat: LoRA adapter folder does not exist/);
  assert.equal(app.serving.inflightRequests, 0, 'admission released');
  await request(app.server).post('/v1/completions').send({ model: 'sql', prompt: 'x', max_tokens: 1 }).expect(200);
});

/** Adapter reads the test finishes by hand (AppOptions.readLoraAdapter): a slow disk, or a failing one. */
function handReads(): { reads: Array<{ dir: string; finish: (error?: Error) => void }>; read: (dir: string) => Promise<LoraAdapter> } {
  const reads: Array<{ dir: string; finish: (error?: Error) => void }> = [];
  const read = async (dir: string) => {
    const config = readGpt2Config(await tinyModel());
    return new Promise<LoraAdapter>((resolve, reject) =>
      reads.push({ dir, finish: (error) => (error ? reject(error) : resolve(readLoraAdapter(dir, config, { maxRank: 16 }))) }),
    );
  };
  return { reads, read };
}

test('an adapter read again loads off the HTTP thread: the server answers meanwhile, every request for it waits for the one read, then runs', async (t) => {
  const { reads, read } = handReads();
  const { app, spy, adapters, dirs } = await serveLora(t, ['sql', 'chat', 'code'], { maxCpuLoras: 2 }, {}, { readLoraAdapter: read });
  assert.deepEqual(adapters.added, [[1, dirs.sql], [2, dirs.chat]], 'code was only checked at start');
  const base = `http://127.0.0.1:${await listen(app)}`;
  const complete = (model: string) => request(base).post('/v1/completions').send({ model, prompt: 'x', max_tokens: 2 });
  const waiting = [complete('code').then((r) => r), complete('code').then((r) => r)];
  await waitFor(() => reads.length === 1, 30_000, 'the read');
  // Meanwhile (sql, least recently used and idle, made room for code) the server serves on.
  await request(base).get('/health').expect(200);
  await complete(MODEL).expect(200);
  await complete('chat').expect(200);
  assert.equal(reads.length, 1, 'one read for both requests');
  assert.ok(!spy.submitted.some((s) => s.adapter === 3), 'no request for code reaches the engine before code does');
  reads[0]!.finish();
  for (const res of await Promise.all(waiting)) assert.equal(res.status, 200);
  assert.deepEqual(adapters.added.at(-1), [3, dirs.code]);
  assert.deepEqual(adapters.removed, [1]);
  assert.equal(spy.submitted.filter((s) => s.adapter === 3).length, 2);
});

test('a read again that fails is a clean 500 for the requests that waited for it, and the next request reads the folder again', async (t) => {
  const { reads, read } = handReads();
  const { logger, lines } = memoryLogger();
  const { app, adapters, dirs } = await serveLora(t, ['sql', 'chat'], { maxCpuLoras: 1 }, {}, { readLoraAdapter: read, logger });
  const base = `http://127.0.0.1:${await listen(app)}`;
  const complete = (model: string) => request(base).post('/v1/completions').send({ model, prompt: 'x', max_tokens: 1 });
  const failing = complete('chat').then((r) => r);
  await waitFor(() => reads.length === 1, 30_000, 'the read');
  reads[0]!.finish(new Error('the disk is on fire'));
  const res = await failing;
  assert.equal(res.status, 500);
  assert.equal(res.body.error.message, 'The LoRA adapter `chat` could not be read from its folder');
  assert.match(String(lines.find((l) => l.code === 'internal_error')?.cause), /the disk is on fire/);
  assert.equal(app.serving.inflightRequests, 0, 'admission released');
  const again = complete('chat').then((r) => r);
  await waitFor(() => reads.length === 2, 30_000, 'the second read');
  reads[1]!.finish();
  assert.equal((await again).status, 200);
  assert.deepEqual(adapters.added.at(-1), [3, dirs.chat], 'the failed read left id 2 unused; the engine never had it');
});

test('unloading an adapter while it is read again: a request gone meanwhile leaves nothing behind, new requests get 404, the engine gets it and drops it', async (t) => {
  const { reads, read } = handReads();
  const { app, adapters, dirs } = await serveLora(t, ['sql', 'chat'], { maxCpuLoras: 1, allowRuntimeLoraUpdating: true }, {}, { readLoraAdapter: read });
  const port = await listen(app);
  // A client that asks for chat and leaves while chat is read.
  const gone = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' } });
  gone.on('error', () => {});
  gone.end(JSON.stringify({ model: 'chat', prompt: 'x', max_tokens: 1 }));
  await waitFor(() => reads.length === 1, 30_000, 'the read');
  await request(app.server).post('/v1/unload_lora_adapter').send({ lora_name: 'chat' }).expect(200);
  await request(app.server).post('/v1/completions').send({ model: 'chat', prompt: 'x' }).expect(404);
  gone.destroy();
  await waitFor(() => app.serving.inflightRequests === 0, 30_000, 'the request over');
  assert.deepEqual(adapters.removed, [1], 'sql made room for chat; chat\'s removal waits for its read');
  reads[0]!.finish();
  await waitFor(() => adapters.removed.length === 2, 30_000, 'the removal');
  assert.deepEqual(adapters.added.at(-1), [2, dirs.chat]);
  assert.deepEqual(adapters.removed, [1, 2], 'added, then removed: the engine holds nothing for it');
});
