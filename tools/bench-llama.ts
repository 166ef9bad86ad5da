// npm run bench:llama -- --llama-dir DIR [--models DIR,DIR] [--checkpoint DIR] [--types F32,Q8_0]
//                        [--streams 1,8,32] [--prompt-tokens 64] [--output-tokens 64] [--threads 2]
// Our server (HTTP/SSE) against llama.cpp (node-llama-cpp, in a process of its own) on the same
// weights, same prompts, greedy, at each stream count, in one run (tools/bench/llama-compare.ts).
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { compareTable, compareWithLlama } from './bench/llama-compare.js';
import { makeProgress } from './bench/progress.js';
import { stopAllServers } from './bench/server-process.js';
import type { GgufWeightType } from './bench/gguf.js';
import { runCli } from '../scripts/cli.js';

const USAGE = `Usage: npm run bench:llama -- --llama-dir DIR [options]

Serves each model folder and runs llama.cpp on the same checkpoint written as GGUF, at each
stream count, with the serving benchmark's seeded token-id prompts; prints output tokens/s and
each of ours against each llama.cpp type. llama.cpp runs at its best: in its own process with
UV_THREADPOOL_SIZE=1 and our server's GLIBC_TUNABLES, warmed up, with the faster flash attention
and weight mapping settings for the workload; at one stream it is also timed through a plain
evaluate loop, and a harness loop slower than that is reported. node-llama-cpp is not a
dependency of this project; install it apart (Linux x64, CPU build; its optional GPU packages
and install script are skipped):
  mkdir -p ../llama && cd ../llama && npm init -y && \\
    npm install --no-save --omit=optional --ignore-scripts node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1

  --llama-dir DIR        the folder holding node_modules/node-llama-cpp (required)
  --models LIST          our model folders (default models/bench-gpt2-small,models/bench-gpt2-small-int8)
  --checkpoint DIR       the checkpoint they were exported from (default models/bench-gpt2-small/checkpoint)
  --types LIST           GGUF weight types for llama.cpp: F32, Q8_0 (default F32,Q8_0)
  --gguf-dir DIR         where the GGUF files are written once (default models/gguf)
  --streams LIST         concurrent streams (default 1,8,32)
  --prompt-tokens N      (default 64)
  --output-tokens N      (default 64)
  --threads N            threads for both (default 2)
  --seed N               workload seed (default 0)
  --repeat N             runs per stream count, systems alternating; the fastest of each counts (default 2)
  --uv-threadpool N      UV_THREADPOOL_SIZE of llama.cpp's process (default 1: fastest on 2 vCPUs)
  --flash-attention M    llama.cpp's flash attention: on, off or best (default best: the faster on a warm-up probe)
  --llama-mmap M         llama.cpp's weights mapped from the GGUF file (on) or read into memory, on huge
                         pages where GLIBC_TUNABLES gives them (off); best: the faster on the probe (default)
  --json FILE            also write the rows as JSON
`;

for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => void stopAllServers(5000).finally(() => process.exit(130)));

runCli('bench:llama', async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      'llama-dir': { type: 'string' },
      models: { type: 'string', default: 'models/bench-gpt2-small,models/bench-gpt2-small-int8' },
      checkpoint: { type: 'string', default: 'models/bench-gpt2-small/checkpoint' },
      types: { type: 'string', default: 'F32,Q8_0' },
      'gguf-dir': { type: 'string', default: 'models/gguf' },
      streams: { type: 'string', default: '1,8,32' },
      'prompt-tokens': { type: 'string', default: '64' },
      'output-tokens': { type: 'string', default: '64' },
      threads: { type: 'string', default: '2' },
      seed: { type: 'string', default: '0' },
      repeat: { type: 'string', default: '2' },
      'uv-threadpool': { type: 'string', default: '1' },
      'flash-attention': { type: 'string', default: 'best' },
      'llama-mmap': { type: 'string', default: 'best' },
      json: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return void process.stdout.write(USAGE);
  if (!values['llama-dir']) throw new Error('--llama-dir is required (see --help)');
  const types = values.types.split(',');
  for (const t of types) if (t !== 'F32' && t !== 'Q8_0') throw new Error(`--types: ${t} is not F32 or Q8_0`);
  const ints = (s: string) => s.split(',').map(Number);
  const flash = values['flash-attention'];
  if (flash !== 'on' && flash !== 'off' && flash !== 'best') throw new Error(`--flash-attention: ${flash} is not on, off or best`);
  const mmap = values['llama-mmap'];
  if (mmap !== 'on' && mmap !== 'off' && mmap !== 'best') throw new Error(`--llama-mmap: ${mmap} is not on, off or best`);
  const rows = await compareWithLlama(
    {
      llamaDir: values['llama-dir'],
      checkpoint: values.checkpoint,
      models: values.models.split(','),
      ggufTypes: types as GgufWeightType[],
      ggufDir: values['gguf-dir'],
      streams: ints(values.streams),
      promptTokens: Number(values['prompt-tokens']),
      outputTokens: Number(values['output-tokens']),
      threads: Number(values.threads),
      seed: Number(values.seed),
      repeat: Number(values.repeat),
      uvThreadpoolSize: Number(values['uv-threadpool']),
      flashAttention: flash,
      mmap,
    },
    { out: (t) => process.stderr.write(`${t}\n`), status: (t) => process.stderr.write(`${t}\n`), progress: makeProgress('none') },
  );
  process.stdout.write(`${compareTable(rows)}\n`);
  if (values.json) writeFileSync(values.json, JSON.stringify(rows, null, 2) + '\n');
});
