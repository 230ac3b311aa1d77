// The node:fs FileSystem (src/io/file-system.ts) against the contract, and makeDurableDirectory's
// fsync of each parent it makes a directory in, watched through a wrapper that records the calls.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { makeDurableDirectory, nodeFileSystem, type FileSystem } from '../../src/io/file-system.ts';
import { fileSystemConformance } from './file-system.conformance.ts';

fileSystemConformance({
  name: 'node:fs',
  make: async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'thinbd-fs-'));
    return { fileSystem: nodeFileSystem, root, cleanup: async () => fs.rmSync(root, { recursive: true, force: true }) };
  },
});

test('makeDurableDirectory syncs the parent of each directory it makes, and nothing for one that exists', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'thinbd-fs-'));
  try {
    const synced: string[] = [];
    const watching: FileSystem = { ...nodeFileSystem, syncDirectory: (dir) => (synced.push(dir), nodeFileSystem.syncDirectory(dir)) };
    assert.equal(makeDurableDirectory(watching, path.join(root, 'a', 'b'), { recursive: true }), true);
    assert.deepEqual(synced.sort(), [root, path.join(root, 'a')].sort());
    assert.equal((fs.statSync(path.join(root, 'a', 'b')).mode & 0o777), 0o700, 'private, as makePrivateDirectory makes it');
    synced.length = 0;
    assert.equal(makeDurableDirectory(watching, path.join(root, 'a', 'b'), { recursive: true }), false);
    assert.deepEqual(synced, []);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
