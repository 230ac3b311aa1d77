// FsTree on its own: the image's file tree as entries and layers change it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FsTree, type EntryAttributes } from '../../src/image/tree.ts';

const NOW = 1_700_000_000;
const ATTRIBUTES: EntryAttributes = { permissions: 0o644, uid: 0, gid: 0, mtimeSeconds: NOW, mtimeNanoseconds: 0 };

test('a whiteout of a directory of 200,000 entries releases them all (not spread into one call: that overflowed the stack)', () => {
  const tree = new FsTree(NOW);
  const origin = { path: 'x', offsetBytes: 0 };
  tree.add(['big'], { ...ATTRIBUTES, permissions: 0o755 }, { kind: 'dir' }, origin);
  for (let index = 0; index < 200_000; index++) tree.add(['big', `f${index}`], ATTRIBUTES, { kind: 'file', sizeBytes: 0, extents: [] }, origin);
  tree.add(['kept'], ATTRIBUTES, { kind: 'file', sizeBytes: 0, extents: [] }, origin);
  const before = tree.nodeCount;
  tree.layer = 2;
  tree.whiteout([], 'big', origin);
  assert.equal(tree.nodeCount, before - 200_001);
  assert.deepEqual([...tree.root.children!.keys()], ['kept']);
});
