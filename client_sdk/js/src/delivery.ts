import type { UnbrokenError } from './errors.js';
import { ChannelIterator } from './iterator.js';
import type { MessageMeta } from './options.js';

/**
 * Hands messages to the app: to `message` listeners and to every `for await` loop, and keeps
 * (bounded) what arrives before anyone listens, so a message never races past a late `on()`.
 */
export class Delivery {
  private backlog: { data: unknown; meta: MessageMeta }[] = [];
  private readonly iterators = new Set<ChannelIterator>();

  constructor(
    private readonly listeners: () => number,
    private readonly emit: (data: unknown, meta: MessageMeta) => void,
  ) {}

  deliver(data: unknown, meta: MessageMeta): void {
    if (!this.listeners() && !this.iterators.size) {
      if (this.backlog.length < 10000) this.backlog.push({ data, meta });
      return;
    }
    for (const it of this.iterators) it.push(data);
    this.emit(data, meta);
  }

  /** A `message` listener was added: give it what waited. */
  flush(): void {
    const items = this.backlog;
    this.backlog = [];
    for (const item of items) this.emit(item.data, item.meta);
  }

  /** A new `for await` loop: it starts with what waited; a finished channel ends it at once. */
  iterator(finished: boolean): ChannelIterator {
    const it = new ChannelIterator(() => this.iterators.delete(it));
    for (const item of this.backlog) it.push(item.data);
    this.backlog = [];
    if (finished) it.end();
    else this.iterators.add(it);
    return it;
  }

  /** The channel is over: loops end (or throw the error that ended it). */
  finish(err?: UnbrokenError): void {
    for (const it of this.iterators) (err ? it.fail(err) : it.end());
    this.iterators.clear();
  }
}
