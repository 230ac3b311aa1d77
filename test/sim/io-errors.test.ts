// The I/O-error loop (docs/fault-model.md G10, SQLite's): each of 20 seeded workloads runs once
// for every sampled N, with the N-th backing I/O (read, write or sync, of the data or the
// metadata file, the pool's open included) failing with EIO, once or from then on. A workload is
// a starting pool (empty, with volumes and a snapshot, or with a delta log to replay at open) and
// writes, FUA writes, discards, snapshots, removes, creates, resizes (grown, written past the old
// end, shrunk back), flushes, rollups and commit-timer ticks, under a pool with or without the
// delta log and with a dirty-block limit low enough to start commits of its own; writes, discards
// and flushes are often issued several at once, as NBD clients keep them in flight.
//
// Whatever fails must fail with a ThinError. After a failed sync no FLUSH, FUA write or rollup may
// be acknowledged and the pool must stop accepting writes (fail-stop, §6): the pool itself
// remembers the failure, even when nothing is left to commit. A positioned write refused with EIO
// names its range, so it is worked around instead (docs/internals.md decision 12): a data write
// moves to another block, a metadata write goes on with the mirror's other copy; when that is
// impossible (the disk refuses every later write) the request fails, and a commit that cannot
// write fails the pool as before. Either way a power cut at the end, recovered, must show every
// acknowledged write and pass checkPool.
//
// N is sampled: a workload makes 60 to 700 I/Os, and every N of all 20 took about 20 minutes on
// the shared 2-core machine, so each workload walks IO_POSITIONS_DEFAULT positions drawn from its
// seed (the first and the last always among them), each failed once and persistently.
// THINBD_IO_POSITIONS=all walks every N (a soak); THINBD_IO_POSITIONS=K samples K;
// THINBD_IO_WORKLOADS=K runs K workloads instead of 20.
// Replay one workload: THINBD_SEED=S node --import tsx --test test/sim/io-errors.test.ts
// (add THINBD_IO_POSITION=N for one position). Seeds that found bugs are kept in regressions.json
// under "io-errors" and run first.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool, type PoolOpenOptions } from '../../src/pool/pool.ts';
import { ThinError } from '../../src/errors.ts';
import { Rng, mixSeed, seedFromEnv } from './rng.ts';
import { SimMachine } from './sim-disk.ts';
import {
  applyOp,
  describeOp,
  doneMark,
  generateOps,
  renderCache,
  runOp,
  startMark,
  verifyRecoveredPool,
  type ModelState,
  type PoolOp,
  type WorkloadRecord,
} from './pool-model.ts';
import { checkSimPool } from './pool-check.ts';
import {
  BLOCK_SIZE_SECTORS as BS,
  FIRST_WORKLOAD_WRITE_ID,
  VOLUME_SIZE_SECTORS,
  VOLUMES_MAX,
  makeBases,
  makeLoggedBase,
  poolFiles,
  simNow,
  type Base,
} from './pool-bases.ts';
import { campaignTestSeeds } from './crash-harness.ts';

const rootSeed = seedFromEnv(4242);
const WORKLOADS = 20;
/** Ops a generated workload draws at most (before resizes, rollups and ticks go between them). */
const OPS_MAX = 14;
/** Fault positions per workload, each failed once and persistently, unless THINBD_IO_POSITIONS says. */
const IO_POSITIONS_DEFAULT = 5;
/** Crash images checked at the end of each run. */
const VARIANTS_PER_RUN = 2;
/** Write ids of the writes past a grown volume's old end, apart from the generated ones. */
const GROWN_WRITE_ID = FIRST_WORKLOAD_WRITE_ID + 100_000;

interface IoWorkload {
  seed: number;
  base: Base;
  ops: PoolOp[];
  options: Pick<PoolOpenOptions, 'deltaLog' | 'metadataDirtyBlocksMax'>;
}

