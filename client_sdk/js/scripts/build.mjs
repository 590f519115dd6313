// Builds dist/esm (ES modules + .d.ts) and dist/cjs (CommonJS + .d.ts) with tsc alone: no bundler,
// so the package has no build-time dependency beyond TypeScript.
import { execFileSync } from 'node:child_process';
import { rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
rmSync(join(root, 'dist'), { recursive: true, force: true });
const run = (...args) => execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.json'), ...args], { stdio: 'inherit', cwd: root });
run();
run('--module', 'commonjs', '--outDir', join(root, 'dist', 'cjs'));
mkdirSync(join(root, 'dist', 'cjs'), { recursive: true });
// The package is "type": "module"; this marks the CJS build as CommonJS for Node's resolver.
writeFileSync(join(root, 'dist', 'cjs', 'package.json'), '{"type":"commonjs"}\n');
