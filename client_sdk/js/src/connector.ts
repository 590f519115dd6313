import { Backoff, type BackoffOptions } from './backoff.js';
import { UnbrokenError } from './errors.js';
import type { Host } from './host.js';
import type { AdapterName, Transport } from './transports/index.js';
import type { ChannelUrls, Connection, ConnectRequest, WireEvent } from './transports/types.js';

/** What the connector needs to know about the channel it serves. */
export interface ConnectorConfig {
  host: Host;
  candidates: Transport[];
  urls: ChannelUrls;
  token: string;
  headers: Record<string, string>;
  /** s of one chunked/XHR request. */
  window: number;
  /** s of one long-poll hold. */
  pollTimeout: number;
  /** ms a transport has to deliver its first byte. */
  firstByte: number;
  /** ms of silence that means a dead line. */
  idle: number;
  backoff?: BackoffOptions;
  /** ms before the preferred transport is tried again after a fallback (doubling, up to 5 min). */
  upgrade: number;
  /** Current time in ms (tests inject a clock). */
  now: () => number;
  lastEventId(): string | undefined;
}

export interface ConnectorSink {
  /** The first byte of a connection arrived over `transport`. */
  up(transport: Transport): void;
  /** The line is down and a new one is being made (after a delay). */
  down(): void;
  event(ev: WireEvent, transport: Transport): void;
  /** A problem reconnecting cannot fix (bad token, gone channel): the channel is over. */
  fatal(err: UnbrokenError): void;
  /** A transport failed before its first byte (a hint for the app's transport memory). */
  failed(name: AdapterName): void;
}

/**
 * One live connection at a time over the best transport that works: first-byte deadline,
 * watchdog, fallback to the next candidate, reconnect with backoff, and a way back to the
 * preferred transport after a fallback (one socket error must not pin a channel to long-poll).
 * Every connection has a generation; callbacks of an older one are ignored.
 */
export class Connector {
  private index = 0;
  private failedInRound = 0;
  private gen = 0;
  private conn: Connection | undefined;
  private firstByteTimer: unknown;
  private idleTimer: unknown;
  private retryTimer: unknown;
  private upgradeTimer: unknown;
  private connectedAt = 0;
  private stopped = false;
  private readonly backoff: Backoff;
  private readonly upgrade: Backoff;

  constructor(
    private readonly cfg: ConnectorConfig,
    private readonly sink: ConnectorSink,
  ) {
    this.backoff = new Backoff(cfg.backoff);
    this.upgrade = new Backoff({ base: cfg.upgrade, max: 5 * 60 * 1000, random: cfg.backoff && cfg.backoff.random });
  }

