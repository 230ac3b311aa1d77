// Power cuts on failing disks (docs/format.md "Metadata mirror", "Bad ranges"; docs/internals.md
// decision 12). Each campaign seed takes a workload of pool-crash.test.ts's kind and, before it
// runs, gives the disks grown defects that stay over every crash (SimDisk dead sectors: reads and
// writes fail with EIO for ever):
//   - data: whole free data blocks, so any write there is refused and moved to another block;
//   - metadata: runs of 1..8 sectors of either copy of metadata blocks in use or soon used
//     (superblock copies, delta-log slots, tree nodes), never both copies of one block;
// and, in most campaigns, for the workload's run only, every data block in use refuses writes
// (in-place writes are remapped: new block, old bytes around the write, durable before the write
// is acknowledged, usually by one log record carrying the write's bytes: docs/format.md F-LOG-9;
// crash points fall between the new block's write, the record and a later flush's data sync, and
// recovery rebuilds the block from the old one and those bytes).
// Then every crash point is recovered in several crash images, on the same failing disks, and
// the recovered pool must open, hold every acknowledged write and nothing never written
// (pool-model.ts), check clean, map no volume block onto a dead data block, and stay usable.
//
// Replay a failure: THINBD_SEED=S node --import tsx --test test/sim/bad-sectors.test.ts
// (add THINBD_CRASH_POINT=K THINBD_VARIANT=V for the single state). A seed that found a bug goes
// into regressions.json ("bad-sectors"), which runs first.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { METADATA_BLOCK_SIZE_BYTES, REMAP_SPARE_BLOCKS_MAX, SUPERBLOCK_BLOCK_NRS } from '../../src/constants.ts';
import { Pool } from '../../src/pool/pool.ts';
import { Rng } from './rng.ts';
import { SECTOR_SIZE_BYTES, SimMachine, bytesEqual } from './sim-disk.ts';
import { campaignTestSeeds, runCampaigns, runCrashCampaign, type CrashCampaignResult } from './crash-harness.ts';
import { describeOp, renderCache, runWorkload, verifyRecoveredPool, writeBytes } from './pool-model.ts';
import { checkSimPool } from './pool-check.ts';
import {
  BLOCK_SIZE_BYTES,
  BLOCK_SIZE_SECTORS,
  DATA_BLOCK_COUNT,
  METADATA_SIZE_BYTES,
  makeBases,
  poolFiles,
  simNow,
  workloadOf,
  type Base,
} from './pool-bases.ts';

const OPS_MAX = 3;
const VARIANTS_PER_POINT = 2;
const CAMPAIGN_COUNT = Number(process.env['THINBD_CAMPAIGNS'] ?? 12);
const ROOT_SEED = Number(process.env['THINBD_ROOT_SEED'] ?? 20261206);
/** The issue's floor: bad sectors per run, across data and metadata. */
const BAD_SECTORS_MIN = 500;
const SECTORS_PER_METADATA_BLOCK = METADATA_BLOCK_SIZE_BYTES / SECTOR_SIZE_BYTES;
const MIRROR_OFFSET_SECTORS = METADATA_SIZE_BYTES / SECTOR_SIZE_BYTES;
/** Metadata blocks the small pools use or will use soon: the superblock copies, the log ring, the first tree nodes. */
const METADATA_CANDIDATES = [...SUPERBLOCK_BLOCK_NRS, ...Array.from({ length: 160 }, (_, index) => 1 + index)];

interface Defects {
  deadDataBlocks: number[];
  metadataRanges: Array<{ beginSector: number; sectorCount: number }>;
  /** Data blocks in use that refuse writes while the workload runs (not after a crash): in-place writes there are remapped. */
  writeRefusingBlocks: number[];
  sectors: { data: number; metadata: number };
}

/** The data blocks a base's volumes map. */
async function usedDataBlocks(base: Base): Promise<Set<number>> {
  const machine = new SimMachine({ seed: 1, images: base.images });
  const pool = await Pool.openOn(poolFiles(machine), { readOnly: true });
  const used = new Set<number>();
  for (const info of pool.list()) {
    for (const run of pool.volume(info.name).mappedRuns()) for (let block = run.dataBlock; block < run.dataBlock + run.lengthBlocks; block++) used.add(block);
  }
  await pool.close();
  return used;
}

