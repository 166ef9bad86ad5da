// The websocket protocol on /v1/completions/ws, on the real engine: frames, multiplexing, cancel,
// per-request errors, malformed messages, close-cancels-all, ping/pong keep-alive, flow control,
// frame limits, floods, auth.
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import WebSocket from 'ws';
import type { ServerConfig } from '../src/config.js';
import { MODEL, greedy, gpt2Tokenizer, memoryLogger, serveTest, spyOn, waitFor, type EngineSetup } from './helpers/serving.js';

type Frame = {
  type: string;
  id?: string | null;
  completion_id?: string;
  choices?: Array<{ text: string; index: number; finish_reason: string | null; logprobs: unknown }>;
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  cancelled?: boolean;
  error?: { message: string; type: string; param: string | null; code: string };
  [key: string]: unknown;
};

class Client {
  readonly frames: Frame[] = [];
  closed = false;
  closeCode: number | null = null;
  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => this.frames.push(JSON.parse(String(data)) as Frame));
    ws.on('close', (code) => {
      this.closed = true;
      this.closeCode = code;
    });
    ws.on('error', () => {});
  }

  static connect(url: string, options: WebSocket.ClientOptions = {}): Promise<Client> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, options);
      ws.once('open', () => resolve(new Client(ws)));
      ws.once('unexpected-response', (req, res) => {
        req.destroy();
        reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode }));
      });
      ws.once('error', reject);
    });
  }

  send(message: unknown): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message));
  }

  create(id: string, body: Record<string, unknown>): void {
    this.send({ type: 'completion.create', id, model: MODEL, ...body });
  }

  async frame(pred: (f: Frame) => boolean, timeoutMs = 30_000, what = 'frame'): Promise<Frame> {
    await waitFor(() => this.frames.some(pred), timeoutMs, what);
    return this.frames.find(pred)!;
  }

  /** Waits for the request's terminal frame (done or error) and returns all of its frames. */
  async finished(id: string, timeoutMs = 30_000): Promise<Frame[]> {
    await this.frame((f) => f.id === id && (f.type === 'completion.done' || f.type === 'error'), timeoutMs, `end of ${id}`);
    return this.frames.filter((f) => f.id === id);
  }

  close(): void {
    this.ws.close();
  }
}

function textOf(frames: Frame[], index = 0): string {
  return frames
    .filter((f) => f.type === 'completion.chunk')
    .flatMap((f) => f.choices!)
    .filter((c) => c.index === index)
    .map((c) => c.text)
    .join('');
}

async function serve(t: { after: (fn: () => Promise<unknown>) => void }, setup: EngineSetup = {}, config: Partial<ServerConfig> = {}) {
  const clients: Client[] = [];
  // Registered first so it runs last: the app and engine close after the clients are gone.
  const server = await serveTest(t, { ...setup, config });
  t.after(async () => {
    for (const c of clients) c.ws.terminate();
  });
  const { app, engine } = server;
  const spy = spyOn(engine);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const url = `ws://127.0.0.1:${port}/v1/completions/ws`;
  const connect = async (o: WebSocket.ClientOptions = {}) => {
    const c = await Client.connect(url, o);
    clients.push(c);
    return c;
  };
  return { engine, spy, app, url, connect };
}

