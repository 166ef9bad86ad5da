// The soak test from options to verdict: start the server on 127.0.0.1, run --concurrency client
// loops over the seeded mix of scenarios for --duration seconds while /health and /metrics are
// watched, let the server go quiet, judge, print, and always stop the server.
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { dirname, isAbsolute, relative, resolve } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { ensureBenchModel } from '../bench/bench.js';
import { startServer } from '../bench/server-process.js';
import { summarize, type Summary } from '../bench/stats.js';
import { defaultBodyLimit } from '../../src/config.js';
import { RETRY_AFTER_SECONDS } from '../../src/server/openai/errors.js';
import { Rng } from '../../src/util/rng.js';
import { parseSoakArgs, USAGE, type SoakOptions } from './options.js';
import { OUTCOMES, OUTCOME_LABELS, type Outcome, type RequestRecord } from './outcome.js';
import { HealthProbe, MetricsSampler, scrapeMetrics, type HealthFailure, type MetricValues, type MetricsSample } from './probes.js';
import { checks, checksTable, countRows, isFinding, netRss, outcomeTable, rssGrowthPct, verdictLine, type Check, type RowCounts } from './report.js';
import { floodPromptTokens, type ModelFacts } from './requests.js';
import { ROWS, TASKS, type SoakContext, type Task } from './scenarios.js';

/** Warm-up lasts at least this fraction of the run (see measureWarmupPeak). */
export const WARMUP_FRACTION = 0.15;
/** ... and until every task has finished this many times. */
export const WARMUP_ROUNDS = 3;
/** How long the server may take to finish what is in flight once the traffic stopped. */
const QUIET_TIMEOUT_MS = 30_000;
const PROGRESS_EVERY_MS = 10_000;
/** Findings (records an outcome their scenario does not allow) kept in the result. */
const MAX_FINDINGS = 50;

export interface SoakIo {
  /** The report (stdout). */
  out(text: string): void;
  /** Status and progress lines (stderr). */
  status(text: string): void;
}

export interface SoakResult {
  soak: 'gpt2-serve soak';
  format_version: 2;
  created_at: string;
  ok: boolean;
  config: SoakOptions & { model_dir: string; served_model: string; context_length: number; max_body_bytes: number; flood_prompt_tokens: number; server_args: string[] };
  server: {
    pid: number;
    url: string;
    command: string[];
    alive_at_end: boolean;
    /** How it exited when it did not survive the run ("code 1"). */
    exit_status: string | null;
    error_log_lines: number;
    error_log_samples: string[];
    /** Its last log lines when it did not survive the run. */
    log_tail: string | null;
  };
  /** Seconds from the first request to the last client finishing. */
  traffic_s: number;
  /** Milliseconds the server took to go quiet afterwards (null: it did not within 30 s). */
  quiet_after_ms: number | null;
  rows: RowCounts[];
  checks: Check[];
  findings: RequestRecord[];
  health: { probes: number; failures: number; failure_samples: HealthFailure[]; latency_ms: Summary; slow_probes: Array<{ atS: number; ms: number }> };
  client_event_loop_delay_ms: { p50: number; p99: number; max: number };
  /** after_warmup_bytes: the peak in warm-up, which ended at warmup_s (see measureWarmupPeak); max_bytes: the most in the whole run. */
  /** RSS, and RSS net of the KV pools' committed pages (what the growth check reads; report.ts netRss). */
  rss: {
    warmup_s: number | null;
    net_after_warmup_bytes: number | null;
    end_bytes: number | null;
    kv_committed_end_bytes: number | null;
    max_bytes: number;
    net_growth_pct: number | null;
  };
  /** Metrics once the server went quiet. */
  end: MetricValues | null;
  max_paused_sequences: number;
  /** /metrics every second. */
  samples: MetricsSample[];
  records: RequestRecord[];
}

/**
 * Hands out tasks: each task once first, in table order (so that even a short run covers every
 * scenario, and the slow stalled readers overlap the rest), then by weight. Cooldowns apply only
 * once warm-up is over: until then the stalled readers' floods follow each other, so that the
 * server reaches its memory high-water mark before RSS is first measured.
 */
