// npm run bench:engine -- [--dtype fp32,int8,int4 | --model DIR[,DIR...]] [--concurrency 32] [--prompt-tokens 128]
//                         [--output-tokens 128] [--prefill-tokens 512] [--threads 0] [--compare-only] [--json FILE]
//                         [--profile [--profile-past 1,64,512]]
// The engine's figures, each as a ratio inside one run (these machines are shared and noisy):
//   1. aggregate decode tokens/s at N concurrent sequences vs one sequence;
//   2. one sequence's decode step vs the model's weight MatMuls alone;
//   3. attention over 512 cached tokens at batch N vs reading those KV bytes at memcpy speed;
//   4. share of step time outside the model (scheduling, sampling, detokenizing, messaging);
//   5. KV memory allocated vs the bytes of the tokens held;
//   6. the model step of one 512-token prompt (prefill);
// plus peak RSS. `--profile` instead prints, per model and cached length, where one sequence's
// decode step spends its time, per ONNX Runtime op type (its profiler; tools/bench/ort-profile.ts).
// With several dtypes (or model folders), each one's figures come in turn, then
// their model steps are timed in interleaved rounds and compared with the first (fp32).
// Defaults to a GPT-2-small-shaped random model (created once under models/; the quantized
// folders are exported from the same checkpoint, so every dtype has the same weights).
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { MessageChannel } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import { EngineCore } from '../src/engine/engine-core.js';
import { BlockAllocator, KvPool, blocksFor } from '../src/engine/kv-cache.js';
import { KvCacheManager } from '../src/engine/kv-cache-manager.js';
import { createOnnxRunner, newestProfile, type OnnxRunner } from '../src/engine/runner.js';
import { Scheduler } from '../src/engine/scheduler.js';
import type { SamplingParams } from '../src/engine/types.js';
import { exportCheckpoint } from '../src/model/export.js';
import { describeWeights, manifestPlan, readManifest, type Manifest } from '../src/model/manifest.js';
import { exportedWeights } from '../src/model/exported-weights.js';
import { DataType, GraphBuilder } from '../src/model/onnx-builder.js';
import { loadTokenizer } from '../src/model/tokenizer.js';
import { makeTinyModel, PRESETS } from '../src/model/tiny.js';
import { WEIGHT_DTYPES, type WeightDtype } from '../src/model/weight-format.js';
import { WeightOps } from '../src/model/weight-ops.js';
import { CONTRACT_VERSION } from '../src/model/serving-graph.js';
import { runCli } from '../scripts/cli.js';
import { profileTable, summarizeProfile } from './bench/ort-profile.js';
import { median, medianStepMs } from './bench/step-timing.js';
import { makeReporter } from '../scripts/progress.js';

const BLOCK_SIZE = 16;
const FP32_DIR = 'models/bench-gpt2-small';

/** The benchmark model folder of a dtype: fp32 is made once, the others exported from its checkpoint. */
function benchModelDir(dtype: WeightDtype): string {
  return dtype === 'fp32' ? FP32_DIR : `${FP32_DIR}-${dtype}`;
}

function contractOf(dir: string): unknown {
  return (JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { contractVersion?: unknown }).contractVersion;
}

