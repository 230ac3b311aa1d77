// Reference counts of a range of blocks [0, blockCount), stored as extents in a B+tree:
// begin → {lengthBlocks, count}, count >= 1, extents never overlap, and adjacent extents with the
// same count are merged (F-SM-1..4). An absent block is free. A freshly written volume allocated
// contiguously is one entry, however long.
//
// Blocks whose count drops to 0 are "pending free" until the transaction that freed them is
// durable: the previous committed state may still point at them, so findFree skips them.
// Pending frees live in memory only; after a crash the committed state is all there is.
// Keep one SpaceMap object for the life of a pool: the pending list is in it.
import { ThinError, assert } from '../errors.ts';
import { BTree } from './btree/btree.ts';
import { TreeKind, unpackSafeU64, type CompactValueCodec, type ValueCodec } from './btree/codec.ts';
import { COMPACT_VALUE_BASES_BYTES } from './btree/node.ts';
import { setU64 } from './block.ts';
import type { BlockManager } from './block-manager.ts';

export interface RefCountExtent {
  lengthBlocks: number;
  count: number;
}

export interface BlockRange {
  begin: number;
  lengthBlocks: number;
}

/** Value layout (16 bytes): lengthBlocks u64, count u32, reserved u32 (F-SM-1). */
export function refCountExtentCodec(treeKind: number): ValueCodec<RefCountExtent> {
  return {
    treeKind,
    sizeBytes: 16,
    pack(value, view, offsetBytes) {
      assert(value.lengthBlocks >= 1 && value.count >= 1 && value.count <= 0xffff_ffff, 'bad space map extent');
      setU64(view, offsetBytes, value.lengthBlocks);
      view.setUint32(offsetBytes + 8, value.count, true);
      view.setUint32(offsetBytes + 12, 0, true);
    },
    unpack(view, offsetBytes) {
      const lengthBlocks = unpackSafeU64(view, offsetBytes, 'lengthBlocks');
      const count = view.getUint32(offsetBytes + 8, true);
      if (lengthBlocks < 1) throw new ThinError('THIN_CORRUPT_NODE', 'space map extent has length 0');
      if (count < 1) throw new ThinError('THIN_CORRUPT_NODE', 'space map extent has count 0');
      if (view.getUint32(offsetBytes + 12, true) !== 0) throw new ThinError('THIN_CORRUPT_NODE', 'space map extent reserved field is not zero');
      return { lengthBlocks, count };
    },
    compact: compactRefCountExtentCodec,
  };
}

/** Longest extent a compact space map leaf holds (its length − 1 is a u32). */
const COMPACT_LENGTH_BLOCKS_MAX = 2 ** 32;

/**
 * Compact form (docs/format.md "Space map"): u32 lengthBlocks − 1, u32 count, no bases (they are
 * zero). A space map whose blocks' counts alternate (the worst case: one extent per block) then
 * costs 12 bytes per extent instead of 24.
 */
const compactRefCountExtentCodec: CompactValueCodec<RefCountExtent> = {
  sizeBytes: 8,
  chooseBases(values, view, basesOffsetBytes) {
    if (!values.every((value) => value.lengthBlocks <= COMPACT_LENGTH_BLOCKS_MAX)) return false;
    for (let index = 0; index < COMPACT_VALUE_BASES_BYTES; index += 4) view.setUint32(basesOffsetBytes + index, 0, true);
    return true;
  },
  fits(value) {
    return value.lengthBlocks <= COMPACT_LENGTH_BLOCKS_MAX;
  },
  pack(value, view, _basesOffsetBytes, offsetBytes) {
    assert(value.lengthBlocks >= 1 && value.lengthBlocks <= COMPACT_LENGTH_BLOCKS_MAX && value.count >= 1 && value.count <= 0xffff_ffff, 'bad space map extent');
    view.setUint32(offsetBytes, value.lengthBlocks - 1, true);
    view.setUint32(offsetBytes + 4, value.count, true);
  },
  unpack(view, basesOffsetBytes, offsetBytes) {
    // F-SM-6
    for (let index = 0; index < COMPACT_VALUE_BASES_BYTES; index += 4) {
      if (view.getUint32(basesOffsetBytes + index, true) !== 0) throw new ThinError('THIN_CORRUPT_NODE', 'compact space map leaf: value bases are not zero');
    }
    const count = view.getUint32(offsetBytes + 4, true);
    // F-SM-1
    if (count < 1) throw new ThinError('THIN_CORRUPT_NODE', 'space map extent has count 0');
    return { lengthBlocks: view.getUint32(offsetBytes, true) + 1, count };
  },
};

