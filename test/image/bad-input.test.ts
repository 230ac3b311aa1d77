// Every bad archive the import meets is refused with one line naming the entry and its byte offset,
// exit 1, and the pool exactly as it was: no volume left behind (list), nothing leaked (check).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { ociArchive, tarArchive, tarEntry, type TarSpec } from './tar-writer.ts';

let work: { path: string; remove(): void };
let pool: string;
let listBefore: string;

before(() => {
  work = tempDir('image-bad');
  pool = path.join(work.path, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '512M']).code, 0);
  const good = path.join(work.path, 'good.tar');
  fs.writeFileSync(good, tarArchive([{ path: 'etc/', type: 'dir' }, { path: 'etc/hello', data: 'hello' }]));
  assert.equal(thinbd(['image', 'import', '--pool', pool, 'existing', good]).code, 0);
  listBefore = thinbd(['list', '--pool', pool, '--json']).stdout;
});

after(() => work?.remove());

/** Imports `bytes` (a file, or stdin with viaStdin) and checks the refusal and that the pool did not change. */
function refuse(bytes: Uint8Array, message: RegExp, options: { viaStdin?: boolean; extra?: string[] } = {}): string {
  const file = path.join(work.path, 'bad-input');
  fs.writeFileSync(file, bytes);
  const args = ['image', 'import', '--pool', pool, 'bad', options.viaStdin ? '-' : file, ...(options.extra ?? [])];
  const result = thinbd(args, options.viaStdin ? { input: bytes } : {});
  assert.equal(result.code, 1, `exit code; stderr: ${result.stderr}`);
  assert.match(result.stderr, message);
  assert.equal(result.stderr.trim().split('\n').length, 1, `one line: ${result.stderr}`);
  assert.equal(thinbd(['list', '--pool', pool, '--json']).stdout, listBefore, 'the volumes changed');
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, `check after a refused import: ${check.stdout}${check.stderr}`);
  return result.stderr;
}

const base: TarSpec[] = [
  { path: 'etc/', type: 'dir' },
  { path: 'etc/passwd', data: 'root:x:0:0::/root:/bin/sh\n' },
  { path: 'usr/bin/tool', data: Buffer.alloc(5000, 7), mode: 0o755 },
];

test('a bad header checksum names the header and its offset', () => {
  const archive = Buffer.concat([tarEntry(base[0]!), tarEntry(base[1]!), tarEntry({ path: 'etc/corrupt', data: 'x', badChecksum: true }), Buffer.alloc(1024)]);
  refuse(archive, /^thinbd: Invalid image: the tar header at byte 1536: bad header checksum/);
});

test('an archive that is not a tar at all says so', () => {
  refuse(Buffer.from('this is not an archive'.repeat(100)), /^thinbd: Invalid image: the tar header at byte 0: not a tar archive/);
});

test('a truncated archive names the entry it ends in: inside data, inside a header, or before the end blocks', () => {
  const whole = tarArchive(base);
  refuse(whole.subarray(0, 1536 + 512 + 100), /entry 'usr\/bin\/tool' at byte 1536: the archive ends inside its data \(100 bytes read\): truncated/);
  refuse(whole.subarray(0, 1536 + 200), /the tar header at byte 1536: the archive ends inside a header \(200 bytes read\): truncated/);
  refuse(whole.subarray(0, whole.length - 1024), /the tar header at byte \d+: the archive ends without its end-of-archive block/);
  refuse(whole.subarray(0, 1536 + 512 + 100), /truncated/, { viaStdin: true });
});

test('an archive cut inside the padding after an entry, or inside data skipped unread, names that entry and where it ends', () => {
  // usr/bin/tool: header at 1536, 5000 bytes of data from 2048, padding up to 7168.
  const whole = tarArchive(base);
  for (const viaStdin of [false, true]) {
    refuse(whole.subarray(0, 7100), /^thinbd: Invalid image: entry 'usr\/bin\/tool' at byte 1536: the archive ends at byte 7100, inside the padding after its data: truncated$/m, { viaStdin });
  }
  // The index of a docker/OCI archive in a file skips each blob's data by seeking.
  const layer = tarArchive([{ path: 'big', data: Buffer.alloc(300_000, 5) }]);
  const archive = ociArchive([{ tar: layer }]);
  const blob = archive.indexOf(layer);
  refuse(archive.subarray(0, blob + 200_000), /entry 'blobs\/sha256\/[0-9a-f]{64}' at byte \d+: the archive ends inside its data or the padding after it \(skipped unread from byte \d+\): truncated/);
});

