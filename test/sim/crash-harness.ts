// The crash campaign: run a workload once on a SimMachine, recording its trace; then for every
// crash point (after every event: before and after every write, completion and sync) build
// crash images per the fault model, up to a budget of variants per point, and let `recover`
// check them. It knows nothing about pools: `recover` throws when a property is violated.
//
// Failures are rethrown as "seed=S crashPoint=K variant=V ..." with the trace around K.
// Replay: THINBD_SEED=S node --import tsx --test FILE reruns the run; THINBD_CRASH_POINT=K and
// THINBD_VARIANT=V narrow it to that one crash state.
//
// A test runs a batch of campaigns (campaignTestSeeds, runCampaigns): the seeds that once found a
// bug (regressions.json, under the test's name) first, then seeds derived from one root seed.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Rng, mixSeed, seedFromEnv } from './rng.ts';
import { SimMachine, describeTrace, type CrashPoint, type CrashVariant, type SparseImage } from './sim-disk.ts';

export interface CrashContext {
  readonly seed: number;
  readonly crashPoint: CrashPoint;
  readonly variant: CrashVariant;
  /** Marks before the crash ("ack flush #2"), oldest first. */
  readonly marks: readonly string[];
}

export interface CrashCampaignOptions {
  seed: number;
  /** For messages. */
  name?: string;
  /** Disks and contents the machine powers up with (e.g. a pool made once for many campaigns). */
  images?: ReadonlyMap<string, SparseImage>;
  /** Runs first, outside the trace: its result counts as durable (e.g. creating the pool). */
  setup?: (machine: SimMachine) => Promise<void>;
  /** The work under test; add marks for what it acknowledges. Runs once. */
  workload: (machine: SimMachine) => Promise<void>;
  /** Powers up on a crash image; throws when a property is violated. */
  recover: (machine: SimMachine, marks: readonly string[], context: CrashContext) => Promise<void>;
  /** Variants (crash images) per distinct crash point. */
  budget: number;
  /** Stop after this many crash states (default: no limit). */
  statesMax?: number;
  /**
   * Cut power at this many crash points drawn from the whole trace (seeded), instead of at every
   * one: for traces too long to crash at every event.
   */
  crashPointSample?: number;
  /**
   * Recover each crash image only once per set of acknowledgements: a variant whose disks are byte
   * for byte those of one already recovered, with the same marks, is counted but not recovered.
   */
  skipDuplicateImages?: boolean;
  /** Run the workload a second time and require an identical trace (the seed replays). */
  checkReplay?: boolean;
  /**
   * Narrow to THINBD_CRASH_POINT / THINBD_VARIANT from the environment (default true). A campaign
   * nested in another's recover passes false: the outer campaign's narrowing selects it.
   */
  narrowFromEnv?: boolean;
}

export interface CrashCampaignResult {
  seed: number;
  /** Events in the workload's trace. */
  eventCount: number;
  /** Crash points (eventCount + 1). */
  crashPointCount: number;
  /** Crash points whose state differed from the one before (only those are tested). */
  distinctCrashPointCount: number;
  /** Crash images recovered and checked. */
  statesTested: number;
  /** Distinct crash images (by their bytes, CrashPoint.imageDigest) among those states. */
  distinctImageCount: number;
  /** Most writes pending at one crash point. */
  pendingWritesMax: number;
  durationMs: number;
}

