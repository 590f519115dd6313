// Packaging: zero runtime dependencies, ESM + CJS entry points, strict-clean public types, and
// the size budget (checked on every CI run).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));

// Budget for everything the package ships as JavaScript (comments included: no minifier is
// assumed; apps' bundlers minify). Raise it only with a reason in the commit message.
const BUDGET = { esmRaw: 80 * 1024, esmGzip: 20 * 1024, cjsRaw: 85 * 1024 };

function jsFiles(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? jsFiles(p) : p.endsWith('.js') ? [p] : [];
  });
}

test('zero runtime dependencies; ws is an optional peer', () => {
  assert.equal(pkg.name, 'unbroken-channel');
  assert.deepEqual(pkg.dependencies ?? {}, {});
  assert.equal(pkg.peerDependenciesMeta.ws.optional, true);
});

test('ESM and CJS entry points export the same API', async () => {
  const esm = await import('unbroken-channel');
  const cjs = createRequire(import.meta.url)('unbroken-channel');
  assert.deepEqual(Object.keys(esm).sort(), Object.keys(cjs).sort());
  for (const name of ['SSEChannel', 'deserializeChannel', 'UnbrokenError']) assert.equal(typeof cjs[name], 'function');
});

test('public .d.ts compile under --strict in an app', () => {
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', join(ROOT, 'test', 'types', 'tsconfig.json')], { stdio: 'pipe' });
  // And the sources themselves, strict and without DOM or Node typings.
  execFileSync(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.json'), '--noEmit'], { stdio: 'pipe' });
});

test('size budget', (t) => {
  const esm = Buffer.concat(jsFiles(join(ROOT, 'dist', 'esm')).map((f) => readFileSync(f)));
  const cjs = Buffer.concat(jsFiles(join(ROOT, 'dist', 'cjs')).map((f) => readFileSync(f)));
  const sizes = { esmRaw: esm.length, esmGzip: gzipSync(esm, { level: 9 }).length, cjsRaw: cjs.length };
  t.diagnostic(`bundle sizes: ${JSON.stringify(sizes)} budget: ${JSON.stringify(BUDGET)}`);
  for (const k of Object.keys(BUDGET)) assert.ok(sizes[k] <= BUDGET[k], `${k} ${sizes[k]} > budget ${BUDGET[k]}`);
});
