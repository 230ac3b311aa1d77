// Power cuts while `thinbd repair` rebuilds a damaged pool into a new directory and while
// `thinbd check --repair` rebuilds it in place, on the simulated file system (sim-fs.ts). The
// damaged pool has two volumes, `a` whose mapping tree root is smashed and `b` whole (one metadata
// copy, so the mirror cannot mend it). The machine loses power at every event, in several crash
// images each (disk writes kept, lost or torn, growth kept or lost, pending directory operations
// all kept, none or a seeded prefix), and each crash state must:
//   repair -o NEW: leave the damaged pool as it was (check finds the same problems); at NEW no pool
//     or the whole repaired one (opens read-write, check clean, `a` empty, `b` with its data), the
//     repaired one once repair returned; with no pool at NEW, repair run again succeeds;
//   check --repair: leave at DIR the damaged pool (the same problems) or the whole repaired one,
//     never a pool that does not open; the repaired one once check --repair returned; run again,
//     check --repair succeeds and the pool is the repaired one.
//
// Replay a failure: THINBD_SEED=S node --import tsx --test test/sim/repair-fs-crash.test.ts (add
// THINBD_CRASH_POINT=K THINBD_VARIANT=V for one state). Seeds that found bugs go into
// regressions.json under "repair-fs-crash".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { closePoolFiles } from '../../src/pool/files.ts';
import { Pool } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';
import { PoolView } from '../../src/tools/pool-view.ts';
import { checkAndRepairPool, repairPool } from '../../src/tools/repair.ts';
import { BLOCK_SIZE_BYTES, SIM_POOL_CREATE_OPTIONS } from './pool-bases.ts';
import { POOLS_DIR, RETURNED, judgePoolDir, makeFsBase, runAgain, runFsCampaignTest } from './fs-campaign.ts';
import type { SimFs } from './sim-fs.ts';

const SEED_COUNT = Number(process.env['THINBD_REPAIR_FS_SEEDS'] ?? 2);
const DAMAGED = `${POOLS_DIR}/damaged`;
const NEW_DIR = `${POOLS_DIR}/repaired`;
const B_PATTERN = 0x3c;
const REPAIRED_VOLUMES = ['a:0', 'b:4'];

/** The damaged pool: `a` and `b`, four blocks written each, then `a`'s mapping root smashed. */
async function makeDamagedBase(): ReturnType<typeof makeFsBase> {
  return makeFsBase(async (fs) => {
    const pool = await Pool.create(DAMAGED, { ...SIM_POOL_CREATE_OPTIONS, metadataMirror: false, fileSystem: fs, commitIntervalMs: 0 });
    for (const [name, pattern] of [['a', 0x11], ['b', B_PATTERN]] as const) {
      const volume = await pool.createVolume(name, { sizeBytes: 6 * BLOCK_SIZE_BYTES });
      await volume.write(0, new Uint8Array(4 * BLOCK_SIZE_BYTES).fill(pattern));
    }
    await pool.close();
    const files = { metadata: await fs.openFile(`${DAMAGED}/metadata`, { readOnly: true }), data: await fs.openFile(`${DAMAGED}/data`, { readOnly: true }) };
    const view = await PoolView.open(files);
    const root = view.device('a').value.mappingRoot;
    await view.close();
    await closePoolFiles(files);
    const entry = fs.currentTree().get(`${DAMAGED}/metadata`);
    assert.ok(entry?.kind === 'file');
    fs.machine.disk(entry.disk).corrupt(root * METADATA_BLOCK_SIZE_BYTES, new Uint8Array(METADATA_BLOCK_SIZE_BYTES).fill(0x5a));
  });
}

async function problemsOf(fs: SimFs, dir: string): Promise<string[]> {
  const report = await checkPool(dir, { fileSystem: fs });
  return report.problems.map((problem) => `${problem.where}: ${problem.message}`);
}

/** The repaired pool at dir: check clean, `a` empty, `b` reads back its data. */
async function assertRepaired(fs: SimFs, dir: string): Promise<void> {
  const state = await judgePoolDir(fs, dir);
  assert.deepEqual(state.kind === 'pool' ? state.volumes : state, REPAIRED_VOLUMES, `${dir} holds the repaired pool`);
  const pool = await Pool.open(dir, { fileSystem: fs, readOnly: true, commitIntervalMs: 0 });
  try {
    const back = new Uint8Array(4 * BLOCK_SIZE_BYTES);
    await pool.volume('b').read(0, back);
    assert.ok(back.every((byte) => byte === B_PATTERN), "`b`'s data reads back through the repaired pool");
  } finally {
    await pool.close();
  }
}

/** The damaged pool's problems as check reports them, before the command under test. */
let damagedProblems: string[] = [];

async function damagedWorkload(fs: SimFs, command: () => Promise<unknown>): Promise<void> {
  damagedProblems = await problemsOf(fs, DAMAGED);
  assert.ok(damagedProblems.length > 0, 'check finds the damage');
  await command();
}

test('a power cut at any event of repair -o NEW leaves the damaged pool as it was and no pool or the whole repaired one at NEW', async (t) => {
  await runFsCampaignTest(t, {
    suite: 'repair-fs-crash',
    seedCount: SEED_COUNT,
    title: 'repair into a new directory',
    base: await makeDamagedBase(),
    workload: (fs) => damagedWorkload(fs, () => repairPool(DAMAGED, NEW_DIR, { fileSystem: fs })),
    recover: async (fs, marks) => {
      assert.deepEqual(await problemsOf(fs, DAMAGED), damagedProblems, 'the damaged pool is left as it was');
      const state = await judgePoolDir(fs, NEW_DIR);
      if (state.kind === 'pool') {
        await assertRepaired(fs, NEW_DIR);
        return 'repaired';
      }
      assert.ok(!marks.includes(RETURNED), `repair returned, yet there is no pool at ${NEW_DIR}: ${state.why}`);
      await runAgain('repair', repairPool(DAMAGED, NEW_DIR, { fileSystem: fs }));
      await assertRepaired(fs, NEW_DIR);
      return 'no pool, then repaired again';
    },
  });
});

test('a power cut at any event of check --repair leaves the damaged pool or the whole repaired one, and check --repair runs again', async (t) => {
  await runFsCampaignTest(t, {
    suite: 'repair-fs-crash',
    seedCount: SEED_COUNT,
    title: 'check --repair in place',
    base: await makeDamagedBase(),
    workload: (fs) =>
      damagedWorkload(fs, async () => {
        const report = await checkAndRepairPool(DAMAGED, { fileSystem: fs });
        assert.ok(report.ok, 'check --repair repairs the pool');
      }),
    recover: async (fs, marks) => {
      const problems = await problemsOf(fs, DAMAGED);
      let outcome = 'repaired';
      if (problems.length > 0) {
        assert.ok(!marks.includes(RETURNED), `check --repair returned, yet the pool has problems: ${problems.join('; ')}`);
        assert.deepEqual(problems, damagedProblems, 'before the swap, the damaged pool is as it was');
        const report = await runAgain('check --repair', checkAndRepairPool(DAMAGED, { fileSystem: fs }));
        assert.ok(report.ok, 'check --repair run again repairs the pool');
        outcome = 'damaged, then repaired again';
      }
      await assertRepaired(fs, DAMAGED);
      return outcome;
    },
  });
});