class Mix {
  private readonly unstarted: Task[];
  private readonly running = new Map<string, number>();
  private readonly lastEnded = new Map<string, number>();
  private readonly finished = new Map<string, number>();
  warm = false;

  constructor(
    private readonly tasks: readonly Task[],
    private readonly startedAt = performance.now(),
  ) {
    this.unstarted = [...tasks];
  }

  private free(t: Task): boolean {
    if (t.maxConcurrent !== undefined && (this.running.get(t.name) ?? 0) >= t.maxConcurrent) return false;
    const ended = this.lastEnded.get(t.name);
    return !this.warm || t.cooldownMs === undefined || ended === undefined || performance.now() - ended >= t.cooldownMs;
  }

  /** Whether some task has not been handed out yet (the run goes on until each has been). */
  hasUnstarted(): boolean {
    return this.unstarted.length > 0;
  }

  /** Whether every task has run to its end at least `times` times. */
  everyTaskFinished(times: number): boolean {
    return this.tasks.every((t) => (this.finished.get(t.name) ?? 0) >= times);
  }

  pick(rng: Rng): Task {
    const first = this.unstarted.findIndex((t) => this.free(t));
    if (first >= 0) return this.unstarted.splice(first, 1)[0]!;
    const open = this.tasks.filter((t) => this.free(t));
    let x = rng.next() * open.reduce((s, t) => s + t.weight, 0);
    for (const t of open) if ((x -= t.weight) < 0) return t;
    return open[open.length - 1]!;
  }

  async run(task: Task, ctx: SoakContext, rng: Rng): Promise<RequestRecord[]> {
    this.running.set(task.name, (this.running.get(task.name) ?? 0) + 1);
    const atS = (performance.now() - this.startedAt) / 1000;
    try {
      return (await task.run(ctx, rng)).map((r) => ({ ...r, atS }));
    } catch (err) {
      // A bug in the soak's own client is a finding too, not a crash that leaves the others running.
      return [{ scenario: task.rows[0]!, outcome: 'unexpected', status: null, code: null, ms: 0, atS, detail: `soak client error: ${(err as Error).stack ?? String(err)}` }];
    } finally {
      this.running.set(task.name, this.running.get(task.name)! - 1);
      this.lastEnded.set(task.name, performance.now());
      this.finished.set(task.name, (this.finished.get(task.name) ?? 0) + 1);
    }
  }
}

/**
 * One client: tasks back to back until the deadline (and until every task has started once); after
 * a 429 it waits as Retry-After asks (1 s), plus jitter.
 */
async function clientLoop(index: number, ctx: SoakContext, mix: Mix, seed: number, deadline: number, records: RequestRecord[]): Promise<void> {
  const rng = new Rng(seed * 1_000_003 + index + 1);
  while (performance.now() < deadline || mix.hasUnstarted()) {
    const task = mix.pick(rng);
    const got = await mix.run(task, ctx, rng);
    records.push(...got);
    const pause = got.some((r) => r.outcome === 'overloaded') ? RETRY_AFTER_SECONDS * 1000 * (1 + rng.next() / 2) : rng.next() * 20;
    await new Promise((r) => setTimeout(r, pause));
  }
}

function progressLine(elapsedS: number, durationS: number, records: readonly RequestRecord[], health: readonly number[]): string {
  const counts = new Map<Outcome, number>();
  for (const r of records) counts.set(r.outcome, (counts.get(r.outcome) ?? 0) + 1);
  const parts = OUTCOMES.filter((o) => counts.has(o)).map((o) => `${OUTCOME_LABELS[o]} ${counts.get(o)}`);
  const h = summarize(health.slice(-600));
  return `soak: ${elapsedS.toFixed(0)}/${durationS} s, ${records.length} requests (${parts.join(', ') || 'none yet'}), /health p99 ${h.p99.toFixed(1)} ms`;
}

