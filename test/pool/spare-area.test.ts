// The remaps' spare area (src/pool/spare-area.ts; off unless remapSpareBlocks says how many): once
// the data file has refused a write, a few free blocks are written and synced ahead, and remaps
// move blocks into them. They are free blocks known only to this process: no write but a remap
// takes them, they are not free space in the figures yet never the reason for ENOSPC, a spare
// that refuses its zeros is recorded bad, and a crash forgets them without harm.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { REMAP_SPARE_BLOCKS_MAX } from '../../src/constants.ts';
import { isThinError } from '../../src/errors.ts';
import type { SyncOptions } from '../../src/io/block-file.ts';
import { FaultInjectingBlockFile, type FaultRule } from '../../src/io/fault-injection.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { Pool } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';
import { ForwardingBlockFile } from '../io/forwarding-block-file.ts';
import { BLOCK, METADATA_BYTES, filled } from './helpers.ts';

const SECTORS_PER_BLOCK = BLOCK / 512;

/** The data file's writes and syncs, in order, as the pool issued them (below the fault rules). */
class RecordingFile extends ForwardingBlockFile {
  readonly events: Array<{ kind: 'write'; block: number; lengthBytes: number; zeros: boolean } | { kind: 'sync' }> = [];

  override async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    await super.write(source, offsetBytes);
    this.events.push({ kind: 'write', block: Math.floor(offsetBytes / BLOCK), lengthBytes: source.length, zeros: source.every((byte) => byte === 0) });
  }

  override async sync(options?: SyncOptions): Promise<void> {
    await super.sync(options);
    this.events.push({ kind: 'sync' });
  }
}

interface SparePool {
  pool: Pool;
  raw: { metadata: MemoryBlockFile; data: MemoryBlockFile };
  recorder: RecordingFile;
  faults: FaultInjectingBlockFile;
}

function filesOn(raw: SparePool['raw'], rules: FaultRule[]): Omit<SparePool, 'pool' | 'raw'> & { files: { metadata: MemoryBlockFile; data: FaultInjectingBlockFile } } {
  const recorder = new RecordingFile(raw.data);
  const faults = new FaultInjectingBlockFile(recorder, rules);
  return { recorder, faults, files: { metadata: raw.metadata, data: faults } };
}

/** A pool with the spare area on (REMAP_SPARE_BLOCKS_MAX) unless options say otherwise. */
async function createPool(dataBlocks: number, options: { remapSpareBlocks?: number } = {}): Promise<SparePool> {
  const raw = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const { recorder, faults, files } = filesOn(raw, []);
  const pool = await Pool.createOn(files, { dataSizeBytes: dataBlocks * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES, remapSpareBlocks: REMAP_SPARE_BLOCKS_MAX, ...options });
  return { pool, raw, recorder, faults };
}

