// The FileSystem contract (src/io/file-system.ts), as tests any implementation must pass: the
// node:fs one (test/io/file-system.test.ts) and the crash simulator's (test/sim/sim-fs.test.ts),
// so that what the campaigns prove on the simulator holds of the calls the tools make for real.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { isThinError } from '../../src/errors.ts';
import type { FileSystem } from '../../src/io/file-system.ts';

export interface FileSystemFactory {
  /** Shown in test names. */
  readonly name: string;
  /** A file system and an empty directory on it to work in; cleanup removes what the test made. */
  make(): Promise<{ fileSystem: FileSystem; root: string; cleanup: () => Promise<void> }>;
}

export function fileSystemConformance(factory: FileSystemFactory): void {
  describe(`FileSystem contract: ${factory.name}`, () => {
    const withRoot = (body: (fileSystem: FileSystem, root: string) => Promise<void>) => async (): Promise<void> => {
      const { fileSystem, root, cleanup } = await factory.make();
      try {
        await body(fileSystem, root);
      } finally {
        await cleanup();
      }
    };

    test('a created file has its size, reads back what was written, and is refused a second time', withRoot(async (fileSystem, root) => {
      const filePath = path.join(root, 'f');
      const file = await fileSystem.createFile(filePath, { sizeBytes: 8192 });
      assert.equal(file.sizeBytes(), 8192);
      await file.write(new Uint8Array(512).fill(7), 4096);
      await file.sync();
      await file.close();
      assert.equal(fileSystem.kind(filePath), 'file');
      await assert.rejects(fileSystem.createFile(filePath, { sizeBytes: 1 }), (error) => isThinError(error, 'THIN_EXISTS'));
      await assert.rejects(fileSystem.createFile(path.join(root, 'no', 'f'), { sizeBytes: 1 }), (error) => isThinError(error, 'THIN_NOT_FOUND'));
      const again = await fileSystem.openFile(filePath, { readOnly: true });
      const back = new Uint8Array(512);
      await again.read(back, 4096);
      await again.close();
      assert.ok(back.every((byte) => byte === 7));
      await assert.rejects(fileSystem.openFile(path.join(root, 'missing'), { readOnly: true }), (error) => isThinError(error, 'THIN_NOT_FOUND'));
    }));

    test('directories are made (with their parents when recursive), listed and removed', withRoot(async (fileSystem, root) => {
      assert.equal(fileSystem.makeDirectory(path.join(root, 'a', 'b'), { recursive: true }), true);
      assert.equal(fileSystem.makeDirectory(path.join(root, 'a', 'b'), { recursive: true }), false, 'an existing directory is not made again');
      assert.throws(() => fileSystem.makeDirectory(path.join(root, 'x', 'y')), 'without recursive, a missing parent is an error');
      await (await fileSystem.createFile(path.join(root, 'a', 'f'), { sizeBytes: 0 })).close();
      assert.deepEqual(fileSystem.list(path.join(root, 'a')).sort(), ['b', 'f']);
      assert.equal(fileSystem.kind(path.join(root, 'a')), 'directory');
      assert.throws(() => fileSystem.removeDirectory(path.join(root, 'a')), 'a directory that holds entries is not removed');
      fileSystem.removeDirectory(path.join(root, 'a', 'b'));
      assert.equal(fileSystem.kind(path.join(root, 'a', 'b')), undefined);
      assert.throws(() => fileSystem.remove(path.join(root, 'a')), 'a directory is removed only with recursive');
      fileSystem.remove(path.join(root, 'a'), { recursive: true });
      assert.equal(fileSystem.kind(path.join(root, 'a')), undefined);
      fileSystem.remove(path.join(root, 'a'), { recursive: true }); // nothing there: not an error
      fileSystem.syncDirectory(root);
    }));

    test('rename moves a name (replacing a file there, or onto an empty directory), link adds one, symlinks resolve', withRoot(async (fileSystem, root) => {
      const one = path.join(root, 'one');
      const two = path.join(root, 'two');
      const first = await fileSystem.createFile(one, { sizeBytes: 4096 });
      await first.write(new Uint8Array(4096).fill(1), 0);
      await first.close();
      await (await fileSystem.createFile(two, { sizeBytes: 512 })).close();
      fileSystem.link(one, path.join(root, 'hard'));
      fileSystem.rename(one, two);
      assert.equal(fileSystem.kind(one), undefined);
      const moved = await fileSystem.openFile(two, { readOnly: true });
      assert.equal(moved.sizeBytes(), 4096, 'the renamed file replaced the one there');
      await moved.close();
      const hard = await fileSystem.openFile(path.join(root, 'hard'), { readOnly: true });
      const byte = new Uint8Array(1);
      await hard.read(byte, 100);
      await hard.close();
      assert.equal(byte[0], 1, 'a hard link names the same file');
      assert.throws(() => fileSystem.link(two, path.join(root, 'hard')), 'link refuses an existing name');

      fileSystem.makeDirectory(path.join(root, 'built'));
      await (await fileSystem.createFile(path.join(root, 'built', 'm'), { sizeBytes: 0 })).close();
      fileSystem.makeDirectory(path.join(root, 'empty'));
      fileSystem.rename(path.join(root, 'built'), path.join(root, 'empty'));
      assert.deepEqual(fileSystem.list(path.join(root, 'empty')), ['m']);

      fileSystem.symlink(two, path.join(root, 'link'));
      assert.equal(fileSystem.kind(path.join(root, 'link')), 'file');
      assert.equal(fileSystem.kind(path.join(root, 'link'), { noFollow: true }), 'symlink');
      assert.equal(fileSystem.realpath(path.join(root, 'link')), fileSystem.realpath(two));
      fileSystem.remove(two);
      assert.equal(fileSystem.kind(path.join(root, 'link')), undefined, 'a link whose target is gone leads nowhere');
      assert.equal(fileSystem.kind(path.join(root, 'link'), { noFollow: true }), 'symlink');
      fileSystem.syncDirectory(root);
    }));

    test('the lock of a directory is exclusive until released, and a missing directory cannot be locked', withRoot(async (fileSystem, root) => {
      const lock = fileSystem.lock(root);
      assert.equal(lock.path, path.join(root, 'lock'));
      assert.throws(() => fileSystem.lock(root), (error) => isThinError(error, 'THIN_BUSY'));
      lock.release();
      lock.release(); // a second release does nothing
      fileSystem.lock(root).release();
      assert.throws(() => fileSystem.lock(path.join(root, 'missing')), (error) => isThinError(error, 'THIN_NOT_FOUND'));
    }));
  });
}
