// Every Node transport against a real broker (python -m broker serve --engine memory): 1000
// messages + end exactly once; a connection cut mid-stream; a silent hang caught by the watchdog.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { SSEChannel, deserializeChannel } from '../dist/esm/index.js';
import { startBroker, startProxy, pythonWrite, collect, assertExactlyOnce, until } from './helpers.mjs';

let broker;
let proxy;
before(async () => {
  // Heartbeat 1 s so the default watchdog (2.5 x heartbeat) trips in 2.5 s.
  broker = await startBroker({ heartbeat: 1 });
  proxy = await startProxy(broker.port);
});
after(async () => {
  await proxy?.close();
  await broker?.stop();
});

const TRANSPORTS = ['fetch', 'websocket', 'poll'];
const opts = (transport) => ({ broker: proxy.url, transport, WebSocket, timeouts: { poll: 2 }, backoff: { base: 50, max: 500 } });

for (const transport of TRANSPORTS) {
  test(`${transport}: 1000 messages + end, exactly once and in order`, async () => {
    const ch = new SSEChannel(opts(transport));
    await ch.open();
    const c = collect(ch, { timeout: 60000 });
    await pythonWrite(ch.toJSON(), 1000);
    const end = await c.done;
    assertExactlyOnce(assert, c.messages, 1000);
    assert.deepEqual(end, { done: 1000 });
    assert.deepEqual([...c.adapters], [transport]);
    assert.deepEqual([...c.transports], [{ fetch: 'sse', websocket: 'ws', poll: 'poll' }[transport]]);
    assert.equal(ch.state, 'ended');
  });

  test(`${transport}: connection killed mid-stream resumes without loss or duplicates`, async () => {
    const ch = new SSEChannel(opts(transport));
    await ch.open();
    const states = [];
    ch.on('state', (s) => states.push(s));
    let cut = false;
    const c = collect(ch, {
      timeout: 60000,
      onMessage: (_d, n) => {
        if (n === 300 && !cut) {
          cut = true;
          proxy.cut();
        }
      },
    });
    await pythonWrite(ch.toJSON(), 1000, { delay: 0.001 });
    await c.done;
    assert.ok(cut, 'the proxy cut the connection');
    assertExactlyOnce(assert, c.messages, 1000);
    assert.ok(states.includes('reconnecting'), 'went through reconnecting: ' + states.join(','));
  });

  test(`${transport}: silent hang (socket open, bytes stop) is caught by the watchdog and resumed`, async () => {
    const ch = new SSEChannel(opts(transport));
    await ch.open();
    let hungAt = 0;
    let noticedAfter = 0;
    // Only the watchdog can notice a hang: the line reports nothing. It fires `idle` after the
    // last byte (2.5 x the broker's 1 s heartbeat), plus the poll hold for long-poll.
    const idle = 2500 + (transport === 'poll' ? 2000 : 0);
    ch.on('state', (s) => {
      if (s === 'reconnecting' && hungAt && !noticedAfter) noticedAfter = Date.now() - hungAt;
    });
    const c = collect(ch, {
      timeout: 60000,
      onMessage: (_d, n) => {
        if (n === 200 && !hungAt) {
          hungAt = Date.now();
          proxy.hangCurrent();
        }
      },
    });
    const errors = [];
    ch.on('error', (e) => errors.push(e));
    await pythonWrite(ch.toJSON(), 400, { delay: 0.002 });
    await c.done;
    assertExactlyOnce(assert, c.messages, 400);
    assert.ok(hungAt > 0);
    // The last byte came at or after hungAt, so the watchdog cannot have fired before hungAt + idle.
    assert.ok(noticedAfter >= idle - 20, `reconnected ${noticedAfter} ms after the hang: only the watchdog (${idle} ms) can notice it`);
    assert.ok(noticedAfter < idle + 3000, `the watchdog fired late: ${noticedAfter} ms`);
    assert.equal(errors.length, 0, 'a hang is recovered, not reported: ' + errors.map((e) => e.code));
  });
}

