// The simulated file system's model (sim-fs.ts): entries pending until their directory's sync,
// a rename that leaves the old or the new name, directories that keep their identity through a
// rename, and the FileSystem contract (test/io/file-system.conformance.ts) the node:fs one passes too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { makeDurableDirectory } from '../../src/io/file-system.ts';
import { fileSystemConformance } from '../io/file-system.conformance.ts';
import { SimFs } from './sim-fs.ts';
import { SimMachine } from './sim-disk.ts';

function fresh(): SimFs {
  return new SimFs(new SimMachine({ seed: 7 }), new Map([['/d', SimFs.directory(1)]]));
}

/** The names a cut after eventCount events leaves reachable (an entry under a lost directory is not). */
function names(sim: SimFs, eventCount: number, kept?: number): string[] {
  const tree = sim.treeAt(eventCount, kept);
  const reachable = (name: string): boolean => path.dirname(name) === '/' || (tree.has(path.dirname(name)) && reachable(path.dirname(name)));
  return [...tree.keys()].filter(reachable).sort();
}

test('a new file is pending until its directory is synced, and its size until the file is', async () => {
  const sim = fresh();
  const file = await sim.createFile('/d/f', { sizeBytes: 8192 });
  const afterCreate = sim.machine.events.length;
  assert.equal(sim.pendingCount, 1);
  assert.deepEqual(names(sim, afterCreate, 0), ['/d'], 'a cut before the sync loses the entry');
  assert.deepEqual(names(sim, afterCreate), ['/d', '/d/f'], 'or keeps it');
  sim.syncDirectory('/d');
  assert.equal(sim.pendingCount, 0);
  assert.deepEqual(names(sim, sim.machine.events.length, 0), ['/d', '/d/f'], 'after the sync the entry is durable');
  const point = sim.machine.crashPoint(sim.machine.events.length);
  assert.deepEqual([...point.pendingSizes.values()], [8192], 'the size waits for a sync of the file');
  await file.sync();
  assert.equal(sim.machine.crashPoint(sim.machine.events.length).pendingSizes.size, 0);
  await file.close();
});

test('a rename pending at a cut leaves the old name or the new one; the destination directory\'s sync makes it durable', async () => {
  const sim = fresh();
  sim.makeDirectory('/e');
  sim.syncDirectory('/');
  await (await sim.createFile('/d/new', { sizeBytes: 0 })).close();
  sim.syncDirectory('/d');
  sim.rename('/d/new', '/e/final');
  const afterRename = sim.machine.events.length;
  assert.deepEqual(names(sim, afterRename, 0), ['/d', '/d/new', '/e']);
  assert.deepEqual(names(sim, afterRename), ['/d', '/e', '/e/final']);
  sim.syncDirectory('/d');
  assert.deepEqual(names(sim, sim.machine.events.length, 0), ['/d', '/d/new', '/e'], 'the source directory\'s sync is not enough');
  sim.syncDirectory('/e');
  assert.deepEqual(names(sim, sim.machine.events.length, 0), ['/d', '/e', '/e/final']);
});

test('a directory keeps its entries\' pending state through a rename, and entries under a lost directory are gone', async () => {
  const sim = fresh();
  sim.makeDirectory('/d/tmp');
  await (await sim.createFile('/d/tmp/m', { sizeBytes: 0 })).close();
  const beforeRename = sim.machine.events.length;
  assert.deepEqual(names(sim, beforeRename, 1), ['/d', '/d/tmp'], 'a prefix: the mkdir without the file');
  sim.rename('/d/tmp', '/d/pool');
  sim.syncDirectory('/d/pool'); // the same directory as /d/tmp: its file's entry is durable now
  const end = sim.machine.events.length;
  assert.deepEqual(names(sim, end, 0), ['/d'], 'the mkdir and the rename (in /d) are still pending; the file is under no reachable name');
  assert.equal(sim.kind('/d/pool/m'), 'file');
  const crashed = sim.afterCrash(sim.machine, end, 0).fs;
  assert.equal(crashed.kind('/d/tmp/m'), undefined, 'an entry whose directory was lost is not reachable');
  sim.syncDirectory('/d');
  assert.deepEqual(names(sim, sim.machine.events.length, 0), ['/d', '/d/pool', '/d/pool/m']);
});

test('makeDurableDirectory syncs the parent of every directory it makes', () => {
  const sim = fresh();
  assert.equal(makeDurableDirectory(sim, '/d/a/b', { recursive: true }), true);
  assert.deepEqual(names(sim, sim.machine.events.length, 0), ['/d', '/d/a', '/d/a/b']);
  assert.equal(makeDurableDirectory(sim, '/d/a/b', { recursive: true }), false, 'an existing directory is not made again');
});

fileSystemConformance({
  name: 'the simulated file system',
  make: async () => {
    const sim = new SimFs(new SimMachine({ seed: 3 }), new Map([['/work', SimFs.directory(1)]]));
    return { fileSystem: sim, root: '/work', cleanup: async () => sim.machine.kill() };
  },
});
