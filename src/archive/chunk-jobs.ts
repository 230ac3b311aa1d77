// The CPU work of pack, job by job (a job: up to ARCHIVE_JOB_BYTES of a volume read at once):
// cut it into chunks, hash each, and compress the ones the store does not have yet. Two steps,
// because only the main thread knows which chunks are new (it owns the chunk index), and
// compressing only those saves most of the work when a volume is packed again.
//
// `InlineChunkJobs` does the work on the calling thread; chunk-workers.ts does the same on
// worker threads (the same functions, below), one job per worker at a time.
import { assert } from '../errors.ts';
import { ARCHIVE_FRAME_TARGET_BYTES } from '../constants.ts';
import { ZstdCompressor } from '../util/zstd.ts';
import { Chunker, type ChunkerParams } from './chunker.ts';
import { CHUNK_FLAG_ZSTD, HASH_BYTES, sha256 } from './format.ts';
import { InlineChunkDecoder, type ChunkDecoder, type DecodeItem, type DecodeOutcome } from './chunk-decode.ts';

export interface ChunkedJob {
  /** Each chunk's length, in order; they add up to the job's length. */
  lengths: Uint32Array;
  /** Each chunk's SHA-256, 32 bytes apiece. */
  hashes: Uint8Array;
}

export interface StoredChunk {
  stored: Uint8Array;
  flags: number;
}

/**
 * A piece of a pack as compress makes it: a zstd frame of one or more adjacent chunks, or one
 * chunk's raw bytes. `chunks` are positions in the `indexes` given to compress, in order, each
 * with where it starts in the frame's decompressed bytes.
 */
export interface StoredPiece extends StoredChunk {
  chunks: Array<{ position: number; frameOffsetBytes: number }>;
}

/** Also decodes chunks read back (chunk-decode.ts), for unpack and verify. */
export interface ChunkJobs extends ChunkDecoder {
  /**
   * Cuts and hashes `data` (the job keeps it until `compress`). `rangeEnds` (increasing, the last
   * data.length; default one range) are where the ranges of the volume that the job holds end to
   * end end in it: each range is cut as if it were a job alone (its end is a cut).
   */
  chunk(data: Uint8Array, rangeEnds?: number[]): Promise<{ id: number; result: ChunkedJob }>;
  /**
   * The stored form of the chunks at `indexes` (increasing) of job `id`, as pieces, then forgets
   * the job. A frame holds chunks of one range only. Frames are written into `out` (shared
   * memory, at least as long as the job), raw chunks stay where they are: each `stored` is a view
   * of `out` or of the job's bytes, valid until the caller reuses them.
   */
  compress(id: number, indexes: number[], out: Uint8Array): Promise<StoredPiece[]>;
  close(): Promise<void>;
}

/** A job chunked: its chunks, and which of them begin a range (compressChunks ends frames there). */
export interface ChunkedRanges extends ChunkedJob {
  rangeFirsts: Set<number>;
}

/** Cuts each range of `data` (ending at `rangeEnds`, the last at data.length; each end is a cut) and hashes the chunks. */
export function chunkAndHash(chunker: Chunker, data: Uint8Array, rangeEnds: readonly number[] = [data.length]): ChunkedRanges {
  assert(rangeEnds.length > 0 && rangeEnds[rangeEnds.length - 1] === data.length, 'ranges that do not end at the job\'s end');
  const lengths: number[] = [];
  const rangeFirsts = new Set<number>();
  let begin = 0;
  for (const end of rangeEnds) {
    // As a small integer: an end the caller computed from volume offsets past 2^30 is held as a
    // double even when small again, and `cut`, compiled for small integers (its warm-up's), was
    // deoptimized on the main thread by it ("not a Smi"; a worker's arrive as small integers).
    const rangeEnd = end | 0;
    assert(rangeEnd === end && rangeEnd >= begin, 'range ends out of order');
    rangeFirsts.add(lengths.length);
    while (begin < rangeEnd) {
      const end = chunker.cut(data, begin, rangeEnd, true);
      lengths.push(end - begin);
      begin = end;
    }
  }
  const hashes = new Uint8Array(lengths.length * HASH_BYTES);
  begin = 0;
  lengths.forEach((length, index) => {
    hashes.set(sha256(data.subarray(begin, begin + length)), index * HASH_BYTES);
    begin += length;
  });
  return { lengths: Uint32Array.from(lengths), hashes, rangeFirsts };
}

/** A chunk's stored form: its zstd frame, or the raw bytes (a copy) when that is not smaller (F-AR-CHUNK-2). */
export function storeChunk(compressor: ZstdCompressor, raw: Uint8Array): StoredChunk {
  const frame = new Uint8Array(Math.max(0, raw.length - 1));
  const frameBytes = compressor.compressInto(raw, frame);
  if (frameBytes !== undefined) return { stored: frame.subarray(0, frameBytes), flags: CHUNK_FLAG_ZSTD };
  return { stored: raw.slice(), flags: 0 };
}

/** compressChunks' mark for a chunk that continues the frame of the chunk before it. */
export const FRAME_CONTINUES = 0xffffffff;

