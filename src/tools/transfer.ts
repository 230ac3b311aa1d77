// Raw images in and out of volumes. Import skips runs of zeros so the volume stays thin; export
// leaves unmapped ranges as holes in the target file.
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { addAbortSignal, type Readable, type Writable } from 'node:stream';
import type { Pool } from '../pool/pool.ts';
import type { Volume } from '../pool/volume.ts';
import type { VolumeReader } from './pool-view.ts';
import { ThinError } from '../errors.ts';
import { PRIVATE_FILE_MODE } from '../io/private.ts';
import { TRANSFER_CHUNK_BYTES, TRANSFER_WRITES_IN_FLIGHT_MAX } from '../constants.ts';

export interface TransferProgress {
  /** Called with the bytes done so far and the total (when known). */
  (doneBytes: number, totalBytes: number | undefined): void;
}

export type ImportSource = { path: string } | { stream: Readable };

export interface ImportOptions {
  offsetBytes?: number;
  onProgress?: TransferProgress;
  /** Aborting stops the import between chunks; a volume it created is removed. */
  signal?: AbortSignal;
}

export interface ImportResult {
  volumeCreated: boolean;
  bytesRead: number;
  bytesWritten: number;
  sizeBytes: number;
}

/**
 * Copies a raw image into volume `name` at offsetBytes, creating the volume sized to fit when absent.
 * A source that cannot be read (missing, a directory, unreadable) is refused before anything is
 * created; an import that fails later, or is aborted through `signal`, removes the volume it
 * created, so a failed import leaves the pool as it was (an existing volume keeps what was written).
 */
export async function importRaw(pool: Pool, name: string, source: ImportSource, options: ImportOptions = {}): Promise<ImportResult> {
  const offsetBytes = options.offsetBytes ?? 0;
  const opened = 'path' in source ? await openForRead(source.path) : undefined;
  const sourceName = 'path' in source ? source.path : 'standard input';
  let created = false;
  try {
    const existing = pool.list().find((info) => info.name === name);
    if (existing) {
      const sizeBytes = pool.volume(name).sizeBytes;
      if (opened?.sizeBytes !== undefined && offsetBytes + opened.sizeBytes > sizeBytes) {
        throw new ThinError(
          'THIN_OUT_OF_RANGE',
          `The image ${sourceName} (${opened.sizeBytes} bytes at offset ${offsetBytes}) does not fit in volume ${name} of ${sizeBytes} bytes; resize it first`,
        );
      }
    } else {
      const initialBytes = opened?.sizeBytes !== undefined ? offsetBytes + opened.sizeBytes : offsetBytes + TRANSFER_CHUNK_BYTES;
      await pool.createVolume(name, { sizeBytes: Math.max(1, initialBytes) });
      created = true;
    }
    return await copyIntoVolume(pool, name, opened, source, sourceName, { ...options, offsetBytes }, created);
  } catch (error) {
    // A volume this import created holds a part of the image at best: it goes, and the removal is
    // committed so a crash after a failed import does not bring it back.
    if (created && pool.list().some((info) => info.name === name)) {
      await pool.removeVolume(name);
      await pool.flush();
    }
    throw error;
  } finally {
    await opened?.handle.close();
  }
}

