// docker save archives and OCI layouts: layers applied in order (whiteouts, opaque directories,
// replaced files and directories, hard links to lower layers, paths through a symlinked
// directory), from a file (the archive's index first) and from a stream (one pass); images built on
// the same layers share those layers' blocks in the pool, and `list` shows it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { requireTools, patternBytes, tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { assertSameTree, describeTree, mountedTreeOf, sh, type TreeEntry } from './helpers.ts';
import { ociArchive, sha256Hex, tarArchive, type TarSpec } from './tar-writer.ts';

requireTools('e2fsck', 'mount', 'umount', 'getfattr', 'debugfs');

let work: { path: string; remove(): void };
before(() => {
  work = tempDir('image-layers');
});
after(() => work?.remove());

const T = 1_700_000_000;
const big = patternBytes(3 * 1024 * 1024, 11);
const tool1 = patternBytes(300_000, 12);
const tool2 = patternBytes(200_000, 13);

const LAYER_1: TarSpec[] = [
  { path: 'etc/', type: 'dir', mtime: T },
  { path: 'etc/os-release', data: 'ID=test\n', mtime: T },
  { path: 'etc/config-dir/', type: 'dir', mtime: T },
  { path: 'etc/config-dir/a', data: 'a', mtime: T },
  { path: 'etc/config-dir/b', data: 'b', mtime: T },
  { path: 'usr/', type: 'dir', mtime: T },
  { path: 'usr/bin/', type: 'dir', mtime: T },
  { path: 'usr/bin/tool', data: tool1, mode: 0o755, uid: 10, gid: 20, mtime: T },
  { path: 'usr/bin/tool-link', type: 'hardlink', linkPath: 'usr/bin/tool' },
  { path: 'usr/lib/', type: 'dir', mtime: T },
  { path: 'usr/lib/big', data: big, mtime: T },
  { path: 'bin', type: 'symlink', linkPath: 'usr/bin', mtime: T },
  { path: 'var/', type: 'dir', mtime: T },
  { path: 'var/cache/', type: 'dir', mtime: T },
  { path: 'var/cache/x', data: 'x', mtime: T },
  { path: 'var/cache/y/', type: 'dir', mtime: T },
  { path: 'var/cache/y/z', data: 'z', mtime: T },
];

const LAYER_2: TarSpec[] = [
  { path: 'var/cache/', type: 'dir', mtime: T + 1 },
  { path: 'var/cache/.wh..wh..opq', data: '', mtime: T + 1 },
  { path: 'var/cache/new', data: 'new', mtime: T + 1 },
  { path: 'etc/config-dir/.wh.a', data: '', mtime: T + 1 },
  { path: 'usr/lib/.wh.big', data: '', mtime: T + 1 },
  { path: 'usr/bin/tool', data: tool2, mode: 0o700, mtime: T + 1 },
  { path: 'etc/os-release-link', type: 'hardlink', linkPath: 'etc/os-release' },
  { path: 'etc/new-file', data: 'layer 2', mtime: T + 1, pax: { 'SCHILY.xattr.user.layer': 'two' } },
];

const LAYER_3: TarSpec[] = [
  { path: 'etc/config-dir', data: 'now a file', mtime: T + 2 },
  { path: 'bin/added', data: 'through the symlink', mode: 0o755, mtime: T + 2 },
  { path: 'home/', type: 'dir', mode: 0o750, mtime: T + 2 },
];

