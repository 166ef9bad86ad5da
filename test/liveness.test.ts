// The pieces the edge's robustness rests on, without a model: the liveness monitor (judged from
// heartbeats with a fake clock) and the async queue every producer/consumer hand-over uses.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EMPTY_STATS, LivenessMonitor } from '../src/engine/liveness.js';
import { AsyncQueue } from '../src/util/async-queue.js';

function monitor(timeoutMs = 1000) {
  let now = 0;
  const m = new LivenessMonitor(timeoutMs, () => now);
  return { m, advance: (ms: number) => (now += ms) };
}

const beat = (busy: boolean, applied: number, consecutiveFailedSteps = 0) => ({ stats: { ...EMPTY_STATS, consecutiveFailedSteps }, busy, applied });

test('liveness: stats before the first heartbeat are the ones it started with (KV committed at start), then the heartbeat\'s', () => {
  const m = new LivenessMonitor(1000, () => 0, { ...EMPTY_STATS, kvBytesCommitted: 1 << 30 });
  assert.equal(m.latestStats().kvBytesCommitted, 1 << 30);
  m.heartbeat({ stats: { ...EMPTY_STATS, kvBytesCommitted: 1 << 30, steps: 1 }, busy: false, applied: 0 });
  assert.equal(m.latestStats().steps, 1);
  assert.equal(new LivenessMonitor(1000).latestStats(), EMPTY_STATS);
});

test('liveness: an idle engine is alive however long it is quiet', () => {
  const { m, advance } = monitor();
  m.heartbeat(beat(false, 0));
  advance(60_000);
  assert.equal(m.check().state, 'ok');
});

test('liveness: a busy engine that keeps reporting steps is alive; one that stops is stuck', () => {
  const { m, advance } = monitor(1000);
  for (let i = 0; i < 50; i++) {
    m.heartbeat(beat(true, 1));
    advance(900); // long steps, but each one reports
    assert.equal(m.check().state, 'ok');
  }
  advance(200);
  const h = m.check();
  assert.equal(h.state, 'stuck');
  assert.match(h.reason!, /no progress for 1100 ms/);
});

test('liveness: a command the engine never applied counts as pending work (a hang while idle)', () => {
  const { m, advance } = monitor(1000);
  for (let i = 0; i < 3; i++) m.commandSent();
  m.heartbeat(beat(false, 3));
  m.commandSent(); // the 4th command
  advance(999);
  assert.equal(m.check().state, 'ok');
  advance(2);
  assert.equal(m.check().state, 'stuck');
  // ... unless the engine applied it (and went idle again).
  m.heartbeat(beat(false, 4));
  advance(5000);
  assert.equal(m.check().state, 'ok');
});

test('liveness: an engine idle for longer than the timeout is not stuck when work arrives, only if that work then waits the timeout', () => {
  const { m, advance } = monitor(1000);
  m.heartbeat(beat(false, 0));
  advance(60_000); // idle a minute, far past the timeout
  m.commandSent(); // a request arrives; the engine has not answered yet
  assert.equal(m.check().state, 'ok', 'the wait starts when the work arrived, not at the last heartbeat');
  advance(999);
  m.commandSent(); // more work while the first is still unanswered does not restart the wait
  advance(2);
  assert.equal(m.check().state, 'stuck');
});

test('liveness: death is final and keeps its first reason; 0 disables the stuck check', () => {
  const { m, advance } = monitor(0);
  m.heartbeat(beat(true, 0));
  advance(1e9);
  assert.equal(m.check().state, 'ok');
  m.markDead('the engine worker exited (code 1)');
  m.markDead('something later');
  m.heartbeat(beat(false, 0));
  assert.deepEqual([m.check().state, m.check().reason], ['dead', 'the engine worker exited (code 1)']);
});

test('async queue: in order, waits when empty, close ends the consumer after what is queued', async () => {
  const q = new AsyncQueue<number>();
  q.push(1);
  q.push(2);
  assert.deepEqual(await q.next(), { value: 1, done: false });
  assert.deepEqual(await q.next(), { value: 2, done: false });
  const waiting = q.next();
  q.push(3); // straight to the waiting consumer
  assert.deepEqual(await waiting, { value: 3, done: false });
  q.push(2);
  q.push(4);
  q.close();
  q.push(5); // ignored once closed
  const rest: number[] = [];
  for await (const x of q) rest.push(x);
  assert.deepEqual(rest, [2, 4]);
});

test('async queue: clear drops what is queued and ends a waiting consumer; one consumer at a time', async () => {
  const q = new AsyncQueue<string>();
  const waiting = q.next();
  await assert.rejects(q.next(), /one consumer/);
  q.clear();
  assert.deepEqual(await waiting, { value: undefined, done: true });
  const r = new AsyncQueue<string>();
  r.push('a');
  r.clear();
  assert.equal(r.length, 0);
  assert.deepEqual(await r.next(), { value: undefined, done: true });
});

test('async queue: a long queue compacts as it is consumed (no unbounded growth of the backing array)', () => {
  const q = new AsyncQueue<number>();
  for (let round = 0; round < 10; round++) {
    for (let i = 0; i < 5000; i++) q.push(i);
    for (let i = 0; i < 5000; i++) assert.equal(q.shift(), i);
  }
  assert.equal(q.length, 0);
  assert.ok((q as unknown as { items: unknown[] }).items.length < 5000);
});