test('a corrupt or truncated gzip stream is refused naming the compressed offset', () => {
  const gz = zlib.gzipSync(tarArchive(base));
  const corrupt = Buffer.from(gz);
  for (let index = 20; index < 60; index++) corrupt[index] = corrupt[index]! ^ 0xff;
  refuse(corrupt, /the gzip data is corrupt or truncated \(after \d+ compressed bytes\)/);
  refuse(gz.subarray(0, gz.length - 30), /the gzip data is corrupt or truncated|truncated/);
});

test("paths with '..', absolute paths and names past 255 bytes are refused before anything is written", () => {
  refuse(tarArchive([...base, { path: 'etc/../../escape', data: 'x' }]), /entry 'etc\/\.\.\/\.\.\/escape' at byte 7168: the path has a '\.\.' component/);
  refuse(tarArchive([...base, { path: '/etc/absolute', data: 'x' }]), /entry '\/etc\/absolute' at byte 7168: the path is absolute/);
  refuse(tarArchive([...base, { path: `etc/${'n'.repeat(256)}`, data: 'x' }]), /entry 'etc\/n{256}' at byte 7168: a name in the path is 256 bytes long; ext4 allows 255/);
  refuse(tarArchive([...base, { path: 'etc/link', type: 'hardlink', linkPath: '../outside' }]), /entry 'etc\/link' at byte 7168: the hard link target has a '\.\.' component/);
  // Nothing on the host is written from an archive's paths.
  assert.equal(fs.existsSync(path.join(work.path, '..', 'escape')), false);
});

