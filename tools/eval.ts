// npm run eval -- --model DIR --reference DIR [--positions 2048] [--window 512] [--margin 0.1] [--seed 0]
//                 [--threads 0] [--json FILE]
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { evaluateQuality } from './eval/quality.js';
import { describeWeights, readManifest } from '../src/model/manifest.js';
import { runCli } from '../scripts/cli.js';

const USAGE = `Usage: npm run eval -- --model DIR --reference DIR [options]

Teacher-forced comparison of a model folder against a reference folder (a quantized export
against the float32 one): both read the same fixed token stream, and every position's next-token
distributions are compared. Prints mean and p99 KL divergence (nats, KL(reference || model)),
top-1 agreement, and top-1 agreement where the reference's top-1/top-2 logit margin exceeds
--margin (random-weight models have many near ties).

  --positions N     positions compared (default 2048)
  --window N        tokens per sequence; the stream is cut into sequences this long (default 512)
  --margin X        top-1/top-2 logit margin for the confident-position agreement (default 0.1)
  --seed N          seed of the token stream (default 0)
  --threads N       ONNX Runtime intra-op threads (default 0: all cores)
  --json FILE       also write the figures as JSON
`;

runCli('eval', async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      reference: { type: 'string' },
      positions: { type: 'string', default: '2048' },
      window: { type: 'string', default: '512' },
      margin: { type: 'string', default: '0.1' },
      seed: { type: 'string', default: '0' },
      threads: { type: 'string', default: '0' },
      json: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return void process.stdout.write(USAGE);
  if (!values.model || !values.reference) throw new Error('--model and --reference are required (see --help)');
  const num = (name: string, v: string, min: number) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number >= ${min}, got ${v}`);
    return n;
  };
  const report = await evaluateQuality({
    model: values.model,
    reference: values.reference,
    positions: num('positions', values.positions, 1),
    window: num('window', values.window, 1),
    margin: num('margin', values.margin, 0),
    seed: num('seed', values.seed, 0),
    intraOpThreads: num('threads', values.threads, 0),
  });
  const model = describeWeights(readManifest(values.model));
  const reference = describeWeights(readManifest(values.reference));
  const pct = (x: number) => `${(100 * x).toFixed(2)} %`;
  process.stdout.write(
    [
      `model      ${values.model} (${model})`,
      `reference  ${values.reference} (${reference})`,
      `positions  ${report.positions}`,
      `KLD        mean ${report.meanKld.toExponential(3)}  p99 ${report.p99Kld.toExponential(3)}  max ${report.maxKld.toExponential(3)}`,
      `top-1      ${pct(report.top1Agreement)} agree`,
      `top-1      ${pct(report.confidentTop1Agreement)} agree where the reference's top-1/top-2 margin > ${report.margin} (${report.confidentPositions} positions)`,
      '',
    ].join('\n'),
  );
  if (values.json) writeFileSync(values.json, JSON.stringify({ model: values.model, reference: values.reference, ...report }, null, 2) + '\n');
});
