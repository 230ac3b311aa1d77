// thinbd image import against the kernel and e2fsprogs: archives of a tree with every kind of entry
// (made here, by GNU tar in its formats) become a volume whose ext4 e2fsck passes and which, loop
// mounted read-only, shows exactly what `tar -x` of the same archive shows: paths, types, modes,
// owners, sizes, mtimes to the nanosecond, symlink targets, hard links, device numbers, extended
// attributes and contents. debugfs, which needs no mount, agrees too. A machine's snapshot of the
// image is a normal root disk: written, fsck clean, and the image unchanged.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { requireTools, tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { assertSameTree, describeTree, extractTar, makeSampleTree, sh, withMountedVolume, type TreeEntry } from './helpers.ts';

requireTools('tar', 'gzip', 'e2fsck', 'debugfs', 'mount', 'umount', 'losetup', 'getfattr', 'setfattr', 'setfacl', 'mknod', 'nbdfuse', 'fusermount3');

let work: { path: string; remove(): void };
let source: string;
const archives = new Map<string, string>();
const expected = new Map<string, Map<string, TreeEntry>>();

/** The archive variants GNU tar writes for the sample tree, with what `tar -x` makes of each. */
const VARIANTS: Record<string, string[]> = {
  'pax-sparse-1.0': ['--format=posix', '--xattrs', '--xattrs-include=*', '--acls', '--sparse', '--sparse-version=1.0'],
  'pax-sparse-0.1': ['--format=posix', '--xattrs', '--xattrs-include=*', '--acls', '--sparse', '--sparse-version=0.1'],
  'pax-sparse-0.0': ['--format=posix', '--xattrs', '--xattrs-include=*', '--acls', '--sparse', '--sparse-version=0.0'],
  'gnu-sparse': ['--format=gnu', '--sparse'],
};

before(() => {
  work = tempDir('image-roundtrip');
  source = path.join(work.path, 'source');
  makeSampleTree(source);
  for (const [name, flags] of Object.entries(VARIANTS)) {
    const archive = path.join(work.path, `${name}.tar`);
    sh('tar', [...flags, '-C', source, '-cf', archive, '.']);
    archives.set(name, archive);
    const extracted = path.join(work.path, `expected-${name}`);
    extractTar(archive, extracted);
    expected.set(name, describeTree(extracted));
  }
});

after(() => work?.remove());

function newPool(name: string): string {
  const pool = path.join(work.path, `pool-${name}`);
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '4G']).code, 0);
  return pool;
}

function importImage(pool: string, name: string, sourceArg: string, extra: string[] = [], input?: Uint8Array): Record<string, unknown> {
  const result = thinbd(['image', 'import', '--pool', pool, name, sourceArg, '--json', ...extra], input === undefined ? {} : { input });
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as Record<string, unknown>;
}

/** Exports the volume to a raw file and checks it with e2fsck -fn. */
function exportAndCheck(pool: string, name: string): string {
  const raw = path.join(work.path, `${path.basename(pool)}-${name}.raw`);
  assert.equal(thinbd(['export', '--pool', pool, name, raw]).code, 0);
  const fsck = sh('e2fsck', ['-fn', raw], { allowFailure: true });
  assert.equal(fsck.code, 0, `e2fsck -fn found problems:\n${fsck.stdout}${fsck.stderr}`);
  return raw;
}

/** The tree as the kernel shows it, loop-mounted read-only. */
function mountedTree(raw: string): Map<string, TreeEntry> {
  const mountPoint = fs.mkdtempSync(path.join(work.path, 'mnt-'));
  sh('mount', ['-o', 'loop,ro', raw, mountPoint]);
  try {
    return describeTree(mountPoint);
  } finally {
    sh('umount', [mountPoint]);
  }
}

for (const variant of Object.keys(VARIANTS)) {
  test(`a ${variant} archive of every kind of entry imports to ext4 that e2fsck passes and the kernel shows as tar -x does`, () => {
    const pool = newPool(variant);
    const summary = importImage(pool, 'image', archives.get(variant)!);
    assert.equal(summary['format'], 'tar');
    const raw = exportAndCheck(pool, 'image');
    assertSameTree(mountedTree(raw), expected.get(variant)!, `${variant} mounted`);
    // Holes stay holes: the 20 MiB sparse file holds about 9 KiB of data.
    const used = sh('debugfs', ['-R', 'stat /var/sparse.img', raw]).stdout;
    assert.match(used, /Blockcount: 32\b/, 'the sparse file takes 4 blocks');
    const listed = JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string; readOnly: boolean }>;
    assert.deepEqual(listed.map((volume) => [volume.name, volume.readOnly]), [['image', true]]);
    // With --all, also the index of its blocks for later imports to share (docs/image.md "Sharing"), marked hidden.
    const all = JSON.parse(thinbd(['list', '--pool', pool, '--json', '--all']).stdout) as Array<{ name: string; readOnly: boolean; hidden: boolean }>;
    assert.deepEqual(all.map((volume) => [volume.name, volume.readOnly, volume.hidden]), [['image', true, false], ['image.blocks', false, true]]);
    assert.match(thinbd(['list', '--pool', pool, '--all']).stdout, /^image\.blocks .* rw,hidden /m);
    assert.doesNotMatch(thinbd(['list', '--pool', pool]).stdout, /image\.blocks/);
  });
}

