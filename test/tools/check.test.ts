import { test } from 'node:test';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { BTREE_BLOCK_TYPES, Block, BlockType, SpaceMap, TransactionManager, TreeWalker, nodeCapacity, sealBlock, type ValueCodec } from '../../src/pdata/index.ts';
import {
  DEVICE_TREE_KIND,
  DEVICE_VALUE_SIZE_BYTES,
  decodePoolPayload,
  encodePoolPayload,
  packDeviceValue,
  unpackDeviceValue,
  type DeviceValue,
} from '../../src/pool/codecs.ts';
import { extentReadCodec, writtenBy } from '../../src/pool/trees.ts';
import { Pool } from '../../src/pool/pool.ts';
import type { Extent } from '../../src/pool/ranges.ts';
import { checkPool, type CheckReport } from '../../src/tools/check.ts';
import { ReferenceRuns } from '../../src/tools/reference-runs.ts';
import { coverageRuns } from '../../src/pool/ranges.ts';
import fc from 'fast-check';
import { BLOCK, filled, memoryPool } from '../pool/helpers.ts';

type Files = { metadata: MemoryBlockFile; data: MemoryBlockFile };

/** A used pool: volumes a and b (b a snapshot of a, then written), c removed; closed. */
async function usedPool(): Promise<Files> {
  const { pool, files } = await memoryPool(64);
  const a = await pool.createVolume('a', { sizeBytes: 8 * BLOCK });
  await a.write(0, filled(5 * BLOCK, 1));
  const b = await pool.snapshot('a', 'b');
  await b.write(BLOCK, filled(100, 2));
  await a.write(6 * BLOCK, filled(BLOCK, 3));
  const c = await pool.createVolume('c', { sizeBytes: 4 * BLOCK });
  await c.write(0, filled(2 * BLOCK, 4));
  await pool.flush();
  await pool.removeVolume('c');
  await a.discard(2 * BLOCK, BLOCK);
  await pool.close();
  // Closing closed the files; the checks work on (writable) copies of their bytes.
  return { metadata: MemoryBlockFile.from(files.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(files.data.snapshot(), 'data') };
}

const deviceCodec: ValueCodec<DeviceValue> = { treeKind: DEVICE_TREE_KIND, sizeBytes: DEVICE_VALUE_SIZE_BYTES, pack: packDeviceValue, unpack: unpackDeviceValue };
const extentCodec: ValueCodec<Extent> = extentReadCodec(2 ** 40);

interface Layout {
  deviceLeaf: number;
  devices: Array<{ id: number; value: DeviceValue; index: number }>;
  mappingLeaves: Map<number, number>;
  extents: Array<{ key: number; extent: Extent }>;
}

/** Finds the live blocks of a pool (all trees here are one leaf deep). */
async function layout(files: Files): Promise<Layout> {
  const { tm, payload } = await TransactionManager.open(files.metadata, { readOnly: true });
  const fields = decodePoolPayload(payload, tm.metadataBlockCount);
  const walker = new TreeWalker(tm);
  const devices: Layout['devices'] = [];
  walker.walk(fields.deviceTreeRoot, deviceCodec, { leaf: (id, value) => devices.push({ id, value, index: devices.length }) });
  const mappingLeaves = new Map<number, number>();
  const extents: Layout['extents'] = [];
  for (const device of devices) {
    walker.walk(device.value.mappingRoot, extentCodec, {
      leaf: (key, extent, leaf) => {
        mappingLeaves.set(device.id, leaf);
        extents.push({ key, extent });
      },
    });
  }
  return { deviceLeaf: fields.deviceTreeRoot, devices, mappingLeaves, extents };
}

/**
 * Writes bytes at a metadata offset in both copies of the mirrored metadata (docs/format.md
 * "Metadata mirror"): damage the mirror cannot mend, which these tests are about. One bad copy
 * is served from the other (test/pool/failing-disks.test.ts, and below).
 */
function writeBothCopies(files: Files, bytes: Uint8Array, offsetBytes: number): void {
  files.metadata.writeSync(bytes, offsetBytes);
  files.metadata.writeSync(bytes, METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES + offsetBytes);
}

/** Changes a metadata block and seals it again, as a buggy or malicious writer would. */
function patch(files: Files, blockNr: number, change: (view: DataView) => void): void {
  const bytes = new Uint8Array(4096);
  files.metadata.readSync(bytes, blockNr * 4096);
  const block = new Block(blockNr, bytes);
  change(block.view);
  sealBlock(block, block.type, block.transactionId, block.view.getBigUint64(24, true));
  writeBothCopies(files, bytes, blockNr * 4096);
}

/** Opens the metadata for writing with pdata alone, changes it, and commits with the same pool payload (roots updated). */
async function rewrite(files: Files, change: (tm: TransactionManager, dataSpace: SpaceMap) => void): Promise<void> {
  const { tm, payload } = await TransactionManager.open(files.metadata);
  const fields = decodePoolPayload(payload, tm.metadataBlockCount);
  const dataSpace = new SpaceMap(tm, fields.dataSpaceMapRoot, fields.dataBlockCount);
  change(tm, dataSpace);
  await tm.commit(
    encodePoolPayload({ ...fields, dataSpaceMapRoot: dataSpace.root, dataSpaceMapRootTransactionId: writtenBy(tm, dataSpace.root, BTREE_BLOCK_TYPES) }),
  );
}

function describe(report: CheckReport): string {
  return JSON.stringify(report.problems, null, 1);
}

test('a used pool checks clean and its figures add up', async () => {
  const files = await usedPool();
  const report = await checkPool(files);
  assert.ok(report.ok, describe(report));
  assert.equal(report.stats.volumes, 2);
  assert.equal(report.stats.mappedBlocks, 5 + 5);
  assert.equal(report.stats.dataBlocksReferenced, report.stats.dataBlocksUsed);
});

test('check reports its progress in mapped blocks walked, never past the total the device tree records', async () => {
  const files = await usedPool();
  const progress: Array<[number, number]> = [];
  const report = await checkPool(files, { onProgress: (done, total) => progress.push([done, total]) });
  assert.ok(report.ok, describe(report));
  assert.equal(progress.length, report.stats.volumes, 'one report per volume at least');
  assert.ok(progress.every(([done, total]) => total === report.stats.mappedBlocks && done <= total), JSON.stringify(progress));
  assert.ok(progress.every(([done], index) => index === 0 || done >= progress[index - 1]![0]), 'progress never goes back');
});

test('a flipped bit in a mapping leaf is found and named by its block', async () => {
  const files = await usedPool();
  const { mappingLeaves } = await layout(files);
  const leaf = [...mappingLeaves.values()][0]!;
  const bytes = new Uint8Array(1);
  files.metadata.readSync(bytes, leaf * 4096 + 100);
  writeBothCopies(files, new Uint8Array([bytes[0]! ^ 0x10]), leaf * 4096 + 100);
  const report = await checkPool(files);
  assert.equal(report.ok, false);
  assert.ok(report.problems.some((p) => p.where.includes(`metadata block ${leaf}`) && /checksum/.test(p.message)), describe(report));
});

test('a data block counted in the space map but mapped by no volume is reported as leaked', async () => {
  const files = await usedPool();
  await rewrite(files, (_tm, dataSpace) => dataSpace.inc(60));
  const report = await checkPool(files);
  assert.ok(report.problems.some((p) => p.where === 'data blocks [60, 61)' && /leaked/.test(p.message)), describe(report));
});

test('a mapped data block that the space map calls free is reported', async () => {
  const files = await usedPool();
  const { extents } = await layout(files);
  const block = extents[0]!.extent.dataBlock;
  await rewrite(files, (_tm, dataSpace) => {
    while (dataSpace.count(block) > 0) dataSpace.dec(block);
  });
  const report = await checkPool(files);
  assert.ok(report.problems.some((p) => p.where === `data blocks [${block}, ${block + 1})` && /free/.test(p.message)), describe(report));
});

test('a metadata block allocated but referenced by nothing is reported as leaked', async () => {
  const files = await usedPool();
  let leaked = -1;
  await rewrite(files, (tm) => {
    leaked = tm.allocate(BlockType.details).blockNr;
  });
  const report = await checkPool(files);
  assert.ok(report.problems.some((p) => p.where === `metadata block ${leaked}` && /leaked/.test(p.message)), describe(report));
});

test('two volumes with one name are reported, and the pool refuses to open', async () => {
  const files = await usedPool();
  const { devices } = await layout(files);
  const b = devices.find((d) => d.id === 2)!;
  patch(files, b.value.detailsBlock, (view) => {
    const lengthBytes = view.getUint32(32, true);
    const text = new TextDecoder().decode(new Uint8Array(view.buffer, view.byteOffset + 36, lengthBytes)).replace('"name":"b"', '"name":"a"');
    new Uint8Array(view.buffer, view.byteOffset + 36, lengthBytes).set(new TextEncoder().encode(text));
  });
  const report = await checkPool(files);
  assert.ok(report.problems.some((p) => p.where.startsWith('volume a (id 2)') && /also used/.test(p.message)), describe(report));
  await assert.rejects(Pool.openOn(files), /named a/);
});

test('mappings past the end of a volume and a wrong mapped count are reported', async () => {
  const files = await usedPool();
  const { deviceLeaf, devices } = await layout(files);
  const a = devices.find((d) => d.id === 1)!;
  const valuesOffset = 48 + 8 * nodeCapacity(DEVICE_VALUE_SIZE_BYTES);
  patch(files, deviceLeaf, (view) => {
    const offset = valuesOffset + a.index * DEVICE_VALUE_SIZE_BYTES;
    view.setBigUint64(offset + 16, BigInt(2 * BLOCK), true); // sizeBytes: 2 blocks, but 7 are mapped
    view.setBigUint64(offset + 24, 99n, true); // mappedBlockCount
  });
  const report = await checkPool(files);
  assert.ok(report.problems.some((p) => p.where.startsWith('volume a (id 1), virtual blocks [2, 7)') && /past the end/.test(p.message)), describe(report));
  assert.ok(report.problems.some((p) => p.where === 'volume a (id 1)' && /says 99/.test(p.message)), describe(report));
});

test('the check goes on after a corrupt node and reports the other problems too', async () => {
  const files = await usedPool();
  const { mappingLeaves, devices } = await layout(files);
  const leafOfA = mappingLeaves.get(1)!;
  const b = devices.find((d) => d.id === 2)!;
  writeBothCopies(files, new Uint8Array(64).fill(0xab), leafOfA * 4096 + 200);
  writeBothCopies(files, new Uint8Array(8).fill(0xcd), b.value.detailsBlock * 4096 + 40);
  const report = await checkPool(files);
  assert.ok(report.problems.some((p) => p.where.includes(`metadata block ${leafOfA}`)), describe(report));
  assert.ok(report.problems.some((p) => p.where.includes(`details block ${b.value.detailsBlock}`)), describe(report));
  // Blocks only the corrupt leaf referred to are not called leaks: their counts cannot be judged.
  assert.ok(!report.problems.some((p) => /leaked/.test(p.message)), describe(report));
});

test('checking a pool directory writes nothing to its files', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'thinbd-check-'));
  try {
    const pool = await Pool.create(path.join(dir, 'pool'), { dataSizeBytes: 64 * BLOCK, blockSizeBytes: BLOCK, metadataSizeBytes: METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES });
    const v = await pool.createVolume('v', { sizeBytes: 4 * BLOCK });
    await v.write(10, filled(3 * BLOCK, 9));
    await pool.snapshot('v', 's');
    await pool.close();
    const hash = (name: string): string => createHash('sha256').update(readFileSync(path.join(dir, 'pool', name))).digest('hex');
    const before = [hash('metadata'), hash('data')];
    const report = await checkPool(path.join(dir, 'pool'));
    assert.ok(report.ok, describe(report));
    assert.deepEqual([hash('metadata'), hash('data')], before);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a newest generation with damaged trees is not served silently: the pool opens needing a check and check reports it', async () => {
  const { pool, files: live } = await memoryPool(64);
  const v = await pool.createVolume('v', { sizeBytes: 4 * BLOCK });
  await v.write(0, filled(BLOCK, 1));
  await pool.flush();
  await v.write(BLOCK, filled(BLOCK, 2));
  await pool.snapshot('v', 's');
  await pool.close();
  const files = { metadata: MemoryBlockFile.from(live.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(live.data.snapshot(), 'data') };
  const { deviceLeaf } = await layout(files);
  writeBothCopies(files, new Uint8Array(16).fill(0x5a), deviceLeaf * 4096 + 300);
  const forCheck = { metadata: MemoryBlockFile.from(files.metadata.snapshot(), 'metadata'), data: MemoryBlockFile.from(files.data.snapshot(), 'data') };
  const reopened = await Pool.openOn(files);
  const status = reopened.status();
  assert.equal(status.mode, 'needs-check');
  assert.match(status.modeReason ?? '', /older than generation/);
  await reopened.close();
  const report = await checkPool(forCheck);
  assert.ok(report.problems.some((p) => p.where.startsWith('superblock generation')), describe(report));
});

