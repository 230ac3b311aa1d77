// A real filesystem on an export, with no nbd kernel module: nbdfuse exposes the export as a
// file, losetup makes it a block device, and ext4 is made, mounted, filled, checked with
// e2fsck and mounted again, with every file's checksum unchanged.
//
// The server runs in this process, so nothing here may block the event loop on the mounted file
// system or the FUSE file: a synchronous fs call would wait on the kernel, the kernel on
// nbdfuse, nbdfuse on this server — which could never answer (a deadlock in D state).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { patternBytes, requireTools, run, startProcess, startServer, stopProcess, tempDir } from './helpers.ts';
import { MemoryExport } from './memory-export.ts';

const MiB = 1024 * 1024;

requireTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount');
const disk = new MemoryExport({ name: 'fs', sizeBytes: 256 * MiB });
const running = await startServer([disk]);
const dir = tempDir('nbdfuse');
after(async () => {
  await running.close();
  dir.remove();
});

async function waitFor(condition: () => Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

test('ext4 on nbdfuse + loop: mkfs, mount, write files, unmount, e2fsck clean, remount, checksums match', async () => {
  const fuseDir = join(dir.path, 'fuse');
  const mountDir = join(dir.path, 'mnt');
  mkdirSync(fuseDir);
  mkdirSync(mountDir);
  const diskFile = join(fuseDir, 'disk');
  let fuse: { child: ChildProcess; output: () => string } | undefined;
  let loopDevice: string | undefined;
  let mounted = false;
  try {
    fuse = startProcess('nbdfuse', [diskFile, running.uri('fs')]);
    await waitFor(async () => (await stat(diskFile).catch(() => undefined))?.size === 256 * MiB, `nbdfuse to expose ${diskFile} (${fuse.output()})`);
    loopDevice = (await run('losetup', ['-f', '--show', diskFile])).stdout.trim();
    assert.match(loopDevice, /^\/dev\/loop\d+$/);
    await run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', loopDevice]);
    await run('mount', [loopDevice, mountDir]);
    mounted = true;

    const expected = new Map<string, string>();
    await mkdir(join(mountDir, 'a', 'b'), { recursive: true });
    const sizes = [0, 1, 511, 4096, 65537, 1 * MiB, 7 * MiB + 123];
    for (const [i, sizeBytes] of sizes.entries()) {
      const name = join(i % 2 === 0 ? 'a' : join('a', 'b'), `file-${i}`);
      const bytes = patternBytes(sizeBytes, 1000 + i);
      await writeFile(join(mountDir, name), bytes);
      expected.set(name, sha256(bytes));
    }
    await run('sync', ['-f', mountDir]);
    await run('umount', [mountDir]);
    mounted = false;

    const fsck = await run('e2fsck', ['-fn', loopDevice], { allowFailure: true });
    assert.equal(fsck.code, 0, `e2fsck found problems:\n${fsck.stdout}\n${fsck.stderr}`);

    await run('mount', [loopDevice, mountDir]);
    mounted = true;
    for (const [name, digest] of expected) assert.equal(sha256(await readFile(join(mountDir, name))), digest, name);
    await run('umount', [mountDir]);
    mounted = false;
    assert.ok(disk.allocatedBlockCount > 0);
    assert.ok(disk.counts.flush > 0, 'the filesystem flushed');
  } finally {
    if (mounted) await run('umount', ['-l', mountDir], { allowFailure: true });
    if (loopDevice !== undefined) await run('losetup', ['-d', loopDevice], { allowFailure: true });
    await run('fusermount3', ['-u', fuseDir], { allowFailure: true });
    if (fuse !== undefined) await stopProcess(fuse.child);
  }
});
