// The BlockFile contract (src/io/block-file.ts), as tests any implementation must pass.
// test/io/block-file.test.ts runs it against every implementation.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { BlockFile } from '../../src/io/block-file.ts';
import { isThinError } from '../../src/errors.ts';
import { isMediaError } from '../../src/io/media-error.ts';

export interface BlockFileFactory {
  /** Shown in test names. */
  readonly name: string;
  /** A new, empty-content file of sizeBytes. */
  create(sizeBytes: number): Promise<BlockFile>;
  /**
   * Makes the next write to file fail with EIO, when the implementation can be told to (the
   * simulator, fault injection); lets the suite check that a write refused by the medium fails
   * alone: later writes and syncs go on (io/media-error.ts).
   */
  failNextWrite?(file: BlockFile): void;
  /** Makes the next sync of file fail, likewise. */
  failNextSync?(file: BlockFile): void;
}

function pattern(lengthBytes: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes);
  let state = (seed * 2654435761) >>> 0 || 1;
  for (let index = 0; index < lengthBytes; index++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bytes[index] = state & 0xff;
  }
  return bytes;
}

function readSyncBytes(file: BlockFile, offsetBytes: number, lengthBytes: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes);
  file.readSync(bytes, offsetBytes);
  return bytes;
}

async function readBytes(file: BlockFile, offsetBytes: number, lengthBytes: number): Promise<Uint8Array> {
  const bytes = new Uint8Array(lengthBytes);
  await file.read(bytes, offsetBytes);
  return bytes;
}

async function withFile(factory: BlockFileFactory, sizeBytes: number, body: (file: BlockFile) => Promise<void>): Promise<void> {
  const file = await factory.create(sizeBytes);
  try {
    await body(file);
  } finally {
    await file.close();
  }
}

const KIB = 1024;

