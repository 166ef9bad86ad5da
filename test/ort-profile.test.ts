// --ort-profile: ONNX Runtime's profiler on the model's session writes its trace when the runner
// is disposed, and the benchmark's summary reads it per op type (bench:engine --profile).
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { createOnnxRunner, newestProfile } from '../src/engine/runner.js';
import { readManifest } from '../src/model/manifest.js';
import { profileTable, summarizeProfile } from '../tools/bench/ort-profile.js';
import { tinyModel } from './helpers/tiny-model.js';

test('a profiled runner writes its trace at dispose; the summary counts each step once per op type', async () => {
  const modelDir = await tinyModel();
  const manifest = readManifest(modelDir);
  const logs: string[] = [];
  const prefix = join(mkdtempSync(join(tmpdir(), 'ort-profile-')), 'step');
  const { runner } = await createOnnxRunner({ modelDir, manifest, executionProvider: 'cpu', intraOpThreads: 1, numBlocks: 8, blockSize: 16, log: (m) => logs.push(m), profilePrefix: prefix });
  const row = { tokens: [1, 2, 3], pastLength: 0, blocks: [1], logitsFrom: 2, fetchLogits: true };
  for (let i = 0; i < 3; i++) await runner.run([row]);
  await runner.dispose();
  const file = newestProfile(prefix);
  assert.ok(file, 'a trace was written');
  assert.ok(logs.some((l) => l === `ONNX Runtime profile written: ${file}`), logs.join('\n'));
  const all = summarizeProfile(file, 0);
  const later = summarizeProfile(file, 1);
  assert.equal(all.runs, 3);
  assert.equal(later.runs, 2);
  // Every run is the same graph on the same input: each op type runs as many nodes per run either way.
  for (const op of later.ops) assert.equal(op.nodesPerRun, all.ops.find((o) => o.op === op.op)!.nodesPerRun, op.op);
  const layerNorms = later.ops.find((o) => o.op === 'LayerNormalization');
  assert.equal(layerNorms?.nodesPerRun, 2 * manifest.numLayers + 1);
  // Exclusive times: the kernels' sum stays within the run's wall time (no If counted with its branch).
  assert.ok(later.kernelMs <= later.runMs * 1.05, `${later.kernelMs} ms in kernels, ${later.runMs} ms per run`);
  assert.match(profileTable('tiny', later), /^tiny: [\d.]+ ms per run \(median of 2\)/);
});
