// The serving benchmark (npm run bench): its statistics against hand-computed values, the seeded
// workload, the chart and tables, and real short runs over SSE and the websocket against servers
// the benchmark starts on the tiny model (and stops: no process may outlive a run).
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, statSync, unlinkSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, join } from 'node:path';
import { test } from 'node:test';
import { benchMain, benchModelKind, type BenchResult } from '../tools/bench/bench.js';
import { gpt2Tokenizer } from '../tools/bench/gpt2-tokenizer.js';
import { benchLoraSpec, ensureBenchLoras, flagValue, loraAdapterBytes, loraServerArgs, requestAdapters } from '../tools/bench/lora-adapters.js';
import { computeMetrics, type RunMetrics } from '../tools/bench/metrics.js';
import { parseBenchArgs, planRuns, UsageError } from '../tools/bench/options.js';
import { docsProse, prosePassages } from '../tools/bench/passages.js';
import { markdownTable, speedupsOf } from '../tools/bench/report.js';
import { completionBody, responsesUsage, StreamTimer, type RequestResult } from '../tools/bench/request-result.js';
import { liveServerPids } from '../tools/bench/server-process.js';
import { parseSpecCounters, specDecodeBetween } from '../tools/bench/spec-metrics.js';
import { SseParser, sseTransport } from '../tools/bench/sse-client.js';
import { percentile, summarize } from '../tools/bench/stats.js';
import { renderSvg } from '../tools/bench/svg.js';
import { chunkText } from '../tools/bench/transport.js';
import { GROUNDED_INSTRUCTION, GROUNDED_LEAD_TOKENS, makeGroundedWorkload, makeWorkload, minGroundedPromptTokens, poissonArrivals, PROMPT_VOCAB, runSeed } from '../tools/bench/workload.js';
import { SETTINGS } from '../src/config.js';
import { readGpt2Config } from '../src/model/gpt2-checkpoint.js';
import { LORA_MODULES, readLoraAdapter } from '../src/model/lora-adapter.js';
import { SafetensorsFile } from '../src/model/safetensors.js';
import { copyingModel, tempDir, tinyModel } from './helpers/tiny-model.js';

const close = (a: number, b: number, eps = 1e-9) => assert.ok(Math.abs(a - b) <= eps, `${a} != ${b}`);

test('percentiles interpolate linearly between ranks, as numpy.percentile does', () => {
  const ten = [10, 1, 9, 2, 8, 3, 7, 4, 6, 5];
  close(percentile(ten, 50), 5.5);
  close(percentile(ten, 90), 9.1);
  close(percentile(ten, 99), 9.91);
  close(percentile(ten, 0), 1);
  close(percentile(ten, 100), 10);
  close(percentile([15, 20, 35, 40, 50], 40), 29);
  close(percentile([42], 99), 42);
  assert.throws(() => percentile([1], 101), RangeError);

  const s = summarize([2, 4, 4, 4, 5, 5, 7, 9]);
  close(s.mean, 5);
  close(s.std, 2); // population std (numpy's default)
  close(s.median, 4.5);
  assert.equal(s.count, 8);
  assert.equal(s.min, 2);
  assert.equal(s.max, 9);
  assert.deepEqual(summarize([]), { mean: 0, median: 0, p90: 0, p99: 0, std: 0, min: 0, max: 0, count: 0 });
});

test('shared-prefix workload: every prompt starts with the same tokens, then its own; runs of a sweep draw distinct prompts', () => {
  const w = makeWorkload({ seed: 3, requests: 4, promptTokens: 10, outputTokens: 2, sharedPrefixTokens: 40 });
  for (const r of w) {
    assert.equal(r.promptIds.length, 50);
    assert.deepEqual(r.promptIds.slice(0, 40), w[0]!.promptIds.slice(0, 40));
  }
  assert.notDeepEqual(w[1]!.promptIds.slice(40), w[0]!.promptIds.slice(40));
  assert.deepEqual(makeWorkload({ seed: 3, requests: 4, promptTokens: 10, outputTokens: 2 }).map((r) => r.promptIds), w.map((r) => r.promptIds.slice(40)), 'the own tokens are the plain workload');
  // A server with prefix caching must not find a previous run's prompts in its cache.
  const first = makeWorkload({ seed: runSeed(0, 0), requests: 4, promptTokens: 16, outputTokens: 1 });
  const second = makeWorkload({ seed: runSeed(0, 1), requests: 8, promptTokens: 16, outputTokens: 1 });
  const seen = new Set(first.map((r) => r.promptIds.slice(0, 16).join()));
  assert.ok(second.every((r) => !seen.has(r.promptIds.slice(0, 16).join())));
});

test('the workload is seeded: same seed same prompts, runs are prefixes of one stream, ids in range', () => {
  const a = makeWorkload({ seed: 7, requests: 5, promptTokens: 33, outputTokens: 9 });
  const b = makeWorkload({ seed: 7, requests: 5, promptTokens: 33, outputTokens: 9 });
  assert.deepEqual(a, b);
  const c = makeWorkload({ seed: 8, requests: 5, promptTokens: 33, outputTokens: 9 });
  assert.notDeepEqual(a[0]!.promptIds, c[0]!.promptIds);
  assert.deepEqual(makeWorkload({ seed: 7, requests: 2, promptTokens: 33, outputTokens: 9 }), a.slice(0, 2));
  for (const r of a) {
    assert.equal(r.promptIds.length, 33);
    assert.equal(r.outputTokens, 9);
    for (const id of r.promptIds) assert.ok(Number.isInteger(id) && id >= 0 && id < PROMPT_VOCAB);
  }
  const big = makeWorkload({ seed: 0, requests: 1, promptTokens: 20000, outputTokens: 1 })[0]!.promptIds;
  assert.ok(Math.max(...big) > 50000, 'ids cover the vocabulary');

  const t1 = poissonArrivals(3, 10, 2000);
  assert.deepEqual(t1, poissonArrivals(3, 10, 2000));
  assert.equal(t1[0], 0);
  for (let i = 1; i < t1.length; i++) assert.ok(t1[i]! >= t1[i - 1]!);
  const meanGapMs = t1[t1.length - 1]! / (t1.length - 1);
  assert.ok(meanGapMs > 90 && meanGapMs < 110, `mean gap ${meanGapMs} ms, expected about 100`);
});

