// Power cuts at every event of small pool workloads (docs/fault-model.md G1, G5, G6).
//
// Each campaign seed picks a starting pool (empty; one volume with data; a volume, its snapshot
// and a second volume) and up to three operations among sector, block, multi-block and FUA writes,
// discard, snapshot, remove, create and flush, on at most three volumes; writes, discards and
// flushes are sometimes issued together, without waiting for the one before. The workload runs once on
// a SimMachine with the pool's metadata and data disks; then every crash point (before and after
// every write, completion and sync, on both disks) is recovered in several crash images, and each
// recovered pool must:
//   - open;
//   - hold every write acknowledged by a completed flush or FUA exactly, and in every other sector
//     the old bytes, the new bytes, or (only where an unflushed write touched it in place) a tear
//     of that very write: never another volume's or a freed block's bytes (pool-model.ts);
//   - keep snapshots equal to their contents when taken (the model holds them as volumes);
//   - pass checkPool with no problem at all (no leak either: the design reserves data blocks in
//     memory and raises counts only with the mapping, docs/internals.md decision 4);
//   - stay usable: a new volume written and flushed leaves every other volume unchanged;
//   - (one state in COMPOUND_EVERY) survive a second power cut at any event of that first commit.
//
// A second campaign runs the same kind of workloads on a pool whose data space map holds dense
// entries (format version 6), so that crashes land while groups go from dense to extents and back.
//
// Replay a failure: THINBD_SEED=S node --import tsx --test test/sim/pool-crash.test.ts
// (add THINBD_CRASH_POINT=K THINBD_VARIANT=V for the single state). A seed that found a bug goes
// into regressions.json ("pool-crash"), which runs first.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../src/pool/pool.ts';
import { mixSeed } from './rng.ts';
import { SECTOR_SIZE_BYTES, SimMachine, bytesEqual, type SparseImage } from './sim-disk.ts';
import { campaignTestSeeds, runCampaigns, runCrashCampaign, type CrashCampaignResult } from './crash-harness.ts';
import { describeOp, renderCache, runWorkload, verifyRecoveredPool, writeBytes } from './pool-model.ts';
import { checkSimPool } from './pool-check.ts';
import { BLOCK_SIZE_BYTES, BLOCK_SIZE_SECTORS, makeBases, makeDenseBase, poolFiles, simNow, workloadOf, type Base } from './pool-bases.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { TreeKind } from '../../src/pdata/btree/codec.ts';
import { isDense, refCountExtentCodec } from '../../src/pdata/space-map.ts';
import { decodePoolPayload } from '../../src/pool/codecs.ts';

const OPS_MAX = 3;
/** Crash images per distinct crash point. */
const VARIANTS_PER_POINT = 6;
/** Campaigns per run: enough for CRASH_STATES_MIN with margin. */
const CAMPAIGN_COUNT = Number(process.env['THINBD_CAMPAIGNS'] ?? 300);
/** One crash state in this many (variant 0 only) also gets a second power cut during its first commit. */
const COMPOUND_EVERY = 20;
/** Crash images per crash point of a second power cut. */
const COMPOUND_VARIANTS_PER_POINT = 3;
/** The seed the campaign seeds derive from; THINBD_ROOT_SEED explores others (a soak). */
const ROOT_SEED = Number(process.env['THINBD_ROOT_SEED'] ?? 20261121);
/** The floor for one CI run. */
const CRASH_STATES_MIN = 10_000;
async function runPoolCampaign(seed: number, bases: readonly Base[], options: { replaces?: boolean } = {}): Promise<CrashCampaignResult & { compoundStates: number; description: string }> {
  const { base, record } = workloadOf(seed, bases, OPS_MAX, options);
  let compoundStates = 0;
  const renders = renderCache(record);
  const description = `${base.name}: ${record.ops.map(describeOp).join('; ')}`;
  const result = await runCrashCampaign({
    seed,
    name: description,
    images: base.images,
    budget: VARIANTS_PER_POINT,
    workload: async (machine) => {
      const pool = await Pool.openOn(poolFiles(machine), { now: simNow });
      await runWorkload(machine, pool, record.ops);
    },
    recover: async (machine, marks, context) => {
      const files = poolFiles(machine);
      // The crash image as it powered up: a second power cut starts from it, not from what the
      // checks below write.
      const crashImages = machine.currentImages();
      const pool = await Pool.openOn(files);
      try {
        const contents = await verifyRecoveredPool(pool, record, marks, renders);
        const compoundSeed = mixSeed(seed, context.crashPoint.eventCount, context.variant.variantIndex);
        if (context.variant.variantIndex === 0 && compoundSeed % COMPOUND_EVERY === 0) {
          compoundStates += await secondPowerCut(crashImages, contents, compoundSeed);
        }
        const { problems } = await checkSimPool(files);
        assert.deepEqual(problems, [], 'checkPool reports problems after recovery');
        // Still usable: new allocations must not land on anything a volume maps.
        const probe = await pool.createVolume('after-crash', { sizeBytes: 2 * BLOCK_SIZE_BYTES });
        const probeWrite = { writeId: 999_999, beginSector: 0, lengthSectors: 2 * BLOCK_SIZE_SECTORS };
        await probe.write(0, writeBytes(probeWrite));
        await pool.flush();
        for (const [name, before] of contents) {
          const after = new Uint8Array(before.length);
          await pool.volume(name).read(0, after);
          assert.ok(bytesEqual(before, after), `volume ${name} changed when a new volume was written after recovery`);
        }
      } finally {
        await pool.close();
      }
    },
  });
  return { ...result, compoundStates, description };
}

