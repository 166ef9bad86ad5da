// The benchmark from options to result: start the server(s) (or use --url), warm up, run the
// sweep level by level (with --baseline, the same workload on the baseline server, --max-num-seqs 1
// unless --baseline-args says otherwise, right after each level, so both sides of a ratio see the
// same machine weather), always stop what it started, and print, chart and save the result.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CONTRACT_VERSION } from '../../src/model/serving-graph.js';
import { readGpt2Config } from '../../src/model/gpt2-checkpoint.js';
import { makeTinyModel, PRESETS } from '../../src/model/tiny.js';
import type { WeightDtype } from '../../src/model/weight-format.js';
import { makeCopyingModel } from './copying-model.js';
import { gpt2Tokenizer } from './gpt2-tokenizer.js';
import { machine, software, type Machine, type Software } from './environment.js';
import { runLoad } from './load.js';
import { ensureBenchLoras, flagValue, loraAdapterBytes, loraInOutPerLayer, loraServerArgs, requestAdapters } from './lora-adapters.js';
import { computeMetrics, type RunMetrics, type RunProbes } from './metrics.js';
import { parseBenchArgs, planRuns, USAGE, type BenchOptions, type RunPlan, type WorkloadKind } from './options.js';
import { docsProse } from './passages.js';
import { startHostilePrompts, startProbe } from './probes.js';
import { makeProgress, type RunProgress } from './progress.js';
import { markdownTable, runBlock, runLabel, speedupLine, speedupsOf, type Speedup } from './report.js';
import { startServer, type ServerHandle } from './server-process.js';
import { scrapeSpecCounters, specDecodeBetween } from './spec-metrics.js';
import { sseTransport } from './sse-client.js';
import { renderSvg } from './svg.js';
import type { BenchApi, Transport, TransportOptions } from './transport.js';
import { makeGroundedWorkload, makeWorkload, runSeed, type BenchRequest } from './workload.js';
import { wsTransport } from './ws-client.js';

/** /health and /v1/models are probed this often during every run (their latency is reported). */
const PROBE_INTERVAL_MS = 100;

export interface BenchIo {
  /** The report (stdout). */
  out(text: string): void;
  /** Status lines (stderr). */
  status(text: string): void;
  progress: RunProgress;
}

export interface BenchResult {
  benchmark: 'gpt2-serve bench-serving';
  format_version: 1;
  created_at: string;
  config: {
    target: 'url' | 'model';
    url: string | null;
    model_dir: string | null;
    server_args: string[];
    transport: 'sse' | 'ws';
    /** Absent in results saved before --api existed (completions). */
    api?: BenchApi;
    /** Absent in results saved before --workload existed (random). */
    workload?: WorkloadKind;
    prompt_tokens: number;
    /** Absent in files written before the prefix-caching workload. */
    shared_prefix_tokens?: number;
    output_tokens: number;
    seed: number;
    temperature: 0;
    ignore_eos: true;
    baseline: boolean;
    runs: RunPlan[];
  };
  /** The served model id (from /v1/models). */
  model: string;
  /** peak_rss_bytes: the started server's peak resident memory at the end of the sweep (Linux; null otherwise). */
  servers: Array<{ role: 'batched' | 'baseline'; url: string; started: boolean; pid: number | null; command: string[] | null; peak_rss_bytes: number | null }>;
  software: Software;
  /** load_average_end: the load averages when the sweep ended. */
  machine: Machine & { load_average_end: number[] };
  runs: RunMetrics[];
  baseline: { server_args: string[]; runs: RunMetrics[] } | null;
  speedup: Speedup[] | null;
  /** --lora-adapters: null (or absent, in results saved before it) without adapters. */
  lora?: LoraReport | null;
}

/** The adapters a run served and how its requests named them. */
export interface LoraReport {
  adapters: number;
  rank: number;
  alpha: number;
  names: string[];
  dir: string;
  /** Fraction of the requests that named the base model. */
  base_share: number;
  /** The server's --max-loras and --max-lora-rank (the benchmark's, or a --server-arg's). */
  max_loras: number;
  max_lora_rank: number;
  model_layers: number;
  /** in + out of the four adapted modules of a layer. */
  module_in_out: number;
  /** max_lora_rank x module_in_out x model_layers x 4: one adapter in the server's memory (per loaded adapter and per slot). */
  adapter_bytes: number;
  /** The batching server's requests over the sweep by the model they named (the base model's id included). */
  requests_by_model: Record<string, number>;
}

