// The benchmark's LoRA adapters (--lora-adapters N): PEFT folders for the served model's shape,
// made once under --lora-dir and reused while their marker file matches, the server flags that
// serve them (vLLM's), which adapter each request names in `model`, and what an adapter costs in
// the server's memory.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readGpt2Config } from '../../src/model/gpt2-checkpoint.js';
import { ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, LORA_MODULES, loraModuleShape } from '../../src/model/lora-adapter.js';
import { ALL_MODULES, loraTensors, peftConfig, writePeftAdapter } from './peft-adapter.js';

/** Written last, so a folder cut short by Ctrl-C is made again rather than served. */
const MARKER_FILE = 'bench-lora.json';
const MARKER_FORMAT = 1;
/**
 * How much an adapter adds to a layer's output, relative to the layer's own output. Random
 * adapters only need to cost what trained ones cost; kept small, they leave the model's
 * activations (and so the sampled tokens' spread) as the base model's are.
 */
const DELTA_RATIO = 0.03;

export const loraAdapterName = (index: number): string => `bench-lora-${index}`;

/** What the folder of adapter `index` holds (its marker): a folder is reused only when all of it matches. */
export interface BenchLoraSpec {
  format: number;
  name: string;
  seed: number;
  rank: number;
  alpha: number;
  std: number;
  layers: number;
  embd: number;
}

/**
 * The std of lora_A and lora_B entries. For inputs x, a layer's output entries are about
 * baseStd x sqrt(in) x |x| and the delta's scale x std^2 x sqrt(rank) x sqrt(in) x |x|, so this
 * std makes the delta DELTA_RATIO of the output at every rank and width. baseStd is the weight std
 * of the benchmark's random models (src/model/tiny.ts: 0.3 x sqrt(32 / width)).
 */
export function loraStd(rank: number, alpha: number, embd: number): number {
  const baseStd = 0.3 * Math.sqrt(32 / embd);
  return Math.sqrt((DELTA_RATIO * baseStd) / ((alpha / rank) * Math.sqrt(rank)));
}

export function benchLoraSpec(index: number, rank: number, shape: { layers: number; embd: number }): BenchLoraSpec {
  // lora_alpha = 2r: PEFT's usual pairing (r 16, alpha 32), a scale of 2 at every rank.
  const alpha = 2 * rank;
  return { format: MARKER_FORMAT, name: loraAdapterName(index), seed: index, rank, alpha, std: loraStd(rank, alpha, shape.embd), layers: shape.layers, embd: shape.embd };
}

export interface BenchLora {
  name: string;
  dir: string;
  /** False when the folder was already there, matching. */
  made: boolean;
}

/**
 * Adapters 0..count-1 for the model in `modelDir` (its config.json gives the shape), in
 * `loraDir`/<i>/: every layer, all four GPT-2 modules, F32, seeded by index.
 */
export function ensureBenchLoras(opts: { modelDir: string; loraDir: string; count: number; rank: number }): BenchLora[] {
  const config = readGpt2Config(opts.modelDir);
  const shape = { layers: config.n_layer, embd: config.n_embd };
  const out: BenchLora[] = [];
  for (let i = 0; i < opts.count; i++) {
    const spec = benchLoraSpec(i, opts.rank, shape);
    const dir = resolve(opts.loraDir, String(i));
    if (markerMatches(dir, spec)) {
      out.push({ name: spec.name, dir, made: false });
      continue;
    }
    rmSync(dir, { recursive: true, force: true });
    const tensors = loraTensors({ embd: spec.embd, layers: Array.from({ length: spec.layers }, (_, l) => l), modules: ALL_MODULES, rank: spec.rank, seed: spec.seed, std: spec.std });
    writePeftAdapter(dir, peftConfig({ r: spec.rank, lora_alpha: spec.alpha }), tensors);
    writeFileSync(join(dir, MARKER_FILE), `${JSON.stringify(spec, null, 2)}\n`);
    out.push({ name: spec.name, dir, made: true });
  }
  return out;
}

function markerMatches(dir: string, spec: BenchLoraSpec): boolean {
  if (!existsSync(join(dir, ADAPTER_CONFIG_FILE)) || !existsSync(join(dir, ADAPTER_WEIGHTS_FILE))) return false;
  try {
    const found = JSON.parse(readFileSync(join(dir, MARKER_FILE), 'utf8')) as Record<string, unknown>;
    return Object.entries(spec).every(([k, v]) => found[k] === v) && Object.keys(found).length === Object.keys(spec).length;
  } catch {
    return false;
  }
}

/** The value of `--flag V` or `--flag=V` in `args` (the last one), or null. */
export function flagValue(args: readonly string[], flag: string): string | null {
  let value: string | null = null;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag && i + 1 < args.length) value = args[i + 1]!;
    else if (args[i]!.startsWith(`${flag}=`)) value = args[i]!.slice(flag.length + 1);
  }
  return value;
}

/**
 * vLLM's flags for serving `adapters`: --max-loras (every adapter may run in one batch) and
 * --max-lora-rank unless `serverArgs` sets them itself (fewer slots than adapters measures slot
 * swapping), one --lora-modules name=path per adapter.
 */
export function loraServerArgs(adapters: readonly BenchLora[], rank: number, serverArgs: readonly string[]): string[] {
  const args = ['--enable-lora'];
  if (flagValue(serverArgs, '--max-loras') === null) args.push('--max-loras', String(adapters.length));
  if (flagValue(serverArgs, '--max-lora-rank') === null) args.push('--max-lora-rank', String(rank));
  for (const a of adapters) args.push('--lora-modules', `${a.name}=${a.dir}`);
  return args;
}

/**
 * The adapter each of `count` requests names, null for the base model: a `baseShare` fraction go
 * to the base model, spread evenly (request i when floor((i + 1) x share) steps up), the others to
 * the adapters in turn. By index alone, so every run and the --baseline server see the same spread.
 */
export function requestAdapters(count: number, adapters: readonly string[], baseShare: number): Array<string | null> {
  const out: Array<string | null> = [];
  let next = 0;
  for (let i = 0; i < count; i++) {
    const toBase = adapters.length === 0 || Math.floor((i + 1) * baseShare) > Math.floor(i * baseShare);
    out.push(toBase ? null : adapters[next++ % adapters.length]!);
  }
  return out;
}

/** in + out summed over the four adaptable modules of one layer (12288 for 768 wide). */
export function loraInOutPerLayer(embd: number): number {
  return LORA_MODULES.reduce((sum, m) => {
    const [inF, outF] = loraModuleShape(m, embd);
    return sum + inF + outF;
  }, 0);
}

/**
 * Bytes one adapter takes in the server at `rank` (--max-lora-rank: the engine pads every adapter
 * to it): lora_A [rank, in] and lora_B [rank, out] float32 for each module of each layer. The
 * engine holds one such copy per loaded adapter and one per --max-loras slot of the step graph.
 */
export function loraAdapterBytes(rank: number, shape: { layers: number; embd: number }): number {
  return rank * loraInOutPerLayer(shape.embd) * shape.layers * 4;
}
