// npm run bench -- archive [--rounds N] [--sweep] [--write-doc]
//
// thinbd archive against restic (the backup tool such users run today), side by side in one run
// on the same volume: a 2 GiB ext4 image filled by `mkfs.ext4 -d /usr/share`, imported into a
// pool (zeros stay unmapped) and given to restic as the raw image with `backup --stdin`.
//   - full: `thinbd archive pack` of a read-only snapshot vs `restic backup --stdin`;
//   - incremental: 200 writes of 256 KiB at random 4 KiB-aligned places, then `pack --delta-from`
//     the first snapshot vs a second `restic backup --stdin` of the changed image;
//   - unpack of the full stream into a new pool, MB/s of provisioned data.
// Times are wall clock of the whole command (process start included), medians of the rounds,
// tools alternating first each round; stored bytes are the sizes of the files each tool wrote.
// --sweep also packs with other chunk sizes and zstd levels (the basis of the defaults).
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, statSync, writeSync, closeSync } from 'node:fs';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { Pool } from '../src/pool/pool.ts';
import { writeBenchmarkSection } from './peers.ts';

const ROOT = resolve(import.meta.dirname, '..');
const THINBD = join(ROOT, 'bin', 'thinbd');
const MiB = 1024 * 1024;
const IMAGE_BYTES = 2 * 1024 * MiB;
const CHANGES = 200;
const CHANGE_BYTES = 256 * 1024;

