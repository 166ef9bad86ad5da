// The serving CLI (src/main.ts): --help, config errors, default model resolution, and real server
// processes (the real worker engine around the scripted runner) that drain on SIGTERM and exit
// 0, or exit 1 when their engine dies, every admitted stream ending cleanly either way.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadConfig, seqsInFlightLimit, SETTINGS } from '../src/config.js';
import { resolveModelDir } from '../src/main.js';
import { CONTRACT_VERSION } from '../src/model/serving-graph.js';
import { spawnServer } from './helpers/server-process.js';
import { MODEL, memoryLogger, parseSse } from './helpers/serving.js';
import { tinyModel } from './helpers/tiny-model.js';

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

test('--max-seqs-in-flight defaults to 8 sequences per batch slot', () => {
  assert.equal(seqsInFlightLimit(loadConfig([], {})), 256);
  assert.equal(seqsInFlightLimit(loadConfig(['--max-num-seqs', '4'], {})), 32);
  assert.equal(seqsInFlightLimit(loadConfig([], { GPT2_MAX_SEQS_IN_FLIGHT: '40' })), 40);
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
  const budget = runMain(['--max-num-seqs', '64', '--max-num-batched-tokens', '32']);
  assert.equal(budget.status, 2);
  assert.match(budget.stderr, /--max-num-batched-tokens \(32\) must be >= --max-num-seqs \(64\)/);
  const seqs = runMain(['--max-num-seqs', '64', '--max-seqs-in-flight', '32']);
  assert.equal(seqs.status, 2);
  assert.match(seqs.stderr, /--max-seqs-in-flight \(32\) must be >= --max-num-seqs \(64\)/);
  const lookup = runMain(['--speculative', 'ngram', '--prompt-lookup-min', '4', '--prompt-lookup-max', '3']);
  assert.equal(lookup.status, 2);
  assert.match(lookup.stderr, /--prompt-lookup-min \(4\) must be <= --prompt-lookup-max \(3\)/);
  const noDraft = runMain(['--speculative', 'draft']);
  assert.equal(noDraft.status, 2);
  assert.match(noDraft.stderr, /--speculative draft needs --draft-model DIR/);
  const strayDraft = runMain([], { GPT2_DRAFT_MODEL: '/models/distilgpt2' });
  assert.equal(strayDraft.status, 2);
  assert.match(strayDraft.stderr, /--draft-model is only used with --speculative draft \(got --speculative off\)/);
  const method = runMain(['--speculative', 'medusa']);
  assert.equal(method.status, 2);
  assert.match(method.stderr, /^error: --speculative \/ GPT2_SPECULATIVE: /);
  for (const size of ['8', '24']) {
    const block = runMain(['--block-size', size]);
    assert.equal(block.status, 2);
    assert.match(block.stderr, new RegExp(`^error: --block-size / GPT2_BLOCK_SIZE: .*must be a multiple of 16 .*\\(got "${size}"\\)`));
  }
});

