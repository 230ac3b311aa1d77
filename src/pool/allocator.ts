// The data block allocator: chooses a free data block for a write and holds it *reserved* in memory
// until the write's mapping is inserted (docs/internals.md decision 4). A reserved block is not yet
// counted in the data space map, so a crash while its data write is in flight leaks nothing.
//
// Placement: a volume's next block is the one after its previous allocation when that is free, so
// sequential writes become one long extent; otherwise the space map's findFree from there on.
//
// Space policy (docs/format.md "Space and the data high-water mark", F-POOL-42): a write that
// provisions a block for an unmapped virtual block may not take the last `reserveBlocks` free
// blocks; those are kept for copy-on-write of blocks that are already mapped but shared, so a
// write to a range a client was told is allocated is the last thing to see ENOSPC.
import { ThinError, assert } from '../errors.ts';

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
}

export class DataAllocator {
  readonly dataBlockCount: number;
  readonly reserveBlocks: number;
  #space: DataSpace;
  #reserved = new Set<number>();
  #hints = new Map<number, number>();
  #lastAllocated = -1;

  constructor(space: DataSpace, dataBlockCount: number, reserveBlocks: number) {
    assert(Number.isSafeInteger(dataBlockCount) && dataBlockCount > 0, `bad data block count ${dataBlockCount}`);
    assert(reserveBlocks >= 0 && reserveBlocks < dataBlockCount, `bad reserve ${reserveBlocks}`);
    this.#space = space;
    this.dataBlockCount = dataBlockCount;
    this.reserveBlocks = reserveBlocks;
  }

  get reservedCount(): number {
    return this.#reserved.size;
  }

  /** Free blocks that a new allocation could take (not counting blocks freed in this transaction). */
  freeBlockCount(): number {
    return this.dataBlockCount - this.#space.usedBlockCount - this.#reserved.size;
  }

  isReserved(block: number): boolean {
    return this.#reserved.has(block);
  }

  /** Reserves one free data block for `volumeId`; throws THIN_NO_SPACE when there is none (F-POOL-41). */
  allocate(volumeId: number, options: AllocateOptions = {}): number {
    const free = this.freeBlockCount();
    const floor = options.mayUseReserve === true ? 0 : this.reserveBlocks;
    if (free <= floor) {
      throw new ThinError('THIN_NO_SPACE', `No free data block: ${free} free, ${floor} kept in reserve for copy-on-write.`);
    }
    const volumeHint = this.#hints.get(volumeId);
    const hint = volumeHint ?? this.#lastAllocated + 1;
    const found = this.#space.findFree(hint % this.dataBlockCount, 1, (block) => this.#reserved.has(block));
    if (found === undefined) {
      throw new ThinError('THIN_NO_SPACE', 'No free data block: the remaining free blocks were freed in the transaction not yet committed.');
    }
    const block = found.begin;
    assert(block >= 0 && block < this.dataBlockCount, `findFree returned block ${block} outside [0, ${this.dataBlockCount})`);
    assert(!this.#reserved.has(block), `findFree returned reserved block ${block}`);
    this.#reserved.add(block);
    this.#hints.set(volumeId, (block + 1) % this.dataBlockCount);
    this.#lastAllocated = block;
    return block;
  }

  /** Ends a reservation: the block is now referenced by a mapping, or the write failed. */
  release(block: number): void {
    const had = this.#reserved.delete(block);
    assert(had, `data block ${block} was not reserved`);
  }

  /** Points a volume's next allocation after `block` (a snapshot inherits its origin's place). */
  setHint(volumeId: number, block: number): void {
    this.#hints.set(volumeId, (block + 1) % this.dataBlockCount);
  }

  forgetVolume(volumeId: number): void {
    this.#hints.delete(volumeId);
  }
}
