// A pool on failing disks (docs/format.md "Metadata mirror", "Bad ranges"; src/pool/remap.ts): data
// sectors that refuse writes are remapped durably, unreadable ones fail that range only and are
// recorded, bad blocks are never allocated again, and one bad metadata sector loses nothing.
// Faults come from fault rules on the raw files (io/fault-injection.ts), as `serve --inject` does.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { isThinError } from '../../src/errors.ts';
import { FaultInjectingBlockFile, type FaultRule } from '../../src/io/fault-injection.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { TransactionManager } from '../../src/pdata/index.ts';
import { Pool } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';
import { BLOCK, METADATA_BYTES, filled } from './helpers.ts';

const SECTORS_PER_BLOCK = BLOCK / 512;
const METADATA_BLOCKS = METADATA_BYTES / METADATA_BLOCK_SIZE_BYTES;

interface FaultyPool {
  pool: Pool;
  raw: { metadata: MemoryBlockFile; data: MemoryBlockFile };
  faults: { metadata: FaultInjectingBlockFile; data: FaultInjectingBlockFile };
}

function faulty(raw: { metadata: MemoryBlockFile; data: MemoryBlockFile }, rules: FaultRule[] = []): FaultyPool['faults'] {
  return {
    metadata: new FaultInjectingBlockFile(raw.metadata, rules.filter((rule) => rule.file === 'metadata')),
    data: new FaultInjectingBlockFile(raw.data, rules.filter((rule) => rule.file === 'data')),
  };
}

