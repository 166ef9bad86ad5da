// Fair share between tenants and the priority policy, by the scheduler alone (as scheduler.test.ts):
// plans are checked directly and runner results simulated by committing plans.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { SchedulingPolicy } from '../src/engine/fair-share.js';
import { BlockAllocator } from '../src/engine/kv-cache.js';
import { KvCacheManager } from '../src/engine/kv-cache-manager.js';
import { Scheduler, Sequence } from '../src/engine/scheduler.js';
import { runStep } from './helpers/scheduler-steps.js';

let arrival = 0;
const seq = (id: string, tenant: string, priority = 0, promptLength = 4, maxOutput = Infinity) =>
  new Sequence(id, 0, Array.from({ length: promptLength }, (_, i) => i + 1), promptLength, arrival++, maxOutput, true, [], tenant, priority);

function make(opts: { maxNumSeqs: number; blocks?: number; policy?: SchedulingPolicy }) {
  return new Scheduler(
    { maxNumSeqs: opts.maxNumSeqs, maxNumBatchedTokens: 256, blockSize: 4, admissionReserveTokens: 0, policy: opts.policy },
    new KvCacheManager(new BlockAllocator((opts.blocks ?? 64) + 1), 4),
  );
}

const ids = (seqs: readonly Sequence[]) => seqs.map((s) => s.requestId);
/** Ends the sequence the way the engine does when its request finishes. */
const finish = (s: Scheduler, id: string) => assert.ok(s.abort(id), `${id} was in the scheduler`);

test('the next free slot goes to the tenant with the fewest running sequences, not to the oldest request', () => {
  const s = make({ maxNumSeqs: 3 });
  for (let i = 0; i < 6; i++) s.add(seq(`a${i}`, 'A'));
  runStep(s);
  assert.deepEqual(ids(s.running), ['a0', 'a1', 'a2']);
  s.add(seq('b0', 'B')); // arrives after a3..a5
  s.add(seq('b1', 'B'));
  finish(s, 'a0');
  runStep(s);
  assert.deepEqual(ids(s.running), ['a1', 'a2', 'b0'], 'B holds no slot: its request goes before the older a3');
  finish(s, 'a1');
  runStep(s);
  // A holds 1 slot, B holds 1: the tie goes to the earlier request, a3.
  assert.deepEqual(ids(s.running), ['a2', 'a3', 'b0']);
  finish(s, 'a2');
  runStep(s);
  assert.deepEqual(ids(s.running), ['a3', 'a4', 'b0'], 'A and B hold 1 each: the tie goes to a4, which came before b1');
});

test('with one tenant, admission stays first come first served (the order every other scheduler test assumes)', () => {
  const s = make({ maxNumSeqs: 2 });
  for (let i = 0; i < 4; i++) s.add(seq(`a${i}`, 'A', 3 - i));
  runStep(s);
  assert.deepEqual(ids(s.running), ['a0', 'a1'], 'fcfs ignores priority');
});

test('priority policy: lower priority first within a tenant, then arrival; it never passes another tenant', () => {
  const s = make({ maxNumSeqs: 2, policy: 'priority' });
  s.add(seq('a0', 'A', 0));
  s.add(seq('a1', 'A', 5));
  s.add(seq('a2', 'A', -1));
  s.add(seq('a3', 'A', -1));
  runStep(s);
  assert.deepEqual(ids(s.running), ['a2', 'a3']);
  s.add(seq('b0', 'B', 9)); // B holds nothing: it goes next whatever A's priorities
  finish(s, 'a2');
  runStep(s);
  assert.deepEqual(ids(s.running), ['a3', 'b0']);
  finish(s, 'b0');
  runStep(s);
  assert.deepEqual(ids(s.running), ['a0', 'a3'], 'then priority 0 before 5');
});

