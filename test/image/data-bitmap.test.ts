// The live-data bitmap (ext4/groups.ts DataBitmap) marks, counts and finds free runs a byte at a
// time where it can: it must agree with a plain array of booleans, on ranges that start and end
// inside bytes, span whole bytes, and reach the region's ends.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DataBitmap } from '../../src/image/ext4/groups.ts';

function modelRuns(used: boolean[], begin: number): number[] {
  const runs: number[] = [];
  let runBegin = -1;
  for (let index = 0; index <= used.length; index++) {
    const free = index < used.length && !used[index];
    if (free && runBegin < 0) runBegin = index;
    if (!free && runBegin >= 0) {
      runs.push(begin + runBegin, begin + index);
      runBegin = -1;
    }
  }
  return runs;
}

test('marks, counts and free runs agree with a plain model', () => {
  let seed = 12345;
  const random = (below: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % below;
  };
  const regions: Array<[number, number]> = [[1024, 1024 + 1], [1024, 1024 + 7], [1024, 1024 + 8], [1024, 3000], [1024, 70001]];
  for (const [begin, end] of regions) {
    for (let round = 0; round < 20; round++) {
      const bitmap = new DataBitmap(begin, end);
      const used = new Array<boolean>(end - begin).fill(false);
      const marks = random(12);
      for (let index = 0; index < marks; index++) {
        const first = begin + random(end - begin);
        const count = 1 + random(Math.min(end - first, 1 + random(3) * 700));
        bitmap.mark(first, count);
        for (let block = first; block < first + count; block++) used[block - begin] = true;
      }
      if (round === 0) {
        bitmap.mark(begin, end - begin);
        used.fill(true);
      }
      assert.equal(bitmap.usedBlocks(), used.filter(Boolean).length);
      assert.deepEqual(bitmap.freeRuns(), modelRuns(used, begin));
      for (let block = begin; block < end; block += 1 + random(50)) assert.equal(bitmap.isUsed(block), used[block - begin]);
    }
  }
});
