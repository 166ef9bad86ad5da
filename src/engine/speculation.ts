// Speculative decoding's planning side: which decode rows carry draft tokens this step, and how
// many. A row with d drafts feeds its pending token and the d drafts as one chunk of the sequence;
// the serving graph computes every position of a chunk bit-identically to decoding them one by one
// (docs/design.md, "Exact under any schedule"), so the engine can check the drafts against the
// target's own picks and keep what matches (engine-core.ts `verify`).
//
// When drafting pays. Each extra token in a step costs its share of the weight matmuls and its
// attention; each decode row already produces one token. A draft token is worth adding when the
// chance it is kept is at least its marginal cost in units of what a token costs in the plain
// decode step:
//     rate^j  >=  (predicted step ms with the token - without it + proposing it) / (plain step ms / decode rows)
// where rate is the sequence's measured acceptance rate and j the draft's place (the j-th draft is
// kept only if the j-1 before it were). One stream: the step is mostly reading the weights, a token
// more costs a few percent of it, and drafts pay at low acceptance. A full batch already shares
// the weights between its rows, a token more costs about what a row's token costs, and only drafts
// that are nearly sure to be kept pay. Both come from the step-cost model the engine calibrates and
// corrects online; without one (unit tests), every sequence drafts all it can.
//
// Drafts ride only steps that are all decode rows: a verification row sharing a prefill group with
// a prompt's chunk would be padded to that chunk's query tile.
import { growth, plus, rowShape, type StepCost, type StepShape } from './step-cost.js';
import type { ScheduledRow, Scheduler, Sequence } from './scheduler.js';
import { lookupDraft } from './prompt-lookup.js';

export interface SpeculationSettings {
  /** Most draft tokens per sequence and step. */
  numTokens: number;
  lookupMin: number;
  lookupMax: number;
}

/** Counters as vLLM names them (spec_decode_num_drafts, _num_draft_tokens, _num_accepted_tokens). */
export interface SpeculationStats {
  /** Verifications: decode rows that carried drafts. */
  drafts: number;
  draftTokens: number;
  acceptedTokens: number;
}

/**
 * A sequence's draft acceptance: accepted drafts and rejections (at most one per verification:
 * the first mismatch ends it), counted with decay so the rate follows the text, starting from 1/2.
 */
class Acceptance {
  accepted = 0;
  rejected = 0;

  get rate(): number {
    return (this.accepted + 1) / (this.accepted + this.rejected + 2);
  }

  /** Every decode step fades the evidence, so a sequence that stopped drafting tries again later. */
  age(): void {
    this.accepted *= ACCEPTANCE_DECAY;
    this.rejected *= ACCEPTANCE_DECAY;
  }
}

/** Weight of the newest measurement in the running mean of proposing's cost per draft token. */
const PROPOSE_COST_WEIGHT = 0.1;

/** Per decode step: evidence halves in about 70 steps. */
export const ACCEPTANCE_DECAY = 0.99;

/** Where drafts come from: prompt lookup, a draft model, or (tests) a script. */
export interface DraftProposer {
  /** Up to `max[i]` tokens guessed to follow `seqs[i]`'s tokens (fewer, or none, where it has no guess). */
  propose(seqs: readonly Sequence[], max: readonly number[]): number[][] | Promise<number[][]>;
  /** Releases what it holds (a draft model's session) after the last step. */
  dispose?(): Promise<void>;
}

/** Prompt lookup (see prompt-lookup.ts). */
export class PromptLookupProposer implements DraftProposer {
  constructor(private readonly settings: Pick<SpeculationSettings, 'lookupMin' | 'lookupMax'>) {}

  propose(seqs: readonly Sequence[], max: readonly number[]): number[][] {
    return seqs.map((seq, i) => lookupDraft(seq.tokens, this.settings.lookupMin, this.settings.lookupMax, max[i]!));
  }
}

