// The dashboard on a broker that has no admin token: the page must say admin is disabled (not
// show a login form that can never work). For tests/test_dashboard_admin_disabled.py.
//
// Usage: node dashboard_disabled.mjs <broker url>
// Prints one JSON line: {"login": bool, "error": "<text under the form>"}; exits non-zero on failure.

import { chromium } from 'playwright-core';

const [base] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROME_PATH || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
  await page.goto(`${base}/dashboard`);
  await page.getByTestId('login').waitFor({ state: 'visible' });
  await page.waitForFunction(() => document.getElementById('login-error').textContent !== '');
  const error = await page.locator('#login-error').innerText();
  console.log(JSON.stringify({ login: true, error }));
} catch (err) {
  console.error(String(err));
  process.exitCode = 1;
} finally {
  await browser.close();
}
