// Power cuts while `thinbd pool create` makes a pool directory (Pool.create on the simulated file
// system, sim-fs.ts): the directory, its lock file, the metadata and data files (their sizes
// pending until synced), the format, the directory syncs; then a volume is created, written and
// flushed. The machine loses power at every event, in several crash images each (disk writes kept,
// lost or torn, growth kept or lost, pending directory operations all kept, none or a seeded
// prefix), and each crash state must:
//   - once creation returned: open read-write, pass check with no problem, and once the flush
//     returned hold the volume's data;
//   - before that: either open as above (a whole new pool) or be no pool, and then `pool create`
//     run again on it must succeed and give a pool that opens and checks clean.
//
// Replay a failure: THINBD_SEED=S node --import tsx --test test/sim/create-fs-crash.test.ts (add
// THINBD_CRASH_POINT=K THINBD_VARIANT=V for one state). Seeds that found bugs go into
// regressions.json under "create-fs-crash".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { Pool, type PoolCreateOptions } from '../../src/pool/pool.ts';
import { BLOCK_SIZE_BYTES, SIM_POOL_CREATE_OPTIONS, simNow } from './pool-bases.ts';
import { POOLS_DIR, judgePoolDir, makeFsBase, runAgain, runFsCampaignTest } from './fs-campaign.ts';
import type { SimFs } from './sim-fs.ts';

const SEED_COUNT = Number(process.env['THINBD_CREATE_FS_SEEDS'] ?? 2);
const DIR = `${POOLS_DIR}/new/p`;
const CREATED = 'pool created';
const FLUSHED = 'volume flushed';
const PATTERN = 0x6b;

function createOptions(fs: SimFs): PoolCreateOptions {
  return { ...SIM_POOL_CREATE_OPTIONS, fileSystem: fs, commitIntervalMs: 0 };
}

async function openChecked(fs: SimFs, flushed: boolean): Promise<void> {
  const pool = await Pool.open(DIR, { fileSystem: fs, commitIntervalMs: 0, now: simNow });
  try {
    assert.equal(pool.status().mode, 'read-write', `the pool opens read-write (${pool.status().modeReason ?? ''})`);
    if (flushed) {
      const back = new Uint8Array(1024);
      await pool.volume('v').read(BLOCK_SIZE_BYTES - 512, back);
      assert.ok(back.every((byte) => byte === PATTERN), 'the flushed write reads back');
    }
  } finally {
    await pool.close();
  }
  const state = await judgePoolDir(fs, DIR); // check clean, a data file that covers the pool's blocks
  assert.equal(state.kind, 'pool');
}

test('a power cut at any event of pool create leaves no pool or a whole one, and create runs again', async (t) => {
  await runFsCampaignTest(t, {
    suite: 'create-fs-crash',
    seedCount: SEED_COUNT,
    title: 'pool create, a volume written and flushed',
    base: await makeFsBase(async () => undefined),
    workload: async (fs) => {
      const pool = await Pool.create(DIR, createOptions(fs));
      fs.machine.mark(CREATED);
      const volume = await pool.createVolume('v', { sizeBytes: 2 * BLOCK_SIZE_BYTES });
      await volume.write(BLOCK_SIZE_BYTES - 512, new Uint8Array(1024).fill(PATTERN));
      await pool.flush();
      fs.machine.mark(FLUSHED);
      await pool.close();
    },
    recover: async (fs, marks) => {
      if (marks.includes(CREATED)) {
        await openChecked(fs, marks.includes(FLUSHED));
        return 'opened';
      }
      try {
        await openChecked(fs, false);
        return 'opened';
      } catch (error) {
        // Before create returned: no pool at all, never a half-made one that does not open.
        if (!isThinError(error, 'THIN_NOT_FOUND')) throw error;
      }
      const again = await runAgain('pool create', Pool.create(DIR, createOptions(fs)));
      await again.close();
      await openChecked(fs, false);
      return 'no pool, then created again';
    },
  });
});
