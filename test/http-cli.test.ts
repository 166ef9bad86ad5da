// The serving CLI (src/main.ts): --help, config errors, default model resolution, and a real
// process that drains on SIGTERM and exits 0 (engine replaced by the fake).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { SETTINGS } from '../src/config.js';
import { resolveModelDir } from '../src/main.js';
import { parseSse } from './helpers/fake-engine.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MAIN = path.join(ROOT, 'src', 'main.ts');

function runMain(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, ...env },
    encoding: 'utf8',
    timeout: 30_000,
  });
}

test('--help lists every setting and exits 0', () => {
  const res = runMain(['serve', '--help']);
  assert.equal(res.status, 0, res.stderr);
  assert.match(res.stdout, /^Usage:/);
  for (const spec of Object.values(SETTINGS)) {
    assert.ok(res.stdout.includes(`--${spec.flag}`), `--${spec.flag} in help`);
    assert.ok(res.stdout.includes(spec.env), `${spec.env} in help`);
  }
  assert.match(res.stdout, /npm run download -- openai-community\/gpt2/);
});

test('a bad setting is one line on stderr and exit 2; so is an unknown command', () => {
  const bad = runMain(['--port', 'eighty']);
  assert.equal(bad.status, 2);
  assert.equal(bad.stderr.trim().split('\n').length, 1);
  assert.match(bad.stderr, /^error: --port \/ GPT2_PORT: /);
  const env = runMain([], { GPT2_MAX_NUM_SEQS: '0' });
  assert.equal(env.status, 2);
  assert.match(env.stderr, /^error: --max-num-seqs \/ GPT2_MAX_NUM_SEQS/);
  const unknownFlag = runMain(['--nope']);
  assert.equal(unknownFlag.status, 2);
  const cmd = runMain(['launch']);
  assert.equal(cmd.status, 2);
  assert.match(cmd.stderr, /unknown command "launch"/);
});

function captureLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { lines, logger: pino({ level: 'info' }, sink) };
}

test('model resolution: --model, else models/gpt2 if exported, else the tiny model (created once, with a warning)', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'gpt2-serve-cli-'));
  const cwd = process.cwd();
  process.chdir(dir);
  t.after(() => {
    process.chdir(cwd);
    rmSync(dir, { recursive: true, force: true });
  });
  const made: string[] = [];
  const makeTiny = async ({ out }: { out: string }) => {
    made.push(out);
    mkdirSync(out, { recursive: true });
    writeFileSync(path.join(out, 'manifest.json'), '{}');
  };
  const tinyDir = path.join(dir, 'models', 'tiny-random-gpt2');

  const first = captureLogger();
  assert.equal(await resolveModelDir(undefined, first.logger, makeTiny), tinyDir);
  assert.deepEqual(made, [tinyDir]);
  const warn = first.lines.find((l) => l.level === 40);
  assert.ok(warn, 'warned');
  assert.match(String(warn.msg), /noise/);
  assert.match(String(warn.msg), /npm run download -- openai-community\/gpt2/);

  const second = captureLogger();
  assert.equal(await resolveModelDir(undefined, second.logger, makeTiny), tinyDir);
  assert.equal(made.length, 1, 'created once');
  assert.ok(second.lines.some((l) => l.level === 40));

  mkdirSync(path.join(dir, 'models', 'gpt2'), { recursive: true });
  writeFileSync(path.join(dir, 'models', 'gpt2', 'manifest.json'), '{}');
  const third = captureLogger();
  assert.equal(await resolveModelDir(undefined, third.logger, makeTiny), path.join(dir, 'models', 'gpt2'));
  assert.ok(!third.lines.some((l) => l.level === 40), 'no warning for GPT-2');

  assert.equal(await resolveModelDir('elsewhere/m', third.logger, makeTiny), path.join(dir, 'elsewhere', 'm'));
});

test('SIGTERM: new work gets 503, the in-flight stream finishes, the process exits 0', async (t) => {
  const script = `
    import { main } from ${JSON.stringify(MAIN)};
    import { FakeEngine } from ${JSON.stringify(path.join(ROOT, 'test', 'helpers', 'fake-engine.ts'))};
    await main(['serve', '--host', '127.0.0.1', '--port', '0', '--model', 'unused', '--drain-timeout-ms', '10000'], process.env, {
      startEngine: async () => new FakeEngine({ tokenDelayMs: 25 }),
    });
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: ROOT,
    env: { PATH: process.env.PATH },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const logs: Array<Record<string, unknown>> = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += String(d);
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.trim()) logs.push(JSON.parse(line));
    }
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += String(d)));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));

  const deadline = Date.now() + 20_000;
  while (!logs.some((l) => l.msg === 'model loaded; serving')) {
    if (Date.now() > deadline || child.exitCode !== null) assert.fail(`server did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const loaded = logs.find((l) => l.msg === 'model loaded; serving')!;
  assert.equal(loaded.weights, 'float32', 'the startup log names the weight dtype');
  const address = String(loaded.address);
  const url = new URL(address);

  const get = (p: string) =>
    new Promise<number>((resolve, reject) => {
      http.get({ host: url.hostname, port: url.port, path: p, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject);
    });
  assert.equal(await get('/health'), 200);

  let firstChunk!: () => void;
  const gotChunk = new Promise<void>((r) => (firstChunk = r));
  const body = new Promise<string>((resolve, reject) => {
    const req = http.request(
      { host: url.hostname, port: url.port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' }, agent: false },
      (res) => {
        let text = '';
        res.on('data', (d) => {
          text += String(d);
          firstChunk();
        });
        res.on('end', () => resolve(text));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify({ model: 'fake-gpt2', prompt: 'A', max_tokens: 40, stream: true }));
  });
  await gotChunk;
  child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(await get('/health'), 503, 'draining');

  const events = parseSse(await body);
  assert.equal(events.at(-1), '[DONE]');
  const text = events
    .slice(0, -1)
    .map((e) => (e as { choices: Array<{ text: string }> }).choices[0]!.text)
    .join('');
  assert.equal(text.length, 40, 'the in-flight request finished');
  assert.equal(await exited, 0, stderr);
  assert.ok(logs.some((l) => l.msg === 'shutting down' && l.signal === 'SIGTERM'));
});
