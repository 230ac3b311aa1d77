import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { DATA_HIGH_WATER_MARK_STEP_BLOCKS, INLINE_SYNC_DIRTY_BYTES_MAX } from '../../src/constants.ts';
import type { SyncOptions } from '../../src/io/block-file.ts';
import { CountingBlockFile } from '../../src/io/counting.ts';
import { ForwardingBlockFile } from '../../src/io/forwarding.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { Pool } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';
import { ManualCommitTimer } from './manual-commit-timer.ts';
import { BLOCK, FailingBlockFile, METADATA_BYTES, SparseMemoryBlockFile, filled, memoryPool, readAll, reopen } from './helpers.ts';

const code = (wanted: string) => (error: unknown) => isThinError(error) && error.code === wanted;

test('a partial write to a new block reads as zeros around the data', async () => {
  const { pool } = await memoryPool();
  const volume = await pool.createVolume('v', { sizeBytes: 4 * BLOCK });
  await volume.write(BLOCK + 100, filled(50, 7));
  const bytes = await readAll(pool, 'v');
  assert.equal(bytes.filter((b) => b !== 0).length, 50);
  assert.deepEqual(bytes.subarray(BLOCK + 100, BLOCK + 150), filled(50, 7));
  await pool.close();
});

test('a partial write to a reused block does not expose what the block held before', async () => {
  const { pool } = await memoryPool(4);
  const a = await pool.createVolume('a', { sizeBytes: 4 * BLOCK });
  await a.write(0, filled(4 * BLOCK, 0xee));
  await pool.removeVolume('a');
  await pool.flush();
  const b = await pool.createVolume('b', { sizeBytes: 4 * BLOCK });
  await b.write(10, filled(10, 1));
  const bytes = await readAll(pool, 'b');
  assert.equal(bytes.filter((x) => x !== 0).length, 10);
  await pool.close();
});

test('a write across block boundaries reads back byte for byte', async () => {
  const { pool } = await memoryPool();
  const volume = await pool.createVolume('v', { sizeBytes: 5 * BLOCK + 123 });
  const source = new Uint8Array(3 * BLOCK + 77).map((_, index) => (index * 31) % 251);
  await volume.write(BLOCK - 13, source);
  const back = new Uint8Array(source.length);
  await volume.read(BLOCK - 13, back);
  assert.deepEqual(back, source);
  await pool.close();
});

test('a volume of any byte size accepts I/O up to its last byte and refuses past it', async () => {
  const { pool } = await memoryPool();
  const volume = await pool.createVolume('odd', { sizeBytes: BLOCK + 3 });
  await volume.write(BLOCK, filled(3, 9));
  await assert.rejects(volume.write(BLOCK + 1, filled(3, 9)), code('THIN_OUT_OF_RANGE'));
  await assert.rejects(volume.read(BLOCK + 3, new Uint8Array(1)), code('THIN_OUT_OF_RANGE'));
  const tail = new Uint8Array(3);
  await volume.read(BLOCK, tail);
  assert.deepEqual(tail, filled(3, 9));
  await pool.close();
});

test('extents report mapped and unmapped runs in order', async () => {
  const { pool } = await memoryPool();
  const volume = await pool.createVolume('v', { sizeBytes: 6 * BLOCK });
  await volume.write(BLOCK, filled(2 * BLOCK, 1));
  await volume.write(5 * BLOCK, filled(10, 1));
  assert.deepEqual(volume.extents(0, 6 * BLOCK), [
    { lengthBytes: BLOCK, mapped: false },
    { lengthBytes: 2 * BLOCK, mapped: true },
    { lengthBytes: 2 * BLOCK, mapped: false },
    { lengthBytes: BLOCK, mapped: true },
  ]);
  assert.deepEqual(volume.extents(BLOCK + 5, 10), [{ lengthBytes: 10, mapped: true }]);
  await pool.close();
});

test('a write to the origin after a snapshot leaves the snapshot unchanged', async () => {
  const memory = await memoryPool();
  const { pool } = memory;
  const origin = await pool.createVolume('origin', { sizeBytes: 4 * BLOCK });
  await origin.write(0, filled(4 * BLOCK, 1));
  await pool.snapshot('origin', 'snap');
  await origin.write(BLOCK + 10, filled(20, 2));
  await origin.write(3 * BLOCK, filled(BLOCK, 3));
  const snap = await readAll(pool, 'snap');
  assert.deepEqual(snap, filled(4 * BLOCK, 1));
  const now = await readAll(pool, 'origin');
  assert.deepEqual(now.subarray(BLOCK + 10, BLOCK + 30), filled(20, 2));
  assert.deepEqual(now.subarray(BLOCK, BLOCK + 10), filled(10, 1));
  assert.deepEqual(now.subarray(3 * BLOCK), filled(BLOCK, 3));
  const usage = pool.usage();
  assert.deepEqual(usage.get(origin.id), { mappedBlocks: 4, exclusiveBlocks: 2, sharedBlocks: 2 });
  assert.deepEqual(usage.get(pool.volume('snap').id), { mappedBlocks: 4, exclusiveBlocks: 2, sharedBlocks: 2 });
  assert.equal(pool.status().dataBlocksUsed, 6);
  await pool.flush();
  assert.ok((await checkPool(copyFilesOf(memory.files))).ok);
  await pool.close();
});

test('a write to a snapshot leaves the origin unchanged', async () => {
  const { pool } = await memoryPool();
  const origin = await pool.createVolume('origin', { sizeBytes: 2 * BLOCK });
  await origin.write(0, filled(2 * BLOCK, 1));
  const snap = await pool.snapshot('origin', 'snap');
  await snap.write(5, filled(5, 9));
  assert.deepEqual(await readAll(pool, 'origin'), filled(2 * BLOCK, 1));
  const bytes = await readAll(pool, 'snap');
  assert.deepEqual(bytes.subarray(5, 10), filled(5, 9));
  assert.equal(bytes[4], 1);
  assert.equal(bytes[10], 1);
  await pool.close();
});

