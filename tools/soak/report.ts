// The soak's verdict: the checks a run must pass, and the tables it prints (markdown, so that a
// run's output can go into docs/reliability.md as it is).
import type { Summary } from '../bench/stats.js';
import { OUTCOMES, OUTCOME_LABELS, type Outcome, type RequestRecord } from './outcome.js';
import type { MetricValues } from './probes.js';
import type { RowSpec } from './scenarios.js';

/**
 * RSS net of the KV pools' committed pages may grow by less than this from the end of warm-up to
 * the end of the run.
 */
export const MAX_RSS_GROWTH_PCT = 10;

/**
 * RSS without the KV pools' committed pages. The pools commit a page when a block is first
 * written, and the prefix cache spreads use over every block, so they grow for minutes toward
 * their size (bounded: the startup log gives it); a leak is growth of everything else.
 */
export function netRss(m: Pick<MetricValues, 'rssBytes' | 'kvCommittedBytes'>): number {
  return m.rssBytes - m.kvCommittedBytes;
}

export interface RowCounts {
  name: string;
  describe: string;
  allowed: readonly Outcome[];
  total: number;
  counts: Record<Outcome, number>;
}

export interface Check {
  name: string;
  measured: string;
  mustBe: string;
  ok: boolean;
}

export interface VerdictInput {
  rows: RowCounts[];
  healthFailures: number;
  /** Metrics once the server went quiet (null: the scrape failed). */
  end: MetricValues | null;
  /** The most RSS net of committed KV pages (netRss) the server held in warm-up. */
  netRssAfterWarmup: number | null;
  /** Seconds into the run when warm-up ended. */
  warmupS: number | null;
  /** How the server exited during the run; null: it is still running. */
  serverExit: string | null;
  /** Lines the server logged at error level or above. */
  serverErrorLines: number;
}

export function countRows(specs: readonly RowSpec[], records: readonly RequestRecord[]): RowCounts[] {
  return specs.map((spec) => {
    const counts = Object.fromEntries(OUTCOMES.map((o) => [o, 0])) as Record<Outcome, number>;
    let total = 0;
    for (const r of records) {
      if (r.scenario !== spec.name) continue;
      counts[r.outcome]++;
      total++;
    }
    return { name: spec.name, describe: spec.describe, allowed: spec.allowed, total, counts };
  });
}

/** Records whose outcome their scenario does not allow (5xx and "unexpected" included). */
export function isFinding(r: RequestRecord, rows: readonly RowCounts[]): boolean {
  const row = rows.find((x) => x.name === r.scenario);
  return !row || !row.allowed.includes(r.outcome);
}

export function rssGrowthPct(afterWarmup: number | null, end: number | null): number | null {
  return afterWarmup && end !== null ? ((end - afterWarmup) / afterWarmup) * 100 : null;
}

