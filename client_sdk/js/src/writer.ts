import { Backoff } from './backoff.js';
import { backendHttp, type BackendHttp } from './backend-http.js';
import { UnbrokenError, httpError } from './errors.js';
import type { ChannelToken } from './channel.js';
import type { FetchFn } from './host.js';
import { SseParser } from './sse.js';
import { Utf8Decoder, toBytes } from './utf8.js';

export interface WriterOptions {
  /** fetch to use (default: the global one; without any, Node's http/https or uniCloud.httpclient). */
  fetch?: FetchFn;
  /** Writer id for idempotency; random by default. Reuse it only with `firstSeq` set. */
  writer?: string;
  /** Next seq to use (default 1). */
  firstSeq?: number;
  /** Attempts per request on network errors, 5xx and 429 (default 5). */
  retries?: number;
  /** ms per attempt (default 15000). */
  timeout?: number;
  /**
   * ms a write may wait to share one request with the writes that follow it (default 20; 0 = each
   * write is its own request). A write made while nothing else is pending goes out at once, so an
   * `await`ed write per token is never held back; writes made while earlier ones are still pending
   * (a producer that does not await each one) wait up to this long and go out together.
   */
  coalesce?: number;
}

export interface WriteResult {
  ids: string[];
  duplicate: boolean;
  last_event_id: string | null;
}

/** Why the channel was cancelled: the reader's `cancel(reason)`. */
export interface CancelInfo {
  reason: string | null;
}

// A coalesced request stays well inside the broker's body limit and per-request message cap.
const BATCH_MAX_MESSAGES = 100;
const BATCH_MAX_BYTES = 256 * 1024;
// The cancel watch's dead-line detector: the broker sends a heartbeat at least every 15 s.
const WATCH_IDLE_MS = 45000;

interface Queued {
  texts: string[];
  bytes: number;
  resolve(r: WriteResult): void;
  reject(e: unknown): void;
}

/**
 * The backend side (Node, uniCloud cloud functions, Express): write to a channel whose token a
 * client handed over. Every request carries `writer` + `seq`, and a retry resends the same seq,
 * so a request that timed out after the broker stored it is never stored twice.
 */
export class ChannelWriter {
  readonly broker: string;
  readonly channel: string;
  readonly writer: string;
  /** True once a reader cancelled the channel (seen by a refused write or by `waitCancelled()`). */
  cancelled = false;
  private seq: number;
  private readonly token: string;
  private readonly opts: WriterOptions;
  private readonly coalesceMs: number;
  private http: BackendHttp | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private inflight = 0;
  private queue: Queued[] = [];
  private flushPlanned = false;
  private windowTimer: unknown;
  private windowOver = false;
  private cancelInfo: CancelInfo | undefined;
  private cancelWaiters: ((info: CancelInfo) => void)[] = [];
  private watch: { close(): void } | undefined;
  private watchTimer: unknown;
  private finished = false;

  constructor(token: ChannelToken, opts: WriterOptions = {}) {
    this.broker = token.broker.replace(/\/+$/, '');
    this.channel = token.channel;
    this.token = token.token;
    this.opts = opts;
    this.coalesceMs = opts.coalesce ?? 20;
    this.writer = opts.writer || 'w_' + Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
    this.seq = opts.firstSeq ?? 1;
  }

  /** One message; resolves to its own id once stored (`{ids: [id], ...}`). */
  write(data: unknown): Promise<WriteResult> {
    return this.enqueue([data]);
  }

  /** Several messages in one request (seqs seq .. seq+n-1). */
  writeMany(messages: unknown[]): Promise<WriteResult> {
    return this.enqueue(messages);
  }

  end(data?: unknown): Promise<WriteResult> {
    return this.terminal('end', data === undefined ? undefined : data);
  }

  error(data: unknown): Promise<WriteResult> {
    const body = data instanceof Error ? { message: data.message } : typeof data === 'string' ? { message: data } : data;
    return this.terminal('error', body);
  }

  /**
   * Resolves with `{reason}` when a reader cancels the channel (the Stop button). Watches the
   * broker's terminal-only stream (`GET .../events?only=terminal`): no polling, one idle
   * connection, closed again by `end()`, `error()` or `close()`.
   */
  waitCancelled(): Promise<CancelInfo> {
    if (this.cancelInfo) return Promise.resolve(this.cancelInfo);
    const p = new Promise<CancelInfo>((resolve) => this.cancelWaiters.push(resolve));
    if (!this.watch && !this.watchTimer && !this.finished) this.startWatch(0);
    return p;
  }

