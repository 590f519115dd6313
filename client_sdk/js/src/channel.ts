import { Connector } from './connector.js';
import { Delivery } from './delivery.js';
import { Emitter } from './emitter.js';
import { UnbrokenError, httpError } from './errors.js';
import { detectHost, globalEnv, type Env, type Host } from './host.js';
import { httpRequest } from './http.js';
import { Deduper } from './ids.js';
import { watchLifecycle } from './lifecycle.js';
import { createChannel, type OpenResponse } from './opening.js';
import type { AttachOptions, CancelledInfo, ChannelEvents, ChannelToken, SSEChannelOptions } from './options.js';
import { detectStorage, readSaved, writeSaved, type ChannelStorage, type SavedChannel } from './persist.js';
import { State, isFinal, type ChannelState } from './state.js';
import { ADAPTERS, AUTO_ORDER, WIRE_ADAPTERS, type AdapterName, type Transport, type TransportName } from './transports/index.js';
import type { ChannelUrls, WireEvent } from './transports/types.js';

export type { ChannelState };
export type { AttachOptions, CancelledInfo, ChannelEvents, ChannelToken, MessageMeta, SSEChannelOptions, Timeouts } from './options.js';

/**
 * A channel on an Unbroken broker with the API of uniCloud's SSEChannel: open it, hand
 * `JSON.stringify(channel)` to a backend, receive what the backend writes exactly once, in order,
 * whatever the transport and however often the connection drops.
 */
export class SSEChannel extends Emitter<ChannelEvents> implements AsyncIterable<unknown> {
  state: ChannelState = State.Idle;
  /** The wire transport currently delivering (after the first byte). */
  transport: TransportName | undefined;
  /** The adapter speaking it. */
  adapter: AdapterName | undefined;
  /** Data of the `end` event, once ended. */
  endData: unknown;
  /** Why it was cancelled, once cancelled. */
  cancelInfo: CancelledInfo | undefined;

  private readonly opts: SSEChannelOptions;
  private readonly host: Host;
  private readonly now: () => number;
  private readonly dedupe = new Deduper();
  private readonly storage: ChannelStorage | undefined;
  private info: OpenResponse | undefined;
  private opening: Promise<void> | undefined;
  private candidates: Transport[] = [];
  private memoryKey = '';
  private connector: Connector | undefined;
  private hiddenAt: number | undefined;
  private hidden = false;
  private hideCount = 0;
  private showWaiters: (() => void)[] = [];
  private unwatch: (() => void) | undefined;
  private readonly delivery = new Delivery(
    () => this.listenerCount('message'),
    (data, meta) => this.emit('message', data, meta),
  );

  constructor(opts: SSEChannelOptions) {
    super();
    if (!opts || !opts.broker) throw new UnbrokenError('invalid_options', 'SSEChannel needs { broker: "https://..." }');
    this.opts = opts;
    const env: Env = { ...(opts.env || globalEnv()) };
    if (opts.WebSocket) env.WebSocket = opts.WebSocket;
    if (opts.appState) env.AppState = opts.appState;
    this.host = detectHost(env);
    this.now = opts.clock || (() => Date.now());
    this.storage = opts.persist ? opts.storage || detectStorage(env as { [k: string]: unknown }) : undefined;
  }

  /**
   * Rejoin a channel that exists already (opened by another page, tab or an earlier run of the
   * app): `open()` then connects with the read token, from `lastEventId`, without creating one.
   */
  static attach(opts: AttachOptions): SSEChannel {
    if (!opts || !opts.channel || !opts.readToken) throw new UnbrokenError('invalid_options', 'attach needs { broker, channel, readToken }');
    const ch = new SSEChannel(opts);
    const base = opts.broker.replace(/\/+$/, '') + '/v1/channels/' + encodeURIComponent(opts.channel);
    const urls: ChannelUrls = { events: base + '/events', stream: base + '/stream', ws: base.replace(/^http(s?):/, 'ws$1:') + '/ws', poll: base + '/poll' };
    ch.info = { id: opts.channel, read_token: opts.readToken, heartbeat: opts.heartbeat, urls };
    if (opts.lastEventId) ch.dedupe.lastId = opts.lastEventId;
    return ch;
  }

  /**
   * The channel saved under `opts.persist` by an earlier run (the app was killed mid-answer), or
   * undefined when there is none. `fromStart: true` replays its whole history instead of
   * resuming after the last id delivered (for apps that kept nothing of what they showed).
   */
  static restore(opts: SSEChannelOptions & { persist: string; fromStart?: boolean }): SSEChannel | undefined {
    const storage = opts.storage || detectStorage((opts.env || globalEnv()) as { [k: string]: unknown });
    const saved = storage && readSaved(storage, opts.persist);
    if (!saved || saved.broker !== opts.broker) return undefined;
    return SSEChannel.attach({
      ...opts,
      storage,
      channel: saved.channel,
      readToken: saved.readToken,
      heartbeat: saved.heartbeat,
      lastEventId: opts.fromStart ? undefined : saved.lastEventId,
    });
  }

