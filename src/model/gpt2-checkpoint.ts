// What a Hugging Face GPT-2 checkpoint folder must contain, and how its tensor names map to
// the parts of the model. Both the exporter and the reference implementation in the tests use
// this, so a checkpoint quirk (a `transformer.` prefix, a tied head) is handled in one place.
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { SafetensorsFile } from './safetensors.js';

export const Gpt2ConfigSchema = z.object({
  n_layer: z.number().int().positive(),
  n_head: z.number().int().positive(),
  n_embd: z.number().int().positive(),
  n_positions: z.number().int().positive(),
  vocab_size: z.number().int().positive(),
  layer_norm_epsilon: z.number().positive().default(1e-5),
  activation_function: z.string().default('gelu_new'),
  eos_token_id: z.number().int().nonnegative().default(50256),
  bos_token_id: z.number().int().nonnegative().default(50256),
  model_type: z.string().optional(),
});
export type Gpt2Config = z.infer<typeof Gpt2ConfigSchema>;

const SUPPORTED_ACTIVATIONS = new Set(['gelu_new', 'gelu_pytorch_tanh', 'gelu_fast']);

export function readGpt2Config(dir: string): Gpt2Config {
  const file = join(dir, 'config.json');
  if (!existsSync(file)) throw new Error(`${file}: missing (a Hugging Face checkpoint folder has config.json)`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`${file}: not valid JSON (${(err as Error).message})`);
  }
  const modelType = (raw as { model_type?: unknown }).model_type;
  if (modelType !== undefined && modelType !== 'gpt2') {
    throw new Error(`${file}: model_type is ${JSON.stringify(modelType)}, only "gpt2" checkpoints are supported`);
  }
  const parsed = Gpt2ConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const why = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw new Error(`${file}: not a GPT-2 config (${why})`);
  }
  const config = parsed.data;
  if (config.n_embd % config.n_head !== 0) throw new Error(`${file}: n_embd ${config.n_embd} is not divisible by n_head ${config.n_head}`);
  if (!SUPPORTED_ACTIVATIONS.has(config.activation_function)) {
    throw new Error(`${file}: activation_function ${config.activation_function} is not supported (GPT-2 uses gelu_new)`);
  }
  return config;
}

/** Resolves tensor names whatever the prefix, and checks every shape against the config. */
export class Gpt2Weights {
  private readonly prefix: string;
  readonly tiedHead: boolean;

  constructor(readonly file: SafetensorsFile, readonly config: Gpt2Config) {
    this.prefix = file.tensors.has('wte.weight') ? '' : file.tensors.has('transformer.wte.weight') ? 'transformer.' : '';
    if (!file.tensors.has(`${this.prefix}wte.weight`)) {
      throw new Error(`${file.path}: no wte.weight (or transformer.wte.weight) tensor: not a GPT-2 checkpoint`);
    }
    this.tiedHead = !file.tensors.has('lm_head.weight');
    this.checkShapes();
  }

  /** Float32 data of a model tensor named without prefix, e.g. `h.0.attn.c_attn.weight`. */
  read(name: string): Float32Array {
    return this.file.readFloat32(name === 'lm_head.weight' ? name : this.prefix + name);
  }

  private checkShapes(): void {
    const { n_layer: L, n_embd: E, vocab_size: V, n_positions: P } = this.config;
    for (const [name, shape] of expectedShapes(L, E, V, P, this.tiedHead)) {
      const full = name === 'lm_head.weight' ? name : this.prefix + name;
      const info = this.file.tensors.get(full);
      if (!info) throw new Error(`${this.file.path}: tensor ${full} is missing`);
      if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
        throw new Error(`${this.file.path}: tensor ${full} has shape ${JSON.stringify(info.shape)}, config.json implies ${JSON.stringify(shape)}`);
      }
    }
  }
}

/** Every tensor the model reads, with its shape ([in, out] for GPT-2's Conv1D weights). */
export function expectedShapes(L: number, E: number, V: number, P: number, tiedHead: boolean): Array<[string, number[]]> {
  const shapes: Array<[string, number[]]> = [
    ['wte.weight', [V, E]],
    ['wpe.weight', [P, E]],
  ];
  for (let i = 0; i < L; i++) {
    const h = `h.${i}.`;
    shapes.push(
      [`${h}ln_1.weight`, [E]],
      [`${h}ln_1.bias`, [E]],
      [`${h}attn.c_attn.weight`, [E, 3 * E]],
      [`${h}attn.c_attn.bias`, [3 * E]],
      [`${h}attn.c_proj.weight`, [E, E]],
      [`${h}attn.c_proj.bias`, [E]],
      [`${h}ln_2.weight`, [E]],
      [`${h}ln_2.bias`, [E]],
      [`${h}mlp.c_fc.weight`, [E, 4 * E]],
      [`${h}mlp.c_fc.bias`, [4 * E]],
      [`${h}mlp.c_proj.weight`, [4 * E, E]],
      [`${h}mlp.c_proj.bias`, [E]],
    );
  }
  shapes.push(['ln_f.weight', [E]], ['ln_f.bias', [E]]);
  if (!tiedHead) shapes.push(['lm_head.weight', [V, E]]);
  return shapes;
}
