// Structured outputs on the tiny random model, whose free text is noise: any valid output is the
// mask's doing. JSON schemas (checked with ajv), regexes, choices; greedy decoding against the
// float64 reference with the same mask; batch invariance next to constrained neighbours; n > 1,
// logprobs, stop strings and max_tokens.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Ajv } from 'ajv';
import type { EngineClient, SamplingParams } from '../src/engine/types.js';
import { loadTokenizer } from '../src/model/tokenizer.js';
import type { ByteDfa } from '../src/structured/byte-automaton.js';
import { ConstraintCompiler, compileConstraint, type CompiledConstraint, type ConstraintSpec } from '../src/structured/constraint.js';
import { TokenConstraint, VocabularyIndex } from '../src/structured/token-mask.js';
import { collect, request } from './helpers/engine-run.js';
import { InProcessEngine } from './helpers/in-process-engine.js';
import { ReferenceGpt2 } from './helpers/reference-gpt2.js';
import { IM_END, IM_END_ID, engineOptions, imEndModel, tinyModel } from './helpers/tiny-model.js';

const EOS = 50256;
let dir: string;
let engine: EngineClient;
let ref: ReferenceGpt2;
const compiler = new ConstraintCompiler();
const prompt = (salt: number) => Array.from({ length: 5 }, (_, i) => (i * 7919 + salt * 104729 + 13) % 50000);

before(async () => {
  dir = await tinyModel(1);
  ref = new ReferenceGpt2(join(dir, 'checkpoint'));
  engine = await InProcessEngine.start(engineOptions(dir));
});
after(() => engine.shutdown());

/** The state after reading `bytes` from `state`, or -1 where no accepted string continues. */
function walk(dfa: ByteDfa, state: number, bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length && state >= 0; i++) state = dfa.next[state * dfa.classCount + dfa.classOf[bytes[i]!]!]!;
  return state;
}

/** Whether the DFA accepts `text` in full. */
function accepts(dfa: ByteDfa, text: string): boolean {
  const s = walk(dfa, dfa.start, Buffer.from(text, 'utf8'));
  return s >= 0 && dfa.accepting[s] === 1;
}

/** The token ids the constraint's mask lets through in `state` (read off the real mask). */
function allowedIds(tc: TokenConstraint, state: number, V = 50257): number[] {
  const masked = tc.maskInto(state, new Float32Array(V), new Float32Array(V));
  const ids: number[] = [];
  masked.forEach((v, id) => v === 0 && ids.push(id));
  return ids;
}

function compiled(spec: ConstraintSpec): CompiledConstraint {
  const r = compiler.compile(spec);
  if ('error' in r) throw new Error(r.error);
  return r.ok;
}

const schema = (s: object): ConstraintSpec => ({ kind: 'json_schema', schema: s, where: 'schema' });

const SCHEMAS: Record<string, object> = {
  object: {
    type: 'object',
    properties: { name: { type: 'string', maxLength: 6 }, ok: { type: 'boolean' }, none: { type: 'null' } },
    required: ['name', 'ok'],
    additionalProperties: false,
  },
  array: { type: 'array', items: { type: 'integer', minimum: -5, maximum: 5 }, minItems: 1, maxItems: 4 },
  enum: { type: 'object', properties: { color: { enum: ['red', 'green', 'blue', 7, null] }, size: { const: 'L' } }, required: ['color'] },
  nested: {
    type: 'object',
    properties: {
      id: { type: 'integer', minimum: 0, maximum: 99999 },
      owner: {
        type: 'object',
        properties: { first: { type: 'string', maxLength: 4 }, tags: { type: 'array', items: { type: 'string', maxLength: 3 }, maxItems: 2 } },
        required: ['first', 'tags'],
      },
      role: { $ref: '#/$defs/role' },
    },
    required: ['id', 'owner', 'role'],
    $defs: { role: { anyOf: [{ enum: ['admin', 'user'] }, { type: 'integer', maximum: 3, minimum: 1 }] } },
  },
  numbers: {
    type: 'object',
    properties: {
      age: { type: 'integer', minimum: 18, maximum: 120 },
      score: { type: 'number', minimum: -1, maximum: 1 },
      ratio: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 2 },
      count: { type: 'integer', exclusiveMinimum: 99 },
    },
    required: ['age', 'score', 'ratio', 'count'],
  },
  patterns: {
    type: 'object',
    properties: {
      zip: { type: 'string', pattern: '^\\d{5}(-\\d{4})?$' },
      code: { type: 'string', pattern: '[A-Z]{2}[a-z"\\\\]{1,3}' },
      day: { type: 'string', format: 'date' },
      tier: { type: ['string', 'integer'], maxLength: 2, maximum: 9, minimum: 0 },
    },
    required: ['zip', 'code', 'day', 'tier'],
  },
};

