// Unpack's work volume (`NAME.unpacking`) and its neighbours: a volume of that name that an
// unpack into NAME did not make is never removed, a leftover one is, long names get work volumes
// of their own, the mark never reaches the target, and a killed unpack leaves a work volume the
// next one knows and removes. And a stream unpacks into a pool of another block size, into a new
// volume and onto an existing one, byte for byte.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from '../../src/pool/pool.ts';
import { Archive } from '../../src/archive/archive.ts';
import { packVolume, unpackVolume } from '../../src/archive/commands.ts';
import { poolSources } from '../../src/archive/source.ts';
import { UNPACK_TARGET_LABEL, workVolumeName } from '../../src/archive/unpack.ts';
import { VOLUME_NAME_LENGTH_MAX } from '../../src/constants.ts';
import { isThinError } from '../../src/errors.ts';
import { KiB, MiB, contentBytes, createPool, digest, mappedBlocks, readVolume, tempDir } from './helpers.ts';
import { mappedByteRanges } from '../../src/archive/pack.ts';

const dir = tempDir('archive-unpack');
let pool: Pool;
let store: string;
let packed: string;

before(async () => {
  pool = await createPool(join(dir.path, 'pool'));
  store = join(dir.path, 'store');
  await (await Archive.init(store, { averageChunkBytes: 16 * 1024, zstdLevel: 3 })).close();
  const volume = await pool.createVolume('vol', { sizeBytes: 4 * MiB });
  await volume.write(0, contentBytes(3 * MiB, 1));
  await pool.snapshot('vol', 'vol.0', { readOnly: true });
  await packVolume({ store, sources: poolSources(pool), volume: 'vol.0', name: 's0' });
  packed = digest(await readVolume(pool, 'vol.0'));
});

after(async () => {
  await pool?.close().catch(() => undefined);
  dir.remove();
});

function names(): string[] {
  return pool.list().map((info) => info.name);
}

test("a user's volume with the work name is kept: the unpack stops and says so", async () => {
  const mine = await pool.createVolume('x.unpacking', { sizeBytes: 1 * MiB });
  await mine.write(0, contentBytes(1 * MiB, 5));
  const before = digest(await readVolume(pool, 'x.unpacking'));
  await assert.rejects(
    unpackVolume({ store, pool, stream: 's0', volume: 'x' }),
    (error: Error) =>
      isThinError(error, 'THIN_EXISTS') &&
      /^Cannot unpack into x: volume x\.unpacking exists and was not made by an unpack into x; rename it, or remove it \('thinbd remove x\.unpacking'\) if it is not needed$/.test(error.message),
  );
  assert.equal(digest(await readVolume(pool, 'x.unpacking')), before, 'its data is untouched');
  assert.ok(!names().includes('x'), 'no target was made');
  // Also onto an existing target, and with a mark for another target.
  await pool.createVolume('y', { sizeBytes: 1 * MiB });
  await pool.createVolume('y.unpacking', { sizeBytes: 1 * MiB, labels: { [UNPACK_TARGET_LABEL]: 'other' } });
  await assert.rejects(unpackVolume({ store, pool, stream: 's0', volume: 'y' }), /volume y\.unpacking exists and was not made by an unpack into y/);
  assert.ok(names().includes('y.unpacking'));
  // Renamed away, the unpack goes ahead.
  await pool.renameVolume('x.unpacking', 'mine');
  await unpackVolume({ store, pool, stream: 's0', volume: 'x' });
  assert.equal(digest(await readVolume(pool, 'x')), packed);
  assert.equal(digest(await readVolume(pool, 'mine')), before);
});

test("an unpack's leftover is removed by the next unpack into its target; the mark never reaches the target", async () => {
  const notes: string[] = [];
  // What a killed unpack into a new volume leaves: the work volume, marked, half written.
  const leftover = await pool.createVolume('z.unpacking', { sizeBytes: 4 * MiB, labels: { [UNPACK_TARGET_LABEL]: 'z' } });
  await leftover.write(0, contentBytes(MiB, 9));
  await unpackVolume({ store, pool, stream: 's0', volume: 'z', onNote: (line) => notes.push(line) });
  assert.deepEqual(notes, ['removing z.unpacking, left by an unpack into z that did not finish']);
  assert.equal(digest(await readVolume(pool, 'z')), packed);
  assert.deepEqual(pool.list().find((info) => info.name === 'z')!.labels, {});
  assert.ok(!names().includes('z.unpacking'));
  // Onto an existing volume: its labels are kept, and the work volume (its snapshot) carried the mark.
  await pool.updateVolume('z', { labels: { owner: 'me' } });
  await pool.snapshot('z', 'z.unpacking', { labels: { owner: 'me', [UNPACK_TARGET_LABEL]: 'z' } });
  await unpackVolume({ store, pool, stream: 's0', volume: 'z', onNote: (line) => notes.push(line) });
  assert.equal(notes.length, 2);
  assert.deepEqual(pool.list().find((info) => info.name === 'z')!.labels, { owner: 'me' });
  assert.ok(!names().includes('z.unpacking'));
});

