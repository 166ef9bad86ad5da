// POST /v1/responses (stateless) through the official `openai` client, and its websocket frame:
// the same generation as the equivalent chat request, text.format through the same constraints,
// the documented event stream whose deltas add up to the final object, function tools, and clean
// refusals of what needs stored state.
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import type { ResponseStreamEvent } from 'openai/resources/responses/responses';
import request from 'supertest';
import WebSocket from 'ws';
import { formatToolCall } from './helpers/tool-calls.js';
import { MODEL, gpt2Tokenizer, serveTest, spyOn, waitFor } from './helpers/serving.js';
import type { ScriptedRunnerOptions } from './helpers/scripted-runner.js';

type T = { after: (fn: () => Promise<unknown>) => void };

const SCHEMA = {
  type: 'object',
  properties: { name: { type: 'string', maxLength: 8 }, age: { type: 'integer', minimum: 0, maximum: 120 } },
  required: ['name', 'age'],
  additionalProperties: false,
};
const ADD = { type: 'object', properties: { a: { type: 'integer', minimum: 0, maximum: 99 }, b: { type: 'integer', minimum: 0, maximum: 99 } }, required: ['a', 'b'] };
const ajv = new Ajv();

async function serve(t: T, runner: ScriptedRunnerOptions = {}) {
  const { app, engine } = await serveTest(t, { runner });
  const spy = spyOn(engine);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  return { app, spy, port, client: new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused', maxRetries: 0 }) };
}

test('responses.create: the same prompt and text as the equivalent chat request; usage; incomplete at max_output_tokens', async (t: T) => {
  const { client, spy } = await serve(t);
  const response = await client.responses.create({
    model: MODEL,
    instructions: 'Be brief.',
    input: [
      { role: 'user', content: 'Hello' },
      { role: 'assistant', content: [{ type: 'output_text', text: 'Hi there.', annotations: [] }] as never },
      { role: 'user', content: [{ type: 'input_text', text: 'How are you?' }] },
    ],
    max_output_tokens: 6,
    temperature: 0,
    store: true,
  });
  const chat = await client.chat.completions.create({
    model: MODEL,
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'Hello' },
      { role: 'assistant', content: 'Hi there.' },
      { role: 'user', content: 'How are you?' },
    ],
    max_completion_tokens: 6,
    temperature: 0,
  });
  assert.deepEqual(spy.submitted[0]!.promptTokens, spy.submitted[1]!.promptTokens);
  assert.equal(response.object, 'response');
  assert.match(response.id, /^resp_/);
  assert.equal(response.output_text, chat.choices[0]!.message.content);
  assert.equal(response.status, 'incomplete');
  assert.deepEqual(response.incomplete_details, { reason: 'max_output_tokens' });
  assert.equal((response as unknown as { store: boolean }).store, false, 'answered as not stored');
  assert.equal(response.output.length, 1);
  assert.equal(response.output[0]!.type, 'message');
  assert.deepEqual(response.usage, {
    input_tokens: chat.usage!.prompt_tokens,
    input_tokens_details: { cached_tokens: 0 },
    output_tokens: 6,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: chat.usage!.prompt_tokens + 6,
  });
  assert.equal(response.instructions, 'Be brief.');
  assert.equal(response.max_output_tokens, 6);
  assert.equal(response.temperature, 0);
});

test('text.format json_schema: every sample is valid JSON for the schema', async (t: T) => {
  const { client } = await serve(t);
  const validate = ajv.compile(SCHEMA);
  for (let seed = 0; seed < 8; seed++) {
    const r = await client.responses.create({
      model: MODEL,
      input: 'Make up a person.',
      seed,
      temperature: 1,
      max_output_tokens: 200,
      text: { format: { type: 'json_schema', name: 'person', schema: SCHEMA, strict: true } },
    } as OpenAI.Responses.ResponseCreateParamsNonStreaming);
    assert.equal(r.status, 'completed');
    assert.ok(validate(JSON.parse(r.output_text)), r.output_text);
  }
});

