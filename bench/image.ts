// npm run bench -- image [--rounds N] [--corpus DIR] [--work DIR] [--quick] [--write-doc]
//
// Image import against what hosts do today, side by side in one run on one machine (issue 13):
//   floor    copy the tar to a file and sync it (the least any import can cost)
//   kernel   truncate + mkfs.ext4 + loop mount + tar -xf + umount + sync
//   mke2fs-d mke2fs -d of the tree, extracted beforehand (not timed) — skipped with --quick
//   thinbd   thinbd image import into a new pool (process start to exit, the pool synced)
//   thinbd-1 the same with the tar parsed on the main thread (THINBD_IMAGE_PARSE_THREAD=0)
//   again    a second import of the same tar into the same pool: its blocks are shared
// and for gzip: `gzip -dc > /dev/null` (decompression alone) against thinbd importing the .tar.gz
// (into a pool of its own, so that it shares nothing).
// Then a machine's snapshot of each image, served by thinbd serve, is mounted through nbdfuse +
// loop (timed) and walked with `find | wc -l` (timed, caches cold: a fresh device), for the
// thinbd-made image and the kernel-made one (imported raw, so both sit behind the same NBD path),
// after an untimed walk of each has warmed the server up; the timed walks alternate which goes first.
//
// The corpus is a tar of a real tree built once outside the repo (default /usr/share, kept in
// $TMPDIR/thinbd-bench); the machine is shared, so figures are medians of rounds, rows alternating.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { THINBD, writeBenchmarkSection } from './peers.ts';

interface Options {
  rounds: number;
  corpus: string;
  /** Where the corpus tar and each run's files go (default $TMPDIR/thinbd-bench): outside the repository. */
  work: string;
  quick: boolean;
  writeDoc: boolean;
}

/** Options from the command line itself (bench/run.ts passes standalone benchmarks flags without their values). */
function parse(flags: string[]): Options {
  const argv = process.argv;
  const value = (name: string): string | undefined => {
    const index = argv.indexOf(name);
    return index >= 0 ? argv[index + 1] : undefined;
  };
  return {
    rounds: Number(value('--rounds') ?? 3),
    corpus: value('--corpus') ?? '/usr/share',
    work: value('--work') ?? path.join(os.tmpdir(), 'thinbd-bench'),
    quick: flags.includes('--quick'),
    writeDoc: flags.includes('--write-doc'),
  };
}

function sh(command: string, args: string[], options: { input?: string } = {}): string {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, input: options.input });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  return result.stdout;
}

