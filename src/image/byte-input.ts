// A pull-based reader over a stream of chunks, for parsers that need exact byte counts (a tar
// header) or want bytes passed through without a copy (file data). Chunks come from a
// ChunkSource; a chunk may be reused by its source after the next pull, so nothing here keeps a
// view of one past the call that received it.
import { ThinError } from '../errors.ts';

/**
 * A source that failed while it was read (a download cut short, a read error): THIN_IO naming
 * the source. The tar reader adds the entry it was reading when the failure came (`inside`).
 */
export class SourceReadError extends ThinError {
  readonly #located: boolean;

  constructor(message: string, options: { cause?: unknown; located?: boolean } = {}) {
    super('THIN_IO', message, { cause: options.cause });
    this.#located = options.located === true;
  }

  /** The same failure, said to have come while reading `where` (once: an outer reader keeps the inner one's place). */
  inside(where: string): SourceReadError {
    return this.#located ? this : new SourceReadError(`${this.message}, while reading ${where}`, { cause: this.cause, located: true });
  }
}

export interface ChunkSource {
  /** The next chunk, or undefined at the end. The chunk may be overwritten once next() is called again. */
  next(): Promise<Uint8Array | undefined>;
  /** Stops early: the rest is not wanted (a download is aborted). */
  close?(): Promise<void>;
  /** Moves past `count` bytes without reading them, where the source can (a file seeks). */
  skip?(count: number): Promise<void>;
}

/** Error for input that ended before `needed` more bytes (the caller names what it was reading). */
export class TruncatedError extends ThinError {
  constructor(message: string) {
    super('THIN_IMAGE_INVALID', message);
  }
}

/**
 * A skip at least this long asks the source to seek (when it can); a shorter one reads through: the
 * source's read-ahead (a chunk of 64 KiB to 2 MiB) is already fetching those bytes, and reading them
 * tells exactly where an input that ends inside them ends.
 */
const SEEK_BYTES_MIN = 64 * 1024;

/** Says why the input ended inside what the caller was passing over: `got` bytes in, or undefined when they were skipped unread. */
export type Truncated = (got: number | undefined) => Error;

export class ByteInput {
  readonly #source: ChunkSource;
  #chunk: Uint8Array = new Uint8Array(0);
  #position = 0;
  #ended = false;
  /**
   * Set by a skip the source made without reading, until the next chunk arrives: the source does
   * not say whether the input went that far, so an end of input here may lie inside the skip.
   */
  #skippedUnread: Truncated | undefined;
  /** Bytes consumed so far. */
  offsetBytes = 0;
  readonly #scratch: Uint8Array;

  constructor(source: ChunkSource, scratchBytes = 64 * 1024) {
    this.#source = source;
    this.#scratch = new Uint8Array(scratchBytes);
  }

  async #fill(): Promise<boolean> {
    while (this.#position >= this.#chunk.length) {
      if (this.#ended) return false;
      const chunk = await this.#source.next();
      if (chunk === undefined) {
        this.#ended = true;
        const skipped = this.#skippedUnread;
        this.#skippedUnread = undefined;
        if (skipped !== undefined) throw skipped(undefined);
        return false;
      }
      this.#skippedUnread = undefined;
      this.#chunk = chunk;
      this.#position = 0;
    }
    return true;
  }

  /** The next `count` bytes when the current chunk holds them all (no waiting), else undefined and nothing consumed. */
  readNow(count: number): Uint8Array | undefined {
    if (this.#chunk.length - this.#position < count) return undefined;
    const view = this.#chunk.subarray(this.#position, this.#position + count);
    this.#position += count;
    this.offsetBytes += count;
    return view;
  }

  /** Skips `count` bytes when the current chunk holds them all; false (nothing skipped) otherwise. */
  skipNow(count: number): boolean {
    if (this.#chunk.length - this.#position < count) return false;
    this.#position += count;
    this.offsetBytes += count;
    return true;
  }

  /**
   * The next `count` bytes (a view valid until the next call), or undefined when the input ends
   * exactly here. Ending part way throws `truncated(got)`.
   */
  async read(count: number, truncated: (got: number) => Error): Promise<Uint8Array | undefined> {
    if (!(await this.#fill())) return undefined;
    if (this.#chunk.length - this.#position >= count) {
      const view = this.#chunk.subarray(this.#position, this.#position + count);
      this.#position += count;
      this.offsetBytes += count;
      return view;
    }
    const target = count <= this.#scratch.length ? this.#scratch.subarray(0, count) : new Uint8Array(count);
    let got = 0;
    while (got < count) {
      if (!(await this.#fill())) throw truncated(got);
      const take = Math.min(count - got, this.#chunk.length - this.#position);
      target.set(this.#chunk.subarray(this.#position, this.#position + take), got);
      this.#position += take;
      got += take;
      this.offsetBytes += take;
    }
    return target;
  }

  /** Passes the next `count` bytes to `sink` in pieces (views valid during the call only). */
  async forward(count: number, sink: (piece: Uint8Array) => void | Promise<void>, truncated: (got: number) => Error): Promise<void> {
    let got = 0;
    while (got < count) {
      if (!(await this.#fill())) throw truncated(got);
      const take = Math.min(count - got, this.#chunk.length - this.#position);
      const piece = this.#chunk.subarray(this.#position, this.#position + take);
      this.#position += take;
      this.offsetBytes += take;
      got += take;
      const pending = sink(piece);
      if (pending !== undefined) await pending;
    }
  }

  /**
   * Moves past the next `count` bytes. An input that ends part way throws `truncated(got)`; after
   * a long skip the source made without reading, the next read that finds the end throws
   * `truncated(undefined)` (where in the skip the input ended is unknown).
   */
  async skip(count: number, truncated: Truncated): Promise<void> {
    const inChunk = Math.min(count, this.#chunk.length - this.#position);
    this.#position += inChunk;
    this.offsetBytes += inChunk;
    const rest = count - inChunk;
    if (rest === 0) return;
    if (rest >= SEEK_BYTES_MIN && this.#source.skip !== undefined && !this.#ended) {
      await this.#source.skip(rest);
      this.offsetBytes += rest;
      this.#skippedUnread = truncated;
      return;
    }
    await this.forward(rest, () => undefined, (got) => truncated(inChunk + got));
  }

  /** Up to `max` bytes that are at hand (a view into the current chunk), or undefined at the end. */
  async readSome(max: number): Promise<Uint8Array | undefined> {
    if (!(await this.#fill())) return undefined;
    const take = Math.min(max, this.#chunk.length - this.#position);
    const view = this.#chunk.subarray(this.#position, this.#position + take);
    this.#position += take;
    this.offsetBytes += take;
    return view;
  }

  /** True when no byte is left. */
  async atEnd(): Promise<boolean> {
    return !(await this.#fill());
  }

  async close(): Promise<void> {
    this.#ended = true;
    await this.#source.close?.();
  }
}
