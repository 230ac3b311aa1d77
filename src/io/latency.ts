// Latency statistics of one kind of I/O (reads, writes or syncs of one file), as dm-remap reports
// them: count, average, minimum, maximum, standard deviation and the 95th and 99th percentiles.
//
// Percentiles come from a log-linear histogram (eight buckets per power of two of microseconds,
// so a reported percentile is within 1/8 of the true one) rather than from kept samples: memory
// stays a fixed 2.3 KiB per statistic for the life of a server, and recording is a few
// arithmetic operations. Average and deviation are exact (sums of values and of squares).
import { assert } from '../errors.ts';

/** Buckets per power of two: a percentile lands within 12.5 % of the true value. */
const SUB_BUCKETS = 8;
/** Powers of two of microseconds covered: 1 µs to 2^36 µs (19 hours); longer ones share the last bucket. */
const OCTAVES = 36;
const BUCKET_COUNT = OCTAVES * SUB_BUCKETS;

export interface LatencySummary {
  count: number;
  /** Milliseconds; 0 when count is 0. */
  avgMs: number;
  minMs: number;
  maxMs: number;
  p95Ms: number;
  p99Ms: number;
  stddevMs: number;
}

export class LatencyStats {
  #count = 0;
  #sumUs = 0;
  #sumSquaresUs = 0;
  #minUs = Infinity;
  #maxUs = 0;
  readonly #buckets = new Float64Array(BUCKET_COUNT);

  get count(): number {
    return this.#count;
  }

  /** Records one operation that took `microseconds`. */
  record(microseconds: number): void {
    const us = microseconds > 0 ? microseconds : 0;
    this.#count += 1;
    this.#sumUs += us;
    this.#sumSquaresUs += us * us;
    if (us < this.#minUs) this.#minUs = us;
    if (us > this.#maxUs) this.#maxUs = us;
    this.#buckets[bucketOf(us)]! += 1;
  }

  /** The value below which `fraction` of the recorded operations lie (the bucket's upper edge, capped by the maximum). */
  percentileUs(fraction: number): number {
    assert(fraction > 0 && fraction <= 1, `bad percentile ${fraction}`);
    if (this.#count === 0) return 0;
    const rank = Math.ceil(fraction * this.#count);
    let seen = 0;
    for (let bucket = 0; bucket < BUCKET_COUNT; bucket++) {
      seen += this.#buckets[bucket]!;
      if (seen >= rank) return Math.min(this.#maxUs, Math.max(this.#minUs, upperEdgeUs(bucket)));
    }
    return this.#maxUs;
  }

  summary(): LatencySummary {
    const count = this.#count;
    if (count === 0) return { count: 0, avgMs: 0, minMs: 0, maxMs: 0, p95Ms: 0, p99Ms: 0, stddevMs: 0 };
    const meanUs = this.#sumUs / count;
    const varianceUs = Math.max(0, this.#sumSquaresUs / count - meanUs * meanUs);
    const ms = (us: number): number => Math.round(us) / 1000;
    return {
      count,
      avgMs: ms(meanUs),
      minMs: ms(this.#minUs),
      maxMs: ms(this.#maxUs),
      p95Ms: ms(this.percentileUs(0.95)),
      p99Ms: ms(this.percentileUs(0.99)),
      stddevMs: ms(Math.sqrt(varianceUs)),
    };
  }
}

/** Bucket b covers [edge(b-1), edge(b)): below 1 µs in bucket 0; sub-bucket s of octave o starts at 2^o (1 + s/8). */
function bucketOf(us: number): number {
  if (us < 1) return 0;
  const octave = Math.floor(Math.log2(us));
  if (octave >= OCTAVES) return BUCKET_COUNT - 1;
  const sub = Math.min(SUB_BUCKETS - 1, Math.floor((us / 2 ** octave - 1) * SUB_BUCKETS));
  return octave * SUB_BUCKETS + sub;
}

function upperEdgeUs(bucket: number): number {
  const octave = Math.floor(bucket / SUB_BUCKETS);
  const sub = bucket % SUB_BUCKETS;
  return 2 ** octave * (1 + (sub + 1) / SUB_BUCKETS);
}