async function createFaulty(dataBlocks = 64): Promise<FaultyPool> {
  const raw = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const faults = faulty(raw);
  const pool = await Pool.createOn(faults, { dataSizeBytes: dataBlocks * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  return { pool, raw, faults };
}

/** Closes the pool and opens what its files hold (as a power cut after a clean close would), with these rules. */
async function reopenFaulty(previous: FaultyPool, rules: FaultRule[] = []): Promise<FaultyPool> {
  await previous.pool.close();
  const raw = { metadata: MemoryBlockFile.from(previous.raw.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(previous.raw.data.snapshot(), 'data') };
  const faults = faulty(raw, rules);
  const pool = await Pool.openOn(faults);
  return { pool, raw, faults };
}

/** The data block a volume's virtual block maps to, read from the pool's dump of it. */
function dataBlockOf(pool: Pool, name: string, virtualBlock: number): number | undefined {
  for (const mapping of pool.volume(name).mappedRuns()) {
    if (virtualBlock >= mapping.virtualBlock && virtualBlock < mapping.virtualBlock + mapping.lengthBlocks) return mapping.dataBlock + (virtualBlock - mapping.virtualBlock);
  }
  return undefined;
}

async function checkClean(files: { metadata: MemoryBlockFile; data: MemoryBlockFile }): Promise<void> {
  const report = await checkPool({ metadata: MemoryBlockFile.from(files.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(files.data.snapshot(), 'data') });
  assert.deepEqual(report.problems, [], 'check finds no problem');
}

const eio = (error: unknown): boolean => isThinError(error, 'THIN_IO') && /unreadable \(EIO\)/.test((error as Error).message);

describe('data sectors that fail', () => {
  test('a write a block refuses in place is moved to another block, durably, and the bad block is never allocated again', async () => {
    let faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
    await volume.write(0, filled(BLOCK, 1));
    await faulty.pool.flush();
    const oldBlock = dataBlockOf(faulty.pool, 'v', 0)!;
    // Sectors 3..4 of that block go bad for writes.
    const badBegin = oldBlock * SECTORS_PER_BLOCK + 3;
    faulty.faults.data.addRules([{ file: 'data', op: 'write', beginSector: badBegin, endSector: badBegin + 2 }]);
    await volume.write(1024, filled(4096, 2));
    const newBlock = dataBlockOf(faulty.pool, 'v', 0)!;
    assert.notEqual(newBlock, oldBlock, 'the virtual block moved');
    const expected = filled(BLOCK, 1);
    expected.fill(2, 1024, 1024 + 4096);
    const back = new Uint8Array(BLOCK);
    await volume.read(0, back);
    assert.deepEqual(back, expected, 'the write and the old bytes around it are there');
    const health = faulty.pool.status().health.data;
    assert.equal(health.remaps.remaps, 1);
    assert.equal(health.badRanges, 1);
    assert.equal(health.remappedBlocks, 1);
    assert.equal(health.state, 'degraded');
    assert.match(health.rule, /^H-DEG-1/);

    // Acknowledged means durable: the move is on disk without a flush (a crash now keeps it).
    faulty = await reopenFaulty(faulty, [{ file: 'data', op: 'write', beginSector: badBegin, endSector: badBegin + 2 }]);
    await faulty.pool.volume('v').read(0, back);
    assert.deepEqual(back, expected, 'after reopening');
    assert.deepEqual(
      faulty.pool.status().health.data.badRanges,
      1,
      'the bad range is recorded in the metadata',
    );
    // Filling every other block never hands out the bad one.
    const other = await faulty.pool.createVolume('fill', { sizeBytes: 16 * BLOCK });
    for (let block = 0; block < 16; block++) {
      try {
        await other.write(block * BLOCK, filled(BLOCK, 3));
      } catch (error) {
        assert.ok(isThinError(error, 'THIN_NO_SPACE'), `only space runs out, not ${String(error)}`);
        break;
      }
    }
    for (let block = 0; block < 16; block++) assert.notEqual(dataBlockOf(faulty.pool, 'fill', block), oldBlock, `virtual block ${block} is not on the bad block`);
    await faulty.pool.flush();
    await checkClean(faulty.raw);
    await faulty.pool.close();
  });

  test('remaps that fill the delta log have it rolled up behind them: each later remap is still one record carrying its bytes', async () => {
    const remaps = 45;
    let faulty = await createFaulty(4 * remaps);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: remaps * BLOCK });
    for (let block = 0; block < remaps; block++) await volume.write(block * BLOCK, filled(BLOCK, 1));
    await faulty.pool.flush();
    const rules: FaultRule[] = [];
    for (let block = 0; block < remaps; block++) {
      const begin = dataBlockOf(faulty.pool, 'v', block)! * SECTORS_PER_BLOCK + 8;
      rules.push({ file: 'data', op: 'write', beginSector: begin, endSector: begin + 8 });
    }
    faulty = await reopenFaulty(faulty, rules);
    const before = faulty.pool.status().counters;
    for (let block = 0; block < remaps; block++) {
      await faulty.pool.volume('v').write(block * BLOCK + 4096, filled(4096, 2));
      // What the remap started in the background (the rollup of a full log) ends before the next.
      await faulty.pool.remapSparesSettled();
    }
    const after = faulty.pool.status().counters;
    assert.equal(faulty.pool.status().health.data.remaps.remaps, remaps);
    // The ring holds 31 remaps of record + one slot: it filled, and was rolled up off the remaps' way.
    assert.ok(after.rollups - before.rollups >= 1, 'the log was rolled up');
    assert.equal(after.logRecordsCarrying - before.logRecordsCarrying, remaps, 'every remap was one record carrying its bytes');
    const expected = filled(BLOCK, 1);
    expected.fill(2, 4096, 8192);
    faulty = await reopenFaulty(faulty, rules);
    const back = new Uint8Array(BLOCK);
    for (let block = 0; block < remaps; block++) {
      await faulty.pool.volume('v').read(block * BLOCK, back);
      assert.deepEqual(back, expected, `block ${block} after reopening`);
    }
    await checkClean(faulty.raw);
    await faulty.pool.close();
  });

  test('a new block that refuses its first write is passed over for another', async () => {
    const faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 4 * BLOCK });
    // The first block the allocator hands out (block 0) refuses writes everywhere.
    faulty.faults.data.addRules([{ file: 'data', op: 'write', beginSector: 0, endSector: SECTORS_PER_BLOCK }]);
    await volume.write(0, filled(BLOCK, 9));
    assert.notEqual(dataBlockOf(faulty.pool, 'v', 0), 0);
    const back = new Uint8Array(BLOCK);
    await volume.read(0, back);
    assert.deepEqual(back, filled(BLOCK, 9));
    assert.equal(faulty.pool.status().health.data.remaps.targetsRefused, 1);
    await faulty.pool.flush();
    await checkClean(faulty.raw);
    await faulty.pool.close();
  });

  test('a write into a run of bad blocks longer than the tries a write gets goes to a block away from them', async () => {
    // Bad sectors cluster: the first 8 blocks refuse writes, more than REMAP_TARGETS_MAX (4) in a
    // row. Trying the next block each time failed the write with EIO while 56 blocks were good.
    const faulty = await createFaulty(64);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
    await volume.write(7 * BLOCK, filled(BLOCK, 6));
    assert.equal(dataBlockOf(faulty.pool, 'v', 7), 0);
    faulty.faults.data.addRules([{ file: 'data', op: 'write', beginSector: 0, endSector: 8 * SECTORS_PER_BLOCK }]);
    await volume.write(7 * BLOCK, filled(4096, 7)); // in place refused: a remap, its targets away too
    await volume.write(0, filled(4096, 3));
    await volume.write(2 * BLOCK, filled(2 * BLOCK, 4)); // whole blocks: a run, then block by block
    for (const virtualBlock of [0, 2, 3, 7]) assert.ok(dataBlockOf(faulty.pool, 'v', virtualBlock)! >= 8, `block ${virtualBlock} is away from the bad run`);
    const back = new Uint8Array(4096);
    await volume.read(0, back);
    assert.deepEqual(back, filled(4096, 3));
    await volume.read(7 * BLOCK + 4096, back);
    assert.deepEqual(back, filled(4096, 6), 'the remapped block keeps what the write did not cover');
    const health = faulty.pool.status().health.data;
    assert.equal(health.remaps.remaps, 1);
    assert.equal(health.remaps.remapsFailed, 0);
    assert.equal(health.state, 'degraded', health.rule);
    await faulty.pool.flush();
    await checkClean(faulty.raw);
    await faulty.pool.close();
  });

  test('a write that every block refuses fails, records every block it tried and sets the data health to failing', async () => {
    const faulty = await createFaulty(64);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
    faulty.faults.data.addRules([{ file: 'data', op: 'write' }]);
    await assert.rejects(volume.write(0, filled(4096, 5)), (error: unknown) => isThinError(error, 'THIN_IO') && /refuse writes \(EIO\)/.test((error as Error).message));
    const health = faulty.pool.status().health.data;
    assert.equal(health.remaps.targetsRefused, 4, 'REMAP_TARGETS_MAX blocks tried');
    assert.equal(health.badRanges, 4, 'the last block tried is recorded too: it is never handed out again');
    assert.equal(health.remaps.remapsFailed, 1);
    assert.equal(health.state, 'failing');
    assert.match(health.rule, /^H-FAIL-2: 1 write\(s\) found no block/);
    await faulty.pool.flush();
    await checkClean(faulty.raw);
    await faulty.pool.close();
  });

  test('an unreadable sector fails the read of that range only; the volume reads on, and a write over it moves the block', async () => {
    let faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 4 * BLOCK });
    await volume.write(0, filled(2 * BLOCK, 5));
    await faulty.pool.flush();
    const block = dataBlockOf(faulty.pool, 'v', 0)!;
    const bad = block * SECTORS_PER_BLOCK + 10; // bytes [5120, 5632) of virtual block 0
    faulty.faults.data.addRules([{ file: 'data', op: 'read', beginSector: bad, endSector: bad + 1 }]);
    await assert.rejects(volume.read(0, new Uint8Array(BLOCK)), eio);
    await assert.rejects(volume.read(5120, new Uint8Array(512)), eio);
    const around = new Uint8Array(4096);
    await volume.read(8192, around);
    assert.deepEqual(around, filled(4096, 5), 'other sectors of the block read');
    await volume.read(BLOCK, around);
    assert.deepEqual(around, filled(4096, 5), 'other blocks read');
    const health = faulty.pool.status().health.data;
    assert.equal(health.badRanges, 1, 'the unreadable sector is recorded');
    assert.equal(health.reads.readsFailed >= 1, true);
    assert.equal(faulty.pool.status().mode, 'read-write', 'the pool stays online');

    // Recorded durably: after a reopen (the sector still bad) the range is known.
    const rules: FaultRule[] = [{ file: 'data', op: 'read', beginSector: bad, endSector: bad + 1 }];
    faulty = await reopenFaulty(faulty, rules);
    assert.equal(faulty.pool.status().health.data.badRanges, 1);
    // A write covering the bad sector moves the block; the data around it comes along.
    await faulty.pool.volume('v').write(4096, filled(4096, 6));
    assert.notEqual(dataBlockOf(faulty.pool, 'v', 0), block);
    const back = new Uint8Array(BLOCK);
    await faulty.pool.volume('v').read(0, back);
    const expected = filled(BLOCK, 5);
    expected.fill(6, 4096, 8192);
    assert.deepEqual(back, expected);
    assert.equal(faulty.pool.status().health.data.remappedBlocks, 1);
    await faulty.pool.flush();
    await checkClean(faulty.raw);
    await faulty.pool.close();
  });

  test('a read that fails once is retried and served', async () => {
    const faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 4 * BLOCK });
    await volume.write(0, filled(BLOCK, 7));
    await faulty.pool.flush();
    const block = dataBlockOf(faulty.pool, 'v', 0)!;
    faulty.faults.data.addRules([{ file: 'data', op: 'read', beginSector: block * SECTORS_PER_BLOCK, endSector: block * SECTORS_PER_BLOCK + 1, times: 1 }]);
    const back = new Uint8Array(BLOCK);
    await volume.read(0, back);
    assert.deepEqual(back, filled(BLOCK, 7));
    const health = faulty.pool.status().health.data;
    assert.equal(health.reads.readsRecovered, 1);
    assert.equal(health.badRanges, 0, 'a transient error records nothing');
    assert.equal(health.state, 'degraded');
    assert.match(health.rule, /^H-DEG-2/);
    await faulty.pool.close();
  });
});

