// The ext4 structures at their limits: the directory index hash against debugfs's, a directory
// large enough for two index levels, a file fragmented enough for a two-level extent tree, and
// attribute blocks shared past their reference limit, all judged by e2fsck and the kernel.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { requireTools, tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { dirNameHash } from '../../src/image/ext4/hash.ts';
import { assertSameTree, describeTree, extractTar, sh } from './helpers.ts';
import { tarArchive, type TarSpec } from './tar-writer.ts';

requireTools('debugfs', 'e2fsck', 'mount', 'umount', 'tar');

let work: { path: string; remove(): void };
before(() => {
  work = tempDir('image-ext4');
});
after(() => work?.remove());

test("the directory index hash is e2fsprogs' unsigned half-MD4 under the file system's seed", () => {
  // Any file system image serves: dx_hash only computes. Hash version 4 is half-MD4 on unsigned chars.
  const image = path.join(work.path, 'tiny.img');
  sh('sh', ['-c', `truncate -s 8M '${image}' && mkfs.ext4 -q -F '${image}'`]);
  for (let round = 0; round < 3; round++) {
    const uuid = randomUUID();
    const seed = new Uint32Array(Uint8Array.from(Buffer.from(uuid.replace(/-/g, ''), 'hex')).buffer);
    for (const name of ['a', 'hello.txt', 'x'.repeat(31), 'y'.repeat(32), 'z'.repeat(33), 'ünïcödé ☃', 'n'.repeat(255), 'entry-1234-xxxxxxxx']) {
      const bytes = Buffer.from(name, 'utf8');
      const output = sh('debugfs', ['-R', `dx_hash -h 4 -s ${uuid} "${name}"`, image]).stdout;
      const expected = Number.parseInt(/is 0x([0-9a-f]+)/.exec(output)![1]!, 16);
      assert.equal(dirNameHash(bytes.toString('latin1'), seed), expected, `${name} under ${uuid}`);
    }
  }
});

test('a directory past one index level, a file past two extent levels and a shared attribute block past its reference limit', () => {
  const specs: TarSpec[] = [{ path: 'big-dir/', type: 'dir' }];
  // 120,000 names of 60 bytes: about 1,900 leaves, more than the root's 507 slots.
  for (let index = 0; index < 120_000; index++) specs.push({ path: `big-dir/${String(index).padStart(8, '0')}-${'n'.repeat(51)}`, data: '' });
  // 1,300 files with the same large attribute set: one block holds 1,024 users, so two blocks.
  for (let index = 0; index < 1300; index++) {
    specs.push({ path: `attrs/${index}`, data: `${index}`, pax: { 'SCHILY.xattr.user.shared': 'v'.repeat(600) } });
  }
  const archive = path.join(work.path, 'limits.tar');
  fs.writeFileSync(archive, tarArchive(specs));
  // A sparse file of 2,000 separate blocks: more extents than the inode (4) and one leaf (340) hold.
  const sparseDir = path.join(work.path, 'sparse-src');
  fs.mkdirSync(sparseDir);
  const fd = fs.openSync(path.join(sparseDir, 'fragmented'), 'w');
  for (let index = 0; index < 2000; index++) fs.writeSync(fd, Buffer.alloc(4096, (index % 250) + 1), 0, 4096, index * 3 * 4096);
  fs.closeSync(fd);
  const sparseArchive = path.join(work.path, 'sparse.tar');
  sh('tar', ['--format=posix', '--sparse', '-C', sparseDir, '-cf', sparseArchive, 'fragmented']);
  const pool = path.join(work.path, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '2G']).code, 0);
  for (const [name, source] of [['limits', archive], ['sparse', sparseArchive]] as const) {
    const result = thinbd(['image', 'import', '--pool', pool, name, source]);
    assert.equal(result.code, 0, result.stderr);
    const raw = path.join(work.path, `${name}.raw`);
    assert.equal(thinbd(['export', '--pool', pool, name, raw]).code, 0);
    const fsck = sh('e2fsck', ['-fn', raw], { allowFailure: true });
    assert.equal(fsck.code, 0, fsck.stdout);
    const mountPoint = fs.mkdtempSync(path.join(work.path, 'mnt-'));
    sh('mount', ['-o', 'loop,ro', raw, mountPoint]);
    try {
      if (name === 'limits') {
        assert.match(sh('debugfs', ['-R', 'htree /big-dir', raw]).stdout, /Indirect levels: 1/);
        assert.equal(fs.readdirSync(path.join(mountPoint, 'big-dir')).length, 120_000);
        // Lookups through the index, not a listing.
        for (const index of [0, 1, 59_999, 119_999]) assert.ok(fs.existsSync(path.join(mountPoint, 'big-dir', `${String(index).padStart(8, '0')}-${'n'.repeat(51)}`)));
        const blocks = new Set([0, 1023, 1024, 1299].map((index) => /File ACL: (\d+)/.exec(sh('debugfs', ['-R', `stat /attrs/${index}`, raw]).stdout)![1]));
        assert.equal(blocks.size, 2, 'the 1,300 inodes share two attribute blocks');
        assert.equal(sh('getfattr', ['--only-values', '-n', 'user.shared', path.join(mountPoint, 'attrs', '1299')]).stdout, 'v'.repeat(600));
      } else {
        assert.match(sh('debugfs', ['-R', 'stat /fragmented', raw]).stdout, /\(ETB1\)|Level 1|\(ETB0\)/);
        const expected = path.join(work.path, 'sparse-expected');
        extractTar(sparseArchive, expected);
        // The archive has no entry for the root: its time is the import's, not compared.
        const [actual, wanted] = [describeTree(mountPoint, { xattrs: false }), describeTree(expected, { xattrs: false })];
        actual.delete('.');
        wanted.delete('.');
        assertSameTree(actual, wanted, 'fragmented file');
      }
    } finally {
      sh('umount', [mountPoint]);
    }
  }
});

