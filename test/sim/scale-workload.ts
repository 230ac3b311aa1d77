// The long workload at scale (scale-crash.test.ts): a starting pool whose big volume maps 16,000
// scattered blocks (a three-level mapping tree), and per seed some hundreds of NBD requests and
// management calls that reach what short sessions never do: leaf splits and copy-on-write through
// a three-level tree shared with a snapshot, flushes logging more than one record's worth of
// changes (> 101 entries), runs of flushes that fill the delta log's ring (a full-ring rollup)
// and start it again over older records (the ring wraps), commits started by the dirty-block
// limit, the commit timer's ticks (an idle rollup after two quiet ones), and the data space
// running out (ENOSPC to the client) and coming back when a volume is removed.
import assert from 'node:assert/strict';
import { Pool } from '../../src/pool/pool.ts';
import { DELTA_LOG_BLOCK_COUNT, DELTA_LOG_FIRST_BLOCK_NR, METADATA_BLOCK_SIZE_BYTES, SUPERBLOCK_BLOCK_NRS } from '../../src/constants.ts';
import { BTREE_BLOCK_TYPES, nodeLevel } from '../../src/pdata/index.ts';
import { PoolView } from '../../src/tools/pool-view.ts';
import { Rng } from './rng.ts';
import { SimMachine, type SimEvent, type SparseImage } from './sim-disk.ts';
import { writeBytes } from './pool-model.ts';
import { BLOCK_SIZE_BYTES, BLOCK_SIZE_SECTORS, FIRST_WORKLOAD_WRITE_ID, SIM_POOL_CREATE_OPTIONS, poolFiles } from './pool-bases.ts';
import { mayJoinGroup } from './nbd-sessions.ts';
import type { NbdWorkloadOp } from './nbd-workload.ts';
import type { BaseVolume } from './volume-oracle.ts';

/**
 * Mapped blocks of the big volume: enough for a three-level mapping tree. Written in ascending
 * order, its compact leaves are full (335 entries) and its internal nodes too (168 children), so
 * the third level needs more than 335 × 168 = 56,280 entries; full leaves also make any new
 * mapping in the workload split one.
 */
export const BIG_MAPPED_BLOCKS = 60_000;
/** Data blocks beyond the starting pool's: what the workloads fill until ENOSPC. */
export const HEADROOM_BLOCKS = 1_000;
/**
 * The dirty-block limit the workload runs under: one burst of scattered writes into the big
 * volume's ~180 leaves stays below it (so its flush logs it, more than one record's worth), two
 * bursts between rollups reach it. The leaves start full, so a burst's first mapping in a leaf
 * splits it: a large burst (110 to 150 new mappings, 85 to 110 leaves) dirties 170 to 230 blocks,
 * so some large bursts are logged and others reach the limit.
 */
export const SCALE_DIRTY_BLOCKS_MAX = 200;
const SMALL_VOLUME_BLOCKS = 32;
const FILL_VOLUME_BLOCKS = 384;
/** Every this many mapped blocks of the big volume, one holds written data (the rest read zeros). */
const BIG_WRITTEN_EVERY = 64;
const bs = BLOCK_SIZE_SECTORS;

export interface ScaleBase {
  images: ReadonlyMap<string, SparseImage>;
  volumes: BaseVolume[];
}

/**
 * The starting pool: `big` maps every even block of 2 × BIG_MAPPED_BLOCKS (WRITE_ZEROES with
 * NO_HOLE: mapped, reading zeros, no data written), with one block in BIG_WRITTEN_EVERY written;
 * `vol-a` with data and its snapshot `snap-a`, copy-on-write done since.
 */