interface Target {
  role: 'batched' | 'baseline';
  url: string;
  server: ServerHandle | null;
}

/**
 * The benchmark's own model folders, made when missing: `bench-gpt2-small` (random weights) or
 * `bench-gpt2-small-copy` (tools/bench/copying-model.ts), GPT-2-small shapes, seed 0, optionally
 * followed by the export dtype (`-int8`, `-int4`, `-fp16`).
 */
export function benchModelKind(dir: string): { weights: 'random' | 'copying'; dtype: WeightDtype } | null {
  const m = /^bench-gpt2-small(-copy)?(?:-(int8|int4|fp16))?$/.exec(basename(resolve(dir)));
  return m ? { weights: m[1] ? 'copying' : 'random', dtype: (m[2] ?? 'fp32') as WeightDtype } : null;
}

/**
 * The model folder to serve: `model` if it holds an export; the default folder and the other
 * benchmark folders (benchModelKind) are made once, any other must exist. Shared with the soak test.
 */
export async function ensureBenchModel(model: string, isDefault: boolean, status: (text: string) => void): Promise<string> {
  const dir = resolve(model);
  const kind = benchModelKind(dir);
  const makeable = isDefault || kind !== null;
  if (existsSync(join(dir, 'manifest.json'))) {
    const version = (JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { contractVersion?: unknown }).contractVersion;
    if (version === CONTRACT_VERSION || !makeable) return dir; // a user's folder: the server says what is wrong with it
    status(`${dir} was exported for graph contract ${String(version)}; this server speaks ${CONTRACT_VERSION}: making it again`);
    rmSync(dir, { recursive: true, force: true });
  } else if (!makeable) {
    throw new Error(`no exported model in ${dir} (make one: npm run model:tiny -- --out ${model} --preset gpt2-small)`);
  }
  const { weights, dtype } = kind ?? { weights: 'random', dtype: 'fp32' };
  const make = weights === 'copying' ? makeCopyingModel : makeTinyModel;
  status(`creating a GPT-2-small-shaped ${weights === 'copying' ? 'context-copying' : 'random'} ${dtype} model in ${dir} (once, about 1 GB) ...`);
  await make({ out: dir, seed: 0, shape: PRESETS['gpt2-small'], weights: { dtype } });
  return dir;
}

/** The repository root (README.md and docs/ beside package.json), from this module's place in tools/ or dist/tools/. */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) || !existsSync(join(dir, 'docs'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('--workload grounded quotes README.md and docs/*.md: run it from a checkout of the repository');
    dir = up;
  }
  return dir;
}

type MakeRequests = (seed: number, requests: number, outputTokens: number) => BenchRequest[];

/** The prompts of a run, by --workload (the grounded one reads the docs and the tokenizer once). */
async function workloadOf(opts: BenchOptions): Promise<MakeRequests> {
  const { promptTokens, sharedPrefixTokens } = opts;
  if (opts.workload === 'random') return (seed, requests, outputTokens) => makeWorkload({ seed, requests, promptTokens, outputTokens, sharedPrefixTokens });
  const paragraphs = docsProse(repoRoot());
  const tokenizer = await gpt2Tokenizer();
  const encode = (text: string) => tokenizer.encode(text);
  return (seed, requests, outputTokens) => makeGroundedWorkload({ seed, requests, promptTokens, outputTokens, paragraphs, encode });
}

