// Timed runs at start-up that give the step-cost model its first fit: decode batches of a few
// sizes over short and long pasts, prefill chunks of a few lengths, and short chunks after a long
// past (a prompt's later chunks, speculative verification), run through the real
// runner on scratch KV blocks (freed again; what they leave in the pool is overwritten before any
// sequence reads it). About a dozen shapes, each run twice: few, since start-up waits for them,
// yet each feature of the cost model (tokens, decode rows' keys, chunks' query-key pairs, a
// chunk's past) varied across the range the scheduler plans in.
import type { BlockAllocator } from './kv-cache.js';
import { blocksFor } from './kv-cache.js';
import type { ModelRunner, RunnerRow } from './runner.js';
import { MIN_PREFILL_CHUNK } from './scheduler.js';
import { attendedBy, rowShape, type StepShape } from './step-cost.js';

export interface CalibrationLimits {
  maxNumSeqs: number;
  maxNumBatchedTokens: number;
  blockSize: number;
  contextLength: number;
}

export async function calibrateStepCost(
  runner: ModelRunner,
  allocator: BlockAllocator,
  limits: CalibrationLimits,
): Promise<Array<{ shape: StepShape; ms: number }>> {
  const { maxNumSeqs: n, maxNumBatchedTokens: budget, blockSize } = limits;
  // Whatever the pool holds bounds every shape (a server may run with a tiny KV cache).
  const room = Math.min(allocator.freeCount * blockSize, limits.contextLength);
  const longPast = Math.min(16 * blockSize, room - 1);
  const VERIFY_CALIBRATION_TOKENS = 5;
  const decodes = [...new Set([1, Math.ceil(n / 4), n])].flatMap((rows) => [...new Set([Math.min(blockSize, longPast), longPast])].map((past) => ({ rows, past })));
  const chunks = [...new Set([MIN_PREFILL_CHUNK, Math.ceil(budget / 4), budget])].map((c) => Math.min(c, room)).filter((c, i, all) => all.indexOf(c) === i);

  const perRow = blocksFor(Math.max(Math.min(longPast + VERIFY_CALIBRATION_TOKENS, room), ...chunks), blockSize);
  // Distinct blocks per row when the pool has room, as real sequences have; else rows share them.
  const distinct = allocator.freeCount >= perRow * n;
  const blocks = Array.from({ length: distinct ? n : 1 }, () => allocator.allocate(perRow)!);
  const blocksOf = (row: number) => blocks[distinct ? row : 0]!;
  const samples: Array<{ shape: StepShape; ms: number }> = [];
  // The first run of a shape pays for what serving pays once: its KV blocks' pages faulted in for
  // the first time, ONNX Runtime's arena grown. That one-off cost can dwarf the step's own and
  // skews the fit until it predicts nothing for a long prefill (docs/benchmark.md, "Figures behind
  // the code"). The faster of two runs is what a step of that shape costs.
  const time = async (rows: RunnerRow[]): Promise<number> => {
    let best = Infinity;
    for (let i = 0; i < 2; i++) {
      const started = performance.now();
      await runner.run(rows);
      runner.takeModelMs();
      best = Math.min(best, performance.now() - started);
    }
    return best;
  };
  try {
    await time([{ tokens: [0], pastLength: 0, blocks: blocksOf(0), logitsFrom: 0, fetchLogits: false }]); // warm-up
    for (const { rows, past } of decodes) {
      const batch = Array.from({ length: rows }, (_, r) => ({ tokens: [0], pastLength: past, blocks: blocksOf(r), logitsFrom: 0, fetchLogits: false }));
      samples.push({ shape: { tokens: rows, attended: rows * attendedBy(past, 1) }, ms: await time(batch) });
    }
    for (const count of chunks) {
      const row = { tokens: new Array<number>(count).fill(0), pastLength: 0, blocks: blocksOf(0), logitsFrom: count - 1, fetchLogits: false };
      samples.push({ shape: rowShape(0, count), ms: await time([row]) });
    }
    // Short chunks after a long past: what a chunked prompt's later chunks and speculative
    // verification rows cost beyond their tokens (their past copied once more).
    for (const { rows, count } of [...new Set([1, Math.ceil(n / 4)])].map((r) => ({ rows: r, count: r === 1 ? VERIFY_CALIBRATION_TOKENS : 2 }))) {
      if (longPast + count > room) continue;
      const batch = Array.from({ length: rows }, (_, r) => ({ tokens: new Array<number>(count).fill(0), pastLength: longPast, blocks: blocksOf(r), logitsFrom: 0, fetchLogits: false }));
      const one = rowShape(longPast, count);
      samples.push({ shape: { tokens: rows * one.tokens, attended: rows * one.attended, chunkAttended: rows * one.chunkAttended, chunkPast: rows * one.chunkPast }, ms: await time(batch) });
    }
  } finally {
    for (const b of blocks) allocator.release(b);
  }
  return samples;
}