test('a second write to a block already copied goes in place', async () => {
  const { pool } = await memoryPool();
  const origin = await pool.createVolume('origin', { sizeBytes: 2 * BLOCK });
  await origin.write(0, filled(2 * BLOCK, 1));
  await pool.snapshot('origin', 'snap');
  await origin.write(0, filled(10, 2));
  const usedAfterCopy = pool.status().dataBlocksUsed;
  await origin.write(20, filled(10, 3));
  assert.equal(pool.status().dataBlocksUsed, usedAfterCopy);
  await pool.close();
});

test('a block whose sharing was broken in the open transaction is still copied, so a crash cannot change the snapshot', async () => {
  const memory = await memoryPool();
  const { pool } = memory;
  const v = await pool.createVolume('v', { sizeBytes: BLOCK });
  await v.write(0, filled(BLOCK, 1));
  const s = await pool.snapshot('v', 's');
  await pool.flush();
  await s.write(0, filled(10, 2)); // s copies the block; only v's leaf holds the old one now
  await v.write(0, filled(BLOCK, 3)); // must not go in place: the committed s still points there
  // The files as a power cut would leave them (everything written so far, nothing committed since).
  const crashed = await Pool.openOn({ metadata: MemoryBlockFile.from(memory.files.metadata.snapshot()), data: MemoryBlockFile.from(memory.files.data.snapshot()) });
  assert.deepEqual(await readAll(crashed, 's'), filled(BLOCK, 1));
  assert.deepEqual(await readAll(crashed, 'v'), filled(BLOCK, 1));
  await crashed.close();
  await pool.close();
});

test('usage counts blocks shared through snapshots as thin_ls does', async () => {
  const { pool } = await memoryPool();
  const v = await pool.createVolume('v', { sizeBytes: 4 * BLOCK });
  await v.write(0, filled(4 * BLOCK, 1));
  const s1 = await pool.snapshot('v', 's1');
  const s2 = await pool.snapshot('s1', 's2');
  let usage = pool.usage();
  for (const volume of [v, s1, s2]) assert.deepEqual(usage.get(volume.id), { mappedBlocks: 4, exclusiveBlocks: 0, sharedBlocks: 4 });
  await s2.write(0, filled(10, 2));
  await s2.discard(BLOCK, BLOCK);
  usage = pool.usage();
  assert.deepEqual(usage.get(s2.id), { mappedBlocks: 3, exclusiveBlocks: 1, sharedBlocks: 2 });
  assert.deepEqual(usage.get(v.id), { mappedBlocks: 4, exclusiveBlocks: 0, sharedBlocks: 4 });
  await pool.removeVolume('v');
  await pool.removeVolume('s1');
  usage = pool.usage();
  assert.deepEqual(usage.get(s2.id), { mappedBlocks: 3, exclusiveBlocks: 3, sharedBlocks: 0 });
  await pool.close();
});

test('snapshots of snapshots keep each generation apart', async () => {
  const { pool } = await memoryPool();
  const v = await pool.createVolume('v', { sizeBytes: 2 * BLOCK });
  await v.write(0, filled(2 * BLOCK, 1));
  const s1 = await pool.snapshot('v', 's1');
  await s1.write(0, filled(100, 2));
  const s2 = await pool.snapshot('s1', 's2');
  await s2.write(50, filled(100, 3));
  await s1.write(BLOCK, filled(10, 4));
  const [bv, b1, b2] = [await readAll(pool, 'v'), await readAll(pool, 's1'), await readAll(pool, 's2')];
  assert.deepEqual(bv, filled(2 * BLOCK, 1));
  assert.deepEqual(b1.subarray(0, 100), filled(100, 2));
  assert.deepEqual(b1.subarray(BLOCK, BLOCK + 10), filled(10, 4));
  assert.deepEqual(b2.subarray(0, 50), filled(50, 2));
  assert.deepEqual(b2.subarray(50, 150), filled(100, 3));
  assert.deepEqual(b2.subarray(BLOCK, BLOCK + 10), filled(10, 1));
  assert.equal(pool.list().find((info) => info.name === 's2')?.origin, 's1');
  await pool.close();
});

test('removing an origin keeps its snapshot intact and frees only the origin’s own blocks', async () => {
  const memory = await memoryPool();
  const { pool } = memory;
  const v = await pool.createVolume('v', { sizeBytes: 4 * BLOCK });
  await v.write(0, filled(4 * BLOCK, 1));
  await pool.snapshot('v', 'snap');
  await v.write(0, filled(BLOCK, 2));
  assert.equal(pool.status().dataBlocksUsed, 5);
  await pool.removeVolume('v');
  assert.equal(pool.status().dataBlocksUsed, 4);
  assert.deepEqual(await readAll(pool, 'snap'), filled(4 * BLOCK, 1));
  assert.throws(() => pool.volume('v'), code('THIN_NOT_FOUND'));
  await assert.rejects(v.write(0, filled(1, 1)), code('THIN_NOT_FOUND'));
  const reopened = await reopen(memory);
  assert.deepEqual(await readAll(reopened.pool, 'snap'), filled(4 * BLOCK, 1));
  assert.ok((await checkPool(reopened.files)).ok);
  await reopened.pool.close();
});

test('discard unmaps whole blocks, zeroes partial ones, and the space is reused after a flush', async () => {
  const { pool } = await memoryPool(4);
  const v = await pool.createVolume('v', { sizeBytes: 4 * BLOCK });
  await v.write(0, filled(4 * BLOCK, 5));
  await v.discard(BLOCK / 2, 2 * BLOCK);
  const bytes = await readAll(pool, 'v');
  assert.deepEqual(bytes.subarray(0, BLOCK / 2), filled(BLOCK / 2, 5));
  assert.deepEqual(bytes.subarray(BLOCK / 2, BLOCK / 2 + 2 * BLOCK), new Uint8Array(2 * BLOCK));
  assert.deepEqual(bytes.subarray(BLOCK / 2 + 2 * BLOCK), filled(BLOCK + BLOCK / 2, 5));
  assert.equal(pool.status().dataBlocksUsed, 3);
  assert.deepEqual(v.extents(0, 4 * BLOCK).map((e) => e.mapped), [true, false, true]);
  await pool.flush();
  const w = await pool.createVolume('w', { sizeBytes: BLOCK });
  await w.write(0, filled(BLOCK, 6));
  assert.equal(pool.status().dataBlocksUsed, 4);
  await pool.close();
});

