// Shared test plumbing: a real broker subprocess, a Python writer, and a TCP proxy that can cut
// or silently pause connections (the faults phones produce).
import { spawn } from 'node:child_process';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Wait until `cond()` holds (checked after every macrotask turn), failing after `timeout` ms with
 * `what`. For synchronising on state instead of sleeping a guessed time.
 */
export async function until(cond, { timeout = 5000, what = String(cond) } = {}) {
  const deadline = Date.now() + timeout;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setImmediate(r));
  }
}

/** Start `python -m broker serve --engine memory` on a free port and wait for /healthz. */
export async function startBroker({ heartbeat = 15, extra = [] } = {}) {
  const port = await freePort();
  const proc = spawn(
    'python3',
    ['-m', 'broker', 'serve', '--engine', 'memory', '--host', '127.0.0.1', '--port', String(port), '--heartbeat', String(heartbeat), '--log-level', 'warning', ...extra],
    { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error('broker exited: ' + stderr);
    try {
      const r = await fetch(url + '/healthz');
      if (r.ok) break;
    } catch {}
    if (Date.now() > deadline) {
      proc.kill();
      throw new Error('broker did not become healthy: ' + stderr);
    }
    await sleep(100);
  }
  return {
    url,
    port,
    stderr: () => stderr,
    async stop() {
      if (proc.exitCode !== null) return;
      proc.kill('SIGTERM');
      await new Promise((r) => {
        const t = setTimeout(() => (proc.kill('SIGKILL'), r()), 5000);
        proc.on('exit', () => (clearTimeout(t), r()));
      });
    },
  };
}

// A Python backend writing through the worker library. No fallback to the raw HTTP API: a worker
// that fails to import must fail these tests, not be papered over.
const PY_WRITER = `
import asyncio, json, sys
from worker.channel import Channel
token, n, delay, end = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == '1'
def msg(i):
    return {"i": i, "text": "héllo ✓ 🚀 " + str(i)}
async def main():
    ch = Channel.from_token(token)
    for i in range(n):
        await ch.write(msg(i))
        if delay: await asyncio.sleep(delay)
    if end: await ch.end({"done": n})
    close = getattr(ch, "aclose", None) or getattr(ch, "close", None)
    if close:
        r = close()
        if asyncio.iscoroutine(r): await r
asyncio.run(main())
print("wrote", n)
`;

/** Spawn a Python backend that writes n messages (then end) to the channel token. */
export function pythonWrite(token, n, { delay = 0, end = true } = {}) {
  return new Promise((resolve, reject) => {
    // The test broker runs the memory engine: the worker must write over HTTP, not to a Redis
    // that UNBROKEN_REDIS_URL might name.
    const env = { ...process.env };
    delete env.UNBROKEN_REDIS_URL;
    // The worker talks over HTTP only to brokers the backend allows (docs/protocol.md, trust).
    env.UNBROKEN_BROKER_URL = token.broker;
    const proc = spawn('python3', ['-c', PY_WRITER, JSON.stringify(token), String(n), String(delay), end ? '1' : '0'], {
      cwd: REPO,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (err += d));
    proc.on('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error('python writer failed: ' + err))));
  });
}

export function expectedMessage(i) {
  return { i, text: 'héllo ✓ 🚀 ' + i };
}

/**
 * A TCP proxy in front of the broker. `cut()` resets every connection (a dropped network);
 * `pause()` keeps sockets open but stops forwarding (a silent hang: iOS WeChat fires nothing).
 */
export async function startProxy(targetPort) {
  const conns = new Set();
  let paused = false;
  let swallow = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream, paused: false };
    conns.add(pair);
    upstream.on('data', (d) => {
      if (swallow > 0) {
        // The broker did the work; its answer is lost on the way back (a timed-out request).
        swallow--;
        client.destroy();
        upstream.destroy();
        return;
      }
      if (!paused && !pair.paused) client.write(d);
    });
    client.on('data', (d) => {
      if (!paused && !pair.paused) upstream.write(d);
    });
    const end = () => {
      conns.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    get connections() {
      return conns.size;
    },
    /** Reset all current connections; new ones work. */
    cut() {
      for (const p of conns) {
        p.client.resetAndDestroy ? p.client.resetAndDestroy() : p.client.destroy();
        p.upstream.destroy();
      }
      conns.clear();
    },
    /** Freeze the current connections only: bytes stop, sockets stay open; new ones work. */
    hangCurrent() {
      for (const p of conns) p.paused = true;
    },
    /** Drop the next n responses after the broker sent them (the request did take effect). */
    swallowResponses(n) {
      swallow = n;
    },
    /** Freeze everything (new connections too) until resume(). */
    pause() {
      paused = true;
    },
    resume() {
      paused = false;
    },
    close() {
      for (const p of conns) {
        p.client.destroy();
        p.upstream.destroy();
      }
      return new Promise((r) => server.close(() => r()));
    },
  };
}

/** Collect a channel's delivery until end, with a deadline. */
export function collect(channel, { timeout = 60000, onMessage } = {}) {
  const messages = [];
  const ids = [];
  const transports = new Set(); // wire transports (sse, chunked, ws, poll)
  const adapters = new Set(); // how the SDK spoke them (fetch, websocket, mp-request, ...)
  let errors = [];
  const done = new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timeout: got ${messages.length} messages, state ${channel.state}, errors ${errors.map((e) => e.code).join(',')}`)), timeout);
    channel.on('message', (data, meta) => {
      messages.push(data);
      ids.push(meta.id);
      transports.add(meta.transport);
      adapters.add(meta.adapter);
      if (onMessage) onMessage(data, messages.length);
    });
    channel.on('end', (data) => (clearTimeout(t), resolve(data)));
    channel.on('error', (e) => {
      errors.push(e);
      if (e.code === 'channel_error' || channel.state === 'closed') (clearTimeout(t), reject(e));
    });
  });
  return { messages, ids, transports, adapters, errors: () => errors, done };
}

export function assertExactlyOnce(assert, messages, n) {
  assert.equal(messages.length, n, `expected ${n} messages, got ${messages.length}`);
  for (let i = 0; i < n; i++) assert.deepEqual(messages[i], expectedMessage(i), `message ${i}`);
}
