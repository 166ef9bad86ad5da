// The GPU check's entry (tools/gpu-check.sh bundles it with Node and ONNX Runtime):
//   node gpu-check [--quick] [--work DIR] [--encoder-dir DIR] [--json FILE]
//                  [--streams 1,8,32] [--prompt-tokens N] [--decode-steps N] [--layers N]
// Exit status: 0 all checks pass, 1 a check failed or an error, 2 no WebGPU adapter.
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatReport, runGpuCheck } from './bench/gpu-check.js';
import { PRESETS } from '../src/model/tiny.js';
import { runCli } from '../scripts/cli.js';

runCli('gpu-check', async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      work: { type: 'string', default: join(tmpdir(), 'gpu-check-models') },
      'encoder-dir': { type: 'string' },
      json: { type: 'string' },
      streams: { type: 'string', default: '1,8,32' },
      'prompt-tokens': { type: 'string' },
      'decode-steps': { type: 'string' },
      layers: { type: 'string' },
    },
  });
  // --quick: step counts for Mesa's software Vulkan driver, where a GPT-2-small step takes seconds.
  const quick = values.quick;
  const num = (v: string | undefined, fallback: number) => (v === undefined ? fallback : Number(v));
  const report = await runGpuCheck({
    workDir: values.work,
    encoderDir: values['encoder-dir'],
    benchShape: { ...PRESETS['gpt2-small'], layers: num(values.layers, PRESETS['gpt2-small'].layers) },
    streams: values.streams.split(',').map(Number),
    promptTokens: num(values['prompt-tokens'], quick ? 16 : 64),
    decodeSteps: Math.max(2, num(values['decode-steps'], quick ? 3 : 32)),
    checkSteps: quick ? 3 : 16,
    log: (line) => process.stderr.write(`${line}\n`),
  }).catch((err: Error) => {
    if (/WebGPU adapter/.test(err.message)) {
      process.stderr.write(`gpu-check: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  });
  process.stdout.write(formatReport(report) + '\n');
  if (values.json) writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n');
  const failed = report.checks.filter((c) => !c.pass);
  if (failed.length) throw new Error(`WebGPU differs from the CPU provider beyond tolerance: ${failed.map((c) => `${c.model} ${c.variant}`).join(', ')}`);
});
