// npm run bench -- tools [--quick] [--rounds N] [--write-doc]
//
// The tool belt against thin-provisioning-tools on the same mappings: one XML document with
// ≥ 1M mappings is restored into a thinbd pool (`thinbd restore`) and into dm-thin metadata
// (`thin_restore`); then `thinbd check` is timed against `thin_check` and `thinbd dump` against
// `thin_dump`, and each format's metadata is measured in bytes per mapping. A second document
// holds two devices of that many mappings, one in eight different between them: `thinbd delta`
// is timed against `thin_delta` on it. Each command's peak RSS is reported beside its time. Two layouts: every
// block its own mapping (scattered: the worst case for thinbd's extents, one entry per block in
// both formats) and long sequential runs (one thinbd extent per run, still one dm-thin entry per
// block). The data files are sparse and never read: only metadata is measured.
//
// dm-thin's used metadata comes from its superblock (the metadata space map root's nr_allocated),
// thinbd's from `thinbd pool status`. The commands run as a user runs them (bin/thinbd, built
// first), their output thrown away; times are medians of the rounds, wall clock.
import { spawnSync } from 'node:child_process';
import { closeSync, createWriteStream, mkdtempSync, openSync, readSync, rmSync, writeFileSync, truncateSync } from 'node:fs';
import { once } from 'node:events';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { ROOT, THINBD, writeBenchmarkSection } from './peers.ts';

export const BLOCK_SIZE_BYTES = 64 * 1024;
const SECTOR_BYTES = 512;
const METADATA_BLOCK_SIZE_BYTES = 4096;
export const MAPPINGS_FULL = 1_048_576;
export const MAPPINGS_QUICK = 65_536;
/** Odd, so i ↦ i × it mod 2^k is a permutation of the data blocks. */
const SCATTER_MULTIPLIER = 40_503;
/** Blocks per run in the sequential layout. */
const RUN_BLOCKS = 65_536;
/** In the delta document, the second device differs from the first in one block of this many. */
const DELTA_EVERY_BLOCKS = 8;
/** dm-thin metadata file for thin_restore: room for a million single mappings several times over. */
const DM_METADATA_BYTES = 1024 ** 3;

// dm-thin's on-disk superblock (the kernel's struct thin_disk_superblock), for the used-block count.
const DM_SUPERBLOCK_MAGIC = 27022010n;
const DM_MAGIC_OFFSET = 32;
const DM_DATA_SM_ROOT_OFFSET = 64;
const DM_METADATA_SM_ROOT_OFFSET = 192;
/** In a space map root: nr_blocks u64, then nr_allocated u64. */
const DM_SM_ROOT_ALLOCATED_OFFSET = 8;

export type Layout = 'scattered' | 'sequential';

/** Median wall seconds and peak RSS of one command over the rounds. */
interface Run {
  seconds: number;
  peakRssBytes: number;
}

const TOOLS = ['restore', 'check', 'dump', 'delta'] as const;
type Tool = (typeof TOOLS)[number];

interface Measured {
  layout: Layout;
  mappings: number;
  thinbd: Record<Tool, Run>;
  dm: Record<Tool, Run>;
  thinbdMetadataBytes: number;
  dmMetadataBytes: number;
}

function withSbin(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin` };
}

/** Runs a command under /usr/bin/time with its stdout thrown away: wall seconds and peak RSS. Throws when it fails. */
function timed(command: string, args: string[]): Run {
  const devNull = openSync('/dev/null', 'w');
  try {
    const start = performance.now();
    const result = spawnSync('/usr/bin/time', ['-f', '%M', command, ...args], { stdio: ['ignore', devNull, 'pipe'], env: withSbin(), maxBuffer: 64 * 1024 * 1024 });
    const seconds = (performance.now() - start) / 1000;
    if (result.error !== undefined) throw result.error;
    if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.status}: ${result.stderr.toString()}`);
    const lines = result.stderr.toString().trim().split('\n');
    return { seconds, peakRssBytes: Number(lines[lines.length - 1]) * 1024 };
  } finally {
    closeSync(devNull);
  }
}

function medianRun(runs: Run[]): Run {
  return { seconds: median(runs.map((run) => run.seconds)), peakRssBytes: median(runs.map((run) => run.peakRssBytes)) };
}

