// Power cuts around the delta log (src/journal; docs/fault-model.md G1, G5, G6, G9, G11).
//
// 1. Bounded workloads (at most 3 ops among sector, block, multi-block and FUA writes, discard,
//    snapshot, remove, create, flush and rollup) on starting pools whose delta log is empty or
//    already holds acknowledged records (a pool left without a clean close, so the workload's
//    open replays and rolls up first). A power cut at every event, several crash images each
//    (unsynced writes kept, lost or torn); every recovered pool holds every acknowledged write,
//    leaves snapshots unchanged and checks clean (the checks of pool-crash.test.ts, pool-model.ts).
// 2. Compound: from crash images whose log holds records, a second power cut at every event of
//    the recovering open (replay, then the rollup), then a third open: the volumes read exactly
//    what the first recovery read, whatever the second cut hit.
// 3. Superblock copies: the rollup after logged flushes, with one or both copies of its generation
//    torn at every 512-byte boundary, for an even and an odd generation: open gives the newest
//    valid state (the new generation, or the old one plus its log), never less than acknowledged.
//
// Replay a failure: THINBD_SEED=S node --import tsx --test test/sim/journal-crash.test.ts (add
// THINBD_CRASH_POINT=K THINBD_VARIANT=V for one state). Seeds that found bugs go into
// regressions.json under "journal-crash".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../src/pool/pool.ts';
import type { BlockFile } from '../../src/io/block-file.ts';
import { METADATA_BLOCK_SIZE_BYTES, SUPERBLOCK_BLOCK_NRS } from '../../src/constants.ts';
import { TransactionManager, superblockCopyIndexes } from '../../src/pdata/index.ts';
import { readDeltaLog } from '../../src/journal/replay.ts';
import { Rng, mixSeed } from './rng.ts';
import { SECTOR_SIZE_BYTES, SimMachine, SparseImage, bytesEqual } from './sim-disk.ts';
import { campaignTestSeeds, runCampaigns, runCrashCampaign, type CrashCampaignResult } from './crash-harness.ts';
import { describeOp, renderCache, runOp, runWorkload, verifyRecoveredPool, type WorkloadRecord } from './pool-model.ts';
import { checkSimPool } from './pool-check.ts';
import { BLOCK_SIZE_BYTES, SIM_POOL_CREATE_OPTIONS, makeBases, makeLoggedBase, poolFiles, simNow, workloadOf, type Base } from './pool-bases.ts';

const OPS_MAX = 3;
const VARIANTS_PER_POINT = 12;
const CAMPAIGN_COUNT = Number(process.env['THINBD_JOURNAL_CAMPAIGNS'] ?? 360);
/** One flush in this many runs as an explicit rollup (pool.rollup()): durable on return, like a flush. */
const ROLLUP_EVERY = 3;
/** Variant-0 crash states with a non-empty log get a second power cut during recovery, one in this many. */
const COMPOUND_EVERY = 30;
const COMPOUND_VARIANTS_PER_POINT = 3;
const ROOT_SEED = Number(process.env['THINBD_ROOT_SEED'] ?? 20261122);
/** The floors for one CI run. */
const CRASH_STATES_MIN = 50_000;
const COMPOUND_STATES_MIN = 1_000;

/** The workload a seed stands for (workloadOf), with the flushes it runs as rollups instead (0-based op indexes). */
function journalWorkloadOf(seed: number, bases: readonly Base[]): { base: Base; record: WorkloadRecord; rollups: ReadonlySet<number> } {
  const { base, record } = workloadOf(seed, bases, OPS_MAX);
  const rollupRng = new Rng(seed).derive(2);
  const rollups = new Set<number>();
  record.ops.forEach((op, index) => {
    if (op.kind === 'flush' && rollupRng.int(ROLLUP_EVERY) === 0) rollups.add(index);
  });
  return { base, record, rollups };
}

async function logRecordCount(images: ReadonlyMap<string, SparseImage>): Promise<number> {
  const machine = new SimMachine({ seed: 3, images });
  try {
    const { tm } = await TransactionManager.open(machine.disk('metadata'), { readOnly: true });
    return (await readDeltaLog(machine.disk('metadata'), { poolId: tm.poolId, baseGeneration: tm.generation })).records.length;
  } catch {
    return 0;
  } finally {
    machine.kill();
  }
}

async function readVolumes(pool: Pool): Promise<Map<string, Uint8Array>> {
  const contents = new Map<string, Uint8Array>();
  for (const info of pool.list()) {
    const bytes = new Uint8Array(info.sizeBytes);
    await pool.volume(info.name).read(0, bytes);
    contents.set(info.name, bytes);
  }
  return contents;
}

