// Bad ranges: sectors of the data or metadata file that failed with EIO, recorded durably in the
// pool's bad-range tree (docs/format.md "Bad ranges", F-BAD-1..6) so that the blocks holding them
// are never allocated again.
//
// md's rule (drivers/md/md.h, badblocks): it is only safe not to write a bad block once it is
// recorded in the metadata. Here the record is also what keeps the block out of use (F-BAD-3): a
// data range holds one reference to its block in the data space map, so the allocator never finds
// it free and `thinbd check` counts the reference like any other. A metadata range cannot do the
// same (a count above 1 means a shared node to the B+tree, which would then copy its children):
// its block is withheld from the metadata allocator instead, in memory, at every open. A range never crosses a block. A data
// block can stay mapped while it holds a bad range (a read error on a block a snapshot shares has
// no other copy to move from): reads of its other sectors go on, and the next write that covers
// the bad sectors moves the block (pool/bad-blocks.ts).
//
// The tree is keyed by device × 2^48 + first sector; metadata sectors are the file's physical
// ones (so a range names one copy of a mirrored block) and the reference is held on the logical
// block. Ranges that touch or overlap within one block are merged. Every change is one engine
// metadata change (mutate) and is noted for the delta log, so a record made on a flush's way to
// the disk is replayed like the mapping changes beside it.
import { METADATA_BLOCK_SIZE_BYTES } from '../constants.ts';
import { ThinError, assert } from '../errors.ts';
import { MEDIA_SECTOR_BYTES } from '../io/media-error.ts';
import { BTree, type SpaceMap, type TransactionManager, type ValueCodec } from '../pdata/index.ts';
import { DeltaLogEntryKind, type DeltaLogEntry } from '../journal/log.ts';
import { BAD_RANGE_TREE_KIND, setU64 } from './codecs.ts';

export const BAD_RANGE_VALUE_SIZE_BYTES = 16;
/** Keys are device × 2^48 + sector: room for a 2^57-byte file, far past the 2^53 bytes thinbd addresses. */
export const BAD_RANGE_DEVICE_STRIDE = 2 ** 48;

export type BadDevice = 'data' | 'metadata';
const DEVICE_INDEX: Record<BadDevice, number> = { data: 0, metadata: 1 };

/** Why a range is recorded, and what was done about it (F-BAD-2). */
export const BadRangeFlag = {
  /** A read failed there (after retries). */
  readError: 1,
  /** A write failed there. */
  writeError: 2,
  /** The data that lived there was moved to another block (a remap); nothing maps the block any more for it. */
  relocated: 4,
} as const;
export const BAD_RANGE_FLAGS_KNOWN = 7;

export interface BadRangeValue {
  lengthSectors: number;
  flags: number;
}

export interface BadRange {
  device: BadDevice;
  beginSector: number;
  endSector: number;
  flags: number;
  /** The data block, or the logical metadata block, the range lies in and holds. */
  block: number;
}

/** The tree's value codec; unpack checks F-BAD-2 (what needs the pool's sizes is checked by the table and by check). */
export const badRangeCodec: ValueCodec<BadRangeValue> = {
  treeKind: BAD_RANGE_TREE_KIND,
  sizeBytes: BAD_RANGE_VALUE_SIZE_BYTES,
  pack: (value, view, offsetBytes) => {
    assert(value.lengthSectors >= 1 && value.lengthSectors <= 0xffff_ffff, `bad range of ${value.lengthSectors} sectors`);
    assert((value.flags & ~BAD_RANGE_FLAGS_KNOWN) === 0, `bad range flags ${value.flags}`);
    view.setUint32(offsetBytes, value.lengthSectors, true);
    view.setUint32(offsetBytes + 4, value.flags, true);
    setU64(view, offsetBytes + 8, 0);
  },
  unpack: (view, offsetBytes) => {
    const lengthSectors = view.getUint32(offsetBytes, true);
    const flags = view.getUint32(offsetBytes + 4, true);
    const reserved = view.getBigUint64(offsetBytes + 8, true);
    // F-BAD-2
    if (lengthSectors < 1 || (flags & ~BAD_RANGE_FLAGS_KNOWN) !== 0 || (flags & (BadRangeFlag.readError | BadRangeFlag.writeError)) === 0 || reserved !== 0n) {
      throw new ThinError('THIN_CORRUPT_NODE', `Bad range value (${lengthSectors} sectors, flags ${flags}, reserved ${reserved}) is malformed`);
    }
    return { lengthSectors, flags };
  },
};

export function badRangeKey(device: BadDevice, beginSector: number): number {
  return DEVICE_INDEX[device] * BAD_RANGE_DEVICE_STRIDE + beginSector;
}

