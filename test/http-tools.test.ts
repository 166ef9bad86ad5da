// Chat tool calling through the official `openai` client: calls under each tool_choice parse and
// validate against their tool's schema for many seeded samples of the scripted (in effect random,
// once constrained) model; streamed calls assemble into the same message; a conversation carries
// calls and results through the chat template; hostile tool definitions are clean 400s.
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import type { ChatCompletionCreateParamsNonStreaming, ChatCompletionTool } from 'openai/resources/chat/completions';
import request from 'supertest';
import { formatToolCall } from './helpers/tool-calls.js';
import { MODEL, gpt2Tokenizer, serveTest, spyOn } from './helpers/serving.js';
import type { ScriptedRunnerOptions } from './helpers/scripted-runner.js';

type T = { after: (fn: () => Promise<unknown>) => void };

const WEATHER = {
  type: 'object',
  properties: { city: { type: 'string', maxLength: 12 }, unit: { enum: ['celsius', 'fahrenheit'] } },
  required: ['city', 'unit'],
  additionalProperties: false,
};
const ADD = { type: 'object', properties: { a: { type: 'integer', minimum: -1000, maximum: 1000 }, b: { type: 'integer', minimum: -1000, maximum: 1000 } }, required: ['a', 'b'] };
const TOOLS: ChatCompletionTool[] = [
  { type: 'function', function: { name: 'get_weather', description: 'Current weather in a city', parameters: WEATHER } },
  { type: 'function', function: { name: 'add', parameters: ADD } },
];
const ajv = new Ajv();
const VALIDATORS: Record<string, ReturnType<Ajv['compile']>> = { get_weather: ajv.compile(WEATHER), add: ajv.compile(ADD) };
const MESSAGES = [{ role: 'user' as const, content: 'What is the weather in Paris?' }];

async function serve(t: T, runner: ScriptedRunnerOptions = {}) {
  const { app, engine } = await serveTest(t, { runner });
  const spy = spyOn(engine);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  return { app, spy, client: new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'unused', maxRetries: 0 }) };
}

/** Asserts every call of the message parses and validates; returns the calls. */
function validCalls(message: OpenAI.Chat.ChatCompletionMessage, allowed = Object.keys(VALIDATORS)) {
  const calls = message.tool_calls ?? [];
  for (const call of calls) {
    assert.equal(call.type, 'function');
    if (call.type !== 'function') continue;
    assert.ok(allowed.includes(call.function.name), call.function.name);
    const args = JSON.parse(call.function.arguments) as unknown;
    assert.ok(VALIDATORS[call.function.name]!(args), `${call.function.name}(${call.function.arguments})`);
    assert.match(call.id, /^call_/);
  }
  return calls;
}

test('tool_choice "required": every sampled call parses and validates against its schema', async (t: T) => {
  const { client, spy } = await serve(t);
  let calls = 0;
  for (let seed = 0; seed < 12; seed++) {
    const res = await client.chat.completions.create({ model: MODEL, messages: MESSAGES, tools: TOOLS, tool_choice: 'required', n: 4, seed, temperature: 1, max_completion_tokens: 300 });
    for (const choice of res.choices) {
      assert.equal(choice.finish_reason, 'tool_calls');
      assert.equal(choice.message.content, null);
      calls += validCalls(choice.message).length;
      assert.ok((choice.message.tool_calls ?? []).length >= 1);
    }
  }
  assert.ok(calls >= 48);
  assert.match(spy.submitted[0]!.params.constraint!.key, /^tool_calls:/);
});

test('parallel_tool_calls false gives exactly one call; a named function is the one called', async (t: T) => {
  const { client } = await serve(t);
  for (let seed = 0; seed < 8; seed++) {
    const one = await client.chat.completions.create({ model: MODEL, messages: MESSAGES, tools: TOOLS, tool_choice: 'required', parallel_tool_calls: false, n: 3, seed, temperature: 1, max_completion_tokens: 300 });
    for (const choice of one.choices) assert.equal(validCalls(choice.message).length, 1);
    const named = await client.chat.completions.create({ model: MODEL, messages: MESSAGES, tools: TOOLS, tool_choice: { type: 'function', function: { name: 'add' } }, n: 3, seed, temperature: 1, max_completion_tokens: 300 });
    for (const choice of named.choices) assert.ok(validCalls(choice.message, ['add']).length >= 1);
  }
});

/**
 * The token ids of `text`: what the scripted model writes when it may. (It never prefers
 * <|endoftext|>, so these requests allow one call: after it, the constraint allows only the end.)
 */
async function script(text: string): Promise<number[]> {
  return (await gpt2Tokenizer()).encode(text);
}

