// `thinbd metadata pack | unpack`: a compressed image of a pool's live metadata, for bug reports,
// backups and moving metadata between hosts (the idea of thin-provisioning-tools 1.x
// thin_metadata_pack; not its format). Only blocks the metadata space map counts as used go in — a 1 GiB sparse metadata
// file of a pool with a few thousand live blocks packs into a few hundred KiB — and unpack writes
// them back at their places in a new sparse file, so every live block is restored bit for bit
// (free blocks read as zeros).
//
// The file's format, byte by byte, is docs/format.md "Metadata pack file" (F-PACK-1..6): a
// 32-byte header (magic "TBDMPACK", version, block size, block count, data size), then one zlib
// stream of (blockNr u64 LE, 4096 bytes) records in increasing block order, ended by a trailer
// (2^64 − 1, record count).
//
// Pack reads the pool under its lock, read-only, raw: a block that fails its checksum is packed as
// it is (that is what a bug report needs). Unpack checks the framing, then opens the result as a
// pool (superblock copies, roots) before it puts the metadata file in place.
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDeflate, createInflate } from 'node:zlib';
import { METADATA_BLOCK_COUNT_MAX, METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES, PROGRESS_BLOCKS_STEP } from '../constants.ts';
import { ThinError, isThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { makeDurableDirectory, nodeFileSystem, type FileSystem } from '../io/file-system.ts';
import { DATA_FILE_NAME, METADATA_FILE_NAME } from '../pool/files.ts';
import { PoolView, isPinned, type ViewTarget } from './pool-view.ts';
import { deltaLogBlockNrs } from '../pdata/index.ts';
import { openPrivateFile } from '../io/private.ts';

const MAGIC = 'TBDMPACK';
const PACK_VERSION = 1;
const HEADER_BYTES = 32;
const RECORD_BYTES = 8 + METADATA_BLOCK_SIZE_BYTES;
const END_MARKER = 0xffff_ffff_ffff_ffffn;

export interface PackSummary {
  metadataBlockCount: number;
  liveBlockCount: number;
  packedBytes: number;
}

export interface PackOptions {
  /** Called now and then with live blocks packed so far and in all (for a progress bar). */
  onProgress?: (doneBlocks: number, totalBlocks: number) => void;
}

/**
 * Packs the live metadata of a pool into a new file at `outputPath`: the pool's directory (under
 * its lock), or a generation the serving process pinned (F-PACK-7: its superblock pair as the
 * pin gave them, and an empty delta log, since the trees hold everything up to the pin).
 */
export async function packMetadata(target: ViewTarget, outputPath: string, options: PackOptions = {}): Promise<PackSummary> {
  const view = await PoolView.open(target);
  const pinnedBlocks = new Map<number, Uint8Array>();
  if (isPinned(target)) {
    for (const { blockNr, bytes } of target.superblockSlots) pinnedBlocks.set(blockNr, bytes);
    for (const blockNr of deltaLogBlockNrs()) pinnedBlocks.set(blockNr, new Uint8Array(METADATA_BLOCK_SIZE_BYTES));
  }
  let output: fs.WriteStream;
  try {
    output = fs.createWriteStream(outputPath, { fd: openPrivateFile(outputPath, 'wx') });
  } catch (error) {
    await view.close();
    throw error;
  }
  try {
    const { tm } = view;
    const metadataBlockCount = tm.metadataBlockCount;
    const dataSizeBytes = view.payload.dataBlockCount * view.payload.blockSizeBytes;
    const header = Buffer.alloc(HEADER_BYTES);
    header.write(MAGIC, 0, 'ascii');
    header.writeUInt32LE(PACK_VERSION, 8);
    header.writeUInt32LE(METADATA_BLOCK_SIZE_BYTES, 12);
    header.writeBigUInt64LE(BigInt(metadataBlockCount), 16);
    header.writeBigUInt64LE(BigInt(dataSizeBytes), 24);
    output.write(header);
    const deflate = createDeflate({ level: 6 });
    deflate.pipe(output, { end: false });
    const finished = once(deflate, 'end');
    const metadataFile = tm.file;
    let liveBlockCount = 0;
    for (let blockNr = 0; blockNr < metadataBlockCount; blockNr += 1) {
      if (tm.refCount(blockNr) === 0) continue; // F-PACK-5: live blocks only, stored as read
      const record = Buffer.alloc(RECORD_BYTES);
      record.writeBigUInt64LE(BigInt(blockNr), 0);
      const pinned = pinnedBlocks.get(blockNr);
      if (pinned !== undefined) record.set(pinned, 8);
      else metadataFile.readSync(record.subarray(8), blockNr * METADATA_BLOCK_SIZE_BYTES);
      liveBlockCount += 1;
      if (options.onProgress !== undefined && liveBlockCount % PROGRESS_BLOCKS_STEP === 0) options.onProgress(liveBlockCount, Math.max(liveBlockCount, tm.metadataBlocksUsed));
      if (!deflate.write(record)) await once(deflate, 'drain');
    }
    options.onProgress?.(liveBlockCount, liveBlockCount);
    const trailer = Buffer.alloc(16);
    trailer.writeBigUInt64LE(END_MARKER, 0);
    trailer.writeBigUInt64LE(BigInt(liveBlockCount), 8);
    deflate.end(trailer);
    await finished;
    output.end();
    await once(output, 'finish');
    return { metadataBlockCount, liveBlockCount, packedBytes: output.bytesWritten };
  } catch (error) {
    output.destroy();
    fs.rmSync(outputPath, { force: true });
    throw error;
  } finally {
    await view.close();
  }
}

export interface UnpackOptions {
  /** Data to use when DIR has no data file: an existing file or device (linked), else a new sparse file of the packed size. */
  dataPath?: string;
  /** What makes DIR and its files (default node:fs); the crash simulator passes its own. */
  fileSystem?: FileSystem;
}

export interface UnpackSummary {
  metadataBlockCount: number;
  liveBlockCount: number;
  /** How the pool got its data: the file already in DIR, a link to dataPath, or a new sparse file. */
  data: 'existing' | 'linked' | 'created';
}

function invalid(inputPath: string, reason: string): ThinError {
  return new ThinError('THIN_INVALID', `unpack: ${inputPath}: ${reason}`);
}

/** Unpacks a packed image into DIR/metadata (DIR may hold a data file, but no metadata). */
export async function unpackMetadata(inputPath: string, dir: string, options: UnpackOptions = {}): Promise<UnpackSummary> {
  const fileSystem = options.fileSystem ?? nodeFileSystem;
  const metadataPath = path.join(dir, METADATA_FILE_NAME);
  if (fileSystem.kind(metadataPath) !== undefined) throw new ThinError('THIN_EXISTS', `${dir} already holds pool metadata; unpack writes a new pool's`);
  const createdDir = makeDurableDirectory(fileSystem, dir, { recursive: true });
  // An unpack cut short (a crash, a kill) left its metadata under a temporary name: only unpack
  // makes such names, and with no metadata in DIR nothing else can be using them.
  for (const name of fileSystem.list(dir)) if (name.startsWith(`${METADATA_FILE_NAME}.tmp-`)) fileSystem.remove(path.join(dir, name));
  const temporary = path.join(dir, `${METADATA_FILE_NAME}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const dataPath = path.join(dir, DATA_FILE_NAME);
  let createdData: 'linked' | 'created' | undefined;
  let file: BlockFile | undefined;
  try {
    const input = fs.createReadStream(inputPath);
    const headerChunks: Buffer[] = [];
    let headerBytes = 0;
    let header: Buffer | undefined;
    const inflate = createInflate();
    let pending: Buffer = Buffer.alloc(0);
    let expectedNext = 0;
    let records = 0;
    let ended = false;
    let metadataBlockCount = 0;
    let dataSizeBytes = 0;
    let compressedBytes = 0;
    const consume = async (chunk: Buffer): Promise<void> => {
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      let offset = 0;
      while (!ended && pending.length - offset >= 8) {
        const blockNr = pending.readBigUInt64LE(offset);
        if (blockNr === END_MARKER) {
          // F-PACK-4
          if (pending.length - offset < 16) break;
          const count = Number(pending.readBigUInt64LE(offset + 8));
          if (count !== records) throw invalid(inputPath, `the trailer counts ${count} blocks, the image holds ${records}`);
          ended = true;
          offset += 16;
          break;
        }
        if (pending.length - offset < RECORD_BYTES) break;
        // F-PACK-3
        if (blockNr >= BigInt(metadataBlockCount) || Number(blockNr) < expectedNext) {
          throw invalid(inputPath, `record ${records} names metadata block ${blockNr}, out of order or past the ${metadataBlockCount} blocks`);
        }
        await file!.write(pending.subarray(offset + 8, offset + RECORD_BYTES), Number(blockNr) * METADATA_BLOCK_SIZE_BYTES);
        expectedNext = Number(blockNr) + 1;
        records += 1;
        offset += RECORD_BYTES;
      }
      if (ended && offset < pending.length) throw invalid(inputPath, 'bytes follow the trailer');
      pending = pending.subarray(offset);
    };
    const prepare = async (bytes: Buffer): Promise<void> => {
      // F-PACK-1, F-PACK-2
      if (bytes.toString('ascii', 0, 8) !== MAGIC) throw invalid(inputPath, 'not a thinbd metadata pack (bad magic)');
      if (bytes.readUInt32LE(8) !== PACK_VERSION) throw invalid(inputPath, `pack version ${bytes.readUInt32LE(8)}; this build reads ${PACK_VERSION}`);
      if (bytes.readUInt32LE(12) !== METADATA_BLOCK_SIZE_BYTES) throw invalid(inputPath, `metadata block size ${bytes.readUInt32LE(12)}`);
      metadataBlockCount = Number(bytes.readBigUInt64LE(16));
      if (metadataBlockCount < METADATA_BLOCK_COUNT_MIN || metadataBlockCount > METADATA_BLOCK_COUNT_MAX) {
        throw invalid(inputPath, `metadata block count ${metadataBlockCount} is out of range`);
      }
      dataSizeBytes = Number(bytes.readBigUInt64LE(24));
      file = await fileSystem.createFile(temporary, { sizeBytes: metadataBlockCount * METADATA_BLOCK_SIZE_BYTES });
      if (fileSystem.kind(dataPath) === undefined) {
        if (options.dataPath !== undefined) {
          fileSystem.symlink(path.resolve(options.dataPath), dataPath);
          createdData = 'linked';
        } else {
          // Its size is made durable like its name: a crash must not leave a pool whose data file is cut short.
          const data = await fileSystem.createFile(dataPath, { sizeBytes: dataSizeBytes });
          try {
            await data.sync();
          } finally {
            await data.close();
          }
          createdData = 'created';
        }
      } else {
        // A data file shorter than the packed pool's (one an interrupted unpack made, whose size
        // was lost with the power) would read past its end as zeros: it is grown to size, durably.
        const data = await fileSystem.openFile(dataPath, { readOnly: false });
        try {
          if (data.sizeBytes() < dataSizeBytes) {
            await data.grow(dataSizeBytes);
            await data.sync();
          }
        } finally {
          await data.close();
        }
      }
    };
    // The header, then the compressed records handed to the inflater.
    async function* compressed(): AsyncGenerator<Buffer> {
      for await (const raw of input as AsyncIterable<Buffer>) {
        let chunk = raw;
        if (header === undefined) {
          headerChunks.push(chunk);
          headerBytes += chunk.length;
          if (headerBytes < HEADER_BYTES) continue;
          const all = Buffer.concat(headerChunks);
          header = all.subarray(0, HEADER_BYTES);
          chunk = all.subarray(HEADER_BYTES);
          await prepare(header);
        }
        compressedBytes += chunk.length;
        if (chunk.length > 0) yield chunk;
      }
      if (header === undefined) throw invalid(inputPath, 'shorter than the pack header');
    }
    const feeding = pipeline(Readable.from(compressed()), inflate);
    feeding.catch(() => undefined); // its failure surfaces through the iteration below, then again from `await feeding`
    try {
      for await (const out of inflate as AsyncIterable<Buffer>) await consume(out);
      await feeding;
    } catch (error) {
      if (isThinError(error)) throw error;
      throw invalid(inputPath, `the compressed records are damaged or cut short: ${error instanceof Error ? error.message : String(error)}`);
    }
    if (!ended) throw invalid(inputPath, 'the image ends before its trailer (truncated?)');
    // F-PACK-4: the inflater stops at the end of the zlib stream and drops what follows it
    // unread; bytesWritten counts the compressed bytes it took.
    if (inflate.bytesWritten < compressedBytes) throw invalid(inputPath, `${compressedBytes - inflate.bytesWritten} byte(s) follow the compressed records`);
    await file!.sync();
    await file!.close();
    file = undefined;
    fileSystem.rename(temporary, metadataPath); // F-PACK-6
    try {
      const view = await PoolView.open(dir, { fileSystem });
      const packedDataBytes = view.payload.dataBlockCount * view.payload.blockSizeBytes;
      await view.close();
      // The header's data size made the data file: one the packed superblock disagrees with
      // would leave a pool that does not open (a damaged header).
      if (dataSizeBytes !== packedDataBytes) {
        throw invalid(inputPath, `the header records ${dataSizeBytes} bytes of data, the packed pool ${packedDataBytes}`);
      }
    } catch (error) {
      fileSystem.remove(metadataPath);
      throw error;
    }
    // The new names (metadata, a data file or link) are durable before unpack reports the pool made.
    fileSystem.syncDirectory(dir);
    return { metadataBlockCount, liveBlockCount: records, data: createdData ?? 'existing' };
  } catch (error) {
    await file?.close().catch(() => undefined);
    fileSystem.remove(temporary);
    if (createdData !== undefined) fileSystem.remove(dataPath);
    if (createdDir) fileSystem.remove(dir, { recursive: true });
    throw error;
  }
}
