// Quantized exports (int8, int4) end to end: the byte layout the kernels read, the export and
// its manifest, logits against float64 references with tolerances derived from the quantization
// steps, greedy decoding against a dequantize-then-float reference, batch invariance through the
// real engine, and the serving edge showing the dtype.
import assert from 'node:assert/strict';
import { copyFileSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import onnxProto from 'onnx-proto';
import request from 'supertest';
import { quantizeQ8_0, toHalfBits, writeGpt2Gguf } from '../tools/bench/gguf.js';
import { buildApp } from '../src/server/app.js';
import { createOnnxRunner, type ModelRunner } from '../src/engine/runner.js';
import { exportCheckpoint } from '../src/model/export.js';
import { CONTRACT_VERSION } from '../src/model/serving-graph.js';
import { readManifest } from '../src/model/manifest.js';
import { quantizeBlockwise, quantizePerColumn, type QuantBits } from '../src/model/quantize.js';
import { weightPlan, type WeightFormatOptions } from '../src/model/weight-format.js';
import { Rng } from '../src/util/rng.js';
import { dequantizeBlockwise, dequantizePerColumn, writeDequantizedCheckpoint, type QuantizedMatrix } from './helpers/dequantized-checkpoint.js';
import { assertBatchInvariance } from './helpers/engine-run.js';
import { InProcessEngine } from './helpers/in-process-engine.js';
import { testConfig } from './helpers/serving.js';
import { argmax, ReferenceGpt2 } from './helpers/reference-gpt2.js';
import { engineOptions, tempDir, tinyModel } from './helpers/tiny-model.js';

const FORMATS: Record<string, WeightFormatOptions> = {
  int8: { dtype: 'int8' },
  'int8 MatMulNBits': { dtype: 'int8', int8Op: 'MatMulNBits' },
  int4: { dtype: 'int4' },
};

let root: string;
let fp32: string;
const exported = new Map<string, string>();
/** Per format: the dequantized twin checkpoint and the graph's quantized matrices. */
const twins = new Map<string, { dir: string; matrices: QuantizedMatrix[] }>();

before(async () => {
  root = tempDir();
  fp32 = await tinyModel(1);
  for (const [name, weights] of Object.entries(FORMATS)) {
    const out = join(root, name.replace(' ', '-'));
    await exportCheckpoint({ checkpoint: join(fp32, 'checkpoint'), out, weights });
    exported.set(name, out);
    const dir = join(root, `${name.replace(' ', '-')}-dequantized`);
    twins.set(name, { dir, matrices: writeDequantizedCheckpoint(join(fp32, 'checkpoint'), dir, weightPlan(weights)) });
  }
});

test('blockwise packing is the layout MatMulNBits and GatherBlockQuantized read: element k of row n at bit k*bits, low bits first, one symmetric scale per block', () => {
  // One row of 40 values, blocks of 32: the second block is padded with 8 zero codes.
  const w = Float32Array.from({ length: 40 }, (_, k) => (k === 5 ? -2 : k === 33 ? 1.5 : (k % 7) / 10 - 0.3));
  for (const bits of [4, 8] as QuantBits[]) {
    const q = quantizeBlockwise(w, 1, 40, 'out-in', bits, 32);
    const blob = (32 * bits) / 8;
    assert.equal(q.data.length, 2 * blob, 'two blocks, the last one padded');
    const zero = 1 << (bits - 1);
    // The value of largest magnitude maps exactly to code 0: scale = m / -2^(bits-1).
    assert.equal(q.scales[0], Math.fround(-2 / -zero));
    assert.equal(q.scales[1], Math.fround(1.5 / -zero));
    const code = (k: number) => {
      const b = Math.floor(k / 32);
      const bit = (k % 32) * bits;
      return (q.data[b * blob + (bit >> 3)] >> (bit & 7)) & ((1 << bits) - 1);
    };
    assert.equal(code(5), 0);
    assert.equal(code(33), 0);
    // w[4] = 0.1 with scale 2/zero: code round(0.1 / (2 / zero)) + zero; w[5] = -2: code 0.
    const code4 = Math.round((0.1 * zero) / 2) + zero;
    if (bits === 4) {
      assert.equal(q.data[2], code4 | (0 << 4), 'byte 2 holds elements 4 (low nibble) and 5 (high nibble)');
    } else {
      assert.deepEqual([q.data[4], q.data[5]], [code4, 0]);
    }
    for (let k = 40; k < 64; k++) assert.equal(code(k), 0, 'padding codes are zero');
  }
});

test('quantization error is at most half a step (one step where the top code is clamped); the two source layouts agree', () => {
  const rng = new Rng(7);
  const n = 24;
  const k = 96;
  const inOut = Float32Array.from({ length: n * k }, () => rng.gaussian()); // [k, n]
  const outIn = new Float32Array(n * k); // the same matrix as [n, k]
  for (let r = 0; r < k; r++) for (let c = 0; c < n; c++) outIn[c * k + r] = inOut[r * n + c];
  for (const bits of [4, 8] as QuantBits[]) {
    for (const bs of [16, 32]) {
      const a = quantizeBlockwise(inOut, n, k, 'in-out', bits, bs);
      const b = quantizeBlockwise(outIn, n, k, 'out-in', bits, bs);
      assert.deepEqual(a, b);
      const dq = dequantizeBlockwise(a, n, k, bits, bs);
      const top = (1 << bits) - 1;
      for (let row = 0; row < n; row++) {
        for (let col = 0; col < k; col++) {
          const scale = Math.abs(a.scales[row * (k / bs) + Math.floor(col / bs)]);
          const err = Math.abs(dq[row * k + col] - outIn[row * k + col]);
          const clamped = Math.round(outIn[row * k + col] / a.scales[row * (k / bs) + Math.floor(col / bs)]) + (1 << (bits - 1)) > top;
          assert.ok(err <= (clamped ? 1 : 0.5) * scale * (1 + 1e-6), `bits ${bits} block ${bs} (${row}, ${col}): error ${err} with step ${scale}`);
        }
      }
    }
  }
  const pc = quantizePerColumn(inOut, k, n);
  const dq = dequantizePerColumn(pc, k, n);
  for (let i = 0; i < dq.length; i++) assert.ok(Math.abs(dq[i] - inOut[i]) <= pc.scales[i % n] * 0.5 * (1 + 1e-6));
});

test('export: manifest records dtype, bits, block and ops; weights shrink as the formats say; the tied embedding and head share one quantized tensor', () => {
  const fp32Bytes = statSync(join(fp32, 'model.onnx.data')).size;
  const expected: Record<string, object> = {
    int8: { bits: 8, blockSize: 32, linearOp: 'MatMulIntegerToFloat', activations: 'int8 per token', embeddingOp: 'GatherBlockQuantized', headOp: 'MatMulNBits' },
    'int8 MatMulNBits': { bits: 8, blockSize: 32, linearOp: 'MatMulNBits', activations: 'int8 per block', embeddingOp: 'GatherBlockQuantized', headOp: 'MatMulNBits' },
    int4: { bits: 4, blockSize: 32, linearOp: 'MatMulNBits', activations: 'int8 per block', embeddingOp: 'GatherBlockQuantized', headOp: 'MatMulNBits' },
  };
  for (const [name, dir] of exported) {
    const m = readManifest(dir);
    assert.equal(m.dtype, FORMATS[name].dtype);
    assert.deepEqual(m.quantization, expected[name]);
    assert.equal(m.contractVersion, CONTRACT_VERSION, 'the same graph contract for every dtype');
    // int8 codes are 1/4 of float32, int4 1/8, plus a float scale per block of 32; the rest of
    // the file (wpe, norms, biases, alignment) stays float32.
    const ratio = statSync(join(dir, 'model.onnx.data')).size / fp32Bytes;
    assert.ok(ratio < (m.quantization!.bits === 8 ? 1 / 3 : 1 / 5), `${name}: ${ratio.toFixed(3)} of the float32 bytes`);
    const graph = onnxProto.onnx.ModelProto.decode(readFileSync(join(dir, 'model.onnx'))).graph!;
    const refOf = (init: string) => {
      const t = graph.initializer!.find((i) => i.name === init)!;
      return Object.fromEntries(t.externalData!.map((e) => [e.key, e.value]));
    };
    assert.deepEqual(refOf('wte.weight.rows'), refOf('wte.weight.quant'), 'GatherBlockQuantized reads the head\'s bytes');
    for (const init of graph.initializer!.filter((i) => /\.(quant|scales|rows)$/.test(i.name!))) {
      const dims = init.dims!.map(Number);
      const count = dims.reduce((a, b) => a * b, 1);
      if (dims.length === 3) assert.equal(dims[2], (32 * m.quantization!.bits) / 8, `${init.name}: one block's bytes per [n, block]`);
      assert.equal(Number(refOf(init.name!).length), count * (init.dataType === 1 ? 4 : 1), `${name}: ${init.name} ${JSON.stringify(dims)}`);
    }
    assert.equal(graph.initializer!.filter((i) => i.name === 'wte.weight' || i.name === 'wte.weight.quant').length, 1, 'wte is written once');
    const ops = new Set(graph.node!.map((n) => n.opType));
    assert.ok(!ops.has('Gemm'), 'no float matmul is left');
  }
});

test('manifests: a float32 folder from before quantization still loads; a quantized dtype without its record, or an unusable block size, is refused with a reason', async () => {
  const copy = tempDir();
  for (const f of readdirSync(fp32)) if (f !== 'checkpoint') copyFileSync(join(fp32, f), join(copy, f));
  const manifest = JSON.parse(readFileSync(join(copy, 'manifest.json'), 'utf8'));
  assert.equal(manifest.quantization, undefined);
  assert.equal(readManifest(copy).dtype, 'float32');
  writeFileSync(join(copy, 'manifest.json'), JSON.stringify({ ...manifest, dtype: 'int8' }));
  assert.throws(() => readManifest(copy), /quantization.*required for int8\/int4/);
  await assert.rejects(
    exportCheckpoint({ checkpoint: join(fp32, 'checkpoint'), out: join(copy, 'bad'), weights: { dtype: 'int4', blockSize: 128 } }),
    /--block-size 128: use 16 or 32 .*depend on the batch/,
  );
});

async function runnerFor(dir: string): Promise<ModelRunner> {
  const { runner } = await createOnnxRunner({ modelDir: dir, manifest: readManifest(dir), executionProvider: 'cpu', intraOpThreads: 1, numBlocks: 64, blockSize: 16, log: () => {} });
  return runner;
}

/**
 * The logits' expected relative rms error, derived from the quantization steps (not fitted):
 * - Rounding to a grid of step s adds an error uniform in +-s/2, rms s/sqrt(12). An int8
 *   activation block of n values has s = amax/127, and amax <= sqrt(n) * rms of the block, so its
 *   relative rms error is at most sqrt(n) / (127 sqrt(12)) (n: the kernel's block, or the whole
 *   row when activations are quantized per token).
 * - The weights' relative error is measured exactly on each matrix the graph uses.
 * - A product with weights independent of the rounding carries its input's relative error and
 *   adds its weights'; the products on the way to the logits add independent errors, so they
 *   combine in quadrature through the residual stream and the layer norms.
 * - Attention softmax and GELU are not linear and amplify the error somewhat; the factor 2 is
 *   that allowance (on this model the measured errors sit at 0.2-0.7 of the bound).
 */
function logitTolerance(matrices: QuantizedMatrix[], withWeights: boolean): number {
  // The measured weight errors are trusted only within the same rounding model's bound (a
  // quantizer bug must not widen its own tolerance): step amax / 2^(bits-1), amax <= sqrt(n) rms.
  for (const m of matrices) {
    const bound = Math.sqrt(m.weightBlock) / (2 ** (m.bits - 1) * Math.sqrt(12));
    assert.ok(m.weightError <= bound, `${m.name}: weight error ${m.weightError} above the ${m.bits}-bit bound ${bound}`);
  }
  const sum = matrices.reduce((s, m) => s + (Math.sqrt(m.activationBlock) / (127 * Math.sqrt(12))) ** 2 + (withWeights ? m.weightError ** 2 : 0), 0);
  return 2 * Math.sqrt(sum);
}

/** Mean over positions of rms(logits - reference) / rms(reference); `got` holds the positions' logits in order, in parts. */
function relativeError(got: Float32Array[], expected: Float64Array[], V: number): number {
  const rows = got.flatMap((part) => Array.from({ length: part.length / V }, (_, i) => part.subarray(i * V, (i + 1) * V)));
  assert.equal(rows.length, expected.length);
  let total = 0;
  expected.forEach((ref, j) => {
    let err = 0;
    let norm = 0;
    for (let v = 0; v < V; v++) {
      err += (rows[j][v] - ref[v]) ** 2;
      norm += ref[v] ** 2;
    }
    total += Math.sqrt(err / norm);
  });
  return total / expected.length;
}

const PROMPTS = [
  [15496, 995, 11, 314, 716, 257, 1332],
  [40, 588, 11],
  [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 383, 1110],
];

for (const name of Object.keys(FORMATS)) {
  test(`${name}: logits stay within the quantization steps' bound of the float64 references (dequantized weights, and the original ones), through paged prefill and decode`, async () => {
    const twin = twins.get(name)!;
    const refs = { dequantized: new ReferenceGpt2(twin.dir), original: new ReferenceGpt2(join(fp32, 'checkpoint')) };
    const runner = await runnerFor(exported.get(name)!);
    const V = runner.vocabSize;
    // Three rows of different lengths in one padded prefill, then 8 decode steps together.
    const seqs = PROMPTS.map((p) => ({ tokens: [...p], blocks: [] as number[] }));
    let nextBlock = 3; // non-contiguous, non-zero-based blocks
    const rowsFor = (feed: number[][]) =>
      feed.map((f, i) => {
        const s = seqs[i];
        const past = s.tokens.length - f.length;
        while (s.blocks.length * 16 < s.tokens.length) s.blocks.push(nextBlock++);
        return { tokens: f, pastLength: past, blocks: s.blocks, logitsFrom: 0, fetchLogits: true };
      });
    const got: Float32Array[][] = [[], [], []];
    let outs = await runner.run(rowsFor(PROMPTS));
    for (let step = 0; step < 8; step++) {
      outs.forEach((o, i) => got[i].push(o.logits.slice()));
      const next = outs.map((o) => [o.argmax]);
      next.forEach((n, i) => seqs[i].tokens.push(...n));
      outs = await runner.run(rowsFor(next));
    }
    outs.forEach((o, i) => got[i].push(o.logits.slice()));
    await runner.dispose();
    for (const [which, ref] of Object.entries(refs)) {
      const tolerance = logitTolerance(twin.matrices, which === 'original');
      seqs.forEach((s, i) => {
        const err = relativeError(got[i], ref.logitsAll(s.tokens), V);
        assert.ok(err <= tolerance, `${which} reference, row ${i}: relative error ${err.toFixed(4)} > bound ${tolerance.toFixed(4)}`);
      });
    }
  });

  test(`${name}: greedy picks equal a dequantize-then-float64 reference's, except at near ties`, async () => {
    const twin = twins.get(name)!;
    const ref = new ReferenceGpt2(twin.dir);
    const runner = await runnerFor(exported.get(name)!);
    const tolerance = logitTolerance(twin.matrices, false);
    let steps = 0;
    let ties = 0;
    for (const [row, prompt] of PROMPTS.entries()) {
      const seq = ref.newSequence();
      let expected: Float64Array = new Float64Array();
      for (const t of prompt) expected = seq.step(t);
      const blocks = Array.from({ length: 12 }, (_, k) => 20 * row + 1 + k);
      let [out] = await runner.run([{ tokens: prompt, pastLength: 0, blocks, logitsFrom: prompt.length - 1, fetchLogits: false }]);
      // Both continue with the reference's pick, so every step is compared.
      for (let step = 0; step < 24; step++, steps++) {
        const want = argmax(expected);
        if (out.argmax !== want) {
          // Allowed only where the reference's top two logits are closer than the error bound
          // allows for two logits (3 sigma of each, in opposite directions).
          const sorted = [...expected].sort((a, b) => b - a);
          const rms = Math.sqrt(expected.reduce((sum, v) => sum + v * v, 0) / expected.length);
          assert.ok(sorted[0] - sorted[1] <= 2 * 3 * tolerance * rms, `row ${row} step ${step}: ${out.argmax} instead of ${want} with margin ${sorted[0] - sorted[1]}`);
          ties++;
        }
        expected = seq.step(want);
        [out] = await runner.run([{ tokens: [want], pastLength: prompt.length + step, blocks, logitsFrom: 0, fetchLogits: false }]);
      }
    }
    await runner.dispose();
    assert.ok(ties <= steps / 4, `${ties} of ${steps} picks differed (each at a near tie)`);
  });
}

for (const name of ['int8', 'int4']) {
  test(`${name}: batch invariance through the real engine (32 requests alone and in changing batches give bit-identical output under the production defaults)`, async () => {
    const engine = await InProcessEngine.start(engineOptions(exported.get(name)!, { maxStepMs: 'auto', intraOpThreads: 0 }));
    try {
      await assertBatchInvariance(engine);
    } finally {
      await engine.shutdown();
    }
  });
}

test('/v1/models shows the weight dtype and quantization of a quantized model', async (t) => {
  const engine = await InProcessEngine.start(engineOptions(exported.get('int8')!));
  const app = buildApp(engine, testConfig());
  await app.ready();
  t.after(async () => {
    await app.close();
    await engine.shutdown();
  });
  const res = await request(app.server).get('/v1/models').expect(200);
  assert.equal(res.body.data[0].dtype, 'int8');
  assert.equal(res.body.data[0].quantization.linearOp, 'MatMulIntegerToFloat');
});

after(() => rmSync(root, { recursive: true, force: true }));

test('GGUF writer (the llama.cpp benchmark): v3 header, gpt2 metadata, every tensor listed, Q8_0 blocks of an fp16 scale and 32 int8', async () => {
  assert.deepEqual([0, 1, 0.5, 65504, 2 ** -24, 1 / 3].map(toHalfBits), [0x0000, 0x3c00, 0x3800, 0x7bff, 0x0001, 0x3555]);
  const block = quantizeQ8_0(Float32Array.from({ length: 32 }, (_, i) => (i - 16) / 16)); // max |x| = 1
  assert.equal(block.length, 34);
  assert.equal(block.readUInt16LE(0), toHalfBits(1 / 127));
  assert.deepEqual([block.readInt8(2), block.readInt8(2 + 8), block.readInt8(2 + 16), block.readInt8(2 + 31)], [-127, -64, 0, 119]);

  const path = join(root, 'tiny-q8.gguf');
  writeGpt2Gguf(join(fp32, 'checkpoint'), path, 'Q8_0');
  const buf = readFileSync(path);
  assert.equal(buf.toString('latin1', 0, 4), 'GGUF');
  assert.equal(buf.readUInt32LE(4), 3);
  const layers = readManifest(fp32).numLayers;
  assert.equal(Number(buf.readBigUInt64LE(8)), 2 + 12 * layers + 2, 'embeddings, 12 per layer, final norm (tied head)');
  const keyLength = Number(buf.readBigUInt64LE(24));
  assert.equal(buf.toString('utf8', 32, 32 + keyLength), 'general.architecture');
  assert.ok(buf.includes('blk.1.ffn_down.weight') && buf.includes('tokenizer.ggml.merges') && buf.includes('<|endoftext|>'));
});
