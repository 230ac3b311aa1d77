// A real filesystem through archive and back: ext4 on a thinbd volume (nbdfuse + loop, no nbd
// kernel module), files written, a read-only snapshot packed; files changed, a second snapshot
// packed --delta-from the first; both streams unpacked into another pool, each fscks clean and
// holds exactly its moment's files.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTools, run } from '../nbd/helpers.ts';
import { BLOCK_DEVICE_TOOLS, assertFiles, assertFsckClean, mixedFiles, sha256, withMount, withNbdDevice, writePatternFiles } from '../nbd/block-device.ts';
import { thinbd, thinbdJson } from '../cli/run-thinbd.ts';
import { startServe } from '../daemon/serve-process.ts';

requireTools(...BLOCK_DEVICE_TOOLS);

const MiB = 1024 * 1024;
const VOLUME_BYTES = 256 * MiB;
let work: string;

before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-archive-ext4-'));
});

after(() => {
  rmSync(work, { recursive: true, force: true });
});

function ok(args: string[]): string {
  const result = thinbd(args);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

/** Serves `pool`, attaches `volume` through nbdfuse + loop, runs `work` on the device, then detaches and stops. */
async function withDevice(pool: string, volume: string, work: (device: string) => Promise<void>): Promise<void> {
  const server = await startServe(pool);
  try {
    await withNbdDevice(server.uri(volume), { sizeBytes: VOLUME_BYTES }, work);
  } finally {
    await server.stop();
  }
}

test('ext4: pack, change files, pack --delta-from, unpack both into another pool: fsck clean, files match', async () => {
  const source = join(work, 'source');
  const target = join(work, 'target');
  const store = join(work, 'store');
  ok(['pool', 'create', '--pool', source, '--data-size', '1G']);
  ok(['pool', 'create', '--pool', target, '--data-size', '1G']);
  ok(['create', '--pool', source, 'fs', '--size', String(VOLUME_BYTES)]);
  ok(['archive', 'init', '--store', store]);

  let first = new Map<string, string>();
  await withDevice(source, 'fs', async (device) => {
    await run('mkfs.ext4', ['-q', '-F', device]);
    first = await withMount(device, (dir) => writePatternFiles(dir, mixedFiles(1, 21), 100));
  });
  ok(['snapshot', '--pool', source, 'fs', 'fs.1', '--read-only']);
  const full = thinbdJson<{ bytesRead: number; mappedBytes: number }>(['archive', 'pack', '--pool', source, 'fs.1', '--store', store, '--name', 'fs.1']);
  assert.equal(full.bytesRead, full.mappedBytes);

  const second = new Map(first);
  const removed = [join('d', 'f1-3'), join('d', 'f1-10')];
  await withDevice(source, 'fs', async (device) => {
    await withMount(device, async (dir) => {
      for (const [name, digest] of await writePatternFiles(dir, mixedFiles(2, 7), 200)) second.set(name, digest);
      for (const name of removed) {
        rmSync(join(dir, name));
        second.delete(name);
      }
      writeFileSync(join(dir, 'd', 'f1-5'), 'rewritten');
      second.set(join('d', 'f1-5'), sha256(Buffer.from('rewritten')));
    });
  });
  ok(['snapshot', '--pool', source, 'fs', 'fs.2', '--read-only']);
  const delta = thinbdJson<{ bytesRead: number; mappedBytes: number; parent: string }>(['archive', 'pack', '--pool', source, 'fs.2', '--store', store, '--name', 'fs.2', '--delta-from', 'fs.1']);
  assert.equal(delta.parent, 'fs.1');
  assert.ok(delta.bytesRead < delta.mappedBytes / 2, `the incremental read ${delta.bytesRead} of ${delta.mappedBytes} bytes`);

  ok(['archive', 'unpack', '--pool', target, '--store', store, 'fs.1', 'r1']);
  ok(['archive', 'unpack', '--pool', target, '--store', store, 'fs.2', 'r2']);
  for (const [volume, expected, absent] of [
    ['r1', first, [...second.keys()].filter((name) => !first.has(name))],
    ['r2', second, removed],
  ] as const) {
    await withDevice(target, volume, async (device) => {
      await assertFsckClean(device);
      await withMount(device, (dir) => assertFiles(dir, expected, absent));
    });
  }
  assert.equal(thinbd(['check', '--pool', target]).code, 0);
});