test('a flat tar parsed on the main thread (THINBD_IMAGE_PARSE_THREAD=0) gives the same tree as on the parsing thread', () => {
  const pool = newPool('one-thread');
  const result = thinbd(['image', 'import', '--pool', pool, 'image', archives.get('pax-sparse-1.0')!, '--json'], { env: { THINBD_IMAGE_PARSE_THREAD: '0' } });
  assert.equal(result.code, 0, result.stderr);
  assertSameTree(mountedTree(exportAndCheck(pool, 'image')), expected.get('pax-sparse-1.0')!, 'parsed on the main thread');
});

test('the digest of a local tar is the SHA-256 of the whole file, bytes past the end of the archive included, on the parsing thread and on the main thread', () => {
  const trailed = path.join(work.path, 'trailed.tar');
  const trailer = new Uint8Array(100 * 1024 + 17).map((_, index) => (index * 131 + 7) & 0xff);
  fs.writeFileSync(trailed, Buffer.concat([fs.readFileSync(archives.get('pax-sparse-1.0')!), trailer]));
  const digest = `sha256:${createHash('sha256').update(fs.readFileSync(trailed)).digest('hex')}`;
  for (const [name, env] of [['parsing-thread', {}], ['main-thread', { THINBD_IMAGE_PARSE_THREAD: '0' }]] as const) {
    const pool = newPool(`trailed-${name}`);
    const result = thinbd(['image', 'import', '--pool', pool, 'image', trailed, '--json'], { env });
    assert.equal(result.code, 0, result.stderr);
    assert.equal((JSON.parse(result.stdout) as Record<string, unknown>)['digest'], digest, name);
  }
});

test('a gzip archive read from standard input imports the same tree, and image ls names its source and digest', () => {
  const archive = archives.get('pax-sparse-1.0')!;
  const gzipped = path.join(work.path, 'sample.tar.gz');
  sh('sh', ['-c', `gzip -c '${archive}' > '${gzipped}'`]);
  const pool = newPool('stdin-gzip');
  const summary = importImage(pool, 'from-stdin', '-', [], fs.readFileSync(gzipped));
  assert.equal(summary['compression'], 'gzip');
  const digest = `sha256:${createHash('sha256').update(fs.readFileSync(gzipped)).digest('hex')}`;
  assert.equal(summary['digest'], digest);
  const raw = exportAndCheck(pool, 'from-stdin');
  assertSameTree(mountedTree(raw), expected.get('pax-sparse-1.0')!, 'gzip from stdin');
  const images = JSON.parse(thinbd(['image', 'ls', '--pool', pool, '--json']).stdout) as Array<Record<string, unknown>>;
  assert.equal(images.length, 1);
  assert.equal(images[0]!['name'], 'from-stdin');
  assert.equal(images[0]!['source'], 'standard input');
  assert.equal(images[0]!['digest'], digest);
  assert.equal(images[0]!['format'], 'tar+gzip');
  assert.equal(images[0]!['files'], summary['files']);
});

test('a named pipe is read once as a stream, as standard input is: the same tree and the digest of the bytes that came through it', async () => {
  const archive = archives.get('pax-sparse-1.0')!;
  const fifo = path.join(work.path, 'archive.fifo');
  sh('mkfifo', [fifo]);
  // The writer blocks until the import opens the pipe; thinbd() waits for the import to finish.
  const writer = spawn('sh', ['-c', `cat '${archive}' > '${fifo}'`], { stdio: 'ignore' });
  const written = new Promise<number | null>((resolve) => writer.on('exit', resolve));
  const pool = newPool('fifo');
  const summary = importImage(pool, 'from-fifo', fifo);
  assert.equal(await written, 0);
  assert.equal(summary['digest'], `sha256:${createHash('sha256').update(fs.readFileSync(archive)).digest('hex')}`);
  assertSameTree(mountedTree(exportAndCheck(pool, 'from-fifo')), expected.get('pax-sparse-1.0')!, 'tar from a named pipe');
});

