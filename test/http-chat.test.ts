// POST /v1/chat/completions on the real engine (scripted runner, real tokenizer): the rendered
// prompt (built-in transcript, a DialoGPT-shaped model's own template, --chat-template), the
// response and chunk shapes, n, logprobs, echo and continue_final_message, and the refusals.
import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import request from 'supertest';
import type { ServerConfig } from '../src/config.js';
import { BUILT_IN_STOP } from '../src/model/chat-template.js';
import { DEFAULT_PARAMS } from './helpers/engine-run.js';
import { alternative, scriptedLogprob, targetAfter } from './helpers/scripted-runner.js';
import { EOS, MODEL, VOCAB, greedy, gpt2Tokenizer, parseSse, serveTest, spyOn, type EngineSetup } from './helpers/serving.js';
import { dialoGptModel } from './helpers/tiny-model.js';

type T = { after: (fn: () => Promise<unknown>) => void };

async function setup(t: T, setupOpts: EngineSetup = {}, config: Partial<ServerConfig> = {}) {
  const server = await serveTest(t, { ...setupOpts, config });
  return { ...server, spy: spyOn(server.engine) };
}

async function dialoGpt(t: T, setupOpts: EngineSetup = {}) {
  return setup(t, { ...setupOpts, engine: { modelDir: await dialoGptModel(), ...setupOpts.engine } });
}

function chat(app: FastifyInstance, body: Record<string, unknown>) {
  return request(app.server)
    .post('/v1/chat/completions')
    .send({ model: MODEL, ...body });
}

const HELLO = [{ role: 'user', content: 'Hello' }];

test('base model: the built-in transcript is the prompt, the reply is the assistant message, and the next user turn stops it', async (t) => {
  const { app, spy } = await setup(t);
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello.' },
    { role: 'user', content: [{ type: 'text', text: 'How are' }, { type: 'text', text: 'you?' }] },
  ];
  const res = await chat(app, { messages, max_tokens: 5, temperature: 0 }).expect(200);
  const tok = await gpt2Tokenizer();
  const transcript = 'You are terse.\n\nUser: Hi\nAssistant: Hello.\nUser: How are\nyou?\nAssistant:';
  const promptIds = tok.encode(transcript);
  const { text } = await greedy(promptIds, 5);
  assert.deepEqual(res.body, {
    id: 'chatcmpl-test',
    object: 'chat.completion',
    created: 1_700_000_000,
    model: MODEL,
    system_fingerprint: res.body.system_fingerprint,
    choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: null, finish_reason: 'length' }],
    usage: { prompt_tokens: promptIds.length, completion_tokens: 5, total_tokens: promptIds.length + 5 },
  });
  assert.deepEqual(spy.submitted, [
    {
      id: 'chatcmpl-test-0',
      promptTokens: promptIds,
      params: { ...DEFAULT_PARAMS, temperature: 0, maxTokens: 5, stop: BUILT_IN_STOP },
    },
  ]);
  // The request's own stop strings come first; the template's turn boundary is added.
  await chat(app, { messages: HELLO, max_tokens: 1, stop: 'END' }).expect(200);
  assert.deepEqual(spy.submitted[1]!.params.stop, ['END', '\nUser:', '\nTool:']);
  const models = await request(app.server).get('/v1/models').expect(200);
  assert.equal(models.body.data[0].chat_template, 'built-in');
});

test('max_completion_tokens wins over max_tokens, and without either a chat may fill the context', async (t) => {
  const { app, spy, engine } = await setup(t);
  await chat(app, { messages: HELLO, max_tokens: 9, max_completion_tokens: 3 }).expect(200);
  assert.equal(spy.submitted[0]!.params.maxTokens, 3);
  // No limit means what the prompt leaves of the context.
  const open = await chat(app, { messages: HELLO, temperature: 0, logit_bias: { [EOS]: 100 }, min_tokens: 2 }).expect(200);
  const prompt = spy.submitted[1]!.promptTokens.length;
  assert.equal(spy.submitted[1]!.params.maxTokens, engine.model.contextLength - prompt);
  assert.equal(open.body.choices[0].finish_reason, 'stop');
});