test("an unpack's leftover is removed by the next unpack into any target: a target never unpacked into again would keep it for good", async () => {
  const notes: string[] = [];
  // What a killed unpack into `q` leaves, half written; and a volume whose mark does not fit its name.
  const leftover = await pool.createVolume('q.unpacking', { sizeBytes: 4 * MiB, labels: { [UNPACK_TARGET_LABEL]: 'q' } });
  await leftover.write(0, contentBytes(MiB, 11));
  await pool.createVolume('p.unpacking', { sizeBytes: MiB, labels: { [UNPACK_TARGET_LABEL]: 'elsewhere' } });
  await unpackVolume({ store, pool, stream: 's0', volume: 'r', onNote: (line) => notes.push(line) });
  assert.deepEqual(notes, ['removing q.unpacking, left by an unpack into q that did not finish']);
  assert.ok(!names().includes('q.unpacking'));
  assert.ok(names().includes('p.unpacking'), 'a volume not named as its mark says is not taken for a leftover');
  assert.equal(digest(await readVolume(pool, 'r')), packed);
  // Two unpacks at once in one process: neither takes the other's work volume for a leftover.
  await Promise.all(['r1', 'r2'].map((volume) => unpackVolume({ store, pool, stream: 's0', volume })));
  for (const volume of ['r1', 'r2']) assert.equal(digest(await readVolume(pool, volume)), packed);
  for (const volume of ['r', 'r1', 'r2', 'p.unpacking']) await pool.removeVolume(volume);
});

test('a snapshot takes the labels it is given in the change that makes it, the source keeps its own', async () => {
  await pool.createVolume('labelled', { sizeBytes: MiB, labels: { a: '1' } });
  await pool.snapshot('labelled', 'labelled.s', { labels: { b: '2' } });
  await pool.snapshot('labelled', 'labelled.t');
  const labels = (name: string) => pool.list().find((info) => info.name === name)!.labels;
  assert.deepEqual(labels('labelled'), { a: '1' });
  assert.deepEqual(labels('labelled.s'), { b: '2' });
  assert.deepEqual(labels('labelled.t'), { a: '1' });
});

test('long names that differ past the cut get work volumes of their own', async () => {
  const a = `${'a'.repeat(120)}-one`;
  const b = `${'a'.repeat(120)}-two`;
  assert.notEqual(workVolumeName(a), workVolumeName(b));
  for (const name of [a, b, 'v'.repeat(VOLUME_NAME_LENGTH_MAX)]) {
    assert.ok(workVolumeName(name).length <= VOLUME_NAME_LENGTH_MAX, workVolumeName(name));
    assert.ok(workVolumeName(name).endsWith('.unpacking'));
  }
  assert.equal(workVolumeName('x'), 'x.unpacking');
  // A leftover of an unpack into a is a's, not b's: an unpack into b removes it as a's and
  // works in a work volume of its own.
  await pool.createVolume(workVolumeName(a), { sizeBytes: MiB, labels: { [UNPACK_TARGET_LABEL]: a } });
  const notes: string[] = [];
  await unpackVolume({ store, pool, stream: 's0', volume: b, onNote: (line) => notes.push(line) });
  assert.equal(digest(await readVolume(pool, b)), packed);
  assert.deepEqual(notes, [`removing ${workVolumeName(a)}, left by an unpack into ${a} that did not finish`]);
  assert.ok(!names().includes(workVolumeName(a)) && !names().includes(workVolumeName(b)));
  await unpackVolume({ store, pool, stream: 's0', volume: a });
  assert.equal(digest(await readVolume(pool, a)), packed);
});

test('an unpack that runs out of data space names the stream, the target and what to do; the target and the pool are as they were', async () => {
  // 2 MiB of data space (32 blocks, not grown) cannot hold the stream's 3 MiB; the target holds other bytes.
  const small = await Pool.create(join(dir.path, 'small'), { dataSizeBytes: 2 * MiB, blockSizeBytes: 64 * KiB, commitIntervalMs: 0, space: { autoGrow: false } });
  try {
    const target = await small.createVolume('t', { sizeBytes: 4 * MiB });
    await target.write(0, contentBytes(512 * KiB, 7));
    const before = digest(await readVolume(small, 't'));
    const usedBefore = small.status().dataBlocksUsed;
    await assert.rejects(
      unpackVolume({ store, pool: small, stream: 's0', volume: 't' }),
      (error: Error) =>
        isThinError(error, 'THIN_NO_SPACE') &&
        /^Unpacking stream s0 into t ran out of data space after writing [\d.]+ MiB \(the stream maps 3\.0 MiB\): No free data block.* t and the pool are as they were; grow the pool \(thinbd pool resize --data-size\) or free space, and unpack again$/.test(error.message),
    );
    assert.equal(digest(await readVolume(small, 't')), before);
    assert.deepEqual(small.list().map((info) => info.name), ['t']);
    assert.equal(small.status().dataBlocksUsed, usedBefore, 'every block the unpack took is free again');
  } finally {
    await small.close();
  }
});

