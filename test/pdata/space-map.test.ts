// The space map against an array of counts, with pending frees and commits.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { SpaceMap } from '../../src/pdata/space-map.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { TreeKind } from '../../src/pdata/btree/codec.ts';
import { Random, checkReferences, newManager, rootsPayload, withSeed } from './helpers.ts';
import { DENSE_COUNT_MAX, DENSE_GROUP_BLOCKS, DENSE_RUNS_MIN, isDense, refCountExtentCodec, type SpaceMapValue } from '../../src/pdata/space-map.ts';
import { BTree } from '../../src/pdata/btree/btree.ts';
import { ThinError } from '../../src/errors.ts';

interface Model {
  counts: number[];
  /** Transaction id that freed the block, while its free is not durable. */
  pendingSince: Map<number, number>;
}

function expectedFindFree(model: Model, durable: number, hint: number, lengthMax: number, reserved: (blockNr: number) => boolean) {
  const blockCount = model.counts.length;
  const isFree = (blockNr: number): boolean => {
    const pending = model.pendingSince.get(blockNr);
    return model.counts[blockNr] === 0 && (pending === undefined || pending <= durable) && !reserved(blockNr);
  };
  const scan = (from: number, to: number) => {
    for (let blockNr = from; blockNr < to; blockNr++) {
      if (!isFree(blockNr)) continue;
      let end = blockNr + 1;
      while (end < to && end - blockNr < lengthMax && isFree(end)) end++;
      return { begin: blockNr, lengthBlocks: end - blockNr };
    }
    return undefined;
  };
  const start = hint >= 0 && hint < blockCount ? hint : 0;
  return scan(start, blockCount) ?? (start > 0 ? scan(0, start) : undefined);
}

function checkExtentsNormalized(spaceMap: SpaceMap, model: Model, where: string): void {
  let previous: { begin: number; lengthBlocks: number; count: number } | undefined;
  const expanded = new Array<number>(model.counts.length).fill(0);
  for (const extent of spaceMap.extents()) {
    assert.ok(extent.count >= 1 && extent.lengthBlocks >= 1, `${where}: empty extent ${JSON.stringify(extent)}`);
    if (previous !== undefined) {
      assert.ok(previous.begin + previous.lengthBlocks <= extent.begin, `${where}: extents overlap`);
      assert.ok(
        previous.begin + previous.lengthBlocks < extent.begin || previous.count !== extent.count,
        `${where}: adjacent extents with count ${extent.count} not merged at ${extent.begin}`,
      );
    }
    for (let blockNr = extent.begin; blockNr < extent.begin + extent.lengthBlocks; blockNr++) expanded[blockNr] = extent.count;
    previous = extent;
  }
  assert.deepEqual(expanded, model.counts, `${where}: counts differ from the model`);
  assert.equal(spaceMap.usedBlockCount, model.counts.filter((count) => count > 0).length, `${where}: used block count`);
}

