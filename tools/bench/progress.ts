// Progress while a run is going: a bar on a terminal, a plain line every few seconds otherwise
// (logs and pipes), nothing when quiet. Always on stderr: stdout carries the report.
import cliProgress from 'cli-progress';
import type { LoadProgress } from './load.js';

export interface RunProgress {
  start(label: string, total: number): void;
  update(p: LoadProgress): void;
  stop(): void;
}

export type ProgressMode = 'auto' | 'bar' | 'lines' | 'none';

export function makeProgress(mode: ProgressMode = 'auto', stream: NodeJS.WriteStream = process.stderr): RunProgress {
  const resolved = mode === 'auto' ? (stream.isTTY ? 'bar' : 'lines') : mode;
  if (resolved === 'none') return { start() {}, update() {}, stop() {} };
  return resolved === 'bar' ? barProgress(stream) : lineProgress(stream);
}

const rate = (p: LoadProgress) => (p.elapsedMs > 0 ? (p.outputTokens / p.elapsedMs) * 1000 : 0);

function barProgress(stream: NodeJS.WriteStream): RunProgress {
  let bar: cliProgress.SingleBar | null = null;
  return {
    start(label, total) {
      bar = new cliProgress.SingleBar(
        {
          stream,
          hideCursor: true,
          format: '{label} |{bar}| {value}/{total} requests | {tokps} output tok/s | {errors} errors | {duration_formatted}',
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(total, 0, { label, tokps: '0.0', errors: 0 });
    },
    update(p) {
      bar?.update(p.done, { tokps: rate(p).toFixed(1), errors: p.errors });
    },
    stop() {
      bar?.stop();
      bar = null;
    },
  };
}

function lineProgress(stream: NodeJS.WriteStream, everyMs = 5000): RunProgress {
  let label = '';
  let last = 0;
  let latest: LoadProgress | null = null;
  const line = (p: LoadProgress) =>
    stream.write(`${label}: ${p.done}/${p.total} requests, ${rate(p).toFixed(1)} output tok/s, ${p.errors} errors, ${(p.elapsedMs / 1000).toFixed(1)} s\n`);
  return {
    start(l, total) {
      label = l;
      last = Date.now();
      latest = null;
      stream.write(`${label}: ${total} requests ...\n`);
    },
    update(p) {
      latest = p;
      if (p.done < p.total && Date.now() - last < everyMs) return;
      last = Date.now();
      line(p);
    },
    stop() {
      if (latest && latest.done < latest.total) line(latest);
      latest = null;
    },
  };
}
