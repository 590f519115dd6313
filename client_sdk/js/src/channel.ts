import { Backoff, type BackoffOptions } from './backoff.js';
import { Emitter, type Listener } from './emitter.js';
import { UnbrokenError, httpError } from './errors.js';
import { detectHost, globalEnv, type AppStateLike, type Env, type Host, type WebSocketCtor } from './host.js';
import { httpRequest } from './http.js';
import { Deduper } from './ids.js';
import { ChannelIterator } from './iterator.js';
import { watchLifecycle } from './lifecycle.js';
import { AUTO_ORDER, TRANSPORTS, type Transport, type TransportName } from './transports/index.js';
import type { ChannelUrls, Connection, ConnectRequest, WireEvent } from './transports/types.js';

export type ChannelState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'ended' | 'closed';

export interface ChannelToken {
  unbroken: 1;
  broker: string;
  channel: string;
  token: string;
}

export interface Timeouts {
  /** ms for `POST /v1/channels` (default 15000). */
  open?: number;
  /** ms a transport has to deliver its first byte before the next one is tried (default 8000). */
  firstByte?: number;
  /** ms of silence (no byte, no heartbeat) that means a dead connection (default 2.5 x heartbeat). */
  idle?: number;
  /** s one chunked/XHR/EventSource request may live before it resumes (default 50). */
  window?: number;
  /** s the broker may hold a long-poll (default 25). */
  poll?: number;
}

export interface SSEChannelOptions {
  /** Base URL of the broker, e.g. `https://broker.example.com`. */
  broker: string;
  /** Client-chosen channel name (`^[A-Za-z0-9_.:-]{1,128}$`); generated when absent. */
  name?: string;
  /** `auto` (default) picks by capability and falls back; or force one or an ordered list. */
  transport?: 'auto' | TransportName | TransportName[];
  /** Extra headers for every request (where the host lets us set them). */
  headers?: Record<string, string>;
  /** App key for brokers whose open policy is `key`: a string or a (possibly async) provider. */
  token?: string | (() => string | Promise<string>);
  timeouts?: Timeouts;
  backoff?: BackoffOptions;
  /** Host APIs to use instead of the globals (tests, or a custom fetch). */
  env?: Env;
  /** WebSocket constructor for Node < 22: `import WebSocket from 'ws'`. */
  WebSocket?: WebSocketCtor;
  /** Resume on app show / page visible (default true). */
  lifecycle?: boolean;
  /** React Native: pass `AppState` from 'react-native' so foregrounding resumes at once. */
  appState?: AppStateLike;
}

export interface MessageMeta {
  id?: string;
  transport: TransportName;
}

interface OpenResponse {
  id: string;
  read_token: string;
  channel_token: ChannelToken;
  heartbeat?: number;
  urls: ChannelUrls;
}

// What worked last, per broker and set of usable transports. Only an ordering hint: a remembered
// transport that fails is forgotten at once, so it can never block a later channel.
const remembered: { [key: string]: { name: TransportName; at: number } | undefined } = {};
const REMEMBER_MS = 10 * 60 * 1000;

const TERMINAL: ChannelState[] = ['ended', 'closed'];

/**
 * A channel on an Unbroken broker with the API of uniCloud's SSEChannel: open it, hand
 * `JSON.stringify(channel)` to a backend, receive what the backend writes exactly once, in order,
 * whatever the transport and however often the connection drops.
 */
export class SSEChannel extends Emitter implements AsyncIterable<unknown> {
  state: ChannelState = 'idle';
  /** The transport currently delivering (after the first byte). */
  transport: TransportName | undefined;
  /** Data of the `end` event, once ended. */
  endData: unknown;