test('a time clamped to either end of ext4\'s range loses its nanoseconds, as the kernel clamps what tar -x sets', () => {
  // pax mtime "S.F": seconds past 2446 or before 1901 (and exactly at either end) with a fraction.
  const times: Record<string, string> = { 'past-2446': '99999999999.7', 'at-max': '15032385535.5', 'before-1901': '-99999999999.7', 'at-min': '-2147483648.25', inside: '1234567890.123456789' };
  // What the kernel (timestamp_truncate) makes of each, so what `tar -x` onto ext4 shows.
  const kernelNs: Record<string, bigint> = {
    'past-2446': 15032385535_000000000n,
    'at-max': 15032385535_000000000n,
    'before-1901': -2147483648_000000000n,
    'at-min': -2147483648_000000000n,
    inside: 1234567890_123456789n,
  };
  const archive = path.join(work.path, 'times.tar');
  fs.writeFileSync(archive, tarArchive(Object.entries(times).map(([name, mtime]) => ({ path: name, data: name, pax: { mtime } }))));
  const pool = path.join(work.path, 'pool-times');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G']).code, 0);
  const result = thinbd(['image', 'import', '--pool', pool, 'times', archive]);
  assert.equal(result.code, 0, result.stderr);
  const raw = path.join(work.path, 'times.raw');
  assert.equal(thinbd(['export', '--pool', pool, 'times', raw]).code, 0);
  const fsck = sh('e2fsck', ['-fn', raw], { allowFailure: true });
  assert.equal(fsck.code, 0, fsck.stdout);
  const mountPoint = fs.mkdtempSync(path.join(work.path, 'mnt-'));
  sh('mount', ['-o', 'loop,ro', raw, mountPoint]);
  try {
    for (const name of Object.keys(times)) {
      assert.equal(fs.lstatSync(path.join(mountPoint, name), { bigint: true }).mtimeNs, kernelNs[name], name);
    }
  } finally {
    sh('umount', [mountPoint]);
  }
  assert.match(sh('debugfs', ['-R', 'stat /past-2446', raw]).stdout, /mtime: 0x7fffffff:00000003 /);
  assert.match(sh('debugfs', ['-R', 'stat /before-1901', raw]).stdout, /mtime: 0x80000000:00000000 /);
});
