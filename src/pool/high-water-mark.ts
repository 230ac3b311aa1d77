// The data high-water mark (docs/format.md "Space and the data high-water mark", F-POOL-40): data
// blocks at or above the mark in the last durable superblock have never been written, so after a
// crash nothing above it holds data, and below it a reused block may hold anything.
//
// Three values move up, never down, and always keep  durable ≤ sealed ≤ target ≤ blockCount:
// - target:  what the next commit will write; raiseTarget() moves it ahead of the writes;
// - sealed:  what the transaction sealed last records (seal(), when a commit seals);
// - durable: what the last durable superblock records (committed(), when that commit finishes).
// A write to a block at or above `durable` waits for a commit that covers it (DataPath).
import { assert } from '../errors.ts';

export class HighWaterMark {
  #blockCount: number;
  #durable: number;
  #sealed: number;
  #target: number;

  constructor(mark: number, blockCount: number) {
    this.#blockCount = blockCount;
    this.#durable = mark;
    this.#sealed = mark;
    this.#target = mark;
    this.assertInvariants();
  }

  /** The data block count the marks stay within (it grows with the data space). */
  get blockCount(): number {
    return this.#blockCount;
  }

  /** The data space grew: the marks may go up to blockCount. */
  grow(blockCount: number): void {
    assert(Number.isSafeInteger(blockCount) && blockCount >= this.#blockCount, `the data space cannot shrink to ${blockCount} blocks`);
    this.#blockCount = blockCount;
  }

  get durable(): number {
    return this.#durable;
  }

  get sealed(): number {
    return this.#sealed;
  }

  get target(): number {
    return this.#target;
  }

  /** The next commit must write a mark the last sealed transaction does not hold. */
  get raisePending(): boolean {
    return this.#target !== this.#sealed;
  }

  /** The next commit raises the mark to `target` blocks (at most blockCount). Returns the old target. */
  raiseTarget(target: number): number {
    const from = this.#target;
    this.#target = Math.max(from, Math.min(this.#blockCount, target));
    return from;
  }

  /** A commit seals the target into its transaction; returns the mark it records. */
  seal(): number {
    this.#sealed = this.#target;
    return this.#sealed;
  }

  /** The commit that sealed `mark` is durable. */
  committed(mark: number): void {
    assert(mark <= this.#sealed, `committed high-water mark ${mark} was never sealed (${this.#sealed})`);
    this.#durable = Math.max(this.#durable, mark);
  }

  assertInvariants(): void {
    assert(
      this.#durable <= this.#sealed && this.#sealed <= this.#target && this.#target <= this.#blockCount,
      `high-water marks out of order: durable ${this.#durable}, sealed ${this.#sealed}, target ${this.#target}, blocks ${this.#blockCount}`,
    );
  }
}