  /**
   * Stop the cancel watch (`end()` and `error()` do this too). While it runs, its connection keeps
   * a Node process alive, as any pending request does. Writes still work.
   */
  close(): void {
    this.stopWatch();
  }

  toJSON(): ChannelToken {
    return { unbroken: 1, broker: this.broker, channel: this.channel, token: this.token };
  }

  // ---- writing ---------------------------------------------------------------------------------

  private enqueue(messages: unknown[]): Promise<WriteResult> {
    let texts: string[];
    try {
      texts = messages.map(encode);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.cancelled) return Promise.reject(cancelledError());
    if (this.coalesceMs <= 0) return this.send('messages', '{"messages":[' + texts.join(',') + ']', texts.length);
    const hadCompany = this.queue.length > 0 || this.inflight > 0;
    return new Promise<WriteResult>((resolve, reject) => {
      let bytes = 0;
      for (const t of texts) bytes += t.length + 1;
      this.queue.push({ texts, bytes, resolve, reject });
      if (!hadCompany) {
        // Nothing pending: go now (after this tick, so a synchronous burst still shares a request).
        this.windowOver = true;
        this.planFlush();
      } else if (!this.windowTimer && !this.windowOver) {
        this.windowTimer = setTimeout(() => {
          this.windowTimer = undefined;
          this.windowOver = true;
          this.planFlush();
        }, this.coalesceMs);
      } else {
        this.planFlush();
      }
    });
  }

  private planFlush(): void {
    if (this.flushPlanned) return;
    this.flushPlanned = true;
    Promise.resolve().then(() => {
      this.flushPlanned = false;
      // One request at a time: the rest waits for it (and joins the next batch meanwhile).
      if (this.inflight === 0 && (this.windowOver || this.queuedMessages() >= BATCH_MAX_MESSAGES)) this.flush();
    });
  }

  private queuedMessages(): number {
    let n = 0;
    for (const q of this.queue) n += q.texts.length;
    return n;
  }

  /** Send what is queued as one request (within the batch bounds); the remainder goes next. */
  private flush(): void {
    if (!this.queue.length) return;
    const batch: Queued[] = [];
    let count = 0;
    let bytes = 0;
    while (this.queue.length) {
      const q = this.queue[0];
      if (batch.length && (count + q.texts.length > BATCH_MAX_MESSAGES || bytes + q.bytes > BATCH_MAX_BYTES)) break;
      batch.push(this.queue.shift()!);
      count += q.texts.length;
      bytes += q.bytes;
    }
    clearTimeout(this.windowTimer);
    this.windowTimer = undefined;
    this.windowOver = false;
    const texts: string[] = [];
    for (const q of batch) texts.push(...q.texts);
    if (this.cancelled) {
      for (const q of batch) q.reject(cancelledError());
      return this.flush();
    }
    this.send('messages', '{"messages":[' + texts.join(',') + ']', count).then(
      (res) => {
        let at = 0;
        for (const q of batch) {
          q.resolve({ ids: res.ids.slice(at, at + q.texts.length), duplicate: res.duplicate, last_event_id: res.last_event_id });
          at += q.texts.length;
        }
      },
      (err) => {
        for (const q of batch) q.reject(err);
      },
    );
    // More than one batch's worth waited: the rest goes as soon as this one is answered.
    if (this.queue.length) this.windowOver = true;
  }

  private terminal(path: 'end' | 'error', data: unknown): Promise<WriteResult> {
    let text: string | undefined;
    try {
      text = data === undefined ? undefined : encode(data);
    } catch (e) {
      return Promise.reject(e);
    }
    // Everything written before end/error goes first, in order, with the lower seqs.
    while (this.queue.length) this.flush();
    this.finished = true;
    this.stopWatch();
    return this.send(path, text === undefined ? '{' : '{"data":' + text, 1);
  }

  /** `head` is the body's opening (`{"messages":[...]` or `{"data":...`); writer and seq follow. */
  private send(path: string, head: string, count: number): Promise<WriteResult> {
    // Seqs are taken now, in call order, and requests go out one at a time in that order.
    const seq = this.seq;
    this.seq += count;
    const payload = head + (head === '{' ? '' : ',') + '"writer":' + JSON.stringify(this.writer) + ',"seq":' + seq + '}';
    this.inflight++;
    const run = () => this.post(path, payload);
    const p = this.chain.then(run, run);
    const settled = () => {
      this.inflight--;
      if (this.inflight === 0 && this.queue.length) this.planFlush();
    };
    this.chain = p.then(settled, settled);
    return p;
  }