const SCRIPTED_CALL = formatToolCall('get_weather', '{"city": "Paris", "unit": "celsius"}');

test('"auto": a model that writes a call gets tool_calls, content before it stays content', async (t: T) => {
  const { client } = await serve(t, { script: await script(` Let me check. ${SCRIPTED_CALL}`) });
  const res = await client.chat.completions.create({ model: MODEL, messages: MESSAGES, tools: TOOLS, parallel_tool_calls: false, temperature: 0, max_completion_tokens: 100 });
  const choice = res.choices[0]!;
  assert.equal(choice.finish_reason, 'tool_calls');
  assert.equal(choice.message.content, ' Let me check.');
  assert.deepEqual(
    validCalls(choice.message).map((c) => c.type === 'function' && [c.function.name, c.function.arguments]),
    [['get_weather', '{"city": "Paris", "unit": "celsius"}']],
  );
});

test('"auto": a model that writes text gets a plain message; "none" is not constrained at all', async (t: T) => {
  const { client, spy } = await serve(t);
  const auto = await client.chat.completions.create({ model: MODEL, messages: MESSAGES, tools: TOOLS, seed: 3, temperature: 1, max_completion_tokens: 12 });
  assert.equal(auto.choices[0]!.message.tool_calls, undefined);
  assert.equal(typeof auto.choices[0]!.message.content, 'string');
  assert.ok(['stop', 'length'].includes(auto.choices[0]!.finish_reason));
  assert.match(spy.submitted[0]!.params.constraint!.key, /^tool_calls:/);

  const none = await client.chat.completions.create({ model: MODEL, messages: MESSAGES, tools: TOOLS, tool_choice: 'none', max_completion_tokens: 5 });
  assert.equal(none.choices[0]!.message.tool_calls, undefined);
  assert.equal(spy.submitted[1]!.params.constraint, null);
  // The template still shows the model its tools.
  const prompt = (await gpt2Tokenizer()).decode(spy.submitted[1]!.promptTokens);
  assert.match(prompt, /^You can call these functions/);
  assert.match(prompt, /"name": "get_weather", "description": "Current weather in a city"/);
});

test('streaming: the client assembles the same calls, names first and arguments in pieces', async (t: T) => {
  const { client } = await serve(t, { script: await script(` Let me check. ${SCRIPTED_CALL}`) });
  const body: Omit<ChatCompletionCreateParamsNonStreaming, 'stream'> = { model: MODEL, messages: MESSAGES, tools: TOOLS, parallel_tool_calls: false, temperature: 0, max_completion_tokens: 100 };
  const whole = await client.chat.completions.create(body);
  const stream = client.chat.completions.stream(body);
  const toolDeltas: OpenAI.Chat.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
  stream.on('chunk', (chunk) => toolDeltas.push(...(chunk.choices[0]?.delta.tool_calls ?? [])));
  const streamed = await stream.finalChatCompletion();
  const strip = (m: OpenAI.Chat.ChatCompletionMessage) => ({ content: m.content, calls: (m.tool_calls ?? []).map((c) => c.type === 'function' && c.function) });
  assert.deepEqual(strip(streamed.choices[0]!.message), strip(whole.choices[0]!.message));
  assert.equal(streamed.choices[0]!.finish_reason, 'tool_calls');
  assert.match(streamed.choices[0]!.message.tool_calls![0]!.id, /^call_/);
  assert.equal(toolDeltas[0]!.function?.name, 'get_weather');
  assert.ok(toolDeltas[0]!.id);
  assert.ok(toolDeltas.filter((d) => d.function?.arguments).length >= 3, 'arguments arrive in several pieces');
  assert.ok(toolDeltas.slice(1).every((d) => d.id === undefined && d.function?.name === undefined && d.index === 0));

  // And with "required" over a random model: the assembled arguments validate.
  const required = await client.chat.completions.stream({ ...body, tool_choice: 'required', parallel_tool_calls: true, temperature: 1, seed: 5, n: 2, max_completion_tokens: 300 }).finalChatCompletion();
  for (const choice of required.choices) assert.ok(validCalls(choice.message).length >= 1);
});

test('a conversation with a call and its result reaches the template; the reply may call again', async (t: T) => {
  const { client, spy } = await serve(t);
  const res = await client.chat.completions.create({
    model: MODEL,
    tools: TOOLS,
    tool_choice: 'required',
    seed: 1,
    max_completion_tokens: 300,
    messages: [
      ...MESSAGES,
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '18 degrees, sunny' },
    ],
  });
  assert.ok(validCalls(res.choices[0]!.message).length >= 1);
  const prompt = (await gpt2Tokenizer()).decode(spy.submitted[0]!.promptTokens);
  assert.ok(prompt.endsWith(`User: What is the weather in Paris?\nAssistant: ${SCRIPTED_CALL}\nTool: 18 degrees, sunny\nAssistant:`), prompt);
});

