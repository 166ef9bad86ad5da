// The playground's serving side (the page itself runs in test/playground-browser.test.ts): its
// files at / and /playground/ with a strict content security policy, nothing else reachable
// through them, the same bytes with or without an API key, --no-playground; and the websocket's
// API key as a subprotocol, the way a browser must send it.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { ConfigError, loadConfig } from '../src/config.js';
import { selectWebsocketProtocol, WS_BEARER_PROTOCOL_PREFIX } from '../src/server/auth.js';
import { playgroundDir, playgroundRoutes } from '../src/server/routes/playground.js';
import Fastify from 'fastify';
import { MODEL, memoryLogger, serveTest } from './helpers/serving.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FILES = path.join(ROOT, 'playground');
/** The plain subprotocol the playground offers beside the key one (the server selects it). */
const WS_PROTOCOL = /^const WS_PROTOCOL = '([^']+)';$/m.exec(readFileSync(path.join(FILES, 'app.js'), 'utf8'))![1]!;
const KEY = 'sk-play ground/ü'; // not a token as it is: the subprotocol must carry it encoded

const bearer = (key: string) => `${WS_BEARER_PROTOCOL_PREFIX}${Buffer.from(key, 'utf8').toString('base64url')}`;

test('the playground setting: on by default; --no-playground or GPT2_PLAYGROUND=false turns it off', () => {
  assert.equal(loadConfig([], {}).playground, true);
  assert.equal(loadConfig(['--no-playground'], {}).playground, false);
  for (const off of ['false', '0', 'no', 'off']) assert.equal(loadConfig([], { GPT2_PLAYGROUND: off }).playground, false, off);
  assert.equal(loadConfig(['--playground'], { GPT2_PLAYGROUND: 'false' }).playground, true, 'the flag wins over the environment');
  assert.throws(() => loadConfig([], { GPT2_PLAYGROUND: 'maybe' }), (e: Error) => e instanceof ConfigError && /^--playground \/ GPT2_PLAYGROUND: /.test(e.message));
  assert.throws(() => loadConfig(['--playground', '--no-playground'], {}), ConfigError);
  assert.throws(() => loadConfig(['--playground=yes'], {}), ConfigError);
});

test('the playground folder is found from src/ (tsx) and from dist/src/ (npm start, the image)', () => {
  assert.equal(playgroundDir(path.join(ROOT, 'src', 'server', 'routes')), FILES);
  assert.equal(playgroundDir(path.join(ROOT, 'dist', 'src', 'server', 'routes')), FILES);
  assert.equal(playgroundDir(), FILES);
});

test('/ serves the page and /playground/ its script and style, under a strict CSP; nothing else is reachable there', async (t) => {
  const { app } = await serveTest(t);
  const page = await app.inject({ method: 'GET', url: '/' });
  assert.equal(page.statusCode, 200);
  assert.match(String(page.headers['content-type']), /^text\/html/);
  assert.equal(page.body, readFileSync(path.join(FILES, 'index.html'), 'utf8'));
  const csp = String(page.headers['content-security-policy']);
  for (const directive of ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) assert.ok(csp.includes(directive), csp);
  assert.equal(page.headers['x-content-type-options'], 'nosniff');

  const script = await app.inject({ method: 'GET', url: '/playground/app.js' });
  assert.equal(script.statusCode, 200);
  assert.match(String(script.headers['content-type']), /javascript/);
  assert.equal(script.body, readFileSync(path.join(FILES, 'app.js'), 'utf8'));
  const style = await app.inject({ method: 'GET', url: '/playground/style.css' });
  assert.equal(style.statusCode, 200);
  assert.match(String(style.headers['content-type']), /^text\/css/);

  for (const url of ['/playground/', '/playground/../package.json', '/playground/%2e%2e/package.json', '/playground/..%2fpackage.json', '/playground/nope.js']) {
    const res = await app.inject({ method: 'GET', url });
    assert.equal(res.statusCode, 404, url);
    assert.equal(res.json().error.code, 'not_found', url);
  }
  // The page's policy stays on the page: the API's answers do not carry it.
  const health = await app.inject({ method: 'GET', url: '/health' });
  assert.equal(health.headers['content-security-policy'], undefined);
});

test('with an API key the page is the same file (no key or server detail in it) while the API still wants the key', async (t) => {
  const { app } = await serveTest(t, { config: { apiKeys: [KEY] } });
  for (const [url, file] of [['/', 'index.html'], ['/playground/app.js', 'app.js'], ['/playground/style.css', 'style.css']] as const) {
    const res = await app.inject({ method: 'GET', url });
    assert.equal(res.statusCode, 200, url);
    assert.equal(res.body, readFileSync(path.join(FILES, file), 'utf8'), url);
  }
  assert.equal((await app.inject({ method: 'GET', url: '/v1/models' })).statusCode, 401);
});

