// The engine loop's body, independent of threads: requests in, one model step at a time, events
// out in one batch per step. The worker runs it; tests drive it directly.
//
// Requests arrive validated (the edge checks lengths, ids and limits before anything reaches the
// engine); `add` only asserts those invariants, so a violation is a bug and ends that request
// with an internal error instead of corrupting the batch. A model step that throws fails the
// requests that were in it and nothing else.
import { LRUCache } from 'lru-cache';
import type { Tokenizer } from '../model/tokenizer.js';
import type { CompiledConstraint } from '../structured/constraint.js';
import { TokenConstraint, VocabularyIndex } from '../structured/token-mask.js';
import { IncrementalDetokenizer } from './detokenizer.js';
import type { LoraAdapter } from '../model/lora-adapter.js';
import type { Gpt2Config } from '../model/gpt2-checkpoint.js';
import { AdapterStore } from './adapter-store.js';
import { blocksFor, committedBytes, type KvStorage } from './kv-cache.js';
import { plus, rowShape, type StepCostModel } from './step-cost.js';
import type { ModelRunner, RowOutput, RunnerRow } from './runner.js';
import { ConstraintCursor, SamplerScratch, SequenceSampler, scoreToken, type TopEntry } from './sampling.js';
import { Scheduler, Sequence, type ScheduledRow } from './scheduler.js';
import type { Speculator } from './speculation.js';
import type { EngineError, EngineEvent, EngineRequest, EngineStats, FinishReason, LoraOptions, LogprobToken, TokenLogprob } from './types.js';

export type EventBatch = Array<[requestId: string, event: EngineEvent]>;

export interface EngineCoreOptions {
  contextLength: number;
  eosTokenId: number;
  /** Distinct structured-output constraints whose token masks are kept (least recently used go). */
  constraintCacheSize?: number;
  /** Step-cost model for time-budgeted scheduling; corrected with every step's measured time. */
  cost?: StepCostModel;
  /** Speculative decoding: drafts verified exactly in the same step (off when absent). */
  speculator?: Speculator;
  /** A draft model's KV storage, whose blocks are the KV cache manager's 'draft' group. */
  draftKv?: KvStorage;
  /** LoRA serving: requests may name adapters given to addAdapter (off when absent). */
  lora?: LoraOptions & { model: Pick<Gpt2Config, 'n_layer' | 'n_embd' | 'n_head'> };
}

/** Per-request state; sequences hold per-choice state the scheduler needs, this holds the rest. */
interface RequestState {
  request: EngineRequest;
  choices: Array<ChoiceState | undefined>;
  finishedChoices: number;
  completionTokens: number;
  /** Prompt logprobs gathered across prefill chunks (echo with logprobs). */
  promptLogprobs: TokenLogprob[] | null;
  /** Prompt tokens choice 0's first admission found in the prefix cache (usage's cached_tokens). */
  cachedTokens: number;
}

interface ChoiceState {
  seq: Sequence;
  sampler: SequenceSampler;
  detok: IncrementalDetokenizer;
  cumulativeLogprob: number;
}

export interface StepTimings {
  /** Milliseconds inside the model runner (session.run). */
  modelMs: number;
  /** Milliseconds in the runner: the model plus building feeds and storing new K/V. */
  runMs: number;
  /** Milliseconds of the whole step (plan + run + sample + detokenize + events). */
  totalMs: number;
  rows: number;
  tokens: number;
}

export class EngineCore {
  private readonly requests = new Map<string, RequestState>();
  private readonly scratch: SamplerScratch;
  /** Token masks per constraint, computed state by state as sequences reach them. */
  private readonly constraints: LRUCache<string, TokenConstraint>;
  /** The vocabulary sorted by bytes; built when the first constrained request arrives. */
  private vocabulary: VocabularyIndex | null = null;
  private arrivals = 0;
  private out: EventBatch = [];
  private draining = false;
  private steps = 0;
  private consecutiveFailedSteps = 0;
  private stepMsTotal = 0;
  private promptTokensTotal = 0;
  private generatedTokensTotal = 0;
  lastStep: StepTimings = { modelMs: 0, runMs: 0, totalMs: 0, rows: 0, tokens: 0 };
  /** The last exception a step caught (for the log; clients only hear a generic error). */
  lastError: unknown = undefined;
  private readonly adapters: AdapterStore | null;

