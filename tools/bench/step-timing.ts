// Timing model steps straight on a runner (bench:engine's interleaved comparison, bench:lora):
// the median of session.run times, after one untimed run that warms whatever a previous
// measurement left cold (another model's threads and cache lines).
import type { OnnxRunner, RunnerRow } from '../../src/engine/runner.js';

export async function medianStepMs(runner: OnnxRunner, rows: readonly RunnerRow[], runs: number): Promise<number> {
  await runner.run(rows);
  runner.takeModelMs();
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) {
    await runner.run(rows);
    samples.push(runner.takeModelMs());
  }
  return median(samples);
}

export function median(xs: readonly number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}
