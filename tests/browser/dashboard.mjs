// Drives the dashboard in Chromium (CHROME_PATH, else Debian's) for tests/test_dashboard_browser.py.
//
// Usage: node dashboard.mjs <broker url> <admin token> <channel id> <screenshot path> [mode]
// mode "eventsource" forces the dashboard's fallback tail (no JS SDK).
// Protocol with the Python test, one line each on stdout:
//   "ready"             the page lists the channel and its tail is live; the test now writes
//   {"tail": [...], …}  (after the end event showed) what the page displayed
// Any failure exits non-zero with the reason on stderr.

import { chromium } from 'playwright-core';

const [base, adminToken, channelId, screenshot, mode = 'sdk'] = process.argv.slice(2);
const TIMEOUT = 15000;

const browser = await chromium.launch({
  executablePath: process.env.CHROME_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 820 } });
const problems = [];
try {
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
  // The first data request is refused until the page has the admin token: that 401 is expected.
  if (msg.type() === 'error' && !/status of 401/.test(msg.text())) problems.push(`console: ${msg.text()}`);
});
  page.setDefaultTimeout(TIMEOUT);

  const query = mode === 'eventsource' ? '?tail=eventsource' : '';
  await page.goto(`${base}/dashboard${query}`);
  // The broker has an admin token: the page must ask for it before showing anything.
  await page.getByTestId('login').waitFor({ state: 'visible' });
  await page.getByTestId('login-token').fill(adminToken);
  await page.getByTestId('login-token').press('Enter');

  const row = page.locator(`tr[data-channel="${channelId}"]`);
  await row.waitFor();
  await page.getByTestId('rates').getByText('written/s').waitFor();
  const listed = await row.innerText();
  await row.click();
  await page.getByTestId('detail-title').getByText(channelId).waitFor();
  await page.waitForFunction(() => document.querySelector('[data-testid=tail-mode]').textContent.includes('live'));
  const tailMode = await page.getByTestId('tail-mode').innerText();
  console.log('ready');

  await page.locator('[data-testid=tail] li[data-type=end]').waitFor();
  const tail = await page.locator('[data-testid=tail] li').evaluateAll((items) =>
    items.map((li) => ({
      id: li.querySelector('.id').textContent,
      type: li.dataset.type,
      data: li.querySelector('.data').textContent,
    })));
  // Let one refresh show the final counts in the screenshot.
  await page.waitForTimeout(2200);
  const info = await page.getByTestId('detail-info').innerText();
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ tail, tailMode, listed, info, problems }));
} catch (err) {
  // Leave evidence for whoever reads the failure: what the page showed and said.
  await page.screenshot({ path: screenshot.replace(/\.png$/, '-failure.png'), fullPage: true }).catch(() => {});
  console.error(problems.join('\n'));
  throw err;
} finally {
  await browser.close();
}
