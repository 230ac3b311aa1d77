// Crash campaigns over a simulated file system (sim-fs.ts): a command that creates, renames and
// removes a pool's files runs once on a SimMachine with a SimFs; then every crash point of its
// trace (crash-harness.ts) powers up with the disks' crash images and the directory tree the cut
// leaves, and `recover` judges the state and re-runs the command where the oracle says so.
//
// Distinct crash states are counted by the disks' bytes (CrashPoint.imageDigest) together with
// the tree (which names lead to which files) and the acknowledgements so far: two states with equal
// keys power up identically and are judged alike, so each is recovered once.
import assert from 'node:assert/strict';
import { isThinError } from '../../src/errors.ts';
import { Pool } from '../../src/pool/pool.ts';
import { checkPool } from '../../src/tools/check.ts';
import { runCrashCampaign, type CrashCampaignResult, type CrashContext } from './crash-harness.ts';
import { SimFs, type SimTree } from './sim-fs.ts';
import { SimMachine, type SparseImage } from './sim-disk.ts';

/** What a campaign starts from: the disks and the tree, all durable. */
export interface FsBase {
  images: ReadonlyMap<string, SparseImage>;
  tree: SimTree;
}

/** The directory every simulated pool lives in. */
export const POOLS_DIR = '/pools';

/** Builds a starting state on a fresh machine whose tree holds POOLS_DIR. */
export async function makeFsBase(build: (fs: SimFs) => Promise<void>): Promise<FsBase> {
  const machine = new SimMachine({ seed: 1 });
  const fs = new SimFs(machine, new Map([[POOLS_DIR, SimFs.directory(1)]]));
  await build(fs);
  return { images: machine.currentImages(), tree: fs.currentTree() };
}

/** The marks a workload added (not the file system's own "fs: ..." marks). */
export function workloadMarks(marks: readonly string[]): string[] {
  return marks.filter((mark) => !mark.startsWith('fs: '));
}

export interface FsCampaignResult extends CrashCampaignResult {
  /** Distinct crash states by disk bytes, directory tree and acknowledgements (each recovered once). */
  distinctStates: number;
  /** Crash states recovered: a crash image once per directory outcome. */
  recovered: number;
}

export async function runFsCampaign(options: {
  seed: number;
  name: string;
  base: FsBase;
  budget: number;
  crashPointSample?: number;
  workload: (fs: SimFs) => Promise<void>;
  recover: (fs: SimFs, marks: readonly string[], context: CrashContext) => Promise<void>;
}): Promise<FsCampaignResult> {
  let ran: SimFs | undefined;
  const states = new Set<string>();
  let recovered = 0;
  const result = await runCrashCampaign({
    seed: options.seed,
    name: options.name,
    budget: options.budget,
    images: options.base.images,
    ...(options.crashPointSample === undefined ? {} : { crashPointSample: options.crashPointSample }),
    workload: async (machine) => {
      ran = new SimFs(machine, options.base.tree);
      await options.workload(ran);
    },
    recover: async (machine, marks, context) => {
      if (ran === undefined) throw new Error('the workload did not run');
      // Each directory outcome of the crash image is a state of its own, on a fresh machine.
      const onlyKept = process.env['THINBD_DIRECTORY_KEPT'];
      const choices = ran.keptChoices(context).filter((kept) => onlyKept === undefined || onlyKept === '' || kept === Number(onlyKept));
      for (const [index, kept] of choices.entries()) {
        const disks = index === 0 ? machine : context.crashPoint.machine(context.variant);
        const crashed = ran.afterCrash(disks, context.crashPoint.eventCount, kept);
        // A state with the disks' bytes, the tree and the acknowledgements of one recovered already is not recovered again.
        const key = `${context.crashPoint.imageDigest(context.variant)}|${crashed.treeKey}|${workloadMarks(marks).join('\n')}`;
        if (states.has(key)) {
          if (index > 0) disks.kill();
          continue;
        }
        states.add(key);
        recovered += 1;
        try {
          await options.recover(crashed.fs, workloadMarks(marks), context);
        } catch (error) {
          const message = error instanceof Error ? error.message : String(error);
          throw new Error(`${message}\n  directory: ${crashed.description} (THINBD_DIRECTORY_KEPT=${kept} replays it)`, { cause: error });
        } finally {
          if (index > 0) disks.kill();
        }
      }
    },
  });
  return { ...result, distinctStates: states.size, recovered };
}

/** What a pool directory holds after a cut: no pool, or a pool that check passes (its volumes, by name, with mapped blocks). */
export type PoolDirState = { kind: 'none'; why: string } | { kind: 'pool'; volumes: string[] };

/**
 * Judges the pool directory `dir` on `fs`: 'none' when there is no pool there (THIN_NOT_FOUND);
 * otherwise it must open read-write and pass check with no problem (else this throws), and its
 * volumes are listed as "name:mapped-blocks".
 */
export async function judgePoolDir(fs: SimFs, dir: string): Promise<PoolDirState> {
  let pool: Pool;
  try {
    pool = await Pool.open(dir, { fileSystem: fs, commitIntervalMs: 0 });
  } catch (error) {
    if (isThinError(error, 'THIN_NOT_FOUND')) return { kind: 'none', why: error.message };
    throw new Error(`${dir} holds files of a pool that does not open: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  }
  let volumes: string[];
  try {
    assert.equal(pool.status().mode, 'read-write', `${dir} opens read-write (${pool.status().modeReason ?? ''})`);
    const usage = pool.usage();
    volumes = pool.list().map((volume) => `${volume.name}:${usage.get(volume.id)?.mappedBlocks ?? '?'}`).sort();
  } finally {
    await pool.close();
  }
  const report = await checkPool(dir, { fileSystem: fs });
  assert.deepEqual(report.problems, [], `check of ${dir} finds no problem`);
  return { kind: 'pool', volumes };
}
