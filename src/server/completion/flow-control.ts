// Flow control of one client connection. When its send buffer fills, the streams it carries
// pause: the engine keeps them out of its steps, so output stops at the source instead of piling
// up in server memory (a step or two of tokens at most). When the buffer drains they resume; a
// client that reads nothing for stallTimeoutMs is considered gone.
export interface FlowHooks {
  pause(): void;
  resume(): void;
  /** The buffer did not drain in time: cancel the streams and drop the connection. */
  stalled(): void;
}

export class StallGuard {
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly stallTimeoutMs: number,
    private readonly hooks: FlowHooks,
  ) {}

  get paused(): boolean {
    return this.timer !== null;
  }

  /** The send buffer is over its mark. Idempotent while paused. */
  full(): void {
    if (this.timer) return;
    this.hooks.pause();
    this.timer = setTimeout(() => {
      this.timer = null;
      this.hooks.stalled();
    }, this.stallTimeoutMs);
  }

  /** The send buffer is back under its mark. */
  drained(): void {
    if (!this.timer) return;
    clearTimeout(this.timer);
    this.timer = null;
    this.hooks.resume();
  }

  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