async function runJournalCampaign(seed: number, bases: readonly Base[]): Promise<CrashCampaignResult & { compoundStates: number }> {
  const { base, record, rollups } = journalWorkloadOf(seed, bases);
  let compoundStates = 0;
  const renders = renderCache(record);
  const description = `${base.name}: ${record.ops.map((op, index) => (rollups.has(index) ? 'rollup' : describeOp(op))).join('; ')}`;
  const result = await runCrashCampaign({
    seed,
    name: description,
    images: base.images,
    budget: VARIANTS_PER_POINT,
    workload: async (machine) => {
      const pool = await Pool.openOn(poolFiles(machine), { now: simNow });
      await runWorkload(machine, pool, record.ops, (op, index) => (rollups.has(index) ? pool.rollup() : runOp(pool, op)));
    },
    recover: async (machine, marks, context) => {
      const files = poolFiles(machine);
      const crashImages = machine.currentImages();
      const pool = await Pool.openOn(files, { now: simNow });
      try {
        const contents = await verifyRecoveredPool(pool, record, marks, renders);
        const compoundSeed = mixSeed(seed, context.crashPoint.eventCount, context.variant.variantIndex);
        if (context.variant.variantIndex === 0 && compoundSeed % COMPOUND_EVERY === 0 && (await logRecordCount(crashImages)) > 0) {
          compoundStates += await cutDuringReplay(crashImages, contents, compoundSeed);
        }
        const { problems } = await checkSimPool(files);
        assert.deepEqual(problems, [], 'checkPool reports problems after recovery');
        assert.equal(pool.status().counters.logBlocksUsed, 0, 'the recovered log was rolled up at open');
      } finally {
        await pool.close();
      }
    },
  });
  return { ...result, compoundStates };
}

/**
 * A second power cut at any event of the open that replays a non-empty log and rolls it up; the
 * pool opened after it must read exactly what the first recovery read.
 */
