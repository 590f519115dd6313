/**
 * Event ids are opaque `<ms>-<seq>` strings. We never interpret them beyond ordering, and we
 * compare the parts as numbers: string order is wrong ("9-0" > "10-0") and the parts can exceed
 * 2^53, so they are compared by length first, then lexically.
 */
export function compareIds(a: string, b: string): number {
  const [am, as] = split(a);
  const [bm, bs] = split(b);
  return cmpDigits(am, bm) || cmpDigits(as, bs);
}

function split(id: string): [string, string] {
  const dash = id.indexOf('-');
  return dash < 0 ? [id, '0'] : [id.slice(0, dash), id.slice(dash + 1)];
}

function cmpDigits(a: string, b: string): number {
  a = a.replace(/^0+(?=\d)/, '');
  b = b.replace(/^0+(?=\d)/, '');
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Remembers the last delivered id so replays after a reconnect are never delivered twice. */
export class Deduper {
  constructor(public lastId: string | undefined = undefined) {}

  /** True (and remembers `id`) when the event is new; false for a replayed one. */
  accept(id: string | undefined): boolean {
    if (id === undefined || id === '') return true;
    if (this.lastId !== undefined && compareIds(id, this.lastId) <= 0) return false;
    this.lastId = id;
    return true;
  }
}
