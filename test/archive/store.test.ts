// The ObjectStore conformance suite against both stores: a directory, and an S3 bucket prefix on
// a local S3-compatible server (s3rver on 127.0.0.1).
import { after, before, test } from 'node:test';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DirectoryObjectStore } from '../../src/archive/directory-store.ts';
import { S3ObjectStore } from '../../src/archive/s3-store.ts';
import { Archive } from '../../src/archive/archive.ts';
import { isThinError } from '../../src/errors.ts';
import { startS3Server, type LocalS3Server } from '../io/s3-server.ts';
import { storeConformance } from './store.conformance.ts';

const root = mkdtempSync(join(tmpdir(), 'thinbd-store-'));
let server: LocalS3Server | undefined;
let count = 0;

before(async () => {
  server = await startS3Server({ buckets: ['conformance'] });
  Object.assign(process.env, server.env);
});

after(async () => {
  await server?.stop();
  rmSync(root, { recursive: true, force: true });
});

storeConformance({
  name: 'directory',
  create: async () => DirectoryObjectStore.open(join(root, `store-${(count += 1)}`)),
});

storeConformance({
  name: 's3',
  create: async () => S3ObjectStore.open(`s3://conformance/store-${(count += 1)}`, { endpoint: server!.endpoint }),
});

test('a directory store is private to its owner: directories 0700, objects 0600, whatever the umask', async () => {
  const path = join(root, 'private');
  const previous = process.umask(0o002);
  try {
    const store = DirectoryObjectStore.open(path);
    await store.put('packs/ab/abcd', new Uint8Array([1]));
    assert.equal(await store.putNew('streams/s', new Uint8Array([2])), true);
    const mode = (file: string) => statSync(join(path, file)).mode & 0o777;
    assert.equal(mode('.'), 0o700);
    assert.equal(mode('packs'), 0o700);
    assert.equal(mode('packs/ab'), 0o700);
    assert.equal(mode('packs/ab/abcd'), 0o600);
    assert.equal(mode('streams/s'), 0o600);
  } finally {
    process.umask(previous);
  }
});

test('a directory store takes an object in parts: nothing is visible before commit, abort leaves nothing', async () => {
  const store = DirectoryObjectStore.open(join(root, 'parts'));
  const parts = [new Uint8Array([1, 2, 3]), new Uint8Array(0), new Uint8Array(70_000).fill(9), new Uint8Array([4])];
  const writer = await store.openWriter('packs/cd/cdef');
  for (const part of parts) await writer.write(part);
  await assert.rejects(store.get('packs/cd/cdef'), /no such file/);
  await writer.commit();
  assert.deepEqual(Buffer.from(await store.get('packs/cd/cdef')), Buffer.concat(parts));
  assert.equal(statSync(join(root, 'parts', 'packs/cd/cdef')).mode & 0o777, 0o600);

  const dropped = await store.openWriter('packs/cd/dropped');
  await dropped.write(new Uint8Array([7]));
  await dropped.abort();
  await assert.rejects(store.get('packs/cd/dropped'), /no such file/);
  assert.equal(await store.removeUnfinished(), 0, 'no temporary file left behind');
  const keys: string[] = [];
  for await (const object of store.list('packs/')) keys.push(object.key);
  assert.deepEqual(keys, ['packs/cd/cdef']);
});

test("a directory store's gc removes a killed writer's temporaries and nothing else: not other names in tmp/, nor what a tmp/ planted as a link points at", async () => {
  const dir = join(root, 'temporaries');
  const store = DirectoryObjectStore.open(dir);
  const killed = await store.openWriter('packs/ab/abab');
  await killed.write(new Uint8Array([1]));
  writeFileSync(join(dir, 'tmp', 'notes'), 'not a writer\'s\n');
  assert.equal(await store.removeUnfinished(), 1);
  assert.deepEqual(readdirSync(join(dir, 'tmp')), ['notes']);

  const elsewhere = join(root, 'temporaries-elsewhere');
  mkdirSync(elsewhere);
  writeFileSync(join(elsewhere, 'passwd'), 'root:x:0:0\n');
  writeFileSync(join(elsewhere, '0123456789abcdef.config'), 'looks like a temporary\n');
  rmSync(join(dir, 'tmp'), { recursive: true });
  symlinkSync(elsewhere, join(dir, 'tmp'));
  assert.equal(await store.removeUnfinished(), 0);
  assert.deepEqual(readdirSync(elsewhere).sort(), ['0123456789abcdef.config', 'passwd']);
});