async function ensureBenchModel(dtype: WeightDtype, log: (m: string) => void): Promise<string> {
  const fp32 = resolve(FP32_DIR);
  const dir = resolve(benchModelDir(dtype));
  if (existsSync(join(dir, 'manifest.json'))) {
    if (contractOf(dir) === CONTRACT_VERSION) return dir;
    log(`${dir} was exported for another graph contract: exporting it again`);
    rmSync(dir, { recursive: true, force: true });
  }
  // The fp32 folder's checkpoint is where the others come from: made again (same seed) if stale.
  if (existsSync(join(fp32, 'manifest.json')) && contractOf(fp32) !== CONTRACT_VERSION) rmSync(fp32, { recursive: true, force: true });
  const reporter = makeReporter();
  try {
    if (!existsSync(join(fp32, 'manifest.json'))) {
      log(`creating a GPT-2-small-shaped random model in ${fp32} (once)`);
      await makeTinyModel({ out: fp32, seed: 0, shape: PRESETS['gpt2-small'], onProgress: reporter.export });
    }
    if (dtype !== 'fp32') {
      log(`exporting its checkpoint as ${dtype} to ${dir} (once)`);
      await exportCheckpoint({ checkpoint: join(fp32, 'checkpoint'), out: dir, weights: { dtype }, onProgress: reporter.export });
    }
  } finally {
    reporter.stop();
  }
  return dir;
}

runCli('bench:engine', async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      dtype: { type: 'string' },
      concurrency: { type: 'string', default: '32' },
      'prompt-tokens': { type: 'string', default: '128' },
      'output-tokens': { type: 'string', default: '128' },
      'attention-past': { type: 'string', default: '512' },
      'prefill-tokens': { type: 'string', default: '512' },
      threads: { type: 'string', default: '0' },
      'compare-only': { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      'profile-past': { type: 'string', default: '1,64,512' },
      json: { type: 'string' },
    },
  });
  const log = (m: string) => process.stderr.write(`${m}\n`);
  if (values.model && values.dtype) throw new Error('--model and --dtype exclude each other (--dtype picks the benchmark model folders)');
  const dtypes = (values.dtype ?? 'fp32').split(',');
  for (const d of dtypes) if (!(WEIGHT_DTYPES as readonly string[]).includes(d)) throw new Error(`--dtype: ${d} is not one of ${WEIGHT_DTYPES.join(', ')}`);
  const dirs = values.model ? values.model.split(',').map((d) => resolve(d)) : [];
  if (!values.model) for (const d of dtypes) dirs.push(await ensureBenchModel(d as WeightDtype, log));
  const settings: Settings = {
    concurrency: Number(values.concurrency),
    promptTokens: Number(values['prompt-tokens']),
    outputTokens: Number(values['output-tokens']),
    attentionPast: Number(values['attention-past']),
    prefillTokens: Number(values['prefill-tokens']),
    threads: Number(values.threads),
  };
  if (values.profile) {
    for (const dir of dirs) for (const past of values['profile-past'].split(',').map(Number)) process.stdout.write(`${await profileDecodeStep(dir, past, settings)}\n\n`);
    return;
  }
  const models: Record<string, unknown>[] = [];
  for (const dir of values['compare-only'] ? [] : dirs) {
    const figures = await benchModel(dir, settings, log);
    printFigures(figures);
    models.push(figures);
  }
  let comparison = null;
  if (dirs.length > 1) {
    log('comparing the models in interleaved rounds (decode of 1 and of N rows, prefill) ...');
    comparison = await interleavedComparison(dirs, settings);
    printComparison(comparison);
  }
  const result = {
    machine: { cpus: cpus().length, node: process.version, onnxruntime: ort.env.versions.common },
    config: { ...settings, blockSize: BLOCK_SIZE },
    models,
    comparison,
    peakRssMiB: process.resourceUsage().maxRSS / 1024,
  };
  process.stdout.write(`peak RSS (whole run)    ${result.peakRssMiB.toFixed(0)} MiB\n`);
  if (values.json) writeFileSync(values.json, JSON.stringify(result, null, 2) + '\n');
});

interface Settings {
  concurrency: number;
  promptTokens: number;
  outputTokens: number;
  attentionPast: number;
  prefillTokens: number;
  threads: number;
}

