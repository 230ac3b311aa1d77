// Images store the bytes they have in common once: two OCI images built on the same base layer
// (one from a file, one from a stream, which uses no layer volume) and a flat tar holding many of
// the same files under other paths and in another order map those files' whole pool blocks to the
// same data blocks. The pool holds fewer blocks than the three imported into pools of their own,
// by at least the shared files' blocks; each image is still exactly its archive (e2fsck clean,
// mounted and compared with `tar -x`); a machine's snapshot of one image overwrites shared files
// and the other images do not change.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { patternBytes, requireTools, tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { Pool } from '../../src/pool/pool.ts';
import { assertSameTree, describeTree, extractTar, mountedTreeOf, sh, withMountedVolume, type TreeEntry } from './helpers.ts';
import { ociArchive, tarArchive, type TarSpec } from './tar-writer.ts';

requireTools('tar', 'e2fsck', 'debugfs', 'mount', 'umount', 'losetup', 'getfattr', 'nbdfuse', 'fusermount3');

const POOL_BLOCK = 64 * 1024;
const T = 1_700_000_000;

let work: { path: string; remove(): void };
before(() => {
  work = tempDir('image-sharing');
});
after(() => work?.remove());

const libBase = patternBytes(700_000, 1);
const libC = patternBytes(1_500_000, 2);
const appA = patternBytes(600_000, 3);
const appB = patternBytes(800_000, 4);
const dataA = patternBytes(400_000, 5);
const onlyFlat = patternBytes(300_000, 6);

const dirs = (...paths: string[]): TarSpec[] => paths.map((dir) => ({ path: `${dir}/`, type: 'dir', mtime: T }));
const smallFiles = (dir: string, count: number, seed: number): TarSpec[] =>
  Array.from({ length: count }, (_, index) => ({ path: `${dir}/f${index}`, data: patternBytes(500 + ((index * 977) % 3000), seed + index), mtime: T }));

const BASE: TarSpec[] = [
  ...dirs('etc', 'usr', 'usr/lib', 'usr/share', 'usr/share/doc', 'opt'),
  { path: 'etc/os-release', data: 'ID=base\n', mtime: T },
  { path: 'usr/lib/libbase.so', data: libBase, mode: 0o755, mtime: T },
  ...smallFiles('usr/share/doc', 60, 100),
  { path: 'usr/lib/libc.so', data: libC, mode: 0o755, mtime: T },
];
const LAYER_A: TarSpec[] = [...dirs('opt/a'), { path: 'opt/a/app', data: appA, mode: 0o755, mtime: T + 1 }, { path: 'opt/a/data', data: dataA, mtime: T + 1 }];
const LAYER_B: TarSpec[] = [...dirs('opt/b'), { path: 'opt/b/app', data: appB, mode: 0o755, mtime: T + 2 }, ...smallFiles('opt/b', 5, 300)];
// A flat tree: some files of both images under other paths, in another order, one twice, a file of zeros.
const FLAT: TarSpec[] = [
  ...dirs('srv', 'lib', 'var'),
  { path: 'srv/app-b', data: appB, mtime: T + 3 },
  { path: 'srv/new', data: onlyFlat, mtime: T + 3 },
  { path: 'lib/libc.so.6', data: libC, mtime: T + 3 },
  ...smallFiles('srv', 10, 500),
  { path: 'srv/data', data: dataA, mtime: T + 3 },
  { path: 'lib/libbase.so', data: libBase, mtime: T + 3 },
  { path: 'var/libc-copy', data: libC, mtime: T + 3 },
  { path: 'var/zeros', data: new Uint8Array(6 * POOL_BLOCK), mtime: T + 3 },
];

/** Whole pool blocks of a file: what sharing stores once. */
const wholeBlocks = (bytes: Uint8Array): number => Math.floor(bytes.length / POOL_BLOCK);

function newPool(name: string): string {
  const pool = path.join(work.path, `pool-${name}`);
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '2G', '--block-size', String(POOL_BLOCK)]).code, 0);
  return pool;
}

interface Summary {
  dataBytesWritten: number;
  dataBytesShared: number;
  dataBytesZero: number;
  layers: Array<{ shared: boolean }>;
}

function importImage(pool: string, name: string, source: string, input?: Uint8Array): Summary {
  const result = thinbd(['image', 'import', '--pool', pool, name, source, '--json'], input === undefined ? {} : { input });
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as Summary;
}

