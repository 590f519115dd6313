import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareIds, Deduper, Backoff } from '../dist/esm/index.js';

test('ids compare ms then seq numerically, not as strings', () => {
  assert.equal(compareIds('9-0', '10-0'), -1);
  assert.equal(compareIds('10-0', '9-0'), 1);
  assert.equal(compareIds('5-9', '5-10'), -1);
  assert.equal(compareIds('5-10', '5-10'), 0);
  assert.equal(compareIds('1732500000000-0', '1732500000000-1'), -1);
  // Beyond 2^53: still exact.
  assert.equal(compareIds('1-18446744073709551615', '1-18446744073709551614'), 1);
  assert.equal(compareIds('007-1', '7-1'), 0);
});

test('deduper drops replays and accepts events without ids', () => {
  const d = new Deduper();
  assert.ok(d.accept('1-0'));
  assert.ok(d.accept('1-1'));
  assert.ok(!d.accept('1-1'));
  assert.ok(!d.accept('0-9'));
  assert.ok(d.accept('2-0'));
  assert.ok(d.accept(undefined));
  assert.equal(d.lastId, '2-0');
  const resumed = new Deduper('9-5');
  assert.ok(!resumed.accept('9-5'));
  assert.ok(resumed.accept('10-0'));
});

test('backoff grows exponentially, is capped, jittered and resets', () => {
  const b = new Backoff({ base: 100, max: 1000, random: () => 0.999999 });
  const seq = [1, 2, 3, 4, 5, 6].map(() => b.next());
  assert.deepEqual(seq, [99, 199, 399, 799, 999, 999]);
  b.reset();
  assert.equal(b.next(), 99);
  const low = new Backoff({ base: 100, max: 1000, random: () => 0 });
  assert.equal(low.next(), 25, 'floor of base/4 so a flapping link never spins');
  const real = new Backoff({ base: 100, max: 1000 });
  const vals = Array.from({ length: 50 }, () => (real.reset(), real.next()));
  assert.ok(new Set(vals).size > 10, 'jitter spreads delays');
  assert.ok(vals.every((v) => v >= 25 && v <= 100));
});
