// bin/thinbd picks the one-file bundle (dist/thinbd.cjs) only while it is at least as new as the
// compiled modules, so a `tsc` run without the bundle step never runs stale code. (The other CLI
// tests run the real bundle, worker threads included: archive pack, image import.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { thinbd, THINBD } from './run-thinbd.ts';

const ROOT = resolve(import.meta.dirname, '..', '..');

/** A copy of bin/thinbd beside a fake dist/ whose two entry points say which one ran. */
function fakeInstall(): { dir: string; run: () => string; age: (path: string, seconds: number) => void } {
  const dir = mkdtempSync(join(tmpdir(), 'thinbd-launcher-'));
  mkdirSync(join(dir, 'bin'));
  mkdirSync(join(dir, 'dist', 'cli'), { recursive: true });
  copyFileSync(THINBD, join(dir, 'bin', 'thinbd'));
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n');
  writeFileSync(join(dir, 'dist', 'thinbd.cjs'), "exports.main = async () => { console.log('bundle'); return 0; };\n");
  writeFileSync(join(dir, 'dist', 'cli', 'main.js'), "export async function main() { console.log('modules'); return 0; }\n");
  const run = (): string => {
    const result = spawnSync(process.execPath, [join(dir, 'bin', 'thinbd')], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(result.status, 0, result.stderr);
    return result.stdout.trim();
  };
  const age = (path: string, seconds: number): void => {
    const when = new Date(Date.now() - seconds * 1000);
    utimesSync(join(dir, path), when, when);
  };
  return { dir, run, age };
}

test('the launcher runs the bundle when it is as new as the modules, the modules when tsc ran after it or it is missing', () => {
  const install = fakeInstall();
  try {
    install.age('dist/cli/main.js', 60);
    assert.equal(install.run(), 'bundle');
    install.age('dist/thinbd.cjs', 120);
    assert.equal(install.run(), 'modules');
    rmSync(join(install.dir, 'dist', 'thinbd.cjs'));
    assert.equal(install.run(), 'modules');
  } finally {
    rmSync(install.dir, { recursive: true, force: true });
  }
});

test('the build made the bundle, and bin/thinbd runs it', () => {
  const bundle = statSync(join(ROOT, 'dist', 'thinbd.cjs'), { throwIfNoEntry: false });
  assert.ok(bundle !== undefined, 'dist/thinbd.cjs is missing: build with `npm run build` (tsc, then scripts/bundle.mjs)');
  assert.ok(bundle.mtimeMs >= statSync(join(ROOT, 'dist', 'cli', 'main.js')).mtimeMs, 'dist/thinbd.cjs is older than dist/cli/main.js: run `npm run build`');
  const version = thinbd(['--version']);
  assert.equal(version.code, 0, version.stderr);
  assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
});
