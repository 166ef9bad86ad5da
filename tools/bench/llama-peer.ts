// llama.cpp's side of `npm run bench:llama`, in a process of its own: loaded into the benchmark's
// process, node-llama-cpp's work waits on libuv's thread pool, which the benchmark's own I/O
// shares, and that measures the harness, not llama.cpp (docs/benchmark.md, the llama.cpp
// comparison). So the comparison spawns this script with UV_THREADPOOL_SIZE set
// (llama-compare.ts) and it does nothing but load the GGUF file, warm up, and run the closed loop.
//
// Its weights are either mapped from the GGUF file (llama.cpp's default; the page cache's 4 KiB
// pages) or read into memory, where the GLIBC_TUNABLES the comparison passes it (the same as our
// server's) put them on huge pages; whichever is faster on the probe runs the measured loop.
//
// Input: one JSON argument (PeerJob). Output: one JSON line on stdout (PeerResult).
//
// Besides the closed loop it times the plainest possible use of the library, one sequence and one
// `evaluate` call per request, on the same requests: when the harness's one-stream figure falls
// well below that, the harness is at fault and the comparison says so.
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { makeWorkload, type BenchRequest } from './workload.js';

export interface PeerJob {
  llamaDir: string;
  gguf: string;
  streams: number;
  requests: number;
  promptTokens: number;
  outputTokens: number;
  threads: number;
  seed: number;
  /** Flash attention settings to try; the faster on a warm-up probe runs the measured loop. */
  flashAttention: boolean[];
  /** Weights mapped from the file (true) or read into memory (false): each tried on the probe too. */
  mmap: boolean[];
}

export interface PeerResult {
  outputTokensPerSecond: number;
  ttftP50Ms: number;
  flashAttention: boolean;
  mmap: boolean;
  /** One sequence, one evaluate() per request, no harness around it (streams == 1 only). */
  plainLoopTokensPerSecond: number | null;
  uvThreadpoolSize: string | null;
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
  getLlama(o: { gpu: false; build: 'never'; maxThreads: number }): Promise<{ loadModel(o: { modelPath: string; useMmap: boolean }): Promise<LlamaModel> }>;
}

async function main(job: PeerJob): Promise<PeerResult> {
  const entry = join(resolve(job.llamaDir), 'node_modules', 'node-llama-cpp', 'dist', 'index.js');
  const llamaCpp = (await import(pathToFileURL(entry).href)) as LlamaModule;
  const llama = await llamaCpp.getLlama({ gpu: false, build: 'never', maxThreads: job.threads });
  const requests = makeWorkload({ seed: job.seed, requests: job.requests, promptTokens: job.promptTokens, outputTokens: job.outputTokens });
  // Warm-up and the settings probe: a quarter of the requests (at least one per stream) per setting.
  const probe = requests.slice(0, Math.max(job.streams, Math.ceil(requests.length / 4)));
  // The best setting's model stays loaded (and warm) for the measured loop; the others are let go.
  let best: { model: LlamaModel; mmap: boolean; flashAttention: boolean; tps: number } | null = null;
  try {
    for (const mmap of job.mmap) {
      const model = await llama.loadModel({ modelPath: job.gguf, useMmap: mmap });
      const before = best;
      for (const flashAttention of job.flashAttention) {
        const run = await closedLoop(model, job, probe, flashAttention);
        if (!best || run.outputTokensPerSecond > best.tps) best = { model, mmap, flashAttention, tps: run.outputTokensPerSecond };
      }
      if (best!.model !== model) await model.dispose();
      else if (before) await before.model.dispose();
    }
    const { model, flashAttention, mmap } = best!;
    const measured = await closedLoop(model, job, requests, flashAttention);
    const plain = job.streams === 1 ? await plainLoop(model, job, requests, flashAttention) : null;
    return { ...measured, flashAttention, mmap, plainLoopTokensPerSecond: plain, uvThreadpoolSize: process.env.UV_THREADPOOL_SIZE ?? null };
  } finally {
    await best?.model.dispose();
  }
}

function contextFor(model: LlamaModel, job: PeerJob, sequences: number, flashAttention: boolean): Promise<LlamaContext> {
  const perSequence = job.promptTokens + job.outputTokens;
  // Per sequence: node-llama-cpp gives each sequence its own KV cells (not unified).
  return model.createContext({ sequences, contextSize: Math.ceil(perSequence / 256) * 256, batchSize: 512, flashAttention, threads: job.threads });
}

/** Closed loop: `streams` sequences, each taking the next request when its last one is done. */
async function closedLoop(model: LlamaModel, job: PeerJob, requests: BenchRequest[], flashAttention: boolean): Promise<{ outputTokensPerSecond: number; ttftP50Ms: number }> {
  const context = await contextFor(model, job, job.streams, flashAttention);
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
    await Promise.all(Array.from({ length: job.streams }, worker));
    const seconds = (performance.now() - start) / 1000;
    ttfts.sort((a, b) => a - b);
    return { outputTokensPerSecond: generated / seconds, ttftP50Ms: ttfts[Math.floor(ttfts.length / 2)]! };
  } finally {
    await context.dispose();
  }
}

/** The self-check: the same requests one after another through one sequence, nothing else. */
async function plainLoop(model: LlamaModel, job: PeerJob, requests: BenchRequest[], flashAttention: boolean): Promise<number> {
  const context = await contextFor(model, job, 1, flashAttention);
  try {
    const sequence = context.getSequence();
    let generated = 0;
    const start = performance.now();
    for (const r of requests) {
      await sequence.clearHistory();
      let n = 0;
      for await (const _token of sequence.evaluate(r.promptIds, { temperature: 0 })) if (++n >= r.outputTokens) break;
      generated += n;
    }
    return generated / ((performance.now() - start) / 1000);
  } finally {
    await context.dispose();
  }
}

main(JSON.parse(process.argv[2]!) as PeerJob).then(
  (result) => process.stdout.write(`${JSON.stringify(result)}\n`),
  (err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
