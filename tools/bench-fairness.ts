// npm run bench:fairness -- [--mode tenants|priority|fcfs] [--model DIR] [--streams 48]
//                            [--prompt-tokens 128] [--output-tokens 64] [--seed 0]   (npm run build first)
// The issue-28 fairness target through the public API, on a server this tool starts:
//   tenants:  tenant A (one API key) has --streams streams in flight; then tenant B (another key)
//             sends one request;
//   priority: --streams priority-0 streams, then one priority -10 request
//             (--scheduling-policy priority);
//   fcfs:     the same requests without keys or priority: strict arrival order, for comparison.
// Reports the late request's time to first token against the median TTFT of the first group's
// requests that were still queued (no first token yet) when it was sent. Target: at most half.
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { ensureBenchModel } from './bench/bench.js';
import { DEFAULT_MODEL_DIR } from './bench/options.js';
import { startServer, stopServersOnSignals } from './bench/server-process.js';
import { percentile } from './bench/stats.js';
import { makeWorkload } from './bench/workload.js';

stopServersOnSignals('bench-fairness');

const { values } = parseArgs({
  options: {
    mode: { type: 'string', default: 'tenants' },
    model: { type: 'string' },
    streams: { type: 'string', default: '48' },
    'prompt-tokens': { type: 'string', default: '128' },
    'output-tokens': { type: 'string', default: '64' },
    seed: { type: 'string', default: '0' },
  },
});
const mode = values.mode;
if (mode !== 'tenants' && mode !== 'priority' && mode !== 'fcfs') throw new Error('--mode is tenants, priority or fcfs');
const streams = Number(values.streams);
const KEY_A = 'bench-key-a';
const KEY_B = 'bench-key-b';

interface Timing {
  sentAt: number;
  /** Response headers (200): the engine has queued the request. */
  acceptedAt: number | null;
  firstTokenAt: number | null;
  doneAt: number | null;
}

/** One streaming completion; resolves when it ends. `timing` fills in as tokens arrive. */
async function stream(url: string, key: string | null, body: Record<string, unknown>, timing: Timing): Promise<void> {
  const res = await fetch(new URL('/v1/completions', url), {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  timing.acceptedAt = performance.now();
  const decoder = new TextDecoder();
  for await (const chunk of res.body!) {
    const text = decoder.decode(chunk as Uint8Array, { stream: true });
    if (timing.firstTokenAt === null && text.includes('"text"')) timing.firstTokenAt = performance.now();
  }
  timing.doneAt = performance.now();
}

async function main(): Promise<void> {
  const modelDir = await ensureBenchModel(values.model ?? DEFAULT_MODEL_DIR, values.model === undefined, (s) => process.stderr.write(`${s}\n`));
  const args = mode === 'tenants' ? ['--api-key', KEY_A, '--api-key', KEY_B] : mode === 'priority' ? ['--scheduling-policy', 'priority'] : [];
  const server = await startServer({ modelDir, args });
  try {
    const model = ((await (await fetch(new URL('/v1/models', server.url), { headers: { authorization: `Bearer ${KEY_A}` } })).json()) as { data: Array<{ id: string }> }).data[0]!.id;
    const work = makeWorkload({ seed: Number(values.seed), requests: streams + 1, promptTokens: Number(values['prompt-tokens']), outputTokens: Number(values['output-tokens']) });
    const body = (i: number, extra: Record<string, unknown> = {}) => ({ model, prompt: work[i]!.promptIds, max_tokens: work[i]!.outputTokens, ignore_eos: true, ...extra });
    const first: Timing[] = [];
    const firstDone: Array<Promise<void>> = [];
    for (let i = 0; i < streams; i++) {
      const t: Timing = { sentAt: performance.now(), acceptedAt: null, firstTokenAt: null, doneAt: null };
      first.push(t);
      firstDone.push(stream(server.url, mode === 'tenants' ? KEY_A : null, body(i), t));
    }
    // The first group is in flight (every request queued in the engine or running) when the late one is sent.
    while (first.some((t) => t.acceptedAt === null)) await new Promise((r) => setTimeout(r, 10));
    const late: Timing = { sentAt: performance.now(), acceptedAt: null, firstTokenAt: null, doneAt: null };
    const queued = first.filter((t) => t.firstTokenAt === null);
    await Promise.all([...firstDone, stream(server.url, mode === 'tenants' ? KEY_B : null, body(streams, mode === 'priority' ? { priority: -10 } : {}), late)]);
    const ttft = (t: Timing) => t.firstTokenAt! - t.sentAt;
    const medianQueued = percentile(queued.map(ttft), 50);
    const result = {
      mode,
      streams,
      promptTokens: Number(values['prompt-tokens']),
      outputTokens: Number(values['output-tokens']),
      queuedWhenSent: queued.length,
      lateTtftMs: Math.round(ttft(late)),
      queuedMedianTtftMs: Math.round(medianQueued),
      ratio: Number((ttft(late) / medianQueued).toFixed(3)),
      targetMet: ttft(late) <= medianQueued / 2,
      command: server.command.join(' '),
    };
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } finally {
    await server.stop();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench-fairness: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
