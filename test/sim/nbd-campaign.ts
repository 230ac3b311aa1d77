// One crash campaign over an NBD workload (nbd-workload.ts): run it once on a SimMachine, then
// recover every crash image the harness makes of its trace and hold it against the workload
// (volume-oracle.ts). Shared by the session campaign (nbd-crash.test.ts), the long campaign at
// scale (scale-crash.test.ts) and the mutants (mutants.test.ts).
import assert from 'node:assert/strict';
import { Pool, type PoolOpenOptions } from '../../src/pool/pool.ts';
import { Rng, mixSeed } from './rng.ts';
import type { SimMachine, SparseImage } from './sim-disk.ts';
import { runCrashCampaign, type CrashCampaignResult } from './crash-harness.ts';
import { checkSimPool } from './pool-check.ts';
import { BLOCK_SIZE_SECTORS, poolFiles, simNow } from './pool-bases.ts';
import { describeNbdOp, oracleOp, runNbdWorkload, type NbdWorkloadOp } from './nbd-workload.ts';
import { VolumeOracle, type BaseVolume } from './volume-oracle.ts';
import { sessionOf, type SessionBase } from './nbd-sessions.ts';

export interface NbdCampaignOptions {
  /** The workload's starting pool. */
  images: ReadonlyMap<string, SparseImage>;
  volumes: readonly BaseVolume[];
  ops: readonly NbdWorkloadOp[];
  /** For messages. */
  name: string;
  variantsPerPoint: number;
  /** Sampled crash points instead of every one (long workloads). */
  crashPointSample?: number;
  /** Stop after this many recovered states. */
  statesMax?: number;
  /** Added to every open of the pool, the workload's and each recovery's (a mutant, a low dirty limit). */
  poolOptions?: PoolOpenOptions;
  blockSizeSectors?: number;
  /** Sampled blocks per large volume (volume-oracle.ts). */
  sampleBlocks?: number;
  /** Called once with what the workload did (its replies, its pool, its trace), before any crash. */
  onWorkloadDone?: (result: { errors: readonly number[]; pool: Pool; machine: SimMachine }) => void;
}

export async function runNbdCampaign(seed: number, options: NbdCampaignOptions): Promise<CrashCampaignResult & { compoundStates: number }> {
  const oracle = new VolumeOracle(options.volumes, options.ops.map(oracleOp), {
    blockSizeSectors: options.blockSizeSectors ?? BLOCK_SIZE_SECTORS,
    ...(options.sampleBlocks === undefined ? {} : { sampleBlocks: options.sampleBlocks }),
  });
  const poolOptions = options.poolOptions ?? {};
  let reported = false;
  const result = await runCrashCampaign({
    seed,
    name: options.name,
    images: options.images,
    budget: options.variantsPerPoint,
    skipDuplicateImages: true,
    ...(options.crashPointSample === undefined ? {} : { crashPointSample: options.crashPointSample }),
    ...(options.statesMax === undefined ? {} : { statesMax: options.statesMax }),
    workload: async (machine) => {
      const outcome = await runNbdWorkload(machine, options.ops, poolOptions);
      if (!reported) options.onWorkloadDone?.({ ...outcome, machine });
      reported = true;
    },
    recover: async (machine, marks, context) => {
      const files = poolFiles(machine);
      const pool = await Pool.openOn(files, { now: simNow, ...poolOptions });
      try {
        const status = pool.status();
        assert.equal(status.mode, 'read-write', `the pool reopened ${status.mode} after a power cut: ${status.modeReason ?? ''}`);
        assert.equal(status.counters.logBlocksUsed, 0, 'the recovered delta log was rolled up at open');
        await oracle.verify(pool, marks, new Rng(mixSeed(seed, context.crashPoint.eventCount, context.variant.variantIndex, 0x0ac1)));
        const { problems } = await checkSimPool(files);
        assert.deepEqual(problems, [], 'checkPool reports problems after recovery');
      } finally {
        await pool.close();
      }
    },
  });
  return { ...result, compoundStates: 0 };
}

export interface SessionCampaignOptions {
  opsMax: number;
  variantsPerPoint: number;
  statesMax?: number;
  poolOptions?: PoolOpenOptions;
}

/** The campaign of the short session a seed stands for (nbd-sessions.ts). */
export async function runSessionCampaign(seed: number, bases: readonly SessionBase[], options: SessionCampaignOptions): Promise<CrashCampaignResult & { compoundStates: number }> {
  const session = sessionOf(seed, bases, options.opsMax);
  return runNbdCampaign(seed, {
    images: session.base.images,
    volumes: session.base.volumes,
    ops: session.ops,
    name: `${session.base.name}: ${session.ops.map((op, index) => `${index}: ${describeNbdOp(op)}`).join('; ')}`,
    variantsPerPoint: options.variantsPerPoint,
    ...(options.statesMax === undefined ? {} : { statesMax: options.statesMax }),
    ...(options.poolOptions === undefined ? {} : { poolOptions: options.poolOptions }),
  });
}
