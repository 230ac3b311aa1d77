// The ObjectStore contract (src/archive/store.ts), as tests every implementation must pass.
// test/archive/store.test.ts runs it against the directory store and the S3 store.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { ObjectStore } from '../../src/archive/store.ts';
import { isThinError } from '../../src/errors.ts';

export interface StoreFactory {
  readonly name: string;
  /** A new, empty store. */
  create(): Promise<ObjectStore>;
}

async function keys(store: ObjectStore, prefix: string): Promise<string[]> {
  const result: string[] = [];
  for await (const object of store.list(prefix)) result.push(object.key);
  return result;
}

export function storeConformance(factory: StoreFactory): void {
  describe(`ObjectStore contract: ${factory.name}`, () => {
    test('an object put is read back whole and by range', async () => {
      const store = await factory.create();
      const data = randomBytes(50_000);
      await store.put('packs/ab/abcdef', data);
      assert.deepEqual(Buffer.from(await store.get('packs/ab/abcdef')), data);
      assert.deepEqual(Buffer.from(await store.getRange('packs/ab/abcdef', 49_990, 50_000)), data.subarray(49_990));
      assert.deepEqual(Buffer.from(await store.getRange('packs/ab/abcdef', 0, 1)), data.subarray(0, 1));
      await store.close();
    });

    test('a range read into a buffer of the caller holds the same bytes, whether or not the store used the buffer', async () => {
      const store = await factory.create();
      const data = randomBytes(50_000);
      await store.put('packs/ab/abcdef', data);
      const into = new Uint8Array(new SharedArrayBuffer(20_000)).fill(0xee);
      const range = await store.getRange('packs/ab/abcdef', 30_000, 45_000, into);
      assert.deepEqual(Buffer.from(range), data.subarray(30_000, 45_000));
      if (range.buffer === into.buffer) assert.equal(range.byteOffset, 0, 'a view of the buffer from its start');
      // Past the end: fewer bytes, as without a buffer.
      assert.deepEqual(Buffer.from(await store.getRange('packs/ab/abcdef', 40_000, 60_000, new Uint8Array(20_000))), data.subarray(40_000));
      // A buffer too short for the range is not written past its end.
      const short = new Uint8Array(10);
      assert.deepEqual(Buffer.from(await store.getRange('packs/ab/abcdef', 0, 100, short)), data.subarray(0, 100));
      await store.close();
    });

    test('ranged reads of many pack objects at once are right, again and again; a deleted pack is gone for them too', async () => {
      const store = await factory.create();
      const packs = Array.from({ length: 20 }, (_, index) => {
        const id = index.toString(16).padStart(32, 'a');
        return { key: `packs/${id.slice(0, 2)}/${id}`, data: randomBytes(4096 + index) };
      });
      await Promise.all(packs.map((pack) => store.put(pack.key, pack.data)));
      for (let round = 0; round < 3; round += 1) {
        await Promise.all(
          packs.flatMap((pack) =>
            [0, 1000, 4000].map(async (begin) => assert.deepEqual(Buffer.from(await store.getRange(pack.key, begin, begin + 96)), pack.data.subarray(begin, begin + 96), `${pack.key} at ${begin}`)),
          ),
        );
      }
      await store.delete(packs[3]!.key);
      await assert.rejects(store.getRange(packs[3]!.key, 0, 10), (error: unknown) => isThinError(error, 'THIN_NOT_FOUND'));
      assert.deepEqual(Buffer.from(await store.getRange(packs[4]!.key, 0, 10)), packs[4]!.data.subarray(0, 10));
      await store.close();
    });

    test('put replaces an object; an empty object is an object', async () => {
      const store = await factory.create();
      await store.put('config', new Uint8Array([1, 2, 3]));
      await store.put('config', new Uint8Array([4]));
      assert.deepEqual([...(await store.get('config'))], [4]);
      await store.put('empty', new Uint8Array(0));
      assert.equal((await store.get('empty')).length, 0);
      await store.close();
    });

    test('putNew claims a key once', async () => {
      const store = await factory.create();
      assert.equal(await store.putNew('streams/a', new Uint8Array([1])), true);
      assert.equal(await store.putNew('streams/a', new Uint8Array([2])), false);
      assert.deepEqual([...(await store.get('streams/a'))], [1]);
      await store.close();
    });

    test('list yields every key under a prefix in order, with sizes, and nothing else', async () => {
      const store = await factory.create();
      await store.put('packs/01/b', new Uint8Array(3));
      await store.put('packs/00/a', new Uint8Array(2));
      await store.put('packs/01/a', new Uint8Array(1));
      await store.put('index/x', new Uint8Array(5));
      const listed: Array<[string, number]> = [];
      for await (const object of store.list('packs/')) listed.push([object.key, object.sizeBytes]);
      assert.deepEqual(listed, [['packs/00/a', 2], ['packs/01/a', 1], ['packs/01/b', 3]]);
      assert.deepEqual(await keys(store, 'index/'), ['index/x']);
      assert.deepEqual(await keys(store, 'streams/'), []);
      assert.deepEqual(await keys(store, ''), ['index/x', 'packs/00/a', 'packs/01/a', 'packs/01/b']);
      await store.close();
    });

    test('a missing object is THIN_NOT_FOUND; delete removes, and deleting twice is fine', async () => {
      const store = await factory.create();
      await assert.rejects(store.get('nothing'), (error: unknown) => isThinError(error, 'THIN_NOT_FOUND'));
      await assert.rejects(store.getRange('nothing', 0, 10), (error: unknown) => isThinError(error, 'THIN_NOT_FOUND'));
      await store.put('locks/l', new Uint8Array([1]));
      await store.delete('locks/l');
      await store.delete('locks/l');
      await assert.rejects(store.get('locks/l'), (error: unknown) => isThinError(error, 'THIN_NOT_FOUND'));
      assert.deepEqual(await keys(store, 'locks/'), []);
      await store.close();
    });

    test('keys that could escape the store are refused', async () => {
      const store = await factory.create();
      for (const key of ['../x', 'a/../../b', '/abs', 'a//b', '', 'a/']) {
        await assert.rejects(store.put(key, new Uint8Array(1)), (error: unknown) => isThinError(error, 'THIN_INVALID'), key);
      }
      await store.close();
    });

    test('many puts at once all land', async () => {
      const store = await factory.create();
      const written = Array.from({ length: 20 }, (_, index) => `index/${String(index).padStart(2, '0')}`);
      await Promise.all(written.map((key, index) => store.put(key, new Uint8Array([index]))));
      assert.deepEqual(await keys(store, 'index/'), written);
      await store.close();
    });
  });
}