  /** Connect now (from the last delivered id), dropping any current connection. */
  connect(): void {
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.stopped) return;
    this.drop();
    const gen = this.gen;
    const transport = this.cfg.candidates[this.index];
    const req: ConnectRequest = {
      urls: this.cfg.urls,
      token: this.cfg.token,
      lastEventId: this.cfg.lastEventId(),
      headers: { ...this.cfg.headers },
      window: this.cfg.window,
      pollTimeout: this.cfg.pollTimeout,
      idle: this.cfg.idle,
    };
    let alive = false;
    const current = () => gen === this.gen && !this.stopped;
    const handlers = {
      activity: () => {
        if (!current()) return;
        if (!alive) {
          alive = true;
          this.onFirstByte(transport);
        }
        this.kickWatchdog(transport, req);
      },
      event: (ev: WireEvent) => {
        if (!current()) return;
        if (ev.type === 'message') this.backoff.reset();
        if (ev.type === 'reconnect') {
          // The broker is closing this stream on purpose (window elapsed, shutdown): resume now.
          this.drop();
          this.sink.down();
          this.retryTimer = setTimeout(() => this.connect(), 0);
          return;
        }
        this.sink.event(ev, transport);
      },
      closed: (err?: UnbrokenError) => {
        if (current()) this.onClosed(transport, alive, err);
      },
    };
    this.connectedAt = this.cfg.now();
    this.firstByteTimer = setTimeout(() => {
      if (!current() || alive) return;
      this.onClosed(transport, false, new UnbrokenError('timeout', transport.name + ': no first byte in time', { retryable: true }));
    }, this.cfg.firstByte);
    try {
      this.conn = transport.connect(this.cfg.host, req, handlers);
    } catch (e) {
      const err = e instanceof UnbrokenError ? e : new UnbrokenError('network_error', String((e as Error)?.message || e), { retryable: true });
      setTimeout(() => handlers.closed(err), 0);
    }
  }

  /** Reconnect at once, forgetting the backoff (app came back, network is back, app asked). */
  reconnectNow(): void {
    if (this.stopped) return;
    this.backoff.reset();
    this.sink.down();
    this.connect();
  }

  /** Nothing more: drop the connection and every timer. */
  stop(): void {
    this.stopped = true;
    this.drop();
    clearTimeout(this.retryTimer);
    clearTimeout(this.upgradeTimer);
  }

  private onFirstByte(transport: Transport): void {
    clearTimeout(this.firstByteTimer);
    this.failedInRound = 0;
    if (this.index === 0) {
      this.upgrade.reset();
      clearTimeout(this.upgradeTimer);
      this.upgradeTimer = undefined;
    } else if (!this.upgradeTimer) {
      // On a fallback: try the preferred transport again later, each failure doubling the wait.
      this.upgradeTimer = setTimeout(() => {
        this.upgradeTimer = undefined;
        if (this.stopped || this.index === 0) return;
        this.index = 0;
        this.failedInRound = 0;
        this.connect();
      }, this.upgrade.next());
    }
    this.sink.up(transport);
  }

  private kickWatchdog(transport: Transport, req: ConnectRequest): void {
    clearTimeout(this.idleTimer);
    const gen = this.gen;
    const idle = this.cfg.idle + (transport.quietMs ? transport.quietMs(req) : 0);
    this.idleTimer = setTimeout(() => {
      if (gen !== this.gen) return;
      // Silent hang (iOS WeChat fires no callback when the network drops mid-stream).
      this.onClosed(transport, true, new UnbrokenError('timeout', 'no data or heartbeat for ' + idle + ' ms', { retryable: true }));
    }, idle);
  }

  /** Forget the current connection; its late callbacks are ignored by generation. */
  private drop(): void {
    this.gen++;
    clearTimeout(this.firstByteTimer);
    clearTimeout(this.idleTimer);
    const conn = this.conn;
    this.conn = undefined;
    if (conn) {
      try {
        conn.close();
      } catch {
        // Already gone.
      }
    }
  }

  private onClosed(transport: Transport, alive: boolean, err?: UnbrokenError): void {
    this.drop();
    if (this.stopped) return;
    if (err && !err.retryable && err.code !== 'no_transport') {
      this.stop();
      this.sink.fatal(err);
      return;
    }
    let delay = 0;
    const now = this.cfg.now();
    // A connection that delivered for a while proves the path; one that opens and drops at once
    // (a flapping proxy) keeps widening the backoff instead of spinning.
    if (alive && now - this.connectedAt > 5000) this.backoff.reset();
    if (!alive) {
      this.sink.failed(transport.name);
      this.index = (this.index + 1) % this.cfg.candidates.length;
      this.failedInRound++;
      // Try the next candidate at once; back off only after a whole round failed.
      if (this.failedInRound >= this.cfg.candidates.length) {
        this.failedInRound = 0;
        delay = this.backoff.next();
      }
    } else if (err || now - this.connectedAt < 1000) {
      delay = this.backoff.next();
    }
    // The broker's Retry-After (429, 503 while draining) is the least delay (conformance/status.json).
    if (err && err.retryAfter !== undefined) delay = Math.max(delay, err.retryAfter);
    this.sink.down();
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}
