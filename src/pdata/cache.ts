// A bounded cache of clean (validated, unchanged since read or written) metadata blocks. Dirty
// blocks are not kept here: the transaction manager pins them until they are written, so
// eviction never loses a change.
//
// Eviction is CLOCK (second chance): a hit only sets a bit, so the hot path of every tree lookup
// costs one Map lookup, where exact LRU would reorder a list on every hit.
import { assert } from '../errors.ts';
import type { Block } from './block.ts';

export class BlockCache {
  readonly capacityBlocks: number;
  #slotOf = new Map<number, number>();
  #slots: Array<Block | undefined>;
  #referenced: Uint8Array;
  #hand = 0;

  constructor(capacityBlocks: number) {
    if (!(Number.isSafeInteger(capacityBlocks) && capacityBlocks >= 1)) assert(false, `bad cache capacity ${capacityBlocks}`);
    this.capacityBlocks = capacityBlocks;
    this.#slots = new Array<Block | undefined>(capacityBlocks).fill(undefined);
    this.#referenced = new Uint8Array(capacityBlocks);
  }

  get sizeBlocks(): number {
    return this.#slotOf.size;
  }

  get(blockNr: number): Block | undefined {
    const slot = this.#slotOf.get(blockNr);
    if (slot === undefined) return undefined;
    this.#referenced[slot] = 1;
    return this.#slots[slot];
  }

  put(block: Block): void {
    const existing = this.#slotOf.get(block.blockNr);
    if (existing !== undefined) {
      this.#slots[existing] = block;
      this.#referenced[existing] = 1;
      return;
    }
    const slot = this.#freeSlot();
    this.#slots[slot] = block;
    // A new block earns its second chance by being used again: a scan evicts its own blocks first.
    this.#referenced[slot] = 0;
    this.#slotOf.set(block.blockNr, slot);
    if (this.#slotOf.size > this.capacityBlocks) assert(false, 'cache exceeds its bound');
  }

  delete(blockNr: number): void {
    const slot = this.#slotOf.get(blockNr);
    if (slot === undefined) return;
    this.#slotOf.delete(blockNr);
    this.#slots[slot] = undefined;
    this.#referenced[slot] = 0;
  }

  clear(): void {
    this.#slotOf.clear();
    this.#slots.fill(undefined);
    this.#referenced.fill(0);
  }

  /** An empty slot, evicting the first block the hand finds without its second chance. */
  #freeSlot(): number {
    // At most two turns: the first clears every reference bit.
    for (let step = 0; step < 2 * this.capacityBlocks + 1; step++) {
      const slot = this.#hand;
      this.#hand = (this.#hand + 1) % this.capacityBlocks;
      const block = this.#slots[slot];
      if (block === undefined) return slot;
      if (this.#referenced[slot] === 1) {
        this.#referenced[slot] = 0;
        continue;
      }
      this.#slotOf.delete(block.blockNr);
      this.#slots[slot] = undefined;
      return slot;
    }
    assert(false, 'cache found no slot in two turns');
  }
}
