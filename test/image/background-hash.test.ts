// The source's SHA-256 on its own thread, fed two ways: chunks copied in (a stream), or the file
// read by the hash's worker itself. Both give the file's digest.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { patternBytes, tempDir } from '../nbd/helpers.ts';
import { BackgroundHash, type LocalFile } from '../../src/image/background-hash.ts';
import { isThinError } from '../../src/errors.ts';
import { openSource } from '../../src/image/source.ts';

const SLOT_BYTES = 4096;
const SLOTS = 3;

let work: { path: string; remove(): void };
let file: string;
let bytes: Uint8Array;
before(() => {
  work = tempDir('background-hash');
  // Five and a half slots: the ring of three is reused, and the last read is short.
  bytes = patternBytes(SLOT_BYTES * 5 + SLOT_BYTES / 2, 7);
  file = path.join(work.path, 'source');
  fs.writeFileSync(file, bytes);
});
after(() => work?.remove());

const sha256 = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

/** The file at `at` as the import identifies the one it opened. */
function localFile(at: string): LocalFile {
  const { dev, ino } = fs.statSync(at, { bigint: true });
  return { path: at, dev, ino };
}

test('a local file is hashed whole by the worker reading it itself, whatever readFile() was called again', async () => {
  const hash = new BackgroundHash(SLOT_BYTES, SLOTS, file, localFile(file));
  hash.readFile();
  hash.readFile();
  assert.equal(await hash.digest(), sha256(bytes));
});

test('a file the worker cannot read fails the digest with an error naming it, and does not leave it waiting', async () => {
  const missing = path.join(work.path, 'missing.tar');
  const hash = new BackgroundHash(SLOT_BYTES, SLOTS, missing, { path: missing, dev: 0n, ino: 0n });
  // Nothing else holds the event loop open: a digest left waiting on the stopped worker would end the test unsettled.
  await assert.rejects(hash.digest(), (error) => {
    assert.ok(isThinError(error, 'THIN_IO'));
    assert.match(error.message, new RegExp(`^Cannot read ${missing} for its SHA-256: ENOENT`));
    return true;
  });
});

test('a file replaced after the import opened it is refused by name, not hashed', async () => {
  const original = path.join(work.path, 'replaced.tar');
  fs.writeFileSync(original, bytes);
  const opened = localFile(original);
  const other = path.join(work.path, 'other.tar');
  fs.writeFileSync(other, bytes);
  fs.renameSync(other, original);
  const hash = new BackgroundHash(SLOT_BYTES, SLOTS, original, opened);
  await assert.rejects(hash.digest(), (error) => {
    assert.ok(isThinError(error, 'THIN_IO'));
    assert.equal(error.message, `Cannot read ${original} for its SHA-256: it is no longer the file being imported (it was replaced meanwhile)`);
    return true;
  });
});

test('chunks copied into the slots (a stream)', async () => {
  const hash = new BackgroundHash(SLOT_BYTES, SLOTS, 'a stream');
  for (let at = 0; at < bytes.length; at += 5000) await hash.update(bytes.subarray(at, at + 5000));
  assert.equal(await hash.digest(), sha256(bytes));
});

test('a hash closed before its worker was told to read the file ends its worker, and its digest is refused', async () => {
  const hash = new BackgroundHash(SLOT_BYTES, SLOTS, file, localFile(file));
  await hash.close();
  await assert.rejects(async () => hash.digest(), /already closed/);
});

test('closing a hash that is no longer wanted ends an update waiting for a slot (a stream read ahead of the decision)', async () => {
  // One slot of 16 bytes and a worker still starting: the update's second piece waits for the first's slot.
  const hash = new BackgroundHash(16, 1, 'a stream');
  const pending = hash.update(new Uint8Array(64));
  await hash.close();
  await pending;
  await assert.rejects(async () => hash.digest(), /already closed/);
});

test('a source refused on its first bytes (xz) leaves no file open: the hash is closed and the descriptor with it', async () => {
  const xz = path.join(work.path, 'refused.tar.xz');
  fs.writeFileSync(xz, Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0x00, 0x04, 0xe6, 0xd6]));
  const openFiles = (): number => fs.readdirSync('/proc/self/fd').length;
  const before = openFiles();
  for (let attempt = 0; attempt < 5; attempt += 1) {
    await assert.rejects(openSource(xz), /xz-compressed/);
  }
  assert.equal(openFiles(), before, 'descriptors left open by refused sources');
});