async function benchModel(dir: string, s: Settings, log: (m: string) => void) {
  const manifest = readManifest(dir);
  const N = s.concurrency;
  log(`== ${dir}: ${describeWeights(manifest)}`);
  const matmul = await weightMatmulTimer(dir, manifest, s.threads);

  const kvTokens = Math.max(N * (s.promptTokens + s.outputTokens), N * (s.attentionPast + 1), s.prefillTokens) + N * BLOCK_SIZE * 2;
  const numBlocks = Math.ceil(kvTokens / BLOCK_SIZE) + 1;
  const { runner } = await createOnnxRunner({ modelDir: dir, manifest, executionProvider: 'cpu', intraOpThreads: s.threads, numBlocks, blockSize: BLOCK_SIZE, log });

  log('measuring one decode step against the weight MatMuls alone (1 row), interleaved ...');
  const singleStep = await singleStepVsMatmul(runner, matmul.time, s.promptTokens + s.outputTokens / 2);
  await matmul.release();

  log(`measuring attention at batch ${N} over ${s.attentionPast} cached tokens ...`);
  const attention = await attentionCost(runner, N, s.attentionPast);

  log(`measuring the prefill of one ${s.prefillTokens}-token prompt ...`);
  const prefillMs = await prefillCost(runner, s.prefillTokens);

  log(`engine: 1 sequence, then ${N} concurrent (${s.promptTokens}-token prompts, ${s.outputTokens} new tokens) ...`);
  const tokenizer = await loadTokenizer(dir);
  const runEngine = async (concurrency: number) => {
    const scheduler = new Scheduler({ maxNumSeqs: N, maxNumBatchedTokens: 512, blockSize: BLOCK_SIZE }, new KvCacheManager(new BlockAllocator(numBlocks), BLOCK_SIZE));
    const core = new EngineCore(runner, scheduler, tokenizer, { contextLength: manifest.contextLength, eosTokenId: manifest.eosTokenId });
    return driveEngine(core, scheduler, runner.pool, concurrency, s.promptTokens, s.outputTokens);
  };
  const single = await runEngine(1);
  const batched = await runEngine(N);
  const rssAfterMiB = process.memoryUsage.rss() / 2 ** 20;
  await runner.dispose();

  return {
    model: { dir, weights: describeWeights(manifest), bytes: modelBytes(dir, manifest) },
    decodeTokensPerSecond: { single: single.decodeTps, batched: batched.decodeTps, ratio: batched.decodeTps / single.decodeTps, target: '>= 8' },
    singleDecodeStep: {
      stepMs: singleStep.stepMs,
      weightMatmulMs: singleStep.weightMatmulMs,
      ratio: singleStep.stepMs / singleStep.weightMatmulMs,
      // The weights' bytes over the MatMul-only graph's time, against memcpy's (below, read and
      // written): how close one row's weight reading is to the machine's memory speed.
      weightReadGBps: modelBytes(dir, manifest) / singleStep.weightMatmulMs / 1e6,
      engineStepMs: single.decodeStepMs,
      target: '<= 1.25',
    },
    attention: { ...attention, ratio: attention.attentionMs / attention.memcpyMs, memcpyGBps: attention.kvBytes / attention.memcpyMs / 1e6, target: '<= 2' },
    prefill: { tokens: s.prefillTokens, modelMs: prefillMs },
    overhead: {
      share: batched.overheadShare,
      modelMs: batched.decodeModelMs,
      stepMs: batched.decodeStepMs,
      feedAndKvWriteMs: batched.feedAndKvWriteMs,
      planSampleEmitMs: batched.planSampleEmitMs,
      messagingMs: batched.messagingMs,
      target: '<= 0.05',
      // One sequence's step, in the same pieces: a one-row step's fixed cost outside the model.
      single: { modelMs: single.decodeModelMs, stepMs: single.decodeStepMs, feedAndKvWriteMs: single.feedAndKvWriteMs, planSampleEmitMs: single.planSampleEmitMs, messagingMs: single.messagingMs },
    },
    kvMemory: { worstExcessBlocksPerSequence: batched.kvExcessPerSeq, target: '<= 1 block per sequence' },
    rssAfterMiB,
  };
}