/** The tree the layers make, built with the same operations on a real directory. */
function expectedTree(layers: readonly TarSpec[][]): Map<string, TreeEntry> {
  const root = fs.mkdtempSync(path.join(work.path, 'expected-'));
  const at = (relative: string): string => path.join(root, relative);
  // A directory keeps the time of its last entry in any layer (thinbd's rule: what a later layer
  // adds inside it does not change it); set after each layer, others at once.
  const directoryTimes = new Map<string, number>();
  for (const layer of layers) {
    for (const spec of layer) {
      const relative = spec.path.replace(/\/$/, '');
      const name = path.basename(relative);
      if (name === '.wh..wh..opq') {
        const dir = at(path.dirname(relative));
        // Opaque: lower layers' children go (this layer's entries come after the marker here).
        for (const child of fs.readdirSync(dir)) fs.rmSync(path.join(dir, child), { recursive: true });
        continue;
      }
      if (name.startsWith('.wh.')) {
        fs.rmSync(at(path.join(path.dirname(relative), name.slice(4))), { recursive: true });
        continue;
      }
      // Parents through symlinks: the kernel follows them as tar -x does.
      const full = path.join(fs.realpathSync(at(path.dirname(relative))), name);
      const type = spec.type ?? 'file';
      if (type === 'dir') {
        if (!fs.existsSync(full) || !fs.lstatSync(full).isDirectory()) {
          fs.rmSync(full, { recursive: true, force: true });
          fs.mkdirSync(full);
        }
      } else {
        fs.rmSync(full, { recursive: true, force: true });
        if (type === 'file') fs.writeFileSync(full, spec.data ?? '');
        else if (type === 'symlink') fs.symlinkSync(spec.linkPath!, full);
        else if (type === 'hardlink') fs.linkSync(at(spec.linkPath!), full);
      }
      if (type !== 'hardlink') {
        if (type !== 'symlink') fs.chmodSync(full, spec.mode ?? (type === 'dir' ? 0o755 : 0o644));
        fs.lchownSync(full, spec.uid ?? 0, spec.gid ?? 0);
        for (const [key, value] of Object.entries(spec.pax ?? {})) {
          if (key.startsWith('SCHILY.xattr.')) sh('setfattr', ['-h', '-n', key.slice('SCHILY.xattr.'.length), '-v', String(value), full]);
        }
        if (type === 'dir') directoryTimes.set(full, spec.mtime ?? 1_600_000_000);
        else sh('touch', ['-h', '-d', `@${spec.mtime ?? 1_600_000_000}`, full]);
      }
    }
    for (const [full, seconds] of directoryTimes) if (fs.lstatSync(full, { throwIfNoEntry: false })?.isDirectory()) sh('touch', ['-h', '-d', `@${seconds}`, full]);
  }
  const tree = describeTree(root);
  // Directories tar -x would have made itself get the import's time: not compared.
  const implicit = ['.'];
  for (const key of implicit) tree.delete(key);
  return tree;
}

function newPool(name: string): string {
  const pool = path.join(work.path, `pool-${name}`);
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '2G']).code, 0);
  return pool;
}

interface Summary {
  format: string;
  files: number;
  layers: Array<{ diffId: string; shared: boolean; volume?: string }>;
  dataBytesWritten: number;
  dataBytesShared: number;
}

function importImage(pool: string, name: string, source: string, input?: Uint8Array): Summary {
  const result = thinbd(['image', 'import', '--pool', pool, name, source, '--json'], input === undefined ? {} : { input });
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout) as Summary;
}

function mountedTree(pool: string, name: string): Map<string, TreeEntry> {
  const raw = path.join(work.path, `${path.basename(pool)}-${name}.raw`);
  assert.equal(thinbd(['export', '--pool', pool, name, raw]).code, 0);
  const fsck = sh('e2fsck', ['-fn', raw], { allowFailure: true });
  assert.equal(fsck.code, 0, `e2fsck -fn:\n${fsck.stdout}${fsck.stderr}`);
  try {
    return mountedTreeOf(raw, work.path);
  } finally {
    fs.rmSync(raw);
  }
}

const gzip = (bytes: Buffer): Buffer => zlib.gzipSync(bytes);

