// npm run bench:structured -- [--model DIR] [--concurrency 32] [--prompt-tokens 32] [--output-tokens 48] [--rounds 2]
// What token masks cost: decode tokens/s of N concurrent streams under a JSON-schema constraint
// against N unconstrained streams, greedy and sampled, in interleaved rounds on one engine (the
// first round also pays for computing each DFA state's mask once; later rounds find them cached).
// Also prints the constraint's compile time. Defaults to the GPT-2-small-shaped bench model.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { buildEngineCore } from '../src/engine/engine-loop.js';
import type { EngineCore } from '../src/engine/engine-core.js';
import type { SamplingParams } from '../src/engine/types.js';
import { ConstraintCompiler, type CompiledConstraint } from '../src/structured/constraint.js';
import { runCli } from '../scripts/cli.js';

/** Does not complete within a hundred tokens (at least three records), so every step is masked. */
const SCHEMA = {
  type: 'array',
  minItems: 3,
  items: {
    type: 'object',
    properties: {
      name: { type: 'string' },
      age: { type: 'integer', minimum: 0, maximum: 150 },
      email: { type: 'string', pattern: '[a-z]{1,12}@[a-z]{1,12}\\.(com|org|net)' },
      tags: { type: 'array', items: { type: 'string' } },
      address: { type: 'object', properties: { city: { type: 'string' }, zip: { type: 'string', pattern: '\\d{5}' } }, required: ['city', 'zip'] },
      active: { type: 'boolean' },
    },
    required: ['name', 'age', 'email', 'tags', 'address', 'active'],
  },
};

runCli('bench:structured', async (argv) => {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string', default: 'models/bench-gpt2-small' },
      concurrency: { type: 'string', default: '32' },
      'prompt-tokens': { type: 'string', default: '32' },
      'output-tokens': { type: 'string', default: '48' },
      rounds: { type: 'string', default: '2' },
      threads: { type: 'string', default: '0' },
    },
  });
  const N = Number(values.concurrency);
  const promptTokens = Number(values['prompt-tokens']);
  const outputTokens = Number(values['output-tokens']);
  const log = (m: string) => process.stderr.write(`${m}\n`);
  const { core } = await buildEngineCore(
    {
      modelDir: resolve(values.model),
      executionProvider: 'cpu',
      intraOpThreads: Number(values.threads),
      maxNumSeqs: N,
      maxNumBatchedTokens: Math.max(512, N * promptTokens),
      maxStepMs: 0,
      kvCacheTokens: N * (promptTokens + outputTokens + 32),
      blockSize: 16,
      // Masked and free rounds send the same prompts: a cache hit would make the later one cheaper.
      prefixCaching: false,
      maxConsecutiveStepFailures: 1,
      stepTimeoutMs: 0,
    },
    log,
  );
  const compiled = new ConstraintCompiler().compile({ kind: 'json_schema', schema: SCHEMA, where: 'bench' });
  if ('error' in compiled) throw new Error(compiled.error);
  process.stdout.write(`compile: ${compiled.compileMs.toFixed(0)} ms, ${compiled.ok.dfa.stateCount} DFA states, ${compiled.ok.dfa.classCount} byte classes\n`);

  const modes: Array<[string, Partial<SamplingParams>]> = [
    ['free greedy', { temperature: 0 }],
    ['json greedy', { temperature: 0, constraint: compiled.ok }],
    ['free T=1', { temperature: 1 }],
    ['json T=1', { temperature: 1, constraint: compiled.ok }],
  ];
  const rounds = Number(values.rounds);
  const results = new Map<string, number[]>();
  for (let r = 0; r < rounds; r++) {
    for (const [name, params] of modes) {
      const rate = await decodeRate(core, `${r}-${name}`, N, promptTokens, outputTokens, params);
      results.set(name, [...(results.get(name) ?? []), rate.tokensPerSecond]);
      log(
        `round ${r + 1} ${name}: ${rate.tokensPerSecond.toFixed(1)} tok/s; per decode step: model ${rate.modelMs.toFixed(1)} ms, ` +
          `runner ${rate.runMs.toFixed(1)} ms, outside the runner (sampling, masks, detokenizing) ${rate.outsideMs.toFixed(1)} ms`,
      );
    }
  }
  process.stdout.write(`decode tok/s at ${N} streams (prompt ${promptTokens}, output ${outputTokens}), per round:\n`);
  for (const [name, list] of results) process.stdout.write(`  ${name.padEnd(12)} ${list.map((v) => v.toFixed(1)).join('  ')}\n`);
  const last = (name: string) => results.get(name)!.at(-1)!;
  process.stdout.write(`ratio json/free, last round: greedy ${(last('json greedy') / last('free greedy')).toFixed(3)}, T=1 ${(last('json T=1') / last('free T=1')).toFixed(3)}\n`);
});

interface Rate {
  /** Rows per decode step over the median decode step's time (other processes' spikes left out). */
  tokensPerSecond: number;
  /** Mean per decode step. */
  modelMs: number;
  runMs: number;
  outsideMs: number;
}

/** Decode tokens per second of N concurrent requests (steps that only decode), and where a step's time went. */
async function decodeRate(core: EngineCore, tag: string, n: number, promptTokens: number, outputTokens: number, params: Partial<SamplingParams>): Promise<Rate> {
  const base: SamplingParams = {
    maxTokens: outputTokens, minTokens: 0, temperature: 0, topP: 1, topK: 0, minP: 0, presencePenalty: 0, frequencyPenalty: 0,
    repetitionPenalty: 1, logitBias: [], seed: 0, logprobs: null, echo: false, stop: [], stopTokenIds: [], ignoreEos: false, n: 1, constraint: null,
  };
  for (let i = 0; i < n; i++) {
    const prompt = Array.from({ length: promptTokens }, (_, k) => (k * 7919 + i * 104729) % 50000);
    core.add({ id: `${tag}-${i}`, promptTokens: prompt, params: { ...base, ...params, seed: i } });
  }
  let tokens = 0;
  let ms = 0;
  let steps = 0;
  let modelMs = 0;
  let runMs = 0;
  const stepMs: number[] = [];
  while (core.hasWork()) {
    for (const [, ev] of await core.step()) if (ev.type === 'error') throw new Error(`${tag}: ${ev.error.message}`);
    const step = core.lastStep;
    if (step.rows > 0 && step.rows === step.tokens) {
      tokens += step.tokens;
      ms += step.totalMs;
      modelMs += step.modelMs;
      runMs += step.runMs;
      stepMs.push(step.totalMs);
      steps++;
    }
  }
  core.takeEvents();
  if (tokens !== steps * n) throw new Error(`${tag}: a sequence ended early (${tokens} decode tokens in ${steps} steps of ${n})`);
  const median = stepMs.sort((a, b) => a - b)[stepMs.length >> 1]!;
  return { tokensPerSecond: (n / median) * 1000, modelMs: modelMs / steps, runMs: runMs / steps, outsideMs: (ms - runMs) / steps };
}
