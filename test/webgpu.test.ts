// The WebGPU execution provider with the KV pool on the device (src/engine/webgpu-runner.ts), on
// the tiny model. CI installs Mesa's software Vulkan driver (scripts/ci/install-vulkan.sh), so
// this runs there; elsewhere it is skipped only when no WebGPU adapter exists, and under CI=true a
// missing adapter fails instead. The software driver compiles shaders slowly: tests are few.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { before, test, type TestContext } from 'node:test';
import { greedyDecode } from '../tools/bench/runner-decode.js';
import { compareLogits, FP32_LOGIT_TOLERANCE, fp16LogitTolerance, webgpuUnavailable } from '../tools/bench/webgpu-checks.js';
import { createRunner } from '../src/engine/runner-factory.js';
import { createOnnxRunner, OnnxRunner } from '../src/engine/runner.js';
import type { EngineClient } from '../src/engine/types.js';
import { WebGpuRunner } from '../src/engine/webgpu-runner.js';
import { gpuDeviceNodes, softwareAdapterInUse } from '../src/engine/webgpu.js';
import { exportCheckpoint } from '../src/model/export.js';
import { readManifest } from '../src/model/manifest.js';
import { collect, events, request } from './helpers/engine-run.js';
import { InProcessEngine } from './helpers/in-process-engine.js';
import { ReferenceGpt2 } from './helpers/reference-gpt2.js';
import { engineOptions, tempDir, tinyModel } from './helpers/tiny-model.js';

const prompts = [
  [15496, 995, 11, 616],
  [50256],
  Array.from({ length: 19 }, (_, i) => (i * 7919 + 13) % 50000),
];
const STEPS = 10;
const prompt = (n: number, salt = 0) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);

let dir: string;
let ref: ReferenceGpt2;
before(async () => {
  dir = await tinyModel(1);
  ref = new ReferenceGpt2(join(dir, 'checkpoint'));
});

/** A WebGPU runner, or null (test skipped) when this machine has no WebGPU adapter. */
async function webgpuRunner(t: TestContext, numBlocks: number, dtype: 'fp16' | 'fp32' = 'fp32', modelDir = dir): Promise<WebGpuRunner | null> {
  try {
    const runner = await WebGpuRunner.create({ modelDir, manifest: readManifest(modelDir), dtype, numBlocks, blockSize: 16 });
    t.after(() => runner.dispose());
    return runner;
  } catch (err) {
    const why = webgpuUnavailable(err);
    if (!why || process.env.CI) throw err;
    t.skip(why);
    return null;
  }
}