function modelBytes(dir: string, manifest: Manifest): number {
  return statSync(join(dir, manifest.graph.file)).size + statSync(join(dir, manifest.graph.externalData)).size;
}

/**
 * The models' model steps side by side: every round times each model in turn (rotating the
 * order), so that the machine's drifting load hits every model alike; the figures are medians
 * over rounds, as ratios to the first model. Shapes: one decode row and N decode rows at
 * prompt + output/2 cached tokens, and one prefill chunk of --prefill-tokens.
 */
async function interleavedComparison(dirs: string[], s: Settings) {
  const N = s.concurrency;
  const past = s.promptTokens + s.outputTokens / 2;
  const perRow = blocksFor(past + 1, BLOCK_SIZE);
  const numBlocks = Math.max(N * perRow, blocksFor(s.prefillTokens, BLOCK_SIZE)) + 1;
  const models = [];
  for (const dir of dirs) {
    const manifest = readManifest(dir);
    const { runner } = await createOnnxRunner({ modelDir: dir, manifest, executionProvider: 'cpu', intraOpThreads: s.threads, numBlocks, blockSize: BLOCK_SIZE, log: () => {} });
    for (const arr of [...runner.pool.keys, ...runner.pool.values]) arr.fill(0.01); // real pages, not the zero page
    models.push({ dir, manifest, runner, decode1: [] as number[], decodeN: [] as number[], prefill: [] as number[] });
  }
  const decodeRow = (b: number) => ({ tokens: [b + 1], pastLength: past, blocks: Array.from({ length: perRow }, (_, k) => 1 + b * perRow + k), logitsFrom: 0, fetchLogits: false });
  const one = [decodeRow(0)];
  const many = Array.from({ length: N }, (_, b) => decodeRow(b));
  const prefill = [{ tokens: Array.from({ length: s.prefillTokens }, (_, k) => (k * 7919) % 50000), pastLength: 0, blocks: Array.from({ length: blocksFor(s.prefillTokens, BLOCK_SIZE) }, (_, k) => 1 + k), logitsFrom: s.prefillTokens - 1, fetchLogits: false }];
  for (let round = 0; round < 7; round++) {
    for (let i = 0; i < models.length; i++) {
      const m = models[(i + round) % models.length]!;
      m.decode1.push(await medianStepMs(m.runner, one, 9));
      m.decodeN.push(await medianStepMs(m.runner, many, 3));
      m.prefill.push(await medianStepMs(m.runner, prefill, 1));
    }
  }
  for (const m of models) await m.runner.dispose();
  const figures = models.map((m) => ({
    weights: describeWeights(m.manifest),
    modelMiB: modelBytes(m.dir, m.manifest) / 2 ** 20,
    decode1Ms: median(m.decode1),
    decodeNMs: median(m.decodeN),
    prefillMs: median(m.prefill),
  }));
  const base = figures[0]!;
  return {
    rows: N,
    pastTokens: past,
    prefillTokens: s.prefillTokens,
    models: figures.map((f) => ({
      ...f,
      decode1Speedup: base.decode1Ms / f.decode1Ms,
      decodeNSpeedup: base.decodeNMs / f.decodeNMs,
      prefillSpeedup: base.prefillMs / f.prefillMs,
    })),
  };
}

function printComparison(c: Awaited<ReturnType<typeof interleavedComparison>>): void {
  const out = (line: string) => process.stdout.write(`${line}\n`);
  out(`\nModel steps, interleaved (medians of 7 rounds; decode rows at ${c.pastTokens} cached tokens; speedup against the first):`);
  out(`| weights | model MiB | decode, 1 row (ms) | speedup | decode, ${c.rows} rows (ms) | speedup | prefill, ${c.prefillTokens} tokens (ms) | speedup |`);
  out('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const m of c.models) {
    out(`| ${m.weights} | ${m.modelMiB.toFixed(1)} | ${m.decode1Ms.toFixed(2)} | ${m.decode1Speedup.toFixed(2)}x | ${m.decodeNMs.toFixed(1)} | ${m.decodeNSpeedup.toFixed(2)}x | ${m.prefillMs.toFixed(1)} | ${m.prefillSpeedup.toFixed(2)}x |`);
  }
}