const SAMPLES = 20;

for (const [name, s] of Object.entries(SCHEMAS)) {
  test(`json schema "${name}": ${SAMPLES} seeded samples parse and validate (ajv)`, async (t) => {
    const start = performance.now();
    const constraint = compiled(schema(s));
    t.diagnostic(`compile ${(performance.now() - start).toFixed(0)} ms, ${constraint.dfa.stateCount} DFA states`);
    const validate = new Ajv({ strict: false, validateFormats: false }).compile(s);
    const runs = await Promise.all(
      Array.from({ length: SAMPLES }, (_, i) => collect(engine, request(prompt(i), { maxTokens: 300, temperature: 1, seed: i, constraint }))),
    );
    for (const r of runs) {
      const c = r.choices[0]!;
      assert.equal(c.finish, 'stop', `sample ended by ${c.finish}: ${c.text}`);
      assert.equal(c.tokens.at(-1), EOS, 'the output ends with EOS once the constraint is complete');
      const value = JSON.parse(c.text) as unknown;
      assert.ok(validate(value), `${c.text}: ${JSON.stringify(validate.errors)}`);
    }
    if (name === 'patterns') {
      // Pattern checks ajv did not do (formats are off) on the parsed values.
      for (const r of runs) assert.match((JSON.parse(r.choices[0]!.text) as { day: string }).day, /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$/);
    }
  });
}

test('json_object mode: every sample is a JSON object', async () => {
  const constraint = compiled({ kind: 'json_object' });
  const runs = await Promise.all(
    Array.from({ length: SAMPLES }, (_, i) => collect(engine, request(prompt(i), { maxTokens: 100, temperature: 1, seed: i, constraint }))),
  );
  // Free strings rarely end under a noise model: most samples are cut by max_tokens, and those
  // must be a prefix of some JSON object; complete ones must parse as one.
  for (const r of runs) {
    const c = r.choices[0]!;
    assert.ok(walk(constraint.dfa, constraint.dfa.start, Buffer.from(c.text)) >= 0, c.text);
    if (c.finish === 'length') continue;
    const value = JSON.parse(c.text) as unknown;
    assert.ok(value !== null && typeof value === 'object' && !Array.isArray(value), c.text);
  }
  for (const text of ['{}', '{"a": [1, null], "c": {"d": "x\\n\\u00e9"}}', '{"a": [1, {"b": null}]}', '{"k":-1.5e+3,"t":true}']) assert.ok(accepts(constraint.dfa, text), text);
  // The last one nests four containers deep, past json_object's documented limit of three.
  for (const text of ['[]', '"x"', '{"a":}', '{"a":1,}', "{'a':1}", '{"a": [1, {"b": [2]}]}']) assert.ok(!accepts(constraint.dfa, text), text);
});

const REGEXES = ['[a-z]{3,8}@[a-z]{2,5}\\.(com|org)', '\\d{3}-\\d{4}', '(yes|no|maybe)!?', 'é[α-ω]{2}😀?', '0x[0-9A-F]+'];

for (const pattern of REGEXES) {
  test(`regex ${pattern}: ${SAMPLES} seeded samples match in full`, async () => {
    const constraint = compiled({ kind: 'regex', pattern, where: 'guided_regex' });
    const full = new RegExp(`^(?:${pattern})$`, 'u');
    const runs = await Promise.all(
      Array.from({ length: SAMPLES }, (_, i) => collect(engine, request(prompt(i), { maxTokens: 60, temperature: 1, seed: i, constraint }))),
    );
    for (const r of runs) {
      const c = r.choices[0]!;
      if (pattern === '0x[0-9A-F]+' && c.finish === 'length') {
        assert.match(c.text, /^0x[0-9A-F]*$/); // unbounded: a prefix of a match when cut
        continue;
      }
      assert.equal(c.finish, 'stop', c.text);
      assert.match(c.text, full);
    }
  });
}

