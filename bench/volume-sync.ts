// The Tux3 "volume sync" benchmark through a real file system: the export becomes a file
// (nbdfuse), the file a block device (losetup), the device ext4 (mkfs.ext4, mount), and a loop
// rewrites small files with an fsync after each for a fixed time. Every fsync is an ext4 journal
// commit and a FLUSH to the server, so this is the commit path as a guest would drive it.
//
// The loop runs in its own process: synchronous file I/O on a file system that an NBD server in
// the same process serves deadlocks (the server's event loop is the one blocked). Here the
// harness only waits; the servers and nbdfuse are separate processes too.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Files the loop rewrites in turn, each FILE_BYTES long. */
const FILE_COUNT = 64;
const FILE_BYTES = 4096;
/** Time the loop runs before it starts counting (the journal and caches settle). */
const WARMUP_MS = 1000;

function sbinEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin` };
}

function run(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: 'utf8', env: sbinEnv() });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr || result.error}`);
  return result.stdout;
}

/** Runs a cleanup step; a failure is reported, not thrown, so the later steps still run. */
function attempt(command: string, args: string[]): void {
  const result = spawnSync(command, args, { encoding: 'utf8', env: sbinEnv() });
  if (result.status !== 0) process.stderr.write(`cleanup: ${command} ${args.join(' ')}: ${result.stderr.trim()}\n`);
}

// The loop, run by `node -e` in the mounted file system: prints the rewrites it counted.
const LOOP_SOURCE = `
const fs = require('node:fs');
const [dir, seconds, count, bytes, warmupMs] = process.argv.slice(1);
const data = Buffer.alloc(Number(bytes), 0x5a);
const rewrite = (i) => {
  const fd = fs.openSync(dir + '/f' + (i % Number(count)), 'w');
  fs.writeSync(fd, data, 0, data.length, 0);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
};
for (let i = 0; i < Number(count); i++) rewrite(i);
let i = 0;
const warmEnd = Date.now() + Number(warmupMs);
while (Date.now() < warmEnd) rewrite(i++);
let ops = 0;
const start = process.hrtime.bigint();
const end = start + BigInt(Math.round(Number(seconds) * 1e9));
while (process.hrtime.bigint() < end) { rewrite(i++); ops++; }
const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
process.stdout.write(JSON.stringify({ ops, elapsed }));
`;

export interface VolumeSyncResult {
  opsPerSecond: number;
  /** File data the loop wrote while counting (FILE_BYTES per rewrite). */
  bytesWritten: number;
}

/** Mounts ext4 on the export at `uri` through nbdfuse + loop and runs the rewrite loop. */
export async function volumeSyncLoop(uri: string, dir: string, seconds: number): Promise<VolumeSyncResult> {
  const fuseDir = join(dir, 'fuse');
  const mountDir = join(dir, 'mnt');
  mkdirSync(fuseDir, { recursive: true });
  mkdirSync(mountDir, { recursive: true });
  const disk = join(fuseDir, 'disk');
  let fuse: ChildProcess | undefined;
  let loopDevice: string | undefined;
  let mounted = false;
  try {
    fuse = spawn('nbdfuse', [disk, uri], { stdio: 'ignore', env: sbinEnv() });
    for (let attemptIndex = 0; !existsSync(disk); attemptIndex += 1) {
      if (fuse.exitCode !== null || attemptIndex > 200) throw new Error(`nbdfuse did not present ${disk}`);
      await sleep(50);
    }
    loopDevice = run('losetup', ['-f', '--show', disk]).trim();
    // Everything written now, nothing left to the kernel's lazy init thread during the loop.
    run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', loopDevice]);
    run('mount', ['-t', 'ext4', loopDevice, mountDir]);
    mounted = true;
    const result = spawnSync(process.execPath, ['-e', LOOP_SOURCE, mountDir, String(seconds), String(FILE_COUNT), String(FILE_BYTES), String(WARMUP_MS)], {
      encoding: 'utf8',
    });
    if (result.status !== 0) throw new Error(`fsync loop failed (${result.status}): ${result.stderr}`);
    const { ops, elapsed } = JSON.parse(result.stdout) as { ops: number; elapsed: number };
    return { opsPerSecond: ops / elapsed, bytesWritten: ops * FILE_BYTES };
  } finally {
    if (mounted) attempt('umount', [mountDir]);
    if (loopDevice !== undefined) attempt('losetup', ['-d', loopDevice]);
    if (fuse !== undefined && fuse.exitCode === null) {
      // The loop device lets go of the file asynchronously after losetup -d: retry while busy.
      for (let tries = 0; tries < 20; tries += 1) {
        if (spawnSync('fusermount3', ['-u', fuseDir]).status === 0) break;
        await sleep(250);
      }
      const exited = new Promise((done) => fuse!.once('exit', done));
      if (fuse.exitCode === null) await Promise.race([exited, sleep(5000)]);
      if (fuse.exitCode === null) fuse.kill('SIGKILL');
    }
  }
}