  get id(): string | undefined {
    return this.info && this.info.id;
  }

  get lastEventId(): string | undefined {
    return this.dedupe.lastId;
  }

  /** The read token (for `attach` elsewhere), once open. */
  get readToken(): string | undefined {
    return this.info && this.info.read_token;
  }

  /** Create the channel on the broker (or join the attached one) and start receiving. */
  open(): Promise<void> {
    if (!this.opening) this.opening = this.start();
    return this.opening;
  }

  /** The backend token: `JSON.stringify(channel)` gives `{unbroken, broker, channel, token}`. */
  toJSON(): ChannelToken {
    if (!this.info) throw new UnbrokenError('not_open', 'open() the channel before passing it to a backend');
    if (!this.info.channel_token) throw new UnbrokenError('no_write_token', 'an attached channel has the read token only; the backend already holds the write token');
    return this.info.channel_token;
  }

  /**
   * Stop the backend (the Stop button): the broker marks the channel cancelled and the writer
   * learns it at once. Resolves when the broker took it; the terminal `cancelled` event then
   * reaches every reader, this one included, after everything written before it.
   */
  async cancel(reason?: string): Promise<void> {
    if (!this.info) throw new UnbrokenError('not_open', 'open() the channel before cancelling it');
    const res = await httpRequest(this.host, {
      method: 'POST',
      url: this.opts.broker.replace(/\/+$/, '') + '/v1/channels/' + encodeURIComponent(this.info.id) + '/cancel',
      headers: { ...this.opts.headers, 'Content-Type': 'application/json', Authorization: 'Bearer ' + this.info.read_token },
      body: JSON.stringify(reason === undefined ? {} : { reason }),
      timeout: (this.opts.timeouts && this.opts.timeouts.open) ?? 15000,
    }).promise;
    if (res.status !== 201 && res.status !== 200) throw httpError(res.status, res.text);
    // A reader that is not connected (closed, or between attempts) still ends as cancelled.
    if (this.state === State.Closed || this.state === State.Idle) this.onCancelled({ reason: reason ?? null });
  }

  /** Drop the current connection and resume from the last id now (App.vue `onShow`, say). */
  reconnect(): void {
    if (this.connector && !isFinal(this.state)) this.connector.reconnectNow();
  }

  /** Stop receiving. The channel stays on the broker; a backend may still write to it. */
  close(): void {
    if (isFinal(this.state)) return;
    this.finish(State.Closed);
    this.emit('close');
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    return this.delivery.iterator(isFinal(this.state));
  }

  on<K extends keyof ChannelEvents>(event: K, fn: ChannelEvents[K]): this {
    super.on(event, fn);
    if (event === 'message') this.delivery.flush();
    return this;
  }

  // ---- opening -------------------------------------------------------------------------------

  private async start(): Promise<void> {
    // Decide before creating anything on the broker: a runtime with no usable transport fails fast.
    this.candidates = this.pickCandidates();
    if (!this.candidates.length) {
      this.finish(State.Closed);
      throw new UnbrokenError('no_transport', 'no transport of ' + JSON.stringify(this.opts.transport || 'auto') + ' works on this runtime');
    }
    // Hooked before the POST: a page hidden while it is in flight retries it on show.
    if (this.opts.lifecycle !== false) {
      this.unwatch = watchLifecycle(this.host, {
        show: () => this.onShow(),
        hide: () => this.onHide(),
        online: () => this.reconnect(),
      });
    }
    this.setState(State.Connecting);
    if (!this.info) {
      try {
        this.info = await createChannel(this.host, this.opts, { hides: () => this.hideCount, whenShown: () => this.whenShown() });
      } catch (e) {
        this.openFailed();
        throw e;
      }
    }
    // close() while the POST was in flight: the channel exists (toJSON works) but we stay closed.
    if (this.state === State.Closed) return;
    this.save();
    this.emit('open');
    const t = this.opts.timeouts || {};
    const info = this.info;
    this.connector = new Connector(
      {
        host: this.host,
        candidates: this.candidates,
        urls: info.urls,
        token: info.read_token,
        headers: { ...this.opts.headers },
        window: t.window ?? 50,
        pollTimeout: t.poll ?? 25,
        firstByte: t.firstByte ?? 8000,
        idle: t.idle ?? (info.heartbeat || 15) * 2500,
        backoff: this.opts.backoff,
        upgrade: t.upgrade ?? 2000,
        now: this.now,
        lastEventId: () => this.dedupe.lastId,
      },
      {
        up: (tr) => this.onUp(tr),
        down: () => this.setState(State.Reconnecting),
        event: (ev, tr) => this.onWire(ev, tr),
        fatal: (err) => this.fail(err),
        failed: (name) => this.opts.memory && this.opts.memory.forget(this.memoryKey, name),
      },
    );
    this.connector.connect();
  }

  /** open() may be called again after a failure (e.g. 429 rate_limited), unless closed meanwhile. */
  private openFailed(): void {
    if (this.unwatch) this.unwatch();
    this.unwatch = undefined;
    if (this.state !== State.Closed) this.setState(State.Idle);
    this.opening = undefined;
  }

