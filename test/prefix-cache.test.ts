// Automatic prefix caching: the allocator's named blocks and LRU, the scheduler's admission
// taking cached blocks, and through the real engine: output with a cache hit is bit-identical
// to output without one (logprobs compared with Object.is), under the production defaults.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import supertest from 'supertest';
import { loadConfig } from '../src/config.js';
import { engineOptions as serverEngineOptions } from '../src/main.js';
import { BlockAllocator, blockHash } from '../src/engine/kv-cache.js';
import { KvCacheManager } from '../src/engine/kv-cache-manager.js';
import { Scheduler, Sequence } from '../src/engine/scheduler.js';
import { InProcessEngine } from './helpers/in-process-engine.js';
import { runStep } from './helpers/scheduler-steps.js';
import type { EngineClient, EngineOptions, SamplingParams } from '../src/engine/types.js';
import { collect, request, type RunResult } from './helpers/engine-run.js';
import { MODEL, serveTest, type TestServer } from './helpers/serving.js';
import { engineOptions, tinyModel } from './helpers/tiny-model.js';

const BS = 4;
let arrival = 0;
const seq = (id: string, tokens: number[], usesPrefixCache = true) =>
  new Sequence(id, 0, [...tokens], tokens.length, arrival++, Infinity, usesPrefixCache);
const scheduler = (blocks: number, prefixCaching = true) =>
  // No room kept for output: these tests are about which blocks admission takes, not when.
  new Scheduler({ maxNumSeqs: 8, maxNumBatchedTokens: 64, blockSize: BS, admissionReserveTokens: 0 }, new KvCacheManager(new BlockAllocator(blocks + 1, prefixCaching), BS));

test('block names chain: equal tokens after equal prefixes are equal names, anything else differs', () => {
  const a = blockHash(null, [1, 2, 3, 4]);
  assert.equal(blockHash(null, [1, 2, 3, 4]), a);
  assert.notEqual(blockHash(null, [1, 2, 3, 5]), a);
  assert.equal(blockHash(a, [5, 6, 7, 8]), blockHash(blockHash(null, [1, 2, 3, 4]), [5, 6, 7, 8]));
  assert.notEqual(blockHash(a, [5, 6, 7, 8]), blockHash(blockHash(null, [9, 2, 3, 4]), [5, 6, 7, 8]), 'a block is named by everything before it');
});

test('allocator: a named block outlives its readers until an allocation needs it, least recently released first', () => {
  const a = new BlockAllocator(5, true);
  const [b1, b2, b3] = a.allocate(3)!;
  a.register(b1!, 'h1');
  a.register(b2!, 'h2');
  a.release([b1!, b2!, b3!]);
  assert.equal(a.freeCount, 4, 'idle cached blocks count as free');
  assert.equal(a.cachedIdleCount, 2);
  assert.equal(a.cachedPrefix(['h1', 'h2', 'h3']), 2);
  assert.equal(a.cachedPrefix(['h2']), 1);
  assert.deepEqual(a.acquireCached(['h1']), [b1]);
  assert.equal(a.refCount(b1!), 1);
  assert.equal(a.freeCount, 3);
  // Two free blocks (b3 and the never-used one), then b2 (idle cached) is evicted; b1 is read.
  const got = a.allocate(3)!;
  assert.ok(got.includes(b2!));
  assert.equal(a.cachedPrefix(['h2']), 0, 'an evicted block loses its name');
  assert.equal(a.cachedPrefix(['h1']), 1);
  assert.equal(a.allocate(1), null);
  a.register(got[0]!, 'h1');
  assert.equal(a.cachedPrefix(['h1']), 1, 'a name already taken stays with its block');
  a.release([b1!]);
  a.release(got);
  assert.equal(a.freeCount, 4);
});

test("allocator: under pressure a released chain loses its tail first, so its head is still found", () => {
  const a = new BlockAllocator(9, true);
  const chain = a.allocate(4)!;
  const names = ['c0', 'c1', 'c2', 'c3'];
  chain.forEach((b, i) => a.register(b, names[i]!));
  a.release(chain);
  const other = a.allocate(4)!; // the never-used blocks
  assert.equal(a.cachedPrefix(names), 4);
  a.allocate(2); // evicts two of the chain's blocks
  assert.equal(a.cachedPrefix(names), 2, 'c2 and c3 went, c0 and c1 are still a usable prefix');
  a.release(other);
  assert.deepEqual(a.acquireCached(names.slice(0, 2)), chain.slice(0, 2));
});

