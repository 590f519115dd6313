// Cancel, attach/persist, transport recovery, reconnect(), the online event and a lifecycle-aware
// open(), driven through the scripted fetch (no broker; the e2e files cover the real one).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SSEChannel, State, TransportMemory } from '../dist/esm/index.js';
import { until } from './helpers.mjs';
import { OPEN, scriptedEnv, ev } from './fakes/scripted.mjs';

test('a cancelled event is terminal: state cancelled, `cancelled` then `close`, iteration ends', async () => {
  const { env, nextStream } = scriptedEnv();
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'sse' });
  const events = [];
  ch.on('cancelled', (info) => events.push(['cancelled', info.reason]));
  ch.on('close', () => events.push(['close']));
  await ch.open();
  const it = ch[Symbol.asyncIterator]();
  const s1 = await nextStream(1);
  s1.push(ev('1-0', 'a') + ev('2-0', { reason: 'user pressed stop' }, 'cancelled'));
  assert.deepEqual(await it.next(), { value: 'a', done: false });
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  assert.equal(ch.state, State.Cancelled);
  assert.deepEqual(ch.cancelInfo, { reason: 'user pressed stop' });
  assert.deepEqual(events, [['cancelled', 'user pressed stop'], ['close']]);
});

test('cancel(reason) posts to /cancel with the read token; broker errors are typed', async () => {
  let answer = { status: 201, body: { ids: ['9-0'], duplicate: false, last_event_id: '9-0' } };
  const { env, posts } = scriptedEnv({ onPost: (url) => (url.endsWith('/cancel') ? answer : undefined) });
  const ch = new SSEChannel({ broker: 'http://b/', env, transport: 'sse' });
  await assert.rejects(ch.cancel(), (e) => e.code === 'not_open');
  await ch.open();
  await ch.cancel('stop');
  const post = posts.find((p) => p.url.endsWith('/cancel'));
  assert.equal(post.url, 'http://b/v1/channels/ch_t/cancel');
  assert.equal(post.headers.Authorization, 'Bearer RT');
  assert.deepEqual(JSON.parse(post.body), { reason: 'stop' });
  answer = { status: 409, body: { error: { code: 'channel_ended', message: 'ended' } } };
  await assert.rejects(ch.cancel(), (e) => e.code === 'channel_ended' && e.status === 409);
  ch.close();
});

test('transport option: wire names pick their adapters; meta reports wire and adapter', async () => {
  const { env, nextStream } = scriptedEnv();
  const ch = new SSEChannel({ broker: 'http://b', env, transport: ['ws', 'sse'] }); // no WebSocket here
  const seen = [];
  ch.on('transport', (wire, adapter) => seen.push([wire, adapter]));
  const metas = [];
  ch.on('message', (_d, meta) => metas.push(meta));
  await ch.open();
  (await nextStream(1)).push(ev('1-0', 'x'));
  await until(() => metas.length === 1);
  assert.deepEqual(seen, [['sse', 'fetch']]);
  assert.deepEqual(metas[0], { id: '1-0', transport: 'sse', adapter: 'fetch' });
  assert.equal(ch.transport, 'sse');
  ch.close();
});

test('after a fallback the preferred transport is tried again (backoff), and kept once it works', async () => {
  // fetch streams fail before their first byte for a while; long-poll works meanwhile.
  const { env, streams } = scriptedEnv();
  let fetchBroken = true;
  const polls = [];
  const base = env.fetch;
  env.fetch = async (url, init = {}) => {
    if (url.includes('/poll')) {
      polls.push(url);
      await new Promise((r) => setTimeout(r, 20)); // a held poll, answered empty
      return { status: 200, headers: { get: () => null }, text: async () => JSON.stringify({ events: [], last_event_id: null, ended: false, gap: null }) };
    }
    if (!init.method && fetchBroken) throw new TypeError('socket hang up');
    return base(url, init);
  };
  const ch = new SSEChannel({
    broker: 'http://b',
    env,
    transport: ['fetch', 'poll'],
    timeouts: { upgrade: 30, poll: 1 },
    backoff: { base: 5, max: 10, random: () => 0 },
  });
  const adapters = [];
  ch.on('transport', (_w, a) => adapters.push(a));
  await ch.open();
  await until(() => ch.adapter === 'poll');
  await until(() => polls.length >= 2);
  fetchBroken = false; // the network path for streams is back
  await until(() => streams.length === 1, { what: 'the preferred transport tried again' });
  streams[0].push(': hb\n\n');
  await until(() => ch.adapter === 'fetch', { what: 'a return to the preferred transport' });
  assert.deepEqual(adapters.slice(0, 1), ['poll']);
  assert.equal(adapters[adapters.length - 1], 'fetch');
  const n = polls.length;
  streams[streams.length - 1].push(ev('1-0', 'back on sse'));
  await until(() => ch.lastEventId === '1-0');
  assert.equal(polls.length, n, 'no more polling once the stream works');
  ch.close();
});

