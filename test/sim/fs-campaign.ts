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
import { campaignTestSeeds, runCampaigns, runCrashCampaign, type CrashCampaignResult, type CrashContext } from './crash-harness.ts';
import { SimFs, type SimTree } from './sim-fs.ts';
import { SimMachine, type SparseImage } from './sim-disk.ts';

/** What a campaign starts from: the disks and the tree, all durable. */
export interface FsBase {
  images: ReadonlyMap<string, SparseImage>;
  tree: SimTree;
}

/** Crash images per distinct crash point (each then once per directory outcome). */
const VARIANTS_PER_POINT = 4;
const ROOT_SEED = Number(process.env['THINBD_ROOT_SEED'] ?? 20261206);
/** The mark runFsCampaignTest adds when the command under test returned. */
export const RETURNED = 'command returned';

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
 * otherwise it must open read-write, have a data file that covers its blocks and pass check with
 * no problem (else this throws), and its volumes are listed as "name:mapped-blocks".
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
    // A data file cut short by a lost growth would read past its end as zeros and be taken for data.
    const { dataBlockCount, blockSizeBytes } = pool.status();
    const data = await fs.openFile(`${dir}/data`, { readOnly: true });
    const dataBytes = data.sizeBytes();
    await data.close();
    assert.ok(dataBytes >= dataBlockCount * blockSizeBytes, `${dir}/data holds ${dataBytes} bytes, not the pool's ${dataBlockCount} blocks`);
  } finally {
    await pool.close();
  }
  const report = await checkPool(dir, { fileSystem: fs });
  assert.deepEqual(report.problems, [], `check of ${dir} finds no problem`);
  return { kind: 'pool', volumes };
}

export interface FsCampaignTestOptions {
  /** Where regressions.json keeps the seeds that found bugs (they run first). */
  suite: string;
  /** Campaigns derived from the root seed (THINBD_ROOT_SEED). */
  seedCount: number;
  /** Cut at this many crash points of each trace (seeded), not at every one. */
  crashPointSample?: number;
  title: string;
  base: FsBase;
  /** The command under test; RETURNED is marked after it. */
  workload: (fs: SimFs) => Promise<void>;
  /**
   * Judges a crash state (throws when a property is violated) and names its outcome, for the
   * tally; marks are the workload's before the cut, RETURNED among them once the command returned.
   */
  recover: (fs: SimFs, marks: readonly string[]) => Promise<string>;
}

/**
 * A campaign test: one campaign per seed (regression seeds first), every failure listed with its
 * replay line, the states and their outcomes reported, and (unless replaying one seed) crashes
 * required to land on at least two outcomes (both sides of the command's commit point).
 */
export async function runFsCampaignTest(t: { diagnostic: (message: string) => void }, options: FsCampaignTestOptions): Promise<void> {
  const { seeds: listed, replaying } = campaignTestSeeds(options.suite, ROOT_SEED, options.seedCount);
  const seeds = [...new Set(listed)];
  const outcomes = new Map<string, number>();
  let distinctStates = 0;
  let recovered = 0;
  const totals = await runCampaigns(seeds, async (seed) => {
    const result = await runFsCampaign({
      seed,
      name: options.title,
      base: options.base,
      budget: VARIANTS_PER_POINT,
      ...(options.crashPointSample === undefined ? {} : { crashPointSample: options.crashPointSample }),
      workload: async (fs) => {
        await options.workload(fs);
        fs.machine.mark(RETURNED);
      },
      recover: async (fs, marks) => {
        const outcome = await options.recover(fs, marks);
        outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      },
    });
    distinctStates += result.distinctStates;
    recovered += result.recovered;
    return { ...result, compoundStates: 0 };
  });
  const tally = [...outcomes].map(([outcome, count]) => `${count} ${outcome}`).join(', ');
  t.diagnostic(
    `${options.title}: ${seeds.length} runs, ${totals.eventCount} events, ${totals.distinctCrashPointCount} distinct crash points, ` +
      `${distinctStates} distinct crash states (disks and directory), ${recovered} recovered (${tally}) in ${(totals.durationMs / 1000).toFixed(1)} s`,
  );
  if (totals.failures.length > 0) assert.fail(`${totals.failures.length} of ${seeds.length} runs failed:\n\n${totals.failures.join('\n\n')}`);
  if (!replaying) assert.ok(outcomes.size >= 2, `crashes landed on both sides of the command's commit point (${tally})`);
}

/**
 * Cuts power at every event of `command` (which builds a new pool at `dir` on `base`): after each
 * cut, `dir` holds the whole new pool (volumes `expected`) or no pool (nothing, an empty
 * directory, or what `mayLeave` allows), the latter never once the command returned, and the
 * command run again then gives the new pool.
 */
export async function newPoolCampaign(
  t: { diagnostic: (message: string) => void },
  options: Omit<FsCampaignTestOptions, 'workload' | 'recover'> & {
    dir: string;
    expected: readonly string[];
    command: (fs: SimFs) => Promise<unknown>;
    /** What a cut may leave in `dir` when there is no pool yet (default nothing: an empty directory). */
    mayLeave?: (name: string) => boolean;
  },
): Promise<void> {
  const { title, dir, expected, command } = options;
  await runFsCampaignTest(t, {
    ...options,
    workload: async (fs) => void (await command(fs)),
    recover: async (fs, marks) => {
      const state = await judgePoolDir(fs, dir);
      if (state.kind === 'pool') {
        assert.deepEqual(state.volumes, expected, `the pool at ${dir} is the new one`);
        return 'the new pool';
      }
      assert.ok(!marks.includes(RETURNED), `${title} returned, yet there is no pool at ${dir}: ${state.why}`);
      const left = fs.kind(dir) === 'directory' ? fs.list(dir) : [];
      assert.ok(fs.kind(dir) === undefined || left.every((name) => options.mayLeave?.(name) === true), `no pool, and ${dir} holds ${left.join(', ')}`);
      await runAgain(title, command(fs));
      const again = await judgePoolDir(fs, dir);
      assert.deepEqual(again.kind === 'pool' ? again.volumes : again, expected, `${title} run again gives the new pool`);
      return 'no pool, then run again';
    },
  });
}

/** The command run again after a cut: its failure says so. */
export function runAgain<T>(what: string, run: Promise<T>): Promise<T> {
  return run.catch((error: unknown) => {
    throw new Error(`${what} run again after the cut failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
  });
}
