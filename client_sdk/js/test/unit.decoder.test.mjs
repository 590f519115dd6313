// The incremental UTF-8 decoder and the SSE parser, fed every possible split of real inputs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Utf8Decoder, SseParser } from '../dist/esm/index.js';

const enc = new TextEncoder();
const SAMPLE = 'a é ✓ 🚀 中文 ß\u0000 end 𝄞';

function decodeSplit(bytes, cuts) {
  const d = new Utf8Decoder();
  let out = '';
  let prev = 0;
  for (const c of [...cuts, bytes.length]) {
    out += d.decode(bytes.subarray(prev, c));
    prev = c;
  }
  return out + d.flush();
}

test('utf8: every single split position', () => {
  const bytes = enc.encode(SAMPLE);
  for (let i = 0; i <= bytes.length; i++) assert.equal(decodeSplit(bytes, [i]), SAMPLE, `split at ${i}`);
});

test('utf8: every pair of split positions', () => {
  const bytes = enc.encode('✓🚀é');
  for (let i = 0; i <= bytes.length; i++) {
    for (let j = i; j <= bytes.length; j++) assert.equal(decodeSplit(bytes, [i, j]), '✓🚀é', `split at ${i},${j}`);
  }
});

test('utf8: one byte at a time', () => {
  const bytes = enc.encode(SAMPLE);
  assert.equal(decodeSplit(bytes, [...bytes.keys()].slice(1)), SAMPLE);
});

test('utf8: invalid input becomes U+FFFD like TextDecoder', () => {
  const cases = [
    [0xff], [0x80], [0xc0, 0x80], [0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80],
    [0xe2, 0x9c, 0x41], [0xf0, 0x9f, 0x9a], [0x41, 0xc3], [0xf5, 0x41],
  ];
  const ref = new TextDecoder();
  for (const c of cases) {
    const bytes = Uint8Array.from(c);
    assert.equal(decodeSplit(bytes, []), ref.decode(bytes), JSON.stringify(c));
    for (let i = 0; i <= bytes.length; i++) assert.equal(decodeSplit(bytes, [i]), ref.decode(bytes), JSON.stringify(c) + ' split ' + i);
  }
});

test('utf8: large random text matches TextDecoder at random splits', () => {
  let s = '';
  const pool = ['a', 'é', '✓', '🚀', '中', '\n', '\r', ' '];
  for (let i = 0; i < 20000; i++) s += pool[(i * 7919) % pool.length];
  const bytes = enc.encode(s);
  const cuts = [];
  for (let p = 0; p < bytes.length; p += 1 + ((p * 31) % 97)) cuts.push(p);
  assert.equal(decodeSplit(bytes, cuts), s);
});

function parseSplit(text, cuts) {
  const events = [];
  const comments = [];
  const p = new SseParser({ event: (e) => events.push(e), comment: (c) => comments.push(c) });
  let prev = 0;
  for (const c of [...cuts, text.length]) {
    p.feed(text.slice(prev, c));
    prev = c;
  }
  return { events, comments };
}

const STREAM =
  'retry: 1000\n\n' +
  'id: 1732500000000-0\nevent: message\ndata: {"a":"✓ 🚀"}\n\n' +
  ': hb\n\n' +
  'event: gap\ndata: {"first_id":"5-0"}\n\n' +
  'id: 1732500000001-0\r\nevent: message\r\ndata: {"b":2}\r\n\r\n' +
  'id: 1732500000001-1\revent: message\rdata: {"c":3}\r\r' +
  'id: 1732500000002-0\nevent: end\ndata:{"a":5}\n\n';

const EXPECTED = [
  { id: '1732500000000-0', event: 'message', data: '{"a":"✓ 🚀"}' },
  { id: undefined, event: 'gap', data: '{"first_id":"5-0"}' },
  { id: '1732500000001-0', event: 'message', data: '{"b":2}' },
  { id: '1732500000001-1', event: 'message', data: '{"c":3}' },
  { id: '1732500000002-0', event: 'end', data: '{"a":5}' },
];

test('sse: whole stream, LF / CRLF / CR line endings', () => {
  const { events, comments } = parseSplit(STREAM, []);
  assert.deepEqual(events, EXPECTED);
  assert.deepEqual(comments, ['retry', 'hb']);
});

test('sse: every split position (also between CR and LF)', () => {
  for (let i = 0; i <= STREAM.length; i++) assert.deepEqual(parseSplit(STREAM, [i]).events, EXPECTED, `split at ${i}`);
});

test('sse: every pair of split positions', () => {
  for (let i = 0; i <= STREAM.length; i += 1) {
    for (let j = i; j <= STREAM.length; j += 3) assert.deepEqual(parseSplit(STREAM, [i, j]).events, EXPECTED, `split ${i},${j}`);
  }
});

test('decoder + parser: bytes split at every position (inside UTF-8 and CRLF)', () => {
  const bytes = enc.encode(STREAM);
  for (let i = 0; i <= bytes.length; i++) {
    const events = [];
    const d = new Utf8Decoder();
    const p = new SseParser({ event: (e) => events.push(e), comment: () => {} });
    p.feed(d.decode(bytes.subarray(0, i)));
    p.feed(d.decode(bytes.subarray(i)));
    assert.deepEqual(events, EXPECTED, `byte split at ${i}`);
  }
});

test('sse: multi-line data, BOM, field without colon, unknown fields, unterminated event dropped', () => {
  const { events } = parseSplit('\ufeffdata: a\ndata:b\nfoo: x\ndata\n\nid: 1-1\ndata: tail', []);
  assert.deepEqual(events, [{ id: undefined, event: 'message', data: 'a\nb\n' }]);
});
