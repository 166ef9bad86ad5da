// Continuous batching: decides, before every model step, which sequences run and how many of
// their tokens, and owns their KV blocks. It never calls the model: `schedule()` returns a plan,
// the engine runs it, then `commit()` records what was computed. Pure and synchronous, so the
// policy is unit-tested without a model.
//
// Policy, per step, under a token budget:
//   1. every running sequence, oldest first, gets its pending tokens (1 when decoding, a chunk
//      when still prefilling), so streams keep flowing while long prompts arrive;
//   2. when a running sequence needs a block and none is free, the newest running sequence is
//      preempted: its blocks are freed and it returns to the front of the queue, to be recomputed
//      (prompt + what it generated so far) when memory allows;
//   3. waiting sequences are admitted first-come-first-served while the budget, the batch size
//      and free blocks for their whole current length allow; their prompt may be chunked.
import { BlockAllocator, blocksFor } from './kv-cache.js';

export interface SchedulerConfig {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  blockSize: number;
}

export class Sequence {
  status: 'waiting' | 'running' | 'finished' = 'waiting';
  /** Leading tokens whose K/V are in the cache. */
  numComputed = 0;
  blocks: number[] = [];
  preemptions = 0;

  constructor(
    readonly requestId: string,
    readonly choice: number,
    /** Prompt followed by generated tokens; grows by one per decode step. */
    readonly tokens: number[],
    readonly promptLength: number,
    /** Admission order key: lower is older. */
    readonly arrival: number,
  ) {}

  get outputLength(): number {
    return this.tokens.length - this.promptLength;
  }
}

export interface ScheduledRow {
  seq: Sequence;
  /** First token fed this step (== seq.numComputed at planning time). */
  start: number;
  /** Tokens fed this step. */
  count: number;
  /** This chunk completes the sequence's pending tokens, so its last logits pick a token. */
  sample: boolean;
}

export interface StepPlan {
  /** What the runner feeds, in order. */
  rows: ScheduledRow[];
  /** Sequences pushed back to the queue this step (their blocks are already freed). */
  preempted: Sequence[];
}

export class Scheduler {
  readonly waiting: Sequence[] = [];
  readonly running: Sequence[] = [];
  preemptionCount = 0;

  constructor(
    readonly config: SchedulerConfig,
    readonly allocator: BlockAllocator,
  ) {}

  add(seq: Sequence): void {
    seq.status = 'waiting';
    this.waiting.push(seq);
  }

  schedule(): StepPlan {
    let budget = this.config.maxNumBatchedTokens;
    const rows: ScheduledRow[] = [];
    const preempted: Sequence[] = [];

    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const seq = this.running[i];
      const count = Math.min(seq.tokens.length - seq.numComputed, budget);
      if (count <= 0) continue;
      if (!this.reserve(seq, seq.numComputed + count, rows, preempted)) break; // seq itself was preempted
      rows.push({ seq, start: seq.numComputed, count, sample: seq.numComputed + count === seq.tokens.length });
      budget -= count;
    }
    budget = this.config.maxNumBatchedTokens - rows.reduce((s, r) => s + r.count, 0);

    while (this.waiting.length && budget > 0 && this.running.length < this.config.maxNumSeqs) {
      const seq = this.waiting[0];
      if (preempted.includes(seq)) break; // not back in the same step it was evicted in
      if (blocksFor(seq.tokens.length, this.config.blockSize) > this.allocator.freeCount) break;
      const count = Math.min(seq.tokens.length, budget);
      seq.blocks = this.allocator.allocate(blocksFor(count, this.config.blockSize)) ?? [];
      this.waiting.shift();
      this.insertRunning(seq);
      rows.push({ seq, start: 0, count, sample: count === seq.tokens.length });
      budget -= count;
    }
    return { rows, preempted };
  }

  /** Records that the plan ran: its tokens' K/V are now cached. */
  commit(plan: StepPlan): void {
    for (const row of plan.rows) if (row.seq.status === 'running') row.seq.numComputed = row.start + row.count;
  }

  /** Frees a sequence for good (finished or cancelled). */
  finish(seq: Sequence): void {
    if (seq.status === 'finished') return;
    const queue = seq.status === 'running' ? this.running : this.waiting;
    const at = queue.indexOf(seq);
    if (at >= 0) queue.splice(at, 1);
    this.allocator.release(seq.blocks);
    seq.blocks = [];
    seq.status = 'finished';
  }

  /**
   * A new choice continuing from `parent`'s cached prompt: full blocks are shared, the partly
   * filled last block is copied on write. Returns the block copy the KV pool must make, or null.
   * Without a free block, or with the batch full (max_num_seqs), the child is queued to
   * recompute its prefill instead.
   */
  fork(parent: Sequence, child: Sequence): { from: number; to: number } | null {
    const bs = this.config.blockSize;
    const full = Math.floor(parent.numComputed / bs);
    const partial = parent.numComputed % bs !== 0;
    const fresh = this.running.length >= this.config.maxNumSeqs ? null : partial ? this.allocator.allocate(1) : [];
    if (!fresh) {
      this.waiting.unshift(child);
      return null;
    }
    const shared = parent.blocks.slice(0, full);
    this.allocator.share(shared);
    child.blocks = [...shared, ...fresh];
    child.numComputed = parent.numComputed;
    this.insertRunning(child);
    return partial ? { from: parent.blocks[full], to: fresh[0] } : null;
  }

  /** Cancels every sequence of a request; returns whether any was found. */
  abort(requestId: string): boolean {
    const victims = [...this.running, ...this.waiting].filter((s) => s.requestId === requestId);
    for (const seq of victims) this.finish(seq);
    return victims.length > 0;
  }

  get usedBlocks(): number {
    return this.allocator.usedCount;
  }

  /** Ensures `seq` has blocks for `tokens` positions, preempting the newest sequences if needed. */
  private reserve(seq: Sequence, tokens: number, rows: ScheduledRow[], preempted: Sequence[]): boolean {
    const need = blocksFor(tokens, this.config.blockSize) - seq.blocks.length;
    if (need <= 0) return true;
    for (;;) {
      const got = this.allocator.allocate(need);
      if (got) {
        seq.blocks.push(...got);
        return true;
      }
      const victim = this.running[this.running.length - 1];
      this.preempt(victim);
      preempted.push(victim);
      const row = rows.findIndex((r) => r.seq === victim);
      if (row >= 0) rows.splice(row, 1);
      if (victim === seq) return false;
    }
  }

  private preempt(seq: Sequence): void {
    this.running.splice(this.running.indexOf(seq), 1);
    this.allocator.release(seq.blocks);
    seq.blocks = [];
    seq.numComputed = 0;
    seq.status = 'waiting';
    seq.preemptions++;
    this.preemptionCount++;
    this.waiting.unshift(seq);
  }

  private insertRunning(seq: Sequence): void {
    seq.status = 'running';
    let i = this.running.length;
    while (i > 0 && older(seq, this.running[i - 1])) i--;
    this.running.splice(i, 0, seq);
  }
}

function older(a: Sequence, b: Sequence): boolean {
  return a.arrival < b.arrival || (a.arrival === b.arrival && a.choice < b.choice);
}
