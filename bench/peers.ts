// Peer benchmarks (issue 6): thinbd against `qemu-nbd -f qcow2` (the userspace thin/snapshot
// incumbent) and `nbdkit file` (a raw file over NBD: the practical ceiling), all on the same file
// system, driven by the same `fio --ioengine=nbd` job, servers alternating round by round. On
// request (`--servers ...,node-floor`) also the least a Node NBD server can do per request
// (node-floor-server.ts), to tell the runtime's cost from thinbd's own.
// Reports medians and thinbd/peer ratios; `--write-doc` rewrites docs/benchmarks.md.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, writeFileSync, readFileSync, mkdirSync } from 'node:fs';
import { cpus, totalmem, release } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { volumeSyncLoop } from './volume-sync.ts';

/** The repository, and its thinbd command (the benchmarks run the built CLI). */
export const ROOT = resolve(import.meta.dirname, '..');
export const THINBD = join(ROOT, 'bin', 'thinbd');
const EXPORT = 'vol0';
const GiB = 1024 ** 3;

export type ServerName = 'thinbd' | 'qemu-nbd' | 'nbdkit' | 'node-floor';
/** Every server, in table order; node-floor runs only when --servers names it. */
export const SERVER_NAMES: readonly ServerName[] = ['thinbd', 'qemu-nbd', 'nbdkit', 'node-floor'];
export type Preparation = 'provisioned' | 'fresh' | 'snapshot';

export interface Workload {
  /** Short name for `npm run bench -- KEY`. */
  key: string;
  name: string;
  shows: string;
  preparation: Preparation;
  fio: string[];
  servers: ServerName[];
  /** fio --ioengine=nbd, or ext4 on nbdfuse + loop with a small-file rewrite + fsync loop (volume-sync.ts). */
  driver: 'fio' | 'ext4-fsync';
}

const all: ServerName[] = ['thinbd', 'qemu-nbd', 'nbdkit', 'node-floor'];

export function workloads(runtimeSeconds: number): Workload[] {
  const timed = [`--runtime=${runtimeSeconds}`, '--time_based', '--ramp_time=1'];
  const rows: Array<Omit<Workload, 'driver'>> = [
    { key: 'rr4k', name: 'randread 4k qd32', shows: 'lookup + read path', preparation: 'provisioned', servers: all,
      fio: ['--rw=randread', '--bs=4k', '--iodepth=32', ...timed] },
    { key: 'rw4k', name: 'randwrite 4k qd32', shows: 'in-place write path', preparation: 'provisioned', servers: all,
      fio: ['--rw=randwrite', '--bs=4k', '--iodepth=32', ...timed] },
    { key: 'rw4k-fresh', name: 'randwrite 4k fresh', shows: 'provisioning path', preparation: 'fresh', servers: all,
      fio: ['--rw=randwrite', '--bs=4k', '--iodepth=32', ...timed] },
    { key: 'rw4k-cow', name: 'randwrite 4k after snapshot', shows: 'copy-on-write path', preparation: 'snapshot', servers: ['thinbd', 'qemu-nbd'],
      fio: ['--rw=randwrite', '--bs=4k', '--iodepth=32', ...timed] },
    { key: 'sr1m', name: 'seq read 1M', shows: 'streaming read', preparation: 'provisioned', servers: all,
      fio: ['--rw=read', '--bs=1M', '--iodepth=8', ...timed] },
    { key: 'sw1m', name: 'seq write 1M', shows: 'streaming write', preparation: 'provisioned', servers: all,
      fio: ['--rw=write', '--bs=1M', '--iodepth=8', ...timed] },
    { key: 'rw4k-flush', name: 'randwrite 4k flush/32', shows: 'commit cost', preparation: 'provisioned', servers: all,
      fio: ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--fsync=32', ...timed] },
    { key: 'mixed4j', name: '4 jobs mixed 70/30', shows: 'multi-connection scaling', preparation: 'provisioned', servers: all,
      fio: ['--rw=randrw', '--rwmixread=70', '--bs=4k', '--iodepth=16', '--numjobs=4', ...timed] },
  ];
  return [
    ...rows.map((row) => ({ ...row, driver: 'fio' as const })),
    { key: 'ext4-fsync', name: 'ext4 small-file rewrite + fsync', shows: 'volume sync (nbdfuse + loop)', preparation: 'fresh', servers: all,
      fio: [], driver: 'ext4-fsync' },
  ];
}

interface Running {
  uri: string;
  child: ChildProcess;
  cpuSecondsBefore: number;
}

function run(command: string, args: string[], options: { input?: string } = {}): string {
  const result = spawnSync(command, args, { encoding: 'utf8', input: options.input, maxBuffer: 64 * 1024 * 1024 });
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr || result.error}`);
  }
  return result.stdout;
}

function processCpuSeconds(pid: number): number {
  // utime + stime from /proc/PID/stat, in clock ticks (100 per second on Linux).
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

function peakRssBytes(pid: number): number {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((text) => text.startsWith('VmHWM:'));
    return Number(/(\d+)/.exec(line ?? '')?.[1] ?? 0) * 1024;
  } catch {
    return 0;
  }
}

async function waitForSocket(path: string, child: ChildProcess): Promise<void> {
  for (let attempt = 0; attempt < 300; attempt += 1) {
    if (existsSync(path)) return;
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode} before listening`);
    await sleep(50);
  }
  throw new Error(`server did not create ${path} within 15 s`);
}