interface Segment {
  begin: number;
  end: number;
  count: number;
}

interface PendingFree {
  begin: number;
  end: number;
  transactionId: number;
}

export class SpaceMap {
  readonly tm: BlockManager;
  readonly treeKind: number;
  #tree: BTree<RefCountExtent>;
  #root: number;
  #blockCount: number;
  #usedBlockCount = 0;
  /** Sorted by begin, non-overlapping. */
  #pending: PendingFree[] = [];
  /** Smallest transaction id among #pending (Infinity when empty): frees wait for it to be durable. */
  #pendingOldestTransactionId = Infinity;
  /** Ranges that left #pending as durable since takeReusable() last ran; undefined unless tracked. */
  #reusable: BlockRange[] | undefined;

  /**
   * Opens the space map whose tree is at root; validates that its extents fit and do not overlap,
   * and, when rootTransactionId is given (see BTree.rootTransactionId), that the root is not stale.
   */
  constructor(
    tm: BlockManager,
    root: number,
    blockCount: number,
    treeKind: number = TreeKind.dataSpaceMap,
    rootTransactionId?: number,
  ) {
    if (!(Number.isSafeInteger(blockCount) && blockCount >= 0)) assert(false, `bad block count ${blockCount}`);
    this.tm = tm;
    this.treeKind = treeKind;
    this.#tree = new BTree(tm, refCountExtentCodec(treeKind));
    this.#root = root;
    this.#blockCount = blockCount;
    if (rootTransactionId !== undefined) this.#tree.verifyRoot(root, rootTransactionId);
    let previousEnd = 0;
    for (const [begin, extent] of this.#tree.entries(root)) {
      const end = begin + extent.lengthBlocks;
      // F-SM-2
      if (begin < previousEnd || end > blockCount) {
        throw new ThinError(
          'THIN_CORRUPT_NODE',
          `Space map at metadata block ${root} has an extent [${begin}, ${end}) that overlaps another or passes its ${blockCount} blocks`,
        );
      }
      previousEnd = end;
      this.#usedBlockCount += extent.lengthBlocks;
    }
  }

  static create(tm: BlockManager, blockCount: number, treeKind: number = TreeKind.dataSpaceMap): SpaceMap {
    const root = new BTree(tm, refCountExtentCodec(treeKind)).createEmpty();
    return new SpaceMap(tm, root, blockCount, treeKind);
  }

  get root(): number {
    return this.#root;
  }

  /** The transaction that wrote the root node: store it beside the root to detect a stale root. */
  get rootTransactionId(): number {
    return this.#tree.rootTransactionId(this.#root);
  }

  get blockCount(): number {
    return this.#blockCount;
  }

  /** Blocks with a count of at least 1. */
  get usedBlockCount(): number {
    return this.#usedBlockCount;
  }

