// Real Chromium (CHROME_PATH, else chromium / chromium-browser / google-chrome on PATH, driven by playwright-core): a page uses the built
// SDK, a Python worker writes 200 messages, the test cuts the connection mid-stream through a
// TCP proxy, and the page must show all 200 exactly once, in order. Once per transport.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import { delimiter, join, normalize } from 'node:path';
import { startBroker, startProxy, pythonWrite, expectedMessage, sleep, REPO } from './helpers.mjs';

/** CHROME_PATH if set, else the first of the usual names on PATH. */
function findChromium() {
  if (process.env.CHROME_PATH) return existsSync(process.env.CHROME_PATH) ? process.env.CHROME_PATH : undefined;
  for (const name of ['chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable']) {
    for (const dir of (process.env.PATH || '').split(delimiter)) {
      if (dir && existsSync(join(dir, name))) return join(dir, name);
    }
  }
  return undefined;
}

const CHROMIUM = findChromium();
const ROOT = join(REPO, 'client_sdk', 'js');
// Skipped only when no Chromium can be found; tests/test_js_sdk.py then reports the file SKIPPED.
const skip = CHROMIUM ? false : 'no Chromium (set CHROME_PATH or apt-get install chromium); CI installs it';

let broker;
let proxy;
let site;
let browser;

before(async () => {
  if (skip) return;
  broker = await startBroker({ heartbeat: 1 });
  proxy = await startProxy(broker.port);
  // The page's own origin differs from the broker's: CORS is part of what is tested.
  site = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const file = path === '/' ? join(ROOT, 'test', 'browser', 'page.html') : normalize(join(ROOT, path));
    if (!file.startsWith(ROOT) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    const type = file.endsWith('.html') ? 'text/html' : 'text/javascript';
    res.writeHead(200, { 'Content-Type': type + '; charset=utf-8' }).end(readFileSync(file));
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
});

after(async () => {
  await browser?.close();
  site?.close();
  await proxy?.close();
  await broker?.stop();
});

for (const transport of ['auto', 'eventsource', 'xhr', 'websocket', 'poll']) {
  test(`chromium ${transport}: 200 messages, connection cut mid-stream, page resumes without loss`, { skip }, async (t) => {
    const page = await browser.newPage();
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push('pageerror: ' + e.message));
    try {
      await page.goto(`http://127.0.0.1:${site.address().port}/?broker=${encodeURIComponent(proxy.url)}&transport=${transport}`);
      await page.waitForFunction(() => window.testState && (window.testState.token || window.testState.errors.length), null, { timeout: 15000 });
      const token = await page.evaluate(() => window.testState.token);
      assert.ok(token, 'channel opened: ' + JSON.stringify(await page.evaluate(() => window.testState.errors)));
      const writing = pythonWrite(JSON.parse(token), 200, { delay: 0.01 });
      await page.waitForFunction(() => window.testState.count >= 60, null, { timeout: 20000 });
      proxy.cut();
      await writing;
      await page.waitForFunction(() => window.testState.ended, null, { timeout: 30000 });
      const st = await page.evaluate(() => window.testState);
      const items = await page.$$eval('#out li', (lis) => lis.map((li) => JSON.parse(li.textContent)));
      assert.equal(items.length, 200, 'the page shows every message exactly once');
      items.forEach((m, i) => assert.deepEqual(m, expectedMessage(i)));
      assert.deepEqual(st.endData, { done: 200 });
      // Long-poll may not notice: Chromium silently retries a GET whose reused keep-alive
      // connection was reset. Streams always notice.
      if (transport !== 'poll') assert.ok(st.states.includes('reconnecting'), 'the cut was noticed: ' + st.states.join(','));
      if (transport !== 'auto') assert.equal(st.adapter, transport);
      t.diagnostic(`transport used: ${st.transport} (${st.adapter}); states: ${st.states.join(' > ')}`);
      if (transport === 'auto') {
        mkdirSync(join(REPO, 'test-artifacts'), { recursive: true });
        await page.screenshot({ path: join(REPO, 'test-artifacts', 'js-browser.png') });
      }
    } catch (e) {
      e.message += '\npage console:\n' + logs.join('\n');
      throw e;
    } finally {
      await page.close();
    }
  });
}

