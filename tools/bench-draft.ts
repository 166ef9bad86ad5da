// npm run bench:draft -- [--target DIR] [--draft DIR[,DIR...]] [--past 256] [--k 4] [--rounds 30]
// What a draft-model speculation step costs against a plain decode step, one stream: the target's
// decode step (1 token), its verification step (1 + k tokens in one chunk), and a draft model's
// decode step, timed in interleaved rounds (medians; these machines are shared and noisy, so only
// the ratios mean anything). From them: the acceptance rate at which k drafts break even.
// Defaults: the GPT-2-small int8 bench folder as target, a tiny random GPT-2 (2 layers x 32) as
// draft, made once under models/.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { blocksFor } from '../src/engine/kv-cache.js';
import { createOnnxRunner, type OnnxRunner, type RunnerRow } from '../src/engine/runner.js';
import { describeWeights, readManifest } from '../src/model/manifest.js';
import { makeTinyModel } from '../src/model/tiny.js';

const BLOCK_SIZE = 16;
const TINY_DRAFT = 'models/bench-draft-tiny';

const { values } = parseArgs({
  options: {
    target: { type: 'string', default: 'models/bench-gpt2-small-int8' },
    draft: { type: 'string', default: TINY_DRAFT },
    past: { type: 'string', default: '256' },
    k: { type: 'string', default: '4' },
    rounds: { type: 'string', default: '30' },
    threads: { type: 'string', default: '0' },
  },
});
const past = Number(values.past);
const k = Number(values.k);
const rounds = Number(values.rounds);

async function load(dir: string): Promise<{ name: string; runner: OnnxRunner; blocks: number[] }> {
  const manifest = readManifest(dir);
  const numBlocks = blocksFor(past + k + 1, BLOCK_SIZE) + 1;
  const { runner } = await createOnnxRunner({
    modelDir: dir,
    manifest,
    executionProvider: 'cpu',
    intraOpThreads: Number(values.threads),
    numBlocks,
    blockSize: BLOCK_SIZE,
    log: () => {},
  });
  const blocks = Array.from({ length: numBlocks - 1 }, (_, i) => i + 1);
  // The past's K/V, computed once (its values do not change what a step costs).
  await runner.run([{ tokens: Array.from({ length: past }, (_, i) => (i * 7919) % 50000), pastLength: 0, blocks, logitsFrom: past, fetchLogits: false }]);
  return { name: `${dir} (${manifest.numLayers} layers x ${manifest.hiddenSize}, ${describeWeights(manifest)})`, runner, blocks };
}

const row = (blocks: number[], count: number): RunnerRow => ({
  tokens: Array.from({ length: count }, (_, i) => 100 + i),
  pastLength: past,
  blocks,
  logitsFrom: 0,
  fetchLogits: false,
});

async function main(): Promise<void> {
  if (values.draft === TINY_DRAFT && !existsSync(resolve(TINY_DRAFT, 'manifest.json'))) await makeTinyModel({ out: TINY_DRAFT, seed: 2 });
  const target = await load(values.target);
  const drafts = await Promise.all(values.draft.split(',').map(load));
  const timings = new Map<string, number[]>();
  const time = async (label: string, runner: OnnxRunner, r: RunnerRow) => {
    const start = performance.now();
    await runner.run([r]);
    const list = timings.get(label) ?? [];
    list.push(performance.now() - start);
    timings.set(label, list);
  };
  for (let i = 0; i < rounds + 2; i++) {
    await time('target decode', target.runner, row(target.blocks, 1));
    await time('target verify', target.runner, row(target.blocks, 1 + k));
    for (const d of drafts) await time(`draft ${d.name}`, d.runner, row(d.blocks, 1));
  }
  // The first two rounds warm up ONNX Runtime's arenas.
  const median = (label: string) => {
    const xs = timings.get(label)!.slice(2).sort((a, b) => a - b);
    return xs[xs.length >> 1]!;
  };
  const decode = median('target decode');
  const verify = median('target verify');
  console.log(`target ${target.name}, past ${past} tokens, ${rounds} rounds (medians)`);
  console.log(`  decode step (1 token): ${decode.toFixed(2)} ms`);
  console.log(`  verification step (1 + ${k} tokens): ${verify.toFixed(2)} ms = ${(verify / decode).toFixed(3)}x a decode step`);
  for (const d of drafts) {
    const draft = median(`draft ${d.name}`);
    // k draft runs (the first one also catches up on the step's new tokens, about as cheap) + 1 verification.
    const step = k * draft + verify;
    // Expected tokens per step at an i.i.d. acceptance rate a: (1 - a^(k+1)) / (1 - a); break even where that is step / decode.
    const need = step / decode;
    let lo = 0;
    let hi = 1;
    for (let i = 0; i < 50; i++) {
      const a = (lo + hi) / 2;
      if ((1 - a ** (k + 1)) / (1 - a) < need) lo = a;
      else hi = a;
    }
    console.log(`draft ${d.name}`);
    console.log(`  decode step: ${draft.toFixed(3)} ms = ${((100 * draft) / decode).toFixed(2)}% of the target's`);
    console.log(`  speculation step (${k} draft runs + verification): ${step.toFixed(2)} ms = ${need.toFixed(3)}x a decode step; breaks even at acceptance ${(100 * lo).toFixed(1)}%`);
  }
  for (const r of [target, ...drafts]) await r.runner.dispose();
}

await main();