  private readonly opts: SSEChannelOptions;
  private readonly host: Host;
  private readonly backoff: Backoff;
  private readonly dedupe = new Deduper();
  private info: OpenResponse | undefined;
  private opening: Promise<void> | undefined;
  private candidates: Transport[] = [];
  private memoryKey = '';
  private index = 0;
  private failedInRound = 0;
  private gen = 0;
  private conn: Connection | undefined;
  private firstByteTimer: unknown;
  private idleTimer: unknown;
  private retryTimer: unknown;
  private connectedAt = 0;
  private hiddenAt: number | undefined;
  private unwatch: (() => void) | undefined;
  private backlog: { data: unknown; meta: MessageMeta }[] = [];
  private readonly iterators = new Set<ChannelIterator>();

  constructor(opts: SSEChannelOptions) {
    super();
    if (!opts || !opts.broker) throw new UnbrokenError('invalid_options', 'SSEChannel needs { broker: "https://..." }');
    this.opts = opts;
    const env: Env = { ...(opts.env || globalEnv()) };
    if (opts.WebSocket) env.WebSocket = opts.WebSocket;
    if (opts.appState) env.AppState = opts.appState;
    this.host = detectHost(env);
    this.backoff = new Backoff(opts.backoff);
  }

  get id(): string | undefined {
    return this.info && this.info.id;
  }

  get lastEventId(): string | undefined {
    return this.dedupe.lastId;
  }

  /** Create the channel on the broker and start receiving. Resolves once the channel exists. */
  open(): Promise<void> {
    if (!this.opening) this.opening = this.create();
    return this.opening;
  }

  /** The backend token: `JSON.stringify(channel)` gives `{unbroken, broker, channel, token}`. */
  toJSON(): ChannelToken {
    if (!this.info) throw new UnbrokenError('not_open', 'open() the channel before passing it to a backend');
    return this.info.channel_token;
  }

  /** Stop receiving. The channel stays on the broker; a backend may still write to it. */
  close(): void {
    if (TERMINAL.indexOf(this.state) >= 0) return;
    this.finish('closed');
    this.emit('close');
  }

  on(event: 'message', fn: (data: any, meta: MessageMeta) => void): this;
  on(event: 'end', fn: (data: any) => void): this;
  on(event: 'error', fn: (err: UnbrokenError) => void): this;
  on(event: 'state', fn: (state: ChannelState) => void): this;
  on(event: 'open' | 'close', fn: () => void): this;
  on(event: 'gap', fn: (info: { first_id: string }) => void): this;
  on(event: 'transport', fn: (name: TransportName) => void): this;
  on(event: string, fn: Listener): this;
  on(event: string, fn: Listener): this {
    super.on(event, fn);
    if (event === 'message' && this.backlog.length) this.flushBacklog();
    return this;
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    const it = new ChannelIterator(() => this.iterators.delete(it));
    for (const item of this.backlog) it.push(item.data);
    this.backlog = [];
    if (this.state === 'ended') it.end();
    else if (this.state === 'closed') it.end();
    else this.iterators.add(it);
    return it;
  }

  // ---- opening -------------------------------------------------------------------------------

  private async create(): Promise<void> {
    const t = this.opts.timeouts || {};
    // Decide before creating anything on the broker: a runtime with no usable transport fails fast.
    this.candidates = this.pickCandidates();
    if (!this.candidates.length) {
      this.finish('closed');
      throw new UnbrokenError('no_transport', 'no transport of ' + JSON.stringify(this.opts.transport || 'auto') + ' works on this runtime');
    }
    const headers: Record<string, string> = { ...this.opts.headers, 'Content-Type': 'application/json' };
    const key = typeof this.opts.token === 'function' ? await this.opts.token() : this.opts.token;
    if (key) headers.Authorization = 'Bearer ' + key;
    this.setState('connecting');
    let res;
    try {
      res = await httpRequest(this.host, {
        method: 'POST',
        url: this.opts.broker.replace(/\/+$/, '') + '/v1/channels',
        headers,
        body: JSON.stringify(this.opts.name ? { name: this.opts.name } : {}),
        timeout: t.open ?? 15000,
      }).promise;
    } catch (e) {
      this.openFailed();
      throw e;
    }
    if (res.status !== 201 && res.status !== 200) {
      this.openFailed();
      throw httpError(res.status, res.text);
    }
    this.info = JSON.parse(res.text) as OpenResponse;
    // close() while the POST was in flight: the channel exists (toJSON works) but we stay closed.
    if (this.state === 'closed') return;
    if (this.opts.lifecycle !== false) {
      this.unwatch = watchLifecycle(this.host, () => this.onShow(), () => (this.hiddenAt = Date.now()));
    }
    this.emit('open');
    this.connect();
  }

