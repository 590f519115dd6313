// Node writer coalescing, measured against a real broker (memory engine by default):
//   node bench/writer-coalesce.mjs [streams=100] [tokensPerSecond=50] [seconds=5]
// S channels, each fed tokens at a steady rate by a producer that does not await each write
// (an LLM stream piped through), once with `coalesce: 20` (default) and once with 0. Prints the
// HTTP requests made and the write latency (write() call -> its id) p50/p99 for each.
import { SSEChannel, deserializeChannel } from '../dist/esm/index.js';
import { startBroker } from '../test/helpers.mjs';

const [S = 100, RATE = 50, SECONDS = 5] = process.argv.slice(2).map(Number);

async function run(broker, coalesce) {
  let requests = 0;
  const counting = (url, init) => {
    if (init && init.method === 'POST') requests++;
    return fetch(url, init);
  };
  const writers = [];
  for (let s = 0; s < S; s++) {
    const ch = new SSEChannel({ broker: broker.url, transport: 'sse', token: 'bench-key' });
    await ch.open();
    ch.close(); // nobody reads: this measures the write path
    writers.push(deserializeChannel(ch, { fetch: counting, coalesce }));
  }
  const latencies = [];
  const pending = [];
  const start = Date.now();
  await new Promise((done) => {
    let tick = 0;
    const timer = setInterval(() => {
      tick++;
      for (const w of writers) {
        const t0 = performance.now();
        pending.push(w.write({ token: 'tok' + tick }).then(() => latencies.push(performance.now() - t0)));
      }
      if (Date.now() - start >= SECONDS * 1000) (clearInterval(timer), done());
    }, 1000 / RATE);
  });
  await Promise.all(pending);
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))].toFixed(1);
  return { coalesce, writes: latencies.length, requests, p50_ms: q(0.5), p99_ms: q(0.99) };
}

// An app key instead of the open policy's per-address open rate limit.
const broker = await startBroker({ extra: ['--open-policy', 'key', '--app-key', 'bench-key', '--max-open-rate', '0'] });
try {
  for (const coalesce of [20, 0]) console.log(JSON.stringify(await run(broker, coalesce)));
} finally {
  await broker.stop();
}
