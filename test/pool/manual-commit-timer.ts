// A commit timer a test ticks by hand (PoolOpenOptions.commitTimer): the pool's timer-driven
// commits then happen at the moments the test chooses, not after wall-clock waits that a loaded
// machine stretches, and the crash simulator ticks at seeded points of a trace.
import type { CommitTimer } from '../../src/pool/pool.ts';

export class ManualCommitTimer {
  #ticks: Array<() => Promise<void>> = [];
  /** Ticks delivered to a running pool so far. */
  ticked = 0;

  /** Pass this as PoolOpenOptions.commitTimer. */
  readonly timer: CommitTimer = (tick) => {
    this.#ticks.push(tick);
    return () => {
      this.#ticks = this.#ticks.filter((candidate) => candidate !== tick);
    };
  };

  /** Pools whose timer runs (opened read-write and not closed). */
  get running(): number {
    return this.#ticks.length;
  }

  /** One tick of every running pool's commit timer; resolves when the commits it started have ended. */
  async tick(): Promise<void> {
    const started: Array<Promise<void>> = [];
    for (const tick of [...this.#ticks]) {
      started.push(tick());
      this.ticked += 1;
    }
    await Promise.all(started);
  }
}
