// The spare area: a few free data blocks written (zeros) and synced ahead of time, that remaps
// move blocks into first (docs/internals.md decision 12; dm-remap keeps a spare area for the
// same job).
//
// Why. A remap's new block must be durable before the record that points at it (md's rule:
// record first, redirect after), so the data sync is on the remap's path. Into a block the host
// file system never allocated (a hole, a punched block, an extent fallocated ahead but unwritten)
// that sync also commits the file system's journal for the allocation: the larger part of a
// remap's cost (docs/benchmarks.md, "Failing disks"). Into a block already written, it is a plain
// overwrite.
//
// No metadata (docs/format.md F-POOL-55). A spare is a free block that the allocator holds in
// memory (allocator.ts): nothing maps it, nothing records it, and its contents do not matter to
// anyone, so a crash simply forgets the list, and a later process writes another one. What keeps
// that sound:
//   - a spare is taken only as any allocation is, from blocks the space map finds free and
//     reusable (not freed by a transaction that is not durable, not pinned, not held by a punch),
//     so no generation open could choose maps it, and zeros written there overwrite nothing
//     anyone can read; a block freed from a volume whose old bytes still sit in it is free;
//   - it is written only once it lies below the durable high-water mark (F-POOL-40): raised and
//     committed first when it does not, as for any first write;
//   - bad blocks are never free (F-BAD-3), so never spares; a spare whose zeros are refused is
//     recorded bad and never used;
//   - while it is a spare no write takes it, the hole puncher skips it (isReserved), and discard
//     cannot reach it (nothing maps it); the free figures leave it out, and an allocation that
//     finds no other free block gives every spare back first, so a spare never causes ENOSPC;
//   - at close the spares go back to the free blocks (punched, when the space policy punches).
//
// Off by default (remapSpareBlocks 0): on this project's test machine (a VM with a write-back
// cache) remaps into spares measured no faster than into new blocks (docs/benchmarks.md, "Failing
// disks"); it is kept for hosts where an allocating sync costs a journal commit on the disk.
//
// When. Only once the data device has shown that it fails (a write refused, or bad data ranges
// recorded at open): a healthy pool writes nothing more. Then the area is kept at blocksWanted:
// refilled in the background after a remap once half of it is used, in one batch of writes and
// one sync (each refill costs the journal commit that the remaps no longer pay; done in batches,
// a burst of remaps meets few of them). A refill starts after a remap's record is durable, not
// before its data sync, which would then sync the refill's new blocks too.
import { REMAP_SPARE_BLOCKS_MAX, REMAP_SPARE_BYTES_MAX } from '../constants.ts';
import { assert } from '../errors.ts';
import type { DataAllocator } from './allocator.ts';
import { SectorsRefused, type SectorRange } from './bad-blocks.ts';
import { BadRangeFlag } from './bad-ranges.ts';

/** What the spare area needs from the data path and the engine. */
export interface SpareAreaHost {
  readonly blockSizeBytes: number;
  readonly dataBlockCount: number;
  readonly allocator: DataAllocator;
  /** The pool may change: read-write and not closing. */
  readonly mayChange: boolean;
  /** Raises and commits the high-water mark when `block` is not below the durable mark (F-POOL-40). */
  coverByHighWaterMark(block: number): Promise<void>;
  /** Writes zeros over the whole block; SectorsRefused when sectors refuse them (after narrowing). */
  writeZeros(block: number): Promise<void>;
  /** Syncs the data file; a failure puts the pool in needs-check. */
  sync(): Promise<void>;
  /** The block is free in the data space map and not pending (a spare must be, when added and when taken). */
  isFree(block: number): boolean;
  recordBad(ranges: readonly SectorRange[], flags: number): void;
}

export interface SpareCounters {
  /** Blocks written and synced as spares since open. */
  written: number;
  /** Remaps that moved a block into a spare. */
  taken: number;
  /** Refills (one sync each). */
  refills: number;
}

/** Spares wanted: blocksMax, at most REMAP_SPARE_BLOCKS_MAX and REMAP_SPARE_BYTES_MAX (one block at least), and no more than 1/16 of the pool. */
export function spareBlocksWanted(blocksMax: number, blockSizeBytes: number, dataBlockCount: number): number {
  return Math.min(blocksMax, REMAP_SPARE_BLOCKS_MAX, Math.max(1, Math.floor(REMAP_SPARE_BYTES_MAX / blockSizeBytes)), Math.floor(dataBlockCount / 16));
}

