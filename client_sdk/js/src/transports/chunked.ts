import { UnbrokenError } from '../errors.js';
import { lowerKeys, withQuery } from '../http.js';
import type { MpRequestTask } from '../host.js';
import { Utf8Decoder } from '../utf8.js';
import { SseReader, checkStatus } from './framing.js';
import type { Transport } from './types.js';

/**
 * `uni.request` / `wx.request` / `tt.request` with `enableChunked` + `RequestTask.onChunkReceived`
 * (WeChat base library >= 2.20.1; uni mp-weixin passes through; uni H5/uni-app x from 4.75).
 *
 * Chunks are ArrayBuffer (wx) or Uint8Array (uni H5) split at any byte. WeChat cuts a request at
 * about 60 s whatever its `timeout`, and keeps the whole body in memory, so each request is a
 * bounded window (`/stream?max_duration=`) that ends with a `reconnect` notice and resumes.
 */
export const chunkedTransport: Transport = {
  name: 'mp-request',
  wire: 'chunked',
  supported: (host) => !!host.mp && host.mpChunked,
  connect(host, req, on) {
    let closed = false;
    let chunks = 0;
    let status = 0;
    const sse = new SseReader(on);
    const finish = (err?: UnbrokenError) => {
      if (closed) return;
      closed = true;
      on.closed(err);
    };
    const push = (data: unknown) => {
      if (closed) return;
      try {
        sse.push(data);
      } catch (e) {
        finish(e as UnbrokenError);
      }
    };
    const url = withQuery(req.urls.stream, { last_event_id: req.lastEventId, max_duration: req.window });
    const task = host.mp!.request!({
      url,
      method: 'GET',
      header: { ...req.headers, Authorization: 'Bearer ' + req.token, Accept: 'text/event-stream' },
      enableChunked: true,
      responseType: 'arraybuffer',
      dataType: 'text',
      // A total timeout just past the window: our own watchdog decides liveness.
      timeout: (req.window + 15) * 1000,
      success(res) {
        status = Number(res.statusCode);
        if (closed) return;
        if (status !== 200 || chunks === 0) {
          const body = decodeBody(res.data);
          if (status === 200) push(body); // host ignored enableChunked: the whole window at once
          else if (!checkStatus(status, body, { ...on, closed: finish }, lowerKeys(res.header)['retry-after'])) return;
        }
        finish();
      },
      fail(err) {
        finish(new UnbrokenError('network_error', (err && err.errMsg) || 'request failed', { retryable: true }));
      },
    }) as MpRequestTask | undefined;
    if (!task || typeof task.onChunkReceived !== 'function') {
      // No chunk API after all (e.g. uni App-Vue): fail now; the bounded window frees the request.
      setTimeout(() => finish(new UnbrokenError('no_transport', 'request has no onChunkReceived here', { retryable: true })), 0);
      return { close: () => void (closed = true) };
    }
    if (typeof task.onHeadersReceived === 'function') {
      task.onHeadersReceived((res) => {
        status = Number(res.statusCode);
      });
    }
    task.onChunkReceived((res) => {
      // A non-2xx body also arrives in chunks on wx; success() reports it whole.
      if (status && status !== 200) return;
      chunks++;
      push(res.data);
    });
    return {
      close() {
        closed = true;
        // On uni App-Vue abort() only rejects in JS; the window bound is what frees the slot.
        if (typeof task.abort === 'function') task.abort();
      },
    };
  },
};

function decodeBody(data: unknown): string {
  if (typeof data === 'string') return data;
  if (data == null) return '';
  const bytes = data instanceof Uint8Array ? data : data instanceof ArrayBuffer ? new Uint8Array(data) : undefined;
  if (!bytes) return JSON.stringify(data);
  // Reuse the incremental decoder: no TextDecoder on mini-program devices.
  return new Utf8Decoder().decode(bytes);
}
