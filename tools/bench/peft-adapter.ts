// LoRA adapter folders written as PEFT's save_pretrained writes them for GPT-2: adapter_config.json
// and adapter_model.safetensors (keys `base_model.model.transformer.h.{i}.<module>.lora_{A,B}.weight`,
// lora_A [r, in], lora_B [out, r], a `{"format": "pt"}` metadata entry), with deterministic random
// values: the benchmark's adapters (lora-adapters.ts) and the tests' (test/helpers/peft-adapter.ts
// re-exports this). The project's safetensors writer only writes F32; the tests' adapters may be
// F16 or BF16 (or a dtype the loader must refuse), so this module encodes the bytes itself.
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Float16Array } from '@petamoriken/float16';
import { loraModuleShape, type LoraModule } from '../../src/model/lora-adapter.js';
import { Rng } from '../../src/util/rng.js';

export type StoredDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I32';

/** One tensor of the file: `values` are exactly what a float32 reader decodes (already rounded to dtype). */
export interface StoredTensor {
  dtype: StoredDtype;
  shape: number[];
  values: Float32Array;
}

export const ALL_MODULES: LoraModule[] = ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'];

export const loraKey = (layer: number, module: string, half: 'A' | 'B') => `base_model.model.transformer.h.${layer}.${module}.lora_${half}.weight`;

/** Rounds float32 values to what `dtype` stores (BF16 truncates, as a plain bit shift does). */
export function roundTo(dtype: StoredDtype, values: Float32Array): Float32Array {
  if (dtype === 'F16') return Float32Array.from(new Float16Array(values));
  if (dtype === 'BF16') {
    const bits = new Uint32Array(values.buffer.slice(values.byteOffset, values.byteOffset + values.byteLength));
    for (let i = 0; i < bits.length; i++) bits[i] &= 0xffff0000;
    return new Float32Array(bits.buffer);
  }
  if (dtype === 'I32') return values.map(Math.round);
  return Float32Array.from(values);
}

/** Gaussian lora_A/lora_B pairs for `modules` of `layers` of a model `embd` wide. */
export function loraTensors(opts: {
  embd: number;
  layers: number[];
  modules?: LoraModule[];
  rank: number;
  seed: number;
  std?: number;
  dtype?: StoredDtype;
}): Map<string, StoredTensor> {
  const rng = new Rng(opts.seed);
  const dtype = opts.dtype ?? 'F32';
  const std = opts.std ?? 0.1;
  const tensors = new Map<string, StoredTensor>();
  const random = (n: number) => roundTo(dtype, Float32Array.from({ length: n }, () => std * rng.gaussian()));
  for (const layer of opts.layers) {
    for (const module of opts.modules ?? ALL_MODULES) {
      const [inF, outF] = loraModuleShape(module, opts.embd);
      tensors.set(loraKey(layer, module, 'A'), { dtype, shape: [opts.rank, inF], values: random(opts.rank * inF) });
      tensors.set(loraKey(layer, module, 'B'), { dtype, shape: [outF, opts.rank], values: random(outF * opts.rank) });
    }
  }
  return tensors;
}

/** adapter_config.json as PEFT writes it for a GPT-2 LoRA (target_modules c_attn, c_proj, c_fc), with `overrides`. */
export function peftConfig(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: 'openai-community/gpt2',
    bias: 'none',
    fan_in_fan_out: true,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: 8,
    lora_dropout: 0.05,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    r: 4,
    rank_pattern: {},
    revision: null,
    target_modules: ['c_attn', 'c_proj', 'c_fc'],
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: false,
    ...overrides,
  };
}

/** Writes `dir`/adapter_config.json and `dir`/adapter_model.safetensors. */
export function writePeftAdapter(dir: string, config: Record<string, unknown>, tensors: ReadonlyMap<string, StoredTensor>): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(config, null, 2) + '\n');
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    const bytes = encode(t);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.byteLength] };
    blobs.push(bytes);
    offset += bytes.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const fd = openSync(join(dir, 'adapter_model.safetensors'), 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
    writeSync(fd, len);
    writeSync(fd, Buffer.from(json, 'utf8'));
    for (const b of blobs) writeSync(fd, b);
  } finally {
    closeSync(fd);
  }
}

function encode(t: StoredTensor): Uint8Array {
  const bytes = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  switch (t.dtype) {
    case 'F32':
      return bytes(t.values);
    case 'F16': {
      const half = new Float16Array(t.values);
      return new Uint8Array(half.buffer, half.byteOffset, half.byteLength);
    }
    case 'BF16': {
      const bits = new Uint32Array(Float32Array.from(t.values).buffer);
      return bytes(Uint16Array.from(bits, (b) => b >>> 16));
    }
    case 'F64':
      return bytes(Float64Array.from(t.values));
    case 'I32':
      return bytes(Int32Array.from(t.values));
  }
}
