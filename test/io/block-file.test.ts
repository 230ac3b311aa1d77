// Runs the BlockFile contract against every implementation, plus what only a real file can show.
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AsyncLocalStorage, createHook } from 'node:async_hooks';
import { blockFileConformance } from './block-file.conformance.ts';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { CountingBlockFile } from '../../src/io/counting.ts';
import { FileBlockFile } from '../../src/io/file.ts';
import { FILE_DIRECT_WRITE_BYTES_MIN, FILE_WRITE_PIECE_BYTES_MAX } from '../../src/constants.ts';
import { DIRECT_ALIGN_BYTES, addressOf, alignedSharedBytes } from '../../src/io/aligned.ts';
import { FaultInjectingBlockFile } from '../../src/io/fault-injection.ts';
import { MirroredBlockFile } from '../../src/io/mirror.ts';

/** Where the second copy begins in the mirror conformance runs: past every offset the suite touches. */
const MIRROR_TEST_OFFSET_BYTES = 64 * 1024 * 1024;
import { isThinError } from '../../src/errors.ts';
import { SimDisk, SimMachine } from '../sim/sim-disk.ts';

let temporaryDirectory = '';
let fileCount = 0;
before(() => {
  temporaryDirectory = fs.mkdtempSync(path.join(os.tmpdir(), 'thinbd-io-'));
});
after(() => {
  fs.rmSync(temporaryDirectory, { recursive: true, force: true });
});
function temporaryPath(): string {
  fileCount += 1;
  return path.join(temporaryDirectory, `file-${fileCount}`);
}

blockFileConformance({ name: 'MemoryBlockFile', create: async (sizeBytes) => new MemoryBlockFile(sizeBytes) });
blockFileConformance({
  name: 'CountingBlockFile over MemoryBlockFile',
  create: async (sizeBytes) => new CountingBlockFile(new MemoryBlockFile(sizeBytes)),
});
blockFileConformance({
  name: 'FileBlockFile',
  create: (sizeBytes) => FileBlockFile.create(temporaryPath(), { sizeBytes }),
});
blockFileConformance({
  name: 'MirroredBlockFile, two copies in one file',
  create: async (sizeBytes) => {
    const mirror = MirroredBlockFile.inOneFile(new MemoryBlockFile(0), MIRROR_TEST_OFFSET_BYTES);
    await mirror.grow(sizeBytes);
    return mirror;
  },
});
blockFileConformance({
  name: 'MirroredBlockFile, copies in two files',
  create: async (sizeBytes) => {
    const mirror = new MirroredBlockFile(
      [
        { file: new MemoryBlockFile(sizeBytes), offsetBytes: 0 },
        { file: new MemoryBlockFile(sizeBytes), offsetBytes: 0 },
      ],
      { limitBytes: MIRROR_TEST_OFFSET_BYTES },
    );
    return mirror;
  },
});
const faultsOf = new WeakMap<object, FaultInjectingBlockFile>();
blockFileConformance({
  name: 'FaultInjectingBlockFile over MemoryBlockFile',
  create: async (sizeBytes) => {
    const file = new FaultInjectingBlockFile(new MemoryBlockFile(sizeBytes));
    faultsOf.set(file, file);
    return file;
  },
  failNextWrite: (file) => faultsOf.get(file)?.addRules([{ file: 'data', op: 'write', times: 1 }]),
  failNextSync: (file) => faultsOf.get(file)?.addRules([{ file: 'data', op: 'sync', times: 1 }]),
});
let machineSeed = 1;
blockFileConformance({
  name: 'SimDisk',
  create: async (sizeBytes) => new SimMachine({ seed: machineSeed++ }).createDisk('disk', sizeBytes),
  failNextWrite: (file) => (file as SimDisk).failWrites(),
  failNextSync: (file) => (file as SimDisk).failSyncs(),
});

// How many fs requests with a callback (libuv's thread pool's work) `work` itself made: a request
// counts when it is created in work's asynchronous context, so one left in flight by an earlier
// test, or made by the test runner or the module loader meanwhile, is not counted.
async function threadPoolRequestsDuring(work: () => Promise<void>): Promise<number> {
  const insideWork = new AsyncLocalStorage<true>();
  let requests = 0;
  const hook = createHook({
    init: (_id, type) => {
      if (type === 'FSREQCALLBACK' && insideWork.getStore() === true) requests += 1;
    },
  }).enable();
  try {
    await insideWork.run(true, work);
  } finally {
    hook.disable();
  }
  return requests;
}

