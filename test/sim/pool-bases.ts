// Small committed pools that the crash and I/O-error tests start from, made once per test file:
// an empty pool; one volume with data; a volume, its snapshot (with copy-on-write since) and a
// second volume; a volume and its snapshot whose delta log holds acknowledged records (no clean
// close, so opening it replays them). Each comes with its model state (pool-model.ts). Also how every simulated pool
// is created, and the workload a crash campaign's seed stands for on these pools.
import assert from 'node:assert/strict';
import type { PoolCreateOptions, PoolFiles } from '../../src/pool/pool.ts';
import { Pool } from '../../src/pool/pool.ts';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { SECTOR_SIZE_BYTES, SimMachine, type SparseImage } from './sim-disk.ts';
import { Rng } from './rng.ts';
import { applyOp, generateOps, runOp, type ModelState, type PoolOp, type WorkloadRecord } from './pool-model.ts';

export const BLOCK_SIZE_BYTES = 64 * 1024;
export const BLOCK_SIZE_SECTORS = BLOCK_SIZE_BYTES / SECTOR_SIZE_BYTES;
/** Data blocks: room for three volumes, copy-on-write and a probe volume, small enough to copy. */
export const DATA_BLOCK_COUNT = 32;
export const METADATA_SIZE_BYTES = METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES;
export const VOLUME_SIZE_SECTORS = 6 * BLOCK_SIZE_SECTORS;
export const VOLUMES_MAX = 3;
/**
 * Every simulated pool gets this id and this fixed clock (pool and volume creation times), so a
 * trace is the same bytes in every process and a seed replays it exactly (G18).
 */
export const SIM_POOL_ID = 0x7468_696e_7369_6d01n;
export const simNow = (): number => 1_767_225_600_000; // 2026-01-01T00:00:00Z

/** How every simulated pool is created: the geometry above, SIM_POOL_ID and the fixed clock. */
export const SIM_POOL_CREATE_OPTIONS: Readonly<PoolCreateOptions> = {
  dataSizeBytes: DATA_BLOCK_COUNT * BLOCK_SIZE_BYTES,
  blockSizeBytes: BLOCK_SIZE_BYTES,
  metadataSizeBytes: METADATA_SIZE_BYTES,
  poolId: SIM_POOL_ID,
  now: simNow,
};
/** Write ids of the workloads start here; those below belong to the starting pools. */
export const FIRST_WORKLOAD_WRITE_ID = 1000;

export interface Base {
  name: string;
  images: ReadonlyMap<string, SparseImage>;
  state: ModelState;
}

export function poolFiles(machine: SimMachine): PoolFiles {
  return { metadata: machine.disk('metadata'), data: machine.disk('data') };
}

/** A new machine (of `seed`) with empty metadata and data disks, and a simulated pool created on them. */
export async function createSimPool(seed: number): Promise<{ machine: SimMachine; pool: Pool }> {
  const machine = new SimMachine({ seed });
  machine.createDisk('metadata', 0);
  machine.createDisk('data', 0);
  const pool = await Pool.createOn(poolFiles(machine), SIM_POOL_CREATE_OPTIONS);
  return { machine, pool };
}

/** Runs ops on a new simulated pool and leaves it open; returns it with the model state they give. */
export async function runOnNewPool(seed: number, ops: readonly PoolOp[]): Promise<{ machine: SimMachine; pool: Pool; state: ModelState }> {
  const { machine, pool } = await createSimPool(seed);
  let state: ModelState = new Map();
  for (const op of ops) {
    await runOp(pool, op);
    state = applyOp(state, op);
  }
  return { machine, pool, state };
}

/** Makes a starting pool by running ops on a new pool, then closing it. */
export async function makeBase(name: string, ops: readonly PoolOp[]): Promise<Base> {
  const { machine, pool, state } = await runOnNewPool(1, ops);
  await pool.close();
  return { name, images: machine.currentImages(), state };
}

export function setupWrite(volume: string, beginSector: number, lengthSectors: number, writeId: number): PoolOp {
  return { kind: 'write', volume, beginSector, lengthSectors, fua: false, writeId, shape: 'setup' };
}