test('choice: every sample is one of the list, also for choices that share prefixes', async () => {
  const choices = ['positive', 'negative', 'neutral', 'pos', 'Ω mixed "quote"'];
  const constraint = compiled({ kind: 'choice', choices, where: 'guided_choice' });
  const seen = new Set<string>();
  for (let i = 0; i < SAMPLES * 2; i++) {
    const r = await collect(engine, request(prompt(i), { maxTokens: 20, temperature: 1, seed: i, constraint }));
    assert.equal(r.choices[0]!.finish, 'stop');
    assert.ok(choices.includes(r.choices[0]!.text), r.choices[0]!.text);
    seen.add(r.choices[0]!.text);
  }
  assert.ok(seen.size >= 2, 'seeded samples pick different choices');
});

test('greedy output equals the float64 reference with the same mask applied in TypeScript', async () => {
  const tokenizer = await loadTokenizer(dir);
  const vocab = VocabularyIndex.forTokenizer(50257, tokenizer, EOS);
  const STEPS = 30;
  for (const spec of [schema(SCHEMAS.enum!), schema(SCHEMAS.numbers!), { kind: 'regex', pattern: '[a-z]{3,8}@[a-z]{2,5}\\.(com|org)', where: 'r' } as ConstraintSpec]) {
    const constraint = compiled(spec);
    const tc = new TokenConstraint(constraint.dfa, vocab, EOS);
    for (const salt of [0, 1]) {
      const p = prompt(salt);
      const r = await collect(engine, request(p, { maxTokens: STEPS, constraint }));
      // Reference: float64 logits, allowed tokens only, best first.
      const seq = ref.newSequence();
      let logits: Float64Array = new Float64Array();
      for (const tok of p) logits = seq.step(tok);
      const expected: number[] = [];
      let state = tc.start;
      for (let k = 0; k < STEPS; k++) {
        let best = -1;
        for (const id of allowedIds(tc, state)) if (best < 0 || logits[id]! > logits[best]!) best = id;
        expected.push(best);
        if (best === EOS) break;
        state = tc.advance(state, best);
        logits = seq.step(best);
      }
      assert.deepEqual(r.choices[0]!.tokens, expected);
      if (r.choices[0]!.finish === 'stop') assert.ok(accepts(constraint.dfa, r.choices[0]!.text));
    }
  }
});

test('batch invariance: an unconstrained request is unchanged, logprobs bit for bit, by constrained neighbours', async () => {
  const constraint = compiled(schema(SCHEMAS.nested!));
  const regex = compiled({ kind: 'regex', pattern: '\\d{3}-\\d{4}', where: 'r' });
  const params: Partial<SamplingParams> = { maxTokens: 24, temperature: 0.8, seed: 5, logprobs: 3 };
  const alone = await collect(engine, request(prompt(99), params));
  const neighbours = Array.from({ length: 12 }, (_, i) =>
    collect(engine, request(prompt(i), { maxTokens: 40, temperature: i % 2 ? 1 : 0, seed: i, constraint: i % 3 ? constraint : regex, logprobs: 2 })),
  );
  const together = collect(engine, request(prompt(99), params));
  const [a, b] = [alone.choices[0]!, (await together).choices[0]!];
  await Promise.all(neighbours);
  assert.deepEqual(b.tokens, a.tokens);
  assert.equal(b.logprobs.length, a.logprobs.length);
  a.logprobs.forEach((lp, k) => {
    assert.ok(Object.is(b.logprobs[k]!.logprob, lp.logprob), `token ${k}: ${b.logprobs[k]!.logprob} vs ${lp.logprob}`);
    lp.top.forEach((e, j) => assert.ok(Object.is(b.logprobs[k]!.top[j]!.logprob, e.logprob)));
  });
});

test('n > 1 with logprobs: every choice is valid on its own; logprobs are the raw model distribution', async () => {
  const s = SCHEMAS.enum!;
  const constraint = compiled(schema(s));
  const validate = new Ajv({ strict: false }).compile(s);
  const r = await collect(engine, request(prompt(3), { n: 4, maxTokens: 100, temperature: 1, seed: 11, logprobs: 2, constraint }));
  assert.equal(r.choices.length, 4);
  for (const c of r.choices) {
    assert.equal(c.finish, 'stop');
    assert.ok(validate(JSON.parse(c.text)), c.text);
    assert.equal(c.logprobs.length, c.tokens.length);
    // Raw (unmasked) logprobs: the top alternatives need not be allowed tokens, and never exceed 0.
    for (const lp of c.logprobs) assert.ok(lp.logprob! <= 0 && lp.top.length === 2);
  }
});