test('allocator without prefix caching: nothing is named, released blocks are free at once', () => {
  const a = new BlockAllocator(3, false);
  const [b] = a.allocate(1)!;
  a.register(b!, 'h');
  a.release([b!]);
  assert.equal(a.cachedPrefix(['h']), 0);
  assert.equal(a.cachedIdleCount, 0);
});

test('scheduler: a prompt that starts with cached blocks takes them and prefills only the rest', () => {
  const s = scheduler(16);
  const prompt = Array.from({ length: 10 }, (_, i) => i + 1);
  const first = seq('a', prompt);
  s.add(first);
  runStep(s);
  const second = seq('b', [...prompt.slice(0, 9), 99]);
  s.add(second);
  const plan = runStep(s);
  const row = plan.rows.find((r) => r.seq === second)!;
  assert.deepEqual([row.start, row.count], [8, 2], 'two full blocks (8 tokens) came from the cache');
  assert.deepEqual(s.kv.blocksOf(second).slice(0, 2), s.kv.blocksOf(first).slice(0, 2), 'the same blocks, shared');
  assert.equal(s.kv.cachedTokens(second), 8);
  assert.deepEqual([s.kv.prefixCacheQueries, s.kv.prefixCacheHits], [20, 8]);
  // An identical prompt still computes its last token (its logits pick the next one).
  const third = seq('c', prompt.slice(0, 8));
  s.add(third);
  assert.deepEqual(runStep(s).rows.filter((r) => r.seq === third).map((r) => [r.start, r.count]), [[4, 4]]);
});

test('scheduler: blocks of a finished or preempted sequence are found again; off, or for prompt logprobs, nothing is looked up', () => {
  const s = scheduler(16);
  const prompt = Array.from({ length: 9 }, (_, i) => i + 1);
  const a = seq('a', prompt);
  s.add(a);
  for (let i = 0; i < 4; i++) runStep(s); // 9 prompt + 3 generated tokens: 3 full blocks named
  s.finish(a);
  assert.equal(s.kv.usedBlocks, 0);
  const again = seq('again', a.tokens);
  s.add(again);
  assert.deepEqual(runStep(s).rows.map((r) => [r.start, r.count]), [[12, 1]], 'prompt and generated blocks both hit (12 of its 13 tokens)');
  const noLookup = seq('echo', prompt, false);
  s.add(noLookup);
  assert.deepEqual(runStep(s).rows.filter((r) => r.seq === noLookup).map((r) => r.start), [0]);

  const off = scheduler(16, false);
  const x = seq('x', prompt);
  off.add(x);
  runStep(off);
  off.finish(x);
  const y = seq('y', prompt);
  off.add(y);
  assert.deepEqual(runStep(off).rows.map((r) => r.start), [0]);
  assert.equal(off.kv.prefixCacheHits, 0);
});

test("scheduler: cached tokens are counted at the first admission only; a preempted prompt's own blocks are not a hit", () => {
  // 5 blocks of 4, 8 tokens a step: a's 12-token prompt fills 2 blocks, then a is paused and b's
  // 16 tokens need 4 blocks, so a is preempted. When a comes back its first block is still cached.
  const s = new Scheduler({ maxNumSeqs: 8, maxNumBatchedTokens: 8, blockSize: BS, admissionReserveTokens: 0 }, new KvCacheManager(new BlockAllocator(6, true), BS));
  const a = seq('a', Array.from({ length: 12 }, (_, i) => i + 1));
  s.add(a);
  runStep(s);
  assert.equal(a.numComputed, 8);
  s.pause('a');
  const b = seq('b', Array.from({ length: 16 }, (_, i) => 100 + i));
  s.add(b);
  runStep(s);
  assert.equal(a.status, 'waiting', 'a was preempted for b');
  runStep(s);
  s.finish(b);
  s.resume('a');
  const plan = runStep(s);
  assert.ok(plan.rows.find((r) => r.seq === a)!.start > 0, "a took its own first block from the cache");
  assert.equal(s.kv.cachedTokens(a), 0, 'its first admission found nothing');
});

