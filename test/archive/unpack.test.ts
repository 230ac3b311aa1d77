// Unpack's work volume (`NAME.unpacking`) and its neighbours: a volume of that name that an
// unpack into NAME did not make is never removed, a leftover one is, long names get work volumes
// of their own, the mark never reaches the target, and a killed unpack leaves a work volume the
// next one knows and removes.
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
import { MiB, contentBytes, createPool, digest, readVolume, tempDir } from './helpers.ts';

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
  // A leftover of an unpack into a is not touched by an unpack into b.
  await pool.createVolume(workVolumeName(a), { sizeBytes: MiB, labels: { [UNPACK_TARGET_LABEL]: a } });
  await unpackVolume({ store, pool, stream: 's0', volume: b });
  assert.equal(digest(await readVolume(pool, b)), packed);
  assert.ok(names().includes(workVolumeName(a)));
  await unpackVolume({ store, pool, stream: 's0', volume: a });
  assert.ok(!names().includes(workVolumeName(a)));
  assert.equal(digest(await readVolume(pool, a)), packed);
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
