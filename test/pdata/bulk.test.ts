// BottomUpTree: internal levels laid over leaves written in key order make a tree the B+tree reads,
// changes and walks like one it built itself, with exact reference counts and every node but the
// root at least half full.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { BottomUpTree } from '../../src/pdata/btree/bulk.ts';
import { TreeKind, u64Codec } from '../../src/pdata/btree/codec.ts';
import { planLeaf, writeLeaf } from '../../src/pdata/btree/leaf.ts';
import { CHILD_VALUE_BYTES, childAt, entryCount, nodeCapacity, nodeLevel } from '../../src/pdata/btree/node.ts';
import { BlockType } from '../../src/pdata/block.ts';
import type { TransactionManager } from '../../src/pdata/transaction.ts';
import { checkReferences, newManager, rootsPayload } from './helpers.ts';

const codec = u64Codec(TreeKind.test);
const ENTRIES_PER_LEAF = 5;

/** Internal nodes below the root holding fewer than half of capacity, and the depth. */
function shape(tm: TransactionManager, root: number): { depth: number; underHalf: number } {
  let underHalf = 0;
  const visit = (blockNr: number, isRoot: boolean): number => {
    const block = tm.read(blockNr, [BlockType.btreeInternal, BlockType.btreeLeaf]);
    if (nodeLevel(block) === 0) return 1;
    if (!isRoot && entryCount(block) < nodeCapacity(CHILD_VALUE_BYTES) / 2) underHalf += 1;
    let depth = 0;
    for (let index = 0; index < entryCount(block); index++) depth = Math.max(depth, visit(childAt(block, index), false));
    return depth + 1;
  };
  return { depth: visit(root, true), underHalf };
}

for (const leafCount of [1, 2, 168, 169, 337, 1000]) {
  test(`${leafCount} leaves written in key order become one tree that reads, changes and walks whole`, async () => {
    const { tm } = newManager();
    const builder = new BottomUpTree(tm, TreeKind.test);
    const expected: Array<[number, number]> = [];
    for (let leaf = 0; leaf < leafCount; leaf++) {
      const entries: Array<[number, number]> = [];
      for (let index = 0; index < ENTRIES_PER_LEAF; index++) entries.push([leaf * 100 + index * 3 + 7, leaf * 1000 + index]);
      const block = tm.allocate(BlockType.btreeLeaf);
      writeLeaf(block, entries, planLeaf(entries, codec)!, codec);
      builder.addLeaf(entries[0]![0], block);
      expected.push(...entries);
    }
    let root = builder.finish();
    await tm.commit(rootsPayload(root));
    const tree = new BTree(tm, codec);
    assert.deepEqual([...tree.entries(root)], expected);
    for (const [key, value] of expected.filter((_, index) => index % 37 === 0)) assert.equal(tree.lookup(root, key), value);
    assert.deepEqual(tree.floor(root, 6), undefined);
    checkReferences(tm, [root], codec);
    const { depth, underHalf } = shape(tm, root);
    assert.equal(underHalf, 0);
    assert.equal(depth, leafCount === 1 ? 1 : Math.ceil(Math.log(leafCount) / Math.log(nodeCapacity(CHILD_VALUE_BYTES))) + 1);
    // The B+tree changes it like any other: below the first key, between leaves, past the last.
    root = tree.insert(root, 0, 1);
    root = tree.insert(root, 150, 2);
    root = tree.insert(root, leafCount * 100 + 50, 3);
    root = tree.remove(root, expected[expected.length - 2]![0]);
    await tm.commit(rootsPayload(root));
    const changed = new Map(expected);
    changed.set(0, 1).set(150, 2).set(leafCount * 100 + 50, 3).delete(expected[expected.length - 2]![0]);
    assert.deepEqual([...tree.entries(root)], [...changed.entries()].sort((a, b) => a[0] - b[0]));
    checkReferences(tm, [root], codec);
  });
}

test('leaves handed in out of key order are refused', () => {
  const { tm } = newManager();
  const builder = new BottomUpTree(tm, TreeKind.test);
  const leaf = (key: number): void => {
    const block = tm.allocate(BlockType.btreeLeaf);
    writeLeaf(block, [[key, 1]], planLeaf([[key, 1]], codec)!, codec);
    builder.addLeaf(key, block);
  };
  leaf(10);
  assert.throws(() => leaf(10), /leaf keys must ascend \(10 after 10\)/);
});
