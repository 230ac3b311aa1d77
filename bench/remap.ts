// What failing disks cost (issue 17), on real files with real fdatasync:
//   remap            a 4 KiB write into a block whose sectors refuse writes (fault rules at the io
//                    seam): narrowed to the sectors, the block moved (its 64 KiB read and written
//                    elsewhere), and the move made durable before the write returns (one
//                    delta-log record carrying the write's bytes, one metadata sync: docs/format.md
//                    F-LOG-9; before that change, a data sync first). Latency avg / p95 / p99 on two pools,
//                    the spare area (pool/spare-area.ts) off and on, beside
//   fdatasync        one 4 KiB write + fdatasync of a file the size of the metadata file, in the
//                    same directory: dm-remap's yardstick (its remap persist: 7.6 ms avg, 8.3 p99);
//                    the three measured step by step in turn, so they share the machine's moments;
//   mirror cost      the metadata mirror's cost per commit: new-block+flush (one log record per
//                    flush) and full commits (log off), with and without the mirror, alternating.
//
// The remap rows also say where the time goes: I/Os per remapped write on each file (from the
// pool's health counters) and the average fdatasync of each.
//
// npm run bench -- remap [--quick] [--rounds N] [--latency-only] [--before=DIR] [--write-doc]
// --before=DIR: a source tree (e.g. `git archive main | tar -x -C DIR`, node_modules linked) whose
// Pool runs the same remaps, step by step with the others: before and after a change in one run.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES, REMAP_SPARE_BLOCKS_MAX } from '../src/constants.ts';
import type { FaultRule } from '../src/io/fault-injection.ts';
import { Pool, type PoolStatus, type RemapPhases } from '../src/pool/pool.ts';
import { machineDescription, writeBenchmarkSection } from './peers.ts';

const BLOCK_SIZE_BYTES = 64 * 1024;
const SECTORS_PER_BLOCK = BLOCK_SIZE_BYTES / 512;
const WRITE_BYTES = 4096;
const METADATA_BYTES = METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES;

interface Summary {
  avgMs: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
}

function summary(samplesMs: number[]): Summary {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return { avgMs: sorted.reduce((total, value) => total + value, 0) / sorted.length, p50Ms: at(0.5), p95Ms: at(0.95), p99Ms: at(0.99) };
}

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'thinbd-bench-remap-'));
}

/** Per remapped write, on the data and the metadata file, and the average fdatasync of each while remapping (ms). */
interface RemapProfile {
  perRemap: { data: IoCounts; metadata: IoCounts };
  syncAvgMs: { data: number; metadata: number };
  /** Remaps that moved into a spare, and the spare area's refills (spare-area.ts). */
  sparesTaken: number;
  refills: number;
  /** Per remapped write: log records carrying its bytes, and rollups (full commits: the ring filled). */
  carryingPerRemap: number;
  rollupsPerRemap: number;
}

interface IoCounts {
  reads: number;
  writes: number;
  failedWrites: number;
  syncs: number;
}

/**
 * The remapped pools compared: new blocks only (the spare area off), the spare area on, and with
 * --before DIR the same workload on the Pool of another source tree (a checkout of main: the code
 * before a change, in the same run).
 */
type SpareMode = 'before' | 'off' | 'on';

/** A pool whose `count` blocks are written and then refuse writes in sectors 8..15: each 4 KiB write there moves its block. */
async function remappingPool(PoolClass: typeof Pool, dir: string, count: number, mode: SpareMode): Promise<Pool> {
  const created = await PoolClass.create(dir, { dataSizeBytes: 4 * count * BLOCK_SIZE_BYTES, blockSizeBytes: BLOCK_SIZE_BYTES, metadataSizeBytes: METADATA_BYTES });
  const volume = await created.createVolume('v', { sizeBytes: count * BLOCK_SIZE_BYTES });
  const bytes = new Uint8Array(BLOCK_SIZE_BYTES).fill(0x5a);
  for (let block = 0; block < count; block++) await volume.write(block * BLOCK_SIZE_BYTES, bytes);
  const dataBlocks = volume.mappedRuns().flatMap((run) => Array.from({ length: run.lengthBlocks }, (_, index) => run.dataBlock + index));
  await created.close();
  const rules: FaultRule[] = dataBlocks.map((block) => ({ file: 'data', op: 'write', beginSector: block * SECTORS_PER_BLOCK + 8, endSector: block * SECTORS_PER_BLOCK + 16 }));
  return PoolClass.open(dir, { faultRules: rules, commitIntervalMs: 0, ...(mode === 'on' ? { remapSpareBlocks: REMAP_SPARE_BLOCKS_MAX } : {}) });
}

