// A real filesystem on an export, with no nbd kernel module: nbdfuse exposes the export as a
// file, losetup makes it a block device, and ext4 is made, mounted, filled, checked with
// e2fsck and mounted again, with every file's checksum unchanged.
//
// The server runs in this process, so nothing here may block the event loop on the mounted file
// system or the FUSE file: a synchronous fs call would wait on the kernel, the kernel on
// nbdfuse, nbdfuse on this server — which could never answer (a deadlock in D state).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { requireTools, startServer } from './helpers.ts';
import { BLOCK_DEVICE_TOOLS, ext4RoundTrip, withNbdDevice } from './block-device.ts';
import { MemoryExport } from './memory-export.ts';

const MiB = 1024 * 1024;

requireTools(...BLOCK_DEVICE_TOOLS);
const disk = new MemoryExport({ name: 'fs', sizeBytes: 256 * MiB });
const running = await startServer([disk]);
after(() => running.close());

test('ext4 on nbdfuse + loop: mkfs, mount, write files, unmount, e2fsck clean, remount, checksums match', async () => {
  const sizes = [0, 1, 511, 4096, 65537, 1 * MiB, 7 * MiB + 123];
  const files = sizes.map((sizeBytes, i) => ({ name: `${i % 2 === 0 ? 'a' : 'a/b'}/file-${i}`, sizeBytes }));
  await withNbdDevice(running.uri('fs'), { sizeBytes: 256 * MiB }, (device) => ext4RoundTrip(device, files, 1000));
  assert.ok(disk.allocatedBlockCount > 0);
  assert.ok(disk.counts.flush > 0, 'the filesystem flushed');
});