test('a mapping root that is not the block its device entry recorded (a lost write) is detected by open and by check', async () => {
  const files = await usedPool();
  const { deviceLeaf, devices } = await layout(files);
  const a = devices.find((d) => d.id === 1)!;
  assert.ok((a.value.mappingRootTransactionId ?? 0) > 0, 'the pool records the transaction of every mapping root');
  const valuesOffset = 48 + 8 * nodeCapacity(DEVICE_VALUE_SIZE_BYTES);
  patch(files, deviceLeaf, (view) => {
    view.setBigUint64(valuesOffset + a.index * DEVICE_VALUE_SIZE_BYTES + 56, BigInt(a.value.mappingRootTransactionId! + 1), true);
  });
  const forOpen = { metadata: MemoryBlockFile.from(files.metadata.snapshot()), data: MemoryBlockFile.from(files.data.snapshot()) };
  await assert.rejects(Pool.openOn(forOpen), /stale block/);
  const report = await checkPool(files);
  assert.ok(report.problems.some((p) => p.where === `volume id 1, mapping root (metadata block ${a.value.mappingRoot})` && /stale/.test(p.message)), describe(report));
});

test("check's data reference sweep gives the same runs as the pool's coverage sweep, for any references", () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 1, max: 20 })), { maxLength: 300 }), (ranges) => {
      const expected = coverageRuns(ranges.map(([begin, lengthBlocks]) => ({ begin, end: begin + lengthBlocks, count: 1 })));
      // Sorted ranges, a count per block, and a count per block for part of them (the rest sorted).
      for (const dataBlockCount of [0, 300, 120]) {
        const runs = new ReferenceRuns(dataBlockCount);
        for (const [begin, lengthBlocks] of ranges) runs.add(begin, begin + lengthBlocks);
        assert.deepEqual(runs.coverage(), expected, `counted with ${dataBlockCount} dense blocks`);
        assert.deepEqual(runs.coverage(), expected, `counted again with ${dataBlockCount} dense blocks`);
      }
    }),
    { numRuns: 500 },
  );
});

