/**
 * What the runtime offers, found by capability detection (never by user agent). Structural types
 * only: the SDK is compiled without DOM or Node typings because mini-programs have neither.
 */

export interface FetchResponse {
  status: number;
  headers: { get(name: string): string | null };
  text(): Promise<string>;
  body?: { getReader(): { read(): Promise<{ done: boolean; value?: Uint8Array }>; cancel(): Promise<void> } } | null;
}
export type FetchFn = (url: string, init?: {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  signal?: unknown;
  cache?: string;
}) => Promise<FetchResponse>;

export interface AbortControllerLike {
  signal: unknown;
  abort(): void;
}

export interface WebSocketLike {
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(code?: number, reason?: string): void;
  send(data: string): void;
}
export type WebSocketCtor = new (url: string, protocols?: string | string[], options?: unknown) => WebSocketLike;

export interface EventSourceLike {
  readyState: number;
  addEventListener(type: string, fn: (ev: { data?: string; lastEventId?: string }) => void): void;
  close(): void;
}
export type EventSourceCtor = new (url: string) => EventSourceLike;

export interface XhrLike {
  readyState: number;
  status: number;
  responseText: string;
  onprogress: (() => void) | null;
  onreadystatechange: (() => void) | null;
  onerror: (() => void) | null;
  open(method: string, url: string): void;
  setRequestHeader(name: string, value: string): void;
  send(body?: string | null): void;
  abort(): void;
}
export type XhrCtor = new () => XhrLike;

/** The request/socket API shared (with small differences) by uni, wx, my, tt, qq, swan. */
export interface MpRequestTask {
  abort?(): void;
  onChunkReceived?(cb: (res: { data: unknown }) => void): void;
  onHeadersReceived?(cb: (res: { statusCode?: number | string; header?: Record<string, string> }) => void): void;
}
export interface MpRequestOptions {
  url: string;
  method?: string;
  header?: Record<string, string>;
  headers?: Record<string, string>;
  data?: string;
  dataType?: string;
  responseType?: string;
  enableChunked?: boolean;
  timeout?: number;
  success?(res: { statusCode: number | string; data: unknown; header?: Record<string, string> }): void;
  fail?(err: { errMsg?: string; errCode?: number }): void;
  complete?(): void;
}
export interface MpSocketTask {
  onOpen(cb: () => void): void;
  onMessage(cb: (res: { data: unknown }) => void): void;
  onClose(cb: (res: { code?: number; reason?: string }) => void): void;
  onError(cb: (res: { errMsg?: string }) => void): void;
  close(opts?: { code?: number; reason?: string }): void;
  send?(opts: { data: string }): void;
}
export interface MpApi {
  request?(opts: MpRequestOptions): MpRequestTask | Promise<unknown> | undefined;
  connectSocket?(opts: {
    url: string;
    header?: Record<string, string>;
    multiple?: boolean;
    success?(): void;
    fail?(err: { errMsg?: string }): void;
    complete?(): void;
  }): MpSocketTask | Promise<unknown> | undefined;
  canIUse?(what: string): boolean;
  getSystemInfoSync?(): { uniPlatform?: string; platform?: string };
  onAppShow?(cb: () => void): void;
  offAppShow?(cb: () => void): void;
  onAppHide?(cb: () => void): void;
  offAppHide?(cb: () => void): void;
  onNetworkStatusChange?(cb: (res: { isConnected?: boolean }) => void): void;
  offNetworkStatusChange?(cb: (res: { isConnected?: boolean }) => void): void;
}

export interface DocumentLike {
  visibilityState?: string;
  addEventListener(type: string, fn: () => void): void;
  removeEventListener(type: string, fn: () => void): void;
}
export interface AppStateLike {
  addEventListener(type: 'change', fn: (state: string) => void): { remove(): void } | undefined;
}

/** Everything detection looks at; pass your own (or fakes in tests) through `options.env`. */
export interface Env {
  fetch?: FetchFn;
  AbortController?: new () => AbortControllerLike;
  WebSocket?: WebSocketCtor;
  EventSource?: EventSourceCtor;
  XMLHttpRequest?: XhrCtor;
  ReadableStream?: unknown;
  uni?: MpApi;
  wx?: MpApi;
  my?: MpApi;
  tt?: MpApi;
  qq?: MpApi;
  swan?: MpApi;
  document?: DocumentLike;
  /** The browser window (its `online` event); not a mini-program's or Node's global. */
  window?: DocumentLike;
  /** `localStorage`, for `persist` in browsers. */
  localStorage?: unknown;
  /** React Native's AppState module: pass it, RN has no global for it. */
  AppState?: AppStateLike;
}

