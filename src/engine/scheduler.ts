// Continuous batching: decides, before every model step, which sequences run and how many of
// their tokens; their KV blocks are the KvCacheManager's, which it asks for slots and preempts
// when there are none. It never calls the model: `schedule()` returns a plan, the engine runs it,
// then `commit()` records what was computed. Pure and synchronous, so the policy is unit-tested
// without a model.
//
// Policy, per step, under a token budget and (optionally) a time budget:
//   1. every decoding sequence gets its one token, so streams keep flowing while prompts arrive;
//   2. when a running sequence needs a block and none is free, draft-model blocks are dropped
//      (KvCacheManager.reclaimDraft), then a victim is preempted (see `victim`): its blocks are freed and it
//      returns to the front of the queue, to be recomputed (prompt + what it generated so far)
//      when memory allows;
//   3. then prefill, oldest first: running sequences still prefilling, then waiting sequences,
//      admitted in fair-share order (see fair-share.ts: first come, first served while one tenant
//      waits; the tenant holding the fewest slots first when several do; `priority` within a
//      tenant under that policy) and only as a unit (see `admits`): a request's choices together,
//      and only with room for their whole current length plus some output to come. Admission first takes
//      the sequence's leading blocks that the prefix cache holds (KvCacheManager.takeCachedPrefix),
//      so only the rest is prefilled; committed steps name the blocks they filled. Chunks stop where
//      the token budget, or the step's predicted time
//      (a StepCost model, --max-step-ms), would be exceeded: a long prompt is spread over several
//      steps instead of stalling every stream in one, while prefill keeps at least the share of
//      the time that prompts have of the requests' work (prefillShare). The first prompt in line
//      always advances by at least MIN_PREFILL_CHUNK tokens per step, so nothing starves.
// A paused sequence (its client stopped reading) takes no part in steps and is the first to be
// preempted when a running sequence or the head of the queue needs its blocks or its batch slot.
// Under the `priority` policy (vLLM's), a victim is the least urgent sequence rather than the
// newest, and before each step a waiting sequence that cannot be admitted preempts running ones
// of its own tenant that are less urgent (see preemptForPriority).
import { DEFAULT_TENANT, lessUrgent, nextToAdmit, type SchedulingPolicy } from './fair-share.js';
import { blocksFor, type KvStorage } from './kv-cache.js';
import type { KvCacheManager } from './kv-cache-manager.js';
import { plus, rowShape, type StepCost, type StepShape } from './step-cost.js';

export interface SchedulerConfig {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  blockSize: number;
  /**
   * Time cap of a step that carries decoding streams: milliseconds; 'auto', AUTO_STEP_FACTOR
   * times the predicted cost of a decode step of the batch being formed (see settledDecode), so
   * a stream's worst gap stays within that factor of its usual one, on any hardware, or more
   * when prompts are most of the work in flight (see prefillShare); or 0, tokens only. Steps
   * without decoding streams keep only the token cap: no stream waits on them.
   */
  maxStepMs?: number | 'auto';
  /** Output tokens admission keeps room for per sequence (default ADMISSION_RESERVE_TOKENS). */
  admissionReserveTokens?: number;
  /** fcfs (default): `priority` is ignored; priority: it orders a tenant's sequences and may preempt. */
  policy?: SchedulingPolicy;
  /**
   * Distinct LoRA adapters the running batch may hold (--max-loras; the step graph's slots). A
   * waiting sequence whose adapter would be one too many is passed over until one leaves.
   */
  maxLoras?: number;
}

/** The first prefill in line advances at least this many tokens per step, whatever the time cap. */
export const MIN_PREFILL_CHUNK = 32;
/**
 * Admission keeps room for this many more tokens (or what is left of max_tokens, if less) of every
 * running sequence and of the newcomer, so that under load a batch is not admitted only to be
 * preempted a few steps later.
 */
export const ADMISSION_RESERVE_TOKENS = 128;
/** A sequence preempted this many times is passed over as a victim while another can go instead. */
export const SPARE_AFTER_PREEMPTIONS = 2;
/** 'auto' time cap: a step may cost this many times a decode step of the batch being formed. */
export const AUTO_STEP_FACTOR = 2;