test('a discard of a shared block leaves the snapshot’s copy alone', async () => {
  const { pool } = await memoryPool();
  const v = await pool.createVolume('v', { sizeBytes: 2 * BLOCK });
  await v.write(0, filled(2 * BLOCK, 5));
  await pool.snapshot('v', 's');
  await v.discard(0, 2 * BLOCK);
  await v.discard(BLOCK + 1, 1);
  assert.deepEqual(await readAll(pool, 'v'), new Uint8Array(2 * BLOCK));
  assert.deepEqual(await readAll(pool, 's'), filled(2 * BLOCK, 5));
  await pool.close();
});

test('write zeroes unmaps whole blocks unless asked to keep them allocated', async () => {
  const { pool } = await memoryPool();
  const v = await pool.createVolume('v', { sizeBytes: 4 * BLOCK });
  await v.write(0, filled(4 * BLOCK, 5));
  await v.writeZeroes(0, 2 * BLOCK);
  await v.writeZeroes(2 * BLOCK, BLOCK + 7, { noHole: true });
  assert.deepEqual((await readAll(pool, 'v')).subarray(0, 3 * BLOCK + 7), new Uint8Array(3 * BLOCK + 7));
  assert.deepEqual(v.extents(0, 4 * BLOCK), [{ lengthBytes: 2 * BLOCK, mapped: false }, { lengthBytes: 2 * BLOCK, mapped: true }]);
  const fresh = await pool.createVolume('fresh', { sizeBytes: 2 * BLOCK });
  await fresh.writeZeroes(0, 2 * BLOCK, { noHole: true });
  assert.deepEqual(fresh.extents(0, 2 * BLOCK), [{ lengthBytes: 2 * BLOCK, mapped: true }]);
  assert.deepEqual(await readAll(pool, 'fresh'), new Uint8Array(2 * BLOCK));
  await pool.close();
});

test('shrinking a volume unmaps past the end and a later grow reads zeros there', async () => {
  const { pool } = await memoryPool();
  const v = await pool.createVolume('v', { sizeBytes: 4 * BLOCK });
  await v.write(0, filled(4 * BLOCK, 5));
  await pool.resizeVolume('v', BLOCK + 100);
  assert.equal(v.sizeBytes, BLOCK + 100);
  assert.equal(pool.usage().get(v.id)?.mappedBlocks, 2);
  await pool.resizeVolume('v', 4 * BLOCK);
  const bytes = await readAll(pool, 'v');
  assert.deepEqual(bytes.subarray(0, BLOCK + 100), filled(BLOCK + 100, 5));
  assert.deepEqual(bytes.subarray(BLOCK + 100), new Uint8Array(3 * BLOCK - 100));
  await pool.close();
});

test('shrinking a snapshotted volume leaves the snapshot’s tail alone', async () => {
  const { pool } = await memoryPool();
  const v = await pool.createVolume('v', { sizeBytes: 2 * BLOCK });
  await v.write(0, filled(2 * BLOCK, 5));
  await pool.snapshot('v', 's');
  await pool.resizeVolume('v', 10);
  await pool.resizeVolume('v', 2 * BLOCK);
  assert.deepEqual((await readAll(pool, 'v')).subarray(10), new Uint8Array(2 * BLOCK - 10));
  assert.deepEqual(await readAll(pool, 's'), filled(2 * BLOCK, 5));
  await pool.close();
});

test('out of data space a write fails with THIN_NO_SPACE and everything else keeps working', async () => {
  const { pool, files } = await memoryPool(4);
  const v = await pool.createVolume('v', { sizeBytes: 8 * BLOCK });
  await v.write(0, filled(4 * BLOCK, 1));
  await pool.flush();
  await assert.rejects(v.write(4 * BLOCK, filled(10, 2)), code('THIN_NO_SPACE'));
  const back = new Uint8Array(4 * BLOCK);
  await v.read(0, back);
  assert.deepEqual(back, filled(4 * BLOCK, 1));
  await pool.flush();
  assert.equal(pool.status().mode, 'read-write');
  assert.ok((await checkPool(copyFilesOf(files))).ok);
  await v.discard(0, BLOCK);
  await pool.flush();
  await v.write(4 * BLOCK, filled(10, 2));
  await pool.close();
});

test('a pool reopened from its files gives the same bytes, volumes and details', async () => {
  const memory = await memoryPool();
  const v = await memory.pool.createVolume('v', { sizeBytes: 3 * BLOCK, labels: { role: 'base' } });
  await v.write(1000, filled(BLOCK, 4));
  await memory.pool.snapshot('v', 's', { readOnly: true });
  const before = memory.pool.list();
  const reopened = await reopen(memory);
  assert.deepEqual(reopened.pool.list(), before);
  const bytes = await readAll(reopened.pool, 'v');
  assert.deepEqual(bytes.subarray(1000, 1000 + BLOCK), filled(BLOCK, 4));
  assert.equal(bytes.filter((x) => x !== 0).length, BLOCK);
  assert.equal(reopened.pool.volume('s').readOnly, true);
  await reopened.pool.close();
});

test("a snapshot copies its source's labels, or takes the labels given in the same change (valid ones only), across a reopen", async () => {
  const memory = await memoryPool();
  await memory.pool.createVolume('v', { sizeBytes: BLOCK, labels: { role: 'base' } });
  await memory.pool.snapshot('v', 'copied');
  await memory.pool.snapshot('v', 'given', { labels: { stage: 'building' } });
  await assert.rejects(memory.pool.snapshot('v', 'bad', { labels: { stage: 1 as unknown as string } }), code('THIN_INVALID'));
  const reopened = await reopen(memory);
  const labels = new Map(reopened.pool.list().map((info) => [info.name, info.labels]));
  assert.deepEqual(labels.get('copied'), { role: 'base' });
  assert.deepEqual(labels.get('given'), { stage: 'building' });
  assert.equal(labels.has('bad'), false);
  await reopened.pool.close();
});