  /** open() may be called again after a failure (e.g. 429 rate_limited), unless closed meanwhile. */
  private openFailed(): void {
    if (this.state !== 'closed') this.setState('idle');
    this.opening = undefined;
  }

  private pickCandidates(): Transport[] {
    const wanted = this.opts.transport;
    const names = !wanted || wanted === 'auto' ? AUTO_ORDER : Array.isArray(wanted) ? wanted : [wanted];
    const list = names.map((n) => TRANSPORTS[n]).filter((t) => t && t.supported(this.host));
    this.memoryKey = this.opts.broker + '|' + list.map((t) => t.name).join(',');
    const memo = remembered[this.memoryKey];
    const hint = this.isAuto() && memo && Date.now() - memo.at < REMEMBER_MS ? memo.name : undefined;
    const i = list.findIndex((t) => t.name === hint);
    if (i > 0) list.unshift(list.splice(i, 1)[0]);
    return list;
  }

  private isAuto(): boolean {
    return !this.opts.transport || this.opts.transport === 'auto';
  }

  // ---- connecting ----------------------------------------------------------------------------

  private connect(): void {
    this.retryTimer = undefined;
    if (TERMINAL.indexOf(this.state) >= 0) return;
    const gen = ++this.gen;
    const transport = this.candidates[this.index];
    const t = this.opts.timeouts || {};
    const info = this.info!;
    const req: ConnectRequest = {
      urls: info.urls,
      token: info.read_token,
      lastEventId: this.dedupe.lastId,
      headers: { ...this.opts.headers },
      window: t.window ?? 50,
      pollTimeout: t.poll ?? 25,
      idle: this.idleMs(),
    };
    let alive = false;
    const current = () => gen === this.gen;
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
        if (current()) this.onWire(ev, transport);
      },
      closed: (err?: UnbrokenError) => {
        if (current()) this.onClosed(transport, alive, err);
      },
    };
    this.connectedAt = Date.now();
    this.firstByteTimer = setTimeout(() => {
      if (!current() || alive) return;
      this.drop();
      this.onClosed(transport, false, new UnbrokenError('timeout', transport.name + ': no first byte in time', { retryable: true }));
    }, t.firstByte ?? 8000);
    try {
      this.conn = transport.connect(this.host, req, handlers);
    } catch (e) {
      const err = e instanceof UnbrokenError ? e : new UnbrokenError('network_error', String((e as Error)?.message || e), { retryable: true });
      setTimeout(() => handlers.closed(err), 0);
    }
  }

  private onFirstByte(transport: Transport): void {
    clearTimeout(this.firstByteTimer);
    this.failedInRound = 0;
    // Only a channel's first connection teaches: a fallback taken while the app was in
    // background must not demote a better transport for every later channel.
    if (this.isAuto() && !this.transport) remembered[this.memoryKey] = { name: transport.name, at: Date.now() };
    if (this.transport !== transport.name) {
      this.transport = transport.name;
      this.emit('transport', transport.name);
    }
    this.setState('open');
  }

  private kickWatchdog(transport: Transport, req: ConnectRequest): void {
    clearTimeout(this.idleTimer);
    const gen = this.gen;
    const idle = this.idleMs() + (transport.quietMs ? transport.quietMs(req) : 0);
    this.idleTimer = setTimeout(() => {
      if (gen !== this.gen) return;
      // Silent hang (iOS WeChat fires no callback when the network drops mid-stream).
      this.drop();
      this.onClosed(transport, true, new UnbrokenError('timeout', 'no data or heartbeat for ' + idle + ' ms', { retryable: true }));
    }, idle);
  }

  private idleMs(): number {
    const t = this.opts.timeouts || {};
    return t.idle ?? (this.info && this.info.heartbeat ? this.info.heartbeat : 15) * 2500;
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
    if (TERMINAL.indexOf(this.state) >= 0) return;
    if (err && !err.retryable && err.code !== 'no_transport') {
      this.fail(err);
      return;
    }
    let delay = 0;
    // A connection that delivered for a while proves the path; one that opens and drops at once
    // (a flapping proxy) keeps widening the backoff instead of spinning.
    if (alive && Date.now() - this.connectedAt > 5000) this.backoff.reset();
    if (!alive) {
      const memo = remembered[this.memoryKey];
      if (memo && memo.name === transport.name) remembered[this.memoryKey] = undefined;
      this.index = (this.index + 1) % this.candidates.length;
      this.failedInRound++;
      // Try the next candidate at once; back off only after a whole round failed.
      if (this.failedInRound >= this.candidates.length) {
        this.failedInRound = 0;
        delay = this.backoff.next();
      }
    } else if (err || Date.now() - this.connectedAt < 1000) {
      delay = this.backoff.next();
    }
    this.setState('reconnecting');
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  private onShow(): void {
    const hiddenFor = this.hiddenAt === undefined ? 0 : Date.now() - this.hiddenAt;
    this.hiddenAt = undefined;
    if (TERMINAL.indexOf(this.state) >= 0 || hiddenFor < 1000) return;
    // The host may have cut or frozen the connection without telling us: resume now from the
    // last id rather than wait for the watchdog. Stale callbacks die with the old generation.
    this.drop();
    clearTimeout(this.retryTimer);
    this.backoff.reset();
    this.setState('reconnecting');
    this.connect();
  }

  // ---- delivery ------------------------------------------------------------------------------

  private onWire(ev: WireEvent, transport: Transport): void {
    if (TERMINAL.indexOf(this.state) >= 0) return;
    switch (ev.type) {
      case 'message':
        if (!this.dedupe.accept(ev.id)) return;
        this.backoff.reset();
        this.deliver(ev.data, { id: ev.id, transport: transport.name });
        return;
      case 'end':
        if (!this.dedupe.accept(ev.id)) return;
        this.endData = ev.data;
        this.finish('ended');
        this.emit('end', ev.data);
        this.emit('close'); // as uniCloud's SSEChannel: end, then close
        return;
      case 'error': {
        if (!this.dedupe.accept(ev.id)) return;
        const d = ev.data as { message?: string; code?: string } | null;
        const err = new UnbrokenError('channel_error', (d && d.message) || 'the writer reported an error', { data: ev.data });
        this.finish('ended', err);
        this.emit('error', err);
        this.emit('close');
        return;
      }
      case 'gap':
        this.emit('gap', ev.data);
        return;
      case 'reconnect':
        // The broker is closing this stream on purpose (window elapsed, shutdown): resume at once.
        this.drop();
        this.setState('reconnecting');
        this.retryTimer = setTimeout(() => this.connect(), 0);
        return;
    }
  }

  private deliver(data: unknown, meta: MessageMeta): void {
    if (!this.listenerCount('message') && !this.iterators.size) {
      // Nobody listens yet (messages raced ahead of `for await`): keep them, bounded.
      if (this.backlog.length < 10000) this.backlog.push({ data, meta });
      return;
    }
    for (const it of this.iterators) it.push(data);
    this.emit('message', data, meta);
  }

  private flushBacklog(): void {
    const items = this.backlog;
    this.backlog = [];
    for (const item of items) this.emit('message', item.data, item.meta);
  }

  private fail(err: UnbrokenError): void {
    this.finish('closed', err);
    this.emit('error', err);
  }

  private finish(state: 'ended' | 'closed', err?: UnbrokenError): void {
    this.drop();
    clearTimeout(this.retryTimer);
    if (this.unwatch) this.unwatch();
    this.unwatch = undefined;
    this.setState(state);
    for (const it of this.iterators) (err ? it.fail(err) : it.end());
    this.iterators.clear();
  }

  private setState(s: ChannelState): void {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }
}
