// The space policy (src/pool/space.ts, docs/format.md F-POOL-45..54): settings stored in the
// payload, edge-triggered low-water events, automatic growth up to data-max, `--when-full` error
// and queue, the metadata recovery reserve, and freed blocks given back to the host only once no
// committed or pinned generation can reference them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { isThinError } from '../../src/errors.ts';
import { Pool, type SpaceEvent, type SpaceSettings } from '../../src/pool/pool.ts';
import { decodePoolPayload, encodePoolPayload, POOL_PAYLOAD_SIZE_BYTES, type PoolPayload } from '../../src/pool/codecs.ts';
import { checkPool } from '../../src/tools/check.ts';
import { SimMachine } from '../sim/sim-disk.ts';
import { BLOCK, METADATA_BYTES, filled, readAll } from './helpers.ts';

/**
 * A memory pool with these space settings. `metadataMirror` defaults to the pool's default (two
 * copies); the tests of metadata growth turn it off to keep memory files small (growing mirrored
 * metadata moves its second copy to twice its place, which a dense memory file would hold: the
 * test of that below runs on sparse simulated disks).
 */
async function memoryPoolWith(dataBlocks: number, space: SpaceSettings, metadataSizeBytes = METADATA_BYTES, options: { metadataMirror?: boolean } = {}) {
  const files = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const pool = await Pool.createOn(files, { dataSizeBytes: dataBlocks * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes, space, ...options });
  return { pool, files };
}