export class Sequence {
  status: 'waiting' | 'running' | 'finished' = 'waiting';
  /** Leading tokens whose K/V are in the cache (its blocks are the KvCacheManager's). */
  numComputed = 0;
  /** Its client stopped reading: skipped by steps and admission, preempted first. */
  paused = false;
  /**
   * The request's other choices, still to fork from this one (its choice 0) once the prompt is
   * prefilled: admitted with it, so their batch slots are held and memory is counted for them.
   */
  unforked = 0;
  /** Times it was preempted: past SPARE_AFTER_PREEMPTIONS, others go first. */
  preemptions = 0;

  constructor(
    readonly requestId: string,
    readonly choice: number,
    /** Prompt followed by generated tokens; grows by one per decode step. */
    readonly tokens: number[],
    readonly promptLength: number,
    /** Admission order key: lower is older. */
    readonly arrival: number,
    /** Most tokens it may generate (max_tokens): what 'auto' counts as its decode work. */
    readonly maxOutput = Infinity,
    /** False when every prompt position's logits are wanted (echo with logprobs): all are computed. */
    readonly usesPrefixCache = true,
    /** Mixed into its first block's name: only sequences with the same keys share cached blocks. */
    readonly cacheKeys: readonly string[] = [],
    /** Who sent it (the API key's name): admission shares the batch fairly between tenants. */
    readonly tenant: string = DEFAULT_TENANT,
    /** Lower goes first within its tenant, under the `priority` policy only. */
    readonly priority = 0,
    /** Its LoRA adapter's engine id, or null for the base model. */
    readonly adapter: number | null = null,
  ) {}

  get outputLength(): number {
    return this.tokens.length - this.promptLength;
  }

