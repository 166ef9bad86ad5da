// Throughput against llama.cpp on the same weights, in one run: at each stream count, our server
// (through HTTP/SSE, the serving benchmark's own client) for every model folder given, then
// llama.cpp in-process through the node-llama-cpp package for every GGUF weight type, with the
// same seeded token-id prompts, output lengths, greedy decoding and thread count. node-llama-cpp
// is not a dependency of this project (it downloads llama.cpp binaries); it is loaded from a
// folder where it was installed apart (docs/benchmark.md says how).
import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { runBenchmark, type BenchIo } from './bench.js';
import { writeGpt2Gguf, type GgufWeightType } from './gguf.js';
import { parseBenchArgs } from './options.js';
import { makeWorkload, type BenchRequest } from './workload.js';

export interface LlamaCompareOptions {
  /** A folder with node_modules/node-llama-cpp. */
  llamaDir: string;
  /** The checkpoint our model folders were exported from (written to GGUF once). */
  checkpoint: string;
  /** Our model folders, each served in turn. */
  models: string[];
  ggufTypes: GgufWeightType[];
  ggufDir: string;
  streams: number[];
  promptTokens: number;
  outputTokens: number;
  threads: number;
  seed: number;
  /** Each stream count runs this many times, alternating the systems; the best run of each counts. */
  repeat: number;
}

export interface CompareRow {
  streams: number;
  system: string;
  outputTokensPerSecond: number;
  ttftP50Ms: number;
  /** Our server's peak resident memory (null for llama.cpp, which runs inside this process). */
  peakRssMiB: number | null;
}

/** The slice of node-llama-cpp's API this benchmark uses. */
interface LlamaSequence {
  evaluate(tokens: number[], options: { temperature: number }): AsyncGenerator<number, void, void>;
  clearHistory(): Promise<void>;
}
interface LlamaContext {
  getSequence(): LlamaSequence;
  dispose(): Promise<void>;
}
interface LlamaModel {
  createContext(o: { sequences: number; contextSize: number; batchSize: number; flashAttention: boolean; threads: number }): Promise<LlamaContext>;
  dispose(): Promise<void>;
}
interface LlamaModule {
  getLlama(o: { gpu: false; build: 'never'; maxThreads: number }): Promise<{ loadModel(o: { modelPath: string }): Promise<LlamaModel> }>;
}

/** Requests per stream count: the serving benchmark's default, so both sides do the same work. */
const requestsFor = (streams: number) => Math.max(4, 2 * streams);

export async function compareWithLlama(opts: LlamaCompareOptions, io: BenchIo): Promise<CompareRow[]> {
  const entry = join(resolve(opts.llamaDir), 'node_modules', 'node-llama-cpp', 'dist', 'index.js');
  if (!existsSync(entry)) throw new Error(`${entry} not found: install node-llama-cpp apart from this project (docs/benchmark.md)`);
  const llamaCpp = (await import(pathToFileURL(entry).href)) as LlamaModule;
  const llama = await llamaCpp.getLlama({ gpu: false, build: 'never', maxThreads: opts.threads });
  mkdirSync(opts.ggufDir, { recursive: true });
  const ggufs = opts.ggufTypes.map((type) => {
    const path = join(opts.ggufDir, `model-${type}.gguf`);
    if (!existsSync(path)) {
      io.status(`writing ${path} ...`);
      writeGpt2Gguf(opts.checkpoint, path, type);
    }
    return { type, path };
  });

  const rows: CompareRow[] = [];
  for (const streams of opts.streams) for (let rep = 0; rep < opts.repeat; rep++) {
    for (const model of opts.models) {
      const bench = parseBenchArgs([
        '--model', model,
        '--concurrency', String(streams),
        '--prompt-tokens', String(opts.promptTokens),
        '--output-tokens', String(opts.outputTokens),
        '--seed', String(opts.seed),
        `--server-arg=--intra-op-threads=${opts.threads}`,
        '--progress', 'none',
      ])!;
      const result = await runBenchmark(bench, io);
      const [m] = result.runs;
      if (m!.errors) throw new Error(`${model}: ${m!.errors} request(s) failed: ${m!.error_samples.join('; ')}`);
      const rss = result.servers[0]!.peak_rss_bytes;
      rows.push({
        streams,
        system: `ours ${result.model} (HTTP/SSE)`,
        outputTokensPerSecond: m!.output_throughput,
        ttftP50Ms: m!.ttft_ms.median,
        peakRssMiB: rss === null ? null : rss / 2 ** 20,
      });
      io.status(`${rows.at(-1)!.system}, ${streams} streams: ${m!.output_throughput.toFixed(1)} tok/s`);
    }
    for (const g of ggufs) {
      const loaded = await llama.loadModel({ modelPath: g.path });
      try {
        const run = await runLlama(loaded, streams, opts);
        rows.push({ streams, system: `llama.cpp ${g.type} (in-process)`, ...run, peakRssMiB: null });
        io.status(`llama.cpp ${g.type}, ${streams} streams: ${run.outputTokensPerSecond.toFixed(1)} tok/s`);
      } finally {
        await loaded.dispose();
      }
    }
  }
  return bestOf(rows);
}