const dataBlocksUsed = (pool: string): number => (JSON.parse(thinbd(['pool', 'status', '--pool', pool, '--json']).stdout) as { dataBlocksUsed: number }).dataBlocksUsed;

let archives: { first: string; second: Buffer; flat: string };

function makeArchives(): typeof archives {
  const first = path.join(work.path, 'first.tar');
  fs.writeFileSync(first, ociArchive([{ tar: tarArchive(BASE) }, { tar: tarArchive(LAYER_A) }]));
  const second = ociArchive([{ tar: tarArchive(BASE) }, { tar: tarArchive(LAYER_B) }], { docker: true });
  const flat = path.join(work.path, 'flat.tar');
  fs.writeFileSync(flat, tarArchive(FLAT));
  return { first, second, flat };
}

/** The tree `tar -x` makes of the layers in order (no whiteouts here), directories at their archived times. */
function expectedTree(layers: TarSpec[][]): Map<string, TreeEntry> {
  const root = fs.mkdtempSync(path.join(work.path, 'expected-'));
  layers.forEach((layer, index) => {
    const tar = path.join(work.path, `layer-${index}.tar`);
    fs.writeFileSync(tar, tarArchive(layer));
    extractTar(tar, root);
  });
  for (const spec of layers.flat()) if (spec.type === 'dir') sh('touch', ['-h', '-d', `@${spec.mtime}`, path.join(root, spec.path)]);
  const tree = describeTree(root);
  tree.delete('.');
  return tree;
}

function exportChecked(pool: string, name: string): string {
  const raw = path.join(work.path, `${path.basename(pool)}-${name}.raw`);
  fs.rmSync(raw, { force: true });
  assert.equal(thinbd(['export', '--pool', pool, name, raw]).code, 0);
  const fsck = sh('e2fsck', ['-fn', raw], { allowFailure: true });
  assert.equal(fsck.code, 0, `e2fsck -fn of ${name}:\n${fsck.stdout}${fsck.stderr}`);
  return raw;
}

const digestOf = (file: string): string => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

