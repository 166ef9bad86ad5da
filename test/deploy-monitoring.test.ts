// The monitoring files against the server they watch, offline and without Docker, Prometheus or
// Grafana: the Grafana dashboard (deploy/monitoring/grafana-dashboard.json), the adapter rule the
// HPA depends on, and the Compose stack (deploy/monitoring/compose.yaml: the CPU image, Prometheus
// and Grafana with the dashboard provisioned). Every PromQL expression is parsed with Prometheus'
// grammar and may only read series that src/server/metrics.ts exports. test/prometheus-scrape.test.ts
// runs the same queries against a real Prometheus scraping a real server.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { parseDocument } from 'yaml';
import { SETTINGS } from '../src/config.js';
import { ServerMetrics } from '../src/server/metrics.js';
import {
  adapterQueries,
  DASHBOARD_FILE,
  dashboardPanels,
  dashboardQueries,
  exportedSeriesNames,
  metricNames,
  readDashboard,
  ROOT,
  type Query,
} from './helpers/monitoring.js';

const COMPOSE_FILE = 'deploy/monitoring/compose.yaml';
const DEFAULT_PORT: number = SETTINGS.port.schema.parse(undefined);
// Shown elsewhere on the dashboard: blocks used is the usage ratio times a constant; the vllm:
// gauges are the inference gateway's copies of gpt2_ gauges the dashboard shows (and the info
// gauge is configuration, not a figure).
const NOT_ON_DASHBOARD = new Set([
  'gpt2_kv_cache_blocks_used',
  'vllm:num_requests_waiting',
  'vllm:num_requests_running',
  'vllm:kv_cache_usage_perc',
  'vllm:cache_config_info',
  // The prefix cache panel reads the gpt2_ counters; these are the same counts under vLLM's names.
  'vllm:prefix_cache_queries_total',
  'vllm:prefix_cache_hits_total',
  // Likewise for the speculative decoding panel.
  'vllm:spec_decode_num_drafts_total',
  'vllm:spec_decode_num_draft_tokens_total',
  'vllm:spec_decode_num_accepted_tokens_total',
]);

// Parsed files are plain JSON-like data; the assertions check each field they use.
type Parsed = any;

/** One YAML document, read as Kubernetes and Compose read them (YAML 1.1 scalars), with no errors or warnings. */
function readYaml(rel: string): Parsed {
  const doc = parseDocument(readFileSync(path.join(ROOT, rel), 'utf8'), { version: '1.1' });
  assert.deepEqual(doc.errors.map(String), [], `${rel}: YAML errors`);
  assert.deepEqual(doc.warnings.map(String), [], `${rel}: YAML warnings`);
  return doc.toJS();
}

function unknownMetrics(queries: Query[], exported: Set<string>): string[] {
  return queries.flatMap((q) => metricNames(q.expr).filter((n) => !exported.has(n)).map((n) => `${q.where}: ${n}`));
}

// ------------------------------------------------------------------------------------------------
// Dashboard

