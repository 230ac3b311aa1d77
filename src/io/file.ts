// A block file over a regular file or a block device.
//
// The data path: reads the page cache holds (preadv2 with RWF_NOWAIT) and writes to regular
// files (pwrite, normally a copy into the page cache) run on the main thread; the rest (uncached
// reads, writes to block devices) go to the libuv pool as fs.read/fs.write with callbacks. The
// pool's round trip was a large part of the server's CPU on 4 KiB requests, and FileHandle
// promises cost several times as much per operation as callbacks (docs/benchmarks.md, "Node file
// I/O on the hot path" and "Figures behind code decisions").
// readSync serves the metadata layer, whose blocks are almost always in the page cache. Syncs
// go to the libuv pool, unless the caller says that nothing else waits (SyncOptions.inline).
//
// Files are opened 'r+', never with O_APPEND: Linux ignores the position of pwrite on files
// opened O_APPEND, which would append every block to the end.
//
// Bulk writes (FILE_DIRECT_WRITE_BYTES_MIN or more, aligned: io/aligned.ts) to a regular file go
// around the page cache through a second descriptor of the same file opened O_DIRECT, on the
// libuv pool (they wait for the device). The kernel keeps the two coherent: a direct write
// drops the cached pages of its range, a read after it reads the device. fdatasync on the first
// descriptor covers both (it syncs the inode and flushes the device's cache). A file system that
// refuses O_DIRECT (tmpfs) or an alignment (EINVAL) turns the direct path off for the file.
//
// Fail-stop: after a sync fails, the kernel may already have dropped the dirty pages it could
// not write back, and a later fdatasync can succeed although the data never reached the disk
// (docs/fault-model.md section 3; PostgreSQL's fsync incident). So once a sync has failed, every
// later sync fails too: nothing written through this file can be called durable again until the
// file is reopened and what is on disk is read back. A write that fails with anything but EIO
// does the same. A write refused with EIO is the medium refusing that range: it dropped no other
// dirty page (writeback errors reach the next fdatasync through the file's error sequence, not a
// later write), so the pool may work around the range (pool/bad-blocks.ts) and later syncs still
// mean what they say.
import fs from 'node:fs';
import { loadKoffi } from '../util/native.ts';
import type { BlockFile, SyncOptions } from './block-file.ts';
import { FILE_DIRECT_WRITE_BYTES_MIN, FILE_WRITE_PIECE_BYTES_MAX } from '../constants.ts';
import { DIRECT_ALIGN_BYTES, isAlignedInMemory } from './aligned.ts';
import { ThinError, assert } from '../errors.ts';
import { isMediaError } from './media-error.ts';
import { PRIVATE_FILE_MODE, cannotCreate } from './private.ts';

const koffi = loadKoffi();

export interface FileOpenOptions {
  readOnly?: boolean;
}

export interface FileCreateOptions {
  sizeBytes: number;
}

export class FileBlockFile implements BlockFile {
  readonly description: string;
  readonly readOnly: boolean;
  readonly isBlockDevice: boolean;
  #fd: number;
  #sizeBytes: number;
  #closed = false;
  /** The first sync failure (or write failure other than EIO); once set, sync() refuses (see the module comment). */
  #failure: ThinError | undefined;
  /** Data writes run on the main thread (see #writeHere); block devices keep the thread pool. */
  #mainThreadWrites: boolean;
  /** Try preadv2(RWF_NOWAIT) before fs.read; off after the first failure other than EAGAIN. */
  #nowaitReads = preadv2 !== undefined;
  /** allocate() calls fallocate; off for block devices and after a failure. */
  #allocateAhead: boolean;
  /** punch() calls fallocate(PUNCH_HOLE); off for block devices and after a failure. */
  #punchHoles: boolean;
  /** The iovec handed to preadv2, reused: one read at a time runs on the main thread. */
  readonly #iov: { iov_base: Uint8Array | null; iov_len: number } = { iov_base: null, iov_len: 0 };
  /** Operations started and not yet finished, so close() can wait for them. */
  #inFlight = new Set<Promise<unknown>>();

  /** A regular file (not a device): a write it refuses for room (ENOSPC) dirtied nothing. */
  readonly #regularFile: boolean;
  /** Bulk writes may go around the page cache (see the module comment): off once the file refuses them. */
  #direct: boolean;
  /** The O_DIRECT descriptor, opened at the first bulk write; closed with the file. */
  #directFd: number | undefined;

