// The delta log (src/journal): what a flush writes, what replay accepts, and that a crash after a
// logged flush loses nothing. Crash images here are copies of in-memory files taken without
// closing the pool (no rollup): everything written and synced is in them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FaultInjectingBlockFile } from '../../src/io/fault-injection.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { Pool, type PoolFiles } from '../../src/pool/pool.ts';
import type { Volume } from '../../src/pool/volume.ts';
import { checkPool } from '../../src/tools/check.ts';
import { DELTA_LOG_BLOCK_COUNT, DELTA_LOG_FIRST_BLOCK_NR, LOG_ROLLUP_TICKS_MAX, METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { readDeltaLog } from '../../src/journal/replay.ts';
import { DELTA_LOG_ENTRIES_PER_RECORD, DeltaLogEntryKind, encodeRecord } from '../../src/journal/log.ts';
import { TransactionManager } from '../../src/pdata/index.ts';
import { BLOCK, METADATA_BYTES, filled, readAll } from '../pool/helpers.ts';
import { ManualCommitTimer } from '../pool/manual-commit-timer.ts';

async function newPool(options: { deltaLog?: boolean; dataBlocks?: number } = {}): Promise<{ pool: Pool; files: { metadata: MemoryBlockFile; data: MemoryBlockFile } }> {
  const files = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const pool = await Pool.createOn(files, {
    dataSizeBytes: (options.dataBlocks ?? 4096) * BLOCK,
    blockSizeBytes: BLOCK,
    metadataSizeBytes: METADATA_BYTES,
    ...(options.deltaLog === undefined ? {} : { deltaLog: options.deltaLog }),
  });
  return { pool, files };
}

/** The files as a power cut would leave them after everything written so far was synced. */
function crashImage(files: { metadata: MemoryBlockFile; data: MemoryBlockFile }): { metadata: MemoryBlockFile; data: MemoryBlockFile } {
  return { metadata: MemoryBlockFile.from(files.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(files.data.snapshot(), 'data') };
}

function metadataWritten(pool: Pool): number {
  return pool.status().counters.metadataBlocksWritten;
}

async function logOf(files: PoolFiles): Promise<Awaited<ReturnType<typeof readDeltaLog>>> {
  const { tm } = await TransactionManager.open(files.metadata, { readOnly: true });
  return readDeltaLog(files.metadata, { poolId: tm.poolId, baseGeneration: tm.generation });
}

test('a flush after overwrites of provisioned unshared blocks writes no metadata', async () => {
  const { pool } = await newPool();
  const volume = await pool.createVolume('v', { sizeBytes: 64 * BLOCK });
  await volume.write(0, filled(4 * BLOCK, 1));
  await pool.flush();
  const before = metadataWritten(pool);
  for (let round = 0; round < 10; round++) {
    await volume.write((round % 4) * BLOCK + 512, filled(4096, round + 2));
    await pool.flush();
  }
  assert.equal(metadataWritten(pool) - before, 0);
  assert.equal(pool.status().counters.flushes, 11);
  await pool.close();
});

test('a 4 KiB write into a new block and a flush cost one log block, at most 1.25 metadata blocks per flush with rollups', async () => {
  const { pool } = await newPool();
  const volume = await pool.createVolume('v', { sizeBytes: 4000 * BLOCK });
  await volume.write(0, filled(4096, 1)); // raises the high-water mark: a full commit
  await pool.flush();
  const before = metadataWritten(pool);
  const flushes = 3 * DELTA_LOG_BLOCK_COUNT;
  for (let index = 1; index <= flushes; index++) {
    await volume.write(index * 3 * BLOCK, filled(4096, index & 0xff));
    await pool.flush();
  }
  const status = pool.status();
  const perFlush = (status.counters.metadataBlocksWritten - before) / flushes;
  assert.ok(perFlush <= 1.25, `${perFlush.toFixed(3)} metadata blocks per flush`);
  assert.ok(status.counters.rollups >= 2, `${status.counters.rollups} rollups`);
  await pool.close();
});

test('16 scattered new-block writes and a flush write one log record', async () => {
  const { pool, files } = await newPool();
  const volume = await pool.createVolume('v', { sizeBytes: 1000 * BLOCK });
  await volume.write(0, filled(BLOCK, 1));
  await pool.rollup();
  const before = metadataWritten(pool);
  for (let index = 1; index <= 16; index++) await volume.write(index * 37 * BLOCK, filled(4096, index));
  await pool.flush();
  assert.equal(metadataWritten(pool) - before, 1);
  assert.equal(pool.status().counters.logBlocksUsed, 1);
  const log = await logOf(crashImage(files));
  assert.equal(log.records.length, 1);
  assert.equal(log.records[0]!.entries.length, 16);
  await pool.close();
});

test('with the log off every flush that changed mappings is a full commit', async () => {
  const { pool } = await newPool({ deltaLog: false });
  const volume = await pool.createVolume('v', { sizeBytes: 100 * BLOCK });
  await volume.write(0, filled(4096, 1));
  await pool.flush();
  const commits = pool.status().counters.commits;
  await volume.write(5 * BLOCK, filled(4096, 2));
  await pool.flush();
  assert.equal(pool.status().counters.commits, commits + 1);
  assert.equal(pool.status().counters.logBlocksUsed, 0);
  await pool.close();
});

test('an append the metadata file refuses fails the flush naming what the file said and where', async () => {
  const metadata = new FaultInjectingBlockFile(new MemoryBlockFile(0, 'metadata'));
  const pool = await Pool.createOn({ metadata, data: new MemoryBlockFile(0, 'data') }, { dataSizeBytes: 4096 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const volume = await pool.createVolume('v', { sizeBytes: 64 * BLOCK });
  await volume.write(0, filled(4096, 1)); // raises the high-water mark: a full commit
  await pool.flush();
  metadata.addRules([{ file: 'metadata', op: 'write' }]);
  await volume.write(BLOCK, filled(4096, 2));
  await assert.rejects(pool.flush());
  const { mode, modeReason } = pool.status();
  assert.equal(mode, 'needs-check');
  assert.match(modeReason ?? '', /^appending to the delta log failed: Appending 1 delta log record\(s\) to metadata failed: Cannot write 4096 bytes at offset \d+ of metadata: EIO/);
  await pool.close();
});

test('a crash after logged flushes loses nothing: open replays the log, rolls up, and check is clean', async () => {
  const { pool, files } = await newPool();
  const a = await pool.createVolume('a', { sizeBytes: 32 * BLOCK });
  await a.write(0, filled(8 * BLOCK, 1));
  await pool.flush();
  await pool.snapshot('a', 's');
  await pool.flush();
  // Logged: a copy-on-write, new blocks, a discard, an in-place write, a FUA write.
  await a.write(100, filled(5000, 2));
  await a.write(10 * BLOCK, filled(3 * BLOCK, 3));
  await pool.flush();
  await a.discard(BLOCK * 2, BLOCK * 2);
  await a.write(10 * BLOCK + 7, filled(100, 4));
  await a.write(20 * BLOCK, filled(4096, 5), { fua: true });
  const expected = await readAll(pool, 'a');
  const expectedSnapshot = await readAll(pool, 's');
  assert.ok(pool.status().counters.logBlocksUsed >= 2);
  const image = crashImage(files);
  assert.ok((await logOf(image)).records.length >= 2);
  const reopened = await Pool.openOn(image);
  assert.deepEqual(await readAll(reopened, 'a'), expected);
  assert.deepEqual(await readAll(reopened, 's'), expectedSnapshot);
  assert.equal(reopened.status().counters.rollups, 1, 'open rolls the replayed log up');
  assert.equal((await logOf(image)).records.length, 0, 'the log is empty after the rollup');
  const report = await checkPool(crashImage(image));
  assert.deepEqual(report.problems, []);
  assert.equal(report.stats.dataBlocksUsed, reopened.referencedDataBlocks());
  await reopened.close();
  await pool.close();
});

test('replay is idempotent: opening the same crash image twice gives the same volumes', async () => {
  const { pool, files } = await newPool();
  const v = await pool.createVolume('v', { sizeBytes: 16 * BLOCK });
  await pool.flush();
  for (let index = 0; index < 6; index++) {
    await v.write(index * 2 * BLOCK + 3, filled(70_000, index + 1));
    await pool.flush();
  }
  const image = crashImage(files);
  const first = await Pool.openOn(crashImage(image), { readOnly: true });
  const second = await Pool.openOn(crashImage(image));
  assert.deepEqual(await readAll(first, 'v'), await readAll(pool, 'v'));
  assert.deepEqual(await readAll(second, 'v'), await readAll(pool, 'v'));
  assert.equal(first.status().counters.rollups, 0, 'a read-only open replays in memory only');
  await first.close();
  await second.close();
  await pool.close();
});

test('replay stops at a torn, stale, misdirected or other-generation record', async () => {
  const { pool, files } = await newPool();
  const v = await pool.createVolume('v', { sizeBytes: 16 * BLOCK });
  await pool.flush();
  for (let index = 0; index < 4; index++) {
    await v.write(index * BLOCK, filled(BLOCK, index + 1));
    await pool.flush();
  }
  const image = crashImage(files);
  const { tm } = await TransactionManager.open(image.metadata, { readOnly: true });
  const intact = await logOf(image);
  assert.equal(intact.records.length, 4);
  const slotOffset = (slot: number): number => (DELTA_LOG_FIRST_BLOCK_NR + slot) * METADATA_BLOCK_SIZE_BYTES;
  const damaged = async (damage: (metadata: Uint8Array) => void): Promise<number> => {
    const bytes = image.metadata.snapshot();
    damage(bytes);
    const log = await logOf({ metadata: MemoryBlockFile.from(bytes), data: image.data });
    return log.records.length;
  };
  // A tear: the first sector of record 3 (slot 2) still holds what was there before (zeros).
  assert.equal(await damaged((bytes) => bytes.fill(0, slotOffset(2), slotOffset(2) + 512)), 2);
  // A stale record: slot 2 holds record 2 again (a lost write after a misdirected one).
  assert.equal(await damaged((bytes) => bytes.copyWithin(slotOffset(2), slotOffset(1), slotOffset(2))), 2);
  // A record of another generation's log in slot 1, valid in every other respect.
  const otherGeneration = encodeRecord([{ kind: DeltaLogEntryKind.unmap, volumeId: 1, virtualBlock: 0, lengthBlocks: 16, dataBlock: 0, oldDataBlock: 0 }], {
    index: 1,
    poolId: tm.poolId,
    baseGeneration: tm.generation - 1,
    sequence: 2,
    previousChecksum: new DataView(image.metadata.snapshot().buffer).getUint32(slotOffset(0), true),
    time: 0,
  });
  assert.equal(await damaged((bytes) => bytes.set(otherGeneration, slotOffset(1))), 1);
  // The same record claiming the right generation replays (the chain is intact), which shows the
  // generation alone rejected it above.
  const sameGeneration = encodeRecord([{ kind: DeltaLogEntryKind.unmap, volumeId: 1, virtualBlock: 0, lengthBlocks: 16, dataBlock: 0, oldDataBlock: 0 }], {
    index: 1,
    poolId: tm.poolId,
    baseGeneration: tm.generation,
    sequence: 2,
    previousChecksum: new DataView(image.metadata.snapshot().buffer).getUint32(slotOffset(0), true),
    time: 0,
  });
  assert.equal(await damaged((bytes) => bytes.set(sameGeneration, slotOffset(1))), 2);
  // Misdirected: record 2's bytes written to slot 3's place do not name that block.
  assert.equal(await damaged((bytes) => bytes.copyWithin(slotOffset(0), slotOffset(1), slotOffset(2))), 0);
  await pool.close();
});

test('blocks freed by a logged discard are reused only after a rollup, which a full pool makes at once', async () => {
  const { pool } = await newPool({ dataBlocks: 200 });
  const v = await pool.createVolume('v', { sizeBytes: 198 * BLOCK });
  const w = await pool.createVolume('w', { sizeBytes: 50 * BLOCK });
  await v.write(0, filled(198 * BLOCK, 1));
  await pool.flush();
  await v.discard(0, 100 * BLOCK);
  await pool.flush(); // logged: the freed blocks stay pending
  const rollups = pool.status().counters.rollups;
  assert.ok(pool.status().counters.logBlocksUsed > 0);
  await w.write(0, filled(50 * BLOCK, 2)); // needs the freed blocks: a rollup releases them
  await pool.flush();
  assert.ok(pool.status().counters.rollups > rollups);
  assert.deepEqual(await readAll(pool, 'w'), filled(50 * BLOCK, 2));
  await pool.close();
});

test('a flush with more changes than a record holds writes several chained records', async () => {
  const { pool, files } = await newPool();
  const v = await pool.createVolume('v', { sizeBytes: 1000 * BLOCK });
  await v.write(0, filled(BLOCK, 1));
  await pool.rollup();
  const writes = DELTA_LOG_ENTRIES_PER_RECORD + 20;
  for (let index = 1; index <= writes; index++) await v.write(index * 2 * BLOCK, filled(512, index & 0xff));
  await pool.flush();
  const image = crashImage(files);
  assert.equal((await logOf(image)).records.length, 2);
  const reopened = await Pool.openOn(image);
  assert.deepEqual(await readAll(reopened, 'v'), await readAll(pool, 'v'));
  await reopened.close();
  await pool.close();
});

/** A pool on a commit timer the test ticks, whose delta log holds one record (a new block, flushed). */
async function poolWithOneLoggedRecord(): Promise<{ pool: Pool; v: Volume; timer: ManualCommitTimer }> {
  const timer = new ManualCommitTimer();
  const files = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const pool = await Pool.createOn(files, { dataSizeBytes: 64 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES, commitTimer: timer.timer });
  const v = await pool.createVolume('v', { sizeBytes: 8 * BLOCK });
  await v.write(0, filled(4096, 1));
  await pool.rollup();
  await v.write(3 * BLOCK, filled(4096, 2));
  await pool.flush();
  assert.equal(pool.status().counters.logBlocksUsed, 1);
  return { pool, v, timer };
}

test('an idle pool rolls its log up on the commit timer', async () => {
  const { pool, timer } = await poolWithOneLoggedRecord();
  const rollups = pool.status().counters.rollups;
  // The first tick ends the interval the flush was in; the next finds it quiet.
  await timer.tick();
  await timer.tick();
  assert.equal(pool.status().counters.logBlocksUsed, 0, 'the log was rolled up while idle');
  assert.ok(pool.status().counters.rollups > rollups);
  await pool.close();
});

test('logged changes are rolled up even when requests never pause for a whole commit interval', async () => {
  const { pool, v, timer } = await poolWithOneLoggedRecord();
  // A write in every interval: no tick ever finds an interval free of requests, yet after
  // LOG_ROLLUP_TICKS_MAX ticks without a rollup, the next tick with nothing in flight rolls up.
  let ticks = 0;
  for (; ticks <= LOG_ROLLUP_TICKS_MAX + 1 && pool.status().counters.logBlocksUsed > 0; ticks++) {
    await v.write(0, filled(512, ticks & 0xff));
    await timer.tick();
  }
  assert.equal(pool.status().counters.logBlocksUsed, 0, `the log was rolled up between requests (after ${ticks} busy ticks)`);
  assert.ok(ticks > 1, 'a busy interval alone did not roll up');
  await pool.close();
});
