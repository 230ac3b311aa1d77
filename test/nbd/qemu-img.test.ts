// qemu-img converts a raw image to an export and back, and compares both ways; a sparse source
// stays sparse on the export (holes go as WRITE_ZEROES or are skipped, never as written zeros).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, readFileSync, truncateSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { patternBytes, requireTools, run, startServer, tempDir } from './helpers.ts';
import { MemoryExport } from './memory-export.ts';

const MiB = 1024 * 1024;

requireTools('qemu-img');
const target = new MemoryExport({ name: 'target', sizeBytes: 64 * MiB });
const running = await startServer([target]);
const dir = tempDir('qemu-img');
after(async () => {
  await running.close();
  dir.remove();
});

/** A 64 MiB raw file with data in a few places and holes elsewhere. */
function makeSparseImage(path: string): void {
  writeFileSync(path, '');
  truncateSync(path, 64 * MiB);
  const fd = openSync(path, 'r+');
  writeSync(fd, patternBytes(3 * MiB, 11), 0, 3 * MiB, 1 * MiB);
  writeSync(fd, patternBytes(4096, 12), 0, 4096, 20 * MiB + 512);
  writeSync(fd, patternBytes(1 * MiB, 13), 0, 1 * MiB, 63 * MiB);
  closeSync(fd);
}

test('qemu-img convert to an export copies a sparse image, and qemu-img compare finds them identical', async () => {
  const source = join(dir.path, 'source.raw');
  makeSparseImage(source);
  await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, running.uri('target')]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, running.uri('target')]);
  assert.ok(Buffer.from(target.contents()).equals(readFileSync(source)));
  // 3 MiB + 1 block (4 KiB write straddles 2 blocks) + 1 MiB, in 4 KiB blocks: holes stayed holes.
  assert.ok(target.allocatedBlockCount <= (4 * MiB) / 4096 + 2, `allocated ${target.allocatedBlockCount} blocks`);
});

test('qemu-img convert from an export writes a raw file that compares identical', async () => {
  const copy = join(dir.path, 'copy.raw');
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', running.uri('target'), copy]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', copy, running.uri('target')]);
  assert.ok(readFileSync(copy).equals(Buffer.from(target.contents())));
});

test('qemu-img compare notices a difference', async () => {
  await target.write(40 * MiB, Buffer.from('different'), { fua: false });
  const result = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(dir.path, 'copy.raw'), running.uri('target')], { allowFailure: true });
  assert.equal(result.code, 1, result.stdout + result.stderr);
});