test('an OCI layout imports its layers in order: whiteouts, opaque directories, replacements, cross-layer hard links', () => {
  const archive = path.join(work.path, 'oci.tar');
  fs.writeFileSync(archive, ociArchive([{ tar: tarArchive(LAYER_1) }, { tar: tarArchive(LAYER_2), gzip: true }, { tar: tarArchive(LAYER_3) }], { gzipFn: gzip }));
  const pool = newPool('oci');
  const summary = importImage(pool, 'app', archive);
  assert.equal(summary.format, 'oci');
  assert.equal(summary.layers.length, 3);
  assertSameTree(mountedTree(pool, 'app'), expectedTree([LAYER_1, LAYER_2, LAYER_3]), 'OCI layers');
  // The whited-out 3 MiB file's blocks are not kept in the image's volume.
  const volumes = JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string; mappedBytes: number }>;
  const image = volumes.find((volume) => volume.name === 'app')!;
  assert.ok(image.mappedBytes < big.length, `the image maps ${image.mappedBytes} bytes, the deleted file alone is ${big.length}`);
});

test('the same archive read once from a stream (manifest after the layers) builds the same tree', () => {
  const bytes = ociArchive([{ tar: tarArchive(LAYER_1) }, { tar: tarArchive(LAYER_2) }, { tar: tarArchive(LAYER_3), gzip: true }], { docker: true, gzipFn: gzip });
  const pool = newPool('stream');
  const summary = importImage(pool, 'app', '-', bytes);
  assert.equal(summary.format, 'docker');
  assertSameTree(mountedTree(pool, 'app'), expectedTree([LAYER_1, LAYER_2, LAYER_3]), 'streamed layers');
  const gzipped = path.join(work.path, 'docker.tar.gz');
  fs.writeFileSync(gzipped, gzip(bytes));
  importImage(pool, 'app-gz', gzipped);
  assertSameTree(mountedTree(pool, 'app-gz'), expectedTree([LAYER_1, LAYER_2, LAYER_3]), 'gzip archive of layers');
});

test('a legacy docker save archive (<id>/layer.tar, a repeated layer linked to its first copy) imports', () => {
  const layers = [tarArchive(LAYER_1), tarArchive(LAYER_2)];
  const ids = layers.map((layer, index) => sha256Hex(Buffer.concat([layer, Buffer.from([index])])));
  const empty = tarArchive([]);
  const config = JSON.stringify({ rootfs: { type: 'layers', diff_ids: [...layers, empty, empty].map((layer) => `sha256:${sha256Hex(layer)}`) } });
  const configName = `${sha256Hex(Buffer.from(config))}.json`;
  const specs: TarSpec[] = [];
  layers.forEach((layer, index) => specs.push({ path: `${ids[index]}/`, type: 'dir' }, { path: `${ids[index]}/layer.tar`, data: layer }, { path: `${ids[index]}/VERSION`, data: '1.0' }));
  const emptyIds = ['e1', 'e2'].map((seed) => sha256Hex(Buffer.from(seed)));
  specs.push({ path: `${emptyIds[0]}/layer.tar`, data: empty }, { path: `${emptyIds[1]}/layer.tar`, type: 'symlink', linkPath: `../${emptyIds[0]}/layer.tar` });
  specs.push({ path: configName, data: config });
  specs.push({ path: 'manifest.json', data: JSON.stringify([{ Config: configName, RepoTags: ['legacy:1'], Layers: [...ids, ...emptyIds].map((id) => `${id}/layer.tar`) }]) });
  specs.push({ path: 'repositories', data: '{}' });
  const archive = path.join(work.path, 'legacy.tar');
  fs.writeFileSync(archive, tarArchive(specs));
  const pool = newPool('legacy');
  const summary = importImage(pool, 'legacy', archive);
  assert.equal(summary.format, 'docker');
  assert.equal(summary.layers.length, 4);
  assertSameTree(mountedTree(pool, 'legacy'), expectedTree([LAYER_1, LAYER_2]), 'legacy docker save');
  const streamed = importImage(pool, 'legacy-stream', '-', fs.readFileSync(archive));
  assert.equal(streamed.layers.length, 4);
  assertSameTree(mountedTree(pool, 'legacy-stream'), expectedTree([LAYER_1, LAYER_2]), 'legacy docker save from a stream');
  const images = JSON.parse(thinbd(['image', 'ls', '--pool', pool, '--json']).stdout) as Array<{ name: string; tags: string[] }>;
  assert.deepEqual(images.find((image) => image.name === 'legacy')?.tags, ['legacy:1']);
});