/** Prepares a server's storage for a workload and starts it on a Unix socket. */
async function startServer(server: ServerName, preparation: Preparation, dir: string, sizeBytes: number, blockSizeBytes: number | undefined): Promise<Running> {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, 'nbd.sock');
  const fill = (uri: string): void => {
    run('fio', ['--name=fill', '--ioengine=nbd', `--uri=${uri}`, '--rw=write', '--bs=1M', '--iodepth=8', '--output-format=terse']);
  };
  let child: ChildProcess;
  let uri: string;
  if (server === 'thinbd') {
    const pool = join(dir, 'pool');
    const blockSize = blockSizeBytes === undefined ? [] : ['--block-size', String(blockSizeBytes)];
    run(process.execPath, [THINBD, 'pool', 'create', '--pool', pool, '--data-size', String(sizeBytes * 3), ...blockSize]);
    run(process.execPath, [THINBD, 'create', '--pool', pool, EXPORT, '--size', String(sizeBytes)]);
    child = spawn(process.execPath, [THINBD, 'serve', '--pool', pool, '--socket', socket], { stdio: 'ignore' });
    await waitForSocket(socket, child);
    uri = `nbd+unix:///${EXPORT}?socket=${socket}`;
    if (preparation !== 'fresh') fill(uri);
    if (preparation === 'snapshot') {
      run(process.execPath, [THINBD, 'snapshot', '--pool', pool, EXPORT, 'snap']);
      uri = `nbd+unix:///snap?socket=${socket}`;
    }
  } else if (server === 'qemu-nbd') {
    const base = join(dir, 'base.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(sizeBytes)]);
    let image = base;
    if (preparation !== 'fresh') {
      const filler = spawn('qemu-nbd', ['-f', 'qcow2', '-k', socket, '-t', '-e', '8', '-x', EXPORT, base], { stdio: 'ignore' });
      await waitForSocket(socket, filler);
      fill(`nbd+unix:///${EXPORT}?socket=${socket}`);
      filler.kill('SIGTERM');
      await new Promise((done) => filler.once('exit', done));
      rmSync(socket, { force: true });
    }
    if (preparation === 'snapshot') {
      image = join(dir, 'overlay.qcow2');
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', image]);
    }
    child = spawn('qemu-nbd', ['-f', 'qcow2', '-k', socket, '-t', '-e', '8', '-x', EXPORT, image], { stdio: 'ignore' });
    await waitForSocket(socket, child);
    uri = `nbd+unix:///${EXPORT}?socket=${socket}`;
  } else {
    const file = join(dir, 'disk.raw');
    run('truncate', ['-s', String(sizeBytes), file]);
    child =
      server === 'nbdkit'
        ? spawn('nbdkit', ['-f', '-U', socket, '-e', EXPORT, 'file', file], { stdio: 'ignore' })
        : spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'bench', 'node-floor-server.ts'), socket, file], { stdio: 'ignore' });
    await waitForSocket(socket, child);
    uri = `nbd+unix:///${EXPORT}?socket=${socket}`;
    if (preparation !== 'fresh') fill(uri);
  }
  return { uri, child, cpuSecondsBefore: processCpuSeconds(child.pid ?? 0) };
}

