// A real scrape: Debian's Prometheus (installed by .ci/run) scrapes the real serving CLI (the ONNX
// engine on the tiny model, default metrics on) every second while a short load runs, and every
// query of the Grafana dashboard and of the Prometheus adapter rule (the HPA's input) is asked of
// Prometheus' HTTP API. Skipped, saying so, where no prometheus binary is installed; fails instead
// when REQUIRE_PROMETHEUS is set (CI sets it, so a lost install step cannot turn into a skip).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import WebSocket from 'ws';
import { adapterQueries, adapterRules, dashboardQueries, metricNames, readDashboard, renderGrafana, ROOT } from './helpers/monitoring.js';
import { spawnServer } from './helpers/server-process.js';
import { copyingModel } from './helpers/tiny-model.js';
import { MODEL } from './helpers/serving.js';

const JOB = 'gpt2-serve';
// What a PodMonitor or the kubernetes-pods job adds, and what the adapter rule requires.
const POD_LABELS = { namespace: 'ci', pod: 'gpt2-serve-0' };

function findBinary(name: string): string | null {
  const dirs = ['/usr/bin', ...(process.env.PATH ?? '').split(path.delimiter)];
  return dirs.map((d) => path.join(d, name)).find((p) => existsSync(p)) ?? null;
}