function reopenCopies(files: { metadata: MemoryBlockFile; data: MemoryBlockFile }) {
  return { metadata: MemoryBlockFile.from(files.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(files.data.snapshot(), 'data') };
}

function basePayload(space: SpaceSettings): PoolPayload {
  return {
    formatVersion: 1,
    blockSizeBytes: BLOCK,
    flags: 0,
    dataBlockCount: 100,
    dataSpaceMapRoot: 10,
    deviceTreeRoot: 11,
    dataHighWaterMark: 0,
    time: 0,
    nextVolumeId: 1,
    creationTimeMs: 1,
    userTransactionId: 0,
    space,
  };
}

test('space settings round-trip through the payload; a payload from before them (104 or 88 bytes) reads as all defaults; the bad-range root beside them survives; bad values are refused by name', () => {
  const settings: SpaceSettings = {
    lowWater: { percent: 12.5 },
    metadataLowWater: { bytes: 8 * 1024 ** 2 },
    dataMaxBytes: 2 * 1024 ** 3,
    metadataMaxBytes: 64 * 1024 ** 2,
    growStepBytes: 128 * 1024 ** 2,
    whenFull: { queueSeconds: 30 },
    autoGrow: false,
    punchHoles: false,
  };
  const bytes = encodePoolPayload(basePayload(settings));
  assert.equal(bytes.length, POOL_PAYLOAD_SIZE_BYTES);
  assert.deepEqual(decodePoolPayload(bytes, 1000).space, settings);
  assert.deepEqual(decodePoolPayload(encodePoolPayload(basePayload({ lowWater: 'off' })), 1000).space, { lowWater: 'off' });
  assert.deepEqual(decodePoolPayload(bytes.subarray(0, 104), 1000).space, {}, 'a payload from before the space settings: defaults');
  assert.deepEqual(decodePoolPayload(bytes.subarray(0, 88), 1000).space, {}, 'a payload from before the bad-range tree: defaults');
  const withBadRanges = encodePoolPayload({ ...basePayload(settings), badRangeRoot: 7, badRangeRootTransactionId: 3 });
  const decoded = decodePoolPayload(withBadRanges, 1000);
  assert.deepEqual([decoded.badRangeRoot, decoded.badRangeRootTransactionId, decoded.space], [7, 3, settings], 'the space settings lie after the bad-range root');
  assert.equal(decodePoolPayload(withBadRanges.subarray(0, 104), 1000).badRangeRoot, 7, 'a 104-byte payload keeps its bad-range root');

  const corrupt = (offset: number, value: number, pattern: RegExp): void => {
    const copy = bytes.slice();
    new DataView(copy.buffer).setUint32(offset, value, true);
    assert.throws(() => decodePoolPayload(copy, 1000), (error) => isThinError(error, 'THIN_CORRUPT_SUPERBLOCK') && pattern.test(error.message));
  };
  corrupt(104, 4, /unknown space flags/);
  corrupt(108, 3601, /queues writes for 3601 seconds/);
  corrupt(112, 9, /data low-water mark has unknown unit 9/);
  corrupt(120, 20_000, /low-water mark of 200%/);
});

test('the low-water event is edge-triggered: once when crossed, not per write; full when a write is refused; re-armed when space is freed', async () => {
  const { pool } = await memoryPoolWith(100, { lowWater: { bytes: 20 * BLOCK } });
  const events: SpaceEvent[] = [];
  pool.onSpaceEvent((event) => events.push(event));
  const a = await pool.createVolume('a', { sizeBytes: 60 * BLOCK });
  const b = await pool.createVolume('b', { sizeBytes: 60 * BLOCK });
  for (let block = 0; block < 60; block += 1) await a.write(block * BLOCK, filled(BLOCK, 1));
  assert.equal(events.length, 0, 'above the mark: no event');
  assert.equal(pool.status().state, 'ok');
  for (let block = 0; block < 25; block += 1) await b.write(block * BLOCK, filled(BLOCK, 2));
  assert.deepEqual(events.map((event) => event.kind), ['data-low-water'], 'one event for many writes below the mark');
  const low = events[0]!;
  assert.equal(low.resource, 'data');
  assert.equal(low.lowWaterBytes, 20 * BLOCK);
  assert.ok(low.freeBytes < 20 * BLOCK && low.freeBytes >= 15 * BLOCK, `free ${low.freeBytes}`);
  // The write that crossed holds its block reserved (not yet mapped): counted neither free nor used.
  assert.ok(low.usedBytes + low.freeBytes >= 99 * BLOCK && low.usedBytes + low.freeBytes <= 100 * BLOCK, `used ${low.usedBytes} free ${low.freeBytes}`);
  const status = pool.status();
  assert.equal(status.state, 'low');
  assert.equal(status.lowWater.bytes, 20 * BLOCK);
  assert.equal(status.freeBytes + status.usedBytes, 100 * BLOCK);

  // Until no block is left: ENOSPC (error mode, the default), the state full, one full event.
  let refused = 0;
  for (let block = 25; block < 60; block += 1) {
    try {
      await b.write(block * BLOCK, filled(BLOCK, 2));
    } catch (error) {
      assert.ok(isThinError(error, 'THIN_NO_SPACE'), String(error));
      refused += 1;
    }
  }
  assert.ok(refused > 0);
  assert.deepEqual(events.map((event) => event.kind), ['data-low-water', 'data-full']);
  assert.equal(pool.status().state, 'full');
  // Reads, flushes and status keep working on a full pool.
  assert.deepEqual((await readAll(pool, 'a')).subarray(0, BLOCK), filled(BLOCK, 1));
  await pool.flush();

  // Freed and committed: restored (re-armed); crossing again raises a second event.
  await pool.removeVolume('a');
  await pool.flush();
  assert.deepEqual(events.map((event) => event.kind), ['data-low-water', 'data-full', 'data-restored']);
  assert.equal(pool.status().state, 'ok');
  const c = await pool.createVolume('c', { sizeBytes: 60 * BLOCK });
  for (let block = 0; block < 50; block += 1) await c.write(block * BLOCK, filled(BLOCK, 3));
  assert.deepEqual(events.map((event) => event.kind), ['data-low-water', 'data-full', 'data-restored', 'data-low-water']);
  await pool.close();
});

test('automatic growth keeps writes going up to data-max, is recorded durably, then ENOSPC; every acknowledged write reads back after reopen', async () => {
  const { pool, files } = await memoryPoolWith(64, { dataMaxBytes: 256 * BLOCK, growStepBytes: 64 * BLOCK, lowWater: { bytes: 8 * BLOCK } });
  const events: SpaceEvent[] = [];
  pool.onSpaceEvent((event) => events.push(event));
  const volume = await pool.createVolume('v', { sizeBytes: 400 * BLOCK });
  let written = 0;
  let error: unknown;
  for (; written < 400; written += 1) {
    try {
      await volume.write(written * BLOCK, filled(BLOCK, (written % 250) + 1));
    } catch (caught) {
      error = caught;
      break;
    }
  }
  assert.ok(isThinError(error, 'THIN_NO_SPACE'), `the write past data-max fails with ENOSPC: ${String(error)}`);
  assert.ok(written >= 250 && written <= 256, `writes went on up to data-max (${written} blocks written)`);
  const status = pool.status();
  assert.equal(status.dataBlockCount, 256);
  assert.equal(status.space.data.sizeBytes, 256 * BLOCK);
  assert.equal(status.space.data.maxBytes, 256 * BLOCK);
  assert.equal(status.space.data.grows, 3);
  assert.deepEqual(
    events.map((event) => event.kind),
    ['data-grown', 'data-grown', 'data-grown', 'data-low-water', 'data-full'],
    'growth first; the low-water event only when growth cannot help any more',
  );
  await pool.close();

  const reopened = await Pool.openOn(reopenCopies(files));
  assert.equal(reopened.status().dataBlockCount, 256, 'the grown size is in the superblock');
  const bytes = await readAll(reopened, 'v');
  for (let block = 0; block < written; block += 1) {
    assert.equal(bytes[block * BLOCK], (block % 250) + 1, `block ${block} reads back`);
  }
  await reopened.close();
  const report = await checkPool(reopenCopies(files));
  assert.deepEqual(report.problems, []);
});

test('with --auto-grow off, growth is no space the pool can give: the low-water event comes before writes fail, and status shows the file size as the limit', async () => {
  const { pool } = await memoryPoolWith(100, { autoGrow: false, dataMaxBytes: 1000 * BLOCK, metadataMaxBytes: 4 * METADATA_BYTES, lowWater: { bytes: 20 * BLOCK } }, METADATA_BYTES, { metadataMirror: false });
  const events: SpaceEvent[] = [];
  pool.onSpaceEvent((event) => events.push(event));
  const volume = await pool.createVolume('v', { sizeBytes: 200 * BLOCK });
  for (let block = 0; block < 85; block += 1) await volume.write(block * BLOCK, filled(BLOCK, 1));
  assert.deepEqual(events.map((event) => event.kind), ['data-low-water'], 'the mark is crossed while writes still succeed');
  const status = pool.status();
  assert.equal(status.state, 'low');
  assert.equal(status.freeBytes + status.usedBytes, 100 * BLOCK, 'what it can still give is its free blocks alone');
  assert.equal(status.space.data.maxBytes, 100 * BLOCK);
  assert.equal(status.space.metadata.maxBytes, METADATA_BYTES);
  assert.equal(status.space.data.grows, 0);
  await pool.close();
});

test('a write of whole new blocks, which goes in runs of new data blocks, follows the same space rules: growth up to data-max, ENOSPC past it, the queue until a remove frees space', async () => {
  const { pool, files } = await memoryPoolWith(16, { dataMaxBytes: 48 * BLOCK, growStepBytes: 8 * BLOCK, lowWater: { bytes: 2 * BLOCK } });
  const volume = await pool.createVolume('v', { sizeBytes: 64 * BLOCK });
  const other = await pool.createVolume('other', { sizeBytes: 16 * BLOCK });
  // 32 blocks in one write into a 16-block data file: the runs grow it as they go.
  await volume.write(0, filled(32 * BLOCK, 0x41));
  assert.ok(pool.status().dataBlockCount >= 32, `grown to ${pool.status().dataBlockCount} blocks`);
  await other.write(0, filled(12 * BLOCK, 0x42));
  // Past data-max: ENOSPC once the 4 blocks left are written (F-POOL-41), and nothing written before changes.
  await assert.rejects(volume.write(32 * BLOCK, filled(16 * BLOCK, 0x43)), (error) => isThinError(error, 'THIN_NO_SPACE'));
  assert.equal(pool.status().dataBlockCount, 48);
  assert.equal((await readAll(pool, 'v'))[31 * BLOCK], 0x41);
  // Queue: a whole-block write at full waits until a remove frees space, then lands whole.
  pool.changeSpaceSettings({ whenFull: { queueSeconds: 600 } });
  const queued = volume.write(56 * BLOCK, filled(8 * BLOCK, 0x44));
  while (pool.status().space.writesWaiting === 0) await new Promise((resolve) => setImmediate(resolve));
  await pool.removeVolume('other');
  await pool.flush();
  await queued;
  await pool.close();
  const reopened = await Pool.openOn(reopenCopies(files));
  const bytes = await readAll(reopened, 'v');
  for (let block = 0; block < 32; block += 1) assert.equal(bytes[block * BLOCK + 1], 0x41, `block ${block}`);
  for (let block = 56; block < 64; block += 1) assert.equal(bytes[block * BLOCK + 1], 0x44, `block ${block}`);
  await reopened.close();
  assert.deepEqual((await checkPool(reopenCopies(files))).problems, []);
});

test('--when-full queue holds a write until a remove frees space; a wait that nobody ends fails with ENOSPC', async () => {
  const { pool } = await memoryPoolWith(32, { whenFull: { queueSeconds: 600 } });
  const filler = await pool.createVolume('filler', { sizeBytes: 16 * BLOCK });
  const volume = await pool.createVolume('v', { sizeBytes: 32 * BLOCK });
  for (let block = 0; block < 16; block += 1) await filler.write(block * BLOCK, filled(BLOCK, 9));
  for (let block = 0; block < 16; block += 1) await volume.write(block * BLOCK, filled(BLOCK, 1 + block));
  await pool.flush();
  let settled = false;
  const waiting = volume.write(16 * BLOCK, filled(BLOCK, 0x77)).then(() => (settled = true));
  while (pool.status().space.writesWaiting === 0) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, false);
  assert.equal(pool.status().state, 'full');
  // Reads (of blocks the waiting write does not lock) and flushes go on meanwhile.
  const head = new Uint8Array(16 * BLOCK);
  await volume.read(0, head);
  assert.equal(head[15 * BLOCK], 16);
  await pool.flush();
  assert.equal(settled, false, 'a flush frees nothing: the write still waits');
  await pool.removeVolume('filler');
  await pool.flush();
  await waiting;
  assert.equal((await readAll(pool, 'v'))[16 * BLOCK], 0x77);
  assert.equal(pool.status().space.writesWaited, 1);
  await pool.close();

  const { pool: short } = await memoryPoolWith(8, { whenFull: { queueSeconds: 1 } });
  const full = await short.createVolume('v', { sizeBytes: 16 * BLOCK });
  for (let block = 0; block < 8; block += 1) await full.write(block * BLOCK, filled(BLOCK, 1));
  await assert.rejects(full.write(8 * BLOCK, filled(BLOCK, 2)), (error) => isThinError(error, 'THIN_NO_SPACE') && /waited 1 s/.test(error.message));
  await short.close();
});

