// Running out of space through the front door (issue: low-water mark, automatic growth, out of
// space policy, space back to the host): `thinbd serve` with --on-low-water, a real NBD client
// (qemu-io) writing until the pool is full, `thinbd pool set` / `pool status` / `remove` on the
// live pool, and `du` of the data file falling after fstrim on ext4 and after `thinbd remove`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { requireTools, run, startProcess, stopProcess, waitFor } from '../nbd/helpers.ts';
import { thinbd, thinbdJson, thinbdOk as ok } from '../cli/run-thinbd.ts';
import { startServe, type ServeProcess } from './serve-process.ts';
import type { PoolStatus } from '../../src/pool/pool.ts';

requireTools('qemu-io', 'nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'fstrim');

const MiB = 1024 * 1024;
let work: string;
const cleanups: Array<() => Promise<unknown>> = [];

before(() => {
  work = mkdtempSync(join(tmpdir(), 'thinbd-space-'));
});

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  rmSync(work, { recursive: true, force: true });
});

function allocatedBytes(file: string): number {
  return statSync(file).blocks * 512;
}

async function serve(pool: string, args: string[] = []): Promise<ServeProcess> {
  const server = await startServe(pool, args);
  cleanups.push(() => server.kill());
  return server;
}

test('a served pool: the low-water hook runs once, growth keeps the client writing up to --data-max, then ENOSPC, then a queued write waits for thinbd remove; everything acknowledged reads back and check is clean', async () => {
  const pool = join(work, 'grow');
  const hookLog = join(work, 'hook.log');
  ok(['pool', 'create', '--pool', pool, '--data-size', '64M', '--data-max', '128M', '--grow-step', '32M', '--low-water', '16M']);
  ok(['create', '--pool', pool, 'v', '--size', '256M']);
  ok(['create', '--pool', pool, 'filler', '--size', '32M']);
  const hook = `printf '%s %s %s %s\\n' "$THINBD_EVENT" "$THINBD_POOL" "$THINBD_FREE_BYTES" "$THINBD_USED_BYTES" >> ${hookLog}`;
  const server = await serve(pool, ['--on-low-water', hook]);

  const write = (name: string, offset: number, pattern: number) =>
    run('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} 8M`, '-c', 'flush', server.uri(name)], { allowFailure: true });
  for (let offset = 0; offset < 32 * MiB; offset += 8 * MiB) {
    const result = await write('filler', offset, 0x10);
    assert.equal(result.code, 0, result.stdout + result.stderr);
  }
  // 64M grows to 96M and 128M under the client's writes; the last chunks find no block.
  const acknowledged: number[] = [];
  let refused = '';
  for (let chunk = 0; chunk < 32; chunk += 1) {
    const result = await write('v', chunk * 8 * MiB, 0x20 + chunk);
    const output = result.stdout + result.stderr;
    if (/No space left on device/.test(output)) {
      refused = output;
      break;
    }
    assert.equal(result.code, 0, output);
    acknowledged.push(chunk);
  }
  assert.match(refused, /No space left on device/, 'the write past --data-max fails with ENOSPC');
  assert.ok(acknowledged.length >= 10, `${acknowledged.length} chunks of 8M written before ENOSPC (96M minus the reserve fit)`);

  const status = thinbdJson<PoolStatus>(['pool', 'status', '--pool', pool]);
  assert.equal(status.space.data.sizeBytes, 128 * MiB);
  assert.equal(status.space.data.grows, 2);
  assert.equal(status.state, 'full');
  assert.equal(status.lowWater.bytes, 16 * MiB);
  assert.ok(status.freeBytes < 16 * MiB);
  const lines = readFileSync(hookLog, 'utf8').trim().split('\n');
  assert.equal(lines.length, 1, `the hook ran once: ${lines.join(' | ')}`);
  const [event, hookPool, free, used] = lines[0]!.split(' ');
  assert.equal(event, 'data-low-water');
  assert.equal(hookPool, pool);
  assert.ok(Number(free) < 16 * MiB && Number(free) >= 0, `THINBD_FREE_BYTES ${free}`);
  assert.ok(Number(used) > 100 * MiB, `THINBD_USED_BYTES ${used}`);
  assert.match(server.output(), /"event":"pool.data_low_water"/, 'a JSON log line for the event');
  assert.match(server.output(), /"event":"pool.data_grown"/);

  // Queue mode: the write waits; `thinbd remove` frees space and it completes without an error.
  ok(['pool', 'set', '--pool', pool, '--when-full', 'queue:120']);
  const queuedChunk = acknowledged.length + 1;
  const queued = write('v', queuedChunk * 8 * MiB, 0x70);
  await waitFor(() => thinbdJson<PoolStatus>(['pool', 'status', '--pool', pool]).space.writesWaiting > 0, 'the write to wait for space');
  ok(['remove', '--pool', pool, 'filler']);
  const result = await queued;
  assert.equal(result.code, 0, result.stdout + result.stderr);
  assert.doesNotMatch(result.stdout + result.stderr, /No space|error/i);

  // pool resize on the live pool: both files grow now, and the space is there at once. The
  // metadata is mirrored (the default): its second copy first moves to twice its place in the
  // file (F-MIR-6), so the file's apparent size doubles while what it holds grows by little.
  const metadataBytes = thinbdJson<PoolStatus>(['pool', 'status', '--pool', pool]).space.metadata.sizeBytes;
  const metadataFile = join(pool, 'metadata');
  const metadataFileBytes = statSync(metadataFile).size;
  assert.equal(metadataFileBytes, 2 * metadataBytes, 'the mirror begins at half the file');
  ok(['pool', 'resize', '--pool', pool, '--metadata-size', String(metadataBytes + 16 * MiB)]);
  ok(['pool', 'resize', '--pool', pool, '--data-size', '192M']);
  const resized = thinbdJson<PoolStatus>(['pool', 'status', '--pool', pool]);
  assert.equal(resized.space.data.sizeBytes, 192 * MiB);
  assert.equal(resized.space.metadata.sizeBytes, metadataBytes + 16 * MiB);
  assert.equal(resized.health.metadata.copies, 2);
  assert.equal(statSync(metadataFile).size, 2 * metadataFileBytes, 'the mirror moved to twice its place');
  assert.equal(resized.state, 'ok');
  const afterResize = await write('v', (queuedChunk + 1) * 8 * MiB, 0x71);
  assert.equal(afterResize.code, 0, afterResize.stdout + afterResize.stderr);

  for (const chunk of acknowledged) {
    const read = await run('qemu-io', ['-f', 'raw', '-r', '-c', `read -P ${0x20 + chunk} ${chunk * 8 * MiB} 8M`, server.uri('v')], { allowFailure: true });
    assert.doesNotMatch(read.stdout + read.stderr, /Pattern verification failed|error/i, `chunk ${chunk}`);
  }
  const read = await run('qemu-io', ['-f', 'raw', '-r', '-c', `read -P 0x70 ${queuedChunk * 8 * MiB} 8M`, server.uri('v')], { allowFailure: true });
  assert.doesNotMatch(read.stdout + read.stderr, /Pattern verification failed|error/i, 'the queued write');
  const readResized = await run('qemu-io', ['-f', 'raw', '-r', '-c', `read -P 0x71 ${(queuedChunk + 1) * 8 * MiB} 8M`, server.uri('v')], { allowFailure: true });
  assert.doesNotMatch(readResized.stdout + readResized.stderr, /Pattern verification failed|error/i, 'the write after the resize');
  assert.equal(await server.stop(), 0);
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
  // The settings are in the pool: a restart keeps them.
  const settings = thinbdJson<PoolStatus>(['pool', 'status', '--pool', pool]).space.settings;
  assert.deepEqual(settings, { lowWater: { bytes: 16 * MiB }, dataMaxBytes: 128 * MiB, growStepBytes: 32 * MiB, whenFull: { queueSeconds: 120 } });
});

test('du of the data file falls after fstrim of ext4 on a served volume and after thinbd remove', async () => {
  const pool = join(work, 'trim');
  const dataFile = join(pool, 'data');
  ok(['pool', 'create', '--pool', pool, '--data-size', '1G']);
  ok(['create', '--pool', pool, 'fs', '--size', '256M']);
  ok(['create', '--pool', pool, 'raw', '--size', '64M']);
  const server = await serve(pool);
  const raw = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 0 64M', '-c', 'flush', server.uri('raw')], { allowFailure: true });
  assert.equal(raw.code, 0, raw.stdout + raw.stderr);

  const fuseDir = join(work, 'fuse');
  mkdirSync(fuseDir);
  const diskFile = join(fuseDir, 'disk');
  const fuse: { child: ChildProcess; output: () => string } = startProcess('nbdfuse', [diskFile, server.uri('fs')]);
  cleanups.push(() => stopProcess(fuse.child));
  cleanups.push(() => run('fusermount3', ['-u', fuseDir], { allowFailure: true }));
  await waitFor(() => existsSync(diskFile) && statSync(diskFile).size === 256 * MiB, `nbdfuse (${fuse.output()})`);
  const device = (await run('losetup', ['-f', '--show', diskFile])).stdout.trim();
  assert.match(device, /^\/dev\/loop\d+$/);
  cleanups.push(() => run('losetup', ['-d', device], { allowFailure: true }));
  await run('mkfs.ext4', ['-q', '-F', device]);
  const mnt = join(work, 'mnt');
  mkdirSync(mnt);
  await run('mount', [device, mnt]);
  cleanups.push(() => run('umount', [mnt], { allowFailure: true }));
  for (let index = 0; index < 10; index += 1) writeFileSync(join(mnt, `f${index}`), Buffer.alloc(10 * MiB, index + 1));
  await run('sync', ['-f', mnt]);
  await waitFor(() => allocatedBytes(dataFile) >= 164 * MiB, 'the data file to hold the files and the raw volume');
  const full = allocatedBytes(dataFile);

  for (let index = 0; index < 10; index += 1) rmSync(join(mnt, `f${index}`));
  await run('sync', ['-f', mnt]);
  await run('fstrim', [mnt]);
  // The discards free blocks in the open transaction; once a commit makes them durable they are
  // punched. Within one grow step of the 100M freed (the pool's high-water step is 64M here).
  await waitFor(() => full - allocatedBytes(dataFile) >= 90 * MiB, `du to fall after fstrim (${full} -> ${allocatedBytes(dataFile)})`);
  const trimmed = allocatedBytes(dataFile);
  await run('umount', [mnt]);
  const fsck = await run('e2fsck', ['-fn', device], { allowFailure: true });
  assert.equal(fsck.code, 0, fsck.stdout + fsck.stderr);

  ok(['remove', '--pool', pool, 'raw']);
  await waitFor(() => trimmed - allocatedBytes(dataFile) >= 63 * MiB, `du to fall after remove (${trimmed} -> ${allocatedBytes(dataFile)})`);
  const status = thinbdJson<PoolStatus>(['pool', 'status', '--pool', pool]);
  assert.ok(status.space.punchedBytes >= 163 * MiB, `punched ${status.space.punchedBytes}`);
  await run('losetup', ['-d', device], { allowFailure: true });
  await run('fusermount3', ['-u', fuseDir], { allowFailure: true });
  await stopProcess(fuse.child);
  assert.equal(await server.stop(), 0);
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
});

test('stopping the server answers a write queued for space with ENOSPC instead of cutting its client off', async () => {
  // A write waiting for space (--when-full queue) used to hold its connection through the whole
  // stop timeout; the server then dropped the connection and qemu-io saw an I/O error.
  const pool = join(work, 'queued-stop');
  ok(['pool', 'create', '--pool', pool, '--data-size', '64M', '--auto-grow', 'off']);
  ok(['create', '--pool', pool, 'v', '--size', '256M']);
  const server = await serve(pool);
  const write = (offset: number) => run('qemu-io', ['-f', 'raw', '-c', `write -P 0x33 ${offset} 8M`, '-c', 'flush', server.uri('v')], { allowFailure: true });
  let full = false;
  for (let chunk = 0; chunk < 16 && !full; chunk += 1) {
    const result = await write(chunk * 8 * MiB);
    full = /No space left on device/.test(result.stdout + result.stderr);
    if (!full) assert.equal(result.code, 0, result.stdout + result.stderr);
  }
  assert.ok(full, 'the pool filled up');
  ok(['pool', 'set', '--pool', pool, '--when-full', 'queue:3600']);
  const queued = write(200 * MiB);
  await waitFor(() => thinbdJson<PoolStatus>(['pool', 'status', '--pool', pool]).space.writesWaiting > 0, 'the write to wait for space');
  assert.equal(await server.stop(), 0);
  const result = await queued;
  assert.match(result.stdout + result.stderr, /No space left on device/, 'the queued write was answered ENOSPC');
  assert.doesNotMatch(server.output(), /timed out/, 'no connection had to be cut off');
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
});