test('DialoGPT-shaped model: its tokenizer_config.json template joins turns with <|endoftext|>, and EOS ends the reply', async (t) => {
  const { app, spy } = await dialoGpt(t);
  const messages = [
    { role: 'user', content: 'Does money buy happiness?' },
    { role: 'assistant', content: 'Depends how much.' },
    { role: 'user', content: 'Ha' },
  ];
  const res = await chat(app, { messages, max_tokens: 4, temperature: 0 }).expect(200);
  const tok = await gpt2Tokenizer();
  const promptIds = tok.encode('Does money buy happiness?<|endoftext|>Depends how much.<|endoftext|>Ha<|endoftext|>');
  assert.equal(promptIds.filter((id) => id === EOS).length, 3, 'the turn separator is the <|endoftext|> token');
  assert.deepEqual(spy.submitted[0]!.promptTokens, promptIds);
  assert.deepEqual(spy.submitted[0]!.params.stop, [], 'a model with its own template gets no built-in stop');
  assert.equal(res.body.choices[0].message.content, (await greedy(promptIds, 4)).text);
  // The model ending its turn with <|endoftext|> ends the reply: finish_reason "stop".
  const stopped = await chat(app, { messages, max_tokens: 4, temperature: 0, logit_bias: { [EOS]: 100 } }).expect(200);
  assert.deepEqual([stopped.body.choices[0].message.content, stopped.body.choices[0].finish_reason], ['', 'stop']);
  const models = await request(app.server).get('/v1/models').expect(200);
  assert.equal(models.body.data[0].chat_template, 'tokenizer_config.json');
});

test('streaming: the role in each choice\'s first delta, content deltas, finish_reason, usage, [DONE]', async (t) => {
  const { app } = await setup(t);
  const res = await chat(app, { messages: HELLO, max_tokens: 3, n: 2, temperature: 0, stream: true, stream_options: { include_usage: true } }).expect(200);
  assert.match(res.headers['content-type'], /^text\/event-stream/);
  const events = parseSse(res.text);
  assert.equal(events.at(-1), '[DONE]');
  const chunks = events.slice(0, -1) as Array<Record<string, any>>;
  for (const c of chunks) {
    assert.deepEqual(Object.keys(c), ['id', 'object', 'created', 'model', 'system_fingerprint', 'choices', 'usage']);
    assert.equal(c.object, 'chat.completion.chunk');
    assert.equal(c.id, 'chatcmpl-test');
  }
  assert.deepEqual(chunks[0]!.choices, [{ index: 0, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }]);
  assert.deepEqual(chunks[1]!.choices, [{ index: 1, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }]);
  const tok = await gpt2Tokenizer();
  const { text } = await greedy(tok.encode('User: Hello\nAssistant:'), 3);
  for (const index of [0, 1]) {
    const mine = chunks.flatMap((c) => c.choices).filter((c) => c.index === index);
    assert.equal(mine.map((c) => c.delta.content ?? '').join(''), text);
    assert.deepEqual(mine.at(-1), { index, delta: {}, logprobs: null, finish_reason: 'length' });
    assert.equal(mine.filter((c) => c.delta.role !== undefined).length, 1);
  }
  const last = chunks.at(-1)!;
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, 6);
  assert.ok(chunks.slice(0, -1).every((c) => c.usage === null));
});

test('logprobs in chat\'s shape: token, logprob, bytes and top_logprobs, streamed and not', async (t) => {
  const { app } = await setup(t);
  const res = await chat(app, { messages: HELLO, max_tokens: 2, temperature: 0, logprobs: true, top_logprobs: 2 }).expect(200);
  const { content } = res.body.choices[0].logprobs;
  assert.equal(content.length, 2);
  const tok = await gpt2Tokenizer();
  const { ids } = await greedy(tok.encode('User: Hello\nAssistant:'), 2);
  const first = content[0];
  assert.equal(first.token, tok.decode([ids[0]!]));
  assert.deepEqual(first.bytes, [...Buffer.from(first.token, 'utf8')]);
  assert.ok(Math.abs(first.logprob - scriptedLogprob(0, VOCAB)) < 1e-4);
  assert.equal(first.top_logprobs.length, 2);
  assert.deepEqual(first.top_logprobs[0], { token: first.token, logprob: first.logprob, bytes: first.bytes });
  assert.ok(first.top_logprobs[1].logprob < first.logprob);
  assert.equal(res.body.choices[0].logprobs.refusal, null);

  const plain = await chat(app, { messages: HELLO, max_tokens: 1, logprobs: true }).expect(200);
  assert.deepEqual(plain.body.choices[0].logprobs.content[0].top_logprobs, []);

  const streamed = await chat(app, { messages: HELLO, max_tokens: 2, temperature: 0, logprobs: true, top_logprobs: 2, stream: true }).expect(200);
  const deltas = (parseSse(streamed.text).slice(0, -1) as Array<Record<string, any>>)
    .flatMap((c) => c.choices)
    .filter((c) => c.logprobs !== null);
  assert.deepEqual(
    deltas.flatMap((c) => c.logprobs.content),
    content,
  );
});

