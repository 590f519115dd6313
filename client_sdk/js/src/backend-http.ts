import { UnbrokenError } from './errors.js';
import type { FetchFn } from './host.js';
import { Utf8Decoder } from './utf8.js';

/**
 * HTTP for the backend writer on every server runtime: a global (or given) `fetch` (Node 18+,
 * Deno, Bun, workers), `uniCloud.httpclient` (uniCloud cloud functions, documented as an urllib
 * instance: `request(url, {method, headers, content, dataType: 'text', timeout})` resolving to
 * `{status, headers, data}`), or Node's own `http`/`https` modules where there is no fetch at all
 * (Node 12-17, `node --no-experimental-fetch`, FaaS runtimes still on Node 16).
 */
export interface BackendHttp {
  readonly name: 'fetch' | 'unicloud' | 'node';
  post(url: string, headers: Record<string, string>, body: string, timeout: number): Promise<{ status: number; text: string }>;
  /** A long GET whose body arrives in pieces (the writer's cancel watch). */
  stream?(url: string, headers: Record<string, string>, sink: StreamSink): { close(): void };
}

export interface StreamSink {
  /** The status line, and the whole body when it is not 200 (it is short then). */
  status(code: number, body: string): void;
  chunk(data: Uint8Array | string): void;
  end(err?: UnbrokenError): void;
}

export function backendHttp(fetch?: FetchFn): BackendHttp | undefined {
  const g = globalObject();
  const f = fetch || (typeof g.fetch === 'function' ? (g.fetch.bind(g) as FetchFn) : undefined);
  if (f) return fetchHttp(f, g.AbortController);
  const node = nodeModules();
  const uni = g.uniCloud && g.uniCloud.httpclient;
  if (uni && typeof uni.request === 'function') return uniCloudHttp(uni, node);
  if (node) return nodeHttp(node);
  return undefined;
}

// ---- fetch --------------------------------------------------------------------------------------

function fetchHttp(fetch: FetchFn, Abort: (new () => { signal: unknown; abort(): void }) | undefined): BackendHttp {
  return {
    name: 'fetch',
    post: (url, headers, body, timeout) =>
      withTimeout(
        fetch(url, { method: 'POST', headers, body }).then((r) => r.text().then((text) => ({ status: r.status, text }))),
        timeout,
      ),
    stream(url, headers, sink) {
      const ctl = Abort ? new Abort() : undefined;
      let closed = false;
      let cancel = () => {};
      fetch(url, { headers, signal: ctl && ctl.signal })
        .then(async (res) => {
          if (res.status !== 200 || !res.body) {
            sink.status(res.status, await res.text().catch(() => ''));
            return sink.end();
          }
          sink.status(200, '');
          const reader = res.body.getReader();
          cancel = () => void reader.cancel().catch(() => {});
          for (;;) {
            const { done, value } = await reader.read();
            if (closed) return;
            if (done) return sink.end();
            if (value) sink.chunk(value);
          }
        })
        .catch((e: unknown) => {
          if (!closed) sink.end(networkError(e));
        });
      return {
        close() {
          closed = true;
          cancel();
          if (ctl) ctl.abort();
        },
      };
    },
  };
}

// ---- Node core http/https -----------------------------------------------------------------------

interface NodeResponse {
  statusCode?: number;
  on(ev: 'data', fn: (chunk: Uint8Array) => void): void;
  on(ev: 'end' | 'close', fn: () => void): void;
  on(ev: 'error', fn: (e: unknown) => void): void;
}
interface NodeRequest {
  on(ev: 'error', fn: (e: unknown) => void): void;
  end(body?: string): void;
  destroy(): void;
}
interface NodeHttpModule {
  request(url: string, opts: { method: string; headers: Record<string, string> }, cb: (res: NodeResponse) => void): NodeRequest;
}
interface NodeModules {
  http: NodeHttpModule;
  https: NodeHttpModule;
}

