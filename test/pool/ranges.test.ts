import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  RangeSet,
  blockPieces,
  canMerge,
  coverageRuns,
  cutExtent,
  overlapLength,
  touchedBlocks,
  wholeBlocks,
} from '../../src/pool/ranges.ts';

const BLOCK = 65536;

test('a byte range inside one block is one piece', () => {
  assert.deepEqual(blockPieces(100, 50, BLOCK), [{ virtualBlock: 0, offsetInBlockBytes: 100, lengthBytes: 50, requestOffsetBytes: 0 }]);
});

test('a byte range across blocks is cut at every block boundary', () => {
  const pieces = blockPieces(BLOCK - 10, BLOCK + 20, BLOCK);
  assert.deepEqual(pieces, [
    { virtualBlock: 0, offsetInBlockBytes: BLOCK - 10, lengthBytes: 10, requestOffsetBytes: 0 },
    { virtualBlock: 1, offsetInBlockBytes: 0, lengthBytes: BLOCK, requestOffsetBytes: 10 },
    { virtualBlock: 2, offsetInBlockBytes: 0, lengthBytes: 10, requestOffsetBytes: BLOCK + 10 },
  ]);
});

test('an empty byte range has no pieces and touches no blocks', () => {
  assert.deepEqual(blockPieces(5, 0, BLOCK), []);
  const touched = touchedBlocks(5, 0, BLOCK);
  assert.equal(touched.end - touched.begin, 0);
});

test('whole blocks of a range leave out partial ends', () => {
  assert.deepEqual(wholeBlocks(10, 3 * BLOCK, BLOCK), { begin: 1, end: 3 });
  assert.deepEqual(wholeBlocks(0, 2 * BLOCK, BLOCK), { begin: 0, end: 2 });
  assert.deepEqual(wholeBlocks(10, 20, BLOCK), { begin: 1, end: 1 });
  assert.deepEqual(touchedBlocks(10, 3 * BLOCK, BLOCK), { begin: 0, end: 4 });
});

test('cutting the middle of an extent leaves a left and a right part with shifted data blocks', () => {
  const cut = cutExtent(10, { dataBlock: 100, lengthBlocks: 10, time: 3 }, 12, 15);
  assert.deepEqual(cut.left, { virtualBlock: 10, dataBlock: 100, lengthBlocks: 2, time: 3 });
  assert.deepEqual(cut.removed, { virtualBlock: 12, dataBlock: 102, lengthBlocks: 3, time: 3 });
  assert.deepEqual(cut.right, { virtualBlock: 15, dataBlock: 105, lengthBlocks: 5, time: 3 });
});

test('cutting a range that covers the whole extent removes all of it', () => {
  const cut = cutExtent(10, { dataBlock: 100, lengthBlocks: 4, time: 0 }, 0, 100);
  assert.equal(cut.left, undefined);
  assert.equal(cut.right, undefined);
  assert.deepEqual(cut.removed, { virtualBlock: 10, dataBlock: 100, lengthBlocks: 4, time: 0 });
});

test('cutting a range that misses the extent changes nothing', () => {
  assert.deepEqual(cutExtent(10, { dataBlock: 100, lengthBlocks: 4, time: 0 }, 14, 20), {});
  assert.deepEqual(cutExtent(10, { dataBlock: 100, lengthBlocks: 4, time: 0 }, 0, 10), {});
});

test('extents merge only when virtual and data blocks are contiguous and times are equal', () => {
  const left = { virtualBlock: 0, dataBlock: 50, lengthBlocks: 2, time: 1 };
  assert.ok(canMerge(left, { virtualBlock: 2, dataBlock: 52, lengthBlocks: 1, time: 1 }, 100));
  assert.ok(!canMerge(left, { virtualBlock: 2, dataBlock: 53, lengthBlocks: 1, time: 1 }, 100));
  assert.ok(!canMerge(left, { virtualBlock: 3, dataBlock: 52, lengthBlocks: 1, time: 1 }, 100));
  assert.ok(!canMerge(left, { virtualBlock: 2, dataBlock: 52, lengthBlocks: 1, time: 2 }, 100));
  assert.ok(!canMerge(left, { virtualBlock: 2, dataBlock: 52, lengthBlocks: 1, time: 1 }, 2));
});

test('a range set merges touching ranges and splits on removal', () => {
  const set = new RangeSet();
  set.add(10, 20);
  set.add(20, 30);
  set.add(40, 50);
  assert.deepEqual(set.ranges(), [{ begin: 10, end: 30 }, { begin: 40, end: 50 }]);
  set.remove(15, 16);
  assert.deepEqual(set.ranges(), [{ begin: 10, end: 15 }, { begin: 16, end: 30 }, { begin: 40, end: 50 }]);
  assert.ok(set.has(10) && !set.has(15) && set.has(16) && !set.has(30) && set.has(49) && !set.has(50));
  set.add(0, 100);
  assert.deepEqual(set.ranges(), [{ begin: 0, end: 100 }]);
  set.remove(0, 100);
  assert.equal(set.rangeCount, 0);
});

test('a range set agrees with a naive set under random operations', () => {
  let seed = 12345;
  const random = (n: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const set = new RangeSet();
  const model = new Set<number>();
  for (let step = 0; step < 2000; step += 1) {
    const begin = random(200);
    const end = begin + random(20);
    if (random(2) === 0) {
      set.add(begin, end);
      for (let b = begin; b < end; b += 1) model.add(b);
    } else {
      set.remove(begin, end);
      for (let b = begin; b < end; b += 1) model.delete(b);
    }
    const ranges = set.ranges();
    for (let index = 1; index < ranges.length; index += 1) assert.ok(ranges[index - 1]!.end < ranges[index]!.begin, 'ranges stay disjoint and apart');
    assert.equal(set.blockCount, model.size);
    for (let b = 0; b < 230; b += 1) assert.equal(set.has(b), model.has(b), `block ${b} at step ${step}`);
  }
});

test('coverage runs count how many ranges cover each block', () => {
  const runs = coverageRuns([
    { begin: 0, end: 10, count: 1 },
    { begin: 5, end: 15, count: 1 },
    { begin: 20, end: 25, count: 2 },
  ]);
  assert.deepEqual(runs, [
    { begin: 0, end: 5, count: 1 },
    { begin: 5, end: 10, count: 2 },
    { begin: 10, end: 15, count: 1 },
    { begin: 20, end: 25, count: 2 },
  ]);
  assert.equal(overlapLength(runs, 0, 30, (run) => run.count === 1), 10);
  assert.equal(overlapLength(runs, 8, 22, (run) => run.count > 1), 4);
});

test('coverage runs of touching ranges with equal counts are joined', () => {
  assert.deepEqual(coverageRuns([{ begin: 0, end: 5, count: 1 }, { begin: 5, end: 9, count: 1 }]), [{ begin: 0, end: 9, count: 1 }]);
});