test('hostile or wrong tool definitions are 400s naming the field (and the tool and keyword)', async (t: T) => {
  const { app } = await serve(t);
  const fn = (name: string, parameters: unknown) => ({ type: 'function', function: { name, parameters } });
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ tools: [fn('a', ADD), fn('a', WEATHER)] }, 'tools[1].function.name', /another tool is also named "a"/],
    [{ tools: [fn('ok', ADD), fn('bad', { type: 'object', properties: { x: { type: 'string', not: {} } } })], tool_choice: 'required' }, 'tools', /function "bad".*keyword `not` is not supported/],
    [{ tools: [fn('odd', { type: 'object', properties: { x: { type: 'string', minLength: 100_000 } } })], tool_choice: 'required' }, 'tools', /function "odd".*`minLength` above 1000/],
    // Short to write, huge to enforce: refused by the automaton budget, not compiled for minutes.
    [{ tools: [fn('huge', { type: 'object', properties: Object.fromEntries(Array.from({ length: 30 }, (_, i) => [`p${i}`, { type: 'string', maxLength: 1000 }])) })], tool_choice: 'required' }, 'tools', /too complex/],
    // A definition too large for the context is refused as a prompt that does not fit (the template shows it to the model).
    [{ tools: [fn('long', { type: 'object', properties: { x: { enum: Array.from({ length: 40_000 }, (_, i) => `value-${i}`) } } })] }, 'prompt', /maximum context length/],
    [{ tools: Array.from({ length: 129 }, (_, i) => fn(`f${i}`, ADD)) }, 'tools', /at most 128/],
    [{ tools: [fn('get weather', ADD)] }, 'tools[0].function.name', /letters, digits/],
    [{ tools: [fn('a', { type: 'array' })] }, 'tools[0].function.parameters', /"type": "object"/],
    [{ tools: [{ type: 'code_interpreter' }] }, 'tools[0].type', /must be one of "function"/],
    [{ tools: [fn('a', ADD)], tool_choice: { type: 'function', function: { name: 'b' } } }, 'tool_choice', /no tool is named "b"/],
    [{ tool_choice: 'required' }, 'tool_choice', /only allowed when `tools` are given/],
    [{ tools: [fn('a', ADD)], tool_choice: 'required', response_format: { type: 'json_object' } }, 'response_format', /cannot be combined/],
    [{ messages: [{ role: 'user', content: 'x' }, { role: 'tool', content: 'y' }] }, 'messages[1].tool_call_id', /is required/],
    [{ messages: [{ role: 'function', name: 'f', content: 'y' }] }, 'messages[0].role', /legacy functions API/],
    [{ functions: [{ name: 'f' }] }, 'functions', /not supported/],
  ];
  for (const [body, param, message] of cases) {
    const res = await request(app.server).post('/v1/chat/completions').send({ model: MODEL, messages: MESSAGES, ...body });
    assert.equal(res.status, 400, `${param}: ${JSON.stringify(res.body)}`);
    assert.equal(res.body.error.param, param, JSON.stringify(res.body));
    assert.match(res.body.error.message, message);
  }
  // Nested thousands deep: small enough for any body limit, deep enough to overflow every recursive
  // step after it (JSON.stringify cannot even write it, hence the hand-made body).
  const deep = '{"type":"object","properties":{"x":'.repeat(3000) + '{"type":"object"}' + '}}'.repeat(3000);
  const deepCases: Array<[string, string]> = [
    [`"tools":[{"type":"function","function":{"name":"deep","parameters":${deep}}}],"tool_choice":"required"`, 'tools[0].function.parameters'],
    [`"response_format":{"type":"json_schema","json_schema":{"name":"d","schema":${deep}}}`, 'response_format.json_schema.schema'],
    [`"chat_template_kwargs":{"x":${deep}}`, 'chat_template_kwargs'],
  ];
  for (const [fields, param] of deepCases) {
    const body = `{"model":"${MODEL}","messages":[{"role":"user","content":"hi"}],${fields}}`;
    const res = await request(app.server).post('/v1/chat/completions').set('content-type', 'application/json').send(body);
    assert.equal(res.status, 400, JSON.stringify(res.body));
    assert.equal(res.body.error.param, param);
    assert.match(res.body.error.message, /nested more than 64 levels deep/);
  }
  // The server is fine afterwards.
  await request(app.server).post('/v1/chat/completions').send({ model: MODEL, messages: MESSAGES, tools: [fn('add', ADD)], max_completion_tokens: 2 }).expect(200);
});
