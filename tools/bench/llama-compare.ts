// Throughput against llama.cpp on the same weights, in one run: at each stream count, our server
// (through HTTP/SSE, the serving benchmark's own client) for every model folder given, then
// llama.cpp through the node-llama-cpp package for every GGUF weight type, with the same seeded
// token-id prompts, output lengths, greedy decoding and thread count. Each side runs at its best:
// our server in its own process, llama.cpp in its own (llama-peer.ts, with UV_THREADPOOL_SIZE
// set and the same GLIBC_TUNABLES as our server), warmed up, with the flash attention and weight
// mapping settings that are faster for the workload, systems
// alternating, the best of the repeats counting. node-llama-cpp is not a dependency of this
// project (it downloads llama.cpp binaries); it is loaded from a folder where it was installed
// apart (docs/benchmark.md says how).
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { runBenchmark, type BenchIo } from './bench.js';
import { writeGpt2Gguf, type GgufWeightType } from './gguf.js';
import type { PeerJob, PeerResult } from './llama-peer.js';
import { parseBenchArgs } from './options.js';
import { hugePagesEnv } from './server-process.js';

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
  /** UV_THREADPOOL_SIZE of llama.cpp's process. */
  uvThreadpoolSize: number;
  /** Flash attention for llama.cpp: on, off, or whichever is faster on a warm-up probe. */
  flashAttention: 'on' | 'off' | 'best';
  /** llama.cpp's weights mapped from the GGUF file (on), read into memory (off), or the faster. */
  mmap: 'on' | 'off' | 'best';
}

export interface CompareRow {
  streams: number;
  system: string;
  outputTokensPerSecond: number;
  ttftP50Ms: number;
  /** Our server's peak resident memory (null for llama.cpp, whose process this does not watch). */
  peakRssMiB: number | null;
  /** llama.cpp's settings and self-check, e.g. "flash attention off; plain evaluate loop 158.2 tok/s". */
  note?: string;
}

/** Requests per stream count: the serving benchmark's default, so both sides do the same work. */
const requestsFor = (streams: number) => Math.max(4, 2 * streams);

export async function compareWithLlama(opts: LlamaCompareOptions, io: BenchIo): Promise<CompareRow[]> {
  const entry = join(resolve(opts.llamaDir), 'node_modules', 'node-llama-cpp', 'dist', 'index.js');
  if (!existsSync(entry)) throw new Error(`${entry} not found: install node-llama-cpp apart from this project (docs/benchmark.md)`);
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
      const run = await runPeer(opts, g.path, streams);
      const note = `flash attention ${run.flashAttention ? 'on' : 'off'}; weights ${run.mmap ? 'mapped from the file' : 'read into memory'}${run.plainLoopTokensPerSecond === null ? '' : `; plain evaluate loop ${run.plainLoopTokensPerSecond.toFixed(1)} tok/s`}`;
      rows.push({ streams, system: `llama.cpp ${g.type} (own process)`, outputTokensPerSecond: run.outputTokensPerSecond, ttftP50Ms: run.ttftP50Ms, peakRssMiB: null, note });
      io.status(`llama.cpp ${g.type}, ${streams} streams: ${run.outputTokensPerSecond.toFixed(1)} tok/s (${note})`);
      // The self-check: the harness's one-stream loop must run about as fast as the plainest use of the library.
      if (run.plainLoopTokensPerSecond !== null && run.outputTokensPerSecond < 0.9 * run.plainLoopTokensPerSecond) {
        io.status(`warning: llama.cpp ${g.type}'s harness loop ran at ${run.outputTokensPerSecond.toFixed(1)} tok/s, under 90% of its plain loop: the comparison is unfair to it`);
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

/** One measurement of llama.cpp in its own process (llama-peer.ts). */
async function runPeer(opts: LlamaCompareOptions, gguf: string, streams: number): Promise<PeerResult> {
  const job: PeerJob = {
    llamaDir: resolve(opts.llamaDir),
    gguf: resolve(gguf),
    streams,
    requests: requestsFor(streams),
    promptTokens: opts.promptTokens,
    outputTokens: opts.outputTokens,
    threads: opts.threads,
    seed: opts.seed,
    flashAttention: choices(opts.flashAttention),
    mmap: choices(opts.mmap),
  };
  const script = join(dirname(fileURLToPath(import.meta.url)), 'llama-peer.js');
  const { stdout } = await promisify(execFile)(process.execPath, [script, JSON.stringify(job)], {
    // The same GLIBC_TUNABLES as our server: huge pages for what it reads into memory.
    env: { ...hugePagesEnv(), UV_THREADPOOL_SIZE: String(opts.uvThreadpoolSize) },
    maxBuffer: 1 << 20,
  });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as PeerResult;
}

const choices = (setting: 'on' | 'off' | 'best'): boolean[] => (setting === 'best' ? [false, true] : [setting === 'on']);

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
  const notes = rows.filter((r) => r.note).map((r) => `- ${r.system}, ${r.streams} stream${r.streams === 1 ? '' : 's'}: ${r.note}`);
  return [...lines, ...(notes.length ? ['', ...notes] : [])].join('\n');
}

function short(system: string): string {
  return system.replace(/ \((HTTP\/SSE|own process)\)$/, '').replace(/^ours /, '');
}