test('images built on the same layers store them once: the later image starts from a layer volume and list shows the sharing', () => {
  const base = path.join(work.path, 'base.tar');
  const derived = path.join(work.path, 'derived.tar');
  fs.writeFileSync(base, ociArchive([{ tar: tarArchive(LAYER_1) }, { tar: tarArchive(LAYER_2) }]));
  fs.writeFileSync(derived, ociArchive([{ tar: tarArchive(LAYER_1) }, { tar: tarArchive(LAYER_2) }, { tar: tarArchive(LAYER_3) }], { docker: true }));
  const pool = newPool('share');
  const first = importImage(pool, 'base', base);
  assert.deepEqual(first.layers.map((layer) => layer.shared), [false, false]);
  const usedBefore = (JSON.parse(thinbd(['pool', 'status', '--pool', pool, '--json']).stdout) as { dataBlocksUsed: number }).dataBlocksUsed;
  const second = importImage(pool, 'derived', derived);
  assert.deepEqual(second.layers.map((layer) => layer.shared), [true, true, false]);
  const usedAfter = (JSON.parse(thinbd(['pool', 'status', '--pool', pool, '--json']).stdout) as { dataBlocksUsed: number }).dataBlocksUsed;
  // The derived image's own blocks: its small third layer and its metadata, far less than the shared data.
  assert.ok((usedAfter - usedBefore) * 65536 < tool1.length + big.length, `the second import took ${(usedAfter - usedBefore) * 65536} bytes`);
  assert.ok(second.dataBytesWritten < 64 * 1024, `the second import wrote ${second.dataBytesWritten} bytes of file data`);
  assertSameTree(mountedTree(pool, 'base'), expectedTree([LAYER_1, LAYER_2]), 'base image');
  assertSameTree(mountedTree(pool, 'derived'), expectedTree([LAYER_1, LAYER_2, LAYER_3]), 'derived image');
  const volumes = JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string; origin: string | null; sharedBytes: number; labels: Record<string, string> }>;
  const derivedVolume = volumes.find((volume) => volume.name === 'derived')!;
  const layerVolume = volumes.find((volume) => volume.name === derivedVolume.origin);
  assert.ok(layerVolume !== undefined, 'the derived image is a snapshot of a layer volume');
  assert.equal(layerVolume.labels['thinbd.layer.diff-id'], second.layers[1]!.diffId);
  assert.ok(derivedVolume.sharedBytes > tool1.length, 'list shows the shared bytes');
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stderr);
});

