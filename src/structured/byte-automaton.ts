// Byte-level automata for constrained decoding. GPT-2's tokens are byte strings (byte-level BPE):
// a token may end inside a UTF-8 character or span a JSON delimiter, so every constraint becomes
// an automaton over bytes, built with refa's NFA operations and determinized and minimized by
// refa. Characters of a regex become their UTF-8 byte sequences here (refa works on characters).
import { CharSet, DFA, JS, NFA, TooManyNodesError, type Char, type CharRange, type Concatenation, type Element } from 'refa';
import { ConstraintError } from './constraint-error.js';

const MAX_BYTE = 255;
const BYTE_OPTIONS = { maxCharacter: MAX_BYTE } as const;
/** Past this many DFA states a constraint is refused as too complex (memory and compile time). */
export const MAX_DFA_STATES = 20_000;
/** Past this many NFA states (e.g. `(a{1000}){1000}`, or 1000 items of a big schema) likewise. */
export const MAX_NFA_STATES = 200_000;

// Every NFA of one compilation draws its states from one limited factory, so that a small spec
// that expands into a huge automaton fails fast instead of exhausting memory. Compilation is
// synchronous, so the factory of the compilation in progress can live here.
let factory: NFA.LimitedNodeFactory = new NFA.LimitedNodeFactory(MAX_NFA_STATES);

/** Runs `build` with a fresh NFA state budget; a spec over budget is a ConstraintError. */
export function withStateBudget<T>(build: () => T): T {
  factory = new NFA.LimitedNodeFactory(MAX_NFA_STATES);
  try {
    return build();
  } catch (err) {
    if (err instanceof TooManyNodesError) throw new ConstraintError(`the constraint is too complex (more than ${MAX_NFA_STATES} automaton states)`);
    throw err;
  }
}

/**
 * A deterministic automaton over bytes, as plain typed arrays (it crosses thread boundaries).
 * `next[state * classCount + classOf[byte]]` is the next state, or -1 where no accepted string
 * continues (states from which nothing is accepted are removed, so -1 is the only dead end).
 */
export interface ByteDfa {
  start: number;
  stateCount: number;
  classCount: number;
  classOf: Uint8Array;
  next: Int32Array;
  /** 1 where the bytes read so far form a complete accepted string. */
  accepting: Uint8Array;
}

export function emptyWord(): NFA {
  return NFA.emptyWord(BYTE_OPTIONS, factory);
}

export function byteRange(min: number, max: number): NFA {
  return NFA.fromCharSet(CharSet.fromRange(MAX_BYTE as Char, range(min, max)), factory);
}

function range(min: number, max: number): CharRange {
  return { min: min as Char, max: max as Char };
}

/** The UTF-8 bytes of `text`, literally. */
export function literal(text: string): NFA {
  const nfa = emptyWord();
  for (const b of Buffer.from(text, 'utf8')) nfa.appendInto(byteRange(b, b), factory);
  return nfa;
}

export function concat(parts: NFA[]): NFA {
  const nfa = emptyWord();
  for (const p of parts) nfa.appendInto(p, factory);
  return nfa;
}

export function union(parts: NFA[]): NFA {
  const nfa = NFA.empty(BYTE_OPTIONS, factory);
  for (const p of parts) nfa.unionInto(p, factory);
  return nfa;
}

export function repeat(part: NFA, min: number, max: number): NFA {
  part.quantify(min, max, factory);
  return part;
}

export function optional(part: NFA): NFA {
  return repeat(part, 0, 1);
}

/** Any bytes at all, any number of them. */
export function anyBytes(): NFA {
  return repeat(byteRange(0, MAX_BYTE), 0, Infinity);
}

/**
 * Every byte string in which `marker` does not occur: free text that can only reach what follows
 * it (a tool call) by writing the marker. Built as the complement of "contains the marker".
 */
export function textWithout(marker: string): NFA {
  const contains = DFA.fromFA(concat([anyBytes(), literal(marker), anyBytes()]));
  contains.complement();
  return NFA.fromFA(contains, factory);
}

const SURROGATES = range(0xd800, 0xdfff);

