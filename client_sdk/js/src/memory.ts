import type { AdapterName } from './transports/types.js';

/**
 * What worked last, per broker and set of usable adapters: an ordering hint that lets a new
 * channel skip a transport this network blocks. Not module state: an app that wants it creates
 * one and passes it to each channel (`memory` option), so nothing leaks between tests, tabs or
 * brokers, and a remembered adapter that fails is forgotten at once, so it never blocks a channel.
 */
export class TransportMemory {
  private entries: { [key: string]: { name: AdapterName; at: number } | undefined } = {};

  constructor(
    private readonly ttlMs = 10 * 60 * 1000,
    private readonly now: () => number = () => Date.now(),
  ) {}

  hint(key: string): AdapterName | undefined {
    const e = this.entries[key];
    return e && this.now() - e.at < this.ttlMs ? e.name : undefined;
  }

  remember(key: string, name: AdapterName): void {
    this.entries[key] = { name, at: this.now() };
  }

  forget(key: string, name: AdapterName): void {
    const e = this.entries[key];
    if (e && e.name === name) this.entries[key] = undefined;
  }
}
