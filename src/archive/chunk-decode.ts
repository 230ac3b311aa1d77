// Chunks back from a ranged read of a pack: each decompressed (when stored compressed) and checked
// against its name (F-AR-CHUNK-1). The CPU work of unpack and verify, done by ChunkJobs: on the
// calling thread (InlineChunkJobs) or on worker threads (chunk-workers.ts), the same function.
import { ARCHIVE_FRAME_RAW_BYTES_MAX } from '../constants.ts';
import { sha256 } from './format.ts';
import { ZstdDecompressor, ZstdFrameError } from '../util/zstd.ts';

export interface DecodeItem {
  /** Where the chunk's piece (its frame, or its raw bytes) begins in the bytes read. */
  beginBytes: number;
  storedBytes: number;
  rawBytes: number;
  /** Stored in a zstd frame (CHUNK_FLAG_ZSTD) rather than raw. */
  zstd: boolean;
  /** Where the chunk begins in its frame's decompressed bytes. */
  frameOffsetBytes: number;
  /** Its name: the SHA-256 of its raw bytes. */
  hash: Uint8Array;
}

/** Every item's raw bytes end to end (in item order), or the first item that is damaged and how. */
export type DecodeOutcome = { raw: Uint8Array } | { failedItem: number; message: string };

/** Decodes chunks: on this thread or another; a decoder on another thread ignores `targets`. */
export interface ChunkDecoder {
  decode(bytes: Uint8Array, items: DecodeItem[], targets?: Uint8Array[]): Promise<DecodeOutcome>;
}

/**
 * Decodes `items` out of `bytes`. With `targets` (one per item, each rawBytes long) each chunk
 * lands in its target and `raw` is empty; otherwise `raw` holds them all, in one allocation.
 * Consecutive items of one frame (the same beginBytes) are taken from one decompression of it: a
 * frame holds up to ~16 chunks (F-AR-CHUNK-2), and unpack reads them together. A frame whose
 * chunks are all wanted, with targets end to end (a window of unpack; `raw`), is decompressed
 * straight into them; otherwise into a scratch buffer, and the chunks copied out.
 */
export function decodeChunks(decompressor: ZstdDecompressor, bytes: Uint8Array, items: DecodeItem[], targets?: Uint8Array[]): DecodeOutcome {
  const raw = targets === undefined ? new Uint8Array(items.reduce((sum, item) => sum + item.rawBytes, 0)) : new Uint8Array(0);
  const rawAt: number[] = [];
  let at = 0;
  for (const item of items) {
    rawAt.push(at);
    at += item.rawBytes;
  }
  const targetOf = (position: number) => targets?.[position] ?? raw.subarray(rawAt[position]!, rawAt[position]! + items[position]!.rawBytes);
  for (let position = 0; position < items.length; ) {
    const item = items[position]!;
    const stored = bytes.subarray(item.beginBytes, item.beginBytes + item.storedBytes);
    // This frame's items: position to last.
    let last = position;
    while (item.zstd && last + 1 < items.length && items[last + 1]!.beginBytes === item.beginBytes) last += 1;
    if (!item.zstd) {
      if (item.storedBytes !== item.rawBytes) return { failedItem: position, message: `stored raw in ${item.storedBytes} bytes, named for ${item.rawBytes}` };
      targetOf(position).set(stored);
    } else {
      const contentBytes = ZstdDecompressor.contentSize(stored);
      const whole = wholeFrameTarget(items, position, last, targetOf, contentBytes);
      try {
        if (whole !== undefined) decompressor.decompress(stored, whole.length, whole);
        else {
          const frame = decompressor.decompressFrame(stored, ARCHIVE_FRAME_RAW_BYTES_MAX);
          for (let member = position; member <= last; member += 1) {
            const { frameOffsetBytes, rawBytes } = items[member]!;
            if (frameOffsetBytes + rawBytes > frame.length) return { failedItem: member, message: `its zstd frame holds ${frame.length} bytes, the chunk ends at byte ${frameOffsetBytes + rawBytes} of it` };
            targetOf(member).set(frame.subarray(frameOffsetBytes, frameOffsetBytes + rawBytes));
          }
        }
      } catch (error) {
        if (error instanceof ZstdFrameError) return { failedItem: position, message: error.message };
        throw error;
      }
    }
    for (let member = position; member <= last; member += 1) {
      if (Buffer.compare(sha256(targetOf(member)), items[member]!.hash) !== 0) return { failedItem: member, message: 'its bytes no longer hash to its name' };
    }
    position = last + 1;
  }
  return { raw };
}

/**
 * Where a frame can be decompressed straight into its chunks' targets: when items position..last
 * are the whole frame, in order, and their targets lie end to end in one buffer (a window of
 * unpack, or `raw`). A lone chunk of a frame the header does not size is tried there too (its
 * decompression then checks the size).
 */
function wholeFrameTarget(items: DecodeItem[], position: number, last: number, targetOf: (position: number) => Uint8Array, contentBytes: number | undefined): Uint8Array | undefined {
  const first = targetOf(position);
  if (position === last && items[position]!.frameOffsetBytes === 0 && contentBytes === undefined) return first;
  let frameBytes = 0;
  for (let member = position; member <= last; member += 1) {
    const target = targetOf(member);
    if (items[member]!.frameOffsetBytes !== frameBytes || target.buffer !== first.buffer || target.byteOffset !== first.byteOffset + frameBytes) return undefined;
    frameBytes += items[member]!.rawBytes;
  }
  return frameBytes === contentBytes ? new Uint8Array(first.buffer, first.byteOffset, frameBytes) : undefined;
}

/** Decodes on the calling thread, straight into the targets when there are some. */
export class InlineChunkDecoder implements ChunkDecoder {
  readonly #decompressor = new ZstdDecompressor();

  async decode(bytes: Uint8Array, items: DecodeItem[], targets?: Uint8Array[]): Promise<DecodeOutcome> {
    return decodeChunks(this.#decompressor, bytes, items, targets);
  }
}