test('images with files in common store them once; each is still its archive; a machine writing shared files changes no other image', async () => {
  archives = makeArchives();
  // Each image in a pool of its own: what the three take without sharing between them.
  const alone = [
    { name: 'first', import: (pool: string) => importImage(pool, 'first', archives.first) },
    { name: 'second', import: (pool: string) => importImage(pool, 'second', '-', archives.second) },
    { name: 'flat', import: (pool: string) => importImage(pool, 'flat', archives.flat) },
  ];
  let separateBlocks = 0;
  for (const image of alone) {
    const pool = newPool(`alone-${image.name}`);
    image.import(pool);
    separateBlocks += dataBlocksUsed(pool);
  }

  const pool = newPool('shared');
  const first = importImage(pool, 'first', archives.first);
  assert.equal(first.dataBytesShared, 0);
  const usedAfterFirst = dataBlocksUsed(pool);
  // From a stream: no layer volume is used, the base layer's blocks are found by content.
  const second = importImage(pool, 'second', '-', archives.second);
  assert.deepEqual(second.layers.map((layer) => layer.shared), [false, false]);
  const secondShared = wholeBlocks(libBase) + wholeBlocks(libC);
  assert.ok(second.dataBytesShared >= secondShared * POOL_BLOCK, `the second image shared ${second.dataBytesShared} bytes, its base layer's large files alone are ${secondShared * POOL_BLOCK}`);
  const flat = importImage(pool, 'flat', archives.flat);
  // libc.so twice (the images' copy, found for both of the flat tree's), libbase, the data and app-b.
  const flatShared = 2 * wholeBlocks(libC) + wholeBlocks(libBase) + wholeBlocks(dataA) + wholeBlocks(appB);
  assert.ok(flat.dataBytesShared >= flatShared * POOL_BLOCK, `the flat image shared ${flat.dataBytesShared} bytes, expected at least ${flatShared * POOL_BLOCK}`);
  assert.equal(flat.dataBytesZero, 6 * POOL_BLOCK);

  // Blocks: fewer than the three separately, by at least what the images have in common.
  const sharedBlocks = dataBlocksUsed(pool);
  // (The flat tree's second libc.so is shared in its own pool too: not counted.)
  const acrossImages = secondShared + wholeBlocks(libC) + wholeBlocks(libBase) + wholeBlocks(dataA) + wholeBlocks(appB);
  assert.ok(
    sharedBlocks <= separateBlocks - acrossImages,
    `the pool holds ${sharedBlocks} blocks; the images alone take ${separateBlocks}, and ${acrossImages} of theirs are the same bytes`,
  );
  assert.ok(sharedBlocks > usedAfterFirst);

  // `image ls` shows the sharing.
  const images = JSON.parse(thinbd(['image', 'ls', '--pool', pool, '--json']).stdout) as Array<{ name: string; sharedBytes: number; exclusiveBytes: number }>;
  for (const name of ['first', 'second', 'flat']) {
    const image = images.find((entry) => entry.name === name);
    assert.ok(image !== undefined && image.sharedBytes >= wholeBlocks(libC) * POOL_BLOCK, `image ls: ${JSON.stringify(image)}`);
  }
  assert.equal(images.length, 3, 'image ls lists the images only (not the block index or layer volumes)');
  const text = thinbd(['image', 'ls', '--pool', pool]);
  assert.equal(text.code, 0);
  assert.match(text.stdout, /SHARED/);

  // Each image is exactly its archive.
  const raws = new Map<string, string>();
  for (const name of ['first', 'second', 'flat']) raws.set(name, exportChecked(pool, name));
  assertSameTree(mountedTreeOf(raws.get('first')!, work.path), expectedTree([BASE, LAYER_A]), 'first image');
  assertSameTree(mountedTreeOf(raws.get('second')!, work.path), expectedTree([BASE, LAYER_B]), 'second image');
  assertSameTree(mountedTreeOf(raws.get('flat')!, work.path), expectedTree([FLAT]), 'flat image');
  const digests = new Map([...raws].map(([name, raw]) => [name, digestOf(raw)]));

  // A machine of the flat image overwrites its shared files in place: the others keep theirs.
  assert.equal(thinbd(['snapshot', '--pool', pool, 'flat', 'machine-1']).code, 0);
  await withMountedVolume(pool, 'machine-1', work.path, (mountPoint) => {
    for (const file of ['lib/libc.so.6', 'lib/libbase.so', 'srv/data', 'srv/app-b', 'var/libc-copy']) {
      const full = path.join(mountPoint, file);
      const size = fs.statSync(full).size;
      const handle = fs.openSync(full, 'r+');
      try {
        fs.writeSync(handle, Buffer.alloc(size, 0x5a), 0, size, 0);
        fs.fsyncSync(handle);
      } finally {
        fs.closeSync(handle);
      }
    }
  });
  for (const name of ['first', 'second', 'flat']) assert.equal(digestOf(exportChecked(pool, name)), digests.get(name), `${name} changed when a machine of the flat image wrote`);
  const machine = mountedTreeOf(exportChecked(pool, 'machine-1'), work.path);
  assert.equal(machine.get('lib/libc.so.6')?.sha256, createHash('sha256').update(Buffer.alloc(libC.length, 0x5a)).digest('hex'));
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stderr);
});

test('the block index is only a hint: an image changed behind it, or removed, is never shared from', async () => {
  const pool = newPool('stale');
  const archive = path.join(work.path, 'lib.tar');
  fs.writeFileSync(archive, tarArchive([...dirs('lib'), { path: 'lib/libc.so', data: libC, mtime: T }]));
  importImage(pool, 'original', archive);
  // The image made writable, its data region overwritten, made read-only again: its index records now lie.
  const opened = await Pool.open(pool);
  try {
    await opened.updateVolume('original', { readOnly: false });
    const volume = opened.volume('original');
    await volume.write(4 * 1024 * 1024, Buffer.alloc(2 * 1024 * 1024, 0x77));
    await opened.updateVolume('original', { readOnly: true });
    await opened.flush();
  } finally {
    await opened.close();
  }
  const copy = importImage(pool, 'copy', archive);
  // Every block of the file changed (its data starts at 4 MiB): none may be shared.
  assert.equal(copy.dataBytesShared, 0, 'shared blocks that changed');
  const read = (image: string): Buffer => {
    const raw = exportChecked(pool, image);
    const out = path.join(work.path, `${image}-libc.so`);
    sh('debugfs', ['-R', `dump /lib/libc.so ${out}`, raw]);
    return fs.readFileSync(out);
  };
  assert.ok(read('copy').equals(libC), 'the copy holds the archive\'s bytes');
  // The source removed: its records are dropped, the next import writes its blocks.
  assert.equal(thinbd(['remove', '--pool', pool, 'original']).code, 0);
  const third = importImage(pool, 'third', archive);
  assert.ok(read('third').equals(libC));
  assert.equal(third.dataBytesShared, wholeBlocks(libC) * POOL_BLOCK, 'the copy\'s blocks (indexed by its import) are shared instead');
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stderr);
});