  private async post(path: string, payload: string): Promise<WriteResult> {
    if (this.cancelled) throw cancelledError();
    const http = this.transport();
    const url = this.broker + '/v1/channels/' + encodeURIComponent(this.channel) + '/' + path;
    const attempts = this.opts.retries ?? 5;
    const backoff = new Backoff({ base: 200, max: 5000 });
    let last: UnbrokenError | undefined;
    for (let i = 0; i < attempts; i++) {
      if (i) await sleep(last && last.status === 429 ? Math.max(backoff.next(), 1000) : backoff.next());
      try {
        const res = await http.post(url, { 'Content-Type': 'application/json', Authorization: 'Bearer ' + this.token }, payload, this.opts.timeout ?? 15000);
        if (res.status === 200 || res.status === 201) return JSON.parse(res.text) as WriteResult;
        last = httpError(res.status, res.text);
        if (last.code === 'channel_cancelled') this.markCancelled({ reason: null });
        if (!last.retryable) throw last;
      } catch (e) {
        if (e instanceof UnbrokenError && !e.retryable) throw e;
        last = e instanceof UnbrokenError ? e : new UnbrokenError('network_error', String((e as Error)?.message || e), { retryable: true });
      }
    }
    throw last!;
  }

  private transport(): BackendHttp {
    if (!this.http) this.http = backendHttp(this.opts.fetch);
    if (!this.http) throw new UnbrokenError('no_transport', 'no fetch, Node http module or uniCloud.httpclient here: pass { fetch } to deserializeChannel');
    return this.http;
  }

  // ---- cancel ----------------------------------------------------------------------------------

  private markCancelled(info: CancelInfo): void {
    if (!this.cancelInfo) this.cancelInfo = info;
    else if (info.reason !== null && this.cancelInfo.reason === null) this.cancelInfo = info;
    this.cancelled = true;
    this.stopWatch();
    const waiters = this.cancelWaiters;
    this.cancelWaiters = [];
    for (const w of waiters) w(this.cancelInfo);
    // Writes waiting for company will never be stored: tell their callers now.
    const queued = this.queue;
    this.queue = [];
    for (const q of queued) q.reject(cancelledError());
  }

  private startWatch(delay: number, backoff = new Backoff({ base: 500, max: 15000 })): void {
    this.watchTimer = setTimeout(() => {
      this.watchTimer = undefined;
      if (this.finished || this.cancelled) return;
      let http: BackendHttp;
      try {
        http = this.transport();
      } catch {
        return;
      }
      if (!http.stream) return;
      const base = this.broker + '/v1/channels/' + encodeURIComponent(this.channel);
      const decoder = new Utf8Decoder();
      let status = 0;
      let done = false;
      let idle: unknown;
      const kick = () => {
        clearTimeout(idle);
        idle = setTimeout(() => {
          if (conn) conn.close();
          again();
        }, WATCH_IDLE_MS);
      };
      const again = () => {
        clearTimeout(idle);
        if (done) return;
        done = true;
        this.watch = undefined;
        if (!this.finished && !this.cancelled && this.cancelWaiters.length) this.startWatch(backoff.next(), backoff);
      };
      const stop = () => {
        clearTimeout(idle);
        done = true;
        this.watch = undefined;
      };
      const parser = new SseParser({
        comment: kick,
        event: (ev) => {
          kick();
          backoff.reset();
          if (ev.event === 'cancelled') {
            let data: { reason?: unknown } | null = null;
            try {
              data = JSON.parse(ev.data) as { reason?: unknown } | null;
            } catch {
              // A malformed notice still means cancelled.
            }
            stop();
            this.markCancelled({ reason: data && typeof data.reason === 'string' ? data.reason : null });
          } else if (ev.event === 'end' || ev.event === 'error') {
            stop(); // ended by the writer: nothing more to watch
          }
        },
      });
      const headers = { Authorization: 'Bearer ' + this.token, Accept: 'text/event-stream' };
      const conn = http.stream(base + '/events?only=terminal', headers, {
        status: (code, body) => {
          status = code;
          if (code === 200) return kick();
          if (code === 204) {
            // Already terminal before we looked: the channel's status says whether by a cancel.
            stop();
            this.channelState(http, base).then((state) => state === 'cancelled' && this.markCancelled({ reason: null }), () => {});
            return;
          }
          const err = httpError(code, body);
          if (!err.retryable) stop();
        },
        chunk: (data) => {
          if (done || status !== 200) return;
          const bytes = toBytes(data);
          parser.feed(typeof bytes === 'string' ? bytes : decoder.decode(bytes));
        },
        end: () => again(),
      });
      if (done) conn.close();
      else this.watch = conn;
    }, delay);
  }

