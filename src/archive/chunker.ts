// Content-defined chunking: FastCDC (Xia et al., "FastCDC: a Fast and Efficient Content-Defined
// Chunking Approach for Data Deduplication", USENIX ATC 2016), a gear hash with normalized
// chunking, on plain Uint8Array. Where a chunk ends depends only on the bytes just before the cut,
// so data shifted within a volume (or copied to another one) is cut at the same places and
// deduplicates.
//
// - The gear hash: h = (h << 1) + GEAR[byte], in 32 bits. After 32 steps a byte has left the
//   hash, so a cut depends on the last 32 bytes. A position is a cut when the hash has zeros
//   under a mask of its high bits (those that depend on the most bytes).
// - Normalized chunking (the paper's level 2): below the average size the mask has two bits more
//   than log2(average) (cuts are rare), from the average on two bits fewer (cuts are likely), so
//   sizes cluster around the average. No cut before minBytes (the hash is not even computed
//   there, the paper's "sub-minimum skipping"); a forced cut at maxBytes.
// - GEAR[i] is the first four bytes (big-endian) of SHA-256("thinbd gear " + i): fixed by the
//   store format (docs/format.md, F-AR-CDC-1), since every cut depends on it.
//
// The hot loop keeps to locals and typed arrays, eight bytes per turn: about 2.4 GB/s of one core here.
import { createHash } from 'node:crypto';
import { assert } from '../errors.ts';

export interface ChunkerParams {
  minBytes: number;
  /** A power of two. */
  averageBytes: number;
  maxBytes: number;
}

const GEAR: Int32Array = (() => {
  const table = new Int32Array(256);
  for (let index = 0; index < 256; index += 1) {
    const digest = createHash('sha256').update(`thinbd gear ${index}`).digest();
    table[index] = digest.readInt32BE(0);
  }
  return table;
})();

/** The chunking parameters for an average size: min a quarter of it, max four times (F-AR-CDC-2). */
export function chunkerParams(averageBytes: number): ChunkerParams {
  assert(Number.isSafeInteger(averageBytes) && averageBytes >= 256 && (averageBytes & (averageBytes - 1)) === 0, `average chunk size ${averageBytes}`);
  return { minBytes: averageBytes / 4, averageBytes, maxBytes: averageBytes * 4 };
}

function highBitsMask(bits: number): number {
  assert(bits >= 1 && bits <= 31, `a mask of ${bits} bits`);
  return ~((1 << (32 - bits)) - 1) | 0;
}

/** Whether Chunker.warmUp ran in this thread. */
let warmedUp = false;

export class Chunker {
  readonly params: ChunkerParams;
  readonly #maskSmall: number;
  readonly #maskLarge: number;

  constructor(params: ChunkerParams) {
    const { minBytes, averageBytes, maxBytes } = params;
    assert(minBytes >= 1 && minBytes < averageBytes && averageBytes < maxBytes, `chunk sizes ${minBytes} < ${averageBytes} < ${maxBytes}`);
    // A fresh object of one shape, whatever made `params` (a worker's is a structured clone): `cut`
    // reads it, and the JIT's code for `cut` expects the shape it has seen (see warmUp).
    this.params = { minBytes, averageBytes, maxBytes };
    const bits = Math.log2(averageBytes);
    assert(Number.isInteger(bits), `average chunk size ${averageBytes} is not a power of two`);
    this.#maskSmall = highBitsMask(bits + 2);
    this.#maskLarge = highBitsMask(bits - 2);
  }

