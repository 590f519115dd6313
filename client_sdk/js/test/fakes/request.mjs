// Fake `wx.request` / `uni.request` / `my.request` on node:http, one profile per platform.
//
// Documentation followed:
// - wx.request: https://developers.weixin.qq.com/miniprogram/dev/api/network/request/wx.request.html
//   (always returns a RequestTask; `success` for ANY status code; `timeout` default 60000;
//   responseType text|arraybuffer; dataType json parses the body).
// - RequestTask.onChunkReceived (base library >= 2.20.1), payload {data: ArrayBuffer}:
//   https://developers.weixin.qq.com/miniprogram/dev/api/network/request/RequestTask.onChunkReceived.html
//   Chunks split/coalesce at arbitrary byte positions (xiaweiss/miniprogram-bug-report #304).
//   A chunked request is cut at ~60 s whatever its timeout (community reports, research §2.6).
//   At most 10 concurrent requests (network.md). iOS network drop: no callback at all (#272).
// - uni.request: https://uniapp.dcloud.net.cn/api/request/request.html - returns a RequestTask only
//   if success/fail/complete is passed, else a Promise; enableChunked for mp-weixin only.
//   App-Vue (packages/uni-app-plus/src/service/api/network/request.ts): no onChunkReceived,
//   onHeadersReceived is a no-op, abort() only rejects in JS (the native request keeps running),
//   a JS timer fails the request at timeout + 200 ms.
//   H5 (packages/uni-h5/src/service/api/network/request.ts): chunks are Uint8Array, the request is
//   killed at `timeout` even while data flows.
import http from 'node:http';

export const PROFILES = {
  wx: { chunked: true, payload: 'arraybuffer', headers: true, capMs: 60000, maxConcurrent: 10, promise: false, abortCancels: true, split: true },
  'uni-h5': { chunked: true, payload: 'uint8array', headers: true, capMs: Infinity, killAtTimeout: true, maxConcurrent: Infinity, promise: true, abortCancels: true, split: true },
  'uni-app': { chunked: false, headers: false, capMs: Infinity, jsTimerExtra: 200, maxConcurrent: Infinity, promise: true, abortCancels: false, split: false },
  my: { chunked: false, headers: false, capMs: Infinity, maxConcurrent: 10, promise: false, abortCancels: true, split: false },
  // tt.request: https://developer.open-douyin.com/docs/resource/zh-CN/mini-app/develop/api/network/http/tt-request
  // (no chunked option; "网络请求超时最大时长为 60s").
  tt: { chunked: false, headers: true, capMs: 60000, maxConcurrent: 10, promise: false, abortCancels: true, split: false },
};

