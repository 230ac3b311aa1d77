// Pinned generations (docs/format.md F-TX-8): a reader beside the pool sees exactly the generation
// it pinned, however the pool changes meanwhile, and the pool reuses nothing that generation names
// until the pin is released.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PoolView, type PinnedTarget } from '../../src/tools/pool-view.ts';
import { dumpView } from '../../src/tools/dump/pool-dump.ts';
import { XmlDumpWriter } from '../../src/tools/dump/xml.ts';
import { StringSink } from '../../src/tools/dump/sink.ts';
import { isThinError } from '../../src/errors.ts';
import type { Volume } from '../../src/pool/volume.ts';
import { BLOCK, filled, memoryPool, readAll } from './helpers.ts';

async function dumpOf(target: PinnedTarget): Promise<string> {
  const view = await PoolView.open(target);
  try {
    const sink = new StringSink();
    await dumpView(view, new XmlDumpWriter(sink));
    return sink.text;
  } finally {
    await view.close();
  }
}

async function bytesOf(target: PinnedTarget, name: string): Promise<Uint8Array> {
  const view = await PoolView.open(target);
  try {
    const reader = view.volumeReader(view.device(name));
    const bytes = new Uint8Array(reader.sizeBytes);
    await reader.read(0, bytes);
    return bytes;
  } finally {
    await view.close();
  }
}

/** Writes whole blocks from `firstBlock` on until the pool has no space; returns how many it wrote. */
async function writeUntilFull(volume: Volume, firstBlock: number, byte: number, commit: () => Promise<void>): Promise<number> {
  let count = 0;
  for (let block = firstBlock; block < volume.sizeBytes / BLOCK; block += 1) {
    try {
      await volume.write(block * BLOCK, filled(BLOCK, byte));
    } catch (error) {
      if (!isThinError(error, 'THIN_NO_SPACE')) throw error;
      break;
    }
    count += 1;
    if (count % 8 === 0) await commit();
  }
  return count;
}

test('a pinned generation reads as committed while the pool removes, rewrites and discards, and its blocks are reused only after release', async () => {
  const { pool, files } = await memoryPool(64);
  const volume = await pool.createVolume('v', { sizeBytes: 16 * BLOCK });
  for (let block = 0; block < 8; block += 1) await volume.write(block * BLOCK, filled(BLOCK, 1 + block));
  await pool.snapshot('v', 's', { readOnly: true });
  const gone = await pool.createVolume('gone', { sizeBytes: 8 * BLOCK });
  for (let block = 0; block < 4; block += 1) await gone.write(block * BLOCK, filled(BLOCK, 0x50 + block));

  const pinned = await pool.pinCommitted();
  const target: PinnedTarget = { pool: files, pinnedSuperblock: pinned.superblock, superblockSlots: pinned.superblockSlots };
  assert.deepEqual(pool.status().pinnedGenerations, [pinned.generation]);
  const dumpAtPin = await dumpOf(target);
  const expected = new Map<string, Uint8Array>();
  for (const name of ['v', 's', 'gone']) expected.set(name, await readAll(pool, name));

  // Everything a later commit may do to those blocks: free them (remove), copy them away (a write
  // to blocks shared in time), discard, and then try to take every free block for new data.
  await pool.removeVolume('gone');
  await pool.removeVolume('s');
  for (let block = 0; block < 8; block += 1) await volume.write(block * BLOCK, filled(BLOCK, 0xa0 + block));
  await volume.discard(4 * BLOCK, 4 * BLOCK);
  await pool.rollup();
  const filler = await pool.createVolume('filler', { sizeBytes: 64 * BLOCK });
  const written = await writeUntilFull(filler, 0, 0xee, () => pool.rollup());
  await pool.rollup();

  assert.equal(await dumpOf(target), dumpAtPin, 'the pinned metadata is unchanged');
  for (const [name, bytes] of expected) assert.deepEqual(await bytesOf(target, name), bytes, `${name} reads as it was pinned`);

  // Released: the blocks the pinned generation held become free again, and the filler gets them.
  pinned.release();
  pinned.release(); // idempotent
  assert.deepEqual(pool.status().pinnedGenerations, []);
  await pool.rollup();
  const more = await writeUntilFull(filler, written, 0xef, () => pool.rollup());
  assert.ok(more >= 4, `after release the blocks of 'gone' and the old copies of 'v' are reused (${more} more blocks written)`);
  await pool.close();
});