  /**
   * Where the chunk that starts at data[begin] ends, looking no further than data[end - 1]: the
   * position after its last byte. When `final` is false and no cut is found before `end` (and the
   * chunk would still be shorter than maxBytes), returns -1: the caller needs more bytes. When
   * `final`, the range's end is a cut.
   */
  cut(data: Uint8Array, begin: number, end: number, final: boolean): number {
    const { minBytes, averageBytes, maxBytes } = this.params;
    const available = end - begin;
    if (available <= minBytes) return final || available === maxBytes ? end : -1;
    const limit = begin + Math.min(available, maxBytes);
    const normal = begin + Math.min(available, averageBytes);
    const gear = GEAR;
    let hash = 0;
    let position = begin + minBytes;
    // Up to the average size with the stricter mask, then with the looser one (the hash runs on).
    // Eight bytes per turn of the loop, then one at a time: the same cuts as one byte per turn,
    // 2.5–3.5 times as fast in V8 (docs/benchmarks.md, "Archive: the chunker's loop and the
    // worker bundle").
    let mask = this.#maskSmall;
    let stop = normal;
    for (let phase = 0; phase < 2; phase += 1) {
      for (const last = stop - 7; position < last; position += 8) {
        hash = ((hash << 1) + gear[data[position]!]!) | 0;
        if ((hash & mask) === 0) return position + 1;
        hash = ((hash << 1) + gear[data[position + 1]!]!) | 0;
        if ((hash & mask) === 0) return position + 2;
        hash = ((hash << 1) + gear[data[position + 2]!]!) | 0;
        if ((hash & mask) === 0) return position + 3;
        hash = ((hash << 1) + gear[data[position + 3]!]!) | 0;
        if ((hash & mask) === 0) return position + 4;
        hash = ((hash << 1) + gear[data[position + 4]!]!) | 0;
        if ((hash & mask) === 0) return position + 5;
        hash = ((hash << 1) + gear[data[position + 5]!]!) | 0;
        if ((hash & mask) === 0) return position + 6;
        hash = ((hash << 1) + gear[data[position + 6]!]!) | 0;
        if ((hash & mask) === 0) return position + 7;
        hash = ((hash << 1) + gear[data[position + 7]!]!) | 0;
        if ((hash & mask) === 0) return position + 8;
      }
      for (; position < stop; position += 1) {
        hash = ((hash << 1) + gear[data[position]!]!) | 0;
        if ((hash & mask) === 0) return position + 1;
      }
      mask = this.#maskLarge;
      stop = limit;
    }
    if (limit - begin === maxBytes || final) return limit;
    return -1;
  }

  /**
   * Runs `cut` over a few hundred small chunks of fixed bytes, once per thread, so that the JIT
   * has seen every way through it before it optimizes it. V8 optimizes `cut` while its first long
   * loop runs (on-stack replacement), when only the loop has type feedback; each path reached for
   * the first time after that (a return site of the unrolled loop, the byte-at-a-time tail before
   * a range's end, a forced cut at the maximum) deoptimizes it, and it runs unoptimized (about
   * 70 MB/s instead of 2 GB/s) until it is compiled again. A fresh worker thread spent the first
   * 1–2 MB of its jobs so: 15–35 ms for each of pack's first jobs of 400 KB (docs/benchmarks.md,
   * "Archive: the incremental's pipeline"). A chunker of 256-byte average runs the same code: a
   * cut in the tail, then ranges of pseudo-random bytes with ends that are not multiples of 8 (the
   * tail's loop), then zeros (no cut: the maximum, and a range's end), ~2 ms here. Cuts do not
   * depend on it.
   */
  static warmUp(): void {
    if (warmedUp) return;
    warmedUp = true;
    const small = new Chunker(chunkerParams(256));
    const data = new Uint8Array(48 * 1024 + 3);
    let seed = 1;
    for (let index = 0; index < 32 * 1024; index += 1) {
      seed = (Math.imul(seed, 1103515245) + 12345) | 0;
      data[index] = seed >>> 24;
    }
    // First a cut in the byte-at-a-time tail, which the ranges below never reach: of eight ends
    // just past a cut, some put it in the tail. Seen only after V8 had optimized `cut` (during
    // the ranges below), it deoptimized `cut` in each worker at its first such cut (about one
    // chunk in a hundred), and V8 compiled it again.
    const cut = small.cut(data, 0, data.length, true);
    for (let end = cut; end < cut + 8; end += 1) small.cut(data, 0, end, true);
    let begin = 0;
    for (let end = 999; begin < data.length; end = Math.min(data.length, end + 997)) {
      while (begin < end) begin = small.cut(data, begin, end, true);
    }
  }

  /** Every chunk length of data taken as one whole range (tests and measurements). */
  lengths(data: Uint8Array): number[] {
    const lengths: number[] = [];
    let begin = 0;
    while (begin < data.length) {
      const end = this.cut(data, begin, data.length, true);
      lengths.push(end - begin);
      begin = end;
    }
    return lengths;
  }
}
