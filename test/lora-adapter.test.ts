// PEFT LoRA adapters: loading (matrices, scale), every refusal, and `export --merge-lora` checked
// against a checkpoint the test merges by hand, through the real ONNX runner.
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { BlockAllocator, blocksFor } from '../src/engine/kv-cache.js';
import { createOnnxRunner } from '../src/engine/runner.js';
import { exportCheckpoint } from '../src/model/export.js';
import { readGpt2Config, type Gpt2Config } from '../src/model/gpt2-checkpoint.js';
import { readLoraAdapter, type LoraAdapter } from '../src/model/lora-adapter.js';
import { readManifest } from '../src/model/manifest.js';
import { SafetensorsFile, writeSafetensors } from '../src/model/safetensors.js';
import { ALL_MODULES, loraKey, loraTensors, peftConfig, writePeftAdapter, type StoredTensor } from './helpers/peft-adapter.js';
import { tempDir, tinyModel } from './helpers/tiny-model.js';

/** Max |logprob difference| allowed between the merged export and the hand-merged reference. */
const LOGPROB_TOLERANCE = 1e-4;
/** The adapter must move the base model's logprobs by at least this much, or the test proves nothing. */
const MIN_ADAPTER_EFFECT = 0.05;

/** The tiny model's config (2 layers, 32 wide) without touching disk. */
async function tinyBase(): Promise<{ checkpoint: string; config: Gpt2Config }> {
  const checkpoint = join(await tinyModel(1), 'checkpoint');
  return { checkpoint, config: readGpt2Config(checkpoint) };
}

function pairOf(adapter: LoraAdapter, layer: number, module: string) {
  const pair = adapter.pairs.find((p) => p.layer === layer && p.module === module);
  assert.ok(pair, `pair h.${layer}.${module}`);
  return pair;
}

test('a PEFT adapter loads as float32 A [r, in] and B [out, r] per layer and module, with scale lora_alpha / r (or / sqrt(r) with use_rslora)', async (t) => {
  const { config } = await tinyBase();
  const root = tempDir();
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const E = config.n_embd;

  for (const dtype of ['F32', 'F16', 'BF16'] as const) {
    const dir = join(root, dtype);
    const tensors = loraTensors({ embd: E, layers: [0, 1], rank: 4, seed: 3, dtype });
    writePeftAdapter(dir, peftConfig({ r: 4, lora_alpha: 8 }), tensors);
    const adapter = readLoraAdapter(dir, config);
    assert.equal(adapter.rank, 4);
    assert.equal(adapter.alpha, 8);
    assert.equal(adapter.rslora, false);
    assert.equal(adapter.scale, 2, 'lora_alpha / r = 8 / 4');
    assert.deepEqual(adapter.pairs.map((p) => `${p.layer}.${p.module}`), [0, 1].flatMap((l) => ALL_MODULES.map((m) => `${l}.${m}`)), 'sorted by layer, then module');
    for (const layer of [0, 1]) {
      for (const module of ALL_MODULES) {
        const pair = pairOf(adapter, layer, module);
        const a = tensors.get(loraKey(layer, module, 'A'))!;
        const b = tensors.get(loraKey(layer, module, 'B'))!;
        assert.deepEqual([pair.inFeatures, pair.outFeatures], [a.shape[1], b.shape[0]]);
        assert.ok(pair.a instanceof Float32Array && pair.b instanceof Float32Array);
        assert.deepEqual(pair.a, a.values, `${dtype} h.${layer}.${module} lora_A`);
        assert.deepEqual(pair.b, b.values, `${dtype} h.${layer}.${module} lora_B`);
      }
    }
    assert.deepEqual([pairOf(adapter, 0, 'attn.c_attn').outFeatures, pairOf(adapter, 0, 'mlp.c_fc').outFeatures, pairOf(adapter, 0, 'mlp.c_proj').inFeatures], [3 * E, 4 * E, 4 * E]);
  }

  const rs = join(root, 'rslora');
  writePeftAdapter(rs, peftConfig({ r: 16, lora_alpha: 8, use_rslora: true }), loraTensors({ embd: E, layers: [1], modules: ['attn.c_attn'], rank: 16, seed: 4 }));
  const rsAdapter = readLoraAdapter(rs, config);
  assert.equal(rsAdapter.rslora, true);
  assert.equal(rsAdapter.scale, 2, 'lora_alpha / sqrt(r) = 8 / 4');
  assert.deepEqual(rsAdapter.pairs.map((p) => `${p.layer}.${p.module}`), ['1.attn.c_attn']);

  // Only some layers (layers_to_transform), a regex target_modules, fan_in_fan_out false (PEFT
  // forces it true for Conv1D), PEFT's defaults when r and lora_alpha are left out (8 and 8).
  const some = join(root, 'some');
  writePeftAdapter(
    some,
    peftConfig({ r: undefined, lora_alpha: undefined, layers_to_transform: [1], target_modules: '.*\\.mlp\\.c_fc', fan_in_fan_out: false }),
    loraTensors({ embd: E, layers: [1], modules: ['mlp.c_fc'], rank: 8, seed: 5 }),
  );
  const someAdapter = readLoraAdapter(some, config);
  assert.deepEqual([someAdapter.rank, someAdapter.scale, someAdapter.pairs.length], [8, 1, 1]);
});