/** The base model's id: the first listed that is not one of `adapters`, which must all be listed. */
async function servedModel(url: string, apiKey: string | null, adapters: readonly string[] = []): Promise<string> {
  const res = await fetch(`${url}/v1/models`, { headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {} });
  const text = await res.text();
  if (!res.ok) throw new Error(`GET ${url}/v1/models: HTTP ${res.status} ${text.slice(0, 200)}`);
  const ids = ((JSON.parse(text) as { data?: Array<{ id?: unknown }> }).data ?? []).map((m) => m.id).filter((id): id is string => typeof id === 'string');
  const missing = adapters.filter((a) => !ids.includes(a));
  if (missing.length) throw new Error(`GET ${url}/v1/models does not list the LoRA adapter(s) ${missing.join(', ')} the server was started with`);
  const id = ids.find((i) => !adapters.includes(i));
  if (id === undefined) throw new Error(`GET ${url}/v1/models listed no model`);
  return id;
}

/**
 * --api chat and --api responses: each prompt's ids as text (the server's /detokenize, before the
 * run's clock), sent as one user message (chat's `messages`, a response's string `input`). The
 * same ids as the completions runs, so the three APIs see the same text.
 */
async function withPromptText(url: string, requests: BenchRequest[], model: string, apiKey: string | null): Promise<BenchRequest[]> {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) };
  return Promise.all(
    requests.map(async (r) => {
      const res = await fetch(`${url}/detokenize`, { method: 'POST', headers, body: JSON.stringify({ model, tokens: r.promptIds }) });
      const text = await res.text();
      if (!res.ok) throw new Error(`POST ${url}/detokenize: HTTP ${res.status} ${text.slice(0, 200)}`);
      return { ...r, promptText: (JSON.parse(text) as { prompt: string }).prompt };
    }),
  );
}

function openTransport(kind: 'sse' | 'ws', options: TransportOptions): Promise<Transport> {
  return kind === 'ws' ? wsTransport(options) : Promise.resolve(sseTransport(options));
}

/**
 * One short request through the benchmark's own path, to the base model and to each adapter (its
 * first use loads it into a slot); a failure here is a setup problem.
 */
async function warmUp(target: Target, kind: 'sse' | 'ws', options: TransportOptions, opts: BenchOptions, workload: MakeRequests, adapters: readonly string[]): Promise<void> {
  let [request] = workload(opts.seed + 1_000_003, 1, Math.min(4, opts.outputTokens));
  if (opts.api !== 'completions') [request] = await withPromptText(target.url, [request!], options.model, opts.apiKey);
  const transport = await openTransport(kind, options);
  try {
    for (const model of [undefined, ...adapters]) {
      const r = await transport.send({ ...request!, ...(model ? { model } : {}) }, 0);
      if (!r.ok) {
        const log = target.server?.logTail();
        throw new Error(`the warm-up request to the ${target.role} server (model ${model ?? options.model}) failed: ${r.error}${log ? `\nserver log (last lines):\n${log}` : ''}`);
      }
    }
  } finally {
    await transport.close();
  }
}

