// A bounded cache of clean (validated, unchanged since read or written) metadata blocks, least
// recently used evicted first. Dirty blocks are not kept here: the transaction manager pins them
// until they are written, so eviction never loses a change.
import { assert } from '../errors.ts';
import type { Block } from './block.ts';

export class BlockCache {
  readonly capacityBlocks: number;
  // A Map iterates in insertion order; re-inserting on access keeps the oldest first.
  #blocks = new Map<number, Block>();

  constructor(capacityBlocks: number) {
    assert(Number.isSafeInteger(capacityBlocks) && capacityBlocks >= 1, `bad cache capacity ${capacityBlocks}`);
    this.capacityBlocks = capacityBlocks;
  }

  get sizeBlocks(): number {
    return this.#blocks.size;
  }

  get(blockNr: number): Block | undefined {
    const block = this.#blocks.get(blockNr);
    if (block !== undefined) {
      this.#blocks.delete(blockNr);
      this.#blocks.set(blockNr, block);
    }
    return block;
  }

  put(block: Block): void {
    this.#blocks.delete(block.blockNr);
    this.#blocks.set(block.blockNr, block);
    while (this.#blocks.size > this.capacityBlocks) {
      const oldest = this.#blocks.keys().next();
      assert(oldest.done !== true, 'cache over capacity yet empty');
      this.#blocks.delete(oldest.value);
    }
    assert(this.#blocks.size <= this.capacityBlocks, 'cache exceeds its bound');
  }

  delete(blockNr: number): void {
    this.#blocks.delete(blockNr);
  }

  clear(): void {
    this.#blocks.clear();
  }
}
