// Human-readable output: one block per run (vLLM's layout, condensed) and the sweep as markdown
// tables, with the baseline and the speedup when there is one.
import type { RunMetrics } from './metrics.js';
import type { Summary } from './stats.js';

export interface Speedup {
  concurrency: number | null;
  request_rate: number | null;
  /** Output tokens/s of the first server over the baseline's (--max-num-seqs 1 unless --baseline-args). */
  output_throughput_ratio: number;
  /** Median end-to-end latency of the baseline over that of the first server (> 1: the first is faster). */
  median_e2el_ratio: number;
}

const f1 = (n: number) => n.toFixed(1);
const f2 = (n: number) => n.toFixed(2);

export function runLabel(m: Pick<RunMetrics, 'concurrency' | 'request_rate'>): string {
  if (m.request_rate === null) return `concurrency ${m.concurrency}`;
  return `rate ${m.request_rate}/s${m.concurrency === null ? '' : `, max ${m.concurrency} in flight`}`;
}

export function runBlock(title: string, m: RunMetrics): string {
  const row = (name: string, s: Summary) =>
    `${name.padEnd(8)}${[s.mean, s.median, s.p90, s.p99].map((v) => f2(v).padStart(12)).join('')}`;
  const kv = (k: string, v: string | number) => `${k.padEnd(34)}${v}`;
  const lines = [
    `==== ${title} `.padEnd(64, '='),
    kv('Successful requests:', m.completed),
    kv('Errors:', m.errors),
    ...m.error_samples.map((e) => `  ! ${e}`),
    kv('Benchmark duration (s):', f2(m.duration_s)),
    kv('Total input tokens:', m.total_input_tokens),
    kv('Total generated tokens:', m.total_output_tokens),
    kv('Request throughput (req/s):', f2(m.request_throughput)),
    kv('Output token throughput (tok/s):', f2(m.output_throughput)),
    kv('Total token throughput (tok/s):', f2(m.total_token_throughput)),
    `${'(ms)'.padEnd(8)}${['mean', 'median', 'p90', 'p99'].map((h) => h.padStart(12)).join('')}`,
    row('TTFT', m.ttft_ms),
    row('TPOT', m.tpot_ms),
    row('ITL', m.itl_ms),
    row('E2E', m.e2el_ms),
    ...(m.health_ms ? [row('/health', m.health_ms)] : []),
    ...(m.models_ms ? [row('/models', m.models_ms)] : []),
    ...(m.health_failures || m.models_failures ? [kv('Probes failed (/health, /models):', `${m.health_failures ?? 0}, ${m.models_failures ?? 0}`)] : []),
    ...(m.hostile_refused !== undefined ? [kv('Huge prompts (refused / not):', `${m.hostile_refused} / ${m.hostile_unexpected}`)] : []),
    ...(m.spec_decode ? [kv('Draft tokens accepted / proposed:', `${m.spec_decode.accepted_tokens} / ${m.spec_decode.draft_tokens}`), kv('Acceptance rate:', specCell(m))] : []),
  ];
  return lines.join('\n');
}

function sweepKey(m: RunMetrics): string {
  return m.request_rate === null ? 'concurrency' : 'rate (req/s)';
}

function firstColumn(m: RunMetrics): string {
  if (m.request_rate === null) return String(m.concurrency);
  return m.concurrency === null ? String(m.request_rate) : `${m.request_rate} (max ${m.concurrency})`;
}

/** "62.5% (3.50)": acceptance rate and mean acceptance length (tokens per verifying step); "-" when nothing was drafted. */
function specCell(m: RunMetrics): string {
  const s = m.spec_decode;
  return s && s.draft_tokens > 0 ? `${(s.acceptance_rate * 100).toFixed(1)}% (${f2(s.mean_acceptance_length)})` : '-';
}

/**
 * The sweep as a markdown table; where the server counted speculation, a column with its
 * acceptance; with speedups, a last column with the throughput ratio over the baseline.
 */
export function markdownTable(runs: RunMetrics[], speedups: Speedup[] | null = null, baselineLabel = 'max-num-seqs 1'): string {
  if (runs.length === 0) return '';
  const pair = (s: Summary) => `${f1(s.median)} / ${f1(s.p99)}`;
  const header = [
    sweepKey(runs[0]!),
    'requests',
    'errors',
    'req/s',
    'output tok/s',
    'total tok/s',
    'TTFT p50 / p99 (ms)',
    'TPOT p50 / p99 (ms)',
    'ITL p50 / p99 (ms)',
    'E2E p50 / p99 (ms)',
    '/health p50 / p99 (ms)',
    '/v1/models p50 / p99 (ms)',
  ];
  const spec = runs.some((m) => m.spec_decode);
  if (spec) header.push('draft acceptance (mean length)');
  if (speedups) header.push(`speedup vs ${baselineLabel.replace(/^--/, '')}`);
  const rows = runs.map((m, i) => {
    const cells = [
      firstColumn(m),
      String(m.num_requests),
      String(m.errors),
      f2(m.request_throughput),
      f1(m.output_throughput),
      f1(m.total_token_throughput),
      pair(m.ttft_ms),
      pair(m.tpot_ms),
      pair(m.itl_ms),
      pair(m.e2el_ms),
      m.health_ms ? pair(m.health_ms) : '-',
      m.models_ms ? pair(m.models_ms) : '-',
    ];
    if (spec) cells.push(specCell(m));
    if (speedups) cells.push(speedups[i] ? `${f2(speedups[i]!.output_throughput_ratio)}x` : '-');
    return cells;
  });
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  const align = header.map((_, i) => (i === 0 ? '---' : '---:'));
  return [line(header), line(align), ...rows.map(line)].join('\n');
}

export function speedupsOf(batched: RunMetrics[], baseline: RunMetrics[]): Speedup[] {
  return batched.map((b, i) => {
    const s = baseline[i]!;
    return {
      concurrency: b.concurrency,
      request_rate: b.request_rate,
      output_throughput_ratio: s.output_throughput > 0 ? b.output_throughput / s.output_throughput : 0,
      median_e2el_ratio: b.e2el_ms.median > 0 ? s.e2el_ms.median / b.e2el_ms.median : 0,
    };
  });
}

export function speedupLine(s: Speedup, batched: RunMetrics, baseline: RunMetrics, baselineLabel = '--max-num-seqs 1'): string {
  return (
    `speedup at ${runLabel(s)}: ${f2(s.output_throughput_ratio)}x output tok/s ` +
    `(${f1(batched.output_throughput)} vs ${f1(baseline.output_throughput)} with ${baselineLabel}), ` +
    `median E2E latency ${f2(s.median_e2el_ratio)}x (baseline / first server)`
  );
}