test('long runs of one count, counted per block, sweep to the runs a count per range gives, wherever a run ends', () => {
  // Runs far longer than the sweep's byte-by-byte stretch (64) and its chunk (4096): ends inside a
  // chunk, on a chunk's edge, one block after or before it, and at the end of the counted blocks.
  const dataBlockCount = 20_000;
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(dataBlockCount - 1), fc.integer({ min: 1, max: 9000 })), { minLength: 1, maxLength: 6 }), (spans) => {
      const ranges: Array<[number, number]> = [[0, dataBlockCount], [64 + 1, 4096], [70, 4096 + 64 + 1]];
      for (const [begin, lengthBlocks] of spans) ranges.push([begin, Math.min(dataBlockCount, begin + lengthBlocks)]);
      const expected = coverageRuns(ranges.map(([begin, end]) => ({ begin, end, count: 1 })));
      const runs = new ReferenceRuns(dataBlockCount);
      for (const [begin, end] of ranges) runs.add(begin, end);
      assert.deepEqual(runs.coverage(), expected);
    }),
    { numRuns: 200 },
  );
});

test('blocks referenced once each, counted per block, sweep to the runs a count per range gives, wherever a run begins or ends', () => {
  // No block twice: the sweep reads the bits, a word of 32 blocks at a time where it can.
  const dataBlockCount = 5000;
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(80), fc.integer({ min: 1, max: 300 })), { minLength: 1, maxLength: 40 }), (steps) => {
      const ranges: Array<[number, number]> = [];
      let at = 0;
      for (const [gap, lengthBlocks] of steps) {
        const begin = at + gap;
        const end = Math.min(dataBlockCount, begin + lengthBlocks);
        if (begin >= end) break;
        ranges.push([begin, end]);
        at = end;
      }
      const expected = coverageRuns(ranges.map(([begin, end]) => ({ begin, end, count: 1 })));
      const runs = new ReferenceRuns(dataBlockCount);
      // In a scattered order, one block at a time for some.
      for (const [begin, end] of [...ranges].reverse()) {
        if ((end - begin) % 3 === 0) for (let blockNr = end - 1; blockNr >= begin; blockNr--) runs.add(blockNr, blockNr + 1);
        else runs.add(begin, end);
      }
      assert.deepEqual(runs.coverage(), expected);
      assert.deepEqual(runs.coverage(), expected, 'counted again');
    }),
    { numRuns: 300 },
  );
});