test('completion.create streams completion.chunk frames (the SSE chunk) then completion.done with usage', async (t) => {
  const { connect } = await serve(t);
  const c = await connect();
  c.create('req-1', { prompt: 'Hello world', max_tokens: 3, n: 2, temperature: 0 });
  const frames = await c.finished('req-1');
  const chunk = frames[0]!;
  assert.deepEqual(Object.keys(chunk), ['type', 'id', 'completion_id', 'object', 'created', 'model', 'system_fingerprint', 'choices']);
  const { ids, text } = await greedy('Hello world', 3);
  const tok = await gpt2Tokenizer();
  assert.deepEqual(chunk, {
    type: 'completion.chunk',
    id: 'req-1',
    completion_id: 'cmpl-test',
    object: 'text_completion',
    created: 1_700_000_000,
    model: MODEL,
    system_fingerprint: chunk.system_fingerprint,
    choices: [{ text: tok.decode(ids.slice(0, 1)), index: 0, logprobs: null, finish_reason: null }],
  });
  assert.equal(textOf(frames, 0), text);
  assert.equal(textOf(frames, 1), text);
  const finals = frames.filter((f) => f.type === 'completion.chunk' && f.choices![0]!.finish_reason === 'length');
  assert.equal(finals.length, 2);
  assert.deepEqual(frames.at(-1), {
    type: 'completion.done',
    id: 'req-1',
    completion_id: 'cmpl-test',
    usage: { prompt_tokens: 2, completion_tokens: 6, total_tokens: 8 },
  });
});

test('many ids in flight on one socket are multiplexed', async (t) => {
  const { connect } = await serve(t, { worker: true, runner: { stepDelayMs: 3 } });
  const c = await connect();
  c.create('x', { prompt: 'A', max_tokens: 40, temperature: 0 });
  c.create('y', { prompt: 'Hello world', max_tokens: 10, echo: true, temperature: 0 });
  c.create('z', { prompt: ['A', 'Hello world'], max_tokens: 2, temperature: 0 });
  const [x, y, z] = await Promise.all([c.finished('x'), c.finished('y'), c.finished('z')]);
  assert.equal(textOf(x), (await greedy('A', 40)).text);
  assert.equal(textOf(y), 'Hello world' + (await greedy('Hello world', 10)).text);
  assert.equal(textOf(z, 0), (await greedy('A', 2)).text);
  assert.equal(textOf(z, 1), (await greedy('Hello world', 2)).text);
  assert.equal(new Set([x.at(-1)!.completion_id, y.at(-1)!.completion_id, z.at(-1)!.completion_id]).size, 3);
  // The streams really interleaved: y's first chunk came before x was done.
  const firstY = c.frames.findIndex((f) => f.id === 'y' && f.type === 'completion.chunk');
  const doneX = c.frames.findIndex((f) => f.id === 'x' && f.type === 'completion.done');
  assert.ok(firstY < doneX, 'frames of different ids interleave');
});

test('completion.cancel stops the request in the engine and ends it with a cancelled done frame', async (t) => {
  const { spy, engine, connect } = await serve(t, { worker: true, runner: { stepDelayMs: 10 } });
  const c = await connect();
  c.create('long', { prompt: 'A', max_tokens: 500 });
  c.create('other', { prompt: 'A', max_tokens: 5, temperature: 0 });
  await c.frame((f) => f.id === 'long' && f.type === 'completion.chunk');
  c.send({ type: 'completion.cancel', id: 'long' });
  const frames = await c.finished('long');
  const done = frames.at(-1)!;
  assert.equal(done.type, 'completion.done');
  assert.equal(done.cancelled, true);
  assert.ok(done.usage!.completion_tokens < 500);
  assert.ok(spy.cancelled.includes('cmpl-test-0'));
  // The other request and the socket carry on.
  const other = await c.finished('other');
  assert.equal(textOf(other), (await greedy('A', 5)).text);
  assert.ok(!spy.cancelled.includes('cmpl-test1-0'));
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(c.frames.filter((f) => f.id === 'long').length, frames.length, 'nothing after the done frame');
  await waitFor(() => engine.stats().kvBlocksUsed === 0, 30_000, 'memory freed');
});

