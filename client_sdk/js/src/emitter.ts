/**
 * A mitt-sized event emitter, typed by an event map (as mitt and centrifuge-js do): `on('message',
 * fn)` checks `fn` against the map. One listener throwing must not stop the others or the stream.
 */
export type Listener = (...args: any[]) => void;
export class Emitter<E extends { [K in keyof E]: Listener }> {
  private listeners: { [K in keyof E]?: E[K][] } = {};

  on<K extends keyof E>(event: K, fn: E[K]): this {
    (this.listeners[event] || (this.listeners[event] = [])).push(fn);
    return this;
  }

  off<K extends keyof E>(event: K, fn?: E[K]): this {
    const list = this.listeners[event];
    if (list) this.listeners[event] = fn ? list.filter((l) => l !== fn) : [];
    return this;
  }

  once<K extends keyof E>(event: K, fn: E[K]): this {
    const wrap = ((...args: unknown[]) => {
      this.off(event, wrap);
      fn(...args);
    }) as E[K];
    return this.on(event, wrap);
  }

  listenerCount(event: keyof E): number {
    return (this.listeners[event] || []).length;
  }

  protected emit<K extends keyof E>(event: K, ...args: Parameters<E[K]>): void {
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
