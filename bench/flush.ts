// What a flush costs with the delta log on and off (issue 4): metadata blocks written per flush,
// amortized over the rollups the run causes (the final rollup included), and flushes per second
// on real files with real fdatasync, for three workloads:
//   overwrite+flush        a 4 KiB write into an already provisioned, unshared block
//   new-block+flush        a 4 KiB write into a new block
//   16 scattered+flush     16 writes of 4 KiB into new blocks scattered over the volume
// Then the time to open a pool after a crash against the number of log records to replay.
//
// npm run bench -- flush [--quick] [--write-doc]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from '../src/pool/pool.ts';
import { MemoryBlockFile } from '../src/io/memory.ts';
import { DELTA_LOG_BLOCK_COUNT, METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES } from '../src/constants.ts';
import { machineDescription, writeBenchmarkSection } from './peers.ts';

const BLOCK_SIZE_BYTES = 64 * 1024;
const VOLUME_BLOCKS = 64 * 1024;
const WRITE_BYTES = 4096;

interface Workload {
  name: string;
  /** Writes before one flush; `round` counts flushes so far. */
  writes: (round: number) => number[];
  /** Blocks written (and rolled up) before measuring. */
  prepareBlocks: number;
}

function workloads(): Workload[] {
  return [
    { name: 'overwrite+flush', prepareBlocks: 256, writes: (round) => [(round * 97) % 256] },
    { name: 'new-block+flush', prepareBlocks: 0, writes: (round) => [1024 + round * 3] },
    {
      name: '16 scattered new-block writes+flush',
      prepareBlocks: 0,
      writes: (round) => Array.from({ length: 16 }, (_, index) => ((round * 16 + index) * 7919) % VOLUME_BLOCKS),
    },
  ];
}

interface Result {
  metadataBlocksPerFlush: number;
  flushesPerSecond: number;
  rollups: number;
  commits: number;
}

