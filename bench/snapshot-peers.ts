// Snapshot creation with ≥ 1M mapped blocks, thinbd against qcow2's internal snapshot (issue 6):
// `thinbd snapshot` on a pool whose volume maps 1,048,576 scattered blocks (one mapping entry
// each, restored from thin_dump XML) against `qemu-img snapshot -c` on a qcow2 image with
// 1,048,576 allocated 4 KiB clusters (preallocation=metadata). Neither side writes data: only
// the metadata work of a snapshot is measured, as a user runs it (process start included), so
// each side also snapshots an empty volume / image to show what the process start alone costs.
// qcow2 must raise the refcount of every allocated cluster; thinbd shares the mapping root.
//
// npm run bench -- snapshot-peers [--quick] [--write-doc]
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from '../src/pool/pool.ts';
import { ROOT, THINBD, machineDescription, writeBenchmarkSection } from './peers.ts';
import { BLOCK_SIZE_BYTES, MAPPINGS_FULL, MAPPINGS_QUICK, writeThinDumpXml } from './tools.ts';

const QCOW2_CLUSTER_BYTES = 4096;
const SNAPSHOTS = 3;

interface Timed {
  seconds: number;
  peakRssBytes: number;
}

/** Runs a command under /usr/bin/time: wall seconds and the child's peak RSS. */
function timed(command: string, args: string[]): Timed {
  const start = performance.now();
  const result = spawnSync('/usr/bin/time', ['-f', '%M', command, ...args], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const seconds = (performance.now() - start) / 1000;
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr}`);
  const lines = result.stderr.trim().split('\n');
  return { seconds, peakRssBytes: Number(lines[lines.length - 1]) * 1024 };
}

function run(command: string, args: string[]): void {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr}`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

interface Row {
  mappedBlocks: number;
  thinbd: Timed[];
  qemu: Timed[];
  /** pool.snapshot + pool.flush in this process: the engine's share of `thinbd snapshot`. */
  inProcessSeconds: number[];
}

export async function snapshotPeersBenchmark(flags: string[]): Promise<void> {
  const mappings = flags.includes('--quick') ? MAPPINGS_QUICK : MAPPINGS_FULL;
  const work = mkdtempSync(join(ROOT, '.bench-tmp-snap-'));
  const rows: Row[] = [];
  try {
    for (const mappedBlocks of [0, mappings]) {
      const pool = join(work, `pool-${mappedBlocks}`);
      const image = join(work, `image-${mappedBlocks}.qcow2`);
      const imageBytes = mappedBlocks > 0 ? mappedBlocks * QCOW2_CLUSTER_BYTES : 1024 ** 3;
      if (mappedBlocks > 0) {
        const xml = join(work, 'mappings.xml');
        await writeThinDumpXml(xml, 'scattered', mappedBlocks);
        run(process.execPath, [THINBD, 'restore', '--pool', pool, '-i', xml, '--data-size', String(mappedBlocks * BLOCK_SIZE_BYTES)]);
        rmSync(xml);
        run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${QCOW2_CLUSTER_BYTES},preallocation=metadata`, image, String(imageBytes)]);
      } else {
        run(process.execPath, [THINBD, 'pool', 'create', '--pool', pool, '--data-size', String(1024 ** 3)]);
        run(process.execPath, [THINBD, 'create', '--pool', pool, '1', '--size', String(1024 ** 3)]);
        run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${QCOW2_CLUSTER_BYTES}`, image, String(imageBytes)]);
      }
      const row: Row = { mappedBlocks, thinbd: [], qemu: [], inProcessSeconds: [] };
      for (let index = 0; index < SNAPSHOTS; index += 1) {
        // Alternate which side goes first, as the peer rows do.
        const thinbd = (): void => void row.thinbd.push(timed(process.execPath, [THINBD, 'snapshot', '--pool', pool, '1', `snap${index}`]));
        const qemu = (): void => void row.qemu.push(timed('qemu-img', ['snapshot', '-c', `snap${index}`, image]));
        if (index % 2 === 0) { thinbd(); qemu(); } else { qemu(); thinbd(); }
      }
      const opened = await Pool.open(pool);
      try {
        for (let index = 0; index < SNAPSHOTS; index += 1) {
          const start = performance.now();
          await opened.snapshot('1', `engine${index}`);
          await opened.flush();
          row.inProcessSeconds.push((performance.now() - start) / 1000);
        }
      } finally {
        await opened.close();
      }
      rows.push(row);
      rmSync(pool, { recursive: true, force: true });
      rmSync(image, { force: true });
      process.stderr.write(`snapshot-peers ${mappedBlocks} mapped: thinbd ${median(row.thinbd.map((t) => t.seconds)).toFixed(3)} s, qemu-img ${median(row.qemu.map((t) => t.seconds)).toFixed(3)} s\n`);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const lines = [
    '| mapped blocks | `thinbd snapshot` s | `qemu-img snapshot -c` s | thinbd/qemu-img (time) | thinbd engine: snapshot + commit ms | thinbd peak RSS | qemu-img peak RSS |',
    '|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const row of rows) {
    const t = median(row.thinbd.map((x) => x.seconds));
    const q = median(row.qemu.map((x) => x.seconds));
    const rss = (values: Timed[]): string => `${Math.round(Math.max(...values.map((x) => x.peakRssBytes)) / 2 ** 20)} MiB`;
    lines.push(`| ${row.mappedBlocks.toLocaleString('en-US')} | ${t.toFixed(3)} | ${q.toFixed(3)} | ${(t / q).toFixed(2)}× | ${(median(row.inProcessSeconds) * 1000).toFixed(1)} | ${rss(row.thinbd)} | ${rss(row.qemu)} |`);
  }
  const body = [
    '## Snapshot creation with ≥ 1M mapped blocks: thinbd vs qcow2 internal snapshot',
    '',
    `Machine: ${machineDescription()}.`,
    `Command: \`npm run bench -- snapshot-peers${flags.includes('--quick') ? ' --quick' : ''}\`; medians of ${SNAPSHOTS} snapshots in a row, wall clock,`,
    'process start included (the 0 row is what an empty volume / image costs). thinbd: a volume with the blocks mapped one',
    `entry each (scattered, 64 KiB blocks, restored from thin_dump XML), pool not served. qcow2: ${QCOW2_CLUSTER_BYTES / 1024} KiB clusters,`,
    '`preallocation=metadata` (every cluster allocated, no data written). Smaller is better; below 1.00× thinbd is faster.',
    'The engine column is `Pool.snapshot` + `flush` (the commit) timed inside one process on the same pool: what remains of',
    '`thinbd snapshot` without the Node.js start and pool open.',
    '',
    ...lines,
  ].join('\n');
  console.log(body);
  if (flags.includes('--write-doc')) writeBenchmarkSection('snapshot-peers', body);
}