/** The device and first sector a key names, or undefined for a key of no device (F-BAD-1). */
export function decodeBadRangeKey(key: number): { device: BadDevice; beginSector: number } | undefined {
  const index = Math.floor(key / BAD_RANGE_DEVICE_STRIDE);
  const beginSector = key - index * BAD_RANGE_DEVICE_STRIDE;
  if (index === 0) return { device: 'data', beginSector };
  if (index === 1) return { device: 'metadata', beginSector };
  return undefined;
}

/** What the table needs from the engine (PoolCore). */
export interface BadRangeHost {
  /** Runs a change of at most `treeChanges` tree operations as one engine metadata change. */
  mutate<T>(what: string, treeChanges: number, change: () => T): T;
  note(entry: DeltaLogEntry): void;
}

export interface BadRangeParts {
  tm: TransactionManager;
  dataSpace: SpaceMap;
  blockSizeBytes: number;
  /** Data blocks now: the data file may grow while the pool is open (space.ts). */
  readonly dataBlockCount: number;
  /** The metadata mirror's offset in blocks (0: none): a metadata sector past it is in the second copy. */
  mirrorOffsetBlocks: () => number;
}

export class BadRanges {
  readonly tree: BTree<BadRangeValue>;
  readonly #parts: BadRangeParts;
  readonly #host: BadRangeHost;
  #root: number;
  /** Every range, sorted by key (a few hundred at most on a dying disk: kept in memory). */
  #ranges: BadRange[] = [];
  /** Data blocks holding a bad range (the write path's question, asked on every in-place write). */
  #dataBlocks = new Map<number, BadRange[]>();
  #metadataBlocks = new Set<number>();
  /** Metadata ranges found where no change may be made (a commit in flight): recorded at the next chance. */
  #pendingMetadata: Array<{ beginSector: number; endSector: number; flags: number }> = [];

  constructor(parts: BadRangeParts, root: number, host: BadRangeHost) {
    this.#parts = parts;
    this.#host = host;
    this.tree = new BTree<BadRangeValue>(parts.tm, badRangeCodec);
    this.#root = root;
  }

  /** Root of the tree; 0 while no range was ever recorded. */
  get root(): number {
    return this.#root;
  }

  get count(): number {
    return this.#ranges.length;
  }

  get pendingCount(): number {
    return this.#pendingMetadata.length;
  }

