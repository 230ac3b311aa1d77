// The I/O-error loop (docs/fault-model.md G10, SQLite's): a fixed workload runs once for every N,
// with the N-th backing I/O (read, write or sync, either disk) failing with EIO, once or from then
// on. Whatever fails must fail with a ThinError. After a failed sync no FLUSH or FUA write may be
// acknowledged and the pool must stop accepting writes (fail-stop, §6): the pool itself remembers
// the failure, even when nothing is left to commit. A positioned write refused with EIO names its
// range, so it is worked around instead (docs/internals.md decision 12): a data write moves to
// another block, a metadata write goes on with the mirror's other copy; when that is impossible
// (the disk refuses every later write) the request fails, and a commit that cannot write fails
// the pool as before. Either way a power cut at the end, recovered, must show every acknowledged
// write and pass checkPool.
//
// Replay: THINBD_SEED=S node --import tsx --test test/sim/io-errors.test.ts
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../src/pool/pool.ts';
import { ThinError } from '../../src/errors.ts';
import { seedFromEnv } from './rng.ts';
import { SimMachine } from './sim-disk.ts';
import { applyOp, doneMark, describeOp, renderCache, runOp, startMark, verifyRecoveredPool, type ModelState, type PoolOp, type WorkloadRecord } from './pool-model.ts';
import { checkSimPool } from './pool-check.ts';
import { BLOCK_SIZE_SECTORS as BS, makeBases, poolFiles, simNow } from './pool-bases.ts';

const seed = seedFromEnv(4242);
/** Crash images checked at the end of each run. */
const VARIANTS_PER_RUN = 3;

function write(volume: string, beginSector: number, lengthSectors: number, writeId: number, fua = false): PoolOp {
  return { kind: 'write', volume, beginSector, lengthSectors, fua, writeId, shape: 'loop' };
}

/** Provisioning, copy-on-write, a multi-block write, FUA, discard and flushes: every kind of commit. */
const OPS: PoolOp[] = [
  write('vol-a', 5 * BS, BS, 100),
  write('snap-a', 10, 1, 101),
  { kind: 'flush' },
  write('vol-a', 100, 300, 102),
  write('vol-b', 4 * BS + 7, 3, 103, true),
  { kind: 'discard', volume: 'vol-a', beginSector: 3 * BS, lengthSectors: BS },
  { kind: 'snapshot', source: 'vol-b', name: 'snap-b' },
  write('vol-b', BS + 1, 2, 104),
  { kind: 'flush' },
];