/** The workload a seed stands for: generated ops with resizes, rollups and ticks between them. */
function ioWorkloadOf(seed: number, bases: readonly Base[]): IoWorkload {
  const rng = new Rng(seed);
  const base = rng.pick(bases);
  const options = { deltaLog: !rng.chance(0.25), metadataDirtyBlocksMax: rng.chance(0.3) ? 4 + rng.int(8) : undefined };
  const shape = { blockSizeSectors: BS, volumeSizeSectors: VOLUME_SIZE_SECTORS, volumesMax: VOLUMES_MAX };
  // Writes, discards and flushes marked concurrent are issued with the op before them (as NBD
  // clients keep several in flight); an op put before one of them ends its group.
  const generated = generateOps(rng.derive(1), base.state, OPS_MAX, shape, FIRST_WORKLOAD_WRITE_ID);
  const extra = rng.derive(2);
  const ops: PoolOp[] = [];
  let state = base.state;
  let grownWriteId = GROWN_WRITE_ID;
  const push = (op: PoolOp): void => {
    ops.push(op);
    state = applyOp(state, op);
  };
  for (const generatedOp of generated) {
    let op = generatedOp;
    const names = [...state.keys()].sort();
    const draw = extra.int(100);
    const inserted = ops.length;
    if (draw < 15 && names.length > 0) {
      const volume = extra.pick(names);
      const sizeSectors = state.get(volume)?.sizeSectors ?? VOLUME_SIZE_SECTORS;
      if (sizeSectors > VOLUME_SIZE_SECTORS) {
        push({ kind: 'resize', volume, sizeSectors: VOLUME_SIZE_SECTORS });
      } else {
        push({ kind: 'resize', volume, sizeSectors: sizeSectors + (1 + extra.int(2)) * BS });
        if (extra.chance(0.6)) {
          const lengthSectors = 1 + extra.int(BS);
          push({ kind: 'write', volume, beginSector: sizeSectors + extra.int(BS - lengthSectors + 1), lengthSectors, fua: extra.chance(0.3), writeId: grownWriteId++, shape: 'past the old end' });
        }
      }
    } else if (draw < 23) {
      push({ kind: 'rollup' });
    } else if (draw < 31) {
      push({ kind: 'tick' });
    }
    if (ops.length > inserted && op.concurrent === true) {
      const { concurrent: _, ...alone } = op;
      op = alone;
    }
    push(op);
  }
  return { seed, base, ops, options };
}

/** The positions (0-based I/O indexes) a workload of `operationCount` I/Os fails. */
function positionsOf(seed: number, operationCount: number): number[] {
  const single = seedFromEnvName('THINBD_IO_POSITION');
  if (single !== undefined) return [single];
  const setting = process.env.THINBD_IO_POSITIONS;
  const all = [...Array(operationCount).keys()];
  if (setting === 'all') return all;
  const wanted = setting === undefined ? IO_POSITIONS_DEFAULT : Number(setting);
  assert.ok(Number.isSafeInteger(wanted) && wanted > 0, `THINBD_IO_POSITIONS is 'all' or a count, not '${setting}'`);
  if (operationCount <= wanted) return all;
  const rng = new Rng(mixSeed(seed, 0x10e));
  const chosen = new Set(wanted > 1 ? [0, operationCount - 1] : [0]);
  while (chosen.size < wanted) chosen.add(rng.int(operationCount));
  return [...chosen].sort((a, b) => a - b);
}

function seedFromEnvName(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined || text === '') return undefined;
  const value = Number(text);
  assert.ok(Number.isSafeInteger(value) && value >= 0, `${name} must be a whole number, not '${text}'`);
  return value;
}

/**
 * The model of one run. The ops that succeeded come in their order. A failed write or discard
 * changes no state: the sectors it covered are unspecified (NBD says so of a failed request),
 * in its volume and in every snapshot taken of it later. A failed management op comes after them,
 * as if still in flight at the power cut (it either did nothing or failed the pool, so nothing
 * after it depends on it), unless it no longer applies there (a snapshot of a volume removed
 * since): then nothing of it can show.
 */
