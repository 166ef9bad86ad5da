// The consumer side of one request: an async iterable that events are pushed into. Leaving a
// `for await` early (break, throw, client gone) calls `return()`, which cancels the request.
import type { EngineEvent } from './types.js';

export class EventStream implements AsyncIterableIterator<EngineEvent> {
  private readonly queue: EngineEvent[] = [];
  private waiter: ((r: IteratorResult<EngineEvent>) => void) | null = null;
  private ended = false;

  constructor(private readonly onCancel: () => void) {}

  /** Called by the client's dispatcher; `done` and `error` end the stream. */
  push(event: EngineEvent): void {
    if (this.ended) return;
    const last = event.type === 'done' || event.type === 'error';
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: event, done: false });
    } else {
      this.queue.push(event);
    }
    if (last) this.ended = true;
  }

  next(): Promise<IteratorResult<EngineEvent>> {
    const event = this.queue.shift();
    if (event) return Promise.resolve({ value: event, done: false });
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => (this.waiter = resolve));
  }

  return(): Promise<IteratorResult<EngineEvent>> {
    if (!this.ended) {
      this.ended = true;
      this.onCancel();
    }
    this.queue.length = 0;
    this.waiter?.({ value: undefined, done: true });
    this.waiter = null;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
