// A real filesystem through archive and back: ext4 on a thinbd volume (nbdfuse + loop, no nbd
// kernel module), files written, a read-only snapshot packed; files changed, a second snapshot
// packed --delta-from the first; both streams unpacked into another pool, each fscks clean and
// holds exactly its moment's files.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { patternBytes, requireTools, run, startProcess, stopProcess } from '../nbd/helpers.ts';
import { thinbd, thinbdJson } from '../cli/run-thinbd.ts';
import { startServe, type ServeProcess } from '../daemon/serve-process.ts';

requireTools('nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount');

const MiB = 1024 * 1024;
const VOLUME_BYTES = 256 * MiB;
let work: string;
const cleanups: Array<() => Promise<unknown>> = [];

before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-archive-ext4-'));
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
});

function ok(args: string[]): string {
  const result = thinbd(args);
  assert.equal(result.code, 0, `thinbd ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

async function waitFor(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Serves `pool`, attaches `volume` through nbdfuse + loop, runs `work` on the device, then detaches and stops. */
async function withDevice(pool: string, volume: string, work: (device: string) => Promise<void>): Promise<void> {
  const server: ServeProcess = await startServe(pool);
  cleanups.push(() => server.stop());
  const fuseDir = mkdtempSync(join(tmpdir(), 'thinbd-fuse-'));
  const diskFile = join(fuseDir, 'disk');
  const fuse: { child: ChildProcess; output: () => string } = startProcess('nbdfuse', [diskFile, server.uri(volume)]);
  let device: string | undefined;
  const detach = async () => {
    if (device !== undefined) await run('losetup', ['-d', device], { allowFailure: true });
    await run('fusermount3', ['-u', fuseDir], { allowFailure: true });
    await stopProcess(fuse.child);
    rmSync(fuseDir, { recursive: true, force: true });
  };
  cleanups.push(detach);
  try {
    await waitFor(() => existsSync(diskFile) && statSync(diskFile).size === VOLUME_BYTES, `nbdfuse for ${volume} (${fuse.output()})`);
    device = (await run('losetup', ['-f', '--show', diskFile])).stdout.trim();
    assert.match(device, /^\/dev\/loop\d+$/);
    await work(device);
  } finally {
    await detach();
    await server.stop();
  }
}

async function withMount(device: string, work: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'thinbd-mnt-'));
  await run('mount', [device, dir]);
  const unmount = async () => {
    await run('umount', [dir], { allowFailure: true });
    rmSync(dir, { recursive: true, force: true });
  };
  cleanups.push(unmount);
  try {
    await work(dir);
  } finally {
    await unmount();
  }
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function writeFiles(root: string, seed: number, count: number, files: Map<string, string>): void {
  mkdirSync(join(root, 'd'), { recursive: true });
  for (let index = 0; index < count; index += 1) {
    const name = join('d', `f${seed}-${index}`);
    const bytes = patternBytes([0, 1, 4095, 4096, 70_000, 1 * MiB + 7, 3 * MiB][index % 7]!, seed * 100 + index);
    writeFileSync(join(root, name), bytes);
    files.set(name, sha256(bytes));
  }
}

function assertFiles(root: string, expected: Map<string, string>, absent: string[]): void {
  for (const [name, digest] of expected) assert.equal(sha256(readFileSync(join(root, name))), digest, name);
  for (const name of absent) assert.equal(existsSync(join(root, name)), false, `${name} should not exist`);
}

test('ext4: pack, change files, pack --delta-from, unpack both into another pool: fsck clean, files match', async () => {
  const source = join(work, 'source');
  const target = join(work, 'target');
  const store = join(work, 'store');
  ok(['pool', 'create', '--pool', source, '--data-size', '1G']);
  ok(['pool', 'create', '--pool', target, '--data-size', '1G']);
  ok(['create', '--pool', source, 'fs', '--size', String(VOLUME_BYTES)]);
  ok(['archive', 'init', '--store', store]);

  const first = new Map<string, string>();
  await withDevice(source, 'fs', async (device) => {
    await run('mkfs.ext4', ['-q', '-F', device]);
    await withMount(device, (dir) => writeFiles(dir, 1, 21, first));
  });
  ok(['snapshot', '--pool', source, 'fs', 'fs.1', '--read-only']);
  const full = thinbdJson<{ bytesRead: number; mappedBytes: number }>(['archive', 'pack', '--pool', source, 'fs.1', '--store', store, '--name', 'fs.1']);
  assert.equal(full.bytesRead, full.mappedBytes);

  const second = new Map(first);
  const removed = [join('d', 'f1-3'), join('d', 'f1-10')];
  await withDevice(source, 'fs', async (device) => {
    await withMount(device, (dir) => {
      writeFiles(dir, 2, 7, second);
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
      const fsck = await run('e2fsck', ['-fn', device], { allowFailure: true });
      assert.equal(fsck.code, 0, `e2fsck of ${volume}:\n${fsck.stdout}${fsck.stderr}`);
      await withMount(device, (dir) => assertFiles(dir, expected, absent));
    });
  }
  assert.equal(thinbd(['check', '--pool', target]).code, 0);
});
