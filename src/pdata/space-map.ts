// Reference counts of a range of blocks [0, blockCount), stored as extents in a B+tree:
// begin → {lengthBlocks, count}, count >= 1, extents never overlap, and adjacent extents with the
// same count are merged (F-SM-1..4). An absent block is free. A freshly written volume allocated
// contiguously is one entry, however long. The data space map also stores groups of 8 blocks
// whose counts change often as one dense entry of 4-bit counts (F-SM-7, F-SM-8; format version 6):
// counts alternating block by block cost 12 bytes per 8 blocks instead of 12 per block. Every
// change re-lays out the whole groups it touches, so the layout depends on the counts alone; a
// change that leaves a dense group dense (copy-on-write after a snapshot, block by block) only
// overwrites that group's entry, the one case where the layout is known without laying it out.
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

/**
 * Format version 6: the counts of DENSE_GROUP_BLOCKS blocks [key, key + 8), 4 bits each (block
 * key + i in bits 4i..4i+3), in one entry of the data space map ("Dense counts" in
 * docs/format.md). A group whose counts change often (alternating block by block) costs one entry
 * instead of one extent per run.
 */
export interface DenseCounts {
  nibbles: number;
}

/** A value of a space map tree: an extent, or (data space map only) a dense group. */
export type SpaceMapValue = RefCountExtent | DenseCounts;

export function isDense(value: SpaceMapValue): value is DenseCounts {
  return 'nibbles' in value;
}

export interface BlockRange {
  begin: number;
  lengthBlocks: number;
}

/** Blocks a dense entry covers; its key is a multiple of it (F-SM-7). */
export const DENSE_GROUP_BLOCKS = 8;
/** Largest count a dense entry holds (4 bits); a group with a higher count is stored as extents. */
export const DENSE_COUNT_MAX = 15;
/** A group is stored dense when its counts make at least this many runs (F-SM-8): extents would take as many entries. */
export const DENSE_RUNS_MIN = 4;

/** The count of block `index` (0..7) of a dense group. */
export function denseCountAt(nibbles: number, index: number): number {
  return (nibbles >>> (4 * index)) & 0xf;
}

/** Whether a space map of this tree kind may hold dense entries: only the data space map does (F-SM-7). */
function allowsDense(treeKind: number): boolean {
  return treeKind === TreeKind.dataSpaceMap;
}

function checkDense(nibbles: number): DenseCounts {
  // F-SM-7
  if (nibbles === 0) throw new ThinError('THIN_CORRUPT_NODE', 'dense space map entry has every count 0');
  return { nibbles };
}

/**
 * Value layout (16 bytes): lengthBlocks u64, count u32, reserved u32 (F-SM-1). A dense entry
 * (version 6, data space map only) has count 0 and its nibbles in lengthBlocks (F-SM-7).
 */
export function refCountExtentCodec(treeKind: number): ValueCodec<SpaceMapValue> {
  const dense = allowsDense(treeKind);
  return {
    treeKind,
    sizeBytes: 16,
    pack(value, view, offsetBytes) {
      if (isDense(value)) {
        assert(dense && value.nibbles > 0 && value.nibbles <= 0xffff_ffff, 'bad dense space map entry');
        setU64(view, offsetBytes, value.nibbles);
        view.setUint32(offsetBytes + 8, 0, true);
      } else {
        assert(value.lengthBlocks >= 1 && value.count >= 1 && value.count <= 0xffff_ffff, 'bad space map extent');
        setU64(view, offsetBytes, value.lengthBlocks);
        view.setUint32(offsetBytes + 8, value.count, true);
      }
      view.setUint32(offsetBytes + 12, 0, true);
    },
    unpack(view, offsetBytes) {
      const lengthBlocks = unpackSafeU64(view, offsetBytes, 'lengthBlocks');
      const count = view.getUint32(offsetBytes + 8, true);
      if (view.getUint32(offsetBytes + 12, true) !== 0) throw new ThinError('THIN_CORRUPT_NODE', 'space map extent reserved field is not zero');
      if (count === 0 && dense) {
        if (lengthBlocks > 0xffff_ffff) throw new ThinError('THIN_CORRUPT_NODE', `dense space map entry has counts ${lengthBlocks} wider than 32 bits`);
        return checkDense(lengthBlocks);
      }
      if (lengthBlocks < 1) throw new ThinError('THIN_CORRUPT_NODE', 'space map extent has length 0');
      if (count < 1) throw new ThinError('THIN_CORRUPT_NODE', 'space map extent has count 0');
      return { lengthBlocks, count };
    },
    compact: compactRefCountExtentCodec(dense),
  };
}

