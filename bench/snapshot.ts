// Snapshot creation time against the number of mapped blocks (issue 2): the figure must not grow
// with the mapping count, because a snapshot shares the origin's mapping root (O(1) metadata).
// Volumes are written randomly (one mapping entry per block) and sequentially (few entries).
import { performance } from 'node:perf_hooks';
import { Pool } from '../src/pool/pool.ts';
import { MemoryBlockFile } from '../src/io/memory.ts';
import { CountingBlockFile } from '../src/io/counting.ts';
import { loadavg } from 'node:os';
import { NullBlockFile } from './null-file.ts';
import { writeBenchmarkSection } from './peers.ts';

const BLOCK_SIZE_BYTES = 64 * 1024;
const SNAPSHOTS_PER_POINT = 7;

function shuffled(count: number, seed: number): number[] {
  const order = Array.from({ length: count }, (_, index) => index);
  let state = seed >>> 0;
  for (let index = count - 1; index > 0; index -= 1) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const other = state % (index + 1);
    [order[index], order[other]] = [order[other]!, order[index]!];
  }
  return order;
}

async function measure(mappedBlocks: number, pattern: 'random' | 'sequential'): Promise<{ medianMs: number; metadataBlocksWritten: number; fillSeconds: number }> {
  const metadata = new CountingBlockFile(new MemoryBlockFile(0, 'metadata'));
  const data = new NullBlockFile(mappedBlocks * BLOCK_SIZE_BYTES * 2);
  const pool = await Pool.createOn(
    { metadata, data },
    { dataSizeBytes: mappedBlocks * BLOCK_SIZE_BYTES * 2, blockSizeBytes: BLOCK_SIZE_BYTES, metadataSizeBytes: 4 * 1024 ** 3 },
  );
  const volume = await pool.createVolume('origin', { sizeBytes: mappedBlocks * BLOCK_SIZE_BYTES });
  const order = pattern === 'random' ? shuffled(mappedBlocks, 42) : Array.from({ length: mappedBlocks }, (_, i) => i);
  const sector = new Uint8Array(512).fill(7);
  const fillStart = performance.now();
  const inFlightMax = 64;
  for (let begin = 0; begin < order.length; begin += inFlightMax) {
    await Promise.all(order.slice(begin, begin + inFlightMax).map((block) => volume.write(block * BLOCK_SIZE_BYTES, sector)));
    if (begin % (64 * 1024) === 0) await pool.flush();
  }
  await pool.flush();
  const fillSeconds = (performance.now() - fillStart) / 1000;
  // With the delta log the fill's last flush may be a log record; the first snapshot then rolls
  // the whole fill up. A warm-up snapshot pays that, so the timed ones measure only themselves.
  await pool.snapshot('origin', 'warm-up', { readOnly: true });
  await pool.flush();
  const times: number[] = [];
  const writtenBefore = metadata.counters.writes;
  for (let index = 0; index < SNAPSHOTS_PER_POINT; index += 1) {
    const start = performance.now();
    await pool.snapshot('origin', `snap${index}`, { readOnly: true });
    await pool.flush();
    times.push(performance.now() - start);
  }
  const metadataBlocksWritten = (metadata.counters.writes - writtenBefore) / SNAPSHOTS_PER_POINT;
  await pool.close();
  times.sort((a, b) => a - b);
  return { medianMs: times[Math.floor(times.length / 2)]!, metadataBlocksWritten, fillSeconds };
}

export async function snapshotBenchmark(flags: string[]): Promise<void> {
  const quick = flags.includes('--quick');
  const points = quick ? [1_000, 10_000] : [1_000, 10_000, 100_000, 1_048_576];
  const lines = [
    '## Snapshot creation against mapped blocks (issue 2)',
    '',
    `Command: \`npm run bench -- snapshot${quick ? ' --quick' : ''}\`. A volume of 64 KiB blocks is filled (512 bytes into every`,
    'block, randomly or sequentially; metadata in memory, data in a null file), then snapshotted',
    `${SNAPSHOTS_PER_POINT} times; each figure is the median of snapshot + commit. It must not grow with the mapping count:`,
    "a snapshot shares the origin's mapping root and raises one reference count.",
    '',
    '| mapped blocks | pattern | snapshot+commit ms | metadata blocks written per snapshot | fill s |',
    '|---:|---|---:|---:|---:|',
  ];
  for (const line of lines) console.log(line);
  for (const pattern of ['random', 'sequential'] as const) {
    for (const mappedBlocks of points) {
      const result = await measure(mappedBlocks, pattern);
      const row = `| ${mappedBlocks} | ${pattern} | ${result.medianMs.toFixed(3)} | ${result.metadataBlocksWritten.toFixed(1)} | ${result.fillSeconds.toFixed(1)} |`;
      console.log(row);
      lines.push(row);
    }
  }
  lines.push('', `Machine load average when run: ${loadavg().map((value) => value.toFixed(1)).join(', ')}.`);
  if (flags.includes('--write-doc')) writeBenchmarkSection('snapshot', lines.join('\n'));
}
