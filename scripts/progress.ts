// Progress output for the long-running CLI steps: bars on a terminal, plain periodic lines in
// logs and pipes (a CI log full of carriage returns helps nobody).
import cliProgress from 'cli-progress';
import type { DownloadProgress } from '../src/model/hub-download.js';

export interface Reporter {
  download(e: DownloadProgress): void;
  export(p: { phase: string; done: number; total: number }): void;
  stop(): void;
}

export function makeReporter(): Reporter {
  return process.stderr.isTTY ? barReporter() : lineReporter();
}

function barReporter(): Reporter {
  const multi = new cliProgress.MultiBar(
    { stream: process.stderr, hideCursor: true, format: '{label} |{bar}| {percentage}% {amount}' },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, cliProgress.SingleBar>();
  const show = (label: string, done: number, total: number | null, amount: string) => {
    let bar = bars.get(label);
    if (!bar) bars.set(label, (bar = multi.create(total ?? 0, 0, { label: label.padEnd(24), amount })));
    if (total !== null) bar.setTotal(total);
    bar.update(done, { amount });
  };
  return {
    download: (e) => show(e.file, e.received, e.total, `${bytes(e.received)} / ${e.total === null ? '?' : bytes(e.total)}`),
    export: (p) => show(`export: ${p.phase}`, p.done, p.total, ''),
    stop: () => multi.stop(),
  };
}

/** For logs and pipes: a line per file or phase every few seconds, and one when it completes. */
function lineReporter(): Reporter {
  const last = new Map<string, number>();
  const line = (key: string, done: number, total: number | null, text: string) => {
    const now = Date.now();
    const finished = total !== null && done >= total;
    const prev = last.get(key);
    if (prev === Infinity || (!finished && prev !== undefined && now - prev < 5000)) return;
    last.set(key, finished ? Infinity : now);
    process.stderr.write(`${key}: ${text}${finished ? ' done' : ''}\n`);
  };
  return {
    download: (e) => {
      const pct = e.total ? ` (${Math.floor((100 * e.received) / e.total)}%)` : '';
      line(e.file, e.received, e.total, `${bytes(e.received)} / ${e.total === null ? '?' : bytes(e.total)}${pct}`);
    },
    export: (p) => line(`export ${p.phase}`, p.done, p.total, `${p.total ? Math.floor((100 * p.done) / p.total) : 0}%`),
    stop: () => {},
  };
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB'];
  let v = n / 1024;
  let i = 0;
  for (; v >= 1024 && i < units.length - 1; i++) v /= 1024;
  return `${v.toFixed(1)} ${units[i]}`;
}
