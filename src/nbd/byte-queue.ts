// Bytes received and not yet parsed: the chunks as the socket delivered them, consumed from the
// front without concatenating them (a 32 MiB WRITE payload is copied once, into its buffer).
// Chunks may be views of a read buffer the socket reuses (NbdConnection.receiveTransient): then
// detach() copies what is left before the buffer is read into again.

import { assert } from '../errors.ts';

export class ByteQueue {
  #chunks: Buffer[] = [];
  /** Index in #chunks of the first chunk with unconsumed bytes. */
  #head = 0;
  /** Bytes of #chunks[#head] already consumed. */
  #headOffsetBytes = 0;
  #lengthBytes = 0;
  /** The last chunk is a view of a buffer the caller reuses (pushTransient). */
  #lastIsTransient = false;

  get lengthBytes(): number {
    return this.#lengthBytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#lengthBytes += chunk.length;
  }

  /** The next `count` bytes without consuming them: a view when they sit in one chunk, else a copy. */
  peek(count: number): Buffer {
    assert(count <= this.#lengthBytes, `peek of ${count} bytes with ${this.#lengthBytes} queued`);
    const first = this.#chunks[this.#head];
    assert(first !== undefined || count === 0, 'byte queue head missing');
    if (first === undefined) return Buffer.alloc(0);
    if (first.length - this.#headOffsetBytes >= count) {
      return first.subarray(this.#headOffsetBytes, this.#headOffsetBytes + count);
    }
    const copy = Buffer.allocUnsafe(count);
    this.#copy(copy, 0, count, false);
    return copy;
  }

  /** Consumes the next `count` bytes and returns them (see peek). */
  take(count: number): Buffer {
    const bytes = this.peek(count);
    this.skip(count);
    return bytes;
  }

  /** Moves the next `count` bytes into target at targetOffsetBytes, consuming them. */
  takeInto(target: Uint8Array, targetOffsetBytes: number, count: number): void {
    assert(count <= this.#lengthBytes, `take of ${count} bytes with ${this.#lengthBytes} queued`);
    this.#copy(target, targetOffsetBytes, count, true);
  }

  skip(count: number): void {
    assert(count <= this.#lengthBytes, `skip of ${count} bytes with ${this.#lengthBytes} queued`);
    let left = count;
    while (left > 0) {
      const chunk = this.#chunks[this.#head];
      assert(chunk !== undefined, 'byte queue ran out of chunks');
      const available = chunk.length - this.#headOffsetBytes;
      const step = Math.min(available, left);
      left -= step;
      this.#advance(chunk, step);
    }
    this.#lengthBytes -= count;
  }

  /** Queues a view of a buffer the caller will reuse; detach() must run before it does. */
  pushTransient(chunk: Buffer): void {
    assert(!this.#lastIsTransient, 'a second transient chunk before detach()');
    if (chunk.length === 0) return;
    this.push(chunk);
    this.#lastIsTransient = true;
  }

  /**
   * Copies what is left of the chunk queued by pushTransient into memory of its own; the chunks
   * before it are owned already and stay as they are.
   */
  detach(): void {
    if (!this.#lastIsTransient) return;
    this.#lastIsTransient = false;
    const index = this.#chunks.length - 1;
    if (index < this.#head) return; // consumed whole
    const start = index === this.#head ? this.#headOffsetBytes : 0;
    this.#chunks[index] = Buffer.from(this.#chunks[index]!.subarray(start));
    if (index === this.#head) this.#headOffsetBytes = 0;
  }

  clear(): void {
    this.#lastIsTransient = false;
    this.#chunks = [];
    this.#head = 0;
    this.#headOffsetBytes = 0;
    this.#lengthBytes = 0;
  }

  #copy(target: Uint8Array, targetOffsetBytes: number, count: number, consume: boolean): void {
    let left = count;
    let position = targetOffsetBytes;
    let index = this.#head;
    let offset = this.#headOffsetBytes;
    while (left > 0) {
      const chunk = this.#chunks[consume ? this.#head : index];
      const start = consume ? this.#headOffsetBytes : offset;
      assert(chunk !== undefined, 'byte queue ran out of chunks');
      const step = Math.min(chunk.length - start, left);
      target.set(chunk.subarray(start, start + step), position);
      position += step;
      left -= step;
      if (consume) this.#advance(chunk, step);
      else if (start + step === chunk.length) {
        index++;
        offset = 0;
      } else offset = start + step;
    }
    if (consume) this.#lengthBytes -= count;
  }

  #advance(chunk: Buffer, step: number): void {
    this.#headOffsetBytes += step;
    if (this.#headOffsetBytes === chunk.length) {
      this.#head++;
      this.#headOffsetBytes = 0;
      // Drop consumed chunks now and then, not on every step: shifting an array is O(n).
      if (this.#head >= 64 || this.#head === this.#chunks.length) {
        this.#chunks = this.#chunks.slice(this.#head);
        this.#head = 0;
      }
    }
  }
}
