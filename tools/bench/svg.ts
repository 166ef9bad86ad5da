// The sweep as a hand-written SVG (no chart library): two panels side by side, output throughput
// and end-to-end latency (p50 solid, p99 dashed) against concurrency (or arrival rate), for the
// batched server and, when measured, the --max-num-seqs 1 baseline. Log-2 x axis when the sweep
// spans a wide range; log-10 latency axis when the latencies do.
import type { RunMetrics } from './metrics.js';

export interface ChartInput {
  title: string;
  subtitle?: string;
  batched: RunMetrics[];
  baseline: RunMetrics[] | null;
  /** The baseline server's own flags (default: --max-num-seqs 1, "no batching"). */
  baselineLabel?: string;
}

interface Series {
  label: string;
  color: string;
  dashed: boolean;
  marker: 'circle' | 'square';
  points: Array<[number, number]>;
}

interface Scale {
  map(v: number): number;
  ticks: number[];
  format(v: number): string;
}

const W = 960;
const H = 462;
const COLORS = { batched: '#1f6fb4', baseline: '#e0701a' };
const PANEL = { top: 114, bottom: 394, width: 380 };
const LEFTS = [80, 560];

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 10000) return `${+(v / 1000).toFixed(1)}k`;
  if (a >= 100) return String(Math.round(v));
  if (a >= 1) return String(+v.toFixed(1));
  return String(+v.toPrecision(2));
}

function niceStep(range: number, target: number): number {
  const raw = range / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
}

function linearScale(max: number, pixels: [number, number]): Scale {
  const step = niceStep(max > 0 ? max : 1, 5);
  const top = Math.max(step, Math.ceil((max > 0 ? max : 1) / step) * step);
  const ticks: number[] = [];
  for (let v = 0; v <= top + step / 2; v += step) ticks.push(+v.toPrecision(12));
  return { map: (v) => pixels[0] + ((pixels[1] - pixels[0]) * v) / top, ticks, format: fmt };
}

function logScale(min: number, max: number, pixels: [number, number]): Scale {
  const lo = 10 ** Math.floor(Math.log10(min));
  const hi = 10 ** Math.ceil(Math.log10(max));
  const ticks: number[] = [];
  for (let d = lo; d <= hi; d *= 10) for (const m of [1, 2, 5]) if (d * m >= lo && d * m <= hi) ticks.push(+(d * m).toPrecision(6));
  const [l0, l1] = [Math.log10(lo), Math.log10(hi)];
  return { map: (v) => pixels[0] + ((pixels[1] - pixels[0]) * (Math.log10(v) - l0)) / (l1 - l0), ticks, format: fmt };
}

/** Sweep values on the x axis: log 2 when they span 4x or more, else linear; ticks at the values. */
function xScale(xs: number[], pixels: [number, number]): Scale {
  const min = Math.min(...xs);
  const max = Math.max(...xs);
  const pad = 0.06 * (pixels[1] - pixels[0]);
  const inner: [number, number] = [pixels[0] + pad, pixels[1] - pad];
  const ticks = [...new Set(xs)].sort((a, b) => a - b);
  if (min > 0 && max / min >= 4) {
    const [l0, l1] = [Math.log2(min), Math.log2(max)];
    return { map: (v) => inner[0] + ((inner[1] - inner[0]) * (Math.log2(v) - l0)) / (l1 - l0), ticks, format: fmt };
  }
  if (max === min) return { map: () => (inner[0] + inner[1]) / 2, ticks, format: fmt };
  return { map: (v) => inner[0] + ((inner[1] - inner[0]) * (v - min)) / (max - min), ticks, format: fmt };
}

const xOf = (m: RunMetrics) => (m.request_rate ?? m.concurrency ?? 0);

function panel(left: number, title: string, xLabel: string, yLabel: string, x: Scale, y: Scale, series: Series[]): string {
  const right = left + PANEL.width;
  const { top, bottom } = PANEL;
  const out: string[] = [];
  out.push(`<g class="panel">`);
  out.push(`<text x="${left + PANEL.width / 2}" y="${top - 12}" text-anchor="middle" class="panel-title">${escapeXml(title)}</text>`);
  for (const t of y.ticks) {
    const py = y.map(t).toFixed(1);
    out.push(`<line x1="${left}" y1="${py}" x2="${right}" y2="${py}" class="grid"/>`);
    out.push(`<text x="${left - 6}" y="${py}" text-anchor="end" dominant-baseline="middle" class="tick">${escapeXml(y.format(t))}</text>`);
  }
  for (const t of x.ticks) {
    const px = x.map(t).toFixed(1);
    out.push(`<line x1="${px}" y1="${bottom}" x2="${px}" y2="${bottom + 5}" class="axis"/>`);
    out.push(`<text x="${px}" y="${bottom + 18}" text-anchor="middle" class="tick">${escapeXml(x.format(t))}</text>`);
  }
  out.push(`<rect x="${left}" y="${top}" width="${PANEL.width}" height="${bottom - top}" class="frame"/>`);
  out.push(`<text x="${left + PANEL.width / 2}" y="${bottom + 38}" text-anchor="middle" class="label">${escapeXml(xLabel)}</text>`);
  const cy = (top + bottom) / 2;
  out.push(`<text x="${left - 52}" y="${cy}" text-anchor="middle" transform="rotate(-90 ${left - 52} ${cy})" class="label">${escapeXml(yLabel)}</text>`);
  for (const s of series) {
    if (s.points.length === 0) continue;
    const pts = s.points.map(([vx, vy]) => `${x.map(vx).toFixed(1)},${y.map(vy).toFixed(1)}`);
    out.push(
      `<polyline data-series="${escapeXml(s.label)}" points="${pts.join(' ')}" fill="none" stroke="${s.color}" stroke-width="2.2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`,
    );
    for (const [vx, vy] of s.points) {
      const px = x.map(vx).toFixed(1);
      const py = y.map(vy).toFixed(1);
      out.push(
        s.marker === 'circle'
          ? `<circle cx="${px}" cy="${py}" r="3.5" fill="${s.dashed ? 'white' : s.color}" stroke="${s.color}" stroke-width="1.5"/>`
          : `<rect x="${(+px - 3.5).toFixed(1)}" y="${(+py - 3.5).toFixed(1)}" width="7" height="7" fill="${s.dashed ? 'white' : s.color}" stroke="${s.color}" stroke-width="1.5"/>`,
      );
    }
  }
  out.push(`</g>`);
  return out.join('\n');
}