test("a pool's free space is weighed against the data an image writes, not the layers it starts from", () => {
  // A fleet pool near full that holds the base layers: an image on them writes its own layer only.
  const baseSpecs: TarSpec[] = [
    { path: 'opt/', type: 'dir', mtime: T },
    { path: 'opt/base.bin', data: patternBytes(24 * 1024 * 1024, 21), mtime: T },
  ];
  const appSpecs: TarSpec[] = [{ path: 'opt/app.bin', data: patternBytes(1024 * 1024, 22), mtime: T }];
  const baseLayer = tarArchive(baseSpecs);
  const appLayer = tarArchive(appSpecs);
  const hugeLayer = tarArchive([{ path: 'opt/huge.bin', data: patternBytes(20 * 1024 * 1024, 23), mtime: T }]);
  const base = path.join(work.path, 'near-full-base.tar');
  const app = path.join(work.path, 'near-full-app.tar');
  const huge = path.join(work.path, 'near-full-huge.tar');
  fs.writeFileSync(base, ociArchive([{ tar: baseLayer }]));
  fs.writeFileSync(app, ociArchive([{ tar: baseLayer }, { tar: appLayer }], { docker: true }));
  fs.writeFileSync(huge, ociArchive([{ tar: baseLayer }, { tar: hugeLayer }], { docker: true }));
  const pool = path.join(work.path, 'pool-near-full');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '64M', '--auto-grow', 'off']).code, 0);
  importImage(pool, 'base', base);
  // Fill the pool until 16 MiB are free: less than the base layer, more than the app's own data.
  const status = JSON.parse(thinbd(['pool', 'status', '--pool', pool, '--json']).stdout) as { space: { data: { freeBytes: number } } };
  const filler = path.join(work.path, 'near-full-filler.raw');
  fs.writeFileSync(filler, patternBytes(status.space.data.freeBytes - 16 * 1024 * 1024, 24));
  assert.equal(thinbd(['import', '--pool', pool, 'filler', filler]).code, 0);
  const imported = importImage(pool, 'app', app);
  assert.deepEqual(imported.layers.map((layer) => layer.shared), [true, false]);
  assertSameTree(mountedTree(pool, 'app'), expectedTree([baseSpecs, appSpecs]), 'the image imported into a nearly full pool');
  // Compressed, the archive is read once as a stream (no layer volumes): the blocks it finds in the
  // pool by content take none of the free space either.
  const appGz = path.join(work.path, 'near-full-app.tar.gz');
  fs.writeFileSync(appGz, zlib.gzipSync(fs.readFileSync(app)));
  const streamed = importImage(pool, 'app-gz', appGz);
  assert.ok(streamed.dataBytesShared >= 24 * 1024 * 1024, `shared ${streamed.dataBytesShared} bytes`);
  assertSameTree(mountedTree(pool, 'app-gz'), expectedTree([baseSpecs, appSpecs]), 'the compressed image imported into a nearly full pool');
  // One whose own layer does not fit is refused, as a lack of space (not a bad archive), in one line.
  const listBefore = thinbd(['list', '--pool', pool, '--all', '--json']).stdout;
  const refused = thinbd(['image', 'import', '--pool', pool, 'huge', huge]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /^thinbd: Not enough free space in the pool for the image: layer 2 \(sha256:[0-9a-f]{12}\) entry 'opt\/huge\.bin' at byte \d+: the image's files need at least \d+ bytes of data besides the \d+ bytes of its layers already in the pool; the pool has \d+ bytes of free data space; the pool is as it was: grow it \(thinbd pool resize --data-size\) or free space, and import again\n$/);
  assert.equal(thinbd(['list', '--pool', pool, '--all', '--json']).stdout, listBefore);
  // One whose data just fits, but not with its metadata: the pool's own refusal, said as the same.
  const free = Number(/the pool has (\d+) bytes of free data space/.exec(refused.stderr)![1]);
  const brim = path.join(work.path, 'near-full-brim.tar');
  fs.writeFileSync(brim, ociArchive([{ tar: baseLayer }, { tar: tarArchive([{ path: 'opt/brim.bin', data: patternBytes(free - 8192, 25), mtime: T }]) }], { docker: true }));
  const full = thinbd(['image', 'import', '--pool', pool, 'brim', brim]);
  assert.equal(full.code, 1);
  assert.match(full.stderr, /^thinbd: Not enough free space in the pool for the image: No free data block[^\n]*; the pool is as it was: grow it \(thinbd pool resize --data-size\) or free space, and import again\n$/);
  assert.equal(thinbd(['list', '--pool', pool, '--all', '--json']).stdout, listBefore);
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stderr);
});

test('a layer whose content does not match its diff_id is refused and leaves nothing behind', () => {
  const good = ociArchive([{ tar: tarArchive(LAYER_1) }]);
  // Change one byte of the file data inside the layer blob: the tar still parses, the digest differs.
  const tampered = Buffer.from(good);
  const at = tampered.indexOf(Buffer.from('ID=test'));
  tampered[at] = 'J'.charCodeAt(0);
  const archive = path.join(work.path, 'tampered.tar');
  fs.writeFileSync(archive, tampered);
  const pool = newPool('tampered');
  for (const source of [archive, '-']) {
    const result = thinbd(['image', 'import', '--pool', pool, 'bad', source], source === '-' ? { input: tampered } : {});
    assert.equal(result.code, 1);
    assert.match(result.stderr, /content digest sha256:[0-9a-f]{64}, not its diff_id sha256:/);
    assert.equal(thinbd(['list', '--pool', pool, '--json']).stdout.trim(), '[]');
  }
});

