// A GGUF (v3) writer for GPT-2 checkpoints, so that llama.cpp can run the very weights the
// benchmarks serve: the comparison against llama.cpp is only fair on identical weights. It writes
// what llama.cpp's own converter (convert_hf_to_gguf.py, GPT2Model) writes: the gpt2 architecture's
// hyperparameters, the byte-level BPE tokenizer, and the tensors under llama.cpp's names, Conv1D
// weights transposed to [out, in] (GGUF lists dimensions innermost first, so they read [in, out]).
// F32, or Q8_0 (llama-quantize's Q8_0: 2-D weights in blocks of 32 int8 with an fp16 scale; norms
// and biases stay F32).
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Gpt2Weights, readGpt2Config } from '../../src/model/gpt2-checkpoint.js';
import { SafetensorsFile } from '../../src/model/safetensors.js';

export type GgufWeightType = 'F32' | 'Q8_0';

const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
const GGUF_VERSION = 3;
const ALIGNMENT = 32;
/** gguf_type of metadata values. */
const T = { UINT32: 4, INT32: 5, FLOAT32: 6, STRING: 8, ARRAY: 9 } as const;
/** ggml_type of tensors. */
const GGML = { F32: 0, Q8_0: 8 } as const;
/** llama_ftype of the whole file. */
const FILE_TYPE = { F32: 0, Q8_0: 7 } as const;
const QK8_0 = 32;
const TOKEN_NORMAL = 1;
const TOKEN_CONTROL = 3;

type MetaValue = { type: 'u32'; value: number } | { type: 'f32'; value: number } | { type: 'str'; value: string } | { type: 'strs'; value: string[] } | { type: 'i32s'; value: number[] };

interface TensorPlan {
  name: string;
  /** GGUF order: innermost first. */
  dims: number[];
  type: GgufWeightType;
  /** Row-major float32 data in the order of `dims` reversed. */
  data: () => Float32Array;
}

