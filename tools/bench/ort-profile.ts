// ONNX Runtime's profiler output (a Chrome trace: one "Node" event per kernel run, with its op
// type in args.op_name, and one "model_run" event per session.run) summarized per op type: where
// a step's time goes. `npm run bench:engine -- --profile` prints these tables.
import { readFileSync } from 'node:fs';

interface TraceEvent {
  cat?: string;
  name?: string;
  ts?: number;
  dur?: number;
  args?: { op_name?: string };
}

export interface OpTime {
  op: string;
  /** Milliseconds per run, summed over the op's nodes (an If's own time, without its branch's kernels). */
  msPerRun: number;
  /** Kernel runs per run (nodes of this type that ran; an If's branch counts when taken). */
  nodesPerRun: number;
}

export interface ProfileSummary {
  runs: number;
  /** Median wall time of a session.run, as the profiler saw it. */
  runMs: number;
  /** Time inside kernels per run; the rest of runMs is the executor between them. */
  kernelMs: number;
  ops: OpTime[];
}

/**
 * Summarizes the runs after the first `skip` (warm-up) of a profile file: per op type, the time
 * of its kernels per run, largest first.
 */
export function summarizeProfile(file: string, skip: number): ProfileSummary {
  const events = JSON.parse(readFileSync(file, 'utf8')) as TraceEvent[];
  const runs = events
    .filter((e) => e.cat === 'Session' && e.name === 'model_run' && e.ts !== undefined && e.dur !== undefined)
    .sort((a, b) => a.ts! - b.ts!)
    .slice(skip);
  if (runs.length === 0) throw new Error(`${file}: no model runs after the first ${skip}`);
  const inRun = (ts: number) => runs.some((r) => ts >= r.ts! && ts <= r.ts! + r.dur!);
  const kernels = events
    .filter((e) => e.cat === 'Node' && e.name?.endsWith('_kernel_time') && e.ts !== undefined && e.dur !== undefined && inRun(e.ts))
    .sort((a, b) => a.ts! - b.ts! || b.dur! - a.dur!);
  // A control-flow node's (If) time includes its branch's kernels, which have events of their
  // own: each event counts only its exclusive time, its duration less its direct children's.
  const exclusive = new Map<TraceEvent, number>(kernels.map((e) => [e, e.dur!]));
  const open: TraceEvent[] = [];
  for (const e of kernels) {
    while (open.length > 0 && e.ts! >= open.at(-1)!.ts! + open.at(-1)!.dur!) open.pop();
    const parent = open.at(-1);
    if (parent) exclusive.set(parent, exclusive.get(parent)! - e.dur!);
    open.push(e);
  }
  const byOp = new Map<string, { us: number; nodes: number }>();
  for (const e of kernels) {
    const op = e.args?.op_name ?? '?';
    const acc = byOp.get(op) ?? { us: 0, nodes: 0 };
    acc.us += exclusive.get(e)!;
    acc.nodes++;
    byOp.set(op, acc);
  }
  const ops = [...byOp].map(([op, a]) => ({ op, msPerRun: a.us / 1000 / runs.length, nodesPerRun: a.nodes / runs.length })).sort((a, b) => b.msPerRun - a.msPerRun);
  const durations = runs.map((r) => r.dur! / 1000).sort((a, b) => a - b);
  return { runs: runs.length, runMs: durations[Math.floor(durations.length / 2)]!, kernelMs: ops.reduce((s, o) => s + o.msPerRun, 0), ops };
}

/** Markdown: one row per op type, its ms per run and share of the run. */
export function profileTable(title: string, p: ProfileSummary, top = 14): string {
  const lines = [
    `${title}: ${p.runMs.toFixed(2)} ms per run (median of ${p.runs}), ${p.kernelMs.toFixed(2)} ms in kernels`,
    '',
    '| op type | ms per run | share of run | nodes per run |',
    '| --- | ---: | ---: | ---: |',
  ];
  for (const o of p.ops.slice(0, top)) lines.push(`| ${o.op} | ${o.msPerRun.toFixed(3)} | ${((100 * o.msPerRun) / p.runMs).toFixed(1)} % | ${o.nodesPerRun.toFixed(0)} |`);
  const rest = p.ops.slice(top);
  if (rest.length > 0) {
    const ms = rest.reduce((s, o) => s + o.msPerRun, 0);
    lines.push(`| ${rest.length} other op types | ${ms.toFixed(3)} | ${((100 * ms) / p.runMs).toFixed(1)} % | ${rest.reduce((s, o) => s + o.nodesPerRun, 0).toFixed(0)} |`);
  }
  const outside = p.runMs - p.kernelMs;
  lines.push(`| (executor, between kernels) | ${outside.toFixed(3)} | ${((100 * outside) / p.runMs).toFixed(1)} % | |`);
  return lines.join('\n');
}
