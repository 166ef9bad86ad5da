import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { IncrementalDetokenizer } from '../src/engine/detokenizer.js';
import { gpt2TokenizerJsonFromGpt3Encoder, loadTokenizer, type Tokenizer } from '../src/model/tokenizer.js';
import { Rng } from '../src/util/rng.js';

const uniform = (seed: number): (() => number) => {
  const rng = new Rng(seed);
  return () => rng.next();
};

let tmp: string;
let tok: Tokenizer;
/** GPT-2 has a token for every single byte: streaming those splits every multi-byte character. */
const byteToken = new Array<number>(256);

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'detok-test-'));
  await writeFile(join(tmp, 'tokenizer.json'), JSON.stringify(await gpt2TokenizerJsonFromGpt3Encoder()));
  tok = await loadTokenizer(tmp);
  for (let id = 0; id < tok.vocabSize; id++) {
    const b = tok.tokenBytes(id);
    if (b.length === 1) byteToken[b[0]] = id;
  }
  assert.equal(byteToken.filter((id) => id !== undefined).length, 256);
});
after(() => rm(tmp, { recursive: true, force: true }));

function byteTokens(text: string): number[] {
  return [...Buffer.from(text, 'utf8')].map((b) => byteToken[b]);
}

/** Token ids with boundaries exactly where the pieces are split. */
function tokensOf(...pieces: string[]): number[] {
  return pieces.flatMap((p) => tok.encode(p));
}

interface Run {
  pieces: string[];
  text: string;
  /** Index of the token whose push reported stopped, or -1. */
  stoppedAt: number;
}

function stream(ids: readonly number[], stop: readonly string[] = []): Run {
  const detok = new IncrementalDetokenizer(tok, stop);
  const pieces: string[] = [];
  let stoppedAt = -1;
  for (let i = 0; i < ids.length; i++) {
    const r = detok.push(ids[i]);
    pieces.push(r.text);
    if (r.stopped) {
      stoppedAt = i;
      break;
    }
  }
  pieces.push(detok.finish());
  return { pieces, text: pieces.join(''), stoppedAt };
}

const WORDS = [
  'Hello', ' world', ' the', ' END', ',', '.', '\n', '  ', ' 42', "'s", ' café', ' naïve', ' 日本語', '中文', '한국어', '𠮷',
  ' 👍', '👍🏽', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🇫🇷', '🤷🏿‍♀️', 'e\u0301', ' Привет', '’', '“quoted”', '<|endoftext|>', '\ufeff',
];

function corpus(n: number, seed: number): string[] {
  const rand = uniform(seed);
  return Array.from({ length: n }, () => {
    let s = '';
    for (let i = 1 + Math.floor(rand() * 10); i > 0; i--) s += WORDS[Math.floor(rand() * WORDS.length)];
    return s;
  });
}

test('streamed pieces concatenate to decode(all), never splitting a character', () => {
  for (const s of corpus(600, 1)) {
    for (const ids of [tok.encode(s), byteTokens(s)]) {
      // Stop strings that cannot occur in this corpus, but whose prefixes do.
      for (const stop of [[], ['\u0000never'], ['Hello!', '🏽🏽', '日本語!', ' the ENDING']]) {
        const run = stream(ids, stop);
        assert.equal(run.text, tok.decode(ids), JSON.stringify(s));
        assert.equal(run.text, s);
        assert.equal(run.stoppedAt, -1);
        for (const p of run.pieces) assert.ok(!p.includes('\ufffd'), `${JSON.stringify(p)} in ${JSON.stringify(s)}`);
      }
    }
  }
});

test('text is emitted as soon as it is complete', () => {
  const detok = new IncrementalDetokenizer(tok, []);
  const [a, b] = byteTokens('é');
  assert.deepEqual(detok.push(tokensOf('Hi')[0]), { text: 'Hi', stopped: false });
  assert.deepEqual(detok.push(a), { text: '', stopped: false });
  assert.deepEqual(detok.push(b), { text: 'é', stopped: false });
  assert.equal(detok.finish(), '');
});

test('a broken trailing byte sequence becomes U+FFFD at finish, like decode', () => {
  const ids = byteTokens('ok 👍').slice(0, -1);
  const run = stream(ids);
  assert.deepEqual(run.pieces, ['o', 'k', ' ', '', '', '', '\ufffd']);
  assert.equal(run.text, tok.decode(ids));
  // A broken sequence followed by more text is replaced as soon as the next byte shows it.
  const [e2] = byteTokens('’');
  assert.deepEqual(stream([e2, ...tokensOf('A')]).pieces, ['', '\ufffdA', '']);
});

test('a stop string spanning token boundaries is cut exactly', () => {
  const ids = tokensOf('Hello', ' wor', 'ld', ' th', 'e E', 'ND', ' of it');
  const run = stream(ids, ['the END']);
  assert.equal(run.text, 'Hello world ');
  // Tokens: Hello| wor|ld| th|e| E|ND| of| it; "th" is held back while it could become the stop.
  assert.equal(run.stoppedAt, 6);
  assert.deepEqual(run.pieces, ['Hello', ' wor', 'ld', ' ', '', '', '', '']);
});

