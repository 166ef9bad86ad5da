// Exact under any schedule: a token's K/V and logits are bit-identical however its prompt was
// chunked (one run, any split, token by token) and whatever shares the step. Compared with
// Object.is on every logit of every position and every K/V float in the pool, for each weight
// format, with ONNX Runtime's default threads, on a model whose heads are GPT-2's 64 wide.
import assert from 'node:assert/strict';
import { readManifest } from '../src/model/manifest.js';
import type { WeightFormatOptions } from '../src/model/weight-format.js';
import { createOnnxRunner, type RunnerRow } from '../src/engine/runner.js';
import type { KvPool } from '../src/engine/kv-cache.js';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { exportCheckpoint } from '../src/model/export.js';
import { tempDir, tinyModel } from './helpers/tiny-model.js';

const BLOCK = 16;
const N = 200;
const SHAPE = { layers: 2, heads: 2, embd: 128 };
const prompt = Array.from({ length: N }, (_, i) => (i * 7919 + 13) % 50000);
const neighbour = Array.from({ length: 90 }, (_, i) => (i * 31 + 5) % 50000);
const promptBlocks = Array.from({ length: Math.ceil(N / BLOCK) }, (_, i) => 1 + i);
const neighbourBlocks = Array.from({ length: Math.ceil(neighbour.length / BLOCK) }, (_, i) => 100 + i);

interface Outcome {
  /** Logits of every prompt position, in order. */
  logits: Float32Array[];
  /** The pool's K and V of every prompt position, per layer. */
  kv: Float32Array[];
}

/**
 * Runs the prompt in `chunks` (their sizes). With `crowd`, each step also carries a neighbour
 * sequence: a 30-token prefill chunk while it has prompt left, then a decode row. `decodeGroupKeys`
 * low spreads the decode rows over the graph's decode groups (the default keeps two rows together).
 */
async function runChunked(modelDir: string, chunks: number[], crowd: boolean, decodeGroupKeys?: number): Promise<Outcome> {
  const manifest = readManifest(modelDir);
  const { runner } = await createOnnxRunner({ modelDir, manifest, executionProvider: 'cpu', intraOpThreads: 0, numBlocks: 128, blockSize: BLOCK, log: () => {}, decodeGroupKeys });
  try {
    const logits: Float32Array[] = [];
    let past = 0;
    let neighbourPast = 0;
    for (const size of chunks) {
      const rows: RunnerRow[] = [{ tokens: prompt.slice(past, past + size), pastLength: past, blocks: promptBlocks, logitsFrom: 0, fetchLogits: true }];
      if (crowd) {
        const n = neighbourPast < 60 ? 30 : 1;
        rows.unshift({ tokens: neighbour.slice(neighbourPast, neighbourPast + n), pastLength: neighbourPast, blocks: neighbourBlocks, logitsFrom: n - 1, fetchLogits: true });
        neighbourPast += n;
      }
      const out = (await runner.run(rows)).at(-1)!;
      for (let j = 0; j < size; j++) logits.push(out.logits.slice(j * runner.vocabSize, (j + 1) * runner.vocabSize));
      past += size;
    }
    return { logits, kv: promptKv(runner.pool as KvPool) };
  } finally {
    await runner.dispose();
  }
}

function promptKv(pool: KvPool): Float32Array[] {
  const { heads, headDim: D, numBlocks, layers } = pool.shape;
  const out: Float32Array[] = [];
  for (let l = 0; l < layers; l++) {
    for (const src of [pool.keys[l], pool.values[l]]) {
      const dst = new Float32Array(N * heads * D);
      for (let p = 0; p < N; p++) {
        for (let h = 0; h < heads; h++) {
          const at = ((h * numBlocks + promptBlocks[(p / BLOCK) | 0]!) * BLOCK + (p % BLOCK)) * D;
          dst.set(src.subarray(at, at + D), (p * heads + h) * D);
        }
      }
      out.push(dst);
    }
  }
  return out;
}

/** Positions (or tensors) whose floats differ from the reference's, by Object.is. */
function differing(a: Float32Array[], b: Float32Array[]): number[] {
  const bad: number[] = [];
  a.forEach((x, i) => {
    for (let j = 0; j < x.length; j++) {
      if (!Object.is(x[j], b[i]![j])) {
        bad.push(i);
        return;
      }
    }
  });
  return bad;
}

const SCHEDULES: Array<[string, number[], boolean, number?]> = [
  ['[200] beside a neighbour', [N], true],
  ['[17, 183]', [17, 183], false],
  ['[199, 1]', [199, 1], false],
  ['[64, 64, 72] beside a neighbour', [64, 64, 72], true],
  ['200 x [1]', Array<number>(N).fill(1), false],
  ['[1, 1, 198]', [1, 1, 198], false],
  // Decode rows in separate decode groups, each padded to its own widest row.
  ['[60] then 140 x [1] beside a neighbour, decode groups of 64 keys', [60, ...Array<number>(N - 60).fill(1)], true, 64],
];

const FORMATS: Record<string, WeightFormatOptions | null> = { fp32: null, int8: { dtype: 'int8' }, int4: { dtype: 'int4' } };

const dirs = new Map<string, string>();
before(async () => {
  const fp32 = await tinyModel(3, SHAPE);
  const root = tempDir();
  for (const [name, weights] of Object.entries(FORMATS)) {
    const out = join(root, name);
    if (weights) await exportCheckpoint({ checkpoint: join(fp32, 'checkpoint'), out, weights });
    dirs.set(name, weights ? out : fp32);
  }
});

for (const name of Object.keys(FORMATS)) {
  test(`${name}: a 200-token prompt's logits and pool K/V are bit-identical under every chunking and beside other rows`, async () => {
    const dir = dirs.get(name)!;
    const reference = await runChunked(dir, [N], false);
    for (const [schedule, chunks, crowd, decodeGroupKeys] of SCHEDULES) {
      const got = await runChunked(dir, chunks, crowd, decodeGroupKeys);
      assert.deepEqual(differing(got.logits, reference.logits), [], `${schedule}: positions whose logits differ`);
      assert.deepEqual(differing(got.kv, reference.kv), [], `${schedule}: K/V tensors that differ`);
    }
  });
}
