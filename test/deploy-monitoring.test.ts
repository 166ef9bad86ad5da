// The monitoring files against the server they watch, offline and without Prometheus or Grafana:
// the Grafana dashboard (deploy/monitoring/grafana-dashboard.json) and the adapter rule the HPA
// depends on. Every PromQL expression is parsed with Prometheus' grammar and may only read series
// that src/server/metrics.ts exports.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ServerMetrics } from '../src/server/metrics.js';
import {
  adapterQueries,
  dashboardPanels,
  dashboardQueries,
  exportedSeriesNames,
  metricNames,
  readDashboard,
  type Query,
} from './helpers/monitoring.js';

// Shown elsewhere on the dashboard: blocks used is the usage ratio times a constant.
const NOT_ON_DASHBOARD = new Set(['gpt2_kv_cache_blocks_used']);

// Parsed files are plain JSON-like data; the assertions check each field they use.
type Parsed = any;

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