test('streaming: the documented event sequence, numbered, whose deltas add up to the final text', async (t: T) => {
  const { client } = await serve(t);
  // `seed` is vLLM's extra, which the SDK's types do not know.
  const story = { model: MODEL, input: 'Tell me a story', max_output_tokens: 12, seed: 4, temperature: 1 } as Omit<OpenAI.Responses.ResponseCreateParamsNonStreaming, 'stream'>;
  const stream = await client.responses.create({ ...story, stream: true });
  const events: ResponseStreamEvent[] = [];
  for await (const event of stream) events.push(event);
  assert.deepEqual(
    events.map((e) => e.sequence_number),
    events.map((_, i) => i),
  );
  const types = events.map((e) => e.type);
  assert.deepEqual(types.slice(0, 4), ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added']);
  assert.deepEqual(types.slice(-4), ['response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.incomplete']);
  assert.ok(types.filter((t) => t === 'response.output_text.delta').length >= 2);
  const deltas = events.flatMap((e) => (e.type === 'response.output_text.delta' ? [e.delta] : [])).join('');
  const last = events.at(-1)!;
  assert.ok(last.type === 'response.incomplete');
  const final = last.response.output[0]!;
  assert.ok(final.type === 'message' && final.content[0]!.type === 'output_text');
  assert.equal(deltas, final.content[0].text);
  assert.equal(final.status, 'incomplete');
  // The same request without streaming gives the same text.
  const whole = await client.responses.create(story);
  assert.equal(whole.output_text, deltas);
  // The SDK's stream helper assembles the same final response.
  const helper = await client.responses.stream(story).finalResponse();
  assert.equal(helper.output_text, deltas);
});

test('function tools: "required" calls validate; a call and its output go back as input items', async (t: T) => {
  const { client, spy } = await serve(t);
  const validate = ajv.compile(ADD);
  const tools: OpenAI.Responses.FunctionTool[] = [{ type: 'function', name: 'add', description: 'Adds two numbers', parameters: ADD, strict: true }];
  for (let seed = 0; seed < 6; seed++) {
    const r = await client.responses.create({ model: MODEL, input: 'What is 2 + 40?', tools, tool_choice: 'required', seed, temperature: 1, max_output_tokens: 200 } as OpenAI.Responses.ResponseCreateParamsNonStreaming);
    const calls = r.output.filter((o) => o.type === 'function_call');
    assert.ok(calls.length >= 1);
    assert.equal(r.output.some((o) => o.type === 'message'), false);
    for (const call of calls) {
      assert.ok(call.type === 'function_call');
      assert.equal(call.name, 'add');
      assert.match(call.call_id, /^call_/);
      assert.equal(call.status, 'completed');
      assert.ok(validate(JSON.parse(call.arguments)), call.arguments);
    }
  }
  const before = spy.submitted.length;
  const next = await client.responses.create({
    model: MODEL,
    tools,
    max_output_tokens: 3,
    input: [
      { role: 'user', content: 'What is 2 + 40?' },
      { type: 'function_call', call_id: 'call_9', name: 'add', arguments: '{"a":2,"b":40}' },
      { type: 'function_call_output', call_id: 'call_9', output: '42' },
    ],
  });
  assert.ok(next.status === 'completed' || next.status === 'incomplete');
  const prompt = (await gpt2Tokenizer()).decode(spy.submitted[before]!.promptTokens);
  assert.ok(prompt.endsWith(`User: What is 2 + 40?\nAssistant: ${formatToolCall('add', '{"a": 2, "b": 40}')}\nTool: 42\nAssistant:`), prompt);
});

test('streamed function call: item added, argument deltas, done events, then the completed response', async (t: T) => {
  const call = formatToolCall('add', '{"a": 2, "b": 40}');
  const { client } = await serve(t, { script: (await gpt2Tokenizer()).encode(call) });
  const stream = await client.responses.create({
    model: MODEL,
    input: 'What is 2 + 40?',
    tools: [{ type: 'function', name: 'add', parameters: ADD, strict: true }],
    parallel_tool_calls: false,
    temperature: 0,
    max_output_tokens: 100,
    stream: true,
  });
  const events: ResponseStreamEvent[] = [];
  for await (const event of stream) events.push(event);
  const types = events.map((e) => e.type).filter((t) => t !== 'response.function_call_arguments.delta');
  assert.deepEqual(types, ['response.created', 'response.in_progress', 'response.output_item.added', 'response.function_call_arguments.done', 'response.output_item.done', 'response.completed']);
  const deltas = events.flatMap((e) => (e.type === 'response.function_call_arguments.delta' ? [e.delta] : []));
  assert.ok(deltas.length >= 3);
  assert.equal(deltas.join(''), '{"a": 2, "b": 40}');
  const last = events.at(-1)!;
  assert.ok(last.type === 'response.completed');
  assert.deepEqual(
    last.response.output.map((o) => o.type === 'function_call' && [o.name, o.arguments, o.status]),
    [['add', '{"a": 2, "b": 40}', 'completed']],
  );
});

test('stateful features are refused clearly; nothing is stored to fetch', async (t: T) => {
  const { app, client } = await serve(t);
  await assert.rejects(client.responses.create({ model: MODEL, input: 'Hi', previous_response_id: 'resp_123' }), (err: InstanceType<typeof OpenAI.APIError>) => {
    assert.equal(err.status, 400);
    assert.equal((err.error as { param: string }).param, 'previous_response_id');
    assert.match(err.message, /stateless/);
    return true;
  });
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ conversation: 'conv_1' }, 'conversation', /stateless/],
    [{ background: true }, 'background', /stateless/],
    [{ input: [{ type: 'reasoning', summary: [] }] }, 'input[0].type', /"reasoning" items are not supported/],
    [{ input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'x' }] }] }, 'input[0].content[0].type', /"input_image" content is not supported/],
    [{ tools: [{ type: 'web_search' }] }, 'tools[0].type', /"web_search" tools are not supported/],
    [{ tools: [{ type: 'function', name: 'a', parameters: { type: 'object', properties: { x: { not: {} } } } }], tool_choice: 'required' }, 'tools', /tools\[0\]\.parameters \(function "a"\).*`not`/],
    [{ tools: [{ type: 'function', name: 'a' }, { type: 'function', name: 'a' }] }, 'tools[1].name', /also named "a"/],
    [{ text: { format: { type: 'json_schema', name: 'x', schema: { type: 'string', pattern: '(' } } } }, 'text.format.schema', /invalid regular expression/i],
    [{ reasoning: { effort: 'high' } }, 'reasoning', /does not reason/],
    [{ truncation: 'auto' }, 'truncation', /not supported/],
    [{ input: [{ type: 'function_call_output', output: '1' }] }, 'input[0].call_id', /is required/],
  ];
  for (const [body, param, message] of cases) {
    const res = await request(app.server).post('/v1/responses').send({ model: MODEL, input: 'Hi', ...body });
    assert.equal(res.status, 400, `${param}: ${JSON.stringify(res.body)}`);
    assert.equal(res.body.error.param, param, JSON.stringify(res.body));
    assert.match(res.body.error.message, message);
  }
  const got = await request(app.server).get('/v1/responses/resp_123').expect(404);
  assert.match(got.body.error.message, /stateless and stores no responses/);
});

