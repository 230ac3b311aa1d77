// Writes waiting for data space (`--when-full queue:SECONDS`): a write that finds no free data
// block, when the pool cannot grow, waits until space is added or freed or its time is up, then
// tries again; NBD clients see latency instead of errors, as dm-thin's queue_if_no_space does
// (its no_space_timeout, 60 s by default, then errors the I/O). Reads, flushes, discards and
// removes never wait here, so what frees space always runs.
//
// Space is added or freed by events the engine reports here (wake): a commit that makes frees
// reusable, growth, a raised limit (`pool set`, `pool resize`). Every waiter then tries again; the
// ones that still find nothing wait on, within the time they had. Close ends every wait with
// THIN_CLOSED; stop(), before a close, makes every write give up now (ENOSPC) instead, so that a
// server stopping answers them rather than cutting their clients off.
import { ThinError, assert } from '../errors.ts';

interface Waiter {
  resolve(woken: boolean): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

export class WritesWaitingForSpace {
  readonly #waiters = new Set<Waiter>();
  #closed = false;
  #stopped = false;
  /** Writes that waited, since open (for status). */
  #waitedCount = 0;

  /** Writes waiting now. */
  get count(): number {
    return this.#waiters.size;
  }

  get waitedCount(): number {
    return this.#waitedCount;
  }

  /**
   * Waits until wake() (resolves true: try again) or the deadline (resolves false: give up).
   * Rejects with THIN_CLOSED when the pool closes meanwhile.
   */
  wait(deadlineMs: number, nowMs: number = Date.now()): Promise<boolean> {
    if (this.#closed) return Promise.reject(closedError());
    if (this.#stopped) return Promise.resolve(false);
    const delayMs = deadlineMs - nowMs;
    if (delayMs <= 0) return Promise.resolve(false);
    this.#waitedCount += 1;
    return new Promise<boolean>((resolve, reject) => {
      const waiter: Waiter = {
        resolve: (woken) => {
          clearTimeout(waiter.timer);
          this.#waiters.delete(waiter);
          resolve(woken);
        },
        reject: (error) => {
          clearTimeout(waiter.timer);
          this.#waiters.delete(waiter);
          reject(error);
        },
        timer: setTimeout(() => waiter.resolve(false), delayMs),
      };
      this.#waiters.add(waiter);
    });
  }

  /** Space was added or freed: every waiter tries again. */
  wake(): void {
    for (const waiter of [...this.#waiters]) waiter.resolve(true);
  }

  /** Writes no longer wait (the pool is about to close): each waiting gives up now, as at its deadline. */
  stop(): void {
    this.#stopped = true;
    for (const waiter of [...this.#waiters]) waiter.resolve(false);
  }

  /** Whether stop() was called: a write that gave up did so because of it, not its deadline. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** The pool is closing: no write waits any more. */
  close(): void {
    this.#closed = true;
    for (const waiter of [...this.#waiters]) waiter.reject(closedError());
  }

  assertInvariants(): void {
    assert(!this.#closed || this.#waiters.size === 0, `${this.#waiters.size} writes wait for space in a closed pool`);
  }
}

function closedError(): ThinError {
  return new ThinError('THIN_CLOSED', 'The pool closed while a write waited for data space');
}
