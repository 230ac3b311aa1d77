// Workloads that reach a simulated pool the way a guest does: NBD clients on several connections
// (through in-memory socket pairs, test/nbd/duplex-pair.ts) → NbdServer → VolumeExport → Pool on
// the SimMachine's disks, all in one process, so a power cut of the machine lands anywhere
// between a request's bytes and its reply. Volume management (create, snapshot, remove) goes to
// the pool as the daemon's control socket sends it, and the pool's commit timer ticks where the
// workload says (ManualCommitTimer), so a seed replays the same trace.
//
// Every operation is marked in the trace when it is issued and when it is answered (volume-oracle.ts
// reads the marks of a crash image). Operations flagged `concurrent` are issued without waiting for
// the one before; a group is awaited as a whole. Within a group, requests on one connection may
// overlap (they reach the pool in the order sent); requests on different connections of one
// volume never do (the generators see to it), so the order the server happens to serve them in
// cannot change what the volume holds.
import { MapExportRegistry } from '../../src/nbd/backend.ts';
import { NbdServer } from '../../src/nbd/server.ts';
import {
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
} from '../../src/nbd/protocol.ts';
import { VolumeExport } from '../../src/daemon/volume-export.ts';
import { Pool, type PoolOpenOptions } from '../../src/pool/pool.ts';
import { NbdTestClient, RawClient } from '../nbd/client.ts';
import { duplexPair } from '../nbd/duplex-pair.ts';
import { ManualCommitTimer } from '../pool/manual-commit-timer.ts';
import { SECTOR_SIZE_BYTES, type SimMachine } from './sim-disk.ts';
import { writeBytes } from './pool-model.ts';
import { describeOracleOp, doneMark, failMark, startMark, type OracleOp } from './volume-oracle.ts';
import { poolFiles, simNow } from './pool-bases.ts';

/** A request on connection `lane` to its volume (connections are opened on first use). */
export type NbdRequestOp =
  | { kind: 'write'; volume: string; lane: number; beginSector: number; lengthSectors: number; fua: boolean; writeId: number }
  | { kind: 'trim'; volume: string; lane: number; beginSector: number; lengthSectors: number; fua: boolean; writeId: 0 }
  | { kind: 'zero'; volume: string; lane: number; beginSector: number; lengthSectors: number; fua: boolean; noHole: boolean; writeId: 0 }
  | { kind: 'flush'; volume: string; lane: number };

export type NbdWorkloadOp = (
  | NbdRequestOp
  | { kind: 'create'; name: string; sizeSectors: number }
  | { kind: 'snapshot'; source: string; name: string }
  | { kind: 'remove'; volume: string }
  /** One tick of the pool's commit timer. */
  | { kind: 'tick' }
) & { concurrent?: boolean };

export function isRequest(op: NbdWorkloadOp): op is NbdRequestOp & { concurrent?: boolean } {
  return op.kind === 'write' || op.kind === 'trim' || op.kind === 'zero' || op.kind === 'flush';
}

export function isManagement(op: NbdWorkloadOp): boolean {
  return op.kind === 'create' || op.kind === 'snapshot' || op.kind === 'remove';
}

/** The oracle's view of an operation. */
export function oracleOp(op: NbdWorkloadOp): OracleOp {
  switch (op.kind) {
    case 'write':
    case 'trim':
    case 'zero':
      return { kind: op.kind, volume: op.volume, beginSector: op.beginSector, lengthSectors: op.lengthSectors, fua: op.fua, writeId: op.writeId };
    case 'flush':
      return { kind: 'flush' };
    case 'create':
    case 'snapshot':
    case 'remove':
      return op;
    case 'tick':
      return { kind: 'other' };
  }
}

export function describeNbdOp(op: NbdWorkloadOp): string {
  const prefix = op.concurrent === true ? '& ' : '';
  switch (op.kind) {
    case 'write':
      return `${prefix}${op.volume}/${op.lane} ${op.fua ? 'fua ' : ''}write #${op.writeId} [${op.beginSector}, +${op.lengthSectors})`;
    case 'trim':
      return `${prefix}${op.volume}/${op.lane} ${op.fua ? 'fua ' : ''}trim [${op.beginSector}, +${op.lengthSectors})`;
    case 'zero':
      return `${prefix}${op.volume}/${op.lane} ${op.fua ? 'fua ' : ''}zero${op.noHole ? ' no-hole' : ''} [${op.beginSector}, +${op.lengthSectors})`;
    case 'flush':
      return `${prefix}${op.volume}/${op.lane} flush`;
    case 'tick':
      return `${prefix}tick`;
    default:
      return describeOracleOp(op);
  }
}