/** Code points as their UTF-8 byte sequences (lone surrogates have none and are dropped). */
export function utf8CharSet(set: CharSet): NFA {
  const parts: NFA[] = [];
  for (const r of set.without(SURROGATES).ranges) {
    for (const seq of utf8Sequences(r.min, r.max)) parts.push(concat(seq.map(([lo, hi]) => byteRange(lo, hi))));
  }
  return union(parts);
}

/**
 * Splits a code point range into ranges whose UTF-8 encodings are each a product of byte ranges
 * (the utf8-ranges construction used by Rust's regex crate).
 */
function utf8Sequences(min: number, max: number): Array<Array<[number, number]>> {
  const out: Array<Array<[number, number]>> = [];
  const stack: Array<[number, number]> = [[min, max]];
  outer: while (stack.length) {
    const [lo, hi] = stack.pop()!;
    for (const limit of [0x7f, 0x7ff, 0xffff]) {
      if (lo <= limit && hi > limit) {
        stack.push([limit + 1, hi], [lo, limit]);
        continue outer;
      }
    }
    if (hi <= 0x7f) {
      out.push([[lo, hi]]);
      continue;
    }
    for (let i = 1; i < 4; i++) {
      const m = (1 << (6 * i)) - 1;
      if ((lo & ~m) !== (hi & ~m)) {
        if ((lo & m) !== 0) {
          stack.push([(lo | m) + 1, hi], [lo, lo | m]);
          continue outer;
        }
        if ((hi & m) !== m) {
          stack.push([hi & ~m, hi], [lo, (hi & ~m) - 1]);
          continue outer;
        }
      }
    }
    const a = Buffer.from(String.fromCodePoint(lo), 'utf8');
    const b = Buffer.from(String.fromCodePoint(hi), 'utf8');
    out.push([...a].map((x, k) => [x, b[k]!] as [number, number]));
  }
  return out;
}

/** How characters of a regex are written: as themselves, or as they appear inside a JSON string. */
export type CharEncoding = 'raw' | 'json-string';

const JSON_SHORT_ESCAPES: Record<number, string> = { 0x22: '\\"', 0x5c: '\\\\', 0x08: '\\b', 0x0c: '\\f', 0x0a: '\\n', 0x0d: '\\r', 0x09: '\\t' };
const JSON_MUST_ESCAPE = [range(0, 0x1f), range(0x22, 0x22), range(0x5c, 0x5c)];

function charSetBytes(set: CharSet, encoding: CharEncoding): NFA {
  if (encoding === 'raw') return utf8CharSet(set);
  // Inside a JSON string, `"`, `\` and control characters can only appear escaped.
  const mustEscape = CharSet.empty(set.maximum).union(JSON_MUST_ESCAPE);
  const parts = [utf8CharSet(set.without(mustEscape))];
  for (const r of set.intersect(mustEscape).ranges) {
    for (let c: number = r.min; c <= r.max; c++) parts.push(literal(JSON_SHORT_ESCAPES[c] ?? `\\u${c.toString(16).padStart(4, '0')}`));
  }
  return union(parts);
}

/**
 * A JavaScript regex (Unicode mode, as JSON Schema's `pattern` is) as a byte NFA that accepts
 * exactly the strings the regex matches in full. A leading `^` and a trailing `$` are allowed
 * (full match is implied); other assertions and backreferences cannot be enforced token by token.
 */
export function regexNfa(pattern: string, encoding: CharEncoding, where: string): NFA {
  const source = pattern.replace(/^\^/, '').replace(/(?<!\\)((?:\\\\)*)\$$/, '$1');
  let expression;
  try {
    expression = JS.Parser.fromLiteral({ source, flags: 'u' }).parse({ backreferences: 'throw', assertions: 'throw', maxNodes: 20_000 }).expression;
  } catch (err) {
    throw new ConstraintError(`${where}: ${regexErrorText(err)}`);
  }
  return alternativesNfa(expression.alternatives, encoding);
}