describe('FileBlockFile', () => {
  test('create refuses an existing path with THIN_EXISTS and leaves it as it was', async () => {
    const filePath = temporaryPath();
    fs.writeFileSync(filePath, 'precious');
    await assert.rejects(FileBlockFile.create(filePath, { sizeBytes: 4096 }), (error) => {
      assert.ok(isThinError(error, 'THIN_EXISTS'));
      assert.match(error.message, /already exists/);
      return true;
    });
    assert.equal(fs.readFileSync(filePath, 'utf8'), 'precious');
  });

  test('create makes a sparse file of the asked size', async () => {
    const filePath = temporaryPath();
    const file = await FileBlockFile.create(filePath, { sizeBytes: 1024 ** 3 });
    await file.close();
    const stats = fs.statSync(filePath);
    assert.equal(stats.size, 1024 ** 3);
    assert.ok(stats.blocks * 512 < 1024 * 1024, `a new 1 GiB file allocates ${stats.blocks * 512} bytes`);
  });

  test('allocate gives a range of a sparse file disk space, keeps its size and its zeros, and leaves data alone', async () => {
    const filePath = temporaryPath();
    const file = await FileBlockFile.create(filePath, { sizeBytes: 64 * 1024 ** 2 });
    await file.write(Buffer.alloc(4096, 9), 8 * 1024 ** 2);
    const before = fs.statSync(filePath).blocks;
    await file.allocate(4 * 1024 ** 2, 16 * 1024 ** 2);
    const after = fs.statSync(filePath);
    assert.equal(after.size, 64 * 1024 ** 2);
    assert.ok((after.blocks - before) * 512 >= 15 * 1024 ** 2, `allocated ${(after.blocks - before) * 512} bytes`);
    const back = new Uint8Array(8192);
    await file.read(back, 8 * 1024 ** 2 - 4096);
    assert.ok(back.subarray(0, 4096).every((byte) => byte === 0) && back.subarray(4096).every((byte) => byte === 9));
    // Past the end and after close it does nothing and does not fail: it is a hint.
    await file.allocate(60 * 1024 ** 2, 16 * 1024 ** 2);
    assert.equal(fs.statSync(filePath).size, 64 * 1024 ** 2);
    await file.close();
    await file.allocate(0, 4096);
  });

  test('punch gives a written range back to the file system: du falls, the size stays, the range reads zeros', async () => {
    const filePath = temporaryPath();
    const file = await FileBlockFile.create(filePath, { sizeBytes: 32 * 1024 ** 2 });
    await file.write(Buffer.alloc(32 * 1024 ** 2, 5), 0);
    await file.sync();
    const before = fs.statSync(filePath).blocks * 512;
    assert.equal(await file.punch(8 * 1024 ** 2, 16 * 1024 ** 2), true, 'the test file system must support PUNCH_HOLE');
    await file.sync();
    const after = fs.statSync(filePath);
    assert.equal(after.size, 32 * 1024 ** 2);
    assert.ok(before - after.blocks * 512 >= 16 * 1024 ** 2, `du fell by ${before - after.blocks * 512} bytes`);
    const back = new Uint8Array(4096);
    await file.read(back, 12 * 1024 ** 2);
    assert.ok(back.every((byte) => byte === 0));
    await file.close();
    assert.equal(await file.punch(0, 4096), false, 'a closed file punches nothing');
  });

  test('a read-only file punches nothing', async () => {
    const filePath = temporaryPath();
    fs.writeFileSync(filePath, Buffer.alloc(65536, 3));
    const file = await FileBlockFile.open(filePath, { readOnly: true });
    assert.equal(await file.punch(0, 65536), false);
    assert.equal(fs.readFileSync(filePath)[100], 3);
    await file.close();
  });

  test('a bulk write on 4 KiB boundaries goes around the page cache (a second descriptor opened O_DIRECT), and reads and syncs see it', async () => {
    const filePath = temporaryPath();
    const file = await FileBlockFile.create(filePath, { sizeBytes: 8 * 1024 ** 2 });
    // What a direct descriptor of this file would be: /proc/self/fd links to it with O_DIRECT in its flags (fdinfo, octal).
    const directDescriptors = () =>
      fs.readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`) === filePath && (parseInt(/flags:\s+(\d+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8) & fs.constants.O_DIRECT) !== 0;
        } catch {
          return false; // the readdir's own descriptor, gone by now
        }
      });
    // Small, or unaligned in memory: buffered, no direct descriptor.
    await file.write(Buffer.alloc(4096, 1), 0);
    const unaligned = alignedSharedBytes(FILE_DIRECT_WRITE_BYTES_MIN + 4096).subarray(16, 16 + FILE_DIRECT_WRITE_BYTES_MIN);
    unaligned.fill(2);
    await file.write(unaligned, 1024 ** 2);
    assert.deepEqual(directDescriptors(), []);
    // Over the buffered bytes, aligned: direct, and a read sees it (the cached pages were dropped).
    const aligned = alignedSharedBytes(2 * FILE_DIRECT_WRITE_BYTES_MIN);
    assert.equal(addressOf(aligned) % DIRECT_ALIGN_BYTES, 0);
    aligned.fill(3);
    await file.write(aligned, 1024 ** 2 - FILE_DIRECT_WRITE_BYTES_MIN / 2);
    assert.equal(directDescriptors().length, 1, 'one descriptor of the file opened O_DIRECT');
    const back = new Uint8Array(3 * FILE_DIRECT_WRITE_BYTES_MIN);
    await file.read(back, 1024 ** 2 - FILE_DIRECT_WRITE_BYTES_MIN);
    assert.ok(back.subarray(0, FILE_DIRECT_WRITE_BYTES_MIN / 2).every((byte) => byte === 0));
    assert.ok(back.subarray(FILE_DIRECT_WRITE_BYTES_MIN / 2, FILE_DIRECT_WRITE_BYTES_MIN * 2.5).every((byte) => byte === 3));
    assert.ok(back.subarray(FILE_DIRECT_WRITE_BYTES_MIN * 2.5).every((byte) => byte === 0));
    await file.sync();
    await file.close();
    assert.deepEqual(directDescriptors(), [], 'closed with the file');
    const onDisk = fs.readFileSync(filePath);
    assert.equal(onDisk[0], 1);
    assert.equal(onDisk[1024 ** 2], 3);
    assert.equal(onDisk[1024 ** 2 + FILE_DIRECT_WRITE_BYTES_MIN + 10], 3);
  });

  test('alignedSharedBytes gives shared memory on a 4 KiB boundary, of the length asked', () => {
    for (const lengthBytes of [6, 4096, 1024 ** 2 + 7]) {
      const bytes = alignedSharedBytes(lengthBytes);
      assert.ok(bytes.buffer instanceof SharedArrayBuffer);
      assert.equal(bytes.length, lengthBytes);
      assert.equal(addressOf(bytes) % DIRECT_ALIGN_BYTES, 0);
      assert.equal(addressOf(bytes.subarray(5)), addressOf(bytes) + 5);
    }
  });

  test('open of a missing path fails with THIN_NOT_FOUND', async () => {
    await assert.rejects(FileBlockFile.open(path.join(temporaryDirectory, 'missing')), (error) =>
      isThinError(error, 'THIN_NOT_FOUND'),
    );
  });

  test('writes land at their offset in an existing file (not appended) and survive reopening', async () => {
    const filePath = temporaryPath();
    fs.writeFileSync(filePath, Buffer.alloc(16384, 0x11));
    const file = await FileBlockFile.open(filePath);
    assert.equal(file.sizeBytes(), 16384);
    await file.write(Buffer.alloc(4096, 0x22), 4096);
    await file.sync();
    await file.close();
    const bytes = fs.readFileSync(filePath);
    assert.equal(bytes.length, 16384);
    assert.equal(bytes[4095], 0x11);
    assert.equal(bytes[4096], 0x22);
    assert.equal(bytes[8191], 0x22);
    assert.equal(bytes[8192], 0x11);
    const reopened = await FileBlockFile.open(filePath, { readOnly: true });
    const target = new Uint8Array(4096);
    reopened.readSync(target, 4096);
    assert.ok(target.every((byte) => byte === 0x22));
    await reopened.close();
  });

  test('a write larger than one pwrite piece lands whole, each piece at its offset', async () => {
    const file = await FileBlockFile.create(temporaryPath(), { sizeBytes: 8 * 1024 * 1024 });
    // Two and a half pieces, starting inside a block: every piece boundary falls mid-write.
    const source = new Uint8Array(FILE_WRITE_PIECE_BYTES_MAX * 2 + FILE_WRITE_PIECE_BYTES_MAX / 2);
    for (let index = 0; index < source.length; index++) source[index] = (index * 7 + (index >>> 12)) & 0xff;
    const offsetBytes = 4096 + 512;
    await file.write(source, offsetBytes);
    const target = new Uint8Array(source.length + 1024);
    file.readSync(target, offsetBytes - 512);
    assert.ok(target.subarray(0, 512).every((byte) => byte === 0), 'the bytes before the write stay zero');
    assert.deepEqual(target.subarray(512, 512 + source.length), source);
    assert.ok(target.subarray(512 + source.length).every((byte) => byte === 0), 'the bytes after the write stay zero');
    await file.close();
  });

  test('a read-only file refuses writes and growth', async () => {
    const filePath = temporaryPath();
    await (await FileBlockFile.create(filePath, { sizeBytes: 8192 })).close();
    const file = await FileBlockFile.open(filePath, { readOnly: true });
    await assert.rejects(file.write(new Uint8Array(10), 0), (error) => isThinError(error, 'THIN_READ_ONLY'));
    await assert.rejects(file.grow(65536), (error) => isThinError(error, 'THIN_READ_ONLY'));
    await file.sync();
    await file.close();
  });

  test('a failed write names size, offset, path and errno, and then every sync is refused', async () => {
    // /dev/full fails every write with ENOSPC: a real device error without root or device-mapper.
    const file = await FileBlockFile.open('/dev/full');
    await assert.rejects(file.write(new Uint8Array(65536), 131072), (error) => {
      assert.ok(isThinError(error, 'THIN_IO'));
      assert.equal(error.message, 'Cannot write 65536 bytes at offset 131072 of /dev/full: ENOSPC');
      assert.equal((error.cause as NodeJS.ErrnoException).code, 'ENOSPC');
      return true;
    });
    await assert.rejects(file.sync(), (error) => {
      assert.ok(isThinError(error, 'THIN_IO'));
      assert.match(error.message, /^Cannot sync \/dev\/full: an earlier write or sync failed/);
      return true;
    });
    await file.close();
  });

  test('a failed sync makes every later sync fail too', async () => {
    // fdatasync on the /dev/full character device fails with EINVAL: a real sync failure.
    const file = await FileBlockFile.open('/dev/full');
    await assert.rejects(file.sync(), (error) => isThinError(error, 'THIN_IO') && error.message === 'Cannot sync /dev/full: EINVAL');
    await assert.rejects(file.sync(), (error) => isThinError(error, 'THIN_IO') && /an earlier write or sync failed/.test(error.message));
    await file.close();
  });

  test('an inline sync calls fdatasync on the calling thread, fails as a worker-thread one does, and every later sync fails', async (t) => {
    const filePath = temporaryPath();
    const file = await FileBlockFile.create(filePath, { sizeBytes: 8192 });
    await file.write(Buffer.alloc(4096, 0x33), 0);
    const fdatasyncSync = t.mock.method(fs, 'fdatasyncSync');
    const syncing = file.sync({ inline: true });
    assert.equal(fdatasyncSync.mock.callCount(), 1, 'called before sync() returned');
    await syncing;
    await file.sync();
    assert.equal(fdatasyncSync.mock.callCount(), 1, 'a sync without the hint goes to a worker thread');
    await file.close();
    const full = await FileBlockFile.open('/dev/full');
    await assert.rejects(full.sync({ inline: true }), (error) => isThinError(error, 'THIN_IO') && error.message === 'Cannot sync /dev/full: EINVAL');
    await assert.rejects(full.sync(), (error) => isThinError(error, 'THIN_IO') && /an earlier write or sync failed/.test(error.message));
    await full.close();
  });

  test('a read-only file is opened, read from the page cache and closed without a request to the thread pool', async () => {
    const file = temporaryPath();
    fs.writeFileSync(file, Buffer.alloc(8192, 7));
    const bytes = new Uint8Array(4096);
    const readOnly = await threadPoolRequestsDuring(async () => {
      const opened = await FileBlockFile.open(file, { readOnly: true });
      await opened.read(bytes, 4096);
      await opened.close();
    });
    assert.equal(bytes[4095], 7);
    assert.equal(readOnly, 0);
    // A file opened for writing still opens and closes through the pool (a close may write back).
    assert.equal(await threadPoolRequestsDuring(async () => (await FileBlockFile.open(file)).close()), 2);
  });

  test('a failed read names size, offset, path and errno', async () => {
    // Reading unmapped addresses of /proc/self/mem fails with EIO.
    const file = await FileBlockFile.open('/proc/self/mem', { readOnly: true });
    const expected = 'Cannot read 4096 bytes at offset 0 of /proc/self/mem: EIO';
    assert.throws(() => file.readSync(new Uint8Array(4096), 0), (error) => {
      assert.ok(isThinError(error, 'THIN_IO'));
      assert.equal(error.message, expected);
      return true;
    });
    await assert.rejects(file.read(new Uint8Array(4096), 0), (error) => isThinError(error, 'THIN_IO') && error.message === expected);
    await file.close();
  });

  test('a directory is refused, read-only or not', async () => {
    const directoryPath = path.join(temporaryDirectory, 'a-directory');
    fs.mkdirSync(directoryPath);
    await assert.rejects(FileBlockFile.open(directoryPath), (error) => isThinError(error, 'THIN_INVALID'));
    await assert.rejects(FileBlockFile.open(directoryPath, { readOnly: true }), (error) => isThinError(error, 'THIN_INVALID'));
  });
});