/**
 * A second power cut while the recovered pool makes its first commit (a new volume written and
 * flushed): at every event of that commit, on top of whatever the first crash left (torn
 * superblock copies of an unacknowledged generation, garbage in unreferenced blocks). Everything
 * the first recovery read is durable on that machine, so it must read back exactly; the new
 * volume exactly once its flush was acknowledged, and before that, if it exists, zeros or its
 * own bytes. Returns the crash states checked.
 */
async function secondPowerCut(images: ReadonlyMap<string, SparseImage>, contents: ReadonlyMap<string, Uint8Array>, seed: number): Promise<number> {
  const probeName = 'second-cut';
  const probe = { writeId: 888_888, beginSector: 0, lengthSectors: 2 * BLOCK_SIZE_SECTORS };
  const probeBytes = writeBytes(probe);
  const result = await runCrashCampaign({
    seed,
    name: 'second power cut',
    images,
    budget: COMPOUND_VARIANTS_PER_POINT,
    narrowFromEnv: false,
    workload: async (machine) => {
      const pool = await Pool.openOn(poolFiles(machine), { now: simNow });
      const volume = await pool.createVolume(probeName, { sizeBytes: probeBytes.length });
      await volume.write(0, probeBytes);
      await pool.flush();
      machine.mark('ack second-cut flush');
    },
    recover: async (machine, marks) => {
      const files = poolFiles(machine);
      const pool = await Pool.openOn(files);
      try {
        for (const [name, before] of contents) {
          const after = new Uint8Array(before.length);
          await pool.volume(name).read(0, after);
          assert.ok(bytesEqual(before, after), `volume ${name} changed across the second power cut`);
        }
        const listed = pool.list().map((info) => info.name);
        const acknowledged = marks.includes('ack second-cut flush');
        if (acknowledged) assert.ok(listed.includes(probeName), 'the acknowledged new volume is missing');
        if (listed.includes(probeName)) {
          const bytes = new Uint8Array(probeBytes.length);
          await pool.volume(probeName).read(0, bytes);
          for (let sector = 0; sector < probe.lengthSectors; sector++) {
            const piece = bytes.subarray(sector * SECTOR_SIZE_BYTES, (sector + 1) * SECTOR_SIZE_BYTES);
            const wanted = probeBytes.subarray(sector * SECTOR_SIZE_BYTES, (sector + 1) * SECTOR_SIZE_BYTES);
            const allowed = bytesEqual(piece, wanted) || (!acknowledged && piece.every((byte) => byte === 0));
            assert.ok(allowed, `the new volume's sector ${sector} holds neither its bytes${acknowledged ? '' : ' nor zeros'}`);
          }
        }
        const { problems } = await checkSimPool(files);
        assert.deepEqual(problems, [], 'checkPool reports problems after the second recovery');
      } finally {
        await pool.close();
      }
    },
  });
  return result.statesTested;
}