function defectsOf(seed: number, used: ReadonlySet<number>): Defects {
  const rng = new Rng(seed).derive(2);
  const free = Array.from({ length: DATA_BLOCK_COUNT }, (_, block) => block).filter((block) => !used.has(block));
  const deadDataBlocks: number[] = [];
  for (let count = rng.range(1, 3); deadDataBlocks.length < count; ) {
    const block = rng.pick(free);
    if (!deadDataBlocks.includes(block)) deadDataBlocks.push(block);
  }
  const metadataRanges: Defects['metadataRanges'] = [];
  const blocksTaken = new Set<number>();
  for (let count = rng.range(3, 7); metadataRanges.length < count; ) {
    const blockNr = rng.pick(METADATA_CANDIDATES);
    if (blocksTaken.has(blockNr)) continue;
    blocksTaken.add(blockNr);
    const copyOffset = rng.chance(0.5) ? 0 : MIRROR_OFFSET_SECTORS;
    const first = rng.int(SECTORS_PER_METADATA_BLOCK);
    const sectorCount = rng.range(1, SECTORS_PER_METADATA_BLOCK - first + 1);
    metadataRanges.push({ beginSector: copyOffset + blockNr * SECTORS_PER_METADATA_BLOCK + first, sectorCount });
  }
  const usedList = [...used].sort((a, b) => a - b);
  const writeRefusingBlocks = rng.chance(0.7) ? usedList : [];
  return {
    deadDataBlocks,
    metadataRanges,
    writeRefusingBlocks,
    sectors: { data: deadDataBlocks.length * BLOCK_SIZE_SECTORS, metadata: metadataRanges.reduce((total, range) => total + range.sectorCount, 0) },
  };
}

function applyDefects(machine: SimMachine, defects: Defects): void {
  for (const block of defects.deadDataBlocks) machine.disk('data').addDeadSectors(block * BLOCK_SIZE_SECTORS, BLOCK_SIZE_SECTORS);
  for (const range of defects.metadataRanges) machine.disk('metadata').addDeadSectors(range.beginSector, range.sectorCount);
}

async function runCampaign(
  seed: number,
  bases: readonly Base[],
  usedByBase: ReadonlyMap<Base, Set<number>>,
): Promise<CrashCampaignResult & { compoundStates: number; sectors: Defects['sectors']; remaps: number; carrying: number; syncMarks: number; sparesWritten: number; sparesTaken: number }> {
  const { base, record } = workloadOf(seed, bases, OPS_MAX);
  const defects = defectsOf(seed, usedByBase.get(base)!);
  const renders = renderCache(record);
  let remaps = 0;
  let carrying = 0;
  let syncMarks = 0;
  let sparesWritten = 0;
  let sparesTaken = 0;
  const description =
    `${base.name}: ${record.ops.map(describeOp).join('; ')}; dead data blocks ${defects.deadDataBlocks.join(', ')}; ` +
    `dead metadata sectors ${defects.metadataRanges.map((range) => `${range.beginSector}+${range.sectorCount}`).join(', ')}; ` +
    `blocks refusing writes ${defects.writeRefusingBlocks.join(', ') || 'none'}`;
  const result = await runCrashCampaign({
    seed,
    name: description,
    images: base.images,
    budget: VARIANTS_PER_POINT,
    setup: async (machine) => applyDefects(machine, defects),
    workload: async (machine) => {
      for (const block of defects.writeRefusingBlocks) {
        const beginBytes = block * BLOCK_SIZE_BYTES;
        machine.disk('data').failWrites({ beginBytes, endBytes: beginBytes + BLOCK_SIZE_BYTES }, { persistent: true });
      }
      const pool = await Pool.openOn(poolFiles(machine), { now: simNow, remapSpareBlocks: REMAP_SPARE_BLOCKS_MAX });
      await runWorkload(machine, pool, record.ops);
      // A refill the last remap started is part of the trace: crash points fall inside it too.
      await pool.remapSparesSettled();
      const health = pool.status().health.data;
      remaps = health.remaps.remaps;
      // Remaps made durable by a record carrying their bytes, and the sync marks after them (docs/format.md F-LOG-9).
      carrying = pool.status().counters.logRecordsCarrying;
      syncMarks = pool.status().counters.logSyncMarks;
      // The spare area (src/pool/spare-area.ts): free blocks written ahead after the first refused write, crashed in like any write.
      sparesWritten = health.spareArea.written;
      sparesTaken = health.spareArea.taken;
    },
    recover: async (machine, marks) => {
      const files = poolFiles(machine);
      const pool = await Pool.openOn(files, { remapSpareBlocks: REMAP_SPARE_BLOCKS_MAX });
      try {
        const contents = await verifyRecoveredPool(pool, record, marks, renders);
        for (const info of pool.list()) {
          for (const run of pool.volume(info.name).mappedRuns()) {
            for (const block of defects.deadDataBlocks) {
              assert.ok(block < run.dataBlock || block >= run.dataBlock + run.lengthBlocks, `volume ${info.name} maps dead data block ${block}`);
            }
          }
        }
        const { problems } = await checkSimPool(files);
        assert.deepEqual(problems, [], 'checkPool reports problems after recovery');
        // Still usable on the failing disks: a new volume written and flushed, the others unchanged.
        const probe = await pool.createVolume('after-crash', { sizeBytes: 2 * BLOCK_SIZE_BYTES });
        await probe.write(0, writeBytes({ writeId: 999_999, beginSector: 0, lengthSectors: 2 * BLOCK_SIZE_SECTORS }));
        await pool.flush();
        for (const [name, before] of contents) {
          const after = new Uint8Array(before.length);
          await pool.volume(name).read(0, after);
          assert.ok(bytesEqual(before, after), `volume ${name} changed when a new volume was written after recovery`);
        }
        const probeRuns = pool.volume('after-crash').mappedRuns();
        for (const run of probeRuns) {
          for (const block of defects.deadDataBlocks) assert.ok(block < run.dataBlock || block >= run.dataBlock + run.lengthBlocks, `the probe landed on dead data block ${block}`);
        }
      } finally {
        await pool.close();
      }
    },
  });
  return { ...result, compoundStates: 0, sectors: defects.sectors, remaps, carrying, syncMarks, sparesWritten, sparesTaken };
}