async function cutDuringReplay(images: ReadonlyMap<string, SparseImage>, contents: ReadonlyMap<string, Uint8Array>, seed: number): Promise<number> {
  const result = await runCrashCampaign({
    seed,
    name: 'power cut during replay and rollup',
    images,
    budget: COMPOUND_VARIANTS_PER_POINT,
    narrowFromEnv: false,
    workload: async (machine) => {
      const pool = await Pool.openOn(poolFiles(machine), { now: simNow });
      machine.mark('replayed and rolled up');
      await pool.close();
    },
    recover: async (machine) => {
      const files = poolFiles(machine);
      const pool = await Pool.openOn(files, { now: simNow });
      try {
        const after = await readVolumes(pool);
        assert.deepEqual([...after.keys()].sort(), [...contents.keys()].sort(), 'the volumes changed across the second power cut');
        for (const [name, before] of contents) {
          assert.ok(bytesEqual(before, after.get(name)!), `volume ${name} changed across a power cut during replay or rollup`);
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

test('a power cut at any event of a bounded workload with the delta log loses nothing acknowledged', async (t) => {
  const bases = [...(await makeBases()), await makeLoggedBase()];
  const { seeds, replaying } = campaignTestSeeds('journal-crash', ROOT_SEED, CAMPAIGN_COUNT);
  const totals = await runCampaigns(seeds, (seed) => runJournalCampaign(seed, bases));
  const states = totals.statesTested;
  const compoundStates = totals.compoundStatesTested;
  t.diagnostic(
    `journal crash: ${seeds.length} workloads, ${totals.eventCount} events, ${states} crash states recovered and checked, ` +
      `plus ${compoundStates} after a second power cut during replay or rollup, in ${(totals.durationMs / 1000).toFixed(1)} s; ${totals.failures.length} workloads failed`,
  );
  if (totals.failures.length > 0) assert.fail(`${totals.failures.length} of ${seeds.length} workloads failed:\n\n${totals.failures.join('\n\n')}`);
  if (!replaying) {
    assert.ok(states >= CRASH_STATES_MIN, `only ${states} crash states; the floor is ${CRASH_STATES_MIN}`);
    assert.ok(compoundStates >= COMPOUND_STATES_MIN, `only ${compoundStates} compound states; the floor is ${COMPOUND_STATES_MIN}`);
  }
});

// ---- superblock copies torn during a rollup ----

/**
 * A block file in memory over a sparse copy-on-write image (sim-disk.ts), cheap to copy (pages are
 * shared until written): hundreds of crash images of a 70 MB metadata file cost a few pages each.
 */
class ImageFile implements BlockFile {
  readonly description: string;
  readonly #image: SparseImage;

  constructor(description: string, image = new SparseImage()) {
    this.description = description;
    this.#image = image;
  }

  clone(): ImageFile {
    return new ImageFile(this.description, this.#image.clone());
  }

  block(blockNr: number): Uint8Array {
    const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
    this.#image.read(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
    return bytes;
  }

  setBlock(blockNr: number, bytes: Uint8Array): void {
    this.#image.write(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
  }

  sizeBytes(): number {
    return this.#image.sizeBytes;
  }

  readSync(target: Uint8Array, offsetBytes: number): void {
    this.#image.read(target, offsetBytes);
  }

  async read(target: Uint8Array, offsetBytes: number): Promise<void> {
    this.readSync(target, offsetBytes);
  }

  async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    this.#image.write(source, offsetBytes);
  }

  async sync(): Promise<void> {}

  async grow(sizeBytes: number): Promise<void> {
    this.#image.grow(sizeBytes);
  }

  async close(): Promise<void> {}
}

function sectorBytes(lengthSectors: number, value: number): Uint8Array {
  return new Uint8Array(lengthSectors * SECTOR_SIZE_BYTES).fill(value);
}

test('a rollup whose superblock copies are torn at any 512-byte boundary opens the newest valid state, for both generations', async () => {
  const files = { metadata: new ImageFile('metadata'), data: new ImageFile('data') };
  const pool = await Pool.createOn(files, SIM_POOL_CREATE_OPTIONS);
  const volume = await pool.createVolume('v', { sizeBytes: 8 * BLOCK_SIZE_BYTES });
  await pool.flush();
  const sectorsPerBlock = METADATA_BLOCK_SIZE_BYTES / SECTOR_SIZE_BYTES;
  const generationsTested = new Set<number>();
  let cases = 0;
  for (let round = 0; round < 2; round++) {
    // Logged, acknowledged changes on top of generation g; then the rollup writes g + 1.
    await volume.write(round * 3 * BLOCK_SIZE_BYTES + 512, sectorBytes(130, 10 + round));
    await pool.flush();
    await volume.discard((round * 3 + 1) * BLOCK_SIZE_BYTES, BLOCK_SIZE_BYTES);
    await pool.flush();
    assert.ok(pool.status().counters.logBlocksUsed >= 2);
    const expected = new Uint8Array(volume.sizeBytes);
    await volume.read(0, expected);
    const before = files.metadata.clone();
    const oldGeneration = (await TransactionManager.open(before.clone(), { readOnly: true })).tm.generation;
    await pool.rollup();
    const after = { metadata: files.metadata.clone(), data: files.data.clone() };
    const newGeneration = oldGeneration + 1;
    generationsTested.add(newGeneration % 2);
    const copies = superblockCopyIndexes(newGeneration);
    // Each copy of the new generation: old, new, or torn at a sector boundary (new sectors first
    // or last); the other copy old, new or torn the same way. Every other block as the rollup
    // left it (its tree blocks were synced before any copy was written).
    const states: Array<{ name: string; build: (oldBytes: Uint8Array, newBytes: Uint8Array) => Uint8Array }> = [
      { name: 'old', build: (oldBytes) => oldBytes },
      { name: 'new', build: (_, newBytes) => newBytes },
    ];
    for (let sectors = 1; sectors < sectorsPerBlock; sectors++) {
      const cut = sectors * SECTOR_SIZE_BYTES;
      const join = (head: Uint8Array, tail: Uint8Array): Uint8Array => {
        const bytes = tail.slice();
        bytes.set(head.subarray(0, cut));
        return bytes;
      };
      states.push({ name: `new first ${sectors} sectors`, build: (oldBytes, newBytes) => join(newBytes, oldBytes) });
      states.push({ name: `new last ${sectorsPerBlock - sectors} sectors`, build: (oldBytes, newBytes) => join(oldBytes, newBytes) });
    }
    for (const [tornIndex, otherIndex] of [[copies[0]!, copies[1]!], [copies[1]!, copies[0]!]] as const) {
      for (const torn of states) {
        for (const other of [states[0]!, states[1]!, torn]) {
          const metadata = after.metadata.clone();
          for (const [copyIndex, state] of [[tornIndex, torn], [otherIndex, other]] as const) {
            const blockNr = SUPERBLOCK_BLOCK_NRS[copyIndex]!;
            metadata.setBlock(blockNr, state.build(before.block(blockNr), after.metadata.block(blockNr)));
          }
          const where = `generation ${newGeneration}: copy ${tornIndex} ${torn.name}, copy ${otherIndex} ${other.name}`;
          const crashed = { metadata, data: after.data.clone() };
          const generation = (await TransactionManager.open(metadata.clone(), { readOnly: true })).tm.generation;
          if (torn.name === 'new' || other.name === 'new') {
            assert.equal(generation, newGeneration, `${where}: opened generation ${generation} although a copy of ${newGeneration} is whole`);
          }
          assert.ok(generation >= oldGeneration, `${where}: the generation went back to ${generation}`);
          const opened = await Pool.openOn(crashed, { now: simNow });
          const bytes = new Uint8Array(expected.length);
          await opened.volume('v').read(0, bytes);
          assert.ok(bytesEqual(bytes, expected), `${where}: the volume lost acknowledged writes`);
          const { problems } = await checkSimPool(crashed);
          assert.deepEqual(problems, [], `${where}: checkPool`);
          await opened.close();
          cases += 1;
        }
      }
    }
  }
  await pool.close();
  assert.deepEqual([...generationsTested].sort(), [0, 1], 'an even and an odd generation');
  assert.ok(cases >= 2 * 2 * 16 * 3, `${cases} cases`);
});
