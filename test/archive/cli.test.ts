// The archive commands' front door: usage errors exit 2 and do nothing, failures exit 1 with
// one line that says why, and the happy path prints what a user needs.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { thinbd, thinbdJson } from '../cli/run-thinbd.ts';
import { startServe } from '../daemon/serve-process.ts';
import { MiB, contentBytes, tempDir } from './helpers.ts';

const dir = tempDir('archive-cli');
const pool = join(dir.path, 'pool');
const store = join(dir.path, 'store');

function ok(args: string[]): string {
  const result = thinbd(args);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

before(() => {
  ok(['pool', 'create', '--pool', pool, '--data-size', '256M']);
  const image = join(dir.path, 'image');
  writeFileSync(image, contentBytes(2 * MiB, 1));
  ok(['import', '--pool', pool, 'vol', image]);
  ok(['snapshot', '--pool', pool, 'vol', 'ro', '--read-only']);
  ok(['archive', 'init', '--store', store]);
});

after(() => dir.remove());

describe('archive usage errors exit 2 and change nothing', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['no store', ['archive', 'list'], /--store: name an archive store/],
    ['a chunk size that is not a power of two', ['archive', 'init', '--store', join(dir.path, 'x'), '--chunk-size', '48k'], /--chunk-size: 48k is not a power of two/],
    ['a chunk size out of range', ['archive', 'init', '--store', join(dir.path, 'x'), '--chunk-size', '2M'], /--chunk-size/],
    ['a level that is not a number', ['archive', 'init', '--store', join(dir.path, 'x'), '--level', 'fast'], /--level: 'fast' is not a zstd level/],
    ['a bad stream name', ['archive', 'pack', '--pool', pool, 'vol', '--store', store, '--name', '../x'], /Invalid stream name/],
    ['a bad volume name', ['archive', 'unpack', '--pool', pool, '--store', store, 's', 'a b'], /Invalid volume name/],
    ['a missing argument', ['archive', 'unpack', '--pool', pool, '--store', store, 's'], /missing required argument/],
  ];
  for (const [what, args, pattern] of cases) {
    test(what, () => {
      const result = thinbd(args);
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, pattern);
      assert.equal(existsSync(join(dir.path, 'x')), false, 'nothing was created');
    });
  }
});

describe('archive failures exit 1 with one line', () => {
  const cases: Array<[string, () => string[], RegExp]> = [
    ['init over an existing store', () => ['archive', 'init', '--store', store], /An archive store already exists at/],
    ['a directory that holds no store', () => ['archive', 'list', '--store', join(dir.path, 'nothing')], /No archive store at .*nothing \(no config object\); create one with 'thinbd archive init/],
    ['a missing volume', () => ['archive', 'pack', '--pool', pool, 'nope', '--store', store], /No volume named nope/],
    ['--delta-from a writable volume', () => ['archive', 'pack', '--pool', pool, 'vol', '--store', store, '--delta-from', 'vol2'], /No volume named vol2|writable/],
    ['--delta-from a snapshot never packed', () => ['archive', 'pack', '--pool', pool, 'vol', '--store', store, '--delta-from', 'ro'], /--delta-from ro: no stream in .* was packed from this volume; pack it first/],
    ['a missing stream', () => ['archive', 'unpack', '--pool', pool, '--store', store, 'nope', 'v'], /No stream named nope in/],
    ['verify of a missing stream', () => ['archive', 'verify', '--store', store, 'nope'], /No stream named nope/],
    ['rm of a missing stream', () => ['archive', 'rm', '--store', store, 'nope'], /No stream named nope/],
  ];
  for (const [what, args, pattern] of cases) {
    test(what, () => {
      const result = thinbd(args());
      assert.equal(result.code, 1, result.stderr);
      assert.match(result.stderr, pattern);
      assert.equal(result.stderr.trim().split('\n').length, 1, `one line: ${result.stderr}`);
    });
  }

  test('--delta-from a writable volume says to use a read-only snapshot', () => {
    ok(['snapshot', '--pool', pool, 'vol', 'rw']);
    const result = thinbd(['archive', 'pack', '--pool', pool, 'vol', '--store', store, '--delta-from', 'rw']);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /--delta-from rw: the volume is writable, so its blocks may have changed since it was packed; pack against a read-only snapshot/);
  });

  test('a stream name that is taken', () => {
    ok(['archive', 'pack', '--pool', pool, 'ro', '--store', store, '--name', 'taken']);
    const result = thinbd(['archive', 'pack', '--pool', pool, 'ro', '--store', store, '--name', 'taken']);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /A stream named taken already exists/);
  });

  test('unpack into a read-only volume is refused', () => {
    const result = thinbd(['archive', 'unpack', '--pool', pool, '--store', store, 'taken', 'ro']);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /Volume ro is read-only/);
  });

  test('pack and unpack on a served pool are refused, naming the server', async () => {
    const server = await startServe(pool);
    try {
      for (const args of [
        ['archive', 'pack', '--pool', pool, 'ro', '--store', store],
        ['archive', 'unpack', '--pool', pool, '--store', store, 'taken', 'x'],
      ]) {
        const result = thinbd(args);
        assert.equal(result.code, 1);
        assert.match(result.stderr, /being served by 'thinbd serve'/);
      }
    } finally {
      await server.stop();
    }
  });
});

test('the default stream name is VOLUME.<UTC time>, and list shows it', () => {
  const packed = thinbdJson<{ stream: string; parent?: string }>(['archive', 'pack', '--pool', pool, 'ro', '--store', store]);
  assert.match(packed.stream, /^ro\.\d{8}T\d{6}Z$/);
  const listed = ok(['archive', 'list', '--store', store]);
  assert.match(listed, new RegExp(`^${packed.stream.replace('.', '\\.')}\\s+2M\\s+2M\\s+2M`, 'm'));
  assert.match(listed, /\d+ streams; \d+ packs/);
});
