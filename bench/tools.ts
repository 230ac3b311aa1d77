// npm run bench -- tools [--quick] [--rounds N] [--write-doc]
//
// The tool belt against thin-provisioning-tools on the same mappings: one XML document with
// ≥ 1M mappings is restored into a thinbd pool (`thinbd restore`) and into dm-thin metadata
// (`thin_restore`); then `thinbd check` is timed against `thin_check` and `thinbd dump` against
// `thin_dump`, and each format's metadata is measured in bytes per mapping. Two layouts: every
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

interface Measured {
  layout: Layout;
  mappings: number;
  thinbdRestoreS: number;
  thinRestoreS: number;
  thinbdCheckS: number;
  thinCheckS: number;
  thinbdDumpS: number;
  thinDumpS: number;
  thinbdMetadataBytes: number;
  dmMetadataBytes: number;
}

function withSbin(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin` };
}

/** Runs a command with its stdout thrown away; returns wall seconds. Throws when it fails. */
function timed(command: string, args: string[]): number {
  const devNull = openSync('/dev/null', 'w');
  try {
    const start = performance.now();
    const result = spawnSync(command, args, { stdio: ['ignore', devNull, 'pipe'], env: withSbin(), maxBuffer: 64 * 1024 * 1024 });
    const seconds = (performance.now() - start) / 1000;
    if (result.error !== undefined) throw result.error;
    if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.status}: ${result.stderr.toString()}`);
    return seconds;
  } finally {
    closeSync(devNull);
  }
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

/** thin_dump XML of one device with `mappings` mapped blocks in the given layout. */
export async function writeThinDumpXml(path: string, layout: Layout, mappings: number): Promise<number> {
  const dataBlockCount = mappings;
  const stream = createWriteStream(path);
  const lines: string[] = [];
  const flush = async (): Promise<void> => {
    if (!stream.write(lines.join(''))) await once(stream, 'drain');
    lines.length = 0;
  };
  lines.push(
    `<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="${BLOCK_SIZE_BYTES / SECTOR_BYTES}" nr_data_blocks="${dataBlockCount}">\n`,
    `  <device dev_id="1" mapped_blocks="${mappings}" transaction="0" creation_time="0" snap_time="0">\n`,
  );
  if (layout === 'scattered') {
    // Virtual block 2i on data block (i × an odd number) mod the count (a power of two, so every
    // data block once): neither side continues its neighbour's, as in a pool written at random.
    for (let index = 0; index < mappings; index += 1) {
      lines.push(`    <single_mapping origin_block="${2 * index}" data_block="${(index * SCATTER_MULTIPLIER) % mappings}" time="0"/>\n`);
      if (lines.length >= 8192) await flush();
    }
  } else {
    for (let begin = 0; begin < mappings; begin += RUN_BLOCKS) {
      const length = Math.min(RUN_BLOCKS, mappings - begin);
      // A gap of one virtual block between runs keeps them apart.
      lines.push(`    <range_mapping origin_begin="${begin + begin / RUN_BLOCKS}" data_begin="${begin}" length="${length}" time="0"/>\n`);
    }
  }
  lines.push('  </device>\n</superblock>\n');
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
  const xml = join(work, `${layout}.xml`);
  const dataBlockCount = await writeThinDumpXml(xml, layout, mappings);
  const pool = join(work, `${layout}-pool`);
  const dmMetadata = join(work, `${layout}-dm-metadata`);

  const thinbdRestoreS = timed(process.execPath, [THINBD, 'restore', '--pool', pool, '-i', xml, '--data-size', String(dataBlockCount * BLOCK_SIZE_BYTES)]);
  writeFileSync(dmMetadata, '');
  truncateSync(dmMetadata, DM_METADATA_BYTES);
  const thinRestoreS = timed('thin_restore', ['-i', xml, '-o', dmMetadata]);
  rmSync(xml);

  const times = { thinbdCheck: [] as number[], thinCheck: [] as number[], thinbdDump: [] as number[], thinDump: [] as number[] };
  for (let round = 0; round < rounds; round += 1) {
    times.thinbdCheck.push(timed(process.execPath, [THINBD, 'check', '--pool', pool]));
    times.thinCheck.push(timed('thin_check', [dmMetadata]));
    times.thinbdDump.push(timed(process.execPath, [THINBD, 'dump', '--pool', pool]));
    times.thinDump.push(timed('thin_dump', [dmMetadata]));
  }
  const status = JSON.parse(output(process.execPath, [THINBD, 'pool', 'status', '--pool', pool, '--json'])) as { metadataBlocksUsed: number };
  return {
    layout,
    mappings,
    thinbdRestoreS,
    thinRestoreS,
    thinbdCheckS: median(times.thinbdCheck),
    thinCheckS: median(times.thinCheck),
    thinbdDumpS: median(times.thinbdDump),
    thinDumpS: median(times.thinDump),
    thinbdMetadataBytes: status.metadataBlocksUsed * METADATA_BLOCK_SIZE_BYTES,
    dmMetadataBytes: dmMetadataBytes(dmMetadata, dataBlockCount),
  };
}