/**
 * The RSS the server reached in warm-up, net of the KV pools' committed pages (netRss): the most it held (per-second samples) until the run was
 * past WARMUP_FRACTION and every task had finished WARMUP_ROUNDS times, the stalled readers' floods
 * back to back meanwhile. The floods' long prefills with logits at every position grow ONNX
 * Runtime's arena in steps, as much as the shapes that happen to meet in a step ask for: on
 * GPT-2-small shapes RSS levels off after a few floods and then stays flat (2300-2360 MiB from 70 s
 * to 360 s in a 6-minute run). Memory held once is not growth; a leak still shows as RSS at the end
 * above that peak. Null if warm-up outlasts the run.
 */
async function measureWarmupPeak(mix: Mix, sampler: MetricsSampler, start: number, deadline: number, io: SoakIo): Promise<{ netRssAfterWarmup: number | null; warmupS: number | null }> {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  await sleep((deadline - start) * WARMUP_FRACTION);
  while (!mix.everyTaskFinished(WARMUP_ROUNDS) && performance.now() < deadline) await sleep(250);
  mix.warm = true;
  if (!mix.everyTaskFinished(WARMUP_ROUNDS)) {
    io.status(`soak: warm-up outlasted the run (not every kind of request finished ${WARMUP_ROUNDS} times); RSS growth is not measured`);
    return { netRssAfterWarmup: null, warmupS: null };
  }
  await sampler.sample();
  const warmupS = (performance.now() - start) / 1000;
  const peak = Math.max(...sampler.samples.map(netRss));
  io.status(`soak: warm-up over after ${warmupS.toFixed(0)} s; RSS net of committed KV pages peaked at ${(peak / 2 ** 20).toFixed(0)} MiB`);
  return { netRssAfterWarmup: peak, warmupS };
}