test('a read-only volume and a read-only pool refuse writes', async () => {
  const memory = await memoryPool();
  await memory.pool.createVolume('v', { sizeBytes: BLOCK });
  const s = await memory.pool.snapshot('v', 's', { readOnly: true });
  await assert.rejects(s.write(0, filled(1, 1)), code('THIN_READ_ONLY'));
  await assert.rejects(s.discard(0, BLOCK), code('THIN_READ_ONLY'));
  const reopened = await reopen(memory, { readOnly: true });
  assert.equal(reopened.pool.status().mode, 'read-only');
  await assert.rejects(reopened.pool.volume('v').write(0, filled(1, 1)), code('THIN_READ_ONLY'));
  await assert.rejects(reopened.pool.createVolume('w', { sizeBytes: BLOCK }), code('THIN_READ_ONLY'));
  await reopened.pool.volume('v').read(0, new Uint8Array(10));
  await reopened.pool.close();
});

test('volume names must be valid and unique', async () => {
  const { pool } = await memoryPool();
  await pool.createVolume('a', { sizeBytes: BLOCK });
  await assert.rejects(pool.createVolume('a', { sizeBytes: BLOCK }), code('THIN_EXISTS'));
  await assert.rejects(pool.createVolume('-bad', { sizeBytes: BLOCK }), code('THIN_INVALID'));
  await assert.rejects(pool.createVolume('x'.repeat(129), { sizeBytes: BLOCK }), code('THIN_INVALID'));
  await assert.rejects(pool.createVolume('b', { sizeBytes: 0 }), code('THIN_INVALID'));
  await assert.rejects(pool.snapshot('a', 'a'), code('THIN_EXISTS'));
  await assert.rejects(pool.snapshot('missing', 'c'), code('THIN_NOT_FOUND'));
  await pool.close();
});

test('a sequentially written volume is a handful of mapping entries', async () => {
  const { pool, files } = await memoryPool(256);
  const v = await pool.createVolume('v', { sizeBytes: 200 * BLOCK });
  for (let offset = 0; offset < 200 * BLOCK; offset += 3 * BLOCK + 5) {
    await v.write(offset, filled(Math.min(3 * BLOCK + 5, 200 * BLOCK - offset), 1));
  }
  // check reads the committed trees: a rollup folds the delta log into them (a flush only logs).
  await pool.rollup();
  const report = await checkPool(copyFilesOf(files));
  assert.ok(report.ok, JSON.stringify(report.problems));
  assert.ok(report.stats.mappingEntries <= 2, `${report.stats.mappingEntries} entries`);
  assert.equal(report.stats.mappedBlocks, 200);
  await pool.close();
});

test('overlapping concurrent writes to one block are serialized', async () => {
  const { pool } = await memoryPool();
  const v = await pool.createVolume('v', { sizeBytes: BLOCK });
  await v.write(0, filled(BLOCK, 1));
  await pool.snapshot('v', 's');
  await Promise.all([1, 2, 3, 4, 5, 6].map((value) => v.write(value * 100, filled(100, value + 1))));
  const bytes = await readAll(pool, 'v');
  for (const value of [1, 2, 3, 4, 5, 6]) assert.deepEqual(bytes.subarray(value * 100, value * 100 + 100), filled(100, value + 1));
  assert.equal(pool.usage().get(v.id)?.exclusiveBlocks, 1);
  assert.deepEqual(await readAll(pool, 's'), filled(BLOCK, 1));
  await pool.close();
});