function output(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: 'utf8', env: withSbin(), maxBuffer: 64 * 1024 * 1024 });
  if (result.error !== undefined) throw result.error;
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  return result.stdout;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/**
 * thin_dump XML of one device with `mappings` mapped blocks in the given layout, or of two
 * (`devices` 2) where the second remaps one block in eight of the first to another data block.
 */
export async function writeThinDumpXml(path: string, layout: Layout, mappings: number, devices: 1 | 2 = 1): Promise<number> {
  const dataBlockCount = mappings;
  const stream = createWriteStream(path);
  const lines: string[] = [];
  const flush = async (): Promise<void> => {
    if (!stream.write(lines.join(''))) await once(stream, 'drain');
    lines.length = 0;
  };
  lines.push(
    `<superblock uuid="" time="1" transaction="1" flags="0" version="2" data_block_size="${BLOCK_SIZE_BYTES / SECTOR_BYTES}" nr_data_blocks="${dataBlockCount}">\n`,
  );
  for (let devId = 1; devId <= devices; devId += 1) {
    // The second device moves one block in eight to the data block after its own (mod the count).
    const moved = (index: number): number => (devId === 2 && index % DELTA_EVERY_BLOCKS === 0 ? 1 : 0);
    lines.push(`  <device dev_id="${devId}" mapped_blocks="${mappings}" transaction="0" creation_time="0" snap_time="0">\n`);
    if (layout === 'scattered') {
      // Virtual block 2i on data block (i × an odd number) mod the count (a power of two, so every
      // data block once): neither side continues its neighbour's, as in a pool written at random.
      for (let index = 0; index < mappings; index += 1) {
        lines.push(`    <single_mapping origin_block="${2 * index}" data_block="${(index * SCATTER_MULTIPLIER + moved(index)) % mappings}" time="0"/>\n`);
        if (lines.length >= 8192) await flush();
      }
    } else {
      for (let begin = 0; begin < mappings; begin += RUN_BLOCKS) {
        const length = Math.min(RUN_BLOCKS, mappings - begin);
        // A gap of one virtual block between runs keeps them apart.
        const origin = begin + begin / RUN_BLOCKS;
        if (devId === 1) {
          lines.push(`    <range_mapping origin_begin="${origin}" data_begin="${begin}" length="${length}" time="0"/>\n`);
          continue;
        }
        // Runs of 7 blocks kept, then 1 moved: the delta has a run per block changed.
        for (let offset = 0; offset < length; offset += DELTA_EVERY_BLOCKS) {
          const kept = Math.min(DELTA_EVERY_BLOCKS - 1, length - offset - 1);
          if (kept > 0) lines.push(`    <range_mapping origin_begin="${origin + offset}" data_begin="${begin + offset}" length="${kept}" time="0"/>\n`);
          const last = offset + kept;
          lines.push(`    <single_mapping origin_block="${origin + last}" data_block="${(begin + last + 1) % mappings}" time="0"/>\n`);
          if (lines.length >= 8192) await flush();
        }
      }
    }
    lines.push('  </device>\n');
  }
  lines.push('</superblock>\n');
  await flush();
  stream.end();
  await once(stream, 'finish');
  return dataBlockCount;
}

/** Used bytes of dm-thin metadata, from its superblock's metadata space map root. */
function dmMetadataBytes(path: string, dataBlockCount: number): number {
  const superblock = Buffer.alloc(METADATA_BLOCK_SIZE_BYTES);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, superblock, 0, superblock.length, 0);
  } finally {
    closeSync(fd);
  }
  if (superblock.readBigUInt64LE(DM_MAGIC_OFFSET) !== DM_SUPERBLOCK_MAGIC) throw new Error(`${path}: not dm-thin metadata (magic)`);
  const dataBlocks = Number(superblock.readBigUInt64LE(DM_DATA_SM_ROOT_OFFSET));
  if (dataBlocks !== dataBlockCount) throw new Error(`${path}: data space map of ${dataBlocks} blocks, expected ${dataBlockCount}: superblock offsets wrong?`);
  return Number(superblock.readBigUInt64LE(DM_METADATA_SM_ROOT_OFFSET + DM_SM_ROOT_ALLOCATED_OFFSET)) * METADATA_BLOCK_SIZE_BYTES;
}