type Measured = SpareMode | 'fdatasync';

/** The phases of a remapped write (Pool.lastRemapPhases), one sample per remap, and the rest of the request. */
const PHASES = ['narrowMs', 'moveMs', 'decidedToDurableMs', 'persistMs', 'scheduleMs', 'recordIoMs', 'readBackMs', 'restMs'] as const;
type Phase = (typeof PHASES)[number];
type PhaseSamples = Record<Phase, number[]>;

function noPhaseSamples(): PhaseSamples {
  return Object.fromEntries(PHASES.map((phase) => [phase, []])) as unknown as PhaseSamples;
}

interface RoundResult {
  samplesMs: Record<Measured, number[]>;
  /** Per pool whose Pool reports them (the tree of --before may not). */
  phases: Record<SpareMode, PhaseSamples>;
  remaps: Record<SpareMode, number>;
  profile: Record<SpareMode, RemapProfile>;
  /** Time spent waiting, after a remap, for the background work it started (charged to no sample), ms. */
  refillWaitMs: number[];
}

/**
 * One round, interleaved: each step does a 4 KiB write + fdatasync of the yardstick file, a
 * remapped write on the pool without spares and one on the pool with them, in an order that
 * rotates each step, so that the three see the same moments of a shared machine. What a remap
 * starts in the background (the spare area's refill, a rollup of a full log) runs on; the step
 * waits for it before the next measurement (timed apart, so it lands on no sample).
 */
