// bin/thinbd picks a one-file bundle (its command group's, named by dist/thinbd-commands.json, else
// dist/thinbd.cjs) only while it is at least as new as the compiled modules, so a `tsc` run
// without the bundle step never runs stale code. (The other CLI
// tests run the real bundle, worker threads included: archive pack, image import.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { thinbd, THINBD } from './run-thinbd.ts';

const ROOT = resolve(import.meta.dirname, '..', '..');

/** A copy of bin/thinbd beside a fake dist/ whose entry points say which one ran. */
function fakeInstall(extraEnv: Record<string, string> = {}): { dir: string; run: (...args: string[]) => string; age: (path: string, seconds: number) => void } {
  const dir = mkdtempSync(join(tmpdir(), 'thinbd-launcher-'));
  mkdirSync(join(dir, 'bin'));
  mkdirSync(join(dir, 'dist', 'cli'), { recursive: true });
  copyFileSync(THINBD, join(dir, 'bin', 'thinbd'));
  copyFileSync(join(ROOT, 'bin', 'package.json'), join(dir, 'bin', 'package.json'));
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n');
  writeFileSync(join(dir, 'dist', 'thinbd.cjs'), "exports.main = async () => { console.log('bundle'); return 0; };\n");
  writeFileSync(join(dir, 'dist', 'thinbd-check.cjs'), "exports.main = async (argv) => { console.log('check group ' + argv.join(' ')); return 0; };\n");
  writeFileSync(join(dir, 'dist', 'thinbd-commands.json'), '{ "check": "thinbd-check.cjs", "scrub": "thinbd-check.cjs", "scrub all": "thinbd-check.cjs" }\n');
  writeFileSync(join(dir, 'dist', 'cli', 'main.js'), "export async function main() { console.log('modules'); return 0; }\n");
  const run = (...args: string[]): string => {
    const env = { ...process.env, XDG_CACHE_HOME: join(dir, 'cache'), ...extraEnv };
    const result = spawnSync(process.execPath, [join(dir, 'bin', 'thinbd'), ...args], { encoding: 'utf8', timeout: 60_000, env });
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

test("a command runs its group's bundle while it and the command list are as new as the modules; help and unknown commands the whole bundle", () => {
  const install = fakeInstall();
  try {
    install.age('dist/cli/main.js', 60);
    assert.equal(install.run('check', '--pool', 'p'), 'check group check --pool p');
    assert.equal(install.run('--verbose', 'scrub'), 'check group --verbose scrub');
    assert.equal(install.run('--help'), 'bundle');
    assert.equal(install.run('dump', '--pool', 'p'), 'bundle', 'a command the list does not name');
    assert.equal(install.run('constructor'), 'bundle', 'a name the list object inherits');
    install.age('dist/thinbd-check.cjs', 120);
    assert.equal(install.run('check'), 'bundle', "the group's bundle older than the modules");
    install.age('dist/thinbd-check.cjs', 0);
    install.age('dist/thinbd-commands.json', 120);
    assert.equal(install.run('check'), 'bundle', 'the command list older than the modules');
    install.age('dist/thinbd-commands.json', 0);
    writeFileSync(join(install.dir, 'dist', 'thinbd-commands.json'), '{ "check": ');
    assert.equal(install.run('check'), 'bundle', 'a command list cut short');
    writeFileSync(join(install.dir, 'dist', 'thinbd-commands.json'), '{ "check": "../cli/main.js" }\n');
    assert.equal(install.run('check'), 'bundle', 'a command list naming a file that is not a bundle');
    install.age('dist/thinbd.cjs', 120);
    assert.equal(install.run('check'), 'modules');
  } finally {
    rmSync(install.dir, { recursive: true, force: true });
  }
});

test("the build made a bundle per command group and the list of each command's bundle", () => {
  const compiled = statSync(join(ROOT, 'dist', 'cli', 'main.js')).mtimeMs;
  const list = join(ROOT, 'dist', 'thinbd-commands.json');
  assert.ok(statSync(list, { throwIfNoEntry: false }) !== undefined, 'dist/thinbd-commands.json is missing: build with `npm run build`');
  const bundles = JSON.parse(readFileSync(list, 'utf8')) as Record<string, string>;
  for (const command of ['pool', 'create', 'check', 'scrub', 'serve', 'dump', 'delta', 'archive', 'image', 'import']) {
    const file = bundles[command];
    assert.ok(file !== undefined, `no bundle for ${command}`);
    assert.ok(statSync(join(ROOT, 'dist', file)).mtimeMs >= compiled, `dist/${file} is older than dist/cli/main.js`);
  }
  assert.equal(bundles['check'], bundles['scrub']);
  assert.notEqual(bundles['check'], bundles['dump']);
});

test('the build made the bundle, and bin/thinbd runs it', () => {
  const bundle = statSync(join(ROOT, 'dist', 'thinbd.cjs'), { throwIfNoEntry: false });
  assert.ok(bundle !== undefined, 'dist/thinbd.cjs is missing: build with `npm run build` (tsc, then scripts/bundle.mjs)');
  assert.ok(bundle.mtimeMs >= statSync(join(ROOT, 'dist', 'cli', 'main.js')).mtimeMs, 'dist/thinbd.cjs is older than dist/cli/main.js: run `npm run build`');
  const version = thinbd(['--version']);
  assert.equal(version.code, 0, version.stderr);
  assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
});

/** The code caches of a fake install: file name → modification time (ms). */
function caches(dir: string): Map<string, number> {
  const directory = join(dir, 'cache', 'thinbd', 'code-cache');
  if (statSync(directory, { throwIfNoEntry: false }) === undefined) return new Map();
  return new Map(readdirSync(directory).map((name) => [name, statSync(join(directory, name)).mtimeMs]));
}

test('a bundle runs through a code cache per command, written once, in a directory only the user can write', () => {
  const install = fakeInstall();
  try {
    install.age('dist/cli/main.js', 60);
    assert.equal(install.run('check', '--pool', 'p'), 'check group check --pool p');
    const first = caches(install.dir);
    assert.deepEqual([...first.keys()].map((name) => name.split('.').slice(0, 2).join('.')), ['thinbd-check.check']);
    assert.equal(statSync(join(install.dir, 'cache', 'thinbd', 'code-cache')).mode & 0o777, 0o700);
    // Accepted by V8 the second time: not written again.
    assert.equal(install.run('check', '--pool', 'p'), 'check group check --pool p');
    assert.deepEqual(caches(install.dir), first);
    // A subcommand the list names has its own cache; the help its own.
    assert.equal(install.run('scrub', 'all'), 'check group scrub all');
    assert.equal(install.run('--help'), 'bundle');
    assert.deepEqual([...caches(install.dir).keys()].map((name) => name.split('.').slice(0, 2).join('.')).sort(), ['thinbd-check.check', 'thinbd-check.scrub-all', 'thinbd.all']);
    // A cache V8 refuses (not one it made) is ignored and written again.
    const [name] = [...first.keys()];
    const path = join(install.dir, 'cache', 'thinbd', 'code-cache', name!);
    writeFileSync(path, 'not a code cache');
    assert.equal(install.run('check', '--pool', 'p'), 'check group check --pool p');
    assert.notEqual(readFileSync(path, 'utf8'), 'not a code cache');
    // A new build of the bundle gets a new cache, and the old one goes.
    writeFileSync(join(install.dir, 'dist', 'thinbd-check.cjs'), "exports.main = async () => { console.log('check group, rebuilt'); return 0; };\n");
    assert.equal(install.run('check'), 'check group, rebuilt');
    const checkCaches = [...caches(install.dir).keys()].filter((entry) => entry.startsWith('thinbd-check.check.'));
    assert.equal(checkCaches.length, 1);
    assert.notEqual(checkCaches[0], name);
    // Another install of thinbd keeps its own cache beside this one's.
    const other = fakeInstall({ XDG_CACHE_HOME: join(install.dir, 'cache') });
    try {
      other.age('dist/cli/main.js', 60);
      assert.equal(other.run('check'), 'check group check');
      assert.equal([...caches(install.dir).keys()].filter((entry) => entry.startsWith('thinbd-check.check.')).length, 2);
    } finally {
      rmSync(other.dir, { recursive: true, force: true });
    }
  } finally {
    rmSync(install.dir, { recursive: true, force: true });
  }
});

test("a code cache file that is not the user's own is not run: V8 checks only the source's length, so a cache is code", () => {
  assert.equal(process.getuid?.(), 0, 'this test gives the cache file to another user with chown and must run as root (npm test does)');
  const install = fakeInstall();
  try {
    install.age('dist/cli/main.js', 60);
    assert.equal(install.run('check'), 'check group check');
    const [name] = [...caches(install.dir).keys()];
    const cachePath = join(install.dir, 'cache', 'thinbd', 'code-cache', name!);
    // A cache of other code with the bundle's length, as anyone could make who can swap the cache
    // directory under the launcher (one in a directory of theirs: sudo keeping HOME, a shared
    // XDG_CACHE_HOME).
    const bundle = join(install.dir, 'dist', 'thinbd-check.cjs');
    const forge = [
      "const { readFileSync, writeFileSync } = require('node:fs'); const Module = require('node:module'); const vm = require('node:vm');",
      "const [bundle, out] = process.argv.slice(1);",
      "const source = readFileSync(bundle, 'utf8').replace('check group ', 'evil! group ');",
      "const script = new vm.Script(Module.wrap(source), { filename: bundle });",
      "const module = { exports: {} }; script.runInThisContext().call(module.exports, module.exports, require, module, bundle, '.');",
      "module.exports.main(['x']).then(() => writeFileSync(out, script.createCachedData()));",
    ].join('\n');
    const forged = spawnSync(process.execPath, ['-e', forge, bundle, cachePath], { encoding: 'utf8' });
    assert.equal(forged.status, 0, forged.stderr);
    assert.equal(install.run('check'), 'evil! group check', 'V8 runs a cache made of other source of the same length');
    chownSync(cachePath, 41002, 41002);
    assert.equal(install.run('check'), 'check group check');
  } finally {
    rmSync(install.dir, { recursive: true, force: true });
  }
});

test('no code cache when it is turned off or its directory is writable by others', () => {
  const off = fakeInstall({ THINBD_CODE_CACHE: '0' });
  try {
    install(off);
    assert.equal(statSync(join(off.dir, 'cache'), { throwIfNoEntry: false }), undefined);
  } finally {
    rmSync(off.dir, { recursive: true, force: true });
  }
  const open = fakeInstall();
  try {
    mkdirSync(join(open.dir, 'cache', 'thinbd', 'code-cache'), { recursive: true });
    chmodSync(join(open.dir, 'cache', 'thinbd', 'code-cache'), 0o777);
    install(open);
    assert.deepEqual([...caches(open.dir).keys()], []);
  } finally {
    rmSync(open.dir, { recursive: true, force: true });
  }

  function install(fake: ReturnType<typeof fakeInstall>): void {
    fake.age('dist/cli/main.js', 60);
    assert.equal(fake.run('check'), 'check group check');
  }
});