async function measure(work: string, layout: Layout, mappings: number, rounds: number): Promise<Measured> {
  const dataSizeBytes = String(mappings * BLOCK_SIZE_BYTES);
  const runs = { thinbd: emptyRuns(), dm: emptyRuns() };
  let thinbdMetadataBytes = 0;
  let dmMetadataBytes_ = 0;
  for (const devices of [1, 2] as const) {
    const xml = join(work, `${layout}-${devices}.xml`);
    const dataBlockCount = await writeThinDumpXml(xml, layout, mappings, devices);
    const pool = join(work, `${layout}-${devices}-pool`);
    const dmMetadata = join(work, `${layout}-${devices}-dm-metadata`);
    // Restore (one device): into a new pool and new dm-thin metadata each round, alternating.
    for (let round = 0; round < (devices === 1 ? rounds : 1); round += 1) {
      rmSync(pool, { recursive: true, force: true });
      const thinbdRun = timed(process.execPath, [THINBD, 'restore', '--pool', pool, '-i', xml, '--data-size', dataSizeBytes]);
      writeFileSync(dmMetadata, '');
      truncateSync(dmMetadata, DM_METADATA_BYTES);
      const dmRun = timed('thin_restore', ['-i', xml, '-o', dmMetadata]);
      if (devices === 1) {
        runs.thinbd.restore.push(thinbdRun);
        runs.dm.restore.push(dmRun);
      }
    }
    rmSync(xml);
    for (let round = 0; round < rounds; round += 1) {
      if (devices === 1) {
        runs.thinbd.check.push(timed(process.execPath, [THINBD, 'check', '--pool', pool]));
        runs.dm.check.push(timed('thin_check', [dmMetadata]));
        runs.thinbd.dump.push(timed(process.execPath, [THINBD, 'dump', '--pool', pool]));
        runs.dm.dump.push(timed('thin_dump', [dmMetadata]));
      } else {
        runs.thinbd.delta.push(timed(process.execPath, [THINBD, 'delta', '1', '2', '--pool', pool]));
        runs.dm.delta.push(timed('thin_delta', ['--snap1', '1', '--snap2', '2', dmMetadata]));
      }
    }
    if (devices === 1) {
      const status = JSON.parse(output(process.execPath, [THINBD, 'pool', 'status', '--pool', pool, '--json'])) as { metadataBlocksUsed: number };
      thinbdMetadataBytes = status.metadataBlocksUsed * METADATA_BLOCK_SIZE_BYTES;
      dmMetadataBytes_ = dmMetadataBytes(dmMetadata, dataBlockCount);
    }
    rmSync(pool, { recursive: true, force: true });
    rmSync(dmMetadata, { force: true });
  }
  const medians = (of: Record<Tool, Run[]>): Record<Tool, Run> =>
    Object.fromEntries(TOOLS.map((tool) => [tool, medianRun(of[tool])])) as Record<Tool, Run>;
  return { layout, mappings, thinbd: medians(runs.thinbd), dm: medians(runs.dm), thinbdMetadataBytes, dmMetadataBytes: dmMetadataBytes_ };
}

function emptyRuns(): Record<Tool, Run[]> {
  return { restore: [], check: [], dump: [], delta: [] };
}

function table(results: Measured[]): string {
  const MiB = 1024 * 1024;
  const seconds = (value: number): string => value.toFixed(2);
  const ratio = (a: number, b: number): string => `${(a / b).toFixed(2)}×`;
  const lines = [
    '| layout | mappings | what | thinbd | thin-provisioning-tools | thinbd / dm-thin | thinbd peak RSS | thin-provisioning-tools peak RSS |',
    '|---|---:|---|---:|---:|---:|---:|---:|',
  ];
  const commands: Record<Tool, string> = {
    check: 'check (s): `thinbd check` / `thin_check`',
    dump: 'dump (s): `thinbd dump` / `thin_dump`',
    restore: 'restore (s): `thinbd restore` / `thin_restore`',
    delta: 'delta (s): `thinbd delta` / `thin_delta`, two devices',
  };
  for (const r of results) {
    const mappings = r.mappings.toLocaleString('en-US');
    for (const tool of ['check', 'dump', 'restore', 'delta'] as const) {
      const [thinbd, dm] = [r.thinbd[tool], r.dm[tool]];
      lines.push(
        `| ${r.layout} | ${mappings} | ${commands[tool]} | ${seconds(thinbd.seconds)} | ${seconds(dm.seconds)} | ${ratio(thinbd.seconds, dm.seconds)} | ` +
          `${(thinbd.peakRssBytes / MiB).toFixed(0)} MiB | ${(dm.peakRssBytes / MiB).toFixed(0)} MiB |`,
      );
    }
    const perMapping = (bytes: number): string => (bytes / r.mappings).toFixed(2);
    lines.push(`| ${r.layout} | ${mappings} | metadata bytes per mapping | ${perMapping(r.thinbdMetadataBytes)} | ${perMapping(r.dmMetadataBytes)} | ${ratio(r.thinbdMetadataBytes, r.dmMetadataBytes)} | | |`);
  }
  return lines.join('\n');
}

