// POST /v1/completions without streaming, on the real engine (scripted runner, real tokenizer):
// every request field, the response shape, best_of, several prompts, echo, logprobs, admission,
// validation before any work, and cancel-on-disconnect.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import request from 'supertest';
import type { FastifyInstance } from 'fastify';
import { toOpenAILogprobs } from '../src/server/openai/responses.js';
import { DEFAULT_PARAMS } from './helpers/engine-run.js';
import { alternative, scriptedLogprob, scriptedScore, targetAfter } from './helpers/scripted-runner.js';
import { EOS, MODEL, VOCAB, greedy, gpt2Tokenizer, serveTest, spyOn, waitFor, type EngineSetup } from './helpers/serving.js';
import type { ServerConfig } from '../src/config.js';

type T = { after: (fn: () => Promise<unknown>) => void };

async function setup(t: T, setupOpts: EngineSetup = {}, config: Partial<ServerConfig> = {}) {
  const server = await serveTest(t, { ...setupOpts, config });
  return { ...server, spy: spyOn(server.engine) };
}

function post(app: FastifyInstance, body: unknown) {
  return request(app.server).post('/v1/completions').send(body as object);
}

const LP0 = scriptedLogprob(0, VOCAB);

test('a plain request gets the full OpenAI response with defaults (max_tokens 16, n 1)', async (t) => {
  const { spy, app } = await setup(t);
  const res = await post(app, { model: MODEL, prompt: 'Hello' }).expect(200);
  assert.match(res.headers['content-type'], /^application\/json/);
  assert.match(res.body.system_fingerprint, /^fp_[0-9a-f]{10}$/);
  assert.deepEqual(res.body, {
    id: 'cmpl-test',
    object: 'text_completion',
    created: 1_700_000_000,
    model: MODEL,
    system_fingerprint: res.body.system_fingerprint,
    choices: [{ text: res.body.choices[0].text, index: 0, logprobs: null, finish_reason: 'length' }],
    usage: { prompt_tokens: 1, completion_tokens: 16, total_tokens: 17 },
  });
  assert.equal(typeof res.body.choices[0].text, 'string');
  assert.deepEqual(spy.submitted, [
    {
      id: 'cmpl-test-0',
      promptTokens: [15496],
      // The API's defaults are the engine's, but for temperature (1 in OpenAI's API).
      params: { ...DEFAULT_PARAMS, temperature: 1 },
    },
  ]);
});

test('greedy output is the model continuation, detokenized', async (t) => {
  const { app } = await setup(t);
  const res = await post(app, { model: MODEL, prompt: 'Hello world', max_tokens: 12, temperature: 0 }).expect(200);
  const want = await greedy('Hello world', 12);
  assert.deepEqual(want.promptIds, [15496, 995]);
  assert.equal(res.body.choices[0].text, want.text);
});

test('every request field reaches the engine as SamplingParams; user and unknown fields are ignored', async (t) => {
  const { spy, app } = await setup(t);
  await post(app, {
    model: MODEL,
    prompt: 'A',
    max_tokens: 5,
    temperature: 0.7,
    top_p: 0.9,
    n: 2,
    best_of: 3,
    stream: false,
    logprobs: 3,
    echo: true,
    stop: 'zz',
    presence_penalty: 0.5,
    frequency_penalty: -0.5,
    logit_bias: { '50': 10, '7': -100 },
    seed: 42,
    user: 'user-1234',
    top_k: 40,
    min_p: 0.05,
    repetition_penalty: 1.2,
    min_tokens: 2,
    ignore_eos: true,
    stop_token_ids: [3, 4],
    some_future_field: { nested: true },
  }).expect(200);
  assert.deepEqual(spy.submitted[0]!.params, {
    maxTokens: 5,
    minTokens: 2,
    temperature: 0.7,
    topP: 0.9,
    topK: 40,
    minP: 0.05,
    presencePenalty: 0.5,
    frequencyPenalty: -0.5,
    repetitionPenalty: 1.2,
    logitBias: [
      [7, -100],
      [50, 10],
    ],
    seed: 42,
    logprobs: 3,
    echo: true,
    stop: ['zz'],
    stopTokenIds: [3, 4],
    ignoreEos: true,
    n: 3,
    // No structured-output field: free text (those fields: http-structured-output.test.ts).
    constraint: null,
  });
});

