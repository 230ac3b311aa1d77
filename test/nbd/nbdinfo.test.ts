// nbdinfo (libnbd) lists the exports with sizes, descriptions and flags, and maps the holes of a
// partly written export.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isThinError } from '../../src/errors.ts';
import { MapExportRegistry } from '../../src/nbd/backend.ts';
import { NbdServer } from '../../src/nbd/server.ts';
import { patternBytes, requireTools, run, startServer, tempDir } from './helpers.ts';
import { MemoryExport } from './memory-export.ts';

const MiB = 1024 * 1024;

requireTools('nbdinfo');
const volume = new MemoryExport({ name: 'vol0', sizeBytes: 64 * MiB, description: 'volume zero' });
const snapshot = new MemoryExport({ name: 'vol0-snap', sizeBytes: 32 * MiB, description: 'a read-only snapshot', readOnly: true });
await volume.write(1 * MiB, patternBytes(64 * 1024, 1), { fua: false });
await volume.write(8 * MiB, patternBytes(1 * MiB, 2), { fua: false });
const running = await startServer([volume, snapshot]);
after(() => running.close());

test('nbdinfo --list shows every export with its size, description and flags', async () => {
  const { stdout } = await run('nbdinfo', ['--json', '--list', running.uri('')]);
  const listing = JSON.parse(stdout) as { structured: boolean; exports: Array<Record<string, unknown>> };
  assert.equal(listing.structured, true);
  const byName = new Map(listing.exports.map((entry) => [entry['export-name'], entry]));
  assert.deepEqual([...byName.keys()].sort(), ['vol0', 'vol0-snap']);
  const vol0 = byName.get('vol0')!;
  assert.equal(vol0['export-size'], 64 * MiB);
  assert.equal(vol0['description'], 'volume zero');
  assert.deepEqual(vol0['contexts'], ['base:allocation']);
  for (const flag of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_multi_conn', 'can_df', 'can_cache']) {
    assert.equal(vol0[flag], true, flag);
  }
  assert.equal(vol0['is_read_only'], false);
  assert.equal(vol0['block_size_maximum'], 32 * MiB);
  const snap = byName.get('vol0-snap')!;
  assert.equal(snap['export-size'], 32 * MiB);
  assert.equal(snap['is_read_only'], true);
  assert.equal(snap['description'], 'a read-only snapshot');
});

test('nbdinfo --map shows the written ranges as data and the rest as holes that read as zeros', async () => {
  const { stdout } = await run('nbdinfo', ['--json', '--map', running.uri('vol0')]);
  const map = JSON.parse(stdout) as Array<{ offset: number; length: number; type: number }>;
  assert.deepEqual(
    map.map(({ offset, length, type }) => [offset, length, type]),
    [
      [0, 1 * MiB, 3],
      [1 * MiB, 64 * 1024, 0],
      [1 * MiB + 64 * 1024, 7 * MiB - 64 * 1024, 3],
      [8 * MiB, 1 * MiB, 0],
      [9 * MiB, 55 * MiB, 3],
    ],
  );
});

test('nbdinfo --size and --can read the flags of one export', async () => {
  assert.equal((await run('nbdinfo', ['--size', running.uri('vol0-snap')])).stdout.trim(), String(32 * MiB));
  assert.equal((await run('nbdinfo', ['--is', 'read-only', running.uri('vol0-snap')], { allowFailure: true })).code, 0);
  assert.notEqual((await run('nbdinfo', ['--is', 'read-only', running.uri('vol0')], { allowFailure: true })).code, 0);
  assert.equal((await run('nbdinfo', ['--can', 'multi-conn', running.uri('vol0')], { allowFailure: true })).code, 0);
});

test('nbdinfo reaches an export over a Unix socket, and the socket goes away when the server closes', async () => {
  const dir = tempDir('nbd-unix');
  const server = new NbdServer({ registry: new MapExportRegistry([volume]) });
  try {
    const path = join(dir.path, 'nbd.sock');
    await server.listen({ path });
    const { stdout } = await run('nbdinfo', ['--size', `nbd+unix:///vol0?socket=${path}`]);
    assert.equal(stdout.trim(), String(64 * MiB));
    const map = JSON.parse((await run('nbdinfo', ['--json', '--map', `nbd+unix:///vol0?socket=${path}`])).stdout) as unknown[];
    assert.equal(map.length, 5);
    await server.close();
    assert.equal((await run('nbdinfo', ['--size', `nbd+unix:///vol0?socket=${path}`], { allowFailure: true })).code !== 0, true);
  } finally {
    await server.close();
    dir.remove();
  }
});

test('a Unix socket left behind by a killed server is taken over; one in use is not', async () => {
  const dir = tempDir('nbd-stale');
  const path = join(dir.path, 'nbd.sock');
  // A process listening on the path, SIGKILLed: its socket file stays behind.
  const holder = spawn(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => console.log('up'))", path]);
  await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
  const exited = new Promise<void>((resolve) => holder.once('exit', () => resolve()));
  holder.kill('SIGKILL');
  await exited;
  assert.ok(existsSync(path), 'the killed listener left its socket file');
  const live = new NbdServer({ registry: new MapExportRegistry([volume]) });
  const second = new NbdServer({ registry: new MapExportRegistry([volume]) });
  try {
    await live.listen({ path });
    assert.equal((await run('nbdinfo', ['--size', `nbd+unix:///vol0?socket=${path}`])).stdout.trim(), String(64 * MiB));
    await assert.rejects(second.listen({ path }), /EADDRINUSE/);
    assert.equal((await run('nbdinfo', ['--size', `nbd+unix:///vol0?socket=${path}`])).stdout.trim(), String(64 * MiB), 'the live server still answers');
  } finally {
    await live.close();
    await second.close();
    dir.remove();
  }
});

test('a Unix socket is 0600 whatever the umask, and the umask is given back', async () => {
  const dir = tempDir('nbd-socket-mode');
  const path = join(dir.path, 'nbd.sock');
  const server = new NbdServer({ registry: new MapExportRegistry([volume]) });
  const previous = process.umask(0o000);
  try {
    await server.listen({ path });
    assert.equal(process.umask(), 0o000);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.equal((await run('nbdinfo', ['--size', `nbd+unix:///vol0?socket=${path}`])).stdout.trim(), String(64 * MiB));
  } finally {
    process.umask(previous);
    await server.close();
    dir.remove();
  }
});

test('a Unix socket path that names a file, or a link to one, is refused and the file is left as it was', async () => {
  const dir = tempDir('nbd-not-a-socket');
  const file = join(dir.path, 'notes.txt');
  writeFileSync(file, 'keep me\n');
  const link = join(dir.path, 'link.sock');
  symlinkSync(file, link);
  const server = new NbdServer({ registry: new MapExportRegistry([volume]) });
  try {
    for (const path of [file, link]) {
      await assert.rejects(server.listen({ path }), (error) => {
        assert.ok(isThinError(error, 'THIN_EXISTS'));
        assert.equal(error.message, `Cannot listen on ${path}: it exists and is not a socket (thinbd does not remove it)`);
        return true;
      });
    }
    assert.equal(readFileSync(file, 'utf8'), 'keep me\n');
    assert.equal(lstatSync(link).isSymbolicLink(), true);
  } finally {
    await server.close();
    dir.remove();
  }
});