function recordOf(
  workload: IoWorkload,
  succeeded: readonly boolean[],
): { record: WorkloadRecord; marks: string[]; unspecified: Map<string, Array<[number, number]>> } {
  const ops: PoolOp[] = [];
  const states: ModelState[] = [workload.base.state];
  const marks: string[] = [];
  const unspecified = new Map<string, Array<[number, number]>>();
  const failedManagement: PoolOp[] = [];
  const taintSnapshot = (op: PoolOp): void => {
    if (op.kind === 'snapshot') unspecified.set(op.name, [...(unspecified.get(op.source) ?? [])]);
  };
  for (const [index, op] of workload.ops.entries()) {
    if (succeeded[index]) {
      ops.push(op);
      states.push(applyOp(states[states.length - 1] as ModelState, op));
      marks.push(startMark(ops.length), doneMark(ops.length));
      taintSnapshot(op);
    } else if (op.kind === 'write' || op.kind === 'discard') {
      const ranges = unspecified.get(op.volume) ?? [];
      ranges.push([op.beginSector, op.beginSector + op.lengthSectors]);
      unspecified.set(op.volume, ranges);
    } else {
      failedManagement.push(op);
    }
  }
  for (const op of failedManagement) {
    const state = states[states.length - 1] as ModelState;
    if (!applies(state, op)) continue;
    ops.push(op);
    states.push(applyOp(state, op));
    marks.push(startMark(ops.length));
    taintSnapshot(op);
  }
  return { record: { blockSizeSectors: BS, ops, states }, marks, unspecified };
}

function applies(state: ModelState, op: PoolOp): boolean {
  switch (op.kind) {
    case 'create':
      return !state.has(op.name);
    case 'snapshot':
      return state.has(op.source) && !state.has(op.name);
    case 'write':
    case 'discard':
      return (state.get(op.volume)?.sizeSectors ?? 0) >= op.beginSector + op.lengthSectors;
    case 'resize':
    case 'remove':
      return state.has(op.volume);
    case 'replace':
      return state.has(op.volume) && state.has(op.source);
    case 'flush':
    case 'rollup':
    case 'tick':
      return true;
  }
}

interface Run {
  pool: Pool | undefined;
  errors: unknown[];
  succeeded: boolean[];
  acknowledgedAfterFault: string[];
}

/** Opens the pool on the machine and runs the workload's ops, each concurrent group at once. */
async function runOnce(machine: SimMachine, workload: IoWorkload): Promise<Run> {
  const errors: unknown[] = [];
  const succeeded = workload.ops.map(() => false);
  const acknowledgedAfterFault: string[] = [];
  let tick: (() => Promise<void>) | undefined;
  let pool: Pool | undefined;
  try {
    pool = await Pool.openOn(poolFiles(machine), {
      now: simNow,
      ...workload.options,
      commitTimer: (timerTick) => {
        tick = timerTick;
        return () => undefined;
      },
    });
  } catch (error) {
    errors.push(error);
    return { pool, errors, succeeded, acknowledgedAfterFault };
  }
  const ops = workload.ops;
  const run = async (index: number): Promise<void> => {
    const op = ops[index] as PoolOp;
    // What a fault before the op was issued forbids it to acknowledge (a sync or a write failed).
    const failedBefore = machine.ioFaultHit !== undefined && machine.ioFaultHit.kind !== 'read';
    machine.mark(startMark(index + 1));
    try {
      if (op.kind === 'tick') await (tick ?? (() => Promise.resolve()))();
      else await runOp(pool, op);
      machine.mark(doneMark(index + 1));
      succeeded[index] = true;
      const durable = op.kind === 'flush' || op.kind === 'rollup' || (op.kind === 'write' && op.fua);
      if (failedBefore && durable) acknowledgedAfterFault.push(`${index + 1}: ${describeOp(op)}`);
    } catch (error) {
      errors.push(error);
    }
  };
  // Each group (an op and the ones issued with it) is issued at once and awaited whole.
  let index = 0;
  while (index < ops.length) {
    const group: Promise<void>[] = [];
    do group.push(run(index++));
    while (ops[index]?.concurrent === true);
    await Promise.all(group);
  }
  await settle(machine);
  return { pool, errors, succeeded, acknowledgedAfterFault };
}

