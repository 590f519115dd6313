import { chunkedTransport } from './chunked.js';
import { eventSourceTransport } from './eventsource.js';
import { fetchTransport } from './fetch.js';
import { pollTransport } from './poll.js';
import type { AdapterName, Transport, TransportName } from './types.js';
import { webSocketTransport } from './websocket.js';
import { xhrTransport } from './xhr.js';

export const ADAPTERS: { [K in AdapterName]: Transport } = {
  fetch: fetchTransport,
  'mp-request': chunkedTransport,
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
export const AUTO_ORDER: AdapterName[] = ['fetch', 'mp-request', 'websocket', 'eventsource', 'xhr', 'poll'];

/** The broker's wire transports (tests/conformance/vocabulary.json). */
export const WIRE_TRANSPORTS: TransportName[] = ['sse', 'chunked', 'ws', 'poll'];

/** A wire name in the `transport` option stands for the adapters that speak it, in auto order. */
export const WIRE_ADAPTERS: { [K in TransportName]: AdapterName[] } = {
  sse: ['fetch', 'eventsource'],
  chunked: ['mp-request', 'xhr'],
  ws: ['websocket'],
  poll: ['poll'],
};

export type { AdapterName, Transport, TransportName };