function result(over: Partial<RequestResult>): RequestResult {
  return { index: 0, ok: true, sentAtMs: 0, promptTokens: 10, outputTokens: 5, ttftMs: 100, e2eMs: 500, itlMs: [100, 100, 100, 100], chunks: 5, ...over };
}

test('run metrics follow vLLM: TPOT excludes the first token, ITL pools gaps, failures count as errors', () => {
  const results = [
    result({ index: 0, ttftMs: 100, e2eMs: 500, itlMs: [100, 100, 100, 100] }),
    result({ index: 1, ttftMs: 200, e2eMs: 1000, itlMs: [400, 400] }), // 5 tokens in 3 chunks
    result({ index: 2, ok: false, error: 'expected 5 output tokens, got 4', outputTokens: 4 }),
  ];
  const m = computeMetrics(results, 2000, { concurrency: 2, rate: null });
  assert.equal(m.num_requests, 3);
  assert.equal(m.completed, 2);
  assert.equal(m.errors, 1);
  assert.deepEqual(m.error_samples, ['expected 5 output tokens, got 4']);
  assert.equal(m.total_input_tokens, 20);
  assert.equal(m.total_output_tokens, 10);
  close(m.duration_s, 2);
  close(m.request_throughput, 1);
  close(m.output_throughput, 5);
  close(m.total_token_throughput, 15);
  close(m.tpot_ms.mean, (100 + 200) / 2); // (500-100)/4 and (1000-200)/4
  assert.equal(m.itl_ms.count, 6);
  close(m.itl_ms.median, 100);
  close(m.ttft_ms.mean, 150);
  close(m.e2el_ms.p99, 500 + 0.99 * 500);
});

test('a response with the wrong token count is an error', () => {
  const [req] = makeWorkload({ seed: 0, requests: 1, promptTokens: 4, outputTokens: 8 });
  const t = new StreamTimer(req!, 0);
  t.textChunk(1);
  t.usage = { prompt_tokens: 4, completion_tokens: 7 };
  const r = t.finish(2);
  assert.equal(r.ok, false);
  assert.match(r.error!, /expected 8 output tokens, got 7/);
  const ok = new StreamTimer(req!, 0);
  ok.textChunk(1);
  ok.usage = { prompt_tokens: 4, completion_tokens: 8 };
  assert.equal(ok.finish(2).ok, true);
});

test('the SSE parser reassembles events split across reads', () => {
  const p = new SseParser();
  assert.deepEqual(p.push('data: {"a"'), []);
  assert.deepEqual(p.push(':1}\n\ndata: [DO'), ['{"a":1}']);
  assert.deepEqual(p.push('NE]\r\n\r\n: comment\n\n'), ['[DONE]']);
  // The Responses stream names its events: the data is the payload all the same.
  assert.deepEqual(p.push('event: response.output_text.delta\ndata: {"delta":"x"}\n\n'), ['{"delta":"x"}']);
});

test('options: defaults, validation naming the flag, the run plan', () => {
  const o = parseBenchArgs([], {})!;
  assert.deepEqual(o.concurrency, [1, 4, 16, 32]);
  assert.equal(o.model, 'models/bench-gpt2-small');
  assert.equal(o.defaultModel, true);
  assert.deepEqual(
    planRuns(o).map((r) => r.requests),
    [4, 8, 32, 64],
  );
  assert.equal(parseBenchArgs(['--help']), null);
  assert.throws(() => parseBenchArgs(['--concurrency', '0']), (e: Error) => e instanceof UsageError && /--concurrency/.test(e.message));
  assert.throws(() => parseBenchArgs(['--url', 'http://x', '--baseline']), /--baseline/);
  assert.throws(() => parseBenchArgs(['--transport', 'grpc']), /--transport/);
  assert.throws(() => parseBenchArgs(['--bogus']), UsageError);
  assert.equal(parseBenchArgs(['--url', 'http://127.0.0.1:8000/v1/'])!.url, 'http://127.0.0.1:8000');
  const rated = parseBenchArgs(['--rate', '2,4', '--requests', '10'])!;
  assert.deepEqual(planRuns(rated), [
    { concurrency: null, rate: 2, requests: 10 },
    { concurrency: null, rate: 4, requests: 10 },
  ]);
  assert.deepEqual(planRuns(parseBenchArgs(['--rate', '2', '--concurrency', '3'])!), [{ concurrency: 3, rate: 2, requests: 32 }]);

  assert.equal(o.workload, 'random');
  assert.deepEqual(o.baselineArgs, ['--max-num-seqs', '1']);
  const grounded = parseBenchArgs(['--workload', 'grounded', '--baseline', '--baseline-args= --speculative  off '])!;
  assert.equal(grounded.model, 'models/bench-gpt2-small-copy');
  assert.equal(grounded.defaultModel, true);
  assert.deepEqual(grounded.baselineArgs, ['--speculative', 'off']);
  assert.throws(() => parseBenchArgs(['--workload', 'quotes']), /--workload must be random or grounded/);
  assert.throws(() => parseBenchArgs(['--baseline-args=--speculative off']), /give --baseline too/);
  assert.throws(() => parseBenchArgs(['--baseline', '--baseline-args', ' ']), /--baseline-args needs/);
  assert.throws(() => parseBenchArgs(['--workload', 'grounded', '--shared-prefix-tokens', '8']), /--workload random/);
});