test('priority policy: a waiting request preempts the least urgent running one of its tenant, which resumes later with every token', () => {
  const s = make({ maxNumSeqs: 3, policy: 'priority' });
  const running = [seq('a0', 'A', 0), seq('a1', 'A', 2), seq('a2', 'A', 0)];
  for (const r of running) s.add(r);
  runStep(s);
  runStep(s);
  const a1Tokens = [...running[1]!.tokens];
  s.add(seq('b0', 'B', -10)); // another tenant: never preempts A
  runStep(s);
  assert.deepEqual(ids(s.running), ['a0', 'a1', 'a2']);
  finish(s, 'b0');
  const urgent = seq('a3', 'A', -10);
  s.add(urgent);
  const plan = runStep(s);
  assert.deepEqual(ids(plan.preempted), ['a1'], 'the largest priority value goes, not the newest');
  assert.ok(plan.rows.some((r) => r.seq === urgent), 'the urgent request is prefilled in the same step');
  assert.deepEqual(ids(s.running), ['a0', 'a2', 'a3']);
  assert.equal(s.preemptionCount, 1);
  finish(s, 'a3');
  runStep(s);
  assert.deepEqual(ids(s.running), ['a0', 'a1', 'a2']);
  assert.deepEqual(running[1]!.tokens.slice(0, a1Tokens.length), a1Tokens, 'a preempted sequence keeps what it generated');
});

test('fcfs never preempts for priority; priority policy preempts nothing for a request that equals or exceeds every running one', () => {
  for (const [policy, waitingPriority] of [['fcfs', -10], ['priority', 0]] as const) {
    const s = make({ maxNumSeqs: 2, policy });
    s.add(seq('a0', 'A', 0));
    s.add(seq('a1', 'A', 0));
    runStep(s);
    s.add(seq('a2', 'A', waitingPriority));
    const plan = runStep(s);
    assert.deepEqual(ids(plan.preempted), [], `${policy}: nothing preempted`);
    assert.deepEqual(ids(s.waiting), ['a2']);
  }
});

test('priority policy: nothing is preempted when even preempting every less urgent sequence would not make room', () => {
  // 6 blocks: a0 (as urgent as the newcomer, so no victim; 13 tokens) holds 3 and needs a 4th,
  // a1 (priority 5) holds 1 and needs a 2nd; the newcomer needs 5, and a1 going frees only 1.
  const s = make({ maxNumSeqs: 4, blocks: 6, policy: 'priority' });
  s.add(seq('a0', 'A', -1, 12));
  s.add(seq('a1', 'A', 5, 4));
  runStep(s);
  s.add(seq('a2', 'A', -1, 20));
  const plan = runStep(s);
  assert.deepEqual(ids(plan.preempted), []);
  assert.deepEqual(ids(s.running), ['a0', 'a1']);
});

test('per-tenant load counts running and waiting sequences', () => {
  const s = make({ maxNumSeqs: 2 });
  s.add(seq('a0', 'A'));
  s.add(seq('a1', 'A'));
  s.add(seq('a2', 'A'));
  s.add(seq('d0', 'default'));
  runStep(s);
  assert.deepEqual(Object.fromEntries(s.tenantLoad()), { A: { running: 1, waiting: 2 }, default: { running: 1, waiting: 0 } });
});

test('out of memory mid-generation: fcfs preempts the newest sequence, the priority policy the least urgent', () => {
  for (const [policy, victim] of [['fcfs', 'a2'], ['priority', 'a0']] as const) {
    // 4 blocks, all taken after the prefill; a0 and a1 then each need a 2nd one, a2 (8 tokens) none.
    const s = make({ maxNumSeqs: 4, blocks: 4, policy });
    s.add(seq('a0', 'A', 5, 4));
    s.add(seq('a1', 'A', 0, 4));
    s.add(seq('a2', 'A', 0, 7));
    runStep(s);
    const plan = runStep(s);
    assert.deepEqual(ids(plan.preempted), [victim], policy);
  }
});
