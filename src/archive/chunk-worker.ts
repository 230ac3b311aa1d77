// A worker thread of WorkerChunkJobs (chunk-workers.ts): chunks and hashes the jobs it is sent
// (or only hashes them, sent already cut), holds each job's bytes until told which of its chunks
// to compress (into the caller's shared memory); decodes chunks read back. It may start before the
// store's chunking and level are known; they then come in a 'configure' request before any job.
import { parentPort, workerData } from 'node:worker_threads';
import { ZstdCompressor, ZstdDecompressor } from '../util/zstd.ts';
import { Chunker, type ChunkerParams } from './chunker.ts';
import { chunkAndHash, compressChunks, hashChunks } from './chunk-jobs.ts';
import { decodeChunks, type DecodeItem, type DecodeOutcome } from './chunk-decode.ts';
import { HASH_BYTES } from './format.ts';

export type WorkerRequest =
  | { type: 'configure'; id: number; settings: ChunkSettings }
  | { type: 'chunk'; id: number; data: Uint8Array; rangeEnds?: number[] }
  | { type: 'hash'; id: number; data: Uint8Array; lengths: Uint32Array; rangeFirsts: number[] }
  | { type: 'compress'; id: number; indexes: number[]; out: Uint8Array }
  | { type: 'decode'; id: number; bytes: Uint8Array; places: Array<Omit<DecodeItem, 'hash'>>; hashes: Uint8Array; targets?: Uint8Array[] };
export type WorkerReply =
  | { type: 'chunked'; id: number; lengths: Uint32Array; hashes: Uint8Array }
  | { type: 'hashed'; id: number; hashes: Uint8Array }
  | { type: 'compressed'; id: number; frameBytes: Uint32Array }
  | { type: 'decoded'; id: number; outcome: DecodeOutcome }
  | { type: 'failed'; id: number; message: string };

/** A store's chunking and zstd level. */
export interface ChunkSettings {
  params: ChunkerParams;
  level: number;
}

/** What a worker is started with: the store's settings (or none yet), and where it says it has started. */
export interface WorkerStart {
  settings: ChunkSettings | undefined;
  /** Whether jobs come to be cut here ('chunk'), else only cut ones ('hash'): the chunker is then not warmed up. */
  cuts: boolean;
  /** Set to 1 (Atomics) at `startedAt` once this worker is ready for jobs. */
  started: Int32Array;
  startedAt: number;
}

const { settings, cuts, started, startedAt } = workerData as WorkerStart;
let chunker: Chunker | undefined;
let compressor: ZstdCompressor | undefined;
/** Takes the store's settings, at the start or from a 'configure' request. */
function configure(next: ChunkSettings): void {
  chunker = new Chunker(next.params);
  compressor = new ZstdCompressor(next.level);
}
/** The chunker and compressor, once the settings have come. */
function configured(): { chunker: Chunker; compressor: ZstdCompressor } {
  if (chunker === undefined || compressor === undefined) throw new Error('a job before the store\'s chunking and level');
  return { chunker, compressor };
}
if (settings !== undefined) configure(settings);
// Before the first job arrives (the main thread is loading the store's index meanwhile).
if (cuts) Chunker.warmUp();
const decompressor = new ZstdDecompressor();
const jobs = new Map<number, { data: Uint8Array; lengths: Uint32Array; rangeFirsts: Set<number> }>();
const port = parentPort!;
// In shared memory rather than a message: the main thread may be busy with jobs of its own
// (chunk-workers.ts, hereUntilReady) and not read messages until they are done.
Atomics.store(started, startedAt, 1);

port.on('message', (request: WorkerRequest) => {
  try {
    if (request.type === 'configure') {
      configure(request.settings);
    } else if (request.type === 'chunk') {
      const result = chunkAndHash(configured().chunker, request.data, request.rangeEnds);
      // The lengths go to the main thread (transferred); the job keeps its own copy.
      jobs.set(request.id, { data: request.data, lengths: result.lengths.slice(), rangeFirsts: result.rangeFirsts });
      const reply: WorkerReply = { type: 'chunked', id: request.id, lengths: result.lengths, hashes: result.hashes };
      port.postMessage(reply, [result.lengths.buffer as ArrayBuffer, result.hashes.buffer as ArrayBuffer]);
    } else if (request.type === 'hash') {
      const hashes = hashChunks(request.data, request.lengths);
      jobs.set(request.id, { data: request.data, lengths: request.lengths, rangeFirsts: new Set(request.rangeFirsts) });
      const reply: WorkerReply = { type: 'hashed', id: request.id, hashes };
      port.postMessage(reply, [hashes.buffer as ArrayBuffer]);
    } else if (request.type === 'decode') {
      const items = request.places.map((place, position) => ({ ...place, hash: request.hashes.subarray(position * HASH_BYTES, (position + 1) * HASH_BYTES) }));
      const outcome = decodeChunks(decompressor, request.bytes, items, request.targets);
      const reply: WorkerReply = { type: 'decoded', id: request.id, outcome };
      port.postMessage(reply, 'raw' in outcome ? [outcome.raw.buffer as ArrayBuffer] : []);
    } else {
      const job = jobs.get(request.id)!;
      jobs.delete(request.id);
      // The frames go into the caller's shared buffer; only their lengths travel back.
      const frameBytes = compressChunks(configured().compressor, job.data, job.lengths, request.indexes, request.out, job.rangeFirsts);
      const reply: WorkerReply = { type: 'compressed', id: request.id, frameBytes };
      port.postMessage(reply, [frameBytes.buffer as ArrayBuffer]);
    }
  } catch (error) {
    const reply: WorkerReply = { type: 'failed', id: request.id, message: error instanceof Error ? (error.stack ?? error.message) : String(error) };
    port.postMessage(reply);
  }
});
