// The soak's websocket client: one socket carrying several completions, each with a plan (read to
// the end, or cancel after a few chunks), a socket the client may close mid-stream or stop
// reading, and every completion's outcome judged from the frames (docs/api.md: each
// completion.create ends with exactly one completion.done or one error frame).
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';
import { wsUrl } from '../bench/ws-client.js';
import { errorOutcome, statusOfCode, type RequestRecord } from './outcome.js';

export interface WsTarget {
  baseUrl: string;
  requestTimeoutMs: number;
}

export interface WsCompletionPlan {
  id: string;
  /** The table row its outcome is counted in. */
  scenario: string;
  body: Record<string, unknown>;
  /** Tokens completion.done must report (ignore_eos makes lengths exact); null: not checked. */
  expectedTokens: number | null;
  /** Send completion.cancel after this many chunks of it. */
  cancelAfterChunks?: number;
}

export interface WsSocketPlan {
  completions: WsCompletionPlan[];
  /** Close the socket once this many chunks arrived over all completions. */
  closeAfterChunks?: number;
  /** How: a close handshake, or dropping the TCP connection. */
  closeHow?: 'close' | 'terminate';
  /**
   * Send a ping with the completions and stop reading at the first frame: the pong, which comes
   * before any output, so the socket's receive window is still small (reading a large first frame
   * would let TCP autotuning grow it by megabytes). Resume this many ms after the output starts
   * arriving (bytes waiting unread on the paused socket).
   */
  stallForMs?: number;
}

const STALL_POLL_MS = 50;

interface Tracked {
  plan: WsCompletionPlan;
  start: number;
  chunks: number;
  cancelSent: boolean;
  record: RequestRecord | null;
}

/** Opens a socket, runs the plan, and resolves with one record per completion once all are decided. */
export async function runWsSocket(target: WsTarget, plan: WsSocketPlan): Promise<RequestRecord[]> {
  const start = performance.now();
  let raw: net.Socket | null = null;
  const opened = await openSocket(target, (s) => (raw = s));
  if (typeof opened === 'string') {
    return plan.completions.map((c) => ({ scenario: c.scenario, outcome: 'unexpected', status: null, code: null, ms: performance.now() - start, detail: opened }));
  }
  const ws = opened;
  const tracked = new Map<string, Tracked>(plan.completions.map((c) => [c.id, { plan: c, start: performance.now(), chunks: 0, cancelSent: false, record: null }]));
  let chunks = 0;
  let closedByUs = false;
  let resumeTimer: NodeJS.Timeout | null = null;
  let stallPoll: NodeJS.Timeout | null = null;
  const stall = () => {
    ws.pause();
    stallPoll = setInterval(() => {
      if (raw!.readableLength === 0) return;
      clearInterval(stallPoll!);
      stallPoll = null;
      resumeTimer = setTimeout(() => ws.resume(), plan.stallForMs);
    }, STALL_POLL_MS);
  };

  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      decideOpen('unexpected', `undecided after ${target.requestTimeoutMs} ms`);
      ws.terminate();
    }, target.requestTimeoutMs);
    const finish = () => {
      clearTimeout(timer);
      if (resumeTimer) clearTimeout(resumeTimer);
      if (stallPoll) clearInterval(stallPoll);
      if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      resolve([...tracked.values()].map((t) => t.record!));
    };
    const decide = (t: Tracked, record: Omit<RequestRecord, 'scenario' | 'ms'>) => {
      if (t.record) return;
      t.record = { scenario: t.plan.scenario, ms: performance.now() - t.start, ...record };
      if ([...tracked.values()].every((x) => x.record)) finish();
    };
    const decideOpen = (outcome: RequestRecord['outcome'], detail?: string) => {
      for (const t of tracked.values()) if (!t.record) decide(t, { outcome, status: null, code: null, ...(detail ? { detail } : {}) });
    };

    ws.on('message', (data: WebSocket.RawData) => {
      if (plan.stallForMs !== undefined && !ws.isPaused && resumeTimer === null) stall();
      let frame: { type?: unknown; id?: unknown; cancelled?: unknown; usage?: { completion_tokens?: unknown }; error?: { code?: unknown } };
      try {
        frame = JSON.parse(data.toString()) as typeof frame;
      } catch {
        return decideOpen('unexpected', 'a frame that is not JSON');
      }
      if (frame.type === 'pong' && plan.stallForMs !== undefined) return;
      const t = typeof frame.id === 'string' ? tracked.get(frame.id) : undefined;
      if (!t) return decideOpen('unexpected', `a frame for no request of ours: ${JSON.stringify(frame).slice(0, 120)}`);
      if (frame.type === 'completion.chunk') {
        t.chunks++;
        chunks++;
        if (t.plan.cancelAfterChunks !== undefined && t.chunks >= t.plan.cancelAfterChunks && !t.cancelSent) {
          t.cancelSent = true;
          ws.send(JSON.stringify({ type: 'completion.cancel', id: t.plan.id }));
        }
        if (plan.closeAfterChunks !== undefined && chunks >= plan.closeAfterChunks && !closedByUs) {
          closedByUs = true;
          if (plan.closeHow === 'terminate') ws.terminate();
          else ws.close(1000);
        }
      } else if (frame.type === 'completion.done') {
        if (frame.cancelled === true) {
          decide(t, t.cancelSent ? { outcome: 'cancelled', status: null, code: null } : { outcome: 'unexpected', status: null, code: null, detail: 'cancelled without a cancel frame' });
        } else {
          const tokens = frame.usage?.completion_tokens;
          const want = t.plan.expectedTokens;
          decide(
            t,
            want === null || tokens === want
              ? { outcome: 'completed', status: 200, code: null }
              : { outcome: 'unexpected', status: 200, code: null, detail: `completion.done reported ${String(tokens)} tokens, expected ${want}` },
          );
        }
      } else if (frame.type === 'error') {
        const code = typeof frame.error?.code === 'string' ? frame.error.code : null;
        // A cancel that crossed the completion's last frame is answered request_not_found: fine.
        if (t.record && t.cancelSent && code === 'request_not_found') return;
        const status = statusOfCode(code);
        const judged = status === null ? { outcome: 'unexpected' as const, detail: `error frame with code ${code}` } : errorOutcome(status, code);
        decide(t, { ...judged, status, code });
      }
    });
    ws.on('close', (code) => {
      if (closedByUs) decideOpen('cancelled');
      else decideOpen(plan.stallForMs !== undefined ? 'stall_cutoff' : 'unexpected', `the server closed the socket (code ${code})`);
      finish();
    });
    ws.on('error', () => {}); // 'close' follows and decides

    if (plan.stallForMs !== undefined) ws.send(JSON.stringify({ type: 'ping' }));
    for (const c of plan.completions) ws.send(JSON.stringify({ type: 'completion.create', id: c.id, ...c.body }));
  });
}