test('top_k -1 (vLLM "disabled") becomes 0; stop lists pass through; nulls mean defaults', async (t) => {
  const { spy, app } = await setup(t);
  await post(app, { model: MODEL, prompt: 'A', top_k: -1, stop: ['x', 'yy'], temperature: null, n: null, logprobs: null, echo: null }).expect(200);
  const p = spy.submitted[0]!.params;
  assert.equal(p.topK, 0);
  assert.deepEqual(p.stop, ['x', 'yy']);
  assert.equal(p.temperature, 1);
  assert.equal(p.n, 1);
  assert.equal(p.logprobs, null);
});

test('max_tokens: explicit, 0 (empty text, "length"), and null (fill the context)', async (t) => {
  const { spy, app } = await setup(t);
  const explicit = await post(app, { model: MODEL, prompt: 'A', max_tokens: 3, temperature: 0 }).expect(200);
  assert.equal(explicit.body.choices[0].text, (await greedy('A', 3)).text);
  assert.equal(explicit.body.usage.completion_tokens, 3);

  const zero = await post(app, { model: MODEL, prompt: 'A', max_tokens: 0 }).expect(200);
  assert.deepEqual(zero.body.choices, [{ text: '', index: 0, logprobs: null, finish_reason: 'length' }]);
  assert.deepEqual(zero.body.usage, { prompt_tokens: 1, completion_tokens: 0, total_tokens: 1 });

  await post(app, { model: MODEL, prompt: 'Hello world', max_tokens: null, temperature: 0 }).expect(200);
  assert.equal(spy.submitted[2]!.params.maxTokens, 1024 - 2);
});

test('a missing or empty prompt is generated from <|endoftext|>, as OpenAI documents', async (t) => {
  const { spy, app } = await setup(t);
  await post(app, { model: MODEL, max_tokens: 1 }).expect(200);
  await post(app, { model: MODEL, prompt: '', max_tokens: 1 }).expect(200);
  const echoed = await post(app, { model: MODEL, prompt: '', max_tokens: 0, echo: true }).expect(200);
  assert.deepEqual(spy.submitted[0]!.promptTokens, [EOS]);
  assert.deepEqual(spy.submitted[1]!.promptTokens, [EOS]);
  assert.equal(echoed.body.choices[0].text, '<|endoftext|>');
});

test('prompt shapes: string[], token ids and token-id arrays; choices are prompt-major then n', async (t) => {
  const { spy, app } = await setup(t);
  const res = await post(app, { model: MODEL, prompt: ['A', 'Hello world'], n: 2, max_tokens: 2, temperature: 0 }).expect(200);
  const [a, hw] = [await greedy('A', 2), await greedy('Hello world', 2)];
  assert.deepEqual(
    res.body.choices.map((c: { index: number; text: string }) => [c.index, c.text]),
    [
      [0, a.text],
      [1, a.text],
      [2, hw.text],
      [3, hw.text],
    ],
  );
  assert.deepEqual(res.body.usage, { prompt_tokens: 3, completion_tokens: 8, total_tokens: 11 });
  assert.deepEqual(
    spy.submitted.map((r) => [r.id, r.promptTokens, r.params.n]),
    [
      ['cmpl-test-0', a.promptIds, 2],
      ['cmpl-test-1', hw.promptIds, 2],
    ],
  );

  const ids = await post(app, { model: MODEL, prompt: [72, 105], max_tokens: 1 }).expect(200);
  assert.deepEqual(spy.submitted[2]!.promptTokens, [72, 105]);
  assert.equal(ids.body.usage.prompt_tokens, 2);

  const nested = await post(app, { model: MODEL, prompt: [[72], [72, 105, 33]], max_tokens: 1, temperature: 0 }).expect(200);
  assert.deepEqual(spy.submitted[3]!.promptTokens, [72]);
  assert.deepEqual(spy.submitted[4]!.promptTokens, [72, 105, 33]);
  assert.deepEqual(
    nested.body.choices.map((c: { text: string }) => c.text),
    [(await greedy([72], 1)).text, (await greedy([72, 105, 33], 1)).text],
  );
});

