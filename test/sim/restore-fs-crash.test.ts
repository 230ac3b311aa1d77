// Power cuts while `thinbd restore` builds a pool from thin_dump XML on the simulated file system
// (sim-fs.ts): the temporary directory next to the target, its metadata and data files, the
// commit, the directory syncs, the rename into place. The machine loses power at every event, in
// several crash images each (disk writes kept, lost or torn, growth kept or lost, pending directory
// operations all kept, none or a seeded prefix), and each crash state must:
//   - once restore returned: hold the restored pool at DIR (opens read-write, check clean, the
//     dump's volumes with their mapped blocks);
//   - before that: hold that pool or no pool at DIR (nothing there, or the empty directory it
//     started as), and restore run again must then succeed and give that pool.
// Restore never writes over a pool: onto an existing pool it is refused before its first write or
// directory operation (thin_restore would overwrite; thinbd builds a new pool next to it and
// renames it in, and only into a directory that holds none).
//
// Replay a failure: THINBD_SEED=S node --import tsx --test test/sim/restore-fs-crash.test.ts (add
// THINBD_CRASH_POINT=K THINBD_VARIANT=V for one state). Seeds that found bugs go into
// regressions.json under "restore-fs-crash".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { Pool } from '../../src/pool/pool.ts';
import { restorePool } from '../../src/tools/restore.ts';
import { BLOCK_SIZE_BYTES, DATA_BLOCK_COUNT, METADATA_SIZE_BYTES, SIM_POOL_CREATE_OPTIONS } from './pool-bases.ts';
import { POOLS_DIR, judgePoolDir, makeFsBase, newPoolCampaign } from './fs-campaign.ts';
import { SimFs } from './sim-fs.ts';
import { SimMachine } from './sim-disk.ts';

const SEED_COUNT = Number(process.env['THINBD_RESTORE_FS_SEEDS'] ?? 2);
const DIR = `${POOLS_DIR}/restored`;

const XML = [
  `<superblock uuid="" time="3" transaction="9" flags="0" version="2" data_block_size="${BLOCK_SIZE_BYTES / 512}" nr_data_blocks="${DATA_BLOCK_COUNT}">`,
  '  <device dev_id="1" mapped_blocks="6" transaction="1" creation_time="0" snap_time="1">',
  '    <range_mapping origin_begin="0" data_begin="0" length="5" time="1"/>',
  '    <single_mapping origin_block="9" data_block="7" time="1"/>',
  '  </device>',
  '  <device dev_id="2" mapped_blocks="3" transaction="2" creation_time="1" snap_time="1">',
  '    <range_mapping origin_begin="0" data_begin="0" length="2" time="1"/>',
  '    <single_mapping origin_block="4" data_block="12" time="2"/>',
  '  </device>',
  '</superblock>',
  '',
].join('\n');
const RESTORED_VOLUMES = ['1:6', '2:3'];

function restore(fs: SimFs, dir: string): Promise<unknown> {
  return restorePool([XML], { dir, data: { sizeBytes: DATA_BLOCK_COUNT * BLOCK_SIZE_BYTES }, metadataSizeBytes: METADATA_SIZE_BYTES, fileSystem: fs });
}

for (const { title, base } of [
  { title: 'restore into a new directory', base: () => makeFsBase(async () => undefined) },
  { title: 'restore into an existing empty directory', base: () => makeFsBase(async (fs) => void fs.makeDirectory(DIR)) },
]) {
  test(`a power cut at any event of ${title} leaves no pool or the whole restored one, and restore runs again`, async (t) => {
    await newPoolCampaign(t, {
      suite: 'restore-fs-crash',
      seedCount: SEED_COUNT,
      title,
      base: await base(),
      dir: DIR,
      expected: RESTORED_VOLUMES,
      command: (fs) => restore(fs, DIR),
    });
  });
}

test('restore onto an existing pool is refused before it writes or names anything, and the pool is intact', async () => {
  const existing = `${POOLS_DIR}/existing`;
  const base = await makeFsBase(async (fs) => {
    const pool = await Pool.create(existing, { ...SIM_POOL_CREATE_OPTIONS, fileSystem: fs, commitIntervalMs: 0 });
    const volume = await pool.createVolume('kept', { sizeBytes: 2 * BLOCK_SIZE_BYTES });
    await volume.write(0, new Uint8Array(BLOCK_SIZE_BYTES).fill(7));
    await pool.close();
  });
  const machine = new SimMachine({ seed: 20261206, images: base.images });
  const fs = new SimFs(machine, base.tree);
  await assert.rejects(restore(fs, existing), (error) => isThinError(error, 'THIN_EXISTS'));
  // No event: no write, sync or directory operation a power cut could catch half done.
  assert.deepEqual(machine.events, [], 'the refused restore wrote nothing and named nothing');
  const state = await judgePoolDir(fs, existing);
  assert.deepEqual(state.kind === 'pool' ? state.volumes : state, ['kept:1'], 'the existing pool is as it was');
});
