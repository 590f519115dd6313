// The channel's state machine, fallback, watchdog, dedupe and iteration, driven through a
// scripted in-memory fetch (no broker): every stream request hands the test a controller.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SSEChannel, State, TransportMemory, UnbrokenError } from '../dist/esm/index.js';
import { until } from './helpers.mjs';

import { OPEN, scriptedEnv, ev } from './fakes/scripted.mjs';

test('states: connecting -> open -> reconnecting -> open -> ended; resume from last id, no duplicates', async () => {
  const { env, nextStream } = scriptedEnv();
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'fetch', backoff: { base: 10, max: 20 } });
  const states = [];
  const got = [];
  ch.on('state', (s) => states.push(s));
  ch.on('message', (d, meta) => got.push([d, meta.id, meta.transport]));
  await ch.open();
  assert.deepEqual(JSON.parse(JSON.stringify(ch)), OPEN.channel_token);
  const s1 = await nextStream(1);
  assert.equal(s1.headers.Authorization, 'Bearer RT');
  s1.push('retry: 1000\n\n' + ev('1-0', 'a') + ev('2-0', 'b').slice(0, 9));
  await until(() => got.length === 1);
  s1.fail();
  const s2 = await nextStream(2);
  assert.match(s2.url, /last_event_id=1-0/);
  s2.push(ev('1-0', 'a') + ev('2-0', 'b') + ': hb\n\n' + ev('3-0', 'c'));
  s2.push(ev('4-0', { done: true }, 'end'));
  await until(() => ch.state === 'ended');
  // `transport` is the wire transport (the broker's name), `adapter` how this host spoke it.
  assert.deepEqual(got, [['a', '1-0', 'sse'], ['b', '2-0', 'sse'], ['c', '3-0', 'sse']]);
  assert.equal(ch.adapter, 'fetch');
  assert.equal(ch.endData.done, true);
  assert.deepEqual(states, ['connecting', 'open', 'reconnecting', 'open', 'ended']);
});

test('fallback: a transport with no first byte in time is abandoned for the next one', async () => {
  const { env } = scriptedEnv();
  // fetch "works" for POST but its streams never send a byte; poll answers through the same fetch.
  const polls = [];
  const baseFetch = env.fetch;
  env.fetch = async (url, init = {}) => {
    if (url.includes('/poll')) {
      polls.push(url);
      const body = polls.length === 1
        ? { events: [{ id: '1-0', type: 'message', data: 'x' }, { id: '2-0', type: 'end', data: null }], last_event_id: '2-0', ended: true, gap: null }
        : { events: [], last_event_id: null, ended: true, gap: null };
      return { status: 200, headers: { get: () => null }, text: async () => JSON.stringify(body) };
    }
    return baseFetch(url, init);
  };
  const ch = new SSEChannel({ broker: 'http://fallback', env, timeouts: { firstByte: 100 } });
  const transports = [];
  ch.on('transport', (t) => transports.push(t));
  const got = [];
  ch.on('message', (d) => got.push(d));
  const ended = new Promise((r) => ch.on('end', r));
  await ch.open();
  await ended;
  assert.deepEqual(got, ['x']);
  assert.deepEqual(transports, ['poll']);
  assert.match(polls[0], /timeout=1/);
});

test('watchdog: silence longer than the idle timeout reconnects', async () => {
  const { env, nextStream } = scriptedEnv();
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'fetch', timeouts: { idle: 80 } });
  await ch.open();
  const s1 = await nextStream(1);
  s1.push(ev('1-0', 'a'));
  const t0 = Date.now();
  const s2 = await nextStream(2); // no fail(): only the watchdog can have started this one
  assert.ok(Date.now() - t0 >= 60, 'waited for the idle timeout');
  assert.match(s2.url, /last_event_id=1-0/);
  ch.close();
  assert.equal(ch.state, 'closed');
});

test('transient stream failures are retried (with backoff) without surfacing errors', async () => {
  const { env, nextStream } = scriptedEnv();
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'fetch', backoff: { base: 5, max: 10 } });
  const errors = [];
  ch.on('error', (e) => errors.push(e));
  await ch.open();
  const s1 = await nextStream(1);
  s1.push(ev('1-0', 'a'));
  await until(() => ch.lastEventId === '1-0');
  s1.fail();
  const s2 = await nextStream(2);
  s2.fail(); // fails before its first byte: counted against the transport, retried after backoff
  const s3 = await nextStream(3);
  assert.match(s3.url, /last_event_id=1-0/);
  ch.close();
  assert.equal(errors.length, 0);
  assert.equal(ch.state, 'closed');
});