test('a data block referenced more than 254 times is counted in full when counted per block', () => {
  const runs = new ReferenceRuns(16);
  for (let index = 0; index < 600; index++) runs.add(5, 7);
  runs.add(6, 8);
  assert.deepEqual(runs.coverage(), [
    { begin: 5, end: 6, count: 600 },
    { begin: 6, end: 7, count: 601 },
    { begin: 7, end: 8, count: 1 },
  ]);
});

test('one bad copy of a mirrored node loses nothing: check passes and warns, naming the block and the copy', async () => {
  const files = await usedPool();
  const opened = await TransactionManager.open(MemoryBlockFile.from(files.metadata.snapshot()), { readOnly: true });
  const payload = decodePoolPayload(opened.payload, opened.tm.metadataBlockCount);
  const root = payload.deviceTreeRoot;
  // Only the first copy is damaged.
  files.metadata.writeSync(new Uint8Array(16).fill(0x5a), root * 4096 + 300);
  const report = await checkPool(files);
  assert.deepEqual(report.problems, []);
  assert.ok(report.ok);
  const warning = report.warnings.find((entry) => entry.where.startsWith(`metadata block ${root}, copy 0`));
  assert.ok(warning, `a warning names block ${root}, copy 0: ${JSON.stringify(report.warnings)}`);
  assert.match(warning.message, /checksum/);
});