export async function makeBases(): Promise<Base[]> {
  const bs = BLOCK_SIZE_SECTORS;
  const oneVolume: PoolOp[] = [
    { kind: 'create', name: 'vol-a', sizeSectors: VOLUME_SIZE_SECTORS },
    setupWrite('vol-a', 0, bs, 1),
    setupWrite('vol-a', bs + 2, 6, 2),
    setupWrite('vol-a', 3 * bs, 2 * bs, 3),
    { kind: 'flush' },
  ];
  const withSnapshot: PoolOp[] = [
    ...oneVolume,
    { kind: 'snapshot', source: 'vol-a', name: 'snap-a' },
    setupWrite('vol-a', 10, 20, 4),
    { kind: 'create', name: 'vol-b', sizeSectors: VOLUME_SIZE_SECTORS },
    setupWrite('vol-b', bs, bs, 5),
    { kind: 'flush' },
  ];
  return [await makeBase('empty pool', []), await makeBase('one volume', oneVolume), await makeBase('volume, snapshot, volume', withSnapshot)];
}

/**
 * A starting pool whose data space map holds dense entries (docs/format.md "Dense counts"): two
 * volumes written block by block in turn, so their data blocks interleave, and a snapshot of one
 * of them whose copy-on-write copied its mapping leaf, so counts alternate 2, 1 block by block.
 */
export async function makeDenseBase(): Promise<Base> {
  const bs = BLOCK_SIZE_SECTORS;
  const ops: PoolOp[] = [
    { kind: 'create', name: 'vol-a', sizeSectors: VOLUME_SIZE_SECTORS },
    { kind: 'create', name: 'vol-b', sizeSectors: VOLUME_SIZE_SECTORS },
  ];
  for (let block = 0; block < VOLUME_SIZE_SECTORS / bs; block++) ops.push(setupWrite('vol-a', block * bs, bs, 10 + 2 * block), setupWrite('vol-b', block * bs, bs, 11 + 2 * block));
  ops.push({ kind: 'flush' }, { kind: 'snapshot', source: 'vol-a', name: 'snap-a' }, setupWrite('vol-a', 3 * bs + 1, 7, 30), { kind: 'flush' });
  return makeBase('interleaved volumes, snapshot (dense space map)', ops);
}

/**
 * A starting pool left with acknowledged records in its delta log (no clean close): a volume
 * written and flushed, then a copy-on-write, new blocks and a discard, each flushed, after a
 * snapshot. Opening it replays the log and rolls it up.
 */
export async function makeLoggedBase(): Promise<Base> {
  const bs = BLOCK_SIZE_SECTORS;
  const ops: PoolOp[] = [
    { kind: 'create', name: 'vol-a', sizeSectors: VOLUME_SIZE_SECTORS },
    setupWrite('vol-a', 0, 2 * bs, 1),
    { kind: 'snapshot', source: 'vol-a', name: 'snap-a' },
    { kind: 'flush' },
    setupWrite('vol-a', 3, 9, 2), // copy-on-write: logged
    { kind: 'flush' },
    setupWrite('vol-a', 3 * bs, bs + 5, 3), // new blocks: logged
    { kind: 'flush' },
    { kind: 'discard', volume: 'snap-a', beginSector: bs, lengthSectors: bs }, // logged
    { kind: 'flush' },
  ];
  const { machine, pool, state } = await runOnNewPool(2, ops);
  assert.ok(pool.status().counters.logBlocksUsed >= 3, 'the logged base has records in its log');
  // No close: the log stays as a power cut would leave it (every record synced).
  return { name: 'logged volume and snapshot', images: machine.currentImages(), state };
}

/**
 * The workload a seed stands for, deterministic from the seed alone: a starting pool picked from
 * `bases` and up to `opsMax` operations on it, with the model state after each. It draws from
 * `new Rng(seed)` and its derive(1); a test that wants more from the seed derives 2 and up.
 */
export function workloadOf(seed: number, bases: readonly Base[], opsMax: number, options: { replaces?: boolean } = {}): { base: Base; record: WorkloadRecord } {
  const rng = new Rng(seed);
  const base = rng.pick(bases);
  const ops = generateOps(
    rng.derive(1),
    base.state,
    opsMax,
    { blockSizeSectors: BLOCK_SIZE_SECTORS, volumeSizeSectors: VOLUME_SIZE_SECTORS, volumesMax: VOLUMES_MAX, ...(options.replaces === true ? { replaces: true } : {}) },
    FIRST_WORKLOAD_WRITE_ID,
  );
  const states: ModelState[] = [base.state];
  for (const op of ops) states.push(applyOp(states[states.length - 1] as ModelState, op));
  return { base, record: { blockSizeSectors: BLOCK_SIZE_SECTORS, ops, states } };
}
