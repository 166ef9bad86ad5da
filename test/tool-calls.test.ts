// Tool calls below HTTP: the grammar that makes every call parse (a byte DFA walked directly),
// the parser that reads calls back out of text arriving in any pieces, and the built-in chat
// template's rendering of tools, calls and tool results.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BUILT_IN_TEMPLATE, ChatRenderer } from '../src/model/chat-template.js';
import { textEvents, ToolCallParser, type ToolCallEvent } from '../src/server/completion/tool-call-parser.js';
import type { ByteDfa } from '../src/structured/byte-automaton.js';
import { compileConstraint, constraintKey, type ConstraintSpec } from '../src/structured/constraint.js';
import { formatToolCall } from './helpers/tool-calls.js';

const WEATHER = { type: 'object', properties: { city: { type: 'string', maxLength: 12 }, unit: { enum: ['c', 'f'] } }, required: ['city', 'unit'], additionalProperties: false };
const ADD = { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'] };
const TOOLS = [
  { name: 'get_weather', parameters: WEATHER, where: 'tools[0]' },
  { name: 'add', parameters: ADD, where: 'tools[1]' },
];

function accepts(dfa: ByteDfa, text: string): boolean {
  let s = dfa.start;
  for (const b of Buffer.from(text, 'utf8')) {
    s = dfa.next[s * dfa.classCount + dfa.classOf[b]!]!;
    if (s < 0) return false;
  }
  return dfa.accepting[s] === 1;
}

const PARIS = formatToolCall('get_weather', '{"city": "Paris", "unit": "c"}');
const SUM = formatToolCall('add', '{"a": 2, "b": 40}');

function spec(text: null | 'free' | { kind: 'json_object' }, parallel: boolean): ConstraintSpec {
  return { kind: 'tool_calls', tools: TOOLS, parallel, text };
}

test('grammar: calls required, one or several, arguments valid against their tool', () => {
  const one = compileConstraint(spec(null, false));
  assert.ok(accepts(one, PARIS));
  assert.ok(accepts(one, SUM));
  assert.ok(!accepts(one, `${PARIS}\n${SUM}`), 'parallel_tool_calls false: one call');
  assert.ok(!accepts(one, 'Hello'), 'required: no text');
  assert.ok(!accepts(one, formatToolCall('get_weather', '{"city": "Paris"}')), 'a required property is missing');
  assert.ok(!accepts(one, formatToolCall('get_weather', '{"city": "Paris", "unit": "k"}')), 'not in the enum');
  assert.ok(!accepts(one, formatToolCall('delete_all', '{}')), 'an unknown function');
  assert.ok(!accepts(one, formatToolCall('add', '{"a": 1.5, "b": 2}')), 'not an integer');
  const many = compileConstraint(spec(null, true));
  assert.ok(accepts(many, `${PARIS}\n${SUM}\n${PARIS}`));
});

test('grammar: "auto" is free text that cannot write the opening without completing a call', () => {
  const auto = compileConstraint(spec('free', true));
  assert.ok(accepts(auto, 'Hello there, any text {"a": 1} at all'));
  assert.ok(accepts(auto, `Let me look. ${PARIS}`));
  assert.ok(accepts(auto, PARIS));
  assert.ok(!accepts(auto, 'text <tool_call> more text'), 'the opening always begins a call');
  assert.ok(!accepts(auto, `${PARIS} and then text`), 'nothing but calls after a call');
  // With a structured output, the alternative to calls is that value, not free text.
  const json = compileConstraint(spec({ kind: 'json_object' }, false));
  assert.ok(accepts(json, '{"x": 1}'));
  assert.ok(accepts(json, PARIS));
  assert.ok(!accepts(json, 'Hello'));
  // Each setting is its own constraint (the engine caches by key).
  const keys = [spec(null, false), spec(null, true), spec('free', true), spec({ kind: 'json_object' }, false)].map(constraintKey);
  assert.equal(new Set(keys).size, 4);
});

/** Replays events into the final content and calls. */
function assemble(events: ToolCallEvent[]): { content: string; calls: Array<{ name: string; args: string }> } {
  let content = '';
  const calls: Array<{ name: string; args: string }> = [];
  for (const e of events) {
    if (e.type === 'content') content += e.text;
    else if (e.type === 'call') calls[e.index] = { name: e.name, args: '' };
    else calls[e.index]!.args += e.text;
  }
  return { content, calls };
}

function parseInPieces(text: string, cuts: number[]): ToolCallEvent[] {
  const parser = new ToolCallParser();
  const events: ToolCallEvent[] = [];
  let from = 0;
  for (const cut of [...cuts, text.length]) {
    events.push(...textEvents(parser, text.slice(from, cut), cut === text.length));
    from = cut;
  }
  return events;
}

test('parser: the same content and calls however the text is cut into pieces', () => {
  const text = ` Sure, two calls. ${PARIS}\n${SUM}`;
  const whole = assemble(parseInPieces(text, []));
  assert.deepEqual(whole, {
    content: ' Sure, two calls.',
    calls: [
      { name: 'get_weather', args: '{"city": "Paris", "unit": "c"}' },
      { name: 'add', args: '{"a": 2, "b": 40}' },
    ],
  });
  for (let cut = 1; cut < text.length; cut++) assert.deepEqual(assemble(parseInPieces(text, [cut])), whole, `cut at ${cut}`);
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let trial = 0; trial < 200; trial++) {
    const cuts = [...new Set(Array.from({ length: 12 }, () => 1 + Math.floor(random() * (text.length - 1))))].sort((a, b) => a - b);
    assert.deepEqual(assemble(parseInPieces(text, cuts)), whole, `cuts ${cuts.join(',')}`);
  }
});

