// image ls lists images, not the machines made from them; image stats counts images only, and
// --deep's pool space is what an import maps; the source label names a local file absolutely.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { patternBytes, tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { Pool } from '../../src/pool/pool.ts';
import { sh } from './helpers.ts';
import { ociArchive, tarArchive, type TarSpec } from './tar-writer.ts';

let work: { path: string; remove(): void };

before(() => {
  work = tempDir('image-catalog');
});

after(() => work?.remove());

let pools = 0;
function newPool(blockSize = '64k'): string {
  const pool = path.join(work.path, `pool-${pools++}`);
  const created = thinbd(['pool', 'create', '--pool', pool, '--data-size', '1G', '--block-size', blockSize]);
  assert.equal(created.code, 0, created.stderr);
  return pool;
}

interface Listed {
  name: string;
  source: string;
  digest: string;
  snapshots: number;
}

function imageLs(pool: string): Listed[] {
  const result = thinbd(['image', 'ls', '--pool', pool, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as Listed[];
}

const FLAT: TarSpec[] = [
  { path: 'etc/', type: 'dir' },
  { path: 'etc/hello', data: 'hello\n' },
  { path: 'usr/lib/big', data: patternBytes(300 * 1024 + 5, 1) },
];

test('image ls lists the images only: not a machine (a writable snapshot) or a read-only copy, though they carry its labels; an image keeps its place when renamed', async () => {
  const pool = newPool();
  fs.writeFileSync(path.join(work.path, 'flat.tar'), tarArchive(FLAT));
  // A relative path, as typed in a shell: the label names the file wherever image ls runs.
  const imported = thinbd(['image', 'import', '--pool', pool, 'flat', 'flat.tar'], { cwd: work.path });
  assert.equal(imported.code, 0, imported.stderr);
  const [image] = imageLs(pool);
  assert.ok(path.isAbsolute(image!.source), `source ${image!.source}`);
  assert.equal(fs.realpathSync(image!.source), fs.realpathSync(path.join(work.path, 'flat.tar')));

  assert.equal(thinbd(['snapshot', '--pool', pool, 'flat', 'machine-42']).code, 0);
  assert.equal(thinbd(['snapshot', '--pool', pool, '--read-only', 'flat', 'flat-copy']).code, 0);
  assert.equal(thinbd(['snapshot', '--pool', pool, 'machine-42', 'machine-42-backup']).code, 0);
  const listed = imageLs(pool);
  assert.deepEqual(listed.map((entry) => [entry.name, entry.snapshots]), [['flat', 2]]);
  const text = thinbd(['image', 'ls', '--pool', pool]);
  assert.match(text.stdout, /SNAPSHOTS/);
  assert.doesNotMatch(text.stdout, /machine-42|flat-copy/);

  // No command renames a volume; the library does (lvrename).
  const opened = await Pool.open(pool);
  try {
    await opened.renameVolume('flat', 'base');
    await opened.flush();
  } finally {
    await opened.close();
  }
  assert.deepEqual(imageLs(pool).map((entry) => entry.name), ['base']);
});

/** The pool bytes image stats --deep counts for an archive, and what importing it maps. */
function deepAndImported(archive: string, blockSize: string): { deep: number; mapped: number } {
  const dir = path.join(work.path, `deep-${pools}`);
  fs.mkdirSync(dir);
  fs.copyFileSync(archive, path.join(dir, path.basename(archive)));
  const stats = thinbd(['image', 'stats', dir, '--deep', '--json', '--block-size', blockSize]);
  assert.equal(stats.code, 0, stats.stderr);
  const parsed = JSON.parse(stats.stdout) as { count: number; poolBytes: number; errors: unknown[] };
  assert.equal(parsed.count, 1);
  assert.deepEqual(parsed.errors, []);
  const pool = newPool(blockSize);
  const imported = thinbd(['image', 'import', '--pool', pool, 'image', archive, '--json']);
  assert.equal(imported.code, 0, imported.stderr);
  const volumes = JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string; mappedBytes: number }>;
  return { deep: parsed.poolBytes, mapped: volumes.find((volume) => volume.name === 'image')!.mappedBytes };
}

test("image ls counts an image's machines, not the layer volumes its import kept (snapshots of it too)", () => {
  const pool = newPool();
  const layer1 = tarArchive([{ path: 'etc/', type: 'dir' }, { path: 'etc/os-release', data: 'ID=base\n' }]);
  const layer2 = tarArchive([{ path: 'opt/app', data: patternBytes(70 * 1024, 3) }]);
  fs.writeFileSync(path.join(work.path, 'layered.tar'), ociArchive([{ tar: layer1 }, { tar: layer2 }], { docker: true }));
  const imported = thinbd(['image', 'import', '--pool', pool, 'layered', path.join(work.path, 'layered.tar')]);
  assert.equal(imported.code, 0, imported.stderr);
  const layerVolumes = (JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string; origin: string | null }>).filter((volume) => volume.name.startsWith('layer.'));
  assert.deepEqual(layerVolumes.map((volume) => volume.origin), ['layered', 'layered'], 'the import kept two layer volumes, snapshots of the image');
  assert.deepEqual(imageLs(pool).map((entry) => [entry.name, entry.snapshots]), [['layered', 0]]);
  assert.equal(thinbd(['snapshot', '--pool', pool, 'layered', 'machine-1']).code, 0);
  assert.deepEqual(imageLs(pool).map((entry) => [entry.name, entry.snapshots]), [['layered', 1]]);
});