describe('metadata kept in two copies', () => {
  test('a new pool mirrors its metadata in the second half of the file', async () => {
    const faulty = await createFaulty();
    assert.equal(faulty.raw.metadata.sizeBytes(), 2 * METADATA_BYTES);
    const health = faulty.pool.status().health.metadata;
    assert.equal(health.copies, 2);
    assert.equal(health.state, 'ok');
    await faulty.pool.close();
  });

  test('every metadata block unreadable in the first copy: the pool opens from the second and reads every byte', async () => {
    let faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
    for (let block = 0; block < 8; block += 2) await volume.write(block * BLOCK, filled(BLOCK, block + 1));
    await faulty.pool.snapshot('v', 's');
    await faulty.pool.flush();
    // The whole first copy fails reads: superblocks, space maps, trees, log.
    faulty = await reopenFaulty(faulty, [{ file: 'metadata', op: 'read', beginSector: 0, endSector: METADATA_BLOCKS * 8 }]);
    for (const name of ['v', 's']) {
      for (let block = 0; block < 8; block++) {
        const back = new Uint8Array(BLOCK);
        await faulty.pool.volume(name).read(block * BLOCK, back);
        assert.deepEqual(back, block % 2 === 0 ? filled(BLOCK, block + 1) : new Uint8Array(BLOCK), `${name} block ${block}`);
      }
    }
    const health = faulty.pool.status().health.metadata;
    assert.ok(health.mirror!.copyReadErrors > 0);
    assert.notEqual(health.state, 'ok');
    await faulty.pool.close();
  });

  test('a flipped bit in one copy of a tree node is served from the other copy and rewritten', async () => {
    let faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
    await volume.write(0, filled(BLOCK, 4));
    await faulty.pool.flush();
    await faulty.pool.close();
    // Flip one bit in every used block of the first copy except the superblock copies' places.
    const image = faulty.raw.metadata.snapshot();
    const corrupted: number[] = [];
    const mirrorBytes = METADATA_BYTES;
    for (let blockNr = 65; blockNr < METADATA_BLOCKS; blockNr++) {
      const offset = blockNr * METADATA_BLOCK_SIZE_BYTES;
      if (blockNr === 1024 || blockNr === 16384) continue;
      if (image.subarray(offset, offset + METADATA_BLOCK_SIZE_BYTES).every((byte) => byte === 0)) continue;
      image[offset + 100]! ^= 1;
      corrupted.push(blockNr);
    }
    assert.ok(corrupted.length >= 3, `some tree blocks were corrupted (${corrupted.length})`);
    const raw = { metadata: MemoryBlockFile.from(image, 'metadata'), data: MemoryBlockFile.from(faulty.raw.data.snapshot(), 'data') };
    const pool = await Pool.openOn(raw);
    const back = new Uint8Array(BLOCK);
    await pool.volume('v').read(0, back);
    assert.deepEqual(back, filled(BLOCK, 4));
    const health = pool.status().health.metadata;
    assert.ok(health.mirror!.invalidCopies >= 1, 'bad copies were found');
    assert.ok(health.remappedBlocks >= 1, 'and rewritten');
    await pool.close();
    // Every block the pool read was rewritten: the copies agree again where they were read.
    const after = raw.metadata.snapshot();
    let repaired = 0;
    for (const blockNr of corrupted) {
      const first = after.subarray(blockNr * METADATA_BLOCK_SIZE_BYTES, (blockNr + 1) * METADATA_BLOCK_SIZE_BYTES);
      const second = after.subarray(mirrorBytes + blockNr * METADATA_BLOCK_SIZE_BYTES, mirrorBytes + (blockNr + 1) * METADATA_BLOCK_SIZE_BYTES);
      if (Buffer.from(first).equals(Buffer.from(second))) repaired += 1;
    }
    assert.ok(repaired >= 1, `corrupted blocks rewritten from their copy (${repaired} of ${corrupted.length})`);
    await checkClean(raw);
  });

  test('a metadata write both copies refuse fails the flush, the pool goes needs-check with its metadata failing, and a reopen has every flushed write', async () => {
    let faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
    await volume.write(0, filled(BLOCK, 1));
    await faulty.pool.flush();
    faulty.faults.metadata.addRules([{ file: 'metadata', op: 'write' }]);
    await volume.write(BLOCK, filled(BLOCK, 2));
    // The error names what the file said and where (it said only "The flush failed").
    await assert.rejects(faulty.pool.flush(), (error: unknown) => isThinError(error, 'THIN_IO') && /Cannot write 4096 bytes at offset \d+ of metadata: EIO/.test((error as Error).message));
    const status = faulty.pool.status();
    assert.equal(status.mode, 'needs-check');
    // Not "degraded ... each served from the other copy": no copy took the write.
    assert.equal(status.health.metadata.state, 'failing', status.health.metadata.rule);
    assert.match(status.health.metadata.rule, /^H-FAIL-4: \d+ metadata write\(s\) refused by every copy/);
    faulty = await reopenFaulty(faulty);
    const back = new Uint8Array(BLOCK);
    await faulty.pool.volume('v').read(0, back);
    assert.deepEqual(back, filled(BLOCK, 1));
    await faulty.pool.close();
    await checkClean(faulty.raw);
  });

  test('a metadata copy that refuses writes is recorded as a bad range; the pool goes on and checks clean', async () => {
    let faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
    // Every write to the mirror half fails from now on.
    faulty.faults.metadata.addRules([{ file: 'metadata', op: 'write', beginSector: METADATA_BLOCKS * 8 + 64 * 8, endSector: METADATA_BLOCKS * 16 }]);
    for (let block = 0; block < 4; block++) {
      await volume.write(block * BLOCK, filled(BLOCK, block + 1));
      await faulty.pool.flush();
    }
    const health = faulty.pool.status().health.metadata;
    assert.ok(health.ioErrors.write > 0);
    assert.ok(health.badRanges > 0, 'unwritable copies are recorded');
    faulty = await reopenFaulty(faulty);
    for (let block = 0; block < 4; block++) {
      const back = new Uint8Array(BLOCK);
      await faulty.pool.volume('v').read(block * BLOCK, back);
      assert.deepEqual(back, filled(BLOCK, block + 1));
    }
    await faulty.pool.close();
    await checkClean(faulty.raw);
  });

  test('metadata holding only its first copy (as metadata unpack writes it) gets its mirror back at the first read-write open', async () => {
    const faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 4 * BLOCK });
    await volume.write(0, filled(2 * BLOCK, 3));
    await faulty.pool.close();
    const firstHalf = faulty.raw.metadata.snapshot().slice(0, METADATA_BYTES);
    const raw = { metadata: MemoryBlockFile.from(firstHalf, 'metadata'), data: MemoryBlockFile.from(faulty.raw.data.snapshot(), 'data') };
    const pool = await Pool.openOn(raw);
    assert.equal(pool.status().health.metadata.copies, 2);
    const back = new Uint8Array(2 * BLOCK);
    await pool.volume('v').read(0, back);
    assert.deepEqual(back, filled(2 * BLOCK, 3));
    await pool.close();
    const image = raw.metadata.snapshot();
    assert.equal(image.length, 2 * METADATA_BYTES, 'the file holds both copies');
    const { tm } = await TransactionManager.open(MemoryBlockFile.from(image, 'metadata'), { readOnly: true });
    for (let blockNr = 0; blockNr < METADATA_BLOCKS; blockNr++) {
      if (tm.refCount(blockNr) === 0) continue;
      const offset = blockNr * METADATA_BLOCK_SIZE_BYTES;
      const first = image.subarray(offset, offset + METADATA_BLOCK_SIZE_BYTES);
      const second = image.subarray(METADATA_BYTES + offset, METADATA_BYTES + offset + METADATA_BLOCK_SIZE_BYTES);
      assert.ok(Buffer.from(first).equals(Buffer.from(second)), `block ${blockNr} is in both copies`);
    }
    await checkClean(raw);
  });

  test('a pool made without a mirror stays without one and says so', async () => {
    const raw = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
    const pool = await Pool.createOn(raw, { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES, metadataMirror: false });
    await pool.close();
    assert.equal(raw.metadata.sizeBytes(), METADATA_BYTES);
    const copies = { metadata: MemoryBlockFile.from(raw.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(raw.data.snapshot(), 'data') };
    const reopened = await Pool.openOn(copies);
    const health = reopened.status().health.metadata;
    assert.equal(health.copies, 1);
    assert.match(health.rule, /^H-DEG-3/);
    await reopened.close();
    assert.equal(copies.metadata.sizeBytes(), METADATA_BYTES, 'no mirror was added');
  });
});