function table(results: Measured[]): string {
  const seconds = (value: number): string => value.toFixed(2);
  const ratio = (a: number, b: number): string => `${(a / b).toFixed(2)}×`;
  const lines = [
    '| layout | mappings | what | thinbd | thin-provisioning-tools | thinbd / dm-thin |',
    '|---|---:|---|---:|---:|---:|',
  ];
  for (const r of results) {
    const row = (what: string, thinbd: number, dm: number, show: (value: number) => string): void => {
      lines.push(`| ${r.layout} | ${r.mappings.toLocaleString('en-US')} | ${what} | ${show(thinbd)} | ${show(dm)} | ${ratio(thinbd, dm)} |`);
    };
    row('check (s): `thinbd check` / `thin_check`', r.thinbdCheckS, r.thinCheckS, seconds);
    row('dump (s): `thinbd dump` / `thin_dump`', r.thinbdDumpS, r.thinDumpS, seconds);
    row('restore (s): `thinbd restore` / `thin_restore`', r.thinbdRestoreS, r.thinRestoreS, seconds);
    row('metadata bytes per mapping', r.thinbdMetadataBytes / r.mappings, r.dmMetadataBytes / r.mappings, (value) => value.toFixed(2));
  }
  return lines.join('\n');
}

export async function toolsBenchmark(flags: string[]): Promise<void> {
  const quick = flags.includes('--quick');
  const roundsIndex = process.argv.indexOf('--rounds');
  const rounds = roundsIndex >= 0 ? Math.max(1, Number(process.argv[roundsIndex + 1]) || 3) : 3;
  const mappings = quick ? MAPPINGS_QUICK : MAPPINGS_FULL;
  const thinVersion = output('thin_check', ['-V']).trim();
  // Time the code as it is: bin/thinbd runs dist/.
  output('npx', ['tsc', '-p', join(ROOT, 'tsconfig.build.json')]);
  const work = mkdtempSync(join(tmpdir(), 'thinbd-bench-tools-'));
  try {
    const loadBefore = loadavg()[0]!;
    const results: Measured[] = [];
    for (const layout of ['scattered', 'sequential'] as const) {
      console.log(`tools: ${layout}, ${mappings} mappings …`);
      results.push(await measure(work, layout, mappings, rounds));
    }
    const body = [
      '## Tools: thinbd check / dump / restore vs thin-provisioning-tools',
      '',
      `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 1024 ** 3)} GiB, Linux ${release()}, Node ${process.version}, thin-provisioning-tools ${thinVersion}; load average ${loadBefore.toFixed(1)} before and ${loadavg()[0]!.toFixed(1)} after (other work was running: compare the ratios, which each round measures side by side).`,
      `Command: \`npm run bench -- tools${quick ? ' --quick' : ''} --rounds ${rounds}\`; wall-clock medians of ${rounds} rounds (restore: one run), process start included,`,
      `output to /dev/null. The same XML (one volume, 64 KiB blocks) restored by each side; metadata bytes per mapping are the`,
      `metadata blocks in use × 4096 / mapped blocks (thinbd: \`pool status\`; dm-thin: its superblock's metadata space map).`,
      `Scattered: virtual block 2i on data block ${SCATTER_MULTIPLIER}·i mod ${mappings}, one mapping entry per block in both formats. Sequential: runs of ${RUN_BLOCKS} blocks,`,
      `one extent per run in thinbd, still one entry per block in dm-thin.`,
      '',
      table(results),
    ].join('\n');
    console.log(body);
    if (flags.includes('--write-doc')) writeBenchmarkSection('tools', body);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
