// POST /v1/completions without streaming: every request field, the response shape, best_of,
// several prompts, echo, logprobs, errors and their statuses, and cancel-on-disconnect.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import request from 'supertest';
import type { FastifyInstance } from 'fastify';
import { toOpenAILogprobs } from '../src/server/openai/responses.js';
import { FakeEngine, fakeText, makeApp, waitFor, type FakeEngineOptions } from './helpers/fake-engine.js';
import type { ServerConfig } from '../src/config.js';

const MODEL = 'fake-gpt2';

async function setup(t: { after: (fn: () => Promise<unknown>) => void }, options: FakeEngineOptions = {}, config: Partial<ServerConfig> = {}) {
  const engine = new FakeEngine(options);
  const app = makeApp(engine, config);
  await app.ready();
  t.after(() => app.close());
  return { engine, app };
}

function post(app: FastifyInstance, body: unknown) {
  return request(app.server).post('/v1/completions').send(body as object);
}

test('a plain request gets the full OpenAI response with defaults (max_tokens 16, n 1)', async (t) => {
  const { engine, app } = await setup(t);
  const res = await post(app, { model: MODEL, prompt: 'A' }).expect(200);
  assert.match(res.headers['content-type'], /^application\/json/);
  assert.match(res.body.system_fingerprint, /^fp_[0-9a-f]{10}$/);
  assert.deepEqual(res.body, {
    id: 'cmpl-test',
    object: 'text_completion',
    created: 1_700_000_000,
    model: MODEL,
    system_fingerprint: res.body.system_fingerprint,
    choices: [{ text: 'abcdefghijklmnop', index: 0, logprobs: null, finish_reason: 'length' }],
    usage: { prompt_tokens: 1, completion_tokens: 16, total_tokens: 17 },
  });
  assert.equal(engine.submitted.length, 1);
  assert.deepEqual(engine.submitted[0], {
    id: 'cmpl-test-0',
    promptTokens: [65],
    params: {
      maxTokens: 16,
      minTokens: 0,
      temperature: 1,
      topP: 1,
      topK: 0,
      minP: 0,
      presencePenalty: 0,
      frequencyPenalty: 0,
      repetitionPenalty: 1,
      logitBias: [],
      seed: null,
      logprobs: null,
      echo: false,
      stop: [],
      stopTokenIds: [],
      ignoreEos: false,
      n: 1,
    },
  });
});

test('every request field reaches the engine as SamplingParams; user and unknown fields are ignored', async (t) => {
  const { engine, app } = await setup(t);
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
  assert.deepEqual(engine.submitted[0]!.params, {
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
  });
});

test('top_k -1 (vLLM "disabled") becomes 0; stop lists pass through; nulls mean defaults', async (t) => {
  const { engine, app } = await setup(t);
  await post(app, {
    model: MODEL,
    prompt: 'A',
    top_k: -1,
    stop: ['x', 'yy'],
    temperature: null,
    n: null,
    logprobs: null,
    echo: null,
  }).expect(200);
  const p = engine.submitted[0]!.params;
  assert.equal(p.topK, 0);
  assert.deepEqual(p.stop, ['x', 'yy']);
  assert.equal(p.temperature, 1);
  assert.equal(p.n, 1);
  assert.equal(p.logprobs, null);
});

test('max_tokens: explicit, 0 (no engine call, empty text, "length"), and null (fill the context)', async (t) => {
  const { engine, app } = await setup(t);
  const explicit = await post(app, { model: MODEL, prompt: 'A', max_tokens: 3 }).expect(200);
  assert.equal(explicit.body.choices[0].text, 'abc');
  assert.equal(explicit.body.usage.completion_tokens, 3);

  const zero = await post(app, { model: MODEL, prompt: 'A', max_tokens: 0 }).expect(200);
  assert.deepEqual(zero.body.choices, [{ text: '', index: 0, logprobs: null, finish_reason: 'length' }]);
  assert.deepEqual(zero.body.usage, { prompt_tokens: 1, completion_tokens: 0, total_tokens: 1 });
  assert.equal(engine.submitted.length, 1, 'max_tokens 0 without echo+logprobs needs no engine');

  await post(app, { model: MODEL, prompt: 'Hello', max_tokens: null }).expect(200);
  assert.equal(engine.submitted[1]!.params.maxTokens, 64 - 5);
});

