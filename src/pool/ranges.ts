// Extent arithmetic for the pool: byte requests cut into block pieces, mapping extents split and
// merged, sets of block ranges, and the coverage sweep that usage() and the checker share.
//
// Every range here is half-open (`begin` inclusive, `end` exclusive) and every number is a
// JavaScript number below 2^53 (docs/internals.md decision 8). Nothing here does I/O or knows
// about trees: the functions are pure so that they can be tested on their own.
import { assert } from '../errors.ts';

/** A mapping tree value: virtual blocks key .. key+lengthBlocks-1 live at dataBlock .. (F-POOL-20). */
export interface Extent {
  dataBlock: number;
  lengthBlocks: number;
  time: number;
}

/** An extent together with its key (first virtual block). */
export interface KeyedExtent extends Extent {
  virtualBlock: number;
}

/** One piece of a byte request that falls inside one block. */
export interface BlockPiece {
  virtualBlock: number;
  /** Where the piece starts inside its block. */
  offsetInBlockBytes: number;
  lengthBytes: number;
  /** Where the piece starts inside the request's buffer. */
  requestOffsetBytes: number;
}

/** Cuts the byte range [offsetBytes, offsetBytes + lengthBytes) into per-block pieces, in order. */
export function blockPieces(offsetBytes: number, lengthBytes: number, blockSizeBytes: number): BlockPiece[] {
  assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, `bad offset ${offsetBytes}`);
  assert(Number.isSafeInteger(lengthBytes) && lengthBytes >= 0, `bad length ${lengthBytes}`);
  assert(Number.isSafeInteger(blockSizeBytes) && blockSizeBytes > 0, `bad block size ${blockSizeBytes}`);
  const pieces: BlockPiece[] = [];
  let positionBytes = offsetBytes;
  const endBytes = offsetBytes + lengthBytes;
  while (positionBytes < endBytes) {
    const virtualBlock = Math.floor(positionBytes / blockSizeBytes);
    const offsetInBlockBytes = positionBytes - virtualBlock * blockSizeBytes;
    const pieceLengthBytes = Math.min(blockSizeBytes - offsetInBlockBytes, endBytes - positionBytes);
    pieces.push({ virtualBlock, offsetInBlockBytes, lengthBytes: pieceLengthBytes, requestOffsetBytes: positionBytes - offsetBytes });
    positionBytes += pieceLengthBytes;
  }
  return pieces;
}

/** The blocks a byte range touches at all: [begin, end). */
export function touchedBlocks(offsetBytes: number, lengthBytes: number, blockSizeBytes: number): { begin: number; end: number } {
  if (lengthBytes === 0) return { begin: 0, end: 0 };
  return {
    begin: Math.floor(offsetBytes / blockSizeBytes),
    end: Math.ceil((offsetBytes + lengthBytes) / blockSizeBytes),
  };
}

/** The blocks a byte range covers whole: [begin, end), possibly empty. */
export function wholeBlocks(offsetBytes: number, lengthBytes: number, blockSizeBytes: number): { begin: number; end: number } {
  const begin = Math.ceil(offsetBytes / blockSizeBytes);
  const end = Math.floor((offsetBytes + lengthBytes) / blockSizeBytes);
  return end > begin ? { begin, end } : { begin, end: begin };
}

/** The data block that holds virtualBlock, if the extent at key covers it. */
export function dataBlockOf(key: number, extent: Extent, virtualBlock: number): number | undefined {
  if (virtualBlock < key || virtualBlock >= key + extent.lengthBlocks) return undefined;
  return extent.dataBlock + (virtualBlock - key);
}

/** What is left of an extent after the virtual range [begin, end) is cut out of it. */
export interface ExtentCut {
  /** The part before begin (keyed at the extent's own key), if any. */
  left?: KeyedExtent;
  /** The part from end on, if any. */
  right?: KeyedExtent;
  /** The part removed; absent when the ranges do not overlap. */
  removed?: KeyedExtent;
}

export function cutExtent(key: number, extent: Extent, begin: number, end: number): ExtentCut {
  assert(extent.lengthBlocks >= 1, `empty extent at ${key}`);
  assert(begin <= end, `bad cut [${begin}, ${end})`);
  const extentEnd = key + extent.lengthBlocks;
  const cutBegin = Math.max(key, begin);
  const cutEnd = Math.min(extentEnd, end);
  if (cutBegin >= cutEnd) return {};
  const cut: ExtentCut = {
    removed: { virtualBlock: cutBegin, dataBlock: extent.dataBlock + (cutBegin - key), lengthBlocks: cutEnd - cutBegin, time: extent.time },
  };
  if (cutBegin > key) cut.left = { virtualBlock: key, dataBlock: extent.dataBlock, lengthBlocks: cutBegin - key, time: extent.time };
  if (cutEnd < extentEnd) {
    cut.right = { virtualBlock: cutEnd, dataBlock: extent.dataBlock + (cutEnd - key), lengthBlocks: extentEnd - cutEnd, time: extent.time };
  }
  return cut;
}