test("image stats --deep counts the pool space an import maps: data, zero blocks left out, replaced data dropped, metadata, journal, at the pool's block size", () => {
  // Small files (4 KiB each in the image, 512 bytes in the tar), a large file, a file of zeros, a
  // file replaced by a smaller one (its blocks freed), many directories.
  const specs: TarSpec[] = [{ path: 'etc/', type: 'dir' }];
  for (let index = 0; index < 300; index++) specs.push({ path: `etc/d${index % 30}/f${index}`, data: `file ${index}\n` });
  specs.push({ path: 'usr/lib/big', data: patternBytes(3 * 1024 * 1024 + 17, 2) });
  specs.push({ path: 'var/zeros', data: Buffer.alloc(2 * 1024 * 1024) });
  specs.push({ path: 'var/replaced', data: patternBytes(1024 * 1024, 3) });
  specs.push({ path: 'var/replaced', data: 'now small\n' });
  specs.push({ path: 'usr/lib/link', type: 'hardlink', linkPath: 'usr/lib/big' });
  const flat = path.join(work.path, 'mixed.tar');
  fs.writeFileSync(flat, tarArchive(specs));
  const gzipped = path.join(work.path, 'mixed.tar.gz');
  fs.writeFileSync(gzipped, zlib.gzipSync(fs.readFileSync(flat)));
  // Two layers, the second whiting out the first's large file.
  const oci = path.join(work.path, 'layered.tar');
  fs.writeFileSync(
    oci,
    ociArchive(
      [
        { tar: tarArchive([{ path: 'etc/', type: 'dir' }, { path: 'etc/os', data: 'one\n' }, { path: 'opt/blob', data: patternBytes(2 * 1024 * 1024, 4) }]) },
        { tar: tarArchive([{ path: 'opt/', type: 'dir' }, { path: 'opt/.wh.blob', data: '' }, { path: 'etc/os', data: 'two\n' }]) },
      ],
      { docker: true },
    ),
  );
  fs.writeFileSync(path.join(work.path, 'flat-small.tar'), tarArchive(FLAT));
  for (const archive of [flat, gzipped, oci, path.join(work.path, 'flat-small.tar')]) {
    for (const blockSize of ['64k', '256k']) {
      const { deep, mapped } = deepAndImported(archive, blockSize);
      assert.equal(deep, mapped, `${path.basename(archive)} at ${blockSize} blocks: --deep ${deep}, the import mapped ${mapped}`);
    }
  }
});