function nodeHttp(mods: NodeModules): BackendHttp {
  const send = (method: string, url: string, headers: Record<string, string>, body: string | undefined, onRes: (res: NodeResponse) => void, onErr: (e: unknown) => void) => {
    const mod = url.slice(0, 6) === 'https:' ? mods.https : mods.http;
    const h = body === undefined ? headers : { ...headers, 'Content-Length': String(byteLength(body)) };
    const req = mod.request(url, { method, headers: h }, onRes);
    req.on('error', onErr);
    req.end(body);
    return req;
  };
  return {
    name: 'node',
    post(url, headers, body, timeout) {
      return new Promise((resolve, reject) => {
        const parts: Uint8Array[] = [];
        const timer = setTimeout(() => {
          req.destroy();
          reject(new UnbrokenError('timeout', 'request timed out after ' + timeout + ' ms', { retryable: true }));
        }, timeout);
        const req = send(
          'POST',
          url,
          headers,
          body,
          (res) => {
            res.on('data', (c) => parts.push(c));
            res.on('error', (e) => (clearTimeout(timer), reject(networkError(e))));
            res.on('end', () => {
              clearTimeout(timer);
              resolve({ status: res.statusCode || 0, text: decodeAll(parts) });
            });
          },
          (e) => (clearTimeout(timer), reject(networkError(e))),
        );
      });
    },
    stream(url, headers, sink) {
      let closed = false;
      const end = (err?: UnbrokenError) => {
        if (closed) return;
        closed = true;
        sink.end(err);
      };
      const req = send(
        'GET',
        url,
        headers,
        undefined,
        (res) => {
          const status = res.statusCode || 0;
          if (status !== 200) {
            const parts: Uint8Array[] = [];
            res.on('data', (c) => parts.push(c));
            res.on('end', () => {
              if (closed) return;
              sink.status(status, decodeAll(parts));
              end();
            });
            return;
          }
          sink.status(200, '');
          res.on('data', (c) => {
            if (!closed) sink.chunk(c);
          });
          res.on('error', (e) => end(networkError(e)));
          res.on('end', () => end());
          res.on('close', () => end());
        },
        (e) => end(networkError(e)),
      );
      return {
        close() {
          closed = true;
          req.destroy();
        },
      };
    },
  };
}

// ---- uniCloud.httpclient ------------------------------------------------------------------------

interface UniHttpClient {
  request(
    url: string,
    opts: { method: string; headers: Record<string, string>; content: string; dataType: 'text'; timeout: number },
  ): Promise<{ status: number; data: unknown }>;
}

function uniCloudHttp(client: UniHttpClient, node: NodeModules | undefined): BackendHttp {
  return {
    name: 'unicloud',
    post: (url, headers, body, timeout) =>
      client.request(url, { method: 'POST', headers, content: body, dataType: 'text', timeout }).then(
        (res) => ({ status: res.status, text: typeof res.data === 'string' ? res.data : res.data == null ? '' : decodeAll([res.data as Uint8Array]) }),
        (e: unknown) => {
          throw networkError(e);
        },
      ),
    // The cancel watch streams; uniCloud functions run on Node, whose http module streams.
    stream: node ? nodeHttp(node).stream : undefined,
  };
}

// ---- helpers ------------------------------------------------------------------------------------

declare const require: ((id: string) => unknown) | undefined;
declare const process: { getBuiltinModule?: (id: string) => unknown; mainModule?: { require(id: string): unknown } } | undefined;

/**
 * Node's http modules without a static import (bundlers for mini-programs must not try to resolve
 * them): `process.getBuiltinModule` (Node 20.16+), else the CommonJS `require` (our CJS build,
 * which cloud functions on Node 12-16 load), else the main module's require.
 */
function nodeModules(): NodeModules | undefined {
  const load = (id: string): NodeHttpModule | undefined => {
    try {
      if (typeof process !== 'undefined' && process) {
        if (typeof process.getBuiltinModule === 'function') return process.getBuiltinModule(id) as NodeHttpModule;
        if (typeof require === 'function') return require(id) as NodeHttpModule;
        if (process.mainModule) return process.mainModule.require(id) as NodeHttpModule;
      }
    } catch {
      // Not Node after all.
    }
    return undefined;
  };
  const http = load('http');
  const https = load('https');
  return http && https && typeof http.request === 'function' ? { http, https } : undefined;
}

function globalObject(): any {
  return typeof globalThis !== 'undefined' ? globalThis : {};
}

function networkError(e: unknown): UnbrokenError {
  return e instanceof UnbrokenError ? e : new UnbrokenError('network_error', String((e as Error)?.message || e), { retryable: true });
}

function decodeAll(parts: Uint8Array[]): string {
  let n = 0;
  for (const p of parts) n += p.length;
  const all = new Uint8Array(n);
  let o = 0;
  for (const p of parts) (all.set(p, o), (o += p.length));
  return new Utf8Decoder().decode(all);
}


function byteLength(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) (n += 4), i++;
    else n += 3;
  }
  return n;
}

export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new UnbrokenError('timeout', 'request timed out after ' + ms + ' ms', { retryable: true })), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e) => (clearTimeout(t), reject(e)),
    );
  });
}
