// npm run export -- --checkpoint DIR --out DIR [--dtype fp32|int8|int4] [--block-size N] [--merge-lora ADAPTER_DIR] [--force]
import { parseArgs } from 'node:util';
import { exportCheckpoint } from '../src/model/export.js';
import { runCli } from './cli.js';
import { makeReporter } from './progress.js';
import { DEFAULT_MAX_LORA_RANK } from '../src/model/lora-adapter.js';
import { describeWeights } from '../src/model/manifest.js';
import { parseWeightFlags, WEIGHT_FLAGS, WEIGHT_USAGE } from './weight-options.js';

const USAGE = `Usage: npm run export -- --checkpoint DIR --out DIR [options]

Exports a Hugging Face GPT-2 checkpoint folder (config.json, model.safetensors, and tokenizer.json
or vocab.json + merges.txt) to a serving model folder (see models/README.md).

${WEIGHT_USAGE}  --merge-lora ADAPTER_DIR      merge a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)
                                into the weights (W + scale * (B A)^T, in float32, before --dtype applies)
  --max-lora-rank N             refuse adapters of a higher rank (default ${DEFAULT_MAX_LORA_RANK})
  --force                       replace DIR
`;

runCli('export', async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      checkpoint: { type: 'string' },
      out: { type: 'string' },
      force: { type: 'boolean', default: false },
      'merge-lora': { type: 'string' },
      'max-lora-rank': { type: 'string', default: String(DEFAULT_MAX_LORA_RANK) },
      ...WEIGHT_FLAGS,
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return void process.stdout.write(USAGE);
  if (!values.checkpoint || !values.out) throw new Error('--checkpoint and --out are required (see --help)');
  const weights = parseWeightFlags(values);
  const maxLoraRank = Number(values['max-lora-rank']);
  if (!Number.isInteger(maxLoraRank) || maxLoraRank <= 0) throw new Error(`--max-lora-rank must be a positive integer, got ${values['max-lora-rank']}`);
  const reporter = makeReporter();
  const started = performance.now();
  let manifest;
  try {
    manifest = await exportCheckpoint({
      checkpoint: values.checkpoint,
      out: values.out,
      force: values.force,
      weights,
      mergeLora: values['merge-lora'],
      maxLoraRank,
      onProgress: reporter.export,
    });
  } finally {
    reporter.stop();
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  const lora = manifest.source.mergedLora;
  if (lora) {
    process.stderr.write(`merged LoRA adapter ${lora.path} (r ${lora.rank}, lora_alpha ${lora.alpha}${lora.rslora ? ', rsLoRA' : ''}, scale ${lora.scale}, ${lora.modules} matrices)\n`);
  }
  process.stderr.write(
    `exported ${manifest.numLayers} layers x ${manifest.numHeads} heads x ${manifest.hiddenSize} wide, context ${manifest.contextLength}, ${describeWeights(manifest)} weights, to ${values.out} in ${seconds} s\n`,
  );
});
