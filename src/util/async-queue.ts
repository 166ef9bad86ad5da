// The one hand-over point between producers that push and a consumer that awaits: the engine
// loop's inbox and a completion's merged events both use it. Unbounded by design: every producer
// is bounded upstream (admission limits requests, flow control pauses a stream whose client stops
// reading), so the queue never holds more than a step or two of events.

export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private head = 0;
  private waiter: ((result: IteratorResult<T>) => void) | null = null;
  private closed = false;

  get length(): number {
    return this.items.length - this.head;
  }

  /** Hands `item` to a waiting consumer, or queues it. Ignored once closed. */
  push(item: T): void {
    if (this.closed) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: item, done: false });
      return;
    }
    this.items.push(item);
  }

  /** The next queued item without waiting, or undefined. */
  shift(): T | undefined {
    if (this.head === this.items.length) return undefined;
    const item = this.items[this.head]!;
    this.items[this.head++] = undefined as T; // let it be collected
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items.splice(0, this.head);
      this.head = 0;
    }
    return item;
  }

  /** Waits for the next item; `done` once closed and empty. One consumer at a time. */
  next(): Promise<IteratorResult<T>> {
    if (this.length > 0) return Promise.resolve({ value: this.shift()!, done: false });
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    if (this.waiter) return Promise.reject(new Error('AsyncQueue has one consumer'));
    return new Promise((resolve) => (this.waiter = resolve));
  }

  /** No more items: a waiting consumer ends, queued items are still delivered. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const w = this.waiter;
    this.waiter = null;
    w?.({ value: undefined, done: true });
  }

  /** Closes and drops what is queued (the consumer is gone). */
  clear(): void {
    this.close();
    this.items.length = 0;
    this.head = 0;
  }

  /** Leaving a `for await` early discards the rest. */
  return(): Promise<IteratorResult<T>> {
    this.clear();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