test('chromium: page hidden then visible resumes at once from the last id (a frozen line is not waited out)', { skip }, async () => {
  const page = await browser.newPage();
  try {
    // Idle watchdog of 60 s: only the visibility hook can explain a quick resume.
    await page.goto(`http://127.0.0.1:${site.address().port}/?broker=${encodeURIComponent(proxy.url)}&transport=fetch&idle=60000`);
    await page.waitForFunction(() => window.testState && window.testState.token, null, { timeout: 15000 });
    const token = await page.evaluate(() => window.testState.token);
    const writing = pythonWrite(JSON.parse(token), 200, { delay: 0.01 });
    await page.waitForFunction(() => window.testState.count >= 50, null, { timeout: 20000 });
    // The phone locks: the connection freezes silently while the page is hidden (for over the
    // 1 s after which a show resumes at once: a duration being simulated, not a synchronisation).
    proxy.hangCurrent();
    const setVisibility = (v) =>
      page.evaluate((v) => {
        Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => v });
        document.dispatchEvent(new Event('visibilitychange'));
      }, v);
    await setVisibility('hidden');
    await writing;
    await sleep(1200);
    const t0 = Date.now();
    await setVisibility('visible');
    await page.waitForFunction(() => window.testState.ended, null, { timeout: 15000 });
    const elapsed = Date.now() - t0;
    const items = await page.$$eval('#out li', (lis) => lis.map((li) => JSON.parse(li.textContent)));
    assert.equal(items.length, 200);
    items.forEach((m, i) => assert.deepEqual(m, expectedMessage(i)));
    assert.ok(elapsed < 10000, `resumed ${elapsed} ms after becoming visible`);
  } finally {
    await page.close();
  }
});

test("chromium: the browser's online event resumes at once instead of waiting out the backoff", { skip }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  try {
    // A 60 s backoff (at least 15 s per wait): only the online event can explain a quick resume.
    await page.goto(`http://127.0.0.1:${site.address().port}/?broker=${encodeURIComponent(proxy.url)}&transport=fetch&backoff=60000`);
    await page.waitForFunction(() => window.testState && window.testState.token, null, { timeout: 15000 });
    const token = await page.evaluate(() => window.testState.token);
    const writing = pythonWrite(JSON.parse(token), 200, { delay: 0.01 });
    await page.waitForFunction(() => window.testState.count >= 50, null, { timeout: 20000 });
    await context.setOffline(true); // the phone loses its network...
    proxy.cut(); // ...and with it the stream
    await page.waitForFunction(() => window.testState.states.includes('reconnecting'), null, { timeout: 10000 });
    await writing;
    const t0 = Date.now();
    await context.setOffline(false); // the network is back: Chromium fires `online`
    await page.waitForFunction(() => window.testState.ended, null, { timeout: 15000 });
    const elapsed = Date.now() - t0;
    const items = await page.$$eval('#out li', (lis) => lis.map((li) => JSON.parse(li.textContent)));
    assert.equal(items.length, 200);
    items.forEach((m, i) => assert.deepEqual(m, expectedMessage(i)));
    assert.ok(elapsed < 4000, `resumed ${elapsed} ms after the network came back (the backoff alone waits >= 15 s)`);
  } finally {
    await context.close();
  }
});

test('chromium: a page reloaded mid-answer rejoins its channel (persist in localStorage) and shows it all', { skip }, async () => {
  const page = await browser.newPage();
  try {
    const url = `http://127.0.0.1:${site.address().port}/?broker=${encodeURIComponent(proxy.url)}&transport=auto&persist=answer`;
    await page.goto(url);
    await page.waitForFunction(() => window.testState && window.testState.token, null, { timeout: 15000 });
    const token = await page.evaluate(() => window.testState.token);
    assert.equal(await page.evaluate(() => window.testState.restored), false);
    const saved = JSON.parse(await page.evaluate(() => localStorage.getItem('unbroken:answer')));
    assert.equal(saved.channel, JSON.parse(token).channel);
    const writing = pythonWrite(JSON.parse(token), 200, { delay: 0.01 });
    await page.waitForFunction(() => window.testState.count >= 50, null, { timeout: 20000 });
    await page.reload(); // the user reloads while the answer is still streaming
    await page.waitForFunction(() => window.testState && window.testState.token, null, { timeout: 15000 });
    assert.equal(await page.evaluate(() => window.testState.restored), true, 'the reloaded page found its channel');
    await writing;
    await page.waitForFunction(() => window.testState.ended, null, { timeout: 30000 });
    const items = await page.$$eval('#out li', (lis) => lis.map((li) => JSON.parse(li.textContent)));
    assert.equal(items.length, 200, 'the whole answer, exactly once, after the reload');
    items.forEach((m, i) => assert.deepEqual(m, expectedMessage(i)));
    assert.equal(await page.evaluate(() => localStorage.getItem('unbroken:answer')), null, 'forgotten once ended');
  } finally {
    await page.close();
  }
});
