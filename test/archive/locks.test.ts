// Store locks: packs run side by side; gc needs the store alone; a dead process's lock is removed.
// And two packs into one store at the same time both complete, and commands beside each other
// do not trip over locks, streams and packs that the others add or remove meanwhile.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import os from 'node:os';
import { join } from 'node:path';
import { DirectoryObjectStore } from '../../src/archive/directory-store.ts';
import { lockStore } from '../../src/archive/locks.ts';
import { Archive } from '../../src/archive/archive.ts';
import { packVolume, gcArchive, verifyArchive } from '../../src/archive/commands.ts';
import { listStore, verifyStore } from '../../src/archive/maintenance.ts';
import { findBaseStream } from '../../src/archive/pack.ts';
import type { ObjectStore } from '../../src/archive/store.ts';
import { isThinError } from '../../src/errors.ts';
import { MiB, contentBytes, createPool, tempDir } from './helpers.ts';
import { poolSources } from '../../src/archive/source.ts';

const dir = tempDir('archive-locks');
after(() => dir.remove());

test('shared locks coexist; an exclusive lock is refused beside them and refuses them', async () => {
  const store = DirectoryObjectStore.open(join(dir.path, 'a'));
  const first = await lockStore(store, 'shared', 'pack');
  const second = await lockStore(store, 'shared', 'pack');
  await assert.rejects(lockStore(store, 'exclusive', 'gc'), (error: unknown) => isThinError(error, 'THIN_BUSY') && /in use by pack \(pid \d+/.test((error as Error).message));
  await first.release();
  await second.release();
  const gc = await lockStore(store, 'exclusive', 'gc');
  await assert.rejects(lockStore(store, 'shared', 'pack'), (error: unknown) => isThinError(error, 'THIN_BUSY') && /gc needs it alone/.test((error as Error).message));
  await gc.release();
  const keys: string[] = [];
  for await (const object of store.list('locks/')) keys.push(object.key);
  assert.deepEqual(keys, [], 'released locks are gone');
});

test('an object under locks/ that is no readable lock counts as gc\'s; the refusal names it and says how to go on', async () => {
  const store = DirectoryObjectStore.open(join(dir.path, 'unreadable'));
  await store.put('locks/stray.txt', new TextEncoder().encode('not json'));
  for (const [kind, command] of [['shared', 'pack'], ['exclusive', 'gc']] as const) {
    await assert.rejects(
      lockStore(store, kind, command),
      (error: unknown) =>
        isThinError(error, 'THIN_BUSY') &&
        (error as Error).message ===
          `The archive store ${store.url} holds locks/stray.txt, which is not a readable lock: it counts as held by gc, so ${command} cannot run. If no command is using the store, delete that object`,
    );
  }
  const keys: string[] = [];
  for await (const object of store.list('locks/')) keys.push(object.key);
  assert.deepEqual(keys, ['locks/stray.txt'], 'the refused takers left no lock of their own');
});

test("a dead process's lock is stale and removed by the next taker", async () => {
  const store = DirectoryObjectStore.open(join(dir.path, 'b'));
  const record = { kind: 'exclusive', command: 'gc', host: os.hostname(), pid: 2 ** 22 + 12345, startedAt: new Date().toISOString(), refreshedAt: new Date().toISOString() };
  await store.put('locks/0123456789abcdef0123456789abcdef', new TextEncoder().encode(JSON.stringify(record)));
  const notes: string[] = [];
  const lock = await lockStore(store, 'shared', 'pack', (line) => notes.push(line));
  assert.match(notes.join('\n'), /removed a stale lock of gc/);
  await lock.release();
});

/** `store`, where a get of a key in `vanishing` finds it deleted (by another process, since it was listed). */
function deletedWhenRead(store: ObjectStore, vanishing: Set<string>): ObjectStore {
  return {
    url: store.url,
    get: async (key) => {
      if (vanishing.has(key)) await store.delete(key);
      return await store.get(key);
    },
    getRange: (key, beginBytes, endBytes, into) => store.getRange(key, beginBytes, endBytes, into),
    put: (key, data) => store.put(key, data),
    putNew: (key, data) => store.putNew(key, data),
    list: (prefix) => store.list(prefix),
    delete: (key) => store.delete(key),
    close: () => store.close(),
  };
}

test('a lock released between the listing and its reading is not held: a shared taker goes ahead', async () => {
  const store = DirectoryObjectStore.open(join(dir.path, 'c'));
  const other = await lockStore(store, 'shared', 'verify');
  const lock = await lockStore(deletedWhenRead(store, new Set([other.key])), 'shared', 'pack');
  await lock.release();
});

test('a stream removed between the listing and its reading is not there for list, verify or --delta-from', async () => {
  const pool = await createPool(join(dir.path, 'pool-rm'));
  const storePath = join(dir.path, 'store-rm');
  await (await Archive.init(storePath, { averageChunkBytes: 16 * 1024, zstdLevel: 3 })).close();
  try {
    await (await pool.createVolume('v', { sizeBytes: 4 * MiB })).write(0, contentBytes(MiB, 50));
    await pool.snapshot('v', 'base', { readOnly: true });
    for (const name of ['kept', 'removed']) await packVolume({ store: storePath, sources: poolSources(pool), volume: 'base', name });
    const archive = await Archive.open(storePath);
    try {
      (archive as { store: ObjectStore }).store = deletedWhenRead(archive.store, new Set(['streams/removed']));
      assert.deepEqual((await listStore(archive)).streams.map((stream) => stream.name), ['kept']);
      const report = await verifyStore(archive);
      assert.deepEqual([report.streamsChecked, report.problems], [1, []]);
      assert.equal((await findBaseStream(archive, poolSources(pool)('base').identity)).name, 'kept');
    } finally {
      await archive.close();
    }
  } finally {
    await pool.close();
  }
});

test('verify beside a pack that commits while verify loads the index names no problem in that stream', async () => {
  const pool = await createPool(join(dir.path, 'pool-verify-race'));
  const storePath = join(dir.path, 'store-verify-race');
  await (await Archive.init(storePath, { averageChunkBytes: 16 * 1024, zstdLevel: 3 })).close();
  try {
    for (const [index, name] of ['x', 'y'].entries()) await (await pool.createVolume(name, { sizeBytes: 4 * MiB })).write(0, contentBytes(2 * MiB, 60 + index));
    await packVolume({ store: storePath, sources: poolSources(pool), volume: 'x', name: 'x' });
    const archive = await Archive.open(storePath);
    try {
      // The pack of y runs to its end after verify listed the packs, before it lists the index objects.
      const store = archive.store;
      let packed: Promise<unknown> | undefined;
      (archive as { store: ObjectStore }).store = {
        ...deletedWhenRead(store, new Set()),
        list: (prefix) => {
          if (prefix !== 'index/' || packed !== undefined) return store.list(prefix);
          packed = packVolume({ store: storePath, sources: poolSources(pool), volume: 'y', name: 'y' });
          return (async function* () {
            await packed;
            yield* store.list(prefix);
          })();
        },
      };
      const report = await verifyStore(archive);
      assert.notEqual(packed, undefined);
      assert.deepEqual(report.problems, []);
    } finally {
      await archive.close();
    }
    assert.deepEqual((await verifyArchive({ store: storePath })).problems, [], 'a verify after the pack checks both');
  } finally {
    await pool.close();
  }
});

test('two packs into one store at once both complete, and the store verifies', async () => {
  const pool = await createPool(join(dir.path, 'pool'));
  const storePath = join(dir.path, 'store');
  await (await Archive.init(storePath, { averageChunkBytes: 16 * 1024, zstdLevel: 3 })).close();
  try {
    for (const [index, name] of ['x', 'y'].entries()) {
      const volume = await pool.createVolume(name, { sizeBytes: 16 * MiB });
      await volume.write(0, contentBytes(8 * MiB, 40)); // the same bytes in both
      await volume.write(8 * MiB, contentBytes(4 * MiB, 41 + index));
    }
    const [x, y] = await Promise.all([packVolume({ store: storePath, sources: poolSources(pool), volume: 'x', name: 'x' }), packVolume({ store: storePath, sources: poolSources(pool), volume: 'y', name: 'y' })]);
    assert.equal(x.mappedBytes, 12 * MiB);
    assert.equal(y.mappedBytes, 12 * MiB);
    assert.deepEqual((await verifyArchive({ store: storePath })).problems, []);
    const gc = await gcArchive({ store: storePath });
    assert.equal(gc.streams, 2);
    assert.deepEqual((await verifyArchive({ store: storePath })).problems, [], 'gc kept what both need');
  } finally {
    await pool.close();
  }
});
