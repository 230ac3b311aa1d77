// File data from the archive goes straight into the volume, file after file in archive order, each
// file in whole 4 KiB blocks from where the previous one ended: long contiguous runs, one extent
// per file (more only past 128 MiB, or for sparse files, whose holes take no blocks). Bytes are
// gathered in a few large buffers that are written whole; the first buffer ends at a pool-block
// boundary so that every later write covers whole pool blocks and never reads before it writes.
//
// A file of a pool block or more starts at a pool-block boundary (and so does each layer): then its
// whole pool blocks hold its bytes and nothing else, the same in every image that has the file, so
// the pool can store them once (block-sharing.ts, docs/image.md "Sharing").
//
// The per-piece calls (FileData.write, DataStream.append) return a promise only when they must
// wait (a buffer to hand on or to take): an image has tens of thousands of small files, and an
// async call per piece was most of the garbage an import made.
import { ThinError, assert, type ThinErrorCode } from '../errors.ts';
import type { BufferPool, WriteQueue } from './block-target.ts';
import { BLOCK_SIZE_BYTES, EXTENT_LENGTH_BLOCKS_MAX, LOGICAL_BLOCKS_MAX } from './ext4/format.ts';

export interface DataStreamOptions {
  /** First fs block of the data region. */
  beginBlock: number;
  /** The data may not reach this block (the size the volume may hold). */
  limitBlock: number;
  /**
   * What limitBlock is, ending the error that stops a stream running into it ("the image's files
   * need at least N bytes of data; " + this): "--size 8388608 leaves at most 4194304 bytes for data".
   */
  limitReason: string;
  /**
   * How many bytes the stream may write from where it starts or resumes writing (the pool's free
   * data space), and what that is ("the pool has N bytes of free data space"). Bytes skipped over
   * (layers whose data the volume already holds) do not count: they take no new space; nor do
   * bytes written that `sharedBytes` says were found in the pool and shared instead (so far: writes
   * still in flight are not yet counted, which errs on the side of refusing). Zero blocks do count,
   * though they are not stored: the free space bounds how much an archive of zeros makes us read.
   */
  newDataLimit?: { bytes: number; reason: string; sharedBytes?: () => number } | undefined;
  /** Pool block size: buffers are written in whole pool blocks. */
  alignBytes: number;
  buffers: BufferPool;
}

export type Fail = (problem: string) => ThinError;

/** How an import that the pool has no room for says so (import.ts adds what to do). */
export const NO_SPACE_HEADING = 'Not enough free space in the pool for the image';

/** `error` (an archive error naming where: "Invalid image: entry 'x' at byte N: …") under another heading and code. */
function retitled(error: ThinError, code: ThinErrorCode, heading: string): ThinError {
  return new ThinError(code, `${heading}: ${error.message.replace(/^Invalid image: /, '')}`);
}

/** The data region being filled. */
export class DataStream {
  readonly #queue: WriteQueue;
  readonly #options: DataStreamOptions;
  readonly #bufferBytes: number;
  /** Where the data may not reach now: limitBlock, or newDataLimit past #writeStartBytes. */
  #limitBytes = 0;
  #limitIsNewData = false;
  /** Where the stream started, or last resumed, writing. */
  #writeStartBytes: number;
  #buffer: Uint8Array | undefined;
  /** Volume byte offset of the buffer's first byte, and how much of it is filled. */
  #bufferOffsetBytes: number;
  #filledBytes = 0;
  #capacityBytes: number;
  /** Replaying a layer whose data the volume already holds: the cursor moves, nothing is written. */
  #skipping = false;

  constructor(queue: WriteQueue, options: DataStreamOptions) {
    this.#bufferBytes = options.buffers.bufferBytes;
    assert(this.#bufferBytes % options.alignBytes === 0 && options.alignBytes % BLOCK_SIZE_BYTES === 0, 'data buffers must be whole pool blocks');
    this.#queue = queue;
    this.#options = options;
    this.#bufferOffsetBytes = options.beginBlock * BLOCK_SIZE_BYTES;
    this.#writeStartBytes = this.#bufferOffsetBytes;
    this.#capacityBytes = this.#bufferBytes - (this.#bufferOffsetBytes % options.alignBytes);
    this.#setLimit();
  }

  #setLimit(): void {
    const absoluteBytes = this.#options.limitBlock * BLOCK_SIZE_BYTES;
    const newData = this.#options.newDataLimit;
    const newDataEndBytes = newData === undefined || this.#skipping ? Infinity : this.#writeStartBytes + newData.bytes + (newData.sharedBytes?.() ?? 0);
    this.#limitIsNewData = newDataEndBytes < absoluteBytes;
    this.#limitBytes = Math.min(absoluteBytes, newDataEndBytes);
  }