/** Opens a socket to the completions endpoint (`onSocket` gets its TCP socket), or says why it could not. */
export function openSocket(target: WsTarget, onSocket?: (socket: net.Socket) => void): Promise<WebSocket | string> {
  return new Promise((resolve) => {
    const ws = new WebSocket(wsUrl(target.baseUrl), {
      perMessageDeflate: false,
      // ws's own net.connect, keeping a handle on the socket; `path` is the URL's, not an IPC path.
      createConnection: ((options: net.NetConnectOpts) => {
        const socket = net.connect({ ...options, path: undefined } as net.NetConnectOpts);
        onSocket?.(socket);
        return socket;
      }) as typeof net.createConnection,
    });
    const timer = setTimeout(() => {
      ws.terminate();
      resolve(`the websocket did not open within ${target.requestTimeoutMs} ms`);
    }, target.requestTimeoutMs);
    ws.once('open', () => {
      clearTimeout(timer);
      resolve(ws);
    });
    ws.once('error', (err) => {
      clearTimeout(timer);
      resolve(`websocket: ${err.message}`);
    });
  });
}

/** Sends `frames` in order and collects every frame until `count` arrived or the socket closed. */
export async function wsExchange(
  target: WsTarget,
  frames: Array<string | Buffer>,
  count: number,
): Promise<{ frames: Array<Record<string, unknown>>; closeCode: number | null; error: string | null; ms: number }> {
  const start = performance.now();
  const opened = await openSocket(target);
  if (typeof opened === 'string') return { frames: [], closeCode: null, error: opened, ms: performance.now() - start };
  const ws = opened;
  const got: Array<Record<string, unknown>> = [];
  return new Promise((resolve) => {
    let done = false;
    const settle = (closeCode: number | null, error: string | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      resolve({ frames: got, closeCode, error, ms: performance.now() - start });
    };
    const timer = setTimeout(() => {
      settle(null, `no answer after ${target.requestTimeoutMs} ms`);
      ws.terminate();
    }, target.requestTimeoutMs);
    ws.on('message', (data: WebSocket.RawData) => {
      try {
        got.push(JSON.parse(data.toString()) as Record<string, unknown>);
      } catch {
        got.push({ unparsable: data.toString().slice(0, 80) });
      }
      if (got.length >= count) settle(null, null);
    });
    ws.on('close', (code) => settle(code, null));
    ws.on('error', () => {}); // 'close' follows
    for (const f of frames) ws.send(f);
  });
}
