// Stop generation end to end against a real broker: the reader's cancel() reaches a Node writer
// (waitCancelled over GET .../events?only=terminal) within 100 ms; every reader transport gets
// the terminal `cancelled` event then `close`; writes after it are refused; and the uni-app
// example's cloud function stops generating when the user presses Stop.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, mkdirSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { SSEChannel, State, deserializeChannel } from '../dist/esm/index.js';
import { startBroker, until, REPO } from './helpers.mjs';

let broker;
before(async () => {
  broker = await startBroker({ heartbeat: 1 });
});
after(async () => {
  await broker?.stop();
});

function follow(ch) {
  const seen = { messages: [], events: [], cancelled: undefined };
  ch.on('message', (d) => seen.messages.push(d));
  ch.on('cancelled', (info) => (seen.events.push('cancelled'), (seen.cancelled = info)));
  ch.on('end', () => seen.events.push('end'));
  ch.on('error', (e) => seen.events.push('error:' + e.code));
  ch.on('close', () => seen.events.push('close'));
  return seen;
}

for (const transport of ['fetch', 'websocket', 'poll']) {
  test(`${transport} reader: cancel() stops the Node writer within 100 ms; cancelled then close`, async () => {
    const ch = new SSEChannel({ broker: broker.url, transport, WebSocket, timeouts: { poll: 2 } });
    const seen = follow(ch);
    await ch.open();
    const w = deserializeChannel(ch);
    let stoppedAt = 0;
    const watching = w.waitCancelled().then((info) => ((stoppedAt = Date.now()), info));
    for (let i = 0; i < 5; i++) await w.write(i);
    await until(() => seen.messages.length === 5, { timeout: 10000 });
    const clickedAt = Date.now();
    await ch.cancel('user pressed stop');
    const info = await watching;
    assert.deepEqual(info, { reason: 'user pressed stop' });
    assert.ok(stoppedAt - clickedAt < 100, `the writer learned of the cancel ${stoppedAt - clickedAt} ms after the click`);
    assert.equal(w.cancelled, true);
    await assert.rejects(w.write('too late'), (e) => e.code === 'channel_cancelled');
    await until(() => seen.events.includes('close'), { timeout: 10000 });
    assert.deepEqual(seen.messages, [0, 1, 2, 3, 4]);
    assert.deepEqual(seen.events, ['cancelled', 'close']);
    assert.deepEqual(seen.cancelled, { reason: 'user pressed stop' });
    assert.equal(ch.state, State.Cancelled);
  });
}

test('a writer that never watched learns of the cancel from its next write (409 channel_cancelled)', async () => {
  const ch = new SSEChannel({ broker: broker.url, transport: 'fetch' });
  const seen = follow(ch);
  await ch.open();
  const w = deserializeChannel(ch);
  await w.write('a');
  await ch.cancel();
  await assert.rejects(w.write('b'), (e) => e.code === 'channel_cancelled' && e.status === 409);
  assert.equal(w.cancelled, true);
  assert.deepEqual(await w.waitCancelled(), { reason: null });
  await until(() => seen.events.includes('close'));
  assert.deepEqual(seen.messages, ['a']);
  assert.deepEqual(seen.cancelled, { reason: null });
});

test('waitCancelled() on a channel cancelled before it looked still resolves', async () => {
  const ch = new SSEChannel({ broker: broker.url, transport: 'fetch' });
  await ch.open();
  const token = ch.toJSON();
  await ch.cancel('early');
  const w = deserializeChannel(token);
  const info = await w.waitCancelled();
  assert.equal(w.cancelled, true);
  assert.ok(info.reason === 'early' || info.reason === null);
});

test('cancel twice is fine; cancel after end is refused with channel_ended; a second reader sees it too', async () => {
  const ch = new SSEChannel({ broker: broker.url, transport: 'fetch' });
  await ch.open();
  const other = SSEChannel.attach({ broker: broker.url, channel: ch.id, readToken: ch.readToken, transport: 'poll', timeouts: { poll: 1 } });
  const seenOther = follow(other);
  await other.open();
  await ch.cancel('once');
  await ch.cancel('twice'); // 200 duplicate: resolves
  await until(() => seenOther.events.includes('close'), { timeout: 10000 });
  assert.deepEqual(seenOther.cancelled, { reason: 'once' });

  const done = new SSEChannel({ broker: broker.url, transport: 'fetch' });
  await done.open();
  await deserializeChannel(done).end('bye');
  await assert.rejects(done.cancel(), (e) => e.code === 'channel_ended' && e.status === 409);
});

test('uni-app example: the cloud function stops generating when the user presses Stop', async () => {
  // Load examples/uniapp/uniCloud/cloudfunctions/chat/index.js as uniCloud would, with
  // `unbroken-channel` resolving to this package (as the packed tarball installs it).
  const tmp = mkdtempSync(join(tmpdir(), 'unbroken-example-'));
  try {
    mkdirSync(join(tmp, 'node_modules'));
    symlinkSync(join(REPO, 'client_sdk', 'js'), join(tmp, 'node_modules', 'unbroken-channel'), 'dir');
    const fnDir = join(tmp, 'chat');
    mkdirSync(fnDir);
    copyFileSync(join(REPO, 'examples', 'uniapp', 'uniCloud', 'cloudfunctions', 'chat', 'index.js'), join(fnDir, 'index.js'));
    const cloudFunction = createRequire(join(fnDir, 'index.js'))(join(fnDir, 'index.js'));

    const ch = new SSEChannel({ broker: broker.url, transport: 'fetch' });
    const seen = follow(ch);
    await ch.open();
    const running = cloudFunction.main({ channel: JSON.parse(JSON.stringify(ch)), prompt: 'tell me a long story' });
    await until(() => seen.messages.length >= 3, { timeout: 10000 });
    await ch.cancel('user pressed stop'); // the Stop button
    const clickedAt = Date.now();
    const result = await running;
    // The function returns once the word in flight is written: its 100 ms pause, plus the notice.
    assert.ok(Date.now() - clickedAt < 300, `the cloud function returned ${Date.now() - clickedAt} ms after Stop`);
    assert.deepEqual(result, { ok: true, cancelled: true });
    await until(() => seen.events.includes('close'));
    assert.deepEqual(seen.events, ['cancelled', 'close']);
    assert.ok(seen.messages.length < 15, `stopped early: ${seen.messages.length} words written`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
