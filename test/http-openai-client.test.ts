// The official `openai` npm client against a running server (127.0.0.1, port 0).
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import OpenAI from 'openai';
import { MODEL, greedy, gpt2Tokenizer, serveTest, spyOn } from './helpers/serving.js';
import { dialoGptModel } from './helpers/tiny-model.js';

const KEY = 'sk-client-test';

async function serve(t: { after: (fn: () => Promise<unknown>) => void }, modelDir?: string) {
  const { app, engine } = await serveTest(t, { config: { apiKeys: [KEY] }, engine: modelDir ? { modelDir } : {} });
  const spy = spyOn(engine);
  await app.listen({ host: '127.0.0.1', port: 0 });
  const { port } = app.server.address() as AddressInfo;
  const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: KEY, maxRetries: 0 });
  return { engine: spy, app, client, port };
}

test('openai client: completions.create (non-streaming)', async (t) => {
  const { client, engine } = await serve(t);
  const completion = await client.completions.create({ model: MODEL, prompt: 'Hello world', max_tokens: 5, n: 2, logprobs: 1, seed: 7, temperature: 0 });
  const { text } = await greedy('Hello world', 5);
  assert.equal(completion.object, 'text_completion');
  assert.equal(completion.model, MODEL);
  assert.match(completion.id, /^cmpl-/);
  assert.deepEqual(
    completion.choices.map((c) => [c.index, c.text, c.finish_reason]),
    [
      [0, text, 'length'],
      [1, text, 'length'],
    ],
  );
  assert.equal(completion.choices[0]!.logprobs?.tokens?.length, 5);
  assert.deepEqual(completion.usage, { prompt_tokens: 2, completion_tokens: 10, total_tokens: 12 });
  assert.equal(engine.submitted[0]!.params.seed, 7);
});

test('openai client: completions.create streaming, with usage', async (t) => {
  const { client } = await serve(t);
  const stream = await client.completions.create({
    model: MODEL,
    prompt: 'A',
    max_tokens: 6,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish: string | null = null;
  let usage: unknown = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    for (const choice of chunk.choices) {
      text += choice.text;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, (await greedy('A', 6)).text);
  assert.equal(finish, 'length');
  assert.equal(chunks, 8);
  assert.deepEqual(usage, { prompt_tokens: 1, completion_tokens: 6, total_tokens: 7 });
});

test('openai client: errors surface as the client\'s typed errors with our messages', async (t) => {
  const { client, port } = await serve(t);
  await assert.rejects(
    client.completions.create({ model: 'gpt-4', prompt: 'A' }),
    (err: unknown) => err instanceof OpenAI.NotFoundError && err.status === 404 && /does not exist/.test(err.message),
  );
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: 'A', temperature: 5 }),
    (err: unknown) => err instanceof OpenAI.BadRequestError && err.message.includes('`temperature`: must be <= 2'),
  );
  const badKey = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(
    badKey.completions.create({ model: MODEL, prompt: 'A' }),
    (err: unknown) => err instanceof OpenAI.AuthenticationError && err.status === 401,
  );
  const models = await client.models.list();
  assert.deepEqual(
    models.data.map((m) => m.id),
    [MODEL],
  );
});

// Chat: against a DialoGPT-shaped model (its own template) and a base model (the built-in one).
const CHAT_MODELS: Array<[string, () => Promise<string | undefined>, string]> = [
  ['DialoGPT-shaped model', dialoGptModel, 'Hi there<|endoftext|>'],
  ['base model, built-in template', async () => undefined, 'User: Hi there\nAssistant:'],
];

