// Shared host state of a fake mini-program / uni runtime: lifecycle (show/hide), WeChat's
// suspension (callbacks queued while in background), and a seeded RNG so failures replay.
//
// WeChat operating mechanism (https://developers.weixin.qq.com/miniprogram/dev/framework/runtime/operating-mechanism.html):
// 5 s after going to background the mini-program is suspended; "事件和接口回调会在小程序再次进入
// 「前台」时触发" - callbacks queue up and are delivered when it returns. Network
// (https://developers.weixin.qq.com/miniprogram/dev/framework/ability/network.html): unfinished
// requests fail with "fail interrupted" after 5 s in background; sockets close (reason "interrupted").

export function rng(seed = 42) {
  // mulberry32
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class FakeHost {
  constructor({ interruptAfterMs = 5000, seed = 42 } = {}) {
    this.interruptAfterMs = interruptAfterMs;
    this.random = rng(seed);
    this.hidden = false;
    this.suspended = false;
    this.queue = [];
    this.showFns = [];
    this.hideFns = [];
    this.inflight = new Set(); // {interrupt()} for requests and sockets
    this.log = [];
  }

  /** Run a host callback, or queue it while suspended (WeChat background). */
  dispatch(fn) {
    if (this.suspended) this.queue.push(fn);
    else setImmediate(fn);
  }

  onAppShow(fn) { this.showFns.push(fn); }
  offAppShow(fn) { this.showFns = fn ? this.showFns.filter((f) => f !== fn) : []; }
  onAppHide(fn) { this.hideFns.push(fn); }
  offAppHide(fn) { this.hideFns = fn ? this.hideFns.filter((f) => f !== fn) : []; }

  hide() {
    this.hidden = true;
    for (const f of this.hideFns.slice()) f({ reason: 0 });
    this.hideTimer = setTimeout(() => {
      for (const item of [...this.inflight]) item.interrupt();
      this.suspended = true;
    }, this.interruptAfterMs);
  }

  show() {
    clearTimeout(this.hideTimer);
    this.hidden = false;
    this.suspended = false;
    // The backlog of stale callbacks arrives first, then onAppShow.
    const backlog = this.queue.splice(0);
    for (const fn of backlog) fn();
    for (const f of this.showFns.slice()) f({ path: 'pages/index/index', scene: 1001 });
  }

  get interruptedNow() {
    return this.hidden && this.suspended;
  }
}