test('stop strings inside multi-byte characters and emoji sequences', () => {
  const s = 'good 👍🏽 job, 日本語 ok';
  const run = stream(byteTokens(s), ['👍🏽', '本']);
  assert.equal(run.text, 'good ');
  assert.equal(run.stoppedAt, Buffer.byteLength('good 👍🏽') - 1);
  const cjk = stream(byteTokens(s), ['日本語 o']);
  assert.equal(cjk.text, 'good 👍🏽 job, ');
  for (const p of cjk.pieces) assert.ok(!p.includes('\ufffd'));
});

test('random stop strings: output is exactly the text before the first occurrence', () => {
  const rand = uniform(2);
  let stopped = 0;
  for (const s of corpus(400, 3)) {
    const chars = [...s];
    const from = Math.floor(rand() * chars.length);
    const stop = chars.slice(from, from + 1 + Math.floor(rand() * 6)).join('');
    const decoy = stop.slice(0, -1) + '\u0001';
    for (const ids of [tok.encode(s), byteTokens(s)]) {
      const run = stream(ids, [decoy, stop]);
      assert.equal(run.text, s.slice(0, s.indexOf(stop)), `${JSON.stringify(s)} stop ${JSON.stringify(stop)}`);
      // It stops at the first token whose text completes the stop string, not later.
      assert.ok(run.stoppedAt >= 0);
      assert.ok(tok.decode(ids.slice(0, run.stoppedAt + 1)).includes(stop));
      assert.ok(!tok.decode(ids.slice(0, run.stoppedAt)).includes(stop));
      stopped++;
    }
  }
  assert.equal(stopped, 800);
});

test('several stop strings with overlapping prefixes', () => {
  // "EN" could start either; "ENO" only ENOUGH.
  assert.equal(stream(tokensOf('it is', ' E', 'N', 'O', 'UGH', ' now'), ['END', 'ENOUGH']).text, 'it is ');
  assert.equal(stream(tokensOf('it is', ' E', 'N', 'D'), ['END', 'ENOUGH']).text, 'it is ');
  // Whichever completes first wins, even when another one started earlier.
  const oneByOne = stream(byteTokens('zabcdef'), ['abcdef', 'cd']);
  assert.equal(oneByOne.text, 'zab');
  assert.equal(oneByOne.stoppedAt, 4);
  // Arriving together, the earliest occurrence wins.
  assert.equal(stream(tokensOf('zabcdef'), ['cd', 'abcdef']).text, 'z');
  // A held-back prefix that fails to complete is released, and a stop starting inside it still matches.
  assert.deepEqual(stream(byteTokens('ababab!'), ['abab!']).pieces, ['', '', '', '', 'ab', '', '', '']);
  assert.equal(stream(byteTokens('ab?x'), ['abc', 'b?x']).text, 'a');
});

test('a stop string that never completes is flushed by finish', () => {
  const detok = new IncrementalDetokenizer(tok, ['the END']);
  let out = '';
  for (const id of tokensOf('Hello', ' th', 'e E', 'N')) {
    const r = detok.push(id);
    assert.equal(r.stopped, false);
    out += r.text;
  }
  assert.equal(out, 'Hello ');
  assert.equal(detok.finish(), 'the EN');
});

test('after a stop nothing more is emitted; empty stop strings are ignored', () => {
  const detok = new IncrementalDetokenizer(tok, ['', 'Hello']);
  assert.deepEqual(detok.push(tokensOf('Hello')[0]), { text: '', stopped: true });
  assert.deepEqual(detok.push(tokensOf(' world')[0]), { text: '', stopped: true });
  assert.equal(detok.finish(), '');
  assert.equal(stream(tokensOf('a', 'b'), ['']).text, 'ab');
});

test('push costs the same per token however long the stream has grown (no rescans of the text so far)', (t) => {
  // A ratio inside one run, not an absolute time: the machine running the tests is shared. A push
  // that rescanned the stream would cost 16x more per token on the 16x longer stream.
  const ids = tok.encode(corpus(200, 4).join(''));
  const long = Array.from({ length: 16 }, () => ids).flat();
  const nsPerPush = (stream: number[]): number => {
    let best = Infinity;
    for (let round = 0; round < 3; round++) {
      const reps = long.length / stream.length;
      const t0 = performance.now();
      for (let r = 0; r < reps; r++) {
        const detok = new IncrementalDetokenizer(tok, ['\n\n\n\n', 'the END', '###']);
        for (const id of stream) detok.push(id);
      }
      best = Math.min(best, ((performance.now() - t0) * 1e6) / long.length);
    }
    return best;
  };
  nsPerPush(ids); // warm-up: the first rounds run before the JIT has compiled push
  const short = nsPerPush(ids);
  const grown = nsPerPush(long);
  t.diagnostic(`${short.toFixed(0)} ns per push on ${ids.length}-token streams, ${grown.toFixed(0)} ns on one ${long.length}-token stream`);
  assert.ok(grown < 4 * short, `${grown.toFixed(0)} ns per push on the long stream vs ${short.toFixed(0)} ns on short ones`);
});