function run(command: string, args: string[], options: { env?: Record<string, string>; input?: string } = {}): { stdout: string; ms: number } {
  const start = performance.now();
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 * MiB, env: { ...process.env, ...options.env }, ...(options.input === undefined ? {} : { input: options.input }) });
  const ms = performance.now() - start;
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.status}: ${result.stderr}`);
  return { stdout: result.stdout, ms };
}

function thinbd(args: string[]): { stdout: string; ms: number } {
  return run(process.execPath, [THINBD, ...args]);
}

function treeBytes(path: string): number {
  if (!existsSync(path)) return 0;
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.size;
  return readdirSync(path).reduce((sum, entry) => sum + treeBytes(join(path, entry)), 0);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** Deterministic offsets and contents of the incremental's writes. */
function changes(): Array<{ offsetBytes: number; bytes: Uint8Array }> {
  let state = 0x9e3779b9;
  const next = () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  return Array.from({ length: CHANGES }, () => {
    const offsetBytes = (next() % ((IMAGE_BYTES - CHANGE_BYTES) / 4096)) * 4096;
    const bytes = new Uint8Array(CHANGE_BYTES);
    for (let index = 0; index < bytes.length; index += 4) new DataView(bytes.buffer).setUint32(index, next());
    return { offsetBytes, bytes };
  });
}

function requireTool(command: string, hint: string): void {
  const found = spawnSync('sh', ['-c', `command -v ${command}`]).status === 0;
  if (!found) throw new Error(`bench archive needs ${command} (${hint})`);
}

interface Round {
  thinbdFullMs: number;
  thinbdFullStored: number;
  thinbdIncrementalMs: number;
  thinbdIncrementalStored: number;
  thinbdPackMBps: number;
  thinbdUnpackMs: number;
  thinbdUnpackMBps: number;
  resticFullMs: number;
  resticFullStored: number;
  resticIncrementalMs: number;
  resticIncrementalStored: number;
}

export async function archiveBenchmark(flags: string[]): Promise<void> {
  requireTool('restic', 'apt-get install restic');
  requireTool('mkfs.ext4', 'apt-get install e2fsprogs');
  if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('bench archive runs bin/thinbd: build first (npm run build)');
  const roundsIndex = process.argv.indexOf('--rounds');
  const rounds = roundsIndex > 0 ? Number(process.argv[roundsIndex + 1]) : 3;
  const work = mkdtempSync(join(tmpdir(), 'thinbd-bench-archive-'));
  try {
    // The volume: ext4 with /usr/share on it, as a raw image and as a thin volume.
    const image1 = join(work, 'image1');
    closeSync(openSync(image1, 'w'));
    run('truncate', ['-s', String(IMAGE_BYTES), image1]);
    run('mkfs.ext4', ['-q', '-F', '-d', '/usr/share', image1]);
    const used = run('sh', ['-c', `dumpe2fs -h ${image1} 2>/dev/null | awk -F: '/^Block count/{c=$2}/^Free blocks/{f=$2}/^Block size/{b=$2}END{print (c-f)*b}'`]).stdout.trim();
    const pool = join(work, 'pool');
    thinbd(['pool', 'create', '--pool', pool, '--data-size', '8G']);
    thinbd(['import', '--pool', pool, 'vol', image1]);
    thinbd(['snapshot', '--pool', pool, 'vol', 'v1', '--read-only']);
    const image2 = join(work, 'image2');
    cpSync(image1, image2);
    const opened = await Pool.open(pool);
    const fd = openSync(image2, 'r+');
    for (const change of changes()) {
      await opened.volume('vol').write(change.offsetBytes, change.bytes);
      writeSync(fd, change.bytes, 0, change.bytes.length, change.offsetBytes);
    }
    closeSync(fd);
    await opened.close();
    thinbd(['snapshot', '--pool', pool, 'vol', 'v2', '--read-only']);
    const mapped = (JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string; mappedBytes: number }>).find((entry) => entry.name === 'v1')!.mappedBytes;

    const resticEnv = { RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: join(work, 'restic-cache') };
    const results: Round[] = [];
    for (let round = 0; round < rounds; round += 1) {
      const store = join(work, 'store');
      const repo = join(work, 'repo');
      const target = join(work, 'target');
      for (const path of [store, repo, target, resticEnv.RESTIC_CACHE_DIR]) rmSync(path, { recursive: true, force: true });
      const result = {} as Round;
      const thinbdSide = () => {
        thinbd(['archive', 'init', '--store', store]);
        const full = thinbd(['archive', 'pack', '--pool', pool, 'v1', '--store', store, '--name', 's1', '--json']);
        result.thinbdFullMs = full.ms;
        result.thinbdPackMBps = (JSON.parse(full.stdout) as { readMBps: number }).readMBps;
        result.thinbdFullStored = treeBytes(store);
        const incremental = thinbd(['archive', 'pack', '--pool', pool, 'v2', '--store', store, '--name', 's2', '--delta-from', 'v1']);
        result.thinbdIncrementalMs = incremental.ms;
        result.thinbdIncrementalStored = treeBytes(store) - result.thinbdFullStored;
        thinbd(['pool', 'create', '--pool', target, '--data-size', '8G']);
        const unpack = thinbd(['archive', 'unpack', '--pool', target, '--store', store, 's1', 'vol', '--json']);
        result.thinbdUnpackMs = unpack.ms;
        result.thinbdUnpackMBps = mapped / 1e6 / (unpack.ms / 1000);
      };
      const resticSide = () => {
        run('restic', ['-r', repo, 'init', '-q'], { env: resticEnv });
        const full = run('sh', ['-c', `restic -r ${repo} backup -q --stdin --stdin-filename vol.img < ${image1}`], { env: resticEnv });
        result.resticFullMs = full.ms;
        result.resticFullStored = treeBytes(repo);
        const incremental = run('sh', ['-c', `restic -r ${repo} backup -q --stdin --stdin-filename vol.img < ${image2}`], { env: resticEnv });
        result.resticIncrementalMs = incremental.ms;
        result.resticIncrementalStored = treeBytes(repo) - result.resticFullStored;
      };
      if (round % 2 === 0) {
        thinbdSide();
        resticSide();
      } else {
        resticSide();
        thinbdSide();
      }
      results.push(result);
      console.error(`round ${round + 1}: ${JSON.stringify(result)}`);
    }
    const m = (key: keyof Round) => median(results.map((result) => result[key]));
    const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
    const megabytes = (bytes: number) => `${(bytes / 1e6).toFixed(0)} MB`;
    const ratio = (a: number, b: number) => (a / b).toFixed(2);
    const goal = (met: boolean) => (met ? 'met' : 'missed');
    const fullTime = m('thinbdFullMs') / m('resticFullMs');
    const fullStored = m('thinbdFullStored') / m('resticFullStored');
    const incTime = m('thinbdIncrementalMs') / m('resticIncrementalMs');
    const incStored = m('thinbdIncrementalStored') / m('resticIncrementalStored');
    const lines = [
      '## Archive: thinbd archive vs restic',
      '',
      `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 1024 ** 3)} GiB, Linux ${release()}, Node ${process.version}, ${run('restic', ['version']).stdout.trim()}; shared with other work, so read the ratios, not the absolute times.`,
      `Command: \`npm run bench -- archive --rounds ${rounds}\`; medians of ${rounds} rounds, the tools alternating first. Volume: a 2 GiB ext4 image made by \`mkfs.ext4 -d /usr/share\` (${megabytes(Number(used))} used; ${megabytes(mapped)} mapped in the pool), restic given the raw image with \`backup --stdin\`. Incremental: ${CHANGES} writes of 256 KiB at random 4 KiB-aligned offsets (the same in both). Times are whole commands, process start included.`,
      '',
      '| | thinbd | restic | thinbd / restic | goal |',
      '| --- | --- | --- | --- | --- |',
      `| full: time | ${seconds(m('thinbdFullMs'))} | ${seconds(m('resticFullMs'))} | ${ratio(m('thinbdFullMs'), m('resticFullMs'))} | ≤ 0.5: ${goal(fullTime <= 0.5)} |`,
      `| full: stored | ${megabytes(m('thinbdFullStored'))} | ${megabytes(m('resticFullStored'))} | ${ratio(m('thinbdFullStored'), m('resticFullStored'))} | ≤ 1: ${goal(fullStored <= 1)} |`,
      `| incremental: time | ${seconds(m('thinbdIncrementalMs'))} | ${seconds(m('resticIncrementalMs'))} | ${ratio(m('thinbdIncrementalMs'), m('resticIncrementalMs'))} | ≤ 0.1: ${goal(incTime <= 0.1)} |`,
      `| incremental: added | ${megabytes(m('thinbdIncrementalStored'))} | ${megabytes(m('resticIncrementalStored'))} | ${ratio(m('thinbdIncrementalStored'), m('resticIncrementalStored'))} | ≤ 0.5: ${goal(incStored <= 0.5)} |`,
      `| unpack into a new pool | ${seconds(m('thinbdUnpackMs'))}, ${m('thinbdUnpackMBps').toFixed(0)} MB/s of mapped data | | | ≥ 300 MB/s: ${goal(m('thinbdUnpackMBps') >= 300)} |`,
      '',
      `Pack throughput (bytes read / pack's own elapsed time): ${m('thinbdPackMBps').toFixed(0)} MB/s, against blk-archive's published 125–133 MB/s (another machine).`,
    ];
    if (flags.includes('--sweep')) lines.push('', ...sweep(work, pool));
    const body = lines.join('\n');
    console.log(body);
    if (flags.includes('--write-doc')) writeBenchmarkSection('archive', body);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Full and incremental pack at other chunk sizes and zstd levels (one round each). */
