import { UnbrokenError, httpError } from '../errors.js';
import { SseParser } from '../sse.js';
import { Utf8Decoder, toBytes } from '../utf8.js';
import type { TransportHandlers, WireEvent } from './types.js';

/** Turns the SSE framing (bytes or text, in any pieces) into WireEvents for the channel. */
export class SseReader {
  private readonly decoder = new Utf8Decoder();
  private readonly parser: SseParser;

  constructor(on: TransportHandlers) {
    this.parser = new SseParser({
      comment: () => on.activity(),
      event: (ev) => {
        on.activity();
        const wire = sseToWire(ev.event, ev.data, ev.id);
        if (wire) on.event(wire);
      },
    });
  }

  push(chunk: unknown): void {
    const data = toBytes(chunk);
    this.parser.feed(typeof data === 'string' ? data : this.decoder.decode(data));
  }
}

export function sseToWire(type: string, raw: string, id: string | undefined): WireEvent | undefined {
  let data: unknown;
  try {
    data = JSON.parse(raw);
  } catch {
    throw new UnbrokenError('protocol_error', 'event data is not JSON: ' + raw.slice(0, 80), { retryable: true });
  }
  switch (type) {
    case 'message':
    case 'end':
    case 'error':
    case 'cancelled':
      return { type, id, data };
    case 'gap':
      return { type: 'gap', data };
    case 'reconnect':
      return { type: 'reconnect', data };
    default:
      return undefined; // unknown event types are for future protocol versions
  }
}

/** A stream's HTTP status before any event: 2xx streams, 204 means "already ended, all seen". */
export function checkStatus(status: number, body: string, on: TransportHandlers, retryAfter?: string | null): boolean {
  if (status === 204) {
    on.activity();
    on.event({ type: 'end', data: null });
    on.closed();
    return false;
  }
  if (status >= 200 && status < 300) return true;
  on.closed(httpError(status, body, retryAfter));
  return false;
}
