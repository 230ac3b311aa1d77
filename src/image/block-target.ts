// Where an image is written: a volume in the pool, or (in tests) a plain file. Writes are issued in
// the background with a bound on how many are in flight; the first failure is kept and thrown by
// the next call, so a failed write is never lost.
import { assert } from '../errors.ts';

export interface BlockTarget {
  write(offsetBytes: number, bytes: Uint8Array): Promise<void>;
  /** Afterwards the range reads as zeros (a thin volume unmaps it). */
  discard(offsetBytes: number, lengthBytes: number): Promise<void>;
}

/** Background writes to a target, at most `inFlightMax` at once. */
export class WriteQueue {
  readonly target: BlockTarget;
  readonly #inFlightMax: number;
  readonly #inFlight = new Set<Promise<void>>();
  #failure: unknown;
  #failed = false;
  bytesWritten = 0;

  constructor(target: BlockTarget, inFlightMax: number) {
    assert(inFlightMax >= 1, 'a write queue needs room for one write');
    this.target = target;
    this.#inFlightMax = inFlightMax;
  }

  /**
   * Starts a write; waits while the queue is full. `bytes` must not change until the write
   * completes: `onDone` is called then (whether it succeeded or not).
   */
  async write(offsetBytes: number, bytes: Uint8Array, onDone?: () => void): Promise<void> {
    this.#check();
    while (this.#inFlight.size >= this.#inFlightMax) {
      await Promise.race(this.#inFlight);
      this.#check();
    }
    this.bytesWritten += bytes.length;
    const tracked: Promise<void> = this.target
      .write(offsetBytes, bytes)
      .catch((error: unknown) => {
        if (!this.#failed) {
          this.#failed = true;
          this.#failure = error;
        }
      })
      .finally(() => {
        this.#inFlight.delete(tracked);
        onDone?.();
      });
    this.#inFlight.add(tracked);
  }

  /** Resolves when every write started has completed; throws the first failure. */
  async drain(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.race(this.#inFlight);
    this.#check();
  }

  #check(): void {
    if (this.#failed) throw this.#failure;
  }
}

/**
 * Large buffers made once and handed back when a write of them completes: fresh memory costs a
 * page fault per 4 KiB on first touch (tens of microseconds each on a virtual machine), so an
 * import reuses the same few buffers for all it writes.
 */
export class BufferPool {
  readonly bufferBytes: number;
  readonly #buffersMax: number;
  readonly #free: Uint8Array[] = [];
  #made = 0;
  #waiters: Array<() => void> = [];

  constructor(bufferBytes: number, buffersMax: number) {
    assert(buffersMax >= 1, 'a buffer pool needs a buffer');
    this.bufferBytes = bufferBytes;
    this.#buffersMax = buffersMax;
  }

  /** A pool of the given buffers (shared memory another thread also sees), and no others. */
  static over(buffers: readonly Uint8Array[]): BufferPool {
    const pool = new BufferPool(buffers[0]!.length, buffers.length);
    pool.#made = buffers.length;
    pool.#free.push(...buffers);
    return pool;
  }

  /** A buffer (old contents: callers write every byte they hand on); waits while all are in use. */
  async take(): Promise<Uint8Array> {
    for (;;) {
      const free = this.#free.pop();
      if (free !== undefined) return free;
      if (this.#made < this.#buffersMax) {
        this.#made++;
        return new Uint8Array(this.bufferBytes);
      }
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  give(buffer: Uint8Array): void {
    assert(buffer.length === this.bufferBytes, 'a buffer of another pool');
    this.#free.push(buffer);
    this.#waiters.shift()?.();
  }
}

/**
 * Gathers block-aligned pieces put at increasing, adjacent positions into large writes; a piece
 * that does not continue the current run starts a new one. A buffer goes back to the pool when
 * its write completes, so a write in flight never sees its bytes change.
 */
export class RunWriter {
  readonly #queue: WriteQueue;
  readonly #blockSizeBytes: number;
  readonly #buffers: BufferPool;
  #buffer: Uint8Array | undefined;
  #bufferBlock = 0;
  #filledBytes = 0;

  constructor(queue: WriteQueue, blockSizeBytes: number, buffers: BufferPool) {
    this.#queue = queue;
    this.#blockSizeBytes = blockSizeBytes;
    this.#buffers = buffers;
  }

  /**
   * Puts whole blocks at blockNr. A promise only when the piece must wait (a run ends, a buffer
   * fills, one is taken): a piece that continues the run inside the buffer is copied at once, so a
   * caller with many small pieces (an inode table block, a directory block) skips an await each.
   */
  put(blockNr: number, bytes: Uint8Array): void | Promise<void> {
    assert(bytes.length % this.#blockSizeBytes === 0, 'a run piece must be whole blocks');
    const buffer = this.#buffer;
    if (buffer !== undefined && blockNr === this.#bufferBlock + this.#filledBytes / this.#blockSizeBytes && this.#filledBytes + bytes.length < buffer.length) {
      buffer.set(bytes, this.#filledBytes);
      this.#filledBytes += bytes.length;
      return undefined;
    }
    return this.#putWaiting(blockNr, bytes);
  }

  async #putWaiting(blockNr: number, bytes: Uint8Array): Promise<void> {
    if (this.#buffer !== undefined && blockNr !== this.#bufferBlock + this.#filledBytes / this.#blockSizeBytes) await this.flush();
    let offset = 0;
    while (offset < bytes.length) {
      if (this.#buffer === undefined) {
        this.#buffer = await this.#buffers.take();
        this.#bufferBlock = blockNr + offset / this.#blockSizeBytes;
        this.#filledBytes = 0;
      }
      const take = Math.min(bytes.length - offset, this.#buffer.length - this.#filledBytes);
      this.#buffer.set(offset === 0 && take === bytes.length ? bytes : bytes.subarray(offset, offset + take), this.#filledBytes);
      this.#filledBytes += take;
      offset += take;
      if (this.#filledBytes === this.#buffer.length) await this.flush();
    }
  }

  async flush(): Promise<void> {
    const buffer = this.#buffer;
    if (buffer === undefined) return;
    const bytes = buffer.subarray(0, this.#filledBytes);
    const offsetBytes = this.#bufferBlock * this.#blockSizeBytes;
    this.#buffer = undefined;
    if (bytes.length === 0) {
      this.#buffers.give(buffer);
      return;
    }
    await this.#queue.write(offsetBytes, bytes, () => this.#buffers.give(buffer));
  }
}
