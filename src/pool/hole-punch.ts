// Space back to the host: data blocks that became free (a discard, a removed volume, the source of
// a copy-on-write) are punched out of the data file (BlockFile.punch, fallocate PUNCH_HOLE), so
// that `du` of a pool falls after `fstrim` in a guest or `thinbd remove`.
//
// Ordering (docs/format.md F-POOL-46). A block is punched only once it is *reusable*: the data
// space map hands over the blocks whose free became durable (SpaceMap.takeReusable), which is the
// very condition under which the allocator may reuse them (F-TX-4): the superblock of the
// transaction that freed the block is durable, so no generation open can choose (the newest
// durable one, or a later one) maps it. A free made by a logged change (the delta log) stays
// pending until the rollup commits (F-LOG-8), so replaying the log never maps a punched block
// either. Whatever else holds reuse back holds the punch back with it, since both read the same
// list. A punch that a crash loses or tears leaves a free block holding old bytes, which nothing
// reads (a reused block is written whole unless this process punched it, see below).
//
// Races with the allocator. Between the moment a block becomes reusable and its punch, the
// allocator may take it for a write: right before each fallocate call the puncher asks the space
// map again which blocks of the range are still reusable and not reserved for a write in flight,
// and holds exactly those (the allocator skips held blocks) until the call returns. So a punch
// never meets a write. A write that finds only held blocks waits for the call (idleCall) and
// tries again.
//
// A punched block reads as zeros, and the data path may count on that when it reuses the block
// (it writes only the bytes asked for): the punch completed before the block could be allocated,
// so the data sync that precedes the commit of its new mapping covers the punch as well.
import { PUNCH_BYTES_PER_CALL_MAX } from '../constants.ts';
import { assert } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import type { BlockRange, SpaceMap } from '../pdata/index.ts';
import { RangeSet } from './ranges.ts';

export interface HolePunchParts {
  file: BlockFile;
  blockSizeBytes: number;
  dataSpace: SpaceMap;
  /** A block reserved for a write in flight (the allocator's). */
  isReserved(block: number): boolean;
  /** Whether punching is on now (the setting, and the pool read-write). */
  enabled(): boolean;
  /** Blocks [begin, end) were punched: they read as zeros. */
  punched(begin: number, end: number): void;
}

export class HolePuncher {
  readonly #parts: HolePunchParts;
  /** Blocks waiting for their punch. */
  readonly #queue = new RangeSet();
  /** The blocks in the fallocate call running now: the allocator skips them. */
  #held: { begin: number; end: number } | undefined;
  #call: Promise<boolean> | undefined;
  #running: Promise<void> | undefined;
  /** The file cannot punch (a block device, a file system without PUNCH_HOLE): off until reopened. */
  #unsupported = false;
  #closed = false;
  #punchedBytes = 0;
  #calls = 0;

  constructor(parts: HolePunchParts) {
    this.#parts = parts;
  }

  /** Bytes given back to the host since open. */
  get punchedBytes(): number {
    return this.#punchedBytes;
  }

  /** fallocate(PUNCH_HOLE) calls since open. */
  get calls(): number {
    return this.#calls;
  }

  get unsupported(): boolean {
    return this.#unsupported;
  }

  /** Blocks queued for a punch. */
  get queuedBlocks(): number {
    return this.#queue.blockCount;
  }

  /** Whether the allocator must skip the block: a punch is running on it. */
  holds(block: number): boolean {
    const held = this.#held;
    return held !== undefined && block >= held.begin && block < held.end;
  }

  /** The fallocate call running now, if any (a write that found only held blocks waits for it). */
  idleCall(): Promise<void> | undefined {
    return this.#call?.then(() => undefined);
  }

  /** Everything queued is punched (or given up). */
  async idle(): Promise<void> {
    while (this.#running !== undefined) await this.#running;
  }

  /** Takes the blocks the data space map made reusable since last asked, and punches them. */
  collect(): void {
    const reusable = this.#parts.dataSpace.takeReusable();
    if (!this.#parts.enabled() || this.#unsupported || this.#closed) return;
    for (const range of reusable) this.#queue.add(range.begin, range.begin + range.lengthBlocks);
    if (this.#queue.rangeCount > 0) this.#running ??= this.#run();
  }

  /**
   * Punches free blocks that did not become free by a commit (the spare area's, given back at
   * close): each is re-checked reusable right before its punch, as every queued block is.
   */
  giveBack(blocks: readonly number[]): void {
    if (!this.#parts.enabled() || this.#unsupported || this.#closed) return;
    for (const block of blocks) this.#queue.add(block, block + 1);
    if (this.#queue.rangeCount > 0) this.#running ??= this.#run();
  }

  /** Finishes the punches queued (the pool's last commit queued its frees), then takes no more. */
  async close(): Promise<void> {
    await this.idle();
    this.#closed = true;
  }

  assertInvariants(): void {
    const held = this.#held;
    assert(held === undefined || (this.#call !== undefined && held.begin < held.end), 'blocks held without a punch running');
  }

  async #run(): Promise<void> {
    try {
      const blocksPerCall = Math.max(1, Math.floor(PUNCH_BYTES_PER_CALL_MAX / this.#parts.blockSizeBytes));
      while (!this.#closed && !this.#unsupported && this.#parts.enabled()) {
        const next = this.#queue.ranges()[0];
        if (next === undefined) break;
        const end = Math.min(next.end, next.begin + blocksPerCall);
        this.#queue.remove(next.begin, end);
        // Decided and held in one turn, so no allocation slips in between (see the module comment).
        for (const run of this.#parts.dataSpace.reusableRunsIn(next.begin, end, (block) => this.#parts.isReserved(block))) {
          if (!(await this.#punch(run))) return;
          if (this.#closed || !this.#parts.enabled()) return;
        }
      }
    } finally {
      this.#running = undefined;
      if (this.#unsupported || this.#closed || !this.#parts.enabled()) this.#queue.remove(0, Number.MAX_SAFE_INTEGER);
    }
  }

  /** One fallocate call over a run of blocks that are reusable right now; false when the file cannot punch. */
  async #punch(run: BlockRange): Promise<boolean> {
    // The run was computed in an earlier turn when this is not the first of its range: again.
    const [still] = this.#parts.dataSpace.reusableRunsIn(run.begin, run.begin + run.lengthBlocks, (block) => this.#parts.isReserved(block));
    if (still === undefined) return true;
    const begin = still.begin;
    const end = still.begin + still.lengthBlocks;
    const bs = this.#parts.blockSizeBytes;
    this.#held = { begin, end };
    const call = this.#parts.file.punch?.(begin * bs, (end - begin) * bs) ?? Promise.resolve(false);
    this.#call = call;
    let done: boolean;
    try {
      done = await call;
    } catch {
      done = false;
    } finally {
      this.#held = undefined;
      this.#call = undefined;
    }
    if (!done) {
      this.#unsupported = true;
      return false;
    }
    this.#calls += 1;
    this.#punchedBytes += (end - begin) * bs;
    this.#parts.punched(begin, end);
    // The rest of the run, if the re-check found only its beginning still reusable.
    if (end < run.begin + run.lengthBlocks) return this.#punch({ begin: end, lengthBlocks: run.begin + run.lengthBlocks - end });
    return true;
  }
}
