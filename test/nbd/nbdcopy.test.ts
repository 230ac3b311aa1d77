// nbdcopy (libnbd) copies a file into an export and back out over several connections
// (the export offers CAN_MULTI_CONN), keeping holes as holes.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, truncateSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { patternBytes, requireTools, run, startServer, tempDir } from './helpers.ts';
import { MemoryExport } from './memory-export.ts';

const MiB = 1024 * 1024;

requireTools('nbdcopy');
const disk = new MemoryExport({ name: 'disk', sizeBytes: 96 * MiB });
const running = await startServer([disk]);
const dir = tempDir('nbdcopy');
after(async () => {
  await running.close();
  dir.remove();
});

test('nbdcopy copies a sparse file into an export over 4 connections and back out unchanged', async () => {
  const source = join(dir.path, 'source.raw');
  writeFileSync(source, '');
  truncateSync(source, 96 * MiB);
  const fd = openSync(source, 'r+');
  writeSync(fd, patternBytes(17 * MiB, 21), 0, 17 * MiB, 2 * MiB);
  writeSync(fd, patternBytes(5 * MiB, 22), 0, 5 * MiB, 80 * MiB + 4096);
  closeSync(fd);

  await run('nbdcopy', ['--connections=4', '--requests=16', source, running.uri('disk')]);
  const copy = join(dir.path, 'copy.raw');
  await run('nbdcopy', ['--connections=4', running.uri('disk'), copy]);
  const sourceBytes = readFileSync(source);
  assert.ok(Buffer.from(disk.contents()).equals(sourceBytes), 'the export holds the file');
  assert.ok(readFileSync(copy).equals(sourceBytes), 'the copy out equals the file');
  assert.ok(disk.allocatedBlockCount <= (22 * MiB) / 4096 + 2, `holes stayed holes (${disk.allocatedBlockCount} blocks)`);
});

test('nbdcopy from an export to null: reads every data block (no holes skipped wrongly)', async () => {
  const { stdout } = await run('nbdcopy', ['--flush', running.uri('disk'), 'null:']);
  assert.equal(stdout, '');
});
