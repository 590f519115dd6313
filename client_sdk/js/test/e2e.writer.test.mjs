// The Node writer (deserializeChannel) against a real broker: non-finite numbers refused, write
// coalescing (order, seq, one id per write), and runtimes without a global fetch (Node's own
// http module under --no-experimental-fetch; uniCloud.httpclient where present).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { SSEChannel, deserializeChannel } from '../dist/esm/index.js';
import { startBroker, collect, until, REPO } from './helpers.mjs';

const ROOT = join(REPO, 'client_sdk', 'js');
let broker;
before(async () => {
  broker = await startBroker({ heartbeat: 1 });
});
after(async () => {
  await broker?.stop();
});

async function reader() {
  const ch = new SSEChannel({ broker: broker.url, transport: 'sse' });
  await ch.open();
  return { ch, c: collect(ch, { timeout: 30000 }) };
}

/** The global fetch, counting the write requests that reach the broker. */
function countingFetch() {
  const counter = { requests: 0, bodies: [] };
  counter.fetch = (url, init) => {
    if (init && init.method === 'POST') {
      counter.requests++;
      counter.bodies.push(JSON.parse(init.body));
    }
    return fetch(url, init);
  };
  return counter;
}

test('NaN and Infinity are refused before sending (JSON.stringify would send null); no seq is used up', async () => {
  const { ch, c } = await reader();
  const counter = countingFetch();
  const w = deserializeChannel(ch, { fetch: counter.fetch });
  for (const bad of [NaN, Infinity, -Infinity, { nested: [1, NaN] }]) {
    await assert.rejects(w.write(bad), (e) => e.code === 'invalid_data' && /NaN|Infinity/.test(e.message));
  }
  await assert.rejects(w.writeMany([1, Infinity]), (e) => e.code === 'invalid_data');
  await assert.rejects(w.end({ score: NaN }), (e) => e.code === 'invalid_data');
  assert.equal(counter.requests, 0, 'nothing reached the broker');
  await w.write({ ok: 1 });
  await w.end(null);
  await c.done;
  assert.deepEqual(c.messages, [{ ok: 1 }]);
  assert.equal(counter.bodies[0].seq, 1, 'the refused writes took no seq');
});

test('coalescing: 300 writes made without awaiting go out in a few requests, in order, each with its own id', async () => {
  const { ch, c } = await reader();
  const counter = countingFetch();
  const w = deserializeChannel(ch, { fetch: counter.fetch }); // default window 20 ms
  const pending = [];
  for (let i = 0; i < 300; i++) {
    pending.push(w.write({ i }));
    if (i % 50 === 49) await new Promise((r) => setTimeout(r, 5)); // a producer yielding now and then
  }
  const results = await Promise.all(pending);
  await w.end({ n: 300 });
  await c.done;
  assert.deepEqual(c.messages, Array.from({ length: 300 }, (_, i) => ({ i })));
  // Each write resolved to exactly the id its message got on the wire.
  assert.deepEqual(results.map((r) => r.ids.length), Array(300).fill(1));
  assert.deepEqual(results.map((r) => r.ids[0]), c.ids);
  assert.ok(counter.requests <= 20, `300 writes in ${counter.requests} requests`);
  // Seqs stay contiguous across batches: each request starts where the last one stopped.
  let next = 1;
  for (const body of counter.bodies) {
    assert.equal(body.seq, next);
    next += body.messages ? body.messages.length : 1;
  }
});

test('coalescing keeps idempotency: a batch whose answer was lost is retried with the same seq, stored once', async () => {
  const { startProxy } = await import('./helpers.mjs');
  const { ch, c } = await reader();
  const lossy = await startProxy(broker.port);
  try {
    const w = deserializeChannel({ ...ch.toJSON(), broker: lossy.url }, { retries: 5 });
    await w.write(0);
    lossy.swallowResponses(1);
    const batch = [1, 2, 3, 4].map((i) => w.write(i));
    const results = await Promise.all(batch);
    assert.equal(results[0].duplicate, true, 'the retry was recognised as already stored');
    await w.end(null);
    await c.done;
    assert.deepEqual(c.messages, [0, 1, 2, 3, 4]);
  } finally {
    await lossy.close();
  }
});

test('an awaited write per token is never held back; coalesce: 0 sends each write alone', async () => {
  for (const coalesce of [20, 0]) {
    const { ch, c } = await reader();
    const counter = countingFetch();
    const w = deserializeChannel(ch, { fetch: counter.fetch, coalesce });
    for (let i = 0; i < 20; i++) await w.write(i);
    const loose = await Promise.all([20, 21, 22].map((i) => w.write(i)));
    await w.end(null);
    await c.done;
    assert.deepEqual(c.messages, Array.from({ length: 23 }, (_, i) => i));
    assert.deepEqual(loose.map((r) => r.ids.length), [1, 1, 1]);
    // 20 awaited writes: 20 requests either way; the 3 loose ones share one request only when on.
    assert.equal(counter.requests, coalesce ? 20 + 1 + 1 : 20 + 3 + 1, `coalesce ${coalesce}: ${counter.requests} requests`);
  }
});

