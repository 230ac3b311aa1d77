// The B+tree against a model (a sorted Map), with snapshots, commits and exact reference counts.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { DELTA_LOG_BLOCK_COUNT } from '../../src/constants.ts';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { TreeKind, u64Codec, type ValueCodec } from '../../src/pdata/btree/codec.ts';
import { isCompact, nodeCapacity } from '../../src/pdata/btree/node.ts';
import { BlockType } from '../../src/pdata/block.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { TreeWalker } from '../../src/pdata/btree/walker.ts';
import { refCountExtentCodec } from '../../src/pdata/space-map.ts';
import { Random, checkReferences, compactDataRefCodec, dataRefCodec, newManager, payloadRoots, rootsPayload, withSeed } from './helpers.ts';

function sortedEntries(model: Map<number, number>, begin = 0, end = Infinity): Array<[number, number]> {
  return [...model.entries()].filter(([key]) => key >= begin && key < end).sort((a, b) => a[0] - b[0]);
}

function modelFloor(model: Map<number, number>, key: number): [number, number] | undefined {
  let best: [number, number] | undefined;
  for (const entry of model) if (entry[0] <= key && (best === undefined || entry[0] > best[0])) best = entry;
  return best;
}

function modelCeiling(model: Map<number, number>, key: number): [number, number] | undefined {
  let best: [number, number] | undefined;
  for (const entry of model) if (entry[0] >= key && (best === undefined || entry[0] < best[0])) best = entry;
  return best;
}

/**
 * Drives a tree and a Map with the same seeded operations. Values are fresh numbers standing for
 * data blocks: the test plays the layer above and keeps their reference counts (a new value is
 * retained on insert, a replaced or removed one released).
 */
interface CompactModel {
  /** Keys are multiplied by this, so that some leaves span more than a compact key offset holds. */
  keyScale: number;
  /**
   * Share of inserted values placed 2^40 away, which no compact leaf holds beside the others (the
   * keys of the top tenth always get such values, so whole leaves of them are compact again).
   */
  farValueShare: number;
}

async function runModel(seed: number, valueSizeBytes: number, operations: number, keySpace: number, compact?: CompactModel): Promise<void> {
  const random = new Random(seed);
  const { tm } = newManager();
  const dataRefs = new Map<number, number>();
  const codec = compact === undefined ? dataRefCodec(valueSizeBytes, dataRefs) : compactDataRefCodec(dataRefs);
  const tree = new BTree(tm, codec);
  let root = tree.createEmpty();
  const model = new Map<number, number>();
  let nextValue = 1;
  const layoutsSeen = new Set<string>();
  const where = (step: number, what: string): string => `seed ${seed}, step ${step}: ${what}`;
  for (let step = 0; step < operations; step++) {
    const roll = random.next();
    const key = random.below(keySpace) * (compact?.keyScale ?? 1);
    if (roll < 0.5) {
      const far = compact !== undefined && (key >= 0.9 * keySpace * compact.keyScale || random.chance(compact.farValueShare));
      const value = far ? 2 ** 40 + nextValue++ : nextValue++;
      const old = model.get(key);
      root = tree.insert(root, key, value);
      codec.retain!(value);
      if (old !== undefined) codec.release!(old);
      model.set(key, value);
    } else if (roll < 0.8) {
      const old = model.get(key);
      root = tree.remove(root, key);
      if (old !== undefined) codec.release!(old);
      model.delete(key);
    } else if (roll < 0.87) {
      assert.equal(tree.lookup(root, key), model.get(key), where(step, `lookup ${key}`));
    } else if (roll < 0.92) {
      assert.deepEqual(tree.floor(root, key), modelFloor(model, key), where(step, `floor ${key}`));
    } else if (roll < 0.97) {
      assert.deepEqual(tree.ceiling(root, key), modelCeiling(model, key), where(step, `ceiling ${key}`));
    } else if (roll < 0.99) {
      const end = key + random.below(keySpace / 4) * (compact?.keyScale ?? 1);
      assert.deepEqual([...tree.entries(root, key, end)], sortedEntries(model, key, end), where(step, `entries [${key}, ${end})`));
    } else {
      await tm.commit(rootsPayload(root));
    }
    if (step % 500 === 499) {
      if (compact !== undefined) for (const layout of leafLayouts(tm, root, codec)) layoutsSeen.add(layout);
      assert.deepEqual([...tree.entries(root)], sortedEntries(model), where(step, 'all entries'));
      checkReferences(tm, [root], codec, dataRefs, where(step, 'references'));
    }
  }
  assert.deepEqual([...tree.entries(root)], sortedEntries(model), `seed ${seed}: all entries at the end`);
  checkReferences(tm, [root], codec, dataRefs, `seed ${seed} at the end`);
  if (compact !== undefined) {
    // The run must have met both layouts, or it tested less than it claims.
    assert.deepEqual([...layoutsSeen].sort(), ['compact', 'wide'], `seed ${seed}: leaf layouts seen`);
  }
  // Releasing the only owner frees every node and every value.
  tree.releaseTree(root);
  assert.equal(dataRefs.size, 0, `seed ${seed}: values left referenced after releaseTree`);
  checkReferences(tm, [], codec, dataRefs, `seed ${seed} after releaseTree`);
}