test('a missing or empty prompt is generated from <|endoftext|>, as OpenAI documents', async (t) => {
  const { engine, app } = await setup(t);
  await post(app, { model: MODEL, max_tokens: 1 }).expect(200);
  await post(app, { model: MODEL, prompt: '', max_tokens: 1 }).expect(200);
  assert.deepEqual(engine.submitted[0]!.promptTokens, [0]);
  assert.deepEqual(engine.submitted[1]!.promptTokens, [0]);
});

test('prompt shapes: string[], token ids and token-id arrays; choices are prompt-major then n', async (t) => {
  const { engine, app } = await setup(t);
  const res = await post(app, { model: MODEL, prompt: ['A', 'BBB'], n: 2, max_tokens: 2 }).expect(200);
  assert.deepEqual(
    res.body.choices.map((c: { index: number; text: string }) => [c.index, c.text]),
    [
      [0, fakeText(1, 0, 2)],
      [1, fakeText(1, 1, 2)],
      [2, fakeText(3, 0, 2)],
      [3, fakeText(3, 1, 2)],
    ],
  );
  assert.deepEqual(res.body.usage, { prompt_tokens: 4, completion_tokens: 8, total_tokens: 12 });
  assert.deepEqual(
    engine.submitted.map((r) => [r.id, r.promptTokens, r.params.n]),
    [
      ['cmpl-test-0', [65], 2],
      ['cmpl-test-1', [66, 66, 66], 2],
    ],
  );

  const ids = await post(app, { model: MODEL, prompt: [72, 105], max_tokens: 1 }).expect(200);
  assert.deepEqual(engine.submitted[2]!.promptTokens, [72, 105]);
  assert.equal(ids.body.usage.prompt_tokens, 2);

  const nested = await post(app, { model: MODEL, prompt: [[72], [72, 105, 33]], max_tokens: 1 }).expect(200);
  assert.deepEqual(engine.submitted[3]!.promptTokens, [72]);
  assert.deepEqual(engine.submitted[4]!.promptTokens, [72, 105, 33]);
  assert.deepEqual(
    nested.body.choices.map((c: { text: string }) => c.text),
    [fakeText(1, 0, 1), fakeText(3, 0, 1)],
  );
});

test('best_of generates best_of choices and returns the n with the best cumulative logprob, best first', async (t) => {
  // Default fake logprobs rank choices 0 > 3 > 1 > 4 > 2.
  const { engine, app } = await setup(t);
  const res = await post(app, { model: MODEL, prompt: ['A', 'BB'], n: 2, best_of: 5, max_tokens: 3 }).expect(200);
  assert.equal(engine.submitted[0]!.params.n, 5);
  assert.deepEqual(
    res.body.choices.map((c: { index: number; text: string }) => [c.index, c.text]),
    [
      [0, fakeText(1, 0, 3)],
      [1, fakeText(1, 3, 3)],
      [2, fakeText(2, 0, 3)],
      [3, fakeText(2, 3, 3)],
    ],
  );
  // All generated tokens count, as OpenAI bills best_of.
  assert.deepEqual(res.body.usage, { prompt_tokens: 3, completion_tokens: 30, total_tokens: 33 });

  // Reversed ranking: the last candidates win.
  const { app: app2 } = await setup(t, { logprobOf: (choice) => choice * 0.1 - 1 });
  const res2 = await post(app2, { model: MODEL, prompt: 'A', n: 1, best_of: 4, max_tokens: 2 }).expect(200);
  assert.deepEqual(res2.body.choices, [{ text: fakeText(1, 3, 2), index: 0, logprobs: null, finish_reason: 'length' }]);
});

