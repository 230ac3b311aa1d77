import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DataAllocator, type DataSpace } from '../../src/pool/allocator.ts';
import { isThinError } from '../../src/errors.ts';

/** A naive space map: a count per block, findFree scanning from the hint and wrapping, returning the free run there. */
class FakeSpace implements DataSpace {
  counts: number[];
  constructor(blockCount: number) {
    this.counts = new Array<number>(blockCount).fill(0);
  }
  get usedBlockCount(): number {
    return this.counts.filter((c) => c > 0).length;
  }
  findFree(hintBlock: number, lengthBlocksMax: number, isReserved?: (block: number) => boolean): { begin: number; lengthBlocks: number } | undefined {
    for (let step = 0; step < this.counts.length; step += 1) {
      const block = (hintBlock + step) % this.counts.length;
      if (this.counts[block] !== 0 || (isReserved?.(block) ?? false)) continue;
      let end = block + 1;
      while (end < this.counts.length && end - block < lengthBlocksMax && this.counts[end] === 0 && !(isReserved?.(end) ?? false)) end += 1;
      return { begin: block, lengthBlocks: end - block };
    }
    return undefined;
  }
}

test('a volume allocates contiguous blocks while they are free', () => {
  const space = new FakeSpace(100);
  const allocator = new DataAllocator(space, 100, 0);
  const blocks = [0, 1, 2, 3].map(() => allocator.allocate(1));
  assert.deepEqual(blocks, [0, 1, 2, 3]);
  assert.equal(allocator.reservedCount, 4);
});

test('two volumes writing in turn each continue after their own previous block when free', () => {
  const space = new FakeSpace(100);
  const allocator = new DataAllocator(space, 100, 0);
  const a0 = allocator.allocate(1);
  allocator.setHint(2, 49);
  const b0 = allocator.allocate(2);
  const a1 = allocator.allocate(1);
  const b1 = allocator.allocate(2);
  assert.deepEqual([a0, a1, b0, b1], [0, 1, 50, 51]);
});

test('a reserved block is never handed out twice', () => {
  const space = new FakeSpace(3);
  const allocator = new DataAllocator(space, 3, 0);
  const got = new Set([allocator.allocate(1), allocator.allocate(1), allocator.allocate(2)]);
  assert.equal(got.size, 3);
  assert.throws(() => allocator.allocate(1), (error) => isThinError(error, 'THIN_NO_SPACE'));
});

test('released blocks that stay unreferenced can be allocated again', () => {
  const space = new FakeSpace(2);
  const allocator = new DataAllocator(space, 2, 0);
  const a = allocator.allocate(1);
  const b = allocator.allocate(1);
  allocator.release(a);
  assert.equal(allocator.allocate(1), a);
  allocator.release(b);
});

test('blocks counted in the space map are skipped', () => {
  const space = new FakeSpace(10);
  space.counts[0] = 1;
  space.counts[1] = 2;
  const allocator = new DataAllocator(space, 10, 0);
  assert.equal(allocator.allocate(1), 2);
});

test('new provisioning leaves the reserve to copy-on-write', () => {
  const space = new FakeSpace(4);
  const allocator = new DataAllocator(space, 4, 2);
  allocator.allocate(1);
  allocator.allocate(1);
  assert.throws(() => allocator.allocate(1), (error) => isThinError(error, 'THIN_NO_SPACE'));
  allocator.allocate(1, { mayUseReserve: true });
  allocator.allocate(1, { mayUseReserve: true });
  assert.throws(() => allocator.allocate(1, { mayUseReserve: true }), (error) => isThinError(error, 'THIN_NO_SPACE'));
});

test('releasing a block that is not reserved is a bug', () => {
  const allocator = new DataAllocator(new FakeSpace(4), 4, 0);
  assert.throws(() => allocator.release(3), /not reserved/);
});