/** Run `code` in a child Node without a global fetch; it gets the token as argv[1]. */
function runWithoutFetch(code, token, { type = 'commonjs', extraArgs = [] } = {}) {
  return new Promise((resolve, reject) => {
    const args = ['--no-experimental-fetch', ...extraArgs, ...(type === 'module' ? ['--input-type=module'] : []), '-e', code, JSON.stringify(token)];
    const proc = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (err += d));
    proc.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`child exited ${code}: ${err}`))));
  });
}

const WRITE_50 = `
  if (typeof fetch !== 'undefined') throw new Error('this runtime was supposed to have no fetch');
  const w = deserializeChannel(process.argv[1]);
  (async () => {
    const pending = [];
    for (let i = 0; i < 50; i++) pending.push(w.write({ i, text: 'héllo ✓ 🚀 ' + i }));
    await Promise.all(pending);
    await w.end({ done: 50 });
    console.log(w.transportName || 'ok');
  })().catch((e) => { console.error(e.code, e.message); process.exit(1); });
`;

for (const [name, code, type] of [
  ['CommonJS, Node http via process.getBuiltinModule', `const { deserializeChannel } = require('./dist/cjs/index.js');` + WRITE_50, 'commonjs'],
  ['CommonJS on an older Node (no getBuiltinModule: require)', `delete process.getBuiltinModule; const { deserializeChannel } = require('./dist/cjs/index.js');` + WRITE_50, 'commonjs'],
  ['ESM', `import { deserializeChannel } from './dist/esm/index.js';` + WRITE_50, 'module'],
]) {
  test(`no global fetch (node --no-experimental-fetch), ${name}: writes and ends over Node's http`, async () => {
    const { ch, c } = await reader();
    await runWithoutFetch(code, ch.toJSON(), { type });
    assert.deepEqual(await c.done, { done: 50 });
    assert.deepEqual(c.messages, Array.from({ length: 50 }, (_, i) => ({ i, text: 'héllo ✓ 🚀 ' + i })));
  });
}

test('uniCloud cloud function without fetch: writes go through uniCloud.httpclient.request', async () => {
  // A stand-in for uniCloud.httpclient, an urllib instance (uniCloud docs, cf-functions
  // "httpclient"): request(url, {method, headers, content, dataType: 'text', timeout}) resolves
  // to {status, headers, data}; with dataType 'text' data is a string. Built on Node's http.
  const code = `
    const http = require('http');
    let calls = 0;
    globalThis.uniCloud = { httpclient: { request(url, opts) {
      calls++;
      if (opts.dataType !== 'text' || typeof opts.content !== 'string' || !opts.timeout) throw new Error('unexpected options ' + JSON.stringify(opts));
      return new Promise((resolve, reject) => {
        const req = http.request(url, { method: opts.method, headers: opts.headers }, (res) => {
          let data = '';
          res.setEncoding('utf8');
          res.on('data', (d) => (data += d));
          res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, data }));
        });
        req.on('error', reject);
        req.end(opts.content);
      });
    } } };
    const { deserializeChannel } = require('./dist/cjs/index.js');
    const w = deserializeChannel(process.argv[1]);
    (async () => {
      for (let i = 0; i < 5; i++) await w.write(i);
      await w.end('bye');
      if (calls !== 6) throw new Error('uniCloud.httpclient carried ' + calls + ' of 6 requests');
    })().catch((e) => { console.error(e.code, e.message); process.exit(1); });
  `;
  const { ch, c } = await reader();
  await runWithoutFetch(code, ch.toJSON());
  assert.equal(await c.done, 'bye');
  assert.deepEqual(c.messages, [0, 1, 2, 3, 4]);
});

test('no global fetch: waitCancelled() streams the terminal events over Node http and resolves on cancel', async () => {
  const ch = new SSEChannel({ broker: broker.url, transport: 'sse' });
  const closed = new Promise((r) => ch.on('close', r));
  await ch.open();
  const code = `
    const { deserializeChannel } = require('./dist/cjs/index.js');
    const w = deserializeChannel(process.argv[1]);
    w.write('first').then(() => {
      console.log('written');
      return w.waitCancelled();
    }).then((info) => {
      console.log(JSON.stringify(info));
      return w.write('after').then(() => process.exit(2), (e) => { console.log(e.code); });
    }).catch((e) => { console.error(e.code, e.message); process.exit(1); });
  `;
  const child = runWithoutFetch(code, ch.toJSON());
  await until(() => ch.lastEventId !== undefined, { timeout: 10000, what: 'the first write' });
  await ch.cancel('stop');
  const out = (await child).split('\n');
  assert.equal(out[0], 'written');
  const info = JSON.parse(out[1]);
  assert.ok(info.reason === 'stop' || info.reason === null, out[1]);
  assert.equal(out[2], 'channel_cancelled');
  await closed;
  assert.equal(ch.state, 'cancelled');
});

test('coalescing: end() right after writes that still wait for company goes after them, in order', async () => {
  const { ch, c } = await reader();
  const w = deserializeChannel(ch, { coalesce: 50 });
  const writes = [1, 2, 3, 4].map((i) => w.write(i)); // 2..4 wait in the window
  const ended = w.end('fin'); // not awaited either: must not overtake them
  const results = await Promise.all([...writes, ended]);
  assert.equal(await c.done, 'fin');
  assert.deepEqual(c.messages, [1, 2, 3, 4]);
  assert.deepEqual(results.map((r) => r.ids.length), [1, 1, 1, 1, 1]);
});
