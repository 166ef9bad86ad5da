// npm run export -- --checkpoint DIR --out DIR [--dtype fp32|int8|int4] [--block-size N] [--force]
import { parseArgs } from 'node:util';
import { exportCheckpoint } from '../src/model/export.js';
import { runCli } from './cli.js';
import { makeReporter } from './progress.js';
import { describeWeights } from '../src/model/manifest.js';
import { parseWeightFlags, WEIGHT_FLAGS, WEIGHT_USAGE } from './weight-options.js';

const USAGE = `Usage: npm run export -- --checkpoint DIR --out DIR [options]

Exports a Hugging Face GPT-2 checkpoint folder (config.json, model.safetensors, and tokenizer.json
or vocab.json + merges.txt) to a serving model folder (see models/README.md).

${WEIGHT_USAGE}  --force                       replace DIR
`;

runCli('export', async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      checkpoint: { type: 'string' },
      out: { type: 'string' },
      force: { type: 'boolean', default: false },
      ...WEIGHT_FLAGS,
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return void process.stdout.write(USAGE);
  if (!values.checkpoint || !values.out) throw new Error('--checkpoint and --out are required (see --help)');
  const weights = parseWeightFlags(values);
  const reporter = makeReporter();
  const started = performance.now();
  let manifest;
  try {
    manifest = await exportCheckpoint({ checkpoint: values.checkpoint, out: values.out, force: values.force, weights, onProgress: reporter.export });
  } finally {
    reporter.stop();
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  process.stderr.write(
    `exported ${manifest.numLayers} layers x ${manifest.numHeads} heads x ${manifest.hiddenSize} wide, context ${manifest.contextLength}, ${describeWeights(manifest)} weights, to ${values.out} in ${seconds} s\n`,
  );
});