  /** Reads the tree (open), checking what a range must be (F-BAD-1, F-BAD-3, F-BAD-4). */
  load(): void {
    this.#ranges = [];
    this.#dataBlocks.clear();
    this.#metadataBlocks.clear();
    if (this.#root === 0) return;
    let previousEndKey = 0;
    for (const [key, value] of this.tree.entries(this.#root)) {
      const decoded = decodeBadRangeKey(key);
      if (decoded === undefined) throw new ThinError('THIN_CORRUPT_NODE', `Bad-range tree key ${key} names no device`);
      // F-BAD-4: ranges never overlap (keys are ordered, so the previous one ends at or before this one).
      if (key < previousEndKey) throw new ThinError('THIN_CORRUPT_NODE', `Bad range at key ${key} overlaps the one before it (ending at key ${previousEndKey})`);
      previousEndKey = key + value.lengthSectors;
      const range: BadRange = { ...decoded, endSector: decoded.beginSector + value.lengthSectors, flags: value.flags, block: 0 };
      const block = this.#blockOf(range.device, range.beginSector);
      if (block === undefined || this.#blockOf(range.device, range.endSector - 1) !== block) {
        throw new ThinError('THIN_CORRUPT_NODE', `Bad range of ${range.device} sectors [${range.beginSector}, ${range.endSector}) lies outside one block of the pool`);
      }
      range.block = block;
      // Withholding is in memory only (F-BAD-3): a bad metadata block is withheld again at each open.
      if (range.device === 'metadata') this.#parts.tm.withholdBlock(block);
      this.#add(range);
    }
  }

  /** Every range, in key order. */
  all(): readonly BadRange[] {
    return this.#ranges;
  }

  /** Whether sectors [beginSector, endSector) of a device lie inside the pool's files (a range a log entry may name). */
  contains(device: BadDevice, beginSector: number, endSector: number): boolean {
    return endSector > beginSector && this.#blockOf(device, beginSector) !== undefined && this.#blockOf(device, endSector - 1) !== undefined;
  }

  /** Ranges in data block `block` (none for almost every block). */
  dataRangesIn(block: number): readonly BadRange[] {
    return this.#dataBlocks.get(block) ?? NO_RANGES;
  }

  hasDataBlock(block: number): boolean {
    return this.#dataBlocks.size > 0 && this.#dataBlocks.has(block);
  }

  /** Distinct blocks withdrawn from use, per device. */
  blockCounts(): { data: number; metadata: number } {
    return { data: this.#dataBlocks.size, metadata: this.#metadataBlocks.size };
  }

  /**
   * Records sectors [beginSector, endSector) of a device as bad (split at block boundaries,
   * merged with ranges they touch), each new range holding its block. Returns whether anything
   * changed. Runs as engine metadata changes (THIN_NO_METADATA_SPACE and the rest as mutate).
   */
  record(device: BadDevice, beginSector: number, endSector: number, flags: number): boolean {
    assert(Number.isSafeInteger(beginSector) && beginSector >= 0 && endSector > beginSector, `bad sector range [${beginSector}, ${endSector})`);
    assert((flags & ~BAD_RANGE_FLAGS_KNOWN) === 0 && (flags & (BadRangeFlag.readError | BadRangeFlag.writeError)) !== 0, `bad range flags ${flags}`);
    const sectorsPerBlock = this.#sectorsPerBlock(device);
    let changed = false;
    for (let pieceBegin = beginSector; pieceBegin < endSector; ) {
      const pieceEnd = Math.min(endSector, (Math.floor(pieceBegin / sectorsPerBlock) + 1) * sectorsPerBlock);
      changed = this.#recordPiece(device, pieceBegin, pieceEnd, flags) || changed;
      pieceBegin = pieceEnd;
    }
    return changed;
  }

  /** Marks the ranges of data block `block` as relocated: its data now lives elsewhere (a remap). */
  markRelocated(block: number): void {
    for (const range of this.dataRangesIn(block)) {
      if ((range.flags & BadRangeFlag.relocated) === 0) this.record('data', range.beginSector, range.endSector, range.flags | BadRangeFlag.relocated);
    }
  }

  /** A metadata copy that could not be written: recorded at the next absorbPending (no change may be made during a commit). */
  notePendingMetadata(physicalOffsetBytes: number, lengthBytes: number, flags: number): void {
    const beginSector = Math.floor(physicalOffsetBytes / MEDIA_SECTOR_BYTES);
    const endSector = Math.ceil((physicalOffsetBytes + lengthBytes) / MEDIA_SECTOR_BYTES);
    this.#pendingMetadata.push({ beginSector, endSector, flags });
  }

  /** Records the metadata ranges noted since the last call. */
  absorbPending(): void {
    while (this.#pendingMetadata.length > 0) {
      const { beginSector, endSector, flags } = this.#pendingMetadata[0]!;
      this.record('metadata', beginSector, endSector, flags);
      this.#pendingMetadata.shift();
    }
  }

  /** Checks the in-memory table against itself (PoolCore.assertInvariants). */
  assertInvariants(): void {
    for (let index = 0; index < this.#ranges.length; index++) this.#assertRange(index);
    let indexed = 0;
    for (const ranges of this.#dataBlocks.values()) indexed += ranges.length;
    let dataRanges = 0;
    for (const range of this.#ranges) if (range.device === 'data') dataRanges += 1;
    assert(indexed === dataRanges, 'the bad data block index disagrees with the ranges');
    assert(this.#root !== 0 || this.#ranges.length === 0, 'bad ranges without a bad-range tree');
  }

  /**
   * Checks `count` ranges from index `from` on (wrapping) against the one before each and the
   * index, and returns them: the share of the whole check made after each commit (PoolCore), so
   * that its cost does not grow with the ranges a dying disk collects.
   */
  assertInvariantsOf(from: number, count: number): BadRange[] {
    const checked: BadRange[] = [];
    const total = this.#ranges.length;
    for (let step = 0; step < Math.min(count, total); step++) {
      const index = (from + step) % total;
      this.#assertRange(index);
      checked.push(this.#ranges[index]!);
    }
    assert(this.#root !== 0 || total === 0, 'bad ranges without a bad-range tree');
    return checked;
  }

  #assertRange(index: number): void {
    const range = this.#ranges[index]!;
    const key = badRangeKey(range.device, range.beginSector);
    const previous = index === 0 ? undefined : this.#ranges[index - 1]!;
    if (previous !== undefined) assert(key > badRangeKey(previous.device, previous.beginSector) + (previous.endSector - previous.beginSector) - 1, 'bad ranges out of order');
    assert(range.endSector > range.beginSector, 'an empty bad range');
    assert(this.#blockOf(range.device, range.beginSector) === range.block && this.#blockOf(range.device, range.endSector - 1) === range.block, 'a bad range crosses a block');
    if (range.device === 'data') assert(this.#dataBlocks.get(range.block)?.includes(range) === true, `bad data block ${range.block} missing from the index`);
    else assert(this.#metadataBlocks.has(range.block), `bad metadata block ${range.block} missing from the index`);
  }

  // ---- internals ----

  #sectorsPerBlock(device: BadDevice): number {
    return (device === 'data' ? this.#parts.blockSizeBytes : METADATA_BLOCK_SIZE_BYTES) / MEDIA_SECTOR_BYTES;
  }

  /** The data block, or logical metadata block, that a sector lies in; undefined past the device. */
  #blockOf(device: BadDevice, sector: number): number | undefined {
    const block = Math.floor(sector / this.#sectorsPerBlock(device));
    if (device === 'data') return block < this.#parts.dataBlockCount ? block : undefined;
    const mirror = this.#parts.mirrorOffsetBlocks();
    const count = this.#parts.tm.metadataBlockCount;
    if (block < count) return block;
    if (mirror !== 0 && block >= mirror && block < mirror + count) return block - mirror;
    return undefined;
  }

  #recordPiece(device: BadDevice, beginSector: number, endSector: number, flags: number): boolean {
    const block = this.#blockOf(device, beginSector);
    assert(block !== undefined, `${device} sector ${beginSector} lies outside the pool`);
    // Ranges of this block that the piece touches or overlaps are merged into one (a data block's
    // from the index: a scan of every range made each remap on a dying disk cost more than the last).
    const candidates = device === 'data' ? this.dataRangesIn(block) : this.#ranges;
    const touching = candidates.filter(
      (range) => range.device === device && range.block === block && range.beginSector <= endSector && beginSector <= range.endSector && this.#sameHalf(range.beginSector, beginSector),
    );
    const mergedBegin = Math.min(beginSector, ...touching.map((range) => range.beginSector));
    const mergedEnd = Math.max(endSector, ...touching.map((range) => range.endSector));
    const mergedFlags = touching.reduce((all, range) => all | range.flags, flags);
    const only = touching[0];
    if (touching.length === 1 && only!.beginSector === mergedBegin && only!.endSector === mergedEnd && only!.flags === mergedFlags) return false;
    this.#host.mutate(`recording bad ${device} sectors [${beginSector}, ${endSector})`, touching.length + 2, () => {
      let root = this.#root === 0 ? this.tree.createEmpty() : this.#root;
      for (const range of touching) root = this.tree.remove(root, badRangeKey(device, range.beginSector));
      root = this.tree.insert(root, badRangeKey(device, mergedBegin), { lengthSectors: mergedEnd - mergedBegin, flags: mergedFlags });
      // One reference per range (F-BAD-3): the merged range keeps one, the ones merged into it give theirs back.
      if (touching.length === 0) this.#hold(device, block);
      for (let extra = 1; extra < touching.length; extra++) this.#release(device, block);
      this.#root = root;
    });
    for (const range of touching) this.#remove(range);
    this.#add({ device, beginSector: mergedBegin, endSector: mergedEnd, flags: mergedFlags, block });
    this.#host.note({
      kind: DeltaLogEntryKind.badRange,
      volumeId: 0,
      virtualBlock: badRangeKey(device, beginSector),
      lengthBlocks: endSector - beginSector,
      dataBlock: flags,
      oldDataBlock: 0,
    });
    return true;
  }

  /** Metadata sectors of the two copies never merge: each names its own copy. */
  #sameHalf(a: number, b: number): boolean {
    const mirror = this.#parts.mirrorOffsetBlocks() * (METADATA_BLOCK_SIZE_BYTES / MEDIA_SECTOR_BYTES);
    return mirror === 0 || a < mirror === b < mirror;
  }

  #hold(device: BadDevice, block: number): void {
    if (device === 'data') this.#parts.dataSpace.inc(block, 1);
    else this.#parts.tm.withholdBlock(block);
  }

  /** A data range merged into another gives its reference back; a metadata block stays withheld. */
  #release(device: BadDevice, block: number): void {
    if (device === 'data') this.#parts.dataSpace.dec(block, 1);
  }

  #add(range: BadRange): void {
    const key = badRangeKey(range.device, range.beginSector);
    // Binary search for the first range with a greater key.
    let low = 0;
    let high = this.#ranges.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      const other = this.#ranges[middle]!;
      if (badRangeKey(other.device, other.beginSector) > key) high = middle;
      else low = middle + 1;
    }
    this.#ranges.splice(low, 0, range);
    if (range.device === 'data') {
      const list = this.#dataBlocks.get(range.block);
      if (list === undefined) this.#dataBlocks.set(range.block, [range]);
      else list.push(range);
    } else this.#metadataBlocks.add(range.block);
  }

  #remove(range: BadRange): void {
    const index = this.#ranges.indexOf(range);
    assert(index >= 0, 'removing a bad range that is not there');
    this.#ranges.splice(index, 1);
    if (range.device === 'data') {
      const list = this.#dataBlocks.get(range.block)!.filter((other) => other !== range);
      if (list.length === 0) this.#dataBlocks.delete(range.block);
      else this.#dataBlocks.set(range.block, list);
    } else if (!this.#ranges.some((other) => other.device === 'metadata' && other.block === range.block)) this.#metadataBlocks.delete(range.block);
  }
}

const NO_RANGES: readonly BadRange[] = [];