test('a snapshot of a volume with 100k mappings writes as few metadata blocks as one of a small volume', async () => {
  const mappings = 100_000;
  const files = { metadata: new MemoryBlockFile(0, 'metadata'), data: new SparseMemoryBlockFile(0, 'data') };
  const pool = await Pool.createOn(files, { dataSizeBytes: 2 * mappings * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const big = await pool.createVolume('big', { sizeBytes: 2 * mappings * BLOCK });
  const small = await pool.createVolume('small', { sizeBytes: 16 * BLOCK });
  await small.write(0, filled(10, 1));
  const byte = filled(1, 1);
  // Every other block: 100k mappings that cannot merge.
  for (let begin = 0; begin < mappings; begin += 256) {
    const writes: Promise<void>[] = [];
    for (let index = begin; index < Math.min(begin + 256, mappings); index += 1) writes.push(big.write(2 * index * BLOCK, byte));
    await Promise.all(writes);
  }
  await pool.flush();
  assert.equal(pool.usage().get(big.id)?.mappedBlocks, mappings);
  const written = (): number => pool.status().counters.metadataBlocksWritten;
  let before = written();
  await pool.snapshot('small', 'small-snap');
  await pool.flush();
  const smallCost = written() - before;
  before = written();
  await pool.snapshot('big', 'big-snap');
  await pool.flush();
  const bigCost = written() - before;
  assert.ok(bigCost <= smallCost + 2, `snapshot of 100k mappings wrote ${bigCost} blocks, of 1 mapping ${smallCost}`);
  assert.ok(bigCost <= 16, `snapshot wrote ${bigCost} metadata blocks`);
  await pool.close();
});

test('a failed commit leaves the pool needing a check: writes refused, reads served', async () => {
  const data = new FailingBlockFile(new MemoryBlockFile(0, 'data'));
  const pool = await Pool.createOn({ metadata: new MemoryBlockFile(0, 'metadata'), data }, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const v = await pool.createVolume('v', { sizeBytes: 2 * BLOCK });
  await v.write(0, filled(100, 3));
  data.failSyncs = true;
  await assert.rejects(pool.flush());
  assert.equal(pool.status().mode, 'needs-check');
  await assert.rejects(v.write(0, filled(1, 1)), code('THIN_READ_ONLY'));
  await assert.rejects(pool.flush(), code('THIN_IO'));
  const back = new Uint8Array(100);
  await v.read(0, back);
  assert.deepEqual(back, filled(100, 3));
  await pool.close().catch(() => undefined);
});

test('a fua write is committed before it is acknowledged', async () => {
  const memory = await memoryPool();
  const v = await memory.pool.createVolume('v', { sizeBytes: BLOCK });
  await memory.pool.flush();
  const commits = memory.pool.status().counters.commits;
  await v.write(0, filled(10, 1), { fua: true });
  assert.ok(memory.pool.status().counters.commits > commits);
  // Opening a copy of the files as they are now (no close) shows the write.
  const copy = await Pool.openOn({ metadata: MemoryBlockFile.from(memory.files.metadata.snapshot()), data: MemoryBlockFile.from(memory.files.data.snapshot()) });
  const back = new Uint8Array(10);
  await copy.volume('v').read(0, back);
  assert.deepEqual(back, filled(10, 1));
  await copy.close();
  await memory.pool.close();
});

function copyFilesOf(files: { metadata: MemoryBlockFile; data: MemoryBlockFile }): { metadata: MemoryBlockFile; data: MemoryBlockFile } {
  return { metadata: MemoryBlockFile.from(files.metadata.snapshot()), data: MemoryBlockFile.from(files.data.snapshot()) };
}

test('a pool directory is created once, locked while open, and reopened with the same contents', async () => {
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const path = await import('node:path');
  const dir = path.join(mkdtempSync(path.join(tmpdir(), 'thinbd-pool-')), 'pool');
  try {
    const pool = await Pool.create(dir, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
    await assert.rejects(Pool.open(dir), code('THIN_BUSY'));
    const v = await pool.createVolume('v', { sizeBytes: 2 * BLOCK, labels: { team: 'ci' } });
    await v.write(BLOCK - 5, filled(10, 8));
    await pool.close();
    await assert.rejects(Pool.create(dir, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK }), code('THIN_EXISTS'));
    const reopened = await Pool.open(dir, { readOnly: true });
    const back = new Uint8Array(10);
    await reopened.volume('v').read(BLOCK - 5, back);
    assert.deepEqual(back, filled(10, 8));
    assert.deepEqual(reopened.list()[0]?.labels, { team: 'ci' });
    assert.equal(reopened.status().metadataPath, path.join(dir, 'metadata'));
    await reopened.close();
    await assert.rejects(Pool.open(path.join(dir, 'missing')), code('THIN_NOT_FOUND'));
  } finally {
    rmSync(path.dirname(dir), { recursive: true, force: true });
  }
});

test('bad pool options are refused before anything is created', async () => {
  const files = { metadata: new MemoryBlockFile(0), data: new MemoryBlockFile(0) };
  await assert.rejects(Pool.createOn(files, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: 3 * BLOCK }), code('THIN_INVALID'));
  await assert.rejects(Pool.createOn(files, { dataSizeBytes: BLOCK - 1, blockSizeBytes: BLOCK }), code('THIN_INVALID'));
  await assert.rejects(Pool.createOn(files, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: 4096 }), code('THIN_INVALID'));
  assert.equal(files.metadata.sizeBytes(), 0);
});

test('close waits for requests in flight and refuses new ones', async () => {
  const { pool } = await memoryPool();
  const v = await pool.createVolume('v', { sizeBytes: 8 * BLOCK });
  const writes = [0, 1, 2, 3].map((block) => v.write(block * BLOCK, filled(BLOCK, block + 1)));
  const closing = pool.close();
  await Promise.all(writes);
  await closing;
  await assert.rejects(v.write(0, filled(1, 1)), code('THIN_CLOSED'));
});

test('on a data file with old contents, a partial write to a new block still reads zeros around it', async () => {
  const data = MemoryBlockFile.from(new Uint8Array(16 * BLOCK).fill(0xff), 'old device');
  const pool = await Pool.createOn({ metadata: new MemoryBlockFile(0), data }, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES, dataReadsZeros: false });
  const v = await pool.createVolume('v', { sizeBytes: 2 * BLOCK });
  await v.write(100, filled(10, 1));
  await v.writeZeroes(BLOCK, BLOCK, { noHole: true });
  const bytes = await readAll(pool, 'v');
  assert.equal(bytes.filter((x) => x !== 0).length, 10);
  await pool.close();
});

