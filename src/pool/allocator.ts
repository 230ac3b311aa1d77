// The data block allocator: chooses a free data block for a write and holds it *reserved* in memory
// until the write's mapping is inserted (docs/internals.md decision 4). A reserved block is not yet
// counted in the data space map, so a crash while its data write is in flight leaks nothing.
//
// Placement: a volume's next block is the one after its previous allocation when that is free, so
// sequential writes become one long extent. When it is not (another volume took it, or the volume
// writes for the first time), the volume starts a new run a gap past the highest block handed out
// so far, so two volumes written at the same time do not interleave block by block; the space
// map's findFree goes on from there (wrapping around) when that block is taken.
//
// Space policy (docs/format.md "Space and the data high-water mark", F-POOL-42): a write that
// provisions a block for an unmapped virtual block may not take the last `reserveBlocks` free
// blocks; those are kept for copy-on-write of blocks that are already mapped but shared, so a
// write to a range a client was told is allocated is the last thing to see ENOSPC.
//
// Spares (spare-area.ts): free blocks the data path wrote and synced ahead of time so that a remap
// can move a block into one without the host file system allocating for it. The allocator holds
// them as it holds reserved blocks (no other write takes them, the puncher skips them, the free
// figures leave them out) until a remap takes one (takeSpare). They are never a reason for
// ENOSPC: an allocation that finds no other free block gives every spare back first.
import { DATA_BLOCKS_RESERVED_MAX, REMAP_TARGETS_MAX } from '../constants.ts';
import { ThinError, assert } from '../errors.ts';

/** Most free blocks left between the runs of two volumes (16 MiB of 64 KiB blocks). */
const ALLOCATION_RUN_GAP_BLOCKS_MAX = 256;

/** Reserve for copy-on-write (F-POOL-42): 1 % of the data blocks, at most DATA_BLOCKS_RESERVED_MAX. */
export function dataReserveBlocks(dataBlockCount: number): number {
  return Math.min(DATA_BLOCKS_RESERVED_MAX, Math.floor(dataBlockCount / 100));
}

/** What the allocator needs from the data space map. */
export interface DataSpace {
  findFree(
    hintBlock: number,
    lengthBlocksMax: number,
    isReserved?: (block: number) => boolean,
  ): { begin: number; lengthBlocks: number } | undefined;
  readonly usedBlockCount: number;
}

export interface AllocateOptions {
  /** True for copy-on-write of a mapped block: may use the reserve. */
  mayUseReserve?: boolean;
  /**
   * A block that just refused a write: look for the next one a REMAP_TARGETS_MAX-th of the data
   * space past it (wrapping), not next to it. Bad sectors cluster (a scratch, a weak head), so the
   * blocks after a refused one are likely to refuse too: REMAP_TARGETS_MAX tries next to each
   * other failed a write on a disk with 8 bad blocks in a row and thousands of good ones, while
   * tries a quarter of the disk apart each meet another part of the medium.
   */
  awayFrom?: number;
}

export class DataAllocator {
  #dataBlockCount: number;
  #reserveBlocks: number;
  #space: DataSpace;
  /** Free blocks something else holds for a moment (a hole being punched into them): skipped, not counted out. */
  #isHeld: (block: number) => boolean = () => false;
  #reserved = new Set<number>();
  /** Free blocks kept written for remaps (spare-area.ts), in the order they were added. */
  #spares: number[] = [];
  #hints = new Map<number, number>();
  /** One past the highest block handed out by this allocator. */
  #frontier = 0;
  /** Free blocks left between runs of different volumes: 1/16 of the pool, at most 256. */
  #runGapBlocks: number;

  constructor(space: DataSpace, dataBlockCount: number, reserveBlocks: number) {
    assert(Number.isSafeInteger(dataBlockCount) && dataBlockCount > 0, `bad data block count ${dataBlockCount}`);
    assert(reserveBlocks >= 0 && reserveBlocks < dataBlockCount, `bad reserve ${reserveBlocks}`);
    this.#space = space;
    this.#dataBlockCount = dataBlockCount;
    this.#reserveBlocks = reserveBlocks;
    this.#runGapBlocks = Math.min(ALLOCATION_RUN_GAP_BLOCKS_MAX, Math.floor(dataBlockCount / 16));
  }

  get dataBlockCount(): number {
    return this.#dataBlockCount;
  }

  get reserveBlocks(): number {
    return this.#reserveBlocks;
  }

  /** Blocks for which isHeld answers true are skipped by allocate() (the hole puncher's). */
  setHeld(isHeld: (block: number) => boolean): void {
    this.#isHeld = isHeld;
  }