test('an unpack onto a larger volume counts what the shrink drops as discarded', async () => {
  const big = await pool.createVolume('big', { sizeBytes: 8 * MiB });
  await big.write(0, contentBytes(8 * MiB, 3));
  const result = await unpackVolume({ store, pool, stream: 's0', volume: 'big' });
  // The stream maps [0, 3 MiB) of 4 MiB: [3, 4) MiB is discarded in place and [4, 8) MiB is dropped by the shrink.
  assert.equal(result.bytesDiscarded, 5 * MiB);
  assert.equal(pool.list().find((info) => info.name === 'big')!.sizeBytes, 4 * MiB);
  assert.equal(digest(await readVolume(pool, 'big')), packed);
});

/** Runs unpack-killed.ts: an unpack into `volume` of the pool in `poolDir`, killed after its first commit. */
async function killedUnpack(poolDir: string, volume: string): Promise<void> {
  const child = fork(fileURLToPath(new URL('./unpack-killed.ts', import.meta.url)), [poolDir, store, 's0', volume], { execArgv: ['--import', 'tsx'], stdio: 'ignore' });
  const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
  assert.equal(signal, 'SIGKILL', `the unpack was killed (exit code ${code})`);
}

test('an unpack killed after a commit leaves its marked work volume, which the next unpack removes: into a new volume and onto an existing one', async () => {
  const poolDir = join(dir.path, 'killed');
  await (await createPool(poolDir)).close();
  for (const volumeCreated of [true, false]) {
    await killedUnpack(poolDir, 'k');
    const reopened = await Pool.open(poolDir, { commitIntervalMs: 0 });
    try {
      const infos = reopened.list();
      assert.deepEqual(infos.find((info) => info.name === 'k.unpacking')?.labels, { [UNPACK_TARGET_LABEL]: 'k' }, 'the kill left the work volume, marked');
      assert.equal(infos.some((info) => info.name === 'k'), !volumeCreated, 'the target is as it was');
      const notes: string[] = [];
      const result = await unpackVolume({ store, pool: reopened, stream: 's0', volume: 'k', onNote: (line) => notes.push(line) });
      assert.equal(result.volumeCreated, volumeCreated);
      // (The killed unpack's store lock is reported stale and removed too.)
      assert.deepEqual(notes.filter((line) => !line.startsWith('removed a stale lock')), ['removing k.unpacking, left by an unpack into k that did not finish']);
      assert.equal(digest(await readVolume(reopened, 'k')), packed);
      assert.deepEqual(reopened.list().filter((info) => info.name.startsWith('k')).map((info) => [info.name, info.labels]), [['k', {}]]);
    } finally {
      await reopened.close();
    }
  }
});

/** The target blocks that cover a stream's mapped byte ranges. */
function blocksCovering(ranges: Array<{ begin: number; end: number }>, blockSizeBytes: number): number[] {
  const blocks = new Set<number>();
  for (const range of ranges) for (let block = Math.floor(range.begin / blockSizeBytes); block * blockSizeBytes < range.end; block += 1) blocks.add(block);
  return [...blocks].sort((a, b) => a - b);
}