test('auto never picks a software Vulkan adapter: without a hardware GPU it runs on the CPU and says why', async () => {
  const lines: string[] = [];
  const runner = await createRunner(engineOptions(dir, { executionProvider: 'auto' }), { manifest: readManifest(dir), numBlocks: 8, log: (m) => lines.push(m) });
  await runner.dispose();
  assert.equal(lines.length, 1, lines.join('\n'));
  if (gpuDeviceNodes().length === 0) {
    assert.ok(runner instanceof OnnxRunner);
    assert.match(lines[0], /^execution provider: cpu \(auto: no CUDA provider library; no GPU device node/);
  } else {
    assert.match(lines[0], /^execution provider: (cuda|webgpu|cpu \(auto: .*software Vulkan adapter)/);
  }
});

test('WebGPU fp32, pool on the device: greedy tokens equal the reference, logits match the CPU provider, the pool never leaves the device', async (t) => {
  const gpu = await webgpuRunner(t, 16);
  if (!gpu) return;
  if (gpuDeviceNodes().length === 0) assert.ok(softwareAdapterInUse(), 'no GPU device node, so the adapter is lavapipe');
  const manifest = readManifest(dir);
  const { runner: cpu } = await createOnnxRunner({ modelDir: dir, manifest, executionProvider: 'cpu', intraOpThreads: 1, numBlocks: 16, blockSize: 16, log: () => {} });
  t.after(() => cpu.dispose());

  const logits = { cpu: [] as Float32Array[], webgpu: [] as Float32Array[] };
  const locations = new Set<string>();
  const g = await greedyDecode(gpu, prompts, STEPS, {
    fetchLogits: true,
    onLogits: (_step, _stream, l) => {
      logits.webgpu.push(l.slice());
      for (const at of gpu.poolLocations()) locations.add(at);
    },
  });
  const c = await greedyDecode(cpu, prompts, STEPS, { fetchLogits: true, onLogits: (_step, _stream, l) => logits.cpu.push(l.slice()) });
  const expected = prompts.map((p) => ref.greedy(p, STEPS + 1));
  assert.deepEqual(c.generated, expected);
  assert.deepEqual(g.generated, expected);
  // Same float32 arithmetic on two providers: measured 1e-5 apart on Mesa's software driver.
  const { maxDiff } = compareLogits(logits.cpu, logits.webgpu);
  assert.ok(maxDiff < FP32_LOGIT_TOLERANCE, `WebGPU logits differ from CPU by ${maxDiff}`);
  assert.deepEqual([...locations], ['gpu-buffer'], 'the pool tensors stay on the device across steps');
  // A decode step of 3 rows uploads ids, positions, tables and indexes (no pool) and downloads
  // their argmax and logits.
  assert.ok(gpu.lastTransfer.up < 1024, `uploaded ${gpu.lastTransfer.up} B`);
  assert.equal(gpu.lastTransfer.down, 3 * 8 + 3 * manifest.vocabSize * 4);
  // A 40-token chunk with every position's logits (prompt logprobs) runs as passes of 16 tokens.
  const long = { tokens: prompt(40, 5), pastLength: 0, blocks: [13, 14, 15], logitsFrom: 0, fetchLogits: true };
  const [fromCpu] = await cpu.run([long]);
  const [fromGpu] = await gpu.run([long]);
  assert.equal(fromGpu.logits.length, 40 * manifest.vocabSize);
  assert.equal(fromGpu.argmax, fromCpu.argmax);
  assert.ok(compareLogits([fromCpu.logits], [fromGpu.logits]).maxDiff < FP32_LOGIT_TOLERANCE);
});

test('node placement (ONNX Runtime verbose log): every node of both step graphs runs on WebGPU, none falls back to the CPU', (t) => {
  const helper = new URL('./helpers/webgpu-placement.ts', import.meta.url).pathname;
  for (const dtype of ['fp32', 'fp16']) {
    const child = spawnSync(process.execPath, ['--import', 'tsx', helper, dir, dtype], { encoding: 'utf8' });
    const why = webgpuUnavailable(new Error(child.stderr));
    if (child.status !== 0 && why && !process.env.CI) return t.skip(why);
    assert.equal(child.status, 0, child.stderr.slice(-2000));
    const placements = child.stderr.split('\n').filter((l) => /placed on \[/.test(l));
    // Two sessions: the step graph and the one-node zeros graph.
    assert.equal(placements.filter((l) => /All nodes placed on \[WebGpuExecutionProvider\]/.test(l)).length, 2, `${dtype}:\n${placements.join('\n')}`);
    assert.ok(!placements.some((l) => /CPUExecutionProvider/.test(l)), `${dtype}:\n${placements.join('\n')}`);
  }
});

test('WebGPU engine: greedy equals the CPU path alone and batched, forks recompute their partial block, preemption and cancel free every block', async (t) => {
  let engine: EngineClient;
  try {
    // 12 blocks of 16 tokens: six 20-token prompts admit (with no room kept for their output)
    // but cannot all grow to 60 tokens.
    engine = await InProcessEngine.start(engineOptions(dir, { executionProvider: 'webgpu', kvCacheTokens: 12 * 16, admissionReserveTokens: 0 }));
  } catch (err) {
    const why = webgpuUnavailable(err);
    if (!why || process.env.CI) throw err;
    t.skip(why);
    return;
  }
  t.after(() => engine.shutdown());
  const specs = Array.from({ length: 6 }, (_, i) => ({ prompt: prompt(20, i), params: { maxTokens: 40, ignoreEos: true } }));
  // The CPU engine's tokens (the float64 reference can part from float32 at a near tie in 40 tokens).
  const cpu = await InProcessEngine.start(engineOptions(dir));
  const expected = [];
  for (const s of specs) expected.push((await collect(cpu, request(s.prompt, s.params))).choices[0].tokens);
  await cpu.shutdown();

  const alone = [];
  for (const s of specs.slice(0, 2)) alone.push((await collect(engine, request(s.prompt, s.params))).choices[0].tokens);
  assert.deepEqual(alone, expected.slice(0, 2));

  // n = 2 forks after a 20-token prompt: the child recomputes the 4 tokens of the partly filled block.
  const forked = await collect(engine, request(specs[0].prompt, { ...specs[0].params, n: 2 }));
  assert.deepEqual(forked.choices.map((c) => c.tokens), [expected[0], expected[0]]);

  const together = await Promise.all(specs.map(async (s) => (await collect(engine, request(s.prompt, s.params))).choices[0].tokens));
  assert.deepEqual(together, expected);
  const stats = await engine.stats();
  assert.ok(stats.preemptions > 0, `expected preemptions, got ${stats.preemptions}`);
  assert.equal(stats.kvBlocksUsed, 0);

  const it = events(engine, request(prompt(30, 9), { maxTokens: 100, ignoreEos: true }))[Symbol.asyncIterator]();
  await it.next();
  await it.next();
  assert.ok((await engine.stats()).kvBlocksUsed > 0);
  await it.return!();
  await collect(engine, request(prompt(5), { maxTokens: 2 })); // a step after the cancel
  assert.equal((await engine.stats()).kvBlocksUsed, 0);
});

/** Greedy decode keeping each stream's logits per step. */
async function decodeLogits(runner: Parameters<typeof greedyDecode>[0]) {
  const logits: Float32Array[][] = prompts.map(() => []);
  const r = await greedyDecode(runner, prompts, STEPS, { fetchLogits: true, onLogits: (step, stream, l) => (logits[stream][step] = l.slice()) });
  return { tokens: r.generated, logits };
}

test('fp16 export and the WebGPU fp16 graph (PagedAttention, pool updated in place) stay within fp16 precision of fp32', async (t) => {
  const manifest32 = readManifest(dir);
  const dir16 = join(tempDir(), 'tiny-fp16');
  const manifest16 = await exportCheckpoint({ checkpoint: join(dir, 'checkpoint'), out: dir16, weights: { dtype: 'fp16' } });
  assert.equal(manifest16.dtype, 'float16');
  const data = (d: string) => statSync(join(d, 'model.onnx.data')).size;
  assert.ok(Math.abs(data(dir16) / data(dir) - 0.5) < 0.01, `fp16 weights are half the bytes (${data(dir16)} vs ${data(dir)})`);

  const cpuRunner = async (d: string) => (await createOnnxRunner({ modelDir: d, manifest: readManifest(d), executionProvider: 'cpu', intraOpThreads: 1, numBlocks: 16, blockSize: 16, log: () => {} })).runner;
  const cpu32 = await cpuRunner(dir);
  const reference = await decodeLogits(cpu32);
  await cpu32.dispose();
  const largest = compareLogits(reference.logits.flat(), reference.logits.flat()).maxLogit;
  const tolerance = fp16LogitTolerance(largest, manifest32.numLayers);

  /** Logits within tolerance and equal picks, up to where a stream's pick flips at a near tie (then the streams part). */
  const assertWithinFp16 = (label: string, got: { tokens: number[][]; logits: Float32Array[][] }) => {
    prompts.forEach((_, s) => {
      for (let step = 0; step <= STEPS; step++) {
        const ref = reference.logits[s][step];
        const { maxDiff } = compareLogits([ref], [got.logits[s][step]]);
        assert.ok(maxDiff <= tolerance, `${label}: stream ${s} step ${step}: logits ${maxDiff} apart, tolerance ${tolerance}`);
        if (got.tokens[s][step] !== reference.tokens[s][step]) {
          const sorted = [...ref].sort((a, b) => b - a);
          assert.ok(sorted[0] - sorted[1] <= 2 * tolerance, `${label}: stream ${s} step ${step}: pick differs with a margin of ${sorted[0] - sorted[1]}`);
          break;
        }
      }
    });
  };
  const cpu16 = await cpuRunner(dir16);
  assertWithinFp16('CPU, fp16 weights', await decodeLogits(cpu16));
  await cpu16.dispose();

  const gpu = await webgpuRunner(t, 16, 'fp16', dir16);
  if (!gpu) return;
  assertWithinFp16('WebGPU fp16', await decodeLogits(gpu));
  assert.deepEqual([...new Set(gpu.poolLocations())], ['gpu-buffer']);
  assert.equal(gpu.poolBytes, 2 * manifest32.numLayers * 16 * 16 * manifest32.hiddenSize * 2);
});
