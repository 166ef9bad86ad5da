// Liveness of the engine as the main thread sees it, from heartbeats alone: the engine reports
// after every step and whenever it goes idle, so /health never waits on the engine's thread (a
// step can take a second). Pure bookkeeping with an injected clock, unit-tested on its own.
//
// Stuck means work has been pending for stepTimeoutMs with nothing heard meanwhile. Work is
// pending when the last heartbeat said busy, or when commands were sent that the engine has not
// applied yet (both sides count commands in order over one channel, so `sent > applied` is
// exact). The wait is counted from the later of the last heartbeat and the moment work became
// pending: an engine idle for longer than the timeout is not stuck the instant a request arrives.
// A busy engine that keeps reporting steps is never stuck, however long its queue: liveness must
// not kill a loaded server.
import type { EngineHealth, EngineHeartbeat, EngineStats } from './types.js';

export const EMPTY_STATS: EngineStats = {
  waiting: 0,
  running: 0,
  paused: 0,
  tenants: [],
  adapters: [],
  kvBlocksTotal: 0,
  kvBlocksUsed: 0,
  kvUsage: 0,
  kvBytesCommitted: 0,
  prefixCacheQueries: 0,
  prefixCacheHits: 0,
  specDecodeDrafts: 0,
  specDecodeDraftTokens: 0,
  specDecodeAcceptedTokens: 0,
  blockSize: 0,
  steps: 0,
  consecutiveFailedSteps: 0,
  lastStepMs: 0,
  stepMsTotal: 0,
  preemptions: 0,
  promptTokensTotal: 0,
  generatedTokensTotal: 0,
};

export class LivenessMonitor {
  private stats: EngineStats;
  private busy = false;
  private lastHeardAt: number;
  /** When work last became pending on an idle engine (a command sent with nothing outstanding). */
  private pendingSince = -Infinity;
  private sent = 0;
  private applied = 0;
  private deadReason: string | null = null;

  constructor(
    /** Work pending and no heartbeat for this long: stuck. 0 disables the check. */
    private readonly stepTimeoutMs: number,
    private readonly clock: () => number = () => performance.now(),
    /** What stats() says before the first heartbeat. */
    initialStats: EngineStats = EMPTY_STATS,
  ) {
    this.stats = initialStats;
    this.lastHeardAt = clock();
  }

  /** A command (add, cancel, pause, resume) went to the engine. */
  commandSent(): void {
    if (!this.pending) this.pendingSince = this.clock();
    this.sent++;
  }

  private get pending(): boolean {
    return this.busy || this.sent > this.applied;
  }

  heartbeat(hb: EngineHeartbeat): void {
    this.stats = hb.stats;
    this.busy = hb.busy;
    this.applied = hb.applied;
    this.lastHeardAt = this.clock();
  }

  /** Final: the engine is gone and will not come back. The first reason wins. */
  markDead(reason: string): void {
    this.deadReason ??= reason;
  }

  get dead(): boolean {
    return this.deadReason !== null;
  }

  latestStats(): EngineStats {
    return this.stats;
  }

  check(): EngineHealth {
    const since = this.clock() - this.lastHeardAt;
    const base = { sinceLastHeartbeatMs: Math.round(since), consecutiveFailedSteps: this.stats.consecutiveFailedSteps };
    if (this.deadReason !== null) return { state: 'dead', reason: this.deadReason, ...base };
    const waited = this.clock() - Math.max(this.lastHeardAt, this.pendingSince);
    if (this.pending && this.stepTimeoutMs > 0 && waited > this.stepTimeoutMs) {
      return { state: 'stuck', reason: `work is pending and the engine reported no progress for ${Math.round(waited)} ms`, ...base };
    }
    return { state: 'ok', reason: null, ...base };
  }
}