/** Wall seconds of a shell command line. */
function timed(line: string): number {
  const start = performance.now();
  sh('sh', ['-c', line]);
  return (performance.now() - start) / 1000;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function thinbd(args: string[], input?: string): string {
  return sh(process.execPath, [THINBD, ...args], input === undefined ? {} : { input });
}

/** thinbd with one more environment variable. */
function thinbdWith(env: Record<string, string>, args: string[]): string {
  const result = spawnSync(process.execPath, [THINBD, ...args], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, ...env } });
  if (result.status !== 0) throw new Error(`thinbd ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  return result.stdout;
}

const dataBlocksUsed = (pool: string): number => (JSON.parse(thinbd(['pool', 'status', '--pool', pool, '--json'])) as { dataBlocksUsed: number }).dataBlocksUsed;

interface ImportSummary {
  seconds: number;
  cpuSeconds: number;
  files: number;
  fileBytes: number;
  dataBytesWritten: number;
  dataBytesShared: number;
  metadataBytesWritten: number;
  blocksMapped: number;
  peakRssBytes: number;
}

/** Builds (once) the corpus tar and its gzip, outside the repository. */
function corpus(options: Options, work: string): { tar: string; gzip: string; entries: number; tarBytes: number } {
  const name = options.corpus.replace(/[^A-Za-z0-9]+/g, '-').replace(/^-|-$/g, '');
  const tar = path.join(work, `${name}.tar`);
  const gzip = `${tar}.gz`;
  if (!fs.existsSync(tar)) {
    console.error(`bench image: building ${tar} from ${options.corpus}`);
    sh('tar', ['--format=posix', '--xattrs', '-C', path.dirname(options.corpus), '-cf', tar, path.basename(options.corpus)]);
  }
  if (!fs.existsSync(gzip)) sh('sh', ['-c', `gzip -c '${tar}' > '${gzip}.part' && mv '${gzip}.part' '${gzip}'`]);
  const entries = Number(sh('sh', ['-c', `tar -tf '${tar}' | wc -l`]).trim());
  return { tar, gzip, entries, tarBytes: fs.statSync(tar).size };
}

/** An fs size for the kernel path: the tar's bytes plus room for metadata and small-file padding. */
function kernelImageBytes(tarBytes: number): number {
  return Math.ceil((tarBytes * 1.5 + 256 * 1024 ** 2) / 1024 ** 2) * 1024 ** 2;
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Mounts a snapshot of `image` over nbdfuse + loop (timed), walks it with find (timed), tears down. */
async function mountAndFind(pool: string, port: number, image: string, label: string, work: string): Promise<{ mountSeconds: number; findSeconds: number; paths: number }> {
  const machine = `${image}-machine-${label}`;
  thinbd(['snapshot', '--pool', pool, image, machine]);
  const fuseDir = fs.mkdtempSync(path.join(work, 'fuse-'));
  const mountPoint = fs.mkdtempSync(path.join(work, 'mnt-'));
  const disk = path.join(fuseDir, 'disk');
  const start = performance.now();
  const fuse = spawn('nbdfuse', [disk, `nbd://127.0.0.1:${port}/${machine}`], { stdio: 'ignore' });
  let device: string | undefined;
  try {
    await waitFor(() => fs.existsSync(disk) && fs.statSync(disk).size > 0, 'nbdfuse');
    device = sh('losetup', ['-f', '--show', disk]).trim();
    sh('mount', [device, mountPoint]);
    const mountSeconds = (performance.now() - start) / 1000;
    const findStart = performance.now();
    const paths = Number(sh('sh', ['-c', `find '${mountPoint}' | wc -l`]).trim());
    const findSeconds = (performance.now() - findStart) / 1000;
    return { mountSeconds, findSeconds, paths };
  } finally {
    spawnSync('umount', [mountPoint]);
    if (device !== undefined) spawnSync('losetup', ['-d', device]);
    spawnSync('fusermount3', ['-u', fuseDir]);
    fuse.kill('SIGTERM');
    await new Promise((resolve) => fuse.once('exit', resolve));
    fs.rmSync(fuseDir, { recursive: true, force: true });
    fs.rmSync(mountPoint, { recursive: true, force: true });
  }
}

