// A worker thread of WorkerChunkJobs (chunk-workers.ts): chunks and hashes the jobs it is sent,
// holds each job's bytes until told which of its chunks to compress (into the caller's shared
// memory); decodes chunks read back.
import { parentPort, workerData } from 'node:worker_threads';
import { ZstdCompressor, ZstdDecompressor } from '../util/zstd.ts';
import { Chunker, type ChunkerParams } from './chunker.ts';
import { chunkAndHash, compressChunks } from './chunk-jobs.ts';
import { decodeChunks, type DecodeItem, type DecodeOutcome } from './chunk-decode.ts';
import { HASH_BYTES } from './format.ts';

export type WorkerRequest =
  | { type: 'chunk'; id: number; data: Uint8Array; rangeEnds?: number[] }
  | { type: 'compress'; id: number; indexes: number[]; out: Uint8Array }
  | { type: 'decode'; id: number; bytes: Uint8Array; places: Array<Omit<DecodeItem, 'hash'>>; hashes: Uint8Array; targets?: Uint8Array[] };
export type WorkerReply =
  | { type: 'chunked'; id: number; lengths: Uint32Array; hashes: Uint8Array }
  | { type: 'compressed'; id: number; frameBytes: Uint32Array }
  | { type: 'decoded'; id: number; outcome: DecodeOutcome }
  | { type: 'failed'; id: number; message: string };

/** What a worker is started with: the store's chunking and level, and where it says it has started. */
export interface WorkerStart {
  params: ChunkerParams;
  level: number;
  /** Set to 1 (Atomics) at `startedAt` once this worker is ready for jobs. */
  started: Int32Array;
  startedAt: number;
}

const { params, level, started, startedAt } = workerData as WorkerStart;
const chunker = new Chunker(params);
// Before the first job arrives (the main thread is loading the store's index meanwhile).
Chunker.warmUp();
const compressor = new ZstdCompressor(level);
const decompressor = new ZstdDecompressor();
const jobs = new Map<number, { data: Uint8Array; lengths: Uint32Array; rangeFirsts: Set<number> }>();
const port = parentPort!;
// In shared memory rather than a message: the main thread may be busy with jobs of its own
// (chunk-workers.ts, hereUntilReady) and not read messages until they are done.
Atomics.store(started, startedAt, 1);

port.on('message', (request: WorkerRequest) => {
  try {
    if (request.type === 'chunk') {
      const result = chunkAndHash(chunker, request.data, request.rangeEnds);
      // The lengths go to the main thread (transferred); the job keeps its own copy.
      jobs.set(request.id, { data: request.data, lengths: result.lengths.slice(), rangeFirsts: result.rangeFirsts });
      const reply: WorkerReply = { type: 'chunked', id: request.id, lengths: result.lengths, hashes: result.hashes };
      port.postMessage(reply, [result.lengths.buffer as ArrayBuffer, result.hashes.buffer as ArrayBuffer]);
    } else if (request.type === 'decode') {
      const items = request.places.map((place, position) => ({ ...place, hash: request.hashes.subarray(position * HASH_BYTES, (position + 1) * HASH_BYTES) }));
      const outcome = decodeChunks(decompressor, request.bytes, items, request.targets);
      const reply: WorkerReply = { type: 'decoded', id: request.id, outcome };
      port.postMessage(reply, 'raw' in outcome ? [outcome.raw.buffer as ArrayBuffer] : []);
    } else {
      const job = jobs.get(request.id)!;
      jobs.delete(request.id);
      // The frames go into the caller's shared buffer; only their lengths travel back.
      const frameBytes = compressChunks(compressor, job.data, job.lengths, request.indexes, request.out, job.rangeFirsts);
      const reply: WorkerReply = { type: 'compressed', id: request.id, frameBytes };
      port.postMessage(reply, [frameBytes.buffer as ArrayBuffer]);
    }
  } catch (error) {
    const reply: WorkerReply = { type: 'failed', id: request.id, message: error instanceof Error ? (error.stack ?? error.message) : String(error) };
    port.postMessage(reply);
  }
});