  constructor(
    private readonly runner: ModelRunner,
    private readonly scheduler: Scheduler,
    private readonly tokenizer: Tokenizer,
    private readonly opts: EngineCoreOptions,
  ) {
    this.scratch = new SamplerScratch(runner.vocabSize);
    this.constraints = new LRUCache({ max: opts.constraintCacheSize ?? 32 });
    this.adapters = opts.lora ? new AdapterStore(opts.lora, (id) => runner.releaseAdapter?.(id)) : null;
  }

  /** A LoRA adapter requests may name by `id` from now on (EngineClient.addAdapter). */
  addAdapter(id: number, adapter: LoraAdapter): void {
    if (!this.adapters) throw new Error('LoRA adapters need an engine started with LoRA enabled');
    this.adapters.add(id, adapter);
  }

  /** No new request may name it; it is dropped when the last one using it ends. */
  removeAdapter(id: number): void {
    this.adapters?.remove(id, this.scheduler.adapterLoad().has(id));
  }

  /** Queues a request (`accepted`), or answers it at once with an error event. */
  add(request: EngineRequest): void {
    const error = this.refusal(request);
    if (error) {
      this.emit(request.id, { type: 'error', error });
      return;
    }
    this.emit(request.id, { type: 'accepted' });
    const { params, promptTokens } = request;
    const state: RequestState = {
      request,
      choices: new Array(params.n),
      finishedChoices: 0,
      completionTokens: 0,
      promptLogprobs: params.echo && params.logprobs !== null ? [] : null,
      cachedTokens: 0,
    };
    this.requests.set(request.id, state);
    this.promptTokensTotal += promptTokens.length;
    if (params.echo && !state.promptLogprobs) this.emitPrompt(state);
    const seq = new Sequence(
      request.id,
      0,
      [...promptTokens],
      promptTokens.length,
      this.arrivals++,
      params.maxTokens,
      !state.promptLogprobs,
      request.cacheKeys,
      request.tenant,
      request.priority,
      request.adapter ?? null,
    );
    seq.unforked = params.n - 1; // admitted together with choice 0, forked from it after the prompt
    state.choices[0] = this.newChoice(state, seq);
    if (params.maxTokens === 0 && !state.promptLogprobs) {
      for (let c = 0; c < params.n; c++) this.finishChoice(state, c, 'length', '');
      return;
    }
    this.scheduler.add(seq);
  }

  /** Idempotent: unknown and finished ids are ignored. Frees the request's memory at once. */
  cancel(requestId: string): void {
    if (!this.requests.delete(requestId)) return;
    this.scheduler.abort(requestId);
    this.sweepAdapters();
  }

  /** The client stopped reading: the request takes no part in steps until resumed. */
  pause(requestId: string): void {
    if (this.requests.has(requestId)) this.scheduler.pause(requestId);
  }

  resume(requestId: string): void {
    if (this.requests.has(requestId)) this.scheduler.resume(requestId);
  }

  /** Whether a step would run anything (paused requests do not count). */
  hasWork(): boolean {
    return this.scheduler.hasWork();
  }

  /** Steps whose model run failed, in a row. */
  get failedStepsInARow(): number {
    return this.consecutiveFailedSteps;
  }

