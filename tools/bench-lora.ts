// npm run bench:lora -- [--model DIR[,DIR...]] [--rank 16] [--adapters 8] [--rows 32] [--past 96]
//                       [--prefill-tokens 512] [--threads 0] [--rounds 7]
// What per-row LoRA adapters cost a model step (src/model/lora-graph.ts), as ratios inside one
// run: each round times, in turn, the same step shapes on the exported graph (a server without
// --enable-lora), and on the LoRA graph with no adapter, with one adapter, and with the rows
// spread over --adapters adapters (one runner whose slots hold them); medians over rounds. Shapes: one decode row, --rows decode rows at
// --past cached tokens, and one --prefill-tokens prompt. Also the memory of one adapter slot.
// Defaults to the GPT-2-small-shaped benchmark models (fp32 and int8; made once under models/).
// Adapters are random (rank --rank, every layer and module): the cost does not depend on values.
import { parseArgs } from 'node:util';
import { blocksFor } from '../src/engine/kv-cache.js';
import type { RowAdapter } from '../src/engine/lora-slots.js';
import { createOnnxRunner, type RunnerRow } from '../src/engine/runner.js';
import { LORA_MODULES, loraModuleShape, type LoraAdapter } from '../src/model/lora-adapter.js';
import { packLoraAdapter } from '../src/model/lora-graph.js';
import { describeWeights, readManifest, type Manifest } from '../src/model/manifest.js';
import { Rng } from '../src/util/rng.js';
import { runCli } from '../scripts/cli.js';
import { ensureBenchModel } from './bench/bench.js';
import { median, medianStepMs } from './bench/step-timing.js';

const BLOCK_SIZE = 16;

runCli('bench:lora', async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string', default: 'models/bench-gpt2-small,models/bench-gpt2-small-int8' },
      rank: { type: 'string', default: '16' },
      adapters: { type: 'string', default: '8' },
      rows: { type: 'string', default: '32' },
      past: { type: 'string', default: '96' },
      'prefill-tokens': { type: 'string', default: '512' },
      threads: { type: 'string', default: '0' },
      rounds: { type: 'string', default: '7' },
    },
  });
  const int = (name: keyof typeof values) => {
    const v = Number(values[name]);
    if (!Number.isInteger(v) || v < 0) throw new Error(`--${name} must be a non-negative integer`);
    return v;
  };
  const s = { rank: int('rank'), adapters: int('adapters'), rows: int('rows'), past: int('past'), prefill: int('prefill-tokens'), threads: int('threads'), rounds: int('rounds') };
  if (s.adapters < 1 || s.rank < 1) throw new Error('--adapters and --rank must be at least 1');
  const out = (line: string) => process.stdout.write(`${line}\n`);
  out(`LoRA step costs: rank ${s.rank}, ${s.adapters} adapters, ${s.rows} decode rows at ${s.past} cached tokens, a ${s.prefill}-token prefill; medians of ${s.rounds} rounds`);
  out('| weights | shape | LoRA off (ms) | on, no adapter (ms) | ratio | 1 adapter (ms) | ratio | rows over all adapters (ms) | ratio |');
  out('| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const model of values.model!.split(',')) {
    const dir = await ensureBenchModel(model, false, (t) => process.stderr.write(`${t}\n`));
    const manifest = readManifest(dir);
    for (const line of await measure(dir, manifest, s)) out(line);
  }
});