export async function toolsBenchmark(flags: string[]): Promise<void> {
  const quick = flags.includes('--quick');
  const roundsIndex = process.argv.indexOf('--rounds');
  const rounds = roundsIndex >= 0 ? Math.max(1, Number(process.argv[roundsIndex + 1]) || 3) : 3;
  // --mappings N: the issue's second size (4,194,304) beside the default 1,048,576.
  const mappingsIndex = process.argv.indexOf('--mappings');
  const mappingsAsked = mappingsIndex >= 0 ? Number(process.argv[mappingsIndex + 1]) : undefined;
  if (mappingsAsked !== undefined && (!Number.isSafeInteger(mappingsAsked) || mappingsAsked < 1024 || (mappingsAsked & (mappingsAsked - 1)) !== 0)) {
    throw new Error(`--mappings ${process.argv[mappingsIndex + 1]}: a power of two of at least 1024 (the scattered layout needs one)`);
  }
  const mappings = mappingsAsked ?? (quick ? MAPPINGS_QUICK : MAPPINGS_FULL);
  const thinVersion = output('thin_check', ['-V']).trim();
  // Time the code as it is: bin/thinbd runs dist/ (its bundle, which the build makes after tsc).
  output('npm', ['run', '--silent', '--prefix', ROOT, 'build']);
  const work = mkdtempSync(join(tmpdir(), 'thinbd-bench-tools-'));
  try {
    const loadBefore = loadavg()[0]!;
    const results: Measured[] = [];
    for (const layout of ['scattered', 'sequential'] as const) {
      console.log(`tools: ${layout}, ${mappings} mappings …`);
      results.push(await measure(work, layout, mappings, rounds));
    }
    const body = [
      '## Tools: thinbd check / dump / restore / delta vs thin-provisioning-tools',
      '',
      `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 1024 ** 3)} GiB, Linux ${release()}, Node ${process.version}, thin-provisioning-tools ${thinVersion}; load average ${loadBefore.toFixed(1)} before and ${loadavg()[0]!.toFixed(1)} after (other work was running: compare the ratios, which each round measures side by side).`,
      `Command: \`npm run bench -- tools${quick ? ' --quick' : ''}${mappingsAsked === undefined ? '' : ` --mappings ${mappingsAsked}`} --rounds ${rounds}\`; wall-clock medians of ${rounds} rounds, the two sides alternating, process start included,`,
      `output to /dev/null; peak RSS is /usr/bin/time's maximum resident set (median). The same XML (one volume, 64 KiB blocks) restored by each side; metadata bytes per mapping are the`,
      `metadata blocks in use × 4096 / mapped blocks (thinbd: \`pool status\`; dm-thin: its superblock's metadata space map).`,
      `Scattered: virtual block 2i on data block ${SCATTER_MULTIPLIER}·i mod ${mappings}, one mapping entry per block in both formats. Sequential: runs of ${RUN_BLOCKS} blocks,`,
      `one extent per run in thinbd, still one entry per block in dm-thin. Delta: a second document of two such devices, the second with one block in ${DELTA_EVERY_BLOCKS} moved`,
      `to another data block, restored by each side; \`thinbd delta 1 2\` against \`thin_delta --snap1 1 --snap2 2\`.`,
      '',
      table(results),
    ].join('\n');
    console.log(body);
    if (flags.includes('--write-doc')) writeBenchmarkSection('tools', body);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