async function copyIntoVolume(
  pool: Pool,
  name: string,
  opened: OpenedSource | undefined,
  source: ImportSource,
  sourceName: string,
  options: ImportOptions & { offsetBytes: number },
  created: boolean,
): Promise<ImportResult> {
  const { offsetBytes } = options;
  const totalBytes = opened?.sizeBytes;
  const blockSizeBytes = pool.status().blockSizeBytes;
  const volume: Volume = pool.volume(name);
  const mustZero = !created; // a new volume already reads zeros everywhere
  const zeros = new Uint8Array(blockSizeBytes);
  const inFlight = new Set<Promise<void>>();
  let firstError: unknown;
  let bytesRead = 0;
  let bytesWritten = 0;

  const submit = async (work: Promise<void>): Promise<void> => {
    const tracked = work.catch((error: unknown) => {
      firstError ??= error;
    }).finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
    if (inFlight.size >= TRANSFER_WRITES_IN_FLIGHT_MAX) await Promise.race(inFlight);
    if (firstError !== undefined) throw firstError;
  };

  const consume = async (chunk: Uint8Array): Promise<void> => {
    options.signal?.throwIfAborted();
    let position = 0;
    while (position < chunk.length) {
      const volumeOffsetBytes = offsetBytes + bytesRead + position;
      const toBoundary = blockSizeBytes - (volumeOffsetBytes % blockSizeBytes);
      const piece = chunk.subarray(position, position + Math.min(toBoundary, chunk.length - position));
      position += piece.length;
      if (volumeOffsetBytes + piece.length > volume.sizeBytes) {
        // Streamed input of unknown length: grow the volume ahead of the data, doubling.
        const sizeBytes = Math.max(volumeOffsetBytes + piece.length, Math.min(volume.sizeBytes * 2, Number.MAX_SAFE_INTEGER));
        await Promise.all(inFlight);
        await pool.resizeVolume(name, sizeBytes);
      }
      if (isZero(piece, zeros)) {
        if (mustZero) await submit(volume.writeZeroes(volumeOffsetBytes, piece.length));
        continue;
      }
      bytesWritten += piece.length;
      await submit(volume.write(volumeOffsetBytes, piece));
    }
    bytesRead += chunk.length;
    options.onProgress?.(bytesRead, totalBytes);
  };

  try {
    if (opened) {
      for (;;) {
        const chunk = new Uint8Array(TRANSFER_CHUNK_BYTES);
        let count: number;
        try {
          ({ bytesRead: count } = await opened.handle.read(chunk, 0, chunk.length, bytesRead));
        } catch (error) {
          throw readError(sourceName, error);
        }
        if (count === 0) break;
        await consume(chunk.subarray(0, count));
      }
    } else if ('stream' in source) {
      try {
        if (options.signal) addAbortSignal(options.signal, source.stream);
        for await (const data of source.stream) {
          const bytes = typeof data === 'string' ? Buffer.from(data) : (data as Uint8Array);
          await consume(new Uint8Array(bytes));
        }
      } catch (error) {
        if (options.signal?.aborted) throw options.signal.reason;
        if (error instanceof ThinError) throw error;
        throw readError(sourceName, error);
      }
    }
  } finally {
    await Promise.allSettled(inFlight);
  }
  if (firstError !== undefined) throw firstError;
  if (created && totalBytes === undefined) {
    await pool.resizeVolume(name, Math.max(1, offsetBytes + bytesRead));
  }
  await pool.flush();
  return { volumeCreated: created, bytesRead, bytesWritten, sizeBytes: pool.volume(name).sizeBytes };
}

export type ExportTarget = { path: string } | { stream: Writable };

export interface ExportResult {
  sizeBytes: number;
  bytesWritten: number;
}

/**
 * Writes a volume to a raw image: the engine's Volume, or a PoolView's reader of a pinned
 * generation (a served pool). A file keeps unmapped ranges as holes; a stream gets zeros. Aborting
 * `signal` fails the export with its reason before the next chunk (or while a stream is full).
 */
