// How the runner lays a step out for the graph (contract 5): chunks cut into query tiles whose
// keys end at their last query, spread over the prefill groups so that little is padded.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { packStep, type RunnerRow } from '../src/engine/runner.js';

const row = (n: number, pastLength: number, firstBlock: number): RunnerRow => ({
  tokens: Array.from({ length: n }, (_, i) => i + 1),
  pastLength,
  blocks: Array.from({ length: Math.ceil((pastLength + n) / 16) }, (_, k) => firstBlock + k),
  logitsFrom: n - 1,
  fetchLogits: false,
});

test('a 512-token chunk becomes four tiles of 128 in four groups, each scoring only the keys up to its last query', () => {
  const step = packStep([row(512, 0, 1)], 16, 4);
  assert.equal(step.decode.rows, 0, 'no decode rows: zero-size feeds, no dummy row');
  assert.deepEqual(step.prefill.map((g) => [g.rows, g.chunk, g.tableWidth]), [[1, 128, 8], [1, 128, 16], [1, 128, 24], [1, 128, 32]]);
  // The last tile scatters the whole chunk's K/V into its keys; the first only its own 128.
  assert.deepEqual(step.prefill.map((g) => g.newTokens.length), [128, 256, 384, 512]);
  assert.deepEqual(Array.from(step.unpackIndex.subarray(126, 130), Number), [126, 127, 128, 129]);
});

test('a decode-only step leaves every prefill group empty, and a decode row is never tiled', () => {
  const step = packStep([row(1, 40, 1), row(1, 7, 10)], 16, 4);
  assert.equal(step.decode.rows, 2);
  assert.deepEqual(step.prefill.map((g) => [g.rows, g.tokenIndex.length, g.newTokens.length]), Array(4).fill([0, 0, 0]));
});

test('more tiles than groups: tiles of like span share a group, each group padded to its widest', () => {
  // Two sequences' chunks of 256 (2 tiles each) and one of 40: five tiles in four groups.
  const step = packStep([row(256, 0, 1), row(40, 0, 100), row(256, 0, 200)], 16, 4);
  const work = step.prefill.reduce((sum, g) => sum + g.rows * g.chunk * g.tableWidth, 0);
  assert.equal(step.prefill.reduce((n, g) => n + g.rows, 0), 5);
  // One group per distinct span (40, 128, 256): 1*40*3 + 2*128*8 + 2*128*16 blocks of work.
  assert.equal(work, 40 * 3 + 2 * 128 * 8 + 2 * 128 * 16);
});
