// Pool.replaceVolumeContents: a volume takes another's blocks and size in one change, keeping its
// id, labels and snapshots; the other is gone. What an unpack onto an existing volume ends with.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { Pool } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';
import { BLOCK, copyFiles, filled, memoryPool, readAll, reopen } from './helpers.ts';

const code = (wanted: string) => (error: unknown) => isThinError(error) && error.code === wanted;

test('a volume takes a snapshot of it, changed: the same id, labels and snapshots, the new blocks and size; the old blocks no one else maps are freed', async () => {
  const memory = await memoryPool();
  const { pool } = memory;
  const vol = await pool.createVolume('vol', { sizeBytes: 4 * BLOCK, labels: { role: 'db' } });
  await vol.write(0, filled(4 * BLOCK, 1));
  const before = await pool.snapshot('vol', 'before', { readOnly: true });
  await vol.write(3 * BLOCK, filled(BLOCK, 2)); // a block of vol's own, mapped by nothing else
  const work = await pool.snapshot('vol', 'work');
  await pool.resizeVolume('work', 6 * BLOCK);
  await work.write(BLOCK, filled(BLOCK, 3));
  await work.write(5 * BLOCK, filled(BLOCK, 4));
  await work.discard(3 * BLOCK, BLOCK);
  const expected = await readAll(pool, 'work');
  await pool.flush();
  const used = pool.status().dataBlocksUsed;

  await pool.replaceVolumeContents('vol', 'work');
  assert.deepEqual(pool.list().map((info) => info.name).sort(), ['before', 'vol']);
  assert.equal(pool.volume('vol').id, vol.id);
  assert.equal(pool.volume('vol').sizeBytes, 6 * BLOCK);
  assert.deepEqual(await readAll(pool, 'vol'), expected);
  const info = pool.list().find((entry) => entry.name === 'vol')!;
  assert.deepEqual(info.labels, { role: 'db' });
  const snapshot = pool.list().find((entry) => entry.name === 'before')!;
  assert.equal(snapshot.originId, vol.id, 'the snapshot still names vol as its origin');
  assert.deepEqual(await readAll(pool, 'before'), filled(4 * BLOCK, 1));
  // vol's old block 3 (bytes 2) was mapped by vol alone: freed. The work volume's own blocks stay.
  assert.equal(pool.status().dataBlocksUsed, used - 1);
  assert.throws(() => pool.volume('work'), code('THIN_NOT_FOUND'));

  // Blocks vol now shares with its snapshot are copied before a write: the snapshot keeps its bytes.
  await pool.volume('vol').write(0, filled(100, 9));
  assert.deepEqual(await readAll(pool, 'before'), filled(4 * BLOCK, 1));
  expected.fill(9, 0, 100);
  assert.deepEqual(await readAll(pool, 'vol'), expected);
  await pool.flush();
  assert.ok((await checkPool(copyFiles(memory))).ok);

  const reopened = await reopen(memory);
  assert.equal(reopened.pool.volume('vol').id, vol.id);
  assert.deepEqual(await readAll(reopened.pool, 'vol'), expected);
  assert.deepEqual(await readAll(reopened.pool, 'before'), filled(4 * BLOCK, 1));
  await reopened.pool.close();
  assert.equal(before.id, snapshot.id);
});

test('blocks the source shared with its own snapshot stay shared: a write to the volume that took them copies first', async () => {
  const memory = await memoryPool();
  const { pool } = memory;
  await pool.createVolume('target', { sizeBytes: 2 * BLOCK }); // never snapshotted: its snapshotted time is the oldest
  const source = await pool.createVolume('source', { sizeBytes: 2 * BLOCK });
  await source.write(0, filled(2 * BLOCK, 8));
  await pool.snapshot('source', 'kept', { readOnly: true });
  await pool.replaceVolumeContents('target', 'source');
  await pool.volume('target').write(10, filled(20, 9));
  await pool.volume('target').write(BLOCK, filled(BLOCK, 7));
  assert.deepEqual(await readAll(pool, 'kept'), filled(2 * BLOCK, 8));
  const expected = filled(2 * BLOCK, 8);
  expected.fill(9, 10, 30);
  expected.fill(7, BLOCK);
  assert.deepEqual(await readAll(pool, 'target'), expected);
  await pool.flush();
  assert.ok((await checkPool(copyFiles(memory))).ok);
  await pool.close();
});

test('a crash before the flush after a replace finds both volumes as they were; after it, the replace', async () => {
  const memory = await memoryPool();
  const { pool } = memory;
  const vol = await pool.createVolume('vol', { sizeBytes: 2 * BLOCK });
  await vol.write(0, filled(2 * BLOCK, 5));
  const other = await pool.createVolume('other', { sizeBytes: 2 * BLOCK });
  await other.write(BLOCK, filled(BLOCK, 6));
  await pool.flush();
  await pool.replaceVolumeContents('vol', 'other');
  const crashedBefore = await Pool.openOn(copyFiles(memory));
  assert.deepEqual(crashedBefore.list().map((info) => info.name).sort(), ['other', 'vol']);
  assert.deepEqual(await readAll(crashedBefore, 'vol'), filled(2 * BLOCK, 5));
  await crashedBefore.close();
  await pool.flush();
  const crashedAfter = await Pool.openOn(copyFiles(memory));
  assert.deepEqual(crashedAfter.list().map((info) => info.name), ['vol']);
  assert.equal(crashedAfter.volume('vol').id, vol.id);
  const expected = new Uint8Array(2 * BLOCK);
  expected.fill(6, BLOCK);
  assert.deepEqual(await readAll(crashedAfter, 'vol'), expected);
  await crashedAfter.close();
  assert.ok((await checkPool(copyFiles(memory))).ok);
  await pool.close();
});

test('replacing a volume with itself, a missing one, or a read-only one is refused and changes nothing', async () => {
  const { pool } = await memoryPool();
  await pool.createVolume('vol', { sizeBytes: 2 * BLOCK });
  await pool.volume('vol').write(0, filled(BLOCK, 7));
  await pool.snapshot('vol', 'frozen', { readOnly: true });
  await assert.rejects(pool.replaceVolumeContents('vol', 'vol'), code('THIN_INVALID'));
  await assert.rejects(pool.replaceVolumeContents('vol', 'missing'), code('THIN_NOT_FOUND'));
  await assert.rejects(pool.replaceVolumeContents('frozen', 'vol'), code('THIN_READ_ONLY'));
  assert.deepEqual(pool.list().map((info) => info.name).sort(), ['frozen', 'vol']);
  assert.deepEqual((await readAll(pool, 'vol')).subarray(0, BLOCK), filled(BLOCK, 7));
  await pool.close();
});