export async function makeScaleBase(): Promise<ScaleBase> {
  const machine = new SimMachine({ seed: 11 });
  machine.createDisk('metadata', 0);
  machine.createDisk('data', 0);
  const pool = await Pool.createOn(poolFiles(machine), {
    ...SIM_POOL_CREATE_OPTIONS,
    dataSizeBytes: (BIG_MAPPED_BLOCKS + 2 * SMALL_VOLUME_BLOCKS + HEADROOM_BLOCKS) * BLOCK_SIZE_BYTES,
  });
  const bigSectors = 2 * BIG_MAPPED_BLOCKS * bs;
  const big = { name: 'big', sizeSectors: bigSectors, values: new Uint32Array(bigSectors) };
  const volume = await pool.createVolume('big', { sizeBytes: bigSectors * 512 });
  let writeId = 1;
  for (let index = 0; index < BIG_MAPPED_BLOCKS; index++) {
    const beginSector = 2 * index * bs;
    if (index % BIG_WRITTEN_EVERY === 0) {
      const op = { writeId: writeId++, beginSector: beginSector + 8, lengthSectors: 16 };
      await volume.writeZeroes(beginSector * 512, BLOCK_SIZE_BYTES, { noHole: true });
      await volume.write(op.beginSector * 512, writeBytes(op));
      big.values.fill(op.writeId, op.beginSector, op.beginSector + op.lengthSectors);
    } else {
      await volume.writeZeroes(beginSector * 512, BLOCK_SIZE_BYTES, { noHole: true });
    }
    if (index % 2000 === 1999) await pool.flush();
  }
  const smallSectors = SMALL_VOLUME_BLOCKS * bs;
  const volA = { name: 'vol-a', sizeSectors: smallSectors, values: new Uint32Array(smallSectors) };
  const small = await pool.createVolume('vol-a', { sizeBytes: smallSectors * 512 });
  for (const [beginSector, lengthSectors] of [[0, 3 * bs], [5 * bs + 7, 40], [10 * bs, 8 * bs]] as const) {
    const op = { writeId: writeId++, beginSector, lengthSectors };
    await small.write(beginSector * 512, writeBytes(op));
    volA.values.fill(op.writeId, beginSector, beginSector + lengthSectors);
  }
  await pool.snapshot('vol-a', 'snap-a');
  const snapA = { name: 'snap-a', sizeSectors: smallSectors, values: new Uint32Array(volA.values) };
  const cow = { writeId: writeId++, beginSector: bs + 3, lengthSectors: 2 * bs };
  await small.write(cow.beginSector * 512, writeBytes(cow));
  volA.values.fill(cow.writeId, cow.beginSector, cow.beginSector + cow.lengthSectors);
  await pool.close();
  assert.ok(writeId < FIRST_WORKLOAD_WRITE_ID);
  return { images: machine.currentImages(), volumes: [big, volA, snapA] };
}

interface GeneratorState {
  rng: Rng;
  ops: NbdWorkloadOp[];
  writeId: number;
  /** Live volumes and their sizes in sectors. */
  volumes: Map<string, number>;
  nextName: number;
  snapshotOfBig: string | undefined;
  fills: string[];
}

function push(state: GeneratorState, op: NbdWorkloadOp, concurrentChance: number): void {
  const previous = state.ops[state.ops.length - 1];
  const joinable = (candidate: NbdWorkloadOp | undefined): boolean => candidate !== undefined && candidate.kind !== 'create' && candidate.kind !== 'snapshot' && candidate.kind !== 'remove';
  if (joinable(op) && joinable(previous) && state.rng.chance(concurrentChance) && mayJoinGroup(state.ops, op)) op = { ...op, concurrent: true };
  state.ops.push(op);
}

function smallWrite(state: GeneratorState, volume: string, block: number, lane: number, fua = false): NbdWorkloadOp {
  const lengthSectors = 1 + state.rng.int(8);
  const beginSector = block * bs + state.rng.int(bs - lengthSectors + 1);
  return { kind: 'write', volume, lane, beginSector, lengthSectors, fua, writeId: state.writeId++ };
}

function bigBlock(state: GeneratorState): number {
  return state.rng.int(2 * BIG_MAPPED_BLOCKS);
}

/**
 * Scattered small writes into the big volume (or its snapshot), then usually a flush: a large
 * burst maps more than 101 new blocks (odd ones, unmapped), a small one mixes new mappings with
 * writes in place (or copy-on-write, under a snapshot).
 */
function scatterBurst(state: GeneratorState): void {
  const large = state.rng.chance(0.5);
  const count = large ? 110 + state.rng.int(40) : 10 + state.rng.int(50);
  const target = state.snapshotOfBig !== undefined && state.rng.chance(0.3) ? state.snapshotOfBig : 'big';
  for (let index = 0; index < count; index++) {
    const block = large ? 2 * state.rng.int(BIG_MAPPED_BLOCKS) + 1 : bigBlock(state);
    push(state, smallWrite(state, target, block, state.rng.int(3)), 0.6);
  }
  if (state.rng.chance(0.85)) push(state, { kind: 'flush', volume: target, lane: state.rng.int(3) }, 0.2);
}