async function measure(workload: Workload, deltaLog: boolean, flushes: number): Promise<Result> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thinbd-bench-flush-'));
  try {
    const pool = await Pool.create(dir, {
      dataSizeBytes: 2 * VOLUME_BLOCKS * BLOCK_SIZE_BYTES,
      blockSizeBytes: BLOCK_SIZE_BYTES,
      metadataSizeBytes: METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES,
      deltaLog,
      commitIntervalMs: 0,
    });
    const volume = await pool.createVolume('v', { sizeBytes: VOLUME_BLOCKS * BLOCK_SIZE_BYTES });
    const bytes = new Uint8Array(WRITE_BYTES).fill(0x5a);
    for (let block = 0; block < workload.prepareBlocks; block++) await volume.write(block * BLOCK_SIZE_BYTES, bytes);
    await pool.rollup();
    const written = new Set<number>();
    const before = pool.status().counters;
    const startMs = performance.now();
    for (let round = 0; round < flushes; round++) {
      await Promise.all(
        workload.writes(round).map((block) => {
          written.add(block);
          return volume.write(block * BLOCK_SIZE_BYTES + 512, bytes);
        }),
      );
      await pool.flush();
    }
    const seconds = (performance.now() - startMs) / 1000;
    await pool.rollup(); // what the log defers is paid here: counted
    const after = pool.status().counters;
    await pool.close();
    return {
      metadataBlocksPerFlush: (after.metadataBlocksWritten - before.metadataBlocksWritten) / flushes,
      flushesPerSecond: flushes / seconds,
      rollups: after.rollups - before.rollups,
      commits: after.commits - before.commits,
    };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Opening a pool whose log holds `records` records of 16 new-block mappings each (in memory: replay and rollup CPU). */
async function replayTime(records: number): Promise<{ openMs: number; replayed: number }> {
  const files = { metadata: new MemoryBlockFile(0, 'metadata'), data: new MemoryBlockFile(0, 'data') };
  const pool = await Pool.createOn(files, { dataSizeBytes: 8192 * BLOCK_SIZE_BYTES, blockSizeBytes: BLOCK_SIZE_BYTES, metadataSizeBytes: METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES });
  const volume = await pool.createVolume('v', { sizeBytes: 8192 * BLOCK_SIZE_BYTES });
  const bytes = new Uint8Array(512).fill(1);
  await volume.write(0, bytes);
  await pool.rollup();
  // A raised high-water mark rolls the log up on the way: flush until the log holds `records`.
  for (let flush = 0; pool.status().counters.logBlocksUsed < records; flush++) {
    for (let index = 0; index < 16; index++) await volume.write((1 + flush * 16 + index) * 2 * BLOCK_SIZE_BYTES, bytes);
    await pool.flush();
  }
  const replayed = pool.status().counters.logBlocksUsed;
  const image = { metadata: MemoryBlockFile.from(files.metadata.snapshot()), data: MemoryBlockFile.from(files.data.snapshot()) };
  await pool.close();
  const startMs = performance.now();
  const reopened = await Pool.openOn(image);
  const openMs = performance.now() - startMs;
  await reopened.close();
  return { openMs, replayed };
}

export async function flushBenchmark(flags: string[]): Promise<void> {
  const quick = flags.includes('--quick');
  const flushes = quick ? 100 : 1000;
  const rounds = quick ? 1 : 3;
  const lines: string[] = [
    '## Flush: the delta log',
    '',
    `Machine: ${machineDescription()}.`,
    `Command: \`npm run bench -- flush${quick ? ' --quick' : ''}\`; ${flushes} flushes per run, medians of ${rounds} runs alternating log on and off, real files in ${os.tmpdir()} (fdatasync each),`,
    `64 KiB blocks, 4 KiB writes. Metadata blocks per flush count every metadata block written during the run and the`,
    `rollup after it (tree nodes, space maps, superblock copies, log records), divided by the flushes. Log off is a full`,
    `commit per flush (\`PoolOpenOptions.deltaLog: false\`).`,
    '',
    '| workload | log | metadata blocks per flush | flushes/s | rollups | full commits |',
    '|---|---|---:|---:|---:|---:|',
  ];
  console.log(lines.join('\n'));
  for (const workload of workloads()) {
    // Rounds alternate log on and off, so a slow spell of the disk hits both; medians are shown.
    const results = new Map<boolean, Result[]>([[true, []], [false, []]]);
    for (let round = 0; round < rounds; round++) {
      for (const deltaLog of [true, false]) results.get(deltaLog)!.push(await measure(workload, deltaLog, flushes));
    }
    for (const deltaLog of [true, false]) {
      const all = results.get(deltaLog)!;
      const median = (pick: (result: Result) => number): number => {
        const values = all.map(pick).sort((a, b) => a - b);
        return values[Math.floor(values.length / 2)]!;
      };
      const line =
        `| ${workload.name} | ${deltaLog ? 'on' : 'off'} | ${median((r) => r.metadataBlocksPerFlush).toFixed(3)} | ${median((r) => r.flushesPerSecond).toFixed(0)} | ` +
        `${deltaLog ? median((r) => r.rollups) : '–'} | ${median((r) => r.commits)} |`;
      console.log(line);
      lines.push(line);
    }
  }
  const replayLines = [
    '',
    `Open after a crash against the log to replay (records of 16 new-block mappings each; the ring holds ${DELTA_LOG_BLOCK_COUNT}),`,
    'in memory, so the time is replay plus the rollup that follows it, without I/O waits; median of 5:',
    '',
    '| log records | open ms (replay + rollup) |',
    '|---:|---:|',
  ];
  console.log(replayLines.join('\n'));
  lines.push(...replayLines);
  for (const records of [0, 1, 8, 32, DELTA_LOG_BLOCK_COUNT - 1]) {
    const times: number[] = [];
    let replayed = 0;
    for (let run = 0; run < 5; run++) {
      const result = await replayTime(records);
      times.push(result.openMs);
      replayed = result.replayed;
    }
    times.sort((a, b) => a - b);
    const line = `| ${replayed} | ${times[2]!.toFixed(1)} |`;
    console.log(line);
    lines.push(line);
  }
  if (flags.includes('--write-doc')) writeBenchmarkSection('flush', lines.join('\n'));
}