/**
 * Whether `right` continues `left` exactly: virtual and data blocks both contiguous, the same time,
 * and the merged length still fits the on-disk field (F-POOL-22).
 */
export function canMerge(left: KeyedExtent, right: KeyedExtent, lengthBlocksMax: number): boolean {
  return (
    left.virtualBlock + left.lengthBlocks === right.virtualBlock &&
    left.dataBlock + left.lengthBlocks === right.dataBlock &&
    left.time === right.time &&
    left.lengthBlocks + right.lengthBlocks <= lengthBlocksMax
  );
}

/** A half-open range of block numbers. */
export interface BlockRange {
  begin: number;
  end: number;
}

/**
 * A set of block numbers kept as sorted, disjoint, non-adjacent ranges. Used for the blocks known
 * to read as zeros and by tests; operations are O(log n + ranges touched).
 */
export class RangeSet {
  #ranges: BlockRange[] = [];

  get rangeCount(): number {
    return this.#ranges.length;
  }

  get blockCount(): number {
    let count = 0;
    for (const range of this.#ranges) count += range.end - range.begin;
    return count;
  }

  ranges(): BlockRange[] {
    return this.#ranges.map((range) => ({ ...range }));
  }

  /** Index of the first range whose end is > block. */
  #firstEndingAfter(block: number): number {
    let low = 0;
    let high = this.#ranges.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.#ranges[middle]!.end > block) high = middle;
      else low = middle + 1;
    }
    return low;
  }

  has(block: number): boolean {
    const index = this.#firstEndingAfter(block);
    const range = this.#ranges[index];
    return range !== undefined && range.begin <= block;
  }

  add(begin: number, end: number): void {
    assert(begin <= end, `bad range [${begin}, ${end})`);
    if (begin === end) return;
    // Ranges that overlap or touch [begin, end) are absorbed.
    let first = this.#firstEndingAfter(begin - 1);
    if (first > 0 && this.#ranges[first - 1]!.end === begin) first -= 1;
    let last = first;
    let mergedBegin = begin;
    let mergedEnd = end;
    while (last < this.#ranges.length && this.#ranges[last]!.begin <= end) {
      mergedBegin = Math.min(mergedBegin, this.#ranges[last]!.begin);
      mergedEnd = Math.max(mergedEnd, this.#ranges[last]!.end);
      last += 1;
    }
    this.#ranges.splice(first, last - first, { begin: mergedBegin, end: mergedEnd });
  }

  remove(begin: number, end: number): void {
    assert(begin <= end, `bad range [${begin}, ${end})`);
    if (begin === end) return;
    const first = this.#firstEndingAfter(begin);
    let last = first;
    const replacement: BlockRange[] = [];
    while (last < this.#ranges.length && this.#ranges[last]!.begin < end) {
      const range = this.#ranges[last]!;
      if (range.begin < begin) replacement.push({ begin: range.begin, end: begin });
      if (range.end > end) replacement.push({ begin: end, end: range.end });
      last += 1;
    }
    this.#ranges.splice(first, last - first, ...replacement);
  }
}

/** A range of blocks with a multiplicity: how many references cover it. */
export interface CoverageRun {
  begin: number;
  end: number;
  count: number;
}

/**
 * Sweeps weighted ranges into sorted, disjoint runs of constant coverage (runs of coverage 0 are
 * left out). usage() uses it to tell exclusive from shared data blocks; the checker compares it
 * with the data space map's reference counts.
 */
export function coverageRuns(ranges: Iterable<CoverageRun>): CoverageRun[] {
  const events = new Map<number, number>();
  for (const range of ranges) {
    assert(range.begin < range.end && range.count > 0, `bad coverage range [${range.begin}, ${range.end}) x${range.count}`);
    events.set(range.begin, (events.get(range.begin) ?? 0) + range.count);
    events.set(range.end, (events.get(range.end) ?? 0) - range.count);
  }
  const points = [...events.keys()].sort((a, b) => a - b);
  const runs: CoverageRun[] = [];
  let count = 0;
  for (let index = 0; index < points.length; index += 1) {
    const point = points[index]!;
    count += events.get(point)!;
    const next = points[index + 1];
    if (count > 0 && next !== undefined) {
      const previous = runs[runs.length - 1];
      if (previous !== undefined && previous.end === point && previous.count === count) previous.end = next;
      else runs.push({ begin: point, end: next, count });
    }
  }
  assert(count === 0, 'coverage sweep did not return to zero');
  return runs;
}

/** How many blocks of [begin, end) lie in runs (sorted, disjoint) accepted by `accept`. */
export function overlapLength(runs: CoverageRun[], begin: number, end: number, accept: (run: CoverageRun) => boolean): number {
  let low = 0;
  let high = runs.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (runs[middle]!.end > begin) high = middle;
    else low = middle + 1;
  }
  let total = 0;
  for (let index = low; index < runs.length && runs[index]!.begin < end; index += 1) {
    const run = runs[index]!;
    if (!accept(run)) continue;
    total += Math.min(run.end, end) - Math.max(run.begin, begin);
  }
  return total;
}