test('two volumes written at the same time each get long runs instead of interleaving', () => {
  const space = new FakeSpace(1000);
  const allocator = new DataAllocator(space, 1000, 0);
  const a: number[] = [];
  const b: number[] = [];
  for (let index = 0; index < 40; index += 1) {
    a.push(allocator.allocate(1));
    b.push(allocator.allocate(2));
  }
  const runs = (blocks: number[]): number => blocks.filter((block, index) => index === 0 || block !== blocks[index - 1]! + 1).length;
  assert.equal(runs(a), 1);
  assert.equal(runs(b), 1);
});

test('a run is consecutive free blocks up to the length asked, stops at a used or reserved block, and leaves the reserve alone', () => {
  const space = new FakeSpace(20);
  space.counts[6] = 1;
  const allocator = new DataAllocator(space, 20, 4);
  assert.deepEqual(allocator.allocateRun(1, 4), { begin: 0, lengthBlocks: 4 });
  assert.deepEqual(allocator.allocateRun(1, 8), { begin: 4, lengthBlocks: 2 }, 'block 6 is used');
  assert.equal(allocator.allocate(2), 7, 'another volume starts a gap after the frontier');
  allocator.release(0);
  // 19 free blocks, 6 of them reserved, 4 kept back for copy-on-write: a run takes at most 9.
  const run = allocator.allocateRun(1, 100);
  assert.deepEqual(run, { begin: 9, lengthBlocks: 9 });
  for (let block = run.begin; block < run.begin + run.lengthBlocks; block++) assert.ok(allocator.isReserved(block));
  assert.equal(allocator.isReserved(0), false);
});

test('a run skips blocks a punch holds and stops at one, as a single allocation does; a grown data space lends its new blocks to runs', () => {
  const space = new FakeSpace(16);
  const allocator = new DataAllocator(space, 16, 0);
  const held = new Set([0, 5]);
  allocator.setHeld((block) => held.has(block));
  assert.deepEqual(allocator.allocateRun(1, 8), { begin: 1, lengthBlocks: 4 }, 'block 0 is held, and the run stops at held block 5');
  assert.equal(allocator.allocate(1), 6, 'a single block skips the held one too');
  held.clear();
  space.counts.push(...new Array<number>(8).fill(0));
  allocator.grow(24, 0);
  const run = allocator.allocateRun(1, 20);
  assert.deepEqual(run, { begin: 7, lengthBlocks: 17 }, 'the run goes on into the grown blocks');
});

test('a spare is held like a reserved block: never allocated, not free, skipped by the puncher; a remap takes it', () => {
  const space = new FakeSpace(8);
  const allocator = new DataAllocator(space, 8, 0);
  const candidate = allocator.reserveSpareCandidate()!;
  assert.equal(candidate, 0, 'the lowest free block');
  allocator.addSpare(candidate);
  assert.equal(allocator.spareCount, 1);
  assert.equal(allocator.freeBlockCount(), 7, 'not free space');
  assert.ok(allocator.isReserved(candidate), 'the puncher skips it');
  const taken = Array.from({ length: 7 }, () => allocator.allocate(1));
  assert.ok(!taken.includes(candidate), 'no allocation took the spare while others were free');
  for (const block of taken) allocator.release(block);
  assert.equal(allocator.takeSpare(), candidate);
  assert.equal(allocator.spareCount, 0);
  assert.ok(allocator.isReserved(candidate), 'reserved for the remap until released');
  allocator.release(candidate);
  assert.equal(allocator.takeSpare(), undefined);
});

test('an allocation that finds no other free block takes the spares back rather than failing with ENOSPC', () => {
  const space = new FakeSpace(4);
  const allocator = new DataAllocator(space, 4, 0);
  for (let index = 0; index < 2; index++) allocator.addSpare(allocator.reserveSpareCandidate()!);
  for (const block of [2, 3]) space.counts[block] = 1;
  assert.equal(allocator.freeBlockCount(), 0);
  const block = allocator.allocate(1);
  assert.ok(block === 0 || block === 1, `got block ${block}`);
  assert.equal(allocator.spareCount, 0, 'every spare is a free block again');
  assert.equal(allocator.freeBlockCount(), 1);
});