test('--no-playground: / and /playground/ are 404', async (t) => {
  const { app } = await serveTest(t, { config: { playground: false } });
  for (const url of ['/', '/playground/app.js']) {
    const res = await app.inject({ method: 'GET', url });
    assert.equal(res.statusCode, 404, url);
    assert.equal(res.json().error.code, 'not_found');
  }
});

test('missing playground files: a warning, and the rest of the server still starts', async (t) => {
  const log = memoryLogger();
  const app = Fastify({ loggerInstance: log.logger });
  t.after(() => app.close());
  app.register(playgroundRoutes, { dir: path.join(ROOT, 'no-such-folder') });
  app.get('/health', async () => ({ ok: true }));
  await app.ready();
  assert.equal((await app.inject({ method: 'GET', url: '/' })).statusCode, 404);
  assert.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200);
  assert.ok(log.lines.some((l) => l.level === 40 && /playground files are missing/.test(String(l.msg))), JSON.stringify(log.lines));
});

/** Opens the websocket with these subprotocols; resolves with the selected one, or rejects with the HTTP status. */
function openWith(url: string, protocols: string[], headers: Record<string, string> = {}): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, { headers });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (req, res) => {
      req.destroy();
      reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode }));
    });
    ws.once('error', reject);
  });
}

async function listen(t: { after: (fn: () => Promise<unknown>) => void }, apiKey?: string) {
  const log = memoryLogger();
  const { app } = await serveTest(t, { config: apiKey ? { apiKeys: [apiKey] } : {}, app: { logger: log.logger } });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  return { port, url: `ws://127.0.0.1:${port}/v1/completions/ws`, lines: log.lines };
}

test('a browser sends the websocket API key as a subprotocol: it is checked like the header and never echoed', async (t) => {
  const { port, url, lines } = await listen(t, KEY);
  const ws = await openWith(url, [WS_PROTOCOL, bearer(KEY)]);
  t.after(() => ws.terminate());
  assert.equal(ws.protocol, WS_PROTOCOL);
  const done = new Promise<Record<string, unknown>>((resolve) => {
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data)) as Record<string, unknown>;
      if (frame.type === 'completion.done' || frame.type === 'error') resolve(frame);
    });
  });
  ws.send(JSON.stringify({ type: 'completion.create', id: 'a', model: MODEL, prompt: 'Hi', max_tokens: 2 }));
  assert.equal((await done).type, 'completion.done');

  const keyFirst = await openWith(url, [bearer(KEY), WS_PROTOCOL]);
  assert.equal(keyFirst.protocol, WS_PROTOCOL, 'the key offered first is still not the selected protocol');
  keyFirst.terminate();

  const refused = (status: number) => (err: { status?: number }) => err.status === status;
  await assert.rejects(openWith(url, [WS_PROTOCOL]), refused(401));
  await assert.rejects(openWith(url, [WS_PROTOCOL, bearer('sk-wrong')]), refused(401));
  await assert.rejects(openWith(url, [WS_PROTOCOL, `${WS_BEARER_PROTOCOL_PREFIX}!!`]), refused(401), 'not base64url');
  await assert.rejects(openWith(url, [WS_PROTOCOL, WS_BEARER_PROTOCOL_PREFIX]), refused(401), 'empty key');
  // The header still works, with or without the plain subprotocol.
  (await openWith(url, [], { authorization: `Bearer ${KEY}` })).terminate();
  (await openWith(url, [WS_PROTOCOL], { authorization: `Bearer ${KEY}` })).terminate();

  // The subprotocol counts on a websocket upgrade only, not on plain requests.
  const status = await new Promise<number>((resolve, reject) => {
    const req = http.request({ port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json', 'sec-websocket-protocol': `${WS_PROTOCOL}, ${bearer(KEY)}` } }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end(JSON.stringify({ model: MODEL, prompt: 'Hi', max_tokens: 1 }));
  });
  assert.equal(status, 401);

  const logged = JSON.stringify(lines);
  assert.ok(!logged.includes(KEY) && !logged.includes(bearer(KEY)), 'the key is in no log line');
});

test('without an API key a client that offers the subprotocol gets it selected (browsers fail the handshake otherwise)', async (t) => {
  const { url } = await listen(t);
  const ws = await openWith(url, [WS_PROTOCOL]);
  assert.equal(ws.protocol, WS_PROTOCOL);
  ws.terminate();
  assert.equal(selectWebsocketProtocol(new Set([bearer(KEY), 'other', WS_PROTOCOL])), 'other');
  assert.equal(selectWebsocketProtocol(new Set([bearer(KEY)])), false, 'the key is never the selected protocol');
});