test('logprobs of tokens that are part of a character: raw bytes, token as \\xNN escapes, bytes concatenate to the content', async (t) => {
  const { app } = await setup(t);
  const tok = await gpt2Tokenizer();
  const char = '我';
  const pieces = tok.encode(char); // e6 88 | 91: neither token is a character on its own
  assert.equal(pieces.length, 2);
  const partial = (id: number) => !isUtf8(tok.tokenBytes(id));
  assert.ok(pieces.every(partial));
  // OpenAI's form: each byte that is not printable ASCII as \xNN.
  const shown = (id: number) =>
    partial(id) ? [...tok.tokenBytes(id)].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('') : tok.decode([id]);
  // A user message after which the model's own likeliest tokens (the alternatives) include a
  // partial one as well, at the first or the second step.
  const neighbours = (prefix: number[]) => [0, 1, 2, 3].map((k) => alternative(targetAfter(prefix, VOCAB), k, VOCAB));
  let content = '';
  let steps: number[][] = [];
  for (let i = 0; !steps.flat().some(partial); i++) {
    content = `Say it ${i}`;
    const promptIds = tok.encode(`User: ${content}\nAssistant:`);
    steps = [neighbours(promptIds), neighbours([...promptIds, pieces[0]!])];
  }
  const body = {
    messages: [{ role: 'user', content }],
    guided_choice: [char],
    logit_bias: { [pieces[0]!]: 100 }, // the two-byte token, not the lone e6 the choice also allows
    logprobs: true,
    top_logprobs: 20,
    temperature: 0,
  };
  const res = await chat(app, body).expect(200);
  const choice = res.body.choices[0];
  assert.equal(choice.message.content, char);
  const all = choice.logprobs.content as Array<{ token: string; bytes: number[]; top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }> }>;
  // The <|endoftext|> that ended the reply has the last entry; its text is not content.
  assert.equal(all.at(-1)!.token, '<|endoftext|>');
  const entries = all.slice(0, -1);
  assert.deepEqual(entries.map((e) => e.token), ['\\xe6\\x88', '\\x91']);
  assert.deepEqual(entries.map((e) => e.bytes), pieces.map((id) => [...tok.tokenBytes(id)]));
  assert.equal(Buffer.from(entries.flatMap((e) => e.bytes)).toString('utf8'), choice.message.content);
  entries.forEach((e, i) => {
    assert.equal(e.top_logprobs.length, 20);
    steps[i]!.forEach((id, k) => {
      assert.deepEqual(e.top_logprobs[k], { token: shown(id), logprob: e.top_logprobs[k]!.logprob, bytes: [...tok.tokenBytes(id)] }, `step ${i}, alternative ${k}`);
      assert.ok(Math.abs(e.top_logprobs[k]!.logprob - scriptedLogprob(k, VOCAB)) < 1e-4);
    });
  });

  const streamed = await chat(app, { ...body, stream: true }).expect(200);
  const deltas = (parseSse(streamed.text).slice(0, -1) as Array<Record<string, any>>).flatMap((c) => c.choices).filter((c) => c.logprobs !== null);
  assert.deepEqual(deltas.flatMap((c) => c.logprobs.content), all);
});

test('echo and continue_final_message behave as vLLM\'s', async (t) => {
  const { app, spy } = await setup(t);
  const messages = [
    { role: 'user', content: 'Name a colour' },
    { role: 'assistant', content: 'The colour is' },
  ];
  const res = await chat(app, { messages, continue_final_message: true, echo: true, max_tokens: 3, temperature: 0 }).expect(200);
  const tok = await gpt2Tokenizer();
  // The final message is left open: no newline after it, no new "Assistant:".
  const promptIds = tok.encode('User: Name a colour\nAssistant: The colour is');
  assert.deepEqual(spy.submitted[0]!.promptTokens, promptIds);
  const { text } = await greedy(promptIds, 3);
  assert.deepEqual(res.body.choices[0].message, { role: 'assistant', content: 'The colour is' + text, refusal: null });

  // Without echo, only the continuation; with add_generation_prompt false, the final role answers.
  const cont = await chat(app, { messages: HELLO, add_generation_prompt: false, max_tokens: 1 }).expect(200);
  assert.equal(cont.body.choices[0].message.role, 'user');
  assert.deepEqual(spy.submitted[1]!.promptTokens, tok.encode('User: Hello\n'));

  const streamed = await chat(app, { messages, continue_final_message: true, echo: true, max_tokens: 3, temperature: 0, stream: true }).expect(200);
  const deltas = (parseSse(streamed.text).slice(0, -1) as Array<Record<string, any>>).flatMap((c) => c.choices);
  assert.deepEqual(deltas[1], { index: 0, delta: { content: 'The colour is' }, logprobs: null, finish_reason: null });
  assert.equal(deltas.map((c) => c.delta.content ?? '').join(''), 'The colour is' + text);

  const both = await chat(app, { messages, continue_final_message: true, add_generation_prompt: true }).expect(400);
  assert.equal(both.body.error.param, 'continue_final_message');
});