test('best_of generates best_of choices and returns the n with the best cumulative logprob, best first', async (t) => {
  const { spy, app } = await setup(t);
  const body = { model: MODEL, prompt: 'Once upon', max_tokens: 6, temperature: 1.5, seed: 11 };
  // The same seed gives the same candidates: score all five, then ask for the best two of five.
  const all = await post(app, { ...body, n: 5, logprobs: 0 }).expect(200);
  const scored = all.body.choices.map((c: { text: string; logprobs: { token_logprobs: number[] } }) => ({
    text: c.text,
    score: c.logprobs.token_logprobs.reduce((s, x) => s + x, 0),
  }));
  const best = await post(app, { ...body, n: 2, best_of: 5 }).expect(200);
  assert.equal(spy.submitted[1]!.params.n, 5);
  const ranked = [...scored].sort((x, y) => y.score - x.score);
  assert.ok(new Set(scored.map((s: { text: string }) => s.text)).size > 1, 'the candidates differ');
  assert.deepEqual(
    best.body.choices.map((c: { index: number; text: string }) => [c.index, c.text]),
    [
      [0, ranked[0]!.text],
      [1, ranked[1]!.text],
    ],
  );
  // All generated tokens count, as OpenAI bills best_of.
  assert.deepEqual(best.body.usage, { prompt_tokens: 2, completion_tokens: 30, total_tokens: 32 });
});

test('logprobs: tokens, token_logprobs, top_logprobs (alternatives + the chosen token) and text_offset', async (t) => {
  const { app } = await setup(t);
  const tok = await gpt2Tokenizer();
  const res = await post(app, { model: MODEL, prompt: 'Hello world', max_tokens: 3, logprobs: 2, temperature: 0 }).expect(200);
  const { ids, promptIds } = await greedy('Hello world', 3);
  const lp = res.body.choices[0].logprobs;
  assert.deepEqual(lp.tokens, ids.map((id) => tok.tokenText(id)));
  for (const x of lp.token_logprobs) assert.ok(Math.abs(x - LP0) < 1e-4);
  let offset = 0;
  ids.forEach((id, i) => {
    const top = lp.top_logprobs[i];
    const second = tok.tokenText(alternative(targetAfter([...promptIds, ...ids.slice(0, i)], VOCAB), 1, VOCAB));
    assert.deepEqual(Object.keys(top).sort(), [tok.tokenText(id), second].sort());
    assert.ok(Math.abs(top[second] - scriptedLogprob(1, VOCAB)) < 1e-4);
    assert.equal(lp.text_offset[i], offset);
    offset += [...tok.tokenText(id)].length;
  });
  const zero = await post(app, { model: MODEL, prompt: 'Hello world', max_tokens: 2, logprobs: 0, temperature: 0 }).expect(200);
  assert.deepEqual(
    zero.body.choices[0].logprobs.top_logprobs.map((o: Record<string, number>) => Object.keys(o)),
    ids.slice(0, 2).map((id) => [tok.tokenText(id)]),
  );
});

test('echo prepends the prompt; with logprobs the prompt tokens come first (first one null) and offsets run on', async (t) => {
  const { app } = await setup(t);
  const tok = await gpt2Tokenizer();
  const { ids, text, promptIds } = await greedy('Hello world', 2);
  const plain = await post(app, { model: MODEL, prompt: 'Hello world', max_tokens: 2, echo: true, temperature: 0 }).expect(200);
  assert.equal(plain.body.choices[0].text, 'Hello world' + text);

  const res = await post(app, { model: MODEL, prompt: 'Hello world', max_tokens: 2, echo: true, logprobs: 0, temperature: 0 }).expect(200);
  const choice = res.body.choices[0];
  assert.equal(choice.text, 'Hello world' + text);
  assert.deepEqual(choice.logprobs.tokens, [...promptIds, ...ids].map((id) => tok.tokenText(id)));
  assert.equal(choice.logprobs.token_logprobs[0], null);
  assert.equal(choice.logprobs.top_logprobs[0], null);
  assert.ok(Math.abs(choice.logprobs.token_logprobs[1] - scriptedScore([15496], 995, VOCAB)) < 1e-4);
  assert.deepEqual(choice.logprobs.text_offset, [0, 5, 11, 11 + [...tok.tokenText(ids[0]!)].length]);
});