export class Speculator {
  private readonly acceptance = new WeakMap<Sequence, Acceptance>();
  readonly stats: SpeculationStats = { drafts: 0, draftTokens: 0, acceptedTokens: 0 };
  /** What proposing costs per draft token (a draft model's runs; ~0 for prompt lookup), measured. */
  private proposeMsPerToken = 0;

  constructor(
    private readonly settings: SpeculationSettings,
    private readonly proposer: DraftProposer,
    private readonly cost?: StepCost,
  ) {}

  /**
   * Adds drafts to the decode rows of a step where they pay. `canDraft` says which sequences may
   * (the engine's call: past their first output token, nothing left to fork). A row's drafts are
   * also capped by what its max_tokens and the context leave, by the step's token budget, and by
   * free KV blocks: drafting never preempts anything.
   */
  async addDrafts(rows: ScheduledRow[], scheduler: Scheduler, canDraft: (seq: Sequence) => boolean, contextLength: number): Promise<void> {
    if (rows.length === 0 || rows.some((r) => r.count !== 1)) return;
    let shape: StepShape = rows.reduce((s, r) => plus(s, rowShape(r.start, 1)), { tokens: 0, attended: 0 });
    const perTokenMs = this.cost ? this.cost.predictMs(shape) / rows.length : 0;
    const drafting: ScheduledRow[] = [];
    const wants: number[] = [];
    for (const row of rows) {
      const { seq } = row;
      if (!canDraft(seq)) continue;
      const acceptance = this.acceptanceOf(seq);
      // Room: the pending token plus d drafts must leave max_tokens and the context one more token.
      const room = Math.min(this.settings.numTokens, seq.outputLeft - 1, contextLength - seq.tokens.length - 1);
      let want = 0;
      for (; want < room && shape.tokens < scheduler.config.maxNumBatchedTokens; want++) {
        // One draft more: a token at position start + want + 1; a first draft makes the row a
        // chunk, whose queries are products over their keys and whose past the graph copies once more.
        const more = growth(row.start, 1 + want);
        if (!this.pays(acceptance.rate ** (want + 1), shape, more, perTokenMs)) break;
        shape = plus(shape, more);
      }
      acceptance.age();
      if (want === 0) continue;
      drafting.push(row);
      wants.push(want);
    }
    if (drafting.length === 0) return;
    const started = performance.now();
    const drafts = await this.proposer.propose(drafting.map((r) => r.seq), wants);
    const proposed = drafts.reduce((n, d) => n + d.length, 0);
    if (proposed > 0) this.proposeMsPerToken += PROPOSE_COST_WEIGHT * ((performance.now() - started) / proposed - this.proposeMsPerToken);
    drafting.forEach((row, i) => {
      const draft = drafts[i]!.slice(0, wants[i]);
      const fits = Math.min(draft.length, scheduler.kv.allocateLookahead(row.seq, row.start + 1 + draft.length) - row.start - 1);
      if (fits <= 0) return;
      row.draft = draft.slice(0, fits);
      row.count = 1 + fits;
    });
  }

  dispose(): Promise<void> {
    return this.proposer.dispose?.() ?? Promise.resolve();
  }

  /** A verification's outcome: `drafted` tokens checked, the first `accepted` of them kept. */
  record(seq: Sequence, drafted: number, accepted: number): void {
    const a = this.acceptanceOf(seq);
    a.accepted += accepted;
    if (accepted < drafted) a.rejected += 1;
    this.stats.drafts++;
    this.stats.draftTokens += drafted;
    this.stats.acceptedTokens += accepted;
  }

  /** Whether a draft kept with probability `kept`, adding `more` to the step, is worth its cost. */
  private pays(kept: number, shape: StepShape, more: StepShape, perTokenMs: number): boolean {
    if (!this.cost) return true;
    return kept * perTokenMs >= this.cost.predictMs(plus(shape, more)) - this.cost.predictMs(shape) + this.proposeMsPerToken;
  }

  private acceptanceOf(seq: Sequence): Acceptance {
    let a = this.acceptance.get(seq);
    if (!a) this.acceptance.set(seq, (a = new Acceptance()));
    return a;
  }
}
