// Power cuts while a pool is created (docs/fault-model.md G1, G6), on disks whose growth is not
// durable until a sync of the disk (sim-disk.ts: a file's size is metadata fsync persists).
// Pool.createOn grows both files, formats, commits; then a volume is created, written and flushed.
// The machine loses power at every event, in several crash images each (growth kept or lost,
// writes kept, lost or torn), and each crash image must:
//   - once creation returned: open read-write and pass checkPool with no problem, with data and
//     metadata files covering the pool's blocks (a file cut short by a lost growth must not leave a
//     pool that reads past its data file's end as zeros and takes it for data); once the flush
//     returned, hold the volume and its data;
//   - before that: be refused with a clear error (no pool there yet), or open as above.
//
// Replay a failure: THINBD_SEED=S node --import tsx --test test/sim/create-crash.test.ts (add
// THINBD_CRASH_POINT=K THINBD_VARIANT=V for one state). Seeds that found bugs go into
// regressions.json under "create-crash".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { Pool } from '../../src/pool/pool.ts';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { campaignTestSeeds, runCampaigns, runCrashCampaign } from './crash-harness.ts';
import { checkSimPool } from './pool-check.ts';
import { BLOCK_SIZE_BYTES, DATA_BLOCK_COUNT, METADATA_SIZE_BYTES, SIM_POOL_CREATE_OPTIONS, poolFiles, simNow } from './pool-bases.ts';

const SEED_COUNT = Number(process.env['THINBD_CREATE_SEEDS'] ?? 6);
const VARIANTS_PER_POINT = 4;
const ROOT_SEED = Number(process.env['THINBD_ROOT_SEED'] ?? 20261206);
const CREATED = 'pool created';
const FLUSHED = 'volume flushed';
const PATTERN = 0x5a;

test('a power cut at any event of pool creation leaves no pool or a whole one, never one cut short', async (t) => {
  const { seeds, replaying } = campaignTestSeeds('create-crash', ROOT_SEED, SEED_COUNT);
  let refusedBeforeCreated = 0;
  let openedAfterCreated = 0;
  const totals = await runCampaigns(seeds, async (seed) => {
    const result = await runCrashCampaign({
      seed,
      name: 'pool create, a volume written and flushed',
      budget: VARIANTS_PER_POINT,
      setup: async (machine) => {
        machine.createDisk('metadata', 0);
        machine.createDisk('data', 0);
      },
      workload: async (machine) => {
        const pool = await Pool.createOn(poolFiles(machine), SIM_POOL_CREATE_OPTIONS);
        machine.mark(CREATED);
        const volume = await pool.createVolume('v', { sizeBytes: 2 * BLOCK_SIZE_BYTES });
        await volume.write(BLOCK_SIZE_BYTES - 512, new Uint8Array(1024).fill(PATTERN));
        await pool.flush();
        machine.mark(FLUSHED);
        await pool.close();
      },
      recover: async (machine, marks) => {
        const files = poolFiles(machine);
        let pool: Pool;
        try {
          pool = await Pool.openOn(files, { now: simNow });
        } catch (error) {
          if (marks.includes(CREATED)) throw error;
          assert.ok(isThinError(error), `before creation returned, open fails with a ThinError, not ${String(error)}`);
          refusedBeforeCreated += 1;
          return;
        }
        try {
          assert.equal(pool.status().mode, 'read-write', `the pool opens read-write (${pool.status().modeReason ?? ''})`);
          if (marks.includes(CREATED)) openedAfterCreated += 1;
          if (marks.includes(FLUSHED)) {
            const back = new Uint8Array(1024);
            await pool.volume('v').read(BLOCK_SIZE_BYTES - 512, back);
            assert.ok(back.every((byte) => byte === PATTERN), 'the flushed write reads back');
          }
          assert.ok(files.metadata.sizeBytes() >= METADATA_SIZE_BYTES - METADATA_BLOCK_SIZE_BYTES, `the metadata file holds ${files.metadata.sizeBytes()} bytes`);
          assert.ok(files.data.sizeBytes() >= DATA_BLOCK_COUNT * BLOCK_SIZE_BYTES, `the data file holds ${files.data.sizeBytes()} bytes, not the pool's ${DATA_BLOCK_COUNT} blocks`);
          const { problems } = await checkSimPool(files);
          assert.deepEqual(problems, [], 'check finds no problem');
        } finally {
          await pool.close();
        }
      },
    });
    return { ...result, compoundStates: 0 };
  });
  t.diagnostic(
    `create crash: ${seeds.length} runs, ${totals.eventCount} events, ${totals.distinctCrashPointCount} distinct crash points, ` +
      `${totals.distinctImageCount} distinct crash images, ${totals.statesTested} recovered (${refusedBeforeCreated} refused before creation returned, ` +
      `${openedAfterCreated} opened after) in ${(totals.durationMs / 1000).toFixed(1)} s`,
  );
  if (totals.failures.length > 0) assert.fail(`${totals.failures.length} of ${seeds.length} runs failed:\n\n${totals.failures.join('\n\n')}`);
  if (!replaying) assert.ok(refusedBeforeCreated > 0 && openedAfterCreated > 0, 'crashes landed on both sides of creation');
});