  /** The data space grew to dataBlockCount blocks: the reserve and the gap between runs follow its size. */
  grow(dataBlockCount: number, reserveBlocks: number): void {
    assert(Number.isSafeInteger(dataBlockCount) && dataBlockCount >= this.#dataBlockCount, `the data space cannot shrink to ${dataBlockCount}`);
    assert(reserveBlocks >= this.#reserveBlocks && reserveBlocks < dataBlockCount, `bad reserve ${reserveBlocks}`);
    this.#dataBlockCount = dataBlockCount;
    this.#reserveBlocks = reserveBlocks;
    this.#runGapBlocks = Math.min(ALLOCATION_RUN_GAP_BLOCKS_MAX, Math.floor(dataBlockCount / 16));
  }

  /** Blocks reserved for writes in flight, and spares: neither is free. */
  get reservedCount(): number {
    return this.#reserved.size + this.#spares.length;
  }

  /** Free blocks that a new allocation could take (not counting blocks freed in this transaction, nor spares). */
  freeBlockCount(): number {
    return this.#dataBlockCount - this.#space.usedBlockCount - this.#reserved.size - this.#spares.length;
  }

  /** Reserved for a write in flight, or kept as a spare. */
  isReserved(block: number): boolean {
    return this.#reserved.has(block) || this.#spares.includes(block);
  }

  get spareCount(): number {
    return this.#spares.length;
  }

  get spares(): readonly number[] {
    return this.#spares;
  }

  /**
   * Reserves the lowest free block, to become a spare once it is written (addSpare) or be
   * released: the lowest, because a low block is most likely below the high-water mark already
   * and, after a restart, the same blocks are chosen again. Undefined when no block is free.
   */
  reserveSpareCandidate(): number | undefined {
    const found = this.#space.findFree(0, 1, (block) => this.isReserved(block) || this.#isHeld(block));
    if (found === undefined) return undefined;
    this.#reserved.add(found.begin);
    return found.begin;
  }

  /** A reserved block, written and synced, becomes a spare. */
  addSpare(block: number): void {
    const had = this.#reserved.delete(block);
    assert(had, `spare ${block} was not reserved`);
    this.#spares.push(block);
  }

  /** Reserves a spare for a remap (release it as any reserved block); undefined when none is left. */
  takeSpare(): number | undefined {
    const block = this.#spares.shift();
    if (block !== undefined) this.#reserved.add(block);
    return block;
  }

  /** Every spare becomes a plain free block again; returns them. */
  giveBackSpares(): number[] {
    return this.#spares.splice(0);
  }

  /** Reserves one free data block for `volumeId`; throws THIN_NO_SPACE when there is none (F-POOL-41). */
  allocate(volumeId: number, options: AllocateOptions = {}): number {
    return this.allocateRun(volumeId, 1, options).begin;
  }

  /**
   * Reserves a run of 1 to `lengthBlocksMax` consecutive free data blocks for `volumeId`, where
   * its next block would go; throws THIN_NO_SPACE when there is none (F-POOL-41). Each block is
   * released on its own.
   */
  allocateRun(volumeId: number, lengthBlocksMax: number, options: AllocateOptions = {}): { begin: number; lengthBlocks: number } {
    assert(Number.isSafeInteger(lengthBlocksMax) && lengthBlocksMax >= 1, `bad run length ${lengthBlocksMax}`);
    const floor = options.mayUseReserve === true ? 0 : this.#reserveBlocks;
    // Spares are never a reason for ENOSPC: short of free blocks, they are free blocks again.
    if (this.freeBlockCount() <= floor) this.giveBackSpares();
    const free = this.freeBlockCount();
    if (free <= floor) {
      throw new ThinError('THIN_NO_SPACE', `No free data block: ${free} free, ${floor} kept in reserve for copy-on-write.`);
    }
    const wanted = Math.min(lengthBlocksMax, free - floor);
    let found = this.#find(volumeId, wanted, options.awayFrom);
    if (found === undefined && this.#spares.length > 0) {
      // The free blocks left are pending or held: the spares may be all there is.
      this.giveBackSpares();
      found = this.#find(volumeId, wanted, options.awayFrom);
    }
    if (found === undefined) {
      throw new ThinError('THIN_NO_SPACE', 'No free data block: the remaining free blocks were freed in the transaction not yet committed, or are being given back to the host.');
    }
    const { begin, lengthBlocks } = found;
    assert(lengthBlocks >= 1 && lengthBlocks <= wanted, `findFree returned ${lengthBlocks} blocks for at most ${wanted}`);
    assert(begin >= 0 && begin + lengthBlocks <= this.#dataBlockCount, `findFree returned blocks [${begin}, ${begin + lengthBlocks}) outside [0, ${this.#dataBlockCount})`);
    for (let block = begin; block < begin + lengthBlocks; block++) {
      assert(!this.#reserved.has(block), `findFree returned reserved block ${block}`);
      this.#reserved.add(block);
    }
    const end = begin + lengthBlocks;
    this.#hints.set(volumeId, end % this.#dataBlockCount);
    this.#frontier = Math.max(this.#frontier, end);
    return found;
  }

  /** The run where volumeId's next block goes (see the module comment), skipping reserved, spare and held blocks. */
  #find(volumeId: number, wanted: number, awayFrom: number | undefined): { begin: number; lengthBlocks: number } | undefined {
    const isReserved = (block: number): boolean => this.isReserved(block) || this.#isHeld(block);
    if (awayFrom !== undefined) {
      assert(Number.isSafeInteger(awayFrom) && awayFrom >= 0, `bad block ${awayFrom} to move away from`);
      const strideBlocks = Math.max(1, Math.floor(this.#dataBlockCount / REMAP_TARGETS_MAX));
      return this.#space.findFree((awayFrom + strideBlocks) % this.#dataBlockCount, wanted, isReserved);
    }
    const volumeHint = this.#hints.get(volumeId);
    const found = volumeHint === undefined ? undefined : this.#space.findFree(volumeHint, wanted, isReserved);
    if (found !== undefined && found.begin === volumeHint) return found;
    const runStart = (this.#frontier + (this.#frontier === 0 ? 0 : this.#runGapBlocks)) % this.#dataBlockCount;
    return this.#space.findFree(runStart, wanted, isReserved);
  }

  /** Ends a reservation: the block is now referenced by a mapping, or the write failed. */
  release(block: number): void {
    const had = this.#reserved.delete(block);
    assert(had, `data block ${block} was not reserved`);
  }

  /** Points a volume's next allocation after `block` (a snapshot inherits its origin's place). */
  setHint(volumeId: number, block: number): void {
    this.#hints.set(volumeId, (block + 1) % this.#dataBlockCount);
  }

  forgetVolume(volumeId: number): void {
    this.#hints.delete(volumeId);
  }
}