test('a hard link to a file the image does not have, or has only later, is refused', () => {
  refuse(tarArchive([...base, { path: 'etc/shadow', type: 'hardlink', linkPath: 'etc/missing' }]), /entry 'etc\/shadow' at byte 7168: it is a hard link to 'etc\/missing', which is not in the image/);
  const later = tarArchive([...base, { path: 'etc/shadow', type: 'hardlink', linkPath: 'etc/later' }, { path: 'etc/later', data: 'x' }]);
  for (const viaStdin of [false, true]) {
    refuse(later, /entry 'etc\/shadow' at byte 7168: it is a hard link to 'etc\/later', which comes later in the archive \(at byte 7680\); a hard link's target must come before it$/m, { viaStdin });
  }
});

test('a whiteout for a file no lower layer has is refused, naming the layer', () => {
  const archive = ociArchive([{ tar: tarArchive(base) }, { tar: tarArchive([{ path: 'etc/.wh.missing', data: '' }]) }]);
  refuse(archive, /layer 2 \(sha256:[0-9a-f]{12}\) entry 'etc\/\.wh\.missing' at byte 0: it whites out 'etc\/missing', which no lower layer has/);
  refuse(archive, /entry 'etc\/\.wh\.missing' at byte 0: it whites out 'etc\/missing', which no lower layer has/, { viaStdin: true });
  // A whiteout never hides its own layer's entries: one for a file only its own layer has whites out nothing.
  const sameLayer = ociArchive([{ tar: tarArchive(base) }, { tar: tarArchive([{ path: 'etc/fresh', data: 'x' }, { path: 'etc/.wh.fresh', data: '' }]) }]);
  refuse(sameLayer, /entry 'etc\/\.wh\.fresh' at byte 1024: it whites out 'etc\/fresh', which no lower layer has/);
  refuse(sameLayer, /entry 'etc\/\.wh\.fresh' at byte 1024: it whites out 'etc\/fresh', which no lower layer has/, { viaStdin: true });
  const longName = ociArchive([{ tar: tarArchive(base) }, { tar: tarArchive([{ path: `.wh.${'n'.repeat(256)}`, data: '' }]) }]);
  refuse(longName, /entry '\.wh\.n{256}' at byte 0: it whites out a name of 256 bytes; ext4 allows 255/);
});

test('an image that does not fit --size is refused, whether its data or its metadata overflows', () => {
  const large = tarArchive([{ path: 'big', data: Buffer.alloc(40 * 1024 * 1024, 1) }]);
  refuse(large, /^thinbd: The image does not fit: entry 'big' at byte 0: the image's files need at least \d+ bytes of data; --size 33554432 leaves at most 29360128 bytes for data$/m, { extra: ['--size', '32M'] });
  refuse(tarArchive(base), /The image does not fit --size 8388608: the image needs \d+ bytes/, { extra: ['--size', '8M'] });
  // Below the metadata before the data: said plainly, before anything is read.
  for (const size of ['1', '4095', '1M', '4M']) {
    refuse(tarArchive(base), /^thinbd: --size \d+ is too small: the file system's metadata alone needs more than 4194304 bytes$/m, { extra: ['--size', size] });
  }
});

test('a decompression bomb stops where the volume could hold no more: --size, or the pool free space', async () => {
  // 1 GiB of zeros in one file compresses to about a megabyte.
  const chunks: Buffer[] = [];
  const gzip = zlib.createGzip({ level: 9 });
  gzip.on('data', (chunk: Buffer) => chunks.push(chunk));
  const done = new Promise<void>((resolve) => gzip.on('end', () => resolve()));
  const header = tarEntry({ path: 'zeros', data: Buffer.alloc(0) });
  // A header claiming 1 GiB of data, then the data.
  const claimed = Buffer.from(header.subarray(0, 512));
  claimed.write((2 ** 30).toString(8).padStart(11, '0') + '\0', 124, 'latin1');
  claimed.write('        ', 148, 'latin1');
  let sum = 0;
  for (const byte of claimed) sum += byte;
  claimed.write(`${sum.toString(8).padStart(6, '0')}\0`, 148, 'latin1');
  gzip.write(claimed);
  const zeros = Buffer.alloc(8 * 1024 * 1024);
  for (let written = 0; written < 2 ** 30; written += zeros.length) {
    if (!gzip.write(zeros)) await new Promise((resolve) => gzip.once('drain', resolve));
  }
  gzip.end(Buffer.alloc(1024));
  await done;
  const bomb = Buffer.concat(chunks);
  assert.ok(bomb.length < 4 * 1024 * 1024);
  refuse(bomb, /entry 'zeros' at byte 0: the image's files need at least \d+ bytes of data; --size 67108864 leaves at most 62914560 bytes for data/, { extra: ['--size', '64M'] });
  refuse(bomb, /^thinbd: Not enough free space in the pool for the image: entry 'zeros' at byte 0: the image's files need at least \d+ bytes of data; the pool has \d+ bytes of free data space/, { viaStdin: true });
});

test('a volume name that is taken is refused before the source is read', () => {
  const result = thinbd(['image', 'import', '--pool', pool, 'existing', '/nonexistent/archive.tar']);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /A volume named existing already exists/);
  assert.equal(thinbd(['list', '--pool', pool, '--json']).stdout, listBefore);
});

test('an import from a local file whose pool cannot be opened exits (the parsing thread started ahead is ended)', () => {
  const good = path.join(work.path, 'good.tar');
  const result = thinbd(['image', 'import', '--pool', path.join(work.path, 'no-such-pool'), 'image', good]);
  assert.equal(result.code, 1, `exit code; stderr: ${result.stderr}`);
  assert.match(result.stderr, /no-such-pool/);
  assert.equal(fs.existsSync(path.join(work.path, 'no-such-pool')), false);
});

test('an import stopped by SIGTERM leaves no volume', async () => {
  const { spawnThinbd } = await import('../cli/run-thinbd.ts');
  // A file of 4 MiB of which 3 arrive: the import writes, then waits for input with its volume half built.
  const head = tarArchive([{ path: 'etc/', type: 'dir' }, { path: 'etc/a', data: Buffer.alloc(4 * 1024 * 1024, 1) }]).subarray(0, 1536 + 3 * 1024 * 1024);
  const child = spawnThinbd(['image', 'import', '--pool', pool, 'stopped', '-']);
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  // The stdin pipe takes the bytes only as the import reads them: written, they were read.
  await new Promise<void>((resolve, reject) => child.stdin!.write(head, (error) => (error ? reject(error) : resolve())));
  child.kill('SIGTERM');
  assert.equal(await exited, 1, stderr);
  assert.match(stderr, /interrupted by SIGTERM/);
  assert.equal(thinbd(['list', '--pool', pool, '--json']).stdout, listBefore);
  assert.equal(thinbd(['check', '--pool', pool]).code, 0);
});

test("a killed import's temporary volume is removed by the next import of that name; a volume only named like one is left alone", () => {
  // What SIGKILL after a commit leaves: the volume being built, under its temporary name, with the
  // mark the import sets when it makes it.
  assert.equal(thinbd(['create', '--pool', pool, 'stopped.importing-0123abcd', '--size', '1G', '--label', 'thinbd.image.importing=stopped']).code, 0);
  // A user's own volume named the same way, and a leftover of an import of another name (a longer
  // one cut to fit): neither is this import's to remove.
  assert.equal(thinbd(['create', '--pool', pool, 'stopped.importing-4567cdef', '--size', '1G']).code, 0);
  assert.equal(thinbd(['create', '--pool', pool, 'stopped.importing-89abcdef', '--size', '1G', '--label', 'thinbd.image.importing=stopped-longer']).code, 0);
  const good = path.join(work.path, 'good-again.tar');
  fs.writeFileSync(good, tarArchive([{ path: 'x', data: 'x' }]));
  const again = thinbd(['image', 'import', '--pool', pool, 'stopped', good]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /Removed stopped\.importing-0123abcd, left by an import that did not finish/);
  assert.match(again.stderr, /Left stopped\.importing-4567cdef alone: .* not marked as one \(if it is a leftover, thinbd remove --pool \S+ stopped\.importing-4567cdef removes it\)/);
  assert.match(again.stderr, /Left stopped\.importing-89abcdef alone/);
  const names = (JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string }>).map((volume) => volume.name);
  assert.ok(!names.includes('stopped.importing-0123abcd'));
  assert.ok(names.includes('stopped.importing-4567cdef') && names.includes('stopped.importing-89abcdef'), names.join(' '));
  for (const name of ['stopped', 'stopped.importing-4567cdef', 'stopped.importing-89abcdef']) assert.equal(thinbd(['remove', '--pool', pool, name]).code, 0);
  assert.equal(thinbd(['list', '--pool', pool, '--json']).stdout, listBefore);
});

test("a killed import's temporary volume is removed by the next import of any name: an image never imported again under its name would keep it for good", () => {
  // What SIGKILL after a commit leaves, holding blocks: the volume being built, under its
  // temporary name, with the mark the import sets when it makes it.
  const leftover = 'abandoned.importing-fedcba98';
  assert.equal(thinbd(['create', '--pool', pool, leftover, '--size', '1G', '--label', 'thinbd.image.importing=abandoned']).code, 0);
  const half = path.join(work.path, 'half');
  fs.writeFileSync(half, Buffer.alloc(1024 * 1024, 7));
  assert.equal(thinbd(['import', '--pool', pool, leftover, half]).code, 0);
  const good = path.join(work.path, 'other-name.tar');
  fs.writeFileSync(good, tarArchive([{ path: 'x', data: 'x' }]));
  const other = thinbd(['image', 'import', '--pool', pool, 'another', good]);
  assert.equal(other.code, 0, other.stderr);
  assert.match(other.stderr, /Removed abandoned\.importing-fedcba98, left by an import that did not finish/);
  assert.doesNotMatch(other.stderr, /Left .* alone/);
  assert.equal(thinbd(['check', '--pool', pool]).code, 0);
  assert.equal(thinbd(['remove', '--pool', pool, 'another']).code, 0);
  assert.equal(thinbd(['list', '--pool', pool, '--json']).stdout, listBefore);
});

test('the volume an import builds carries its mark from the change that makes it, and the image does not', async () => {
  const { Pool } = await import('../../src/pool/pool.ts');
  const { importImage } = await import('../../src/image/import.ts');
  const { PassThrough } = await import('node:stream');
  const markPool = path.join(work.path, 'mark-pool');
  assert.equal(thinbd(['pool', 'create', '--pool', markPool, '--data-size', '256M']).code, 0);
  const opened = await Pool.open(markPool);
  try {
    const archive = tarArchive([{ path: 'etc/', type: 'dir' }, { path: 'etc/a', data: Buffer.alloc(3 * 1024 * 1024, 1) }]);
    const stdin = new PassThrough();
    stdin.write(archive.subarray(0, 2 * 1024 * 1024));
    const importing = importImage(opened, 'marked', '-', { stdin });
    // Half the archive given: the import waits for the rest with its volume made.
    let building: ReturnType<typeof opened.list>[number] | undefined;
    while ((building = opened.list().find((info) => info.name.startsWith('marked.importing-'))) === undefined) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.deepEqual(building.labels, { 'thinbd.image.importing': 'marked' });
    stdin.end(archive.subarray(2 * 1024 * 1024));
    const result = await importing;
    const image = opened.list().find((info) => info.name === 'marked')!;
    assert.equal(image.labels['thinbd.image.importing'], undefined);
    assert.equal(image.labels['thinbd.image.volume-id'], String(image.id));
    assert.equal(result.name, 'marked');
  } finally {
    await opened.close();
  }
});

test('a flat tree whose first entry is named like an image archive\'s (index.json) is refused saying why it was read as one, and --format tar reads it', () => {
  const web: TarSpec[] = [{ path: 'index.json', data: '{"page": "home"}' }, { path: 'app.js', data: 'main()' }];
  for (const viaStdin of [false, true]) {
    refuse(tarArchive(web), /^thinbd: Invalid image: index\.json lists no manifests \(read as a docker save archive or OCI layout since its first entry is 'index\.json'; --format tar reads it as a root file system\)$/m, { viaStdin });
  }
  // Told outright (--format oci), the archive is not second-guessed.
  const told = refuse(tarArchive(web), /index\.json lists no manifests/, { extra: ['--format', 'oci'] });
  assert.doesNotMatch(told, /--format tar/);
  const file = path.join(work.path, 'web.tar');
  fs.writeFileSync(file, tarArchive(web));
  const result = thinbd(['image', 'import', '--pool', pool, 'web', file, '--format', 'tar']);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(thinbd(['remove', '--pool', pool, 'web']).code, 0);
});