describe('scrub', () => {
  test('scrub mends every bad metadata copy, records unreadable data sectors durably, and a second scrub finds nothing new', async () => {
    let faulty = await createFaulty(16);
    const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
    for (let block = 0; block < 6; block++) await volume.write(block * BLOCK, filled(BLOCK, block + 1));
    await faulty.pool.snapshot('v', 's');
    await faulty.pool.close();
    // Copy 1 of every used tree block gets a flipped bit (a read never looks there while copy 0 is good).
    const image = faulty.raw.metadata.snapshot();
    const { tm } = await TransactionManager.open(MemoryBlockFile.from(image, 'metadata'), { readOnly: true });
    let flipped = 0;
    for (let blockNr = 65; blockNr < 1024; blockNr++) {
      const offset = METADATA_BYTES + blockNr * METADATA_BLOCK_SIZE_BYTES;
      if (tm.refCount(blockNr) === 0) continue; // stale blocks of earlier generations are not read
      image[offset + 200]! ^= 1;
      flipped += 1;
    }
    assert.ok(flipped >= 3, `copies flipped: ${flipped}`);
    const raw = { metadata: MemoryBlockFile.from(image, 'metadata'), data: MemoryBlockFile.from(faulty.raw.data.snapshot(), 'data') };
    const probe = await Pool.openOn({ metadata: MemoryBlockFile.from(image, 'metadata'), data: MemoryBlockFile.from(raw.data.snapshot(), 'data') }, { readOnly: true });
    const block = dataBlockOf(probe, 'v', 3)!;
    await probe.close();
    const bad = block * SECTORS_PER_BLOCK + 64;
    const rules: FaultRule[] = [{ file: 'data', op: 'read', beginSector: bad, endSector: bad + 3 }];
    faulty = { raw, faults: faulty.faults, pool: await Pool.openOn(faultyFiles(raw, rules)) };
    const slept: number[] = [];
    const report = await faulty.pool.scrub({ rateBytesPerSecond: 10 * 1024 * 1024, sleepMs: async (ms) => void slept.push(ms), nowMs: () => 0 });
    assert.equal(report.metadata.copiesBad, flipped, 'every flipped copy is found');
    assert.equal(report.metadata.copiesRewritten, flipped, 'and rewritten');
    assert.deepEqual(report.metadata.blocksLost, []);
    assert.deepEqual(report.data.unreadable, [{ dataBlock: block, beginSector: bad, endSector: bad + 3 }]);
    assert.deepEqual(report.data.knownUnreadable, []);
    assert.equal(report.data.blocksRead, 6, 'each data block once, though a snapshot shares them');
    assert.ok(slept.length > 0, 'the rate paces the reads');
    assert.equal(report.badRanges, 1);
    // Durable: a reopen (files as they are now) knows the range, and both copies agree again.
    await faulty.pool.close();
    const after = raw.metadata.snapshot();
    for (let blockNr = 65; blockNr < 1024; blockNr++) {
      if (tm.refCount(blockNr) === 0) continue;
      const first = after.subarray(blockNr * METADATA_BLOCK_SIZE_BYTES, (blockNr + 1) * METADATA_BLOCK_SIZE_BYTES);
      const second = after.subarray(METADATA_BYTES + blockNr * METADATA_BLOCK_SIZE_BYTES, METADATA_BYTES + (blockNr + 1) * METADATA_BLOCK_SIZE_BYTES);
      assert.ok(Buffer.from(first).equals(Buffer.from(second)), `block ${blockNr}: copies agree`);
    }
    const again = await Pool.openOn(faultyFiles({ metadata: MemoryBlockFile.from(after, 'metadata'), data: MemoryBlockFile.from(raw.data.snapshot(), 'data') }, rules));
    const second = await again.scrub({ rateBytesPerSecond: 1e12 });
    assert.equal(second.metadata.copiesBad, 0);
    assert.deepEqual(second.data.unreadable, []);
    assert.equal(second.data.blocksKnownBad, 1);
    // Not read again, yet still lost for the volume and snapshot that map it: reported (scrub exits 1).
    assert.deepEqual(second.data.knownUnreadable, [{ dataBlock: block, beginSector: bad, endSector: bad + 3 }]);
    assert.equal(second.badRanges, 1);
    await again.close();
    await checkClean({ metadata: MemoryBlockFile.from(after, 'metadata'), data: raw.data });
  });
});