test('grafana-dashboard.json: a current Grafana dashboard with a Prometheus data source variable and job/instance variables', () => {
  const dashboard = readDashboard();
  assert.equal(typeof dashboard.uid, 'string');
  assert.equal(typeof dashboard.title, 'string');
  assert.ok(dashboard.schemaVersion >= 39, `schemaVersion ${dashboard.schemaVersion} is older than Grafana 11`);
  assert.equal(dashboard.id ?? null, null, 'a provisioned dashboard carries no database id');

  const vars = new Map<string, Parsed>((dashboard.templating?.list ?? []).map((v: Parsed) => [v.name, v]));
  const ds = [...vars.values()].find((v) => v.type === 'datasource');
  assert.ok(ds, 'a data source variable, so that the dashboard imports into any Grafana');
  assert.equal(ds.query, 'prometheus');
  const dsRef = `\${${ds.name}}`;
  for (const name of ['job', 'instance']) {
    const v = vars.get(name);
    assert.equal(v?.type, 'query', `a $${name} variable`);
    assert.equal(v.datasource?.uid, dsRef, `$${name} queries the data source variable`);
    assert.ok(v.includeAll && v.multi && v.allValue === '.*', `$${name}: multi-value with All = .*`);
  }

  const panels = dashboardPanels(dashboard);
  const ids = panels.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
  const cells = new Set<string>();
  for (const p of panels) {
    const { x, y, w, h } = p.gridPos ?? {};
    assert.ok(Number.isInteger(x) && Number.isInteger(y) && w > 0 && h > 0 && x + w <= 24, `panel "${p.title}": gridPos inside the 24-column grid`);
    for (let i = x; i < x + w; i++) {
      for (let j = y; j < y + h; j++) {
        assert.ok(!cells.has(`${i},${j}`), `panel "${p.title}" overlaps another panel at ${i},${j}`);
        cells.add(`${i},${j}`);
      }
    }
    if (p.type === 'row') continue;
    assert.equal(p.datasource?.uid, dsRef, `panel "${p.title}" uses the data source variable`);
    assert.ok(Array.isArray(p.targets) && p.targets.length > 0, `panel "${p.title}" has queries`);
    const refs = p.targets.map((t: Parsed) => t.refId);
    assert.equal(new Set(refs).size, refs.length, `panel "${p.title}": refIds are unique`);
    for (const t of p.targets) {
      assert.equal(t.datasource?.uid, dsRef, `panel "${p.title}" ${t.refId}: data source`);
      assert.match(t.expr, /job=~"\$job", instance=~"\$instance"/, `panel "${p.title}" ${t.refId} must honour $job and $instance`);
    }
  }
});