export interface NbdWorkloadResult {
  /** NBD error (or 1 for a refused management call) per op; 0 when it succeeded. */
  errors: number[];
  /** The pool's counters at the end (what the workload reached: rollups, log records ...). */
  pool: Pool;
}

/**
 * Opens the pool on the machine's disks and runs the workload through an NBD server (module
 * comment). Leaves the pool open, as a power cut would find it. `poolOptions` adds to the
 * simulator's (fixed clock, a manual commit timer).
 */
export async function runNbdWorkload(
  machine: SimMachine,
  ops: readonly NbdWorkloadOp[],
  poolOptions: PoolOpenOptions = {},
): Promise<NbdWorkloadResult> {
  const timer = new ManualCommitTimer();
  const pool = await Pool.openOn(poolFiles(machine), { now: simNow, commitTimer: timer.timer, ...poolOptions });
  const registry = new MapExportRegistry(pool.list().map((info) => new VolumeExport(pool.volume(info.name))));
  const server = new NbdServer({ registry, handshakeTimeoutMs: 600_000, replyStallTimeoutMs: 600_000 });
  // Connections by volume#lane, each settling once its handshake is done: requests issued while
  // it runs wait for it, in the order they were issued.
  const clients = new Map<string, Promise<NbdTestClient>>();
  const errors: number[] = new Array<number>(ops.length).fill(0);

  const clientFor = (volume: string, lane: number): Promise<NbdTestClient> => {
    const key = `${volume}#${lane}`;
    let client = clients.get(key);
    if (client === undefined) {
      const [clientSide, serverSide] = duplexPair();
      if (server.handle(serverSide) === undefined) throw new Error('the NBD server refused a connection');
      const connected = new NbdTestClient(new RawClient(clientSide));
      client = connected.handshake(volume).then(() => connected);
      clients.set(key, client);
    }
    return client;
  };
  const closeClientsOf = async (volume: string): Promise<void> => {
    for (const [key, client] of clients) {
      if (!key.startsWith(`${volume}#`)) continue;
      (await client).close();
      clients.delete(key);
    }
    await server.disconnectExport(volume);
  };

  const runOne = async (op: NbdWorkloadOp, index: number): Promise<void> => {
    if (op.kind === 'tick') {
      machine.mark(startMark(index));
      // Not awaited: the workload goes on while the commit runs, as under the interval timer.
      void timer.tick();
      return;
    }
    if (isRequest(op)) {
      const client = await clientFor(op.volume, op.lane);
      machine.mark(startMark(index));
      const reply = await client.call(...requestOf(op));
      errors[index] = reply.error;
      machine.mark(reply.error === 0 ? doneMark(index) : failMark(index));
      return;
    }
    machine.mark(startMark(index));
    try {
      if (op.kind === 'create') {
        const volume = await pool.createVolume(op.name, { sizeBytes: op.sizeSectors * SECTOR_SIZE_BYTES });
        registry.add(new VolumeExport(volume));
      } else if (op.kind === 'snapshot') {
        const volume = await pool.snapshot(op.source, op.name);
        registry.add(new VolumeExport(volume));
      } else {
        await closeClientsOf(op.volume);
        registry.remove(op.volume);
        await pool.removeVolume(op.volume);
      }
      machine.mark(doneMark(index));
    } catch {
      errors[index] = 1;
      machine.mark(failMark(index));
    }
  };

  let index = 0;
  while (index < ops.length) {
    const group: Promise<void>[] = [];
    do {
      group.push(runOne(ops[index]!, index));
      index += 1;
    } while (ops[index]?.concurrent === true);
    await Promise.all(group);
  }
  for (const client of clients.values()) (await client).close();
  await server.close({ timeoutMs: 600_000 });
  return { errors, pool };
}

function requestOf(op: NbdRequestOp): Parameters<NbdTestClient['call']> {
  if (op.kind === 'flush') return [NBD_CMD_FLUSH, {}];
  const fua = op.fua ? NBD_CMD_FLAG_FUA : 0;
  const offsetBytes = op.beginSector * SECTOR_SIZE_BYTES;
  const lengthBytes = op.lengthSectors * SECTOR_SIZE_BYTES;
  switch (op.kind) {
    case 'write':
      return [NBD_CMD_WRITE, { flags: fua, offsetBytes, data: writeBytes(op) }];
    case 'trim':
      return [NBD_CMD_TRIM, { flags: fua, offsetBytes, lengthBytes }];
    case 'zero':
      return [NBD_CMD_WRITE_ZEROES, { flags: fua | (op.noHole ? NBD_CMD_FLAG_NO_HOLE : 0), offsetBytes, lengthBytes }];
  }
}
