// KV memory you can predict: the allocator counts the block ids each pool has ever been handed
// (their pages are the committed ones), the engine reports those bytes and the pools' full size,
// and the soak's RSS check reads RSS net of them, so a filling prefix cache is not a leak while a
// leak still is.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockAllocator, KvPool } from '../src/engine/kv-cache.js';
import { checks, netRss, type VerdictInput } from '../tools/soak/report.js';
import type { MetricValues } from '../tools/soak/probes.js';
import { collect, request } from './helpers/engine-run.js';
import { startTestEngine } from './helpers/serving.js';

test('allocator: warm free blocks are reused before never-used ones; each group counts the ids it was ever handed', () => {
  const a = new BlockAllocator(9, false);
  const first = a.allocate(3)!;
  assert.equal(a.touchedCount('target'), 3);
  a.release(first);
  const again = a.allocate(3)!;
  assert.deepEqual([...again].sort(), [...first].sort(), 'the three warm blocks, not three cold ones');
  assert.equal(a.touchedCount('target'), 3, 'nothing new was touched');
  const draft = a.allocate(2, 'draft')!;
  assert.equal(a.touchedCount('draft'), 2);
  a.release(draft);
  a.release(again);
  a.allocate(5);
  assert.equal(a.touchedCount('target'), 5, 'the draft blocks are new to the target pool');
  assert.equal(a.touchedCount('draft'), 2);
});

test('engine: kvBytesCommitted is the touched blocks times the block size, never shrinks, and is bounded by kvCacheBytes', async (t) => {
  const engine = await startTestEngine({ engine: { kvCacheTokens: 1024 } });
  t.after(() => engine.shutdown());
  // The scripted runner's pool: 1 layer, 1 head of 1 float, keys and values, 16 tokens a block.
  const blockBytes = KvPool.blockBytes({ layers: 1, heads: 1, headDim: 1, blockSize: 16 });
  assert.equal(engine.model.kvCacheBytes, (1024 / 16 + 1) * blockBytes, 'every block, the null block included');
  const prompt = Array.from({ length: 100 }, (_, i) => 1000 + i);
  await collect(engine, request(prompt, { maxTokens: 20 }));
  const afterOne = engine.stats().kvBytesCommitted;
  assert.equal(afterOne, Math.ceil(120 / 16) * blockBytes, 'the 8 blocks of 120 tokens');
  await collect(engine, request(prompt.map((x) => x + 1), { maxTokens: 20 }));
  const afterTwo = engine.stats().kvBytesCommitted;
  // The first request's 7 full blocks stay cached; its partly filled last one has no name, so it
  // was free at once, and the second request reuses it (warm) before taking 7 never-used ones.
  assert.equal(afterTwo, afterOne + 7 * blockBytes);
  assert.equal(engine.stats().kvBlocksUsed, 0, 'nothing is in use, yet the pages stay committed');
  assert.ok(afterTwo <= engine.model.kvCacheBytes);
});

const MiB = 2 ** 20;
const end = (rss: number, kv: number): MetricValues => ({ rssBytes: rss * MiB, kvCommittedBytes: kv * MiB, inflight: 0, kvBlocksUsed: 0, running: 0, paused: 0, waiting: 0 });
const verdict = (warmup: MetricValues, last: MetricValues): boolean => {
  const input: VerdictInput = { rows: [], healthFailures: 0, end: last, netRssAfterWarmup: netRss(warmup), warmupS: 30, serverExit: null, serverErrorLines: 0 };
  return checks(input).find((c) => c.name.startsWith('RSS'))!.ok;
};

test('soak: RSS that grows only by KV pages committed passes; the same growth elsewhere fails', () => {
  assert.equal(verdict(end(1300, 300), end(2300, 1300)), true, 'the prefix cache filled its pool: +1000 MiB of KV pages');
  assert.equal(verdict(end(1300, 300), end(2300, 300)), false, 'a leak: +1000 MiB that is not KV');
  assert.equal(verdict(end(1300, 300), end(1400, 300)), false, '+10 % of the rest is too much');
  assert.equal(verdict(end(1300, 300), end(1380, 300)), true, '+8 % is within the bound');
});