export class SpareArea {
  readonly counters: SpareCounters = { written: 0, taken: 0, refills: 0 };
  readonly #host: SpareAreaHost;
  /** The most spares kept (0: none, the area is off). */
  readonly #blocksMax: number;
  /** The data device has failed once: keep the area filled from now on. */
  #armed = false;
  #closed = false;
  #running: Promise<void> | undefined;

  constructor(host: SpareAreaHost, blocksMax = 0) {
    assert(Number.isSafeInteger(blocksMax) && blocksMax >= 0, `bad spare block count ${blocksMax}`);
    this.#host = host;
    this.#blocksMax = blocksMax;
  }

  get armed(): boolean {
    return this.#armed;
  }

  /** Spares kept now. */
  get blockCount(): number {
    return this.#host.allocator.spareCount;
  }

  /** The spares the area is filled to. */
  get blocksWanted(): number {
    return spareBlocksWanted(this.#blocksMax, this.#host.blockSizeBytes, this.#host.dataBlockCount);
  }

  /** The refill running, if any (tests wait for it). */
  get running(): Promise<void> | undefined {
    return this.#running;
  }

  /** The data device failed (or has failed before): fill the area from now on. */
  arm(): void {
    if (this.#blocksMax === 0 || this.#closed) return;
    this.#armed = true;
    this.refill();
  }

  /** A spare for a remap, reserved in the allocator (released as any reserved block); undefined when none is left. */
  take(): number | undefined {
    const block = this.#host.allocator.takeSpare();
    if (block === undefined) return undefined;
    assert(this.#host.isFree(block), `spare ${block} is not free in the data space map`);
    this.counters.taken += 1;
    return block;
  }

  /** Starts a refill in the background when half of the area or more is used. */
  refill(): void {
    if (!this.#armed || this.#closed || this.#running !== undefined || !this.#host.mayChange) return;
    const wanted = this.blocksWanted;
    if (this.blockCount > Math.floor(wanted / 2)) return;
    // After the current turn: the request that asked (a remap) answers first, its reply not held
    // behind the refill's writes. A failed refill is the pool's to report (a failed sync puts it
    // in needs-check); the remaps then take new blocks as they did before.
    this.#running = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.#fill(wanted))
      .catch(() => undefined)
      .finally(() => {
        this.#running = undefined;
      });
  }

  /** Stops refilling, waits for a refill running, and returns the spares, free blocks again. */
  async close(): Promise<number[]> {
    this.#closed = true;
    while (this.#running !== undefined) await this.#running;
    return this.#host.allocator.giveBackSpares();
  }

  /**
   * No more spares than wanted, each below the durable high-water mark. That each is free in the
   * data space map is asserted when it is added and when it is taken (a space map lookup per
   * spare at every invariant check was a measurable part of a remap's CPU).
   */
  assertInvariants(highWaterMarkDurable: number): void {
    const spares = this.#host.allocator.spares;
    assert(spares.length <= this.#blocksMax, `${spares.length} spares, more than ${this.#blocksMax}`);
    for (const block of spares) assert(block < highWaterMarkDurable, `spare ${block} is not below the durable high-water mark ${highWaterMarkDurable}`);
  }

  async #fill(wanted: number): Promise<void> {
    const host = this.#host;
    const allocator = host.allocator;
    const batch: number[] = [];
    try {
      // Never the last free blocks: what writes may still take stays above the reserve and the area.
      while (allocator.spareCount + batch.length < wanted && allocator.freeBlockCount() > allocator.reserveBlocks + wanted) {
        const block = allocator.reserveSpareCandidate();
        if (block === undefined) break;
        batch.push(block);
      }
      const written: number[] = [];
      for (const block of batch) {
        if (this.#closed || !host.mayChange) return;
        await host.coverByHighWaterMark(block);
        try {
          await host.writeZeros(block);
          written.push(block);
        } catch (error) {
          if (!(error instanceof SectorsRefused)) throw error;
          host.recordBad(error.ranges, BadRangeFlag.writeError);
        }
      }
      if (written.length === 0 || this.#closed || !host.mayChange) return;
      await host.sync();
      this.counters.refills += 1;
      for (const block of written) {
        batch.splice(batch.indexOf(block), 1);
        assert(host.isFree(block), `spare ${block} is not free in the data space map`);
        allocator.addSpare(block);
        this.counters.written += 1;
      }
    } finally {
      for (const block of batch) allocator.release(block);
    }
  }
}
