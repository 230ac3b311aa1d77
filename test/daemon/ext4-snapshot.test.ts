// A real filesystem on a thinbd volume with no nbd kernel module: nbdfuse exposes the export as
// a file, losetup makes it a block device; ext4 is made, filled, frozen, snapshotted while
// mounted, changed further, and both the volume and the snapshot fsck clean with the files each
// should hold.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync, statSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { patternBytes, requireTools, run, startProcess, stopProcess } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { startServe, type ServeProcess } from './serve-process.ts';

requireTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'fsfreeze');

const MiB = 1024 * 1024;
const VOLUME_BYTES = 256 * MiB;
let work: string;
let pool: string;
let server: ServeProcess;
const cleanups: Array<() => Promise<unknown>> = [];

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-ext4-'));
  pool = join(work, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'fs', '--size', String(VOLUME_BYTES)]).code, 0);
  server = await startServe(pool);
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  await server?.stop();
  rmSync(work, { recursive: true, force: true });
});

async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** nbdfuse + losetup for one export; returns the loop device. */
async function attach(exportName: string, readOnly: boolean): Promise<{ device: string; detach: () => Promise<void> }> {
  const fuseDir = join(work, `fuse-${exportName}`);
  mkdirSync(fuseDir);
  const diskFile = join(fuseDir, 'disk');
  const fuse: { child: ChildProcess; output: () => string } = startProcess('nbdfuse', [...(readOnly ? ['-r'] : []), diskFile, server.uri(exportName)]);
  await waitFor(() => existsSync(diskFile) && statSync(diskFile).size === VOLUME_BYTES, `nbdfuse for ${exportName} (${fuse.output()})`);
  const device = (await run('losetup', ['-f', '--show', ...(readOnly ? ['-r'] : []), diskFile])).stdout.trim();
  assert.match(device, /^\/dev\/loop\d+$/);
  const detach = async (): Promise<void> => {
    await run('losetup', ['-d', device], { allowFailure: true });
    await run('fusermount3', ['-u', fuseDir], { allowFailure: true });
    await stopProcess(fuse.child);
  };
  cleanups.push(detach);
  return { device, detach };
}

async function mount(device: string, dir: string, options: string[] = []): Promise<() => Promise<void>> {
  mkdirSync(dir, { recursive: true });
  await run('mount', [...options, device, dir]);
  const unmount = async (): Promise<void> => {
    await run('umount', [dir], { allowFailure: true });
  };
  cleanups.push(unmount);
  return unmount;
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function writeFiles(root: string, seed: number, count: number): Map<string, string> {
  const written = new Map<string, string>();
  mkdirSync(join(root, 'd'), { recursive: true });
  for (let index = 0; index < count; index += 1) {
    const name = join('d', `f${seed}-${index}`);
    const bytes = patternBytes([0, 1, 4095, 4096, 70_000, 1 * MiB + 7, 3 * MiB][index % 7]!, seed * 100 + index);
    writeFileSync(join(root, name), bytes);
    written.set(name, sha256(bytes));
  }
  return written;
}

function assertFiles(root: string, expected: Map<string, string>, absent: string[] = []): void {
  for (const [name, digest] of expected) assert.equal(sha256(readFileSync(join(root, name))), digest, name);
  for (const name of absent) assert.equal(existsSync(join(root, name)), false, `${name} should not exist`);
}

test('ext4 on a thinbd volume: a snapshot taken while mounted (frozen) mounts and fscks clean with the files of that moment', async () => {
  const volume = await attach('fs', false);
  await run('mkfs.ext4', ['-q', '-F', volume.device]);
  const mnt = join(work, 'mnt');
  const unmount = await mount(volume.device, mnt);
  const before = writeFiles(mnt, 1, 14);
  await run('fsfreeze', ['-f', mnt]);
  const snapshot = thinbd(['snapshot', '--pool', pool, 'fs', 'fs-snap']);
  await run('fsfreeze', ['-u', mnt]);
  assert.equal(snapshot.code, 0, snapshot.stderr);
  const afterFiles = writeFiles(mnt, 2, 7);
  writeFileSync(join(mnt, 'd', 'f1-0'), 'changed after the snapshot');
  await run('sync', ['-f', mnt]);
  await unmount();
  const fsck = await run('e2fsck', ['-fn', volume.device], { allowFailure: true });
  assert.equal(fsck.code, 0, `e2fsck of the volume:\n${fsck.stdout}${fsck.stderr}`);
  const remount = await mount(volume.device, mnt);
  const expectedNow = new Map([...before, ...afterFiles]);
  expectedNow.set(join('d', 'f1-0'), sha256(Buffer.from('changed after the snapshot')));
  assertFiles(mnt, expectedNow);
  await remount();
  await volume.detach();

  const snap = await attach('fs-snap', false);
  const snapFsck = await run('e2fsck', ['-fn', snap.device], { allowFailure: true });
  assert.equal(snapFsck.code, 0, `e2fsck of the snapshot:\n${snapFsck.stdout}${snapFsck.stderr}`);
  const snapMnt = join(work, 'snap-mnt');
  const unmountSnap = await mount(snap.device, snapMnt, ['-o', 'ro']);
  assertFiles(snapMnt, before, [...afterFiles.keys()]);
  await unmountSnap();
  await snap.detach();
  assert.equal(thinbd(['check', '--pool', pool]).code, 0);
});