class ByteSink {
  private readonly chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  private fixed(size: number, write: (b: Buffer) => void): void {
    const b = Buffer.alloc(size);
    write(b);
    this.push(b);
  }
  u32(v: number): void {
    this.fixed(4, (b) => b.writeUInt32LE(v));
  }
  i32(v: number): void {
    this.fixed(4, (b) => b.writeInt32LE(v));
  }
  u64(v: number): void {
    this.fixed(8, (b) => b.writeBigUInt64LE(BigInt(v)));
  }
  f32(v: number): void {
    this.fixed(4, (b) => b.writeFloatLE(v));
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  pad(): void {
    const n = (ALIGNMENT - (this.length % ALIGNMENT)) % ALIGNMENT;
    if (n) this.push(Buffer.alloc(n));
  }
  concat(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

/** Q8_0 blocks of one row-major tensor whose rows are a multiple of 32 long. */
export function quantizeQ8_0(x: Float32Array): Buffer {
  if (x.length % QK8_0 !== 0) throw new Error(`Q8_0 needs a multiple of ${QK8_0} values, got ${x.length}`);
  const out = Buffer.alloc((x.length / QK8_0) * 34);
  for (let b = 0; b < x.length / QK8_0; b++) {
    let amax = 0;
    for (let j = 0; j < QK8_0; j++) amax = Math.max(amax, Math.abs(x[b * QK8_0 + j]));
    const d = amax / 127;
    const id = d ? 1 / d : 0;
    out.writeUInt16LE(toHalfBits(d), b * 34);
    for (let j = 0; j < QK8_0; j++) {
      const v = x[b * QK8_0 + j] * id;
      out.writeInt8(Math.sign(v) * Math.round(Math.abs(v)), b * 34 + 2 + j); // C roundf: halves away from zero
    }
  }
  return out;
}

/** IEEE binary16 bits of a finite non-negative float (round to nearest even). */
export function toHalfBits(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = ((u >>> 23) & 0xff) - 127 + 15;
  let mant = u & 0x7fffff;
  if (exp <= 0) {
    if (exp < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - exp;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  if (exp >= 31) return sign | 0x7c00;
  let half = (exp << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

/** [rows, cols] -> [cols, rows] */
function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

/** Writes `checkpoint` (a Hugging Face GPT-2 folder with tokenizer.json) as a GGUF file. */
export function writeGpt2Gguf(checkpoint: string, out: string, type: GgufWeightType): void {
  const config = readGpt2Config(checkpoint);
  const file = new SafetensorsFile(join(checkpoint, 'model.safetensors'));
  try {
    const weights = new Gpt2Weights(file, config);
    const { n_layer: L, n_embd: E, n_positions: P, vocab_size: V } = config;
    const tok = JSON.parse(readFileSync(join(checkpoint, 'tokenizer.json'), 'utf8')) as {
      model: { vocab: Record<string, number>; merges: Array<string | [string, string]> };
      added_tokens?: Array<{ id: number; content: string; special?: boolean }>;
    };
    const tokens = new Array<string>(V);
    for (const [s, id] of Object.entries(tok.model.vocab)) if (id < V) tokens[id] = s;
    const special = new Set((tok.added_tokens ?? []).filter((t) => t.special).map((t) => t.id));
    for (const t of tok.added_tokens ?? []) if (t.id < V) tokens[t.id] = t.content;
    if (tokens.some((t) => t === undefined)) throw new Error(`${checkpoint}: tokenizer.json does not cover the ${V}-token vocabulary`);

    const meta: Array<[string, MetaValue]> = [
      ['general.architecture', { type: 'str', value: 'gpt2' }],
      ['general.name', { type: 'str', value: 'gpt2-serve benchmark model' }],
      ['general.file_type', { type: 'u32', value: FILE_TYPE[type] }],
      ['gpt2.block_count', { type: 'u32', value: L }],
      ['gpt2.context_length', { type: 'u32', value: P }],
      ['gpt2.embedding_length', { type: 'u32', value: E }],
      ['gpt2.feed_forward_length', { type: 'u32', value: 4 * E }],
      ['gpt2.attention.head_count', { type: 'u32', value: config.n_head }],
      ['gpt2.attention.layer_norm_epsilon', { type: 'f32', value: config.layer_norm_epsilon }],
      ['tokenizer.ggml.model', { type: 'str', value: 'gpt2' }],
      ['tokenizer.ggml.pre', { type: 'str', value: 'gpt-2' }],
      ['tokenizer.ggml.tokens', { type: 'strs', value: tokens }],
      ['tokenizer.ggml.token_type', { type: 'i32s', value: tokens.map((_, i) => (special.has(i) ? TOKEN_CONTROL : TOKEN_NORMAL)) }],
      ['tokenizer.ggml.merges', { type: 'strs', value: tok.model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m)) }],
      ['tokenizer.ggml.bos_token_id', { type: 'u32', value: config.bos_token_id }],
      ['tokenizer.ggml.eos_token_id', { type: 'u32', value: config.eos_token_id }],
    ];

    const matrix = (type2: GgufWeightType) => (config.n_embd % QK8_0 === 0 ? type2 : 'F32');
    const f32 = (name: string, dims: number[], src: string): TensorPlan => ({ name, dims, type: 'F32', data: () => weights.read(src) });
    // Conv1D [in, out] -> [out, in] row-major, i.e. GGUF dims [in, out].
    const conv = (name: string, src: string, inDim: number, outDim: number): TensorPlan => ({
      name,
      dims: [inDim, outDim],
      type: matrix(type),
      data: () => transpose(weights.read(src), inDim, outDim),
    });
    const plan: TensorPlan[] = [
      { name: 'token_embd.weight', dims: [E, V], type: matrix(type), data: () => weights.read('wte.weight') },
      { name: 'position_embd.weight', dims: [E, P], type: matrix(type), data: () => weights.read('wpe.weight') },
    ];
    for (let l = 0; l < L; l++) {
      const h = `h.${l}.`;
      const b = `blk.${l}.`;
      plan.push(
        f32(`${b}attn_norm.weight`, [E], `${h}ln_1.weight`),
        f32(`${b}attn_norm.bias`, [E], `${h}ln_1.bias`),
        conv(`${b}attn_qkv.weight`, `${h}attn.c_attn.weight`, E, 3 * E),
        f32(`${b}attn_qkv.bias`, [3 * E], `${h}attn.c_attn.bias`),
        conv(`${b}attn_output.weight`, `${h}attn.c_proj.weight`, E, E),
        f32(`${b}attn_output.bias`, [E], `${h}attn.c_proj.bias`),
        f32(`${b}ffn_norm.weight`, [E], `${h}ln_2.weight`),
        f32(`${b}ffn_norm.bias`, [E], `${h}ln_2.bias`),
        conv(`${b}ffn_up.weight`, `${h}mlp.c_fc.weight`, E, 4 * E),
        f32(`${b}ffn_up.bias`, [4 * E], `${h}mlp.c_fc.bias`),
        conv(`${b}ffn_down.weight`, `${h}mlp.c_proj.weight`, 4 * E, E),
        f32(`${b}ffn_down.bias`, [E], `${h}mlp.c_proj.bias`),
      );
    }
    plan.push(f32('output_norm.weight', [E], 'ln_f.weight'), f32('output_norm.bias', [E], 'ln_f.bias'));
    if (!weights.tiedHead) plan.push({ name: 'output.weight', dims: [E, V], type: matrix(type), data: () => weights.read('lm_head.weight') });

    const bytesOf = (t: TensorPlan) => {
      const n = t.dims.reduce((a, b) => a * b, 1);
      return t.type === 'F32' ? n * 4 : (n / QK8_0) * 34;
    };
    const head = new ByteSink();
    head.u32(GGUF_MAGIC);
    head.u32(GGUF_VERSION);
    head.u64(plan.length);
    head.u64(meta.length);
    for (const [key, v] of meta) writeMeta(head, key, v);
    let offset = 0;
    for (const t of plan) {
      head.str(t.name);
      head.u32(t.dims.length);
      for (const d of t.dims) head.u64(d);
      head.u32(GGML[t.type]);
      head.u64(offset);
      offset += Math.ceil(bytesOf(t) / ALIGNMENT) * ALIGNMENT;
    }
    head.pad();
    const fd = openSync(out, 'w');
    try {
      writeSync(fd, head.concat());
      for (const t of plan) {
        const data = t.data();
        const bytes = t.type === 'F32' ? Buffer.from(data.buffer, data.byteOffset, data.byteLength) : quantizeQ8_0(data);
        writeSync(fd, bytes);
        const pad = (ALIGNMENT - (bytes.length % ALIGNMENT)) % ALIGNMENT;
        if (pad) writeSync(fd, Buffer.alloc(pad));
      }
    } finally {
      closeSync(fd);
    }
  } finally {
    file.close();
  }
}

function writeMeta(sink: ByteSink, key: string, v: MetaValue): void {
  sink.str(key);
  switch (v.type) {
    case 'u32':
      sink.u32(T.UINT32);
      sink.u32(v.value);
      break;
    case 'f32':
      sink.u32(T.FLOAT32);
      sink.f32(v.value);
      break;
    case 'str':
      sink.u32(T.STRING);
      sink.str(v.value);
      break;
    case 'strs':
      sink.u32(T.ARRAY);
      sink.u32(T.STRING);
      sink.u64(v.value.length);
      for (const s of v.value) sink.str(s);
      break;
    case 'i32s':
      sink.u32(T.ARRAY);
      sink.u32(T.INT32);
      sink.u64(v.value.length);
      for (const n of v.value) sink.i32(n);
      break;
  }
}
