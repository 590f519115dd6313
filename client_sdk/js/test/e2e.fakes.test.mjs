// The SDK on faithful fakes of uni-app (App, H5, mp-weixin), WeChat and Alipay runtimes, against
// a real broker. `auto` must pick a working transport on each and deliver everything once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { SSEChannel } from '../dist/esm/index.js';
import { startBroker, pythonWrite, collect, assertExactlyOnce, until, REPO } from './helpers.mjs';
import { wxRuntime, uniMpWeixinRuntime, uniAppRuntime, uniH5Runtime, alipayRuntime, douyinRuntime } from './fakes/runtimes.mjs';

let broker;
const picked = {};
before(async () => {
  broker = await startBroker({ heartbeat: 1 });
});
after(async () => {
  await broker?.stop();
  // Recorded for the closing note: which transport `auto` chose per runtime.
  const dir = join(REPO, 'test-artifacts');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'js-auto-transports.json'), JSON.stringify(picked, null, 2) + '\n');
});

const RUNTIMES = [
  [wxRuntime, 'mp-request'],
  [uniMpWeixinRuntime, 'mp-request'],
  [uniAppRuntime, 'websocket'],
  [uniH5Runtime, 'fetch'],
  [alipayRuntime, 'websocket'],
  [douyinRuntime, 'websocket'],
];

const channel = (rt, extra = {}) =>
  new SSEChannel({ broker: broker.url, env: rt.env, timeouts: { poll: 2, ...(extra.timeouts || {}) }, backoff: { base: 50, max: 500 }, ...extra });

for (const [make, expected] of RUNTIMES) {
  test(`auto on ${make().name}: picks a working transport, delivers 300 + end exactly once`, async (t) => {
    const rt = make();
    const ch = channel(rt);
    await ch.open();
    const c = collect(ch, { timeout: 30000 });
    await pythonWrite(ch.toJSON(), 300);
    assert.deepEqual(await c.done, { done: 300 });
    assertExactlyOnce(assert, c.messages, 300);
    picked[rt.name] = { transport: ch.transport, adapter: ch.adapter };
    t.diagnostic(`auto on ${rt.name} chose ${ch.transport} (${ch.adapter})`);
    assert.equal(ch.adapter, expected);
  });
}

test('wx: bounded windows keep every request under the ~60 s cut (cut scaled to 1.5 s)', async () => {
  const rt = wxRuntime({ capMs: 1500 });
  const ch = channel(rt, { timeouts: { window: 1 } });
  await ch.open();
  const errors = [];
  ch.on('error', (e) => errors.push(e));
  const c = collect(ch, { timeout: 30000 });
  await pythonWrite(ch.toJSON(), 300, { delay: 0.01 }); // ~3+ s of streaming
  await c.done;
  assertExactlyOnce(assert, c.messages, 300);
  assert.ok(rt.req.stats.chunkedStarted >= 3, `several windows: ${rt.req.stats.chunkedStarted}`);
  assert.equal(errors.length, 0);
});

test('wx: a request cut by the host mid-stream resumes from the last id', async () => {
  const rt = wxRuntime({ capMs: 700 });
  const ch = channel(rt); // window 50 s: the host cut comes first
  await ch.open();
  const c = collect(ch, { timeout: 30000 });
  await pythonWrite(ch.toJSON(), 300, { delay: 0.008 });
  await c.done;
  assertExactlyOnce(assert, c.messages, 300);
  assert.ok(rt.req.stats.chunkedStarted >= 2);
});

for (const make of [wxRuntime, uniAppRuntime]) {
  test(`${make().name}: background interruption (5 s after hide, scaled) then show resumes without loss`, async () => {
    const rt = make({ interruptAfterMs: 200 });
    const ch = channel(rt);
    await ch.open();
    let hidden = false;
    const c = collect(ch, {
      timeout: 30000,
      onMessage: (_d, n) => {
        if (n === 100 && !hidden) {
          hidden = true;
          rt.host.hide();
          setTimeout(() => rt.host.show(), 1500);
        }
      },
    });
    await pythonWrite(ch.toJSON(), 400, { delay: 0.005 });
    await c.done;
    assert.ok(hidden);
    assertExactlyOnce(assert, c.messages, 400);
  });
}

