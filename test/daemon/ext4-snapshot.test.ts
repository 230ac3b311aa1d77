// A real filesystem on a thinbd volume with no nbd kernel module: nbdfuse exposes the export as
// a file, losetup makes it a block device; ext4 is made, filled, frozen, snapshotted while
// mounted, changed further, and both the volume and the snapshot fsck clean with the files each
// should hold.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireTools, run } from '../nbd/helpers.ts';
import { BLOCK_DEVICE_TOOLS, assertFiles, assertFsckClean, mixedFiles, sha256, withMount, withNbdDevice, writePatternFiles } from '../nbd/block-device.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { startServe, type ServeProcess } from './serve-process.ts';

requireTools(...BLOCK_DEVICE_TOOLS, 'fsfreeze');

const MiB = 1024 * 1024;
const VOLUME_BYTES = 256 * MiB;
let work: string;
let pool: string;
let server: ServeProcess;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-ext4-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'fs', '--size', String(VOLUME_BYTES)]).code, 0);
  server = await startServe(pool);
});

after(async () => {
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

test('ext4 on a thinbd volume: a snapshot taken while mounted (frozen) mounts and fscks clean with the files of that moment', async () => {
  const { before, afterFiles } = await withNbdDevice(server.uri('fs'), { sizeBytes: VOLUME_BYTES }, async (device) => {
    await run('mkfs.ext4', ['-q', '-F', device]);
    const written = await withMount(device, async (mnt) => {
      const before = await writePatternFiles(mnt, mixedFiles(1, 14), 100);
      await run('fsfreeze', ['-f', mnt]);
      const snapshot = thinbd(['snapshot', '--pool', pool, 'fs', 'fs-snap']);
      await run('fsfreeze', ['-u', mnt]);
      assert.equal(snapshot.code, 0, snapshot.stderr);
      const afterFiles = await writePatternFiles(mnt, mixedFiles(2, 7), 200);
      writeFileSync(join(mnt, 'd', 'f1-0'), 'changed after the snapshot');
      await run('sync', ['-f', mnt]);
      return { before, afterFiles };
    });
    await assertFsckClean(device);
    const expectedNow = new Map([...written.before, ...written.afterFiles]);
    expectedNow.set(join('d', 'f1-0'), sha256(Buffer.from('changed after the snapshot')));
    await withMount(device, (mnt) => assertFiles(mnt, expectedNow));
    return written;
  });

  await withNbdDevice(server.uri('fs-snap'), { sizeBytes: VOLUME_BYTES }, async (device) => {
    await assertFsckClean(device);
    await withMount(
      device,
      (mnt) => assertFiles(mnt, before, afterFiles.keys()),
      { mountOptions: ['-o', 'ro'] },
    );
  });
  assert.equal(thinbd(['check', '--pool', pool]).code, 0);
});
