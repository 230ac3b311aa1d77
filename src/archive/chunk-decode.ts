// Chunks back from a ranged read of a pack: each decompressed (when stored compressed) and checked
// against its name (F-AR-CHUNK-1). The CPU work of unpack and verify, done by ChunkJobs: on the
// calling thread (InlineChunkJobs) or on worker threads (chunk-workers.ts), the same function.
import { sha256 } from './format.ts';
import { ZstdDecompressor, ZstdFrameError } from '../util/zstd.ts';

export interface DecodeItem {
  /** Where the chunk's stored bytes begin in the bytes read. */
  beginBytes: number;
  storedBytes: number;
  rawBytes: number;
  /** Stored as a zstd frame (CHUNK_FLAG_ZSTD) rather than raw. */
  zstd: boolean;
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
 */
export function decodeChunks(decompressor: ZstdDecompressor, bytes: Uint8Array, items: DecodeItem[], targets?: Uint8Array[]): DecodeOutcome {
  const raw = targets === undefined ? new Uint8Array(items.reduce((sum, item) => sum + item.rawBytes, 0)) : new Uint8Array(0);
  let at = 0;
  for (const [position, item] of items.entries()) {
    const target = targets?.[position] ?? raw.subarray(at, at + item.rawBytes);
    at += item.rawBytes;
    const stored = bytes.subarray(item.beginBytes, item.beginBytes + item.storedBytes);
    if (!item.zstd) {
      if (item.storedBytes !== item.rawBytes) return { failedItem: position, message: `stored raw in ${item.storedBytes} bytes, named for ${item.rawBytes}` };
      target.set(stored);
    } else {
      try {
        decompressor.decompress(stored, item.rawBytes, target);
      } catch (error) {
        if (error instanceof ZstdFrameError) return { failedItem: position, message: error.message };
        throw error;
      }
    }
    if (Buffer.compare(sha256(target), item.hash) !== 0) {
      return { failedItem: position, message: 'its bytes no longer hash to its name' };
    }
  }
  return { raw };
}

/** Decodes on the calling thread, straight into the targets when there are some. */
export class InlineChunkDecoder implements ChunkDecoder {
  readonly #decompressor = new ZstdDecompressor();

  async decode(bytes: Uint8Array, items: DecodeItem[], targets?: Uint8Array[]): Promise<DecodeOutcome> {
    return decodeChunks(this.#decompressor, bytes, items, targets);
  }
}