export async function runBenchmark(opts: BenchOptions, io: BenchIo): Promise<BenchResult> {
  const plans = planRuns(opts);
  const workload = await workloadOf(opts);
  const atStart = machine();
  const targets: Target[] = [];
  const baselineLabel = opts.baselineArgs.join(' ');
  try {
    let modelDir: string | null = null;
    let lora: LoraReport | null = null;
    if (opts.url !== null) {
      targets.push({ role: 'batched', url: opts.url, server: null });
    } else {
      modelDir = await ensureBenchModel(opts.model!, opts.defaultModel, io.status);
      let common = opts.serverArgs;
      if (opts.loraAdapters > 0) {
        const adapters = ensureBenchLoras({ modelDir, loraDir: opts.loraDir, count: opts.loraAdapters, rank: opts.loraRank });
        const made = adapters.filter((a) => a.made).length;
        if (made) io.status(`made ${made} LoRA adapter(s) of rank ${opts.loraRank} in ${resolve(opts.loraDir)}`);
        // Both servers get the adapters: the baseline is sent the same requests.
        common = [...loraServerArgs(adapters, opts.loraRank, opts.serverArgs), ...opts.serverArgs];
        lora = loraReport(opts, modelDir, adapters.map((a) => a.name), common);
        io.status(loraLines(lora).join('\n'));
      }
      const roles: Array<['batched' | 'baseline', string[]]> = [['batched', common]];
      if (opts.baseline) roles.push(['baseline', [...common, ...opts.baselineArgs]]);
      for (const [role, args] of roles) {
        io.status(`starting the ${role} server (${['serve', '--model', modelDir, ...args].join(' ')}) ...`);
        const server = await startServer({ modelDir, args });
        targets.push({ role, url: server.url, server });
        io.status(`${role} server ready at ${server.url} (pid ${server.pid})`);
      }
    }
    const adapterNames = lora?.names ?? [];
    const model = await servedModel(targets[0]!.url, opts.apiKey, adapterNames);
    const transportOptions = (t: Target): TransportOptions => ({
      baseUrl: t.url,
      model,
      api: opts.api,
      requestTimeoutMs: opts.requestTimeoutS * 1000,
      ...(opts.apiKey ? { apiKey: opts.apiKey } : {}),
    });
    for (const t of targets) await warmUp(t, opts.transport, transportOptions(t), opts, workload, adapterNames);

    const runs: Record<Target['role'], RunMetrics[]> = { batched: [], baseline: [] };
    for (const [run, plan] of plans.entries()) {
      let prompts = workload(runSeed(opts.seed, run), plan.requests, opts.outputTokens);
      if (lora) {
        const names = requestAdapters(prompts.length, lora.names, lora.base_share);
        prompts = prompts.map((r) => (names[r.index] ? { ...r, model: names[r.index]! } : r));
        for (const r of prompts) lora.requests_by_model[r.model ?? model] = (lora.requests_by_model[r.model ?? model] ?? 0) + 1;
      }
      for (const t of targets) {
        const requests = opts.api !== 'completions' ? await withPromptText(t.url, prompts, model, opts.apiKey) : prompts;
        const label = `${t.role === 'baseline' ? baselineLabel : 'batching'}, ${runLabel({ concurrency: plan.concurrency, request_rate: plan.rate })}`;
        const specBefore = await scrapeSpecCounters(t.url);
        const transport = await openTransport(opts.transport, transportOptions(t));
        io.progress.start(label, requests.length);
        const health = startProbe(t.url, '/health', PROBE_INTERVAL_MS);
        const models = startProbe(t.url, '/v1/models', PROBE_INTERVAL_MS, opts.apiKey);
        const hostile = opts.hostilePromptBytes ? startHostilePrompts(t.url, model, opts.hostilePromptBytes, PROBE_INTERVAL_MS, opts.apiKey) : null;
        let load;
        let probes: RunProbes;
        try {
          load = await runLoad(transport, { requests, concurrency: plan.concurrency, rate: plan.rate, seed: opts.seed }, (p) => io.progress.update(p));
        } finally {
          probes = { health: await health.stop(), models: await models.stop(), hostile: (await hostile?.stop()) ?? null };
          io.progress.stop();
          await transport.close();
        }
        const m = computeMetrics(load.results, load.durationMs, { concurrency: plan.concurrency, rate: plan.rate }, probes);
        const specAfter = specBefore && (await scrapeSpecCounters(t.url));
        if (specBefore && specAfter) m.spec_decode = specDecodeBetween(specBefore, specAfter);
        runs[t.role].push(m);
        io.out(`${runBlock(`${label} (${apiLabel(opts)})`, m)}\n`);
      }
      if (opts.baseline) {
        const i = runs.batched.length - 1;
        const [s] = speedupsOf([runs.batched[i]!], [runs.baseline[i]!]);
        io.out(`${speedupLine(s!, runs.batched[i]!, runs.baseline[i]!, baselineLabel)}\n`);
      }
    }

    return {
      benchmark: 'gpt2-serve bench-serving',
      format_version: 1,
      created_at: new Date().toISOString(),
      config: {
        target: opts.url !== null ? 'url' : 'model',
        url: opts.url,
        model_dir: modelDir,
        server_args: opts.serverArgs,
        transport: opts.transport,
        api: opts.api,
        workload: opts.workload,
        prompt_tokens: opts.promptTokens,
        shared_prefix_tokens: opts.sharedPrefixTokens,
        output_tokens: opts.outputTokens,
        seed: opts.seed,
        temperature: 0,
        ignore_eos: true,
        baseline: opts.baseline,
        runs: plans,
      },
      model,
      servers: targets.map((t) => ({
        role: t.role,
        url: t.url,
        started: t.server !== null,
        pid: t.server?.pid ?? null,
        command: t.server?.command ?? null,
        peak_rss_bytes: t.server ? peakRssBytes(t.server.pid) : null,
      })),
      software: software(),
      machine: { ...atStart, load_average_end: machine().load_average },
      runs: runs.batched,
      baseline: opts.baseline ? { server_args: [...opts.serverArgs, ...opts.baselineArgs], runs: runs.baseline } : null,
      speedup: opts.baseline ? speedupsOf(runs.batched, runs.baseline) : null,
      lora,
    };
  } finally {
    await Promise.all(targets.map((t) => t.server?.stop()));
  }
}

