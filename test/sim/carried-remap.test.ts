// A remap made durable by one log record carrying the write's bytes (docs/format.md F-LOG-9), at
// the worst power cut: every write not yet synced is lost. The new block was written but never
// synced, so replay must rebuild it from the old block and the carried bytes; and once a later
// flush has synced the data file, replay must not rebuild it again over what that flush made
// durable (the sync mark). The campaigns of bad-sectors.test.ts cut power at every point around
// such remaps; these are the two cases named, as scenarios.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../src/pool/pool.ts';
import { BLOCK_SIZE_BYTES, createSimPool, poolFiles, simNow } from './pool-bases.ts';
import { SimMachine } from './sim-disk.ts';

const OLD = 0x0a;
const REMAPPED = 0xb0;
const AFTER = 0xc3;

/** A pool whose volume's block 1 (data block 1: the log names a non-zero old block) holds OLD and refuses writes: the next write into it is remapped. */
async function remappingPool(): Promise<{ machine: SimMachine; pool: Pool }> {
  const { machine: first, pool: created } = await createSimPool(7);
  const volume = await created.createVolume('v', { sizeBytes: 2 * BLOCK_SIZE_BYTES });
  await volume.write(0, new Uint8Array(2 * BLOCK_SIZE_BYTES).fill(OLD));
  const dataBlock = volume.mappedRuns()[0]!.dataBlock + 1;
  assert.ok(dataBlock > 0);
  await created.close();
  const machine = new SimMachine({ seed: 7, images: first.currentImages() });
  machine.disk('data').failWrites({ beginBytes: dataBlock * BLOCK_SIZE_BYTES, endBytes: (dataBlock + 1) * BLOCK_SIZE_BYTES }, { persistent: true });
  return { machine, pool: await Pool.openOn(poolFiles(machine), { now: simNow }) };
}

/** The machine after a power cut now, every write not synced lost. */
function cutPower(machine: SimMachine): SimMachine {
  const point = machine.crashPoint(machine.events.length);
  machine.kill();
  return point.machine({ variantIndex: 0, outcomes: point.pending.map(() => ({ kind: 'lost' as const })), description: 'every pending write lost' });
}

/** Virtual block 1, after opening the machine's disks. */
async function readBlock(machine: SimMachine): Promise<Uint8Array> {
  const pool = await Pool.openOn(poolFiles(machine), { now: simNow });
  try {
    const bytes = new Uint8Array(BLOCK_SIZE_BYTES);
    await pool.volume('v').read(BLOCK_SIZE_BYTES, bytes);
    return bytes;
  } finally {
    await pool.close();
  }
}

function expectBytes(bytes: Uint8Array, ranges: Array<[begin: number, end: number, value: number]>): void {
  for (const [begin, end, value] of ranges) {
    const wrong = bytes.subarray(begin, end).findIndex((byte) => byte !== value);
    assert.equal(wrong, -1, `byte ${begin + wrong} reads ${bytes[begin + wrong]}, expected ${value}`);
  }
}

test('a remapped write acknowledged with one record carrying its bytes survives the loss of every unsynced write', async () => {
  const { machine, pool } = await remappingPool();
  const before = pool.status().counters;
  await pool.volume('v').write(BLOCK_SIZE_BYTES + 4096, new Uint8Array(4096).fill(REMAPPED));
  const after = pool.status().counters;
  assert.equal(pool.status().health.data.remaps.remaps, 1);
  assert.equal(after.logRecordsCarrying - before.logRecordsCarrying, 1, 'the remap was logged by a record carrying its bytes');
  assert.equal(after.syncs - before.syncs, 1, 'one sync made the remap durable (the metadata file)');
  const bytes = await readBlock(cutPower(machine));
  expectBytes(bytes, [
    [0, 4096, OLD],
    [4096, 8192, REMAPPED],
    [8192, BLOCK_SIZE_BYTES, OLD],
  ]);
});

test('a write into the new block flushed after the remap survives the cut: the flush wrote a sync mark, so replay does not rebuild the block over it', async () => {
  const { machine, pool } = await remappingPool();
  await pool.volume('v').write(BLOCK_SIZE_BYTES + 4096, new Uint8Array(4096).fill(REMAPPED));
  await pool.volume('v').write(BLOCK_SIZE_BYTES, new Uint8Array(4096).fill(AFTER));
  await pool.flush();
  assert.equal(pool.status().counters.logSyncMarks, 1, 'the flush that synced the data file wrote a sync mark');
  const bytes = await readBlock(cutPower(machine));
  expectBytes(bytes, [
    [0, 4096, AFTER],
    [4096, 8192, REMAPPED],
    [8192, BLOCK_SIZE_BYTES, OLD],
  ]);
});