test("a layer's whiteouts hide only lower layers' entries, wherever they stand in the layer's tar (OCI image spec, Whiteouts)", () => {
  const long = 'r'.repeat(255);
  const lower: TarSpec[] = [
    { path: 'a', data: 'layer 1', mtime: T },
    { path: 'd/', type: 'dir', mtime: T },
    { path: 'd/x', data: 'x', mtime: T },
    { path: 'd/y', data: 'y', mtime: T },
    { path: long, data: 'a name of 255 bytes', mtime: T },
  ];
  // The same layer in two orders: whiteouts after the entries they must not hide, and before.
  const upperAfter: TarSpec[] = [
    { path: 'a', data: 'layer 2', mtime: T + 1 },
    { path: '.wh.a', data: '' },
    { path: 'd/', type: 'dir', mtime: T + 1 },
    { path: 'd/new', data: 'new', mtime: T + 1 },
    { path: 'd/.wh..wh..opq', data: '' },
    { path: 'd/.wh.x', data: '' },
    // The whiteout of a 255-byte name is 259 bytes long: the name it removes is what ext4 must hold.
    { path: `.wh.${long}`, data: '' },
  ];
  const upperBefore: TarSpec[] = [upperAfter[1]!, upperAfter[5]!, upperAfter[4]!, upperAfter[0]!, upperAfter[2]!, upperAfter[3]!, upperAfter[6]!];
  const pool = newPool('whiteout-order');
  for (const [name, upper] of [['after', upperAfter], ['before', upperBefore]] as const) {
    const bytes = ociArchive([{ tar: tarArchive(lower) }, { tar: tarArchive(upper) }], { docker: true });
    const archive = path.join(work.path, `whiteouts-${name}.tar`);
    fs.writeFileSync(archive, bytes);
    for (const [volume, source, input] of [[`${name}-file`, archive, undefined], [`${name}-stream`, '-', bytes]] as const) {
      importImage(pool, volume, source, input);
      const tree = mountedTree(pool, volume);
      assert.deepEqual([...tree.keys()].sort(), ['a', 'd', 'd/new'], `${volume}: the paths`);
      assert.equal(tree.get('a')!.sha256, sha256Hex(Buffer.from('layer 2')), `${volume}: a is layer 2's`);
    }
  }
});

test("an OCI layout archived from its directory ('tar -C layout -cf image.tar .', entries under './') is read as a layout, from a file and a stream", () => {
  const layout = path.join(work.path, 'layout-dir');
  fs.mkdirSync(layout);
  const plain = path.join(work.path, 'layout-plain.tar');
  fs.writeFileSync(plain, ociArchive([{ tar: tarArchive(LAYER_1) }, { tar: tarArchive(LAYER_2), gzip: true }], { gzipFn: gzip }));
  sh('tar', ['-xf', plain, '-C', layout]);
  const archive = path.join(work.path, 'layout-dot.tar');
  sh('tar', ['-cf', archive, '-C', layout, '.']);
  assert.equal(sh('tar', ['-tf', archive]).stdout.split('\n')[0], './');
  const pool = newPool('layout-dot');
  const expected = expectedTree([LAYER_1, LAYER_2]);
  for (const [volume, source, input] of [['from-file', archive, undefined], ['from-stream', '-', fs.readFileSync(archive)]] as const) {
    const summary = importImage(pool, volume, source, input);
    assert.equal(summary.format, 'oci', volume);
    assert.equal(summary.layers.length, 2, volume);
    assertSameTree(mountedTree(pool, volume), expected, volume);
  }
  // A flat tree archived the same way is still a flat tar, its root taking the './' entry's attributes.
  const rootfs = path.join(work.path, 'rootfs-dot');
  fs.mkdirSync(rootfs, { mode: 0o700 });
  fs.chmodSync(rootfs, 0o700);
  fs.writeFileSync(path.join(rootfs, 'file'), 'flat');
  const flat = path.join(work.path, 'rootfs-dot.tar');
  sh('tar', ['-cf', flat, '-C', rootfs, '.']);
  // From a stream: parsed on the main thread, where the entries read to tell the format are applied first.
  assert.equal(importImage(pool, 'flat', '-', fs.readFileSync(flat)).format, 'tar');
  const raw = path.join(work.path, 'flat.raw');
  assert.equal(thinbd(['export', '--pool', pool, 'flat', raw]).code, 0);
  assert.match(sh('debugfs', ['-R', 'stat /', raw]).stdout, /Mode:\s+0700/);
  fs.rmSync(raw);
});