test('a first write that starts a never-written block writes it whole; one inside it writes only its bytes', async () => {
  const data = new CountingBlockFile(new MemoryBlockFile(0, 'data'));
  const pool = await Pool.createOn({ metadata: new MemoryBlockFile(0), data }, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const v = await pool.createVolume('v', { sizeBytes: 3 * BLOCK });
  const bytesWritten = async (offsetBytes: number, length: number, value: number): Promise<number> => {
    const before = data.counters.writeBytes;
    await v.write(offsetBytes, filled(length, value));
    return data.counters.writeBytes - before;
  };
  assert.equal(await bytesWritten(100, 10, 1), 10, 'inside a new block: only the bytes asked');
  assert.equal(await bytesWritten(BLOCK, 10, 2), BLOCK, 'at the start of a new block: the whole block');
  assert.equal(await bytesWritten(BLOCK + 10, 10, 3), 10, 'the stream goes on in place');
  assert.equal(await bytesWritten(0, 10, 4), 10, 'the start of a mapped block: in place');
  const expected = new Uint8Array(3 * BLOCK);
  expected.set(filled(10, 4), 0);
  expected.set(filled(10, 1), 100);
  expected.set(filled(10, 2), BLOCK);
  expected.set(filled(10, 3), BLOCK + 10);
  assert.deepEqual(await readAll(pool, 'v'), expected);
  await pool.close();
});

test('a flush syncs on the calling thread only with no request in flight and little data written', async () => {
  class SyncRecorder extends ForwardingBlockFile {
    readonly inline: boolean[] = [];
    gate: Promise<void> | undefined;
    override async write(source: Uint8Array, offsetBytes: number): Promise<void> {
      await this.gate;
      await super.write(source, offsetBytes);
    }
    override sync(options?: SyncOptions): Promise<void> {
      this.inline.push(options?.inline === true);
      return super.sync(options);
    }
  }
  const data = new SyncRecorder(new MemoryBlockFile(0, 'data'));
  const pool = await Pool.createOn({ metadata: new MemoryBlockFile(0), data }, { dataSizeBytes: 32 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const blocks = Math.ceil(INLINE_SYNC_DIRTY_BYTES_MAX / BLOCK) + 1;
  const v = await pool.createVolume('v', { sizeBytes: blocks * BLOCK });
  await v.write(0, filled(blocks * BLOCK, 1));
  await pool.flush();
  const flushAfter = async (write: () => Promise<void>): Promise<boolean[]> => {
    await write();
    data.inline.length = 0;
    await pool.flush();
    return [...data.inline];
  };
  assert.deepEqual(await flushAfter(() => v.write(10, filled(10, 2))), [true], 'a small write, nothing in flight');
  assert.deepEqual(await flushAfter(() => v.write(0, filled(blocks * BLOCK, 3))), [false], `over ${INLINE_SYNC_DIRTY_BYTES_MAX} bytes written`);
  let open!: () => void;
  let pending: Promise<void> | undefined;
  assert.deepEqual(await flushAfter(async () => {
    await v.write(10, filled(10, 4));
    data.gate = new Promise((resolve) => (open = resolve));
    pending = v.write(BLOCK, filled(10, 5));
  }), [false], 'a write in flight');
  open();
  await pending;
  await pool.close();
});

test('with a commit timer, writes nobody flushes become durable by themselves', async () => {
  // The timer is ticked by the test (ManualCommitTimer): each tick is the interval's end, and the
  // test waits for the commit it started, not for the wall clock.
  const timer = new ManualCommitTimer();
  const files = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const pool = await Pool.createOn(files, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES, commitTimer: timer.timer });
  assert.equal(timer.running, 1, 'the pool started its timer');
  const v = await pool.createVolume('v', { sizeBytes: BLOCK });
  await v.write(0, filled(10, 6));
  const { commits, logRecordsWritten } = pool.status().counters;
  await timer.tick();
  const ticked = pool.status().counters;
  assert.ok(ticked.commits + ticked.logRecordsWritten > commits + logRecordsWritten, 'the tick committed or logged the new mapping');
  const copy = await Pool.openOn({ metadata: MemoryBlockFile.from(files.metadata.snapshot()), data: MemoryBlockFile.from(files.data.snapshot()) });
  const back = new Uint8Array(10);
  await copy.volume('v').read(0, back);
  assert.deepEqual(back, filled(10, 6));
  await copy.close();
  // Quiet ticks roll the log up; once nothing is left, ticks commit nothing.
  for (let tick = 0; tick < 3; tick++) await timer.tick();
  const idle = pool.status().counters;
  assert.equal(idle.logBlocksUsed, 0, 'quiet ticks rolled the log up');
  for (let tick = 0; tick < 3; tick++) await timer.tick();
  assert.equal(pool.status().counters.commits, idle.commits, 'nothing changed, nothing committed');
  assert.equal(pool.status().counters.syncs, idle.syncs, 'nothing changed, nothing synced');
  await pool.close();
  assert.equal(timer.running, 0, 'close stopped the timer');
});

test('the data file is allocated a high-water-mark step ahead of the blocks written', async () => {
  class AllocationRecorder extends SparseMemoryBlockFile {
    readonly ranges: Array<[number, number]> = [];
    allocate(offsetBytes: number, lengthBytes: number): Promise<void> {
      this.ranges.push([offsetBytes, lengthBytes]);
      return Promise.resolve();
    }
  }
  const data = new AllocationRecorder(0, 'data');
  const dataBlocks = 3 * DATA_HIGH_WATER_MARK_STEP_BLOCKS;
  const pool = await Pool.createOn({ metadata: new MemoryBlockFile(0, 'metadata'), data }, { dataSizeBytes: dataBlocks * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const v = await pool.createVolume('v', { sizeBytes: 7 * dataBlocks * BLOCK });
  for (let written = 1; written <= dataBlocks - 64; written++) {
    // Scattered virtual blocks; the pool hands out data blocks in order.
    await v.write(7 * (written - 1) * BLOCK + 100, filled(512, 1));
    const allocatedEnd = Math.max(0, ...data.ranges.map(([offset, length]) => offset + length));
    assert.ok(allocatedEnd >= written * BLOCK, `${written} blocks written, ${allocatedEnd} bytes allocated`);
  }
  const ends = data.ranges.map(([offset, length]) => offset + length);
  assert.deepEqual(ends, [...ends].sort((a, b) => a - b), 'each allocation follows the last');
  assert.ok(data.ranges.every(([offset], index) => index === 0 || offset === ends[index - 1]), 'no range allocated twice');
  await pool.close();
});

test('the commit timer leaves data written in place to the kernel until a client flushes', async () => {
  const timer = new ManualCommitTimer();
  const files = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const pool = await Pool.createOn(files, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES, commitTimer: timer.timer });
  const v = await pool.createVolume('v', { sizeBytes: BLOCK });
  await v.write(0, filled(10, 6));
  await pool.flush();
  // Quiet ticks fold the log, so nothing but in-place data is left to do.
  for (let tick = 0; tick < 3 && pool.status().counters.logBlocksUsed > 0; tick++) await timer.tick();
  assert.equal(pool.status().counters.logBlocksUsed, 0, 'quiet ticks rolled the log up');
  const before = pool.status().counters;
  await v.write(100, filled(10, 7));
  for (let tick = 0; tick < 3; tick++) await timer.tick();
  const after = pool.status().counters;
  assert.equal(after.syncs, before.syncs, 'no sync nobody asked for');
  assert.equal(after.commits, before.commits);
  await pool.flush();
  assert.equal(pool.status().counters.syncs, before.syncs + 1, 'the flush syncs the data file once');
  await pool.close();
});

test('out of metadata space a change is refused whole, the pool stays read-write so space can be freed (F-POOL-47), and what was done can still be flushed', async () => {
  const memory = await memoryPool(64);
  const { pool } = memory;
  const v = await pool.createVolume('v', { sizeBytes: 8 * BLOCK });
  await v.write(0, filled(100, 1));
  let created = 0;
  let refusal: unknown;
  for (;;) {
    try {
      await pool.createVolume(`n${created}`, { sizeBytes: BLOCK });
      created += 1;
      if (created % 100 === 0) await pool.flush();
    } catch (error) {
      refusal = error;
      break;
    }
  }
  assert.ok(isThinError(refusal, 'THIN_NO_METADATA_SPACE'), String(refusal));
  const status = pool.status();
  assert.equal(status.mode, 'read-write');
  assert.equal(status.space.metadata.state, 'low');
  // Below the metadata low-water mark new volumes are refused, writes go on.
  await v.write(BLOCK, filled(1, 1));
  const back = new Uint8Array(100);
  await v.read(0, back);
  assert.deepEqual(back, filled(100, 1));
  await pool.flush();
  const reopened = await reopen(memory);
  assert.equal(reopened.pool.list().length, created + 1);
  assert.equal(reopened.pool.status().mode, 'read-write');
  assert.equal((await readAll(reopened.pool, 'v'))[BLOCK], 1);
  // Removing volumes frees metadata: new volumes are accepted again.
  for (let index = 0; index < 1000; index += 1) await reopened.pool.removeVolume(`n${index}`);
  await reopened.pool.flush();
  await reopened.pool.createVolume('again', { sizeBytes: BLOCK });
  await reopened.pool.close();
  assert.ok((await checkPool({ metadata: MemoryBlockFile.from(reopened.files.metadata.snapshot()), data: MemoryBlockFile.from(reopened.files.data.snapshot()) })).ok);
});

test('a data write that fails fails its request, maps nothing, and fails every later flush until the pool is reopened', async () => {
  const data = new FailingBlockFile(new MemoryBlockFile(0, 'data'));
  const metadata = new MemoryBlockFile(0, 'metadata');
  const pool = await Pool.createOn({ metadata, data }, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const v = await pool.createVolume('v', { sizeBytes: 4 * BLOCK });
  await v.write(0, filled(BLOCK, 1));
  await pool.snapshot('v', 's');
  await pool.flush();
  data.failWrites = true;
  await assert.rejects(v.write(2 * BLOCK + 5, filled(10, 2)), code('THIN_IO'));
  // This file forgets the failure and would sync again; the kernel may likewise have dropped the
  // dirty pages and report the next fsync a success (docs/fault-model.md section 3). The pool remembers.
  data.failWrites = false;
  const status = pool.status();
  assert.equal(status.mode, 'needs-check');
  assert.match(status.modeReason ?? '', /a data write of 10 bytes at byte \d+ failed/);
  await assert.rejects(v.write(5, filled(10, 3)), code('THIN_READ_ONLY'));
  // Nothing is left to commit, yet no flush is acknowledged: pool, volume or FUA.
  await assert.rejects(pool.flush(), code('THIN_IO'));
  await assert.rejects(v.flush(), code('THIN_IO'));
  await assert.rejects(v.write(5, filled(10, 3), { fua: true }), code('THIN_READ_ONLY'));
  await assert.rejects(pool.flush(), code('THIN_IO'));
  // Reads go on, and the failed write mapped nothing.
  assert.deepEqual(v.extents(0, 4 * BLOCK), [{ lengthBytes: BLOCK, mapped: true }, { lengthBytes: 3 * BLOCK, mapped: false }]);
  assert.deepEqual(await readAll(pool, 'v'), (await readAll(pool, 's')));
  assert.equal(pool.status().dataBlocksUsed, pool.referencedDataBlocks());
  await pool.close().catch(() => undefined);
  // Reopened, the pool rereads what is on disk and is writable again.
  const files = { metadata: MemoryBlockFile.from(metadata.snapshot()), data: MemoryBlockFile.from((data.inner as MemoryBlockFile).snapshot()) };
  const reopened = await Pool.openOn(files);
  assert.equal(reopened.status().mode, 'read-write');
  await reopened.volume('v').write(2 * BLOCK, filled(10, 2));
  await reopened.close();
  assert.ok((await checkPool({ metadata: MemoryBlockFile.from(files.metadata.snapshot()), data: MemoryBlockFile.from(files.data.snapshot()) })).ok);
});

test('a renamed volume keeps its id, blocks and labels under the new name, after a reopen too', async () => {
  const memory = await memoryPool();
  const { pool } = memory;
  const volume = await pool.createVolume('old', { sizeBytes: 3 * BLOCK, labels: { role: 'db' } });
  await volume.write(BLOCK, filled(BLOCK, 5));
  await pool.snapshot('old', 'snap', { readOnly: true });
  await pool.renameVolume('old', 'new');
  assert.equal(volume.name, 'new');
  assert.throws(() => pool.volume('old'), code('THIN_NOT_FOUND'));
  await assert.rejects(pool.renameVolume('new', 'snap'), code('THIN_EXISTS'));
  await assert.rejects(pool.renameVolume('new', 'bad name'), code('THIN_INVALID'));
  await assert.rejects(pool.renameVolume('missing', 'other'), code('THIN_NOT_FOUND'));
  assert.deepEqual(pool.list().map((entry) => entry.name), ['new', 'snap']);
  assert.equal(pool.list().find((entry) => entry.name === 'snap')?.origin, 'new');
  const reopened = await reopen(memory);
  const info = reopened.pool.list().find((entry) => entry.name === 'new');
  assert.equal(info?.id, volume.id);
  assert.deepEqual(info?.labels, { role: 'db' });
  assert.deepEqual((await readAll(reopened.pool, 'new')).subarray(BLOCK, 2 * BLOCK), filled(BLOCK, 5));
  assert.deepEqual((await checkPool(reopened.files)).problems, []);
  await reopened.pool.close();
});

test('a write of whole unmapped blocks goes into runs of new data blocks with one data write each, and a flushed run replays from the log', async () => {
  const data = new CountingBlockFile(new MemoryBlockFile(0, 'data'));
  const metadata = new MemoryBlockFile(0, 'metadata');
  const pool = await Pool.createOn({ metadata, data }, { dataSizeBytes: 64 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const v = await pool.createVolume('v', { sizeBytes: 16 * BLOCK });
  const other = await pool.createVolume('other', { sizeBytes: 4 * BLOCK });
  const payload = new Uint8Array(4 * BLOCK).map((_, index) => (index * 7) % 251);
  const writesBefore = data.counters.writes;
  await v.write(2 * BLOCK, payload);
  assert.equal(data.counters.writes - writesBefore, 1, 'four new blocks in one data write');
  assert.deepEqual(v.mappedRuns().map((run) => [run.virtualBlock, run.lengthBlocks]), [[2, 4]]);
  // A run next to it continues the extent; one overlapping a mapped block goes block by block.
  await v.write(6 * BLOCK, payload.subarray(0, 2 * BLOCK));
  assert.deepEqual(v.mappedRuns().map((run) => [run.virtualBlock, run.lengthBlocks]), [[2, 6]]);
  await other.write(0, filled(BLOCK, 5));
  await v.write(7 * BLOCK, filled(3 * BLOCK, 9));
  await pool.flush();
  const expected = new Uint8Array(16 * BLOCK);
  expected.set(payload, 2 * BLOCK);
  expected.set(payload.subarray(0, BLOCK), 6 * BLOCK);
  expected.set(filled(3 * BLOCK, 9), 7 * BLOCK);
  assert.deepEqual(await readAll(pool, 'v'), expected);
  // Opened from the files as the flush left them: the delta log's run entries replay.
  const flushed = { metadata: metadata.snapshot(), data: (data.inner as MemoryBlockFile).snapshot() };
  const replayed = await Pool.openOn({ metadata: MemoryBlockFile.from(flushed.metadata), data: MemoryBlockFile.from(flushed.data) });
  assert.deepEqual(await readAll(replayed, 'v'), expected);
  assert.deepEqual(await readAll(replayed, 'other'), new Uint8Array(4 * BLOCK).fill(5, 0, BLOCK));
  assert.deepEqual(replayed.volume('v').mappedRuns(), v.mappedRuns());
  await replayed.close();
  assert.deepEqual((await checkPool({ metadata: MemoryBlockFile.from(flushed.metadata), data: MemoryBlockFile.from(flushed.data) })).problems, []);
  await pool.close();
});

test('a run of whole blocks larger than the free space writes what fits and fails with THIN_NO_SPACE, leaking nothing', async () => {
  const memory = await memoryPool(16);
  const v = await memory.pool.createVolume('v', { sizeBytes: 32 * BLOCK });
  await assert.rejects(v.write(0, filled(32 * BLOCK, 3)), code('THIN_NO_SPACE'));
  await memory.pool.flush();
  const reopened = await reopen(memory);
  assert.deepEqual((await checkPool(reopened.files)).problems, []);
  await reopened.pool.close();
});

test('mappedRuns lists virtual-to-data runs in order; a snapshot maps the same data blocks until written', async () => {
  const { pool } = await memoryPool();
  const volume = await pool.createVolume('v', { sizeBytes: 8 * BLOCK + 10 });
  assert.deepEqual(volume.mappedRuns(), []);
  await volume.write(BLOCK, filled(2 * BLOCK, 1));
  await volume.write(8 * BLOCK, filled(10, 2));
  const runs = volume.mappedRuns();
  assert.deepEqual(runs.map((run) => [run.virtualBlock, run.lengthBlocks]), [[1, 2], [8, 1]]);
  const snapshot = await pool.snapshot('v', 's', { readOnly: true });
  assert.deepEqual(snapshot.mappedRuns(), runs);
  await volume.write(2 * BLOCK, filled(5, 3));
  const after = volume.mappedRuns();
  assert.equal(after.find((run) => run.virtualBlock <= 2 && run.virtualBlock + run.lengthBlocks > 2 && run.dataBlock + (2 - run.virtualBlock) === runs[0]!.dataBlock + 1), undefined, 'the written block moved');
  await pool.close();
});

test('updateVolume renames, relabels and sets read-only in one change; snapshots name the origin by its new name, across a reopen', async () => {
  const memory = await memoryPool();
  const v = await memory.pool.createVolume('building', { sizeBytes: 3 * BLOCK, labels: { stage: 'tmp' } });
  await v.write(100, filled(BLOCK, 9));
  await memory.pool.snapshot('building', 'child');
  await memory.pool.updateVolume('building', { name: 'final', labels: { stage: 'done' }, readOnly: true });
  assert.throws(() => memory.pool.volume('building'), code('THIN_NOT_FOUND'));
  assert.equal(memory.pool.volume('final').id, v.id);
  assert.equal(memory.pool.volume('final').readOnly, true);
  await assert.rejects(memory.pool.volume('final').write(0, filled(1, 1)), code('THIN_READ_ONLY'));
  const reopened = await reopen(memory);
  const listed = new Map(reopened.pool.list().map((info) => [info.name, info]));
  assert.deepEqual([...listed.keys()].sort(), ['child', 'final']);
  assert.deepEqual(listed.get('final')!.labels, { stage: 'done' });
  assert.equal(listed.get('final')!.readOnly, true);
  assert.equal(listed.get('child')!.origin, 'final');
  assert.deepEqual((await readAll(reopened.pool, 'final')).subarray(100, 100 + BLOCK), filled(BLOCK, 9));
  await reopened.pool.updateVolume('final', { readOnly: false });
  await reopened.pool.volume('final').write(0, filled(1, 1));
  await reopened.pool.flush();
  assert.ok((await checkPool(reopened.files)).ok);
  await reopened.pool.close();
});
