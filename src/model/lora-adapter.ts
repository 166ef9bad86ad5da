// LoRA adapters from PEFT folders (adapter_config.json + adapter_model.safetensors, what PEFT's
// save_pretrained writes). For GPT-2 the keys are
// `base_model.model.transformer.h.{i}.{attn.c_attn|attn.c_proj|mlp.c_fc|mlp.c_proj}.lora_{A,B}.weight`
// (`base_model.model.h.{i}...` when the base was a bare GPT2Model), with `lora_A` [r, in] and
// `lora_B` [out, r] whatever the base layer's layout; the delta of a layer is
// scale * (B @ A), [out, in], and GPT-2's Conv1D weights are stored [in, out], so it is added
// transposed. PEFT always treats Conv1D targets as fan_in_fan_out (it warns and sets the flag
// when a config says false), so the flag decides nothing here.
// Everything is read and checked before anything is returned: an adapter loads whole or not at all.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Gpt2Config } from './gpt2-checkpoint.js';
import { SafetensorsFile, type SafetensorsDtype } from './safetensors.js';

export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_WEIGHTS_FILE = 'adapter_model.safetensors';
/** vLLM's default --max-lora-rank is 16; PEFT adapters up to 64 are common for GPT-2. */
export const DEFAULT_MAX_LORA_RANK = 64;

/** The GPT-2 layers an adapter may target (all Conv1D, weights [in, out]). */
export const LORA_MODULES = ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] as const;
export type LoraModule = (typeof LORA_MODULES)[number];

/** [in, out] of a module's weight for a model `embd` wide. */
export function loraModuleShape(module: LoraModule, embd: number): [number, number] {
  switch (module) {
    case 'attn.c_attn':
      return [embd, 3 * embd];
    case 'attn.c_proj':
      return [embd, embd];
    case 'mlp.c_fc':
      return [embd, 4 * embd];
    case 'mlp.c_proj':
      return [4 * embd, embd];
  }
}

/** One adapted layer: delta (Conv1D layout) = scale * (b @ a)^T. */
export interface LoraPair {
  layer: number;
  module: LoraModule;
  inFeatures: number;
  outFeatures: number;
  /** lora_A, float32 [rank, inFeatures]. */
  a: Float32Array;
  /** lora_B, float32 [outFeatures, rank]. */
  b: Float32Array;
}

export interface LoraAdapter {
  dir: string;
  rank: number;
  alpha: number;
  rslora: boolean;
  /** lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora. */
  scale: number;
  /** Sorted by layer, then module in LORA_MODULES order. */
  pairs: LoraPair[];
}

export interface LoraLoadOptions {
  /** Adapters of a higher rank are refused (the future --max-lora-rank). */
  maxRank?: number;
}

const KEY = /^base_model\.model\.(?:transformer\.)?h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.lora_([AB])\.weight$/;
const LOADABLE_DTYPES: ReadonlySet<SafetensorsDtype> = new Set(['F32', 'F16', 'BF16']);
/** Module names PEFT may put in target_modules that name GPT-2's embeddings or head. */
const EMBEDDINGS = new Set(['wte', 'wpe', 'transformer.wte', 'transformer.wpe']);
const HEADS = new Set(['lm_head']);