test('a directory store writes parts in one call after earlier writes, in order, and lists many objects in key order with their sizes', async () => {
  const store = DirectoryObjectStore.open(join(root, 'vectored'));
  const shared = new Uint8Array(new SharedArrayBuffer(100_000)).fill(5);
  const writer = await store.openWriter('packs/ef/efef');
  const first = writer.write(new Uint8Array([1, 2]));
  const parts = [shared.subarray(10, 70_010), new Uint8Array(0), new Uint8Array([3, 4, 5]), shared.subarray(0, 1)];
  const second = writer.writeParts(parts);
  const third = writer.write(new Uint8Array([6]));
  await Promise.all([first, second, third]);
  await writer.commit();
  assert.deepEqual(Buffer.from(await store.get('packs/ef/efef')), Buffer.concat([Buffer.from([1, 2]), ...parts.map((part) => Buffer.from(part)), Buffer.from([6])]));

  // More objects and directories than list() looks up at once.
  const expected: Array<{ key: string; sizeBytes: number }> = [];
  for (let index = 0; index < 90; index += 1) {
    const key = `packs/${(index % 3).toString(16).padStart(2, '0')}/${index.toString(16).padStart(4, '0')}`;
    await store.put(key, new Uint8Array(index));
    expected.push({ key, sizeBytes: index });
  }
  for (let index = 0; index < 40; index += 1) {
    const key = `packs/${(index + 16).toString(16)}/x`;
    await store.put(key, new Uint8Array(index + 1));
    expected.push({ key, sizeBytes: index + 1 });
  }
  expected.push({ key: 'packs/ef/efef', sizeBytes: 2 + 70_000 + 3 + 1 + 1 });
  expected.sort((a, b) => (a.key < b.key ? -1 : 1));
  const listed: Array<{ key: string; sizeBytes: number }> = [];
  for await (const object of store.list('packs/')) listed.push({ key: object.key, sizeBytes: object.sizeBytes });
  assert.deepEqual(listed, expected);
});

test('a directory store lists an object deleted while the listing runs as gone, not as an error', async () => {
  const store = DirectoryObjectStore.open(join(root, 'vanishing'));
  // More than list() looks up at once, so the last ones are looked up after the first is yielded.
  const keys = Array.from({ length: 40 }, (_, index) => `locks/${index.toString(16).padStart(32, '0')}`);
  for (const key of keys) await store.put(key, new Uint8Array([1]));
  const listed: string[] = [];
  for await (const object of store.list('locks/')) {
    if (listed.length === 0) await store.delete(keys[39]!); // released by its holder meanwhile
    listed.push(object.key);
  }
  assert.deepEqual(listed, keys.slice(0, 39));
});

test('a directory store keeps a few pack descriptors open for ranged reads and closes them all with the store', async () => {
  const openFiles = () => readdirSync('/proc/self/fd').length;
  const before = openFiles();
  const store = DirectoryObjectStore.open(join(root, 'descriptors'));
  const keys = Array.from({ length: 40 }, (_, index) => {
    const id = index.toString(16).padStart(32, 'b');
    return `packs/${id.slice(0, 2)}/${id}`;
  });
  const data = randomBytes(8192);
  for (const key of keys) await store.put(key, data);
  for (let round = 0; round < 2; round += 1) {
    await Promise.all(keys.map(async (key) => assert.deepEqual(Buffer.from(await store.getRange(key, 100, 200)), data.subarray(100, 200))));
  }
  const during = openFiles() - before;
  assert.ok(during > 0 && during <= 16, `${during} descriptors open between reads`);
  await store.close();
  assert.equal(openFiles(), before, 'none left open after close');
});

