// Whole fake runtimes, as the SDK sees them through `options.env`: only the globals the real
// platform has (research/client-runtimes.md §1). No fetch/XHR/WebSocket/TextDecoder where the
// platform has none.
import WebSocket from 'ws';
import { FakeHost } from './host.mjs';
import { makeRequest } from './request.mjs';
import { makeConnectSocket } from './socket.mjs';

function lifecycle(host) {
  return {
    onAppShow: (f) => host.onAppShow(f),
    offAppShow: (f) => host.offAppShow(f),
    onAppHide: (f) => host.onAppHide(f),
    offAppHide: (f) => host.offAppHide(f),
  };
}

/** WeChat mini-program (`wx.*`), base library >= 2.20.1 unless `baseLibrary` is older. */
export function wxRuntime({ capMs = 60000, interruptAfterMs = 5000, baseLibrary = '3.5.0', seed } = {}) {
  const host = new FakeHost({ interruptAfterMs, seed });
  const req = makeRequest(host, 'wx', { capMs, chunked: baseLibrary >= '2.20.1' });
  const sock = makeConnectSocket(host, 'wx');
  const wx = {
    request: req.request,
    connectSocket: sock.connectSocket,
    // https://developers.weixin.qq.com/miniprogram/dev/api/base/wx.canIUse.html
    canIUse: (what) => (what === 'RequestTask.onChunkReceived' ? baseLibrary >= '2.20.1' : true),
    getSystemInfoSync: () => ({ platform: 'ios', SDKVersion: baseLibrary }),
    ...lifecycle(host),
  };
  return { name: 'wx', host, env: { wx }, req, sock };
}

/** uni-app compiled to mp-weixin: `uni` passes through to `wx`, uni-push holds one socket. */
export function uniMpWeixinRuntime(opts = {}) {
  const base = wxRuntime(opts);
  const req = makeRequest(base.host, 'wx', { capMs: opts.capMs ?? 60000, promise: true });
  const sock = makeConnectSocket(base.host, 'uni-mp-weixin');
  const uni = {
    request: req.request,
    connectSocket: sock.connectSocket,
    canIUse: base.env.wx.canIUse,
    getSystemInfoSync: () => ({ uniPlatform: 'mp-weixin', platform: 'ios' }),
    ...lifecycle(base.host),
  };
  return { name: 'uni mp-weixin', host: base.host, env: { uni, wx: base.env.wx }, req, sock };
}

/** uni-app App (Vue, Android/iOS logic layer): no fetch, no XHR, no chunks; sockets work. */
export function uniAppRuntime({ interruptAfterMs = 5000, seed } = {}) {
  const host = new FakeHost({ interruptAfterMs, seed });
  const req = makeRequest(host, 'uni-app');
  const sock = makeConnectSocket(host, 'uni-app');
  const uni = {
    request: req.request,
    connectSocket: sock.connectSocket,
    getSystemInfoSync: () => ({ uniPlatform: 'app', platform: 'android' }),
    ...lifecycle(host),
  };
  return { name: 'uni App', host, env: { uni }, req, sock };
}

/** uni-app H5: a browser page (fetch, WebSocket, document) plus `uni` (chunks as Uint8Array). */
export function uniH5Runtime({ seed } = {}) {
  const host = new FakeHost({ seed });
  const req = makeRequest(host, 'uni-h5');
  const sock = makeConnectSocket(host, 'uni-h5');
  const listeners = [];
  const document = {
    visibilityState: 'visible',
    addEventListener: (t, f) => t === 'visibilitychange' && listeners.push(f),
    removeEventListener: (t, f) => listeners.splice(listeners.indexOf(f), 1),
  };
  host.onAppHide(() => ((document.visibilityState = 'hidden'), listeners.forEach((f) => f())));
  host.onAppShow(() => ((document.visibilityState = 'visible'), listeners.forEach((f) => f())));
  const uni = {
    request: req.request,
    connectSocket: sock.connectSocket,
    getSystemInfoSync: () => ({ uniPlatform: 'web', platform: 'web' }),
    ...lifecycle(host),
  };
  const env = { uni, fetch: globalThis.fetch.bind(globalThis), ReadableStream, AbortController, WebSocket, document };
  return { name: 'uni H5', host, env, req, sock };
}

/** Alipay mini-program (`my.*`): no chunked request, sockets need multiple:true. */
export function alipayRuntime({ seed } = {}) {
  const host = new FakeHost({ seed });
  const req = makeRequest(host, 'my');
  const sock = makeConnectSocket(host, 'my');
  const my = { request: req.request, connectSocket: sock.connectSocket, ...lifecycle(host) };
  return { name: 'my (Alipay)', host, env: { my }, req, sock };
}

/** Douyin mini-program (`tt.*`): no chunked request, 60 s request cap, sockets. */
export function douyinRuntime({ seed } = {}) {
  const host = new FakeHost({ seed });
  const req = makeRequest(host, 'tt');
  const sock = makeConnectSocket(host, 'tt');
  const tt = { request: req.request, connectSocket: sock.connectSocket, canIUse: () => true, ...lifecycle(host) };
  return { name: 'tt (Douyin)', host, env: { tt }, req, sock };
}
