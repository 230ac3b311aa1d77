// Data block ranges, each one reference, swept into runs of constant coverage: the data
// reference counts that mappings imply. The checker compares them with the data space map; restore
// builds the data space map from them in one ordered pass instead of one update per mapping.
//
// Two ways to count, chosen by the data size given: per data block, when the pool has at most
// DENSE_REFERENCE_BLOCKS_MAX blocks (a bit for the first reference, a byte for the next ones once
// some block has them, counts above 254 in a map beside it), which costs one bit set per
// referenced block and no sort; otherwise the ranges' ends kept in typed arrays and
// sorted natively, which costs O(ranges log ranges) whatever the pool's size. A range outside the
// dense blocks (a damaged mapping can name one) is kept the second way, and the two are swept
// together.
import { DENSE_REFERENCE_BLOCKS_MAX } from '../constants.ts';
import { assert } from '../errors.ts';
import type { CoverageRun } from '../pool/ranges.ts';
import { doubled } from '../util/typed-array.ts';

/** A dense count at this value continues in the overflow map. */
const DENSE_COUNT_SATURATED = 255;
/** References after a block's first at which its count is DENSE_COUNT_SATURATED. */
const DENSE_EXTRA_SATURATED = DENSE_COUNT_SATURATED - 1;

/**
 * Kept in typed arrays, because a pool has millions of references: an object and a map entry per
 * reference (pool/ranges.ts coverageRuns) cost several times the rest of a check.
 */
export class ReferenceRuns {
  /** Dense blocks: [0, #denseBlocks), or none. */
  readonly #denseBlocks: number;
  /**
   * A bit per dense block: referenced at least once. A scattered pool references its blocks in
   * random order, and an eighth of the memory a byte per block takes stays in the cache while
   * the metadata streams through it (the byte array's misses were a sixth of a check's walk).
   */
  readonly #once: Int32Array;
  /**
   * Per dense block, its references after the first (made when a block is first referenced
   * twice): at DENSE_EXTRA_SATURATED the count, 1 + that, is DENSE_COUNT_SATURATED, and the rest
   * is counted in #overflow.
   */
  #extra: Uint8Array | undefined;
  /** Count minus DENSE_COUNT_SATURATED of a block whose dense count is saturated. */
  readonly #overflow = new Map<number, number>();
  /** Dense blocks touched: [#denseBegin, #denseEnd). */
  #denseBegin = Number.POSITIVE_INFINITY;
  #denseEnd = 0;
  #begins = new Float64Array(1024);
  #ends = new Float64Array(1024);
  #length = 0;

  /** `dataBlockCount`: the pool's data blocks, when known (then counted densely if not too many). */
  constructor(dataBlockCount = 0) {
    this.#denseBlocks = dataBlockCount <= DENSE_REFERENCE_BLOCKS_MAX ? dataBlockCount : 0;
    this.#once = new Int32Array(Math.ceil(this.#denseBlocks / 32));
  }