/** The binary, or null after skipping the test (failing it where CI requires Prometheus). */
function prometheusTool(t: TestContext, name: 'prometheus' | 'promtool'): string | null {
  const bin = name === 'prometheus' ? (process.env.PROMETHEUS_BIN ?? findBinary(name)) : findBinary(name);
  if (bin) return bin;
  const why = `no ${name} binary (Debian: apt-get install --no-install-recommends prometheus; .ci/run installs it)`;
  if (process.env.REQUIRE_PROMETHEUS) assert.fail(`${why}, and REQUIRE_PROMETHEUS is set`);
  t.skip(why);
  return null;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

interface Prometheus {
  api: (p: string, params: Array<[string, string]>) => Promise<any>;
}

/** Prometheus on 127.0.0.1 with a temporary TSDB, scraping `target` every second. */
async function startPrometheus(t: TestContext, bin: string, target: string): Promise<Prometheus> {
  const dir = mkdtempSync(path.join(tmpdir(), 'gpt2-serve-prometheus-'));
  const config = {
    global: { scrape_interval: '1s', evaluation_interval: '1s' },
    scrape_configs: [{ job_name: JOB, metrics_path: '/metrics', static_configs: [{ targets: [target], labels: POD_LABELS }] }],
  };
  writeFileSync(path.join(dir, 'prometheus.yml'), JSON.stringify(config)); // JSON is YAML
  const port = await freePort();
  const child = spawn(
    bin,
    [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += String(d)));
  const exited = new Promise((resolve) => child.on('exit', resolve));
  t.after(async () => {
    if (child.exitCode === null) child.kill('SIGKILL');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  });
  const base = `http://127.0.0.1:${port}`;
  for (const deadline = Date.now() + 15_000; ; ) {
    const ready = await fetch(`${base}/-/ready`).then((r) => r.ok, () => false);
    if (ready) break;
    if (child.exitCode !== null || Date.now() > deadline) assert.fail(`prometheus did not start: ${stderr}`);
    await sleep(50);
  }
  return {
    api: async (p, params) => {
      const res = await fetch(`${base}/api/v1/${p}?${new URLSearchParams(params)}`);
      const body = (await res.json()) as { status: string; data: unknown; error?: string };
      assert.equal(body.status, 'success', `${p} ${JSON.stringify(params)}: ${body.error}`);
      return body.data;
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Vector = Array<{ metric: Record<string, string>; value: [number, string] }>;

async function instant(prom: Prometheus, query: string): Promise<Vector> {
  const data = await prom.api('query', [['query', query]]);
  assert.equal(data.resultType, 'vector', query);
  return data.result as Vector;
}

/** sum(name) now, 0 where the series does not exist yet. */
async function total(prom: Prometheus, name: string): Promise<number> {
  const v = await instant(prom, `sum(${name}{job="${JOB}"})`);
  return v.length === 0 ? 0 : Number(v[0].value[1]);
}

async function post(url: URL, body: Record<string, unknown>): Promise<{ status: number; text: string }> {
  const res = await fetch(new URL('/v1/completions', url), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, ...body }) });
  return { status: res.status, text: await res.text() };
}

/** One websocket completion; resolves with its completion tokens. */
function wsCompletion(url: URL): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${url.host}/v1/completions/ws`);
    ws.on('open', () => ws.send(JSON.stringify({ type: 'completion.create', id: 'w', model: MODEL, prompt: 'Hello', max_tokens: 6, ignore_eos: true })));
    ws.on('message', (data) => {
      const msg = JSON.parse(String(data)) as { type: string; usage?: { completion_tokens: number } };
      if (msg.type === 'error') reject(new Error(String(data)));
      if (msg.type === 'completion.done') {
        ws.close();
        resolve(msg.usage!.completion_tokens);
      }
    });
    ws.on('error', reject);
  });
}

/** A short load: JSON, a repeated prompt (a prefix-cache hit), a passage to repeat (speculation), SSE, three sequences that cannot share a 320-token KV cache, a 400, a websocket. */
async function runLoad(url: URL): Promise<{ generated: number }> {
  let generated = 0;
  const json = await post(url, { prompt: 'The quick brown fox', max_tokens: 8, ignore_eos: true });
  assert.equal(json.status, 200, json.text);
  generated += JSON.parse(json.text).usage.completion_tokens;
  // The same 40-token prompt twice: the second finds its first two blocks in the prefix cache.
  for (let i = 0; i < 2; i++) {
    const repeated = await post(url, { prompt: Array.from({ length: 40 }, (_, k) => 1000 + k), max_tokens: 2, ignore_eos: true });
    assert.equal(repeated.status, 200, repeated.text);
    generated += JSON.parse(repeated.text).usage.completion_tokens;
  }
  // A passage and its start again: the copying model repeats it, prompt lookup drafts it.
  const passage = 'The quick brown fox jumps over the lazy dog near the bank of the quiet river, and then it runs home. ';
  const grounded = await post(url, { prompt: `${passage}\n\nRepeat:\n${passage.slice(0, 20)}`, max_tokens: 24, ignore_eos: true });
  assert.equal(grounded.status, 200, grounded.text);
  generated += JSON.parse(grounded.text).usage.completion_tokens;
  const sse = await post(url, { prompt: 'Hello', max_tokens: 8, ignore_eos: true, stream: true, stream_options: { include_usage: true } });
  assert.equal(sse.status, 200, sse.text);
  const usage = sse.text.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6))).find((c) => c.usage)?.usage;
  generated += usage.completion_tokens;
  // 3 x 201 tokens in 20 blocks of 16: admission keeps room for 128 more tokens of each, so two
  // run together, and they outgrow it (13 blocks each): the scheduler must preempt.
  const crowd = await post(url, { prompt: ['a', 'b', 'c'], max_tokens: 200, ignore_eos: true });
  assert.equal(crowd.status, 200, crowd.text);
  generated += JSON.parse(crowd.text).usage.completion_tokens;
  const bad = await post(url, { prompt: 'x', temperature: 5 });
  assert.equal(bad.status, 400, bad.text);
  generated += await wsCompletion(url);
  return { generated };
}

test('Prometheus scrapes the server: every series the dashboard and the HPA adapter rule read exists, the counters move, every query answers', async (t) => {
  const bin = prometheusTool(t, 'prometheus');
  const promtool = bin && prometheusTool(t, 'promtool');
  if (!bin || !promtool) return;
  // Prometheus first scrapes about 5 s after it starts (its discovery manager batches target
  // updates): start it beside the server, on the port the server will take.
  const port = await freePort();
  const instance = `127.0.0.1:${port}`;
  const [server, prom] = await Promise.all([
    // The copying model with speculation on, so that drafts are proposed and kept (a random
    // model's output rarely repeats anything).
    copyingModel().then((model) => spawnServer(t, ['--port', String(port), '--kv-cache-tokens', '320', '--block-size', '16', '--model', model, '--speculative', 'ngram'])),
    startPrometheus(t, bin, instance),
  ]);

  const dashboard = dashboardQueries(readDashboard());
  const adapter = adapterQueries();
  const names = [...new Set([...dashboard, ...adapter].flatMap((q) => metricNames(q.expr)))].sort();
  const counters = names.filter((n) => /_(total|bucket|sum|count)$/.test(n));

  // Baseline: the first scrape, before any completion.
  for (const deadline = Date.now() + 10_000; (await instant(prom, `up{job="${JOB}"} == 1`)).length === 0; ) {
    assert.ok(Date.now() < deadline, 'Prometheus never scraped the server');
    await sleep(100);
  }
  const before = new Map(await Promise.all(counters.map(async (n) => [n, await total(prom, n)] as const)));

  const { generated } = await runLoad(server.url);
  // Engine figures reach /metrics with the engine's heartbeat, then the next scrape; a rate needs
  // two samples of the series that the load created last.
  for (const deadline = Date.now() + 10_000; ; ) {
    const seen = await total(prom, 'gpt2_generation_tokens_total');
    const samples = await instant(prom, `count_over_time(gpt2_http_requests_total{job="${JOB}", method="WS"}[1m])`);
    if (seen >= generated && Number(samples[0]?.value[1] ?? 0) >= 2) break;
    assert.ok(Date.now() < deadline, `Prometheus saw ${seen} of ${generated} generated tokens, ${JSON.stringify(samples)} websocket samples`);
    await sleep(200);
  }

  // Every series name exists in Prometheus.
  const series = (await prom.api('series', names.map((n) => ['match[]', n]))) as Array<Record<string, string>>;
  const present = new Set(series.map((s) => s.__name__));
  assert.deepEqual(names.filter((n) => !present.has(n)), [], 'series the monitoring files read that Prometheus never saw');

  // Every counter and histogram series moved under the load (preemptions included).
  const still = [];
  for (const n of counters) if (!((await total(prom, n)) > before.get(n)!)) still.push(n);
  assert.deepEqual(still, [], 'counters that did not move under load');
  assert.ok((await total(prom, 'gpt2_generation_tokens_total')) - before.get('gpt2_generation_tokens_total')! >= generated);

  // Prometheus' lint of the exposition: only prom-client's default gauges named *_total offend,
  // and the vllm: names, whose colon the lint keeps for recording rules: they are the names the
  // inference gateway's endpoint picker reads (vLLM's own), so they stay as they are.
  const exposition = await (await fetch(new URL('/metrics', server.url))).text();
  const lint = spawnSync(promtool, ['check', 'metrics'], { input: exposition, encoding: 'utf8' });
  const expected = [/^gpt2_nodejs_active_\w+_total non-counter metrics/, /^vllm:\w+ metric names should not contain ':'/];
  const problems = `${lint.stdout}${lint.stderr}`.split('\n').filter((l) => l.trim() && !expected.some((e) => e.test(l)));
  assert.deepEqual(problems, [], 'promtool check metrics');

  // Every dashboard query is valid PromQL for Prometheus and returns data for this instance.
  const vars = { job: JOB, instance };
  for (const q of dashboard) {
    if (q.label) {
      const values = (await prom.api(`label/${q.label}/values`, [['match[]', renderGrafana(q.expr, '30s', vars)]])) as string[];
      assert.ok(values.includes(vars[q.label as keyof typeof vars]), `${q.where}: ${JSON.stringify(values)}`);
      continue;
    }
    const result = await instant(prom, renderGrafana(q.expr, '30s', vars));
    assert.ok(result.length > 0, `${q.where} returned nothing: ${q.expr}`);
  }

  // The adapter rule: its series query finds the pod's series, and its metrics query (as the
  // adapter fills in the template for a pods request) returns the queue length per pod.
  for (const rule of adapterRules()) {
    const found = (await prom.api('series', [['match[]', rule.seriesQuery]])) as Array<Record<string, string>>;
    assert.equal(found.length, 1, `${rule.seriesQuery} should find the pod's series`);
    const query = rule.metricsQuery
      .replace('<<.Series>>', found[0].__name__)
      .replace('<<.LabelMatchers>>', `namespace="${POD_LABELS.namespace}",pod=~"${POD_LABELS.pod}"`)
      .replace('<<.GroupBy>>', 'pod');
    const result = await instant(prom, query);
    assert.deepEqual(result.map((r) => r.metric), [{ pod: POD_LABELS.pod }], query);
  }
});

test('promtool accepts the Compose stack\'s Prometheus configuration', (t) => {
  const promtool = prometheusTool(t, 'promtool');
  if (!promtool) return;
  const res = spawnSync(promtool, ['check', 'config', path.join(ROOT, 'deploy', 'monitoring', 'prometheus.yml')], { encoding: 'utf8' });
  assert.equal(res.status, 0, res.stdout + res.stderr);
});