/**
 * Waits until no I/O is in flight for a few turns of the event loop: a commit the pool started on
 * its own (the dirty-block limit) may still be running when the last op returns, and a sync it
 * issued fails only when the simulated disk answers (the fault is taken when it is issued).
 */
async function settle(machine: SimMachine): Promise<void> {
  let quietTurns = 0;
  for (let turn = 0; turn < 100_000 && quietTurns < 3; turn++) {
    await new Promise((resolve) => setImmediate(resolve));
    quietTurns = machine.inFlightCount === 0 ? quietTurns + 1 : 0;
  }
  assert.ok(quietTurns >= 3, 'the pool kept doing I/O after its last op returned');
}

interface Totals {
  runs: number;
  positions: number;
  operations: number;
  failedOps: number;
  statesChecked: number;
  writableAfterReadError: number;
  writableAfterWriteError: number;
  failStops: number;
  faultsOn: Record<string, number>;
}

/** Every sampled position of one workload, once and persistently; throws at the first failure. */
async function runWorkload(workload: IoWorkload, totals: Totals): Promise<void> {
  const describe = `seed=${workload.seed} (base '${workload.base.name}', delta log ${workload.options.deltaLog ? 'on' : 'off'}` +
    `${workload.options.metadataDirtyBlocksMax === undefined ? '' : `, dirty limit ${workload.options.metadataDirtyBlocksMax}`}; ` +
    `ops ${workload.ops.map((op, index) => `${index + 1}: ${describeOp(op)}`).join('; ')})`;
  // A run without faults counts the I/O operations the loop walks through.
  const clean = new SimMachine({ seed: workload.seed, images: workload.base.images });
  const cleanRun = await runOnce(clean, workload);
  assert.deepEqual(cleanRun.errors, [], `${describe}: the workload fails without any fault`);
  const operationCount = clean.ioOperationCount;
  await cleanRun.pool?.close();
  totals.operations += operationCount;
  const positions = positionsOf(workload.seed, operationCount);
  totals.positions += positions.length;
  for (const position of positions) {
    for (const persistent of [false, true]) {
      const what = `${describe}: EIO at I/O ${position} of ${operationCount}${persistent ? ' and after' : ' once'} (THINBD_IO_POSITION=${position})`;
      const machine = new SimMachine({ seed: workload.seed, images: workload.base.images });
      machine.failIo({ afterOperations: position, persistent });
      const run = await runOnce(machine, workload);
      totals.runs += 1;
      const hit = machine.ioFaultHit;
      assert.ok(hit !== undefined, `${what}: the fault never fired`);
      const on = `${hit.kind} of ${hit.disk}`;
      totals.faultsOn[on] = (totals.faultsOn[on] ?? 0) + 1;
      for (const error of run.errors) {
        assert.ok(error instanceof ThinError, `${what} (${on}): an operation failed with ${String(error)}, not a ThinError`);
      }
      totals.failedOps += run.errors.length;
      const mode = run.pool?.status().mode;
      if (hit.kind === 'sync') {
        assert.deepEqual(run.acknowledgedAfterFault, [], `${what} (${on}): FLUSH, FUA or rollup acknowledged after a failed sync`);
        assert.notEqual(mode, 'read-write', `${what} (${on}): the pool still accepts writes after a failed sync`);
        totals.failStops += 1;
      }
      if (hit.kind === 'read' && mode === 'read-write') totals.writableAfterReadError += 1;
      if (hit.kind === 'write' && mode === 'read-write') totals.writableAfterWriteError += 1;
      // Power cut at the end, then recovery on the disks as they are.
      const { record, marks, unspecified } = recordOf(workload, run.succeeded);
      const renders = renderCache(record);
      const point = machine.crashPoint(machine.events.length);
      machine.kill();
      for (const variant of point.variants(VARIANTS_PER_RUN)) {
        const recovered = point.machine(variant);
        const files = poolFiles(recovered);
        const where = `${what} (${on}), variant ${variant.variantIndex} (${variant.description})`;
        let pool: Pool;
        try {
          pool = await Pool.openOn(files);
        } catch (error) {
          assert.fail(`${where}: the pool does not open after the power cut: ${String(error)}`);
        }
        try {
          await verifyRecoveredPool(pool, record, marks, renders, unspecified);
          const { problems } = await checkSimPool(files);
          assert.deepEqual(problems, [], `${where}: checkPool after recovery`);
        } catch (error) {
          throw new Error(`${where}: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
        } finally {
          await pool.close();
        }
        totals.statesChecked += 1;
      }
    }
  }
}

test('an EIO at any I/O of 20 seeded workloads fails cleanly, acknowledges nothing it could not make durable, and recovers', async (t) => {
  const bases = [...(await makeBases()), await makeLoggedBase()];
  const { seeds, replaying } = campaignTestSeeds('io-errors', rootSeed, seedFromEnvName('THINBD_IO_WORKLOADS') ?? WORKLOADS);
  const totals: Totals = {
    runs: 0,
    positions: 0,
    operations: 0,
    failedOps: 0,
    statesChecked: 0,
    writableAfterReadError: 0,
    writableAfterWriteError: 0,
    failStops: 0,
    faultsOn: {},
  };
  const failures: string[] = [];
  const kinds = new Set<string>();
  const baseNames = new Set<string>();
  for (const seed of seeds) {
    const workload = ioWorkloadOf(seed, bases);
    for (const op of workload.ops) kinds.add(op.kind);
    baseNames.add(workload.base.name);
    try {
      await runWorkload(workload, totals);
    } catch (error) {
      failures.push(`${error instanceof Error ? error.message : String(error)}\n  replay: THINBD_SEED=${seed} node --import tsx --test test/sim/io-errors.test.ts`);
    }
  }
  t.diagnostic(
    `I/O-error loop: ${seeds.length} workloads (root seed ${rootSeed}), ${totals.operations} I/Os in their clean runs, ` +
      `${totals.positions} positions × once/persistent = ${totals.runs} runs; faults hit ${JSON.stringify(totals.faultsOn)}; ` +
      `${totals.failedOps} operations failed cleanly, ${totals.failStops} runs fail-stopped after a failed sync, ${totals.statesChecked} recoveries checked; ` +
      `${totals.writableAfterReadError} runs ended read-write after a failed read (it fails only its request), ` +
      `${totals.writableAfterWriteError} after a failed write (moved to another block or copy)`,
  );
  assert.deepEqual(failures, [], `${failures.length} of ${seeds.length} workloads failed`);
  if (!replaying) {
    // The workloads reach what the loop is for: every kind of op, every starting pool, faults on both files.
    for (const kind of ['write', 'discard', 'snapshot', 'flush', 'resize', 'rollup', 'tick', 'create', 'remove']) {
      assert.ok(kinds.has(kind), `no workload has a ${kind}`);
    }
    assert.equal(baseNames.size, bases.length, `the workloads start from only ${[...baseNames].join(', ')}`);
    for (const on of ['read of data', 'write of data', 'read of metadata', 'write of metadata', 'sync of metadata']) {
      assert.ok((totals.faultsOn[on] ?? 0) > 0, `no fault hit a ${on}`);
    }
  }
});