async function stopServer(running: Running): Promise<void> {
  if (running.child.exitCode !== null) return;
  running.child.kill('SIGTERM');
  await Promise.race([new Promise((done) => running.child.once('exit', done)), sleep(20_000)]);
  if (running.child.exitCode === null) running.child.kill('SIGKILL');
}

export interface Measurement {
  iops: number;
  bandwidthBytesPerSecond: number;
  cpuSecondsPerGiB: number;
  peakRssBytes: number;
}

function runFio(workload: Workload, uri: string): { iops: number; bytesPerSecond: number; bytesMoved: number } {
  const output = run('fio', ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, '--group_reporting', '--output-format=json', ...workload.fio]);
  const report = JSON.parse(output.slice(output.indexOf('{'))) as {
    jobs: Array<{ read: { iops: number; bw_bytes: number; io_bytes: number }; write: { iops: number; bw_bytes: number; io_bytes: number } }>;
  };
  const job = report.jobs[0];
  if (!job) throw new Error('fio reported no job');
  return {
    iops: job.read.iops + job.write.iops,
    bytesPerSecond: job.read.bw_bytes + job.write.bw_bytes,
    bytesMoved: job.read.io_bytes + job.write.io_bytes,
  };
}

async function runVolumeSync(uri: string, dir: string, seconds: number): Promise<{ iops: number; bytesPerSecond: number; bytesMoved: number }> {
  const result = await volumeSyncLoop(uri, dir, seconds);
  return { iops: result.opsPerSecond, bytesPerSecond: result.bytesWritten / seconds, bytesMoved: result.bytesWritten };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : ((sorted[middle - 1] ?? 0) + (sorted[middle] ?? 0)) / 2;
}

export interface PeerOptions {
  rounds: number;
  runtimeSeconds: number;
  sizeBytes: number;
  only?: string[];
  writeDoc: boolean;
  /** thinbd's data block size (pool create --block-size); the default when undefined. */
  thinbdBlockSizeBytes?: number;
  /** Only these servers (each row's, but node-floor, when undefined). */
  servers?: ServerName[];
}