test('a damaged or stale second copy of a node whose first copy is good is named too: no read reaches it, so only the comparison shows the redundancy gone', async () => {
  const files = await usedPool();
  const opened = await TransactionManager.open(MemoryBlockFile.from(files.metadata.snapshot()), { readOnly: true });
  const payload = decodePoolPayload(opened.payload, opened.tm.metadataBlockCount);
  const mirrorOffsetBytes = opened.tm.mirrorOffsetBlocks * 4096;
  assert.ok(mirrorOffsetBytes > 0, 'the pool is mirrored');
  const root = payload.deviceTreeRoot;
  const spaceRoot = payload.dataSpaceMapRoot;
  // The device tree root's second copy rots; the data space map root's second copy is replaced by
  // a valid block of another transaction (a lost write of that copy).
  files.metadata.writeSync(new Uint8Array(16).fill(0x5a), mirrorOffsetBytes + root * 4096 + 300);
  const older = new Uint8Array(4096);
  files.metadata.readSync(older, spaceRoot * 4096);
  const block = new Block(spaceRoot, older);
  sealBlock(block, block.type, block.transactionId - 1, block.view.getBigUint64(24, true));
  files.metadata.writeSync(older, mirrorOffsetBytes + spaceRoot * 4096);
  const report = await checkPool(files);
  assert.deepEqual(report.problems, []);
  const rotten = report.warnings.find((entry) => entry.where === `metadata block ${root}, copy 1 (byte ${mirrorOffsetBytes + root * 4096} of the metadata file)`);
  assert.ok(rotten, JSON.stringify(report.warnings));
  assert.equal(rotten.message, 'checksum mismatch; copy 0 is the one read (`thinbd scrub` rewrites this one from it)');
  const stale = report.warnings.find((entry) => entry.where.startsWith(`metadata block ${spaceRoot}, copy 1`));
  assert.ok(stale, JSON.stringify(report.warnings));
  assert.match(stale.message, /^a valid block of transaction \d+ where copy 0 holds transaction \d+; copy 0 is the one read/);
  // A pool whose copies agree has no such warning.
  const clean = await checkPool(await usedPool());
  assert.deepEqual(clean.warnings.filter((entry) => /copy 1/.test(entry.where)), []);
});