async function remapRound(count: number, modes: readonly SpareMode[], BeforePool: typeof Pool | undefined): Promise<RoundResult> {
  const yardstickDir = tempDir();
  const dirs: string[] = [yardstickDir];
  try {
    const pools = {} as Record<SpareMode, Pool>;
    for (const mode of modes) {
      const dir = tempDir();
      dirs.push(dir);
      pools[mode] = await remappingPool(mode === 'before' ? BeforePool! : Pool, dir, count, mode);
    }
    const fd = fs.openSync(path.join(yardstickDir, 'metadata'), 'w+');
    fs.ftruncateSync(fd, 2 * METADATA_BYTES);
    const syncBytes = Buffer.alloc(WRITE_BYTES, 0x33);
    const write = new Uint8Array(WRITE_BYTES).fill(0xa5);
    const samplesMs: RoundResult['samplesMs'] = { before: [], off: [], on: [], fdatasync: [] };
    const refillWaitMs: number[] = [];
    const phases: RoundResult['phases'] = { before: noPhaseSamples(), off: noPhaseSamples(), on: noPhaseSamples() };
    const before = {} as Record<SpareMode, PoolStatus['health']>;
    const countersBefore = {} as Record<SpareMode, PoolStatus['counters']>;
    for (const mode of modes) {
      before[mode] = pools[mode].status().health;
      countersBefore[mode] = pools[mode].status().counters;
    }
    const steps: Measured[] = ['fdatasync', ...modes];
    for (let index = 0; index < count; index++) {
      for (let turn = 0; turn < steps.length; turn++) {
        const what = steps[(index + turn) % steps.length]!;
        const startMs = performance.now();
        if (what === 'fdatasync') {
          fs.writeSync(fd, syncBytes, 0, WRITE_BYTES, ((index * 7919) % 4096) * WRITE_BYTES);
          fs.fdatasyncSync(fd);
        } else {
          await pools[what].volume('v').write(index * BLOCK_SIZE_BYTES + WRITE_BYTES, write);
        }
        const tookMs = performance.now() - startMs;
        samplesMs[what].push(tookMs);
        if (what !== 'fdatasync') notePhases(phases[what], (pools[what] as Partial<Pool>).lastRemapPhases?.(), tookMs);
        if (what !== 'fdatasync') {
          const waitStartMs = performance.now();
          await pools[what].remapSparesSettled();
          refillWaitMs.push(performance.now() - waitStartMs);
        }
      }
    }
    fs.closeSync(fd);
    const remaps = { before: 0, off: 0, on: 0 };
    const profile = {} as Record<SpareMode, RemapProfile>;
    for (const mode of modes) {
      const was = before[mode];
      const now = pools[mode].status().health;
      const countersWas = countersBefore[mode];
      const countersNow = pools[mode].status().counters;
      remaps[mode] = now.data.remaps.remaps - was.data.remaps.remaps;
      await pools[mode].close();
      const counts = (device: 'data' | 'metadata'): IoCounts => ({
        reads: (now[device].latencyMs.read.count - was[device].latencyMs.read.count) / count,
        writes: (now[device].latencyMs.write.count - was[device].latencyMs.write.count) / count,
        failedWrites: (now[device].ioErrors.write - was[device].ioErrors.write) / count,
        syncs: (now[device].latencyMs.sync.count - was[device].latencyMs.sync.count) / count,
      });
      const syncAvg = (device: 'data' | 'metadata'): number => {
        const wasSync = was[device].latencyMs.sync;
        const nowSync = now[device].latencyMs.sync;
        return (nowSync.avgMs * nowSync.count - wasSync.avgMs * wasSync.count) / Math.max(1, nowSync.count - wasSync.count);
      };
      profile[mode] = {
        perRemap: { data: counts('data'), metadata: counts('metadata') },
        syncAvgMs: { data: syncAvg('data'), metadata: syncAvg('metadata') },
        // The tree of --before may have no spare area.
        sparesTaken: (now.data.spareArea?.taken ?? 0) - (was.data.spareArea?.taken ?? 0),
        refills: (now.data.spareArea?.refills ?? 0) - (was.data.spareArea?.refills ?? 0),
        // The tree of --before may not count carrying records.
        carryingPerRemap: ((countersNow.logRecordsCarrying ?? 0) - (countersWas.logRecordsCarrying ?? 0)) / count,
        rollupsPerRemap: (countersNow.rollups - countersWas.rollups) / count,
      };
    }
    return { samplesMs, phases, remaps, profile, refillWaitMs };
  } finally {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Adds one remapped write's phases (Pool.lastRemapPhases) to the samples; a write that took tookMs in all. */
function notePhases(samples: PhaseSamples, phases: RemapPhases | undefined, tookMs: number): void {
  if (phases === undefined) return;
  samples.narrowMs.push(phases.narrowMs);
  samples.moveMs.push(phases.moveMs);
  samples.persistMs.push(phases.persistMs);
  samples.decidedToDurableMs.push(phases.moveMs + phases.persistMs);
  samples.restMs.push(tookMs - phases.narrowMs - phases.moveMs - phases.persistMs);
  // A remap made durable by a rollup (the ring full) has no record phases.
  if (phases.recordIoMs !== undefined) {
    samples.scheduleMs.push(phases.scheduleMs!);
    samples.recordIoMs.push(phases.recordIoMs);
    samples.readBackMs.push(phases.readBackMs!);
  }
}

/** Flushes per second of a 4 KiB write into a new block + flush, and metadata bytes written per flush. */
async function flushRate(mirror: boolean, deltaLog: boolean, flushes: number): Promise<{ flushesPerSecond: number; metadataBlocksPerFlush: number }> {
  const dir = tempDir();
  try {
    const pool = await Pool.create(dir, {
      dataSizeBytes: 4 * flushes * BLOCK_SIZE_BYTES,
      blockSizeBytes: BLOCK_SIZE_BYTES,
      metadataSizeBytes: METADATA_BYTES,
      metadataMirror: mirror,
      deltaLog,
      commitIntervalMs: 0,
    });
    const volume = await pool.createVolume('v', { sizeBytes: 2 * flushes * BLOCK_SIZE_BYTES });
    const bytes = new Uint8Array(WRITE_BYTES).fill(0x5a);
    await pool.rollup();
    const before = pool.status().counters;
    const startMs = performance.now();
    for (let round = 0; round < flushes; round++) {
      await volume.write(round * 2 * BLOCK_SIZE_BYTES + 512, bytes);
      await pool.flush();
    }
    const seconds = (performance.now() - startMs) / 1000;
    await pool.rollup();
    const after = pool.status().counters;
    await pool.close();
    return { flushesPerSecond: flushes / seconds, metadataBlocksPerFlush: (after.metadataBlocksWritten - before.metadataBlocksWritten) / flushes };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

const ms = (value: number): string => value.toFixed(2);

export async function remapBenchmark(flags: string[], roundsGiven?: number): Promise<void> {
  const quick = flags.includes('--quick');
  const count = quick ? 50 : 300;
  const flushes = quick ? 100 : 500;
  const rounds = roundsGiven ?? (quick ? 1 : 3);
  const loadBefore = os.loadavg();
  // Latencies: the three measured step by step in turn (remapRound), rounds times, samples pooled.
  const beforeFlag = flags.find((flag) => flag.startsWith('--before='));
  const beforeDir = beforeFlag === undefined ? undefined : path.resolve(beforeFlag.slice('--before='.length));
  const BeforePool = beforeDir === undefined ? undefined : ((await import(path.join(beforeDir, 'src', 'pool', 'pool.ts'))) as { Pool: typeof Pool }).Pool;
  const modes: SpareMode[] = [...(BeforePool === undefined ? [] : ['before' as const]), 'off', 'on'];
  const samples: Record<Measured, number[]> = { before: [], off: [], on: [], fdatasync: [] };
  const remaps = { before: 0, off: 0, on: 0 };
  const profiles: Record<SpareMode, RemapProfile[]> = { before: [], off: [], on: [] };
  const refillWaitMs: number[] = [];
  const phaseSamples: Record<SpareMode, PhaseSamples> = { before: noPhaseSamples(), off: noPhaseSamples(), on: noPhaseSamples() };
  for (let round = 0; round < rounds; round++) {
    const result = await remapRound(count, modes, BeforePool);
    for (const what of ['fdatasync', ...modes] as const) samples[what].push(...result.samplesMs[what]);
    for (const mode of modes) for (const phase of PHASES) phaseSamples[mode][phase].push(...result.phases[mode][phase]);
    for (const mode of modes) {
      remaps[mode] += result.remaps[mode];
      profiles[mode].push(result.profile[mode]);
    }
    refillWaitMs.push(...result.refillWaitMs);
  }
  const loadAfterRemaps = os.loadavg();
  const mean = (mode: SpareMode, pick: (profile: RemapProfile) => number): number => profiles[mode].reduce((total, profile) => total + pick(profile), 0) / profiles[mode].length;
  const ioText = (mode: SpareMode, device: 'data' | 'metadata'): string =>
    `${device}: ${mean(mode, (p) => p.perRemap[device].reads).toFixed(1)} read(s), ${mean(mode, (p) => p.perRemap[device].writes).toFixed(1)} write(s)` +
    `${device === 'data' ? ` + ${mean(mode, (p) => p.perRemap[device].failedWrites).toFixed(1)} refused (the narrowing)` : ' (one per mirror copy)'}, ` +
    `${mean(mode, (p) => p.perRemap[device].syncs).toFixed(2)} fdatasync of ${ms(mean(mode, (p) => p.syncAvgMs[device]))} ms avg` +
    `${device === 'metadata' ? `; ${mean(mode, (p) => p.carryingPerRemap).toFixed(2)} log record(s) carrying the write, ${mean(mode, (p) => p.rollupsPerRemap).toFixed(3)} rollups` : ''}`;
  const sync = summary(samples.fdatasync);
  const modeNames: Record<SpareMode, string> = {
    before: `the code of ${beforeDir} (before)`,
    off: 'new block (spare area off)',
    on: 'spare area on',
  };
  const remapRows = modes.map((mode) => {
    const remap = summary(samples[mode]);
    return (
      `| remapped write, durable on return: ${modeNames[mode]} | ${ms(remap.avgMs)} | ${ms(remap.p50Ms)} | ${ms(remap.p95Ms)} | ${ms(remap.p99Ms)} | ` +
      `${(remap.avgMs / sync.avgMs).toFixed(2)}× | ${(remap.p50Ms / sync.p50Ms).toFixed(2)}× | ${(remap.p95Ms / sync.p95Ms).toFixed(2)}× | ${(remap.p99Ms / sync.p99Ms).toFixed(2)}× |`
    );
  });
  const phaseNames: Record<Phase, string> = {
    narrowMs: 'detect and narrow: the refused write began → its sectors known',
    moveMs: 'move: the old block read, the new one written, mapping and bad ranges changed',
    decidedToDurableMs: 'decision to remap → record durable (move + persist)',
    persistMs: 'persist: asked for → record durable',
    scheduleMs: '… of which to the record built (commit scheduler, log entries)',
    recordIoMs: '… of which record built → fdatasync returned (its writes, one per mirror copy, and the sync)',
    readBackMs: '… of which the read-back of the record',
    restMs: 'the rest of the request (lookups, locks, the volume layer)',
  };
  const phaseRows = modes
    .filter((mode) => phaseSamples[mode].persistMs.length > 0)
    .flatMap((mode) =>
      PHASES.filter((phase) => phaseSamples[mode][phase].length > 0).map((phase) => {
        const phaseSummary = summary(phaseSamples[mode][phase]);
        return (
          `| ${modeNames[mode]}: ${phaseNames[phase]} | ${ms(phaseSummary.avgMs)} | ${ms(phaseSummary.p50Ms)} | ${ms(phaseSummary.p95Ms)} | ${ms(phaseSummary.p99Ms)} | ` +
          `${(phaseSummary.avgMs / sync.avgMs).toFixed(2)}× | ${(phaseSummary.p50Ms / sync.p50Ms).toFixed(2)}× | ${(phaseSummary.p95Ms / sync.p95Ms).toFixed(2)}× | ${(phaseSummary.p99Ms / sync.p99Ms).toFixed(2)}× |`
        );
      }),
    );
  const refills = profiles.on.reduce((total, profile) => total + profile.refills, 0);
  const taken = profiles.on.reduce((total, profile) => total + profile.sparesTaken, 0);
  const refillWait = summary(refillWaitMs);
  const refillWaitTotalMs = refillWaitMs.reduce((total, value) => total + value, 0);
  // The mirror's cost per flush: with and without, alternating, medians of rounds.
  const rows: string[] = [];
  for (const deltaLog of flags.includes('--latency-only') ? [] : [true, false]) {
    const withMirror: Array<{ flushesPerSecond: number; metadataBlocksPerFlush: number }> = [];
    const without: Array<{ flushesPerSecond: number; metadataBlocksPerFlush: number }> = [];
    for (let round = 0; round < rounds; round++) {
      withMirror.push(await flushRate(true, deltaLog, flushes));
      without.push(await flushRate(false, deltaLog, flushes));
    }
    const rateWith = median(withMirror.map((result) => result.flushesPerSecond));
    const rateWithout = median(without.map((result) => result.flushesPerSecond));
    rows.push(
      `| new-block+flush, log ${deltaLog ? 'on' : 'off'} | ${rateWithout.toFixed(0)} | ${rateWith.toFixed(0)} | ${(rateWith / rateWithout).toFixed(2)}× | ` +
        `${median(without.map((result) => result.metadataBlocksPerFlush)).toFixed(3)} | ${median(withMirror.map((result) => result.metadataBlocksPerFlush)).toFixed(3)} |`,
    );
  }
  const loadText = (load: number[]): string => load.map((value) => value.toFixed(1)).join(' ');
  const lines = [
    '## Failing disks: remap persist latency and the metadata mirror',
    '',
    `Machine: ${machineDescription()}; shared with other work, so figures are noisy: compare within a row.`,
    `Command: \`npm run bench -- remap${quick ? ' --quick' : ''}${roundsGiven !== undefined ? ` --rounds ${rounds}` : ''}${flags.includes('--latency-only') ? ' --latency-only' : ''}${beforeFlag === undefined ? '' : ` ${beforeFlag}`}\`; real files in ${os.tmpdir()}, 64 KiB blocks, 4 KiB writes; ${rounds} round(s); ` +
      `load average ${loadText(loadBefore)} at the start, ${loadText(loadAfterRemaps)} after the latencies.`,
    '',
    `Remap: a 4 KiB write into a block whose sectors refuse writes (fault rules), ${count} per round on each of ${modes.length} pools, ${modes.map((mode) => remaps[mode]).join(', ')} remapped in all; the`,
    'write returns once the move is durable: narrowed to its sectors, the 64 KiB block read and written (not synced) to another block, then one delta-log record',
    "carrying the remap, the bad range and the write's 4 KiB, and one metadata fdatasync (docs/format.md F-LOG-9; a rollup, a full commit, when the ring is full);",
    'the code before this change synced the data file before the record (two fdatasyncs in a row).',
    `${beforeDir === undefined ? 'One pool' : `One pool runs the code of ${beforeDir} (before); of the others, one`} has the spare area off (the block goes to a new block, which the host file system allocates on the`,
    `writeback or the next data sync), the other on (the block goes to a spare written ahead: ${taken} of ${remaps.on} did; ${refills} refills).`,
    'fdatasync: one 4 KiB write + fdatasync of a sparse file the size of the mirrored metadata file, in the same directory.',
    `The ${modes.length + 1} are measured step by step in turn (the order rotating each step), so they share the moments of the shared machine. What a remap starts`,
    `in the background (a refill of the spare area, a rollup of a log it filled) runs on; the step waits for it apart from the samples: ${refillWaitMs.filter((value) => value > 0.05).length} waits, ` +
      `${ms(refillWaitTotalMs)} ms in all (${ms(refillWaitTotalMs / Math.max(1, refillWaitMs.length))} ms per remap if it were charged to them; p99 wait ${ms(refillWait.p99Ms)} ms).`,
    '',
    '| operation | avg ms | p50 ms | p95 ms | p99 ms | ratio avg | p50 | p95 | p99 |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...remapRows,
    `| one 4 KiB write + fdatasync | ${ms(sync.avgMs)} | ${ms(sync.p50Ms)} | ${ms(sync.p95Ms)} | ${ms(sync.p99Ms)} | 1 | 1 | 1 | 1 |`,
    '',
    ...(phaseRows.length === 0
      ? []
      : [
          'Where a remapped write\'s time goes (Pool.lastRemapPhases, per remap; each phase\'s percentiles taken alone, against the same fdatasync samples):',
          '',
          '| phase | avg ms | p50 ms | p95 ms | p99 ms | ratio avg | p50 | p95 | p99 |',
          '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
          ...phaseRows,
          '',
        ]),
    ...modes.map((mode) => `Per remapped write, ${modeNames[mode]}: ${ioText(mode, 'data')}; ${ioText(mode, 'metadata')}.`),
    '',
    `Metadata mirror (every metadata block written twice, one fdatasync for both): ${flushes} flushes per run, medians of ${rounds}.`,
    '',
    '| workload | flushes/s without | flushes/s with | ratio | metadata blocks/flush without | with (each also written to the copy) |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows,
  ];
  console.log(lines.join('\n'));
  if (flags.includes('--write-doc')) writeBenchmarkSection('remap', lines.join('\n'));
}
