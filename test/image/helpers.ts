// Helpers for the image tests: a sample tree with every kind of entry an image can hold, a
// description of a tree as the kernel shows it (or as debugfs shows an unmounted file system), and
// the commands around them.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { patternBytes, run, startProcess, stopProcess } from '../nbd/helpers.ts';
import { startServe } from '../daemon/serve-process.ts';

export function sh(command: string, args: string[], options: { input?: Uint8Array; allowFailure?: boolean; cwd?: string } = {}): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync(command, args, { input: options.input, cwd: options.cwd, encoding: 'utf8', maxBuffer: 512 * 1024 * 1024, timeout: 300_000 });
  if (result.error) throw result.error;
  if (result.status !== 0 && !options.allowFailure) throw new Error(`${command} ${args.join(' ')} exited ${result.status}\n${result.stdout}\n${result.stderr}`);
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Sets a file's times to seconds (with fractions, as nanoseconds), not following symlinks. */
function setTimes(file: string, seconds: number, nanoseconds: number): void {
  // `touch -h -d @S.N` sets nanoseconds exactly (Node's lutimes takes floating seconds).
  sh('touch', ['-h', '-d', `@${seconds}.${String(nanoseconds).padStart(9, '0')}`, file]);
}

/**
 * Fills `root` with every kind of entry an image holds: files of many sizes (empty, one block,
 * across blocks, large, sparse), unicode and long names, a 255-byte name, a deep path, fast and
 * slow symlinks, hard links across directories, character and block devices, a FIFO, setuid,
 * setgid and sticky modes, owners past 16 bits, timestamps from 1960 to past 2038 with
 * nanoseconds, extended attributes (user, trusted, security.capability; small ones in the inode,
 * a large one in a block), POSIX ACLs, and a directory large enough for an htree index.
 */
export function makeSampleTree(root: string): void {
  const file = (relative: string, data: Uint8Array | string, mode = 0o644): string => {
    const full = path.join(root, relative);
    fs.mkdirSync(path.dirname(full), { recursive: true });
    fs.writeFileSync(full, data);
    fs.chmodSync(full, mode);
    return full;
  };
  fs.mkdirSync(root, { recursive: true });
  file('etc/empty', '');
  file('etc/hello', 'hello world\n');
  file('etc/block', patternBytes(4096, 1));
  file('etc/block-and-one', patternBytes(4097, 2));
  file('usr/lib/large.bin', patternBytes(3 * 1024 * 1024 + 17, 3), 0o755);
  file('usr/bin/suid', patternBytes(100, 4), 0o4755);
  file('usr/bin/sgid', patternBytes(100, 5), 0o2711);
  file('usr/bin/nothing', 'x', 0o000);
  file('home/ünïcödé ☃/名前.txt', 'unicode\n');
  file(`home/${'n'.repeat(255)}`, 'long name');
  file(`deep/${'a'.repeat(90)}/${'b'.repeat(90)}/${'c'.repeat(90)}/file`, 'deep');
  file('weird name with spaces & quotes\'"', 'weird');
  // Sparse: data at 0, in the middle and near the end of 20 MiB; holes between.
  const sparse = path.join(root, 'var/sparse.img');
  fs.mkdirSync(path.dirname(sparse), { recursive: true });
  const fd = fs.openSync(sparse, 'w');
  fs.writeSync(fd, patternBytes(5000, 6), 0, 5000, 0);
  fs.writeSync(fd, patternBytes(4096, 7), 0, 4096, 5 * 1024 * 1024);
  fs.writeSync(fd, patternBytes(100, 8), 0, 100, 20 * 1024 * 1024 - 123);
  fs.closeSync(fd);
  // Links.
  fs.symlinkSync('hello', path.join(root, 'etc/fast-link'));
  fs.symlinkSync(`../${'t'.repeat(300)}`, path.join(root, 'etc/slow-link'));
  fs.symlinkSync('/etc/passwd', path.join(root, 'etc/absolute-link'));
  fs.symlinkSync('usr/lib', path.join(root, 'lib'));
  fs.linkSync(path.join(root, 'etc/hello'), path.join(root, 'etc/hello-hard'));
  fs.linkSync(path.join(root, 'etc/hello'), path.join(root, 'usr/hello-hard-2'));
  // Special files.
  fs.mkdirSync(path.join(root, 'dev'));
  sh('mknod', ['-m', '666', path.join(root, 'dev/null'), 'c', '1', '3']);
  sh('mknod', ['-m', '660', path.join(root, 'dev/sda1'), 'b', '8', '1']);
  sh('mknod', ['-m', '600', path.join(root, 'dev/big'), 'c', '300', '70000']);
  sh('mkfifo', ['-m', '644', path.join(root, 'run-fifo')]);
  // Directories: sticky, setgid, empty, and one with thousands of entries.
  fs.mkdirSync(path.join(root, 'tmp'));
  fs.chmodSync(path.join(root, 'tmp'), 0o1777);
  fs.mkdirSync(path.join(root, 'srv/shared'), { recursive: true });
  fs.chmodSync(path.join(root, 'srv/shared'), 0o2775);
  fs.mkdirSync(path.join(root, 'empty-dir'));
  const many = path.join(root, 'many');
  fs.mkdirSync(many);
  for (let index = 0; index < 3000; index++) fs.writeFileSync(path.join(many, `entry-${index}-${'x'.repeat(index % 50)}`), index % 7 === 0 ? `${index}` : '');
  // Owners.
  fs.lchownSync(path.join(root, 'etc/hello'), 1000, 1000);
  fs.lchownSync(path.join(root, 'usr/lib/large.bin'), 100000, 200000);
  fs.lchownSync(path.join(root, 'etc/fast-link'), 65534, 65534);
  fs.lchownSync(path.join(root, 'srv/shared'), 33, 33);
  // Extended attributes.
  sh('setfattr', ['-n', 'user.comment', '-v', 'an image file', path.join(root, 'etc/block')]);
  sh('setfattr', ['-n', 'trusted.note', '-v', 'trusted', path.join(root, 'etc/block')]);
  // cap_net_raw=ep (a v2 capability, as setcap writes it).
  sh('setfattr', ['-n', 'security.capability', '-v', '0x0100000200200000000000000000000000000000', path.join(root, 'usr/bin/suid')]);
  sh('setfattr', ['-n', 'user.big', '-v', `0x${'ab'.repeat(1500)}`, path.join(root, 'usr/lib/large.bin')]);
  sh('setfattr', ['-n', 'user.dir', '-v', 'on a directory', path.join(root, 'srv/shared')]);
  // POSIX ACLs: an access ACL on a file, a default ACL on a directory (GNU tar --acls writes them as text).
  sh('setfacl', ['-m', 'u:1000:rw,g:100:r', path.join(root, 'etc/block-and-one')]);
  sh('setfacl', ['-d', '-m', 'u:1000:rwx', path.join(root, 'srv/shared')]);
  // Times: before 1970's end, nanoseconds, past 2038, on a symlink too (set last: writes change them).
  setTimes(path.join(root, 'etc/hello'), 1234567890, 123456789);
  setTimes(path.join(root, 'etc/empty'), 1, 0);
  // 1960: GNU tar's gnu format writes it in negative base-256, pax as a negative time.
  setTimes(path.join(root, 'etc/block'), -315619200, 0);
  setTimes(path.join(root, 'usr/lib/large.bin'), 2 ** 31 + 12345, 999999999);
  setTimes(path.join(root, 'etc/fast-link'), 1500000000, 5);
  setTimes(path.join(root, 'srv/shared'), 1600000000, 0);
}