  /** Tokens it may still generate. */
  get outputLeft(): number {
    return Math.max(0, this.maxOutput - this.outputLength);
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
  /**
   * Speculative decoding: guessed tokens fed after the pending one (count = 1 + draft.length).
   * They are not the sequence's tokens until verification keeps them (acceptDraftToken).
   */
  draft?: readonly number[];
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
  /** Running sequences per LoRA adapter: the adapters the batch holds (at most maxLoras). */
  private readonly runningAdapters = new Map<number, number>();

  constructor(
    readonly config: SchedulerConfig,
    readonly kv: KvCacheManager,
  ) {
    if (kv.blockSize !== config.blockSize) throw new Error(`the KV cache's blocks hold ${kv.blockSize} tokens, the scheduler's ${config.blockSize}`);
  }

  add(seq: Sequence): void {
    seq.status = 'waiting';
    this.waiting.push(seq);
  }

  /** The next step's plan; `cost` (with config.maxStepMs) caps prefill by predicted time. */
  schedule(cost?: StepCost): StepPlan {
    const rows: ScheduledRow[] = [];
    const preempted: Sequence[] = [];
    let shape: StepShape = { tokens: 0, attended: 0 };
    const add = (row: ScheduledRow) => {
      rows.push(row);
      shape = plus(shape, rowShape(row.start, row.count));
    };
    // Before any row is planned, so that a victim has none to take back.
    if (this.config.policy === 'priority') this.preemptForPriority(preempted);
    // Planning only ever takes sequences out of `running` (preemption) until admission: what is
    // left to plan is this snapshot's sequences that still run, in order.
    const running = [...this.running];

    // 1. Decode rows: every running sequence with exactly one pending token.
    for (const seq of running) {
      if (shape.tokens >= this.config.maxNumBatchedTokens) break;
      if (seq.status !== 'running' || seq.paused || seq.tokens.length - seq.numComputed !== 1) continue;
      if (this.reserve(seq, seq.tokens.length, rows, preempted)) add({ seq, start: seq.numComputed, count: 1, sample: true });
    }
    // Decode rows a preemption removed again were subtracted from `rows`; recount the shape.
    shape = rows.reduce((s, r) => plus(s, rowShape(r.start, r.count)), { tokens: 0, attended: 0 });
    const limitMs = this.timeLimit(cost, shape);

    // 3. Prefill chunks, oldest first, under the token and time budgets.
    let first = true;
    const chunk = (start: number, pending: number): number => {
      const byTokens = Math.min(pending, this.config.maxNumBatchedTokens - shape.tokens);
      if (byTokens <= 0) return 0;
      let count = byTokens;
      if (limitMs !== null) count = largestWithin(byTokens, (c) => cost!.predictMs(plus(shape, rowShape(start, c))) <= limitMs);
      if (first) count = Math.max(count, Math.min(MIN_PREFILL_CHUNK, byTokens));
      first = false;
      return count;
    };
    // A sequence with a decode row has one pending token, so it is not among these.
    for (const seq of running) {
      const pending = seq.tokens.length - seq.numComputed;
      if (seq.status !== 'running' || seq.paused || pending <= 1) continue;
      const count = chunk(seq.numComputed, pending);
      if (count === 0 || !this.reserve(seq, seq.numComputed + count, rows, preempted)) return { rows, preempted };
      add({ seq, start: seq.numComputed, count, sample: seq.numComputed + count === seq.tokens.length });
    }
    for (;;) {
      const seq = nextToAdmit(this.waiting, this.running, this.config.policy ?? 'fcfs', this.adapterFits);
      // Not back in the same step it was evicted in.
      if (seq === undefined || preempted.includes(seq)) break;
      seq.numComputed = this.kv.takeCachedPrefix(seq);
      const count = this.makeRoom(seq, preempted) ? chunk(seq.numComputed, seq.tokens.length - seq.numComputed) : 0;
      if (count === 0) {
        this.kv.free(seq);
        seq.numComputed = 0;
        break;
      }
      // `admits` held, so the blocks are there.
      this.kv.allocateSlots(seq, seq.numComputed + count);
      this.kv.countLookup(seq.tokens.length, seq.numComputed);
      this.waiting.splice(this.waiting.indexOf(seq), 1);
      this.insertRunning(seq);
      add({ seq, start: seq.numComputed, count, sample: seq.numComputed + count === seq.tokens.length });
    }
    return { rows, preempted };
  }

  /**
   * The decode rows of the batch the queue settles into: every unpaused running and waiting
   * sequence decoding (up to max_num_seqs), at the current rows' mean attended length. Scaling
   * the 'auto' cap by it rather than by the rows decoding now matters while a batch ramps up:
   * with 1 stream decoding and 31 prompts queued, twice a 1-row step would admit the queue
   * MIN_PREFILL_CHUNK tokens at a time, while the streams' usual gap is about to be a 32-row
   * step's.
   */
  private settledDecode(decode: StepShape): StepShape {
    if (decode.tokens === 0) return decode;
    const live = (q: Sequence[]) => q.reduce((n, s) => n + (s.paused ? 0 : 1 + s.unforked), 0);
    const rows = Math.max(decode.tokens, Math.min(this.config.maxNumSeqs, live(this.running) + live(this.waiting)));
    return { tokens: rows, attended: (decode.attended * rows) / decode.tokens };
  }

  /** The step's time cap in ms, or null when only the token budget applies. */
  private timeLimit(cost: StepCost | undefined, decode: StepShape): number | null {
    const setting = this.config.maxStepMs ?? 0;
    if (!cost || setting === 0 || decode.tokens === 0) return null;
    if (setting !== 'auto') return setting;
    const settled = this.settledDecode(decode);
    const decodeMs = cost.predictMs(settled);
    const share = this.prefillShare(cost, settled, decodeMs);
    if (share >= 1) return null;
    return Math.max(AUTO_STEP_FACTOR * decodeMs, decodeMs / (1 - share));
  }

  /**
   * Prompts' share of the work the requests in flight bring: each one's whole prompt against its
   * max_tokens decode steps, each at its share of a decode step of the batch being formed. It is
   * the share of the machine that prefill needs for prompts to be served as fast as they come,
   * whatever the load; 'auto' gives prefill at least that share of a step. Under it prompts queue
   * up, trading the streams' pace for time to first token: when prompts are most of the work, a
   * fixed cap leaves most requests waiting while a few stream fast. The share of the work still to
   * do, instead of the work brought, only settles once the queue is long enough to make it so.
   * (The runs that showed both: docs/benchmark.md, "Figures behind the code".)
   */
  private prefillShare(cost: StepCost, settled: StepShape, decodeMs: number): number {
    let prompts: StepShape = { tokens: 0, attended: 0 };
    let decodeTokens = 0;
    for (const queue of [this.running, this.waiting]) {
      for (const s of queue) {
        if (s.paused) continue;
        if (s.choice === 0) {
          // A request's other choices share its prompt's KV blocks.
          prompts = plus(prompts, rowShape(0, s.promptLength));
        }
        decodeTokens += s.maxOutput;
      }
    }
    if (prompts.tokens === 0 || !Number.isFinite(decodeTokens)) return 0;
    const prefillMs = cost.predictMs(prompts) - cost.predictMs({ tokens: 0, attended: 0 });
    const decodeWorkMs = (decodeTokens * decodeMs) / settled.tokens;
    return prefillMs > 0 ? prefillMs / (prefillMs + decodeWorkMs) : 0;
  }

  /** Whether a step would run anything: some unpaused sequence is running or waiting. */
  hasWork(): boolean {
    return this.running.some((s) => !s.paused) || this.waiting.some((s) => !s.paused);
  }

  /** Keeps the request's sequences out of steps; a paused sequence is preempted before any other. */
  pause(requestId: string): void {
    for (const seq of this.sequencesOf(requestId)) seq.paused = true;
  }

  resume(requestId: string): void {
    for (const seq of this.sequencesOf(requestId)) seq.paused = false;
  }

  /** Records that the plan ran: its tokens' K/V are now cached, and full blocks get their names. */
  commit(plan: StepPlan): void {
    for (const { seq, start, count, draft } of plan.rows) {
      if (seq.status !== 'running') continue;
      seq.numComputed = start + count - (draft?.length ?? 0);
      this.kv.commit(seq, seq.numComputed);
    }
  }

  /**
   * Verification kept the next draft token (the sampled token equals it and is the sequence's
   * last token now): its K/V, computed in the step, are the sequence's.
   */
  acceptDraftToken(seq: Sequence): void {
    seq.numComputed++;
    this.kv.commit(seq, seq.numComputed);
  }

  /** Frees a sequence for good (finished or cancelled). */
  finish(seq: Sequence): void {
    if (seq.status === 'finished') return;
    const queue = seq.status === 'running' ? this.running : this.waiting;
    const at = queue.indexOf(seq);
    if (at >= 0) queue.splice(at, 1);
    if (at >= 0 && queue === this.running) this.countAdapter(seq, -1);
    seq.status = 'finished';
    this.kv.remove(seq);
  }

  /**
   * A new choice continuing from `parent`'s cached prompt, in the batch slot admission held for
   * it; the KV cache manager shares the prompt's blocks with it (KvCacheManager.fork).
   */
  fork(parent: Sequence, child: Sequence, storage?: Pick<KvStorage, 'copyBlock'>): void {
    if (parent.unforked <= 0) throw new Error(`fork of ${parent.requestId}: no choice of it was admitted to fork`);
    parent.unforked--;
    child.numComputed = this.kv.fork(parent, child, parent.numComputed, storage);
    this.insertRunning(child);
  }

  /** Cancels every sequence of a request; returns whether any was found. */
  abort(requestId: string): boolean {
    const victims = this.sequencesOf(requestId);
    for (const seq of victims) this.finish(seq);
    return victims.length > 0;
  }

  get pausedCount(): number {
    let n = 0;
    for (const s of this.running) if (s.paused) n++;
    for (const s of this.waiting) if (s.paused) n++;
    return n;
  }

  private sequencesOf(requestId: string): Sequence[] {
    return [...this.running, ...this.waiting].filter((s) => s.requestId === requestId);
  }

  /**
   * Admission of `seq` and its unforked choices: frees side blocks (draft caches), then preempts
   * paused sequences (newest first), until `admits` holds; false if that is not enough.
   */
  private makeRoom(seq: Sequence, preempted: Sequence[]): boolean {
    while (!this.admits(seq)) {
      if (this.hasSlotsFor(seq) && this.kv.reclaimDraft()) continue;
      const victim = this.newestPaused();
      if (!victim) return false;
      this.preempt(victim);
      preempted.push(victim);
    }
    return true;
  }

  /**
   * Whether the batch can take `seq` with its unforked choices now: a slot for each, and free
   * blocks for its current length (its choices' copies of the partly filled prompt block
   * included) plus, for it and for every unpaused running sequence, the blocks of
   * ADMISSION_RESERVE_TOKENS more tokens (or of what is left of its max_tokens). Preemption then
   * happens only when outputs outgrow that reserve, not a few steps after every admission. A
   * unit alone in the batch needs no reserve, and at most the whole pool: it never waits for room
   * it cannot get.
   */
  private admits(seq: Sequence): boolean {
    if (!this.hasSlotsFor(seq)) return false;
    const alone = !this.running.some((s) => !s.paused);
    if (alone) return Math.min(this.claim(seq, 0), this.kv.totalBlocks) <= this.kv.freeBlocks;
    const reserve = this.config.admissionReserveTokens ?? ADMISSION_RESERVE_TOKENS;
    let need = this.claim(seq, reserve);
    for (const s of this.running) if (!s.paused) need += this.claim(s, reserve);
    return need <= this.kv.freeBlocks;
  }

  /**
   * Blocks `seq` and its unforked choices need beyond those they hold, to cache what they have
   * and `ahead` more tokens each (at most what is left of max_tokens). A choice shares the
   * prompt's full blocks and holds its own from the partly filled one on.
   */
  private claim(seq: Sequence, ahead: number): number {
    const bs = this.config.blockSize;
    const more = Math.min(seq.outputLeft, ahead);
    const own = Math.max(0, blocksFor(seq.tokens.length + more, bs) - this.kv.blocksOf(seq).length);
    if (seq.unforked === 0) return own;
    return own + seq.unforked * (blocksFor(seq.promptLength + more, bs) - Math.floor(seq.promptLength / bs));
  }

  private hasSlotsFor(seq: Sequence): boolean {
    return this.slotsTaken() + 1 + seq.unforked <= this.config.maxNumSeqs;
  }

  /** Batch slots held: running sequences and the choices they will fork. */
  private slotsTaken(): number {
    let n = this.running.length;
    for (const s of this.running) n += s.unforked;
    return n;
  }

  private newestPaused(): Sequence | undefined {
    for (let i = this.running.length - 1; i >= 0; i--) if (this.running[i].paused) return this.running[i];
    return undefined;
  }

  /**
   * Slots for `tokens` positions of `seq`, from the KV cache manager: when there are none, draft
   * blocks go first, then victims (see `victim`) until there are; false when `seq` was the one.
   */
  private reserve(seq: Sequence, tokens: number, rows: ScheduledRow[], preempted: Sequence[]): boolean {
    while (!this.kv.allocateSlots(seq, tokens)) {
      if (this.kv.reclaimDraft()) continue;
      const victim = this.victim();
      this.preempt(victim);
      preempted.push(victim);
      const row = rows.findIndex((r) => r.seq === victim);
      if (row >= 0) rows.splice(row, 1);
      if (victim === seq) return false;
    }
    return true;
  }

  /**
   * Who gives up its blocks when a running sequence needs one and none is free: a paused sequence
   * (newest first), else the newest running one, which has the least work to redo; but one
   * already preempted SPARE_AFTER_PREEMPTIONS times is passed over while another can go, so that
   * no sequence pays for the pool's pressure again and again, each time recomputing a longer
   * prefix.
   */
  private victim(): Sequence {
    const paused = this.newestPaused();
    if (paused) return paused;
    if (this.config.policy === 'priority') {
      // vLLM's choice under this policy: the least urgent, not the newest.
      const spareable = this.running.filter((s) => s.preemptions < SPARE_AFTER_PREEMPTIONS);
      return leastUrgent(spareable.length > 0 ? spareable : this.running)!;
    }
    for (let i = this.running.length - 1; i >= 0; i--) if (this.running[i].preemptions < SPARE_AFTER_PREEMPTIONS) return this.running[i];
    return this.running[this.running.length - 1];
  }

  /**
   * The priority policy's forced preemption (vLLM's, from its priority scheduling): when the
   * sequence admission tries next cannot be admitted, running sequences of its tenant with a
   * larger priority value go back to the queue, least urgent first, until it can. Nothing is
   * preempted unless preempting all of them would make room (see couldAdmitWithout), so no work
   * is thrown away for an admission that would not happen anyway. Other tenants' sequences are
   * never taken: priority orders a tenant's own requests (fair-share.ts).
   */
  private preemptForPriority(preempted: Sequence[]): void {
    const head = nextToAdmit(this.waiting, this.running, 'priority', this.adapterFits);
    if (head === undefined || this.admits(head)) return;
    const victims = this.running.filter((s) => s.tenant === head.tenant && s.priority > head.priority).sort((a, b) => (lessUrgent(a, b) ? -1 : 1));
    if (victims.length === 0 || !this.couldAdmitWithout(head, victims)) return;
    for (const victim of victims) {
      if (this.admits(head)) return;
      this.preempt(victim);
      preempted.push(victim);
    }
  }

  /**
   * Whether `seq` would be admitted once `gone` (and every paused sequence, which admission
   * preempts anyway) left the batch: `admits` with their slots and claims removed and their
   * blocks counted free. Blocks shared with another reader would not come free, so this can be
   * optimistic; then admission simply waits, as without the preemption.
   */
  private couldAdmitWithout(seq: Sequence, gone: readonly Sequence[]): boolean {
    const leaves = (s: Sequence) => s.paused || gone.includes(s);
    const stay = this.running.filter((s) => !leaves(s));
    const slots = stay.reduce((n, s) => n + 1 + s.unforked, 0);
    if (slots + 1 + seq.unforked > this.config.maxNumSeqs) return false;
    const free = this.kv.freeBlocks + this.running.filter(leaves).reduce((n, s) => n + this.kv.blocksOf(s).length, 0);
    if (stay.length === 0) return Math.min(this.claim(seq, 0), this.kv.totalBlocks) <= free;
    const reserve = this.config.admissionReserveTokens ?? ADMISSION_RESERVE_TOKENS;
    return stay.reduce((n, s) => n + this.claim(s, reserve), this.claim(seq, reserve)) <= free;
  }

  /** Sequences running and waiting per tenant (each choice counts; paused ones included). */
  tenantLoad(): Map<string, { running: number; waiting: number }> {
    return this.loadBy((s) => s.tenant);
  }

  /** The same per LoRA adapter (base-model sequences are not counted). */
  adapterLoad(): Map<number, { running: number; waiting: number }> {
    return this.loadBy((s) => s.adapter);
  }

  private loadBy<K>(key: (s: Sequence) => K | null): Map<K, { running: number; waiting: number }> {
    const load = new Map<K, { running: number; waiting: number }>();
    const of = (k: K) => load.get(k) ?? load.set(k, { running: 0, waiting: 0 }).get(k)!;
    for (const s of this.running) {
      const k = key(s);
      if (k !== null) of(k).running++;
    }
    for (const s of this.waiting) {
      const k = key(s);
      if (k !== null) of(k).waiting++;
    }
    return load;
  }

  /**
   * Whether a waiting sequence's adapter has room in the running batch: none needed, its adapter
   * already runs, or fewer than maxLoras adapters do (runningAdapters follows every admission).
   */
  private readonly adapterFits = (seq: Sequence): boolean =>
    seq.adapter === null || this.runningAdapters.has(seq.adapter) || this.runningAdapters.size < (this.config.maxLoras ?? 0);

  /** Keeps runningAdapters in step with `running` (every insertion and removal goes through here). */
  private countAdapter(seq: Sequence, delta: 1 | -1): void {
    if (seq.adapter === null) return;
    const n = (this.runningAdapters.get(seq.adapter) ?? 0) + delta;
    if (n === 0) this.runningAdapters.delete(seq.adapter);
    else this.runningAdapters.set(seq.adapter, n);
  }

  /** Sends `seq` back to the front of the queue, its blocks freed, to be recomputed. */
  private preempt(seq: Sequence): void {
    this.running.splice(this.running.indexOf(seq), 1);
    this.countAdapter(seq, -1);
    seq.numComputed = 0;
    seq.status = 'waiting';
    seq.preemptions++;
    this.preemptionCount++;
    this.waiting.unshift(seq);
    this.kv.evict(seq);
  }

  private insertRunning(seq: Sequence): void {
    seq.status = 'running';
    this.countAdapter(seq, 1);
    let i = this.running.length;
    while (i > 0 && older(seq, this.running[i - 1])) i--;
    this.running.splice(i, 0, seq);
  }
}

function leastUrgent(seqs: readonly Sequence[]): Sequence | undefined {
  return seqs.reduce<Sequence | undefined>((worst, s) => (worst === undefined || lessUrgent(s, worst) ? s : worst), undefined);
}

/** The largest c in 0..max with fits(c), for fits monotone (true up to some c, then false). */
function largestWithin(max: number, fits: (c: number) => boolean): number {
  let lo = 0;
  let hi = max;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

function older(a: Sequence, b: Sequence): boolean {
  return a.arrival < b.arrival || (a.arrival === b.arrival && a.choice < b.choice);
}
