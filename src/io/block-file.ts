// The block file: the only thing the layers above know about storage. A regular file, a block
// device, memory, or the crash simulator's disk all look like this.
//
// Contract (every implementation, checked by test/io/block-file.conformance.ts):
// - read/readSync fill the whole target; bytes past the end of the file read as zeros.
// - write may extend the file. Concurrent writes complete in any order; a caller that needs
//   ordering awaits completion.
// - sync() makes durable every write that *completed* before sync() was called. A write still
//   in flight when sync() is called is not covered. Its options are hints: they change how the
//   sync runs, never what it makes durable.
// - After close() every call fails with THIN_CLOSED.

export interface SyncOptions {
  /**
   * The caller has nothing else to do until this sync ends and little is dirty (a client's flush
   * with no other request in flight): a regular file may sync on the calling thread instead of a
   * worker thread. The hand-off to a worker and back is two thread wake-ups, a noticeable part of
   * a small fdatasync (docs/benchmarks.md, "Figures behind code decisions"); the price is that the event loop
   * waits for the disk meanwhile, which is why the caller decides.
   */
  inline?: boolean;
}

export interface BlockFile {
  /** For messages: a path, or a name such as "memory". */
  readonly description: string;
  /** True when grow() cannot make the file larger than it is (a block device: only its owner can). */
  readonly fixedSize?: boolean;
  sizeBytes(): number;
  /** Synchronous read: used by the metadata layer, whose blocks are almost always cached. */
  readSync(target: Uint8Array, offsetBytes: number): void;
  read(target: Uint8Array, offsetBytes: number): Promise<void>;
  write(source: Uint8Array, offsetBytes: number): Promise<void>;
  sync(options?: SyncOptions): Promise<void>;
  /**
   * Optional hint: give [offsetBytes, +lengthBytes) backing space now, ahead of writes to it (a
   * regular file: fallocate), without changing what it reads (zeros stay zeros). Writes into
   * allocated space cost the file system less than writes into holes. Never fails: a file
   * system that cannot allocate ahead simply does not.
   */
  allocate?(offsetBytes: number, lengthBytes: number): Promise<void>;
  /**
   * Optional: gives the backing space of [offsetBytes, +lengthBytes) back to the host (a regular
   * file: fallocate PUNCH_HOLE, keeping the size). Once it resolves true the range reads as zeros;
   * like a write, that is durable only after a later sync(). Resolves false when the file cannot
   * punch (a block device, a file system without it): nothing changed. Never rejects for that,
   * and the caller keeps writes to the range out of its way.
   */
  punch?(offsetBytes: number, lengthBytes: number): Promise<boolean>;
  /**
   * Grows (never shrinks) the file to sizeBytes; new space reads as zeros (sparse where possible).
   * The new size, like a write, is durable only after a later sync(): a crash before it may leave
   * the file at its old size.
   */
  grow(sizeBytes: number): Promise<void>;
  close(): Promise<void>;
}