test('max_tokens cuts a structured output with finish "length": a prefix of a valid output', async () => {
  const constraint = compiled(schema(SCHEMAS.nested!));
  const r = await collect(engine, request(prompt(1), { maxTokens: 3, temperature: 1, seed: 1, constraint }));
  const c = r.choices[0]!;
  assert.equal(c.finish, 'length');
  assert.equal(c.tokens.length, 3);
  assert.ok(c.text.startsWith('{"id":'), c.text);
});

test('a stop string ends a structured output early (finish "stop", the stop text left out)', async () => {
  const constraint = compiled({ kind: 'regex', pattern: 'abc-[0-9]{20}', where: 'r' });
  const r = await collect(engine, request(prompt(2), { maxTokens: 60, temperature: 1, seed: 3, stop: ['-'], constraint }));
  assert.equal(r.choices[0]!.finish, 'stop');
  assert.equal(r.choices[0]!.text, 'abc');
});

test('min_tokens cannot push a complete constraint past its end: EOS still comes where only EOS is allowed', async () => {
  const constraint = compiled({ kind: 'choice', choices: ['ok'], where: 'c' });
  for (const temperature of [0, 1]) {
    const r = await collect(engine, request(prompt(4), { maxTokens: 10, minTokens: 5, temperature, seed: 1, constraint }));
    assert.equal(r.choices[0]!.text, 'ok');
    assert.equal(r.choices[0]!.finish, 'stop');
    assert.equal(r.choices[0]!.tokens.at(-1), EOS);
  }
});

// Constraints under which the text "<|im_end|>" is valid output, so only its being a special
// token keeps token 50257 out.
const IM_END_TEXT: ConstraintSpec[] = [
  schema({ type: 'object', properties: { a: { type: 'string', minLength: 12, maxLength: 30 } }, required: ['a'] }),
  { kind: 'regex', pattern: '[<|>_a-z]{1,24}', where: 'guided_regex' },
  { kind: 'choice', choices: [IM_END, 'ok'], where: 'guided_choice' },
];

test('an added special token (<|im_end|>) is never allowed by a mask; EOS is, exactly where the constraint may end', async () => {
  const tokenizer = await loadTokenizer(await imEndModel());
  assert.deepEqual(tokenizer.encode(IM_END), [IM_END_ID]);
  assert.deepEqual(tokenizer.specialTokenIds, [EOS, IM_END_ID]);
  const vocab = VocabularyIndex.forTokenizer(IM_END_ID + 1, tokenizer, EOS);
  for (const spec of IM_END_TEXT) {
    const constraint = compiled(spec);
    assert.ok(accepts(constraint.dfa, spec.kind === 'json_schema' ? `{"a":"${IM_END} ${IM_END}"}` : IM_END), spec.kind);
    const tc = new TokenConstraint(constraint.dfa, vocab, EOS);
    for (let state = 0; state < constraint.dfa.stateCount; state++) {
      const allowed = allowedIds(tc, state, IM_END_ID + 1);
      assert.ok(!allowed.includes(IM_END_ID), `${spec.kind}: state ${state} allows ${IM_END}`);
      assert.equal(tc.advance(state, IM_END_ID), -1);
      assert.equal(allowed.includes(EOS), constraint.dfa.accepting[state] === 1, `${spec.kind}: EOS at state ${state}`);
    }
  }
});

test('a +100 logit_bias toward <|im_end|> under a constraint does not produce it; free text it takes over', async (t) => {
  const special = await InProcessEngine.start(engineOptions(await imEndModel()));
  t.after(() => special.shutdown());
  const logitBias: Array<[number, number]> = [[IM_END_ID, 100]];
  const free = await collect(special, request(prompt(0), { maxTokens: 3, logitBias }));
  assert.deepEqual(free.choices[0]!.tokens, [IM_END_ID, IM_END_ID, IM_END_ID]);
  for (const spec of IM_END_TEXT) {
    const constraint = compiled(spec);
    for (const temperature of [0, 1]) {
      const r = await collect(special, request(prompt(0), { maxTokens: 40, temperature, seed: 1, logitBias, constraint }));
      const c = r.choices[0]!;
      assert.ok(!c.tokens.includes(IM_END_ID), `${spec.kind}, temperature ${temperature}: ${JSON.stringify(c.text)}`);
      assert.ok(walk(constraint.dfa, constraint.dfa.start, Buffer.from(c.text)) >= 0, c.text);
    }
  }
});

