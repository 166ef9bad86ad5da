// Summary statistics with the definitions of vLLM's benchmark_serving (numpy's defaults):
// percentiles interpolate linearly between the closest ranks, the median is the 50th percentile,
// and the mean/std are over every sample (population std, numpy's ddof=0).

export interface Summary {
  mean: number;
  median: number;
  p90: number;
  p99: number;
  std: number;
  min: number;
  max: number;
  /** How many samples the figures summarize (0: every figure is 0, as vLLM reports it). */
  count: number;
}

/** numpy.percentile(values, p) with the default 'linear' method; `sorted` must be ascending. */
export function percentileSorted(sorted: readonly number[], p: number): number {
  if (!(p >= 0 && p <= 100)) throw new RangeError(`percentile must be in [0, 100], got ${p}`);
  const n = sorted.length;
  if (n === 0) return 0;
  const rank = (p / 100) * (n - 1);
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, n - 1);
  const frac = rank - lo;
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * frac;
}

export function percentile(values: readonly number[], p: number): number {
  return percentileSorted([...values].sort((a, b) => a - b), p);
}

export function summarize(values: readonly number[]): Summary {
  const n = values.length;
  if (n === 0) return { mean: 0, median: 0, p90: 0, p99: 0, std: 0, min: 0, max: 0, count: 0 };
  const sorted = [...values].sort((a, b) => a - b);
  let sum = 0;
  for (const v of sorted) sum += v;
  const mean = sum / n;
  let sq = 0;
  for (const v of sorted) sq += (v - mean) * (v - mean);
  return {
    mean,
    median: percentileSorted(sorted, 50),
    p90: percentileSorted(sorted, 90),
    p99: percentileSorted(sorted, 99),
    std: Math.sqrt(sq / n),
    min: sorted[0]!,
    max: sorted[n - 1]!,
    count: n,
  };
}
