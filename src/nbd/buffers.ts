// Memory for payloads: a pool of reusable buffers and a byte budget shared by all connections.
// Payload buffers live from a request's header to its reply's write callback; reusing them keeps
// the hot path free of 32 MiB allocations, and the budget keeps the sum of them bounded whatever
// the clients do.

import { assert } from '../errors.ts';

/** Buffers below this size come from Node's own slab (Buffer.allocUnsafe): no point pooling them. */
const POOLED_BYTES_MIN = 4096;

/**
 * Free lists by power-of-two size class. A buffer handed out is at least the size asked for;
 * give the same buffer back with release(). Free buffers kept are capped at `retainedBytesMax`.
 */
export class BufferPool {
  readonly #free = new Map<number, Buffer[]>();
  readonly #retainedBytesMax: number;
  #retainedBytes = 0;

  constructor(retainedBytesMax: number) {
    this.#retainedBytesMax = retainedBytesMax;
  }

  acquire(sizeBytes: number): Buffer {
    if (sizeBytes < POOLED_BYTES_MIN) return Buffer.allocUnsafe(sizeBytes);
    const classBytes = sizeClass(sizeBytes);
    const buffer = this.#free.get(classBytes)?.pop();
    if (buffer !== undefined) {
      this.#retainedBytes -= classBytes;
      return buffer;
    }
    return Buffer.allocUnsafeSlow(classBytes);
  }

  release(buffer: Buffer): void {
    const classBytes = buffer.length;
    if (classBytes < POOLED_BYTES_MIN || sizeClass(classBytes) !== classBytes) return;
    if (this.#retainedBytes + classBytes > this.#retainedBytesMax) return;
    let list = this.#free.get(classBytes);
    if (list === undefined) this.#free.set(classBytes, (list = []));
    list.push(buffer);
    this.#retainedBytes += classBytes;
  }

  get retainedBytes(): number {
    return this.#retainedBytes;
  }
}

function sizeClass(sizeBytes: number): number {
  return 2 ** Math.ceil(Math.log2(sizeBytes));
}

/**
 * A count of bytes that may be held at once. tryAcquire never waits; a caller that fails
 * registers a waiter and is called back (in order) when bytes are released.
 */
export class ByteBudget {
  readonly limitBytes: number;
  #usedBytes = 0;
  readonly #waiters = new Set<() => void>();

  constructor(limitBytes: number) {
    assert(limitBytes > 0, `byte budget limit ${limitBytes} must be positive`);
    this.limitBytes = limitBytes;
  }

  get usedBytes(): number {
    return this.#usedBytes;
  }

  /** Takes `bytes` if they fit; a request bigger than the whole budget fits only when it is idle. */
  tryAcquire(bytes: number): boolean {
    if (this.#usedBytes > 0 && this.#usedBytes + bytes > this.limitBytes) return false;
    this.#usedBytes += bytes;
    return true;
  }

  release(bytes: number): void {
    this.#usedBytes -= bytes;
    assert(this.#usedBytes >= 0, `byte budget released more than acquired (${this.#usedBytes})`);
    if (this.#waiters.size === 0) return;
    for (const waiter of [...this.#waiters]) {
      this.#waiters.delete(waiter);
      waiter();
    }
  }

  /** Calls `waiter` once, at the next release. */
  wait(waiter: () => void): void {
    this.#waiters.add(waiter);
  }

  cancelWait(waiter: () => void): void {
    this.#waiters.delete(waiter);
  }
}