test('a folder that cannot be served fails the start with one JSON line naming it, the problem and the fix; exit 1', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'gpt2-serve-empty-'));
  const fatalOf = (res: ReturnType<typeof runMain>) => {
    assert.equal(res.status, 1, res.stderr);
    assert.equal(res.stderr, '', 'nothing outside the JSON log');
    const lines = res.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    const fatal = lines.filter((l) => l.level === 60);
    assert.equal(fatal.length, 1, res.stdout);
    assert.equal(fatal[0]!.err, undefined, 'no stack trace for an operator error');
    return String(fatal[0]!.msg);
  };
  try {
    assert.match(fatalOf(runMain(['--model', dir, '--port', '0'])), /cannot be served: it is not an exported model folder \(no manifest\.json\)\. Make a model folder there with `npm run download -- openai-community\/gpt2 --out .*` or `npm run export -- --checkpoint CHECKPOINT_DIR --out /);
    // A real model folder that lost its tokenizer.json.
    const model = path.join(dir, 'gpt2');
    cpSync(await tinyModel(), model, { recursive: true });
    rmSync(path.join(model, 'tokenizer.json'));
    const msg = fatalOf(runMain(['--model', model, '--port', '0']));
    assert.ok(msg.startsWith(`${model} cannot be served: tokenizer.json is missing.`), msg);
    // A graph ONNX Runtime cannot load: the engine fails to start, still one line.
    cpSync(path.join(await tinyModel(), 'tokenizer.json'), path.join(model, 'tokenizer.json'));
    writeFileSync(path.join(model, 'model.onnx'), 'not a graph');
    assert.match(fatalOf(runMain(['--model', model, '--port', '0'])), /^the engine could not start on the model in .*gpt2: /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('model resolution: --model, else models/gpt2 if exported, else the tiny model (created once, again for a new graph contract, with a warning)', async (t) => {
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
    writeFileSync(path.join(out, 'manifest.json'), JSON.stringify({ contractVersion: CONTRACT_VERSION }));
  };
  const tinyDir = path.join(dir, 'models', 'tiny-random-gpt2');

  const first = memoryLogger();
  assert.equal(await resolveModelDir(undefined, first.logger, makeTiny), tinyDir);
  assert.deepEqual(made, [tinyDir]);
  const warn = first.lines.find((l) => l.level === 40);
  assert.ok(warn, 'warned');
  assert.match(String(warn.msg), /noise/);
  assert.match(String(warn.msg), /npm run download -- openai-community\/gpt2/);

  const second = memoryLogger();
  assert.equal(await resolveModelDir(undefined, second.logger, makeTiny), tinyDir);
  assert.equal(made.length, 1, 'created once');
  assert.ok(second.lines.some((l) => l.level === 40));

  // A tiny model the server made for an older graph contract is made again.
  writeFileSync(path.join(tinyDir, 'manifest.json'), JSON.stringify({ contractVersion: CONTRACT_VERSION - 1 }));
  assert.equal(await resolveModelDir(undefined, memoryLogger().logger, makeTiny), tinyDir);
  assert.equal(made.length, 2, 'made again for the current contract');

  mkdirSync(path.join(dir, 'models', 'gpt2'), { recursive: true });
  writeFileSync(path.join(dir, 'models', 'gpt2', 'manifest.json'), '{}');
  const third = memoryLogger();
  assert.equal(await resolveModelDir(undefined, third.logger, makeTiny), path.join(dir, 'models', 'gpt2'));
  assert.ok(!third.lines.some((l) => l.level === 40), 'no warning for GPT-2');

  assert.equal(await resolveModelDir('elsewhere/m', third.logger, makeTiny), path.join(dir, 'elsewhere', 'm'));
});

function get(url: URL, p: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    http
      .get({ host: url.hostname, port: url.port, path: p, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      })
      .on('error', reject);
  });
}

interface StreamResult {
  status: number;
  events: unknown[];
  firstChunk: Promise<void>;
}

/** Starts a streaming completion; resolves with its status and events once the response ends. */
function streamCompletion(url: URL, body: Record<string, unknown>): { done: Promise<StreamResult>; firstChunk: Promise<void> } {
  let first!: () => void;
  const firstChunk = new Promise<void>((r) => (first = r));
  const done = new Promise<StreamResult>((resolve, reject) => {
    const req = http.request(
      { host: url.hostname, port: url.port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' }, agent: false },
      (res) => {
        let text = '';
        res.on('data', (d) => {
          text += String(d);
          first();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, events: res.statusCode === 200 ? parseSse(text) : [JSON.parse(text)], firstChunk }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify({ model: MODEL, stream: true, ...body }));
  });
  return { done, firstChunk };
}

type Chunk = { choices: Array<{ index: number; finish_reason: string | null }>; error?: { code: string } };

/** An SSE stream that ended cleanly: every choice finished, or an error event; then [DONE]. */
function endedCleanly(events: unknown[], choices: number): 'complete' | string {
  assert.equal(events.at(-1), '[DONE]', 'every stream ends with [DONE]');
  const last = events.at(-2) as Chunk;
  if (last.error) return last.error.code;
  const finished = new Set((events.slice(0, -1) as Chunk[]).flatMap((e) => e.choices.filter((c) => c.finish_reason).map((c) => c.index)));
  assert.equal(finished.size, choices, 'a stream without an error event finished every choice');
  return 'complete';
}

test('SIGTERM during 32 streams: new work gets 503, every admitted stream completes or ends with a clean error, exit 0', async (t) => {
  const server = await spawnServer(t, ['--drain-timeout-ms', '3000'], { stepDelayMs: 15 });
  assert.equal(await get(server.url, '/health'), 200);
  // Half finish within the drain timeout, half cannot.
  const streams = Array.from({ length: 32 }, (_, i) => streamCompletion(server.url, { prompt: `stream ${i}`, max_tokens: i % 2 ? 10 : 1000 }));
  await Promise.all(streams.map((s) => s.firstChunk));
  server.kill('SIGTERM');
  // The signal reaches the server when its process gets to it: poll rather than guess how soon.
  // (Within the drain: the long streams hold it open for at least 1000 x 15 ms.)
  let health = await get(server.url, '/health');
  for (const deadline = Date.now() + 2500; health === 200 && Date.now() < deadline; ) health = await get(server.url, '/health');
  assert.equal(health, 503, 'draining');
  const late = await streamCompletion(server.url, { prompt: 'late' }).done;
  assert.equal(late.status, 503);
  const outcomes = (await Promise.all(streams.map((s) => s.done))).map((r) => {
    assert.equal(r.status, 200);
    return endedCleanly(r.events, 1);
  });
  assert.deepEqual(
    outcomes.map((o, i) => [i % 2 ? 'short' : 'long', o]).filter(([kind, o]) => (kind === 'short' ? o !== 'complete' : o !== 'shutting_down')),
    [],
    'short streams complete, long ones end with shutting_down',
  );
  assert.equal(await server.exited, 0, server.stderr());
  assert.ok(server.logs.some((l) => l.msg === 'shutting down' && l.signal === 'SIGTERM'));
  assert.equal(server.stderr(), '', 'every line the server printed was JSON on stdout');
});

test('the startup log names the address actually listened on (0.0.0.0 is not 127.0.0.1)', async (t) => {
  const server = await spawnServer(t, ['--host', '0.0.0.0'], {});
  assert.equal(server.url.hostname, '0.0.0.0');
  const loaded = server.logs.find((l) => l.msg === 'model loaded; serving')!;
  assert.equal(loaded.weights, 'float32', 'and the weight dtype');
  assert.equal(loaded.chatTemplate, 'built-in', 'and which chat template /v1/chat/completions renders with');
  // And memory: the KV pools' full size, and the RSS the process grows to as they fill.
  const memory = loaded.memory as { rssMiB: number; kvCacheMiB: number; kvCommittedMiB: number; expectedMaxRssMiB: number };
  assert.ok(memory.kvCacheMiB >= 0 && memory.kvCommittedMiB <= memory.kvCacheMiB, JSON.stringify(memory));
  // (Each figure is rounded to MiB on its own.)
  assert.ok(Math.abs(memory.expectedMaxRssMiB - (memory.rssMiB - memory.kvCommittedMiB + memory.kvCacheMiB)) <= 1, JSON.stringify(memory));
  assert.equal(await get(new URL(`http://127.0.0.1:${server.url.port}`), '/health'), 200);
  server.kill('SIGTERM');
  assert.equal(await server.exited, 0);
});

