// What failing disks cost (issue 17), on real files with real fdatasync:
//   remap            a 4 KiB write into a block whose sectors refuse writes (fault rules at the io
//                    seam): narrowed to the sectors, the block moved (its 64 KiB read and written
//                    elsewhere), and the move made durable before the write returns (data sync,
//                    one delta-log record, metadata sync). Latency avg / p95 / p99, beside
//   fdatasync        one 4 KiB write + fdatasync of a file the size of the metadata file, in the
//                    same directory: dm-remap's yardstick (its remap persist: 7.6 ms avg, 8.3 p99);
//   mirror cost      the metadata mirror's cost per commit: new-block+flush (one log record per
//                    flush) and full commits (log off), with and without the mirror, alternating.
//
// The remap row also says where the time goes: I/Os per remapped write on each file (from the
// pool's health counters) and the average fdatasync of each, so the floor of two syncs in a row
// (the new block's data, then the record pointing to it) can be read off the table.
//
// npm run bench -- remap [--quick] [--rounds N] [--write-doc]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES } from '../src/constants.ts';
import type { FaultRule } from '../src/io/fault-injection.ts';
import { Pool } from '../src/pool/pool.ts';
import { machineDescription, writeBenchmarkSection } from './peers.ts';

const BLOCK_SIZE_BYTES = 64 * 1024;
const SECTORS_PER_BLOCK = BLOCK_SIZE_BYTES / 512;
const WRITE_BYTES = 4096;
const METADATA_BYTES = METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES;

interface Summary {
  avgMs: number;
  p95Ms: number;
  p99Ms: number;
}

function summary(samplesMs: number[]): Summary {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return { avgMs: sorted.reduce((total, value) => total + value, 0) / sorted.length, p95Ms: at(0.95), p99Ms: at(0.99) };
}

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'thinbd-bench-remap-'));
}

/** Remapped 4 KiB writes: block b's sectors 8..15 refuse writes; each write into them moves the block. */
interface RemapProfile {
  /** Per remapped write, on the data and the metadata file. */
  perRemap: { data: IoCounts; metadata: IoCounts };
  /** Average fdatasync of each file while remapping, ms. */
  syncAvgMs: { data: number; metadata: number };
}

interface IoCounts {
  reads: number;
  writes: number;
  failedWrites: number;
  syncs: number;
}