export interface Host {
  env: Env;
  fetch?: FetchFn;
  /** fetch whose Response exposes a readable body (not React Native's). */
  streamingFetch: boolean;
  mp?: MpApi;
  mpName?: string;
  /** mp.request has enableChunked + onChunkReceived here (or we could not rule it out). */
  mpChunked: boolean;
}

const MP_NAMES = ['uni', 'wx', 'my', 'tt', 'qq', 'swan'] as const;

export function detectHost(env: Env): Host {
  // `uni` wins over `wx`: in uni's mp-weixin build both exist and uni adds its normalisation.
  let mp: MpApi | undefined;
  let mpName: string | undefined;
  for (const name of MP_NAMES) {
    const api = env[name];
    if (api && typeof api.request === 'function') {
      mp = api;
      mpName = name;
      break;
    }
  }
  const fetch = typeof env.fetch === 'function' ? env.fetch : undefined;
  // React Native has fetch but no body stream; it has no ReadableStream global either.
  const streamingFetch = !!fetch && env.ReadableStream !== undefined;
  return { env, fetch, streamingFetch, mp, mpName, mpChunked: !!mp && mpSupportsChunked(mp, mpName) };
}

/**
 * uni.request on App-Vue has no onChunkReceived at all (uni-app-plus request.ts) and its abort()
 * does not cancel the native request, so we must know *before* starting a stream there.
 */
function mpSupportsChunked(mp: MpApi, name: string | undefined): boolean {
  if (name === 'uni') {
    const info = safe(() => mp.getSystemInfoSync && mp.getSystemInfoSync());
    const platform = info && info.uniPlatform;
    // Documented for mp-weixin (passes through to wx.request) and web (4.75+); App-Vue never.
    if (platform === 'app' || platform === 'mp-alipay' || platform === 'mp-baidu') return false;
  }
  // No chunked request documented for Alipay, Baidu or Douyin (tt.request, 60 s max).
  if (name === 'my' || name === 'swan' || name === 'tt') return false;
  if (typeof mp.canIUse === 'function') {
    const can = safe(() => mp.canIUse!('RequestTask.onChunkReceived'));
    if (can === false) return false;
  }
  return true;
}

function safe<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch {
    return undefined;
  }
}

export function globalEnv(): Env {
  // Mini-program runtimes lack `globalThis` in places (Douyin); fall back through the usual names.
  const g: any =
    typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : typeof window !== 'undefined' ? window : {};
  const pick = (name: string): any => {
    try {
      // eslint-disable-next-line no-new-func
      return g[name] !== undefined ? g[name] : lookupFree(name);
    } catch {
      return undefined;
    }
  };
  const env: Env = {};
  for (const name of ['fetch', 'AbortController', 'WebSocket', 'EventSource', 'XMLHttpRequest', 'ReadableStream', 'document', ...MP_NAMES]) {
    const v = pick(name);
    if (v !== undefined) (env as any)[name] = name === 'fetch' ? v.bind(g) : v;
  }
  // A browser page: the global is the window (it has a document and dispatches `online`).
  if (env.document && typeof g.addEventListener === 'function') env.window = g;
  try {
    // Reading localStorage throws in sandboxed iframes and some privacy modes.
    if (env.document && g.localStorage) env.localStorage = g.localStorage;
  } catch {
    // No storage: persist simply does nothing.
  }
  return env;
}

// `uni`, `wx` etc. are injected as module-scope free variables by the mini-program bundlers, not
// always as properties of the global object, so `typeof` checks on the bare names are needed.
declare const uni: unknown, wx: unknown, my: unknown, tt: unknown, qq: unknown, swan: unknown;
declare const self: unknown, window: unknown;
function lookupFree(name: string): unknown {
  switch (name) {
    case 'uni': return typeof uni !== 'undefined' ? uni : undefined;
    case 'wx': return typeof wx !== 'undefined' ? wx : undefined;
    case 'my': return typeof my !== 'undefined' ? my : undefined;
    case 'tt': return typeof tt !== 'undefined' ? tt : undefined;
    case 'qq': return typeof qq !== 'undefined' ? qq : undefined;
    case 'swan': return typeof swan !== 'undefined' ? swan : undefined;
    default: return undefined;
  }
}
