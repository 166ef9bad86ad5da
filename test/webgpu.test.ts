// The WebGPU execution provider on the tiny model, through the runner as it is today (the
// used-blocks feed: the batch's KV blocks are uploaded every step). CI installs Mesa's software
// Vulkan driver (scripts/ci/install-vulkan.sh), so this runs there; elsewhere it is skipped only
// when no WebGPU adapter exists, and under CI=true a missing adapter fails instead.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { greedyDecode } from '../src/bench/runner-decode.js';
import { KvPool } from '../src/engine/kv-cache.js';
import { UsedBlocksFeed, WholePoolFeed } from '../src/engine/kv-feed.js';
import { OnnxRunner } from '../src/engine/runner.js';
import { createWebGpuSession, webgpuUnavailable } from '../src/engine/webgpu.js';
import { readManifest, type Manifest } from '../src/model/manifest.js';
import { ReferenceGpt2 } from './helpers/reference-gpt2.js';
import { tinyModel } from './helpers/tiny-model.js';

const prompts = [
  [15496, 995, 11, 616],
  [50256],
  Array.from({ length: 19 }, (_, i) => (i * 7919 + 13) % 50000),
];
const STEPS = 10;

function runnerOn(session: ort.InferenceSession, manifest: Manifest, feed: 'whole-pool' | 'used-blocks'): OnnxRunner {
  const pool = new KvPool({ layers: manifest.numLayers, heads: manifest.numHeads, headDim: manifest.headDim, numBlocks: 16, blockSize: 16 });
  return new OnnxRunner(session, pool, feed === 'whole-pool' ? new WholePoolFeed(pool) : new UsedBlocksFeed(pool), manifest.vocabSize);
}

test('WebGPU: greedy tokens of a mixed-length batch equal the float64 reference, logits match the CPU provider', async (t) => {
  const dir = await tinyModel(1);
  const manifest = readManifest(dir);
  const file = join(dir, manifest.graph.file);
  let gpuSession: ort.InferenceSession;
  try {
    gpuSession = await createWebGpuSession(file);
  } catch (err) {
    const why = webgpuUnavailable(err);
    if (!why || process.env.CI) throw err;
    t.skip(why);
    return;
  }
  const cpuSession = await ort.InferenceSession.create(file, { executionProviders: ['cpu'], intraOpNumThreads: 1 });
  t.after(async () => {
    await gpuSession.release();
    await cpuSession.release();
  });

  const logits = { cpu: [] as Float32Array[], webgpu: [] as Float32Array[] };
  const decode = (session: ort.InferenceSession, feed: 'whole-pool' | 'used-blocks', into: Float32Array[]) =>
    greedyDecode(runnerOn(session, manifest, feed), prompts, STEPS, { fetchLogits: true, onLogits: (_step, _stream, l) => into.push(l.slice()) });
  const gpu = await decode(gpuSession, 'used-blocks', logits.webgpu);
  const cpu = await decode(cpuSession, 'whole-pool', logits.cpu);

  const ref = new ReferenceGpt2(join(dir, 'checkpoint'));
  const expected = prompts.map((p) => ref.greedy(p, STEPS + 1));
  assert.deepEqual(cpu.generated, expected);
  assert.deepEqual(gpu.generated, expected);
  // Same float32 graph on two providers: measured 1e-5 apart on Mesa's software driver.
  let worst = 0;
  logits.cpu.forEach((c, i) => c.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - logits.webgpu[i][j])))));
  assert.ok(worst < 1e-3, `WebGPU logits differ from CPU by ${worst}`);
});
