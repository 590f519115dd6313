import { chunkedTransport } from './chunked.js';
import { eventSourceTransport } from './eventsource.js';
import { fetchTransport } from './fetch.js';
import { pollTransport } from './poll.js';
import type { Transport, TransportName } from './types.js';
import { webSocketTransport } from './websocket.js';
import { xhrTransport } from './xhr.js';

export const TRANSPORTS: { [K in TransportName]: Transport } = {
  fetch: fetchTransport,
  chunked: chunkedTransport,
  websocket: webSocketTransport,
  eventsource: eventSourceTransport,
  xhr: xhrTransport,
  poll: pollTransport,
};

/**
 * `auto` tries these in order, skipping what the host lacks. Real streams first (they see
 * heartbeats); then WebSocket; EventSource after it because it hides heartbeats; long-poll last
 * because it works everywhere.
 */
export const AUTO_ORDER: TransportName[] = ['fetch', 'chunked', 'websocket', 'eventsource', 'xhr', 'poll'];

export type { Transport, TransportName };