test('websocket: response.create streams the events with the client id, then response.done', async (t: T) => {
  const { port } = await serve(t);
  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/completions/ws`);
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const frames: Array<Record<string, unknown>> = [];
  const done = new Promise<void>((resolve) =>
    ws.on('message', (data) => {
      const frame = JSON.parse(String(data)) as Record<string, unknown>;
      frames.push(frame);
      if (frame.type === 'response.done') resolve();
    }),
  );
  ws.send(JSON.stringify({ type: 'response.create', id: 'r1', model: MODEL, input: 'Hello', max_output_tokens: 5, temperature: 0 }));
  await done;
  ws.close();
  assert.ok(frames.every((f) => f.id === 'r1'));
  assert.equal(frames[0]!.type, 'response.created');
  assert.equal(frames.at(-2)!.type, 'response.incomplete');
  const text = frames.filter((f) => f.type === 'response.output_text.delta').map((f) => f.delta).join('');
  const final = (frames.at(-2)!.response as { output: Array<{ content: Array<{ text: string }> }> }).output[0]!.content[0]!.text;
  assert.equal(text, final);
  assert.equal(frames.at(-1)!.completion_id, (frames[0]!.response as { id: string }).id);
});

test('the same auth, cancellation on disconnect, error event and metrics as the other endpoints', async (t: T) => {
  const { app, engine } = await serveTest(t, { config: { apiKeys: ['sk-a'] }, runner: { stepDelayMs: 10, failRuns: [40] } });
  const spy = spyOn(engine);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  await request(app.server).post('/v1/responses').send({ model: MODEL, input: 'Hi' }).expect(401);

  // A client that goes away mid-stream: its engine request is cancelled at once.
  const controller = new AbortController();
  const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'sk-a', maxRetries: 0 });
  const stream = await client.responses.create({ model: MODEL, input: 'A', max_output_tokens: 30, stream: true }, { signal: controller.signal });
  for await (const event of stream) if (event.type === 'response.output_text.delta') break; // leaving the loop aborts the response
  controller.abort();
  await waitFor(() => spy.cancelled.some((id) => id.startsWith('resp_')), 30_000, 'engine cancel');

  // The engine fails a step mid-stream: an `error` event in sequence, then the stream ends.
  const res = await request(app.server)
    .post('/v1/responses')
    .set('authorization', 'Bearer sk-a')
    .send({ model: MODEL, input: 'B', max_output_tokens: 200, stream: true })
    .expect(200);
  const blocks = res.text.split('\n\n').filter((b) => b.length > 0);
  const last = blocks.at(-1)!;
  assert.match(last, /^event: error\ndata: /);
  const error = JSON.parse(last.slice(last.indexOf('data: ') + 6)) as { type: string; code: string; sequence_number: number };
  assert.equal(error.type, 'error');
  assert.equal(error.code, 'internal_error');
  assert.equal(error.sequence_number, blocks.length - 1);
  assert.doesNotMatch(res.text, /\[DONE\]/);

  const metrics = await request(app.server).get('/metrics').expect(200);
  assert.match(metrics.text, /gpt2_http_requests_total\{method="POST",route="\/v1\/responses",status="401"\} 1/);
});
