// A block file in memory: for tests, benchmarks and the simulator's pristine image.
import type { BlockFile } from './block-file.ts';
import { ThinError, assert } from '../errors.ts';

/**
 * Bytes are kept in chunks of CHUNK_BYTES made on first write, so a file is as big in memory as
 * the parts of it written: a mirrored pool writes its second metadata copy from the middle of a
 * 136 MiB file on, and one array of the whole size (grown and copied as writes went further) made
 * fresh memory most of the cost of the pool's model test.
 */
const CHUNK_BYTES = 1 << 20;

/** Calls visit for each chunk [offsetBytes, +lengthBytes) touches: its index, the range's start in it, bytes before, bytes in it. */
function eachChunk(offsetBytes: number, lengthBytes: number, visit: (index: number, inChunk: number, done: number, count: number) => void): void {
  for (let done = 0; done < lengthBytes; ) {
    const position = offsetBytes + done;
    const index = Math.floor(position / CHUNK_BYTES);
    const inChunk = position - index * CHUNK_BYTES;
    const count = Math.min(CHUNK_BYTES - inChunk, lengthBytes - done);
    visit(index, inChunk, done, count);
    done += count;
  }
}

export class MemoryBlockFile implements BlockFile {
  readonly description: string;
  /** Chunk i holds bytes [i × CHUNK_BYTES, +CHUNK_BYTES); a chunk never written reads as zeros. */
  #chunks: (Uint8Array | undefined)[] = [];
  #sizeBytes: number;
  #closed = false;

  constructor(sizeBytes = 0, description = 'memory') {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, `bad memory file size ${sizeBytes}`);
    this.description = description;
    this.#sizeBytes = sizeBytes;
  }

  /** The current contents (a copy), for tests that compare or corrupt images. */
  snapshot(): Uint8Array {
    const copy = new Uint8Array(this.#sizeBytes);
    this.#copyOut(copy, 0);
    return copy;
  }

  static from(bytes: Uint8Array, description = 'memory'): MemoryBlockFile {
    const file = new MemoryBlockFile(bytes.length, description);
    file.#copyIn(bytes, 0);
    return file;
  }

  sizeBytes(): number {
    return this.#sizeBytes;
  }

  readSync(target: Uint8Array, offsetBytes: number): void {
    this.#checkOpen();
    checkRange(offsetBytes, target.length);
    this.#copyOut(target, offsetBytes);
  }

  async read(target: Uint8Array, offsetBytes: number): Promise<void> {
    this.readSync(target, offsetBytes);
  }

  /** Synchronous write, for the simulator that builds crash images. */
  writeSync(source: Uint8Array, offsetBytes: number): void {
    this.#checkOpen();
    checkRange(offsetBytes, source.length);
    this.#copyIn(source, offsetBytes);
    const endBytes = offsetBytes + source.length;
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
    eachChunk(offsetBytes, lengthBytes, (index, inChunk, _done, count) => {
      if (count === CHUNK_BYTES) this.#chunks[index] = undefined;
      else this.#chunks[index]?.fill(0, inChunk, inChunk + count);
    });
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

  /** Copies the bytes at offsetBytes into target: zeros where nothing was written. */
  #copyOut(target: Uint8Array, offsetBytes: number): void {
    eachChunk(offsetBytes, target.length, (index, inChunk, done, count) => {
      const chunk = this.#chunks[index];
      if (chunk === undefined) target.fill(0, done, done + count);
      else target.set(chunk.subarray(inChunk, inChunk + count), done);
    });
  }

  #copyIn(source: Uint8Array, offsetBytes: number): void {
    eachChunk(offsetBytes, source.length, (index, inChunk, done, count) => {
      let chunk = this.#chunks[index];
      if (chunk === undefined) {
        chunk = new Uint8Array(CHUNK_BYTES);
        this.#chunks[index] = chunk;
      }
      chunk.set(source.subarray(done, done + count), inChunk);
    });
  }

  #checkOpen(): void {
    if (this.#closed) throw new ThinError('THIN_CLOSED', `${this.description} is closed`);
  }
}

function checkRange(offsetBytes: number, lengthBytes: number): void {
  assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, `bad offset ${offsetBytes}`);
  assert(Number.isSafeInteger(offsetBytes + lengthBytes), `bad length ${lengthBytes}`);
}
