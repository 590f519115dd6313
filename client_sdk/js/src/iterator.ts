import type { UnbrokenError } from './errors.js';

/** Pull side of `for await (const data of channel)`: a queue, woken by push/end/fail. */
export class ChannelIterator implements AsyncIterator<unknown> {
  private queue: unknown[] = [];
  private waiting: { resolve: (r: IteratorResult<unknown>) => void; reject: (e: unknown) => void } | undefined;
  private done = false;
  private error: UnbrokenError | undefined;

  constructor(private readonly detach: () => void) {}

  push(data: unknown): void {
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w.resolve({ value: data, done: false });
    } else {
      this.queue.push(data);
    }
  }

  end(): void {
    this.done = true;
    this.wake();
  }

  fail(err: UnbrokenError): void {
    this.error = err;
    this.done = true;
    this.wake();
  }

  next(): Promise<IteratorResult<unknown>> {
    if (this.queue.length) return Promise.resolve({ value: this.queue.shift(), done: false });
    if (this.error) {
      const err = this.error;
      this.error = undefined;
      return Promise.reject(err);
    }
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  return(): Promise<IteratorResult<unknown>> {
    this.done = true;
    this.queue = [];
    this.detach();
    return Promise.resolve({ value: undefined, done: true });
  }

  private wake(): void {
    if (!this.waiting || this.queue.length) return;
    const w = this.waiting;
    this.waiting = undefined;
    if (this.error) {
      const err = this.error;
      this.error = undefined;
      w.reject(err);
    } else {
      w.resolve({ value: undefined, done: true });
    }
  }
}