export async function peerBenchmark(options: PeerOptions): Promise<string> {
  const work = mkdtempSync(join(ROOT, '.bench-tmp-'));
  const chosen = workloads(options.runtimeSeconds).filter(
    (workload) => !options.only || options.only.includes(workload.key),
  );
  const results = new Map<string, Map<ServerName, Measurement[]>>();
  try {
    for (let round = 0; round < options.rounds; round += 1) {
      for (const workload of chosen) {
        // Alternate the order of servers each round so none always runs on a warmer machine.
        const servers = workload.servers.filter((server) => (options.servers === undefined ? server !== 'node-floor' : options.servers.includes(server)));
        const order = round % 2 === 0 ? servers : [...servers].reverse();
        for (const server of order) {
          const dir = join(work, server);
          const running = await startServer(server, workload.preparation, dir, options.sizeBytes, options.thinbdBlockSizeBytes);
          try {
            const cpuBefore = processCpuSeconds(running.child.pid ?? 0);
            const fio = workload.driver === 'fio' ? runFio(workload, running.uri) : await runVolumeSync(running.uri, dir, options.runtimeSeconds);
            const cpuSeconds = processCpuSeconds(running.child.pid ?? 0) - cpuBefore;
            const measurement: Measurement = {
              iops: fio.iops,
              bandwidthBytesPerSecond: fio.bytesPerSecond,
              cpuSecondsPerGiB: fio.bytesMoved > 0 ? cpuSeconds / (fio.bytesMoved / GiB) : 0,
              peakRssBytes: peakRssBytes(running.child.pid ?? 0),
            };
            const perServer = results.get(workload.name) ?? new Map<ServerName, Measurement[]>();
            results.set(workload.name, perServer);
            perServer.set(server, [...(perServer.get(server) ?? []), measurement]);
            process.stderr.write(`round ${round + 1} ${workload.name} ${server}: ${Math.round(measurement.iops)} IOPS\n`);
          } finally {
            await stopServer(running);
          }
        }
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  // Columns for the servers that ran: thinbd, qemu-nbd and nbdkit always (– where a row has no
  // figure), node-floor only when it was asked for.
  const columns = SERVER_NAMES.filter((server) => server !== 'node-floor' || [...results.values()].some((perServer) => perServer.has(server)));
  const peers = columns.filter((server) => server !== 'thinbd');
  const names = columns.join(' / ');
  const lines = [
    `| workload | shows | ${columns.map((server) => `${server} IOPS`).join(' | ')} | ${peers.map((server) => `thinbd/${server}`).join(' | ')} | CPU s/GiB: ${names} | peak RSS MiB: ${names} |`,
    `|---|---|${'---:|'.repeat(columns.length + peers.length + 2)}`,
  ];
  for (const workload of chosen) {
    const perServer = results.get(workload.name);
    const medianOf = (server: ServerName, pick: (m: Measurement) => number): number | undefined => {
      const values = perServer?.get(server)?.map(pick);
      return values && values.length > 0 ? median(values) : undefined;
    };
    const iops = (server: ServerName): number | undefined => medianOf(server, (m) => m.iops);
    const eachServer = (show: (server: ServerName) => string): string => columns.map(show).join(' / ');
    const cpu = eachServer((server) => medianOf(server, (m) => m.cpuSecondsPerGiB)?.toFixed(2) ?? '–');
    const rss = eachServer((server) => {
      const peaks = perServer?.get(server)?.map((m) => m.peakRssBytes) ?? [];
      return peaks.length > 0 ? String(Math.round(Math.max(...peaks) / 2 ** 20)) : '–';
    });
    const show = (value: number | undefined): string => (value === undefined ? '–' : String(Math.round(value)));
    const ratio = (a: number | undefined, b: number | undefined): string => (a && b ? `${(a / b).toFixed(2)}×` : '–');
    const cells = [...columns.map((server) => show(iops(server))), ...peers.map((server) => ratio(iops('thinbd'), iops(server))), cpu, rss];
    lines.push(`| ${workload.name} | ${workload.shows} | ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

export function machineDescription(): string {
  const fio = run('fio', ['--version']).trim();
  const qemu = run('qemu-nbd', ['--version']).split('\n')[0]?.trim() ?? '';
  const nbdkit = run('nbdkit', ['--version']).trim();
  return `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / GiB)} GiB, Linux ${release()}, Node ${process.version}, ${fio}, ${qemu}, ${nbdkit}`;
}

export function writeBenchmarkSection(title: string, body: string): void {
  const path = join(ROOT, 'docs', 'benchmarks.md');
  const existing = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmarks\n';
  const marker = `<!-- ${title} -->`;
  const section = `${marker}\n${body.trim()}\n${marker}\n`;
  const pattern = new RegExp(`${marker}[\\s\\S]*?${marker}\\n`);
  writeFileSync(path, pattern.test(existing) ? existing.replace(pattern, section) : `${existing.trimEnd()}\n\n${section}`);
}