export function makeRequest(host, profileName, overrides = {}) {
  const p = { ...PROFILES[profileName], ...overrides };
  const stats = { started: 0, chunkedStarted: 0, nativeOpen: 0, maxNativeOpen: 0, hung: 0 };
  const hanging = new Set();

  function request(opts) {
    const hasCb = !!(opts.success || opts.fail || opts.complete);
    if (p.promise && !hasCb) {
      return new Promise((resolve, reject) => request({ ...opts, success: resolve, fail: reject }));
    }
    stats.started++;
    const wantChunks = !!opts.enableChunked && p.chunked;
    if (opts.enableChunked) stats.chunkedStarted++;
    const chunkFns = [];
    const headerFns = [];
    let jsDone = false; // callbacks already delivered (abort/timeout on the JS side)
    let nativeDone = false;
    const bodyParts = [];
    let pending = [];
    let flushTimer;

    const deliver = (fn) => host.dispatch(fn);
    const finishJs = (kind, payload) => {
      if (jsDone) return;
      jsDone = true;
      deliver(() => {
        if (kind === 'success') opts.success && opts.success(payload);
        else opts.fail && opts.fail(payload);
        opts.complete && opts.complete(payload);
      });
    };
    const closeNative = (destroy) => {
      if (nativeDone) return;
      nativeDone = true;
      stats.nativeOpen--;
      host.inflight.delete(entry);
      hanging.delete(entry);
      clearTimeout(capTimer);
      if (destroy) req.destroy();
    };

    const task = {
      abort() {
        if (p.abortCancels) closeNative(true);
        // App-Vue: the flag is set and JS is told "abort"; the native request runs on.
        finishJs('fail', { errMsg: 'request:fail abort', errCode: 600003 });
      },
      onHeadersReceived(fn) {
        if (p.headers) headerFns.push(fn);
      },
    };
    if (p.chunked) {
      task.onChunkReceived = (fn) => chunkFns.push(fn);
      task.offChunkReceived = (fn) => chunkFns.splice(0, chunkFns.length, ...(fn ? chunkFns.filter((f) => f !== fn) : []));
    }

    if (host.interruptedNow) {
      finishJs('fail', { errMsg: 'request:fail interrupted' });
      return task;
    }
    if (stats.nativeOpen >= p.maxConcurrent) {
      finishJs('fail', { errMsg: 'request:fail exceed max concurrent requests (10)' });
      return task;
    }

    const emitChunks = () => {
      flushTimer = undefined;
      if (jsDone || hanging.has(entry)) return;
      let buf = Buffer.concat(pending);
      pending = [];
      // Split what arrived at random byte positions (inside UTF-8 sequences too).
      while (buf.length) {
        const n = p.split ? 1 + Math.floor(host.random() * Math.min(buf.length, 64)) : buf.length;
        const piece = buf.subarray(0, n);
        buf = buf.subarray(n);
        const copy = new Uint8Array(piece);
        const data = p.payload === 'uint8array' ? copy : copy.buffer;
        deliver(() => {
          if (!jsDone) for (const fn of chunkFns.slice()) fn({ data });
        });
      }
    };

    const url = new URL(opts.url);
    const header = opts.header || opts.headers || {};
    const req = http.request(
      { hostname: url.hostname, port: url.port, path: url.pathname + url.search, method: opts.method || 'GET', headers: header },
      (res) => {
        if (wantChunks && p.headers) {
          const h = { ...res.headers };
          deliver(() => {
            if (!jsDone) for (const fn of headerFns) fn({ header: h, statusCode: res.statusCode, cookies: [] });
          });
        }
        res.on('data', (d) => {
          if (hanging.has(entry)) return;
          bodyParts.push(d);
          if (wantChunks) {
            pending.push(d);
            // Coalesce writes that arrive close together (WeChat merges them).
            if (!flushTimer) flushTimer = setTimeout(emitChunks, Math.floor(host.random() * 4));
          }
        });
        res.on('end', () => {
          if (hanging.has(entry)) return;
          closeNative(false);
          if (flushTimer) {
            clearTimeout(flushTimer);
            emitChunks();
          }
          const body = Buffer.concat(bodyParts);
          let data = opts.responseType === 'arraybuffer' ? new Uint8Array(body).buffer : body.toString('utf8');
          if ((opts.dataType === undefined || opts.dataType === 'json') && typeof data === 'string') {
            try {
              data = JSON.parse(data);
            } catch {}
          }
          finishJs('success', { data, statusCode: res.statusCode, header: { ...res.headers }, cookies: [] });
        });
        res.on('error', () => {});
      },
    );
    req.on('error', (e) => {
      if (hanging.has(entry)) return;
      closeNative(false);
      finishJs('fail', { errMsg: 'request:fail ' + e.message, errCode: 602001 });
    });
    if (opts.data) req.write(typeof opts.data === 'string' ? opts.data : JSON.stringify(opts.data));
    req.end();
    stats.nativeOpen++;
    stats.maxNativeOpen = Math.max(stats.maxNativeOpen, stats.nativeOpen);

    const entry = {
      interrupt() {
        closeNative(true);
        finishJs('fail', { errMsg: 'request:fail interrupted' });
      },
      hang() {
        // iOS WeChat network drop: the connection dies and no callback ever fires.
        hanging.add(entry);
        stats.hung++;
      },
    };
    host.inflight.add(entry);

    const timeout = opts.timeout || 60000;
    let capTimer;
    if (p.jsTimerExtra !== undefined) {
      // App-Vue: a JS timer rejects; the native request is untouched.
      capTimer = setTimeout(() => finishJs('fail', { errMsg: 'request:fail timeout', errCode: 5 }), timeout + p.jsTimerExtra);
    } else {
      const limit = p.killAtTimeout ? timeout : Math.min(timeout, p.capMs);
      if (limit !== Infinity) {
        capTimer = setTimeout(() => {
          closeNative(true);
          finishJs('fail', { errMsg: 'request:fail timeout', errCode: 5 });
        }, limit);
      }
    }
    return task;
  }

  return {
    request,
    stats,
    /** Make every in-flight request go silent (no bytes, no callback, socket left open). */
    hangAll() {
      for (const e of host.inflight) e.hang && e.hang();
    },
  };
}