test('parser: whitespace before a call is not content; text that merely looks like the opening is', () => {
  assert.deepEqual(assemble(parseInPieces(` \n${PARIS}`, [1, 2])).content, '');
  assert.deepEqual(assemble(parseInPieces('  ', [1])), { content: '  ', calls: [] });
  assert.deepEqual(assemble(parseInPieces('a <tool_ca', [3])), { content: 'a <tool_ca', calls: [] });
  // A call's name is announced once complete, before its arguments.
  const events = parseInPieces(PARIS, [PARIS.indexOf('"arguments"') + 13, PARIS.indexOf('Paris')]);
  assert.deepEqual(events[0], { type: 'call', index: 0, name: 'get_weather' });
  assert.ok(events.filter((e) => e.type === 'arguments').length >= 2, 'arguments stream in pieces');
});

test('parser: text cut inside a call (max_tokens) leaves that call with the arguments so far', () => {
  const cut = PARIS.slice(0, PARIS.indexOf('Paris') + 3);
  const parser = new ToolCallParser();
  const { calls } = assemble(textEvents(parser, cut, true));
  assert.deepEqual(calls, [{ name: 'get_weather', args: '{"city": "Par' }]);
  assert.equal(parser.callCount, 1);
  // Cut before the name is complete: no call at all.
  assert.deepEqual(assemble(textEvents(new ToolCallParser(), '<tool_call>\n{"name": "get_wea', true)), { content: '', calls: [] });
});

test('built-in template: tools, an earlier call (as the model writes calls) and its result', () => {
  const renderer = new ChatRenderer({ source: 'built-in', template: BUILT_IN_TEMPLATE, stop: [], bosToken: '', eosToken: '' });
  const result = renderer.render({
    messages: [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris","unit":"c"}' } }] },
      { role: 'tool', content: '18 C', tool_call_id: 'c1' },
    ],
    addGenerationPrompt: true,
    continueFinalMessage: false,
    kwargs: {},
    tools: [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }],
  });
  assert.ok(result.ok);
  const lines = result.text.split('\n');
  assert.match(lines[0]!, /^You can call these functions\. To call one, write <tool_call>/);
  assert.equal(lines[1], '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}');
  // The earlier call is rendered exactly as the grammar makes the model write one.
  assert.ok(result.text.endsWith(`\n\nUser: Weather in Paris?\nAssistant: ${PARIS}\nTool: 18 C\nAssistant:`), result.text);
  // Without tools the transcript is as before.
  const plain = renderer.render({ messages: [{ role: 'user', content: 'hi' }], addGenerationPrompt: true, continueFinalMessage: false, kwargs: {} });
  assert.deepEqual(plain, { ok: true, text: 'User: hi\nAssistant:' });
});