interface EngineRun {
  decodeTps: number;
  decodeStepMs: number;
  decodeModelMs: number;
  /** Runner time outside session.run: building feeds, storing the new K/V rows. */
  feedAndKvWriteMs: number;
  /** Scheduling, sampling, detokenizing and building events. */
  planSampleEmitMs: number;
  overheadShare: number;
  messagingMs: number;
  kvExcessPerSeq: number;
}

/** Submits `concurrency` requests at once and steps the core until all finish. */
async function driveEngine(core: EngineCore, scheduler: Scheduler, pool: KvPool, concurrency: number, promptTokens: number, outputTokens: number): Promise<EngineRun> {
  const params: SamplingParams = {
    maxTokens: outputTokens, minTokens: 0, temperature: 0, topP: 1, topK: 0, minP: 0, presencePenalty: 0, frequencyPenalty: 0,
    repetitionPenalty: 1, logitBias: [], seed: 0, logprobs: null, echo: false, stop: [], stopTokenIds: [], ignoreEos: true, n: 1, constraint: null,
  };
  for (let i = 0; i < concurrency; i++) {
    const prompt = Array.from({ length: promptTokens }, (_, k) => (k * 7919 + i * 104729) % 50000);
    core.add({ id: `bench-${concurrency}-${i}`, promptTokens: prompt, params });
  }
  const channel = new MessageChannel();
  channel.port2.on('message', () => {});
  const blockBytes = KvPool.blockBytes(pool.shape);
  const tokenBytes = blockBytes / pool.shape.blockSize;
  let decodeTokens = 0, decodeMs = 0, decodeModelMs = 0, decodeRunMs = 0, decodeSteps = 0, messagingMs = 0, worstExcess = 0;
  while (core.hasWork()) {
    const start = performance.now();
    const events = await core.step();
    const t = performance.now();
    channel.port1.postMessage(events); // what the worker pays to hand a step's events over
    const postMs = performance.now() - t;
    const step = core.lastStep;
    const held = scheduler.running.reduce((s, q) => s + q.numComputed, 0);
    if (scheduler.running.length) {
      const excess = (scheduler.kv.usedBlocks * blockBytes - held * tokenBytes) / blockBytes / scheduler.running.length;
      worstExcess = Math.max(worstExcess, excess);
    }
    if (step.tokens === step.rows && step.rows === concurrency) {
      decodeTokens += step.rows;
      decodeMs += performance.now() - start;
      decodeModelMs += step.modelMs;
      decodeRunMs += step.runMs;
      messagingMs += postMs;
      decodeSteps++;
    }
  }
  channel.port1.close();
  const stepMs = decodeMs / decodeSteps;
  return {
    decodeTps: (decodeTokens / decodeMs) * 1000,
    decodeStepMs: stepMs,
    decodeModelMs: decodeModelMs / decodeSteps,
    feedAndKvWriteMs: (decodeRunMs - decodeModelMs) / decodeSteps,
    planSampleEmitMs: (decodeMs - decodeRunMs - messagingMs) / decodeSteps,
    overheadShare: (decodeMs - decodeModelMs) / decodeMs,
    messagingMs: messagingMs / decodeSteps,
    kvExcessPerSeq: worstExcess,
  };
}