test('image stats writes a file name with a newline or an escape sequence in it escaped, on its own row', () => {
  const dir = path.join(work.path, 'named-dir');
  fs.mkdirSync(dir);
  const name = 'a\u001b[31mred\nforged.tar';
  fs.writeFileSync(path.join(dir, name), tarArchive(FLAT));
  fs.writeFileSync(path.join(dir, 'b\nbroken.tar.gz'), zlib.gzipSync(tarArchive(FLAT)).subarray(0, 200));
  const text = thinbd(['image', 'stats', dir, '--deep']);
  assert.equal(text.code, 1, text.stderr);
  const lines = text.stdout.trim().split('\n');
  assert.equal(lines.length, 5, text.stdout);
  assert.ok(lines.some((line) => line.startsWith('a\\x1b[31mred\\nforged.tar ')), text.stdout);
  assert.doesNotMatch(text.stdout + text.stderr, /\u001b/);
  assert.match(text.stderr, /^b\\nbroken\.tar\.gz: /m);
});

test('image stats counts the files that are images (by their first bytes), says how many it skipped, fails when --deep could not read one, and --top 0 prints no table', () => {
  const dir = path.join(work.path, 'mixed-dir');
  fs.mkdirSync(path.join(dir, 'nested'), { recursive: true });
  const flat = tarArchive(FLAT);
  fs.writeFileSync(path.join(dir, 'flat.tar'), flat);
  fs.writeFileSync(path.join(dir, 'nested', 'flat.tgz'), zlib.gzipSync(flat));
  sh('sh', ['-c', `zstd -q -c '${path.join(dir, 'flat.tar')}' > '${path.join(dir, 'flat.tar.zst')}'`]);
  fs.writeFileSync(path.join(dir, 'readme.txt'), 'not an image\n');
  fs.writeFileSync(path.join(dir, 'nested', 'notes.md'), '# notes\n');
  fs.symlinkSync('flat.tar', path.join(dir, 'latest.tar'));
  const stats = JSON.parse(thinbd(['image', 'stats', dir, '--json']).stdout) as { count: number; skipped: number; minBytes: number };
  assert.equal(stats.count, 4, 'flat.tar, nested/flat.tgz, flat.tar.zst and the link to flat.tar');
  assert.equal(stats.skipped, 2);
  assert.ok(stats.minBytes > 13, `min ${stats.minBytes}`);
  const text = thinbd(['image', 'stats', dir, '--top', '0']);
  assert.equal(text.code, 0, text.stderr);
  assert.equal(text.stdout.trim().split('\n').length, 1, text.stdout);
  assert.match(text.stdout, /^4 images, .*\(2 other files skipped/);

  // An image --deep cannot read: reported, left out of the sums, and the command fails.
  const truncated = zlib.gzipSync(flat).subarray(0, 200);
  fs.writeFileSync(path.join(dir, 'broken.tar.gz'), truncated);
  const deep = thinbd(['image', 'stats', dir, '--deep']);
  assert.equal(deep.code, 1, deep.stderr);
  assert.match(deep.stderr, /broken\.tar\.gz: /);
  assert.match(deep.stderr, /1 of 5 images could not be read/);
  assert.match(deep.stdout, /^5 images, /);

  // Nothing at all under the source (a mistyped prefix, most often): figures of nothing, and a note.
  const empty = path.join(work.path, 'empty-dir');
  fs.mkdirSync(empty);
  const none = thinbd(['image', 'stats', empty]);
  assert.equal(none.code, 0, none.stderr);
  assert.match(none.stdout, /^0 images, 0B in all/);
  assert.equal(none.stderr, `thinbd: note: nothing under ${empty}: no images, no other files\n`);
});
