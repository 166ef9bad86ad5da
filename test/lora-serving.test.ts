// Per-request LoRA adapters in the engine, on the real ONNX path: an adapter request matches the
// adapter merged into the checkpoint and exported; its output is bit-identical alone and beside
// any mix of adapters and base requests (production defaults: time-capped chunking, ONNX
// Runtime's default threads); base rows are unchanged by adapters in the step; --max-loras caps
// the adapters a batch holds; the prefix cache keeps adapters apart; removal waits for the
// requests using it.
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { bigGroups, createOnnxRunner, type RunnerRow } from '../src/engine/runner.js';
import { BlockAllocator, blocksFor } from '../src/engine/kv-cache.js';
import type { EngineClient, EngineOptions, EngineRequest } from '../src/engine/types.js';
import { exportCheckpoint } from '../src/model/export.js';
import { readGpt2Config, type Gpt2Config } from '../src/model/gpt2-checkpoint.js';
import { readLoraAdapter, type LoraAdapter, type LoraModule } from '../src/model/lora-adapter.js';
import { packLoraAdapter, type PackedLora } from '../src/model/lora-graph.js';
import { readManifest } from '../src/model/manifest.js';
import type { DraftProposer } from '../src/engine/speculation.js';
import { collect, outputBits, request, type RunResult } from './helpers/engine-run.js';
import { InProcessEngine } from './helpers/in-process-engine.js';
import { loraTensors, peftConfig, writePeftAdapter } from './helpers/peft-adapter.js';
import { engineOptions, tempDir, tinyModel } from './helpers/tiny-model.js';

/** GPT-2's 64-wide heads, so that the attention and LoRA products take the kernels GPT-2 small does. */
const SHAPE = { layers: 2, heads: 2, embd: 128 };
const RANK = 16;
/** Max |logprob difference| between an adapter request and the same adapter merged and exported. */
const LOGPROB_TOLERANCE = 1e-4;

let base: string;
let config: Gpt2Config;
let root: string;
/** Adapters of different ranks and targets: all four modules; attention only; layer 1's MLP with rsLoRA. */
const adapters: Record<'a' | 'b' | 'c', { dir: string; adapter: LoraAdapter }> = {} as never;

before(async () => {
  base = await tinyModel(1, SHAPE);
  config = readGpt2Config(join(base, 'checkpoint'));
  root = tempDir();
  const make = (name: string, seed: number, r: number, extra: Record<string, unknown>, layers: number[], modules?: LoraModule[]) => {
    const dir = join(root, `adapter-${name}`);
    writePeftAdapter(dir, peftConfig({ r, lora_alpha: 2 * r, ...extra }), loraTensors({ embd: SHAPE.embd, layers, modules, rank: r, seed, std: 0.12 }));
    return { dir, adapter: readLoraAdapter(dir, config, { maxRank: RANK }) };
  };
  adapters.a = make('a', 11, 4, {}, [0, 1]);
  adapters.b = make('b', 12, 8, { target_modules: ['c_attn', 'c_proj'] }, [0, 1], ['attn.c_attn', 'attn.c_proj']);
  adapters.c = make('c', 13, 16, { use_rslora: true, target_modules: ['c_fc', 'c_proj'], layers_to_transform: [1] }, [1], ['mlp.c_fc', 'mlp.c_proj']);
});
after(() => rmSync(root, { recursive: true, force: true }));

const prompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);

async function withEngine<T>(modelDir: string, overrides: Partial<EngineOptions>, fn: (e: EngineClient) => Promise<T>): Promise<T> {
  const e = await InProcessEngine.start(engineOptions(modelDir, { lora: { maxLoras: 3, maxRank: RANK }, ...overrides }));
  try {
    return await fn(e);
  } finally {
    await e.shutdown();
  }
}

/** Ids 1, 2, 3 for adapters a, b, c. */
function addAll(e: EngineClient): void {
  e.addAdapter(1, adapters.a.adapter);
  e.addAdapter(2, adapters.b.adapter);
  e.addAdapter(3, adapters.c.adapter);
}

const withAdapter = (req: EngineRequest, adapter: number | null): EngineRequest => (adapter === null ? req : { ...req, adapter });

