// npm run model:tiny -- --out DIR [--seed N] [--preset tiny|gpt2-small] [--layers N --heads N --embd N --positions N]
//                        [--dtype fp32|int8|int4] [--block-size N]
import { parseArgs } from 'node:util';
import { makeTinyModel, PRESETS, type TinyShape } from '../src/model/tiny.js';
import { runCli } from './cli.js';
import { makeReporter } from './progress.js';
import { parseWeightFlags, WEIGHT_FLAGS, WEIGHT_USAGE } from './weight-options.js';

const USAGE = `Usage: npm run model:tiny -- --out DIR [options]

Writes a random-weight GPT-2 checkpoint (Hugging Face layout, real GPT-2 tokenizer) to DIR/checkpoint
and exports it to DIR. Same seed and shape, same bytes. Its output is noise: it is for tests and
benchmarks.

  --seed N                      default 0
  --preset tiny|gpt2-small      tiny: 2 layers, 4 heads, 32 wide (default); gpt2-small: 12 x 12 x 768
  --layers N --heads N --embd N --positions N   override the preset's shape
${WEIGHT_USAGE}  --force                       replace DIR
`;

const int = (name: string, v: string | undefined): number | undefined => {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} must be a positive integer, got ${v}`);
  return n;
};

runCli('model:tiny', async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      out: { type: 'string' },
      seed: { type: 'string', default: '0' },
      preset: { type: 'string', default: 'tiny' },
      layers: { type: 'string' },
      heads: { type: 'string' },
      embd: { type: 'string' },
      positions: { type: 'string' },
      force: { type: 'boolean', default: false },
      ...WEIGHT_FLAGS,
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return void process.stdout.write(USAGE);
  if (!values.out) throw new Error('--out is required (see --help)');
  const preset = PRESETS[values.preset];
  if (!preset) throw new Error(`--preset must be one of ${Object.keys(PRESETS).join(', ')}`);
  const shape: TinyShape = {
    layers: int('layers', values.layers) ?? preset.layers,
    heads: int('heads', values.heads) ?? preset.heads,
    embd: int('embd', values.embd) ?? preset.embd,
    positions: int('positions', values.positions) ?? preset.positions,
  };
  const seed = Number(values.seed);
  if (!Number.isInteger(seed) || seed < 0) throw new Error(`--seed must be a non-negative integer, got ${values.seed}`);
  const weights = parseWeightFlags(values);
  const reporter = makeReporter();
  try {
    await makeTinyModel({ out: values.out, seed, shape, force: values.force, weights, onProgress: reporter.export });
  } finally {
    reporter.stop();
  }
  process.stderr.write(`random GPT-2 (${shape.layers}x${shape.heads}x${shape.embd}, seed ${seed}, ${weights.dtype}) written to ${values.out}\n`);
});