test('wx: silent hang (iOS: network drops, no callback at all) is caught by the watchdog', async () => {
  const rt = wxRuntime();
  const ch = channel(rt);
  await ch.open();
  let hangAt = 0;
  let startedAtHang = 0;
  let gap = 0;
  ch.on('state', (st) => {
    if (st === 'reconnecting' && hangAt && !gap) gap = Date.now() - hangAt;
  });
  const c = collect(ch, {
    timeout: 30000,
    onMessage: (_d, n) => {
      if (n === 100) {
        hangAt = Date.now();
        startedAtHang = rt.req.stats.started;
        rt.req.hangAll();
      }
    },
  });
  await pythonWrite(ch.toJSON(), 300, { delay: 0.003 });
  await c.done;
  assertExactlyOnce(assert, c.messages, 300);
  assert.ok(gap >= 2000, `reconnected ${gap} ms after the hang: by the watchdog (2.5 x 1 s heartbeat), nothing else noticed`);
});

test('uni App: auto never starts a chunked request (abort would not free it); poll close is bounded', async () => {
  const rt = uniAppRuntime();
  const ch = channel(rt, { transport: 'poll', timeouts: { poll: 2 } });
  await ch.open();
  const c = collect(ch, { timeout: 30000 });
  await pythonWrite(ch.toJSON(), 200);
  await c.done;
  assertExactlyOnce(assert, c.messages, 200);
  assert.equal(rt.req.stats.chunkedStarted, 0);
  // A poll waiting on an idle channel, then close(): abort() is JS-only on App, the native
  // request stays until the broker's hold (2 s) ends it; nothing relies on abort to free it.
  const idle = channel(rt, { transport: 'poll', timeouts: { poll: 2 } });
  const before = rt.req.stats.started;
  await idle.open();
  // The first poll holds 1 s (the first-byte probe); the second is the full 2 s hold.
  await until(() => rt.req.stats.started >= before + 3, { timeout: 10000, what: 'the second long-poll' });
  idle.close();
  assert.equal(rt.req.stats.nativeOpen, 1, 'native request still open after abort');
  await until(() => rt.req.stats.nativeOpen === 0, { timeout: 5000, what: 'the bounded hold to end the native request' });
});

test('wx base library < 2.20.1 with the 5-socket limit: auto falls back socket -> poll', async () => {
  const rt = wxRuntime({ baseLibrary: '2.10.0' });
  const chans = [];
  for (let i = 0; i < 6; i++) {
    const ch = channel(rt, { timeouts: { firstByte: 1500, poll: 2 } });
    await ch.open();
    chans.push([ch, collect(ch, { timeout: 30000 })]);
  }
  await Promise.all(chans.map(([ch]) => pythonWrite(ch.toJSON(), 50)));
  for (const [, c] of chans) {
    await c.done;
    assertExactlyOnce(assert, c.messages, 50);
  }
  const used = chans.map(([ch]) => ch.adapter).sort();
  assert.equal(rt.sock.stats.refused >= 1, true, 'the 6th socket was refused');
  assert.deepEqual(used, ['poll', 'websocket', 'websocket', 'websocket', 'websocket', 'websocket']);
});

test('uni H5 forced chunked: Uint8Array chunks, killed at timeout, still exact', async () => {
  const rt = uniH5Runtime();
  const ch = channel(rt, { transport: 'chunked', timeouts: { window: 1 } });
  await ch.open();
  const c = collect(ch, { timeout: 30000 });
  await pythonWrite(ch.toJSON(), 300, { delay: 0.005 });
  await c.done;
  assertExactlyOnce(assert, c.messages, 300);
});

test('wx: open() whose POST is interrupted in background (fail interrupted) is sent again on show', async () => {
  const { startProxy } = await import('./helpers.mjs');
  const px = await startProxy(broker.port);
  try {
    const rt = wxRuntime({ interruptAfterMs: 100 });
    const ch = new SSEChannel({ broker: px.url, env: rt.env, timeouts: { poll: 2 }, backoff: { base: 50, max: 500 } });
    px.pause(); // the POST reaches nothing while the user switches away
    let failed;
    const started = rt.req.stats.started;
    const opening = ch.open().catch((e) => (failed = e));
    await until(() => rt.req.stats.started === started + 1, { what: 'the POST' });
    rt.host.hide(); // WeChat interrupts requests of a hidden app ("request:fail interrupted")
    await until(() => rt.host.interruptedNow, { what: 'the interruption' });
    px.resume();
    rt.host.show();
    await opening;
    assert.equal(failed, undefined, 'open() did not reject: ' + (failed && failed.code));
    assert.ok(rt.req.stats.started >= started + 2, 'the POST was sent again');
    const c = collect(ch, { timeout: 30000 });
    await pythonWrite(ch.toJSON(), 50);
    await c.done;
    assertExactlyOnce(assert, c.messages, 50);
  } finally {
    await px.close();
  }
});