export function blockFileConformance(factory: BlockFileFactory): void {
  describe(`BlockFile contract: ${factory.name}`, () => {
    test('a new file reports its size and reads as zeros', async () => {
      await withFile(factory, 256 * KIB, async (file) => {
        assert.equal(file.sizeBytes(), 256 * KIB);
        assert.deepEqual(readSyncBytes(file, 0, 4096), new Uint8Array(4096));
        assert.deepEqual(await readBytes(file, 200 * KIB + 7, 10_000), new Uint8Array(10_000));
        assert.equal(typeof file.description, 'string');
        assert.ok(file.description.length > 0);
      });
    });

    test('a completed write reads back through read and readSync, at unaligned offsets', async () => {
      await withFile(factory, 256 * KIB, async (file) => {
        const data = pattern(5000, 1);
        await file.write(data, 1234);
        assert.deepEqual(readSyncBytes(file, 1234, 5000), data);
        assert.deepEqual(await readBytes(file, 1234, 5000), data);
        // The bytes around it are untouched.
        assert.deepEqual(readSyncBytes(file, 0, 1234), new Uint8Array(1234));
        assert.deepEqual(readSyncBytes(file, 6234, 100), new Uint8Array(100));
        // A read that covers part of the write sees exactly that part.
        assert.deepEqual(await readBytes(file, 2000, 100), data.subarray(766, 866));
      });
    });

    test('a later write over an earlier one wins once both completed', async () => {
      await withFile(factory, 64 * KIB, async (file) => {
        await file.write(pattern(8192, 2), 0);
        await file.write(pattern(100, 3), 4000);
        const expected = pattern(8192, 2);
        expected.set(pattern(100, 3), 4000);
        assert.deepEqual(await readBytes(file, 0, 8192), expected);
      });
    });

    test('reads past the end return zeros, whole or in part', async () => {
      await withFile(factory, 8 * KIB, async (file) => {
        const data = pattern(8 * KIB, 4);
        await file.write(data, 0);
        const straddling = readSyncBytes(file, 6 * KIB, 4 * KIB);
        assert.deepEqual(straddling.subarray(0, 2 * KIB), data.subarray(6 * KIB));
        assert.deepEqual(straddling.subarray(2 * KIB), new Uint8Array(2 * KIB));
        const beyond = new Uint8Array(4096).fill(0xee);
        await file.read(beyond, 1024 * KIB);
        assert.deepEqual(beyond, new Uint8Array(4096));
        assert.equal(file.sizeBytes(), 8 * KIB, 'reading past the end does not grow the file');
      });
    });

    test('a write past the end extends the file', async () => {
      await withFile(factory, 4 * KIB, async (file) => {
        const data = pattern(3000, 5);
        await file.write(data, 10 * KIB);
        assert.equal(file.sizeBytes(), 10 * KIB + 3000);
        assert.deepEqual(await readBytes(file, 10 * KIB, 3000), data);
        assert.deepEqual(await readBytes(file, 4 * KIB, 6 * KIB), new Uint8Array(6 * KIB), 'the gap reads as zeros');
      });
    });

    test('grow extends with zeros and never shrinks', async () => {
      await withFile(factory, 4 * KIB, async (file) => {
        const data = pattern(4 * KIB, 6);
        await file.write(data, 0);
        await file.grow(1024 * KIB);
        assert.equal(file.sizeBytes(), 1024 * KIB);
        assert.deepEqual(await readBytes(file, 0, 4 * KIB), data);
        assert.deepEqual(await readBytes(file, 1020 * KIB, 4 * KIB), new Uint8Array(4 * KIB));
        await file.grow(8 * KIB);
        assert.equal(file.sizeBytes(), 1024 * KIB, 'grow to a smaller size does nothing');
        assert.deepEqual(await readBytes(file, 0, 4 * KIB), data);
      });
    });

    test('a punched range reads zeros, the rest and the size stay; a file that cannot punch says so and changes nothing', async () => {
      await withFile(factory, 256 * KIB, async (file) => {
        const data = pattern(256 * KIB, 11);
        await file.write(data, 0);
        const punched = (await file.punch?.(64 * KIB, 128 * KIB)) ?? false;
        assert.equal(file.sizeBytes(), 256 * KIB, 'a punch keeps the size');
        const expected = new Uint8Array(data);
        if (punched) expected.fill(0, 64 * KIB, 192 * KIB);
        assert.deepEqual(await readBytes(file, 0, 256 * KIB), expected);
        assert.deepEqual(readSyncBytes(file, 60 * KIB, 8 * KIB), expected.subarray(60 * KIB, 68 * KIB));
        await file.write(pattern(4 * KIB, 12), 100 * KIB);
        assert.deepEqual(await readBytes(file, 100 * KIB, 4 * KIB), pattern(4 * KIB, 12), 'a punched range takes writes again');
        await file.sync();
      });
    });

    test('concurrent writes to disjoint ranges all land', async () => {
      await withFile(factory, 1024 * KIB, async (file) => {
        const writes: Promise<void>[] = [];
        for (let index = 0; index < 64; index++) writes.push(file.write(pattern(4096, 100 + index), index * 8192 + 512));
        await Promise.all(writes);
        const reads = await Promise.all(
          Array.from({ length: 64 }, (_, index) => readBytes(file, index * 8192 + 512, 4096)),
        );
        reads.forEach((bytes, index) => assert.deepEqual(bytes, pattern(4096, 100 + index), `write ${index}`));
      });
    });

    test('the source buffer may be reused once its write completed', async () => {
      await withFile(factory, 64 * KIB, async (file) => {
        const buffer = pattern(4096, 7);
        const expected = new Uint8Array(buffer);
        await file.write(buffer, 4096);
        buffer.fill(0x55);
        await file.sync();
        assert.deepEqual(await readBytes(file, 4096, 4096), expected);
      });
    });

    test('writes from and reads into views with a byte offset use only the view', async () => {
      await withFile(factory, 64 * KIB, async (file) => {
        const backing = pattern(10_000, 8);
        const view = backing.subarray(1000, 3000);
        await file.write(view, 0);
        const target = new Uint8Array(6000).fill(0xaa);
        await file.read(target.subarray(2000, 4000), 0);
        assert.deepEqual(target.subarray(2000, 4000), backing.subarray(1000, 3000));
        assert.ok(target.subarray(0, 2000).every((byte) => byte === 0xaa), 'bytes before the view untouched');
        assert.ok(target.subarray(4000).every((byte) => byte === 0xaa), 'bytes after the view untouched');
        const syncTarget = new Uint8Array(3000).fill(0xbb);
        file.readSync(syncTarget.subarray(500, 2500), 0);
        assert.deepEqual(syncTarget.subarray(500, 2500), backing.subarray(1000, 3000));
        assert.equal(syncTarget[499], 0xbb);
        assert.equal(syncTarget[2500], 0xbb);
      });
    });

    test('a multi-megabyte write reads back', async () => {
      await withFile(factory, 0, async (file) => {
        const data = pattern(5 * 1024 * KIB + 17, 9);
        await file.write(data, 4096);
        await file.sync();
        assert.deepEqual(await readBytes(file, 4096, data.length), data);
        assert.equal(file.sizeBytes(), 4096 + data.length);
      });
    });

    test('zero-length reads and writes succeed and change nothing', async () => {
      await withFile(factory, 8 * KIB, async (file) => {
        await file.write(new Uint8Array(0), 4096);
        await file.read(new Uint8Array(0), 4096);
        file.readSync(new Uint8Array(0), 100 * KIB);
        assert.equal(file.sizeBytes(), 8 * KIB);
      });
    });

    test('sync resolves after completed writes and leaves the contents as they were', async () => {
      await withFile(factory, 64 * KIB, async (file) => {
        const data = pattern(8192, 10);
        await Promise.all([file.write(data.subarray(0, 4096), 0), file.write(data.subarray(4096), 4096)]);
        await file.sync();
        await file.sync();
        assert.deepEqual(await readBytes(file, 0, 8192), data);
      });
    });

    test('after close every call fails with THIN_CLOSED, and close again is harmless', async () => {
      const file = await factory.create(8 * KIB);
      await file.write(pattern(100, 11), 0);
      await file.close();
      const closed = (error: unknown): boolean => isThinError(error, 'THIN_CLOSED');
      assert.throws(() => file.readSync(new Uint8Array(10), 0), closed);
      await assert.rejects(file.read(new Uint8Array(10), 0), closed);
      await assert.rejects(file.write(new Uint8Array(10), 0), closed);
      await assert.rejects(file.sync(), closed);
      await assert.rejects(file.grow(64 * KIB), closed);
      await file.close();
    });

    const { failNextWrite, failNextSync } = factory;
    if (failNextWrite !== undefined) {
      test('a write refused with EIO fails alone: later writes land and syncs succeed', async () => {
        await withFile(factory, 64 * KIB, async (file) => {
          await file.write(pattern(4096, 12), 0);
          await file.sync();
          failNextWrite(file);
          await assert.rejects(file.write(pattern(4096, 13), 4096), (error) => isThinError(error, 'THIN_IO') && isMediaError(error));
          await file.write(pattern(4096, 14), 8192);
          await file.sync();
          assert.deepEqual(await readBytes(file, 8192, 4096), pattern(4096, 14));
          assert.deepEqual(await readBytes(file, 0, 4096), pattern(4096, 12));
        });
      });
    }
    if (failNextSync !== undefined) {
      test('after a failed sync the file refuses every later sync (fail-stop)', async () => {
        await withFile(factory, 64 * KIB, async (file) => {
          await file.write(pattern(4096, 15), 0);
          failNextSync(file);
          await assert.rejects(file.sync(), (error) => isThinError(error, 'THIN_IO'));
          await assert.rejects(file.sync(), (error) => isThinError(error, 'THIN_IO'));
        });
      });
    }
  });
}