test('a layer that appears twice is applied twice, from a file, a stream or a compressed archive; read once, it is refused only where two files would hold the same data', () => {
  const repeated: TarSpec[] = [{ path: 'a', data: 'again', mtime: T }];
  const removal: TarSpec[] = [{ path: '.wh.a', data: '' }];
  const bytes = ociArchive([{ tar: tarArchive(repeated) }, { tar: tarArchive(removal) }, { tar: tarArchive(repeated) }], { docker: true });
  const archive = path.join(work.path, 'repeated.tar');
  fs.writeFileSync(archive, bytes);
  const compressed = path.join(work.path, 'repeated.tar.gz');
  fs.writeFileSync(compressed, gzip(bytes));
  const pool = newPool('repeated');
  const expected = expectedTree([repeated, removal, repeated]);
  importImage(pool, 'repeated', archive);
  assertSameTree(mountedTree(pool, 'repeated'), expected, 'a layer applied twice, read twice from the file');
  importImage(pool, 'streamed', '-', bytes);
  assertSameTree(mountedTree(pool, 'streamed'), expected, 'a layer applied twice from a stream, read once');
  importImage(pool, 'gzipped', compressed);
  assertSameTree(mountedTree(pool, 'gzipped'), expected, 'a layer applied twice from a gzip archive, read once');

  // A later layer's hard link keeps the first application's file: read once, the second would
  // hold the same blocks as a file of its own. From a file it is read twice; read once, refused.
  const linked: TarSpec[] = [{ path: 'b', type: 'hardlink', linkPath: 'a' }];
  const linkedBytes = ociArchive([{ tar: tarArchive(repeated) }, { tar: tarArchive(linked) }, { tar: tarArchive(repeated) }], { docker: true });
  const linkedArchive = path.join(work.path, 'linked.tar');
  fs.writeFileSync(linkedArchive, linkedBytes);
  importImage(pool, 'linked', linkedArchive);
  assertSameTree(mountedTree(pool, 'linked'), expectedTree([repeated, linked, repeated]), 'a layer applied twice over a hard link to its file');
  const streamed = thinbd(['image', 'import', '--pool', pool, 'linked-streamed', '-'], { input: linkedBytes });
  assert.equal(streamed.code, 1);
  assert.match(streamed.stderr, /appears twice in the image and \/[ab] and \/[ab] would be two files of one data, read once; import the archive from a file \(not a stream\) to read it twice/);
  const gzipped = thinbd(['image', 'import', '--pool', pool, 'linked-gzipped', '-'], { input: gzip(linkedBytes) });
  assert.equal(gzipped.code, 1);
  assert.match(gzipped.stderr, /import the archive decompressed, from a file \(a gzip archive is read once, in order\) to read it twice/);
  const names = (JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string }>).map((volume) => volume.name).filter((name) => !name.startsWith('layer.'));
  assert.deepEqual(names.sort(), ['gzipped', 'linked', 'repeated', 'streamed']);
  assert.equal(thinbd(['check', '--pool', pool]).code, 0);
});
