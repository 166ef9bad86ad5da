// How the runner lays a step out for the graph (contract 6): chunks cut into query tiles whose
// keys end at their last query, spread over the prefill groups so that little is padded; decode
// rows split over the decode groups when their past keys are many.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { packStep, type RunnerRow, type StepLayout } from '../src/engine/runner.js';

/** The graph's groups; a decode group gathers at most 2,048 past keys when the rows allow. */
const layout: StepLayout = { decodeGroups: 4, prefillGroups: 4, decodeGroupKeys: 2048 };

const row = (n: number, pastLength: number, firstBlock: number): RunnerRow => ({
  tokens: Array.from({ length: n }, (_, i) => i + 1),
  pastLength,
  blocks: Array.from({ length: Math.ceil((pastLength + n) / 16) }, (_, k) => firstBlock + k),
  logitsFrom: n - 1,
  fetchLogits: false,
});

test('a 512-token chunk becomes four tiles of 128 in four groups, each scoring only the keys up to its last query', () => {
  const step = packStep([row(512, 0, 1)], 16, layout);
  assert.deepEqual(step.decode.map((g) => g.rows), [0, 0, 0, 0], 'no decode rows: zero-size feeds, no dummy row');
  assert.deepEqual(step.prefill.map((g) => [g.rows, g.chunk, g.tableWidth]), [[1, 128, 8], [1, 128, 16], [1, 128, 24], [1, 128, 32]]);
  // The last tile scatters the whole chunk's K/V into its keys; the first only its own 128.
  assert.deepEqual(step.prefill.map((g) => g.newTokens.length), [128, 256, 384, 512]);
  assert.deepEqual(Array.from(step.unpackIndex.subarray(126, 130), Number), [126, 127, 128, 129]);
});

test('a decode-only step leaves every prefill group empty, and a decode row is never tiled', () => {
  const step = packStep([row(1, 40, 1), row(1, 7, 10)], 16, layout);
  assert.deepEqual(step.decode.map((g) => g.rows), [2, 0, 0, 0], 'few past keys: one group');
  assert.deepEqual(step.prefill.map((g) => [g.rows, g.tokenIndex.length, g.newTokens.length]), Array(4).fill([0, 0, 0]));
});

test('more tiles than groups: tiles of like span share a group, each group padded to its widest', () => {
  // Two sequences' chunks of 256 (2 tiles each) and one of 40: five tiles in four groups.
  const step = packStep([row(256, 0, 1), row(40, 0, 100), row(256, 0, 200)], 16, layout);
  const work = step.prefill.reduce((sum, g) => sum + g.rows * g.chunk * g.tableWidth, 0);
  assert.equal(step.prefill.reduce((n, g) => n + g.rows, 0), 5);
  // One group per distinct span (40, 128, 256): 1*40*3 + 2*128*8 + 2*128*16 blocks of work.
  assert.equal(work, 40 * 3 + 2 * 128 * 8 + 2 * 128 * 16);
});

test('decode rows with many past keys are split over the decode groups, rows of like length together', () => {
  // 12 rows: eight of 500 past tokens (512 keys padded), four of 100 (112): 4,544 keys, three groups of 2,048 at most.
  const rows = [...Array.from({ length: 8 }, (_, i) => row(1, 500, 1 + 40 * i)), ...Array.from({ length: 4 }, (_, i) => row(1, 100, 400 + 10 * i))];
  const step = packStep(rows, 16, layout);
  assert.deepEqual(step.decode.map((g) => g.rows), [6, 3, 3, 0]);
  assert.deepEqual(step.decode.map((g) => g.tableWidth), [32, 32, 32, 1], 'the short rows share the first group');
  // Every decode token is unpacked from its own group's output row, groups in order.
  const rowOf = Array.from(step.unpackIndex, Number);
  assert.deepEqual([...rowOf].sort((a, b) => a - b), Array.from({ length: 12 }, (_, i) => i));
  const firstGroup = new Set(Array.from(step.decode[0]!.tokenIndex, Number));
  for (let t = 8; t < 12; t++) assert.ok(firstGroup.has(t), `the 100-token row ${t} is in the first group`);
  // Far more keys than the groups' budget: every group takes a share, none is left empty.
  const many = packStep(Array.from({ length: 32 }, (_, i) => row(1, 520, 1 + 40 * i)), 16, layout);
  assert.deepEqual(many.decode.map((g) => g.rows), [8, 8, 8, 8]);
});