test('pool set changes the settings live and durably; pool resize grows both files now and refuses to shrink', async () => {
  const { pool, files } = await memoryPoolWith(16, {}, METADATA_BYTES, { metadataMirror: false });
  const volume = await pool.createVolume('v', { sizeBytes: 64 * BLOCK });
  for (let block = 0; block < 16; block += 1) await volume.write(block * BLOCK, filled(BLOCK, 1));
  await assert.rejects(volume.write(16 * BLOCK, filled(BLOCK, 2)), (error) => isThinError(error, 'THIN_NO_SPACE'));
  assert.throws(() => pool.changeSpaceSettings({ whenFull: { queueSeconds: 0 } }), (error) => isThinError(error, 'THIN_INVALID'));
  pool.changeSpaceSettings({ lowWater: { percent: 25 }, whenFull: { queueSeconds: 5 } });
  await pool.resizePool({ dataSizeBytes: 48 * BLOCK, metadataSizeBytes: 2 * METADATA_BYTES });
  await volume.write(16 * BLOCK, filled(BLOCK, 2));
  await assert.rejects(pool.resizePool({ dataSizeBytes: 32 * BLOCK }), (error) => isThinError(error, 'THIN_INVALID') && /a pool only grows/.test(error.message));
  const status = pool.status();
  assert.equal(status.dataBlockCount, 48);
  assert.equal(status.metadataBlockCount * 4096, 2 * METADATA_BYTES);
  assert.equal(status.lowWater.setting, '25%');
  pool.changeSpaceSettings({ lowWater: 'default' });
  await pool.close();
  const reopened = await Pool.openOn(reopenCopies(files));
  assert.deepEqual(reopened.status().space.settings, { whenFull: { queueSeconds: 5 } });
  assert.equal(reopened.status().dataBlockCount, 48);
  assert.equal((await readAll(reopened, 'v'))[16 * BLOCK], 2);
  await reopened.close();
});