test('a power cut at any event of a bounded pool workload loses nothing acknowledged and leaves a clean pool', async (t) => {
  const bases = await makeBases();
  const { seeds, replaying } = campaignTestSeeds('pool-crash', ROOT_SEED, CAMPAIGN_COUNT);
  const totals = await runCampaigns(seeds, (seed) => runPoolCampaign(seed, bases));
  t.diagnostic(
    `pool crash: ${seeds.length} workloads, ${totals.eventCount} events, ${totals.distinctCrashPointCount} distinct crash points, ` +
      `${totals.statesTested} crash states recovered and checked, plus ${totals.compoundStatesTested} after a second power cut during the first commit, ` +
      `in ${(totals.durationMs / 1000).toFixed(1)} s; ${totals.failures.length} workloads failed`,
  );
  if (totals.failures.length > 0) {
    assert.fail(`${totals.failures.length} of ${seeds.length} workloads failed:\n\n${totals.failures.join('\n\n')}`);
  }
  if (!replaying) assert.ok(totals.statesTested >= CRASH_STATES_MIN, `only ${totals.statesTested} crash states; the floor is ${CRASH_STATES_MIN}`);
});

/** Campaigns on the dense base: fewer, as it is one base where the first test has three. */
const DENSE_CAMPAIGN_COUNT = Number(process.env['THINBD_CAMPAIGNS'] ?? 40);
const DENSE_CRASH_STATES_MIN = 1_000;

test('a power cut at any event of a workload on a data space map with dense entries loses nothing acknowledged and leaves a clean pool', async (t) => {
  const base = await makeDenseBase();
  const probe = new SimMachine({ seed: 3, images: base.images });
  const { tm, payload } = await TransactionManager.open(probe.disk('metadata'), { readOnly: true });
  const root = decodePoolPayload(payload, tm.metadataBlockCount).dataSpaceMapRoot;
  const dense = [...new BTree(tm, refCountExtentCodec(TreeKind.dataSpaceMap)).entries(root)].filter(([, value]) => isDense(value));
  assert.ok(dense.length >= 1, 'the dense base holds dense entries');
  const { seeds, replaying } = campaignTestSeeds('pool-crash-dense', mixSeed(ROOT_SEED, 5), DENSE_CAMPAIGN_COUNT);
  const totals = await runCampaigns(seeds, (seed) => runPoolCampaign(seed, [base]));
  t.diagnostic(
    `dense pool crash: ${seeds.length} workloads, ${totals.statesTested} crash states recovered and checked, ` +
      `plus ${totals.compoundStatesTested} after a second power cut, in ${(totals.durationMs / 1000).toFixed(1)} s; ${totals.failures.length} workloads failed`,
  );
  if (totals.failures.length > 0) {
    assert.fail(`${totals.failures.length} of ${seeds.length} workloads failed:\n\n${totals.failures.join('\n\n')}`);
  }
  if (!replaying) assert.ok(totals.statesTested >= DENSE_CRASH_STATES_MIN, `only ${totals.statesTested} crash states; the floor is ${DENSE_CRASH_STATES_MIN}`);
});

/**
 * Campaigns whose workloads also replace one volume's contents with another's
 * (Pool.replaceVolumeContents, which an unpack onto an existing volume ends with): the replace is
 * one change, so a power cut shows both volumes as they were or the replace done.
 */
const REPLACE_CAMPAIGN_COUNT = Number(process.env['THINBD_CAMPAIGNS'] ?? 80);
const REPLACE_CRASH_STATES_MIN = 1_000;

test('a power cut at any event of a workload that replaces volumes\' contents loses nothing acknowledged and leaves a clean pool', async (t) => {
  const bases = await makeBases();
  const { seeds, replaying } = campaignTestSeeds('pool-crash-replace', mixSeed(ROOT_SEED, 7), REPLACE_CAMPAIGN_COUNT);
  const replacing = seeds.filter((seed) => workloadOf(seed, bases, OPS_MAX, { replaces: true }).record.ops.some((op) => op.kind === 'replace')).length;
  const totals = await runCampaigns(seeds, (seed) => runPoolCampaign(seed, bases, { replaces: true }));
  t.diagnostic(
    `pool crash with replaces: ${seeds.length} workloads (${replacing} with a replace), ${totals.statesTested} crash states recovered and checked, ` +
      `plus ${totals.compoundStatesTested} after a second power cut, in ${(totals.durationMs / 1000).toFixed(1)} s; ${totals.failures.length} workloads failed`,
  );
  if (totals.failures.length > 0) {
    assert.fail(`${totals.failures.length} of ${seeds.length} workloads failed:\n\n${totals.failures.join('\n\n')}`);
  }
  if (!replaying) {
    assert.ok(replacing >= seeds.length / 5, `only ${replacing} of ${seeds.length} workloads replace a volume's contents`);
    assert.ok(totals.statesTested >= REPLACE_CRASH_STATES_MIN, `only ${totals.statesTested} crash states; the floor is ${REPLACE_CRASH_STATES_MIN}`);
  }
});