test('grafana-dashboard.json: latency percentiles, throughput, queue, KV cache, preemptions, step time, event loop lag and memory', async () => {
  const dashboard = readDashboard();
  const queries = dashboardQueries(dashboard).filter((q) => q.label === undefined);
  const exprs = queries.map((q) => q.expr.replace(/\s+/g, ' '));
  const used = new Set(queries.flatMap((q) => metricNames(q.expr)));

  for (const histogram of ['gpt2_time_to_first_token_seconds', 'gpt2_inter_token_latency_seconds', 'gpt2_e2e_request_latency_seconds']) {
    for (const p of ['0.5', '0.9', '0.99']) {
      assert.ok(
        exprs.some((e) => e.startsWith(`histogram_quantile(${p}, sum by (le) (rate(${histogram}_bucket{`)),
        `no p${Number(p) * 100} of ${histogram} (histogram_quantile over the rate of its _bucket series, summed by le)`,
      );
    }
  }
  // Request rate split by status, for HTTP and for websocket completions.
  assert.ok(exprs.some((e) => /sum by \(status\) \(rate\(gpt2_http_requests_total\{[^}]*method="POST", route="\/v1\/completions"/.test(e)));
  assert.ok(exprs.some((e) => /sum by \(status\) \(rate\(gpt2_http_requests_total\{[^}]*method="WS"/.test(e)));
  // Mean step time is the ratio of the two counters' rates.
  assert.ok(exprs.some((e) => /rate\(gpt2_engine_step_seconds_total\{.*\/.*rate\(gpt2_engine_steps_total\{/.test(e)), 'mean engine step time');

  // Every metric of the server's own (not prom-client's defaults) is on the dashboard.
  const own = (await new ServerMetrics().registry.getMetricsAsJSON()).map((m) => m.name);
  const missing = own.filter((n) => !NOT_ON_DASHBOARD.has(n) && ![n, `${n}_bucket`, `${n}_sum`, `${n}_count`].some((s) => used.has(s)));
  assert.deepEqual(missing, [], 'server metrics the dashboard does not show (add a panel, or list them in NOT_ON_DASHBOARD with a reason)');
  for (const n of ['gpt2_nodejs_eventloop_lag_p99_seconds', 'gpt2_process_resident_memory_bytes']) assert.ok(used.has(n), `dashboard shows ${n}`);
});

test('the dashboard and the adapter rule read only series the server exports', async () => {
  const exported = await exportedSeriesNames();
  // The names the CLI's registry exports, as scraped from a running server (docs/api.md lists them).
  for (const n of ['gpt2_num_requests_waiting', 'gpt2_process_resident_memory_bytes', 'gpt2_nodejs_eventloop_lag_seconds', 'gpt2_time_to_first_token_seconds_bucket']) {
    assert.ok(exported.has(n), `the registry should export ${n}`);
  }
  const queries = [...dashboardQueries(readDashboard()), ...adapterQueries()];
  assert.ok(queries.length > 20, `expected the dashboard's queries, got ${queries.length}`);
  assert.deepEqual(unknownMetrics(queries, exported), [], 'queries that read series the server does not export');
  // The check itself: a typo and a missing prefix are caught, a syntax error throws.
  assert.deepEqual(unknownMetrics([{ where: 'x', expr: 'rate(gpt2_engine_step_total[5m]) + process_resident_memory_bytes' }], exported), [
    'x: gpt2_engine_step_total',
    'x: process_resident_memory_bytes',
  ]);
  assert.throws(() => metricNames('sum(rate(gpt2_engine_steps_total[$__rate_interval])'), /syntax error/);
});

// ------------------------------------------------------------------------------------------------
// Compose stack

/** `SRC:TARGET[:ro]` volume strings and long-form mounts, as { source, target }. */
function mounts(service: Parsed): Array<{ source: string; target: string; bind: boolean }> {
  return ((service.volumes ?? []) as Parsed[]).map((v) => {
    if (typeof v === 'string') {
      const [source, target] = v.split(':');
      return { source, target, bind: /^[./~]/.test(source) };
    }
    return { source: v.source, target: v.target, bind: v.type === 'bind' };
  });
}

/** The host path of a bind mount, relative to the repository. */
function hostPath(source: string): string {
  return path.relative(ROOT, path.resolve(ROOT, path.dirname(COMPOSE_FILE), source));
}

function containerPorts(service: Parsed): number[] {
  return ((service.ports ?? []) as Parsed[]).map((p) => Number(typeof p === 'string' ? p.split(':').at(-1) : p.target));
}

/** The repository file mounted at `target` (or a file inside a folder mounted above it). */
function fileMountedAt(service: Parsed, target: string): string | undefined {
  for (const m of mounts(service).filter((m) => m.bind)) {
    if (m.target === target) return hostPath(m.source);
    if (target.startsWith(`${m.target}/`)) return path.join(hostPath(m.source), path.posix.relative(m.target, target));
  }
  return undefined;
}

test('compose.yaml: the CPU server image, Prometheus and Grafana with pinned tags; every mounted file exists', () => {
  assert.ok(!existsSync(path.join(ROOT, 'deploy', 'compose.yaml')), 'deploy/compose.yaml would break `kubectl apply -f deploy/`');
  const compose = readYaml(COMPOSE_FILE);
  const services = compose.services as Record<string, Parsed>;
  assert.deepEqual(Object.keys(services).sort(), ['grafana', 'prometheus', 'server']);

  const server = services.server;
  assert.equal(path.resolve(ROOT, path.dirname(COMPOSE_FILE), server.build.context), ROOT, 'the server builds from the repository root');
  assert.match(readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'), new RegExp(`^FROM\\s+\\S+\\s+AS\\s+${server.build.target}\\s*$`, 'im'), `Dockerfile stage ${server.build.target}`);
  assert.equal(server.build.target, 'cpu', 'the stack runs anywhere: the CPU image');
  assert.deepEqual(containerPorts(server), [DEFAULT_PORT]);
  const models = mounts(server).find((m) => m.target === '/models');
  assert.ok(models?.bind && hostPath(models.source) === 'models', "the repository's models/ at /models (the image VOLUME)");
  const grace = /^(\d+)s$/.exec(String(server.stop_grace_period));
  assert.ok(grace && Number(grace[1]) * 1000 > (SETTINGS.drainTimeoutMs.schema.parse(undefined) as number), 'stop_grace_period longer than the default drain');

  for (const [name, s] of Object.entries(services)) {
    if (name === 'server') continue;
    assert.match(String(s.image), /^[\w./-]+:v?\d+\.\d+\.\d+$/, `${name}: image pinned to an exact version`);
  }
  const declared = new Set(Object.keys(compose.volumes ?? {}));
  for (const [name, s] of Object.entries(services)) {
    for (const m of mounts(s)) {
      if (!m.bind) {
        assert.ok(declared.has(m.source), `${name}: named volume ${m.source} is not declared`);
        continue;
      }
      const host = hostPath(m.source);
      assert.ok(!host.startsWith('..'), `${name}: ${m.source} is outside the repository`);
      if (host !== 'models') assert.ok(existsSync(path.join(ROOT, host)), `${name}: mounted ${host} does not exist`);
    }
  }
});

test('compose.yaml: Prometheus scrapes the server\'s /metrics every few seconds', () => {
  const compose = readYaml(COMPOSE_FILE);
  const prometheus = compose.services.prometheus;
  const configFile = fileMountedAt(prometheus, '/etc/prometheus/prometheus.yml');
  assert.ok(configFile, 'prometheus.yml mounted at the image\'s default config path');
  const config = readYaml(configFile);
  const job = (config.scrape_configs as Parsed[]).find((j) => (j.static_configs ?? []).some((s: Parsed) => s.targets.some((t: string) => t.startsWith('server:'))));
  assert.ok(job, 'a scrape job targets the server service');
  assert.deepEqual(job.static_configs.flatMap((s: Parsed) => s.targets), [`server:${DEFAULT_PORT}`]);
  assert.equal(job.metrics_path ?? '/metrics', '/metrics');
  const interval = String(job.scrape_interval ?? config.global?.scrape_interval ?? '1m');
  assert.match(interval, /^([1-9]|1[0-5])s$/, `scrape interval ${interval}: every few seconds`);
  // Queries in this config (rules, relabelling on names) must read exported series too: none now.
  assert.equal(config.rule_files, undefined, 'rule files would need the metric-name check');
});

test('compose.yaml: Grafana provisions the Prometheus data source and the dashboard file', () => {
  const compose = readYaml(COMPOSE_FILE);
  const grafana = compose.services.grafana;
  const dsDir = fileMountedAt(grafana, '/etc/grafana/provisioning/datasources');
  const boardsDir = fileMountedAt(grafana, '/etc/grafana/provisioning/dashboards');
  assert.ok(dsDir && boardsDir, 'provisioning folders mounted where Grafana reads them');

  const yamlIn = (dir: string) => readdirYaml(dir).map((f) => readYaml(path.join(dir, f)));
  const datasources = yamlIn(dsDir).flatMap((f) => f.datasources ?? []);
  assert.equal(datasources.length, 1);
  const ds = datasources[0];
  assert.equal(ds.type, 'prometheus');
  assert.equal(ds.isDefault, true, 'the default data source, which the dashboard\'s data source variable picks');
  const promPort = containerPorts(compose.services.prometheus)[0];
  assert.equal(ds.url, `http://prometheus:${promPort}`, 'the Prometheus service, by its compose name and port');
  const scrapeInterval = readYaml(fileMountedAt(compose.services.prometheus, '/etc/prometheus/prometheus.yml') as string).global.scrape_interval;
  assert.equal(ds.jsonData?.timeInterval, scrapeInterval, 'timeInterval = the scrape interval ($__rate_interval is sized from it)');

  const providers = yamlIn(boardsDir).flatMap((f) => f.providers ?? []);
  assert.equal(providers.length, 1);
  assert.equal(providers[0].type, 'file');
  const boardPath = providers[0].options.path as string;
  const mounted = mounts(grafana).filter((m) => m.bind && m.target.startsWith(`${boardPath}/`));
  assert.deepEqual(mounted.map((m) => hostPath(m.source)), [DASHBOARD_FILE], `the dashboard file mounted into ${boardPath}`);
  assert.match(mounted[0].target, /\.json$/);
  assert.equal(grafana.environment?.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH, mounted[0].target, 'the dashboard is Grafana\'s home page');
  assert.deepEqual(containerPorts(grafana), [3000]);
});

function readdirYaml(dir: string): string[] {
  const abs = path.join(ROOT, dir);
  assert.ok(statSync(abs).isDirectory(), `${dir} is not a folder`);
  return readdirSync(abs).filter((f) => /\.ya?ml$/.test(f));
}