  /**
   * One model step over everything schedulable. Returns the events it produced. If the model run
   * throws, the requests of this step end with an error and the rest stay queued.
   */
  async step(): Promise<EventBatch> {
    const start = performance.now();
    const plan = this.scheduler.schedule(this.opts.cost);
    if (plan.rows.length === 0) return this.takeEvents();
    const draftStart = performance.now();
    await this.opts.speculator?.addDrafts(plan.rows, this.scheduler, (seq) => this.canDraft(seq), this.opts.contextLength);
    // The step-cost model predicts the target's run; a draft model's runs are not part of it.
    const draftMs = performance.now() - draftStart;
    const rows = plan.rows.map((r) => this.runnerRow(r));
    const runStart = performance.now();
    let outputs: RowOutput[];
    try {
      outputs = await this.runner.run(rows);
    } catch (err) {
      this.consecutiveFailedSteps++;
      this.lastError = err;
      const failed = new Set(plan.rows.map((r) => r.seq.requestId));
      for (const id of failed) this.fail(id, { code: 'internal_error', message: `The model step failed: ${errorLine(err)}` });
      this.recordStep({ modelMs: this.runner.takeModelMs(), runMs: performance.now() - runStart, totalMs: performance.now() - start, rows: 0, tokens: 0 });
      return this.takeEvents();
    }
    this.consecutiveFailedSteps = 0;
    const runMs = performance.now() - runStart;
    this.scheduler.commit(plan);
    plan.rows.forEach((row, i) => {
      const state = this.requests.get(row.seq.requestId);
      if (!state || row.seq.status !== 'running') return; // cancelled while the step ran
      try {
        if (this.wantsPromptLogprobs(state, row)) this.collectPromptLogprobs(state, row, outputs[i].logits);
        if (row.draft) {
          this.verify(state, row.seq, row.draft, outputs[i]);
        } else if (row.sample) {
          const { logits, argmax } = outputs[i];
          this.onLogits(state, row.seq, logits.subarray(logits.length - this.runner.vocabSize), argmax);
        }
      } catch (err) {
        // A bug in sampling or detokenizing one request must not take its batch neighbours down.
        this.lastError = err;
        this.fail(state.request.id, { code: 'internal_error', message: `Processing the step's output failed: ${errorLine(err)}` });
      }
    });
    this.steps++;
    const tokens = plan.rows.reduce((s, r) => s + r.count, 0);
    const totalMs = performance.now() - start;
    this.recordStep({ modelMs: this.runner.takeModelMs(), runMs, totalMs, rows: plan.rows.length, tokens });
    this.opts.cost?.observe(plan.rows.reduce((s, r) => plus(s, rowShape(r.start, r.count)), { tokens: 0, attended: 0 }), totalMs - draftMs);
    this.sweepAdapters();
    return this.takeEvents();
  }

  /** Drops removed adapters whose last sequence has ended. */
  private sweepAdapters(): void {
    this.adapters?.sweep(() => new Set(this.scheduler.adapterLoad().keys()));
  }

  private recordStep(timings: StepTimings): void {
    this.lastStep = timings;
    this.stepMsTotal += timings.totalMs;
  }


  /** Stops admitting; requests already queued or running continue. */
  startDraining(): void {
    this.draining = true;
  }

  /** Ends every open request with an error (drain timeout, the engine died). */
  abortAll(error: EngineError): EventBatch {
    for (const id of [...this.requests.keys()]) this.fail(id, error);
    return this.takeEvents();
  }

  private fail(requestId: string, error: EngineError): void {
    this.cancel(requestId);
    this.emit(requestId, { type: 'error', error });
  }

  get openRequests(): number {
    return this.requests.size;
  }

  takeEvents(): EventBatch {
    const out = this.out;
    this.out = [];
    return out;
  }

  /** Releases the runner's session and memory, and a draft model's (after the last step). */
  async disposeRunner(): Promise<void> {
    await this.opts.speculator?.dispose();
    await this.runner.dispose();
  }

  stats(): EngineStats {
    const { kv } = this.scheduler;
    const total = kv.totalBlocks;
    return {
      waiting: this.scheduler.waiting.length,
      running: this.scheduler.running.length,
      paused: this.scheduler.pausedCount,
      tenants: [...this.scheduler.tenantLoad()].map(([tenant, load]) => ({ tenant, ...load })),
      adapters: [...this.scheduler.adapterLoad()].map(([adapter, load]) => ({ adapter, ...load })),
      kvBlocksTotal: total,
      kvBlocksUsed: kv.usedBlocks,
      kvUsage: kv.usedBlocks / total,
      kvBytesCommitted: committedBytes(this.runner.pool, kv.touchedBlocks('target')) + (this.opts.draftKv ? committedBytes(this.opts.draftKv, kv.touchedBlocks('draft')) : 0),
      blockSize: this.scheduler.config.blockSize,
      steps: this.steps,
      consecutiveFailedSteps: this.consecutiveFailedSteps,
      lastStepMs: this.lastStep.totalMs,
      stepMsTotal: this.stepMsTotal,
      preemptions: this.scheduler.preemptionCount,
      prefixCacheQueries: kv.prefixCacheQueries,
      prefixCacheHits: kv.prefixCacheHits,
      specDecodeDrafts: this.opts.speculator?.stats.drafts ?? 0,
      specDecodeDraftTokens: this.opts.speculator?.stats.draftTokens ?? 0,
      specDecodeAcceptedTokens: this.opts.speculator?.stats.acceptedTokens ?? 0,
      promptTokensTotal: this.promptTokensTotal,
      generatedTokensTotal: this.generatedTokensTotal,
    };
  }