// Through the real engine, production defaults ('auto' step cap, ONNX Runtime's default threads).
let withCache: EngineClient;
let withoutCache: EngineClient;
const production = (dir: string, prefixCaching: boolean): EngineOptions => engineOptions(dir, { maxStepMs: 'auto', intraOpThreads: 0, prefixCaching });
const longPrompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);

before(async () => {
  const dir = await tinyModel(1);
  withCache = await InProcessEngine.start(production(dir, true));
  withoutCache = await InProcessEngine.start(production(dir, false));
});
after(async () => {
  await withCache.shutdown();
  await withoutCache.shutdown();
});

const logprobBits = (r: RunResult) => r.choices.map((c) => c.logprobs.map((l) => [l.tokenId, l.logprob, l.top.map((t) => [t.tokenId, t.logprob])]));

test('engine: output with a prefix-cache hit is bit-identical to output without one (greedy, seeded, penalties; logprobs by Object.is)', async () => {
  const shared = longPrompt(150, 1);
  const params: Array<Partial<SamplingParams>> = [
    { maxTokens: 24, logprobs: 3 },
    { maxTokens: 24, logprobs: 3, temperature: 0.9, topP: 0.95, seed: 7, presencePenalty: 0.5, frequencyPenalty: 0.3 },
    { maxTokens: 24, logprobs: 2, temperature: 1, seed: 11, repetitionPenalty: 1.3, n: 2 },
  ];
  for (const [i, p] of params.entries()) {
    const prompt = [...shared, ...longPrompt(20 + i * 7, 100 + i)];
    const cold = await collect(withoutCache, request(prompt, p));
    await collect(withCache, request(shared.concat(prompt.slice(150, 155)), { maxTokens: 1 })); // warms the shared blocks
    const warm = await collect(withCache, request(prompt, p));
    assert.ok(warm.cachedTokens >= 144, `the shared prefix was served from the cache (${warm.cachedTokens} tokens)`);
    assert.equal(cold.cachedTokens, 0);
    assert.deepEqual(warm.choices.map((c) => c.tokens), cold.choices.map((c) => c.tokens));
    assert.deepEqual(logprobBits(warm), logprobBits(cold));
    assert.deepEqual(warm.choices.map((c) => c.cumulativeLogprob), cold.choices.map((c) => c.cumulativeLogprob));
  }
  const stats = await withCache.stats();
  assert.ok(stats.prefixCacheHits > 0 && stats.prefixCacheHits <= stats.prefixCacheQueries);
  assert.equal(stats.kvBlocksUsed, 0, 'idle cached blocks are not counted as used');
});

test('settings: on by default, --no-prefix-caching or GPT2_PREFIX_CACHING=false turns it off, and the engine gets it', () => {
  assert.equal(loadConfig([], {}).prefixCaching, true);
  assert.equal(loadConfig(['--no-prefix-caching'], {}).prefixCaching, false);
  assert.equal(loadConfig([], { GPT2_PREFIX_CACHING: 'false' }).prefixCaching, false);
  assert.equal(serverEngineOptions(loadConfig(['--no-prefix-caching'], {}), '/m').prefixCaching, false);
});

test('HTTP: with --enable-prompt-tokens-details a repeated prompt reports usage.prompt_tokens_details.cached_tokens (whole blocks, never the last token); none without a hit, when off, or without the flag', async (t) => {
  const prompt = Array.from({ length: 40 }, (_, i) => 1000 + i);
  const complete = async (app: TestServer['app']) =>
    (await supertest(app.server).post('/v1/completions').send({ model: MODEL, prompt, max_tokens: 3, temperature: 0 }).expect(200)).body.usage;
  const on = await serveTest(t, { config: { enablePromptTokensDetails: true } });
  assert.deepEqual(await complete(on.app), { prompt_tokens: 40, completion_tokens: 3, total_tokens: 43 });
  assert.deepEqual(await complete(on.app), { prompt_tokens: 40, completion_tokens: 3, total_tokens: 43, prompt_tokens_details: { cached_tokens: 32 } });
  const off = await serveTest(t, { engine: { prefixCaching: false }, config: { enablePromptTokensDetails: true } });
  await complete(off.app);
  assert.deepEqual(await complete(off.app), { prompt_tokens: 40, completion_tokens: 3, total_tokens: 43 });
  // The default (vLLM's too): a hit is not announced, since it tells a client that someone sent
  // that prompt before.
  const quiet = await serveTest(t);
  await complete(quiet.app);
  assert.deepEqual(await complete(quiet.app), { prompt_tokens: 40, completion_tokens: 3, total_tokens: 43 });
  assert.equal(quiet.engine.stats().prefixCacheHits, 32, 'the hit happened all the same');
});

