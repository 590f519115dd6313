// Fake `wx.connectSocket` / `uni.connectSocket` / `my.connectSocket` on the `ws` package.
//
// Documentation followed:
// - wx.connectSocket / SocketTask: https://developers.weixin.qq.com/miniprogram/dev/api/network/websocket/wx.connectSocket.html
//   (`success` means the task was created, not opened; onOpen fires later; send before open fails
//   "sendSocketMessage:fail WebSocket is not connected"; at most 5 concurrent sockets since base
//   library 1.7.0; closed ~5 s after going to background, reason "interrupted").
// - uni.connectSocket: https://uniapp.dcloud.net.cn/api/request/websocket.html (returns a SocketTask
//   only when success/fail/complete is passed; uni-push 2.0 in a mini-program takes one of the 5
//   socket slots; H5 ignores `header`). App-Vue source (packages/uni-app-plus/src/service/api/
//   network/socket.ts): readyState starts at CLOSED (3).
// - tt.connectSocket: https://developer.open-douyin.com/docs/resource/zh-CN/developer/tools/cloud/function-service/websocket-guide/ws
// - my.connectSocket: https://opendocs.alipay.com/mini/api/vx19c3 (one socket unless multiple:true).
import WebSocket from 'ws';

export const SOCKET_PROFILES = {
  wx: { max: 5, reserved: 0, promise: false, headers: true, needsMultiple: false },
  'uni-mp-weixin': { max: 5, reserved: 1 /* uni-push */, promise: true, headers: true, needsMultiple: false },
  'uni-app': { max: Infinity, reserved: 0, promise: true, headers: true, initialReadyState: 3, needsMultiple: false },
  'uni-h5': { max: Infinity, reserved: 0, promise: true, headers: false, needsMultiple: false },
  my: { max: 5, reserved: 0, promise: false, headers: true, needsMultiple: true },
  // tt.connectSocket: at most 5, dropped 5 s after going to background (cloud websocket guide).
  tt: { max: 5, reserved: 0, promise: false, headers: true, needsMultiple: false },
};

export function makeConnectSocket(host, profileName, overrides = {}) {
  const p = { ...SOCKET_PROFILES[profileName], ...overrides };
  const stats = { opened: 0, open: 0, refused: 0 };
  let single = null;

  function connectSocket(opts) {
    const hasCb = !!(opts.success || opts.fail || opts.complete);
    if (p.promise && !hasCb) return Promise.resolve({ errMsg: 'connectSocket:ok' }); // no task
    const fns = { open: [], message: [], close: [], error: [] };
    const emit = (k, v) => host.dispatch(() => fns[k].forEach((f) => f(v)));
    const task = {
      readyState: p.initialReadyState ?? 0,
      onOpen: (f) => fns.open.push(f),
      onMessage: (f) => fns.message.push(f),
      onClose: (f) => fns.close.push(f),
      onError: (f) => fns.error.push(f),
      send({ data, fail }) {
        if (!ws || ws.readyState !== 1) return fail && host.dispatch(() => fail({ errMsg: 'sendSocketMessage:fail WebSocket is not connected' }));
        ws.send(data);
      },
      close({ code = 1000, reason = '' } = {}) {
        if (ws) ws.close(code, reason);
      },
    };
    const refuse = (errMsg) => {
      stats.refused++;
      host.dispatch(() => {
        opts.fail && opts.fail({ errMsg });
        opts.complete && opts.complete({ errMsg });
      });
      return task;
    };
    if (host.interruptedNow) return refuse('connectSocket:fail interrupted');
    if (stats.open + p.reserved >= p.max) return refuse(`connectSocket:fail exceed max task count ${p.max}`);
    if (p.needsMultiple && !opts.multiple && single) return refuse('connectSocket:fail single instance only');
    let ws;
    ws = new WebSocket(opts.url, { headers: p.headers ? opts.header : undefined });
    stats.opened++;
    stats.open++;
    let counted = true;
    const release = () => {
      if (counted) stats.open--;
      counted = false;
      host.inflight.delete(entry);
    };
    if (!opts.multiple) single = task;
    const entry = {
      interrupt() {
        // WeChat background: closed with 1000 "interrupted", reported after the app returns.
        release();
        ws.terminate();
        emit('close', { code: 1000, reason: 'interrupted' });
      },
      hang() {
        ws.removeAllListeners('message');
        ws.on('message', () => {});
      },
    };
    host.inflight.add(entry);
    ws.on('open', () => {
      task.readyState = 1;
      emit('open', { header: {} });
    });
    ws.on('message', (data, isBinary) => emit('message', { data: isBinary ? new Uint8Array(data).buffer : data.toString('utf8') }));
    ws.on('close', (code, reason) => {
      task.readyState = 3;
      if (!counted) return;
      release();
      emit('close', { code, reason: reason.toString() });
    });
    ws.on('error', (e) => emit('error', { errMsg: 'socket error: ' + e.message }));
    host.dispatch(() => {
      opts.success && opts.success({ errMsg: 'connectSocket:ok' });
      opts.complete && opts.complete({ errMsg: 'connectSocket:ok' });
    });
    return task;
  }
  return { connectSocket, stats };
}