  private pickCandidates(): Transport[] {
    const wanted = this.opts.transport;
    const asked = !wanted || wanted === 'auto' ? AUTO_ORDER : Array.isArray(wanted) ? wanted : [wanted];
    const names: AdapterName[] = [];
    for (const n of asked) {
      // A wire name (`sse`, `chunked`, `ws`) stands for the adapters that speak it.
      for (const a of (WIRE_ADAPTERS as { [k: string]: AdapterName[] | undefined })[n] || [n as AdapterName]) {
        if (names.indexOf(a) < 0) names.push(a);
      }
    }
    const list = names.map((n) => ADAPTERS[n]).filter((t) => t && t.supported(this.host));
    this.memoryKey = this.opts.broker + '|' + list.map((t) => t.name).join(',');
    const hint = this.isAuto() && this.opts.memory ? this.opts.memory.hint(this.memoryKey) : undefined;
    const i = list.findIndex((t) => t.name === hint);
    if (i > 0) list.unshift(list.splice(i, 1)[0]);
    return list;
  }

  private isAuto(): boolean {
    return !this.opts.transport || this.opts.transport === 'auto';
  }

  // ---- connection events -----------------------------------------------------------------------

  private onUp(transport: Transport): void {
    // Only a channel's first connection teaches: a fallback taken while the app was in
    // background must not demote a better transport for every later channel.
    if (this.isAuto() && !this.adapter && this.opts.memory) this.opts.memory.remember(this.memoryKey, transport.name);
    if (this.adapter !== transport.name) {
      this.adapter = transport.name;
      this.transport = transport.wire;
      this.emit('transport', transport.wire, transport.name);
    }
    this.setState(State.Open);
  }

  private onHide(): void {
    this.hidden = true;
    this.hideCount++;
    this.hiddenAt = this.now();
  }

  private onShow(): void {
    const hiddenFor = this.hiddenAt === undefined ? 0 : this.now() - this.hiddenAt;
    this.hidden = false;
    this.hiddenAt = undefined;
    const waiters = this.showWaiters;
    this.showWaiters = [];
    for (const w of waiters) w();
    // The host may have cut or frozen the connection without telling us: resume now from the
    // last id rather than wait for the watchdog. Stale callbacks die with the old generation.
    if (hiddenFor >= 1000) this.reconnect();
  }

  private whenShown(): Promise<void> {
    return new Promise((resolve) => (this.hidden ? this.showWaiters.push(resolve) : resolve()));
  }

  // ---- delivery ------------------------------------------------------------------------------

  private onWire(ev: WireEvent, transport: Transport): void {
    if (isFinal(this.state)) return;
    switch (ev.type) {
      case 'message':
        if (!this.dedupe.accept(ev.id)) return;
        this.delivery.deliver(ev.data, { id: ev.id, transport: transport.wire, adapter: transport.name });
        this.save();
        return;
      case 'end':
        if (!this.dedupe.accept(ev.id)) return;
        this.endData = ev.data;
        this.finish(State.Ended);
        this.emit('end', ev.data);
        this.emit('close'); // as uniCloud's SSEChannel: end, then close
        return;
      case 'cancelled': {
        if (!this.dedupe.accept(ev.id)) return;
        const d = ev.data as { reason?: unknown } | null;
        this.onCancelled({ reason: d && typeof d.reason === 'string' ? d.reason : null });
        return;
      }
      case 'error': {
        if (!this.dedupe.accept(ev.id)) return;
        const d = ev.data as { message?: string; code?: string } | null;
        const err = new UnbrokenError('channel_error', (d && d.message) || 'the writer reported an error', { data: ev.data });
        this.finish(State.Ended, err);
        this.emit('error', err);
        this.emit('close');
        return;
      }
      case 'gap':
        this.emit('gap', ev.data as { first_id: string });
        return;
    }
  }

  private onCancelled(info: CancelledInfo): void {
    this.cancelInfo = info;
    this.finish(State.Cancelled);
    this.emit('cancelled', info);
    this.emit('close');
  }

  private fail(err: UnbrokenError): void {
    this.finish(State.Closed, err);
    this.emit('error', err);
    // As after `end`: whoever waits for `close` to tidy up (uniCloud's contract) is told.
    this.emit('close');
  }

  private finish(state: ChannelState, err?: UnbrokenError): void {
    if (this.connector) this.connector.stop();
    if (this.unwatch) this.unwatch();
    this.unwatch = undefined;
    this.setState(state);
    this.save();
    this.delivery.finish(err);
  }

  /** Keep the persisted record in step: present while the channel runs, gone once it is over. */
  private save(): void {
    if (!this.storage || !this.opts.persist || !this.info) return;
    const saved: SavedChannel | undefined = isFinal(this.state)
      ? undefined
      : { broker: this.opts.broker, channel: this.info.id, readToken: this.info.read_token, lastEventId: this.dedupe.lastId, heartbeat: this.info.heartbeat };
    writeSaved(this.storage, this.opts.persist, saved);
  }

  private setState(s: ChannelState): void {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }
}
