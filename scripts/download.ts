// npm run download -- REPO_ID [--revision R] [--out DIR] [--cache-dir DIR] [--dtype D] [--block-size N] [--force]
// Fetches a GPT-2 checkpoint from the Hugging Face hub (HF_ENDPOINT, HF_TOKEN) and exports it
// into a serving model folder.
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { downloadRepo } from '../src/model/hub-download.js';
import { runCli } from './cli.js';
import { makeReporter } from './progress.js';
import { exportCheckpoint } from '../src/model/export.js';
import { parseWeightFlags, WEIGHT_FLAGS, WEIGHT_USAGE } from './weight-options.js';

const USAGE = `Usage: npm run download -- REPO_ID [options]

Downloads a GPT-2 safetensors checkpoint from the Hugging Face hub, then exports it.

  REPO_ID              e.g. openai-community/gpt2
  --revision R         branch, tag or commit (default: main)
  --out DIR            exported model folder (default: models/<repo name>)
  --cache-dir DIR      where downloads are kept and resumed (default: models/.hub-cache)
  --force              replace DIR if it already holds a model
${WEIGHT_USAGE}  -h, --help           show this help

Environment: HF_TOKEN (private or gated repos), HF_ENDPOINT (default https://huggingface.co).
`;

async function main(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      revision: { type: 'string', default: 'main' },
      out: { type: 'string' },
      'cache-dir': { type: 'string', default: path.join('models', '.hub-cache') },
      force: { type: 'boolean', default: false },
      ...WEIGHT_FLAGS,
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (positionals.length !== 1) throw new Error('expected exactly one REPO_ID, e.g. openai-community/gpt2 (see --help)');
  const weights = parseWeightFlags(values);
  const repoId = positionals[0];
  const name = repoId.split('/').pop() ?? repoId;
  const out = values.out ?? path.join('models', name);
  // Fail before a long download rather than after it.
  if (!values.force && existsSync(out) && readdirSync(out).length > 0) {
    throw new Error(`${out} already exists and is not empty (pass --force to replace it, or --out DIR)`);
  }

  const reporter = makeReporter();
  try {
    const checkpoint = await downloadRepo({
      repoId,
      revision: values.revision,
      cacheDir: values['cache-dir'],
      onProgress: (e) => reporter.download(e),
    });
    await exportCheckpoint({ checkpoint, out, force: values.force, weights, onProgress: reporter.export });
  } finally {
    reporter.stop();
  }
  process.stderr.write(`${repoId}@${values.revision} exported to ${out}\n`);
}

runCli('download', main);