function legend(items: Series[], y: number): string {
  const out: string[] = [`<g class="legend">`];
  const widths = items.map((s) => 36 + s.label.length * 7 + 26);
  let x = (W - widths.reduce((a, b) => a + b, 0)) / 2;
  items.forEach((s, i) => {
    out.push(`<line x1="${x.toFixed(1)}" y1="${y}" x2="${(x + 28).toFixed(1)}" y2="${y}" stroke="${s.color}" stroke-width="2.2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    out.push(`<text x="${(x + 36).toFixed(1)}" y="${y}" dominant-baseline="middle" class="tick">${escapeXml(s.label)}</text>`);
    x += widths[i]!;
  });
  out.push(`</g>`);
  return out.join('\n');
}

export function renderSvg(input: ChartInput): string {
  const { batched, baseline } = input;
  if (batched.length === 0) throw new Error('nothing to chart: no runs');
  const byRate = batched[0]!.request_rate !== null;
  const xLabel = byRate ? 'arrival rate (requests/s, Poisson)' : 'concurrency (requests in flight)';
  const pts = (runs: RunMetrics[], pick: (m: RunMetrics) => number) => runs.map((m) => [xOf(m), pick(m)] as [number, number]);
  const base = baseline && baseline.length ? baseline : null;

  const tput: Series[] = [{ label: 'continuous batching', color: COLORS.batched, dashed: false, marker: 'circle', points: pts(batched, (m) => m.output_throughput) }];
  const baseName = input.baselineLabel?.replace(/^--/, '') ?? 'max-num-seqs 1';
  if (base) tput.push({ label: baseName, color: COLORS.baseline, dashed: false, marker: 'square', points: pts(base, (m) => m.output_throughput) });
  const lat: Series[] = [
    { label: 'batching p50', color: COLORS.batched, dashed: false, marker: 'circle', points: pts(batched, (m) => m.e2el_ms.median / 1000) },
    { label: 'batching p99', color: COLORS.batched, dashed: true, marker: 'circle', points: pts(batched, (m) => m.e2el_ms.p99 / 1000) },
  ];
  if (base) {
    lat.push({ label: `${baseName} p50`, color: COLORS.baseline, dashed: false, marker: 'square', points: pts(base, (m) => m.e2el_ms.median / 1000) });
    lat.push({ label: `${baseName} p99`, color: COLORS.baseline, dashed: true, marker: 'square', points: pts(base, (m) => m.e2el_ms.p99 / 1000) });
  }

  const xs = batched.map(xOf);
  const panels = LEFTS.map((l) => [l, l + PANEL.width] as [number, number]);
  const yPix: [number, number] = [PANEL.bottom, PANEL.top];
  const tputMax = Math.max(...tput.flatMap((s) => s.points.map((p) => p[1])));
  const latValues = lat.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v > 0);
  const latMin = latValues.length ? Math.min(...latValues) : 1;
  const latMax = latValues.length ? Math.max(...latValues) : 1;
  const latLog = latMax / latMin > 20;
  const latScale = latLog ? logScale(latMin, latMax, yPix) : linearScale(latMax, yPix);

  const legendItems: Series[] = [
    { label: 'continuous batching', color: COLORS.batched, dashed: false, marker: 'circle', points: [] },
    ...(base ? [{ label: input.baselineLabel ?? '--max-num-seqs 1 (no batching)', color: COLORS.baseline, dashed: false, marker: 'square' as const, points: [] }] : []),
    { label: 'p50 (solid)', color: '#555', dashed: false, marker: 'circle', points: [] },
    { label: 'p99 (dashed)', color: '#555', dashed: true, marker: 'circle', points: [] },
  ];

  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif">`,
    `<style>`,
    `.title{font-size:17px;font-weight:bold;fill:#222}.subtitle{font-size:12px;fill:#555}`,
    `.panel-title{font-size:14px;font-weight:bold;fill:#222}.label{font-size:13px;fill:#333}.tick{font-size:11.5px;fill:#444}`,
    `.grid{stroke:#e4e4e4;stroke-width:1}.axis{stroke:#444;stroke-width:1}.frame{fill:none;stroke:#444;stroke-width:1}`,
    `</style>`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="26" text-anchor="middle" class="title">${escapeXml(input.title)}</text>`,
    input.subtitle ? `<text x="${W / 2}" y="45" text-anchor="middle" class="subtitle">${escapeXml(input.subtitle)}</text>` : '',
    legend(legendItems, 70),
    panel(LEFTS[0]!, 'Output throughput', xLabel, 'output tokens/s', xScale(xs, panels[0]!), linearScale(tputMax, yPix), tput),
    panel(LEFTS[1]!, `End-to-end latency${latLog ? ' (log scale)' : ''}`, xLabel, 'latency (s)', xScale(xs, panels[1]!), latScale, lat),
    `</svg>`,
  ]
    .filter((l) => l !== '')
    .join('\n')
    .concat('\n');
}