function loraReport(opts: BenchOptions, modelDir: string, names: string[], serverArgs: string[]): LoraReport {
  const config = readGpt2Config(modelDir);
  const maxRank = Number(flagValue(serverArgs, '--max-lora-rank'));
  const shape = { layers: config.n_layer, embd: config.n_embd };
  return {
    adapters: names.length,
    rank: opts.loraRank,
    alpha: 2 * opts.loraRank,
    names,
    dir: resolve(opts.loraDir),
    base_share: opts.loraBaseShare,
    max_loras: Number(flagValue(serverArgs, '--max-loras')),
    max_lora_rank: maxRank,
    model_layers: shape.layers,
    module_in_out: loraInOutPerLayer(shape.embd),
    adapter_bytes: loraAdapterBytes(maxRank, shape),
    requests_by_model: {},
  };
}

const megabytes = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;

/** What was served, how requests were spread, and what the adapters cost the server's memory. */
export function loraLines(l: LoraReport): string[] {
  const names = l.names.length > 3 ? `${l.names[0]} ... ${l.names[l.names.length - 1]}` : l.names.join(', ');
  const counts = Object.entries(l.requests_by_model);
  return [
    `LoRA: ${l.adapters} adapter(s) of rank ${l.rank} (lora_alpha ${l.alpha}; ${names}), --max-loras ${l.max_loras}, --max-lora-rank ${l.max_lora_rank}; ` +
      `${l.base_share > 0 ? `${+(l.base_share * 100).toFixed(1)}% of the requests to the base model, the rest` : 'requests'} to the adapters in turn`,
    ...(counts.length ? [`Requests by model: ${counts.map(([m, n]) => `${m} ${n}`).join(', ')}`] : []),
    `Memory per resident adapter: ${megabytes(l.adapter_bytes)} (rank ${l.max_lora_rank} x ${l.module_in_out} in+out per layer x ${l.model_layers} layers x 4 B); ` +
      `${l.adapters} loaded + ${l.max_loras} slot(s): ${megabytes(l.adapter_bytes * (l.adapters + l.max_loras))}`,
  ];
}

/** VmHWM of a process from /proc (null where there is no /proc or the process is gone). */
function peakRssBytes(pid: number): number | null {
  try {
    const kb = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kb ? Number(kb) * 1024 : null;
  } catch {
    return null;
  }
}

/** The summary printed after the sweep: the markdown tables. */
export function summaryText(result: BenchResult): string {
  const parts = [
    `## ${result.model}: ${promptLabel(result.config)}, ${result.config.output_tokens} output tokens, ${apiLabel(result.config)}`,
    '',
    result.baseline ? (result.config.server_args.length ? `Server flags ${result.config.server_args.join(' ')}:` : 'Continuous batching (server defaults):') : 'Runs:',
    '',
    markdownTable(result.runs, result.speedup, baselineLabelOf(result)),
  ];
  if (result.lora) parts.push('', ...loraLines(result.lora));
  if (result.baseline) {
    parts.push('', `Baseline (${result.baseline.server_args.join(' ')}):`, '', markdownTable(result.baseline.runs));
  }
  const m = result.machine;
  parts.push(
    '',
    ...result.servers.filter((s) => typeof s.peak_rss_bytes === 'number').map((s) => `Peak RSS of the ${s.role} server: ${(s.peak_rss_bytes! / 2 ** 20).toFixed(0)} MiB`),
    `Machine: ${m.cpus} x ${m.cpu_model}, ${(m.memory_bytes / 2 ** 30).toFixed(1)} GiB, ${m.os}; node ${result.software.node}, ` +
      `onnxruntime-node ${result.software.onnxruntime_node ?? '?'}; load average ${m.load_average[0]} at the start, ${m.load_average_end[0]} at the end`,
  );
  return parts.join('\n');
}

