// Structured outputs over HTTP and the websocket: every request spelling (response_format,
// guided_*, structured_outputs) reaches the engine as one compiled constraint, compiled in the
// tokenizer thread (worker engine); refusals are OpenAI-shaped 400s naming the field and keyword.
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import request from 'supertest';
import WebSocket from 'ws';
import type { FastifyInstance } from 'fastify';
import { Ajv } from 'ajv';
import { MODEL, parseSse, serveTest, spyOn } from './helpers/serving.js';

type T = { after: (fn: () => Promise<unknown>) => void };

const SCHEMA = {
  type: 'object',
  properties: { name: { type: 'string', maxLength: 5 }, age: { type: 'integer', minimum: 0, maximum: 120 }, tags: { type: 'array', items: { enum: ['a', 'b'] }, maxItems: 2 } },
  required: ['name', 'age', 'tags'],
  additionalProperties: false,
};
const validate = new Ajv().compile(SCHEMA);

function post(app: FastifyInstance, body: object) {
  return request(app.server).post('/v1/completions').send({ model: MODEL, prompt: 'Hello', max_tokens: 80, ...body });
}

test('response_format json_schema: n choices of valid JSON, through the tokenizer thread and the engine worker', async (t: T) => {
  const { app } = await serveTest(t, { worker: true });
  const res = await post(app, { n: 3, temperature: 1, seed: 1, response_format: { type: 'json_schema', json_schema: { name: 'person', schema: SCHEMA, strict: true } } }).expect(200);
  assert.equal(res.body.choices.length, 3);
  for (const c of res.body.choices as Array<{ text: string; finish_reason: string }>) {
    assert.equal(c.finish_reason, 'stop');
    assert.ok(validate(JSON.parse(c.text)), c.text);
  }
});

test('every spelling reaches the engine as the same constraint; free text has none', async (t: T) => {
  const { app, engine } = await serveTest(t);
  const spy = spyOn(engine);
  await post(app, { guided_json: SCHEMA }).expect(200);
  await post(app, { guided_json: JSON.stringify(SCHEMA) }).expect(200);
  await post(app, { structured_outputs: { json: SCHEMA } }).expect(200);
  await post(app, { response_format: { type: 'json_schema', json_schema: { name: 'x', schema: SCHEMA } } }).expect(200);
  await post(app, { response_format: { type: 'text' } }).expect(200);
  const keys = spy.submitted.map((r) => r.params.constraint?.key ?? null);
  assert.equal(new Set(keys.slice(0, 4)).size, 1);
  assert.equal(keys[4], null);
});

test('guided_regex, guided_choice, structured_outputs.choice and json_object are enforced', async (t: T) => {
  const { app } = await serveTest(t);
  const r1 = await post(app, { guided_regex: '\\d{3}-[a-z]{2}', temperature: 1, seed: 3 }).expect(200);
  assert.match(r1.body.choices[0].text, /^\d{3}-[a-z]{2}$/);
  const r2 = await post(app, { guided_choice: ['cat', 'dog'], n: 4, temperature: 1, seed: 2 }).expect(200);
  for (const c of r2.body.choices) assert.ok(['cat', 'dog'].includes(c.text), c.text);
  const r3 = await post(app, { structured_outputs: { choice: ['yes', 'no'] } }).expect(200);
  assert.ok(['yes', 'no'].includes(r3.body.choices[0].text));
  const r4 = await post(app, { response_format: { type: 'json_object' }, max_tokens: 3, temperature: 0 }).expect(200);
  assert.equal(r4.body.choices[0].finish_reason, 'length');
  assert.ok(r4.body.choices[0].text.startsWith('{'), r4.body.choices[0].text);
});

test('streaming with logprobs: the chunks add up to valid JSON', async (t: T) => {
  const { app } = await serveTest(t);
  const res = await post(app, { stream: true, logprobs: 2, temperature: 1, seed: 9, guided_json: SCHEMA }).expect(200);
  const chunks = parseSse(res.text).slice(0, -1) as Array<{ choices: Array<{ text: string; finish_reason: string | null; logprobs: unknown }> }>;
  const text = chunks.map((c) => c.choices[0]!.text).join('');
  assert.ok(validate(JSON.parse(text)), text);
  assert.equal(chunks.at(-1)!.choices[0]!.finish_reason, 'stop');
  assert.ok(chunks.some((c) => c.choices[0]!.logprobs !== null));
});

test('refusals: unsupported keyword, bad regex, two constraints at once, grammar, ignore_eos, bad JSON text', async (t: T) => {
  const { app } = await serveTest(t);
  const cases: Array<[object, string, RegExp]> = [
    [{ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { a: { type: 'string', not: {} } } } } } }, 'response_format.json_schema.schema', /keyword `not` is not supported \(at #\/properties\/a\)/],
    [{ guided_json: { type: 'integer', multipleOf: 2 } }, 'guided_json', /keyword `multipleOf`/],
    [{ guided_regex: 'a(b' }, 'guided_regex', /invalid regular expression/],
    [{ guided_regex: 'a', guided_choice: ['b'] }, 'guided_choice', /only one structured output/],
    [{ guided_grammar: 'root ::= "a"' }, 'guided_grammar', /grammars are not supported/],
    [{ guided_choice: ['a'], ignore_eos: true }, 'ignore_eos', /cannot be combined/],
    [{ guided_json: '{not json' }, 'guided_json', /not valid JSON/],
    [{ response_format: { type: 'json_schema', json_schema: { name: 'x' } } }, 'response_format.json_schema.schema', /is required/],
    [{ response_format: { type: 'xml' } }, 'response_format', /type/],
  ];
  for (const [body, param, message] of cases) {
    const res = await post(app, body).expect(400);
    assert.equal(res.body.error.type, 'invalid_request_error');
    assert.ok(res.body.error.param?.startsWith(param), `${JSON.stringify(body)}: param ${res.body.error.param}`);
    assert.match(res.body.error.message, message);
  }
});

test('websocket completion.create takes the same fields', async (t: T) => {
  const { app } = await serveTest(t);
  await app.listen({ port: 0, host: '127.0.0.1' });
  const { port } = app.server.address() as AddressInfo;
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/completions/ws`);
  t.after(async () => ws.close());
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const frames: Array<{ type: string; choices?: Array<{ text: string }> }> = [];
  const done = new Promise<void>((resolve) =>
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data)) as { type: string };
      frames.push(frame);
      if (frame.type === 'completion.done' || frame.type === 'error') resolve();
    }),
  );
  ws.send(JSON.stringify({ type: 'completion.create', id: 'req-1', model: MODEL, prompt: 'Hi', max_tokens: 80, guided_json: SCHEMA }));
  await done;
  assert.equal(frames.at(-1)!.type, 'completion.done', JSON.stringify(frames.at(-1)));
  const text = frames.filter((f) => f.type === 'completion.chunk').flatMap((f) => f.choices!).map((c) => c.text).join('');
  assert.ok(validate(JSON.parse(text)), text);
});
