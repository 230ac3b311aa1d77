// An NBD export as a real block device on a kernel with no nbd module: nbdfuse serves the export
// as a file (DIR/disk), losetup makes that file a loop device; then ext4 is made, mounted, filled,
// checked. Shared by every test that puts a kernel filesystem on an export.
//
// Everything here is asynchronous on purpose: when the NBD server runs in the test's own process,
// a synchronous call on the FUSE file or the mounted filesystem would wait on the kernel, the
// kernel on nbdfuse, nbdfuse on the server — which could never answer (a deadlock in D state).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { patternBytes, run, startProcess, stopProcess } from './helpers.ts';

/** The tools these helpers run: pass them to requireTools. */
export const BLOCK_DEVICE_TOOLS = ['nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount'] as const;

/** How long nbdfuse may take to show the disk file: a hang guard, never a speed claim. */
const NBDFUSE_HANG_MS = 60_000;

export interface NbdDevice {
  /** The loop device, e.g. /dev/loop3. */
  readonly device: string;
  /** Detaches the loop device, unmounts the FUSE directory and stops nbdfuse (safe to call twice). */
  detach(): Promise<void>;
}

/**
 * Attaches an export as a loop device. `source` is an NBD URI, or nbdfuse's arguments after the
 * disk file (e.g. `['--command', 'nbdkit', '-s', …]` to reach the server through nbdkit).
 * Waits until the disk file shows `sizeBytes`, the export's size.
 */
export async function attachNbdDevice(source: string | readonly string[], options: { sizeBytes: number; readOnly?: boolean }): Promise<NbdDevice> {
  const fuseDir = await mkdtemp(join(tmpdir(), 'thinbd-fuse-'));
  const diskFile = join(fuseDir, 'disk');
  const readOnly = options.readOnly === true ? ['-r'] : [];
  const fuse = startProcess('nbdfuse', [...readOnly, diskFile, ...(typeof source === 'string' ? [source] : source)]);
  let device: string | undefined;
  let detached = false;
  const detach = async (): Promise<void> => {
    if (detached) return;
    detached = true;
    if (device !== undefined) await run('losetup', ['-d', device], { allowFailure: true });
    await run('fusermount3', ['-u', fuseDir], { allowFailure: true });
    await stopProcess(fuse.child);
    await rm(fuseDir, { recursive: true, force: true });
  };
  try {
    const deadline = Date.now() + NBDFUSE_HANG_MS;
    while ((await stat(diskFile).catch(() => undefined))?.size !== options.sizeBytes) {
      if (Date.now() > deadline || fuse.child.exitCode !== null) throw new Error(`nbdfuse did not expose ${diskFile} of ${options.sizeBytes} bytes: ${fuse.output()}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    device = (await run('losetup', ['-f', '--show', ...readOnly, diskFile])).stdout.trim();
    assert.match(device, /^\/dev\/loop\d+$/);
    return { device, detach };
  } catch (error) {
    await detach();
    throw error;
  }
}

/** Attaches, runs `work` on the device, detaches whatever happened. */
export async function withNbdDevice<T>(
  source: string | readonly string[],
  options: { sizeBytes: number; readOnly?: boolean },
  work: (device: string) => Promise<T>,
): Promise<T> {
  const attached = await attachNbdDevice(source, options);
  try {
    return await work(attached.device);
  } finally {
    await attached.detach();
  }
}

/** Mounts `device` on `dir` (a new temporary directory if none), runs `work` there, unmounts whatever happened. */
export async function withMount<T>(device: string, work: (dir: string) => Promise<T> | T, options: { dir?: string; mountOptions?: string[] } = {}): Promise<T> {
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'thinbd-mnt-')));
  await mkdir(dir, { recursive: true });
  await run('mount', [...(options.mountOptions ?? []), device, dir]);
  try {
    return await work(dir);
  } finally {
    await run('umount', [dir], { allowFailure: true });
    if (options.dir === undefined) await rm(dir, { recursive: true, force: true });
  }
}

/** `e2fsck -fn` on the device: fails the test with e2fsck's report unless the filesystem is clean. */
export async function assertFsckClean(device: string): Promise<void> {
  const fsck = await run('e2fsck', ['-fn', device], { allowFailure: true });
  assert.equal(fsck.code, 0, `e2fsck found problems on ${device}:\n${fsck.stdout}\n${fsck.stderr}`);
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Writes a file of pattern bytes per size (names relative to `root`, directories made); returns name → SHA-256. */
export async function writePatternFiles(root: string, files: ReadonlyArray<{ name: string; sizeBytes: number }>, seed: number): Promise<Map<string, string>> {
  const written = new Map<string, string>();
  for (const [index, file] of files.entries()) {
    const bytes = patternBytes(file.sizeBytes, seed + index);
    await mkdir(dirname(join(root, file.name)), { recursive: true });
    await writeFile(join(root, file.name), bytes);
    written.set(file.name, sha256(bytes));
  }
  await run('sync', ['-f', root]);
  return written;
}

/** Every file reads back with the digest it was written with, and none of `absent` exists. */
export async function assertFiles(root: string, expected: ReadonlyMap<string, string>, absent: Iterable<string> = []): Promise<void> {
  for (const [name, digest] of expected) assert.equal(sha256(await readFile(join(root, name))), digest, name);
  for (const name of absent) assert.equal(await stat(join(root, name)).then(() => true, () => false), false, `${name} should not exist`);
}

/** `count` files under d/, named f<seed>-<index>, of sizes from empty to 3 MiB. */
export function mixedFiles(seed: number, count: number): Array<{ name: string; sizeBytes: number }> {
  const sizes = [0, 1, 4095, 4096, 70_000, 1024 * 1024 + 7, 3 * 1024 * 1024];
  return Array.from({ length: count }, (_, index) => ({ name: join('d', `f${seed}-${index}`), sizeBytes: sizes[index % sizes.length]! }));
}

/**
 * The round trip every kernel-filesystem test starts with: mkfs.ext4 on the device, mount, write
 * the files, unmount, e2fsck clean, mount again and read every file back unchanged.
 */
export async function ext4RoundTrip(device: string, files: ReadonlyArray<{ name: string; sizeBytes: number }>, seed: number): Promise<Map<string, string>> {
  await run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', device]);
  const written = await withMount(device, (dir) => writePatternFiles(dir, files, seed));
  await assertFsckClean(device);
  await withMount(device, (dir) => assertFiles(dir, written));
  return written;
}
