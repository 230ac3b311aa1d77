// Pool.shareBlocks: one volume maps another's data blocks (a reflink between volumes, what an image
// import uses to store a file's blocks once). The bytes are shared by reference, both sides copy
// on their next write, the sharing survives a reopen and a crash, and check agrees with the counts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { Pool } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';
import { BLOCK, copyFiles, filled, memoryPool, readAll, reopen } from './helpers.ts';

const code = (wanted: string) => (error: unknown) => isThinError(error) && error.code === wanted;

function pattern(lengthBytes: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes);
  for (let index = 0; index < lengthBytes; index++) bytes[index] = (index * 31 + seed * 7 + (index >> 9)) & 0xff;
  return bytes;
}

test('shared blocks read as the source and take no new data blocks', async () => {
  const { pool } = await memoryPool();
  const a = await pool.createVolume('a', { sizeBytes: 4 * BLOCK });
  const bytes = pattern(3 * BLOCK, 1);
  await a.write(0, bytes);
  await pool.createVolume('b', { sizeBytes: 8 * BLOCK });
  const used = pool.status().dataBlocksUsed;
  // Three mapped blocks and one unmapped: three shared, the fourth stays unmapped.
  assert.equal(await pool.shareBlocks('a', 0, 'b', 4 * BLOCK, 4 * BLOCK), 3 * BLOCK);
  assert.equal(pool.status().dataBlocksUsed, used);
  const b = await readAll(pool, 'b');
  assert.deepEqual(b.subarray(4 * BLOCK, 7 * BLOCK), bytes);
  assert.equal(b.subarray(0, 4 * BLOCK).some((x) => x !== 0) || b.subarray(7 * BLOCK).some((x) => x !== 0), false);
  const usage = pool.usage();
  assert.deepEqual(usage.get(pool.volume('b').id), { mappedBlocks: 3, exclusiveBlocks: 0, sharedBlocks: 3 });
  assert.deepEqual(usage.get(a.id), { mappedBlocks: 3, exclusiveBlocks: 0, sharedBlocks: 3 });
  await pool.close();
});

test('a write to either side copies the block: the other keeps its bytes', async () => {
  const { pool } = await memoryPool();
  const a = await pool.createVolume('a', { sizeBytes: 2 * BLOCK });
  const b = await pool.createVolume('b', { sizeBytes: 2 * BLOCK });
  const bytes = pattern(2 * BLOCK, 2);
  await a.write(0, bytes);
  await pool.shareBlocks('a', 0, 'b', 0, 2 * BLOCK);
  // The source was written after its last snapshot (never snapshotted): sharing must still make its writes copy.
  await a.write(100, filled(10, 0xaa));
  assert.deepEqual(await readAll(pool, 'b'), bytes);
  await b.write(BLOCK + 5, filled(7, 0xbb));
  const expectedA = Uint8Array.from(bytes);
  expectedA.fill(0xaa, 100, 110);
  assert.deepEqual(await readAll(pool, 'a'), expectedA);
  const expectedB = Uint8Array.from(bytes);
  expectedB.fill(0xbb, BLOCK + 5, BLOCK + 12);
  assert.deepEqual(await readAll(pool, 'b'), expectedB);
  // A whole-block write to a shared block copies too, and the second write to a copied block goes in place.
  const used = pool.status().dataBlocksUsed;
  await b.write(BLOCK + 20, filled(3, 0xcc));
  assert.equal(pool.status().dataBlocksUsed, used);
  await pool.close();
});

test('sharing from many sources starts a new pool time once per source, not per call', async () => {
  const { pool } = await memoryPool(128);
  const sources = ['s1', 's2'];
  for (const [index, name] of sources.entries()) {
    const volume = await pool.createVolume(name, { sizeBytes: 8 * BLOCK });
    await volume.write(0, pattern(8 * BLOCK, 10 + index));
  }
  const t = await pool.createVolume('t', { sizeBytes: 16 * BLOCK });
  await pool.shareBlocks('s1', 0, 't', 0, BLOCK);
  await pool.shareBlocks('s2', BLOCK, 't', BLOCK, BLOCK);
  // The target's own block, written after both sources began sharing: a new pool time would make
  // its next write a copy.
  await t.write(15 * BLOCK, filled(BLOCK, 5));
  for (let block = 2; block < 8; block++) await pool.shareBlocks(sources[block % 2]!, block * BLOCK, 't', block * BLOCK, BLOCK);
  const copies = pool.status().counters.copyOnWrites;
  await t.write(15 * BLOCK, filled(100, 6));
  assert.equal(pool.status().counters.copyOnWrites, copies, 'the target\'s own block was copied: sharing started a new pool time');
  const bytes = await readAll(pool, 't');
  for (let block = 0; block < 8; block++) {
    assert.deepEqual(bytes.subarray(block * BLOCK, (block + 1) * BLOCK), pattern(8 * BLOCK, 10 + (block % 2)).subarray(block * BLOCK, (block + 1) * BLOCK));
  }
  await pool.close();
});