test('--lora-adapters: options, the spread of requests over the adapters, the server flags, the memory per adapter', () => {
  const o = parseBenchArgs([], {})!;
  assert.deepEqual([o.loraAdapters, o.loraRank, o.loraBaseShare, o.loraDir], [0, 16, 0, 'models/bench-lora']);
  const l = parseBenchArgs(['--lora-adapters', '3', '--lora-rank', '8', '--lora-base-share', '0.25', '--lora-dir', '/tmp/x'], {})!;
  assert.deepEqual([l.loraAdapters, l.loraRank, l.loraBaseShare, l.loraDir], [3, 8, 0.25, '/tmp/x']);
  for (const flag of ['--lora-rank=8', '--lora-base-share=0.5', '--lora-dir=/tmp/x']) {
    assert.throws(() => parseBenchArgs([flag]), /applies to the adapters of --lora-adapters N/);
    assert.throws(() => parseBenchArgs(['--lora-adapters', '0', flag]), /applies to the adapters of --lora-adapters N/);
  }
  assert.throws(() => parseBenchArgs(['--lora-adapters', '2', '--url', 'http://x']), /not --url/);
  for (const bad of ['1', '-0.1', 'half']) assert.throws(() => parseBenchArgs(['--lora-adapters', '2', `--lora-base-share=${bad}`]), /--lora-base-share must be a fraction in \[0, 1\)/);
  assert.throws(() => parseBenchArgs(['--lora-adapters=-1']), /--lora-adapters must be an integer >= 0/);
  assert.throws(() => parseBenchArgs(['--lora-adapters', '1', '--lora-rank', '0']), /--lora-rank must be an integer >= 1/);

  assert.deepEqual(requestAdapters(6, ['a', 'b'], 0), ['a', 'b', 'a', 'b', 'a', 'b']);
  assert.deepEqual(requestAdapters(8, ['a', 'b', 'c'], 0.25), ['a', 'b', 'c', null, 'a', 'b', 'c', null]);
  const spread = requestAdapters(1000, ['a', 'b'], 0.3);
  assert.equal(spread.filter((m) => m === null).length, 300);
  assert.equal(spread.filter((m) => m === 'a').length, 350);

  // GPT-2 small at rank 16: 16 x (3072 + 1536 + 3840 + 3840) in+out x 12 layers x 4 bytes.
  assert.equal(loraAdapterBytes(16, { layers: 12, embd: 768 }), 9_437_184);

  const adapters = [
    { name: 'bench-lora-0', dir: '/a/0', made: true },
    { name: 'bench-lora-1', dir: '/a/1', made: false },
  ];
  assert.deepEqual(loraServerArgs(adapters, 16, []), [
    '--enable-lora', '--max-loras', '2', '--max-lora-rank', '16', '--lora-modules', 'bench-lora-0=/a/0', '--lora-modules', 'bench-lora-1=/a/1',
  ]);
  // Fewer slots than adapters (slot swapping): --server-arg's --max-loras, not a second one.
  assert.deepEqual(loraServerArgs(adapters, 16, ['--max-loras=1', '--max-lora-rank', '32']), ['--enable-lora', '--lora-modules', 'bench-lora-0=/a/0', '--lora-modules', 'bench-lora-1=/a/1']);
  assert.equal(flagValue(['--max-loras', '3', '--max-loras=5'], '--max-loras'), '5');
  assert.equal(flagValue(['--max-lora-rank', '8'], '--max-loras'), null);

  const request = { index: 0, promptIds: [1, 2], outputTokens: 3 };
  assert.equal(completionBody('gpt2', { ...request, model: 'bench-lora-1' }, 'completions').model, 'bench-lora-1');
  assert.equal(completionBody('gpt2', request, 'completions').model, 'gpt2');
});

