// Errors with stable codes. Bytes from disk, the network or a file are untrusted: their problems
// are ThinError with a code and context. Broken internal state is a bug: `assert` and stop.

export type ThinErrorCode =
  | 'THIN_CORRUPT_BLOCK' // a metadata block failed its checksum, type, location or pool id
  | 'THIN_CORRUPT_NODE' // a B+tree node's contents break the tree's invariants
  | 'THIN_CORRUPT_SUPERBLOCK' // no superblock copy (or its root) validates
  | 'THIN_NO_SPACE' // no free data block
  | 'THIN_NO_METADATA_SPACE' // no free metadata block
  | 'THIN_IO' // the backing file failed a read, write or sync
  | 'THIN_READ_ONLY' // write to a read-only volume or a pool in read-only / needs-check mode
  | 'THIN_OUT_OF_RANGE' // request past the end of a volume
  | 'THIN_NOT_FOUND' // no such volume, pool or file
  | 'THIN_EXISTS' // a volume or pool by that name already exists
  | 'THIN_INVALID' // an argument is not acceptable (bad name, size, alignment)
  | 'THIN_BUSY' // the pool is locked by another process, or a volume is in use
  | 'THIN_FORMAT' // the pool's (or archive store's) format version is not one this build reads
  | 'THIN_CORRUPT_ARCHIVE' // an archive object is missing, truncated or fails its hash or layout checks
  | 'THIN_INTERRUPTED' // the command was stopped by a signal before it finished
  | 'THIN_NEEDS_CONFIRMATION' // the request would destroy data and was not confirmed (e.g. shrink without --allow-shrink)
  | 'THIN_IMAGE_INVALID' // an image archive is malformed or holds what ext4 or an image may not (names the entry)
  | 'THIN_CLOSED' // the pool or volume was closed
  | 'THIN_LOG_PENDING'; // the delta log holds flushes not yet in the trees, which a read-only reader of the trees would miss

export class ThinError extends Error {
  readonly code: ThinErrorCode;

  constructor(code: ThinErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ThinError';
    this.code = code;
  }
}

export function isThinError(error: unknown, code?: ThinErrorCode): error is ThinError {
  return error instanceof ThinError && (code === undefined || error.code === code);
}

export class AssertionError extends Error {
  constructor(message: string) {
    super(`thinbd internal error (a bug): ${message}`);
    this.name = 'AssertionError';
  }
}

/** Asserts an internal invariant. Stays on in production; never used on untrusted input. */
export function assert(condition: unknown, message = 'assertion failed'): asserts condition {
  if (!condition) throw new AssertionError(message);
}