export function checks(v: VerdictInput): Check[] {
  const serverErrors = v.rows.reduce((s, r) => s + r.counts.server_error, 0);
  const disallowed = v.rows.flatMap((r) => OUTCOMES.filter((o) => r.counts[o] > 0 && !r.allowed.includes(o)).map((o) => `${r.name}: ${r.counts[o]} ${OUTCOME_LABELS[o]}`));
  const disallowedCount = v.rows.reduce((s, r) => s + OUTCOMES.filter((o) => !r.allowed.includes(o)).reduce((t, o) => t + r.counts[o], 0), 0);
  const idle = v.rows.filter((r) => r.total === 0).map((r) => r.name);
  const end = v.end;
  const growth = rssGrowthPct(v.netRssAfterWarmup, end ? netRss(end) : null);
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  return [
    { name: 'unexpected 5xx (no faults injected)', measured: String(serverErrors), mustBe: '0', ok: serverErrors === 0 },
    {
      name: 'outcomes their scenario does not allow',
      measured: disallowedCount === 0 ? '0' : `${disallowedCount} (${disallowed.join('; ')})`,
      mustBe: '0',
      ok: disallowedCount === 0,
    },
    { name: 'every scenario ran', measured: idle.length === 0 ? `${v.rows.length} of ${v.rows.length}` : `never ran: ${idle.join(', ')}`, mustBe: 'all', ok: idle.length === 0 },
    { name: '/health probes that did not answer 200', measured: String(v.healthFailures), mustBe: '0', ok: v.healthFailures === 0 },
    { name: 'KV blocks in use at the end', measured: end ? String(end.kvBlocksUsed) : 'no scrape', mustBe: '0', ok: end?.kvBlocksUsed === 0 },
    { name: 'requests in flight at the end', measured: end ? String(end.inflight) : 'no scrape', mustBe: '0', ok: end?.inflight === 0 },
    {
      name: 'sequences running / paused / waiting at the end',
      measured: end ? `${end.running} / ${end.paused} / ${end.waiting}` : 'no scrape',
      mustBe: '0 / 0 / 0',
      ok: end !== null && end.running === 0 && end.paused === 0 && end.waiting === 0,
    },
    {
      name: 'RSS net of committed KV pages: warm-up peak -> end',
      measured:
        growth === null
          ? 'not measured'
          : `${mib(v.netRssAfterWarmup!)} (warm-up: ${v.warmupS!.toFixed(0)} s) -> ${mib(netRss(end!))} (${growth >= 0 ? '+' : ''}${growth.toFixed(1)} %; KV pages committed at the end: ${mib(end!.kvCommittedBytes)})`,
      mustBe: `< +${MAX_RSS_GROWTH_PCT} %`,
      ok: growth !== null && growth < MAX_RSS_GROWTH_PCT,
    },
    { name: 'server log lines at error level', measured: String(v.serverErrorLines), mustBe: '0', ok: v.serverErrorLines === 0 },
    { name: 'server still running at the end', measured: v.serverExit === null ? 'yes' : `no (exited: ${v.serverExit})`, mustBe: 'yes', ok: v.serverExit === null },
  ];
}

/** Requests by scenario and outcome; a count its scenario does not allow is marked with (!). */
export function outcomeTable(rows: readonly RowCounts[]): string {
  const head = `| scenario | requests | ${OUTCOMES.map((o) => OUTCOME_LABELS[o]).join(' | ')} |`;
  const rule = `| --- | ---: | ${OUTCOMES.map(() => '---:').join(' | ')} |`;
  const cell = (n: number, allowed: boolean) => (n === 0 ? '' : allowed ? String(n) : `${n} (!)`);
  const lines = rows.map((r) => `| ${r.describe} | ${r.total} | ${OUTCOMES.map((o) => cell(r.counts[o], r.allowed.includes(o))).join(' | ')} |`);
  const total = (o: Outcome) => rows.reduce((s, r) => s + r.counts[o], 0);
  lines.push(`| **all** | **${rows.reduce((s, r) => s + r.total, 0)}** | ${OUTCOMES.map((o) => `**${total(o)}**`).join(' | ')} |`);
  return [head, rule, ...lines].join('\n');
}

export interface Figures {
  health: Summary;
  healthProbes: number;
  clientLoopDelayP99Ms: number;
  maxPausedSequences: number;
}

export function checksTable(list: readonly Check[], f: Figures): string {
  const ms = (v: number) => v.toFixed(1);
  const lines = [
    '| check | measured | must be | |',
    '| --- | --- | --- | --- |',
    ...list.map((c) => `| ${c.name} | ${c.measured} | ${c.mustBe} | ${c.ok ? 'ok' : '**FAIL**'} |`),
    `| /health latency p50 / p99 / max (${f.healthProbes} probes, every 100 ms) | ${ms(f.health.median)} / ${ms(f.health.p99)} / ${ms(f.health.max)} ms | | |`,
    `| event-loop delay p99 of the soak's clients (the /health probe has a thread of its own) | ${ms(f.clientLoopDelayP99Ms)} ms | | |`,
    `| most sequences paused at once (stalled readers) | ${f.maxPausedSequences} | | |`,
  ];
  return lines.join('\n');
}

export function verdictLine(list: readonly Check[]): string {
  const failed = list.filter((c) => !c.ok).map((c) => c.name);
  return failed.length === 0 ? 'PASS: every check holds.' : `FAIL: ${failed.join('; ')}.`;
}