test('adapters the server cannot apply are refused with an error naming the problem, and nothing is returned', async (t) => {
  const { checkpoint, config } = await tinyBase();
  const root = tempDir();
  t.after(() => rmSync(root, { recursive: true, force: true }));
  const E = config.n_embd;
  const good = () => loraTensors({ embd: E, layers: [0, 1], rank: 4, seed: 9 });
  let n = 0;
  /** Writes a variant of the good adapter and expects `pattern`. */
  const refused = (pattern: RegExp, edit: { config?: Record<string, unknown>; tensors?: (m: Map<string, StoredTensor>) => void; maxRank?: number; files?: (dir: string) => void }) => {
    const dir = join(root, `case-${n++}`);
    const tensors = good();
    edit.tensors?.(tensors);
    writePeftAdapter(dir, peftConfig(edit.config), tensors);
    edit.files?.(dir);
    assert.throws(() => readLoraAdapter(dir, config, { maxRank: edit.maxRank }), (err: Error) => {
      assert.match(err.message, pattern);
      assert.ok(err.message.startsWith(dir), `the message names the adapter folder: ${err.message}`);
      return true;
    });
  };
  const f32 = (shape: number[]): StoredTensor => ({ dtype: 'F32', shape, values: new Float32Array(shape[0] * shape[1]) });

  refused(/use_dora is true; DoRA adapters are not supported/, { config: { use_dora: true } });
  refused(/lora_magnitude_vector is a DoRA magnitude/, { tensors: (m) => m.set('base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector', f32([1, 3 * E])) });
  refused(/modules_to_save \["lm_head"\] is not supported/, { config: { modules_to_save: ['lm_head'] } });
  refused(/target_modules includes "wte"; embedding adapters are not supported/, { config: { target_modules: ['c_attn', 'wte'] } });
  refused(/target_modules includes "lm_head"; lm_head adapters are not supported/, { config: { target_modules: ['lm_head'] } });
  refused(/target_modules includes "ln_1", which is not one of GPT-2's adaptable layers/, { config: { target_modules: ['c_attn', 'ln_1'] } });
  refused(/lora_embedding_A adapts an embedding; embedding adapters are not supported/, { config: { target_modules: '.*' }, tensors: (m) => m.set('base_model.model.transformer.wte.lora_embedding_A', f32([4, 50257])) });
  refused(/lm_head\.lora_A\.weight adapts lm_head; lm_head adapters are not supported/, { config: { target_modules: '.*' }, tensors: (m) => m.set('base_model.model.lm_head.lora_A.weight', f32([4, E])) });
  refused(/bias is "all"; only "none" is supported/, { config: { bias: 'all' } });
  refused(/bias is "lora_only"; only "none" is supported/, { config: { bias: 'lora_only' } });
  refused(/rank_pattern \{"c_fc":8\} is not supported/, { config: { rank_pattern: { c_fc: 8 } } });
  refused(/peft_type is "IA3"; only LORA adapters are supported/, { config: { peft_type: 'IA3' } });
  refused(/rank r = 128 is over the maximum LoRA rank 64 \(raise --max-lora-rank/, {
    config: { r: 128 },
    tensors: (m) => {
      m.clear();
      for (const [k, v] of loraTensors({ embd: E, layers: [0], modules: ['attn.c_proj'], rank: 128, seed: 1 })) m.set(k, v);
    },
  });
  refused(/rank r = 4 is over the maximum LoRA rank 2/, { maxRank: 2 });
  refused(/adapter_config\.json is missing/, { files: (d) => rmSync(join(d, 'adapter_config.json')) });
  refused(/adapter_config\.json is not valid JSON/, { files: (d) => writeFileSync(join(d, 'adapter_config.json'), '{"r": 4,') });
  refused(/adapter_model\.safetensors is missing$/, { files: (d) => rmSync(join(d, 'adapter_model.safetensors')) });
  refused(/adapter_model\.safetensors is missing \(only adapter_model\.bin is there/, {
    files: (d) => {
      rmSync(join(d, 'adapter_model.safetensors'));
      writeFileSync(join(d, 'adapter_model.bin'), 'pickle');
    },
  });
  refused(/adapter_model\.safetensors is unreadable \(.*header length/, { files: (d) => writeFileSync(join(d, 'adapter_model.safetensors'), 'not a safetensors file') });
  refused(/lora_A\.default\.weight still carries an adapter name/, {
    tensors: (m) => {
      m.set(loraKey(0, 'attn.c_attn', 'A').replace('lora_A.weight', 'lora_A.default.weight'), m.get(loraKey(0, 'attn.c_attn', 'A'))!);
      m.delete(loraKey(0, 'attn.c_attn', 'A'));
    },
  });
  refused(/h\.0\.ln_1\.weight is not a key of PEFT's GPT-2 LoRA format/, { tensors: (m) => m.set('base_model.model.transformer.h.0.ln_1.weight', f32([1, E])) });
  refused(/attn\.c_attn\.bias is a bias/, { tensors: (m) => m.set('base_model.model.transformer.h.0.attn.c_attn.bias', f32([1, 3 * E])) });
  refused(/h\.1\.mlp\.c_fc has lora_A but no lora_B/, { tensors: (m) => m.delete(loraKey(1, 'mlp.c_fc', 'B')) });
  refused(/h\.0\.attn\.c_proj has lora_B but no lora_A/, { tensors: (m) => m.delete(loraKey(0, 'attn.c_proj', 'A')) });
  for (const dtype of ['I32', 'F64'] as const) {
    refused(new RegExp(`has dtype ${dtype}; only F32, F16 and BF16 adapters are supported`), { tensors: (m) => (m.get(loraKey(0, 'mlp.c_proj', 'B'))!.dtype = dtype) });
  }
  refused(/lora_A\.weight has shape \[4,64\]; r = 4 and the base model's attn\.c_attn \(32 in, 96 out\) need \[4,32\]/, {
    tensors: (m) => {
      m.clear();
      for (const [k, v] of loraTensors({ embd: 64, layers: [0], rank: 4, seed: 1 })) m.set(k, v);
    },
  });
  refused(/lora_B\.weight has shape \[128,3\]; r = 4 .* need \[128,4\]/, { tensors: (m) => m.set(loraKey(0, 'mlp.c_fc', 'B'), f32([4 * E, 3])) });
  refused(/h\.2\.attn\.c_attn\.lora_A\.weight: layer 2 is out of range \(the base model has 2 layers\)/, {
    tensors: (m) => {
      for (const [k, v] of loraTensors({ embd: E, layers: [2], modules: ['attn.c_attn'], rank: 4, seed: 1 })) m.set(k, v);
    },
  });
  refused(/layer 1 is not in layers_to_transform \[0\]/, { config: { layers_to_transform: [0] } });
  refused(/layers_to_transform names layer 5, out of range/, { config: { layers_to_transform: [5] } });
  refused(/holds no lora_A\/lora_B tensors/, { tensors: (m) => m.clear() });
  assert.throws(() => readLoraAdapter(join(root, 'nowhere'), config), /nowhere: LoRA adapter folder does not exist/);

  // Through the exporter: refused before anything is written.
  const bad = join(root, 'bad');
  writePeftAdapter(bad, peftConfig({ use_dora: true }), good());
  const out = join(root, 'out');
  await assert.rejects(exportCheckpoint({ checkpoint, out, mergeLora: bad }), /DoRA adapters are not supported/);
  assert.equal(existsSync(out), false, 'no output folder');
  assert.deepEqual(readdirSync(root).filter((f) => f.includes('partial')), [], 'no temporary folder');
});

/** W' = W + scale * (B A)^T, written out longhand: the test's own merge, to export as a plain checkpoint. */
function writeHandMergedCheckpoint(checkpoint: string, out: string, tensors: ReadonlyMap<string, StoredTensor>, scale: number): void {
  const file = new SafetensorsFile(join(checkpoint, 'model.safetensors'));
  const merged = new Map<string, { shape: number[]; data: Float32Array }>();
  try {
    for (const [name, info] of file.tensors) {
      const data = file.readFloat32(name);
      const m = /^h\.(\d+)\.(.+)\.weight$/.exec(name);
      const a = m && tensors.get(loraKey(Number(m[1]), m[2], 'A'));
      const b = m && tensors.get(loraKey(Number(m[1]), m[2], 'B'));
      if (a && b) {
        const [r, inF] = a.shape;
        const outF = b.shape[0];
        assert.deepEqual(info.shape, [inF, outF], `${name} is a Conv1D weight [in, out]`);
        const delta = new Float64Array(outF * inF); // B @ A: [out, in]
        for (let o = 0; o < outF; o++) for (let i = 0; i < inF; i++) for (let k = 0; k < r; k++) delta[o * inF + i] += b.values[o * r + k] * a.values[k * inF + i];
        for (let i = 0; i < inF; i++) for (let o = 0; o < outF; o++) data[i * outF + o] += scale * delta[o * inF + i];
      }
      merged.set(name, { shape: info.shape, data });
    }
  } finally {
    file.close();
  }
  mkdirSync(out, { recursive: true });
  writeSafetensors(join(out, 'model.safetensors'), merged);
  for (const f of ['config.json', 'tokenizer.json']) copyFileSync(join(checkpoint, f), join(out, f));
}

interface Greedy {
  tokens: number[];
  /** Log-softmax of every step's logits (float64). */
  logprobs: Float64Array[];
}

/** Greedy decoding through the real ONNX runner, logits fetched at every step. */
async function greedy(modelDir: string, prompt: number[], steps: number): Promise<Greedy> {
  const { runner } = await createOnnxRunner({ modelDir, manifest: readManifest(modelDir), executionProvider: 'cpu', intraOpThreads: 1, numBlocks: 16, blockSize: 16, log: () => {}, feed: 'whole-pool' });
  try {
    const blocks = new BlockAllocator(16).allocate(blocksFor(prompt.length + steps, 16))!;
    const result: Greedy = { tokens: [], logprobs: [] };
    let out = await runner.run([{ tokens: prompt, pastLength: 0, blocks, logitsFrom: prompt.length - 1, fetchLogits: true }]);
    for (let i = 0; i < steps; i++) {
      const logits = out[0].logits;
      let max = -Infinity;
      for (const v of logits) max = Math.max(max, v);
      let sum = 0;
      for (const v of logits) sum += Math.exp(v - max);
      const lse = max + Math.log(sum);
      result.logprobs.push(Float64Array.from(logits, (v) => v - lse));
      result.tokens.push(out[0].argmax);
      out = await runner.run([{ tokens: [out[0].argmax], pastLength: prompt.length + i, blocks, logitsFrom: 0, fetchLogits: true }]);
    }
    return result;
  } finally {
    await runner.dispose();
  }
}

/** Max |a - b| over every step's whole logprob vector. */
function maxLogprobDiff(a: Greedy, b: Greedy): number {
  let m = 0;
  a.logprobs.forEach((row, s) => row.forEach((v, j) => (m = Math.max(m, Math.abs(v - b.logprobs[s][j])))));
  return m;
}

const PROMPT = [15496, 995, 11, 314, 716, 257, 1332];
const STEPS = 16;

test('export --merge-lora: greedy tokens equal, and logprobs within 1e-4, a checkpoint the test merged by hand; the adapter changes the model; fp32 and int8 merged exports load and run', async (t) => {
  const base = await tinyModel(1);
  const checkpoint = join(base, 'checkpoint');
  const config = readGpt2Config(checkpoint);
  const root = tempDir();
  t.after(() => rmSync(root, { recursive: true, force: true }));

  // r 4, alpha 8 (scale 2) on every adaptable layer, stored F16 as adapters often are.
  const adapterDir = join(root, 'adapter');
  const tensors = loraTensors({ embd: config.n_embd, layers: [0, 1], rank: 4, seed: 21, std: 0.15, dtype: 'F16' });
  writePeftAdapter(adapterDir, peftConfig({ r: 4, lora_alpha: 8 }), tensors);
  const handMerged = join(root, 'hand-merged-checkpoint');
  writeHandMergedCheckpoint(checkpoint, handMerged, tensors, 2);

  const results: Record<string, Greedy> = { base: await greedy(base, PROMPT, STEPS) };
  for (const dtype of ['fp32', 'int8'] as const) {
    const merged = join(root, `merged-${dtype}`);
    const reference = join(root, `reference-${dtype}`);
    const manifest = await exportCheckpoint({ checkpoint, out: merged, mergeLora: adapterDir, weights: { dtype } });
    await exportCheckpoint({ checkpoint: handMerged, out: reference, weights: { dtype } });
    assert.equal(manifest.dtype, dtype === 'fp32' ? 'float32' : 'int8');
    const lora = readManifest(merged).source.mergedLora;
    assert.ok(lora, 'the manifest records the merged adapter');
    assert.deepEqual({ ...lora, adapterSha256: undefined }, { path: adapterDir, adapterSha256: undefined, rank: 4, alpha: 8, rslora: false, scale: 2, modules: 8 });
    assert.equal(readManifest(reference).source.mergedLora, undefined);

    const got = (results[`merged-${dtype}`] = await greedy(merged, PROMPT, STEPS));
    const want = (results[`reference-${dtype}`] = await greedy(reference, PROMPT, STEPS));
    assert.ok(got.logprobs.every((row) => row.every(Number.isFinite)), `${dtype}: finite logprobs`);
    assert.deepEqual(got.tokens, want.tokens, `${dtype}: greedy tokens of the merged export and the hand-merged reference`);
    const diff = maxLogprobDiff(got, want);
    t.diagnostic(`${dtype}: max |logprob difference| merged vs hand-merged over ${STEPS} steps x ${config.vocab_size} tokens: ${diff.toExponential(2)}`);
    assert.ok(diff <= LOGPROB_TOLERANCE, `${dtype}: max |logprob difference| ${diff} > ${LOGPROB_TOLERANCE}`);
  }
  const effect = maxLogprobDiff(results['merged-fp32'], results.base);
  t.diagnostic(`max |logprob difference| merged fp32 vs base: ${effect.toFixed(3)}; greedy tokens differ at ${results['merged-fp32'].tokens.filter((tok, i) => tok !== results.base.tokens[i]).length} of ${STEPS} steps`);
  assert.ok(effect >= MIN_ADAPTER_EFFECT, `the adapter moved the base model's logprobs by only ${effect}`);
});
