import { UnbrokenError, retryableStatus } from '../errors.js';
import { withQuery } from '../http.js';
import type { Host, MpSocketTask } from '../host.js';
import type { Transport, WireEvent } from './types.js';

/**
 * WebSocket, the one push transport every runtime has: the global/`ws` constructor (browsers,
 * React Native, Node with the optional `ws` peer) or `uni/wx/my/tt.connectSocket`. Frames are
 * one JSON object each; `{"type":"ping"}` is the application-level heartbeat because
 * mini-program socket APIs do not expose protocol pings.
 */
export const webSocketTransport: Transport = {
  name: 'websocket',
  wire: 'ws',
  supported: (host) => typeof host.env.WebSocket === 'function' || !!(host.mp && host.mp.connectSocket),
  connect(host, req, on) {
    let closed = false;
    let rejected: UnbrokenError | undefined;
    let frames = 0;
    const url = withQuery(toWs(req.urls.ws), { token: req.token, last_event_id: req.lastEventId });
    const finish = (err?: UnbrokenError) => {
      if (closed) return;
      closed = true;
      on.closed(err);
    };
    const message = (data: unknown) => {
      if (closed) return;
      frames++;
      on.activity();
      let frame: { type?: string; id?: string; data?: unknown; first_id?: string; reason?: string; error?: { code: string; message: string } };
      try {
        frame = JSON.parse(typeof data === 'string' ? data : '') as typeof frame;
      } catch {
        return finish(new UnbrokenError('protocol_error', 'WebSocket frame is not JSON', { retryable: true }));
      }
      const wire = frameToWire(frame, (err) => (rejected = err));
      if (wire) on.event(wire);
    };
    const onClose = (code: number | undefined, reason: string | undefined) => {
      if (rejected) return finish(rejected);
      if (code !== undefined && code >= 4000 && code < 5000) {
        const status = code - 4000;
        return finish(new UnbrokenError('http_error', reason || 'rejected with ' + status, { status, retryable: retryableStatus(status) }));
      }
      if (code === 1000 && frames === 0) {
        // The broker's answer to a reader whose position is at the channel's end (as HTTP 204).
        on.activity();
        on.event({ type: 'end', data: null });
        return finish();
      }
      // 1000 after end/error is normal; anything else (1006, 'interrupted') means resume.
      finish(code === 1000 ? undefined : new UnbrokenError('network_error', 'WebSocket closed: ' + code + ' ' + (reason || ''), { retryable: true }));
    };
    const sock = open(host, url, req.headers, {
      open: () => on.activity(),
      message,
      close: onClose,
      error: (msg) => finish(new UnbrokenError('network_error', 'WebSocket error: ' + msg, { retryable: true })),
    });
    return {
      close() {
        closed = true;
        sock.close();
      },
    };
  },
};

function frameToWire(
  f: { type?: string; id?: string; data?: unknown; first_id?: string; reason?: string; error?: { code: string; message: string } },
  reject: (e: UnbrokenError) => void,
): WireEvent | undefined {
  switch (f.type) {
    case 'message':
    case 'end':
    case 'error':
    case 'cancelled':
      return { type: f.type, id: f.id, data: f.data };
    case 'gap':
      return { type: 'gap', data: { first_id: f.first_id } };
    case 'reconnect':
      return { type: 'reconnect', data: { reason: f.reason } };
    case 'rejected': {
      const e = f.error || { code: 'http_error', message: 'rejected' };
      reject(new UnbrokenError(e.code, e.message, { retryable: false }));
      return undefined;
    }
    default:
      return undefined; // ping and future frame types
  }
}

interface SocketHandlers {
  open(): void;
  message(data: unknown): void;
  close(code: number | undefined, reason: string | undefined): void;
  error(msg: string): void;
}

function open(host: Host, url: string, headers: Record<string, string>, h: SocketHandlers): { close(): void } {
  const Ctor = host.env.WebSocket;
  if (Ctor) {
    // Browsers cannot set headers (the token is in the query); `ws` and React Native take them.
    const ws = Object.keys(headers).length ? new Ctor(url, undefined, { headers }) : new Ctor(url);
    ws.onopen = () => h.open();
    ws.onmessage = (ev) => h.message(ev.data);
    ws.onclose = (ev) => h.close(ev.code, ev.reason);
    ws.onerror = () => h.error('error event');
    return { close: () => closeQuietly(() => ws.close(1000)) };
  }
  // `complete` must be passed or uni returns a Promise instead of the SocketTask; Alipay needs
  // `multiple: true` or it allows one global socket only.
  let failed = false;
  const task = host.mp!.connectSocket!({
    url,
    header: headers,
    multiple: true,
    fail: (err) => {
      failed = true;
      h.error((err && err.errMsg) || 'connectSocket failed');
    },
    complete: () => {},
  }) as MpSocketTask | undefined;
  if (!task || typeof task.onOpen !== 'function') {
    if (!failed) setTimeout(() => h.error('connectSocket returned no SocketTask'), 0);
    return { close: () => {} };
  }
  task.onOpen(() => h.open());
  task.onMessage((res) => h.message(res.data));
  task.onClose((res) => h.close(res && res.code, res && res.reason));
  task.onError((res) => h.error((res && res.errMsg) || 'socket error'));
  return { close: () => closeQuietly(() => task.close({ code: 1000 })) };
}

function closeQuietly(fn: () => void): void {
  try {
    fn();
  } catch {
    // Closing a socket that never opened throws in some hosts; it is gone either way.
  }
}

function toWs(url: string): string {
  return url.replace(/^http(s?):/, 'ws$1:');
}