test('metadata pressure: changes that add metadata stop at the recovery reserve, below the metadata mark new volumes are refused, and remove and discard always run', async () => {
  // The smallest metadata (68 MiB) with its low-water mark off: volumes (two metadata blocks each)
  // until creation is refused at the recovery reserve.
  const { pool } = await memoryPoolWith(64, { metadataLowWater: 'off' });
  const volume = await pool.createVolume('data', { sizeBytes: 64 * BLOCK });
  for (let block = 0; block < 32; block += 2) await volume.write(block * BLOCK, filled(BLOCK, 5));
  await pool.flush();
  let count = 0;
  let refusal: unknown;
  for (; count < 20_000; count += 1) {
    try {
      await pool.createVolume(`v${count}`, { sizeBytes: BLOCK });
    } catch (error) {
      refusal = error;
      break;
    }
    if (count % 500 === 499) await pool.flush();
  }
  assert.ok(isThinError(refusal, 'THIN_NO_METADATA_SPACE') && /kept for remove, discard and resize down/.test(String(refusal)), String(refusal));
  assert.ok(count > 1000, `${count} volumes fit`);
  const status = pool.status();
  assert.equal(status.mode, 'read-write', 'refusing a change leaves the pool read-write');
  assert.equal(status.space.metadata.state, 'full');
  // A write that needs a mapping fails alone with ENOSPC; one into a mapped block needs none.
  await assert.rejects(volume.write(1 * BLOCK, filled(BLOCK, 6)), (error) => isThinError(error, 'THIN_NO_METADATA_SPACE'));
  await volume.write(0, filled(BLOCK, 7));
  await pool.flush();

  // What frees space runs on the reserve: a discard, removes, a resize down.
  await volume.discard(2 * BLOCK, 2 * BLOCK);
  await pool.resizeVolume('data', 48 * BLOCK);
  for (let index = 0; index < 200; index += 1) await pool.removeVolume(`v${index}`);
  await pool.flush();
  // With the default metadata mark (8 MiB here) back, new volumes stay refused while below it...
  pool.changeSpaceSettings({ metadataLowWater: 'default' });
  await assert.rejects(pool.snapshot('data', 'snap'), (error) => isThinError(error, 'THIN_NO_METADATA_SPACE') && /below its low-water mark/.test(error.message));
  await volume.write(2 * BLOCK, filled(BLOCK, 8)); // writes go on
  // ...until enough is freed.
  for (let index = 200; index < 2000; index += 1) await pool.removeVolume(`v${index}`);
  await pool.flush();
  await pool.snapshot('data', 'snap');
  assert.equal(pool.status().space.metadata.state, 'ok');
  assert.deepEqual((await readAll(pool, 'data')).subarray(0, 3 * BLOCK), new Uint8Array([...filled(BLOCK, 7), ...new Uint8Array(BLOCK), ...filled(BLOCK, 8)]));
  await pool.close();
});