export async function exportRaw(volume: VolumeReader, target: ExportTarget, onProgress?: TransferProgress, signal?: AbortSignal): Promise<ExportResult> {
  const sizeBytes = volume.sizeBytes;
  // A volume's bytes: the exported image is as private as the pool (io/private.ts).
  const handle = 'path' in target ? await openTarget(target.path, signal) : undefined;
  let bytesWritten = 0;
  try {
    // A regular file is made private and sparse. Anything else named as the target (/dev/null, a
    // disk, a FIFO) keeps its mode, which is the system's (chmod 0600 of /dev/null locked every
    // other user out of it), cannot be truncated, and gets its holes written as zeros in order,
    // since what a device held before is not zeros.
    const stats = handle ? await handle.stat() : undefined;
    const sparse = stats?.isFile() === true;
    if (handle && sparse) {
      await handle.chmod(PRIVATE_FILE_MODE);
      await handle.truncate(sizeBytes);
    }
    let positionBytes = 0;
    // Into a file, one buffer for the mapped bytes (each write completes before the next read);
    // into a stream, which may keep a chunk queued after write() returns, a buffer per chunk, and
    // one of zeros for every hole (a 5 TiB volume is 5 million chunks).
    const buffer = handle ? new Uint8Array(TRANSFER_CHUNK_BYTES) : undefined;
    const zeros = sparse ? undefined : new Uint8Array(TRANSFER_CHUNK_BYTES);
    for (const extent of volume.extents(0, sizeBytes)) {
      const extentEndBytes = positionBytes + extent.lengthBytes;
      if (!extent.mapped && sparse) {
        // An unmapped run written to a file stays a hole: the truncate above left it sparse.
        positionBytes = extentEndBytes;
        onProgress?.(positionBytes, sizeBytes);
        continue;
      }
      while (positionBytes < extentEndBytes) {
        signal?.throwIfAborted();
        const chunkBytes = Math.min(TRANSFER_CHUNK_BYTES, extentEndBytes - positionBytes);
        let chunk = zeros?.subarray(0, chunkBytes);
        if (extent.mapped) {
          chunk = buffer?.subarray(0, chunkBytes) ?? new Uint8Array(chunkBytes);
          await volume.read(positionBytes, chunk);
        }
        if (handle) await handle.write(chunk!, 0, chunkBytes, sparse ? positionBytes : null);
        else if ('stream' in target) await writeToStream(target.stream, chunk!, signal);
        bytesWritten += chunkBytes;
        positionBytes += chunkBytes;
        onProgress?.(positionBytes, sizeBytes);
      }
    }
    // fsync of a character device or a FIFO fails (EINVAL) and has nothing to make durable.
    if (handle && (sparse || stats?.isBlockDevice() === true)) await handle.sync();
    return { sizeBytes, bytesWritten };
  } finally {
    await handle?.close();
  }
}

interface OpenedSource {
  handle: FileHandle;
  /** Bytes in a regular file; undefined for a block device or another readable special file. */
  sizeBytes: number | undefined;
}

/** Opens an image for reading, refusing what cannot be one (missing, a directory) before anything is created. */
async function openForRead(path: string): Promise<OpenedSource> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    throw readError(path, error);
  }
  try {
    const stats = await handle.stat();
    if (stats.isDirectory()) throw new ThinError('THIN_INVALID', `Cannot import ${path}: it is a directory, not a raw image`);
    return { handle, sizeBytes: stats.isFile() ? stats.size : undefined };
  } catch (error) {
    await handle.close();
    throw error instanceof ThinError ? error : readError(path, error);
  }
}

/** A read failure of the image, naming it. */
function readError(path: string, error: unknown): ThinError {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return new ThinError('THIN_NOT_FOUND', `Cannot read image ${path}: no such file`, { cause: error });
  if (code === 'EACCES' || code === 'EPERM') return new ThinError('THIN_IO', `Cannot read image ${path}: permission denied`, { cause: error });
  if (code === 'EISDIR') return new ThinError('THIN_INVALID', `Cannot import ${path}: it is a directory, not a raw image`, { cause: error });
  return new ThinError('THIN_IO', `Cannot read image ${path}: ${(error as Error).message}`, { cause: error });
}

function isZero(piece: Uint8Array, zeros: Uint8Array): boolean {
  return Buffer.compare(piece, zeros.subarray(0, piece.length)) === 0;
}

/**
 * Opens the export's target for writing. Opening a FIFO waits for its reader, in a thread that no
 * signal reaches, so an abort while it waits would otherwise go unheard (a Ctrl-C did nothing, and
 * the command stayed until a reader came): the wait is given up, and the open still pending is let
 * through by opening the FIFO for reading here (which does not wait) and then closed.
 */
async function openTarget(path: string, signal: AbortSignal | undefined): Promise<FileHandle> {
  const opening = open(path, 'w', PRIVATE_FILE_MODE);
  if (signal === undefined) return await opening;
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([opening, aborted]);
  } catch (error) {
    if (!signal.aborted) throw error;
    const reader = await open(path, constants.O_RDONLY | constants.O_NONBLOCK).catch(() => undefined);
    await (await opening.catch(() => undefined))?.close();
    await reader?.close();
    throw error;
  } finally {
    signal.removeEventListener('abort', onAbort!);
  }
}

function writeToStream(stream: Writable, chunk: Uint8Array, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const ok = stream.write(chunk, (error) => (error ? reject(error) : undefined));
    if (ok) return resolve();
    const onAbort = (): void => {
      stream.off('drain', onDrain);
      reject(signal!.reason);
    };
    const onDrain = (): void => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    };
    stream.once('drain', onDrain);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