describe('space map', () => {
  for (const seed of [101, 102, 103, 104]) {
    test(`random inc, dec and findFree agree with an array of counts, and frees wait for their commit (seed ${seed})`, async () => withSeed(seed, async () => {
      const random = new Random(seed);
      const { tm } = newManager();
      const blockCount = 3000;
      const spaceMap = SpaceMap.create(tm, blockCount);
      const model: Model = { counts: new Array<number>(blockCount).fill(0), pendingSince: new Map() };
      const reservedSet = new Set<number>();
      for (let step = 0; step < 2500; step++) {
        const where = `seed ${seed}, step ${step}`;
        const roll = random.next();
        if (roll < 0.35) {
          // Allocate like a pool: findFree, then inc.
          const hint = random.below(blockCount + 10);
          const lengthMax = 1 + random.below(40);
          const reserved = (blockNr: number): boolean => reservedSet.has(blockNr);
          const found = spaceMap.findFree(hint, lengthMax, reserved);
          assert.deepEqual(found, expectedFindFree(model, tm.durableTransactionId, hint, lengthMax, reserved), `${where}: findFree(${hint}, ${lengthMax})`);
          if (found !== undefined) {
            spaceMap.inc(found.begin, found.lengthBlocks);
            for (let blockNr = found.begin; blockNr < found.begin + found.lengthBlocks; blockNr++) {
              model.counts[blockNr]! += 1;
              model.pendingSince.delete(blockNr);
            }
          }
        } else if (roll < 0.5) {
          // Share a used range (a snapshot's leaf being copied).
          const begin = random.below(blockCount);
          let end = begin;
          while (end < blockCount && end - begin < 30 && model.counts[end]! > 0) end++;
          if (end > begin) {
            spaceMap.inc(begin, end - begin);
            for (let blockNr = begin; blockNr < end; blockNr++) model.counts[blockNr]! += 1;
          }
        } else if (roll < 0.8) {
          const begin = random.below(blockCount);
          let end = begin;
          while (end < blockCount && end - begin < 50 && model.counts[end]! > 0) end++;
          if (end > begin) {
            spaceMap.dec(begin, end - begin);
            for (let blockNr = begin; blockNr < end; blockNr++) {
              model.counts[blockNr]! -= 1;
              if (model.counts[blockNr] === 0) model.pendingSince.set(blockNr, tm.transactionId);
            }
          }
        } else if (roll < 0.9) {
          const blockNr = random.below(blockCount);
          assert.equal(spaceMap.count(blockNr), model.counts[blockNr], `${where}: count(${blockNr})`);
          assert.equal(
            spaceMap.isPendingFree(blockNr),
            model.counts[blockNr] === 0 && (model.pendingSince.get(blockNr) ?? 0) > tm.durableTransactionId,
            `${where}: isPendingFree(${blockNr})`,
          );
        } else if (roll < 0.95) {
          const blockNr = random.below(blockCount);
          if (reservedSet.has(blockNr)) reservedSet.delete(blockNr);
          else reservedSet.add(blockNr);
        } else {
          await tm.commit(rootsPayload(spaceMap.root));
        }
        if (step % 250 === 0) checkExtentsNormalized(spaceMap, model, where);
      }
      checkExtentsNormalized(spaceMap, model, `seed ${seed} at the end`);
      checkReferences(tm, [spaceMap.root], refCountExtentCodec(TreeKind.dataSpaceMap) as never, undefined, `seed ${seed}`);
    }));
  }

  test('a contiguous allocation is one extent however long', () => {
    const { tm } = newManager();
    const spaceMap = SpaceMap.create(tm, 1_000_000);
    spaceMap.inc(10, 999_000);
    assert.deepEqual([...spaceMap.extents()], [{ begin: 10, lengthBlocks: 999_000, count: 1 }]);
    spaceMap.inc(500, 10);
    assert.deepEqual([...spaceMap.extents()], [
      { begin: 10, lengthBlocks: 490, count: 1 },
      { begin: 500, lengthBlocks: 10, count: 2 },
      { begin: 510, lengthBlocks: 998_500, count: 1 },
    ]);
    spaceMap.dec(500, 10);
    assert.deepEqual([...spaceMap.extents()], [{ begin: 10, lengthBlocks: 999_000, count: 1 }]);
    assert.equal(spaceMap.usedBlockCount, 999_000);
  });

  test('findFree wraps around past the end to the start', () => {
    const { tm } = newManager();
    const spaceMap = SpaceMap.create(tm, 100);
    spaceMap.inc(10, 90);
    assert.deepEqual(spaceMap.findFree(50, 8), { begin: 0, lengthBlocks: 8 });
    assert.deepEqual(spaceMap.findFree(50, 20), { begin: 0, lengthBlocks: 10 });
    spaceMap.inc(0, 10);
    assert.equal(spaceMap.findFree(0, 1), undefined);
  });

  test('blocks freed in the open transaction are handed out only after it commits', async () => {
    const { tm } = newManager();
    const spaceMap = SpaceMap.create(tm, 10);
    spaceMap.inc(0, 10);
    await tm.commit(rootsPayload(spaceMap.root));
    spaceMap.dec(3, 2);
    assert.equal(spaceMap.count(3), 0);
    assert.equal(spaceMap.findFree(0, 10), undefined, 'pending blocks are not free yet');
    const sealed = tm.commit(rootsPayload(spaceMap.root));
    assert.equal(spaceMap.findFree(0, 10), undefined, 'still pending while the commit is being written');
    await sealed;
    assert.deepEqual(spaceMap.findFree(0, 10), { begin: 3, lengthBlocks: 2 });
  });

  test('a block freed and referenced again in one transaction is simply used', async () => {
    const { tm } = newManager();
    const spaceMap = SpaceMap.create(tm, 10);
    spaceMap.inc(0, 10);
    await tm.commit(rootsPayload(spaceMap.root));
    spaceMap.dec(0, 10);
    spaceMap.inc(4, 2);
    assert.equal(spaceMap.isPendingFree(4), false);
    assert.equal(spaceMap.isPendingFree(3), true);
    await tm.commit(rootsPayload(spaceMap.root));
    assert.deepEqual(spaceMap.findFree(0, 10), { begin: 0, lengthBlocks: 4 });
  });

  test('grow adds free blocks at the end', () => {
    const { tm } = newManager();
    const spaceMap = SpaceMap.create(tm, 10);
    spaceMap.inc(0, 10);
    assert.equal(spaceMap.findFree(0, 5), undefined);
    spaceMap.grow(20);
    assert.deepEqual(spaceMap.findFree(0, 5), { begin: 10, lengthBlocks: 5 });
  });

  test('a space map reopened from its committed root holds the same counts', async () => {
    const { file, tm } = newManager();
    const spaceMap = SpaceMap.create(tm, 5000);
    const random = new Random(7);
    for (let step = 0; step < 300; step++) spaceMap.inc(random.below(4900), 1 + random.below(100));
    const before = [...spaceMap.extents()];
    await tm.commit(rootsPayload(spaceMap.root));
    const { tm: reopened, payload } = await TransactionManager.open(file);
    const root = new DataView(payload.buffer, payload.byteOffset).getUint32(0, true);
    const again = new SpaceMap(reopened, root, 5000);
    assert.deepEqual([...again.extents()], before);
    assert.equal(again.usedBlockCount, spaceMap.usedBlockCount);
  });

  test('counts alternating block by block take one dense entry per 8 blocks, and go back to one extent when they even out', () => {
    const { tm } = newManager();
    const blockCount = 4096;
    const spaceMap = SpaceMap.create(tm, blockCount);
    spaceMap.inc(0, blockCount);
    for (let blockNr = 0; blockNr < blockCount; blockNr += 2) spaceMap.inc(blockNr);
    const entries = storedEntries(tm, spaceMap.root);
    assert.equal(entries.length, blockCount / DENSE_GROUP_BLOCKS);
    assert.ok(entries.every(([key, value]) => isDense(value) && key % DENSE_GROUP_BLOCKS === 0 && value.nibbles === 0x1212_1212));
    assert.equal(spaceMap.count(6), 2);
    assert.equal(spaceMap.count(7), 1);
    assert.equal(spaceMap.usedBlockCount, blockCount);
    assert.equal([...spaceMap.extents()].length, blockCount, 'extents() reads the groups as runs of one block');
    for (let blockNr = 0; blockNr < blockCount; blockNr += 2) spaceMap.dec(blockNr);
    assert.deepEqual(storedEntries(tm, spaceMap.root), [[0, { lengthBlocks: blockCount, count: 1 }]]);
  });

  test('copy-on-write inside a dense group: the entry keeps the counts, blocks freed there wait for their commit, and counts that even out leave the dense form', async () => {
    const { tm } = newManager();
    const spaceMap = SpaceMap.create(tm, 64);
    spaceMap.inc(0, 24);
    spaceMap.inc(0, 24); // a snapshot: every block shared
    spaceMap.dec(9);
    spaceMap.dec(11); // copy-on-write of two blocks: group 8 goes dense
    assert.deepEqual(storedEntries(tm, spaceMap.root), [[0, { lengthBlocks: 8, count: 2 }], [8, { nibbles: 0x2222_1212 }], [16, { lengthBlocks: 8, count: 2 }]]);
    spaceMap.dec(13);
    spaceMap.dec(9, 3); // 1 → 0, 2 → 1, 1 → 0: two runs freed
    assert.deepEqual(storedEntries(tm, spaceMap.root), [[0, { lengthBlocks: 8, count: 2 }], [8, { nibbles: 0x2212_0102 }], [16, { lengthBlocks: 8, count: 2 }]]);
    assert.equal(spaceMap.usedBlockCount, 22);
    assert.equal(spaceMap.pendingFreeBlockCount, 2);
    assert.equal(spaceMap.findFree(0, 8)?.begin, 24, 'blocks freed in the open transaction are not handed out');
    spaceMap.inc(11); // referenced again before the commit: no longer pending
    assert.equal(spaceMap.pendingFreeBlockCount, 1);
    assert.equal(spaceMap.usedBlockCount, 23);
    await tm.commit(rootsPayload(spaceMap.root));
    await tm.commit(rootsPayload(spaceMap.root));
    assert.deepEqual(spaceMap.findFree(0, 8), { begin: 9, lengthBlocks: 1 });
    // Counts that even out send the group back into the extents around it.
    spaceMap.inc(9);
    for (const blockNr of [8, 12, 14, 15]) spaceMap.dec(blockNr);
    assert.deepEqual(storedEntries(tm, spaceMap.root), [[0, { lengthBlocks: 8, count: 2 }], [8, { lengthBlocks: 8, count: 1 }], [16, { lengthBlocks: 8, count: 2 }]]);
    assert.equal(spaceMap.usedBlockCount, 24);
  });

  test('a group with a count above 15 stays in extents; free blocks inside dense groups are found', () => {
    const { tm } = newManager();
    const spaceMap = SpaceMap.create(tm, 64);
    for (let blockNr = 0; blockNr < 16; blockNr += 2) spaceMap.inc(blockNr);
    assert.deepEqual(storedEntries(tm, spaceMap.root), [[0, { nibbles: 0x0101_0101 }], [8, { nibbles: 0x0101_0101 }]]);
    assert.deepEqual(spaceMap.findFree(0, 4), { begin: 1, lengthBlocks: 1 });
    assert.deepEqual(spaceMap.findFree(15, 4), { begin: 15, lengthBlocks: 4 }, 'a gap runs on from a dense group into free space');
    for (let step = 0; step < DENSE_COUNT_MAX; step++) spaceMap.inc(10);
    assert.equal(spaceMap.count(10), DENSE_COUNT_MAX + 1);
    const entries = storedEntries(tm, spaceMap.root);
    assert.deepEqual(entries[0], [0, { nibbles: 0x0101_0101 }]);
    assert.deepEqual(entries.slice(1), [8, 10, 12, 14].map((blockNr) => [blockNr, { lengthBlocks: 1, count: blockNr === 10 ? DENSE_COUNT_MAX + 1 : 1 }]));
    for (let step = 0; step < DENSE_COUNT_MAX; step++) spaceMap.dec(10);
    assert.deepEqual(storedEntries(tm, spaceMap.root)[1], [8, { nibbles: 0x0101_0101 }]);
  });

  for (const seed of [201, 202, 203]) {
    test(`the layout is a function of the counts: random changes end in the entries a fresh map of the same counts has (seed ${seed})`, () => withSeed(seed, () => {
      const random = new Random(seed);
      const { tm } = newManager();
      const blockCount = 2000 + random.below(50);
      const spaceMap = SpaceMap.create(tm, blockCount);
      const counts = new Array<number>(blockCount).fill(0);
      for (let step = 0; step < 3000; step++) {
        const begin = random.below(blockCount);
        const lengthBlocks = Math.min(blockCount - begin, random.next() < 0.7 ? 1 : 1 + random.below(60));
        const canDec = counts.slice(begin, begin + lengthBlocks).every((count) => count > 0);
        // Counts up to about 20, so that some groups pass 15 and must stay extents.
        if (canDec && (random.next() < 0.45 || counts[begin]! > 18)) {
          spaceMap.dec(begin, lengthBlocks);
          for (let blockNr = begin; blockNr < begin + lengthBlocks; blockNr++) counts[blockNr]! -= 1;
        } else {
          spaceMap.inc(begin, lengthBlocks);
          for (let blockNr = begin; blockNr < begin + lengthBlocks; blockNr++) counts[blockNr]! += 1;
        }
        if (step % 500 === 0) assert.deepEqual(countsOf(spaceMap, blockCount), counts, `seed ${seed}, step ${step}: counts`);
      }
      assert.deepEqual(countsOf(spaceMap, blockCount), counts);
      const entries = storedEntries(tm, spaceMap.root);
      assert.ok(entries.some(([, value]) => isDense(value)), 'some groups are dense');
      assert.ok(counts.some((count) => count > DENSE_COUNT_MAX), 'some counts pass what a dense entry holds');
      for (let group = 0; group < blockCount; group += DENSE_GROUP_BLOCKS) {
        const groupCounts = Array.from({ length: DENSE_GROUP_BLOCKS }, (_, index) => counts[group + index] ?? 0);
        const runs = groupCounts.filter((count, index) => index === 0 || count !== groupCounts[index - 1]).length;
        const dense = runs >= DENSE_RUNS_MIN && groupCounts.every((count) => count <= DENSE_COUNT_MAX);
        const entry = entries.find(([key]) => key === group);
        assert.equal(entry !== undefined && isDense(entry[1]), dense, `group ${group} (counts ${groupCounts.join(',')}) is ${dense ? '' : 'not '}dense`);
      }
      const fresh = SpaceMap.create(tm, blockCount);
      fresh.setCounts(0, blockCount, (blockNr) => counts[blockNr]!);
      assert.deepEqual(storedEntries(tm, fresh.root), entries);
    }));
  }

  test('a dense entry that is misplaced, counts past the end or holds nothing is named corrupt; the metadata space map has none', () => {
    const { tm } = newManager();
    const tree = new BTree(tm, refCountExtentCodec(TreeKind.dataSpaceMap));
    const open = (entries: Array<[number, SpaceMapValue]>, blockCount = 100): SpaceMap => {
      let root = tree.createEmpty();
      for (const [key, value] of entries) root = tree.insert(root, key, value);
      return new SpaceMap(tm, root, blockCount);
    };
    assert.equal(open([[8, { nibbles: 0x21 }]]).count(9), 2);
    assert.throws(() => open([[4, { nibbles: 0x21 }]]), (error: unknown) => error instanceof ThinError && /dense entry at block 4, which is not a multiple of 8/.test(error.message));
    assert.throws(() => open([[96, { nibbles: 0x1000_0000 }]]), (error: unknown) => error instanceof ThinError && /count of block 103 overlaps another extent or passes its 100 blocks/.test(error.message));
    assert.throws(() => open([[0, { lengthBlocks: 10, count: 1 }], [8, { nibbles: 0x1 }]]), (error: unknown) => error instanceof ThinError && /count of block 8 overlaps/.test(error.message));
    const view = new DataView(new ArrayBuffer(32));
    assert.throws(() => refCountExtentCodec(TreeKind.dataSpaceMap).compact!.unpack(view, 16, 0), /dense space map entry has every count 0/);
    assert.throws(() => refCountExtentCodec(TreeKind.metadataSpaceMap).compact!.unpack(view, 16, 0), /space map extent has count 0/);
    view.setUint32(0, 0x11, true);
    assert.deepEqual(refCountExtentCodec(TreeKind.dataSpaceMap).unpack(view, 0), { nibbles: 0x11 }, 'a wide leaf holds dense entries too');
    assert.throws(() => refCountExtentCodec(TreeKind.metadataSpaceMap).unpack(view, 0), /space map extent has count 0/);
  });
});

function storedEntries(tm: TransactionManager, root: number): Array<[number, SpaceMapValue]> {
  return [...new BTree(tm, refCountExtentCodec(TreeKind.dataSpaceMap)).entries(root)];
}

function countsOf(spaceMap: SpaceMap, blockCount: number): number[] {
  const counts = new Array<number>(blockCount).fill(0);
  for (const extent of spaceMap.extents()) for (let blockNr = extent.begin; blockNr < extent.begin + extent.lengthBlocks; blockNr++) counts[blockNr] = extent.count;
  return counts;
}