test('reconnect() drops the line and resumes from the last id at once', async () => {
  const { env, nextStream } = scriptedEnv();
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'sse', timeouts: { idle: 60000 } });
  await ch.open();
  (await nextStream(1)).push(ev('5-0', 'x'));
  await until(() => ch.lastEventId === '5-0');
  ch.reconnect();
  const s2 = await nextStream(2);
  assert.match(s2.url, /last_event_id=5-0/);
  ch.close();
});

test("the browser's online event reconnects at once (no waiting out the backoff)", async () => {
  const { env, nextStream } = scriptedEnv();
  const listeners = {};
  env.document = { visibilityState: 'visible', addEventListener() {}, removeEventListener() {} };
  env.window = {
    addEventListener: (t, f) => (listeners[t] = f),
    removeEventListener: (t, f) => listeners[t] === f && delete listeners[t],
  };
  // A long backoff: only the online event can explain a quick reconnect.
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'sse', backoff: { base: 60000, max: 60000, random: () => 0.99 } });
  await ch.open();
  const s1 = await nextStream(1);
  s1.push(ev('1-0', 'a'));
  await until(() => ch.lastEventId === '1-0');
  s1.fail(); // the line drops while offline
  await until(() => ch.state === State.Reconnecting);
  listeners.online();
  const s2 = await nextStream(2);
  assert.match(s2.url, /last_event_id=1-0/);
  ch.close();
  assert.equal(listeners.online, undefined, 'unhooked on close');
});

test('open(): a POST that fails while the app is hidden is sent again on show, not rejected', async () => {
  const shows = [];
  const hides = [];
  let attempts = 0;
  const { env, nextStream } = scriptedEnv({
    onPost: async () => {
      attempts++;
      if (attempts === 1) {
        hides.forEach((f) => f()); // the user switches away while the request is in flight
        throw new TypeError('network connection was lost');
      }
      return undefined;
    },
  });
  env.wx = {
    request() {},
    onAppShow: (f) => shows.push(f),
    offAppShow: (f) => shows.splice(shows.indexOf(f), 1),
    onAppHide: (f) => hides.push(f),
    offAppHide: (f) => hides.splice(hides.indexOf(f), 1),
  };
  const ch = new SSEChannel({ broker: 'http://b', env, transport: 'sse' });
  let settled = false;
  const opening = ch.open().finally(() => (settled = true));
  await until(() => attempts === 1);
  await new Promise((r) => setImmediate(r));
  assert.equal(settled, false, 'still waiting for the app to come back');
  shows.forEach((f) => f());
  await opening;
  assert.equal(attempts, 2);
  await nextStream(1);
  assert.equal(ch.state, State.Connecting);
  ch.close();
});

test('attach() joins an existing channel with its read token: no POST, resumes after lastEventId', async () => {
  const { env, posts, nextStream } = scriptedEnv();
  const ch = SSEChannel.attach({ broker: 'http://b', channel: 'ch_t', readToken: 'RT2', lastEventId: '3-0', env, transport: 'sse' });
  const got = [];
  ch.on('message', (d) => got.push(d));
  await ch.open();
  const s1 = await nextStream(1);
  assert.equal(s1.url, 'http://b/v1/channels/ch_t/events?last_event_id=3-0');
  assert.equal(s1.headers.Authorization, 'Bearer RT2');
  s1.push(ev('3-0', 'seen') + ev('4-0', 'new') + ev('5-0', null, 'end'));
  await until(() => ch.state === 'ended');
  assert.deepEqual(got, ['new']);
  assert.equal(posts.length, 0);
  assert.throws(() => JSON.stringify(ch), (e) => e.code === 'no_write_token');
});