test('an index of version 1 (crc32c and crc32 per block) is still read: its images are shared from, and it is rewritten as version 2', async () => {
  const pool = newPool('index-v1');
  const archive = path.join(work.path, 'lib-v1.tar');
  fs.writeFileSync(archive, tarArchive([...dirs('lib'), { path: 'lib/libc.so', data: libC, mtime: T }]));
  importImage(pool, 'original', archive);
  // The index rewritten as an earlier build wrote it: version 1, [crc32c, crc32, volume, block] per record.
  const opened = await Pool.open(pool);
  try {
    const volume = opened.volume('image.blocks');
    const header = new Uint8Array(4096);
    await volume.read(0, header);
    const view = new DataView(header.buffer);
    assert.equal(view.getUint32(32, true), 2, 'an import writes version 2');
    const count = view.getUint32(40, true);
    assert.ok(count >= wholeBlocks(libC), `${count} records`);
    const records = new Uint8Array(count * 16);
    await volume.read(4096, records);
    const fields = new DataView(records.buffer);
    for (let at = 0; at < records.length; at += 16) {
      assert.equal(fields.getUint32(at + 4, true), 0, 'version 2 leaves the second word zero');
      fields.setUint32(at + 4, fields.getUint32(at, true), true);
      fields.setUint32(at, 0x12345678, true);
    }
    view.setUint32(32, 1, true);
    await volume.write(0, header);
    await volume.write(4096, records);
    await opened.flush();
  } finally {
    await opened.close();
  }
  const copy = importImage(pool, 'copy', archive);
  assert.equal(copy.dataBytesShared, wholeBlocks(libC) * POOL_BLOCK, 'the blocks a version 1 index names are shared');
  const reopened = await Pool.open(pool);
  try {
    const header = new Uint8Array(4096);
    await reopened.volume('image.blocks').read(0, header);
    assert.equal(new DataView(header.buffer).getUint32(32, true), 2, 'the import rewrote the index as version 2');
  } finally {
    await reopened.close();
  }
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stderr);
});

test('a volume of the user\'s own named image.blocks is neither read as the index nor overwritten; an image cannot take that name', () => {
  const pool = newPool('own-name');
  const archive = path.join(work.path, 'lib-own.tar');
  fs.writeFileSync(archive, tarArchive([...dirs('lib'), { path: 'lib/libc.so', data: libC, mtime: T }]));
  const refused = thinbd(['image', 'import', '--pool', pool, 'image.blocks', archive]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /image\.blocks is the name of the image block index/);
  assert.equal(thinbd(['list', '--pool', pool, '--all', '--json']).stdout.trim(), '[]');
  const own = patternBytes(10 * 1024 * 1024, 9);
  const ownFile = path.join(work.path, 'own.bin');
  fs.writeFileSync(ownFile, own);
  assert.equal(thinbd(['create', '--pool', pool, 'image.blocks', '--size', '16M']).code, 0);
  assert.equal(thinbd(['import', '--pool', pool, 'image.blocks', ownFile]).code, 0);
  importImage(pool, 'first', archive);
  // Its records are not kept anywhere: the second import shares nothing, and is still its archive.
  assert.equal(importImage(pool, 'second', archive).dataBytesShared, 0);
  fs.rmSync(exportChecked(pool, 'second'));
  const volumes = JSON.parse(thinbd(['list', '--pool', pool, '--all', '--json']).stdout) as Array<{ name: string; sizeBytes: number }>;
  assert.equal(volumes.find((volume) => volume.name === 'image.blocks')?.sizeBytes, 16 * 1024 * 1024);
  const exported = path.join(work.path, 'own.out');
  assert.equal(thinbd(['export', '--pool', pool, 'image.blocks', exported]).code, 0);
  assert.ok(fs.readFileSync(exported).subarray(0, own.length).equals(own), 'the volume keeps its bytes');
  fs.rmSync(exported);
});