test('410 channel_gone is fatal: error event with code, then close, state closed, iterator throws', async () => {
  const { env, streams } = scriptedEnv();
  const baseFetch = env.fetch;
  env.fetch = async (url, init = {}) => {
    if (init.method === 'POST') return baseFetch(url, init);
    streams.push(url);
    return { status: 410, headers: { get: () => null }, text: async () => '{"error":{"code":"channel_gone","message":"gone"}}', body: null };
  };
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'fetch' });
  const events = [];
  ch.on('error', (e) => events.push('error:' + e.code));
  ch.on('close', () => events.push('close'));
  await ch.open();
  const it = ch[Symbol.asyncIterator]();
  const err = await it.next().catch((e) => e);
  // As after end: uniCloud apps tidy up on `close`, so a fatal error is followed by it too.
  assert.deepEqual(events, ['error:channel_gone', 'close']);
  assert.ok(err instanceof UnbrokenError);
  assert.equal(err.code, 'channel_gone');
  assert.equal(err.status, 410);
  assert.equal(ch.state, 'closed');
  assert.equal(streams.length, 1, 'no retry after a fatal error');
});

test('open() failure is a typed error; toJSON before open throws', async () => {
  const { env } = scriptedEnv({ openStatus: 409, openBody: { error: { code: 'channel_exists', message: 'taken' } } });
  const ch = new SSEChannel({ broker: 'http://b', env, name: 'taken' });
  assert.throws(() => JSON.stringify(ch), (e) => e.code === 'not_open');
  await assert.rejects(ch.open(), (e) => e.code === 'channel_exists' && e.status === 409);
});

test('async iteration yields messages that arrived before it started, then ends; error events throw', async () => {
  const { env, nextStream } = scriptedEnv();
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'fetch' });
  await ch.open();
  const s1 = await nextStream(1);
  s1.push(ev('1-0', 1) + ev('2-0', 2));
  await until(() => ch.lastEventId === '2-0');
  const seen = [];
  const it = ch[Symbol.asyncIterator]();
  s1.push(ev('3-0', 3) + ev('4-0', { message: 'boom', code: 'upstream' }, 'error'));
  const err = await (async () => {
    try {
      for (let r = await it.next(); !r.done; r = await it.next()) seen.push(r.value);
    } catch (e) {
      return e;
    }
  })();
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(err.code, 'channel_error');
  assert.equal(err.data.code, 'upstream');
  assert.equal(ch.state, 'ended');
});

test('lifecycle: app show after hide resumes at once from the last id (no global state)', async () => {
  const { env, nextStream } = scriptedEnv();
  const shows = [];
  const hides = [];
  env.wx = {
    request() {},
    onAppShow: (f) => shows.push(f),
    offAppShow: (f) => shows.splice(shows.indexOf(f), 1),
    onAppHide: (f) => hides.push(f),
    offAppHide: (f) => hides.splice(hides.indexOf(f), 1),
  };
  let now = 1_000_000;
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'fetch', clock: () => now });
  await ch.open();
  assert.equal(shows.length, 1);
  const s1 = await nextStream(1);
  s1.push(ev('7-0', 'x'));
  await until(() => ch.lastEventId === '7-0');
  hides.forEach((f) => f());
  now += 1100; // hidden for 1.1 s on the channel's clock
  shows.forEach((f) => f());
  const s2 = await nextStream(2);
  assert.match(s2.url, /last_event_id=7-0/);
  s2.push(ev('8-0', null, 'end'));
  await until(() => ch.state === 'ended');
  assert.equal(shows.length, 0, 'hooks removed when the channel ends');
  assert.equal(hides.length, 0);
});

test('messages that arrive before any listener are kept and handed over in order, with meta', async () => {
  const { env, nextStream } = scriptedEnv();
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'fetch' });
  const events = [];
  ch.on('close', () => events.push('close'));
  await ch.open();
  const s1 = await nextStream(1);
  s1.push(ev('1-0', 'early1') + ev('2-0', 'early2'));
  await until(() => ch.lastEventId === '2-0');
  const got = [];
  ch.on('message', (d, meta) => got.push([d, meta.id]));
  s1.push(ev('3-0', 'late') + ev('4-0', 'fin', 'end'));
  await until(() => ch.state === 'ended');
  assert.deepEqual(got, [['early1', '1-0'], ['early2', '2-0'], ['late', '3-0']]);
  assert.deepEqual(events, ['close'], 'close follows end, as in uniCloud');
});

test('close() while open() is in flight leaves no connection and no lifecycle hook behind', async () => {
  const { env, streams } = scriptedEnv();
  const shows = [];
  env.wx = { request() {}, onAppShow: (f) => shows.push(f), offAppShow: (f) => shows.splice(shows.indexOf(f), 1), onAppHide: () => {}, offAppHide: () => {} };
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'fetch' });
  const opening = ch.open();
  ch.close();
  await opening; // resolved: had it connected, the stream request would have been made by now
  assert.equal(ch.state, 'closed');
  assert.equal(streams.length, 0);
  assert.equal(shows.length, 0);
});

test('a runtime with none of the requested transports fails open() fast, creating nothing', async () => {
  const { env } = scriptedEnv();
  let posts = 0;
  const base = env.fetch;
  env.fetch = (url, init) => (posts++, base(url, init));
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'websocket' }); // env has no WebSocket
  await assert.rejects(ch.open(), (e) => e.code === 'no_transport');
  assert.equal(posts, 0);
  assert.equal(ch.state, 'closed');
});