test('the benchmark\'s adapters: PEFT folders the server\'s loader takes, each delta a few % of its layer\'s output, made once and reused', async (t) => {
  const model = await tinyModel();
  const dir = tempDir('gpt2-bench-lora-');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const config = readGpt2Config(model);
  const shape = { layers: config.n_layer, embd: config.n_embd };
  const made = ensureBenchLoras({ modelDir: model, loraDir: dir, count: 2, rank: 4 });
  assert.deepEqual(made.map((a) => [a.name, a.dir, a.made]), [
    ['bench-lora-0', join(dir, '0'), true],
    ['bench-lora-1', join(dir, '1'), true],
  ]);
  const weights = new SafetensorsFile(join(model, 'checkpoint', 'model.safetensors'));
  t.after(() => weights.close());
  const loaded = made.map((a) => readLoraAdapter(a.dir, config, { maxRank: 4 }));
  for (const [i, adapter] of loaded.entries()) {
    const spec = benchLoraSpec(i, 4, shape);
    assert.deepEqual([adapter.rank, adapter.alpha, adapter.scale, adapter.rslora], [4, 8, 2, false]);
    assert.equal(adapter.pairs.length, config.n_layer * LORA_MODULES.length, 'every module of every layer');
    const all = adapter.pairs.flatMap((p) => [...p.a, ...p.b]);
    const std = Math.sqrt(all.reduce((s, v) => s + v * v, 0) / all.length);
    assert.ok(Math.abs(std / spec.std - 1) < 0.05, `std ${std} vs ${spec.std}`);
    // For random inputs, what the adapter adds to each layer against what the layer computes.
    const ratios = adapter.pairs.map((p) => {
      const w = weights.readFloat32(`h.${p.layer}.${p.module}.weight`);
      let base = 0;
      let delta = 0;
      for (let trial = 0; trial < 8; trial++) {
        const x = Float32Array.from({ length: p.inFeatures }, (_, k) => Math.sin(k * 12.9898 + trial * 78.233 + p.layer) * 2);
        const down = Array.from({ length: adapter.rank }, (_, r) => x.reduce((s, v, k) => s + v * p.a[r * p.inFeatures + k]!, 0));
        for (let o = 0; o < p.outFeatures; o++) {
          let y = 0;
          for (let k = 0; k < p.inFeatures; k++) y += x[k]! * w[k * p.outFeatures + o]!;
          let d = 0;
          for (let r = 0; r < adapter.rank; r++) d += p.b[o * adapter.rank + r]! * down[r]!;
          base += y * y;
          delta += (adapter.scale * d) ** 2;
        }
      }
      return Math.sqrt(delta / base);
    });
    const mean = ratios.reduce((s, r) => s + r, 0) / ratios.length;
    assert.ok(mean > 0.01 && mean < 0.1, `mean delta / output ${mean} (${ratios.map((r) => r.toFixed(3)).join(', ')})`);
  }
  assert.notDeepEqual(loaded[0]!.pairs[0]!.a, loaded[1]!.pairs[0]!.a, 'each adapter its own weights');

  // Reused while the marker matches; made again for another rank, or when the marker is gone.
  const file = join(dir, '0', 'adapter_model.safetensors');
  const mtime = statSync(file).mtimeMs;
  assert.deepEqual(ensureBenchLoras({ modelDir: model, loraDir: dir, count: 2, rank: 4 }).map((a) => a.made), [false, false]);
  assert.equal(statSync(file).mtimeMs, mtime);
  unlinkSync(join(dir, '1', 'bench-lora.json'));
  assert.deepEqual(ensureBenchLoras({ modelDir: model, loraDir: dir, count: 3, rank: 4 }).map((a) => a.made), [false, true, true]);
  assert.deepEqual(ensureBenchLoras({ modelDir: model, loraDir: dir, count: 1, rank: 8 }).map((a) => a.made), [true]);
  assert.equal(readLoraAdapter(join(dir, '0'), config, { maxRank: 8 }).rank, 8);
});

test('the benchmark makes its own model folders: random or copying, by dtype suffix; no other', () => {
  assert.deepEqual(benchModelKind('models/bench-gpt2-small'), { weights: 'random', dtype: 'fp32' });
  assert.deepEqual(benchModelKind('/x/bench-gpt2-small-int8/'), { weights: 'random', dtype: 'int8' });
  assert.deepEqual(benchModelKind('models/bench-gpt2-small-copy'), { weights: 'copying', dtype: 'fp32' });
  assert.deepEqual(benchModelKind('models/bench-gpt2-small-copy-int4'), { weights: 'copying', dtype: 'int4' });
  assert.equal(benchModelKind('models/gpt2'), null);
  assert.equal(benchModelKind('models/bench-gpt2-small-int3'), null);
});