/** Max |a - b| over the sampled tokens' and top alternatives' logprobs of two runs with equal tokens. */
function maxLogprobDiff(a: RunResult, b: RunResult): number {
  let m = 0;
  a.choices[0]!.logprobs.forEach((l, i) => {
    const o = b.choices[0]!.logprobs[i]!;
    m = Math.max(m, Math.abs(l.logprob! - o.logprob!));
    l.top.forEach((t, j) => {
      assert.equal(t.tokenId, o.top[j]!.tokenId, `top alternative ${j} of token ${i}`);
      m = Math.max(m, Math.abs(t.logprob - o.top[j]!.logprob));
    });
  });
  return m;
}

test('an adapter request matches the adapter merged into the checkpoint and exported: greedy tokens equal and logprobs within 1e-4 on fp32 weights; on int8 weights, within the int8 models\' own errors and far nearer than the base model', async (t) => {
  const specs = [prompt(70, 1), prompt(23, 2)];
  const params = { maxTokens: 16, logprobs: 5, ignoreEos: true };
  // int4 is left out: on this random tiny model its own error against fp32 is as large as the
  // adapter's effect, so no comparison could tell an applied adapter from a missing one (the slot
  // test below runs int4 weights).
  const quantizedBase = (dtype: 'int8') => join(root, `base-${dtype}`);
  await exportCheckpoint({ checkpoint: join(base, 'checkpoint'), out: quantizedBase('int8'), weights: { dtype: 'int8' } });
  for (const name of ['a', 'c'] as const) {
    const id = name === 'a' ? 1 : 3;
    const merged = (dtype: 'fp32' | 'int8') => join(root, `merged-${name}-${dtype}`);
    for (const dtype of ['fp32', 'int8'] as const) {
      await exportCheckpoint({ checkpoint: join(base, 'checkpoint'), out: merged(dtype), mergeLora: adapters[name].dir, maxLoraRank: RANK, weights: { dtype } });
    }
    // fp32: greedy decoding, token by token.
    const want = await withEngine(merged('fp32'), {}, (e) => Promise.all(specs.map((p) => collect(e, request(p, params)))));
    const { got, plain } = await withEngine(base, {}, async (e) => {
      addAll(e);
      return {
        got: await Promise.all(specs.map((p) => collect(e, withAdapter(request(p, params), id)))),
        plain: await Promise.all(specs.map((p) => collect(e, request(p, params)))),
      };
    });
    got.forEach((g, i) => {
      assert.equal(g.error, null);
      assert.deepEqual(g.choices[0]!.tokens, want[i]!.choices[0]!.tokens, `fp32 adapter ${name}, prompt ${i}: greedy tokens of the adapter request and the merged export`);
      const diff = maxLogprobDiff(g, want[i]!);
      t.diagnostic(`fp32 adapter ${name}, prompt ${i}: max |logprob difference| against the merged export ${diff.toExponential(2)}`);
      assert.ok(diff <= LOGPROB_TOLERANCE, `fp32 adapter ${name}: ${diff} > ${LOGPROB_TOLERANCE}`);
      assert.notDeepEqual(outputBits(g), outputBits(plain[i]!), `adapter ${name} changes the output`);
    });
    // int8: the merged export quantizes W + delta, while the served adapter adds a float delta to
    // quantized W, so the two differ by quantization error and greedy near-ties may break
    // differently. Teacher-forced on the fp32 reference's tokens: the served int8 adapter is
    // within the two int8 models' own errors against fp32 of the merged int8 export, and much
    // nearer to it than the int8 base model is (the adapter is applied on int8 weights too).
    const sequences = specs.map((p, i) => [...p, ...want[i]!.choices[0]!.tokens]);
    const run = (dir: string, adapter: number | null) =>
      withEngine(dir, {}, async (e) => {
        if (adapter !== null) addAll(e);
        return Promise.all(sequences.map((s) => forced(e, s, adapter)));
      });
    const [mergedFp32, servedFp32] = [await run(merged('fp32'), null), await run(base, id)];
    for (const dtype of ['int8'] as const) {
      const [mergedQ, servedQ, baseQ] = [await run(merged(dtype), null), await run(quantizedBase(dtype), id), await run(quantizedBase(dtype), null)];
      sequences.forEach((_, i) => {
        const noise = maxDiff(servedQ[i]!, servedFp32[i]!) + maxDiff(mergedQ[i]!, mergedFp32[i]!);
        const diff = maxDiff(servedQ[i]!, mergedQ[i]!);
        const effect = maxDiff(baseQ[i]!, mergedQ[i]!);
        t.diagnostic(`${dtype} adapter ${name}, prompt ${i}: max |logprob difference| against the merged ${dtype} export ${diff.toFixed(3)}; the two ${dtype} models' errors against fp32 ${noise.toFixed(3)}; the ${dtype} base against the merged export ${effect.toFixed(3)}`);
        assert.ok(diff <= noise + LOGPROB_TOLERANCE, `${dtype} adapter ${name}: ${diff} > ${noise}`);
        assert.ok(diff < effect / 4, `${dtype} adapter ${name}: ${diff} is not well below the adapter's effect ${effect}`);
      });
    }
  }
});

