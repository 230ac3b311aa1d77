// The CPU work of pack, job by job (a job: up to ARCHIVE_JOB_BYTES of a volume read at once):
// cut it into chunks, hash each, and compress the ones the store does not have yet. Two steps,
// because only the main thread knows which chunks are new (it owns the chunk index), and
// compressing only those saves most of the work when a volume is packed again.
//
// `InlineChunkJobs` does the work on the calling thread; chunk-workers.ts does the same on
// worker threads (the same functions, below), one job per worker at a time.
import { createHash } from 'node:crypto';
import { ZstdCompressor } from '../util/zstd.ts';
import { Chunker, type ChunkerParams } from './chunker.ts';
import { CHUNK_FLAG_ZSTD, HASH_BYTES } from './format.ts';
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

/** Also decodes chunks read back (chunk-decode.ts), for unpack and verify. */
export interface ChunkJobs extends ChunkDecoder {
  /** Cuts and hashes `data` (the job keeps it until `compress` or `release`). */
  chunk(data: Uint8Array): Promise<{ id: number; result: ChunkedJob }>;
  /** The stored form of the chunks at `indexes` of job `id`, then forgets the job. */
  compress(id: number, indexes: number[]): Promise<StoredChunk[]>;
  close(): Promise<void>;
}

/** Cuts the whole of `data` (its end is a cut) and hashes the chunks. */
export function chunkAndHash(chunker: Chunker, data: Uint8Array): ChunkedJob {
  const lengths: number[] = [];
  let begin = 0;
  while (begin < data.length) {
    const end = chunker.cut(data, begin, data.length, true);
    lengths.push(end - begin);
    begin = end;
  }
  const hashes = new Uint8Array(lengths.length * HASH_BYTES);
  begin = 0;
  lengths.forEach((length, index) => {
    hashes.set(createHash('sha256').update(data.subarray(begin, begin + length)).digest(), index * HASH_BYTES);
    begin += length;
  });
  return { lengths: Uint32Array.from(lengths), hashes };
}

/** A chunk's stored form: its zstd frame, or the raw bytes (a copy) when that is not smaller (F-AR-CHUNK-2). */
export function storeChunk(compressor: ZstdCompressor, raw: Uint8Array): StoredChunk {
  const frame = compressor.compress(raw);
  if (frame.length < raw.length) return { stored: frame, flags: CHUNK_FLAG_ZSTD };
  return { stored: raw.slice(), flags: 0 };
}

/** The chunks at `indexes` of a job, stored. */
export function compressChunks(compressor: ZstdCompressor, data: Uint8Array, lengths: Uint32Array, indexes: number[]): StoredChunk[] {
  const offsets = new Array<number>(lengths.length);
  let at = 0;
  for (let index = 0; index < lengths.length; index += 1) {
    offsets[index] = at;
    at += lengths[index]!;
  }
  return indexes.map((index) => storeChunk(compressor, data.subarray(offsets[index]!, offsets[index]! + lengths[index]!)));
}

export class InlineChunkJobs implements ChunkJobs {
  readonly #chunker: Chunker;
  readonly #compressor: ZstdCompressor;
  readonly #jobs = new Map<number, { data: Uint8Array; lengths: Uint32Array }>();
  readonly #decoder = new InlineChunkDecoder();
  #nextId = 1;

  constructor(params: ChunkerParams, level: number) {
    this.#chunker = new Chunker(params);
    this.#compressor = new ZstdCompressor(level);
  }

  async chunk(data: Uint8Array): Promise<{ id: number; result: ChunkedJob }> {
    const result = chunkAndHash(this.#chunker, data);
    const id = this.#nextId++;
    this.#jobs.set(id, { data, lengths: result.lengths });
    return { id, result };
  }

  async compress(id: number, indexes: number[]): Promise<StoredChunk[]> {
    const job = this.#jobs.get(id)!;
    this.#jobs.delete(id);
    return compressChunks(this.#compressor, job.data, job.lengths, indexes);
  }

  decode(bytes: Uint8Array, items: DecodeItem[], targets?: Uint8Array[]): Promise<DecodeOutcome> {
    return this.#decoder.decode(bytes, items, targets);
  }

  async close(): Promise<void> {
    this.#jobs.clear();
  }
}