/**
 * Other work on a shared machine only ever slows a run down, so the fastest of the repeats is
 * the best estimate of each system's speed (llama.cpp's spinning threads suffer most from it).
 */
function bestOf(rows: CompareRow[]): CompareRow[] {
  const best = new Map<string, CompareRow>();
  for (const r of rows) {
    const key = `${r.streams}\u0000${r.system}`;
    const seen = best.get(key);
    if (!seen || r.outputTokensPerSecond > seen.outputTokensPerSecond) best.set(key, r);
  }
  return [...best.values()];
}

/** Closed loop: `streams` sequences, each taking the next request when its last one is done. */
async function runLlama(model: LlamaModel, streams: number, opts: LlamaCompareOptions): Promise<{ outputTokensPerSecond: number; ttftP50Ms: number }> {
  const requests = makeWorkload({ seed: opts.seed, requests: requestsFor(streams), promptTokens: opts.promptTokens, outputTokens: opts.outputTokens });
  const perSequence = opts.promptTokens + opts.outputTokens;
  const context = await model.createContext({
    sequences: streams,
    // Per sequence: node-llama-cpp gives each sequence its own KV cells (not unified).
    contextSize: Math.ceil(perSequence / 256) * 256,
    batchSize: 512,
    // Off, as in the figures: with it on, llama.cpp's output depends on the batch.
    flashAttention: false,
    threads: opts.threads,
  });
  try {
    const queue = [...requests];
    const ttfts: number[] = [];
    let generated = 0;
    const start = performance.now();
    const worker = async () => {
      const sequence = context.getSequence();
      for (let r: BenchRequest | undefined; (r = queue.shift()); ) {
        await sequence.clearHistory();
        const sent = performance.now();
        let n = 0;
        // Greedy, and every request runs to its full length whatever it generates (ignore_eos).
        for await (const _token of sequence.evaluate(r.promptIds, { temperature: 0 })) {
          if (n === 0) ttfts.push(performance.now() - sent);
          if (++n >= r.outputTokens) break;
        }
        generated += n;
      }
    };
    await Promise.all(Array.from({ length: streams }, worker));
    const seconds = (performance.now() - start) / 1000;
    ttfts.sort((a, b) => a - b);
    return { outputTokensPerSecond: generated / seconds, ttftP50Ms: ttfts[Math.floor(ttfts.length / 2)]! };
  } finally {
    await context.dispose();
  }
}

/** Markdown: one row per stream count, one column per system, and each of ours against each llama.cpp type. */
export function compareTable(rows: CompareRow[]): string {
  const systems = [...new Set(rows.map((r) => r.system))];
  const ours = systems.filter((s) => s.startsWith('ours'));
  const theirs = systems.filter((s) => !s.startsWith('ours'));
  const header = ['streams', ...systems.map((s) => `${s} tok/s`), ...ours.flatMap((o) => theirs.map((t) => `${short(o)} / ${short(t)}`))];
  const lines = [`| ${header.join(' | ')} |`, `| ${header.map(() => '---:').join(' | ')} |`];
  for (const streams of [...new Set(rows.map((r) => r.streams))]) {
    const at = (s: string) => rows.find((r) => r.streams === streams && r.system === s)?.outputTokensPerSecond ?? NaN;
    const cells = [String(streams), ...systems.map((s) => at(s).toFixed(1)), ...ours.flatMap((o) => theirs.map((t) => `${(at(o) / at(t)).toFixed(2)}x`))];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

function short(system: string): string {
  return system.replace(/ \((HTTP\/SSE|in-process)\)$/, '').replace(/^ours /, '');
}