/** Polls /metrics until nothing is in flight, running, paused, waiting or holding KV blocks. */
async function waitQuiet(sampler: MetricsSampler, timeoutMs: number): Promise<{ end: MetricValues | null; afterMs: number | null }> {
  const start = performance.now();
  let last: MetricValues | null = null;
  for (;;) {
    last = (await sampler.sample()) ?? last;
    if (last && last.inflight === 0 && last.kvBlocksUsed === 0 && last.running === 0 && last.paused === 0 && last.waiting === 0) {
      return { end: last, afterMs: performance.now() - start };
    }
    if (performance.now() - start > timeoutMs) return { end: last, afterMs: null };
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function modelFacts(baseUrl: string, serverArgs: readonly string[]): Promise<ModelFacts> {
  const res = await fetch(`${baseUrl}/v1/models`);
  const body = (await res.json()) as { data?: Array<{ id?: unknown; max_model_len?: unknown }> };
  const m = body.data?.[0];
  if (typeof m?.id !== 'string' || typeof m.max_model_len !== 'number') throw new Error(`GET /v1/models listed no model: ${JSON.stringify(body).slice(0, 200)}`);
  // The body limit the server runs with: --max-body-bytes if the soak passed one, else its default.
  const given = serverArgs.map((a, i) => (a === '--max-body-bytes' ? serverArgs[i + 1] : a.startsWith('--max-body-bytes=') ? a.split('=')[1] : undefined)).find((v) => v !== undefined);
  return {
    model: m.id,
    contextLength: m.max_model_len,
    maxBodyBytes: given !== undefined ? Number(given) : defaultBodyLimit(m.max_model_len),
    floodPromptTokens: floodPromptTokens(m.max_model_len),
  };
}

export async function runSoak(opts: SoakOptions, io: SoakIo): Promise<SoakResult> {
  const modelDir = await ensureBenchModel(opts.model, opts.defaultModel, io.status);
  const serverArgs = ['--max-concurrent-requests', String(opts.maxConcurrentRequests), '--stall-timeout-ms', String(opts.stallTimeoutMs), ...opts.serverArgs];
  io.status(`soak: starting the server (serve --model ${modelDir} ${serverArgs.join(' ')}) ...`);
  const errorLog: string[] = [];
  let errorLines = 0;
  const logFile = opts.serverLog === null ? null : createWriteStream(opts.serverLog);
  const server = await startServer({
    modelDir,
    args: serverArgs,
    onLog: (line) => {
      logFile?.write(`${line}\n`);
      // pino levels: 50 error, 60 fatal. Warnings (a stalled websocket cut off) are expected.
      if (/"level":\s*(50|60)\b/.test(line)) {
        errorLines++;
        if (errorLog.length < 20) errorLog.push(line.slice(0, 500));
      }
    },
  });
  const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  const health = new HealthProbe(server.url);
  const sampler = new MetricsSampler(server.url);
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  const timers: NodeJS.Timeout[] = [];
  try {
    const facts = await modelFacts(server.url, serverArgs);
    const requestTimeoutMs = opts.requestTimeoutS * 1000;
    const ctx: SoakContext = {
      facts,
      http: { baseUrl: server.url, agent, requestTimeoutMs },
      ws: { baseUrl: server.url, requestTimeoutMs },
      stallTimeoutMs: opts.stallTimeoutMs,
    };
    io.status(
      `soak: ${server.url}, model ${facts.model}; ${opts.durationS} s of traffic from ${opts.concurrency} clients (seed ${opts.seed}); ` +
        `at most ${opts.maxConcurrentRequests} requests in flight (more get 429); stalled readers are cut off after ${opts.stallTimeoutMs} ms (--stall-timeout-ms)`,
    );

    const records: RequestRecord[] = [];
    const start = performance.now();
    const durationMs = opts.durationS * 1000;
    const deadline = start + durationMs;
    health.start();
    sampler.start();
    loopDelay.enable();
    timers.push(setInterval(() => io.status(progressLine((performance.now() - start) / 1000, opts.durationS, records, health.latenciesMs)), PROGRESS_EVERY_MS));
    const mix = new Mix(TASKS, start);
    const warmup = measureWarmupPeak(mix, sampler, start, deadline, io);
    await Promise.all(Array.from({ length: opts.concurrency }, (_, i) => clientLoop(i, ctx, mix, opts.seed, deadline, records)));
    const { netRssAfterWarmup, warmupS } = await warmup;
    const trafficS = (performance.now() - start) / 1000;
    for (const t of timers) clearTimeout(t);
    io.status(`soak: traffic over after ${trafficS.toFixed(1)} s (${records.length} requests); waiting for the server to go quiet ...`);
    const quiet = await waitQuiet(sampler, QUIET_TIMEOUT_MS);
    loopDelay.disable();
    await health.stop();
    await sampler.stop();

    const rows = countRows(ROWS, records);
    const alive = server.isRunning();
    const list = checks({ rows, healthFailures: health.failures.length, end: quiet.end, netRssAfterWarmup, warmupS, serverExit: server.exitStatus(), serverErrorLines: errorLines });
    const rss = sampler.samples.map((s) => s.rssBytes);
    return {
      soak: 'gpt2-serve soak',
      format_version: 2,
      created_at: new Date().toISOString(),
      ok: list.every((c) => c.ok),
      config: {
        ...opts,
        model_dir: modelDir,
        served_model: facts.model,
        context_length: facts.contextLength,
        max_body_bytes: facts.maxBodyBytes,
        flood_prompt_tokens: facts.floodPromptTokens,
        server_args: serverArgs,
      },
      server: {
        pid: server.pid,
        url: server.url,
        command: server.command,
        alive_at_end: alive,
        exit_status: server.exitStatus(),
        error_log_lines: errorLines,
        error_log_samples: errorLog,
        log_tail: alive ? null : server.logTail(),
      },
      traffic_s: trafficS,
      quiet_after_ms: quiet.afterMs,
      rows,
      checks: list,
      findings: records.filter((r) => isFinding(r, rows)).slice(0, MAX_FINDINGS),
      health: {
        probes: health.latenciesMs.length,
        failures: health.failures.length,
        failure_samples: health.failures.slice(0, 20),
        latency_ms: summarize(health.latenciesMs),
        slow_probes: health.slow,
      },
      client_event_loop_delay_ms: { p50: loopDelay.percentile(50) / 1e6, p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 },
      rss: {
        warmup_s: warmupS,
        net_after_warmup_bytes: netRssAfterWarmup,
        end_bytes: quiet.end?.rssBytes ?? null,
        kv_committed_end_bytes: quiet.end?.kvCommittedBytes ?? null,
        max_bytes: Math.max(0, ...rss),
        net_growth_pct: rssGrowthPct(netRssAfterWarmup, quiet.end ? netRss(quiet.end) : null),
      },
      end: quiet.end,
      max_paused_sequences: Math.max(0, ...sampler.samples.map((s) => s.paused)),
      samples: sampler.samples,
      records,
    };
  } finally {
    for (const t of timers) clearTimeout(t);
    loopDelay.disable();
    await health.stop();
    await sampler.stop();
    agent.destroy();
    await server.stop();
    logFile?.end();
  }
}

/** A path as the user would type it: relative to the working folder when inside it. */
function shownPath(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : path;
}

/** The printed report: what ran, requests by scenario and outcome, the checks, the verdict. */
export function reportText(r: SoakResult): string {
  const c = r.config;
  const lines = [
    `## Soak: ${c.durationS} s, ${c.concurrency} clients, seed ${c.seed}, model ${r.config.served_model}`,
    '',
    `Server: \`serve --model ${shownPath(c.model_dir)} ${c.server_args.join(' ')}\` on 127.0.0.1; stalled readers are cut off after ` +
      `${c.stallTimeoutMs} ms (--stall-timeout-ms), at most ${c.maxConcurrentRequests} requests in flight (429 beyond). ` +
      `A stalled reader asks for a ${c.flood_prompt_tokens}-token prompt echoed with 20 logprobs to 16 choices, more output than the loopback socket buffers hold.`,
    '',
    outcomeTable(r.rows),
    '',
    checksTable(r.checks, {
      health: r.health.latency_ms,
      healthProbes: r.health.probes,
      clientLoopDelayP99Ms: r.client_event_loop_delay_ms.p99,
      maxPausedSequences: r.max_paused_sequences,
    }),
    '',
  ];
  if (r.findings.length > 0) {
    lines.push('Findings (first of each kind):');
    const seen = new Set<string>();
    for (const f of r.findings) {
      const key = `${f.scenario}/${f.outcome}/${f.detail ?? ''}`;
      if (seen.has(key)) continue;
      seen.add(key);
      lines.push(`- ${f.scenario}: ${OUTCOME_LABELS[f.outcome]}${f.status !== null ? ` (status ${f.status}${f.code ? ` ${f.code}` : ''})` : ''}${f.detail ? `: ${f.detail}` : ''}`);
    }
    lines.push('');
  }
  if (r.server.log_tail !== null) lines.push(`The server exited during the run (${r.server.exit_status}); its last log lines:`, '```', r.server.log_tail, '```', '');
  if (r.server.error_log_lines > 0) lines.push(`The server logged ${r.server.error_log_lines} error line(s); first: ${r.server.error_log_samples[0]}`, '');
  lines.push(verdictLine(r.checks));
  return lines.join('\n');
}

/** JSON replacer: 3 decimals are plenty for milliseconds. */
function roundFloats(_key: string, v: unknown): unknown {
  return typeof v === 'number' && !Number.isInteger(v) ? +v.toFixed(3) : v;
}

/** The whole CLI: parse, run, print, write. Returns the result (null for --help). */
export async function soakMain(argv: string[], io: Partial<SoakIo> = {}): Promise<SoakResult | null> {
  const full: SoakIo = {
    out: io.out ?? ((t) => process.stdout.write(`${t}\n`)),
    status: io.status ?? ((t) => process.stderr.write(`${t}\n`)),
  };
  const opts = parseSoakArgs(argv);
  if (opts === null) {
    full.out(USAGE);
    return null;
  }
  const result = await runSoak(opts, full);
  full.out(reportText(result));
  if (opts.json) {
    mkdirSync(dirname(resolve(opts.json)), { recursive: true });
    writeFileSync(opts.json, `${JSON.stringify(result, roundFloats, 2)}\n`);
    full.status(`soak: wrote ${opts.json}`);
  }
  return result;
}
