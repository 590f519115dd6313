/** A mitt-sized event emitter: one listener throwing must not stop the others or the stream. */
export type Listener = (...args: any[]) => void;

export class Emitter {
  private listeners: { [event: string]: Listener[] | undefined } = {};

  on(event: string, fn: Listener): this {
    (this.listeners[event] || (this.listeners[event] = [])).push(fn);
    return this;
  }

  off(event: string, fn?: Listener): this {
    const list = this.listeners[event];
    if (list) this.listeners[event] = fn ? list.filter((l) => l !== fn) : [];
    return this;
  }

  once(event: string, fn: Listener): this {
    const wrap: Listener = (...args) => {
      this.off(event, wrap);
      fn(...args);
    };
    return this.on(event, wrap);
  }

  listenerCount(event: string): number {
    return (this.listeners[event] || []).length;
  }

  protected emit(event: string, ...args: unknown[]): void {
    for (const fn of (this.listeners[event] || []).slice()) {
      try {
        fn(...args);
      } catch (err) {
        // Report asynchronously so an app bug surfaces without killing delivery.
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }
}
