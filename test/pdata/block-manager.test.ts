// The B+tree, the space map and the walker depend on the BlockManager interface only: driven
// through a fake kept in a Map, they agree with models and account for every reference.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { TreeKind, u64Codec } from '../../src/pdata/btree/codec.ts';
import { TreeWalker } from '../../src/pdata/btree/walker.ts';
import { SpaceMap, refCountExtentCodec } from '../../src/pdata/space-map.ts';
import { FakeBlockManager } from './fake-block-manager.ts';
import { Random, withSeed } from './helpers.ts';

/** Every live block's count equals the references the walker finds from the given roots, and nothing else is live. */
function assertCountsMatchWalk(fake: FakeBlockManager, roots: number[], context: string): void {
  const walker = new TreeWalker(fake);
  for (const root of roots) walker.walk(root, u64Codec(TreeKind.test));
  assert.deepEqual(walker.corruptions.map((problem) => problem.error.message), [], context);
  assert.deepEqual(
    [...fake.counts.entries()].sort((a, b) => a[0] - b[0]),
    [...walker.references.entries()].sort((a, b) => a[0] - b[0]),
    `${context}: counts differ from the references walked`,
  );
}

test('a B+tree with snapshots on a fake block manager matches its model, and every block count is a reference walked', async () => {
  for (const seed of [1, 2, 3]) {
    await withSeed(seed, () => {
      const random = new Random(seed);
      const fake = new FakeBlockManager();
      const tree = new BTree(fake, u64Codec(TreeKind.test));
      let root = tree.createEmpty();
      const model = new Map<number, number>();
      // Snapshots: roots retained at some step, with the model as it was then.
      const snapshots: Array<{ root: number; model: Map<number, number> }> = [];
      for (let step = 0; step < 3000; step++) {
        const key = random.below(5000);
        if (random.chance(0.65)) {
          root = tree.insert(root, key, step);
          model.set(key, step);
        } else {
          root = tree.remove(root, key);
          model.delete(key);
        }
        if (step % 500 === 499) {
          tree.retainTree(root);
          snapshots.push({ root, model: new Map(model) });
          fake.commit();
        }
      }
      const sorted = (entries: Iterable<[number, number]>): Array<[number, number]> => [...entries].sort((a, b) => a[0] - b[0]);
      assert.deepEqual([...tree.entries(root)], sorted(model), `seed ${seed}: the tree differs from its model`);
      for (const [index, snapshot] of snapshots.entries()) {
        assert.deepEqual([...tree.entries(snapshot.root)], sorted(snapshot.model), `seed ${seed}: snapshot ${index} changed`);
      }
      assertCountsMatchWalk(fake, [root, ...snapshots.map((snapshot) => snapshot.root)], `seed ${seed}`);
      for (const snapshot of snapshots) tree.releaseTree(snapshot.root);
      tree.releaseTree(root);
      assert.equal(fake.blocks.size, 0, `seed ${seed}: blocks left after every tree was released`);
    });
  }
});

test('a space map on a fake block manager counts like an array of counts', async () => {
  await withSeed(7, () => {
    const random = new Random(7);
    const fake = new FakeBlockManager();
    const blockCount = 4096;
    const spaceMap = SpaceMap.create(fake, blockCount);
    const model = new Uint32Array(blockCount);
    for (let step = 0; step < 2000; step++) {
      const begin = random.below(blockCount);
      const lengthBlocks = 1 + random.below(Math.min(64, blockCount - begin));
      const allUsed = model.subarray(begin, begin + lengthBlocks).every((count) => count > 0);
      if (allUsed && random.chance(0.5)) {
        spaceMap.dec(begin, lengthBlocks);
        for (let blockNr = begin; blockNr < begin + lengthBlocks; blockNr++) model[blockNr]! -= 1;
      } else {
        spaceMap.inc(begin, lengthBlocks);
        for (let blockNr = begin; blockNr < begin + lengthBlocks; blockNr++) model[blockNr]! += 1;
      }
      if (step % 200 === 199) fake.commit();
    }
    for (let blockNr = 0; blockNr < blockCount; blockNr++) assert.equal(spaceMap.count(blockNr), model[blockNr], `seed 7: block ${blockNr}`);
    assert.equal(spaceMap.usedBlockCount, model.filter((count) => count > 0).length, 'seed 7: used block count');
    assertCountsMatchWalkOfSpaceMap(fake, spaceMap);
  });
});

function assertCountsMatchWalkOfSpaceMap(fake: FakeBlockManager, spaceMap: SpaceMap): void {
  const walker = new TreeWalker(fake);
  walker.walk(spaceMap.root, refCountExtentCodec(spaceMap.treeKind));
  assert.deepEqual(walker.corruptions, [], 'the space map tree reads whole');
  assert.deepEqual([...fake.counts.keys()].sort((a, b) => a - b), [...walker.references.keys()].sort((a, b) => a - b), 'space map nodes are the live blocks');
}
