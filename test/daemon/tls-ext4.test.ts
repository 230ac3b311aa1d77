// A kernel filesystem on a volume served only over TLS: `thinbd serve --tls require --tls-psk`,
// nbdfuse reaching it through nbdkit's nbd plugin as the TLS client (nbdfuse itself refuses
// libnbd's key-file parameter), a loop device, ext4 made, filled, unmounted, e2fsck clean, and
// mounted again with every file unchanged.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { thinbd } from '../cli/run-thinbd.ts';
import { patternBytes, requireTools, run, startProcess, stopProcess } from '../nbd/helpers.ts';
import { makePsk } from '../nbd/tls-credentials.ts';
import { startServe, type ServeProcess } from './serve-process.ts';

const MiB = 1024 * 1024;
requireTools('nbdfuse', 'nbdkit', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'psktool');
let work: string;
let pool: string;
let psk: string;
let server: ServeProcess;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-tls-ext4-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '512M']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'fs', '--size', '128M']).code, 0);
  psk = makePsk(join(work, 'keys.psk'), 'alice');
  server = await startServe(pool, ['--tls', 'require', '--tls-psk', psk]);
});
after(async () => {
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

async function waitFor(condition: () => Promise<boolean>, what: string): Promise<void> {
  for (let attempt = 0; attempt < 400; attempt++) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

test('ext4 on a TLS-only volume: mkfs, mount, write, unmount, e2fsck clean, remount, checksums match', async () => {
  const fuseDir = join(work, 'fuse');
  const mountDir = join(work, 'mnt');
  mkdirSync(fuseDir);
  mkdirSync(mountDir);
  const diskFile = join(fuseDir, 'disk');
  let fuse: { child: ChildProcess; output: () => string } | undefined;
  let loopDevice: string | undefined;
  let mounted = false;
  try {
    fuse = startProcess('nbdfuse', [
      diskFile, '--command', 'nbdkit', '-s', '--exit-with-parent', 'nbd',
      'hostname=127.0.0.1', `port=${server.port}`, 'export=fs', 'tls=require', `tls-psk=${psk}`, 'tls-username=alice',
    ]);
    await waitFor(async () => (await stat(diskFile).catch(() => undefined))?.size === 128 * MiB, `nbdfuse to expose ${diskFile} (${fuse.output()})`);
    loopDevice = (await run('losetup', ['-f', '--show', diskFile])).stdout.trim();
    await run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', loopDevice]);
    await run('mount', [loopDevice, mountDir]);
    mounted = true;
    const expected = new Map<string, string>();
    for (const [index, sizeBytes] of [1, 4096, 65537, 3 * MiB + 17].entries()) {
      const bytes = patternBytes(sizeBytes, 500 + index);
      await writeFile(join(mountDir, `file-${index}`), bytes);
      expected.set(`file-${index}`, sha256(bytes));
    }
    await run('sync', ['-f', mountDir]);
    await run('umount', [mountDir]);
    mounted = false;
    const fsck = await run('e2fsck', ['-fn', loopDevice], { allowFailure: true });
    assert.equal(fsck.code, 0, `e2fsck found problems:\n${fsck.stdout}\n${fsck.stderr}`);
    await run('mount', [loopDevice, mountDir]);
    mounted = true;
    for (const [name, digest] of expected) assert.equal(sha256(await readFile(join(mountDir, name))), digest, name);
    assert.match(server.output(), /"event":"nbd\.tls_established".*PSK identity alice/);
  } finally {
    if (mounted) await run('umount', [mountDir], { allowFailure: true });
    if (loopDevice !== undefined) await run('losetup', ['-d', loopDevice], { allowFailure: true });
    await run('fusermount3', ['-u', fuseDir], { allowFailure: true });
    if (fuse !== undefined) await stopProcess(fuse.child);
  }
});