function regexErrorText(err: unknown): string {
  const message = String((err as Error)?.message ?? err);
  if (err instanceof TooManyNodesError) return 'the regular expression is too complex';
  if (/assertion/i.test(message)) return 'assertions (lookarounds, \\b, ^ or $ other than at the ends) are not supported';
  if (/backreference/i.test(message)) return 'backreferences are not supported';
  return `invalid regular expression: ${message.split('\n')[0]!.slice(0, 200)}`;
}

function alternativesNfa(alternatives: readonly Concatenation[], encoding: CharEncoding): NFA {
  return union(alternatives.map((c) => concat(c.elements.map((e) => elementNfa(e, encoding)))));
}

function elementNfa(e: Element, encoding: CharEncoding): NFA {
  switch (e.type) {
    case 'CharacterClass':
      return charSetBytes(e.characters, encoding);
    case 'Alternation':
      return alternativesNfa(e.alternatives, encoding);
    case 'Quantifier':
      return repeat(alternativesNfa(e.alternatives, encoding), e.min, e.max);
    default:
      throw new ConstraintError('regex: assertions and backreferences are not supported');
  }
}

/** Determinizes and minimizes `nfa` into the flat table the engine walks. */
export function toByteDfa(nfa: NFA): ByteDfa {
  let dfa: DFA;
  try {
    dfa = DFA.fromFA(nfa, new DFA.LimitedNodeFactory(MAX_DFA_STATES));
    dfa.minimize();
  } catch (err) {
    if (err instanceof TooManyNodesError) throw new ConstraintError(`the constraint is too complex (more than ${MAX_DFA_STATES} automaton states)`);
    throw err;
  }
  const nodes = [...dfa.nodes()];
  const index = new Map(nodes.map((n, i) => [n, i]));

  // Bytes no transition tells apart share a class, so the table has classes x states entries.
  const cuts = new Set<number>([0, MAX_BYTE + 1]);
  for (const n of nodes) for (const [range] of n.out) cuts.add(range.min).add(range.max + 1);
  const sortedCuts = [...cuts].sort((a, b) => a - b);
  const classOf = new Uint8Array(MAX_BYTE + 1);
  for (let c = 0; c < sortedCuts.length - 1; c++) classOf.fill(c, sortedCuts[c], sortedCuts[c + 1]);
  const classCount = sortedCuts.length - 1;

  // Shared memory: the table goes tokenizer thread -> main thread -> engine worker with every
  // request that uses it, and a SharedArrayBuffer crosses threads without being copied.
  const next = new Int32Array(new SharedArrayBuffer(nodes.length * classCount * 4)).fill(-1);
  nodes.forEach((n, i) => {
    for (const [range, target] of n.out) {
      for (let c = classOf[range.min]!; c <= classOf[range.max]!; c++) next[i * classCount + c] = index.get(target)!;
    }
  });
  const accepting = new Uint8Array(nodes.length);
  for (const f of dfa.finals) if (index.has(f)) accepting[index.get(f)!] = 1;

  // States from which no accepted string is reachable become dead ends (-1), so that every live
  // state has an accepted completion: a masked sampler can then never paint itself into a corner.
  const live = coReachable(next, accepting, classCount);
  for (let k = 0; k < next.length; k++) if (next[k]! >= 0 && !live[next[k]!]) next[k] = -1;
  const start = index.get(dfa.initial)!;
  if (!live[start]) throw new ConstraintError('the constraint accepts no string at all');
  return { start, stateCount: nodes.length, classCount, classOf, next, accepting };
}

function coReachable(next: Int32Array, accepting: Uint8Array, classCount: number): Uint8Array {
  const n = accepting.length;
  const incoming: number[][] = Array.from({ length: n }, () => []);
  for (let s = 0; s < n; s++) {
    for (let c = 0; c < classCount; c++) {
      const t = next[s * classCount + c]!;
      if (t >= 0) incoming[t]!.push(s);
    }
  }
  const live = new Uint8Array(accepting);
  const queue = [...live.keys()].filter((s) => live[s]);
  while (queue.length) {
    for (const p of incoming[queue.pop()!]!) {
      if (!live[p]) {
        live[p] = 1;
        queue.push(p);
      }
    }
  }
  return live;
}