for (const [name, modelDir, rendered] of CHAT_MODELS) {
  test(`openai client: chat.completions.create, JSON with n and logprobs (${name})`, async (t) => {
    const { client } = await serve(t, await modelDir());
    const completion = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Hi there' }],
      max_completion_tokens: 4,
      n: 2,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const promptIds = (await gpt2Tokenizer()).encode(rendered);
    const { text } = await greedy(promptIds, 4);
    assert.equal(completion.object, 'chat.completion');
    assert.match(completion.id, /^chatcmpl-/);
    assert.deepEqual(
      completion.choices.map((c) => [c.index, c.message.role, c.message.content, c.finish_reason]),
      [
        [0, 'assistant', text, 'length'],
        [1, 'assistant', text, 'length'],
      ],
    );
    const lp = completion.choices[0]!.logprobs!.content!;
    assert.equal(lp.length, 4);
    assert.equal(lp.map((x) => x.token).join(''), text);
    assert.equal(lp[0]!.top_logprobs.length, 3);
    assert.deepEqual(completion.usage, { prompt_tokens: promptIds.length, completion_tokens: 8, total_tokens: promptIds.length + 8 });
  });

  test(`openai client: chat.completions.create streaming with usage, and the stream helper's final message (${name})`, async (t) => {
    const { client } = await serve(t, await modelDir());
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Hi there' }],
      max_tokens: 5,
      temperature: 0,
      n: 2,
      stream: true,
      stream_options: { include_usage: true },
    });
    const content = ['', ''];
    const roles: string[] = [];
    let usage: unknown = null;
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        if (choice.delta.role) roles.push(choice.delta.role);
        content[choice.index] += choice.delta.content ?? '';
      }
      if (chunk.usage) usage = chunk.usage;
    }
    const promptIds = (await gpt2Tokenizer()).encode(rendered);
    const { text } = await greedy(promptIds, 5);
    assert.deepEqual(content, [text, text]);
    assert.deepEqual(roles, ['assistant', 'assistant']);
    assert.deepEqual(usage, { prompt_tokens: promptIds.length, completion_tokens: 10, total_tokens: promptIds.length + 10 });

    // The SDK's own accumulator rebuilds the message from our chunks.
    const runner = client.chat.completions.stream({ model: MODEL, messages: [{ role: 'user', content: 'Hi there' }], max_tokens: 5, temperature: 0 });
    const final = await runner.finalChatCompletion();
    assert.deepEqual(final.choices[0]!.message.content, text);
    assert.equal(final.choices[0]!.finish_reason, 'length');
  });
}

test('openai client: chat errors are the client\'s typed errors', async (t) => {
  const { client } = await serve(t);
  await assert.rejects(
    client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:' } }] }],
    }),
    (err: unknown) => err instanceof OpenAI.BadRequestError && err.code === 'unsupported_parameter' && err.param === 'messages[0].content[0].type',
  );
});

test('openai client: a structured output (response_format json_schema) passes through as a body field', async (t) => {
  const { client } = await serve(t);
  const schema = { type: 'object', properties: { answer: { enum: ['yes', 'no'] }, confidence: { type: 'integer', minimum: 0, maximum: 9 } }, required: ['answer', 'confidence'] };
  const completion = await client.completions.create({
    model: MODEL,
    prompt: 'Is it?',
    max_tokens: 30,
    // Not in the client's Completions types (OpenAI has it on Chat): sent as given, as vLLM expects.
    ...({ response_format: { type: 'json_schema', json_schema: { name: 'verdict', schema, strict: true } } } as object),
  });
  const value = JSON.parse(completion.choices[0]!.text) as { answer: string; confidence: number };
  assert.ok(['yes', 'no'].includes(value.answer));
  assert.ok(Number.isInteger(value.confidence) && value.confidence >= 0 && value.confidence <= 9);
  assert.equal(completion.choices[0]!.finish_reason, 'stop');
});

test('openai client: chat.completions.create with response_format json_schema gives a message that parses and validates', async (t) => {
  const { client } = await serve(t);
  const schema = { type: 'object', properties: { answer: { enum: ['yes', 'no'] } }, required: ['answer'] };
  const chat = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'Is it?' }],
    max_completion_tokens: 30,
    response_format: { type: 'json_schema', json_schema: { name: 'verdict', schema, strict: true } },
  });
  const value = JSON.parse(chat.choices[0]!.message.content!) as { answer: string };
  assert.ok(['yes', 'no'].includes(value.answer));
  assert.equal(chat.choices[0]!.finish_reason, 'stop');
});