/** Longest extent a compact space map leaf holds (its length − 1 is a u32). */
const COMPACT_LENGTH_BLOCKS_MAX = 2 ** 32;

/**
 * Compact form (docs/format.md "Space map"): u32 lengthBlocks − 1, u32 count, no bases (they are
 * zero); a dense entry is u32 nibbles, u32 0. A space map whose blocks' counts alternate then
 * costs 12 bytes per 8 blocks.
 */
function compactRefCountExtentCodec(dense: boolean): CompactValueCodec<SpaceMapValue> {
  const fits = (value: SpaceMapValue): boolean => isDense(value) || value.lengthBlocks <= COMPACT_LENGTH_BLOCKS_MAX;
  return {
    sizeBytes: 8,
    chooseBases(values, view, basesOffsetBytes) {
      if (!values.every(fits)) return false;
      for (let index = 0; index < COMPACT_VALUE_BASES_BYTES; index += 4) view.setUint32(basesOffsetBytes + index, 0, true);
      return true;
    },
    fits,
    pack(value, view, _basesOffsetBytes, offsetBytes) {
      if (isDense(value)) {
        assert(dense && value.nibbles > 0 && value.nibbles <= 0xffff_ffff, 'bad dense space map entry');
        view.setUint32(offsetBytes, value.nibbles, true);
        view.setUint32(offsetBytes + 4, 0, true);
        return;
      }
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
      if (count === 0 && dense) return checkDense(view.getUint32(offsetBytes, true));
      // F-SM-1
      if (count < 1) throw new ThinError('THIN_CORRUPT_NODE', 'space map extent has count 0');
      return { lengthBlocks: view.getUint32(offsetBytes, true) + 1, count };
    },
  };
}

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
  #tree: BTree<SpaceMapValue>;
  /** Whether groups are stored dense when their counts change often (the data space map, F-SM-8). */
  readonly #dense: boolean;
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
    this.#dense = allowsDense(treeKind);
    this.#root = root;
    this.#blockCount = blockCount;
    if (rootTransactionId !== undefined) this.#tree.verifyRoot(root, rootTransactionId);
    let previousEnd = 0;
    for (const [begin, value] of this.#tree.entries(root)) {
      if (isDense(value)) {
        // F-SM-7
        if (begin % DENSE_GROUP_BLOCKS !== 0) {
          throw new ThinError('THIN_CORRUPT_NODE', `Space map at metadata block ${root} has a dense entry at block ${begin}, which is not a multiple of ${DENSE_GROUP_BLOCKS}`);
        }
        for (let index = 0; index < DENSE_GROUP_BLOCKS; index++) {
          if (denseCountAt(value.nibbles, index) === 0) continue;
          // F-SM-2
          if (begin + index < previousEnd || begin + index >= blockCount) {
            throw new ThinError(
              'THIN_CORRUPT_NODE',
              `Space map at metadata block ${root} has a dense entry at block ${begin} whose count of block ${begin + index} overlaps another extent or passes its ${blockCount} blocks`,
            );
          }
          this.#usedBlockCount += 1;
        }
        previousEnd = Math.max(previousEnd, begin + DENSE_GROUP_BLOCKS);
        continue;
      }
      const end = begin + value.lengthBlocks;
      // F-SM-2
      if (begin < previousEnd || end > blockCount) {
        throw new ThinError(
          'THIN_CORRUPT_NODE',
          `Space map at metadata block ${root} has an extent [${begin}, ${end}) that overlaps another or passes its ${blockCount} blocks`,
        );
      }
      previousEnd = end;
      this.#usedBlockCount += value.lengthBlocks;
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
    const [begin, value] = entry;
    if (isDense(value)) return blockNr < begin + DENSE_GROUP_BLOCKS ? denseCountAt(value.nibbles, blockNr - begin) : 0;
    return blockNr < begin + value.lengthBlocks ? value.count : 0;
  }

  /** Adds one reference to every block of the range; free blocks become used. */
  inc(begin: number, lengthBlocks = 1): void {
    this.#assertRange(begin, lengthBlocks);
    this.#unpend(begin, begin + lengthBlocks);
    if (this.#changeInDenseGroup(begin, begin + lengthBlocks, 1) !== undefined) return;
    this.#rewrite(begin, begin + lengthBlocks, (segment) => {
      if (!(segment.count < 0xffff_ffff)) assert(false, `reference count of blocks [${segment.begin}, ${segment.end}) overflows`);
      return segment.count + 1;
    });
  }

  /** Drops one reference from every block of the range (each must be used); blocks reaching 0 are pending free. */
  dec(begin: number, lengthBlocks = 1): void {
    this.#assertRange(begin, lengthBlocks);
    let freed = this.#changeInDenseGroup(begin, begin + lengthBlocks, -1);
    if (freed === undefined) {
      const freedHere: Segment[] = [];
      this.#rewrite(begin, begin + lengthBlocks, (segment) => {
        if (!(segment.count >= 1)) assert(false, `dec of free blocks [${segment.begin}, ${segment.end})`);
        if (segment.count === 1) freedHere.push(segment);
        return segment.count - 1;
      });
      freed = freedHere;
    }
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

  /**
   * The runs of used blocks of equal count (begin, lengthBlocks, count) from the one holding
   * beginBlock to the last starting before endBlock, ascending and merged (dense entries are
   * read as runs); for tools.
   */
  *extents(beginBlock = 0, endBlock = Number.MAX_SAFE_INTEGER): Generator<{ begin: number; lengthBlocks: number; count: number }> {
    let run: Segment | undefined;
    for (const piece of this.#piecesFrom(beginBlock, endBlock)) {
      if (run !== undefined && run.end === piece.begin && run.count === piece.count) {
        run.end = piece.end;
        continue;
      }
      if (run !== undefined) yield { begin: run.begin, lengthBlocks: run.end - run.begin, count: run.count };
      run = { ...piece };
    }
    if (run !== undefined) yield { begin: run.begin, lengthBlocks: run.end - run.begin, count: run.count };
  }

  /** Entries read as pieces of used blocks (a dense entry gives one per used block), from the one holding `from`. */
  *#piecesFrom(from: number, to: number): Generator<Segment> {
    const first = this.#tree.floor(this.#root, from);
    const startKey = first !== undefined && entryEnd(first[0], first[1]) > from ? first[0] : from;
    for (const [key, value] of this.#tree.entries(this.#root, startKey, to)) {
      if (!isDense(value)) {
        yield { begin: key, end: key + value.lengthBlocks, count: value.count };
        continue;
      }
      for (let index = 0; index < DENSE_GROUP_BLOCKS; index++) {
        const count = denseCountAt(value.nibbles, index);
        if (count > 0) yield { begin: key + index, end: key + index + 1, count };
      }
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

  /**
   * inc (delta 1) or dec (delta −1) of [begin, end) when it lies in one dense group that stays
   * dense (F-SM-8: still 4 runs or more, no count above 15): the group's entry is overwritten in
   * place, one tree update, and nothing around it changes (extents next to a dense group are cut
   * at its edges whatever its counts). This is the copy-on-write case once a group has gone dense:
   * the shared block's count drops 2 → 1 and a block nearby goes 0 → 1. Returns the runs that
   * dropped to 0 (dec), or undefined, having changed nothing, when the general path must lay the
   * group out again.
   */
  #changeInDenseGroup(begin: number, end: number, delta: 1 | -1): Segment[] | undefined {
    if (!this.#dense || end - begin > DENSE_GROUP_BLOCKS) return undefined;
    const group = begin - (begin % DENSE_GROUP_BLOCKS);
    if (end > group + DENSE_GROUP_BLOCKS) return undefined;
    const entry = this.#tree.floor(this.#root, begin);
    if (entry === undefined || entry[0] !== group || !isDense(entry[1])) return undefined;
    const old = entry[1].nibbles;
    let nibbles = old;
    let usedDelta = 0;
    const freed: Segment[] = [];
    for (let blockNr = begin; blockNr < end; blockNr++) {
      const shift = 4 * (blockNr - group);
      const count = (old >>> shift) & 0xf;
      if (delta === 1) {
        if (count === DENSE_COUNT_MAX) return undefined; // the group leaves the dense form
        if (count === 0) usedDelta += 1;
      } else {
        if (!(count >= 1)) assert(false, `dec of free blocks [${blockNr}, ${blockNr + 1})`);
        if (count === 1) {
          usedDelta -= 1;
          const last = freed[freed.length - 1];
          if (last !== undefined && last.end === blockNr) last.end += 1;
          else freed.push({ begin: blockNr, end: blockNr + 1, count: 1 });
        }
      }
      nibbles = (nibbles & ~(0xf << shift)) | ((count + delta) << shift);
    }
    nibbles >>>= 0;
    if (nibbles === 0 || denseRuns(nibbles) < DENSE_RUNS_MIN) return undefined;
    this.tm.ensureMetadataSpace(2 * this.#tree.depth(this.#root) + 1);
    try {
      this.#root = this.#tree.insert(this.#root, group, { nibbles });
    } catch (error) {
      this.tm.markFailed(error);
      throw error;
    }
    this.#usedBlockCount += usedDelta;
    return freed;
  }

  /**
   * The entries to rewrite for a change of [begin, end): those inside the window (begin and end
   * widened to whole dense groups where the map has them, so each group's layout is chosen anew),
   * and extents adjoining it (to merge with); and their blocks as segments of equal count, cut at
   * begin and end, with the gaps inside [begin, end) as count 0.
   */
  #segmentsAround(begin: number, end: number): { old: StoredEntry[]; segments: Segment[]; window: Segment } {
    const window = this.#dense
      ? { begin: begin - (begin % DENSE_GROUP_BLOCKS), end: end + ((DENSE_GROUP_BLOCKS - (end % DENSE_GROUP_BLOCKS)) % DENSE_GROUP_BLOCKS), count: 0 }
      : { begin, end, count: 0 };
    const old: StoredEntry[] = [];
    // The extent starting before the window, if it reaches it (overlapping or adjoining); a dense
    // entry before an aligned window never reaches into it.
    const before = window.begin > 0 ? this.#tree.floor(this.#root, window.begin - 1) : undefined;
    if (before !== undefined && !isDense(before[1]) && before[0] + before[1].lengthBlocks >= window.begin) old.push({ key: before[0], value: before[1] });
    for (const [key, value] of this.#tree.entries(this.#root, window.begin, window.end + 1)) {
      if (key === window.end && isDense(value)) continue; // a group after the window: nothing to merge with
      old.push({ key, value });
    }
    // Cut into pieces at begin and end, filling gaps with count 0.
    const segments: Segment[] = [];
    let position = Math.min(begin, old[0]?.key ?? begin);
    const push = (segmentBegin: number, segmentEnd: number, count: number): void => {
      for (const cut of [begin, end]) {
        if (segmentBegin < cut && cut < segmentEnd) {
          segments.push({ begin: segmentBegin, end: cut, count });
          segmentBegin = cut;
        }
      }
      if (segmentBegin < segmentEnd) segments.push({ begin: segmentBegin, end: segmentEnd, count });
    };
    for (const { key, value } of old) {
      if (position < key) push(position, key, 0);
      if (isDense(value)) {
        for (let index = 0; index < DENSE_GROUP_BLOCKS; index++) push(key + index, key + index + 1, denseCountAt(value.nibbles, index));
        position = key + DENSE_GROUP_BLOCKS;
      } else {
        push(key, key + value.lengthBlocks, value.count);
        position = key + value.lengthBlocks;
      }
    }
    if (position < end) push(position, end, 0);
    return { old, segments, window };
  }

  /** Applies transform to every piece of [begin, end) with a uniform count, then stores the result. */
  #rewrite(begin: number, end: number, transform: (segment: Segment) => number): void {
    const { old, segments, window } = this.#segmentsAround(begin, end);
    const result = segments.map((segment) =>
      segment.begin >= begin && segment.end <= end ? { ...segment, count: transform(segment) } : segment,
    );
    this.#store(old, result, window);
  }

  #rewriteBlocks(begin: number, end: number, countOf: (blockNr: number) => number): void {
    const { old, segments, window } = this.#segmentsAround(begin, end);
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
    this.#store(old, result, window);
  }

  /** Replaces the old entries with the merged non-zero pieces of result, laid out by #encode. */
  #store(old: StoredEntry[], result: Segment[], window: Segment): void {
    const merged: Segment[] = []; // F-SM-3
    for (const segment of result) {
      if (segment.count === 0 || segment.begin === segment.end) continue;
      const last = merged[merged.length - 1];
      if (last !== undefined && last.end === segment.begin && last.count === segment.count) last.end = segment.end;
      else merged.push({ ...segment });
    }
    const entries = this.#dense ? encodeDense(merged, window) : merged.map(extentEntry);
    if (entries.length === old.length && entries.every((entry, index) => sameEntry(entry, old[index]!))) return;
    // Room for every remove and insert up front, so running out never leaves half an update.
    this.tm.ensureMetadataSpace((old.length + entries.length) * (2 * this.#tree.depth(this.#root) + 1));
    try {
      this.#replace(old, entries);
    } catch (error) {
      this.tm.markFailed(error);
      throw error;
    }
  }

  #replace(old: StoredEntry[], entries: StoredEntry[]): void {
    // Only what differs: an entry kept as it was is not touched, one whose key stays is
    // overwritten in place (insert replaces), and only keys that go away are removed.
    let root = this.#root;
    let usedDelta = 0;
    const kept = new Map<number, SpaceMapValue>();
    for (const { key, value } of old) {
      kept.set(key, value);
      usedDelta -= usedBlocksOf(value);
    }
    const newKeys = new Set<number>();
    for (const { key } of entries) newKeys.add(key);
    for (const { key } of old) if (!newKeys.has(key)) root = this.#tree.remove(root, key);
    for (const entry of entries) {
      usedDelta += usedBlocksOf(entry.value);
      const was = kept.get(entry.key);
      if (was === undefined || !sameEntry(entry, { key: entry.key, value: was })) root = this.#tree.insert(root, entry.key, entry.value);
    }
    this.#root = root;
    this.#usedBlockCount += usedDelta;
    if (!(this.#usedBlockCount >= 0 && this.#usedBlockCount <= this.#blockCount)) assert(false, `used block count ${this.#usedBlockCount} out of range`);
  }

  #findFreeIn(from: number, to: number, lengthBlocksMax: number, isReserved?: (blockNr: number) => boolean): BlockRange | undefined {
    const gaps = this.#gapsFrom(from, to);
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

  /** The free gaps [begin, end) between used blocks, from position up to `to`. */
  *#gapsFrom(position: number, to: number): Generator<[number, number]> {
    // The entries read directly (not as #piecesFrom's pieces): this is the allocator's scan.
    const first = this.#tree.floor(this.#root, position);
    const startKey = first !== undefined && entryEnd(first[0], first[1]) > position ? first[0] : position;
    for (const [key, value] of this.#tree.entries(this.#root, startKey, to)) {
      if (!isDense(value)) {
        if (position < key) yield [position, Math.min(key, to)];
        position = Math.max(position, key + value.lengthBlocks);
        if (position >= to) return;
        continue;
      }
      for (let index = 0; index < DENSE_GROUP_BLOCKS; index++) {
        if (denseCountAt(value.nibbles, index) === 0) continue;
        const blockNr = key + index;
        if (position < blockNr) yield [position, Math.min(blockNr, to)];
        position = Math.max(position, blockNr + 1);
        if (position >= to) return;
      }
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

interface StoredEntry {
  key: number;
  value: SpaceMapValue;
}

function entryEnd(key: number, value: SpaceMapValue): number {
  return key + (isDense(value) ? DENSE_GROUP_BLOCKS : value.lengthBlocks);
}

/** Runs of equal count among a dense group's 8 counts (free blocks included; F-SM-8). */
function denseRuns(nibbles: number): number {
  let runs = 1;
  for (let index = 1; index < DENSE_GROUP_BLOCKS; index++) if (denseCountAt(nibbles, index) !== denseCountAt(nibbles, index - 1)) runs += 1;
  return runs;
}

function usedBlocksOf(value: SpaceMapValue): number {
  if (!isDense(value)) return value.lengthBlocks;
  let used = 0;
  for (let index = 0; index < DENSE_GROUP_BLOCKS; index++) if (denseCountAt(value.nibbles, index) > 0) used += 1;
  return used;
}

function extentEntry(segment: Segment): StoredEntry {
  return { key: segment.begin, value: { lengthBlocks: segment.end - segment.begin, count: segment.count } };
}

function sameEntry(a: StoredEntry, b: StoredEntry): boolean {
  if (a.key !== b.key) return false;
  if (isDense(a.value) || isDense(b.value)) return isDense(a.value) && isDense(b.value) && a.value.nibbles === b.value.nibbles;
  return a.value.lengthBlocks === b.value.lengthBlocks && a.value.count === b.value.count;
}

/**
 * Lays out merged segments (ascending, non-zero, adjacent ones of different counts) as entries
 * (F-SM-8): a group of the window whose counts make DENSE_RUNS_MIN runs or more (free blocks
 * included) and are all at most DENSE_COUNT_MAX becomes one dense entry; every other block is
 * in extents, cut where a dense group begins and ends. Groups outside the window are not
 * decided here: the segments reaching past the window are extents of groups that stay extents.
 */
function encodeDense(merged: Segment[], window: Segment): StoredEntry[] {
  // One segment changes count at most twice inside a group: too few for a dense one. (The common
  // case: an allocation that extends an extent.)
  if (merged.length < 2) return merged.map(extentEntry);
  // Runs in a group = 1 + count changes strictly inside it.
  const changes = new Map<number, number>();
  let lastBoundary = -1;
  const boundary = (position: number): void => {
    if (position === lastBoundary) return;
    lastBoundary = position;
    if (position % DENSE_GROUP_BLOCKS === 0 || position <= window.begin || position >= window.end) return;
    const group = position - (position % DENSE_GROUP_BLOCKS);
    changes.set(group, (changes.get(group) ?? 0) + 1);
  };
  for (const segment of merged) {
    boundary(segment.begin);
    boundary(segment.end);
  }
  const groups: Array<{ begin: number; nibbles: number }> = [];
  let cursor = 0;
  for (const [group, changeCount] of changes) {
    if (changeCount + 1 < DENSE_RUNS_MIN) continue;
    while (cursor < merged.length && merged[cursor]!.end <= group) cursor++;
    let nibbles = 0;
    let fits = true;
    for (let index = cursor; index < merged.length && merged[index]!.begin < group + DENSE_GROUP_BLOCKS; index++) {
      const segment = merged[index]!;
      if (segment.count > DENSE_COUNT_MAX) fits = false;
      for (let blockNr = Math.max(segment.begin, group); blockNr < Math.min(segment.end, group + DENSE_GROUP_BLOCKS); blockNr++) {
        nibbles |= segment.count << (4 * (blockNr - group));
      }
    }
    if (fits) groups.push({ begin: group, nibbles: nibbles >>> 0 });
  }
  if (groups.length === 0) return merged.map(extentEntry);
  const entries: StoredEntry[] = [];
  let next = 0; // first dense group not yet emitted
  for (const segment of merged) {
    let position = segment.begin;
    while (position < segment.end) {
      while (next < groups.length && groups[next]!.begin + DENSE_GROUP_BLOCKS <= position) {
        entries.push({ key: groups[next]!.begin, value: { nibbles: groups[next]!.nibbles } });
        next++;
      }
      const group = groups[next];
      if (group !== undefined && group.begin <= position) {
        position = Math.min(segment.end, group.begin + DENSE_GROUP_BLOCKS); // inside the group: its entry holds these blocks
        continue;
      }
      const pieceEnd = group === undefined ? segment.end : Math.min(segment.end, group.begin);
      entries.push({ key: position, value: { lengthBlocks: pieceEnd - position, count: segment.count } });
      position = pieceEnd;
    }
  }
  for (; next < groups.length; next++) entries.push({ key: groups[next]!.begin, value: { nibbles: groups[next]!.nibbles } });
  return entries;
}