/** A run of flushes, each after one new mapping: fills the delta log's ring. */
function flushRun(state: GeneratorState): void {
  const count = 20 + state.rng.int(50);
  for (let index = 0; index < count; index++) {
    push(state, smallWrite(state, 'big', 2 * state.rng.int(BIG_MAPPED_BLOCKS) + 1, 0), 0);
    push(state, { kind: 'flush', volume: 'big', lane: state.rng.int(2) }, 0.1);
  }
}

/** A new volume written in 1 MiB pieces until the pool is nearly or quite full. */
function fill(state: GeneratorState): void {
  const name = `fill-${state.nextName++}`;
  const sizeSectors = FILL_VOLUME_BLOCKS * bs;
  push(state, { kind: 'create', name, sizeSectors }, 0);
  state.volumes.set(name, sizeSectors);
  state.fills.push(name);
  const pieceSectors = 16 * bs;
  const piecesMax = FILL_VOLUME_BLOCKS / 16;
  const pieces = piecesMax / 2 + state.rng.int(piecesMax / 2 + 1);
  for (let index = 0; index < pieces; index++) {
    push(state, { kind: 'write', volume: name, lane: index % 2, beginSector: index * pieceSectors, lengthSectors: pieceSectors, fua: false, writeId: state.writeId++ }, 0.5);
  }
  push(state, { kind: 'flush', volume: name, lane: 0 }, 0);
}

function removeFill(state: GeneratorState): void {
  const name = state.fills.shift();
  if (name === undefined) return;
  push(state, { kind: 'remove', volume: name }, 0);
  state.volumes.delete(name);
}

/** Trims and zeroes of whole and partial blocks of the big volume. */
function unmapSome(state: GeneratorState): void {
  const count = 1 + state.rng.int(6);
  for (let index = 0; index < count; index++) {
    const whole = state.rng.chance(0.6);
    const lengthSectors = whole ? bs * (1 + state.rng.int(12)) : 1 + state.rng.int(bs);
    const beginSector = whole ? state.rng.int(2 * BIG_MAPPED_BLOCKS - 12) * bs : state.rng.int(2 * BIG_MAPPED_BLOCKS * bs - lengthSectors);
    const lane = state.rng.int(3);
    const fua = state.rng.chance(0.1);
    push(state, state.rng.chance(0.5)
      ? { kind: 'trim', volume: 'big', lane, beginSector, lengthSectors, fua, writeId: 0 }
      : { kind: 'zero', volume: 'big', lane, beginSector, lengthSectors, fua, noHole: state.rng.chance(0.3), writeId: 0 }, 0.5);
  }
}

/** Copy-on-write traffic on the small volume and its snapshot, some with FUA. */
function smallTraffic(state: GeneratorState): void {
  const count = 2 + state.rng.int(10);
  for (let index = 0; index < count; index++) {
    const volume = state.rng.chance(0.5) ? 'vol-a' : 'snap-a';
    push(state, smallWrite(state, volume, state.rng.int(SMALL_VOLUME_BLOCKS), state.rng.int(2), state.rng.chance(0.2)), 0.5);
  }
}