test('an EIO at any I/O of a workload fails cleanly, acknowledges nothing it could not make durable, and recovers', async (t) => {
  const bases = await makeBases();
  const base = bases.find((candidate) => candidate.name === 'volume, snapshot, volume');
  assert.ok(base !== undefined);
  /**
   * The model of one run: the ops that succeeded in their order, then the ones that failed, as if
   * still in flight at the power cut (a failed write may have reached the disk, whole or torn);
   * and the marks that say so.
   */
  const recordOf = (succeeded: readonly boolean[]): { record: WorkloadRecord; marks: string[] } => {
    const order = [...OPS.keys()].filter((index) => succeeded[index]).concat([...OPS.keys()].filter((index) => !succeeded[index]));
    const ops = order.map((index) => OPS[index] as PoolOp);
    const states: ModelState[] = [base.state];
    for (const op of ops) states.push(applyOp(states[states.length - 1] as ModelState, op));
    const marks: string[] = [];
    order.forEach((index, position) => {
      marks.push(startMark(position + 1));
      if (succeeded[index]) marks.push(doneMark(position + 1));
    });
    return { record: { blockSizeSectors: BS, ops, states }, marks };
  };

  const runOnce = async (
    machine: SimMachine,
  ): Promise<{ pool: Pool | undefined; errors: unknown[]; succeeded: boolean[]; acknowledgedAfterFault: string[] }> => {
    const errors: unknown[] = [];
    const succeeded = OPS.map(() => false);
    const acknowledgedAfterFault: string[] = [];
    let pool: Pool | undefined;
    try {
      pool = await Pool.openOn(poolFiles(machine), { now: simNow });
    } catch (error) {
      errors.push(error);
      return { pool, errors, succeeded, acknowledgedAfterFault };
    }
    for (const [index, op] of OPS.entries()) {
      const failedBefore = machine.ioFaultHit !== undefined && machine.ioFaultHit.kind !== 'read';
      machine.mark(startMark(index + 1));
      try {
        await runOp(pool, op);
        machine.mark(doneMark(index + 1));
        succeeded[index] = true;
        const durable = op.kind === 'flush' || (op.kind === 'write' && op.fua);
        if (failedBefore && durable) acknowledgedAfterFault.push(`${index + 1}: ${describeOp(op)}`);
      } catch (error) {
        errors.push(error);
      }
    }
    return { pool, errors, succeeded, acknowledgedAfterFault };
  };

  let runs = 0;
  let failedOps = 0;
  let statesChecked = 0;
  let writableAfterReadError = 0;
  let writableAfterWriteError = 0;
  let operationsWalked = 0;
  // Each machine seed orders completions differently, so the N-th I/O is another one.
  for (const machineSeed of [seed, seed + 1, seed + 2]) {
    // A run without faults counts the I/O operations the loop walks through.
    const clean = new SimMachine({ seed: machineSeed, images: base.images });
    const cleanRun = await runOnce(clean);
    assert.deepEqual(cleanRun.errors, [], 'the workload fails without any fault');
    const operationCount = clean.ioOperationCount;
    operationsWalked += operationCount;
    for (let position = 0; position < operationCount; position++) {
      for (const persistent of [false, true]) {
        const what = `seed=${seed} machine seed ${machineSeed}: EIO at I/O ${position}${persistent ? ' and after' : ' once'}`;
        const machine = new SimMachine({ seed: machineSeed, images: base.images });
        machine.failIo({ afterOperations: position, persistent });
        const run = await runOnce(machine);
        runs += 1;
        const hit = machine.ioFaultHit;
        assert.ok(hit !== undefined, `${what}: the fault never fired`);
        for (const error of run.errors) {
          assert.ok(error instanceof ThinError, `${what}: an operation failed with ${String(error)}, not a ThinError`);
        }
        failedOps += run.errors.length;
        if (hit.kind === 'sync') {
          assert.deepEqual(run.acknowledgedAfterFault, [], `${what} (${hit.kind} of ${hit.disk}): FLUSH or FUA acknowledged after a failed ${hit.kind}`);
          if (run.pool !== undefined) {
            assert.notEqual(run.pool.status().mode, 'read-write', `${what} (${hit.kind} of ${hit.disk}): the pool still accepts writes after a failed ${hit.kind}`);
          }
        }
        if (hit.kind === 'read' && run.pool?.status().mode === 'read-write') writableAfterReadError += 1;
        if (hit.kind === 'write' && run.pool?.status().mode === 'read-write') writableAfterWriteError += 1;
        // Power cut at the end, then recovery on the disks as they are.
        const { record, marks } = recordOf(run.succeeded);
        const renders = renderCache(record);
        const point = machine.crashPoint(machine.events.length);
        machine.kill();
        for (const variant of point.variants(VARIANTS_PER_RUN)) {
          const recovered = point.machine(variant);
          const files = poolFiles(recovered);
          let pool: Pool;
          try {
            pool = await Pool.openOn(files);
          } catch (error) {
            assert.fail(`${what}, variant ${variant.variantIndex} (${variant.description}): the pool does not open after the power cut: ${String(error)}`);
          }
          try {
            await verifyRecoveredPool(pool, record, marks, renders);
            const { problems } = await checkSimPool(files);
            assert.deepEqual(problems, [], `${what}, variant ${variant.variantIndex}: checkPool after recovery`);
          } catch (error) {
            throw new Error(`${what}, variant ${variant.variantIndex} (${variant.description}): ${error instanceof Error ? error.message : String(error)}`, { cause: error });
          } finally {
            await pool.close();
          }
          statesChecked += 1;
        }
      }
    }
  }
  t.diagnostic(
    `I/O-error loop: ${operationsWalked} I/O positions × once/persistent = ${runs} runs, ${failedOps} operations failed cleanly, ` +
      `${statesChecked} recoveries checked; ${writableAfterReadError} runs ended read-write after a failed read (it fails only its request), ` +
      `${writableAfterWriteError} after a failed write (moved to another block or copy)`,
  );
});
