// What the monitoring files ask of the server: the PromQL of the Grafana dashboard
// (deploy/monitoring/grafana-dashboard.json) and of the Prometheus adapter rule, the metric names
// those queries read (parsed with Prometheus' own PromQL grammar, @prometheus-io/lezer-promql),
// and the series names the server exports (its metrics registry, default metrics on as in the CLI).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parser } from '@prometheus-io/lezer-promql';
import { parse as parseYaml } from 'yaml';
import { ServerMetrics } from '../../src/server/metrics.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const DASHBOARD_FILE = 'deploy/monitoring/grafana-dashboard.json';
export const ADAPTER_RULES_FILE = 'deploy/monitoring/prometheus-adapter-rules.yaml';

// Loosely typed: the tests check every field they use.
type Json = any;

export interface Query {
  /** Where the query is, for messages: a panel's title and refId, or a template variable. */
  where: string;
  expr: string;
  /** For a `label_values(selector, label)` variable: the label whose values it lists (expr is the selector). */
  label?: string;
}

export function readDashboard(): Json {
  return JSON.parse(readFileSync(path.join(ROOT, DASHBOARD_FILE), 'utf8'));
}

/** Every panel, those inside collapsed rows included. */
export function dashboardPanels(dashboard: Json): Json[] {
  const walk = (panels: Json[] = []): Json[] => panels.flatMap((p) => [p, ...walk(p.panels)]);
  return walk(dashboard.panels);
}

/** The PromQL of every panel target and of every `label_values(selector, label)` template variable. */
export function dashboardQueries(dashboard: Json): Query[] {
  const out: Query[] = [];
  for (const panel of dashboardPanels(dashboard)) {
    for (const target of panel.targets ?? []) out.push({ where: `panel "${panel.title}" ${target.refId}`, expr: String(target.expr) });
  }
  for (const v of dashboard.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const query = String(typeof v.query === 'string' ? v.query : v.query?.query);
    const m = /^label_values\((.+),\s*(\w+)\)$/.exec(query.trim());
    if (!m) throw new Error(`template variable $${v.name}: expected label_values(selector, label), got ${query}`);
    out.push({ where: `variable $${v.name}`, expr: m[1], label: m[2] });
  }
  return out;
}

/** The Prometheus adapter's rules (`rules.custom` of the Helm values, or `rules` of a config). */
export function adapterRules(): Array<{ seriesQuery: string; metricsQuery: string }> {
  const values = parseYaml(readFileSync(path.join(ROOT, ADAPTER_RULES_FILE), 'utf8'));
  return (Array.isArray(values.rules) ? values.rules : values.rules?.custom) ?? [];
}

/** The adapter rules' series queries (a metricsQuery is a template over the same series). */
export function adapterQueries(): Query[] {
  return adapterRules().map((r, i) => ({ where: `adapter rule ${i} seriesQuery`, expr: String(r.seriesQuery) }));
}

/** Grafana's variables filled in: interval macros with `interval`, others with `vars` (else `.*`). */
export function renderGrafana(expr: string, interval = '1m', vars: Record<string, string> = {}): string {
  return expr
    .replace(/\$\{?(__rate_interval|__interval|__range)\}?/g, interval)
    .replace(/\$\{?(\w+)\}?/g, (_, name: string) => vars[name] ?? '.*');
}

/**
 * Metric names a PromQL expression reads (vector selectors' names and `__name__="..."` matchers).
 * Throws on a syntax error, so a query Prometheus would refuse fails the test that reads it.
 */
export function metricNames(expr: string): string[] {
  const text = renderGrafana(expr);
  const names = new Set<string>();
  const errors: number[] = [];
  const tree = parser.parse(text);
  tree.iterate({
    enter(node) {
      if (node.type.isError) errors.push(node.from);
      if (node.name === 'Identifier' && node.node.parent?.name === 'VectorSelector') names.add(text.slice(node.from, node.to));
      if (node.name === 'UnquotedLabelMatcher') {
        const m = /^__name__\s*=\s*"([^"]+)"$/.exec(text.slice(node.from, node.to));
        if (m) names.add(m[1]);
      }
    },
  });
  if (errors.length > 0) throw new Error(`PromQL syntax error at offset ${errors[0]} of ${JSON.stringify(text)}`);
  return [...names];
}

/** Series names the server exports with default metrics on (histograms as _bucket/_sum/_count). */
export async function exportedSeriesNames(): Promise<Set<string>> {
  const metrics = new ServerMetrics({ defaultMetrics: true });
  const names = new Set<string>();
  for (const { name, type } of await metrics.registry.getMetricsAsJSON()) {
    names.add(name);
    // prom-client's typings declare a numeric enum; at runtime `type` is the exposition format's name.
    if (String(type) === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(name + suffix);
  }
  return names;
}