describe('B+tree', () => {
  test('an empty tree finds nothing and iterates nothing', () => {
    const { tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    const root = tree.createEmpty();
    assert.equal(tree.lookup(root, 0), undefined);
    assert.equal(tree.floor(root, 100), undefined);
    assert.equal(tree.ceiling(root, 0), undefined);
    assert.deepEqual([...tree.entries(root)], []);
    assert.equal(tree.remove(root, 5), root);
  });

  for (const seed of [1, 2, 3, 4, 5]) {
    test(`random operations on narrow values agree with a sorted Map (seed ${seed})`, async () => withSeed(seed, async () => {
      await runModel(seed, 8, 6000, 4000);
    }));
  }

  for (const seed of [11, 12, 13, 14, 15, 16]) {
    test(`random operations on wide values (deep trees, many merges) agree with a sorted Map (seed ${seed})`, async () => withSeed(seed, async () => {
      await runModel(seed, 200, 5000, 1500);
    }));
  }

  for (const seed of [31, 32, 33, 34]) {
    test(`random operations on a tree with compact leaves, some values too far apart for one, agree with a sorted Map (seed ${seed})`, async () => withSeed(seed, async () => {
      await runModel(seed, 8, 8000, 6000, { keyScale: 1, farValueShare: seed % 2 === 0 ? 0.001 : 0.01 });
    }));
  }

  for (const seed of [41, 42]) {
    test(`random operations on a tree with compact leaves whose keys span more than 2^32 agree with a sorted Map (seed ${seed})`, async () => withSeed(seed, async () => {
      await runModel(seed, 8, 8000, 6000, { keyScale: 2 ** 21 + 1, farValueShare: 0.01 });
    }));
  }

  test('a tree of wide leaves (as format version 3 wrote every leaf) reads unchanged through a codec with a compact form, and the leaves it changes become compact', async () => {
    const { file, tm } = newManager();
    const dataRefs = new Map<number, number>();
    const wideCodec = dataRefCodec(8, dataRefs);
    const wide = new BTree(tm, wideCodec);
    let root = wide.createEmpty();
    const model = new Map<number, number>();
    for (let index = 0; index < 1000; index++) {
      const key = (index * 7919) % 5000;
      root = wide.insert(root, key, index + 1);
      wideCodec.retain!(index + 1);
      model.set(key, index + 1);
    }
    await tm.commit(rootsPayload(root));
    const { tm: reopened, payload } = await TransactionManager.open(file);
    const codec = compactDataRefCodec(dataRefs);
    const tree = new BTree(reopened, codec);
    [root] = payloadRoots(payload) as [number];
    assert.deepEqual(leafLayouts(reopened, root, codec).filter((layout) => layout === 'compact'), [], 'every leaf starts wide');
    assert.deepEqual([...tree.entries(root)], sortedEntries(model));
    // One insert past the last key changes the last leaf only.
    root = tree.insert(root, 5001, 9999);
    codec.retain!(9999);
    model.set(5001, 9999);
    const layouts = leafLayouts(reopened, root, codec);
    assert.equal(layouts.filter((layout) => layout === 'compact').length, 1, `one leaf rewritten compact (${layouts.join(', ')})`);
    assert.deepEqual([...tree.entries(root)], sortedEntries(model));
    checkReferences(reopened, [root], codec, dataRefs);
  });

  test('keys near 2^53 are stored exactly', () => {
    const { tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    let root = tree.createEmpty();
    const keys = [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 52 + 7, Number.MAX_SAFE_INTEGER];
    for (const key of keys) root = tree.insert(root, key, key);
    assert.deepEqual([...tree.entries(root)].map(([key]) => key), keys);
    assert.deepEqual(tree.floor(root, Number.MAX_SAFE_INTEGER - 1), [2 ** 52 + 7, 2 ** 52 + 7]);
  });

  test('inserting ascending, descending and removing everything keeps counts exact', () => {
    const { tm } = newManager();
    const dataRefs = new Map<number, number>();
    const codec = dataRefCodec(100, dataRefs);
    const tree = new BTree(tm, codec);
    let root = tree.createEmpty();
    const count = nodeCapacity(100) * nodeCapacity(8) + 10; // forces three levels
    for (let key = 0; key < count; key++) {
      root = tree.insert(root, key * 2, key);
      codec.retain!(key);
    }
    for (let key = count - 1; key >= 0; key--) {
      root = tree.insert(root, key * 2 + 1, key + count);
      codec.retain!(key + count);
    }
    checkReferences(tm, [root], codec, dataRefs);
    assert.equal(tree.countEntries(root), 2 * count);
    for (let key = 0; key < 2 * count; key++) {
      const value = tree.lookup(root, key)!;
      root = tree.remove(root, key);
      codec.release!(value);
    }
    assert.deepEqual([...tree.entries(root)], []);
    checkReferences(tm, [root], codec, dataRefs);
    assert.equal(
      tm.metadataBlocksUsed,
      4 + DELTA_LOG_BLOCK_COUNT + 1 + countSpaceMapNodes(tm),
      'only the superblocks, the delta log ring, the empty root and the space map remain',
    );
  });

  test('keys inserted in ascending order fill every node but the last of each level (a restore builds full nodes)', () => {
    const { tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    let root = tree.createEmpty();
    const capacity = nodeCapacity(8);
    const count = capacity * 7 + 5;
    for (let key = 0; key < count; key++) root = tree.insert(root, key * 3, key);
    const leaves = leafEntryCounts(tm, root, u64Codec(TreeKind.test));
    assert.deepEqual(leaves, [...Array<number>(7).fill(capacity), 5]);
    assert.deepEqual([...tree.entries(root)].map(([key]) => key), Array.from({ length: count }, (_, index) => index * 3));
  });

  test('a full node that is not the last of its level splits in halves, leaving room on both sides', () => {
    const { tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    let root = tree.createEmpty();
    const capacity = nodeCapacity(8);
    // Two full leaves: [0, capacity) and [capacity, 2 capacity) (ascending inserts fill them).
    for (let key = 0; key < 2 * capacity; key++) root = tree.insert(root, key * 2, key);
    // A key past the first leaf's last is an append to a leaf that has a right sibling: halves.
    root = tree.insert(root, 2 * capacity - 1, 0);
    const leaves = leafEntryCounts(tm, root, u64Codec(TreeKind.test));
    assert.deepEqual(leaves, [capacity >>> 1, capacity - (capacity >>> 1) + 1, capacity]);
  });

  for (const seed of [21, 22, 23, 24]) {
    const compact = seed === 24;
    test(`a snapshot taken with retainTree is unchanged by changes to its origin, and either side can be released (seed ${seed}${compact ? ', compact leaves' : ''})`, async () => withSeed(seed, async () => {
      const random = new Random(seed);
      const { tm } = newManager();
      const dataRefs = new Map<number, number>();
      const codec = compact ? compactDataRefCodec(dataRefs) : dataRefCodec(120, dataRefs);
      const tree = new BTree(tm, codec);
      let origin = tree.createEmpty();
      const model = new Map<number, number>();
      let nextValue = 1;
      for (let step = 0; step < 1500; step++) {
        const key = random.below(3000);
        const value = nextValue++;
        const old = model.get(key);
        origin = tree.insert(origin, key, value);
        codec.retain!(value);
        if (old !== undefined) codec.release!(old);
        model.set(key, value);
      }
      if (random.chance(0.5)) await tm.commit(rootsPayload(origin));
      const snapshot = origin;
      tree.retainTree(snapshot);
      const snapshotModel = new Map(model);
      checkReferences(tm, [origin, snapshot], codec, dataRefs, `seed ${seed} after snapshot`);
      // Change both sides; each must see only its own changes.
      let snap = snapshot;
      for (let step = 0; step < 2000; step++) {
        const onOrigin = random.chance(0.7);
        const key = random.below(3000);
        const targetModel = onOrigin ? model : snapshotModel;
        const old = targetModel.get(key);
        if (random.chance(0.5)) {
          const value = nextValue++;
          if (onOrigin) origin = tree.insert(origin, key, value);
          else snap = tree.insert(snap, key, value);
          codec.retain!(value);
          targetModel.set(key, value);
        } else {
          if (onOrigin) origin = tree.remove(origin, key);
          else snap = tree.remove(snap, key);
          targetModel.delete(key);
        }
        if (old !== undefined) codec.release!(old);
        if (step % 400 === 0) await tm.commit(rootsPayload(origin, snap));
        if (step % 250 === 0) checkReferences(tm, [origin, snap], codec, dataRefs, `seed ${seed} step ${step}`);
      }
      assert.deepEqual([...tree.entries(origin)], sortedEntries(model), `seed ${seed}: origin`);
      assert.deepEqual([...tree.entries(snap)], sortedEntries(snapshotModel), `seed ${seed}: snapshot`);
      checkReferences(tm, [origin, snap], codec, dataRefs, `seed ${seed} before release`);
      const releaseOriginFirst = random.chance(0.5);
      tree.releaseTree(releaseOriginFirst ? origin : snap);
      const survivor = releaseOriginFirst ? snap : origin;
      assert.deepEqual([...tree.entries(survivor)], sortedEntries(releaseOriginFirst ? snapshotModel : model), `seed ${seed}: survivor`);
      checkReferences(tm, [survivor], codec, dataRefs, `seed ${seed} after releasing one side`);
      tree.releaseTree(survivor);
      assert.equal(dataRefs.size, 0, `seed ${seed}: values leaked`);
      checkReferences(tm, [], codec, dataRefs, `seed ${seed} after releasing both`);
    }));
  }

  test('a tree written by one transaction manager reads the same after reopening', async () => {
    const { file, tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    let root = tree.createEmpty();
    for (let key = 0; key < 3000; key++) root = tree.insert(root, key * 3, key);
    await tm.commit(rootsPayload(root));
    const { tm: reopened, payload } = await TransactionManager.open(file);
    const [reopenedRoot] = payloadRoots(payload);
    const again = new BTree(reopened, u64Codec(TreeKind.test));
    assert.deepEqual([...again.entries(reopenedRoot!)], [...tree.entries(root)]);
    assert.equal(reopened.metadataBlocksUsed, tm.metadataBlocksUsed);
  });

  test('an owner that keeps the root\'s transaction id detects a stale root', async () => {
    const { file, tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    let root = tree.insert(tree.createEmpty(), 1, 1);
    await tm.commit(rootsPayload(root));
    root = tree.insert(root, 2, 2);
    const rootTransactionId = tree.rootTransactionId(root);
    assert.equal(rootTransactionId, 2);
    await tm.commit(rootsPayload(root, rootTransactionId));
    tree.verifyRoot(root, 2);
    const { tm: reopened } = await TransactionManager.open(file);
    assert.throws(() => new BTree(reopened, u64Codec(TreeKind.test)).verifyRoot(root, 3), /stale block/);
  });

  test('a node of another tree kind is rejected as corrupt', () => {
    const { tm } = newManager();
    const tree = new BTree(tm, u64Codec(TreeKind.test));
    const root = tree.insert(tree.createEmpty(), 1, 1);
    const other = new BTree(tm, u64Codec(TreeKind.dataSpaceMap));
    assert.throws(() => other.lookup(root, 1), (error: Error & { code?: string }) => error.code === 'THIN_CORRUPT_NODE');
  });
});

/** The layout of each leaf of the tree. */
function leafLayouts<V>(tm: TransactionManager, root: number, codec: ValueCodec<V>): string[] {
  const walker = new TreeWalker(tm);
  const leaves: number[] = [];
  walker.walk(root, codec, {
    node(visit) {
      if (visit.level === 0) leaves.push(visit.blockNr);
    },
  });
  return leaves.map((blockNr) => (isCompact(tm.read(blockNr, BlockType.btreeLeaf)) ? 'compact' : 'wide'));
}

/** Entries of each leaf of the tree, in key order. */
function leafEntryCounts<V>(tm: TransactionManager, root: number, codec: ValueCodec<V>): number[] {
  const walker = new TreeWalker(tm);
  const leaves: Array<[number, number]> = [];
  walker.walk(root, codec, {
    node(visit) {
      if (visit.level === 0) leaves.push([visit.keyBegin ?? 0, visit.entryCount]);
    },
  });
  return leaves.sort((a, b) => a[0] - b[0]).map(([, count]) => count);
}

function countSpaceMapNodes(tm: TransactionManager): number {
  const walker = new TreeWalker(tm);
  walker.walk(tm.metadataSpaceMapRoot, refCountExtentCodec(TreeKind.metadataSpaceMap));
  return walker.nodeCount;
}