/** Opens what the files hold now, as after a power cut (no close): unsynced writes are kept by MemoryBlockFile, which is what a crash may leave too. */
async function openCopy(previous: SparePool, rules: FaultRule[] = []): Promise<SparePool> {
  const raw = { metadata: MemoryBlockFile.from(previous.raw.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(previous.raw.data.snapshot(), 'data') };
  const { recorder, faults, files } = filesOn(raw, rules);
  const pool = await Pool.openOn(files, { remapSpareBlocks: REMAP_SPARE_BLOCKS_MAX });
  return { pool, raw, recorder, faults };
}

function dataBlockOf(pool: Pool, name: string, virtualBlock: number): number {
  for (const run of pool.volume(name).mappedRuns()) {
    if (virtualBlock >= run.virtualBlock && virtualBlock < run.virtualBlock + run.lengthBlocks) return run.dataBlock + (virtualBlock - run.virtualBlock);
  }
  assert.fail(`virtual block ${virtualBlock} of ${name} is not mapped`);
}

/** Virtual blocks [0, count) of a new volume written (one data block each) and flushed; their data blocks then refuse writes in sectors 8..15. */
async function failingVolume(spare: SparePool, count: number): Promise<number[]> {
  const volume = await spare.pool.createVolume('v', { sizeBytes: count * BLOCK });
  for (let block = 0; block < count; block++) await volume.write(block * BLOCK, filled(BLOCK, 1 + block));
  await spare.pool.flush();
  const blocks = Array.from({ length: count }, (_, block) => dataBlockOf(spare.pool, 'v', block));
  spare.faults.addRules(blocks.map((block) => ({ file: 'data', op: 'write', beginSector: block * SECTORS_PER_BLOCK + 8, endSector: block * SECTORS_PER_BLOCK + 16 })));
  return blocks;
}

/** Writes 4 KiB at byte 4096 of virtual block `block` (refused in place: a remap) and checks the block reads back whole. */
async function remapWrite(pool: Pool, block: number): Promise<void> {
  const volume = pool.volume('v');
  await volume.write(block * BLOCK + 4096, filled(4096, 0xee));
  const expected = filled(BLOCK, 1 + block);
  expected.fill(0xee, 4096, 8192);
  const back = new Uint8Array(BLOCK);
  await volume.read(block * BLOCK, back);
  assert.deepEqual(back, expected, `virtual block ${block} after its remap`);
}

async function checkClean(raw: SparePool['raw']): Promise<void> {
  const report = await checkPool({ metadata: MemoryBlockFile.from(raw.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(raw.data.snapshot(), 'data') });
  assert.deepEqual(report.problems, [], 'check finds no problem');
}

test('a healthy pool keeps no spares; after the first refused write it writes and syncs a few free blocks ahead, and later remaps move into them', async () => {
  const spare = await createPool(64);
  await failingVolume(spare, 8);
  assert.deepEqual(spare.pool.status().health.data.spareArea, { blocks: 0, written: 0, taken: 0, refills: 0 }, 'nothing before a failure');
  assert.ok(spare.recorder.events.every((event) => event.kind === 'sync' || !event.zeros), 'no zeros written ahead by a healthy pool');

  await remapWrite(spare.pool, 0);
  await spare.pool.remapSparesSettled();
  let area = spare.pool.status().health.data.spareArea;
  // 64 blocks: at most 1/16 of the pool, 4 spares.
  assert.equal(area.blocks, 4);
  assert.equal(area.refills, 1);
  const zeroWrites = spare.recorder.events.flatMap((event, index) => (event.kind === 'write' && event.zeros && event.lengthBytes === BLOCK ? [{ block: event.block, index }] : []));
  assert.equal(zeroWrites.length, 4, 'four whole blocks of zeros');
  const spares = zeroWrites.map((write) => write.block);
  const lastZero = zeroWrites[zeroWrites.length - 1]!.index;
  assert.ok(spare.recorder.events.slice(lastZero).some((event) => event.kind === 'sync'), 'synced after they were written');
  for (const block of spares) assert.ok(!spare.pool.volume('v').mappedRuns().some((run) => block >= run.dataBlock && block < run.dataBlock + run.lengthBlocks), `spare ${block} is mapped by nothing`);

  // The next remap moves its block into a spare; a refill follows once half is used.
  await remapWrite(spare.pool, 1);
  assert.ok(spares.includes(dataBlockOf(spare.pool, 'v', 1)), 'the remap took a spare');
  await remapWrite(spare.pool, 2);
  assert.ok(spares.includes(dataBlockOf(spare.pool, 'v', 2)), 'and the next one');
  await spare.pool.remapSparesSettled();
  area = spare.pool.status().health.data.spareArea;
  assert.equal(area.taken, 2);
  assert.equal(area.blocks, 4, 'refilled to four');
  assert.equal(area.refills, 2);
  const health = spare.pool.status().health.data;
  assert.equal(health.remaps.remaps, 3);
  // Spare left: every block a remap may take, the spares with the free blocks.
  assert.equal(health.spareBlocks, spare.pool.status().space.data.freeBytes / BLOCK + area.blocks);

  // Acknowledged remaps are durable without a flush, and a crash forgets the spares harmlessly.
  const after = await openCopy(spare);
  for (let block = 0; block < 3; block++) {
    const expected = filled(BLOCK, 1 + block);
    expected.fill(0xee, 4096, 8192);
    const back = new Uint8Array(BLOCK);
    await after.pool.volume('v').read(block * BLOCK, back);
    assert.deepEqual(back, expected, `virtual block ${block} after the crash`);
  }
  await checkClean(after.raw);
  // Bad data ranges are recorded: the reopened pool keeps spares again from the start.
  await after.pool.remapSparesSettled();
  assert.equal(after.pool.status().health.data.spareArea.blocks, 4);
  await after.pool.close();
  await checkClean(after.raw);
  await spare.pool.close();
});

test('spares are not free space, yet a pool short of blocks takes them back rather than failing a write with ENOSPC', async () => {
  // The same pool with and without spares must take the same number of new blocks before ENOSPC.
  const filledBlocks: number[] = [];
  const freeBytes: number[] = [];
  for (const remapSpareBlocks of [0, 16]) {
    const spare = await createPool(48, { remapSpareBlocks });
    await failingVolume(spare, 2);
    await remapWrite(spare.pool, 0);
    await spare.pool.remapSparesSettled();
    const status = spare.pool.status();
    assert.equal(status.health.data.spareArea.blocks, remapSpareBlocks === 0 ? 0 : 3, '48 blocks: 3 spares (1/16)');
    freeBytes.push(status.space.data.freeBytes);
    const other = await spare.pool.createVolume('fill', { sizeBytes: 48 * BLOCK });
    let written = 0;
    for (let block = 0; block < 48; block++) {
      try {
        await other.write(block * BLOCK, filled(BLOCK, 7));
        written += 1;
      } catch (error) {
        assert.ok(isThinError(error, 'THIN_NO_SPACE'), `only space runs out, not ${String(error)}`);
        break;
      }
    }
    filledBlocks.push(written);
    assert.equal(spare.pool.status().health.data.spareArea.blocks, 0, 'no spare left once the pool is full');
    await spare.pool.flush();
    await checkClean(spare.raw);
    await spare.pool.close();
  }
  assert.equal(freeBytes[0]! - freeBytes[1]!, 3 * BLOCK, 'the free figure leaves the spares out');
  assert.equal(filledBlocks[1], filledBlocks[0], 'spares cost writes no block');
});

test('a spare that refuses its zeros is recorded bad and never used; the others are', async () => {
  const spare = await createPool(64);
  const used = await failingVolume(spare, 4);
  // The remap takes the block after the volume's last (the lowest free one); the spares are the
  // lowest free blocks after it, and the first of them refuses every write.
  const refusing = Array.from({ length: 64 }, (_, block) => block).find((block) => !used.includes(block))! + 1;
  spare.faults.addRules([{ file: 'data', op: 'write', beginSector: refusing * SECTORS_PER_BLOCK, endSector: (refusing + 1) * SECTORS_PER_BLOCK }]);
  await remapWrite(spare.pool, 0);
  await spare.pool.remapSparesSettled();
  const health = spare.pool.status().health.data;
  assert.equal(health.spareArea.written, 3, 'three of the four written');
  assert.equal(health.badRanges, 2, 'the remapped block and the refused spare');
  for (let block = 1; block < 4; block++) {
    await remapWrite(spare.pool, block);
    assert.notEqual(dataBlockOf(spare.pool, 'v', block), refusing, 'never the refused spare');
  }
  await spare.pool.flush();
  await checkClean(spare.raw);
  await spare.pool.close();
});

test('the spare area is off by default (remapSpareBlocks 0), and a bad value is refused', async () => {
  const raw0 = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const { recorder, faults, files } = filesOn(raw0, []);
  const spare: SparePool = { pool: await Pool.createOn(files, { dataSizeBytes: 64 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES }), raw: raw0, recorder, faults };
  await failingVolume(spare, 2);
  await remapWrite(spare.pool, 0);
  await remapWrite(spare.pool, 1);
  await spare.pool.remapSparesSettled();
  assert.deepEqual(spare.pool.status().health.data.spareArea, { blocks: 0, written: 0, taken: 0, refills: 0 });
  await spare.pool.close();
  const raw = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  await assert.rejects(
    Pool.createOn(raw, { dataSizeBytes: 64 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES, remapSpareBlocks: -1 }),
    (error) => isThinError(error, 'THIN_INVALID') && /remapSpareBlocks -1/.test((error as Error).message),
  );
});