test('debugfs, reading the unmounted file system, agrees with tar -x', () => {
  const pool = newPool('debugfs');
  importImage(pool, 'image', archives.get('pax-sparse-1.0')!);
  const raw = exportAndCheck(pool, 'image');
  const dumped = path.join(work.path, 'rdump');
  fs.mkdirSync(dumped);
  // rdump writes regular files, directories and symlinks with their modes, owners and mtimes.
  sh('debugfs', ['-R', `rdump / ${dumped}`, raw]);
  const fromDebugfs = describeTree(path.join(dumped), { xattrs: false, skip: ['lost+found'] });
  const want = expected.get('pax-sparse-1.0')!;
  for (const [relative, entry] of want) {
    if (relative === '.' || !['file', 'dir', 'symlink'].includes(entry.type)) continue;
    const other = fromDebugfs.get(relative);
    assert.ok(other !== undefined, `debugfs rdump lacks ${relative}`);
    assert.equal(other.type, entry.type, relative);
    // rdump makes symlinks without their owner or mode, nor setuid, setgid or sticky bits (checked with stat below).
    if (entry.type !== 'symlink') {
      assert.equal(other.uid, entry.uid, relative);
      assert.equal(other.gid, entry.gid, relative);
      assert.equal(parseInt(other.mode, 8) & 0o777, parseInt(entry.mode, 8) & 0o777, relative);
    }
    if (entry.type === 'file') assert.equal(other.sha256, entry.sha256, relative);
    if (entry.type === 'symlink') assert.equal(other.target, entry.target, relative);
    // rdump sets whole seconds, from the inode's low 32 bits read unsigned (e2fsprogs 1.47's rdump
    // ignores the extra epoch bits and the sign: a time before 1970 comes out in 2096; stat below).
    const seconds = (time: string): bigint => BigInt.asUintN(32, BigInt(time) / 1_000_000_000n);
    if (entry.type === 'file') assert.equal(seconds(other.mtime), seconds(entry.mtime), relative);
  }
  // What rdump leaves out: devices, FIFOs, attributes, hard links, nanoseconds.
  const stat = (file: string): string => sh('debugfs', ['-R', `stat "/${file}"`, raw]).stdout;
  assert.match(stat('dev/null'), /Type: character special[\s\S]*Device major\/minor number: 01:03/);
  assert.match(stat('dev/sda1'), /Type: block special[\s\S]*Device major\/minor number: 08:01/);
  assert.match(stat('run-fifo'), /Type: FIFO/);
  assert.match(stat('srv/shared'), /Mode: +02775/);
  assert.match(stat('usr/bin/suid'), /Mode: +04755/);
  assert.match(stat('tmp'), /Mode: +01777/);
  assert.match(stat('etc/hello'), /Links: 3[\s\S]*mtime: 0x499602d2:1d6f3454/);
  assert.match(stat('etc/block'), /mtime: 0xed300880:00000000 -- Fri Jan  1 00:00:00 1960/);
  const attributes = sh('debugfs', ['-R', 'ea_list /usr/bin/suid', raw]).stdout;
  assert.match(attributes, /security\.capability \(20\)/);
  const inodeOf = (file: string): string => /Inode: (\d+)/.exec(stat(file))![1]!;
  assert.equal(inodeOf('etc/hello'), inodeOf('usr/hello-hard-2'));
});

test("a machine's snapshot of an image mounts read-write, takes writes, stays fsck clean, and leaves the image unchanged", async () => {
  const pool = newPool('machine');
  importImage(pool, 'image', archives.get('pax-sparse-1.0')!);
  const before = createHash('sha256').update(fs.readFileSync(exportAndCheck(pool, 'image'))).digest('hex');
  assert.equal(thinbd(['snapshot', '--pool', pool, 'image', 'machine-42']).code, 0);
  await withMountedVolume(pool, 'machine-42', work.path, (mountPoint) => {
    fs.writeFileSync(path.join(mountPoint, 'etc/hello'), 'changed by the machine\n');
    fs.mkdirSync(path.join(mountPoint, 'var/log/app'), { recursive: true });
    for (let index = 0; index < 200; index++) fs.writeFileSync(path.join(mountPoint, `var/log/app/${index}.log`), `line ${index}\n`.repeat(index));
    fs.rmSync(path.join(mountPoint, 'many'), { recursive: true });
    fs.writeFileSync(path.join(mountPoint, 'usr/lib/large.bin'), Buffer.alloc(8 * 1024 * 1024, 1));
  });
  const after = createHash('sha256').update(fs.readFileSync(exportAndCheck(pool, 'image'))).digest('hex');
  assert.equal(after, before, 'the image changed');
  const machine = mountedTree(exportAndCheck(pool, 'machine-42'));
  assert.equal(machine.get('many'), undefined);
  assert.equal(machine.get('var/log/app/199.log')?.size, 'line 199\n'.length * 199);
});