test('a stream unpacks into a pool of another block size (64 KiB <-> 1 MiB), into a new volume and onto an existing one, byte for byte', async () => {
  const small = pool; // 64 KiB blocks
  const large = await Pool.create(join(dir.path, 'large'), { dataSizeBytes: 256 * MiB, blockSizeBytes: MiB, commitIntervalMs: 0 });
  try {
    // From the 64 KiB pool: two runs inside one 1 MiB block, one across a 1 MiB edge, a partial last block.
    const a = await small.createVolume('bs-a', { sizeBytes: 5 * MiB + 3000 });
    await a.write(0, contentBytes(64 * KiB, 21));
    await a.write(192 * KiB, contentBytes(128 * KiB, 22));
    await a.write(MiB + 512 * KiB, contentBytes(640 * KiB, 23));
    await a.write(5 * MiB, contentBytes(3000, 24));
    await small.snapshot('bs-a', 'bs-a.0', { readOnly: true });
    // From the 1 MiB pool: a block with a discarded (zeroed) middle, a block mapped for 100 bytes.
    const b = await large.createVolume('bs-b', { sizeBytes: 4 * MiB + 5000 });
    await b.write(0, contentBytes(MiB + 512 * KiB, 25));
    await b.discard(256 * KiB, 256 * KiB);
    await b.write(3 * MiB + 100, contentBytes(100, 26));
    await b.write(4 * MiB, contentBytes(5000, 27));
    await large.snapshot('bs-b', 'bs-b.0', { readOnly: true });
    await packVolume({ store, sources: poolSources(small), volume: 'bs-a.0', name: 'from-64k' });
    await packVolume({ store, sources: poolSources(large), volume: 'bs-b.0', name: 'from-1m' });

    const cases = [
      { stream: 'from-64k', from: small, volume: 'bs-a.0', into: large, bs: MiB },
      { stream: 'from-1m', from: large, volume: 'bs-b.0', into: small, bs: 64 * KiB },
    ];
    for (const { stream, from, volume, into, bs } of cases) {
      const wanted = digest(await readVolume(from, volume));
      const sourceBs = from.status().blockSizeBytes;
      const ranges = mappedByteRanges(from.volume(volume).mappedRuns(), sourceBs, from.volume(volume).sizeBytes);
      // A new volume: the stream's ranges, in whole blocks of the target.
      const fresh = await unpackVolume({ store, pool: into, stream, volume: `${stream}.new` });
      assert.equal(fresh.volumeCreated, true);
      assert.equal(digest(await readVolume(into, `${stream}.new`)), wanted, `${stream} into ${bs}-byte blocks`);
      assert.equal(into.volume(`${stream}.new`).sizeBytes, from.volume(volume).sizeBytes);
      assert.deepEqual(mappedBlocks(into, `${stream}.new`), blocksCovering(ranges, bs), `${stream}: provisioned where the stream maps`);
      // An existing volume of other contents, mapped where the stream is not and smaller.
      const old = await into.createVolume(`${stream}.old`, { sizeBytes: 3 * MiB });
      await old.write(0, contentBytes(3 * MiB, 28));
      const onto = await unpackVolume({ store, pool: into, stream, volume: `${stream}.old` });
      assert.equal(onto.volumeCreated, false);
      assert.ok(onto.bytesDiscarded > 0, 'ranges the stream leaves unmapped are discarded');
      assert.equal(digest(await readVolume(into, `${stream}.old`)), wanted, `${stream} onto a volume of ${bs}-byte blocks`);
      // Again onto the restored volume, beside a snapshot of it: nothing differs, nothing is
      // written or discarded, every block stays shared with the snapshot.
      await into.snapshot(`${stream}.old`, `${stream}.kept`, { readOnly: true });
      const again = await unpackVolume({ store, pool: into, stream, volume: `${stream}.old` });
      assert.equal(again.bytesWritten, 0);
      assert.equal(again.bytesDiscarded, 0);
      assert.equal(digest(await readVolume(into, `${stream}.old`)), wanted);
      const usage = into.usage().get(into.volume(`${stream}.old`).id)!;
      assert.equal(usage.exclusiveBlocks, 0, 'no block was copied');
    }
  } finally {
    await large.close();
  }
});

test('into a pool of blocks larger than unpack holds (64 MiB), a stream of several windows unpacks byte for byte, its memory bounded by the windows', async () => {
  const huge = await Pool.create(join(dir.path, 'huge'), { dataSizeBytes: 1024 * MiB, blockSizeBytes: 64 * MiB, commitIntervalMs: 0 });
  try {
    // Runs of several windows each (4 MiB), starting and ending inside 64 KiB blocks of the source.
    const source = await pool.createVolume('hb', { sizeBytes: 80 * MiB });
    await source.write(0, contentBytes(10 * MiB + 64 * KiB, 31));
    await source.write(60 * MiB, contentBytes(9 * MiB, 32));
    await source.write(79 * MiB, contentBytes(MiB, 33));
    await pool.snapshot('hb', 'hb.0', { readOnly: true });
    await packVolume({ store, sources: poolSources(pool), volume: 'hb.0', name: 'hb' });
    const wanted = digest(await readVolume(pool, 'hb.0'));
    const baseline = process.memoryUsage().arrayBuffers;
    let peak = 0;
    await unpackVolume({ store, pool: huge, stream: 'hb', volume: 'hb', onProgress: () => (peak = Math.max(peak, process.memoryUsage().arrayBuffers - baseline)) });
    assert.equal(digest(await readVolume(huge, 'hb')), wanted);
    assert.ok(peak > 0 && peak < 48 * MiB, `array buffers rose by ${peak} bytes during the unpack (a held 64 MiB block would be more)`);
  } finally {
    await huge.close();
  }
});