test('auto in Node picks fetch, i.e. the sse wire transport', async () => {
  const ch = new SSEChannel({ broker: proxy.url, WebSocket });
  await ch.open();
  const c = collect(ch);
  await pythonWrite(ch.toJSON(), 50);
  await c.done;
  assertExactlyOnce(assert, c.messages, 50);
  assert.equal(ch.adapter, 'fetch');
  assert.equal(ch.transport, 'sse');
});

test('writer: deserializeChannel writes, batches and ends with retry-safe writer/seq', async () => {
  const ch = new SSEChannel({ broker: broker.url, transport: 'fetch' });
  await ch.open();
  const c = collect(ch);
  const text = JSON.stringify(ch);
  const w = deserializeChannel(text);
  assert.equal(w.channel, ch.id);
  const r1 = await w.write({ i: 0, text: 'héllo ✓ 🚀 0' });
  assert.equal(r1.duplicate, false);
  assert.equal(r1.ids.length, 1);
  await w.writeMany([1, 2, 3].map((i) => ({ i, text: 'héllo ✓ 🚀 ' + i })));
  // A retry of an already-stored request (same writer, same seq) is recognised as a duplicate.
  const again = deserializeChannel(JSON.parse(text), { writer: w.writer, firstSeq: 1 });
  const dup = await again.write({ i: 0, text: 'should not appear' });
  assert.equal(dup.duplicate, true);
  // The bare write JWT works too (it carries ch and url).
  const bare = deserializeChannel(JSON.parse(text).token);
  assert.equal(bare.channel, ch.id);
  await w.end('bye');
  assert.equal(await c.done, 'bye');
  assertExactlyOnce(assert, c.messages, 4);
  await assert.rejects(w.write('late'), (e) => e.code === 'channel_ended' && e.status === 409);
});

test('writer error() ends the channel; readers get a channel_error', async () => {
  const ch = new SSEChannel({ broker: broker.url, transport: 'websocket', WebSocket });
  await ch.open();
  const errP = new Promise((r) => ch.on('error', r));
  await deserializeChannel(ch).error(new Error('upstream failed'));
  const err = await errP;
  assert.equal(err.code, 'channel_error');
  assert.equal(err.data.message, 'upstream failed');
  assert.equal(ch.state, 'ended');
});

for (const transport of TRANSPORTS) {
  test(`${transport}: a rejected token is a typed, final error (no retry loop)`, async () => {
    // Hand the SDK a read token with a broken signature, as if it had been tampered with.
    const realFetch = globalThis.fetch;
    let streamRequests = 0;
    const fetchWithBadToken = async (url, init) => {
      if (!url.endsWith('/v1/channels')) streamRequests++;
      const res = await realFetch(url, init);
      if (!url.endsWith('/v1/channels')) return res;
      const body = await res.json();
      body.read_token = body.read_token.slice(0, -4) + 'AAAA';
      return { status: res.status, headers: res.headers, text: async () => JSON.stringify(body) };
    };
    const env = { fetch: fetchWithBadToken, AbortController, ReadableStream, WebSocket };
    const ch = new SSEChannel({ broker: broker.url, transport, env });
    const errP = new Promise((r) => ch.on('error', r));
    await ch.open();
    const err = await errP;
    assert.equal(err.code, 'token_invalid');
    assert.equal(ch.state, 'closed');
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(streamRequests <= 1, 'no retries after a final error');
  });
}