function sweep(work: string, pool: string): string[] {
  const rows: string[] = [];
  for (const chunk of ['16k', '32k', '64k', '128k']) {
    for (const level of ['1', '3', '6']) {
      const store = join(work, `sweep-${chunk}-${level}`);
      thinbd(['archive', 'init', '--store', store, '--chunk-size', chunk, '--level', level]);
      const full = thinbd(['archive', 'pack', '--pool', pool, 'v1', '--store', store, '--name', 's1']);
      const fullStored = treeBytes(store);
      const incremental = thinbd(['archive', 'pack', '--pool', pool, 'v2', '--store', store, '--name', 's2', '--delta-from', 'v1']);
      const added = treeBytes(store) - fullStored;
      rows.push(`| ${chunk} | ${level} | ${(full.ms / 1000).toFixed(2)} s | ${(fullStored / 1e6).toFixed(0)} MB | ${(incremental.ms / 1000).toFixed(2)} s | ${(added / 1e6).toFixed(1)} MB |`);
      rmSync(store, { recursive: true, force: true });
      console.error(rows[rows.length - 1]);
    }
  }
  return ['Chunk size and zstd level (`--sweep`, one round each):', '', '| average chunk | level | full time | full stored | incremental time | added |', '| --- | --- | --- | --- | --- | --- |', ...rows];
}