/** uni.setStorageSync / getStorageSync / removeStorageSync as documented (getStorageSync: '' when absent). */
function uniStorage() {
  const data = new Map();
  return {
    data,
    api: {
      setStorageSync: (k, v) => data.set(k, v),
      getStorageSync: (k) => (data.has(k) ? data.get(k) : ''),
      removeStorageSync: (k) => data.delete(k),
    },
  };
}

test('persist + restore: an app killed mid-answer rejoins the channel after restart and shows the rest', async () => {
  const store = uniStorage();
  // First run: opens, receives two messages, then the process dies (no close, no end).
  const first = scriptedEnv();
  first.env.uni = { request() {}, ...store.api };
  const ch = new SSEChannel({ broker: 'http://b', env: first.env, transport: 'sse', persist: 'answer' });
  ch.on('message', () => {});
  await ch.open();
  (await first.nextStream(1)).push(ev('1-0', 'one') + ev('2-0', 'two'));
  await until(() => ch.lastEventId === '2-0');
  const saved = JSON.parse(store.data.get('unbroken:answer'));
  assert.deepEqual(saved, { broker: 'http://b', channel: 'ch_t', readToken: 'RT', lastEventId: '2-0', heartbeat: 15 });

  // Second run: nothing in memory but the storage.
  const second = scriptedEnv();
  second.env.uni = { request() {}, ...store.api };
  assert.equal(SSEChannel.restore({ broker: 'http://other', env: second.env, persist: 'answer' }), undefined, 'another broker: nothing');
  const again = SSEChannel.restore({ broker: 'http://b', env: second.env, transport: 'sse', persist: 'answer' });
  const got = [];
  again.on('message', (d) => got.push(d));
  await again.open();
  const s = await second.nextStream(1);
  assert.match(s.url, /last_event_id=2-0/);
  s.push(ev('3-0', 'three') + ev('4-0', null, 'end'));
  await until(() => again.state === 'ended');
  assert.deepEqual(got, ['three']);
  assert.equal(second.posts.length, 0);
  assert.equal(store.data.has('unbroken:answer'), false, 'forgotten once ended');
  assert.equal(SSEChannel.restore({ broker: 'http://b', env: second.env, persist: 'answer' }), undefined);
  ch.close(); // the "dead" first run's timers (in a real restart they died with the process)
});

test('restore({fromStart: true}) replays the whole history for an app that kept nothing', async () => {
  const store = uniStorage();
  store.api.setStorageSync('unbroken:a', JSON.stringify({ broker: 'http://b', channel: 'ch_t', readToken: 'RT', lastEventId: '7-0' }));
  const { env, nextStream } = scriptedEnv();
  env.uni = { request() {}, ...store.api };
  const ch = SSEChannel.restore({ broker: 'http://b', env, transport: 'sse', persist: 'a', fromStart: true });
  await ch.open();
  const s = await nextStream(1);
  assert.doesNotMatch(s.url, /last_event_id/);
  ch.close();
  assert.equal(store.data.has('unbroken:a'), false, 'close() forgets it too');
});

test('no module-global state: transport memory is per app object, not shared by default', async () => {
  const memory = new TransportMemory();
  memory.remember('http://b|fetch,poll', 'poll');
  const { env, nextStream } = scriptedEnv();
  const plain = new SSEChannel({ broker: 'http://b', env, transport: 'auto' });
  await plain.open();
  const s = await nextStream(1);
  assert.match(s.url, /\/events/, 'started on fetch: nothing remembered elsewhere leaks in');
  plain.close();
  assert.equal(memory.hint('http://b|fetch,poll'), 'poll');
  memory.forget('http://b|fetch,poll', 'poll');
  assert.equal(memory.hint('http://b|fetch,poll'), undefined);
});