/**
 * Makes writes of the directory store's files fail as a full disk does: a write whose first byte
 * is FAIL fails with ENOSPC; one whose first byte is HOLD waits for `release` first (so it is in
 * flight when another fails). Returns the function that puts FileHandle.write back.
 */
async function injectWriteFaults(release: Promise<void>): Promise<() => void> {
  const probe = await open(join(root, 'probe'), 'w');
  const prototype = Object.getPrototypeOf(probe) as { write: (...args: unknown[]) => Promise<unknown> };
  await probe.close();
  const write = prototype.write;
  prototype.write = async function (this: unknown, ...args: unknown[]) {
    const [bytes, offset] = args as [Uint8Array, number];
    if (bytes instanceof Uint8Array && bytes[offset ?? 0] === FAIL) {
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
    }
    if (bytes instanceof Uint8Array && bytes[offset ?? 0] === HOLD) await release;
    return await write.apply(this, args);
  };
  return () => {
    prototype.write = write;
  };
}
const FAIL = 0xfe;
const HOLD = 0xfd;

test('a directory store writer that fails reports its first failure (ENOSPC) to every later call, and leaves nothing behind', async () => {
  const store = DirectoryObjectStore.open(join(root, 'full'));
  let release!: () => void;
  const restore = await injectWriteFaults(new Promise<void>((resolve) => (release = resolve)));
  try {
    const writer = await store.openWriter('packs/fe/fefe');
    await writer.write(new Uint8Array(1000).fill(1));
    // One write in flight while another fails: it must not be cut off by a closed file, and it too reports the cause.
    const held = writer.write(new Uint8Array(1000).fill(HOLD));
    held.catch(() => undefined); // checked below, once the failure is reported
    const failed = writer.write(new Uint8Array(1000).fill(FAIL));
    release();
    await assert.rejects(failed, /Cannot write .*packs\/fe\/fefe: ENOSPC/);
    assert.deepEqual(readdirSync(join(root, 'full', 'tmp')), [], 'the temporary file is gone when the failure is reported');
    await assert.rejects(held, /ENOSPC/);
    // Calls after the failure report it too, not "file closed".
    await assert.rejects(writer.write(new Uint8Array(10)), /ENOSPC/);
    await assert.rejects(writer.writeParts([new Uint8Array(10), new Uint8Array(5)]), /ENOSPC/);
    await assert.rejects(writer.commit(), /ENOSPC/);
    await writer.abort();
  } finally {
    restore();
  }
  await assert.rejects(store.get('packs/fe/fefe'), /no such file/);
  assert.equal(await store.removeUnfinished(), 0, 'no temporary file left behind');

  // The store takes the next object as usual.
  const writer = await store.openWriter('packs/fe/fefe');
  await writer.write(new Uint8Array([1, 2, 3]));
  await writer.commit();
  assert.deepEqual([...(await store.get('packs/fe/fefe'))], [1, 2, 3]);
});

test('an S3 store in a bucket that does not exist is named as such, not as a store to init; an empty prefix of a bucket is a store to init', async () => {
  await assert.rejects(
    Archive.open('s3://no-such-bucket-here/a', { endpoint: server!.endpoint }),
    (error: Error) => isThinError(error, 'THIN_NOT_FOUND') && /no such bucket no-such-bucket-here/.test(error.message) && !/archive init/.test(error.message),
  );
  await assert.rejects(
    Archive.open('s3://conformance/never-made', { endpoint: server!.endpoint }),
    (error: Error) => isThinError(error, 'THIN_NOT_FOUND') && /^No archive store at s3:\/\/conformance\/never-made\/ \(no config object\); create one with 'thinbd archive init/.test(error.message),
  );
});