test('a scrub that finds a metadata block unreadable in both copies reports it lost and sets the metadata health to failing', async () => {
  const faulty = await createFaulty(16);
  const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
  await volume.write(0, filled(BLOCK, 1));
  await faulty.pool.flush();
  // Both copies of the tree area (blocks 65 to 1023) stop reading; the pool holds what it read.
  faulty.faults.metadata.addRules([
    { file: 'metadata', op: 'read', beginSector: 65 * 8, endSector: 1024 * 8 },
    { file: 'metadata', op: 'read', beginSector: (METADATA_BLOCKS + 65) * 8, endSector: (METADATA_BLOCKS + 1024) * 8 },
  ]);
  const report = await faulty.pool.scrub({ rateBytesPerSecond: 1e12 });
  assert.ok(report.metadata.blocksLost.length > 0);
  const health = faulty.pool.status().health.metadata;
  // It said "degraded: ... each served from the other copy and rewritten".
  assert.equal(health.state, 'failing', health.rule);
  assert.match(health.rule, /^H-FAIL-4: \d+ metadata read\(s\) found no good copy/);
  await faulty.pool.close();
});

test('a scrub of a live pool passes over metadata blocks its open transaction has not written yet', async () => {
  // Copy 0 of the tree area fails reads until written (as in test/daemon/failing-disk.test.ts);
  // blocks allocated by writes not committed yet have never been written in either copy, so
  // reading them shows copy 0 failing and copy 1 all zeros: nothing lost, only not written yet.
  const raw = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const rules: FaultRule[] = [{ file: 'metadata', op: 'read', beginSector: 65 * 8, endSector: 1024 * 8, healOnWrite: true }];
  const pool = await Pool.createOn(faultyFiles(raw, rules), { dataSizeBytes: 1024 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES });
  const volume = await pool.createVolume('v', { sizeBytes: 1024 * BLOCK });
  await pool.flush();
  // 512 scattered writes, not flushed: the mapping tree grows past one leaf into blocks never written.
  for (let block = 0; block < 1024; block += 2) await volume.write(block * BLOCK, filled(BLOCK, block + 1));
  const report = await pool.scrub({ rateBytesPerSecond: 1e12 });
  assert.deepEqual(report.metadata.blocksLost, []);
  assert.ok(report.metadata.blocksBeingWritten > 0, `blocks of the open transaction: ${report.metadata.blocksBeingWritten}`);
  await pool.close();
  await checkClean(raw);
  // Closed and opened again, every block in use has been written: all are read, none lost.
  const copies = { metadata: MemoryBlockFile.from(raw.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(raw.data.snapshot(), 'data') };
  const reopened = await Pool.openOn(faultyFiles(copies, rules));
  const after = await reopened.scrub({ rateBytesPerSecond: 1e12 });
  assert.equal(after.metadata.blocksBeingWritten, 0);
  assert.deepEqual(after.metadata.blocksLost, []);
  await reopened.close();
});

function faultyFiles(raw: { metadata: MemoryBlockFile; data: MemoryBlockFile }, rules: FaultRule[]): FaultyPool['faults'] {
  return faulty(raw, rules);
}

test('a data write-back that fails (writeBackData) resolves, and the next flush fails naming it', async () => {
  const faulty = await createFaulty(16);
  const volume = await faulty.pool.createVolume('v', { sizeBytes: 8 * BLOCK });
  await volume.write(0, filled(BLOCK, 1));
  await faulty.pool.writeBackData();
  await faulty.pool.flush();
  faulty.faults.data.addRules([{ file: 'data', op: 'sync' }]);
  await volume.write(BLOCK, filled(BLOCK, 2));
  await faulty.pool.writeBackData();
  await assert.rejects(faulty.pool.flush(), (error: unknown) => isThinError(error, 'THIN_IO') && /writing the data file back failed/.test((error as Error).message));
  await faulty.pool.close().catch(() => undefined);
});