/** Logprobs of every token of `tokens` given the ones before it (echo with logprobs, nothing generated). */
async function forced(e: EngineClient, tokens: number[], adapter: number | null): Promise<number[]> {
  const r = await collect(e, withAdapter(request(tokens, { maxTokens: 0, echo: true, logprobs: 0 }), adapter));
  assert.equal(r.error, null);
  return r.prompt!.tokens.slice(1).map((tok) => tok.logprob!);
}

function maxDiff(a: number[], b: number[]): number {
  return a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);
}

test('exact beside any mix: adapter and base requests give bit-identical output alone and together (production defaults, chunked prompts, greedy and seeded, logprobs)', async () => {
  const which = [1, 2, 3, null];
  const specs = Array.from({ length: 16 }, (_, i) => ({
    prompt: prompt(100 + ((i * 37) % 91), i),
    adapter: which[i % 4]!,
    params: { maxTokens: 10 + (i % 5), logprobs: 2, ignoreEos: true, ...(i % 2 === 0 ? {} : { temperature: 0.9, topP: 0.95, seed: 1000 + i }) },
  }));
  await withEngine(base, { maxStepMs: 'auto', intraOpThreads: 0 }, async (e) => {
    addAll(e);
    const alone: RunResult[] = [];
    for (const s of specs) alone.push(await collect(e, withAdapter(request(s.prompt, s.params), s.adapter)));
    const together = await Promise.all(
      specs.map(async (s, i) => {
        await new Promise((r) => setTimeout(r, i * 3));
        return collect(e, withAdapter(request(s.prompt, s.params), s.adapter));
      }),
    );
    for (const r of [...alone, ...together]) assert.equal(r.error, null);
    assert.deepEqual(together.map(outputBits), alone.map(outputBits));
    // The adapters are in effect: each one's first request differs from the same request on the base model.
    for (const i of [0, 1, 2]) {
      const plain = await collect(e, request(specs[i]!.prompt, specs[i]!.params));
      assert.notDeepEqual(outputBits(alone[i]!), outputBits(plain), `adapter ${specs[i]!.adapter} changes request ${i}`);
    }
    assert.equal(e.stats().kvBlocksUsed, 0, 'every block is freed');
  });
});

/** One runner, rows fed by hand: a row's logits and new K/V in every step, by Object.is. */
test('slots do not change bits: a row gives the same logits alone in slot 2 or slot 0 (its slot alone fed) and in slot 2 beside other adapters and base rows; base rows equal a step without adapters and a server without LoRA (fp32 and int4 weights, ranks 16 and 64)', async () => {
  const int4 = join(root, 'slots-int4');
  await exportCheckpoint({ checkpoint: join(base, 'checkpoint'), out: int4, weights: { dtype: 'int4' } });
  for (const [modelDir, rank] of [[base, RANK], [base, 64], [int4, RANK]] as const) await slotCheck(modelDir, rank);
});