export function chartOf(result: BenchResult): string {
  const m = result.machine;
  return renderSvg({
    title: `gpt2-serve: ${result.model}, ${promptLabel(result.config)}, ${result.config.output_tokens} output tokens (${apiLabel(result.config)})`,
    subtitle: `${m.cpus} x ${m.cpu_model}, ${(m.memory_bytes / 2 ** 30).toFixed(0)} GiB; node ${result.software.node}, onnxruntime-node ${result.software.onnxruntime_node ?? '?'}; ${result.created_at.slice(0, 10)}`,
    batched: result.runs,
    baseline: result.baseline?.runs ?? null,
    baselineLabel: baselineLabelOf(result),
  });
}

/** JSON replacer: 4 decimals are plenty for milliseconds and rates. */
function roundFloats(_key: string, v: unknown): unknown {
  return typeof v === 'number' && !Number.isInteger(v) ? +v.toFixed(4) : v;
}

function writeFile(path: string, text: string): void {
  mkdirSync(dirname(resolve(path)), { recursive: true });
  writeFileSync(path, text);
}

/** The whole CLI: parse, run, print, write. Returns the result (null for --help). */
export async function benchMain(argv: string[], io?: Partial<BenchIo>): Promise<BenchResult | null> {
  const opts = parseBenchArgs(argv);
  const full: BenchIo = {
    out: io?.out ?? ((t) => process.stdout.write(`${t}\n`)),
    status: io?.status ?? ((t) => process.stderr.write(`${t}\n`)),
    progress: io?.progress ?? makeProgress(opts?.progress ?? 'auto'),
  };
  if (opts === null) {
    full.out(USAGE);
    return null;
  }
  const result = opts.from ? (JSON.parse(readFileSync(opts.from, 'utf8')) as BenchResult) : await runBenchmark(opts, full);
  full.out(summaryText(result));
  if (opts.out && !opts.from) {
    writeFile(opts.out, `${JSON.stringify(result, roundFloats, 2)}\n`);
    full.status(`wrote ${opts.out}`);
  }
  if (opts.svg) {
    writeFile(opts.svg, chartOf(result));
    full.status(`wrote ${opts.svg}`);
  }
  const all = result.runs.concat(result.baseline?.runs ?? []);
  const errors = all.reduce((s, m) => s + m.errors, 0);
  if (errors > 0) full.status(`warning: ${errors} request(s) failed; see error_samples`);
  const robustness = all.reduce((s, m) => s + (m.health_failures ?? 0) + (m.models_failures ?? 0) + (m.hostile_unexpected ?? 0), 0);
  if (robustness > 0) full.status(`warning: ${robustness} probe(s) failed or huge prompt(s) not refused`);
  return result;
}

/** "SSE" or "WS" for completions; "chat, SSE", "responses, WS", ... for the other APIs. */
function apiLabel(config: { api?: BenchApi; transport: 'sse' | 'ws' }): string {
  return `${config.api && config.api !== 'completions' ? `${config.api}, ` : ''}${config.transport.toUpperCase()}`;
}

/** "128-token prompts", "1024+64-token prompts (shared prefix + own)" or "128-token grounded prompts". */
function promptLabel(config: { prompt_tokens: number; shared_prefix_tokens?: number; workload?: WorkloadKind }): string {
  const shared = config.shared_prefix_tokens ?? 0;
  if (shared > 0) return `${shared}+${config.prompt_tokens}-token prompts (shared prefix + own)`;
  return `${config.prompt_tokens}-token ${config.workload === 'grounded' ? 'grounded ' : ''}prompts`;
}

/** The baseline server's own flags (after the --server-arg ones both servers get). */
function baselineLabelOf(result: BenchResult): string | undefined {
  return result.baseline?.server_args.slice(result.config.server_args.length).join(' ');
}