  /**
   * Why the engine cannot take this request: it is draining, or the request breaks an invariant
   * the edge guarantees (a bug, reported as an internal error naming the broken invariant).
   */
  private refusal(request: EngineRequest): EngineError | null {
    if (this.draining) return { code: 'shutting_down', message: 'The server is shutting down and accepts no new requests.' };
    const broken = this.brokenInvariant(request);
    return broken ? { code: 'internal_error', message: `invalid engine request ${request.id}: ${broken}` } : null;
  }

  private brokenInvariant({ id, promptTokens, params, adapter }: EngineRequest): string | null {
    if (this.requests.has(id)) return 'the id is already in use';
    if (adapter !== undefined && !this.adapters?.usable(adapter)) return `LoRA adapter ${adapter} is not loaded`;
    if (promptTokens.length === 0) return 'the prompt is empty';
    const V = this.runner.vocabSize;
    if (promptTokens.some((t) => !Number.isInteger(t) || t < 0 || t >= V)) return `a prompt token is outside 0..${V - 1}`;
    const total = promptTokens.length + params.maxTokens;
    if (total > this.opts.contextLength) return `${total} tokens exceed the context length ${this.opts.contextLength}`;
    const { blockSize } = this.scheduler.config;
    if (blocksFor(total, blockSize) > this.scheduler.kv.totalBlocks) return `${total} tokens exceed the KV cache`;
    if (params.n < 1 || params.minTokens > params.maxTokens) return 'n < 1 or min_tokens > max_tokens';
    // A request's choices are admitted into one batch together.
    if (params.n > this.scheduler.config.maxNumSeqs) return `n ${params.n} exceeds max_num_seqs ${this.scheduler.config.maxNumSeqs}`;
    return null;
  }

  private newChoice(state: RequestState, seq: Sequence): ChoiceState {
    const { params } = state.request;
    const seed = params.seed ?? (Math.random() * 2 ** 32) >>> 0;
    const cursor = params.constraint ? new ConstraintCursor(this.tokenConstraint(params.constraint)) : null;
    return {
      seq,
      sampler: new SequenceSampler(params, state.request.promptTokens, this.opts.eosTokenId, (seed + seq.choice * 0x9e3779b9) >>> 0, cursor),
      detok: new IncrementalDetokenizer(this.tokenizer, params.stop),
      cumulativeLogprob: 0,
    };
  }

  /** The cached masks of a constraint (the edge compiled it; the masks fill in lazily). */
  private tokenConstraint(compiled: CompiledConstraint): TokenConstraint {
    let tc = this.constraints.get(compiled.key);
    if (!tc) {
      this.vocabulary ??= VocabularyIndex.forTokenizer(this.runner.vocabSize, this.tokenizer, this.opts.eosTokenId);
      tc = new TokenConstraint(compiled.dfa, this.vocabulary, this.opts.eosTokenId);
      this.constraints.set(compiled.key, tc);
    }
    return tc;
  }

