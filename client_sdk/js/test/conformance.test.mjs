// The conformance vectors shared with the Python client (tests/conformance/*.json): vocabulary,
// SSE parsing, backoff, and what a reader does with each HTTP status / WebSocket close code
// (over real sockets: a small server answers each one, a channel attached to it reacts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import { Backoff, SSEChannel, SseParser, State, Utf8Decoder, WIRE_TRANSPORTS } from '../dist/esm/index.js';
import { REPO, until } from './helpers.mjs';

const vectors = (name) => JSON.parse(readFileSync(join(REPO, 'tests', 'conformance', name + '.json'), 'utf8'));

test('vocabulary: wire transports, channel states and terminal events are the broker\'s', () => {
  const v = vectors('vocabulary');
  assert.deepEqual(WIRE_TRANSPORTS, v.transports);
  const states = Object.values(State);
  for (const s of v.channel_states) assert.ok(states.includes(s), `State has ${s}`);
  assert.deepEqual(v.terminal_event_types, ['end', 'error', 'cancelled']);
});

function parse(chunks) {
  const events = [];
  const decoder = new Utf8Decoder();
  const parser = new SseParser({ event: (e) => events.push({ event: e.event, data: e.data, id: e.id ?? null }), comment() {} });
  for (const c of chunks) parser.feed(decoder.decode(c));
  return events;
}

test('sse: every case parses the same whole, byte by byte and cut at the listed offsets', () => {
  const { cases } = vectors('sse');
  assert.ok(cases.length > 0);
  for (const c of cases) {
    const bytes = new TextEncoder().encode(c.input);
    const ways = [[bytes], Array.from(bytes, (b) => Uint8Array.of(b))];
    for (const cuts of c.splits) {
      const pieces = [];
      let at = 0;
      for (const cut of [...cuts, bytes.length]) {
        pieces.push(bytes.slice(at, cut));
        at = cut;
      }
      ways.push(pieces);
    }
    for (const pieces of ways) assert.deepEqual(parse(pieces), c.events, `${c.name} (${pieces.length} pieces)`);
  }
});

test('backoff: ceilings per attempt and the delay for a given draw', () => {
  const v = vectors('backoff');
  const dflt = new Backoff({ random: () => 0.5 });
  assert.equal(dflt.next(), v.defaults.base_ms / 2, 'defaults');
  for (const c of v.ceilings) {
    const b = new Backoff({ base: c.base_ms, max: c.max_ms, random: () => 1 - 1e-12 });
    for (const ceiling of c.ceilings_ms) assert.ok(Math.abs(b.next() - ceiling) <= 1, `ceiling ${ceiling}`);
  }
  for (const d of v.draws) {
    const b = new Backoff({ base: d.base_ms, max: d.max_ms, random: () => d.random });
    b.attempt = d.attempt;
    assert.ok(Math.abs(b.next() - d.delay_ms) <= 1, JSON.stringify(d));
  }
});

/**
 * A server that answers every reader request with `status` (or closes every WebSocket with
 * `code`); a channel attached to it shows the outcome: `ended`, `retry` (a second request comes)
 * or `fail` (error with the broker's code and status, state closed).
 */
async function outcome(transport, answer) {
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    const { status, code } = answer;
    const body = code ? JSON.stringify({ error: { code, message: 'vector' } }) : '';
    res.writeHead(status, body ? { 'Content-Type': 'application/json' } : {}).end(status === 204 ? undefined : body);
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => {
    requests++;
    // 1006 is never sent (RFC 6455 7.4.1): it is what a dropped connection reads as.
    if (answer.wsCode === 1006) ws.terminate();
    else ws.close(answer.wsCode, 'vector');
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const broker = `http://127.0.0.1:${server.address().port}`;
  const ch = SSEChannel.attach({
    broker,
    channel: 'ch_v',
    readToken: 'RT',
    transport,
    WebSocket,
    timeouts: { firstByte: 2000 },
    backoff: { base: 5, max: 10 },
  });
  const errors = [];
  let ended = false;
  ch.on('error', (e) => errors.push(e));
  ch.on('end', (data) => (ended = data === null));
  try {
    await ch.open();
    await until(() => ch.state === State.Ended || ch.state === State.Closed || requests >= 2, { timeout: 5000 });
    if (ch.state === State.Ended) return { outcome: ended ? 'ended' : 'ended-with-data', errors };
    if (ch.state === State.Closed) return { outcome: 'fail', errors };
    return { outcome: 'retry', errors };
  } finally {
    ch.close();
    wss.close();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
}

for (const transport of ['fetch', 'poll']) {
  test(`status vectors over real sockets: ${transport} (${transport === 'fetch' ? '/events' : '/poll'})`, async () => {
    for (const v of vectors('status').http) {
      const got = await outcome(transport, v);
      assert.equal(got.outcome, v.outcome, `HTTP ${v.status}`);
      if (v.outcome === 'fail') {
        assert.equal(got.errors.length, 1);
        assert.equal(got.errors[0].status, v.status);
        assert.equal(got.errors[0].code, v.code || 'http_error', `code of HTTP ${v.status}`);
      } else {
        assert.equal(got.errors.length, 0, `HTTP ${v.status} reported nothing`);
      }
    }
  });
}

test('status vectors over real sockets: websocket close codes (/ws)', async () => {
  for (const v of vectors('status').ws_close) {
    const got = await outcome('websocket', { status: 200, wsCode: v.code });
    assert.equal(got.outcome, v.outcome, `close ${v.code}`);
    if (v.outcome === 'fail') assert.equal(got.errors[0].status, v.code - 4000);
  }
});

for (const transport of ['fetch', 'poll']) {
  test(`Retry-After on a 429 is the least delay before the retry (${transport})`, async () => {
    const times = [];
    const server = http.createServer((req, res) => {
      times.push(Date.now());
      res.writeHead(429, { 'Content-Type': 'application/json', 'Retry-After': '1' }).end(JSON.stringify({ error: { code: 'rate_limited', message: 'slow down' } }));
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const ch = SSEChannel.attach({
      broker: `http://127.0.0.1:${server.address().port}`,
      channel: 'ch_v',
      readToken: 'RT',
      transport,
      backoff: { base: 5, max: 10 }, // without Retry-After the retry would come after ~5 ms
    });
    try {
      await ch.open();
      await until(() => times.length >= 2, { timeout: 5000, what: 'the retry' });
      assert.ok(times[1] - times[0] >= 990, `retried after ${times[1] - times[0]} ms; Retry-After said 1 s`);
      assert.equal(ch.state, State.Reconnecting);
    } finally {
      ch.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
}
