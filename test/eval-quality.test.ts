// npm run eval's module: KL divergence and top-1 statistics, and the teacher-forced comparison of
// two exported models through the real runner.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { rmSync } from 'node:fs';
import { evaluateQuality, klDivergence, QualityAccumulator, tokenStream } from '../tools/eval/quality.js';
import { exportCheckpoint } from '../src/model/export.js';
import { tempDir, tinyModel } from './helpers/tiny-model.js';

const root = tempDir();
after(() => rmSync(root, { recursive: true, force: true }));

test('KL divergence of softmax distributions: closed form, zero for equal or shifted logits', () => {
  // P = (1/4, 3/4), Q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2)
  assert.ok(Math.abs(klDivergence([0, Math.log(3)], [0, 0]) - (0.25 * Math.log(0.5) + 0.75 * Math.log(1.5))) < 1e-12);
  assert.equal(klDivergence([1, 2, 3], [1, 2, 3]), 0);
  assert.ok(klDivergence([1, 2, 3], [11, 12, 13]) < 1e-12, 'a constant shift leaves the distribution');
  assert.ok(klDivergence([0, 0, 10], [10, 0, 0]) > 9);
});

test('accumulator: mean and p99 KLD, top-1 agreement overall and where the reference is not near a tie', () => {
  const acc = new QualityAccumulator(0.1);
  const f = (xs: number[]) => Float32Array.from(xs);
  acc.add(f([3, 1, 0]), f([3, 1, 0])); // confident, agrees, KLD 0
  acc.add(f([1, 1.05, 0]), f([1.05, 1, 0])); // near tie (margin 0.05), disagrees
  acc.add(f([0, 2, 0]), f([2, 0, 0])); // confident, disagrees
  acc.add(f([0, 0, 5]), f([0, 0, 4])); // confident, agrees
  const r = acc.report();
  assert.equal(r.positions, 4);
  assert.equal(r.top1Agreement, 0.5);
  assert.equal(r.confidentPositions, 3);
  assert.ok(Math.abs(r.confidentTop1Agreement - 2 / 3) < 1e-12);
  const klds = [[[3, 1, 0], [3, 1, 0]], [[1, 1.05, 0], [1.05, 1, 0]], [[0, 2, 0], [2, 0, 0]], [[0, 0, 5], [0, 0, 4]]].map(([p, q]) => klDivergence(Float32Array.from(p), Float32Array.from(q)));
  assert.ok(Math.abs(r.meanKld - klds.reduce((a, b) => a + b) / 4) < 1e-12);
  assert.equal(r.p99Kld, Math.max(...klds));
  assert.equal(r.maxKld, Math.max(...klds));
});

test('teacher-forced comparison: a model against itself is exact; int8 against float32 is close but not equal', async () => {
  const fp32 = await tinyModel(1);
  const int8 = join(root, 'int8');
  await exportCheckpoint({ checkpoint: join(fp32, 'checkpoint'), out: int8, weights: { dtype: 'int8' } });
  assert.deepEqual(tokenStream(5, 50257, 3), tokenStream(5, 50257, 3), 'the stream is fixed by its seed');
  const opts = { positions: 300, window: 150, intraOpThreads: 1 };
  const self = await evaluateQuality({ model: fp32, reference: fp32, ...opts });
  assert.equal(self.positions, 300);
  assert.equal(self.meanKld, 0);
  assert.equal(self.top1Agreement, 1);
  const q = await evaluateQuality({ model: int8, reference: fp32, ...opts });
  assert.equal(q.positions, 300);
  assert.ok(q.meanKld > 0 && q.meanKld < 0.02, `mean KLD ${q.meanKld}`);
  assert.ok(q.p99Kld >= q.meanKld && q.maxKld >= q.p99Kld);
  assert.ok(q.top1Agreement > 0.8 && q.confidentPositions <= q.positions);
});
