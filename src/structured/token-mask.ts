// Which tokens keep the output inside a constraint, per DFA state: computed the first time a
// state is met, then cached with the constraint, so a decoding step costs one copy of the logits
// row per constrained sequence and no automaton work beyond walking the sampled token's bytes.
import type { Tokenizer } from '../model/tokenizer.js';
import type { ByteDfa } from './byte-automaton.js';

/** The vocabulary's byte strings in byte order, so tokens sharing a prefix are walked once. */
export class VocabularyIndex {
  /** Token ids sorted by their bytes. */
  private readonly order: Int32Array;
  /** Length of the prefix order[i] shares with order[i - 1]. */
  private readonly lcp: Int32Array;
  private readonly bytes: Uint8Array[];
  readonly maxLength: number;

  /**
   * What constraints spell text with: every token of the tokenizer but its special ones and EOS.
   * A special token (a fine-tune's `<|im_end|>`) has bytes that could pass for text inside a JSON
   * string, but it is a control token: sampled there it would end or derail a reply, never write
   * those bytes. EOS comes back through TokenConstraint where a constraint may end.
   */
  static forTokenizer(vocabSize: number, tokenizer: Pick<Tokenizer, 'tokenBytes' | 'specialTokenIds'>, eosTokenId: number): VocabularyIndex {
    return new VocabularyIndex(vocabSize, (id) => tokenizer.tokenBytes(id), new Set([...tokenizer.specialTokenIds, eosTokenId]));
  }

  /** `skip`: ids that are never ordinary text (EOS and other special tokens). */
  constructor(
    readonly vocabSize: number,
    tokenBytes: (id: number) => Uint8Array,
    skip: ReadonlySet<number>,
  ) {
    const ids: number[] = [];
    this.bytes = [];
    for (let id = 0; id < vocabSize; id++) {
      const b = skip.has(id) ? new Uint8Array(0) : tokenBytes(id);
      this.bytes.push(b);
      if (b.length > 0) ids.push(id);
    }
    ids.sort((a, b) => Buffer.compare(this.bytes[a]!, this.bytes[b]!));
    this.order = Int32Array.from(ids);
    this.lcp = new Int32Array(ids.length);
    let longest = 0;
    for (let i = 0; i < ids.length; i++) {
      const cur = this.bytes[ids[i]!]!;
      longest = Math.max(longest, cur.length);
      if (i === 0) continue;
      const prev = this.bytes[ids[i - 1]!]!;
      let k = 0;
      while (k < prev.length && k < cur.length && prev[k] === cur[k]) k++;
      this.lcp[i] = k;
    }
    this.maxLength = longest;
  }

  tokenBytes(id: number): Uint8Array {
    return this.bytes[id]!;
  }

  /** Ids of the tokens whose bytes, read from `state`, do not leave the DFA (unsorted). */
  allowedFrom(dfa: ByteDfa, state: number): number[] {
    const { next, classOf, classCount } = dfa;
    const states = new Int32Array(this.maxLength + 1);
    states[0] = state;
    const allowed: number[] = [];
    // Prefixes of length >= deadAt of the last token walked lead nowhere: tokens sharing them are
    // skipped without a look at their bytes.
    let deadAt = Infinity;
    for (let i = 0; i < this.order.length; i++) {
      const id = this.order[i]!;
      const common = this.lcp[i]!;
      if (common >= deadAt) continue;
      deadAt = Infinity;
      const b = this.bytes[id]!;
      let s = states[common]!;
      let d = common;
      for (; d < b.length; d++) {
        s = next[s * classCount + classOf[b[d]!]!]!;
        if (s < 0) break;
        states[d + 1] = s;
      }
      if (s < 0) deadAt = d + 1;
      else allowed.push(id);
    }
    return allowed;
  }
}

/** The allowed tokens of one DFA state, in the form that is cheapest to apply. */
interface StateMask {
  /** Sorted ids, when few tokens are allowed: the row is rebuilt from them. */
  ids: Int32Array | null;
  /** Bit set of the allowed ids, when many are: the row is copied and the rest blanked. */
  bits: Uint32Array | null;
}

/** Ids listed per state while at most this share of the vocabulary is allowed. */
const SPARSE_SHARE = 1 / 8;

/** A compiled constraint bound to a vocabulary; shared by every sequence that uses it. */
export class TokenConstraint {
  private readonly masks: Array<StateMask | undefined>;

  constructor(
    readonly dfa: ByteDfa,
    private readonly vocab: VocabularyIndex,
    private readonly eosTokenId: number,
  ) {
    this.masks = new Array(dfa.stateCount);
  }

  get start(): number {
    return this.dfa.start;
  }

  /** The state after `token`; -1 if the token leaves the constraint (never for a masked pick). */
  advance(state: number, token: number): number {
    if (token === this.eosTokenId) return this.dfa.accepting[state] ? state : -1;
    const b = this.vocab.tokenBytes(token);
    const { next, classOf, classCount } = this.dfa;
    for (let i = 0; i < b.length && state >= 0; i++) state = next[state * classCount + classOf[b[i]!]!]!;
    return b.length === 0 ? -1 : state;
  }

  /**
   * Writes `logits` with every token outside the constraint at -Infinity into `out`, and returns
   * out. EOS is allowed exactly where the constraint is complete.
   */
  maskInto(state: number, logits: Float32Array, out: Float32Array): Float32Array {
    const mask = this.maskOf(state);
    if (mask.ids) {
      out.fill(-Infinity);
      const ids = mask.ids;
      for (let k = 0; k < ids.length; k++) out[ids[k]!] = logits[ids[k]!]!;
      return out;
    }
    out.set(logits);
    const bits = mask.bits!;
    const V = logits.length;
    for (let w = 0; w < bits.length; w++) {
      const blocked = ~bits[w]!;
      if (blocked === 0) continue;
      const base = w << 5;
      for (let b = 0; b < 32; b++) if ((blocked >>> b) & 1 && base + b < V) out[base + b] = -Infinity;
    }
    return out;
  }

  /** The allowed token with the largest logit (ties: the lowest id), without writing a row. */
  argmaxAllowed(state: number, logits: Float32Array): number {
    const mask = this.maskOf(state);
    let best = -1;
    let bestValue = -Infinity;
    if (mask.ids) {
      // ids are sorted, so a strict > keeps the lowest id among equals, as argmax does.
      for (const id of mask.ids) {
        if (best < 0 || logits[id]! > bestValue) {
          best = id;
          bestValue = logits[id]!;
        }
      }
      return best;
    }
    const bits = mask.bits!;
    for (let w = 0; w < bits.length; w++) {
      const word = bits[w]!;
      if (word === 0) continue;
      const base = w << 5;
      for (let b = 0; b < 32; b++) {
        if ((word >>> b) & 1 && (best < 0 || logits[base + b]! > bestValue)) {
          best = base + b;
          bestValue = logits[best]!;
        }
      }
    }
    return best;
  }

  private maskOf(state: number): StateMask {
    let mask = this.masks[state];
    if (!mask) {
      const ids = this.vocab.allowedFrom(this.dfa, state);
      if (this.dfa.accepting[state]) ids.push(this.eosTokenId);
      const V = this.vocab.vocabSize;
      if (ids.length <= V * SPARSE_SHARE) {
        mask = { ids: Int32Array.from(ids).sort(), bits: null };
      } else {
        const bits = new Uint32Array(Math.ceil(V / 32));
        for (const id of ids) bits[id >>> 5]! |= 1 << (id & 31);
        mask = { ids: null, bits };
      }
      this.masks[state] = mask;
    }
    return mask;
  }
}