export interface TreeEntry {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  mtime: string;
  target?: string;
  rdev?: string;
  sha256?: string;
  /** Another path of the same inode (hard links), the first in sorted order. */
  sameAs?: string;
  xattrs?: Record<string, string>;
}

function typeOf(stat: fs.BigIntStats): string {
  if (stat.isFile()) return 'file';
  if (stat.isDirectory()) return 'dir';
  if (stat.isSymbolicLink()) return 'symlink';
  if (stat.isCharacterDevice()) return 'char';
  if (stat.isBlockDevice()) return 'block';
  if (stat.isFIFO()) return 'fifo';
  if (stat.isSocket()) return 'socket';
  return 'other';
}

/** getfattr -R output: path -> name -> hex value. */
function readXattrs(root: string): Map<string, Record<string, string>> {
  const output = sh('getfattr', ['-R', '-P', '-d', '-m', '-', '-e', 'hex', '--absolute-names', root], { allowFailure: true }).stdout;
  const result = new Map<string, Record<string, string>>();
  let current: Record<string, string> | undefined;
  for (const line of output.split('\n')) {
    const file = /^# file: (.*)$/.exec(line);
    if (file) {
      current = {};
      result.set(path.relative(root, file[1]!.replace(/\\(\d{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)))), current);
      continue;
    }
    const attribute = /^([^=]+)=(0x[0-9a-f]*)$/.exec(line);
    if (attribute && current !== undefined) current[attribute[1]!] = attribute[2]!;
  }
  return result;
}

/**
 * Every path below root (relative, '.' for root) with what a comparison needs. Directories' sizes
 * are left out (they depend on how a file system lays directories out), as is lost+found.
 */