  private constructor(path: string, fd: number, sizeBytes: number, readOnly: boolean, isBlockDevice: boolean, regularFile: boolean) {
    this.description = path;
    this.#regularFile = regularFile;
    this.#fd = fd;
    this.#sizeBytes = sizeBytes;
    this.readOnly = readOnly;
    this.isBlockDevice = isBlockDevice;
    this.#mainThreadWrites = !isBlockDevice;
    this.#allocateAhead = !isBlockDevice;
    this.#punchHoles = !isBlockDevice && !readOnly;
    this.#direct = regularFile && !readOnly && O_DIRECT !== undefined;
  }

  /** Opens an existing regular file or block device. */
  static async open(path: string, options: FileOpenOptions = {}): Promise<FileBlockFile> {
    const readOnly = options.readOnly === true;
    let fd: number;
    try {
      // A file opened read-only is opened and closed on the main thread (see close()).
      fd = readOnly ? fs.openSync(path, 'r') : await callback<number>((done) => fs.open(path, 'r+', done));
    } catch (error) {
      const code = errorCode(error);
      if (code === 'ENOENT') {
        throw new ThinError('THIN_NOT_FOUND', `Cannot open ${path}: no such file`, { cause: error });
      }
      if (code === 'EISDIR') {
        throw new ThinError('THIN_INVALID', `Cannot open ${path} as a block file: it is a directory`, { cause: error });
      }
      throw new ThinError('THIN_IO', `Cannot open ${path}: ${code}`, { cause: error });
    }
    try {
      const stats = fs.fstatSync(fd);
      if (stats.isDirectory()) {
        throw new ThinError('THIN_INVALID', `Cannot open ${path} as a block file: it is a directory`);
      }
      const isBlockDevice = stats.isBlockDevice();
      const sizeBytes = isBlockDevice ? blockDeviceSizeBytes(fd, path) : stats.size;
      return new FileBlockFile(path, fd, sizeBytes, readOnly, isBlockDevice, stats.isFile());
    } catch (error) {
      fs.closeSync(fd);
      if (error instanceof ThinError) throw error;
      throw new ThinError('THIN_IO', `Cannot open ${path}: ${errorCode(error)}`, { cause: error });
    }
  }

