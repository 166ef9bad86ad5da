// Which chat template a model folder is served with, and rendering: precedence, files, named
// templates, special tokens, the built-in transcript, continue_final_message, and the exporter
// carrying tokenizer_config.json into the model folder.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { BUILT_IN_STOP, ChatRenderer, ChatTemplateError, loadChatTemplate, type ChatRenderRequest } from '../src/model/chat-template.js';
import { DIALOGPT_TEMPLATE, dialoGptModel, tempDir } from './helpers/tiny-model.js';

function folder(tokenizerConfig?: unknown): string {
  const dir = tempDir('chat-template-');
  if (tokenizerConfig !== undefined) writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig));
  return dir;
}

function render(dir: string, req: Partial<ChatRenderRequest>, configured?: string) {
  return new ChatRenderer(loadChatTemplate(dir, configured)).render({ messages: [], addGenerationPrompt: true, continueFinalMessage: false, kwargs: {}, ...req });
}

const TURNS = [
  { role: 'system', content: 'Be brief.' },
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: 'Bye' },
];

test('no template anywhere: the built-in transcript, with its stop at the next user turn', () => {
  const spec = loadChatTemplate(folder());
  assert.deepEqual([spec.source, spec.stop], ['built-in', BUILT_IN_STOP]);
  assert.deepEqual(render(folder(), { messages: TURNS }), { ok: true, text: 'Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Bye\nAssistant:' });
  assert.deepEqual(render(folder(), { messages: TURNS, addGenerationPrompt: false }), { ok: true, text: 'Be brief.\n\nUser: Hi\nAssistant: Hello!\nUser: Bye\n' });
});

test("tokenizer_config.json's template (a string, or the list entry named default) with its special tokens", () => {
  const dir = folder({ chat_template: DIALOGPT_TEMPLATE, eos_token: { content: '<|end|>', special: true } });
  assert.equal(loadChatTemplate(dir).source, 'tokenizer_config.json');
  assert.deepEqual(loadChatTemplate(dir).stop, []);
  assert.deepEqual(render(dir, { messages: TURNS.slice(1) }), { ok: true, text: 'Hi<|end|>Hello!<|end|>Bye<|end|>' });
  const named = folder({ chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D{{ messages | length }}' }] });
  assert.deepEqual(render(named, { messages: TURNS }), { ok: true, text: 'D4' });
});

test('--chat-template overrides the folder, as a file or as the template itself; nonsense fails the start', () => {
  const dir = folder({ chat_template: DIALOGPT_TEMPLATE });
  const file = join(tempDir('chat-template-file-'), 'tpl.jinja');
  writeFileSync(file, '{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}');
  assert.equal(loadChatTemplate(dir, file).source, '--chat-template');
  assert.deepEqual(render(dir, { messages: TURNS.slice(1, 2) }, file), { ok: true, text: '[user]Hi' });
  assert.deepEqual(render(dir, { messages: TURNS.slice(1, 2), kwargs: { x: 7 } }, '{{ x }}:{{ messages[0].content }}'), { ok: true, text: '7:Hi' });
  assert.throws(() => loadChatTemplate(dir, './no-such-template.jinja'), ChatTemplateError);
  assert.throws(() => loadChatTemplate(dir, '{% if %}'), /does not parse/);
  const broken = folder();
  writeFileSync(join(broken, 'tokenizer_config.json'), '{"chat_template": ');
  assert.throws(() => loadChatTemplate(broken), /not valid JSON/);
});

test('continue_final_message leaves the final message open; a template that hides it cannot be continued', () => {
  const messages = [...TURNS.slice(0, 2), { role: 'assistant', content: 'Well, ' }];
  assert.deepEqual(render(folder(), { messages, addGenerationPrompt: false, continueFinalMessage: true }), {
    ok: true,
    text: 'Be brief.\n\nUser: Hi\nAssistant: Well,',
  });
  const hides = render(folder(), { messages, addGenerationPrompt: false, continueFinalMessage: true }, '{{ messages[0].content }}');
  assert.equal(hides.ok, false);
});

test('a render failure is a result naming the problem, not a throw', () => {
  const r = render(folder(), { messages: TURNS }, "{{ raise_exception('no system role') }}");
  assert.deepEqual(r, { ok: false, problem: 'the chat template failed to render: no system role' });
});

test('the exporter copies tokenizer_config.json into the model folder', async () => {
  const dir = await dialoGptModel();
  assert.ok(existsSync(join(dir, 'tokenizer_config.json')));
  assert.equal((JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')) as { chat_template: string }).chat_template, DIALOGPT_TEMPLATE);
  assert.equal(loadChatTemplate(dir).source, 'tokenizer_config.json');
});