/**
 * Compresses the chunks at `indexes` (increasing) of a job into `out`, frames end to end: each
 * frame holds adjacent chunks (neighbours in the job, both new, the second not the first of a
 * range in `rangeFirsts`: a frame stays within one range of the volume) up to
 * ARCHIVE_FRAME_TARGET_BYTES together, or one longer chunk, and is kept only when smaller than
 * its chunks (F-AR-CHUNK-2); otherwise they are stored raw, each alone. Returns, per chunk, the
 * length of the frame it begins, FRAME_CONTINUES when it continues the one before, 0 when it is
 * stored raw (a zstd frame is never empty); storedPieces turns them into pieces.
 */
export function compressChunks(
  compressor: ZstdCompressor,
  data: Uint8Array,
  lengths: Uint32Array,
  indexes: number[],
  out: Uint8Array,
  rangeFirsts: ReadonlySet<number> = new Set(),
): Uint32Array {
  const offsets = chunkOffsets(lengths);
  const frameBytes = new Uint32Array(indexes.length);
  let at = 0;
  for (let first = 0; first < indexes.length; ) {
    const begin = offsets[indexes[first]!]!;
    let end = begin + lengths[indexes[first]!]!;
    let next = first + 1;
    while (
      next < indexes.length &&
      indexes[next] === indexes[next - 1]! + 1 &&
      !rangeFirsts.has(indexes[next]!) &&
      end - begin + lengths[indexes[next]!]! <= ARCHIVE_FRAME_TARGET_BYTES
    ) {
      end += lengths[indexes[next]!]!;
      next += 1;
    }
    // Room for a frame one byte shorter than its chunks: less than the chunks before it took
    // raw, so `out` as long as the job always has it.
    const written = compressor.compressInto(data.subarray(begin, end), out.subarray(at, at + end - begin - 1));
    if (written !== undefined) {
      frameBytes[first] = written;
      frameBytes.fill(FRAME_CONTINUES, first + 1, next);
      at += written;
    }
    first = next;
  }
  return frameBytes;
}

/** compressChunks' result as pieces: frames as views of `out`, raw chunks as views of `data`. */
export function storedPieces(data: Uint8Array, lengths: Uint32Array, indexes: number[], out: Uint8Array, frameBytes: Uint32Array): StoredPiece[] {
  assert(frameBytes.length === indexes.length, 'a frame length per chunk');
  const offsets = chunkOffsets(lengths);
  const pieces: StoredPiece[] = [];
  let at = 0;
  let frameRawBytes = 0;
  indexes.forEach((index, position) => {
    const written = frameBytes[position]!;
    if (written === FRAME_CONTINUES) {
      const piece = pieces[pieces.length - 1];
      assert(piece !== undefined && piece.flags === CHUNK_FLAG_ZSTD, 'a frame continued without its start');
      piece.chunks.push({ position, frameOffsetBytes: frameRawBytes });
    } else if (written === 0) {
      pieces.push({ stored: data.subarray(offsets[index]!, offsets[index]! + lengths[index]!), flags: 0, chunks: [{ position, frameOffsetBytes: 0 }] });
      frameRawBytes = 0;
    } else {
      at += written;
      pieces.push({ stored: out.subarray(at - written, at), flags: CHUNK_FLAG_ZSTD, chunks: [{ position, frameOffsetBytes: 0 }] });
      frameRawBytes = 0;
    }
    frameRawBytes += lengths[index]!;
  });
  return pieces;
}

function chunkOffsets(lengths: Uint32Array): Uint32Array {
  const offsets = new Uint32Array(lengths.length);
  let at = 0;
  for (let index = 0; index < lengths.length; index += 1) {
    offsets[index] = at;
    at += lengths[index]!;
  }
  return offsets;
}

export class InlineChunkJobs implements ChunkJobs {
  readonly #chunker: Chunker;
  readonly #compressor: ZstdCompressor;
  readonly #jobs = new Map<number, { data: Uint8Array; chunked: ChunkedRanges }>();
  readonly #decoder = new InlineChunkDecoder();
  #nextId = 1;

  constructor(params: ChunkerParams, level: number) {
    this.#chunker = new Chunker(params);
    Chunker.warmUp();
    this.#compressor = new ZstdCompressor(level);
  }

  async chunk(data: Uint8Array, rangeEnds?: number[]): Promise<{ id: number; result: ChunkedJob }> {
    const chunked = chunkAndHash(this.#chunker, data, rangeEnds);
    const id = this.#nextId++;
    this.#jobs.set(id, { data, chunked });
    return { id, result: { lengths: chunked.lengths, hashes: chunked.hashes } };
  }

  async compress(id: number, indexes: number[], out: Uint8Array): Promise<StoredPiece[]> {
    const job = this.#jobs.get(id)!;
    this.#jobs.delete(id);
    assert(out.length >= job.data.length, 'an output buffer shorter than its job');
    const { lengths, rangeFirsts } = job.chunked;
    return storedPieces(job.data, lengths, indexes, out, compressChunks(this.#compressor, job.data, lengths, indexes, out, rangeFirsts));
  }

  decode(bytes: Uint8Array, items: DecodeItem[], targets?: Uint8Array[]): Promise<DecodeOutcome> {
    return this.#decoder.decode(bytes, items, targets);
  }

  async close(): Promise<void> {
    this.#jobs.clear();
  }
}