  /** Creates a new sparse regular file of sizeBytes; an existing file is refused, never overwritten. */
  static async create(path: string, options: FileCreateOptions): Promise<FileBlockFile> {
    const { sizeBytes } = options;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
      throw new ThinError('THIN_INVALID', `Cannot create ${path} with size ${sizeBytes}: not a byte count`);
    }
    let fd: number;
    try {
      // 'wx+' is O_RDWR|O_CREAT|O_EXCL: atomic refusal of an existing path, and no O_APPEND.
      fd = await callback<number>((done) => fs.open(path, 'wx+', PRIVATE_FILE_MODE, done));
    } catch (error) {
      throw cannotCreate(path, error);
    }
    try {
      // Volume data is private to its owner (io/private.ts): the mode is set, not left to the umask.
      await callback<void>((done) => fs.fchmod(fd, PRIVATE_FILE_MODE, done));
      await callback<void>((done) => fs.ftruncate(fd, sizeBytes, done));
    } catch (error) {
      fs.closeSync(fd);
      throw new ThinError('THIN_IO', `Cannot create ${path} with ${sizeBytes} bytes: ${errorCode(error)}`, {
        cause: error,
      });
    }
    return new FileBlockFile(path, fd, sizeBytes, false, false, true);
  }

  /** A block device's size is its owner's to change (lvextend), not ours. */
  get fixedSize(): boolean {
    return this.isBlockDevice;
  }

  sizeBytes(): number {
    return this.#sizeBytes;
  }

  readSync(target: Uint8Array, offsetBytes: number): void {
    this.#checkOpen();
    checkRange(offsetBytes, target.length);
    let doneBytes = 0;
    while (doneBytes < target.length) {
      let readBytes: number;
      try {
        readBytes = fs.readSync(this.#fd, target, doneBytes, target.length - doneBytes, offsetBytes + doneBytes);
      } catch (error) {
        throw this.#ioError('read', target.length, offsetBytes, error);
      }
      if (readBytes === 0) break; // end of file: the rest reads as zeros
      doneBytes += readBytes;
    }
    if (doneBytes < target.length) target.fill(0, doneBytes);
  }

  read(target: Uint8Array, offsetBytes: number): Promise<void> {
    // Page-cache hits are read on the main thread (see readCached); the rest goes to the pool.
    let cachedBytes = 0;
    if (this.#nowaitReads && !this.#closed && target.length > 0 && Number.isSafeInteger(offsetBytes) && offsetBytes >= 0) {
      cachedBytes = this.#readCached(target, offsetBytes);
      if (cachedBytes === target.length) return resolved;
    }
    return this.#track(async () => {
      this.#checkOpen();
      checkRange(offsetBytes, target.length);
      let doneBytes = cachedBytes;
      while (doneBytes < target.length) {
        let readBytes: number;
        try {
          readBytes = await callback<number>((done) =>
            fs.read(this.#fd, target, doneBytes, target.length - doneBytes, offsetBytes + doneBytes, done),
          );
        } catch (error) {
          throw this.#ioError('read', target.length, offsetBytes, error);
        }
        if (readBytes === 0) break;
        doneBytes += readBytes;
      }
      if (doneBytes < target.length) target.fill(0, doneBytes);
    });
  }

  write(source: Uint8Array, offsetBytes: number): Promise<void> {
    if (this.#direct && source.length >= FILE_DIRECT_WRITE_BYTES_MIN && offsetBytes % DIRECT_ALIGN_BYTES === 0 && source.length % DIRECT_ALIGN_BYTES === 0 && isAlignedInMemory(source)) {
      return this.#writeOnPool(source, offsetBytes, true);
    }
    if (this.#mainThreadWrites) return this.#writeHere(source, offsetBytes);
    return this.#writeOnPool(source, offsetBytes, false);
  }

  /**
   * write() on the libuv pool: through the file's descriptor, or (`direct`) around the page cache
   * through its O_DIRECT one, buffered from where the file refuses that (see the module comment).
   */
  #writeOnPool(source: Uint8Array, offsetBytes: number, direct: boolean): Promise<void> {
    return this.#track(async () => {
      this.#checkOpen();
      this.#checkWritable('write');
      checkRange(offsetBytes, source.length);
      let doneBytes = 0;
      while (doneBytes < source.length) {
        const fd = direct ? this.#directDescriptor() : this.#fd;
        if (fd === undefined) break;
        let writtenBytes: number;
        try {
          writtenBytes = await callback<number>((done) => fs.write(fd, source, doneBytes, source.length - doneBytes, offsetBytes + doneBytes, done));
        } catch (error) {
          // Refused for its alignment or by the file system: nothing of it written; buffered from here on.
          if (direct && errorCode(error) === 'EINVAL') {
            this.#direct = false;
            break;
          }
          throw this.#writeFailure(source.length, offsetBytes, error);
        }
        if (writtenBytes === 0) throw this.#deviceEnded(source, offsetBytes, doneBytes);
        doneBytes += writtenBytes;
      }
      if (doneBytes < source.length) await this.#writeHere(source.subarray(doneBytes), offsetBytes + doneBytes);
      this.#noteWritten(offsetBytes + source.length);
    });
  }

  sync(options: SyncOptions = {}): Promise<void> {
    return this.#track(async () => {
      this.#checkOpen();
      if (this.#failure !== undefined) {
        throw new ThinError(
          'THIN_IO',
          `Cannot sync ${this.description}: an earlier write or sync failed, so what the disk holds is ` +
            `unknown until the file is reopened (${this.#failure.message})`,
          { cause: this.#failure },
        );
      }
      if (this.readOnly) return;
      try {
        if (options.inline === true) fs.fdatasyncSync(this.#fd);
        else await callback<void>((done) => fs.fdatasync(this.#fd, done));
      } catch (error) {
        throw this.#fail(
          new ThinError('THIN_IO', `Cannot sync ${this.description}: ${errorCode(error)}`, { cause: error }),
        );
      }
    });
  }

  /**
   * fallocate(2) of the range on a koffi worker thread, keeping the file's size (mode 0 inside
   * the file). Buffered writes into allocated (unwritten) extents skip ext4's delayed-allocation
   * bookkeeping: a pwrite into a hole costs more than one into allocated space (docs/benchmarks.md,
   * "Figures behind code decisions"). Off for block devices, and for good after the first failure
   * (EOPNOTSUPP on file systems without it, ENOSPC on a full one: then writes allocate as before
   * and report ENOSPC themselves).
   */
  allocate(offsetBytes: number, lengthBytes: number): Promise<void> {
    const call = fallocate;
    if (call === undefined || !this.#allocateAhead || this.#closed || this.readOnly || lengthBytes <= 0) return resolved;
    checkRange(offsetBytes, lengthBytes);
    const length = Math.min(lengthBytes, this.#sizeBytes - offsetBytes);
    if (length <= 0) return resolved;
    return this.#track(
      () =>
        new Promise<void>((resolve) => {
          try {
            call.async(this.#fd, 0, offsetBytes, length, (error: unknown, result: number) => {
              if ((error !== null && error !== undefined) || result !== 0) this.#allocateAhead = false;
              resolve();
            });
          } catch {
            // koffi refuses a call it cannot queue (its async queue full): a hint not given.
            this.#allocateAhead = false;
            resolve();
          }
        }),
    );
  }

  /**
   * fallocate(2) with PUNCH_HOLE | KEEP_SIZE on a koffi worker thread: the file system frees the
   * range's blocks and it reads as zeros, the file's size unchanged. Only regular files: on a block
   * device the call zeroes (and may or may not unmap), which gives nothing back that thinbd can
   * count on. After the first failure (EOPNOTSUPP on file systems without it) punching is off and
   * every call resolves false: space is then simply not given back. A failed punch is not a
   * failed write: it never touches a block anyone maps (the pool punches free blocks only), so it
   * does not make later syncs refuse.
   */
  punch(offsetBytes: number, lengthBytes: number): Promise<boolean> {
    const call = fallocate;
    if (call === undefined || !this.#punchHoles || this.#closed || lengthBytes <= 0) return resolvedFalse;
    checkRange(offsetBytes, lengthBytes);
    return this.#track(
      () =>
        new Promise<boolean>((resolve) => {
          try {
            call.async(this.#fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offsetBytes, lengthBytes, (error: unknown, result: number) => {
              const done = (error === null || error === undefined) && result === 0;
              if (!done) this.#punchHoles = false;
              resolve(done);
            });
          } catch {
            this.#punchHoles = false;
            resolve(false);
          }
        }),
    );
  }

  grow(sizeBytes: number): Promise<void> {
    return this.#track(async () => {
      this.#checkOpen();
      checkRange(sizeBytes, 0);
      if (sizeBytes <= this.#sizeBytes) return;
      this.#checkWritable('grow');
      if (this.isBlockDevice) {
        // The device may have been grown since it was opened (lvextend): then the room is there.
        const deviceBytes = blockDeviceSizeBytes(this.#fd, this.description);
        if (deviceBytes >= sizeBytes) {
          this.#sizeBytes = deviceBytes;
          return;
        }
        throw new ThinError(
          'THIN_INVALID',
          `Cannot grow ${this.description} to ${sizeBytes} bytes: it is a block device of ${this.#sizeBytes} bytes`,
        );
      }
      try {
        await callback<void>((done) => fs.ftruncate(this.#fd, sizeBytes, done));
      } catch (error) {
        throw new ThinError('THIN_IO', `Cannot grow ${this.description} to ${sizeBytes} bytes: ${errorCode(error)}`, {
          cause: error,
        });
      }
      if (sizeBytes > this.#sizeBytes) this.#sizeBytes = sizeBytes;
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Let operations already started finish (or fail) before their descriptor goes away, so a
    // late callback never lands on a descriptor number reused by another file.
    await Promise.allSettled([...this.#inFlight]);
    try {
      // Closing a file this process wrote may write back (the last close of a block device, NFS's
      // close-to-open), so it goes to the thread pool. A read-only file has nothing to write back:
      // opened and closed here, a short read-only command (a dump) never starts the pool's
      // threads, 1-2 ms of it on two cores (docs/benchmarks.md, "Command start-up").
      if (this.#directFd !== undefined) fs.closeSync(this.#directFd);
      this.#directFd = undefined;
      this.#direct = false;
      if (this.readOnly) fs.closeSync(this.#fd);
      else await callback<void>((done) => fs.close(this.#fd, done));
    } catch (error) {
      throw new ThinError('THIN_IO', `Cannot close ${this.description}: ${errorCode(error)}`, { cause: error });
    }
  }

  /**
   * Reads what of [offsetBytes, +target.length) the page cache holds, without blocking:
   * preadv2(RWF_NOWAIT) returns EAGAIN instead of waiting for the disk. A 4 KiB read through
   * fs.read costs a libuv thread-pool round trip (a large share of the server's CPU for cached
   * random reads); through koffi the call is a few microseconds on the main thread (docs/benchmarks.md,
   * "Figures behind code decisions"). Returns the bytes read
   * (a whole target at end of file, the tail zero-filled); 0 sends the caller to fs.read.
   */
  #readCached(target: Uint8Array, offsetBytes: number): number {
    const call = preadv2;
    if (call === undefined) return 0;
    let doneBytes = 0;
    const iov = this.#iov;
    while (doneBytes < target.length) {
      iov.iov_base = doneBytes === 0 ? target : target.subarray(doneBytes);
      iov.iov_len = target.length - doneBytes;
      const readBytes = Number(call(this.#fd, iov, 1, offsetBytes + doneBytes, RWF_NOWAIT));
      if (readBytes < 0) {
        // EAGAIN: not cached. Anything else (EOPNOTSUPP on file systems without NOWAIT reads, a
        // real error) turns the fast path off; fs.read reports real errors as before.
        if (koffi.errno() !== EAGAIN) this.#nowaitReads = false;
        break;
      }
      if (readBytes === 0) {
        target.fill(0, doneBytes);
        doneBytes = target.length;
        break;
      }
      doneBytes += readBytes;
    }
    iov.iov_base = null;
    return doneBytes;
  }

  /**
   * write() on the main thread (pwrite through fs.writeSync). A buffered write normally only
   * copies into the page cache (microseconds), while fs.write costs a thread-pool round trip, and
   * each completion arriving on its own event-loop turn sent its reply in its own system call:
   * together a large part of the server's CPU on 4 KiB writes (docs/benchmarks.md, "Figures behind
   * code decisions"). Written here, the writes of one batch of requests
   * complete in one turn and their replies leave in one writev. The cost: a write that must wait
   * (dirty-page throttling, a slow device) stalls every connection meanwhile, as it stalls the
   * client that issued it in the kernel's own block layer.
   */
  #writeHere(source: Uint8Array, offsetBytes: number): Promise<void> {
    try {
      this.#checkOpen();
      this.#checkWritable('write');
      checkRange(offsetBytes, source.length);
      let doneBytes = 0;
      while (doneBytes < source.length) {
        let writtenBytes: number;
        try {
          writtenBytes = fs.writeSync(this.#fd, source, doneBytes, Math.min(source.length - doneBytes, FILE_WRITE_PIECE_BYTES_MAX), offsetBytes + doneBytes);
        } catch (error) {
          throw this.#writeFailure(source.length, offsetBytes, error);
        }
        if (writtenBytes === 0) throw this.#deviceEnded(source, offsetBytes, doneBytes);
        doneBytes += writtenBytes;
      }
      this.#noteWritten(offsetBytes + source.length);
      return resolved;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * The O_DIRECT descriptor: the same file reopened through /proc (not by its path, which may name
   * another file by now); undefined once the file refuses direct writes.
   */
  #directDescriptor(): number | undefined {
    if (this.#direct && this.#directFd === undefined) {
      try {
        this.#directFd = fs.openSync(`/proc/self/fd/${this.#fd}`, fs.constants.O_WRONLY | O_DIRECT!);
      } catch {
        this.#direct = false;
      }
    }
    return this.#direct ? this.#directFd : undefined;
  }

  /** A block device that ends inside the write: the kernel reports a short write, not an error. */
  #deviceEnded(source: Uint8Array, offsetBytes: number, doneBytes: number): ThinError {
    return this.#fail(
      new ThinError(
        'THIN_IO',
        `Cannot write ${source.length} bytes at offset ${offsetBytes} of ${this.description}: ` +
          `the device ends at ${offsetBytes + doneBytes}`,
      ),
    );
  }

  /** A completed write may have extended the file. */
  #noteWritten(endBytes: number): void {
    if (endBytes > this.#sizeBytes) this.#sizeBytes = endBytes;
  }

  #track<T>(operation: () => Promise<T>): Promise<T> {
    const promise = operation();
    this.#inFlight.add(promise);
    const forget = (): void => {
      this.#inFlight.delete(promise);
    };
    promise.then(forget, forget);
    return promise;
  }

  /**
   * A failed write: a full file system (ENOSPC, EDQUOT on a regular file) fails that write alone,
   * as THIN_NO_SPACE: a buffered write that fails for room dirtied nothing it did not report
   * written. A device that answers ENOSPC (/dev/full, a full thin device below us) is an I/O error
   * like any other: EIO names its range only, anything else makes every later sync refuse
   * (#failUnlessMedia, the module comment).
   */
  #writeFailure(lengthBytes: number, offsetBytes: number, cause: unknown): ThinError {
    const code = errorCode(cause);
    if (this.#regularFile && (code === 'ENOSPC' || code === 'EDQUOT')) {
      return new ThinError('THIN_NO_SPACE', `Cannot write ${lengthBytes} bytes at offset ${offsetBytes} of ${this.description}: the file system holding it is full (${code})`, {
        cause,
      });
    }
    return this.#failUnlessMedia(this.#ioError('write', lengthBytes, offsetBytes, cause));
  }

  #fail(error: ThinError): ThinError {
    if (this.#failure === undefined) this.#failure = error;
    return error;
  }

  /** A write refused with EIO names its range only (see the module comment); any other write failure is fail-stop. */
  #failUnlessMedia(error: ThinError): ThinError {
    return isMediaError(error) ? error : this.#fail(error);
  }

  #ioError(verb: 'read' | 'write', lengthBytes: number, offsetBytes: number, cause: unknown): ThinError {
    return new ThinError(
      'THIN_IO',
      `Cannot ${verb} ${lengthBytes} bytes at offset ${offsetBytes} of ${this.description}: ${errorCode(cause)}`,
      { cause },
    );
  }

  #checkOpen(): void {
    if (this.#closed) throw new ThinError('THIN_CLOSED', `${this.description} is closed`);
  }

  #checkWritable(verb: string): void {
    if (this.readOnly) throw new ThinError('THIN_READ_ONLY', `Cannot ${verb} ${this.description}: opened read-only`);
  }
}

function checkRange(offsetBytes: number, lengthBytes: number): void {
  assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, `bad offset ${offsetBytes}`);
  assert(Number.isSafeInteger(offsetBytes + lengthBytes), `bad length ${lengthBytes}`);
}

function callback<T>(start: (done: (error: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    start((error, value) => {
      if (error) reject(error);
      else resolve(value);
    });
  });
}

function errorCode(error: unknown): string {
  if (typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string') {
    return error.code;
  }
  return String(error);
}

const resolved = Promise.resolve();
const resolvedFalse = Promise.resolve(false);

/** fallocate(2) mode bits (linux/falloc.h). */
const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

/** open(2)'s O_DIRECT where Node knows it (Linux); undefined elsewhere, and bulk writes stay buffered. */
const O_DIRECT: number | undefined = fs.constants.O_DIRECT;

const RWF_NOWAIT = 0x8;
const EAGAIN = 11;
/** preadv2 where libc has it (glibc ≥ 2.26); the fast path is off without it. */
const preadv2 = ((): ((fd: number, iov: object, iovCount: number, offsetBytes: number, flags: number) => number | bigint) | undefined => {
  try {
    koffi.struct('thinbd_iovec', { iov_base: 'void *', iov_len: 'size_t' });
    return koffi.load('libc.so.6').func('intptr_t preadv2(int, const thinbd_iovec *, int, int64_t, int)') as never;
  } catch {
    return undefined;
  }
})();

/** fallocate where libc has it; allocate() does nothing without it. */
const fallocate = ((): { async: (fd: number, mode: number, offset: number, length: number, done: (error: unknown, result: number) => void) => void } | undefined => {
  try {
    return koffi.load('libc.so.6').func('int fallocate(int, int, int64_t, int64_t)') as never;
  } catch {
    return undefined;
  }
})();

const SEEK_END = 2;
/** Core fs has no lseek; fstat reports 0 bytes for a block device, lseek to its end gives its size. */
const lseek = koffi.load('libc.so.6').func('int64_t lseek(int, int64_t, int)') as (
  fd: number,
  offset: number,
  whence: number,
) => number | bigint;

function blockDeviceSizeBytes(fd: number, path: string): number {
  const endBytes = Number(lseek(fd, 0, SEEK_END));
  if (endBytes < 0) {
    throw new ThinError('THIN_IO', `Cannot find the size of block device ${path}: lseek failed (errno ${koffi.errno()})`);
  }
  return endBytes;
}