async function slotCheck(modelDir: string, rank: number): Promise<void> {
  const manifest = readManifest(modelDir);
  const { runner } = await createOnnxRunner({ modelDir, manifest, executionProvider: 'cpu', intraOpThreads: 0, numBlocks: 64, blockSize: 16, log: () => {}, lora: { maxLoras: 4, maxRank: rank } });
  try {
    const pack = (a: LoraAdapter): PackedLora => packLoraAdapter(a, config, rank);
    const packed = { a: { id: 1, weights: pack(adapters.a.adapter) }, b: { id: 2, weights: pack(adapters.b.adapter) }, c: { id: 3, weights: pack(adapters.c.adapter) } };
    const alloc = new BlockAllocator(64);
    const p = prompt(40, 7);
    const q = prompt(33, 8);
    const pBlocks = alloc.allocate(blocksFor(41, 16))!;
    const qBlocks = alloc.allocate(blocksFor(34, 16))!;
    const oBlocks = alloc.allocate(blocksFor(20, 16))!;
    const row = (tokens: number[], blocks: number[], adapter?: RunnerRow['adapter']): RunnerRow => ({ tokens, pastLength: 0, blocks, logitsFrom: 0, fetchLogits: true, ...(adapter ? { adapter } : {}) });
    const copy = (x: Float32Array) => Float32Array.from(x);
    // The exported graph, which has no LoRA nodes: what a server without --enable-lora runs.
    const { runner: plain } = await createOnnxRunner({ modelDir, manifest, executionProvider: 'cpu', intraOpThreads: 0, numBlocks: 64, blockSize: 16, log: () => {} });
    const withoutLora = copy((await plain.run([row(q, qBlocks)]))[0]!.logits);
    await plain.dispose();
    // Slots 0 and 1 take a and b, so that c lands in slot 2: alone, that slot alone is fed (a view
    // in the middle of the stack) and every token is its own (lora_every_token: no gather, no unpack).
    await runner.run([row(prompt(20, 9), oBlocks, packed.a), row(prompt(20, 10), oBlocks, packed.b)]);
    const alone = copy((await runner.run([row(p, pBlocks, packed.c)]))[0]!.logits);
    const baseAlone = copy((await runner.run([row(q, qBlocks)]))[0]!.logits);
    // c in slot 2 among others, and base rows beside adapters (gathered and unpacked).
    const mixed = await runner.run([row(prompt(20, 9), oBlocks, packed.a), row(q, qBlocks), row(prompt(20, 10), oBlocks, packed.b), row(p, pBlocks, packed.c)]);
    assert.ok(alone.every((v, i) => Object.is(v, mixed[3]!.logits[i])), 'adapter c: slot 2 among others = slot 2 alone');
    // c alone in slot 0, once every slot is free again.
    for (const id of [1, 2, 3]) runner.releaseAdapter(id);
    const aloneInSlot0 = (await runner.run([row(p, pBlocks, packed.c)]))[0]!.logits;
    assert.ok(alone.every((v, i) => Object.is(v, aloneInSlot0[i])), 'adapter c alone: slot 2 = slot 0');
    assert.ok(baseAlone.every((v, i) => Object.is(v, mixed[1]!.logits[i])), 'a base row beside adapters = without any adapter in the step');
    assert.ok(baseAlone.every((v, i) => Object.is(v, withoutLora[i])), 'a base row = the exported graph without LoRA nodes');
    assert.ok(alone.some((v, i) => v !== mixed[0]!.logits[i]), 'different adapters give different logits');
  } finally {
    await runner.dispose();
  }
}

test('--max-loras caps the adapters the running batch holds: three adapters with one slot all complete, bit-identical to running alone', async () => {
  const specs = Array.from({ length: 6 }, (_, i) => ({ prompt: prompt(40 + i * 7, 20 + i), adapter: (i % 3) + 1, params: { maxTokens: 8, logprobs: 1, ignoreEos: true } }));
  await withEngine(base, { lora: { maxLoras: 1, maxRank: RANK } }, async (e) => {
    addAll(e);
    const alone: RunResult[] = [];
    for (const s of specs) alone.push(await collect(e, withAdapter(request(s.prompt, s.params), s.adapter)));
    let most = 0;
    const timer = setInterval(() => (most = Math.max(most, e.stats().adapters.filter((a) => a.running > 0).length)), 1);
    const together = await Promise.all(specs.map((s) => collect(e, withAdapter(request(s.prompt, s.params), s.adapter))));
    clearInterval(timer);
    assert.deepEqual(together.map(outputBits), alone.map(outputBits));
    assert.equal(most, 1, 'never more than one adapter running');
  });
});