test('a node bad in both copies is a problem, never a warning that the other copy is good; a stale superblock place is reported as not yet rewritten', async () => {
  const files = await usedPool();
  const opened = await TransactionManager.open(MemoryBlockFile.from(files.metadata.snapshot()), { readOnly: true });
  const payload = decodePoolPayload(opened.payload, opened.tm.metadataBlockCount);
  const root = payload.deviceTreeRoot;
  const mirrorOffsetBlocks = opened.tm.mirrorOffsetBlocks;
  assert.ok(mirrorOffsetBlocks > 0, 'the pool is mirrored');
  for (const blockNr of [root, mirrorOffsetBlocks + root]) files.metadata.writeSync(new Uint8Array(16).fill(0x5a), blockNr * 4096 + 300);
  // The first place of superblock copy 0 too: the second place stands for it.
  files.metadata.writeSync(new Uint8Array(16).fill(0x5a), 300);
  const before = files.metadata.snapshot();
  const report = await checkPool(files);
  assert.ok(!report.ok);
  assert.ok(report.problems.some((problem) => /no copy is good/.test(problem.message)), JSON.stringify(report.problems));
  const contradicting = report.warnings.filter((entry) => entry.where.startsWith(`metadata block ${root},`));
  assert.deepEqual(contradicting, [], 'no copy of the block is good, so no warning says the other one is');
  const superblock = report.warnings.find((entry) => entry.where.startsWith('superblock copy 0'));
  assert.ok(superblock, JSON.stringify(report.warnings));
  assert.match(superblock.message, /to be rewritten from the newest place by a read-write open or scrub \(mirror place 0: checksum mismatch\)/);
  assert.deepEqual(files.metadata.snapshot(), before, 'check rewrote nothing');
});

test('a mirrored metadata file cut short before its second copy checks clean with a warning that says so; a read-write open builds the mirror again', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'thinbd-check-mirror-cut-'));
  try {
    const created = await Pool.create(path.join(dir, 'pool'), { dataSizeBytes: 16 * BLOCK, blockSizeBytes: BLOCK, commitIntervalMs: 0 });
    const volume = await created.createVolume('v', { sizeBytes: 4 * BLOCK });
    await volume.write(0, filled(BLOCK, 7));
    await created.close();
    const metadata = path.join(dir, 'pool', 'metadata');
    const fullBytes = statSync(metadata).size;
    truncateSync(metadata, fullBytes / 2); // the first copy only
    const mirrorWarning = (report: CheckReport) => report.warnings.filter((warning) => warning.where === 'metadata mirror');
    const cut = await checkPool(path.join(dir, 'pool'));
    assert.equal(cut.ok, true, JSON.stringify(cut.problems));
    assert.equal(mirrorWarning(cut).length, 1, JSON.stringify(cut.warnings));
    assert.match(mirrorWarning(cut)[0]!.message, new RegExp(`^the superblock names a second copy of the metadata at block ${fullBytes / 2 / METADATA_BLOCK_SIZE_BYTES}, but the file \\(${fullBytes / 2} bytes\\) ends before it: one copy is all there is`));
    await (await Pool.open(path.join(dir, 'pool'), { commitIntervalMs: 0 })).close();
    assert.equal(statSync(metadata).size, fullBytes, 'the open grew the file for the mirror');
    const rebuilt = await checkPool(path.join(dir, 'pool'));
    assert.deepEqual(mirrorWarning(rebuilt), []);
    assert.equal(rebuilt.ok, true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