test('power cuts on disks with persistent bad sectors in data and in either metadata copy lose nothing acknowledged, and bad blocks are never mapped', async (t) => {
  const bases = await makeBases();
  const usedByBase = new Map<Base, Set<number>>();
  for (const base of bases) usedByBase.set(base, await usedDataBlocks(base));
  const { seeds, replaying } = campaignTestSeeds('bad-sectors', ROOT_SEED, CAMPAIGN_COUNT);
  const sectors = { data: 0, metadata: 0 };
  let remaps = 0;
  const log = { carrying: 0, syncMarks: 0 };
  const spares = { written: 0, taken: 0 };
  const totals = await runCampaigns(seeds, async (seed) => {
    const result = await runCampaign(seed, bases, usedByBase);
    sectors.data += result.sectors.data;
    sectors.metadata += result.sectors.metadata;
    remaps += result.remaps;
    log.carrying += result.carrying;
    log.syncMarks += result.syncMarks;
    spares.written += result.sparesWritten;
    spares.taken += result.sparesTaken;
    return result;
  });
  t.diagnostic(
    `bad sectors: ${seeds.length} workloads, ${sectors.data} dead data sectors and ${sectors.metadata} dead metadata sectors, ` +
      `${remaps} in-place writes remapped (${spares.taken} into spare blocks, ${spares.written} spares written ahead; ${log.carrying} log records carrying a remap's bytes, ${log.syncMarks} sync marks), ${totals.distinctCrashPointCount} distinct crash points, ${totals.statesTested} crash states recovered and checked ` +
      `in ${(totals.durationMs / 1000).toFixed(1)} s; ${totals.failures.length} workloads failed`,
  );
  if (totals.failures.length > 0) assert.fail(`${totals.failures.length} of ${seeds.length} workloads failed:\n\n${totals.failures.join('\n\n')}`);
  if (!replaying) {
    assert.ok(sectors.data + sectors.metadata >= BAD_SECTORS_MIN, `only ${sectors.data + sectors.metadata} bad sectors; the floor is ${BAD_SECTORS_MIN}`);
    assert.ok(sectors.metadata >= 100, `only ${sectors.metadata} bad metadata sectors`);
    assert.ok(remaps > 0, 'some in-place writes were remapped');
    assert.ok(log.carrying > 0, "some remaps were made durable by a record carrying the write's bytes (F-LOG-9)");
    assert.ok(spares.written > 0, 'some spare blocks were written ahead under the crashes');
  }
});