/** Attention cost = decode step with `past` cached tokens minus the same step with 1 cached token. */
async function attentionCost(runner: OnnxRunner, batch: number, past: number) {
  const bs = runner.pool.shape.blockSize;
  const rowsFor = (pastLength: number) =>
    Array.from({ length: batch }, (_, b) => ({
      tokens: [b + 1],
      pastLength,
      blocks: Array.from({ length: blocksFor(pastLength + 1, bs) }, (_, k) => 1 + ((b * blocksFor(past + 1, bs) + k) % (runner.pool.shape.numBlocks - 1))),
      logitsFrom: 0,
      fetchLogits: false,
    }));
  // Untouched pool pages all map to the kernel's zero page, which would make reading them look
  // free: give the cache real bytes first.
  for (const arr of [...runner.pool.keys, ...runner.pool.values]) arr.fill(0.01);
  const time = async (pastLength: number) => {
    const rows = rowsFor(pastLength);
    const samples: number[] = [];
    for (let i = 0; i < 7; i++) {
      await runner.run(rows);
      samples.push(runner.takeModelMs());
    }
    return median(samples.slice(2));
  };
  const withPast = await time(past);
  const without = await time(1);
  const { layers, heads, headDim } = runner.pool.shape;
  const kvBytes = batch * past * layers * 2 * heads * headDim * 4;
  return { attentionMs: withPast - without, stepWithPastMs: withPast, stepWithoutPastMs: without, kvBytes, memcpyMs: memcpyMs(kvBytes) };
}

/** The model step of one prompt of `tokens` tokens, one chunk, only its last logits (time to first token without queueing). */
async function prefillCost(runner: OnnxRunner, tokens: number): Promise<number> {
  const bs = runner.pool.shape.blockSize;
  const row = {
    tokens: Array.from({ length: tokens }, (_, k) => (k * 7919) % 50000),
    pastLength: 0,
    blocks: Array.from({ length: blocksFor(tokens, bs) }, (_, k) => 1 + k),
    logitsFrom: tokens - 1,
    fetchLogits: true,
  };
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    await runner.run([row]);
    samples.push(runner.takeModelMs());
  }
  return median(samples.slice(1));
}

/** Time to copy `bytes` once between two large buffers (the memory-bandwidth floor). */
function memcpyMs(bytes: number): number {
  const src = new Float32Array(bytes / 4).fill(1);
  const dst = new Float32Array(bytes / 4);
  const samples: number[] = [];
  for (let i = 0; i < 7; i++) {
    const t = performance.now();
    dst.set(src);
    samples.push(performance.now() - t);
  }
  return median(samples.slice(2));
}

/**
 * A session over only the model's weight MatMuls (the same ops and the same tensors, read from
 * the model's external data), one row. Returns a function timing one run, so that it can be
 * interleaved with the real decode step.
 */
async function weightMatmulTimer(dir: string, manifest: Manifest, threads: number): Promise<{ time: () => Promise<number>; release: () => Promise<void> }> {
  const g = new GraphBuilder();
  const E = manifest.hiddenSize;
  const ops = new WeightOps(g, manifestPlan(manifest), exportedWeights(g, join(dir, manifest.graph.file)));
  let h = g.input('x', DataType.FLOAT, [1, E]);
  for (let l = 0; l < manifest.numLayers; l++) {
    const qkv = ops.linear(h, `h.${l}.attn.c_attn`, E, 3 * E);
    const [q] = g.opN('Split', [qkv, g.constInt64([E, E, E])], 3, { axis: 1 });
    h = ops.linear(q, `h.${l}.attn.c_proj`, E, E);
    h = ops.linear(ops.linear(h, `h.${l}.mlp.c_fc`, E, 4 * E), `h.${l}.mlp.c_proj`, 4 * E, E);
  }
  g.output(ops.head(h, manifest.vocabSize, E, manifest.tiedHead, 'y'), 'y', DataType.FLOAT, [1, manifest.vocabSize]);
  // Beside the real graph: ORT only reads external data from the model file's own folder.
  const file = join(dir, `.bench-matmul-${process.pid}.onnx`);
  try {
    writeFileSync(file, g.encode({ opset: 20, producerVersion: 'bench', doc: '', metadata: {} }));
    const session = await ort.InferenceSession.create(file, {
      graphOptimizationLevel: 'all',
      ...(threads > 0 ? { intraOpNumThreads: threads } : {}),
    });
    const x = new ort.Tensor('float32', new Float32Array(E).fill(0.1), [1, E]);
    return {
      time: async () => {
        const t = performance.now();
        await session.run({ x });
        return performance.now() - t;
      },
      release: () => session.release(),
    };
  } finally {
    rmSync(file, { force: true }); // the session has loaded it
  }
}