test('images, audio and the legacy functions API are 400 unsupported_parameter; other mistakes name their field', async (t) => {
  const { app, spy } = await setup(t);
  const cases: Array<[Record<string, unknown>, number, string, string]> = [
    [{ messages: HELLO, tool_choice: 'auto' }, 400, 'invalid_value', 'tool_choice'],
    [{ messages: [{ role: 'user', content: [{ type: 'text', text: 'x' }, { type: 'image_url', image_url: { url: 'data:' } }] }] }, 400, 'unsupported_parameter', 'messages[0].content[1].type'],
    [{ messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: {} }] }] }, 400, 'unsupported_parameter', 'messages[0].content[0].type'],
    [{ messages: HELLO, audio: { voice: 'alloy' }, modalities: ['text', 'audio'] }, 400, 'unsupported_parameter', 'audio'],
    [{ messages: HELLO, modalities: ['audio'] }, 400, 'unsupported_parameter', 'modalities'],
    [{ messages: [{ role: 'function', content: 'r', name: 'x' }] }, 400, 'unsupported_parameter', 'messages[0].role'],
    [{ messages: HELLO, functions: [{ name: 'f' }] }, 400, 'unsupported_parameter', 'functions'],
    [{ messages: [{ role: 'wizard', content: 'x' }] }, 400, 'invalid_value', 'messages[0].role'],
    [{ messages: [] }, 400, 'invalid_value', 'messages'],
    [{}, 400, 'missing_required_parameter', 'messages'],
    [{ messages: [{ role: 'user', content: 42 }] }, 400, 'invalid_value', 'messages[0].content'],
    [{ messages: HELLO, top_logprobs: 2 }, 400, 'invalid_value', 'top_logprobs'],
    [{ messages: HELLO, temperature: 3 }, 400, 'invalid_value', 'temperature'],
    [{ messages: HELLO, min_tokens: 5, max_completion_tokens: 2 }, 400, 'invalid_value', 'min_tokens'],
    [{ messages: HELLO, model: 'gpt-4o' }, 404, 'model_not_found', 'model'],
    [{ messages: [{ role: 'user', content: ' x'.repeat(1100) }], max_tokens: 10 }, 400, 'context_length_exceeded', 'prompt'],
  ];
  for (const [body, status, code, param] of cases) {
    const res = await chat(app, body).expect(status);
    assert.equal(res.body.error.code, code, JSON.stringify(body).slice(0, 120));
    assert.equal(res.body.error.param, param, JSON.stringify(body).slice(0, 120));
  }
  const functions = await chat(app, { messages: HELLO, function_call: 'auto' }).expect(400);
  assert.equal(functions.body.error.message, '`function_call`: is not supported by this server');
  assert.equal(spy.submitted.length, 0, 'nothing reached the engine');
});

test('a template that fails to render is a 400 naming the problem; one that does not parse fails the start', async (t) => {
  const template = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System messages are not supported') }}{% endif %}{{ m.content }}{% endfor %}";
  const { app } = await setup(t, { engine: { chatTemplate: template } });
  const res = await chat(app, { messages: [{ role: 'system', content: 'x' }] }).expect(400);
  assert.equal(res.body.error.code, 'invalid_value');
  assert.equal(res.body.error.param, 'messages');
  assert.match(res.body.error.message, /^`messages`: the chat template failed to render: .*System messages are not supported/);
  await chat(app, { messages: HELLO, max_tokens: 1 }).expect(200);
  const models = await request(app.server).get('/v1/models').expect(200);
  assert.equal(models.body.data[0].chat_template, '--chat-template');

  await assert.rejects(setup(t, { engine: { chatTemplate: '{% for m in messages %}' } }), /chat template \(--chat-template\) does not parse/);
});

test('the worker engine renders in the tokenizer thread, and a chat and a completion of the same prompt get the same tokens', async (t) => {
  const { app, spy } = await setup(t, { worker: true });
  const a = await chat(app, { messages: HELLO, max_tokens: 4, temperature: 0 }).expect(200);
  const b = await request(app.server)
    .post('/v1/completions')
    .send({ model: MODEL, prompt: 'User: Hello\nAssistant:', max_tokens: 4, temperature: 0 })
    .expect(200);
  assert.deepEqual(spy.submitted[0]!.promptTokens, spy.submitted[1]!.promptTokens);
  assert.equal(a.body.choices[0].message.content, b.body.choices[0].text);
  assert.deepEqual(a.body.usage, b.body.usage);
});