function envInteger(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined || text === '') return undefined;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer, not ${text}`);
  return value;
}

async function runWorkload(options: CrashCampaignOptions): Promise<SimMachine> {
  const machine = new SimMachine({ seed: options.seed, ...(options.images === undefined ? {} : { images: options.images }) });
  if (options.setup !== undefined) {
    await options.setup(machine);
    machine.resetTrace();
  }
  await options.workload(machine);
  return machine;
}

export async function runCrashCampaign(options: CrashCampaignOptions): Promise<CrashCampaignResult> {
  const startedMs = performance.now();
  const { seed, budget } = options;
  const label = options.name === undefined ? '' : `${options.name}: `;
  const narrow = options.narrowFromEnv !== false;
  const onlyPoint = narrow ? envInteger('THINBD_CRASH_POINT') : undefined;
  const onlyVariant = narrow ? envInteger('THINBD_VARIANT') : undefined;

  let machine: SimMachine;
  try {
    machine = await runWorkload(options);
  } catch (error) {
    throw new Error(`${label}seed=${seed} workload failed before any crash: ${errorText(error)}`, { cause: error });
  }
  if (options.checkReplay === true) {
    const again = await runWorkload(options);
    if (again.traceDigest() !== machine.traceDigest()) {
      throw new Error(`${label}seed=${seed} the workload is not deterministic: two runs gave different traces`);
    }
  }

  const result: CrashCampaignResult = {
    seed,
    eventCount: machine.events.length,
    crashPointCount: machine.events.length + 1,
    distinctCrashPointCount: 0,
    statesTested: 0,
    distinctImageCount: 0,
    pendingWritesMax: 0,
    durationMs: 0,
  };
  const images = new Set<string>();
  const recovered = new Set<string>();
  let previousKey: string | undefined;
  const points =
    options.crashPointSample === undefined || onlyPoint !== undefined
      ? machine.crashPoints()
      : machine.crashPointsAt(sampleCrashPoints(seed, machine.events.length + 1, options.crashPointSample));
  for (const point of points) {
    if (onlyPoint !== undefined && point.eventCount !== onlyPoint) continue;
    // A completion, a sync start or a mark that changes neither what is durable nor what is
    // pending nor what was acknowledged yields the very same crash states: test them once.
    if (point.stateKey === previousKey && onlyPoint === undefined) continue;
    previousKey = point.stateKey;
    result.distinctCrashPointCount += 1;
    result.pendingWritesMax = Math.max(result.pendingWritesMax, point.pending.length);
    for (const variant of point.variants(budget)) {
      if (onlyVariant !== undefined && variant.variantIndex !== onlyVariant) continue;
      if (options.statesMax !== undefined && result.statesTested >= options.statesMax) break;
      const digest = point.imageDigest(variant);
      images.add(digest);
      if (options.skipDuplicateImages === true && onlyVariant === undefined) {
        const stateKey = `${digest}|${point.marks.join('\n')}`;
        if (recovered.has(stateKey)) continue;
        recovered.add(stateKey);
      }
      const crashed = point.machine(variant);
      const context: CrashContext = { seed, crashPoint: point, variant, marks: point.marks };
      try {
        await options.recover(crashed, point.marks, context);
      } catch (error) {
        crashed.kill();
        throw new Error(
          `${label}seed=${seed} crashPoint=${point.eventCount} variant=${variant.variantIndex}: ${errorText(error)}\n` +
            `  crash ${point.describe()}\n  variant: ${variant.description}\n` +
            `  replay: THINBD_SEED=${seed} THINBD_CRASH_POINT=${point.eventCount} THINBD_VARIANT=${variant.variantIndex}\n` +
            `  trace (! = after the crash):\n${describeTrace(machine.events, point.eventCount)}`,
          { cause: error },
        );
      }
      crashed.kill();
      result.statesTested += 1;
    }
    if (options.statesMax !== undefined && result.statesTested >= options.statesMax) break;
  }
  result.distinctImageCount = images.size;
  result.durationMs = performance.now() - startedMs;
  return result;
}

/** `count` distinct crash point indexes (event counts) in [0, pointCount), ascending, seeded. */
function sampleCrashPoints(seed: number, pointCount: number, count: number): number[] {
  if (count >= pointCount) return Array.from({ length: pointCount }, (_, index) => index);
  const rng = new Rng(mixSeed(seed, 0x5a3e));
  const chosen = new Set<number>([pointCount - 1]);
  while (chosen.size < count) chosen.add(rng.int(pointCount));
  return [...chosen].sort((a, b) => a - b);
}

/** Seeds for a batch of campaigns, derived from one seed so one number replays them all. */
export function campaignSeeds(seed: number, count: number): number[] {
  const rng = new Rng(mixSeed(seed, 0xca3a));
  return Array.from({ length: count }, () => rng.next());
}

/**
 * The seeds a campaign test runs: THINBD_SEED alone when it is set (`replaying` one failure);
 * otherwise the seeds regressions.json keeps under `suite`, then `count` derived from `rootSeed`.
 */
export function campaignTestSeeds(suite: string, rootSeed: number, count: number): { seeds: number[]; replaying: boolean } {
  const replaySeed = seedFromEnv(-1);
  if (replaySeed >= 0) return { seeds: [replaySeed], replaying: true };
  return { seeds: [...regressionSeeds(suite), ...campaignSeeds(rootSeed, count)], replaying: false };
}

function regressionSeeds(suite: string): number[] {
  const file = path.join(import.meta.dirname, 'regressions.json');
  const parsed = JSON.parse(readFileSync(file, 'utf8')) as Record<string, Array<{ seed: number }>>;
  return (parsed[suite] ?? []).map((entry) => entry.seed);
}

export interface CampaignTotals {
  /** Events in the workloads' traces. */
  eventCount: number;
  distinctCrashPointCount: number;
  statesTested: number;
  /** Distinct crash images among them (summed per campaign: two traces never share one). */
  distinctImageCount: number;
  /** States tested by campaigns nested in a campaign's recover (a second power cut). */
  compoundStatesTested: number;
  /** The first failure of each campaign that failed, with its seed and how to replay it. */
  failures: string[];
  durationMs: number;
}

/**
 * Runs one campaign per seed, every one even after one fails, so that one run lists every failing
 * seed; a failing campaign's states up to its failure are not counted.
 */
export async function runCampaigns(
  seeds: readonly number[],
  campaign: (seed: number) => Promise<CrashCampaignResult & { compoundStates: number }>,
): Promise<CampaignTotals> {
  const startedMs = performance.now();
  const totals: CampaignTotals = {
    eventCount: 0,
    distinctCrashPointCount: 0,
    statesTested: 0,
    distinctImageCount: 0,
    compoundStatesTested: 0,
    failures: [],
    durationMs: 0,
  };
  for (const seed of seeds) {
    try {
      const result = await campaign(seed);
      totals.eventCount += result.eventCount;
      totals.distinctCrashPointCount += result.distinctCrashPointCount;
      totals.statesTested += result.statesTested;
      totals.distinctImageCount += result.distinctImageCount;
      totals.compoundStatesTested += result.compoundStates;
    } catch (error) {
      totals.failures.push(error instanceof Error ? error.message : String(error));
    }
  }
  totals.durationMs = performance.now() - startedMs;
  return totals;
}

function errorText(error: unknown): string {
  if (error instanceof Error) {
    const code = 'code' in error && typeof error.code === 'string' ? `${error.code}: ` : '';
    return `${code}${error.message}`;
  }
  return String(error);
}