test('writer: a write whose answer was lost is retried with the same seq and stored once', async () => {
  const ch = new SSEChannel({ broker: broker.url, transport: 'fetch' });
  await ch.open();
  const c = collect(ch);
  // The backend reaches the broker through a proxy that loses the next two answers.
  const lossy = await startProxy(broker.port);
  try {
    const token = { ...ch.toJSON(), broker: lossy.url };
    const w = deserializeChannel(token, { retries: 5 });
    await w.write({ i: 0, text: 'héllo ✓ 🚀 0' });
    lossy.swallowResponses(2);
    const r = await w.write({ i: 1, text: 'héllo ✓ 🚀 1' }); // stored by attempt 1, answered to attempt 3
    assert.equal(r.duplicate, true, 'the retry was recognised as already stored');
    await w.write({ i: 2, text: 'héllo ✓ 🚀 2' });
    await w.end(null);
    await c.done;
    assertExactlyOnce(assert, c.messages, 3);
  } finally {
    await lossy.close();
  }
});

test('gap: history trimmed while the reader was away is announced, then the rest is replayed', async () => {
  const small = await startBroker({ heartbeat: 1, extra: ['--max-messages', '10'] });
  const px = await startProxy(small.port);
  try {
    const ch = new SSEChannel({ broker: px.url, transport: 'fetch' });
    await ch.open();
    const gaps = [];
    ch.on('gap', (g) => gaps.push(g));
    const c = collect(ch, { timeout: 30000 });
    const w = deserializeChannel({ ...ch.toJSON(), broker: small.url });
    for (let i = 0; i < 5; i++) await w.write(i);
    while (c.messages.length < 5) await new Promise((r) => setTimeout(r, 20));
    px.hangCurrent(); // the reader goes silent; the watchdog will bring it back
    for (let i = 5; i < 40; i++) await w.write(i);
    await w.end(null);
    await c.done;
    assert.equal(gaps.length, 1, 'one gap notice');
    assert.ok(typeof gaps[0].first_id === 'string');
    // The first 5, then what the broker still keeps (the last 10 events: 31..39 and the end).
    assert.deepEqual(c.messages.slice(0, 5), [0, 1, 2, 3, 4]);
    assert.deepEqual(c.messages.slice(5), [31, 32, 33, 34, 35, 36, 37, 38, 39]);
  } finally {
    await px.close();
    await small.stop();
  }
});

test('open policy "key": the token provider supplies the app key; without it open() fails typed', async () => {
  const keyed = await startBroker({ extra: ['--open-policy', 'key', '--app-key', 'sekret-app-key'] });
  try {
    const denied = new SSEChannel({ broker: keyed.url });
    await assert.rejects(denied.open(), (e) => e.code === 'app_key_required' && e.status === 401);
    const wrong = new SSEChannel({ broker: keyed.url, token: 'nope' });
    await assert.rejects(wrong.open(), (e) => e.code === 'app_key_invalid' && e.status === 403);
    const ch = new SSEChannel({ broker: keyed.url, name: 'keyed-chat-1', token: async () => 'sekret-app-key' });
    await ch.open();
    assert.equal(ch.id, 'keyed-chat-1');
    const c = collect(ch);
    await pythonWrite(ch.toJSON(), 20);
    await c.done;
    assertExactlyOnce(assert, c.messages, 20);
    const again = new SSEChannel({ broker: keyed.url, name: 'keyed-chat-1', token: 'sekret-app-key' });
    await assert.rejects(again.open(), (e) => e.code === 'channel_exists' && e.status === 409);
  } finally {
    await keyed.stop();
  }
});

