// The walker's revisit hook and the subtree folds built on it: a subtree shared by two roots is
// walked once, told once more for the second root, and folds to the same summary for both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { TreeKind, u64Codec } from '../../src/pdata/btree/codec.ts';
import { SubtreeShapes } from '../../src/pdata/btree/subtrees.ts';
import { TreeWalker, type NodeVisit } from '../../src/pdata/btree/walker.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { CountingBlockFile } from '../../src/io/counting.ts';
import { FakeBlockManager } from './fake-block-manager.ts';
import { newManager, payloadRoots, readBlock, rootsPayload, writeBlock } from './helpers.ts';

function sharedTrees(): { fake: FakeBlockManager; tree: BTree<number>; origin: number; copy: number } {
  const fake = new FakeBlockManager();
  const tree = new BTree(fake, u64Codec(TreeKind.test));
  let origin = tree.createEmpty();
  for (let key = 0; key < 20_000; key++) origin = tree.insert(origin, key, key * 2);
  tree.retainTree(origin);
  fake.commit();
  // The copy shares every subtree of the origin but the path to key 7.
  const copy = tree.insert(origin, 7, 1);
  return { fake, tree, origin, copy };
}

test('a node reached again is told to revisit() with its new path, and its subtree is not walked again', () => {
  const { fake, tree, origin, copy } = sharedTrees();
  assert.ok(tree.depth(origin) >= 2, 'the trees are deep enough to share nodes');
  const walker = new TreeWalker(fake);
  const visited: number[] = [];
  const revisits: NodeVisit[] = [];
  const leavesDelivered: number[] = [];
  const visitor = {
    node: (visit: NodeVisit) => visited.push(visit.blockNr),
    revisit: (visit: NodeVisit) => revisits.push(visit),
    leaf: (_key: number, _value: number, leafBlockNr: number) => leavesDelivered.push(leafBlockNr),
  };
  walker.walk(origin, u64Codec(TreeKind.test), visitor);
  const visitedByOrigin = visited.length;
  assert.equal(leavesDelivered.length, 20_000);
  walker.walk(copy, u64Codec(TreeKind.test), visitor);
  // The copy's own nodes are the shadowed path, one per level; everything else it reaches is shared.
  assert.equal(visited.length - visitedByOrigin, tree.depth(copy));
  assert.equal(new Set(visited).size, visited.length, 'no node is visited twice');
  assert.ok(revisits.length > 0);
  for (const revisit of revisits) {
    assert.equal(revisit.path[0], copy, 'each revisit comes from the copy');
    assert.equal(revisit.path[revisit.path.length - 1], revisit.blockNr);
    assert.ok(visited.indexOf(revisit.blockNr) < visitedByOrigin, `block ${revisit.blockNr} was visited under the origin`);
  }
  assert.equal(new Set(leavesDelivered.slice(20_000)).size, 1, 'under the copy, only its own leaf delivers entries');
  assert.deepEqual(walker.corruptions, []);
});

test('SubtreeShapes folds each root to the entry count its tree holds, shared subtrees folded once', () => {
  const { fake, tree, origin, copy } = sharedTrees();
  const walker = new TreeWalker(fake);
  const shapes = new SubtreeShapes();
  const leafCounts = new Map<number, number>();
  const visitor = {
    node: shapes.node,
    revisit: shapes.revisit,
    leaf: (_key: number, _value: number, leafBlockNr: number) => leafCounts.set(leafBlockNr, (leafCounts.get(leafBlockNr) ?? 0) + 1),
  };
  walker.walk(origin, u64Codec(TreeKind.test), visitor);
  walker.walk(copy, u64Codec(TreeKind.test), visitor);
  const memo = new Map<number, number | null>();
  let combined = 0;
  const fold = (root: number): number | undefined =>
    shapes.fold(
      root,
      (leaf) => leafCounts.get(leaf),
      (_node, pieces) => {
        combined += 1;
        return pieces.reduce((total, piece) => total + piece, 0);
      },
      { memo },
    );
  assert.equal(fold(origin), [...tree.entries(origin)].length);
  const combinedForOrigin = combined;
  assert.equal(fold(copy), [...tree.entries(copy)].length);
  assert.equal(combined - combinedForOrigin, tree.depth(copy) - 1, 'only the copy\'s own internal nodes are combined again');
  assert.equal(shapes.fold(copy, () => 1, () => undefined, { skip: (blockNr) => blockNr === copy }), undefined, 'a skipped root has no summary');
});

test('a read-only walk reads the leaves under a node together and still validates each: a damaged leaf in the span is named, the rest delivered', async () => {
  const { file, tm } = newManager();
  const tree = new BTree(tm, u64Codec(TreeKind.test));
  let root = tree.createEmpty();
  for (let key = 0; key < 20_000; key++) root = tree.insert(root, key, key * 2);
  await tm.commit(rootsPayload(root));
  const leafEntries = new Map<number, number>();
  new TreeWalker(tm).walk(root, u64Codec(TreeKind.test), { leaf: (_key, _value, leafBlockNr) => leafEntries.set(leafBlockNr, (leafEntries.get(leafBlockNr) ?? 0) + 1) });
  const leaves = [...leafEntries.keys()];
  const damaged = leaves[Math.floor(leaves.length / 2)]!;
  const bytes = readBlock(file, damaged);
  bytes[2000] = bytes[2000]! ^ 0x01;
  writeBlock(file, damaged, bytes);

  const counting = new CountingBlockFile(file);
  const { tm: readOnly, payload } = await TransactionManager.open(counting, { readOnly: true });
  const readsBefore = counting.counters.reads;
  const walker = new TreeWalker(readOnly);
  let entries = 0;
  const corrupt = walker.walk(payloadRoots(payload)[0]!, u64Codec(TreeKind.test), { leaf: () => (entries += 1) });
  assert.deepEqual(
    corrupt.map((problem) => problem.blockNr),
    [damaged],
  );
  assert.match(corrupt[0]!.error.message, /checksum mismatch/);
  assert.equal(entries, 20_000 - leafEntries.get(damaged)!, 'every other leaf delivers its entries');
  assert.ok(counting.counters.reads - readsBefore < leaves.length / 2, `${counting.counters.reads - readsBefore} reads for ${leaves.length} leaves: read together`);
});