test('blocks named under a cache salt are another chain: same tokens, other names; same salt, same names', () => {
  const tokens = [1, 2, 3, 4];
  const plain = blockHash(null, tokens);
  assert.notEqual(blockHash(null, tokens, ['salt:a']), plain);
  assert.notEqual(blockHash(null, tokens, ['salt:a']), blockHash(null, tokens, ['salt:b']));
  assert.equal(blockHash(null, tokens, ['salt:a']), blockHash(null, tokens, ['salt:a']));
  assert.notEqual(blockHash(null, tokens, ['ab', 'c']), blockHash(null, tokens, ['a', 'bc']), 'keys are length-prefixed');
  assert.equal(blockHash(plain, tokens, ['salt:a']), blockHash(plain, tokens), 'only the first block takes the keys; the rest inherit them through the parent');
});

test('HTTP: cache_salt isolates prefix-cache entries: hits within a salt, none across salts or with no salt; output bit-identical either way', async (t) => {
  const { app, engine } = await serveTest(t, { config: { enablePromptTokensDetails: true } });
  const prompt = Array.from({ length: 40 }, (_, i) => 2000 + i);
  const complete = async (salt: string | undefined) =>
    (
      await supertest(app.server)
        .post('/v1/completions')
        .send({ model: MODEL, prompt, max_tokens: 5, temperature: 0, logprobs: 2, ...(salt === undefined ? {} : { cache_salt: salt }) })
        .expect(200)
    ).body;
  const first = await complete('tenant-a');
  assert.equal(first.usage.prompt_tokens_details, undefined);
  const cached = (b: { usage: { prompt_tokens_details?: { cached_tokens: number } } }) => b.usage.prompt_tokens_details?.cached_tokens ?? 0;
  const same = await complete('tenant-a');
  assert.equal(cached(same), 32, 'same salt: a hit');
  assert.equal(cached(await complete('tenant-b')), 0, 'another salt: no hit');
  assert.equal(cached(await complete(undefined)), 0, 'no salt: no hit on salted blocks');
  assert.equal(cached(await complete(undefined)), 32, 'the unsalted cache works as before');
  // Exactness: a hit or not, the same tokens and logprobs (deepEqual compares numbers with Object.is).
  assert.deepEqual(same.choices, first.choices);
  assert.deepEqual((await complete('tenant-c')).choices, first.choices);
  assert.equal(engine.stats().kvBlocksUsed, 0);
  // Chat and the websocket take it too (the same schema); a bad one is a 400 naming the field.
  const chat = async () =>
    (await supertest(app.server).post('/v1/chat/completions').send({ model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(80) }], max_tokens: 2, cache_salt: 's' }).expect(200)).body;
  await chat();
  assert.ok(cached(await chat()) > 0, 'a chat hit within its salt');
  const bad = await supertest(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'a', cache_salt: '' }).expect(400);
  assert.equal(bad.body.error.param, 'cache_salt');
});

test('HTTP: under memory pressure a prompt seen earlier still hits its first blocks (a chain is evicted tail first)', async (t) => {
  // 4096 tokens of KV (256 blocks of 16): a 900-token prompt, then four of 1,000 tokens that need
  // most of the pool, then the first prompt again.
  const { app } = await serveTest(t, { engine: { kvCacheTokens: 4096 }, config: { enablePromptTokensDetails: true } });
  const ids = (n: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);
  const complete = async (prompt: number[]) =>
    (await supertest(app.server).post('/v1/completions').send({ model: MODEL, prompt, max_tokens: 4, temperature: 0 }).expect(200)).body.usage;
  const first = ids(900, 0);
  await complete(first);
  for (let i = 1; i <= 4; i++) await complete(ids(1000, i));
  const again = await complete(first);
  // The four prompts and their outputs take 4 x 63 of the 256 blocks: the first prompt's 56 full
  // blocks lose all but their head.
  t.diagnostic(`cached_tokens of the repeated prompt: ${again.prompt_tokens_details?.cached_tokens ?? 0}`);
  assert.ok((again.prompt_tokens_details?.cached_tokens ?? 0) >= 3 * 16, JSON.stringify(again));
});

