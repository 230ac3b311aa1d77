// Per-volume range locks: the pool's bio prison (dm-thin's name for it). A request holds the
// virtual blocks it touches for its whole duration, so a copy-on-write never races a write to the
// same block, a read never sees its data block freed and reused under it, and snapshot / resize /
// remove (which lock a volume's whole range) wait for the I/O in flight on that volume.
//
// Grants are first come, first served: a request waits while any earlier waiter overlaps it, so a
// stream of small writes cannot starve a snapshot that waits for the whole volume.
import { assert } from '../errors.ts';

/** Locks the whole volume: block numbers stay below 2^53. */
export const WHOLE_VOLUME_END = Number.MAX_SAFE_INTEGER;

interface Holder {
  begin: number;
  end: number;
}

interface Waiter extends Holder {
  grant: () => void;
}

interface KeyState {
  held: Holder[];
  waiting: Waiter[];
}

export type Release = () => void;

function overlaps(a: Holder, b: Holder): boolean {
  return a.begin < b.end && b.begin < a.end;
}

export class BlockLocks {
  #keys = new Map<number, KeyState>();

  /** How many ranges are held or waited for (for tests and assertions at close). */
  get activeCount(): number {
    let count = 0;
    for (const state of this.#keys.values()) count += state.held.length + state.waiting.length;
    return count;
  }

  /** Locks blocks [begin, end) of `key` (a volume id); resolves with the release function. */
  lock(key: number, begin: number, end: number): Promise<Release> {
    assert(begin < end, `empty lock range [${begin}, ${end})`);
    let state = this.#keys.get(key);
    if (state === undefined) {
      state = { held: [], waiting: [] };
      this.#keys.set(key, state);
    }
    const holder: Holder = { begin, end };
    if (!state.held.some((h) => overlaps(h, holder)) && !state.waiting.some((w) => overlaps(w, holder))) {
      state.held.push(holder);
      return Promise.resolve(this.#releaser(key, state, holder));
    }
    return new Promise<Release>((resolve) => {
      const waiter: Waiter = { begin, end, grant: () => resolve(this.#releaser(key, state, waiter)) };
      state.waiting.push(waiter);
    });
  }

  /** Locks [begin, end) of `key` if that needs no waiting (lock() would grant it at once); else undefined. */
  tryLock(key: number, begin: number, end: number): Release | undefined {
    assert(begin < end, `empty lock range [${begin}, ${end})`);
    let state = this.#keys.get(key);
    if (state === undefined) {
      state = { held: [], waiting: [] };
      this.#keys.set(key, state);
    } else {
      for (const h of state.held) if (h.begin < end && begin < h.end) return undefined;
      for (const w of state.waiting) if (w.begin < end && begin < w.end) return undefined;
    }
    const holder: Holder = { begin, end };
    state.held.push(holder);
    return this.#releaser(key, state, holder);
  }

  /** Runs `work` while holding [begin, end) of `key`. */
  async with<T>(key: number, begin: number, end: number, work: () => Promise<T> | T): Promise<T> {
    const release = await this.lock(key, begin, end);
    try {
      return await work();
    } finally {
      release();
    }
  }

  #releaser(key: number, state: KeyState, holder: Holder): Release {
    let released = false;
    return () => {
      assert(!released, 'block lock released twice');
      released = true;
      const index = state.held.indexOf(holder);
      assert(index >= 0, 'released a block lock that is not held');
      state.held.splice(index, 1);
      this.#grantWaiters(key, state);
    };
  }

  #grantWaiters(key: number, state: KeyState): void {
    const stillWaiting: Waiter[] = [];
    for (const waiter of state.waiting) {
      const blocked = state.held.some((h) => overlaps(h, waiter)) || stillWaiting.some((w) => overlaps(w, waiter));
      if (blocked) {
        stillWaiting.push(waiter);
      } else {
        state.held.push(waiter);
        waiter.grant();
      }
    }
    state.waiting = stillWaiting;
    if (state.held.length === 0 && state.waiting.length === 0) this.#keys.delete(key);
  }
}
