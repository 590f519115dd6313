import { Backoff } from './backoff.js';
import { UnbrokenError, httpError } from './errors.js';
import type { ChannelToken } from './channel.js';
import type { FetchFn } from './host.js';

export interface WriterOptions {
  /** fetch to use (default: the global one, Node 18+). */
  fetch?: FetchFn;
  /** Writer id for idempotency; random by default. Reuse it only with `firstSeq` set. */
  writer?: string;
  /** Next seq to use (default 1). */
  firstSeq?: number;
  /** Attempts per request on network errors, 5xx and 429 (default 5). */
  retries?: number;
  /** ms per attempt (default 15000). */
  timeout?: number;
}

export interface WriteResult {
  ids: string[];
  duplicate: boolean;
  last_event_id: string | null;
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
  private seq: number;
  private readonly token: string;
  private readonly opts: WriterOptions;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(token: ChannelToken, opts: WriterOptions = {}) {
    this.broker = token.broker.replace(/\/+$/, '');
    this.channel = token.channel;
    this.token = token.token;
    this.opts = opts;
    this.writer = opts.writer || 'w_' + Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
    this.seq = opts.firstSeq ?? 1;
  }

  write(data: unknown): Promise<WriteResult> {
    return this.send('messages', { data }, 1);
  }

  /** Several messages in one request (seqs seq .. seq+n-1). */
  writeMany(messages: unknown[]): Promise<WriteResult> {
    return this.send('messages', { messages }, messages.length);
  }

  end(data?: unknown): Promise<WriteResult> {
    return this.send('end', data === undefined ? {} : { data }, 1);
  }

  error(data: unknown): Promise<WriteResult> {
    const body = data instanceof Error ? { message: data.message } : typeof data === 'string' ? { message: data } : data;
    return this.send('error', { data: body }, 1);
  }

  toJSON(): ChannelToken {
    return { unbroken: 1, broker: this.broker, channel: this.channel, token: this.token };
  }

  private send(path: string, body: Record<string, unknown>, count: number): Promise<WriteResult> {
    // Seqs are taken now, in call order, and requests go out one at a time in that order.
    const seq = this.seq;
    this.seq += count;
    const payload = JSON.stringify({ ...body, writer: this.writer, seq });
    const run = () => this.post(path, payload);
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private async post(path: string, payload: string): Promise<WriteResult> {
    const fetch = this.opts.fetch || (globalThis as unknown as { fetch?: FetchFn }).fetch;
    if (!fetch) throw new UnbrokenError('no_transport', 'no fetch here: pass { fetch } to deserializeChannel');
    const url = this.broker + '/v1/channels/' + encodeURIComponent(this.channel) + '/' + path;
    const attempts = this.opts.retries ?? 5;
    const backoff = new Backoff({ base: 200, max: 5000 });
    let last: UnbrokenError | undefined;
    for (let i = 0; i < attempts; i++) {
      if (i) await sleep(last && last.status === 429 ? Math.max(backoff.next(), 1000) : backoff.next());
      try {
        const res = await withTimeout(
          fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + this.token }, body: payload }),
          this.opts.timeout ?? 15000,
        );
        const text = await res.text();
        if (res.status === 200 || res.status === 201) return JSON.parse(text) as WriteResult;
        last = httpError(res.status, text);
        if (!last.retryable) throw last;
      } catch (e) {
        if (e instanceof UnbrokenError && !e.retryable) throw e;
        last = e instanceof UnbrokenError ? e : new UnbrokenError('network_error', String((e as Error)?.message || e), { retryable: true });
      }
    }
    throw last!;
  }
}

/** Accepts the channel token as an object, its JSON text, or the bare write JWT. */
export function deserializeChannel(token: ChannelToken | string | { toJSON(): ChannelToken }, opts?: WriterOptions): ChannelWriter {
  return new ChannelWriter(parseToken(token), opts);
}

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

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new UnbrokenError('timeout', 'request timed out', { retryable: true })), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e) => (clearTimeout(t), reject(e)),
    );
  });
}
