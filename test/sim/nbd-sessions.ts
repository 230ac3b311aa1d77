// Short NBD sessions for crashing at every event (nbd-crash.test.ts, mutants.test.ts): a starting
// pool with volumes (one volume; a volume, its snapshot and another volume; a volume and its
// snapshot with acknowledged records in the delta log) and a few requests from clients on up to
// three connections: writes of a sector, a block, across blocks, with and without FUA, trims and
// write-zeroes (whole blocks or partial, NO_HOLE or not), flushes, commit timer ticks, now and
// then a snapshot taken under the clients. Requests are often in flight together.
import { Rng } from './rng.ts';
import type { SparseImage } from './sim-disk.ts';
import { BLOCK_SIZE_SECTORS, FIRST_WORKLOAD_WRITE_ID, makeBases, makeLoggedBase, type Base } from './pool-bases.ts';
import { isManagement, isRequest, type NbdWorkloadOp } from './nbd-workload.ts';
import type { BaseVolume } from './volume-oracle.ts';

export interface SessionBase {
  name: string;
  images: ReadonlyMap<string, SparseImage>;
  volumes: BaseVolume[];
}

export function sessionBase(base: Base): SessionBase {
  const volumes = [...base.state].map(([name, model]) => ({ name, sizeSectors: model.sizeSectors, values: new Uint32Array(model.sectors) }));
  return { name: base.name, images: base.images, volumes };
}

/** The starting pools with volumes. */
export async function makeSessionBases(): Promise<SessionBase[]> {
  const bases = [...(await makeBases()), await makeLoggedBase()];
  return bases.filter((base) => base.state.size > 0).map(sessionBase);
}

export interface Session {
  base: SessionBase;
  ops: NbdWorkloadOp[];
}

const LANES_PER_VOLUME = 2;
const VOLUMES_MAX = 4;

/** The session a seed stands for. */
export function sessionOf(seed: number, bases: readonly SessionBase[], opsMax: number): Session {
  const rng = new Rng(seed);
  const base = rng.pick(bases);
  const volumes = base.volumes.map((volume) => volume.name);
  const sizeSectors = base.volumes[0]!.sizeSectors;
  const bs = BLOCK_SIZE_SECTORS;
  const ops: NbdWorkloadOp[] = [];
  let writeId = FIRST_WORKLOAD_WRITE_ID;
  let snapshots = 0;
  const count = 2 + rng.int(opsMax - 1);
  while (ops.length < count) {
    const draw = rng.int(100);
    const volume = rng.pick(volumes);
    const lane = rng.int(LANES_PER_VOLUME);
    let op: NbdWorkloadOp;
    if (draw < 42) {
      const shape = rng.int(4);
      let beginSector: number;
      let lengthSectors: number;
      if (shape === 0) {
        lengthSectors = 1 + rng.int(8);
        beginSector = rng.int(sizeSectors - lengthSectors);
      } else if (shape === 1) {
        lengthSectors = bs;
        beginSector = rng.int(sizeSectors / bs) * bs;
      } else if (shape === 2) {
        lengthSectors = bs + 1 + rng.int(bs);
        beginSector = rng.int(sizeSectors - lengthSectors);
      } else {
        lengthSectors = 1 + rng.int(2 * bs);
        beginSector = rng.int(sizeSectors - lengthSectors);
      }
      op = { kind: 'write', volume, lane, beginSector, lengthSectors, fua: rng.chance(0.2), writeId: writeId++ };
    } else if (draw < 62) {
      const whole = rng.chance(0.5);
      const lengthSectors = whole ? bs * (1 + rng.int(2)) : 1 + rng.int(bs);
      const beginSector = whole ? rng.int(sizeSectors / bs - lengthSectors / bs + 1) * bs : rng.int(sizeSectors - lengthSectors);
      const fua = rng.chance(0.15);
      op = draw < 52
        ? { kind: 'trim', volume, lane, beginSector, lengthSectors, fua, writeId: 0 }
        : { kind: 'zero', volume, lane, beginSector, lengthSectors, fua, noHole: rng.chance(0.5), writeId: 0 };
    } else if (draw < 86) {
      op = { kind: 'flush', volume, lane };
    } else if (draw < 94) {
      op = { kind: 'tick' };
    } else if (volumes.length < VOLUMES_MAX && snapshots < 1) {
      const name = `snap-nbd-${snapshots++}`;
      op = { kind: 'snapshot', source: volume, name };
      volumes.push(name);
    } else {
      continue;
    }
    if (!isManagement(op) && ops.length > 0 && !isManagement(ops[ops.length - 1]!) && rng.chance(0.45) && mayJoinGroup(ops, op)) {
      op = { ...op, concurrent: true };
    }
    ops.push(op);
  }
  return { base, ops };
}

/**
 * Whether `op` may be issued together with the group the last op belongs to: requests of other
 * connections to the same volume in the group must not overlap it (volume-oracle.ts).
 */
export function mayJoinGroup(ops: readonly NbdWorkloadOp[], op: NbdWorkloadOp): boolean {
  if (!isRequest(op) || op.kind === 'flush') return true;
  for (let index = ops.length - 1; index >= 0; index--) {
    const other = ops[index]!;
    if (isRequest(other) && other.kind !== 'flush' && other.volume === op.volume && other.lane !== op.lane) {
      if (op.beginSector < other.beginSector + other.lengthSectors && other.beginSector < op.beginSector + op.lengthSectors) return false;
    }
    if (other.concurrent !== true) break;
  }
  return true;
}
