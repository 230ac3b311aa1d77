// Raw images in and out of volumes. Import skips runs of zeros so the volume stays thin; export
// leaves unmapped ranges as holes in the target file.
import { open, type FileHandle } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import type { Pool } from '../pool/pool.ts';
import type { Volume } from '../pool/volume.ts';
import { ThinError } from '../errors.ts';
import { TRANSFER_CHUNK_BYTES, TRANSFER_WRITES_IN_FLIGHT_MAX } from '../constants.ts';

export interface TransferProgress {
  /** Called with the bytes done so far and the total (when known). */
  (doneBytes: number, totalBytes: number | undefined): void;
}

export type ImportSource = { path: string } | { stream: Readable };

export interface ImportOptions {
  offsetBytes?: number;
  onProgress?: TransferProgress;
}

export interface ImportResult {
  volumeCreated: boolean;
  bytesRead: number;
  bytesWritten: number;
  sizeBytes: number;
}

/** Copies a raw image into volume `name` at offsetBytes, creating the volume sized to fit when absent. */
export async function importRaw(pool: Pool, name: string, source: ImportSource, options: ImportOptions = {}): Promise<ImportResult> {
  const offsetBytes = options.offsetBytes ?? 0;
  const blockSizeBytes = pool.status().blockSizeBytes;
  const handle = 'path' in source ? await openForRead(source.path) : undefined;
  try {
    const totalBytes = handle ? (await handle.stat()).size : undefined;
    const existing = pool.list().find((info) => info.name === name);
    let volume: Volume;
    if (existing) {
      volume = pool.volume(name);
      if (totalBytes !== undefined && offsetBytes + totalBytes > volume.sizeBytes) {
        throw new ThinError(
          'THIN_OUT_OF_RANGE',
          `The image (${totalBytes} bytes at offset ${offsetBytes}) does not fit in volume ${name} of ${volume.sizeBytes} bytes; resize it first`,
        );
      }
    } else {
      const initialBytes = totalBytes !== undefined ? offsetBytes + totalBytes : offsetBytes + TRANSFER_CHUNK_BYTES;
      volume = await pool.createVolume(name, { sizeBytes: Math.max(1, initialBytes) });
    }
    const mustZero = existing !== undefined; // a new volume already reads zeros everywhere
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

    if (handle) {
      for (;;) {
        const chunk = new Uint8Array(TRANSFER_CHUNK_BYTES);
        const { bytesRead: count } = await handle.read(chunk, 0, chunk.length, bytesRead);
        if (count === 0) break;
        await consume(chunk.subarray(0, count));
      }
    } else if ('stream' in source) {
      for await (const data of source.stream) {
        const bytes = typeof data === 'string' ? Buffer.from(data) : (data as Uint8Array);
        await consume(new Uint8Array(bytes));
      }
    }
    await Promise.all(inFlight);
    if (firstError !== undefined) throw firstError;
    if (!existing && totalBytes === undefined) {
      await pool.resizeVolume(name, Math.max(1, offsetBytes + bytesRead));
    }
    await pool.flush();
    return { volumeCreated: !existing, bytesRead, bytesWritten, sizeBytes: pool.volume(name).sizeBytes };
  } finally {
    await handle?.close();
  }
}

export type ExportTarget = { path: string } | { stream: Writable };

export interface ExportResult {
  sizeBytes: number;
  bytesWritten: number;
}

/** Writes volume `name` to a raw image. A file keeps unmapped ranges as holes; a stream gets zeros. */
export async function exportRaw(pool: Pool, name: string, target: ExportTarget, onProgress?: TransferProgress): Promise<ExportResult> {
  const volume = pool.volume(name);
  const sizeBytes = volume.sizeBytes;
  const handle = 'path' in target ? await open(target.path, 'w') : undefined;
  let bytesWritten = 0;
  try {
    if (handle) await handle.truncate(sizeBytes);
    let positionBytes = 0;
    for (const extent of volume.extents(0, sizeBytes)) {
      const extentEndBytes = positionBytes + extent.lengthBytes;
      while (positionBytes < extentEndBytes) {
        const chunkBytes = Math.min(TRANSFER_CHUNK_BYTES, extentEndBytes - positionBytes);
        const chunk = new Uint8Array(chunkBytes);
        if (extent.mapped) {
          await volume.read(positionBytes, chunk);
          if (handle) {
            await handle.write(chunk, 0, chunkBytes, positionBytes);
            bytesWritten += chunkBytes;
          }
        }
        // An unmapped run written to a file stays a hole: the truncate above left it sparse.
        if (!handle && 'stream' in target) {
          await writeToStream(target.stream, chunk);
          bytesWritten += chunkBytes;
        }
        positionBytes += chunkBytes;
        onProgress?.(positionBytes, sizeBytes);
      }
    }
    if (handle) await handle.sync();
    return { sizeBytes, bytesWritten };
  } finally {
    await handle?.close();
  }
}

async function openForRead(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new ThinError('THIN_NOT_FOUND', `Cannot read image ${path}: no such file`, { cause: error });
    throw new ThinError('THIN_IO', `Cannot read image ${path}: ${(error as Error).message}`, { cause: error });
  }
}

function isZero(piece: Uint8Array, zeros: Uint8Array): boolean {
  return Buffer.compare(piece, zeros.subarray(0, piece.length)) === 0;
}

function writeToStream(stream: Writable, chunk: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    const ok = stream.write(chunk, (error) => (error ? reject(error) : undefined));
    if (ok) resolve();
    else stream.once('drain', resolve);
  });
}