/** Reads and checks the adapter in `dir` against the base model's config; throws naming the problem. */
export function readLoraAdapter(dir: string, base: Gpt2Config, opts: LoraLoadOptions = {}): LoraAdapter {
  const maxRank = opts.maxRank ?? DEFAULT_MAX_LORA_RANK;
  const configFile = join(dir, ADAPTER_CONFIG_FILE);
  const weightsFile = join(dir, ADAPTER_WEIGHTS_FILE);
  if (!existsSync(dir)) throw new Error(`${dir}: LoRA adapter folder does not exist`);
  const fail: (problem: string) => never = (problem) => {
    throw new Error(`${dir}: LoRA adapter refused: ${problem}`);
  };
  if (!existsSync(configFile)) fail(`${ADAPTER_CONFIG_FILE} is missing (a PEFT adapter folder has ${ADAPTER_CONFIG_FILE} and ${ADAPTER_WEIGHTS_FILE})`);
  if (!existsSync(weightsFile)) {
    const hint = existsSync(join(dir, 'adapter_model.bin')) ? ' (only adapter_model.bin is there; save the adapter with safe_serialization=True)' : '';
    fail(`${ADAPTER_WEIGHTS_FILE} is missing${hint}`);
  }
  let text = '';
  try {
    text = readFileSync(configFile, 'utf8');
  } catch (err) {
    fail(`${ADAPTER_CONFIG_FILE} is unreadable (${(err as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    fail(`${ADAPTER_CONFIG_FILE} is not valid JSON (${(err as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(`${ADAPTER_CONFIG_FILE} is not a JSON object`);
  const config = raw as Record<string, unknown>;
  const { rank, alpha, rslora } = checkConfig(config, fail, maxRank);
  const allowedLayers = layersToTransform(config.layers_to_transform, base.n_layer, fail);

  let file: SafetensorsFile;
  try {
    file = new SafetensorsFile(weightsFile);
  } catch (err) {
    return fail(`${ADAPTER_WEIGHTS_FILE} is unreadable (${(err as Error).message})`);
  }
  try {
    const halves = new Map<string, { prefix: string; layer: number; module: LoraModule; a?: Float32Array; b?: Float32Array }>();
    for (const [key, info] of file.tensors) {
      const m = KEY.exec(key);
      if (!m) fail(unknownKey(key));
      const layer = Number(m![1]);
      const module = m![2] as LoraModule;
      const half = m![3] as 'A' | 'B';
      if (layer >= base.n_layer) fail(`tensor ${key}: layer ${layer} is out of range (the base model has ${base.n_layer} layers)`);
      if (allowedLayers && !allowedLayers.has(layer)) fail(`tensor ${key}: layer ${layer} is not in layers_to_transform ${JSON.stringify(config.layers_to_transform)}`);
      if (!LOADABLE_DTYPES.has(info.dtype)) fail(`tensor ${key} has dtype ${info.dtype}; only F32, F16 and BF16 adapters are supported`);
      const [inF, outF] = loraModuleShape(module, base.n_embd);
      const want = half === 'A' ? [rank, inF] : [outF, rank];
      if (info.shape.length !== 2 || info.shape[0] !== want[0] || info.shape[1] !== want[1]) {
        fail(`tensor ${key} has shape ${JSON.stringify(info.shape)}; r = ${rank} and the base model's ${module} (${inF} in, ${outF} out) need ${JSON.stringify(want)}`);
      }
      const id = `${layer}.${module}`;
      const entry = halves.get(id) ?? { prefix: key.slice(0, key.lastIndexOf('.lora_')), layer, module };
      const slot = half === 'A' ? 'a' : 'b';
      if (entry[slot]) fail(`tensor ${key}: h.${layer}.${module} has a second lora_${half} (under another prefix)`);
      try {
        entry[slot] = file.readFloat32(key);
      } catch (err) {
        fail(`${ADAPTER_WEIGHTS_FILE} is unreadable (${(err as Error).message})`);
      }
      // Served adapters share each step's products with other rows (lora-graph.ts): a NaN or an
      // infinity would reach them through the zeros that keep rows apart.
      const bad = entry[slot]!.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) fail(`tensor ${key} holds a non-finite value (${entry[slot]![bad]} at index ${bad})`);
      halves.set(id, entry);
    }
    if (halves.size === 0) fail(`${ADAPTER_WEIGHTS_FILE} holds no lora_A/lora_B tensors`);
    const pairs: LoraPair[] = [];
    for (const { prefix, layer, module, a, b } of halves.values()) {
      if (!a) fail(`${prefix} has lora_B but no lora_A`);
      if (!b) fail(`${prefix} has lora_A but no lora_B`);
      const [inFeatures, outFeatures] = loraModuleShape(module, base.n_embd);
      pairs.push({ layer, module, inFeatures, outFeatures, a: a!, b: b! });
    }
    pairs.sort((p, q) => p.layer - q.layer || LORA_MODULES.indexOf(p.module) - LORA_MODULES.indexOf(q.module));
    return { dir, rank, alpha, rslora, scale: rslora ? alpha / Math.sqrt(rank) : alpha / rank, pairs };
  } finally {
    file.close();
  }
}

function checkConfig(config: Record<string, unknown>, fail: (problem: string) => never, maxRank: number): { rank: number; alpha: number; rslora: boolean } {
  const f = ADAPTER_CONFIG_FILE;
  if (config.peft_type !== undefined && config.peft_type !== 'LORA') fail(`${f}: peft_type is ${JSON.stringify(config.peft_type)}; only LORA adapters are supported`);
  const rank = config.r ?? 8; // PEFT's default r
  if (typeof rank !== 'number' || !Number.isInteger(rank) || rank <= 0) fail(`${f}: r must be a positive integer, got ${JSON.stringify(rank)}`);
  if ((rank as number) > maxRank) fail(`rank r = ${rank} is over the maximum LoRA rank ${maxRank} (raise --max-lora-rank to load it)`);
  const alpha = config.lora_alpha ?? 8; // PEFT's default lora_alpha
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) fail(`${f}: lora_alpha must be a number, got ${JSON.stringify(alpha)}`);
  if (config.use_dora === true) fail(`${f}: use_dora is true; DoRA adapters are not supported (only plain LoRA)`);
  const toSave = config.modules_to_save;
  if (toSave !== undefined && toSave !== null && !(Array.isArray(toSave) && toSave.length === 0)) {
    fail(`${f}: modules_to_save ${JSON.stringify(toSave)} is not supported (the adapter would replace whole base modules)`);
  }
  if (config.bias !== undefined && config.bias !== 'none') fail(`${f}: bias is ${JSON.stringify(config.bias)}; only "none" is supported (trained biases are not a LoRA delta)`);
  if (config.lora_bias === true) fail(`${f}: lora_bias is true; a bias on lora_B is not supported`);
  for (const pattern of ['rank_pattern', 'alpha_pattern'] as const) {
    const p = config[pattern];
    if (p !== undefined && p !== null && !(typeof p === 'object' && Object.keys(p).length === 0)) {
      fail(`${f}: ${pattern} ${JSON.stringify(p)} is not supported (one rank and one alpha for every layer)`);
    }
  }
  const rslora = config.use_rslora === true;
  checkTargets(config.target_modules, fail);
  return { rank: rank as number, alpha: alpha as number, rslora };
}

/** target_modules: a list of module names (matched as PEFT does, by the name or its last parts), or a regex. */
function checkTargets(targets: unknown, fail: (problem: string) => never): void {
  const f = ADAPTER_CONFIG_FILE;
  if (targets === undefined || targets === null || targets === 'all-linear') return;
  if (typeof targets === 'string') return; // a regex over full module names: the tensors' keys are checked instead
  if (!Array.isArray(targets) || targets.some((t) => typeof t !== 'string')) fail(`${f}: target_modules must be a list of module names or a regex string`);
  for (const t of targets as string[]) {
    if (EMBEDDINGS.has(t)) fail(`${f}: target_modules includes ${JSON.stringify(t)}; embedding adapters are not supported`);
    if (HEADS.has(t)) fail(`${f}: target_modules includes ${JSON.stringify(t)}; lm_head adapters are not supported`);
    const known = LORA_MODULES.some((m) => m === t || m.endsWith(`.${t}`) || t.replace(/^(?:transformer\.)?h\.\d+\./, '') === m);
    if (!known) fail(`${f}: target_modules includes ${JSON.stringify(t)}, which is not one of GPT-2's adaptable layers (c_attn, c_proj, c_fc)`);
  }
}

function layersToTransform(value: unknown, layers: number, fail: (problem: string) => never): Set<number> | null {
  if (value === undefined || value === null) return null;
  const list = typeof value === 'number' ? [value] : value;
  if (!Array.isArray(list) || list.some((l) => typeof l !== 'number' || !Number.isInteger(l))) fail(`${ADAPTER_CONFIG_FILE}: layers_to_transform must be a layer index or a list of them`);
  for (const l of list as number[]) {
    if (l < 0 || l >= layers) fail(`${ADAPTER_CONFIG_FILE}: layers_to_transform names layer ${l}, out of range (the base model has ${layers} layers)`);
  }
  return new Set(list as number[]);
}

function unknownKey(key: string): string {
  if (/lora_magnitude_vector/.test(key)) return `tensor ${key} is a DoRA magnitude; DoRA adapters are not supported`;
  if (/lora_embedding_[AB]|\.(?:wte|wpe)\./.test(key)) return `tensor ${key} adapts an embedding; embedding adapters are not supported`;
  if (/lm_head/.test(key)) return `tensor ${key} adapts lm_head; lm_head adapters are not supported`;
  if (/\.lora_[AB]\.[^.]+\.weight$/.test(key)) return `tensor ${key} still carries an adapter name (PEFT's save_pretrained strips it); not a saved PEFT adapter`;
  if (/\.bias$/.test(key)) return `tensor ${key} is a bias; only lora_A/lora_B weights are supported`;
  return `tensor ${key} is not a key of PEFT's GPT-2 LoRA format (base_model.model.transformer.h.{i}.{attn.c_attn|attn.c_proj|mlp.c_fc|mlp.c_proj}.lora_{A,B}.weight)`;
}

/**
 * Adds `scale * (B @ A)^T` to a Conv1D weight [in, out] in place: each product is summed in
 * float64 and the sum added once, so the merge loses nothing to the adapter's low rank.
 */
export function mergeLoraPair(weight: Float32Array, pair: LoraPair, rank: number, scale: number): void {
  const { inFeatures: inF, outFeatures: outF, a, b } = pair;
  if (weight.length !== inF * outF) throw new Error(`LoRA merge: h.${pair.layer}.${pair.module} weight has ${weight.length} values, expected ${inF} x ${outF}`);
  const column = new Float64Array(rank);
  for (let i = 0; i < inF; i++) {
    for (let k = 0; k < rank; k++) column[k] = a[k * inF + i];
    const row = i * outF;
    for (let o = 0; o < outF; o++) {
      let sum = 0;
      const bRow = o * rank;
      for (let k = 0; k < rank; k++) sum += b[bRow + k] * column[k];
      weight[row + o] += scale * sum;
    }
  }
}
