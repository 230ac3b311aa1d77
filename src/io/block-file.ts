// The block file: the only thing the layers above know about storage. A regular file, a block
// device, memory, or the crash simulator's disk all look like this.
//
// Contract (every implementation, checked by test/io/block-file.conformance.ts):
// - read/readSync fill the whole target; bytes past the end of the file read as zeros.
// - write may extend the file. Concurrent writes complete in any order; a caller that needs
//   ordering awaits completion.
// - sync() makes durable every write that *completed* before sync() was called. A write still
//   in flight when sync() is called is not covered.
// - After close() every call fails with THIN_CLOSED.

export interface BlockFile {
  /** For messages: a path, or a name such as "memory". */
  readonly description: string;
  sizeBytes(): number;
  /** Synchronous read: used by the metadata layer, whose blocks are almost always cached. */
  readSync(target: Uint8Array, offsetBytes: number): void;
  read(target: Uint8Array, offsetBytes: number): Promise<void>;
  write(source: Uint8Array, offsetBytes: number): Promise<void>;
  sync(): Promise<void>;
  /**
   * Optional hint: give [offsetBytes, +lengthBytes) backing space now, ahead of writes to it (a
   * regular file: fallocate), without changing what it reads (zeros stay zeros). Writes into
   * allocated space cost the file system less than writes into holes. Never fails: a file
   * system that cannot allocate ahead simply does not.
   */
  allocate?(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Grows (never shrinks) the file to sizeBytes; new space reads as zeros (sparse where possible). */
  grow(sizeBytes: number): Promise<void>;
  close(): Promise<void>;
}