test('echo with max_tokens 0 scores the prompt (engine asked for 0 tokens) or just echoes it', async (t) => {
  const { spy, app } = await setup(t);
  const scored = await post(app, { model: MODEL, prompt: 'Hello world', max_tokens: 0, echo: true, logprobs: 0 }).expect(200);
  assert.equal(spy.submitted[0]!.params.maxTokens, 0);
  const lp = scored.body.choices[0].logprobs;
  assert.equal(scored.body.choices[0].text, 'Hello world');
  assert.deepEqual(lp.tokens, ['Hello', ' world']);
  assert.equal(lp.token_logprobs[0], null);
  assert.ok(Math.abs(lp.token_logprobs[1] - scriptedScore([15496], 995, VOCAB)) < 1e-4);
  assert.equal(scored.body.choices[0].finish_reason, 'length');
  const echoed = await post(app, { model: MODEL, prompt: [15496, 995], max_tokens: 0, echo: true }).expect(200);
  assert.equal(echoed.body.choices[0].text, 'Hello world', 'token-id prompts are echoed as text');
});

test('stop strings end with "stop"; held-back text that was no stop is flushed at the finish', async (t) => {
  const { app } = await setup(t);
  const tok = await gpt2Tokenizer();
  const { ids } = await greedy('Hello world', 10);
  const before = tok.decode(ids.slice(0, 3));
  const stopText = tok.tokenText(ids[3]!);
  const stopped = await post(app, { model: MODEL, prompt: 'Hello world', stop: [stopText], max_tokens: 10, temperature: 0 }).expect(200);
  assert.equal(stopped.body.choices[0].text, before);
  assert.equal(stopped.body.choices[0].finish_reason, 'stop');
  const full = tok.decode(ids.slice(0, 3));
  const flushed = await post(app, { model: MODEL, prompt: 'Hello world', stop: full.slice(-2) + '\u0001', max_tokens: 3, temperature: 0 }).expect(200);
  assert.equal(flushed.body.choices[0].text, full, 'text held back as a possible stop is flushed');
  assert.equal(flushed.body.choices[0].finish_reason, 'length');
  const tokenStop = await post(app, { model: MODEL, prompt: 'Hello world', stop_token_ids: [ids[2]!], max_tokens: 10, temperature: 0 }).expect(200);
  assert.equal(tokenStop.body.choices[0].text, tok.decode(ids.slice(0, 2)));
  assert.equal(tokenStop.body.choices[0].finish_reason, 'stop');
});

test('a finish on EOS or a stop token id flushes the text held back as a possible stop string', async (t) => {
  const { app } = await setup(t);
  const tok = await gpt2Tokenizer();
  const { ids } = await greedy('Hello world', 3);
  const want = tok.decode(ids.slice(0, 2));
  // The second token's text could begin this stop string, so it is held back until the finish.
  const stop = [tok.tokenText(ids[1]!) + '\u0001'];
  const base = { model: MODEL, prompt: 'Hello world', stop, max_tokens: 10, temperature: 0 };
  const byId = await post(app, { ...base, stop_token_ids: [ids[2]!] }).expect(200);
  assert.deepEqual([byId.body.choices[0].text, byId.body.choices[0].finish_reason], [want, 'stop']);
  // EOS is forced as the third token: min_tokens holds it off for two.
  const byEos = await post(app, { ...base, logit_bias: { [EOS]: 100 }, min_tokens: 2 }).expect(200);
  assert.deepEqual([byEos.body.choices[0].text, byEos.body.choices[0].finish_reason, byEos.body.usage.completion_tokens], [want, 'stop', 3]);
  // Streamed, the held-back text arrives in the finishing chunk.
  const streamed = await post(app, { ...base, stop_token_ids: [ids[2]!], stream: true }).expect(200);
  const texts = streamed.text.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)).choices[0].text as string);
  assert.equal(texts.join(''), want);
});

test('EOS ends a completion unless ignore_eos; min_tokens holds it off', async (t) => {
  const { app } = await setup(t);
  const eosFirst = { model: MODEL, prompt: 'A', max_tokens: 5, temperature: 0, logit_bias: { [EOS]: 100 } };
  const eos = await post(app, eosFirst).expect(200);
  assert.deepEqual([eos.body.choices[0].text, eos.body.choices[0].finish_reason, eos.body.usage.completion_tokens], ['', 'stop', 1]);
  const ignored = await post(app, { ...eosFirst, ignore_eos: true }).expect(200);
  assert.deepEqual([ignored.body.choices[0].finish_reason, ignored.body.usage.completion_tokens], ['length', 5]);
  const minTokens = await post(app, { ...eosFirst, min_tokens: 3 }).expect(200);
  assert.deepEqual([minTokens.body.choices[0].finish_reason, minTokens.body.usage.completion_tokens], ['stop', 4]);
});