async function startServe(pool: string): Promise<{ port: number; stop: () => Promise<void> }> {
  const child = spawn(process.execPath, [THINBD, 'serve', '--pool', pool, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  await waitFor(() => /nbd:\/\/127\.0\.0\.1:(\d+)\//.test(output) || child.exitCode !== null, 'thinbd serve');
  const match = /nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(output);
  if (match === null) throw new Error(`thinbd serve did not start: ${output}`);
  return {
    port: Number(match[1]),
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    },
  };
}

export async function imageBenchmark(flags: string[]): Promise<void> {
  const options = parse(flags);
  const work = options.work;
  fs.mkdirSync(work, { recursive: true });
  const { tar, gzip, entries, tarBytes } = corpus(options, work);
  const run = fs.mkdtempSync(path.join(work, 'run-'));
  const kernelRaw = path.join(run, 'kernel.img');
  const copy = path.join(run, 'copy.tar');
  const mountPoint = path.join(run, 'kernel-mnt');
  fs.mkdirSync(mountPoint);
  const extracted = path.join(run, 'tree');
  const times: Record<string, number[]> = { floor: [], kernel: [], mke2fs: [], thinbd: [], thinbdMain: [], again: [], gunzip: [], thinbdGzip: [], thinbdInside: [], thinbdCpu: [], thinbdMainCpu: [] };
  let summary: ImportSummary | undefined;
  let againSummary: ImportSummary | undefined;
  let againBlocks = 0;
  let imageBlocks = 0;
  let gzipSummary: ImportSummary | undefined;
  let poolDataBytes = 0;
  const mounts: Record<string, Array<{ mountSeconds: number; findSeconds: number; paths: number }>> = { thinbd: [], kernel: [] };
  /** The first mount of each round, of the thinbd-made image, right after `thinbd serve` started. */
  const firstMounts: number[] = [];
  try {
    if (!options.quick) {
      fs.mkdirSync(extracted);
      sh('tar', ['--xattrs', '-xf', tar, '-C', extracted]);
    }
    for (let round = 1; round <= options.rounds; round++) {
      fs.rmSync(copy, { force: true });
      sh('sync', []);
      times.floor!.push(timed(`cp '${tar}' '${copy}' && sync`));
      fs.rmSync(copy, { force: true });

      fs.rmSync(kernelRaw, { force: true });
      sh('sync', []);
      times.kernel!.push(timed(`truncate -s ${kernelImageBytes(tarBytes)} '${kernelRaw}' && mkfs.ext4 -q -F '${kernelRaw}' && mount -o loop '${kernelRaw}' '${mountPoint}' && tar -xf '${tar}' -C '${mountPoint}' && umount '${mountPoint}' && sync`));

      if (!options.quick) {
        const mke2fsRaw = path.join(run, 'mke2fs.img');
        fs.rmSync(mke2fsRaw, { force: true });
        sh('sync', []);
        times.mke2fs!.push(timed(`mke2fs -q -F -t ext4 -d '${extracted}' '${mke2fsRaw}' ${Math.ceil(kernelImageBytes(tarBytes) / 1024)}k && sync`));
        fs.rmSync(mke2fsRaw, { force: true });
      }

      const pool = path.join(run, `pool-${round}`);
      thinbd(['pool', 'create', '--pool', pool, '--data-size', '64G']);
      sh('sync', []);
      let start = performance.now();
      summary = JSON.parse(thinbd(['image', 'import', '--pool', pool, 'image', tar, '--json'])) as ImportSummary;
      times.thinbd!.push((performance.now() - start) / 1000);
      times.thinbdInside!.push(summary.seconds);
      times.thinbdCpu!.push(summary.cpuSeconds);
      poolDataBytes = Number(sh('du', ['-B1', path.join(pool, 'data')]).split('\t')[0]);
      imageBlocks = dataBlocksUsed(pool);
      start = performance.now();
      againSummary = JSON.parse(thinbd(['image', 'import', '--pool', pool, 'image-again', tar, '--json'])) as ImportSummary;
      times.again!.push((performance.now() - start) / 1000);
      againBlocks = dataBlocksUsed(pool) - imageBlocks;

      const mainPool = path.join(run, `pool-main-${round}`);
      thinbd(['pool', 'create', '--pool', mainPool, '--data-size', '64G']);
      sh('sync', []);
      start = performance.now();
      const mainSummary = JSON.parse(thinbdWith({ THINBD_IMAGE_PARSE_THREAD: '0' }, ['image', 'import', '--pool', mainPool, 'image', tar, '--json'])) as ImportSummary;
      times.thinbdMain!.push((performance.now() - start) / 1000);
      times.thinbdMainCpu!.push(mainSummary.cpuSeconds);
      fs.rmSync(mainPool, { recursive: true, force: true });

      times.gunzip!.push(timed(`gzip -dc '${gzip}' > /dev/null`));
      const gzipPool = path.join(run, `pool-gz-${round}`);
      thinbd(['pool', 'create', '--pool', gzipPool, '--data-size', '64G']);
      sh('sync', []);
      start = performance.now();
      gzipSummary = JSON.parse(thinbd(['image', 'import', '--pool', gzipPool, 'image-gz', gzip, '--json'])) as ImportSummary;
      times.thinbdGzip!.push((performance.now() - start) / 1000);
      fs.rmSync(gzipPool, { recursive: true, force: true });

      // The kernel-made file system behind the same NBD path, for mount and find.
      thinbd(['import', '--pool', pool, 'kernel', kernelRaw]);
      thinbd(['resize', '--pool', pool, 'kernel', '--size', String(fs.statSync(kernelRaw).size)]);
      const server = await startServe(pool);
      try {
        // An untimed walk of each first: the server's first requests (its code warming up, a
        // volume's mapping tree read into its cache) were charged to whichever image went first,
        // always thinbd's. Each timed walk is still cold on the client side: a new snapshot, a new
        // nbdfuse and loop device. The timed walks then alternate which goes first.
        for (const image of ['image', 'kernel']) {
          const warm = await mountAndFind(pool, server.port, image, `warm-${round}`, run);
          if (image === 'image') firstMounts.push(warm.mountSeconds);
        }
        const order = round % 2 === 0 ? (['thinbd', 'kernel'] as const) : (['kernel', 'thinbd'] as const);
        for (const side of order) mounts[side]!.push(await mountAndFind(pool, server.port, side === 'thinbd' ? 'image' : 'kernel', String(round), run));
      } finally {
        await server.stop();
      }
      console.error(
        `round ${round}: floor ${times.floor!.at(-1)!.toFixed(2)}s kernel ${times.kernel!.at(-1)!.toFixed(2)}s` +
          `${options.quick ? '' : ` mke2fs-d ${times.mke2fs!.at(-1)!.toFixed(2)}s`} thinbd ${times.thinbd!.at(-1)!.toFixed(2)}s` +
          ` thinbd-1-thread ${times.thinbdMain!.at(-1)!.toFixed(2)}s again ${times.again!.at(-1)!.toFixed(2)}s (${againBlocks} blocks)` +
          ` gunzip ${times.gunzip!.at(-1)!.toFixed(2)}s thinbd-gz ${times.thinbdGzip!.at(-1)!.toFixed(2)}s` +
          ` mount ${mounts.thinbd!.at(-1)!.mountSeconds.toFixed(2)}s/${mounts.kernel!.at(-1)!.mountSeconds.toFixed(2)}s` +
          ` find ${mounts.thinbd!.at(-1)!.findSeconds.toFixed(2)}s/${mounts.kernel!.at(-1)!.findSeconds.toFixed(2)}s`,
      );
      fs.rmSync(pool, { recursive: true, force: true });
    }
  } finally {
    spawnSync('umount', [mountPoint]);
    fs.rmSync(run, { recursive: true, force: true });
  }
  const s = summary!;
  const m = (key: string): number => median(times[key]!);
  const mountMedian = (key: string, field: 'mountSeconds' | 'findSeconds'): number => median(mounts[key]!.map((entry) => entry[field]));
  const MiB = 1024 * 1024;
  const rows = [
    `| step | seconds (median of ${options.rounds}) | thinbd / this |`,
    '| --- | --- | --- |',
    `| floor: \`cp\` the tar + \`sync\` | ${m('floor').toFixed(2)} | ${(m('thinbd') / m('floor')).toFixed(2)}× |`,
    `| kernel path: mkfs.ext4 + loop mount + \`tar -xf\` + umount + sync | ${m('kernel').toFixed(2)} | ${(m('thinbd') / m('kernel')).toFixed(2)}× |`,
    ...(options.quick ? [] : [`| \`mke2fs -d\` of the extracted tree + sync | ${m('mke2fs').toFixed(2)} | ${(m('thinbd') / m('mke2fs')).toFixed(2)}× |`]),
    `| **thinbd image import** (process start to exit, pool synced) | **${m('thinbd').toFixed(2)}** | 1 |`,
    `| thinbd image import, the import alone (its \`seconds\`: pool open and process start left out) | ${m('thinbdInside').toFixed(2)} | |`,
    `| thinbd image import with the tar parsed on the main thread (\`THINBD_IMAGE_PARSE_THREAD=0\`) | ${m('thinbdMain').toFixed(2)} | ${(m('thinbd') / m('thinbdMain')).toFixed(2)}× |`,
    `| the same tar imported again into the same pool (its blocks found and shared) | ${m('again').toFixed(2)} | ${(m('thinbd') / m('again')).toFixed(2)}× |`,
    `| \`gzip -dc > /dev/null\` (decompression alone) | ${m('gunzip').toFixed(2)} | ${(m('thinbdGzip') / m('gunzip')).toFixed(2)}× (thinbd from .tar.gz) |`,
    `| **thinbd image import** of the .tar.gz | **${m('thinbdGzip').toFixed(2)}** | |`,
    `| mount of a machine's snapshot of the thinbd image, the first after \`thinbd serve\` started | ${median(firstMounts).toFixed(2)} | |`,
    `| mount of a machine's snapshot (nbdfuse + losetup + mount), server warm: thinbd image / kernel-made image | ${mountMedian('thinbd', 'mountSeconds').toFixed(2)} / ${mountMedian('kernel', 'mountSeconds').toFixed(2)} | ${(mountMedian('thinbd', 'mountSeconds') / mountMedian('kernel', 'mountSeconds')).toFixed(2)}× |`,
    `| \`find / \\| wc -l\` on it, cold (${mounts.thinbd![0]!.paths} / ${mounts.kernel![0]!.paths} paths): thinbd image / kernel-made image | ${mountMedian('thinbd', 'findSeconds').toFixed(2)} / ${mountMedian('kernel', 'findSeconds').toFixed(2)} | ${(mountMedian('thinbd', 'findSeconds') / mountMedian('kernel', 'findSeconds')).toFixed(2)}× |`,
  ];
  const written = s.dataBytesWritten + s.metadataBytesWritten;
  const body = [
    '## Image import (issue 13): tar → ext4 volume',
    '',
    `Machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 1024 ** 3)} GiB, Linux ${os.release()}, Node ${process.version}; shared with other work (load average at the end ${os.loadavg().map((load) => load.toFixed(1)).join(' ')}).`,
    `Command: \`npm run bench -- image --rounds ${options.rounds}${options.quick ? ' --quick' : ''}\`; corpus: a pax tar of ${options.corpus} (${(tarBytes / MiB).toFixed(0)} MiB, ${entries} entries; ${s.files} files of ${(s.fileBytes / MiB).toFixed(0)} MiB), page cache warm, a new pool per round.`,
    '',
    ...rows,
    '',
    `thinbd's import: ${m('thinbdCpu').toFixed(2)} CPU seconds (every thread: parsing, the pool's writes, the digest's worker; ${m('thinbdMainCpu').toFixed(2)} parsing on the main thread); peak RSS ${(s.peakRssBytes / MiB).toFixed(0)} MiB; ${(s.dataBytesWritten / MiB).toFixed(0)} MiB of file data and ${(s.metadataBytesWritten / MiB).toFixed(1)} MiB of metadata written to the pool, ${(written / s.fileBytes).toFixed(3)}× the files' bytes (file data is written in whole 4 KiB ext4 blocks: the padding of ${s.files} files is most of the difference); the pool's data file holds ${(poolDataBytes / MiB).toFixed(0)} MiB after the import. The second import of the same tar shared ${((againSummary?.dataBytesShared ?? 0) / MiB).toFixed(0)} MiB of file data, wrote ${((againSummary?.dataBytesWritten ?? 0) / MiB).toFixed(1)} MiB of it and ${((againSummary?.metadataBytesWritten ?? 0) / MiB).toFixed(1)} MiB of metadata, and took ${againBlocks} new pool blocks (${((againBlocks * 64 * 1024) / MiB).toFixed(1)} MiB) where the first took ${imageBlocks}${gzipSummary === undefined ? '' : ''}.`,
  ].join('\n');
  console.log(body);
  if (options.writeDoc) writeBenchmarkSection('image', body);
}