test('chat.completion.create streams chat.completion.chunk frames on the same socket as completions, and cancels like them', async (t) => {
  const { spy, connect } = await serve(t, { worker: true, runner: { stepDelayMs: 3 } });
  const c = await connect();
  c.send({ type: 'chat.completion.create', id: 'chat', model: MODEL, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 3, n: 2, temperature: 0 });
  c.create('plain', { prompt: 'User: Hello\nAssistant:', max_tokens: 3, temperature: 0 });
  c.send({ type: 'chat.completion.create', id: 'long', model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 500 });
  await c.frame((f) => f.id === 'chat' && f.type === 'chat.completion.done', 30_000, 'chat done');
  const chat = c.frames.filter((f) => f.id === 'chat');
  const plain = await c.finished('plain');
  assert.deepEqual(chat[0], {
    type: 'chat.completion.chunk',
    id: 'chat',
    completion_id: chat[0]!.completion_id,
    object: 'chat.completion.chunk',
    created: 1_700_000_000,
    model: MODEL,
    system_fingerprint: chat[0]!.system_fingerprint,
    choices: [{ index: 0, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }],
  });
  assert.match(String(chat[0]!.completion_id), /^chatcmpl-/);
  const deltas = chat.filter((f) => f.type === 'chat.completion.chunk').flatMap((f) => f.choices as unknown as Array<{ index: number; delta: { content?: string } }>);
  for (const index of [0, 1]) {
    const content = deltas.filter((d) => d.index === index).map((d) => d.delta.content ?? '').join('');
    assert.equal(content, textOf(plain), 'the chat and the completion of its rendered prompt generate the same text');
  }
  assert.deepEqual(Object.keys(chat.at(-1)!), ['type', 'id', 'completion_id', 'usage']);
  assert.equal(chat.at(-1)!.usage!.completion_tokens, 6);

  await c.frame((f) => f.id === 'long' && f.type === 'chat.completion.chunk');
  c.send({ type: 'chat.completion.cancel', id: 'long' });
  await c.frame((f) => f.id === 'long' && f.type === 'chat.completion.done', 5000, 'long cancelled');
  assert.equal(c.frames.find((f) => f.id === 'long' && f.type === 'chat.completion.done')!.cancelled, true);
  assert.ok(spy.cancelled.some((id) => id.startsWith('chatcmpl-')));

  c.send({ type: 'chat.completion.create', id: 'bad', model: MODEL, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:' } }] }] });
  const err = await c.frame((f) => f.id === 'bad');
  assert.equal(err.type, 'error');
  assert.equal(err.error!.code, 'unsupported_parameter');
});

test('cancelling an unknown id is an error frame; the socket stays open', async (t) => {
  const { connect } = await serve(t);
  const c = await connect();
  c.send({ type: 'completion.cancel', id: 'ghost' });
  const err = await c.frame((f) => f.type === 'error');
  assert.deepEqual(err, {
    type: 'error',
    id: 'ghost',
    error: { message: 'No request with id `ghost` is in flight on this socket', type: 'invalid_request_error', param: 'id', code: 'request_not_found' },
  });
  c.create('after', { prompt: 'A', max_tokens: 1 });
  await c.finished('after');
});

test('per-request errors are error frames with the request id and leave the socket open', async (t) => {
  const { connect } = await serve(t, {}, { maxConcurrentRequests: 1 });
  const c = await connect();
  const invalid: Array<[string, Record<string, unknown>]> = [
    ['bad-temp', { prompt: 'A', temperature: 5 }],
    ['bad-model', { prompt: 'A', model: 'gpt-4' }],
    ['too-long', { prompt: Array(1020).fill(11) }],
    ['best-of', { prompt: 'A', best_of: 2 }],
  ];
  const errors = [];
  // One at a time: with a limit of 1, a request is admitted (and counted) before it is validated.
  for (const [id, body] of invalid) {
    c.create(id, body);
    errors.push((await c.finished(id)).at(-1)!);
  }
  c.create('running', { prompt: 'A', max_tokens: 300 });
  await c.frame((f) => f.id === 'running' && f.type === 'completion.chunk');
  c.create('busy', { prompt: 'B' });
  errors.push((await c.finished('busy')).at(-1)!);
  assert.deepEqual(
    errors.map((f) => [f.type, f.id, f.error!.code, f.error!.param]),
    [
      ['error', 'bad-temp', 'invalid_value', 'temperature'],
      ['error', 'bad-model', 'model_not_found', 'model'],
      ['error', 'too-long', 'context_length_exceeded', 'prompt'],
      ['error', 'best-of', 'unsupported_parameter', 'best_of'],
      ['error', 'busy', 'overloaded', null],
    ],
  );
  assert.equal(errors[0]!.error!.message, '`temperature`: must be <= 2');
  assert.equal((await c.finished('running')).at(-1)!.type, 'completion.done');
  c.create('fine', { prompt: 'A', max_tokens: 2, temperature: 0 });
  assert.equal(textOf(await c.finished('fine')), (await greedy('A', 2)).text);
});

test('an error after streaming began ends that id with an error frame', async (t) => {
  const { connect } = await serve(t, { runner: { failRuns: [2] } });
  const c = await connect();
  c.create('e', { prompt: 'Hello world', max_tokens: 10, temperature: 0 });
  const frames = await c.finished('e');
  assert.equal(textOf(frames), (await greedy('Hello world', 2)).text);
  assert.deepEqual(frames.at(-1)!.error, {
    message: 'The engine failed while processing the request',
    type: 'server_error',
    param: null,
    code: 'internal_error',
  });
});

test('malformed messages get error frames (id null when unknown) and the socket stays usable', async (t) => {
  const { connect } = await serve(t);
  const c = await connect();
  c.send('{not json');
  c.send('[1,2]');
  c.send({ type: 'completion.create', model: MODEL, prompt: 'A' });
  c.send({ type: 'completion.create', id: 42, model: MODEL, prompt: 'A' });
  c.send({ type: 'completion.explode', id: 'q' });
  await waitFor(() => c.frames.length >= 5, 30_000, 'five error frames');
  assert.deepEqual(
    c.frames.map((f) => [f.type, f.id, f.error!.code, f.error!.param]),
    [
      ['error', null, 'invalid_json', null],
      ['error', null, 'invalid_value', null],
      ['error', null, 'invalid_value', 'id'],
      ['error', null, 'invalid_value', 'id'],
      ['error', 'q', 'invalid_value', 'type'],
    ],
  );
  assert.equal(c.frames[0]!.error!.message, 'Message is not valid JSON');
  c.create('ok', { prompt: 'A', max_tokens: 1 });
  assert.equal((await c.finished('ok')).at(-1)!.type, 'completion.done');
});

test('reusing an id that is still in flight is an error; the original request continues', async (t) => {
  const { connect } = await serve(t, { worker: true, runner: { stepDelayMs: 5 } });
  const c = await connect();
  c.create('dup', { prompt: 'A', max_tokens: 10, temperature: 0 });
  c.create('dup', { prompt: 'A', max_tokens: 1 });
  const err = await c.frame((f) => f.type === 'error');
  assert.equal(err.error!.code, 'duplicate_id');
  await c.frame((f) => f.id === 'dup' && f.type === 'completion.done');
  assert.equal(textOf(c.frames.filter((f) => f.id === 'dup')), (await greedy('A', 10)).text);
  // Once finished, the id can be used again.
  c.create('dup', { prompt: 'A', max_tokens: 1 });
  await waitFor(() => c.frames.filter((f) => f.id === 'dup' && f.type === 'completion.done').length === 2);
});

test('closing the socket cancels all of its requests in the engine, even those still queued', async (t) => {
  // A batch of two: a's two choices fill it, b's (forked once b runs) wait as one sequence.
  const { spy, engine, connect } = await serve(t, { worker: true, runner: { stepDelayMs: 10 }, engine: { maxNumSeqs: 2 } });
  const c = await connect();
  c.create('a', { prompt: 'A', max_tokens: 500, n: 2 });
  c.create('b', { prompt: 'A', max_tokens: 500, n: 2 });
  await waitFor(() => engine.stats().running === 2 && engine.stats().waiting === 1, 30_000, 'a running, b queued');
  c.close();
  await waitFor(() => spy.cancelled.length === 2, 30_000, 'both cancelled');
  assert.deepEqual([...spy.cancelled].sort(), ['cmpl-test-0', 'cmpl-test1-0']);
  await waitFor(() => engine.stats().running + engine.stats().waiting === 0, 30_000, 'engine idle');
});

test('keep-alive: app-level ping gets pong; protocol pings keep answering clients alive and drop silent ones', async (t) => {
  const { connect } = await serve(t, {}, { wsPingIntervalMs: 40 });
  const alive = await connect();
  alive.send({ type: 'ping', id: 'p1' });
  assert.deepEqual(await alive.frame((f) => f.type === 'pong'), { type: 'pong', id: 'p1' });
  let pings = 0;
  alive.ws.on('ping', () => pings++);
  const silent = await connect({ autoPong: false });
  await waitFor(() => silent.closed, 30_000, 'silent client dropped');
  assert.ok(pings >= 2, `server pinged (${pings})`);
  assert.equal(alive.closed, false);
  alive.create('still', { prompt: 'A', max_tokens: 1 });
  await alive.finished('still');
});

// One 900-token prompt echoed with 20 logprobs to each of 16 choices: ~10 MB of frames before the
// first generated token (see the SSE flow-control tests).
const FLOOD = { prompt: Array(900).fill(11), n: 16, echo: true, logprobs: 20, max_tokens: 100, temperature: 0 };

test('flow control: a client that stops reading pauses its requests in the engine, and after the stall timeout is cut off', async (t) => {
  const hwm = 64 * 1024;
  // The stall clock starts when the send buffer passes the mark, before the engine reports every
  // sequence paused (later on a loaded machine): the timeout leaves seconds between the two.
  const { spy, engine, app, connect } = await serve(t, { worker: true }, { wsHighWaterMark: hwm, stallTimeoutMs: 5000 });
  const c = await connect();
  const socket = (c.ws as unknown as { _socket: import('node:net').Socket })._socket;
  socket.pause();
  c.create('flood', FLOOD);
  await waitFor(() => engine.stats().paused === 16, 15_000, 'every sequence paused in the engine');
  const [serverSide] = [...app.websocketServer.clients];
  assert.ok(serverSide!.bufferedAmount > hwm, 'the pause is due to the send buffer');
  const delivered = () => spy.delivered.get('cmpl-test-0')!.length;
  const atPause = delivered();
  const steps = engine.stats().steps;
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(engine.stats().steps, steps, 'no step runs while the client is not reading');
  assert.ok(delivered() - atPause <= 32, 'output after the pause is bounded by a step or two');
  assert.equal(spy.cancelled.length, 0, 'a pause shorter than the stall timeout cancels nothing');
  // ... and a client that never resumes is cut off: its request is cancelled in the engine.
  await waitFor(() => spy.cancelled.includes('cmpl-test-0'), 10_000, 'stalled request cancelled');
  await waitFor(() => engine.stats().running === 0, 30_000, 'engine idle');
  assert.equal(engine.stats().kvBlocksUsed, 0);
  socket.resume();
  await waitFor(() => c.closed, 30_000, 'socket closed by the server');
  assert.ok(!c.frames.some((f) => f.type === 'completion.done'), 'the flood never completed');
});

test('flow control: a slow reader that resumes before the stall timeout gets everything', async (t) => {
  const { spy, engine, connect } = await serve(t, { worker: true }, { wsHighWaterMark: 64 * 1024, stallTimeoutMs: 20_000 });
  const c = await connect();
  const socket = (c.ws as unknown as { _socket: import('node:net').Socket })._socket;
  socket.pause();
  c.create('slow', FLOOD);
  await waitFor(() => engine.stats().paused === 16, 15_000, 'paused');
  socket.resume();
  const frames = await c.finished('slow', 30_000);
  assert.equal(frames.at(-1)!.type, 'completion.done');
  assert.equal(frames.at(-1)!.usage!.completion_tokens, 1600);
  const tok = await gpt2Tokenizer();
  const want = tok.decode(FLOOD.prompt) + (await greedy(FLOOD.prompt, 100)).text;
  for (let i = 0; i < 16; i++) assert.equal(textOf(frames, i), want);
  assert.equal(spy.cancelled.length, 0);
});

test('a flood of completion.create frames from a client that does not read is bounded: excess is refused, reading stops', async (t) => {
  const hwm = 64 * 1024;
  const { spy, engine, app, connect } = await serve(t, { worker: true }, { wsHighWaterMark: hwm, maxConcurrentRequests: 8, stallTimeoutMs: 2000 });
  const c = await connect();
  const socket = (c.ws as unknown as { _socket: import('node:net').Socket })._socket;
  socket.pause();
  // 40,000 requests whose refusals (~250 bytes each, 10 MB) outgrow the loopback socket buffers.
  const sent = 40_000;
  for (let i = 0; i < sent; i++) c.create(`f${i}`, { prompt: 'flood', max_tokens: 5 });
  const [serverSide] = await (async () => {
    await waitFor(() => app.websocketServer.clients.size === 1, 30_000, 'server socket');
    return [...app.websocketServer.clients];
  })();
  // The server stops reading once its send buffer passes the mark, so it stops producing too.
  // (The client reads nothing, so it only learns of the close when it reads again: watch the server.)
  let peak = 0;
  await waitFor(
    () => {
      peak = Math.max(peak, serverSide!.bufferedAmount);
      return app.websocketServer.clients.size === 0;
    },
    20_000,
    'the flooder to be cut off after the stall timeout',
  );
  assert.ok(peak > hwm, `the send buffer passed the mark (peak ${peak})`);
  assert.ok(peak < hwm + 512 * 1024, `and stayed within the mark plus one read batch (peak ${peak} bytes)`);
  assert.ok(spy.submitted.length < sent / 100, `most of the flood was refused or never read (${spy.submitted.length} submitted)`);
  await waitFor(() => engine.stats().running + engine.stats().waiting === 0, 30_000, 'engine idle');
});

test('a frame over --max-body-bytes closes the socket with 1009', async (t) => {
  const { connect } = await serve(t, {}, { maxBodyBytes: 4096 });
  const c = await connect();
  c.create('big', { prompt: 'x'.repeat(10_000) });
  await waitFor(() => c.closed, 30_000, 'socket closed');
  assert.equal(c.closeCode, 1009);
});

test('a frame far over --max-body-bytes, still being sent, gets close code 1009 (not a reset) and logs no server error', async (t) => {
  // The server refuses the frame from its header while the client is still sending it: the close
  // frame must reach the client before the socket goes, and a client's mistake is not an error.
  const { lines, logger } = memoryLogger();
  const { app } = await serveTest(t, { config: { maxBodyBytes: 4096 }, app: { logger } });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  for (let i = 0; i < 5; i++) {
    const c = await Client.connect(`ws://127.0.0.1:${port}/v1/completions/ws`);
    t.after(() => c.ws.terminate());
    c.create('big', { prompt: 'x'.repeat(4 * 2 ** 20) });
    await waitFor(() => c.closed, 30_000, 'socket closed');
    assert.equal(c.closeCode, 1009, `attempt ${i}`);
  }
  const errors = lines.filter((l) => (l.level as number) >= 50);
  assert.deepEqual(errors, []);
  assert.ok(lines.some((l) => l.msg === 'websocket closed after a protocol error by the client'));
});

test("a browser page of another origin cannot open the websocket (403); the server's own pages, --allowed-origins and non-browser clients can", async (t) => {
  const { url, connect } = await serve(t);
  const host = new URL(url).host;
  await assert.rejects(Client.connect(url, { origin: 'http://evil.example' }), (err: { status?: number }) => err.status === 403);
  await assert.rejects(Client.connect(url, { origin: 'null' }), (err: { status?: number }) => err.status === 403, 'a sandboxed page');
  await assert.rejects(Client.connect(url, { origin: `http://${host}.evil.example` }), (err: { status?: number }) => err.status === 403);
  const works = async (c: Client) => {
    c.create('o', { prompt: 'A', max_tokens: 1 });
    assert.equal((await c.finished('o')).at(-1)!.type, 'completion.done');
  };
  await works(await connect({ origin: `http://${host}` })); // the playground, served by this server
  await works(await connect()); // no Origin: not a browser
  const listed = await serve(t, {}, { allowedOrigins: ['https://app.example'] });
  await works(await listed.connect({ origin: 'https://app.example' }));
  await assert.rejects(Client.connect(listed.url, { origin: 'https://other.example' }), (err: { status?: number }) => err.status === 403);
  const any = await serve(t, {}, { allowedOrigins: ['*'] });
  await works(await any.connect({ origin: 'http://evil.example' }));
});

test('over websockets too, each API key is a tenant: its prefix cache is its own', async (t) => {
  const { connect } = await serve(t, {}, { apiKeys: ['sk-a', 'sk-b'], enablePromptTokensDetails: true });
  const prompt = Array.from({ length: 40 }, (_, i) => 4000 + i);
  const cachedOf = async (c: Client, id: string) => {
    c.create(id, { prompt, max_tokens: 2, temperature: 0 });
    const done = (await c.finished(id)).at(-1)! as { usage?: { prompt_tokens_details?: { cached_tokens: number } } };
    return done.usage?.prompt_tokens_details?.cached_tokens ?? 0;
  };
  const a = await connect({ headers: { authorization: 'Bearer sk-a' } });
  const b = await connect({ headers: { authorization: 'Bearer sk-b' } });
  assert.equal(await cachedOf(a, 'a1'), 0);
  assert.equal(await cachedOf(a, 'a2'), 32, 'a tenant hits its own cache');
  assert.equal(await cachedOf(b, 'b1'), 0, 'the other tenant does not');
  assert.equal(await cachedOf(b, 'b2'), 32);
});

test('the websocket requires the API key when one is set', async (t) => {
  const { url, connect } = await serve(t, {}, { apiKeys: ['sk-ws'] });
  await assert.rejects(Client.connect(url), (err: { status?: number }) => err.status === 401);
  await assert.rejects(Client.connect(url, { headers: { authorization: 'Bearer nope' } }), (err: { status?: number }) => err.status === 401);
  const c = await connect({ headers: { authorization: 'Bearer sk-ws' } });
  c.create('k', { prompt: 'A', max_tokens: 1 });
  assert.equal((await c.finished('k')).at(-1)!.type, 'completion.done');
});

test('new requests on a socket get a 503-style error frame while the server drains', async (t) => {
  const { app, connect } = await serve(t, { worker: true, runner: { stepDelayMs: 10 } });
  const c = await connect();
  c.create('before', { prompt: 'A', max_tokens: 20, temperature: 0 });
  await c.frame((f) => f.id === 'before' && f.type === 'completion.chunk');
  const drained = app.drain({ timeoutMs: 3000 });
  c.create('during', { prompt: 'A', max_tokens: 1 });
  const err = (await c.finished('during')).at(-1)!;
  assert.equal(err.error!.code, 'shutting_down');
  const before = await c.finished('before');
  assert.equal(textOf(before), (await greedy('A', 20)).text);
  await drained;
});

test('drain closes sockets with 1001 and does not wait on a client that stopped reading', async (t) => {
  const { app, connect } = await serve(t);
  const polite = await connect();
  const stuck = await connect();
  (stuck.ws as unknown as { _socket: import('node:net').Socket })._socket.pause();
  const started = Date.now();
  await app.drain({ timeoutMs: 200 });
  assert.ok(Date.now() - started < 5000, `drained in ${Date.now() - started} ms`);
  await waitFor(() => polite.closed, 30_000, 'polite client closed');
  assert.equal(polite.closeCode, 1001);
});