async function measure(dir: string, manifest: Manifest, s: { rank: number; adapters: number; rows: number; past: number; prefill: number; threads: number; rounds: number }): Promise<string[]> {
  const perRow = blocksFor(s.past + 1, BLOCK_SIZE);
  const numBlocks = Math.max(s.rows * perRow + blocksFor(s.past + 128, BLOCK_SIZE), blocksFor(s.prefill, BLOCK_SIZE)) + 1;
  const create = (lora: boolean) =>
    createOnnxRunner({ modelDir: dir, manifest, executionProvider: 'cpu', intraOpThreads: s.threads, numBlocks, blockSize: BLOCK_SIZE, log: () => {}, ...(lora ? { lora: { maxLoras: s.adapters, maxRank: s.rank } } : {}) }).then((r) => r.runner);
  const plain = await create(false);
  const runner = await create(true);
  try {
    for (const arr of [...runner.pool.keys, ...runner.pool.values, ...plain.pool.keys, ...plain.pool.values]) arr.fill(0.01); // real pages, not the zero page
    const config = { n_layer: manifest.numLayers, n_embd: manifest.hiddenSize, n_head: manifest.numHeads };
    const adapters: RowAdapter[] = Array.from({ length: s.adapters }, (_, i) => ({ id: i + 1, weights: packLoraAdapter(randomAdapter(config, s.rank, i), config, s.rank) }));
    const decodeRow = (b: number, adapter?: RowAdapter): RunnerRow => ({
      tokens: [b + 1],
      pastLength: s.past,
      blocks: Array.from({ length: perRow }, (_, k) => 1 + b * perRow + k),
      logitsFrom: 0,
      fetchLogits: false,
      ...(adapter ? { adapter } : {}),
    });
    // A 128-token chunk after --past cached tokens, in blocks after every decode row's.
    const chunkRow = (adapter?: RowAdapter): RunnerRow => ({
      tokens: Array.from({ length: 128 }, (_, k) => (k * 7919) % 50000),
      pastLength: s.past,
      blocks: Array.from({ length: blocksFor(s.past + 128, BLOCK_SIZE) }, (_, k) => 1 + s.rows * perRow + k),
      logitsFrom: 127,
      fetchLogits: false,
      ...(adapter ? { adapter } : {}),
    });
    const prefillRow = (adapter?: RowAdapter): RunnerRow => ({
      tokens: Array.from({ length: s.prefill }, (_, k) => (k * 7919) % 50000),
      pastLength: 0,
      blocks: Array.from({ length: blocksFor(s.prefill, BLOCK_SIZE) }, (_, k) => 1 + k),
      logitsFrom: s.prefill - 1,
      fetchLogits: false,
      ...(adapter ? { adapter } : {}),
    });
    const cases: Array<{ shape: string; variants: RunnerRow[][]; runs: number }> = [
      { shape: '1 decode row', variants: [[decodeRow(0)], [decodeRow(0, adapters[0])], [decodeRow(0, adapters[0])]], runs: 15 },
      {
        shape: `${s.rows} decode rows`,
        variants: [
          Array.from({ length: s.rows }, (_, b) => decodeRow(b)),
          Array.from({ length: s.rows }, (_, b) => decodeRow(b, adapters[0])),
          Array.from({ length: s.rows }, (_, b) => decodeRow(b, adapters[b % s.adapters])),
        ],
        runs: 3,
      },
      {
        // What serving mostly runs: a prompt chunk beside the streams' decode rows.
        shape: `128-token chunk + ${s.rows - 1} decode rows`,
        variants: [
          [chunkRow(), ...Array.from({ length: s.rows - 1 }, (_, b) => decodeRow(b + 1))],
          [chunkRow(adapters[0]), ...Array.from({ length: s.rows - 1 }, (_, b) => decodeRow(b + 1, adapters[0]))],
          [chunkRow(adapters[0]), ...Array.from({ length: s.rows - 1 }, (_, b) => decodeRow(b + 1, adapters[(b + 1) % s.adapters]))],
        ],
        runs: 3,
      },
      { shape: `${s.prefill}-token prefill`, variants: [[prefillRow()], [prefillRow(adapters[0])], [prefillRow(adapters[0])]], runs: 1 },
    ];
    // Every adapter in a slot before timing: filling a slot is a one-time cost per activation.
    await runner.run(cases[1]!.variants[2]!);
    // Variant 0 on the exported graph, the others on the LoRA graph.
    const samples = cases.map((c) => [c.variants[0]!, ...c.variants].map(() => [] as number[]));
    for (let round = 0; round < s.rounds; round++) {
      for (const [ci, c] of cases.entries()) {
        const n = c.variants.length + 1;
        for (let k = 0; k < n; k++) {
          const v = (k + round) % n;
          samples[ci]![v]!.push(await (v === 0 ? medianStepMs(plain, c.variants[0]!, c.runs) : medianStepMs(runner, c.variants[v - 1]!, c.runs)));
        }
      }
    }
    const weights = describeWeights(manifest);
    const slotMiB = adapters[0]!.weights.bytes / 2 ** 20;
    const lines = cases.map((c, ci) => {
      const [off, none, one, all] = samples[ci]!.map(median) as [number, number, number, number];
      const ratio = (ms: number) => `${ms.toFixed(2)} | ${(off / ms).toFixed(2)}x`;
      const spread = c.variants[2] !== c.variants[1] && c.shape.includes('rows');
      return `| ${weights} | ${c.shape} | ${off.toFixed(2)} | ${ratio(none)} | ${ratio(one)} | ${spread ? ratio(all) : '- | -'} |`;
    });
    lines.push(`| ${weights} | memory of one adapter (rank ${s.rank}, all layers and modules) | ${slotMiB.toFixed(1)} MiB per copy: its slot, and the engine's packed copy | | | | | | |`);
    return lines;
  } finally {
    await runner.dispose();
    await plain.dispose();
  }
}

function randomAdapter(config: { n_layer: number; n_embd: number }, rank: number, seed: number): LoraAdapter {
  const rng = new Rng(1000 + seed);
  const random = (n: number) => Float32Array.from({ length: n }, () => 0.02 * rng.gaussian());
  const pairs = [];
  for (let layer = 0; layer < config.n_layer; layer++) {
    for (const module of LORA_MODULES) {
      const [inFeatures, outFeatures] = loraModuleShape(module, config.n_embd);
      pairs.push({ layer, module, inFeatures, outFeatures, a: random(rank * inFeatures), b: random(outFeatures * rank) });
    }
  }
  return { dir: `random-${seed}`, rank, alpha: rank, rslora: false, scale: 1, pairs };
}