test('the engine worker exits mid-stream: streams end with an error event, new work and /health get 503 at once, the process exits 1', async (t) => {
  const server = await spawnServer(t, [], { stepDelayMs: 10, exitAtRun: 30 });
  const streams = Array.from({ length: 4 }, (_, i) => streamCompletion(server.url, { prompt: `s${i}`, max_tokens: 500 }));
  await Promise.all(streams.map((s) => s.firstChunk));
  for (const s of streams) {
    const r = await s.done;
    assert.equal(r.status, 200);
    assert.equal(endedCleanly(r.events, 1), 'engine_unavailable');
  }
  // Dead for good: answered at once, not after a timeout (the step timeout, 60 s by default, is
  // what waiting on the dead engine would take; the bound leaves a loaded machine room below it).
  const started = Date.now();
  const [health, fresh] = await Promise.all([get(server.url, '/health').catch(() => 0), streamCompletion(server.url, { prompt: 'x' }).done.catch(() => null)]);
  assert.ok(Date.now() - started < 10_000, `answered after ${Date.now() - started} ms`);
  assert.ok(health === 503 || health === 0, `health ${health}`); // 0: the process already exited
  if (fresh) assert.equal(fresh.status, 503);
  assert.equal(await server.exited, 1, 'a supervisor restarts a dead server');
  const fatal = server.logs.find((l) => l.level === 60);
  assert.match(String(fatal?.reason), /the engine worker exited \(code 3\)/);
});

test('steps failing again and again: after --max-step-failures the engine is dead and the process exits 1', async (t) => {
  const server = await spawnServer(t, ['--max-step-failures', '3'], { failFrom: 5 });
  const ok = await streamCompletion(server.url, { prompt: 'a', max_tokens: 4 }).done;
  assert.equal(endedCleanly(ok.events, 1), 'complete');
  const outcomes = [];
  for (let i = 0; i < 3; i++) {
    const r = await streamCompletion(server.url, { prompt: `f${i}`, max_tokens: 4 }).done;
    outcomes.push(r.status === 200 ? endedCleanly(r.events, 1) : `${r.status}`);
  }
  // Each failed step fails its own request (a 500 before the stream starts, or an error event);
  // the third in a row kills the engine.
  assert.deepEqual(outcomes.slice(0, 2).map((o) => ['500', 'internal_error'].includes(o)), [true, true], JSON.stringify(outcomes));
  assert.equal(await server.exited, 1);
  assert.match(String(server.logs.find((l) => l.level === 60)?.reason), /3 model steps failed in a row/);
});