test('freed blocks go back to the host once committed (du falls), not while a pinned generation still names them; close finishes the punches', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinbd-space-'));
  try {
    const poolDir = path.join(dir, 'pool');
    const pool = await Pool.create(poolDir, { dataSizeBytes: 256 * BLOCK, blockSizeBytes: BLOCK });
    const dataPath = path.join(poolDir, 'data');
    const allocated = (): number => fs.statSync(dataPath).blocks * 512;
    const volume = await pool.createVolume('v', { sizeBytes: 128 * BLOCK });
    const other = await pool.createVolume('w', { sizeBytes: 64 * BLOCK });
    for (let block = 0; block < 128; block += 1) await volume.write(block * BLOCK, filled(BLOCK, 0x11));
    for (let block = 0; block < 64; block += 1) await other.write(block * BLOCK, filled(BLOCK, 0x22));
    await pool.flush();
    const full = allocated();
    assert.ok(full >= 192 * BLOCK, `the data file backs what was written (${full} bytes)`);

    // A pin taken before the discard holds the punch back as it holds reuse back.
    const pinned = await pool.pinCommitted();
    await volume.discard(0, 64 * BLOCK);
    await pool.rollup();
    await pool.spaceSettled();
    assert.ok(allocated() >= full, 'nothing punched while the pinned generation maps the blocks');
    pinned.release();
    await pool.spaceSettled();
    const afterDiscard = allocated();
    // (The host file system may keep a page of its own for the file's block map.)
    assert.ok(full - afterDiscard >= 63 * BLOCK, `discarded blocks given back after release (${full} -> ${afterDiscard})`);
    assert.equal(pool.status().space.punchedBytes, 64 * BLOCK);

    // Removal, then close: the last commit's frees are punched before close returns.
    await pool.removeVolume('w');
    await pool.close();
    const afterRemove = allocated();
    assert.ok(afterDiscard - afterRemove >= 63 * BLOCK, `removed blocks given back by close (${afterDiscard} -> ${afterRemove})`);

    // The surviving data is intact, the punched blocks are reused, and check is clean.
    const reopened = await Pool.open(poolDir);
    const bytes = await readAll(reopened, 'v');
    assert.ok(bytes.subarray(0, 64 * BLOCK).every((byte) => byte === 0));
    assert.ok(bytes.subarray(64 * BLOCK).every((byte) => byte === 0x11));
    const again = await reopened.createVolume('x', { sizeBytes: 128 * BLOCK });
    for (let block = 0; block < 120; block += 1) await again.write(block * BLOCK + 100, filled(10, 0x33));
    const xs = await readAll(reopened, 'x');
    for (let block = 0; block < 120; block += 1) {
      assert.ok(xs.subarray(block * BLOCK, block * BLOCK + 100).every((byte) => byte === 0), `block ${block} of x reads zeros around the write`);
      assert.ok(xs.subarray(block * BLOCK + 110, (block + 1) * BLOCK).every((byte) => byte === 0));
    }
    await reopened.close();
    assert.deepEqual((await checkPool(poolDir)).problems, []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('metadata grows by itself below its mark up to metadata-max, durably; new volumes are refused only once it cannot grow', async () => {
  const maxBytes = METADATA_BYTES + 8192 * 4096;
  const { pool, files } = await memoryPoolWith(64, { metadataMaxBytes: maxBytes, metadataLowWater: { bytes: 64 * 1024 ** 2 } }, METADATA_BYTES, { metadataMirror: false });
  const events: SpaceEvent[] = [];
  pool.onSpaceEvent((event) => events.push(event));
  let count = 0;
  let refusal: unknown;
  for (; count < 20_000 && refusal === undefined; count += 1) {
    try {
      await pool.createVolume(`v${count}`, { sizeBytes: BLOCK });
    } catch (error) {
      refusal = error;
    }
  }
  assert.ok(isThinError(refusal, 'THIN_NO_METADATA_SPACE') && /below its low-water mark/.test(String(refusal)), String(refusal));
  const status = pool.status();
  assert.equal(status.metadataBlockCount * 4096, maxBytes, 'grown to metadata-max');
  assert.ok(status.space.metadata.grows >= 2);
  assert.ok(events.some((event) => event.kind === 'metadata-grown'));
  assert.ok(events.some((event) => event.kind === 'metadata-low-water'));
  await pool.close();
  const reopened = await Pool.openOn(reopenCopies(files));
  assert.equal(reopened.status().metadataBlockCount * 4096, maxBytes);
  assert.equal(reopened.list().length, count - 1);
  await reopened.close();
  assert.deepEqual((await checkPool(reopenCopies(files))).problems, []);
});

test('mirrored metadata (the default) grows: its second copy moves past the old one in a commit of its own, automatically and by pool resize, and either copy alone serves the grown metadata', async () => {
  // Sparse simulated disks: a moved mirror lies past twice the metadata, which a dense memory file would hold in memory.
  const N = METADATA_BYTES / 4096;
  const machine = new SimMachine({ seed: 15 });
  machine.createDisk('metadata', 0);
  machine.createDisk('data', 0);
  const files = { metadata: machine.disk('metadata'), data: machine.disk('data') };
  const space: SpaceSettings = { metadataMaxBytes: 4 * METADATA_BYTES, metadataLowWater: { bytes: 2 * METADATA_BYTES } };
  const pool = await Pool.createOn(files, { dataSizeBytes: 64 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BYTES, space });
  const events: SpaceEvent[] = [];
  pool.onSpaceEvent((event) => events.push(event));
  assert.equal(pool.status().space.metadata.canGrow, true, 'mirrored metadata reports that it can grow');
  assert.equal(files.metadata.sizeBytes(), 2 * METADATA_BYTES, 'a new pool: the mirror at half the file');

  // Automatic: below its mark, a new volume grows the metadata past where its mirror began.
  const mirrorAt = (): number => files.metadata.sizeBytes() / 2 / 4096;
  const volume = await pool.createVolume('v', { sizeBytes: 64 * BLOCK });
  await pool.spaceSettled();
  const grown = pool.status().metadataBlockCount;
  assert.ok(grown > N, `the metadata grew (${grown} blocks)`);
  assert.ok(events.some((event) => event.kind === 'metadata-grown'), events.map((event) => event.kind).join(', '));
  assert.ok(mirrorAt() >= grown && mirrorAt() >= 2 * N, `the mirror moved past its old copy and the grown count, to half the file (${mirrorAt()})`);
  for (let block = 0; block < 16; block += 1) await volume.write(block * BLOCK, filled(BLOCK, 1 + block));
  await pool.flush();

  // Explicit: a resize past the moved mirror moves it once more.
  pool.changeSpaceSettings({ metadataLowWater: 'default' });
  await pool.spaceSettled();
  const before = mirrorAt();
  const countBefore = pool.status().metadataBlockCount;
  const target = before + 16;
  await pool.resizePool({ metadataSizeBytes: target * 4096 });
  const status = pool.status();
  assert.equal(status.metadataBlockCount, target);
  assert.ok(countBefore <= before, 'the grown metadata still ended before the mirror');
  assert.equal(mirrorAt(), 2 * before, 'the mirror moved to twice its place, at half the file');
  assert.equal(status.health.metadata.copies, 2);
  for (let block = 16; block < 32; block += 1) await volume.write(block * BLOCK, filled(BLOCK, 1 + block));
  await pool.close();

  const images = machine.currentImages();
  const clean = new SimMachine({ seed: 16, images });
  assert.deepEqual((await checkPool({ metadata: clean.disk('metadata'), data: clean.disk('data') })).problems, []);
  // Every block of the first copy destroyed: the pool opens from the moved mirror and reads every byte.
  const damaged = new SimMachine({ seed: 17, images });
  for (let block = 0; block < target; block += 1) damaged.disk('metadata').corrupt(block * 4096, new Uint8Array(4096).fill(0x5a));
  const reopened = await Pool.openOn({ metadata: damaged.disk('metadata'), data: damaged.disk('data') });
  assert.equal(reopened.status().metadataBlockCount, target);
  const bytes = await readAll(reopened, 'v');
  for (let block = 0; block < 32; block += 1) assert.equal(bytes[block * BLOCK + 7], 1 + block, `block ${block}`);
  await reopened.close();
});

test('settings of the wrong shape (as a control socket client might send) are refused by name, and nothing changes', async () => {
  const { pool } = await memoryPoolWith(16, {});
  const bad: unknown[] = [
    { lowWater: 'abc' },
    { lowWater: { percent: 0 } },
    { whenFull: 'queue' },
    { whenFull: { queueSeconds: '5' } },
    { autoGrow: 'yes' },
    { dataMaxBytes: -1 },
    { noSuchSetting: 1 },
    null,
  ];
  for (const change of bad) {
    assert.throws(() => pool.changeSpaceSettings(change as never), (error) => isThinError(error, 'THIN_INVALID'), JSON.stringify(change));
  }
  assert.deepEqual(pool.status().space.settings, {});
  await assert.rejects(pool.resizePool({ dataSizeBytes: '1G' as never }), (error) => isThinError(error, 'THIN_INVALID'));
  await assert.rejects(pool.resizePool({ metadataSizeBytes: 64 * 1024 ** 3 }), (error) => isThinError(error, 'THIN_INVALID') && /largest metadata/.test(error.message));
  assert.equal(pool.status().dataBlockCount, 16);
  await pool.close();
});