test('logprobs: tokens, token_logprobs, top_logprobs (alternatives + the chosen token) and text_offset', async (t) => {
  const { app } = await setup(t);
  const res = await post(app, { model: MODEL, prompt: 'A', max_tokens: 3, logprobs: 2 }).expect(200);
  assert.deepEqual(res.body.choices[0].logprobs, {
    tokens: ['a', 'b', 'c'],
    token_logprobs: [-0.1, -0.1, -0.1],
    top_logprobs: [
      { a: -0.1, o: -1.1 },
      { b: -0.1, p: -1.1 },
      { c: -0.1, q: -1.1 },
    ],
    text_offset: [0, 1, 2],
  });
  const zero = await post(app, { model: MODEL, prompt: 'A', max_tokens: 2, logprobs: 0 }).expect(200);
  assert.deepEqual(zero.body.choices[0].logprobs.top_logprobs, [{ a: -0.1 }, { b: -0.1 }]);
});

test('echo prepends the prompt; with logprobs the prompt tokens come first (first one null) and offsets run on', async (t) => {
  const { app } = await setup(t);
  const plain = await post(app, { model: MODEL, prompt: 'Hi', max_tokens: 2, echo: true }).expect(200);
  assert.equal(plain.body.choices[0].text, 'Hi' + fakeText(2, 0, 2));

  const res = await post(app, { model: MODEL, prompt: 'Hi', max_tokens: 2, echo: true, logprobs: 1 }).expect(200);
  assert.deepEqual(res.body.choices[0], {
    text: 'Hibc',
    index: 0,
    logprobs: {
      tokens: ['H', 'i', 'b', 'c'],
      token_logprobs: [null, -1.5, -0.1, -0.1],
      top_logprobs: [null, { i: -1.5 }, { b: -0.1 }, { c: -0.1 }],
      text_offset: [0, 1, 2, 3],
    },
    finish_reason: 'length',
  });
});

test('echo with max_tokens 0 scores the prompt (engine asked for 0 tokens) or just echoes it', async (t) => {
  const { engine, app } = await setup(t);
  const scored = await post(app, { model: MODEL, prompt: 'Hi', max_tokens: 0, echo: true, logprobs: 0 }).expect(200);
  assert.equal(engine.submitted.length, 1);
  assert.equal(engine.submitted[0]!.params.maxTokens, 0);
  assert.deepEqual(scored.body.choices[0], {
    text: 'Hi',
    index: 0,
    logprobs: { tokens: ['H', 'i'], token_logprobs: [null, -1.5], top_logprobs: [null, { i: -1.5 }], text_offset: [0, 1] },
    finish_reason: 'length',
  });
  const echoed = await post(app, { model: MODEL, prompt: 'Hi', max_tokens: 0, echo: true }).expect(200);
  assert.equal(echoed.body.choices[0].text, 'Hi');
  assert.equal(engine.submitted.length, 1);
});

test('echo still works when the engine sends no prompt event (text from the request)', async (t) => {
  const { app } = await setup(t, { noPromptEvent: true });
  const res = await post(app, { model: MODEL, prompt: 'Hi', max_tokens: 1, echo: true }).expect(200);
  assert.equal(res.body.choices[0].text, 'Hib');
});

test('stop strings end with "stop"; held-back text that was no stop is flushed at the finish', async (t) => {
  const { app } = await setup(t);
  const stopped = await post(app, { model: MODEL, prompt: 'A', stop: ['cd'], max_tokens: 10 }).expect(200);
  assert.equal(stopped.body.choices[0].text, 'ab');
  assert.equal(stopped.body.choices[0].finish_reason, 'stop');
  const flushed = await post(app, { model: MODEL, prompt: 'A', stop: 'cx', max_tokens: 3 }).expect(200);
  assert.equal(flushed.body.choices[0].text, 'abc');
  assert.equal(flushed.body.choices[0].finish_reason, 'length');
  const tokenStop = await post(app, { model: MODEL, prompt: 'A', stop_token_ids: [99], max_tokens: 10 }).expect(200);
  assert.equal(tokenStop.body.choices[0].text, 'ab');
  assert.equal(tokenStop.body.choices[0].finish_reason, 'stop');
});

