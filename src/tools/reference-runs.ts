// Data block ranges, each one reference, swept into runs of constant coverage: the data
// reference counts that mappings imply. The checker compares them with the data space map; restore
// builds the data space map from them in one ordered pass instead of one update per mapping.
import { assert } from '../errors.ts';
import type { CoverageRun } from '../pool/ranges.ts';

/**
 * Kept in typed arrays and sorted natively, because a pool has millions of references: an object
 * and a map entry per reference (pool/ranges.ts coverageRuns) cost several times the rest of a check.
 */
export class ReferenceRuns {
  #begins = new Float64Array(1024);
  #ends = new Float64Array(1024);
  #length = 0;

  add(begin: number, end: number): void {
    // A range that continues the previous one is joined to it (the sweep's sums are the same).
    if (this.#length > 0 && this.#ends[this.#length - 1] === begin) {
      this.#ends[this.#length - 1] = end;
      return;
    }
    if (this.#length === this.#begins.length) {
      const begins = new Float64Array(this.#length * 2);
      begins.set(this.#begins);
      this.#begins = begins;
      const ends = new Float64Array(this.#length * 2);
      ends.set(this.#ends);
      this.#ends = ends;
    }
    this.#begins[this.#length] = begin;
    this.#ends[this.#length] = end;
    this.#length += 1;
  }

  /** Sorted, disjoint runs of coverage ≥ 1, neighbours of equal coverage merged. */
  coverage(): CoverageRun[] {
    const begins = this.#begins.subarray(0, this.#length).sort();
    const ends = this.#ends.subarray(0, this.#length).sort();
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
