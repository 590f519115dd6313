import type { UnbrokenError } from '../errors.js';
import type { Host } from '../host.js';

/**
 * The wire transport, named as the broker names it (metrics, status, both client SDKs):
 * `sse` (/events), `chunked` (/stream), `ws` (/ws), `poll` (/poll).
 */
export type TransportName = 'sse' | 'chunked' | 'ws' | 'poll';

/** How this SDK speaks a wire transport on a given host (a separate notion from the wire). */
export type AdapterName = 'fetch' | 'eventsource' | 'xhr' | 'mp-request' | 'websocket' | 'poll';

/** One event as every transport reports it, whatever its framing on the wire. */
export interface WireEvent {
  type: 'message' | 'end' | 'error' | 'cancelled' | 'gap' | 'reconnect';
  id?: string;
  data?: unknown;
}

export interface ChannelUrls {
  events: string;
  stream: string;
  ws: string;
  poll: string;
}

export interface ConnectRequest {
  urls: ChannelUrls;
  token: string;
  lastEventId?: string;
  headers: Record<string, string>;
  /** Seconds one chunked request may live (the broker's `max_duration`). */
  window: number;
  /** Seconds the broker may hold a long-poll. */
  pollTimeout: number;
  /** ms of silence the watchdog tolerates (transports that cannot see heartbeats stay under it). */
  idle: number;
}

export interface TransportHandlers {
  /** Bytes (or a heartbeat) arrived: the connection is alive. */
  activity(): void;
  event(ev: WireEvent): void;
  /** The connection is over. No error: a clean close (window elapsed, `reconnect`), resume now. */
  closed(err?: UnbrokenError): void;
}

export interface Connection {
  close(): void;
}

/** The one interface every transport implements (centrifuge-js style): connect, report, close. */
export interface Transport {
  readonly name: AdapterName;
  /** The broker endpoint it reads. */
  readonly wire: TransportName;
  /** Can this host run it at all? Pure capability detection. */
  supported(host: Host): boolean;
  connect(host: Host, req: ConnectRequest, on: TransportHandlers): Connection;
  /** Extra silence (ms) the watchdog allows on top of the idle timeout (long-poll waits). */
  quietMs?(req: ConnectRequest): number;
}