  private runnerRow(row: ScheduledRow): RunnerRow {
    const { seq } = row;
    const state = this.requests.get(seq.requestId);
    const wantsPrompt = this.wantsPromptLogprobs(state, row);
    const sampler = state?.choices[seq.choice]?.sampler;
    return {
      // A verification row: the pending token, then the drafts (every position picks a token).
      tokens: row.draft ? [seq.tokens[row.start]!, ...row.draft] : seq.tokens.slice(row.start, row.start + row.count),
      pastLength: row.start,
      blocks: this.scheduler.kv.blocksOf(seq),
      logitsFrom: wantsPrompt || row.draft ? 0 : row.sample ? row.count - 1 : row.count,
      fetchLogits: wantsPrompt || (row.sample && (sampler?.needsLogits(seq.outputLength) ?? true)),
      ...(seq.adapter !== null ? { adapter: this.adapters!.row(seq.adapter) } : {}),
    };
  }

  /**
   * Whether this row's logits score prompt tokens (echo with logprobs): choice 0's prompt chunks
   * before its first output token. A preempted sequence recomputes its prompt for the K/V only:
   * the prompt logprobs were emitted already, and its row fetches no logits for them.
   */
  private wantsPromptLogprobs(state: RequestState | undefined, row: ScheduledRow): boolean {
    const { seq } = row;
    return !!state?.promptLogprobs && seq.choice === 0 && row.start < seq.promptLength && seq.outputLength === 0;
  }

  /**
   * Whether a sequence may carry drafts: it has picked its first token (the prompt's last logits
   * also fork the other choices and may report prompt logprobs) and nothing is left to fork.
   */
  private canDraft(seq: Sequence): boolean {
    return seq.outputLength > 0 && seq.unforked === 0;
  }

  /**
   * Checks a row's drafts against the target model, position by position, exactly as decoding
   * would: the sampler picks from position j's logits with every processor and constraint applied
   * and its own RNG; a pick equal to draft j keeps that draft (its K/V were computed in the step)
   * and moves on to position j + 1; the first pick that differs, or the one after the last draft,
   * is the step's last token. The picks are the ones decoding token by token would make (same
   * logits bit for bit, same sampler state, one RNG draw per pick), so greedy and seeded output do
   * not change with speculation. For a draft that is one token (a point mass q), this is the
   * standard rejection rule: the draft is kept with probability p(draft) = min(1, p/q), and a
   * rejected position's pick is distributed as p without the draft, renormalized (the residual).
   */
  private verify(state: RequestState, seq: Sequence, draft: readonly number[], output: RowOutput): void {
    const V = this.runner.vocabSize;
    let accepted = 0;
    for (let j = 0; j <= draft.length; j++) {
      const logits = output.logits.length > 0 ? output.logits.subarray(j * V, (j + 1) * V) : output.logits;
      const token = this.sampleNext(state, seq, logits, output.argmaxAt(j));
      if (seq.status !== 'running' || j === draft.length || token !== draft[j]) break;
      this.scheduler.acceptDraftToken(seq);
      accepted++;
    }
    this.opts.speculator!.record(seq, draft.length, accepted);
    if (seq.status === 'running') this.scheduler.kv.freeLookahead(seq);
  }

  /** The sequence's pending tokens are all cached: pick its next token (and fork choices). */
  private onLogits(state: RequestState, seq: Sequence, row: Float32Array, argmax: number): void {
    const { params } = state.request;
    if (state.promptLogprobs && seq.choice === 0 && seq.outputLength === 0) this.emitPrompt(state);
    const targets = [seq];
    if (seq.choice === 0 && seq.outputLength === 0 && state.choices.filter(Boolean).length < params.n) {
      for (let c = 1; c < params.n; c++) {
        const child = new Sequence(seq.requestId, c, [...seq.tokens], seq.promptLength, seq.arrival, params.maxTokens, true, seq.cacheKeys, seq.tenant, seq.priority, seq.adapter);
        state.choices[c] = this.newChoice(state, child);
        this.scheduler.fork(seq, child, this.runner.pool);
        targets.push(child);
      }
    }
    for (const target of targets) this.sampleNext(state, target, row, argmax);
  }