test('a volume shares blocks with another range of itself: both ranges keep their bytes through writes', async () => {
  const { pool } = await memoryPool();
  const a = await pool.createVolume('a', { sizeBytes: 4 * BLOCK });
  const bytes = pattern(BLOCK, 5);
  await a.write(0, bytes);
  const used = pool.status().dataBlocksUsed;
  assert.equal(await pool.shareBlocks('a', 0, 'a', 3 * BLOCK, BLOCK), BLOCK);
  assert.equal(pool.status().dataBlocksUsed, used);
  await a.write(3 * BLOCK, filled(10, 1));
  const all = await readAll(pool, 'a');
  assert.deepEqual(all.subarray(0, BLOCK), bytes);
  assert.deepEqual(all.subarray(3 * BLOCK + 10, 4 * BLOCK), bytes.subarray(10));
  await pool.close();
});

test('sharing into mapped blocks, onto the same range, or in part-blocks is refused and changes nothing', async () => {
  const { pool } = await memoryPool();
  const a = await pool.createVolume('a', { sizeBytes: 2 * BLOCK });
  const b = await pool.createVolume('b', { sizeBytes: 2 * BLOCK });
  await a.write(0, pattern(2 * BLOCK, 3));
  await b.write(BLOCK, filled(BLOCK, 9));
  const used = pool.status().dataBlocksUsed;
  await assert.rejects(pool.shareBlocks('a', 0, 'b', 0, 2 * BLOCK), code('THIN_INVALID'));
  await assert.rejects(pool.shareBlocks('a', 0, 'a', BLOCK, 2 * BLOCK), code('THIN_OUT_OF_RANGE'));
  await assert.rejects(pool.shareBlocks('b', 0, 'b', 0, BLOCK), code('THIN_INVALID'));
  await assert.rejects(pool.shareBlocks('a', 100, 'b', 0, BLOCK), code('THIN_INVALID'));
  await assert.rejects(pool.shareBlocks('a', 0, 'b', 0, 3 * BLOCK), code('THIN_OUT_OF_RANGE'));
  await pool.updateVolume('b', { readOnly: true });
  await assert.rejects(pool.shareBlocks('a', 0, 'b', 0, BLOCK), code('THIN_READ_ONLY'));
  assert.equal(pool.status().dataBlocksUsed, used);
  assert.equal(pool.status().mode, 'read-write');
  assert.equal((await readAll(pool, 'b')).subarray(0, BLOCK).some((x) => x !== 0), false);
  await pool.close();
});

test('sharing survives a reopen, a crash after a flush, and the removal of the source; check agrees', async () => {
  const memory = await memoryPool();
  const a = await memory.pool.createVolume('a', { sizeBytes: 2 * BLOCK });
  const bytes = pattern(2 * BLOCK, 4);
  await a.write(0, bytes);
  await memory.pool.flush();
  await memory.pool.createVolume('b', { sizeBytes: 2 * BLOCK });
  await memory.pool.shareBlocks('a', 0, 'b', 0, 2 * BLOCK);
  await memory.pool.flush();
  // A later write, flushed through the delta log: replay must keep the sharing and the times.
  await a.write(0, filled(10, 0x11));
  await memory.pool.flush();
  const crashed = await Pool.openOn(copyFiles(memory));
  assert.deepEqual(await readAll(crashed, 'b'), bytes);
  assert.deepEqual((await readAll(crashed, 'a')).subarray(10), bytes.subarray(10));
  await crashed.close();
  const reopened = await reopen(memory);
  assert.ok((await checkPool({ metadata: MemoryBlockFile.from(reopened.files.metadata.snapshot()), data: MemoryBlockFile.from(reopened.files.data.snapshot()) })).ok);
  await reopened.pool.removeVolume('a');
  assert.deepEqual(await readAll(reopened.pool, 'b'), bytes);
  assert.deepEqual(reopened.pool.usage().get(reopened.pool.volume('b').id), { mappedBlocks: 2, exclusiveBlocks: 2, sharedBlocks: 0 });
  await reopened.pool.flush();
  assert.ok((await checkPool(copyFiles(reopened))).ok);
  await reopened.pool.close();
});