test('ignore_eos and min_tokens reach the engine (fake EOS at step 2)', async (t) => {
  const { app } = await setup(t, { eosAtStep: 2 });
  const eos = await post(app, { model: MODEL, prompt: 'A', max_tokens: 5 }).expect(200);
  assert.deepEqual([eos.body.choices[0].text, eos.body.choices[0].finish_reason], ['ab', 'stop']);
  const ignored = await post(app, { model: MODEL, prompt: 'A', max_tokens: 5, ignore_eos: true }).expect(200);
  assert.equal(ignored.body.choices[0].finish_reason, 'length');
  const minTokens = await post(app, { model: MODEL, prompt: 'A', max_tokens: 5, min_tokens: 4 }).expect(200);
  assert.equal(minTokens.body.choices[0].finish_reason, 'length');
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
  ['logit_bias vocab', { logit_bias: { '70000': 1 } }, 400, 'invalid_value', 'logit_bias', 'token id 70000 is out of range (vocabulary size 65536)'],
  ['max_tokens negative', { max_tokens: -1 }, 400, 'invalid_value', 'max_tokens', '`max_tokens`: must be >= 0'],
  ['max_tokens type', { max_tokens: 'ten' }, 400, 'invalid_value', 'max_tokens', '`max_tokens`: expected number, got string'],
  ['stop count', { stop: ['a', 'b', 'c', 'd', 'e'] }, 400, 'invalid_value', 'stop', '`stop`: must have at most 4 items'],
  ['stop empty', { stop: [''] }, 400, 'invalid_value', 'stop[0]', '`stop[0]`: must not be empty'],
  ['stop type', { stop: 5 }, 400, 'invalid_value', 'stop', '`stop`: expected array'],
  ['prompt object', { prompt: {} }, 400, 'invalid_value', 'prompt', '`prompt`: must be a string, an array of strings'],
  ['prompt empty array', { prompt: [] }, 400, 'invalid_value', 'prompt', '`prompt`: must be a string'],
  ['prompt mixed', { prompt: [1, 'a'] }, 400, 'invalid_value', 'prompt', '`prompt`: must be a string'],
  ['prompt token id', { prompt: [70000] }, 400, 'invalid_value', 'prompt', '`prompt[0]`: token id 70000 is out of range'],
  ['prompt nested token id', { prompt: [[1], [-1]] }, 400, 'invalid_value', 'prompt', '`prompt[1][0]`: token id -1 is out of range'],
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

for (const [name, override, status, code, param, fragment] of INVALID) {
  test(`invalid request: ${name} -> ${status} ${code}`, async (t) => {
    const { engine, app } = await setup(t);
    const res = await post(app, { model: MODEL, prompt: 'A', ...override }).expect(status);
    assert.match(res.headers['content-type'], /^application\/json/);
    assert.deepEqual(Object.keys(res.body), ['error']);
    assert.deepEqual(Object.keys(res.body.error), ['message', 'type', 'param', 'code']);
    assert.equal(res.body.error.type, 'invalid_request_error');
    assert.equal(res.body.error.code, code);
    assert.equal(res.body.error.param, param);
    assert.ok(res.body.error.message.includes(fragment), `message ${JSON.stringify(res.body.error.message)} lacks ${fragment}`);
    assert.equal(engine.submitted.length, 0, 'nothing reaches the engine');
  });
}

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

test('a prompt over the context length is a 400 that states both lengths (before the engine)', async (t) => {
  const { engine, app } = await setup(t);
  const res = await post(app, { model: MODEL, prompt: 'A'.repeat(60) }).expect(400);
  assert.equal(res.body.error.code, 'context_length_exceeded');
  assert.equal(res.body.error.param, 'prompt');
  assert.equal(
    res.body.error.message,
    "This model's maximum context length is 64 tokens. However, you requested 76 tokens (60 in the prompt, 16 for the completion). Please reduce the prompt or max_tokens.",
  );
  const nullMax = await post(app, { model: MODEL, prompt: 'A'.repeat(70), max_tokens: null }).expect(400);
  assert.match(nullMax.body.error.message, /maximum context length is 64 tokens.*your prompt has 70 tokens/);
  const second = await post(app, { model: MODEL, prompt: [[65], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], max_tokens: 60 }).expect(400);
  assert.match(second.body.error.message, /^prompt\[1\]: .*70 tokens \(10 in the prompt, 60 for the completion\)/);
  // Exactly at the limit is fine.
  await post(app, { model: MODEL, prompt: 'A'.repeat(48) }).expect(200);
  assert.equal(engine.submitted.length, 1);
});

test('engine errors map to statuses: overloaded 429 + Retry-After, shutting_down 503, context 400', async (t) => {
  const { app } = await setup(t, {
    errorOn: (req) => {
      const text = String.fromCharCode(...req.promptTokens);
      if (text === 'busy') return { code: 'overloaded', message: 'queue full' };
      if (text === 'bye') return { code: 'shutting_down', message: 'draining' };
      if (text === 'long') return { code: 'context_length_exceeded', message: 'prompt is 2000 tokens, limit 1024' };
      if (text === 'odd') return { code: 'invalid_request', message: 'bad sampling settings' };
      return undefined;
    },
  });
  const busy = await post(app, { model: MODEL, prompt: 'busy' }).expect(429);
  assert.equal(busy.headers['retry-after'], '1');
  assert.deepEqual(busy.body, {
    error: { message: 'The server is overloaded; retry shortly', type: 'rate_limit_error', param: null, code: 'overloaded' },
  });
  const bye = await post(app, { model: MODEL, prompt: 'bye' }).expect(503);
  assert.equal(bye.body.error.code, 'shutting_down');
  const long = await post(app, { model: MODEL, prompt: 'long' }).expect(400);
  assert.deepEqual(long.body.error, {
    message: 'prompt is 2000 tokens, limit 1024',
    type: 'invalid_request_error',
    param: 'prompt',
    code: 'context_length_exceeded',
  });
  const odd = await post(app, { model: MODEL, prompt: 'odd' }).expect(400);
  assert.equal(odd.body.error.message, 'bad sampling settings');
});

test('one failing prompt fails the request and cancels the other prompts in the engine', async (t) => {
  const { engine, app } = await setup(t, {
    tokenDelayMs: 20,
    errorOn: (req) => (req.promptTokens[0] === 98 ? { code: 'overloaded', message: 'full' } : undefined),
  });
  await post(app, { model: MODEL, prompt: ['a', 'b'], max_tokens: 20 }).expect(429);
  await waitFor(() => engine.cancelled.includes('cmpl-test-0'), 1000, 'cancel of prompt 0');
  assert.equal(engine.activeCount, 0);
});

test('internal failures are a generic 500: no engine message, no stack trace', async (t) => {
  const mid = await setup(t, { errorOn: () => ({ code: 'internal_error', message: 'CUDA exploded at /secret/path.ts:12', afterSteps: 2 }) });
  const res = await post(mid.app, { model: MODEL, prompt: 'A' }).expect(500);
  assert.deepEqual(res.body, {
    error: { message: 'The engine failed while processing the request', type: 'server_error', param: null, code: 'internal_error' },
  });
  const thrower = await setup(t, { throwOnSubmit: true });
  const res2 = await post(thrower.app, { model: MODEL, prompt: 'A' }).expect(500);
  assert.equal(res2.body.error.code, 'internal_error');
  assert.doesNotMatch(res2.text, /secret|at .*\.ts|Error:/);
});

test('a client that disconnects cancels its request in the engine at once', async (t) => {
  const { engine, app } = await setup(t, { tokenDelayMs: 20 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/completions', headers: { 'content-type': 'application/json' } });
  req.on('error', () => {});
  req.end(JSON.stringify({ model: MODEL, prompt: 'A', max_tokens: 60 }));
  await waitFor(() => (engine.yielded.get('cmpl-test-0') ?? 0) >= 2, 2000, 'generation to start');
  const before = Date.now();
  req.destroy();
  await waitFor(() => engine.cancelled.includes('cmpl-test-0'), 1000, 'engine cancel');
  assert.ok(Date.now() - before < 200, 'cancelled within one token delay or so');
  await waitFor(() => engine.activeCount === 0, 1000, 'engine idle');
  assert.ok((engine.yielded.get('cmpl-test-0') ?? 0) < 30, 'generation stopped early');
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