  /** Blocks freed by transactions that are not durable yet. */
  get pendingFreeBlockCount(): number {
    this.#dropDurablePending();
    let total = 0;
    for (const pending of this.#pending) total += pending.end - pending.begin;
    return total;
  }

  count(blockNr: number): number {
    this.#assertRange(blockNr, 1);
    const entry = this.#tree.floor(this.#root, blockNr);
    if (entry === undefined) return 0;
    const [begin, extent] = entry;
    return blockNr < begin + extent.lengthBlocks ? extent.count : 0;
  }

  /** Adds one reference to every block of the range; free blocks become used. */
  inc(begin: number, lengthBlocks = 1): void {
    this.#assertRange(begin, lengthBlocks);
    this.#unpend(begin, begin + lengthBlocks);
    this.#rewrite(begin, begin + lengthBlocks, (segment) => {
      if (!(segment.count < 0xffff_ffff)) assert(false, `reference count of blocks [${segment.begin}, ${segment.end}) overflows`);
      return segment.count + 1;
    });
  }

  /** Drops one reference from every block of the range (each must be used); blocks reaching 0 are pending free. */
  dec(begin: number, lengthBlocks = 1): void {
    this.#assertRange(begin, lengthBlocks);
    const freed: Segment[] = [];
    this.#rewrite(begin, begin + lengthBlocks, (segment) => {
      if (!(segment.count >= 1)) assert(false, `dec of free blocks [${segment.begin}, ${segment.end})`);
      if (segment.count === 1) freed.push(segment);
      return segment.count - 1;
    });
    for (const segment of freed) this.#addPending(segment.begin, segment.end); // F-SM-5
  }

  /**
   * Sets the counts of a range to countOf(blockNr) (0 frees without pending). For the transaction
   * manager, which keeps metadata counts in memory and folds them in here when sealing.
   */
  setCounts(begin: number, lengthBlocks: number, countOf: (blockNr: number) => number): void {
    this.#assertRange(begin, lengthBlocks);
    this.#rewriteBlocks(begin, begin + lengthBlocks, countOf);
  }

  /**
   * The first run of free blocks at or after hintBlock (wrapping around to 0), at most
   * lengthBlocksMax long, skipping pending-free blocks and blocks isReserved says are taken.
   */
  findFree(hintBlock: number, lengthBlocksMax: number, isReserved?: (blockNr: number) => boolean): BlockRange | undefined {
    if (!(Number.isSafeInteger(lengthBlocksMax) && lengthBlocksMax >= 1)) assert(false, `bad lengthBlocksMax ${lengthBlocksMax}`);
    this.#dropDurablePending();
    if (this.#blockCount === 0) return undefined;
    const hint = Number.isSafeInteger(hintBlock) && hintBlock >= 0 && hintBlock < this.#blockCount ? hintBlock : 0;
    return (
      this.#findFreeIn(hint, this.#blockCount, lengthBlocksMax, isReserved) ??
      (hint > 0 ? this.#findFreeIn(0, hint, lengthBlocksMax, isReserved) : undefined)
    );
  }

  /**
   * From now on, remember the blocks whose free becomes durable (they become reusable: findFree
   * may hand them out), for takeReusable(). The pool's data space map does, to give those blocks
   * back to the host file system once nothing committed can reference them.
   */
  trackReusable(): void {
    this.#reusable ??= [];
  }

  /**
   * The blocks that became reusable since the last call (the frees of every durable transaction
   * included), in no particular order. Some may have been allocated again since: callers check.
   */
  takeReusable(): BlockRange[] {
    assert(this.#reusable !== undefined, 'takeReusable() without trackReusable()');
    this.#dropDurablePending();
    const taken = this.#reusable;
    this.#reusable = [];
    return taken;
  }

  /**
   * Runs of reusable blocks inside [begin, end): free, not pending free, and not taken by
   * isReserved. For callers that act on free space in place (giving it back to the host).
   */
  reusableRunsIn(begin: number, end: number, isReserved?: (blockNr: number) => boolean): BlockRange[] {
    this.#dropDurablePending();
    const runs: BlockRange[] = [];
    const to = Math.min(end, this.#blockCount);
    let position = begin;
    while (position < to) {
      const run = this.#findFreeIn(position, to, to - position, isReserved);
      if (run === undefined) break;
      runs.push(run);
      position = run.begin + run.lengthBlocks;
    }
    return runs;
  }

  /** True when blockNr was freed by a transaction that is not durable yet. */
  isPendingFree(blockNr: number): boolean {
    this.#dropDurablePending();
    const index = this.#pendingIndexAtOrAfter(blockNr);
    const pending = this.#pending[index];
    return pending !== undefined && pending.begin <= blockNr;
  }

  grow(blockCount: number): void {
    if (!(Number.isSafeInteger(blockCount) && blockCount >= this.#blockCount)) assert(false, `space map cannot shrink to ${blockCount}`);
    this.#blockCount = blockCount;
  }

  /** The used extents (begin, lengthBlocks, count) in [beginBlock, endBlock), ascending; for tools. */
  *extents(beginBlock = 0, endBlock = Number.MAX_SAFE_INTEGER): Generator<{ begin: number; lengthBlocks: number; count: number }> {
    const first = this.#tree.floor(this.#root, beginBlock);
    const startKey = first !== undefined && first[0] + first[1].lengthBlocks > beginBlock ? first[0] : beginBlock;
    for (const [begin, extent] of this.#tree.entries(this.#root, startKey, endBlock)) {
      yield { begin, lengthBlocks: extent.lengthBlocks, count: extent.count };
    }
  }

  // ---- internals ----

  #assertRange(begin: number, lengthBlocks: number): void {
    if (
      !(Number.isSafeInteger(begin) && Number.isSafeInteger(lengthBlocks) && begin >= 0 && lengthBlocks >= 1 && begin + lengthBlocks <= this.#blockCount)
    ) {
      assert(false, `blocks [${begin}, ${begin + lengthBlocks}) are outside the space map of ${this.#blockCount} blocks`);
    }
  }

  /** Existing extents touching or adjoining [begin, end), as segments, plus the gaps between them. */
  #segmentsAround(begin: number, end: number): { old: Segment[]; segments: Segment[] } {
    const old: Segment[] = [];
    // The extent starting before begin, if it reaches begin (overlapping or adjoining).
    const before = begin > 0 ? this.#tree.floor(this.#root, begin - 1) : undefined;
    if (before !== undefined && before[0] + before[1].lengthBlocks >= begin) {
      old.push({ begin: before[0], end: before[0] + before[1].lengthBlocks, count: before[1].count });
    }
    for (const [key, extent] of this.#tree.entries(this.#root, begin, end + 1)) {
      old.push({ begin: key, end: key + extent.lengthBlocks, count: extent.count });
    }
    // Cut into pieces at begin and end, filling gaps inside [begin, end) with count 0.
    const segments: Segment[] = [];
    let position = Math.min(begin, old[0]?.begin ?? begin);
    const push = (segmentBegin: number, segmentEnd: number, count: number): void => {
      for (const cut of [begin, end]) {
        if (segmentBegin < cut && cut < segmentEnd) {
          segments.push({ begin: segmentBegin, end: cut, count });
          segmentBegin = cut;
        }
      }
      if (segmentBegin < segmentEnd) segments.push({ begin: segmentBegin, end: segmentEnd, count });
    };
    for (const extent of old) {
      if (position < extent.begin) push(position, extent.begin, 0);
      push(extent.begin, extent.end, extent.count);
      position = extent.end;
    }
    if (position < end) push(position, end, 0);
    return { old, segments };
  }

  /** Applies transform to every piece of [begin, end) with a uniform count, then stores the result. */
  #rewrite(begin: number, end: number, transform: (segment: Segment) => number): void {
    const { old, segments } = this.#segmentsAround(begin, end);
    const result = segments.map((segment) =>
      segment.begin >= begin && segment.end <= end ? { ...segment, count: transform(segment) } : segment,
    );
    this.#store(old, result);
  }

  #rewriteBlocks(begin: number, end: number, countOf: (blockNr: number) => number): void {
    const { old, segments } = this.#segmentsAround(begin, end);
    const result: Segment[] = [];
    for (const segment of segments) {
      if (segment.begin >= begin && segment.end <= end) {
        for (let blockNr = segment.begin; blockNr < segment.end; blockNr++) {
          const count = countOf(blockNr);
          if (!(Number.isSafeInteger(count) && count >= 0 && count <= 0xffff_ffff)) assert(false, `bad count ${count} for block ${blockNr}`);
          result.push({ begin: blockNr, end: blockNr + 1, count });
        }
      } else {
        result.push(segment);
      }
    }
    this.#store(old, result);
  }

  /** Replaces the old extents with the merged non-zero pieces of result. */
  #store(old: Segment[], result: Segment[]): void {
    const merged: Segment[] = []; // F-SM-3
    for (const segment of result) {
      if (segment.count === 0 || segment.begin === segment.end) continue;
      const last = merged[merged.length - 1];
      if (last !== undefined && last.end === segment.begin && last.count === segment.count) last.end = segment.end;
      else merged.push({ ...segment });
    }
    if (merged.length === old.length && merged.every((segment, index) => sameSegment(segment, old[index]!))) return;
    // Room for every remove and insert up front, so running out never leaves half an update.
    this.tm.ensureMetadataSpace((old.length + merged.length) * (2 * this.#tree.depth(this.#root) + 1));
    try {
      this.#replace(old, merged);
    } catch (error) {
      this.tm.markFailed(error);
      throw error;
    }
  }

  #replace(old: Segment[], merged: Segment[]): void {
    let root = this.#root;
    let usedDelta = 0;
    for (const segment of old) {
      root = this.#tree.remove(root, segment.begin);
      usedDelta -= segment.end - segment.begin;
    }
    for (const segment of merged) {
      root = this.#tree.insert(root, segment.begin, { lengthBlocks: segment.end - segment.begin, count: segment.count });
      usedDelta += segment.end - segment.begin;
    }
    this.#root = root;
    this.#usedBlockCount += usedDelta;
    if (!(this.#usedBlockCount >= 0 && this.#usedBlockCount <= this.#blockCount)) assert(false, `used block count ${this.#usedBlockCount} out of range`);
  }

  #findFreeIn(from: number, to: number, lengthBlocksMax: number, isReserved?: (blockNr: number) => boolean): BlockRange | undefined {
    let position = from;
    const before = this.#tree.floor(this.#root, from);
    if (before !== undefined && before[0] + before[1].lengthBlocks > from) position = before[0] + before[1].lengthBlocks;
    const gaps = this.#gapsFrom(position, to);
    for (const [gapBegin, gapEnd] of gaps) {
      let blockNr = gapBegin;
      while (blockNr < gapEnd) {
        const pendingEnd = this.#pendingEndAt(blockNr);
        if (pendingEnd !== undefined) {
          blockNr = pendingEnd;
          continue;
        }
        if (isReserved?.(blockNr) === true) {
          blockNr += 1;
          continue;
        }
        let end = blockNr + 1;
        while (end < gapEnd && end - blockNr < lengthBlocksMax && this.#pendingEndAt(end) === undefined && isReserved?.(end) !== true) {
          end += 1;
        }
        return { begin: blockNr, lengthBlocks: end - blockNr };
      }
    }
    return undefined;
  }

  /** The free gaps [begin, end) between extents, from position up to `to`. */
  *#gapsFrom(position: number, to: number): Generator<[number, number]> {
    for (const [key, extent] of this.#tree.entries(this.#root, position, to)) {
      if (position < key) yield [position, key];
      position = Math.max(position, key + extent.lengthBlocks);
      if (position >= to) return;
    }
    if (position < to) yield [position, to];
  }

  #pendingIndexAtOrAfter(blockNr: number): number {
    // First pending range whose end is above blockNr.
    let low = 0;
    let high = this.#pending.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.#pending[middle]!.end <= blockNr) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  #pendingEndAt(blockNr: number): number | undefined {
    const pending = this.#pending[this.#pendingIndexAtOrAfter(blockNr)];
    return pending !== undefined && pending.begin <= blockNr ? pending.end : undefined;
  }

  #addPending(begin: number, end: number): void {
    this.#dropDurablePending();
    const index = this.#pendingIndexAtOrAfter(begin);
    const next = this.#pending[index];
    if (!(next === undefined || next.begin >= end)) assert(false, `blocks [${begin}, ${end}) freed twice before commit`);
    this.#pending.splice(index, 0, { begin, end, transactionId: this.tm.transactionId });
    this.#pendingOldestTransactionId = Math.min(this.#pendingOldestTransactionId, this.tm.transactionId);
  }

  /** Blocks referenced again before their free was committed are simply not free any more. */
  #unpend(begin: number, end: number): void {
    let index = this.#pendingIndexAtOrAfter(begin);
    while (index < this.#pending.length && this.#pending[index]!.begin < end) {
      const pending = this.#pending[index]!;
      const pieces: PendingFree[] = [];
      if (pending.begin < begin) pieces.push({ begin: pending.begin, end: begin, transactionId: pending.transactionId });
      if (pending.end > end) pieces.push({ begin: end, end: pending.end, transactionId: pending.transactionId });
      this.#pending.splice(index, 1, ...pieces);
      index += pieces.length;
    }
  }

  #dropDurablePending(): void {
    // F-TX-4, F-TX-8: reusable once durable and past every pinned generation.
    const durable = this.tm.reuseHorizon;
    if (this.#pendingOldestTransactionId > durable) return;
    if (this.#reusable !== undefined) {
      for (const pending of this.#pending) {
        if (pending.transactionId <= durable) this.#reusable.push({ begin: pending.begin, lengthBlocks: pending.end - pending.begin });
      }
    }
    this.#pending = this.#pending.filter((pending) => pending.transactionId > durable);
    this.#pendingOldestTransactionId = Infinity;
    for (const pending of this.#pending) {
      this.#pendingOldestTransactionId = Math.min(this.#pendingOldestTransactionId, pending.transactionId);
    }
  }
}

function sameSegment(a: Segment, b: Segment): boolean {
  return a.begin === b.begin && a.end === b.end && a.count === b.count;
}