test('unsupported schema keywords, bad regexes and empty languages are refused by name', () => {
  const refuse = (spec: ConstraintSpec, message: RegExp) => assert.throws(() => compileConstraint(spec), message);
  refuse(schema({ type: 'object', properties: { a: { type: 'string', not: { const: 'x' } } } }), /keyword `not` is not supported \(at #\/properties\/a\)/);
  refuse(schema({ type: 'integer', multipleOf: 3 }), /keyword `multipleOf`/);
  refuse(schema({ oneOf: [{ type: 'string' }] }), /keyword `oneOf`/);
  refuse(schema({ type: 'array', uniqueItems: true }), /keyword `uniqueItems`/);
  refuse(schema({ type: 'object', patternProperties: {} }), /keyword `patternProperties`/);
  refuse(schema({ type: 'number', minimum: 0.5 }), /`minimum` of a number must be an integer/);
  refuse(schema({ type: 'string', format: 'email' }), /format "email" is not supported/);
  refuse(schema({ $ref: '#/$defs/a', $defs: { a: { type: 'array', items: { $ref: '#/$defs/a' } } } }), /recursive schemas/);
  refuse(schema({ type: 'integer', minimum: 5, maximum: 4 }), /no integer/);
  refuse({ kind: 'regex', pattern: 'a(b', where: 'guided_regex' }, /guided_regex: invalid regular expression/);
  refuse({ kind: 'regex', pattern: '([ab]+)\\1', where: 'guided_regex' }, /backreferences are not supported/);
  refuse({ kind: 'regex', pattern: 'a(?=b)', where: 'guided_regex' }, /assertions/);
  refuse({ kind: 'regex', pattern: '[^\\s\\S]', where: 'guided_regex' }, /accepts no string/);
  refuse({ kind: 'regex', pattern: '[ab]*a[ab]{15}', where: 'guided_regex' }, /too complex/);
  // Small specs that expand into huge automata fail fast, before memory runs out.
  const start = performance.now();
  refuse({ kind: 'regex', pattern: '(a{1000}){1000}', where: 'guided_regex' }, /too complex/);
  refuse(schema({ type: 'array', maxItems: 1000, items: { type: 'array', maxItems: 1000, items: { type: 'string', maxLength: 1000 } } }), /too complex/);
  assert.ok(performance.now() - start < 5000);
});

test('compiled automata accept what the schema allows and reject the rest (byte level, UTF-8)', () => {
  const dfa = compileConstraint(schema(SCHEMAS.numbers!));
  assert.ok(accepts(dfa, '{"age":18,"score":-1,"ratio":1.99,"count":100}'));
  assert.ok(accepts(dfa, '{"age": 120, "score": 1.000, "ratio": 0.5, "count": 123456}'));
  for (const bad of ['{"age":17,"score":0,"ratio":1,"count":100}', '{"age":18,"score":1.5,"ratio":1,"count":100}', '{"age":18,"score":0,"ratio":0,"count":100}',
    '{"age":18,"score":0,"ratio":2.0,"count":100}', '{"age":18,"score":0,"ratio":1,"count":99}', '{"age":018,"score":0,"ratio":1,"count":100}']) {
    assert.ok(!accepts(dfa, bad), bad);
  }
  const re = compileConstraint({ kind: 'regex', pattern: '[α-ω]😀', where: 'r' });
  assert.ok(accepts(re, 'β😀'));
  assert.ok(!accepts(re, 'A😀'));
});

test('the compiler caches by content: the same schema again costs nothing, another one compiles', () => {
  const c = new ConstraintCompiler(2);
  const a = c.compile(schema(SCHEMAS.object!));
  const again = c.compile(schema(JSON.parse(JSON.stringify(SCHEMAS.object)) as object));
  assert.ok('ok' in a && 'ok' in again);
  assert.equal(again.ok, a.ok);
  assert.equal(again.compileMs, 0);
  const other = c.compile(schema(SCHEMAS.array!));
  assert.ok('ok' in other && other.ok.key !== a.ok.key);
  const refused = c.compile(schema({ not: {} }));
  assert.ok('error' in refused && /`not`/.test(refused.error));
});