  private channelState(http: BackendHttp, base: string): Promise<string | undefined> {
    // GET with the write token; the status route answers {state: open|ended|cancelled, ...}.
    return new Promise((resolve, reject) => {
      let body = '';
      let code = 0;
      const c = http.stream!(base, { Authorization: 'Bearer ' + this.token }, {
        status: (s, b) => ((code = s), (body = b)),
        chunk: (d) => {
          const b = toBytes(d);
          body += typeof b === 'string' ? b : new Utf8Decoder().decode(b);
        },
        end: (err) => {
          c.close();
          if (err || code !== 200) return reject(err);
          try {
            resolve((JSON.parse(body) as { state?: string }).state);
          } catch (e) {
            reject(e);
          }
        },
      });
    });
  }

  private stopWatch(): void {
    clearTimeout(this.watchTimer);
    this.watchTimer = undefined;
    const w = this.watch;
    this.watch = undefined;
    if (w) w.close();
  }
}

function cancelledError(): UnbrokenError {
  return new UnbrokenError('channel_cancelled', 'a reader cancelled this channel', { status: 409 });
}

/**
 * JSON text of one message. JSON.stringify turns NaN and Infinity into `null` without a word,
 * so a producer's bug would reach every reader as a silent null: refuse it here instead.
 */
function encode(data: unknown): string {
  let bad = '';
  const text = JSON.stringify(data, function (this: unknown, key: string, value: unknown) {
    if (typeof value === 'number' && !isFinite(value) && !bad) bad = (key ? key + ': ' : '') + String(value);
    return value;
  });
  if (bad) throw new UnbrokenError('invalid_data', 'a message cannot carry NaN or Infinity (' + bad + '): JSON has no such numbers');
  // undefined (or a function) at top level has no JSON form; the broker would see no data.
  return text === undefined ? 'null' : text;
}


/** Accepts the channel token as an object, its JSON text, or the bare write JWT. */
export function deserializeChannel(token: ChannelToken | string | { toJSON(): ChannelToken }, opts?: WriterOptions): ChannelWriter {
  return new ChannelWriter(parseToken(token), opts);
}

/**
 * uniCloud's name for the same thing (`uniCloud.deserializeSSEChannel(channel)`): migrating a
 * cloud function is a one-line change of the import.
 */
export const deserializeSSEChannel = deserializeChannel;

export function parseToken(token: unknown): ChannelToken {
  if (token && typeof token === 'object' && typeof (token as { toJSON?: unknown }).toJSON === 'function') {
    token = (token as { toJSON(): unknown }).toJSON();
  }
  if (typeof token === 'string') {
    const s = token.trim();
    if (s.charAt(0) === '{') return parseToken(JSON.parse(s));
    const claims = jwtClaims(s);
    if (!claims || typeof claims.ch !== 'string' || typeof claims.url !== 'string') {
      throw new UnbrokenError('token_invalid', 'not a channel token: expected {unbroken, broker, channel, token} or a write JWT');
    }
    return { unbroken: 1, broker: claims.url, channel: claims.ch, token: s };
  }
  const t = token as Partial<ChannelToken> | null;
  if (!t || typeof t.broker !== 'string' || typeof t.channel !== 'string' || typeof t.token !== 'string') {
    throw new UnbrokenError('token_invalid', 'not a channel token: expected {unbroken, broker, channel, token}');
  }
  return { unbroken: 1, broker: t.broker, channel: t.channel, token: t.token };
}

function jwtClaims(jwt: string): { ch?: unknown; url?: unknown } | undefined {
  const part = jwt.split('.')[1];
  if (!part) return undefined;
  try {
    return JSON.parse(base64UrlDecode(part)) as { ch?: unknown; url?: unknown };
  } catch {
    return undefined;
  }
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

// No atob in some cloud-function and mini-program runtimes; the claims are small ASCII JSON.
function base64UrlDecode(s: string): string {
  let bits = 0;
  let acc = 0;
  const bytes: number[] = [];
  for (const ch of s.replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_')) {
    const v = B64.indexOf(ch);
    if (v < 0) throw new Error('bad base64');
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push((acc >> bits) & 0xff);
    }
  }
  return decodeURIComponent(bytes.map((b) => '%' + (b < 16 ? '0' : '') + b.toString(16)).join(''));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
