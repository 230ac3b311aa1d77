// A BlockManager kept in a Map: no file, no checksums, no space map of its own. Enough to drive a
// B+tree or a space map on their own and to see every reference they take and drop. commit()
// ends the open transaction: blocks allocated before it are shared from then on (a shadow copies
// them), as the real manager's blocks are once sealed.
import assert from 'node:assert/strict';
import { METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { ThinError } from '../../src/errors.ts';
import { Block, initBlockHeader } from '../../src/pdata/block.ts';
import type { BlockManager } from '../../src/pdata/block-manager.ts';

const POOL_ID = 1n;

export class FakeBlockManager implements BlockManager {
  readonly metadataBlockCount: number;
  transactionId = 1;
  metadataSpaceMapRoot = 0;
  /** Live blocks (count ≥ 1). */
  readonly blocks = new Map<number, Block>();
  readonly counts = new Map<number, number>();
  /** Blocks allocated in the open transaction: writable in place while their count is 1. */
  #dirty = new Set<number>();
  #nextBlockNr = 1;
  /** Blocks the caller may still allocate (ensureMetadataSpace's limit). */
  #free: number;
  failure: unknown;

  constructor(metadataBlockCount = 1 << 20) {
    this.metadataBlockCount = metadataBlockCount;
    this.#free = metadataBlockCount - 1;
  }

  get durableTransactionId(): number {
    return this.transactionId - 1;
  }

  get reuseHorizon(): number {
    return this.durableTransactionId;
  }

  commit(): void {
    this.#dirty.clear();
    this.transactionId += 1;
  }

  read(blockNr: number, type: number | readonly number[]): Block {
    const block = this.blocks.get(blockNr);
    if (block === undefined) throw new ThinError('THIN_CORRUPT_BLOCK', `fake: block ${blockNr} is free`);
    const types = typeof type === 'number' ? [type] : type;
    if (!types.includes(block.type)) throw new ThinError('THIN_CORRUPT_BLOCK', `fake: block ${blockNr} has type ${block.type}`);
    return block;
  }

  /** The fake keeps every block in memory: scratch is never needed. */
  readInto(blockNr: number, type: number | readonly number[]): Block {
    return this.read(blockNr, type);
  }

  prefetch(): void {}

  allocate(type: number): Block {
    this.ensureMetadataSpace(1);
    const block = new Block(this.#nextBlockNr++, new Uint8Array(METADATA_BLOCK_SIZE_BYTES));
    initBlockHeader(block, type, this.transactionId, POOL_ID);
    this.blocks.set(block.blockNr, block);
    this.counts.set(block.blockNr, 1);
    this.#dirty.add(block.blockNr);
    this.#free -= 1;
    return block;
  }

  shadow(blockNr: number, type: number): { block: Block; wasShared: boolean } {
    const count = this.refCount(blockNr);
    if (this.#dirty.has(blockNr) && count === 1) return { block: this.read(blockNr, type), wasShared: false };
    const copy = this.allocate(type);
    copy.bytes.set(this.read(blockNr, type).bytes);
    initBlockHeader(copy, type, this.transactionId, POOL_ID);
    this.dec(blockNr);
    return { block: copy, wasShared: count > 1 };
  }

  inc(blockNr: number): void {
    assert.ok(this.refCount(blockNr) > 0, `fake: inc of free block ${blockNr}`);
    this.counts.set(blockNr, this.refCount(blockNr) + 1);
  }

  dec(blockNr: number): void {
    const count = this.refCount(blockNr);
    assert.ok(count > 0, `fake: dec of free block ${blockNr}`);
    if (count > 1) {
      this.counts.set(blockNr, count - 1);
      return;
    }
    this.counts.delete(blockNr);
    this.blocks.delete(blockNr);
    this.#dirty.delete(blockNr);
    this.#free += 1;
  }

  refCount(blockNr: number): number {
    return this.counts.get(blockNr) ?? 0;
  }

  ensureMetadataSpace(blocksNeeded: number): void {
    if (this.#free < blocksNeeded) throw new ThinError('THIN_NO_METADATA_SPACE', `fake: ${blocksNeeded} blocks needed, ${this.#free} free`);
  }

  markFailed(error: unknown): void {
    this.failure ??= error;
  }
}
