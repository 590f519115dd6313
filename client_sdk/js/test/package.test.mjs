// Packaging: zero runtime dependencies, ESM + CJS entry points, strict-clean public types, and
// the size budget (checked on every CI run).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));

// Budgets, comments included (no minifier is assumed; apps' bundlers minify). Raise them only
// with a reason in the commit message.
// - reader: every module an app that imports SSEChannel ships (found by following the imports
//   from channel.js). This is what runs on phones and in mini-programs (WeChat caps a package at
//   2 MB), so it is the budget that matters.
// - writer: the backend side (deserializeChannel: HTTP on fetch / Node http / uniCloud, write
//   coalescing, the cancel watch). It runs in Node and cloud functions and is tree-shaken out of
//   apps (`sideEffects: false`), so it has its own, looser budget.
const BUDGET = { readerRaw: 80 * 1024, readerGzip: 20 * 1024, writerRaw: 30 * 1024, cjsRaw: 130 * 1024 };

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

/** The ESM files reachable from `entry` through relative imports (what a bundler would keep). */
function reachable(entry) {
  const seen = new Set();
  const visit = (file) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const m of readFileSync(file, 'utf8').matchAll(/(?:from|import)\s*['"](\.[^'"]+)['"]/g)) visit(join(dirname(file), m[1]));
  };
  visit(entry);
  return [...seen];
}

test('size budget', (t) => {
  const esmDir = join(ROOT, 'dist', 'esm');
  const readerFiles = reachable(join(esmDir, 'channel.js'));
  const writerFiles = reachable(join(esmDir, 'writer.js')).filter((f) => !readerFiles.includes(f));
  assert.ok(!readerFiles.some((f) => /writer|backend-http/.test(f)), 'the reader does not pull in the writer');
  const reader = Buffer.concat(readerFiles.map((f) => readFileSync(f)));
  const writer = Buffer.concat(writerFiles.map((f) => readFileSync(f)));
  const cjs = Buffer.concat(jsFiles(join(ROOT, 'dist', 'cjs')).map((f) => readFileSync(f)));
  const sizes = {
    readerRaw: reader.length,
    readerGzip: gzipSync(reader, { level: 9 }).length,
    writerRaw: writer.length,
    cjsRaw: cjs.length,
  };
  t.diagnostic(`bundle sizes: ${JSON.stringify(sizes)} budget: ${JSON.stringify(BUDGET)}`);
  for (const k of Object.keys(BUDGET)) assert.ok(sizes[k] <= BUDGET[k], `${k} ${sizes[k]} > budget ${BUDGET[k]}`);
});

test('npm pack makes a tarball that installs offline into a fresh project and imports (ESM and CJS)', () => {
  // What README and examples/ tell users to do until the package is on a registry.
  const tmp = mkdtempSync(join(tmpdir(), 'unbroken-pack-'));
  try {
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    // dist is built by `npm test`; prepack would build again.
    const out = execFileSync(npm, ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], { cwd: ROOT, encoding: 'utf8' });
    const [info] = JSON.parse(out);
    assert.equal(info.filename, `unbroken-channel-${pkg.version}.tgz`);
    const files = info.files.map((f) => f.path);
    assert.ok(files.includes('dist/esm/index.js') && files.includes('dist/cjs/index.js') && files.includes('dist/esm/index.d.ts'));
    assert.ok(!files.some((f) => f.startsWith('src/') || f.startsWith('test/')), 'only dist and README ship');
    const app = join(tmp, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    execFileSync(npm, ['install', '--offline', '--no-audit', '--no-fund', join(tmp, info.filename)], { cwd: app, stdio: 'pipe' });
    const check = `const { SSEChannel, deserializeChannel, deserializeSSEChannel, State } = require('unbroken-channel');
      if (typeof SSEChannel !== 'function' || deserializeSSEChannel !== deserializeChannel || State.Cancelled !== 'cancelled') process.exit(1);`;
    execFileSync(process.execPath, ['-e', check], { cwd: app, stdio: 'pipe' });
    execFileSync(process.execPath, ['--input-type=module', '-e', `import { SSEChannel } from 'unbroken-channel'; if (typeof SSEChannel !== 'function') process.exit(1);`], { cwd: app, stdio: 'pipe' });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