test('after a fallback the preferred transport comes back: one socket error does not pin the channel to long-poll', async () => {
  // A proxy that refuses WebSocket upgrades while `blockWs` is set (a middlebox hiccup), and
  // counts long-poll requests.
  const net = await import('node:net');
  let blockWs = true;
  let polls = 0;
  const server = net.createServer((client) => {
    client.once('data', (first) => {
      const head = first.toString('latin1');
      if (/^GET [^ ]*\/poll/.test(head)) polls++;
      if (blockWs && /upgrade: websocket/i.test(head)) return client.destroy();
      const upstream = net.connect(broker.port, '127.0.0.1', () => upstream.write(first));
      client.pipe(upstream).pipe(client);
      const end = () => (client.destroy(), upstream.destroy());
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  try {
    const ch = new SSEChannel({
      broker: `http://127.0.0.1:${server.address().port}`,
      transport: ['websocket', 'poll'],
      WebSocket,
      timeouts: { poll: 2, upgrade: 300 },
      backoff: { base: 50, max: 500 },
    });
    const adapters = [];
    ch.on('transport', (_wire, adapter) => adapters.push(adapter));
    await ch.open();
    const c = collect(ch, { timeout: 60000 });
    const writing = pythonWrite(ch.toJSON(), 1000, { delay: 0.002 });
    await until(() => ch.adapter === 'poll', { timeout: 10000, what: 'the fallback to long-poll' });
    blockWs = false; // the hiccup is over
    await until(() => ch.adapter === 'websocket', { timeout: 10000, what: 'the way back to WebSocket' });
    const pollsAtReturn = polls;
    await writing;
    await c.done;
    assertExactlyOnce(assert, c.messages, 1000);
    assert.deepEqual(adapters.slice(0, 2), ['poll', 'websocket']);
    assert.equal(polls, pollsAtReturn, 'no long-poll once WebSocket works again');
  } finally {
    await new Promise((r) => server.close(r));
  }
});

/** A ChannelStorage over a Map (what uni.setStorageSync / localStorage give an app). */
function mapStorage(data = new Map()) {
  return { data, get: (k) => data.get(k), set: (k, v) => data.set(k, v), remove: (k) => data.delete(k) };
}

for (const fromStart of [false, true]) {
  test(`resume after an app restart (persist + restore${fromStart ? ', fromStart' : ''}): the rest of the answer, exactly once`, async () => {
    const disk = mapStorage();
    const first = new SSEChannel({ broker: broker.url, transport: 'fetch', persist: 'answer', storage: disk });
    const before = [];
    first.on('message', (d) => before.push(d));
    await first.open();
    const w = deserializeChannel(first);
    for (let i = 0; i < 5; i++) await w.write(i);
    await until(() => before.length === 5, { what: 'the first 5 messages' });
    // The app is killed here: only what was on disk survives (close() would forget the record).
    const survived = mapStorage(new Map(disk.data));
    first.close();
    for (let i = 5; i < 10; i++) await w.write(i); // the backend keeps writing meanwhile
    await w.end('done');
    const again = SSEChannel.restore({ broker: broker.url, transport: 'websocket', WebSocket, persist: 'answer', storage: survived, fromStart });
    assert.ok(again, 'the saved channel was found');
    const c = collect(again);
    await again.open();
    assert.equal(await c.done, 'done');
    assert.deepEqual(c.messages, fromStart ? [...before, 5, 6, 7, 8, 9] : [5, 6, 7, 8, 9]);
    assert.equal(survived.data.size, 0, 'forgotten once the answer ended');
  });
}

test('reconnect() resumes a frozen line at once (App.vue onShow), long before the watchdog', async () => {
  // Opened directly, read through the proxy: the stream is the only proxied connection (a frozen
  // idle keep-alive connection in fetch's pool would stall the next request, a different fault).
  const opener = new SSEChannel({ broker: broker.url, transport: 'fetch' });
  await opener.open();
  opener.close();
  const ch = SSEChannel.attach({ broker: proxy.url, channel: opener.id, readToken: opener.readToken, transport: 'fetch', timeouts: { idle: 60000 } });
  const c = collect(ch);
  await ch.open();
  const w = deserializeChannel(opener);
  await w.write(0);
  await until(() => c.messages.length === 1);
  proxy.hangCurrent(); // frozen: only reconnect() (or a 60 s watchdog) can bring it back
  await w.write(1);
  await w.end(null);
  const t0 = Date.now();
  ch.reconnect();
  await c.done;
  assert.deepEqual(c.messages, [0, 1]);
  assert.ok(Date.now() - t0 < 5000, `resumed ${Date.now() - t0} ms after reconnect()`);
});