  add(begin: number, end: number): void {
    if (begin >= 0 && end <= this.#denseBlocks && begin < end) {
      if (begin < this.#denseBegin) this.#denseBegin = begin;
      if (end > this.#denseEnd) this.#denseEnd = end;
      const once = this.#once;
      for (let blockNr = begin; blockNr < end; blockNr++) {
        const word = once[blockNr >>> 5]!;
        const bit = 1 << (blockNr & 31);
        if ((word & bit) === 0) once[blockNr >>> 5] = word | bit;
        else this.#addAgain(blockNr);
      }
      return;
    }
    this.#addRange(begin, end);
  }

  /** One more reference to a dense block already referenced. */
  #addAgain(blockNr: number): void {
    const extra = (this.#extra ??= new Uint8Array(this.#denseBlocks));
    const count = extra[blockNr]!;
    if (count < DENSE_EXTRA_SATURATED) extra[blockNr] = count + 1;
    else this.#overflow.set(blockNr, (this.#overflow.get(blockNr) ?? 0) + 1);
  }

  #addRange(begin: number, end: number): void {
    // A range that continues the previous one is joined to it (the sweep's sums are the same).
    if (this.#length > 0 && this.#ends[this.#length - 1] === begin) {
      this.#ends[this.#length - 1] = end;
      return;
    }
    if (this.#length === this.#begins.length) {
      this.#begins = doubled(this.#begins);
      this.#ends = doubled(this.#ends);
    }
    this.#begins[this.#length] = begin;
    this.#ends[this.#length] = end;
    this.#length += 1;
  }

  /** Sorted, disjoint runs of coverage ≥ 1, neighbours of equal coverage merged. */
  coverage(): CoverageRun[] {
    const denseRuns = this.#denseCoverage();
    if (this.#length === 0) return denseRuns;
    if (denseRuns.length === 0) return this.#sortedCoverage();
    // Rare (a range outside the dense blocks): the dense runs join the other ranges, once per reference.
    const all = new ReferenceRuns();
    for (let index = 0; index < this.#length; index++) all.#addRange(this.#begins[index]!, this.#ends[index]!);
    for (const run of denseRuns) for (let count = 0; count < run.count; count++) all.#addRange(run.begin, run.end);
    return all.#sortedCoverage();
  }

  #denseCoverage(): CoverageRun[] {
    return this.#extra === undefined ? this.#onceCoverage() : this.#countCoverage(this.#denseCounts(this.#extra));
  }

  /** No block referenced twice: the runs of set bits, count 1, a whole word at a time where it is all set or all clear. */
  #onceCoverage(): CoverageRun[] {
    const once = this.#once;
    const end = this.#denseEnd;
    const runs: CoverageRun[] = [];
    const isSet = (blockNr: number): boolean => (once[blockNr >>> 5]! & (1 << (blockNr & 31))) !== 0;
    let blockNr = Math.min(this.#denseBegin, end);
    while (blockNr < end) {
      const set = isSet(blockNr);
      const wholeWord = set ? -1 : 0;
      let runEnd = blockNr + 1;
      while (runEnd < end) {
        if ((runEnd & 31) === 0 && runEnd + 32 <= end && once[runEnd >>> 5] === wholeWord) runEnd += 32;
        else if (isSet(runEnd) === set) runEnd++;
        else break;
      }
      if (set) runs.push({ begin: blockNr, end: runEnd, count: 1 });
      blockNr = runEnd;
    }
    return runs;
  }

  /** Each touched dense block's count as a byte (DENSE_COUNT_SATURATED: continued in #overflow). */
  #denseCounts(extra: Uint8Array): Uint8Array {
    const counts = extra.slice(0, this.#denseEnd);
    const once = this.#once;
    for (let blockNr = Math.min(this.#denseBegin, this.#denseEnd); blockNr < this.#denseEnd; blockNr++) {
      if ((once[blockNr >>> 5]! & (1 << (blockNr & 31))) !== 0) counts[blockNr] = counts[blockNr]! + 1;
    }
    return counts;
  }

  #countCoverage(dense: Uint8Array): CoverageRun[] {
    const end = this.#denseEnd;
    const runs: CoverageRun[] = [];
    let previous: CoverageRun | undefined;
    // Blocks of one count are taken a run at a time by a loop that only compares bytes: a pool's
    // references are mostly long runs of count 1 (a scattered pool's too: every data block once).
    let blockNr = Math.min(this.#denseBegin, end);
    while (blockNr < end) {
      const byte = dense[blockNr]!;
      let runEnd = sameByteRunEnd(dense, blockNr + 1, end, byte);
      if (byte === 0) {
        blockNr = runEnd;
        continue;
      }
      // A saturated block's count continues in the overflow map: one block at a time.
      if (byte === DENSE_COUNT_SATURATED) runEnd = blockNr + 1;
      const count = byte === DENSE_COUNT_SATURATED ? byte + (this.#overflow.get(blockNr) ?? 0) : byte;
      if (previous !== undefined && previous.end === blockNr && previous.count === count) previous.end = runEnd;
      else runs.push((previous = { begin: blockNr, end: runEnd, count }));
      blockNr = runEnd;
    }
    return runs;
  }

  #sortedCoverage(): CoverageRun[] {
    const begins = this.#begins.slice(0, this.#length).sort();
    const ends = this.#ends.slice(0, this.#length).sort();
    const runs: CoverageRun[] = [];
    let count = 0;
    let b = 0;
    let e = 0;
    while (e < ends.length) {
      const point = b < begins.length ? Math.min(begins[b]!, ends[e]!) : ends[e]!;
      while (b < begins.length && begins[b] === point) {
        count += 1;
        b += 1;
      }
      while (e < ends.length && ends[e] === point) {
        count -= 1;
        e += 1;
      }
      if (count === 0) continue;
      const next = b < begins.length ? Math.min(begins[b]!, ends[e]!) : ends[e]!;
      const previous = runs[runs.length - 1];
      if (previous !== undefined && previous.end === point && previous.count === count) previous.end = next;
      else runs.push({ begin: point, end: next, count });
    }
    assert(count === 0, 'the data reference sweep did not return to zero');
    return runs;
  }
}

/** Bytes compared one by one before a run is taken to be long. */
const RUN_BY_BYTE_BYTES = 64;
/** Bytes of a long run compared at a time. */
const RUN_CHUNK_BYTES = 4096;
/** A chunk of each byte value met in a long run, to compare runs against. */
const byteChunks = new Map<number, Buffer>();

/**
 * Where the run of `byte` that reaches `begin` ends (at most `end`). A long run is compared a chunk
 * at a time against a chunk of that byte (a native memcmp): a pool's references are mostly long
 * runs of count 1, and a loop over every byte ran cold, unoptimized, for most of its million blocks.
 */
function sameByteRunEnd(bytes: Uint8Array, begin: number, end: number, byte: number): number {
  let at = begin;
  const byByteEnd = Math.min(end, begin + RUN_BY_BYTE_BYTES);
  while (at < byByteEnd && bytes[at] === byte) at++;
  if (at < byByteEnd || at === end) return at;
  let chunk = byteChunks.get(byte);
  if (chunk === undefined) byteChunks.set(byte, (chunk = Buffer.alloc(RUN_CHUNK_BYTES, byte)));
  while (at + RUN_CHUNK_BYTES <= end && Buffer.from(bytes.buffer, bytes.byteOffset + at, RUN_CHUNK_BYTES).equals(chunk)) at += RUN_CHUNK_BYTES;
  while (at < end && bytes[at] === byte) at++;
  return at;
}