test('the prefix cache keeps adapters apart: a prompt cached by one adapter is not a hit for the base model or another adapter, and is for the same adapter', async () => {
  const p = prompt(64, 40);
  await withEngine(base, {}, async (e) => {
    addAll(e);
    const params = { maxTokens: 2 };
    assert.equal((await collect(e, withAdapter(request(p, params), 1))).cachedTokens, 0);
    assert.equal((await collect(e, request(p, params))).cachedTokens, 0, 'base model after adapter 1');
    assert.equal((await collect(e, withAdapter(request(p, params), 2))).cachedTokens, 0, 'adapter 2 after adapter 1');
    assert.equal((await collect(e, withAdapter(request(p, params), 1))).cachedTokens, 48, 'adapter 1 again: its full blocks');
  });
});

test('removing an adapter lets its running request finish, refuses new requests naming it, and frees it once done', async () => {
  await withEngine(base, {}, async (e) => {
    addAll(e);
    const long = collect(e, withAdapter(request(prompt(30, 50), { maxTokens: 40, ignoreEos: true }), 2));
    await new Promise((r) => setTimeout(r, 20));
    e.removeAdapter(2);
    const refused = await collect(e, withAdapter(request(prompt(10, 51), { maxTokens: 2 }), 2));
    assert.equal(refused.error?.code, 'internal_error');
    assert.match(refused.error!.message, /LoRA adapter 2 is not loaded/);
    const done = await long;
    assert.equal(done.error, null);
    assert.equal(done.choices[0]!.tokens.length, 40);
    // Loaded again under a new id, it serves as before (and ids are not reused).
    e.addAdapter(4, adapters.b.adapter);
    const again = await collect(e, withAdapter(request(prompt(30, 50), { maxTokens: 40, ignoreEos: true }), 4));
    assert.deepEqual(again.choices[0]!.tokens, done.choices[0]!.tokens);
  });
});

test('speculative decoding with adapters: verification runs with each row\'s adapter, so output is bit-identical to decoding without speculation', async () => {
  const p = prompt(48, 60);
  const specs = [1, 3, null].map((adapter) => ({ adapter, params: { maxTokens: 24, logprobs: 1, ignoreEos: true } }));
  const runAll = (e: EngineClient) => Promise.all(specs.map((s) => collect(e, withAdapter(request(p, s.params), s.adapter))));
  const plain = await withEngine(base, {}, async (e) => {
    addAll(e);
    return runAll(e);
  });
  // Drafts are each adapter's own continuation (what prompt lookup finds when a text repeats): the
  // proposer runs no model, so only verification, with the row's adapter, decides what is kept.
  const known = plain.map((r) => [...p, ...r.choices[0]!.tokens]);
  const proposer: DraftProposer = {
    propose: (seqs, max) =>
      seqs.map((seq, i) => {
        const next = known.find((k) => k.length > seq.tokens.length && seq.tokens.every((t, j) => t === k[j]));
        return next ? next.slice(seq.tokens.length, seq.tokens.length + max[i]!) : [];
      }),
  };
  const e = await InProcessEngine.start(engineOptions(base, { lora: { maxLoras: 3, maxRank: RANK }, speculation: { method: 'ngram', numTokens: 4, lookupMin: 2, lookupMax: 4 } }), () => {}, { draftProposer: proposer });
  try {
    addAll(e);
    const speculative = await runAll(e);
    assert.deepEqual(speculative.map(outputBits), plain.map(outputBits));
    assert.ok(e.stats().specDecodeAcceptedTokens > 0, 'drafts were accepted');
  } finally {
    await e.shutdown();
  }
});

test('big groups: slots with many more tokens than the rest are taken out of the padded batch, as many as make the padded work least', () => {
  assert.deepEqual(bigGroups([4, 4, 4, 4]), [], 'decode rows only: one group');
  assert.deepEqual(bigGroups([130]), [], 'one slot: nothing to gain');
  assert.deepEqual(bigGroups([4, 132, 4, 4, 4, 4, 4, 4]), [1], 'a prompt chunk beside decode rows');
  assert.deepEqual(bigGroups([100, 4, 90, 4, 4, 4, 4, 4]), [0, 2], 'two chunks');
  assert.deepEqual(bigGroups([12, 10, 9, 8]), [], 'close counts: the copies cost more than the padding');
});