async function remapLatencies(count: number): Promise<{ samplesMs: number[]; remaps: number; profile: RemapProfile }> {
  const dir = tempDir();
  try {
    const created = await Pool.create(dir, { dataSizeBytes: 4 * count * BLOCK_SIZE_BYTES, blockSizeBytes: BLOCK_SIZE_BYTES, metadataSizeBytes: METADATA_BYTES });
    const volume = await created.createVolume('v', { sizeBytes: count * BLOCK_SIZE_BYTES });
    const bytes = new Uint8Array(BLOCK_SIZE_BYTES).fill(0x5a);
    for (let block = 0; block < count; block++) await volume.write(block * BLOCK_SIZE_BYTES, bytes);
    const dataBlocks = volume.mappedRuns().flatMap((run) => Array.from({ length: run.lengthBlocks }, (_, index) => run.dataBlock + index));
    await created.close();
    const rules: FaultRule[] = dataBlocks.map((block) => ({ file: 'data', op: 'write', beginSector: block * SECTORS_PER_BLOCK + 8, endSector: block * SECTORS_PER_BLOCK + 16 }));
    const pool = await Pool.open(dir, { faultRules: rules, commitIntervalMs: 0 });
    const target = pool.volume('v');
    const write = new Uint8Array(WRITE_BYTES).fill(0xa5);
    const samplesMs: number[] = [];
    const before = pool.status().health;
    for (let block = 0; block < count; block++) {
      const startMs = performance.now();
      await target.write(block * BLOCK_SIZE_BYTES + WRITE_BYTES, write);
      samplesMs.push(performance.now() - startMs);
    }
    const after = pool.status().health;
    const remaps = after.data.remaps.remaps;
    await pool.close();
    const counts = (device: 'data' | 'metadata'): IoCounts => {
      const was = before[device];
      const now = after[device];
      return {
        reads: (now.latencyMs.read.count - was.latencyMs.read.count) / count,
        writes: (now.latencyMs.write.count - was.latencyMs.write.count) / count,
        failedWrites: (now.ioErrors.write - was.ioErrors.write) / count,
        syncs: (now.latencyMs.sync.count - was.latencyMs.sync.count) / count,
      };
    };
    const syncAvg = (device: 'data' | 'metadata'): number => {
      const was = before[device].latencyMs.sync;
      const now = after[device].latencyMs.sync;
      return (now.avgMs * now.count - was.avgMs * was.count) / Math.max(1, now.count - was.count);
    };
    return { samplesMs, remaps, profile: { perRemap: { data: counts('data'), metadata: counts('metadata') }, syncAvgMs: { data: syncAvg('data'), metadata: syncAvg('metadata') } } };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** 4 KiB write + fdatasync at scattered places of a sparse file as large as a pool's metadata file. */
function fdatasyncLatencies(count: number): number[] {
  const dir = tempDir();
  try {
    const file = path.join(dir, 'metadata');
    const fd = fs.openSync(file, 'w+');
    fs.ftruncateSync(fd, 2 * METADATA_BYTES);
    const bytes = Buffer.alloc(WRITE_BYTES, 0x33);
    const samplesMs: number[] = [];
    for (let index = 0; index < count; index++) {
      const startMs = performance.now();
      fs.writeSync(fd, bytes, 0, WRITE_BYTES, ((index * 7919) % 4096) * WRITE_BYTES);
      fs.fdatasyncSync(fd);
      samplesMs.push(performance.now() - startMs);
    }
    fs.closeSync(fd);
    return samplesMs;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
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

export async function remapBenchmark(flags: string[]): Promise<void> {
  const quick = flags.includes('--quick');
  const count = quick ? 50 : 300;
  const flushes = quick ? 100 : 500;
  const roundsFlag = flags.indexOf('--rounds');
  const rounds = roundsFlag >= 0 ? Number(flags[roundsFlag + 1]) : quick ? 1 : 3;
  if (!Number.isSafeInteger(rounds) || rounds < 1) throw new Error(`--rounds: '${flags[roundsFlag + 1]}' is not a whole number of at least 1`);
  // Latencies: the two measured in turn, rounds times, samples pooled.
  const remapSamples: number[] = [];
  const syncSamples: number[] = [];
  let remaps = 0;
  const profiles: RemapProfile[] = [];
  for (let round = 0; round < rounds; round++) {
    syncSamples.push(...fdatasyncLatencies(count));
    const result = await remapLatencies(count);
    remapSamples.push(...result.samplesMs);
    remaps += result.remaps;
    profiles.push(result.profile);
  }
  const mean = (pick: (profile: RemapProfile) => number): number => profiles.reduce((total, profile) => total + pick(profile), 0) / profiles.length;
  const ioText = (device: 'data' | 'metadata'): string =>
    `${device}: ${mean((p) => p.perRemap[device].reads).toFixed(1)} read(s), ${mean((p) => p.perRemap[device].writes).toFixed(1)} write(s)` +
    `${device === 'data' ? ` + ${mean((p) => p.perRemap[device].failedWrites).toFixed(1)} refused (the narrowing)` : ' (one per mirror copy)'}, ` +
    `${mean((p) => p.perRemap[device].syncs).toFixed(1)} fdatasync of ${ms(mean((p) => p.syncAvgMs[device]))} ms avg`;
  const remap = summary(remapSamples);
  const sync = summary(syncSamples);
  // The mirror's cost per flush: with and without, alternating, medians of rounds.
  const rows: string[] = [];
  for (const deltaLog of [true, false]) {
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
  const lines = [
    '## Failing disks: remap persist latency and the metadata mirror',
    '',
    `Machine: ${machineDescription()}; shared with other work, so figures are noisy: compare within a row.`,
    `Command: \`npm run bench -- remap${quick ? ' --quick' : ''}${roundsFlag >= 0 ? ` --rounds ${rounds}` : ''}\`; real files in ${os.tmpdir()}, 64 KiB blocks, 4 KiB writes; ${rounds} round(s) alternating.`,
    '',
    `Remap: a 4 KiB write into a block whose sectors refuse writes (fault rules), ${count} per round, ${remaps} remapped in all; the write returns once the`,
    'move is durable (narrowing by bisection, 64 KiB read and written to a new block, data sync, one delta-log record, metadata sync).',
    'fdatasync: one 4 KiB write + fdatasync of a sparse file the size of the mirrored metadata file, in the same directory.',
    '',
    '| operation | avg ms | p95 ms | p99 ms |',
    '| --- | --- | --- | --- |',
    `| remapped write, durable on return | ${ms(remap.avgMs)} | ${ms(remap.p95Ms)} | ${ms(remap.p99Ms)} |`,
    `| one 4 KiB write + fdatasync | ${ms(sync.avgMs)} | ${ms(sync.p95Ms)} | ${ms(sync.p99Ms)} |`,
    `| ratio | ${(remap.avgMs / sync.avgMs).toFixed(2)}× | ${(remap.p95Ms / sync.p95Ms).toFixed(2)}× | ${(remap.p99Ms / sync.p99Ms).toFixed(2)}× |`,
    '',
    `Per remapped write (${ioText('data')}; ${ioText('metadata')}): the two syncs in a row are the floor, ` +
      `${ms(mean((p) => p.syncAvgMs.data + p.syncAvgMs.metadata))} ms of the ${ms(remap.avgMs)} ms average.`,
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
