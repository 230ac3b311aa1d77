// The archive commands' front door: usage errors exit 2 and do nothing, failures exit 1 with
// one line that says why, and the happy path prints what a user needs.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { THINBD, thinbd, thinbdJson } from '../cli/run-thinbd.ts';
import { run } from '../nbd/helpers.ts';
import { NbdTestClient } from '../nbd/client.ts';
import { NBD_CMD_FLUSH, NBD_CMD_WRITE } from '../../src/nbd/protocol.ts';
import { startServe } from '../daemon/serve-process.ts';
import { MiB, contentBytes, tempDir } from './helpers.ts';

const dir = tempDir('archive-cli');
const pool = join(dir.path, 'pool');
const store = join(dir.path, 'store');

/** Runs thinbd without blocking the event loop, so an NBD client in this process keeps going. */
function runThinbd(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return run(process.execPath, [THINBD, ...args], { allowFailure: true });
}

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
    ['init under a file', () => ['archive', 'init', '--store', join(dir.path, 'image', 'store')], /^thinbd: Cannot create an archive store at .*image\/store: .*image is a file, not a directory$/m],
    ['init onto a file', () => ['archive', 'init', '--store', join(dir.path, 'image')], /^thinbd: Cannot create an archive store at .*image: it is a file, not a directory$/m],
    ['init into a directory that holds other things', () => ['archive', 'init', '--store', pool], /Cannot create an archive store at .*pool: the directory is not empty \('data', [^)]*\) and holds no archive store; name a new or empty directory/],
    ['a directory that holds no store', () => ['archive', 'list', '--store', join(dir.path, 'nothing')], /No archive store at .*nothing \(no config object\); create one with 'thinbd archive init/],
    ['a missing volume', () => ['archive', 'pack', '--pool', pool, 'nope', '--store', store], /No volume named nope/],
    ['--delta-from of no volume names the option', () => ['archive', 'pack', '--pool', pool, 'vol', '--store', store, '--delta-from', 'vol2'], /^thinbd: --delta-from: no volume named vol2$/m],
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

  test('unpack on a served pool is refused, naming the server', async () => {
    const server = await startServe(pool);
    try {
      const result = thinbd(['archive', 'unpack', '--pool', pool, '--store', store, 'taken', 'x']);
      assert.equal(result.code, 1);
      assert.match(result.stderr, /being served by 'thinbd serve'/);
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

test('init takes a new directory (with its parents) or an empty one', () => {
  const empty = join(dir.path, 'empty-store');
  mkdirSync(empty);
  ok(['archive', 'init', '--store', empty]);
  ok(['archive', 'init', '--store', join(dir.path, 'new', 'parents', 'store')]);
  ok(['archive', 'list', '--store', empty]);
});

test('a pack that stores nothing new has no ratios (null), and list shows it as all shared, not 0.0x', () => {
  ok(['archive', 'pack', '--pool', pool, 'ro', '--store', store, '--name', 'shared-1']);
  const again = thinbdJson<{ bytesStored: number; compressionRatio: number | null; dedupRatio: number | null }>(['archive', 'pack', '--pool', pool, 'ro', '--store', store, '--name', 'shared-2', '--json']);
  assert.equal(again.bytesStored, 0);
  assert.equal(again.compressionRatio, null);
  assert.equal(again.dedupRatio, null);
  const listing = thinbdJson<{ streams: Array<{ name: string; dedupRatio: number | null }> }>(['archive', 'list', '--store', store, '--json']);
  assert.equal(listing.streams.find((stream) => stream.name === 'shared-2')?.dedupRatio, null);
  assert.match(ok(['archive', 'list', '--store', store]), /^shared-2\s+2M\s+2M\s+2M\s+0B\s+all shared\s+-\s/m);
});

test('pack works on a served pool while a client writes: a writable volume goes through a read-only snapshot of it', async () => {
  const slot = 4096;
  const slots = 1024; // 4 MiB
  const live = join(dir.path, 'live-pool');
  ok(['pool', 'create', '--pool', live, '--data-size', '64M']);
  ok(['create', '--pool', live, 'disk', '--size', '4M']);
  const fill = (index: number, round: number): Buffer => Buffer.alloc(slot, ((index * 7 + round) % 251) + 1);
  const server = await startServe(live);
  const client = await NbdTestClient.connect({ port: server.port });
  let writing = true;
  let rewrites = 0;
  try {
    await client.handshake('disk');
    for (let index = 0; index < slots; index += 1) {
      assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: index * slot, data: fill(index, 0) })).error, 0);
    }
    assert.equal((await client.call(NBD_CMD_FLUSH)).error, 0);
    // While the pack runs, the client rewrites the second half, slot by slot, flushing as it goes.
    const writer = (async () => {
      for (let index = slots / 2; writing; index = index + 1 < slots ? index + 1 : slots / 2) {
        assert.equal((await client.call(NBD_CMD_WRITE, { offsetBytes: index * slot, data: fill(index, 1) })).error, 0);
        rewrites += 1;
        if (rewrites % 64 === 0) assert.equal((await client.call(NBD_CMD_FLUSH)).error, 0);
      }
    })();
    const packed = await runThinbd(['archive', 'pack', '--pool', live, 'disk', '--store', store, '--name', 'live.1', '--keep-snapshot', '--json']);
    const second = await runThinbd(['archive', 'pack', '--pool', live, 'disk', '--store', store, '--name', 'live.2', '--delta-from', 'live.1', '--json']);
    writing = false;
    await writer;
    assert.equal(packed.code, 0, packed.stderr);
    assert.equal(second.code, 0, second.stderr);
    assert.match(packed.stderr, /packing disk through its read-only snapshot live\.1 \(kept\)/);
    // The first snapshot stays (--keep-snapshot), the second goes with its pack.
    const volumes = (JSON.parse((await runThinbd(['list', '--pool', live, '--json'])).stdout) as Array<{ name: string; readOnly: boolean }>).map((v) => `${v.name}:${v.readOnly}`);
    assert.deepEqual(volumes.sort(), ['disk:false', 'live.1:true']);
  } finally {
    writing = false;
    client.close();
    assert.equal(await server.stop(), 0, server.output());
  }
  assert.ok(rewrites > 0, 'the client wrote while the packs ran');
  // Unpacked elsewhere, each stream is one point in the volume's life: the first half as written
  // before, every slot of the second half whole (before or after its rewrite), never torn.
  const elsewhere = join(dir.path, 'elsewhere');
  ok(['pool', 'create', '--pool', elsewhere, '--data-size', '64M']);
  for (const stream of ['live.1', 'live.2']) {
    ok(['archive', 'unpack', '--pool', elsewhere, '--store', store, stream, stream]);
    const out = join(dir.path, `${stream}.raw`);
    ok(['export', '--pool', elsewhere, stream, out]);
    const bytes = readFileSync(out);
    assert.equal(bytes.length, slots * slot);
    for (let index = 0; index < slots; index += 1) {
      const got = bytes.subarray(index * slot, (index + 1) * slot);
      const allowed = index < slots / 2 ? [fill(index, 0)] : [fill(index, 0), fill(index, 1)];
      assert.ok(allowed.some((want) => want.equals(got)), `${stream}: slot ${index} holds what the client never wrote`);
    }
  }
  // The snapshot kept for the first pack equals what its stream unpacked to.
  const kept = join(dir.path, 'kept.raw');
  ok(['export', '--pool', live, 'live.1', kept]);
  assert.ok(readFileSync(kept).equals(readFileSync(join(dir.path, 'live.1.raw'))));
});
