// Logits processors and filters on hand-made logits, against brute-force definitions.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SamplerScratch, SequenceSampler, argmax } from '../src/engine/sampling.js';
import type { SamplingParams } from '../src/engine/types.js';
import { Rng } from '../src/util/rng.js';
import { DEFAULT_PARAMS } from './helpers/engine-run.js';

const V = 1000;
const EOS = V - 1;

function sampler(params: Partial<SamplingParams>, prompt: number[] = [], seed = 1) {
  return new SequenceSampler({ ...DEFAULT_PARAMS, ...params }, prompt, EOS, seed);
}

function randomLogits(seed: number, scale = 3): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: V }, () => rng.gaussian() * scale);
}

/** Brute force, in vLLM's order: min-p, then top-k, then top-p over what is left. */
function keptByDefinition(logits: Float32Array, p: { temperature: number; topK: number; topP: number; minP: number }): Set<number> {
  const order = [...logits.keys()].sort((a, b) => logits[b] - logits[a]);
  const probs = order.map((i) => Math.exp((logits[i] - logits[order[0]]) / p.temperature));
  let n = probs.filter((q) => q >= p.minP).length;
  if (p.topK > 0) n = Math.min(n, p.topK);
  const mass = probs.slice(0, n).reduce((a, b) => a + b, 0);
  let acc = 0;
  for (let k = 0; k < n; k++) {
    acc += probs[k];
    if (acc >= p.topP * mass) {
      n = k + 1;
      break;
    }
  }
  return new Set(order.slice(0, n));
}

test('top-k, top-p and min-p keep exactly the sets their definitions give (no full sort needed)', () => {
  const scratch = new SamplerScratch(V);
  const cases = [
    { temperature: 1, topK: 10, topP: 1, minP: 0 },
    { temperature: 1, topK: 0, topP: 0.3, minP: 0 },
    { temperature: 0.7, topK: 50, topP: 0.8, minP: 0 },
    { temperature: 1.3, topK: 0, topP: 1, minP: 0.2 },
    { temperature: 1, topK: 200, topP: 0.95, minP: 0.05 },
  ];
  cases.forEach((params, c) => {
    const logits = randomLogits(c);
    const allowed = keptByDefinition(logits, params);
    const s = sampler(params, [], 42 + c);
    const seen = new Set<number>();
    for (let i = 0; i < 3000; i++) {
      const { token } = s.sample(logits, 0, scratch);
      assert.ok(allowed.has(token), `case ${c}: token ${token} is outside the kept set`);
      seen.add(token);
    }
    const max = Math.max(...logits);
    const weight = (i: number) => Math.exp((logits[i] - max) / params.temperature);
    const mass = [...allowed].reduce((sum, i) => sum + weight(i), 0);
    for (const i of allowed) if (weight(i) / mass > 0.005) assert.ok(seen.has(i), `case ${c}: kept token ${i} was never drawn`);
  });
});

test('sampling frequencies follow the softmax at the given temperature', () => {
  const logits = new Float32Array(V).fill(-Infinity);
  logits[1] = 0;
  logits[2] = Math.log(3);
  const s = sampler({ temperature: 1 }, [], 7);
  const scratch = new SamplerScratch(V);
  let twos = 0;
  for (let i = 0; i < 4000; i++) if (s.sample(logits, 0, scratch).token === 2) twos++;
  assert.ok(Math.abs(twos / 4000 - 0.75) < 0.03, `P(2) = ${twos / 4000}`);
});

test('logit bias, presence/frequency and repetition penalties change the logits as OpenAI and HF define them', () => {
  const scratch = new SamplerScratch(V);
  const flat = () => {
    const l = new Float32Array(V).fill(0);
    l[5] = 1;
    l[6] = 0.5;
    return l;
  };
  assert.equal(sampler({}).sample(flat(), 0, scratch).token, 5);
  assert.equal(sampler({ logitBias: [[7, 2]] }).sample(flat(), 0, scratch).token, 7);
  // presence: -p once a token has appeared; frequency: -f per appearance.
  const presence = sampler({ presencePenalty: 0.6 });
  presence.observe(5);
  assert.equal(presence.sample(flat(), 1, scratch).token, 6, '1 - 0.6 < 0.5');
  const frequency = sampler({ frequencyPenalty: 0.3 });
  frequency.observe(5);
  assert.equal(frequency.sample(flat(), 1, scratch).token, 5, '1 - 0.3 > 0.5');
  frequency.observe(5);
  assert.equal(frequency.sample(flat(), 2, scratch).token, 6, '1 - 0.6 < 0.5');
  // repetition: positive logits are divided, negative multiplied; prompt tokens count.
  assert.equal(sampler({ repetitionPenalty: 2.5 }, [5]).sample(flat(), 0, scratch).token, 6, '1 / 2.5 < 0.5');
  const neg = new Float32Array(V).fill(-5);
  neg[3] = -1;
  neg[4] = -1.5;
  assert.equal(sampler({ repetitionPenalty: 2 }, [3]).sample(neg, 0, scratch).token, 4, '-1 * 2 < -1.5');
});

test('min_tokens masks EOS and stop token ids until reached; edits are undone, so logprobs stay raw', () => {
  const scratch = new SamplerScratch(V);
  const logits = randomLogits(3);
  logits[EOS] = 50;
  logits[10] = 40;
  const raw = Float32Array.from(logits);
  const s = sampler({ minTokens: 2, stopTokenIds: [10], logprobs: 3, logitBias: [[11, 5]], presencePenalty: 1 });
  s.observe(11);
  const first = s.sample(logits, 0, scratch);
  assert.notEqual(first.token, EOS);
  assert.notEqual(first.token, 10);
  assert.deepEqual(logits, raw, 'the row is restored');
  assert.deepEqual(first.top!.map((t) => t.tokenId), [EOS, 10, argmax(raw.map((v, i) => (i === EOS || i === 10 ? -Infinity : v)))]);
  assert.ok(first.top![0].logprob > -1e-3, 'EOS dominates the raw distribution');
  assert.equal(s.sample(logits, 2, scratch).token, EOS, 'after min_tokens EOS is allowed');
  assert.equal(sampler({ minTokens: 2, ignoreEos: true }).sample(logits, 0, scratch).token, EOS, 'ignore_eos does not mask EOS');
});

test('the same seed gives the same draws; per-sequence generators are independent of each other', () => {
  const scratch = new SamplerScratch(V);
  const logits = randomLogits(9, 1);
  const draw = (seed: number, interleave: boolean) => {
    const a = sampler({ temperature: 1 }, [], seed);
    const b = sampler({ temperature: 1 }, [], seed + 1);
    const out: number[] = [];
    for (let i = 0; i < 50; i++) {
      if (interleave) b.sample(logits, 0, scratch);
      out.push(a.sample(logits, 0, scratch).token);
    }
    return out;
  };
  assert.deepEqual(draw(5, false), draw(5, true));
  assert.notDeepEqual(draw(5, false), draw(6, false));
});
