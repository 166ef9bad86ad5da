// Greedy decoding straight on a ModelRunner, without the scheduler: the smallest loop that
// exercises prefill and decode steps on an execution provider. The WebGPU test compares providers
// with it and tools/gpu-check.ts times decode steps with it.
import { blocksFor } from '../../src/engine/kv-cache.js';
import type { ModelRunner, RunnerRow } from '../../src/engine/runner.js';

interface Stream {
  tokens: number[];
  blocks: number[];
  /** Tokens already in the KV cache. */
  cached: number;
}

/**
 * Prefills every prompt in one step, then runs `steps` decode steps in which every stream feeds
 * the token it picked last. Streams get consecutive blocks after the null block, enough for the
 * whole run. Returns each stream's generated tokens and each step's duration.
 */
export async function greedyDecode(
  runner: ModelRunner,
  prompts: readonly number[][],
  steps: number,
  opts: { fetchLogits?: boolean; onLogits?: (step: number, stream: number, logits: Float32Array) => void } = {},
): Promise<{ generated: number[][]; prefillMs: number; stepMs: number[] }> {
  const bs = runner.pool.shape.blockSize;
  let next = 1;
  const streams: Stream[] = prompts.map((p) => {
    const n = blocksFor(p.length + steps, bs);
    const blocks = Array.from({ length: n }, (_, i) => next + i);
    next += n;
    return { tokens: [...p], blocks, cached: 0 };
  });
  if (next > runner.pool.shape.numBlocks) throw new Error(`greedyDecode needs ${next} KV blocks, the pool has ${runner.pool.shape.numBlocks}`);
  const generated: number[][] = prompts.map(() => []);
  const fetchLogits = opts.fetchLogits ?? false;
  const stepMs: number[] = [];
  let prefillMs = 0;
  for (let step = 0; step <= steps; step++) {
    const rows: RunnerRow[] = streams.map((s) => {
      const tokens = s.tokens.slice(s.cached);
      return { tokens, pastLength: s.cached, blocks: s.blocks, logitsFrom: tokens.length - 1, fetchLogits };
    });
    const start = performance.now();
    const out = await runner.run(rows);
    const ms = performance.now() - start;
    if (step === 0) prefillMs = ms;
    else stepMs.push(ms);
    streams.forEach((s, i) => {
      s.cached += rows[i].tokens.length;
      if (step < steps) s.tokens.push(out[i].argmax);
      generated[i].push(out[i].argmax);
      if (fetchLogits) opts.onLogits?.(step, i, out[i].logits);
    });
  }
  return { generated, prefillMs, stepMs };
}