  /**
   * The error for data that would end at `endBytes`, past the limit: naming the entry as `fail`
   * does, but not calling the image invalid, since a larger --size or pool takes it.
   */
  #overLimit(fail: Fail, endBytes: number): ThinError {
    const beginBytes = this.#options.beginBlock * BLOCK_SIZE_BYTES;
    if (this.#limitIsNewData) {
      const layerBytes = this.#writeStartBytes - beginBytes;
      const sharedBytes = this.#options.newDataLimit!.sharedBytes?.() ?? 0;
      const parts = [...(layerBytes > 0 ? [`the ${layerBytes} bytes of its layers`] : []), ...(sharedBytes > 0 ? [`the ${sharedBytes} bytes of its blocks`] : [])];
      const besides = parts.length > 0 ? ` besides ${parts.join(' and ')} already in the pool` : '';
      const problem = `the image's files need at least ${endBytes - this.#writeStartBytes - sharedBytes} bytes of data${besides}; ${this.#options.newDataLimit!.reason}`;
      return retitled(fail(problem), 'THIN_NO_SPACE', NO_SPACE_HEADING);
    }
    const problem = `the image's files need at least ${endBytes - beginBytes} bytes of data; ${this.#options.limitReason}`;
    return retitled(fail(problem), 'THIN_IMAGE_INVALID', 'The image does not fit');
  }

  /**
   * Past the limit as last computed: computed again with the blocks shared since, after the writes
   * in flight (whose blocks may be shared too) when that could change it; refused if still past.
   */
  #checkLimit(fail: Fail, endBytes: number): void | Promise<void> {
    this.#setLimit();
    if (endBytes <= this.#limitBytes) return undefined;
    if (!this.#limitIsNewData || this.#options.newDataLimit?.sharedBytes === undefined) throw this.#overLimit(fail, endBytes);
    return this.#queue.drain().then(() => {
      this.#setLimit();
      if (endBytes > this.#limitBytes) throw this.#overLimit(fail, endBytes);
    });
  }

  /** Volume byte offset where the next byte goes. */
  get cursorBytes(): number {
    return this.#bufferOffsetBytes + this.#filledBytes;
  }

  /** The fs block the next block-aligned write starts at. */
  get cursorBlock(): number {
    assert(this.cursorBytes % BLOCK_SIZE_BYTES === 0, 'the data cursor is inside a block');
    return this.cursorBytes / BLOCK_SIZE_BYTES;
  }

  /** Bytes of the data region filled so far (padding included). */
  get writtenBytes(): number {
    return this.cursorBytes - this.#options.beginBlock * BLOCK_SIZE_BYTES;
  }

  /**
   * From now on (until resumeWriting) the cursor only moves: the data is already in the volume
   * (layers shared with an image imported before). Only at a block boundary.
   */
  async startSkipping(): Promise<void> {
    assert(this.cursorBytes % BLOCK_SIZE_BYTES === 0, 'skipping from inside a block');
    await this.#flushBuffer();
    this.#skipping = true;
    this.#setLimit();
  }

  resumeWriting(): void {
    this.#skipping = false;
    this.#writeStartBytes = this.cursorBytes;
    this.#setLimit();
    this.#capacityBytes = this.#bufferBytes - (this.#bufferOffsetBytes % this.#options.alignBytes);
  }

  get skipping(): boolean {
    return this.#skipping;
  }

  /**
   * Appends `zeros` zero bytes, then `piece` (or, only while skipping, a length: the cursor moves
   * past that many bytes). Returns a promise only when it had to wait for a buffer.
   */
  append(zeros: number, piece: Uint8Array | number, fail: Fail): void | Promise<void> {
    const pieceBytes = typeof piece === 'number' ? piece : piece.length;
    const total = zeros + pieceBytes;
    if (this.cursorBytes + total > this.#limitBytes) {
      const waited = this.#checkLimit(fail, this.cursorBytes + total);
      if (waited !== undefined) return waited.then(() => this.#appendWithin(total, piece, zeros));
    }
    return this.#appendWithin(total, piece, zeros);
  }

  #appendWithin(total: number, piece: Uint8Array | number, zeros: number): void | Promise<void> {
    if (this.#skipping) {
      this.#bufferOffsetBytes += total;
      return undefined;
    }
    assert(typeof piece !== 'number', 'a length without bytes while writing');
    const buffer = this.#buffer;
    if (buffer !== undefined && this.#filledBytes + total < this.#capacityBytes) {
      if (zeros > 0) buffer.fill(0, this.#filledBytes, this.#filledBytes + zeros);
      buffer.set(piece, this.#filledBytes + zeros);
      this.#filledBytes += total;
      return undefined;
    }
    return this.#appendSlowly(zeros, piece);
  }

  async #appendSlowly(zeros: number, piece: Uint8Array): Promise<void> {
    let zerosLeft = zeros;
    let from = 0;
    while (zerosLeft > 0 || from < piece.length) {
      this.#buffer ??= await this.#options.buffers.take();
      const room = this.#capacityBytes - this.#filledBytes;
      if (zerosLeft > 0) {
        const take = Math.min(zerosLeft, room);
        this.#buffer.fill(0, this.#filledBytes, this.#filledBytes + take);
        this.#filledBytes += take;
        zerosLeft -= take;
      } else {
        const take = Math.min(piece.length - from, room);
        this.#buffer.set(from === 0 && take === piece.length ? piece : piece.subarray(from, from + take), this.#filledBytes);
        this.#filledBytes += take;
        from += take;
      }
      if (this.#filledBytes === this.#capacityBytes) await this.#flushBuffer();
    }
  }

  async #flushBuffer(): Promise<void> {
    const full = this.#buffer;
    const filled = this.#filledBytes;
    const offsetBytes = this.#bufferOffsetBytes;
    this.#bufferOffsetBytes += filled;
    this.#filledBytes = 0;
    this.#capacityBytes = this.#bufferBytes - (this.#bufferOffsetBytes % this.#options.alignBytes);
    this.#buffer = undefined;
    if (full === undefined) return;
    if (filled === 0) {
      this.#options.buffers.give(full);
      return;
    }
    await this.#queue.write(offsetBytes, full.subarray(0, filled), () => this.#options.buffers.give(full));
  }

  /** Zero bytes up to the next block boundary. */
  padBlock(fail: Fail): void | Promise<void> {
    const inBlock = this.cursorBytes % BLOCK_SIZE_BYTES;
    if (inBlock === 0) return undefined;
    return this.append(BLOCK_SIZE_BYTES - inBlock, this.#skipping ? 0 : EMPTY, fail);
  }

  /**
   * Moves the cursor to the next pool-block boundary (a layer starts there), writing what is
   * buffered first: the gap is free space, never written.
   */
  async skipToPoolBlock(fail: Fail): Promise<void> {
    const align = this.#options.alignBytes;
    const inBlock = this.cursorBytes % align;
    if (inBlock === 0) return;
    if (this.cursorBytes + (align - inBlock) > this.#limitBytes) await this.#checkLimit(fail, this.cursorBytes + (align - inBlock));
    if (!this.#skipping) await this.#flushBuffer();
    this.#bufferOffsetBytes = this.cursorBytes + (align - inBlock);
    this.#capacityBytes = this.#bufferBytes;
  }

  /** Writes what is buffered and waits for every write (at a block boundary: a layer's end). */
  async flush(): Promise<void> {
    assert(this.cursorBytes % BLOCK_SIZE_BYTES === 0, 'flushing inside a block');
    if (!this.#skipping) await this.#flushBuffer();
    await this.#queue.drain();
  }

  /** Writes what is buffered; the data region ends at cursorBlock. */
  async finish(): Promise<void> {
    assert(this.cursorBytes % BLOCK_SIZE_BYTES === 0, 'the data ends inside a block');
    await this.#flushBuffer();
    await this.#queue.drain();
  }

  /** A writer for the data of a file of sizeBytes (one of a pool block or more starts at a pool-block boundary). */
  file(fail: Fail, sizeBytes = 0): FileData {
    return new FileData(this, fail, sizeBytes >= this.#options.alignBytes ? this.#options.alignBytes : BLOCK_SIZE_BYTES);
  }
}

const EMPTY = new Uint8Array(0);

/** One file's bytes, given in increasing offsets (gaps are holes), and the extents they land in. */
export class FileData {
  readonly #stream: DataStream;
  readonly #fail: Fail;
  /** [logical, physical, length] triples. */
  readonly extents: number[] = [];
  /** Logical byte offset after the last byte given. */
  #endBytes = 0;
  /** Logical block holding the last byte given (-1: none yet). */
  #lastBlock = -1;

  /** Where the file's first block may start: a 4 KiB block boundary, or a pool block's. */
  readonly #firstAlignBytes: number;

  constructor(stream: DataStream, fail: Fail, firstAlignBytes: number) {
    this.#stream = stream;
    this.#fail = fail;
    this.#firstAlignBytes = firstAlignBytes;
  }

  #addBlocks(logical: number, physical: number, count: number): void {
    let left = count;
    let nextLogical = logical;
    let nextPhysical = physical;
    while (left > 0) {
      const last = this.extents.length - 3;
      const extendable =
        last >= 0 &&
        this.extents[last]! + this.extents[last + 2]! === nextLogical &&
        this.extents[last + 1]! + this.extents[last + 2]! === nextPhysical &&
        this.extents[last + 2]! < EXTENT_LENGTH_BLOCKS_MAX;
      const take = Math.min(left, EXTENT_LENGTH_BLOCKS_MAX - (extendable ? this.extents[last + 2]! : 0));
      if (extendable) this.extents[last + 2]! += take;
      else this.extents.push(nextLogical, nextPhysical, take);
      left -= take;
      nextLogical += take;
      nextPhysical += take;
    }
  }

  /**
   * Places `piece` (or, while the stream skips, that many bytes) at offsetBytes of the file.
   * Returns a promise only when the stream had to wait.
   */
  write(offsetBytes: number, piece: Uint8Array | number): void | Promise<void> {
    assert(offsetBytes >= this.#endBytes, 'file data given out of order');
    const lengthBytes = typeof piece === 'number' ? piece : piece.length;
    if (lengthBytes === 0) return undefined;
    const endBytes = offsetBytes + lengthBytes;
    if (Math.ceil(endBytes / BLOCK_SIZE_BYTES) > LOGICAL_BLOCKS_MAX) throw this.#fail('the file is larger than ext4 allows (16 TiB with 4 KiB blocks)');
    const firstBlock = Math.floor(offsetBytes / BLOCK_SIZE_BYTES);
    const cursor = this.#stream.cursorBytes;
    let zeros: number;
    if (this.#lastBlock >= 0 && firstBlock === this.#lastBlock) {
      // The same block as the last byte: fill the gap inside it.
      zeros = offsetBytes - this.#endBytes;
    } else {
      // A new block: finish the current one (up to a pool block for a large file's first), then
      // start at the piece's offset within its block.
      const align = this.#lastBlock < 0 ? this.#firstAlignBytes : BLOCK_SIZE_BYTES;
      const pad = (align - (cursor % align)) % align;
      const physical = (cursor + pad) / BLOCK_SIZE_BYTES;
      zeros = pad + (offsetBytes % BLOCK_SIZE_BYTES);
      this.#addBlocks(firstBlock, physical, 1);
      this.#lastBlock = firstBlock;
    }
    const lastBlock = Math.floor((endBytes - 1) / BLOCK_SIZE_BYTES);
    if (lastBlock > this.#lastBlock) {
      const last = this.extents.length - 3;
      const physicalOfLast = this.extents[last + 1]! + (this.#lastBlock - this.extents[last]!);
      this.#addBlocks(this.#lastBlock + 1, physicalOfLast + 1, lastBlock - this.#lastBlock);
      this.#lastBlock = lastBlock;
    }
    this.#endBytes = endBytes;
    return this.#stream.append(zeros, piece, this.#fail);
  }

  /** The extents of data already in the volume, given as its [offset, length] map (the stream skips). */
  place(map: readonly number[]): void {
    for (let index = 0; index < map.length; index += 2) {
      const pending = this.write(map[index]!, map[index + 1]!);
      assert(pending === undefined, 'placing data waited for a buffer');
    }
  }

  /**
   * Pads the last block; returns the file's extents, final. A copy of exactly their length: the
   * array pushed to has room for ~20 numbers, and a file's extents live as long as the tree (the
   * spare room was 5 of the 31 MB the parsing thread's scavenges promoted on a 638 MiB tar,
   * docs/benchmarks.md "Image import: larger writes").
   */
  finish(): number[] | Promise<number[]> {
    if (this.#lastBlock < 0) return this.extents;
    const pending = this.#stream.padBlock(this.#fail);
    return pending === undefined ? this.extents.slice() : pending.then(() => this.extents.slice());
  }
}