test('docs prose: paragraphs of English with Markdown markup removed; tables, code, headings and lists left out', () => {
  const md = [
    '# Title',
    '',
    'The server keeps a [prefix cache](docs/design.md) of **full** blocks, so `prompts` that start the same way skip the',
    'work of their prefill, which is measured in the benchmark with a shared prefix of many tokens each.',
    '',
    '| a | b | c | d | e | f | g | h | i | j | k | l | m | n | o | p | q | r | s | t | u |',
    '',
    '```bash',
    'npm run bench -- --one --two --three --four --five --six --seven --eight --nine --ten --eleven --twelve --thirteen',
    '```',
    '- a list item that is long enough to count as a passage if lists were kept, which they are not here',
    'Too short.',
  ].join('\n');
  assert.deepEqual(prosePassages(md), [
    'The server keeps a prefix cache of full blocks, so prompts that start the same way skip the work of their prefill, which is measured in the benchmark with a shared prefix of many tokens each.',
  ]);
  const docs = docsProse(join(import.meta.dirname, '..'));
  assert.ok(docs.length > 50, `${docs.length} paragraphs`);
  assert.deepEqual(docs.filter((p) => /[`]|\]\(|<\|/.test(p)), [], 'no markup or special token left');
});

test('grounded workload: passage, instruction, the passage\'s first tokens again; exact length; seeded; a different passage per request', async () => {
  const tokenizer = await gpt2Tokenizer();
  const encode = (t: string) => tokenizer.encode(t);
  const paragraphs = docsProse(join(import.meta.dirname, '..'));
  const spec = { seed: 4, requests: 6, promptTokens: 300, outputTokens: 16, paragraphs, encode };
  const w = makeGroundedWorkload(spec);
  assert.deepEqual(makeGroundedWorkload(spec), w);
  assert.deepEqual(makeGroundedWorkload({ ...spec, requests: 2 }), w.slice(0, 2), 'runs are prefixes of one stream');
  const instruction = encode(GROUNDED_INSTRUCTION);
  const passageLength = 300 - instruction.length - GROUNDED_LEAD_TOKENS;
  for (const r of w) {
    assert.equal(r.promptIds.length, 300);
    assert.equal(r.outputTokens, 16);
    const passage = r.promptIds.slice(0, passageLength);
    assert.deepEqual(r.promptIds.slice(passageLength, passageLength + instruction.length), instruction);
    assert.deepEqual(r.promptIds.slice(-GROUNDED_LEAD_TOKENS), passage.slice(0, GROUNDED_LEAD_TOKENS));
    assert.deepEqual(r.reference, passage.slice(GROUNDED_LEAD_TOKENS));
    // Real English: the text decodes to words, and tokens repeat as they do in prose.
    assert.match(tokenizer.decode(passage), /^[\x20-\x7e\u00a0-\uffff]+$/);
    assert.ok(new Set(passage).size < passage.length * 0.8);
  }
  assert.equal(new Set(w.map((r) => r.promptIds.slice(0, 16).join())).size, w.length, 'no two requests quote the same start');
  const next = makeGroundedWorkload({ ...spec, seed: runSeed(4, 1) });
  assert.ok(next.every((r) => !w.some((q) => q.promptIds.slice(0, 16).join() === r.promptIds.slice(0, 16).join())), 'nor do two runs');
  assert.throws(() => makeGroundedWorkload({ ...spec, promptTokens: minGroundedPromptTokens(encode) - 1 }), /grounded prompts need/);
  assert.equal(makeGroundedWorkload({ ...spec, promptTokens: minGroundedPromptTokens(encode) })[0]!.promptIds.length, minGroundedPromptTokens(encode));
});

test('speculation figures from /metrics: counters parsed, acceptance between two scrapes', () => {
  const text = [
    '# HELP gpt2_spec_decode_num_drafts_total Speculative decoding: sequence steps that carried draft tokens to verify',
    '# TYPE gpt2_spec_decode_num_drafts_total counter',
    'gpt2_spec_decode_num_drafts_total 10',
    'gpt2_spec_decode_num_draft_tokens_total 40',
    'gpt2_spec_decode_num_accepted_tokens_total 25',
    'vllm:spec_decode_num_accepted_tokens_total 25',
  ].join('\n');
  const before = parseSpecCounters(text)!;
  assert.deepEqual(before, { drafts: 10, draftTokens: 40, acceptedTokens: 25 });
  assert.equal(parseSpecCounters('gpt2_generation_tokens_total 5\n'), null);
  const s = specDecodeBetween(before, { drafts: 30, draftTokens: 120, acceptedTokens: 85 });
  assert.deepEqual(s, { drafts: 20, draft_tokens: 80, accepted_tokens: 60, acceptance_rate: 0.75, mean_acceptance_length: 4 });
  assert.deepEqual(specDecodeBetween(before, before), { drafts: 0, draft_tokens: 0, accepted_tokens: 0, acceptance_rate: 0, mean_acceptance_length: 1 });
});

function fakeRun(concurrency: number, tput: number, p50: number, p99: number): RunMetrics {
  const m = computeMetrics([], 1000, { concurrency, rate: null });
  return { ...m, output_throughput: tput, e2el_ms: { ...m.e2el_ms, median: p50, p99 } };
}

/** Every tag closes, in order: enough of XML well-formedness for a hand-written SVG. */
function assertWellFormed(svg: string): void {
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z][\w-]*)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (selfClosing) continue;
    if (closing) assert.equal(stack.pop(), name, `</${name}> closes <${stack.at(-1)}>`);
    else stack.push(name!);
  }
  assert.deepEqual(stack, []);
  assert.doesNotMatch(svg.replace(/&(amp|lt|gt|quot);/g, ''), /&/);
  assert.doesNotMatch(svg, /NaN|undefined|Infinity/);
}

test('the SVG chart is well-formed and has every series, axis label and legend entry', () => {
  const batched = [fakeRun(1, 20, 3000, 3100), fakeRun(4, 70, 3500, 3900), fakeRun(16, 180, 5000, 6000), fakeRun(32, 240, 8000, 9000)];
  const baseline = [fakeRun(1, 19, 3100, 3200), fakeRun(4, 19, 12000, 13000), fakeRun(16, 19, 50000, 52000), fakeRun(32, 19, 99000, 101000)];
  const svg = renderSvg({ title: 'bench <gpt2> & co', subtitle: '2 x CPU', batched, baseline });
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.ok(svg.trimEnd().endsWith('</svg>'));
  assertWellFormed(svg);
  assert.match(svg, /bench &lt;gpt2&gt; &amp; co/);
  for (const series of ['continuous batching', 'max-num-seqs 1', 'batching p50', 'batching p99', 'max-num-seqs 1 p50', 'max-num-seqs 1 p99']) {
    assert.match(svg, new RegExp(`data-series="${series}"`), series);
  }
  assert.equal((svg.match(/<polyline /g) ?? []).length, 6);
  for (const label of ['concurrency (requests in flight)', 'output tokens/s', 'latency (s)', 'p99 (dashed)', '(log scale)']) assert.ok(svg.includes(label), label);
  for (const tick of ['>1<', '>4<', '>16<', '>32<']) assert.ok(svg.includes(tick), `x tick ${tick}`);

  const alone = renderSvg({ title: 't', batched: batched.slice(0, 2), baseline: null });
  assertWellFormed(alone);
  assert.equal((alone.match(/<polyline /g) ?? []).length, 3);
  assert.doesNotMatch(alone, /max-num-seqs/);

  const table = markdownTable(batched, speedupsOf(batched, baseline));
  const lines = table.split('\n');
  assert.equal(lines.length, 2 + batched.length);
  for (const l of lines) assert.equal(l.split('|').length, lines[0]!.split('|').length);
  assert.match(lines[5]!, /12\.63x \|$/); // 240 / 19
});

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function bench(args: string[]): Promise<{ result: BenchResult; out: string; status: string }> {
  let out = '';
  let status = '';
  const result = await benchMain([...args, '--progress', 'none'], { out: (t) => (out += `${t}\n`), status: (t) => (status += `${t}\n`) });
  assert.ok(result);
  return { result, out, status };
}

function assertSummary(s: RunMetrics['ttft_ms'], what: string, positive = true): void {
  for (const k of ['mean', 'median', 'p90', 'p99', 'std', 'min', 'max'] as const) {
    assert.ok(Number.isFinite(s[k]) && s[k] >= 0, `${what}.${k} = ${s[k]}`);
  }
  if (positive) assert.ok(s.median > 0, `${what}.median > 0`);
  assert.ok(s.p99 >= s.p90 && s.p90 >= s.median && s.median >= s.min && s.max >= s.p99, `${what} ordered`);
}

function assertRun(m: RunMetrics, requests: number, outputTokens: number, promptTokens: number): void {
  assert.equal(m.num_requests, requests);
  assert.equal(m.errors, 0, m.error_samples.join('; '));
  assert.equal(m.completed, requests);
  assert.equal(m.total_output_tokens, requests * outputTokens);
  assert.equal(m.total_input_tokens, requests * promptTokens);
  assert.ok(m.duration_s > 0);
  assert.ok(m.request_throughput > 0 && m.output_throughput > 0 && m.total_token_throughput > m.output_throughput);
  close(m.output_throughput, m.total_output_tokens / m.duration_s, 1e-6);
  assertSummary(m.ttft_ms, 'ttft');
  assertSummary(m.tpot_ms, 'tpot');
  assertSummary(m.itl_ms, 'itl', false);
  assertSummary(m.e2el_ms, 'e2el');
  assert.equal(m.ttft_ms.count, requests);
  assert.equal(m.tpot_ms.count, requests);
  assert.ok(m.itl_ms.count > 0 && m.itl_ms.count <= requests * (outputTokens - 1));
  assert.ok(m.e2el_ms.median >= m.ttft_ms.median);
  // /health and /v1/models were probed during the run, and every probe answered.
  assert.ok(m.health_ms && m.health_ms.count > 0, 'health probes');
  assert.ok(m.models_ms && m.models_ms.count > 0, 'models probes');
  assert.equal(m.health_failures, 0);
  assert.equal(m.models_failures, 0);
}

function assertServersGone(result: BenchResult): void {
  for (const s of result.servers) {
    assert.equal(s.started, true);
    assert.ok(s.pid !== null && s.pid > 0);
    if (process.platform === 'linux') assert.ok(s.peak_rss_bytes! > 2 ** 20, `peak RSS ${s.peak_rss_bytes}`);
    assert.equal(pidAlive(s.pid!), false, `server pid ${s.pid} still running`);
  }
  assert.deepEqual(liveServerPids(), []);
}

const SHORT = ['--concurrency', '1,2', '--requests', '4', '--output-tokens', '8', '--prompt-tokens', '12'];

for (const transport of ['sse', 'ws'] as const) {
  test(`a real run over ${transport.toUpperCase()} on the tiny model reports every field, then stops its server`, { timeout: 60_000 }, async (t) => {
    const model = await tinyModel();
    const dir = tempDir('gpt2-bench-test-');
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const out = join(dir, 'sub', 'result.json');
    const svg = join(dir, 'chart.svg');
    const { result, out: text } = await bench(['--model', model, ...SHORT, '--transport', transport, '--out', out, '--svg', svg]);

    assert.equal(result.runs.length, 2);
    assert.deepEqual(result.runs.map((m) => m.concurrency), [1, 2]);
    for (const m of result.runs) assertRun(m, 4, 8, 12);
    assert.equal(result.baseline, null);
    assert.equal(result.speedup, null);
    assert.equal(result.config.transport, transport);
    assert.equal(result.model, basename(model));
    assertServersGone(result);

    const saved = JSON.parse(readFileSync(out, 'utf8')) as BenchResult;
    assert.equal(saved.config.output_tokens, 8);
    assert.equal(saved.config.prompt_tokens, 12);
    assert.equal(saved.config.seed, 0);
    assert.deepEqual(saved.config.runs, [
      { concurrency: 1, rate: null, requests: 4 },
      { concurrency: 2, rate: null, requests: 4 },
    ]);
    assert.match(saved.software.node, /^v\d+/);
    assert.match(saved.software.onnxruntime_node ?? '', /^\d+\.\d+\.\d+/);
    assert.equal(saved.software.package?.name, 'gpt2-serve');
    assert.ok(saved.machine.cpus >= 1 && saved.machine.memory_bytes > 0 && saved.machine.cpu_model.length > 0);
    assert.equal(saved.runs[1]!.total_output_tokens, 32);
    assert.ok(existsSync(svg));
    assertWellFormed(readFileSync(svg, 'utf8'));

    assert.match(text, /Output token throughput \(tok\/s\):/);
    assert.match(text, /\| concurrency \| requests \| errors \|/);
    assert.match(text, /\/health p50 \/ p99 \(ms\) \|/);

    // --from re-reports a saved result (tables, chart) without running anything.
    const svg2 = join(dir, 'again.svg');
    const again = await bench(['--from', out, '--svg', svg2]);
    assert.equal(again.result.runs[0]!.total_output_tokens, 32);
    assert.match(again.out, /\| concurrency \| requests \| errors \|/);
    assertWellFormed(readFileSync(svg2, 'utf8'));
  });
}

for (const [api, route] of [
  ['chat', '/v1/chat/completions'],
  ['responses', '/v1/responses'],
] as const) {
  test(`--api ${api} drives ${route} over SSE and the websocket, measured the same way`, { timeout: 90_000 }, async () => {
    const model = await tinyModel();
    assert.equal(parseBenchArgs(['--api', api], {})!.api, api);
    for (const transport of ['sse', 'ws'] as const) {
      const { result, out } = await bench(['--model', model, '--concurrency', '2', '--requests', '4', '--output-tokens', '8', '--prompt-tokens', '12', '--api', api, '--transport', transport]);
      const m = result.runs[0]!;
      assert.equal(m.errors, 0, m.error_samples.join('; '));
      assert.equal(m.total_output_tokens, 4 * 8);
      // The prompt is the rendered conversation: the ids' text plus the template's "User: ... Assistant:".
      assert.ok(m.total_input_tokens > 4 * 4, `prompt tokens ${m.total_input_tokens}`);
      assert.equal(m.ttft_ms.count, 4);
      assert.ok(m.itl_ms.count > 0);
      assert.equal(result.config.api, api);
      assert.match(out, new RegExp(`\\(${api}, (SSE|WS)\\)`));
      assert.match(out, new RegExp(`output tokens, ${api}, ${transport.toUpperCase()}`));
      assertServersGone(result);
    }
    assert.throws(() => parseBenchArgs(['--api', 'embeddings']), /--api must be completions, chat or responses/);
  });
}

test('the Responses stream over SSE: the request body, text from output_text deltas, usage from the last event, no [DONE]; an error event fails', async (t) => {
  const [request] = makeWorkload({ seed: 0, requests: 1, promptTokens: 4, outputTokens: 3 });
  const bodies: Array<Record<string, unknown>> = [];
  let failNext = false;
  const ev = (type: string, fields: Record<string, unknown>) => `event: ${type}\ndata: ${JSON.stringify({ type, ...fields })}\n\n`;
  const server = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', () => {
      bodies.push({ path: req.url, ...(JSON.parse(raw) as Record<string, unknown>) });
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(ev('response.created', { sequence_number: 0, response: { status: 'in_progress', usage: null } }));
      res.write(ev('response.output_item.added', { sequence_number: 1, output_index: 0, item: { type: 'message', content: [] } }));
      if (failNext) {
        res.end(ev('error', { sequence_number: 2, code: 'server_error', message: 'the engine stopped', param: null }));
        return;
      }
      let n = 2;
      for (const delta of ['a', 'b', 'c']) res.write(ev('response.output_text.delta', { sequence_number: n++, item_id: 'msg_1', output_index: 0, content_index: 0, delta, logprobs: [] }));
      res.write(ev('response.output_text.done', { sequence_number: n++, text: 'abc' }));
      res.end(ev('response.incomplete', { sequence_number: n, response: { status: 'incomplete', usage: { input_tokens: 9, output_tokens: 3, total_tokens: 12 } } }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const { port } = server.address() as AddressInfo;
  const transport = sseTransport({ baseUrl: `http://127.0.0.1:${port}`, model: 'm', api: 'responses', requestTimeoutMs: 5000 });
  try {
    const r = await transport.send({ ...request!, promptText: 'Hello there' }, 0);
    assert.equal(r.ok, true, r.error);
    assert.equal(r.chunks, 3);
    assert.equal(r.itlMs.length, 2);
    assert.equal(r.promptTokens, 9);
    assert.equal(r.outputTokens, 3);
    assert.deepEqual(bodies[0], { path: '/v1/responses', model: 'm', input: 'Hello there', max_output_tokens: 3, temperature: 0, ignore_eos: true, stream: true });
    failNext = true;
    const bad = await transport.send({ ...request!, promptText: 'Hello there' }, 0);
    assert.equal(bad.ok, false);
    assert.match(bad.error!, /server_error: the engine stopped/);
  } finally {
    await transport.close();
  }
  // One text extractor for every API's chunks and frames.
  assert.equal(chunkText({ type: 'response.output_text.delta', delta: 'x' }), 'x');
  assert.equal(chunkText({ type: 'response.output_text.done', text: 'x' }), '');
  assert.equal(chunkText({ choices: [{ text: 'y' }] }), 'y');
  assert.equal(chunkText({ choices: [{ delta: { content: 'z' } }] }), 'z');
  assert.equal(chunkText({ choices: [{ delta: { role: 'assistant' } }] }), '');
  assert.deepEqual(responsesUsage({ input_tokens: 5, output_tokens: 2, total_tokens: 7 }), { prompt_tokens: 5, completion_tokens: 2 });
  assert.equal(responsesUsage(null), null);
});

test('--hostile-prompt-bytes sends huge prompts during the run: every one is refused, the run is unaffected', { timeout: 60_000 }, async () => {
  const model = await tinyModel();
  const { result, out } = await bench(['--model', model, '--concurrency', '2', '--requests', '6', '--output-tokens', '32', '--prompt-tokens', '12', '--hostile-prompt-bytes', String(2 << 20)]);
  const m = result.runs[0]!;
  assertRun(m, 6, 32, 12);
  assert.ok(m.hostile_refused! > 0, 'huge prompts were sent');
  assert.equal(m.hostile_unexpected, 0, 'and every one was refused');
  assert.match(out, /Huge prompts \(refused \/ not\):\s+\d+ \/ 0/);
});

test('--baseline runs the same workload with --max-num-seqs 1 and reports the speedup', { timeout: 60_000 }, async () => {
  const model = await tinyModel();
  const { result, out } = await bench(['--model', model, '--baseline', '--concurrency', '2', '--requests', '4', '--output-tokens', '8', '--prompt-tokens', '12']);
  assert.equal(result.runs.length, 1);
  assert.ok(result.baseline);
  assert.deepEqual(result.baseline.server_args, ['--max-num-seqs', '1']);
  assert.equal(result.baseline.runs.length, 1);
  assertRun(result.runs[0]!, 4, 8, 12);
  assertRun(result.baseline.runs[0]!, 4, 8, 12);
  assert.equal(result.servers.length, 2);
  assert.ok(result.servers[1]!.command!.join(' ').endsWith('--max-num-seqs 1'));
  assert.ok(result.speedup);
  assert.equal(result.speedup.length, 1);
  assert.equal(result.speedup[0]!.concurrency, 2);
  close(result.speedup[0]!.output_throughput_ratio, result.runs[0]!.output_throughput / result.baseline.runs[0]!.output_throughput, 1e-9);
  assert.ok(result.speedup[0]!.output_throughput_ratio > 0);
  assert.match(out, /speedup at concurrency 2: \d+\.\d+x output tok\/s/);
  assert.match(out, /speedup vs max-num-seqs 1/);
  assertServersGone(result);
});

test('--workload grounded on the copying model: speculation on over --baseline-args "--speculative off", with its acceptance per run', { timeout: 90_000 }, async () => {
  const model = await copyingModel();
  const { result, out } = await bench([
    '--model', model, '--workload', 'grounded', '--concurrency', '1,2', '--requests', '2', '--prompt-tokens', '160', '--output-tokens', '24',
    '--server-arg=--speculative=ngram', '--baseline', '--baseline-args=--speculative off',
  ]);
  assert.equal(result.config.workload, 'grounded');
  assert.deepEqual(result.baseline!.server_args, ['--speculative=ngram', '--speculative', 'off']);
  for (const [i, m] of result.runs.entries()) {
    assertRun(m, 2, 24, 160);
    assertRun(result.baseline!.runs[i]!, 2, 24, 160);
    // The copying model repeats the passage, and the drafts are copied from it.
    assert.ok(m.spec_decode!.draft_tokens > 0 && m.spec_decode!.acceptance_rate > 0.9, JSON.stringify(m.spec_decode));
    assert.ok(m.spec_decode!.mean_acceptance_length > 2);
    assert.equal(result.baseline!.runs[i]!.spec_decode!.draft_tokens, 0);
  }
  assert.match(out, /speedup at concurrency 1: \d+\.\d+x output tok\/s \(\d+\.\d+ vs \d+\.\d+ with --speculative off\)/);
  assert.match(out, /\| draft acceptance \(mean length\) \| speedup vs speculative off \|/);
  assert.match(out, /Draft tokens accepted \/ proposed:\s+\d+ \/ \d+/);
  assert.match(out, /160-token grounded prompts/);
  assertServersGone(result);
});

/** The LoRA flags are the HTTP edge's: until the server takes them, the benchmark cannot serve adapters. */
const SERVER_TAKES_LORA = Object.values(SETTINGS).some((s: { flag?: string }) => s.flag === 'enable-lora');

test('--lora-adapters on the tiny model: the server gets the adapters, the requests name them in turn and the base model by share', { timeout: 90_000, skip: SERVER_TAKES_LORA ? false : 'the server does not take --enable-lora yet' }, async (t) => {
  const model = await tinyModel();
  const dir = tempDir('gpt2-bench-lora-');
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { result, out } = await bench([
    '--model', model, '--lora-adapters', '3', '--lora-rank', '4', '--lora-base-share', '0.25', '--lora-dir', dir,
    '--concurrency', '2', '--requests', '8', '--output-tokens', '4', '--prompt-tokens', '12',
  ]);
  assertRun(result.runs[0]!, 8, 4, 12);
  const lora = result.lora!;
  assert.deepEqual(lora.names, ['bench-lora-0', 'bench-lora-1', 'bench-lora-2']);
  assert.deepEqual(lora.requests_by_model, { 'bench-lora-0': 2, 'bench-lora-1': 2, 'bench-lora-2': 2, [result.model]: 2 });
  assert.deepEqual([lora.adapters, lora.rank, lora.max_loras, lora.max_lora_rank, lora.base_share], [3, 4, 3, 4, 0.25]);
  assert.equal(lora.adapter_bytes, loraAdapterBytes(4, { layers: 2, embd: 32 }));
  const command = result.servers[0]!.command!.join(' ');
  assert.match(command, /--enable-lora --max-loras 3 --max-lora-rank 4 --lora-modules bench-lora-0=\S+ --lora-modules bench-lora-1=/);
  assert.match(out, /LoRA: 3 adapter\(s\) of rank 4/);
  assert.match(out, /Memory per resident adapter: \d+\.\d MB \(rank 4 x 512 in\+out per layer x 2 layers x 4 B\)/);
  assertServersGone(result);
});

test('a failing run (prompt longer than the context) stops the server it started', { timeout: 60_000 }, async () => {
  const model = await tinyModel();
  let status = '';
  await assert.rejects(
    benchMain(['--model', model, '--concurrency', '1', '--prompt-tokens', '2000', '--progress', 'none'], { out: () => {}, status: (t) => (status += `${t}\n`) }),
    /warm-up request .* failed: HTTP 400 context_length_exceeded/,
  );
  const pid = Number(/pid (\d+)/.exec(status)?.[1]);
  assert.ok(pid > 0, status);
  assert.equal(pidAlive(pid), false);
  assert.deepEqual(liveServerPids(), []);
});
