// A block file in memory: for tests, benchmarks and the simulator's pristine image.
import type { BlockFile } from './block-file.ts';
import { ThinError, assert } from '../errors.ts';

export class MemoryBlockFile implements BlockFile {
  readonly description: string;
  #bytes: Uint8Array;
  #sizeBytes: number;
  #closed = false;

  constructor(sizeBytes = 0, description = 'memory') {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, `bad memory file size ${sizeBytes}`);
    this.description = description;
    this.#bytes = new Uint8Array(Math.min(sizeBytes, 1 << 20));
    this.#sizeBytes = sizeBytes;
  }

  /** The current contents (a copy), for tests that compare or corrupt images. */
  snapshot(): Uint8Array {
    const copy = new Uint8Array(this.#sizeBytes);
    copy.set(this.#bytes.subarray(0, Math.min(this.#bytes.length, this.#sizeBytes)));
    return copy;
  }

  static from(bytes: Uint8Array, description = 'memory'): MemoryBlockFile {
    const file = new MemoryBlockFile(0, description);
    file.#bytes = new Uint8Array(bytes);
    file.#sizeBytes = bytes.length;
    return file;
  }

  sizeBytes(): number {
    return this.#sizeBytes;
  }

  readSync(target: Uint8Array, offsetBytes: number): void {
    this.#checkOpen();
    checkRange(offsetBytes, target.length);
    target.fill(0);
    if (offsetBytes < this.#bytes.length) {
      target.set(this.#bytes.subarray(offsetBytes, Math.min(offsetBytes + target.length, this.#bytes.length)));
    }
  }

  async read(target: Uint8Array, offsetBytes: number): Promise<void> {
    this.readSync(target, offsetBytes);
  }

  /** Synchronous write, for the simulator that builds crash images. */
  writeSync(source: Uint8Array, offsetBytes: number): void {
    this.#checkOpen();
    checkRange(offsetBytes, source.length);
    const endBytes = offsetBytes + source.length;
    this.#ensureCapacity(endBytes);
    this.#bytes.set(source, offsetBytes);
    if (endBytes > this.#sizeBytes) this.#sizeBytes = endBytes;
  }

  async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    this.writeSync(source, offsetBytes);
  }

  async sync(): Promise<void> {
    this.#checkOpen();
  }

  /** Zeros the range (memory has no backing space to give back, but reads must see the hole). */
  async punch(offsetBytes: number, lengthBytes: number): Promise<boolean> {
    this.#checkOpen();
    checkRange(offsetBytes, lengthBytes);
    const endBytes = Math.min(offsetBytes + lengthBytes, this.#bytes.length);
    if (offsetBytes < endBytes) this.#bytes.fill(0, offsetBytes, endBytes);
    return true;
  }

  async grow(sizeBytes: number): Promise<void> {
    this.#checkOpen();
    checkRange(sizeBytes, 0);
    if (sizeBytes > this.#sizeBytes) this.#sizeBytes = sizeBytes;
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #ensureCapacity(endBytes: number): void {
    if (endBytes <= this.#bytes.length) return;
    let capacity = Math.max(this.#bytes.length, 1 << 16);
    while (capacity < endBytes) capacity *= 2;
    // Never past the file's size when the write is inside it: a mirrored pool's metadata (two
    // copies, the second written from the middle on) would otherwise double to twice its size.
    capacity = Math.min(capacity, Math.max(endBytes, this.#sizeBytes));
    const grown = new Uint8Array(capacity);
    grown.set(this.#bytes);
    this.#bytes = grown;
  }

  #checkOpen(): void {
    if (this.#closed) throw new ThinError('THIN_CLOSED', `${this.description} is closed`);
  }
}

function checkRange(offsetBytes: number, lengthBytes: number): void {
  assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, `bad offset ${offsetBytes}`);
  assert(Number.isSafeInteger(offsetBytes + lengthBytes), `bad length ${lengthBytes}`);
}