/** The workload a seed stands for: about `opsTarget` operations. */
export function scaleWorkloadOf(seed: number, base: ScaleBase, opsTarget: number): NbdWorkloadOp[] {
  const state: GeneratorState = {
    rng: new Rng(seed),
    ops: [],
    writeId: FIRST_WORKLOAD_WRITE_ID,
    volumes: new Map(base.volumes.map((volume) => [volume.name, volume.sizeSectors])),
    nextName: 0,
    snapshotOfBig: undefined,
    fills: [],
  };
  const { rng } = state;
  // Every seed reaches each feature once, in a seeded order, then draws at random.
  const steps: Array<() => void> = [
    () => scatterBurst(state),
    () => flushRun(state),
    () => fill(state),
    () => {
      if (state.snapshotOfBig !== undefined) return;
      state.snapshotOfBig = `big-snap-${state.nextName++}`;
      push(state, { kind: 'snapshot', source: 'big', name: state.snapshotOfBig }, 0);
    },
    () => unmapSome(state),
    () => smallTraffic(state),
    () => push(state, { kind: 'tick' }, 0.3),
  ];
  for (const step of rng.shuffle([...steps])) step();
  while (state.ops.length < opsTarget) {
    const draw = rng.int(100);
    if (draw < 25) scatterBurst(state);
    else if (draw < 33) flushRun(state);
    else if (draw < 45) fill(state);
    else if (draw < 50) removeFill(state);
    else if (draw < 60) unmapSome(state);
    else if (draw < 72) smallTraffic(state);
    else if (draw < 80) {
      // One tick, or two with nothing between: an idle rollup.
      push(state, { kind: 'tick' }, 0.3);
      if (rng.chance(0.5)) push(state, { kind: 'tick' }, 0);
    } else if (draw < 84 && state.snapshotOfBig !== undefined) {
      push(state, { kind: 'remove', volume: state.snapshotOfBig }, 0);
      state.snapshotOfBig = undefined;
    } else if (draw < 88 && state.snapshotOfBig === undefined) {
      state.snapshotOfBig = `big-snap-${state.nextName++}`;
      push(state, { kind: 'snapshot', source: 'big', name: state.snapshotOfBig }, 0);
    } else {
      push(state, { kind: 'flush', volume: 'big', lane: rng.int(3) }, 0.3);
    }
  }
  return state.ops;
}

/** What a workload's trace shows of the delta log and the superblock, from the metadata disk's writes and syncs. */
export interface TraceFeatures {
  /** Flushes whose records took more than one ring block (more than 101 entries, or a record and its carried bytes). */
  multiRecordFlushes: number;
  /** Records written into the ring's last slot (the ring was full). */
  fullRing: number;
  /** Records written into slot 0 over a record of an earlier lap. */
  ringWraps: number;
  /** Superblock copies written (full commits, two copies each). */
  superblockWrites: number;
}

export function traceFeatures(events: readonly SimEvent[]): TraceFeatures {
  const features: TraceFeatures = { multiRecordFlushes: 0, fullRing: 0, ringWraps: 0, superblockWrites: 0 };
  const superblockOffsets = new Set(SUPERBLOCK_BLOCK_NRS.map((blockNr) => blockNr * METADATA_BLOCK_SIZE_BYTES));
  const ringBegin = DELTA_LOG_FIRST_BLOCK_NR * METADATA_BLOCK_SIZE_BYTES;
  const ringEnd = (DELTA_LOG_FIRST_BLOCK_NR + DELTA_LOG_BLOCK_COUNT) * METADATA_BLOCK_SIZE_BYTES;
  let recordsSinceSync = 0;
  let slot0Written = false;
  for (const event of events) {
    if (event.kind === 'mark' || event.disk !== 'metadata') continue;
    if (event.kind === 'write') {
      if (superblockOffsets.has(event.offsetBytes)) features.superblockWrites += 1;
      if (event.offsetBytes >= ringBegin && event.offsetBytes < ringEnd) {
        // An append writes its records and carried slots, consecutive ring blocks, in one write.
        const firstSlot = event.offsetBytes / METADATA_BLOCK_SIZE_BYTES - DELTA_LOG_FIRST_BLOCK_NR;
        const slots = Math.ceil(event.lengthBytes / METADATA_BLOCK_SIZE_BYTES);
        for (let slot = firstSlot; slot < firstSlot + slots; slot++) {
          recordsSinceSync += 1;
          if (slot === DELTA_LOG_BLOCK_COUNT - 1) features.fullRing += 1;
          if (slot === 0) {
            if (slot0Written) features.ringWraps += 1;
            slot0Written = true;
          }
        }
      }
    } else if (event.kind === 'sync') {
      if (recordsSinceSync > 1) features.multiRecordFlushes += 1;
      recordsSinceSync = 0;
    }
  }
  return features;
}

/** The depth of a volume's mapping tree in a pool's committed state (1 = a lone leaf). */
export async function mappingTreeDepth(images: ReadonlyMap<string, SparseImage>, volume: string): Promise<number> {
  const view = await PoolView.open(poolFiles(new SimMachine({ seed: 5, images })));
  try {
    return nodeLevel(view.tm.read(view.device(volume).value.mappingRoot, BTREE_BLOCK_TYPES)) + 1;
  } finally {
    await view.close();
  }
}