/**
 * One sequence's decode step (runner only) against the MatMul-only graph, in alternating blocks
 * of warm runs, so that drifting machine load hits both alike. Single runs after a switch are
 * cold (the other session's threads still spin, caches hold its data), so each block's first
 * runs are dropped.
 */
async function singleStepVsMatmul(runner: OnnxRunner, matmul: () => Promise<number>, past: number) {
  const bs = runner.pool.shape.blockSize;
  const row = { tokens: [1], pastLength: past, blocks: Array.from({ length: blocksFor(past + 1, bs) }, (_, k) => 1 + k), logitsFrom: 0, fetchLogits: true };
  const step = async () => {
    const t = performance.now();
    await runner.run([row]);
    runner.takeModelMs();
    return performance.now() - t;
  };
  const steps: number[] = [];
  const matmuls: number[] = [];
  for (let block = 0; block < 6; block++) {
    for (const [fn, into] of [[matmul, matmuls], [step, steps]] as const) {
      for (let i = 0; i < 8; i++) {
        const ms = await fn();
        if (i >= 3) into.push(ms);
      }
    }
  }
  return { stepMs: median(steps), weightMatmulMs: median(matmuls) };
}

/** Profiled runs per table, after PROFILE_WARMUP unprofiled-in-effect ones (their events are skipped). */
const PROFILE_RUNS = 40;
const PROFILE_WARMUP = 8;

/**
 * `--profile`: one sequence's decode step at `past` cached tokens, under ONNX Runtime's profiler
 * (a session of its own, as --ort-profile gives the server), summarized per op type.
 */
async function profileDecodeStep(dir: string, past: number, s: Settings): Promise<string> {
  const manifest = readManifest(dir);
  const prefix = join(mkdtempSync(join(tmpdir(), 'gpt2-profile-')), 'step');
  const numBlocks = blocksFor(past + 1, BLOCK_SIZE) + 1;
  const { runner } = await createOnnxRunner({ modelDir: dir, manifest, executionProvider: 'cpu', intraOpThreads: s.threads, numBlocks, blockSize: BLOCK_SIZE, log: () => {}, profilePrefix: prefix });
  const row = { tokens: [1], pastLength: past, blocks: Array.from({ length: blocksFor(past + 1, BLOCK_SIZE) }, (_, k) => 1 + k), logitsFrom: 0, fetchLogits: true };
  for (let i = 0; i < PROFILE_WARMUP + PROFILE_RUNS; i++) await runner.run([row]);
  await runner.dispose();
  const file = newestProfile(prefix);
  if (!file) throw new Error(`no profile was written under ${prefix}`);
  return profileTable(`${basename(dir)} (${describeWeights(manifest)}), one decode row at ${past} cached tokens`, summarizeProfile(file, PROFILE_WARMUP));
}


function printFigures(f: Record<string, unknown>): void {
  const fmt = (v: unknown): string => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : JSON.stringify(v));
  for (const [k, v] of Object.entries(f)) {
    if (v && typeof v === 'object') {
      process.stdout.write(`${k}:\n`);
      for (const [k2, v2] of Object.entries(v)) process.stdout.write(`  ${k2.padEnd(22)} ${fmt(v2)}\n`);
    } else process.stdout.write(`${k.padEnd(24)} ${fmt(v)}\n`);
  }
}
