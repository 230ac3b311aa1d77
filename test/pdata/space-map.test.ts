// The space map against an array of counts, with pending frees and commits.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { SpaceMap } from '../../src/pdata/space-map.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { TreeKind } from '../../src/pdata/btree/codec.ts';
import { Random, checkReferences, newManager, rootsPayload, withSeed } from './helpers.ts';
import { refCountExtentCodec } from '../../src/pdata/space-map.ts';

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
});