// Each row: body overrides, expected status, code, param, and a fragment the message must contain.
const INVALID: Array<[string, Record<string, unknown>, number, string, string | null, string]> = [
  ['temperature too high', { temperature: 2.5 }, 400, 'invalid_value', 'temperature', '`temperature`: must be <= 2'],
  ['temperature negative', { temperature: -0.1 }, 400, 'invalid_value', 'temperature', '`temperature`: must be >= 0'],
  ['top_p zero', { top_p: 0 }, 400, 'invalid_value', 'top_p', '`top_p`: must be > 0'],
  ['top_p above 1', { top_p: 1.5 }, 400, 'invalid_value', 'top_p', '`top_p`: must be <= 1'],
  ['n zero', { n: 0 }, 400, 'invalid_value', 'n', '`n`: must be >= 1'],
  ['n too large', { n: 129 }, 400, 'invalid_value', 'n', '`n`: must be <= 128'],
  ['n fractional', { n: 1.5 }, 400, 'invalid_value', 'n', '`n`: must be an integer'],
  ['best_of below n', { n: 3, best_of: 2 }, 400, 'invalid_value', 'best_of', '`best_of`: must be >= `n` (3)'],
  ['best_of with stream', { best_of: 2, stream: true }, 400, 'unsupported_parameter', 'best_of', '`best_of`: cannot be streamed'],
  ['logprobs above 20', { logprobs: 21 }, 400, 'invalid_value', 'logprobs', '`logprobs`: must be <= 20'],
  ['logprobs negative', { logprobs: -1 }, 400, 'invalid_value', 'logprobs', '`logprobs`: must be >= 0'],
  ['presence_penalty', { presence_penalty: 2.5 }, 400, 'invalid_value', 'presence_penalty', '`presence_penalty`: must be <= 2'],
  ['frequency_penalty', { frequency_penalty: -3 }, 400, 'invalid_value', 'frequency_penalty', '`frequency_penalty`: must be >= -2'],
  ['logit_bias key', { logit_bias: { abc: 1 } }, 400, 'invalid_value', 'logit_bias.abc', 'keys must be token ids'],
  ['logit_bias value', { logit_bias: { '5': 101 } }, 400, 'invalid_value', 'logit_bias.5', '`logit_bias.5`: must be <= 100'],
  ['logit_bias vocab', { logit_bias: { '70000': 1 } }, 400, 'invalid_value', 'logit_bias', 'token id 70000 is out of range (vocabulary size 50257)'],
  ['max_tokens negative', { max_tokens: -1 }, 400, 'invalid_value', 'max_tokens', '`max_tokens`: must be >= 0'],
  ['max_tokens type', { max_tokens: 'ten' }, 400, 'invalid_value', 'max_tokens', '`max_tokens`: expected number, got string'],
  ['stop count', { stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'invalid_value', 'stop', '`stop`: must have at most 4 items'],
  ['stop empty', { stop: [''] }, 400, 'invalid_value', 'stop[0]', '`stop[0]`: must not be empty'],
  ['stop type', { stop: 5 }, 400, 'invalid_value', 'stop', '`stop`: expected array'],
  ['prompt object', { prompt: {} }, 400, 'invalid_value', 'prompt', '`prompt`: must be a string, an array of strings'],
  ['prompt empty array', { prompt: [] }, 400, 'invalid_value', 'prompt', '`prompt`: must be a string'],
  ['prompt empty token list', { prompt: [[1], []] }, 400, 'invalid_value', 'prompt[1]', '`prompt[1]`: must have at least 1 item'],
  ['prompt mixed', { prompt: [1, 'a'] }, 400, 'invalid_value', 'prompt', '`prompt`: must be a string'],
  ['prompt token id', { prompt: [70000] }, 400, 'invalid_value', 'prompt', '`prompt[0]`: token id 70000 is out of range'],
  ['prompt nested token id', { prompt: [[1], [-1]] }, 400, 'invalid_value', 'prompt', '`prompt[1][0]`: token id -1 is out of range'],
  ['too many prompts', { prompt: Array.from({ length: 5000 }, () => 'hi') }, 400, 'invalid_value', 'prompt', '5000 prompts in one request; at most 64'],
  ['too many token-id prompts', { prompt: Array.from({ length: 65 }, () => [1]) }, 400, 'invalid_value', 'prompt', '65 prompts in one request'],
  ['stream type', { stream: 'yes' }, 400, 'invalid_value', 'stream', '`stream`: expected boolean, got string'],
  ['stream_options without stream', { stream_options: { include_usage: true } }, 400, 'invalid_value', 'stream_options', 'only allowed when `stream` is true'],
  ['echo type', { echo: 1 }, 400, 'invalid_value', 'echo', '`echo`: expected boolean, got number'],
  ['seed fractional', { seed: 1.5 }, 400, 'invalid_value', 'seed', '`seed`: must be an integer'],
  ['user type', { user: 7 }, 400, 'invalid_value', 'user', '`user`: expected string'],
  ['top_k', { top_k: -2 }, 400, 'invalid_value', 'top_k', '`top_k`: must be >= -1'],
  ['min_p', { min_p: 1.5 }, 400, 'invalid_value', 'min_p', '`min_p`: must be <= 1'],
  ['repetition_penalty', { repetition_penalty: 0 }, 400, 'invalid_value', 'repetition_penalty', '`repetition_penalty`: must be > 0'],
  ['min_tokens negative', { min_tokens: -1 }, 400, 'invalid_value', 'min_tokens', '`min_tokens`: must be >= 0'],
  ['min_tokens above max_tokens', { min_tokens: 20, max_tokens: 10 }, 400, 'invalid_value', 'min_tokens', '`min_tokens`: must be <= `max_tokens` (10)'],
  ['min_tokens above default max_tokens', { min_tokens: 20 }, 400, 'invalid_value', 'min_tokens', '`min_tokens`: must be <= `max_tokens` (16)'],
  ['ignore_eos type', { ignore_eos: 'x' }, 400, 'invalid_value', 'ignore_eos', '`ignore_eos`: expected boolean'],
  ['stop_token_ids negative', { stop_token_ids: [-1] }, 400, 'invalid_value', 'stop_token_ids[0]', '`stop_token_ids[0]`: must be >= 0'],
  ['stop_token_ids vocab', { stop_token_ids: [70000] }, 400, 'invalid_value', 'stop_token_ids', '`stop_token_ids[0]`: token id 70000 is out of range'],
  ['suffix', { suffix: 'tail' }, 400, 'unsupported_parameter', 'suffix', '`suffix`: is not supported'],
  ['model missing', { model: undefined }, 400, 'missing_required_parameter', 'model', '`model`: is required'],
  ['model unknown', { model: 'gpt-4' }, 404, 'model_not_found', 'model', 'The model `gpt-4` does not exist'],
];

test('invalid requests: OpenAI error shape, right status, the field named, nothing reaches the engine', async (t) => {
  const { spy, app } = await setup(t);
  for (const [name, override, status, code, param, fragment] of INVALID) {
    const res = await post(app, { model: MODEL, prompt: 'A', ...override });
    assert.equal(res.status, status, name);
    assert.match(res.headers['content-type'], /^application\/json/);
    assert.deepEqual(Object.keys(res.body), ['error']);
    assert.deepEqual(Object.keys(res.body.error), ['message', 'type', 'param', 'code']);
    assert.equal(res.body.error.type, 'invalid_request_error', name);
    assert.equal(res.body.error.code, code, name);
    assert.equal(res.body.error.param, param, name);
    assert.ok(res.body.error.message.includes(fragment), `${name}: message ${JSON.stringify(res.body.error.message)} lacks ${fragment}`);
  }
  assert.equal(spy.submitted.length, 0, 'nothing reaches the engine');
  assert.equal(spy.encoded.length, 0, 'nothing is even tokenized');
});

test('malformed bodies: bad JSON, empty body and non-objects are 400 in the OpenAI shape', async (t) => {
  const { app } = await setup(t);
  const bad = await request(app.server).post('/v1/completions').set('content-type', 'application/json').send('{bad').expect(400);
  assert.equal(bad.body.error.code, 'invalid_json');
  const empty = await request(app.server).post('/v1/completions').set('content-type', 'application/json').send('').expect(400);
  assert.equal(empty.body.error.code, 'invalid_json');
  const arr = await request(app.server).post('/v1/completions').send([1, 2]).expect(400);
  assert.equal(arr.body.error.message, 'request body: expected object, got array');
  const form = await request(app.server).post('/v1/completions').type('form').send('a=b').expect(415);
  assert.equal(form.body.error.code, 'unsupported_media_type');
});

test('context length: a 400 that states both lengths; a text that cannot fit is refused without tokenizing it', async (t) => {
  const { spy, app } = await setup(t);
  const res = await post(app, { model: MODEL, prompt: Array(1010).fill(11) }).expect(400);
  assert.equal(res.body.error.code, 'context_length_exceeded');
  assert.equal(res.body.error.param, 'prompt');
  assert.equal(
    res.body.error.message,
    "This model's maximum context length is 1024 tokens. However, you requested 1026 tokens (1010 in the prompt, 16 for the completion). Please reduce the prompt or max_tokens.",
  );
  const nullMax = await post(app, { model: MODEL, prompt: Array(1030).fill(11), max_tokens: null }).expect(400);
  assert.match(nullMax.body.error.message, /maximum context length is 1024 tokens.*your prompt has 1030 tokens/);
  const second = await post(app, { model: MODEL, prompt: [[65], Array(10).fill(11)], max_tokens: 1020 }).expect(400);
  assert.match(second.body.error.message, /^prompt\[1\]: .*1030 tokens \(10 in the prompt, 1020 for the completion\)/);
  // 128 bytes is GPT-2's longest token: this text has at least 1025 tokens, whatever it says.
  const huge = await post(app, { model: MODEL, prompt: 'x'.repeat(1024 * 128 + 1) }).expect(400);
  assert.match(huge.body.error.message, /you requested at least 1041 tokens \(at least 1025 in the prompt, 16 for the completion\)/);
  assert.equal(spy.encoded.length, 0, 'refused before tokenizing');
  // After tokenizing: a text under the bound that still has too many tokens.
  const words = await post(app, { model: MODEL, prompt: ' hello'.repeat(1020) }).expect(400);
  assert.match(words.body.error.message, /you requested 1036 tokens \(1020 in the prompt, 16 for the completion\)/);
  // Exactly at the limit is fine.
  await post(app, { model: MODEL, prompt: Array(1008).fill(11), max_tokens: 16 }).expect(200);
  assert.equal(spy.submitted.length, 1);
});

test('the KV cache bounds a sequence too: a request that could never fit it is a 400', async (t) => {
  const { app } = await setup(t, { engine: { kvCacheTokens: 256, blockSize: 16 } });
  const res = await post(app, { model: MODEL, prompt: Array(250).fill(11), max_tokens: 10 }).expect(400);
  assert.match(res.body.error.message, /maximum sequence length \(KV cache capacity\) is 256 tokens/);
  await post(app, { model: MODEL, prompt: Array(240).fill(11), max_tokens: 16 }).expect(200);
});

test('admission: past --max-concurrent-requests a request is a 429 with Retry-After before any work', async (t) => {
  const { spy, app } = await setup(t, { runner: { stepDelayMs: 5 } }, { maxConcurrentRequests: 2 });
  // Each step sleeps 5 ms, so these hold their slots for at least a second, whatever the machine.
  const slow = [post(app, { model: MODEL, prompt: 'a', max_tokens: 200 }), post(app, { model: MODEL, prompt: 'b', max_tokens: 200 })];
  const inflight = slow.map((r) => r.then((x) => x));
  await waitFor(() => spy.submitted.length === 2, 30_000, 'two requests in flight');
  const busy = await post(app, { model: MODEL, prompt: 'c' }).expect(429);
  assert.equal(busy.headers['retry-after'], '1');
  assert.deepEqual(busy.body.error, {
    message: 'The server is overloaded: 2 requests are in flight (--max-concurrent-requests). Retry shortly',
    type: 'rate_limit_error',
    param: null,
    code: 'overloaded',
  });
  assert.deepEqual(spy.encoded, ['a', 'b'], 'the refused request was not even tokenized');
  for (const r of await Promise.all(inflight)) assert.equal(r.status, 200);
  await post(app, { model: MODEL, prompt: 'c', max_tokens: 1 }).expect(200);
});

test('fan-out: a request whose prompts x max(n, best_of) sequences no admission could take is a 400 naming the field and the limit', async (t) => {
  const { spy, app } = await setup(t, { engine: { maxNumSeqs: 4 } }, { maxSeqsInFlight: 8 });
  const refused = async (body: Record<string, unknown>, param: string, message: string) => {
    const res = await post(app, { model: MODEL, prompt: 'a', ...body }).expect(400);
    assert.deepEqual(res.body.error, { message, type: 'invalid_request_error', param, code: 'invalid_value' });
  };
  await refused({ n: 5 }, 'n', "`n`: 5 choices of one prompt; at most 4 are allowed, since a prompt's choices run in one batch (--max-num-seqs)");
  await refused({ n: 2, best_of: 6 }, 'best_of', "`best_of`: 6 choices of one prompt; at most 4 are allowed, since a prompt's choices run in one batch (--max-num-seqs)");
  await refused({ prompt: ['a', 'b', 'c'], n: 3 }, 'n', '`n`: 3 prompts x 3 choices = 9 sequences in one request; at most 8 are allowed (--max-seqs-in-flight)');
  await refused({ prompt: [[1], [2], [3], [4], [5], [6], [7], [8], [9]] }, 'prompt', '`prompt`: 9 prompts x 1 choice = 9 sequences in one request; at most 8 are allowed (--max-seqs-in-flight)');
  assert.equal(spy.submitted.length + spy.encoded.length, 0, 'nothing was tokenized or reached the engine');
  const fits = await post(app, { model: MODEL, prompt: ['a', 'b'], n: 2, best_of: 4, max_tokens: 2 }).expect(200);
  assert.equal(fits.body.choices.length, 4);
});

test('admission counts sequences: past --max-seqs-in-flight a request is a 429 before any work; its sequences are freed with its response', async (t) => {
  const { spy, app } = await setup(t, { runner: { stepDelayMs: 5 } }, { maxSeqsInFlight: 4 });
  const slow = post(app, { model: MODEL, prompt: 'a', n: 3, max_tokens: 200 }).then((x) => x); // >= 1 s of 5 ms steps
  await waitFor(() => spy.submitted.length === 1, 30_000, 'three sequences in flight');
  const busy = await post(app, { model: MODEL, prompt: 'b', n: 2 }).expect(429);
  assert.equal(busy.headers['retry-after'], '1');
  assert.equal(busy.body.error.message, 'The server is overloaded: 3 sequences are in flight and this request brings 2 (--max-seqs-in-flight 4). Retry shortly');
  assert.deepEqual(spy.encoded, ['a'], 'the refused request was not even tokenized');
  await post(app, { model: MODEL, prompt: 'c', max_tokens: 1 }).expect(200);
  assert.equal((await slow).status, 200);
  await post(app, { model: MODEL, prompt: 'b', n: 4, max_tokens: 1 }).expect(200);
});

test('a failing prompt fails the request and cancels the other prompts in the engine', async (t) => {
  // One running sequence at a time: prompt 0 runs (and its second step fails) while prompt 1 waits.
  const { spy, app, engine } = await setup(t, { runner: { failRuns: [1] }, engine: { maxNumSeqs: 1 } });
  const res = await post(app, { model: MODEL, prompt: ['a', 'b'], max_tokens: 20 }).expect(500);
  assert.equal(res.body.error.code, 'internal_error');
  await waitFor(() => spy.cancelled.includes('cmpl-test-1'), 30_000, 'cancel of prompt 1');
  await waitFor(() => engine.stats().running === 0 && engine.stats().waiting === 0, 30_000, 'an idle engine');
});

test('a client that disconnects cancels its request in the engine at once', async (t) => {
  const { spy, app, engine } = await setup(t, { runner: { stepDelayMs: 10 } });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' } });
  req.on('error', () => {});
  req.end(JSON.stringify({ model: MODEL, prompt: 'A', max_tokens: 200 }));
  const delivered = () => spy.delivered.get('cmpl-test-0')?.length ?? 0;
  await waitFor(() => delivered() >= 4, 30_000, 'generation to start');
  req.destroy();
  await waitFor(() => spy.cancelled.includes('cmpl-test-0'), 30_000, 'engine cancel');
  await waitFor(() => engine.stats().running === 0, 30_000, 'engine idle');
  assert.ok(delivered() < 100, 'generation stopped early');
  assert.equal(engine.stats().kvBlocksUsed, 0);
});

test('text_offset counts Unicode code points, as OpenAI and vLLM do', () => {
  const { logprobs, offset } = toOpenAILogprobs(
    [
      { token: '😀', tokenId: 1, logprob: -1, top: [] },
      { token: 'é', tokenId: 2, logprob: -2, top: [{ token: 'e', tokenId: 3, logprob: -0.5 }] },
      { token: '!', tokenId: 4, logprob: -3, top: [] },
    ],
    5,
  );
  assert.deepEqual(logprobs.text_offset, [5, 6, 7]);
  assert.equal(offset, 8);
  assert.deepEqual(logprobs.top_logprobs, [{ '😀': -1 }, { e: -0.5, é: -2 }, { '!': -3 }]);
});