  /** Picks, records and emits the sequence's next token; returns it (-1 when it had none to pick). */
  private sampleNext(state: RequestState, seq: Sequence, row: Float32Array, argmax: number): number {
    const { params } = state.request;
    const choice = state.choices[seq.choice]!;
    if (seq.outputLength >= params.maxTokens) {
      this.finishChoice(state, seq.choice, 'length', choice.detok.finish());
      return -1;
    }
    const res = choice.sampler.sample(row, seq.outputLength, this.scratch, argmax);
    seq.tokens.push(res.token);
    choice.sampler.observe(res.token);
    choice.cumulativeLogprob += res.logprob;
    state.completionTokens++;
    this.generatedTokensTotal++;

    let reason: FinishReason | null = null;
    let text = '';
    if ((res.token === this.opts.eosTokenId && !params.ignoreEos) || params.stopTokenIds.includes(res.token)) {
      reason = 'stop';
    } else {
      const pushed = choice.detok.push(res.token);
      text = pushed.text;
      if (pushed.stopped) reason = 'stop';
    }
    if (!reason && (seq.outputLength >= params.maxTokens || seq.tokens.length >= this.opts.contextLength)) reason = 'length';
    const logprobs = res.top ? [this.tokenLogprob(res.token, res.logprob, res.top)] : null;
    this.emit(state.request.id, { type: 'delta', choice: seq.choice, text, tokenIds: [res.token], logprobs });
    // Whatever ended it, text held back as a possible stop-string start was no stop: flush it
    // (after a stop string, finish() returns '').
    if (reason) this.finishChoice(state, seq.choice, reason, choice.detok.finish());
    return res.token;
  }

  private finishChoice(state: RequestState, c: number, reason: FinishReason, text: string): void {
    const choice = state.choices[c];
    if (choice) {
      // Read before the manager lets the sequence's table go.
      if (c === 0) state.cachedTokens = this.scheduler.kv.cachedTokens(choice.seq) ?? 0;
      this.scheduler.finish(choice.seq);
    }
    this.emit(state.request.id, {
      type: 'finish',
      choice: c,
      reason,
      cumulativeLogprob: choice?.cumulativeLogprob ?? 0,
      text,
      completionTokens: choice?.seq.outputLength ?? 0,
    });
    if (++state.finishedChoices === state.request.params.n) {
      this.emit(state.request.id, {
        type: 'done',
        promptTokens: state.request.promptTokens.length,
        completionTokens: state.completionTokens,
        cachedTokens: state.cachedTokens,
      });
      this.requests.delete(state.request.id);
    }
  }

  private collectPromptLogprobs(state: RequestState, row: ScheduledRow, logits: Float32Array): void {
    const { promptTokens, params } = state.request;
    const V = this.runner.vocabSize;
    const list = state.promptLogprobs!;
    if (row.start === 0) {
      list.length = 0; // a preempted prefill starts over
      list.push(this.tokenLogprob(promptTokens[0], null, []));
    }
    for (let j = 0; j < row.count; j++) {
      const next = row.start + j + 1;
      if (next >= promptTokens.length) break;
      const scored = scoreToken(logits.subarray(j * V, (j + 1) * V), promptTokens[next], params.logprobs ?? 0);
      list.push(this.tokenLogprob(promptTokens[next], scored.logprob, scored.top));
    }
  }

  private emitPrompt(state: RequestState): void {
    const { promptTokens } = state.request;
    const tokens = state.promptLogprobs ?? promptTokens.map((t) => this.tokenLogprob(t, null, []));
    this.emit(state.request.id, { type: 'prompt', tokens, text: this.tokenizer.decode(promptTokens) });
  }

  private tokenLogprob(tokenId: number, logprob: number | null, top: TopEntry[]): TokenLogprob {
    return { ...this.logprobToken(tokenId), logprob, top: top.map((t) => ({ ...this.logprobToken(t.tokenId), logprob: t.logprob })) };
  }

  /** Raw bytes travel only with the few tokens whose text cannot carry them (part of a character). */
  private logprobToken(tokenId: number): LogprobToken {
    const token = this.tokenizer.tokenText(tokenId);
    return this.tokenizer.decodesAlone(tokenId) ? { token, tokenId } : { token, tokenId, bytes: Array.from(this.tokenizer.tokenBytes(tokenId)) };
  }

  private emit(requestId: string, event: EngineEvent): void {
    this.out.push([requestId, event]);
  }
}

function errorLine(err: unknown): string {
  return String((err as Error)?.message ?? err).split('\n')[0]!.slice(0, 300);
}