export function describeTree(root: string, options: { xattrs?: boolean; skip?: string[] } = {}): Map<string, TreeEntry> {
  const skip = new Set(options.skip ?? ['lost+found']);
  const entries = new Map<string, TreeEntry>();
  const inodes = new Map<bigint, string>();
  const pending = ['.'];
  const paths: string[] = [];
  while (pending.length > 0) {
    const relative = pending.pop()!;
    paths.push(relative);
    const stat = fs.lstatSync(path.join(root, relative), { bigint: true });
    if (stat.isDirectory()) {
      for (const name of fs.readdirSync(path.join(root, relative))) {
        const child = relative === '.' ? name : `${relative}/${name}`;
        if (!skip.has(child)) pending.push(child);
      }
    }
  }
  paths.sort();
  for (const relative of paths) {
    const full = path.join(root, relative);
    const stat = fs.lstatSync(full, { bigint: true });
    const type = typeOf(stat);
    const entry: TreeEntry = {
      type,
      mode: (Number(stat.mode) & 0o7777).toString(8),
      uid: Number(stat.uid),
      gid: Number(stat.gid),
      mtime: stat.mtimeNs.toString(),
    };
    if (type !== 'dir') entry.size = Number(stat.size);
    if (type === 'symlink') entry.target = fs.readlinkSync(full, { encoding: 'buffer' }).toString('latin1');
    if (type === 'char' || type === 'block') entry.rdev = stat.rdev.toString();
    if (type === 'file') entry.sha256 = createHash('sha256').update(fs.readFileSync(full)).digest('hex');
    if (type !== 'dir' && stat.nlink > 1n) {
      const first = inodes.get(stat.ino);
      if (first === undefined) inodes.set(stat.ino, relative);
      else entry.sameAs = first;
    }
    entries.set(relative, entry);
  }
  if (options.xattrs !== false) {
    for (const [relative, xattrs] of readXattrs(root)) {
      const key = relative === '' ? '.' : relative;
      const entry = entries.get(key);
      if (entry !== undefined && Object.keys(xattrs).length > 0) entry.xattrs = xattrs;
    }
  }
  return entries;
}

/** Asserts two trees agree entry by entry, naming the first differences. */
export function assertSameTree(actual: Map<string, TreeEntry>, expected: Map<string, TreeEntry>, what: string): void {
  const differences: string[] = [];
  for (const [relative, entry] of expected) {
    const other = actual.get(relative);
    if (other === undefined) differences.push(`${relative}: missing`);
    else if (JSON.stringify(other) !== JSON.stringify(entry)) differences.push(`${relative}: ${JSON.stringify(other)} != expected ${JSON.stringify(entry)}`);
  }
  for (const relative of actual.keys()) if (!expected.has(relative)) differences.push(`${relative}: not expected`);
  assert.deepEqual(differences.slice(0, 20), [], `${what}: ${differences.length} differences`);
}

/** An archive's tree as `tar -x` makes it (owners, modes, times, attributes). */
export function extractTar(archive: string, into: string): void {
  fs.mkdirSync(into, { recursive: true });
  sh('tar', ['--xattrs', '--xattrs-include=*', '--acls', '--same-owner', '-p', '-xf', archive, '-C', into]);
}

/** The tree of a file system image as the kernel shows it, loop-mounted read-only under workDir ('.' left out). */
export function mountedTreeOf(raw: string, workDir: string): Map<string, TreeEntry> {
  const mountPoint = fs.mkdtempSync(path.join(workDir, 'mnt-'));
  sh('mount', ['-o', 'loop,ro', raw, mountPoint]);
  try {
    const tree = describeTree(mountPoint);
    tree.delete('.');
    return tree;
  } finally {
    sh('umount', [mountPoint]);
  }
}

/**
 * Serves volume `name` of the pool, attaches it through nbdfuse and a loop device, mounts it
 * read-write, runs `work`, unmounts, checks it with e2fsck -fn, and takes it all down.
 */
export async function withMountedVolume(pool: string, name: string, workDir: string, work: (mountPoint: string) => void): Promise<void> {
  const server = await startServe(pool);
  const fuseDir = fs.mkdtempSync(path.join(workDir, 'fuse-'));
  const disk = path.join(fuseDir, 'disk');
  const fuse = startProcess('nbdfuse', [disk, server.uri(name)]);
  let device: string | undefined;
  const mountPoint = fs.mkdtempSync(path.join(workDir, 'machine-'));
  try {
    const deadline = Date.now() + 10_000;
    while (!fs.existsSync(disk) || fs.statSync(disk).size === 0) {
      if (Date.now() > deadline) throw new Error(`nbdfuse did not start: ${fuse.output()}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    device = (await run('losetup', ['-f', '--show', disk])).stdout.trim();
    await run('mount', [device, mountPoint]);
    work(mountPoint);
    await run('umount', [mountPoint]);
    const fsck = await run('e2fsck', ['-fn', device], { allowFailure: true });
    assert.equal(fsck.code, 0, `e2fsck of ${name}'s disk:\n${fsck.stdout}${fsck.stderr}`);
  } finally {
    await run('umount', [mountPoint], { allowFailure: true });
    if (device !== undefined) await run('losetup', ['-d', device], { allowFailure: true });
    await run('fusermount3', ['-u', fuseDir], { allowFailure: true });
    await stopProcess(fuse.child);
    await server.stop();
  }
}
