// SHA-256 of a job's chunks on libuv's thread pool, for the jobs pack does on the main thread
// (InlineChunkJobs): the main thread reads, cuts and compresses other jobs while the pool hashes.
//
// The main thread is the incremental's critical path and the second core is mostly idle; a worker
// thread's isolate costs 40–60 ms of CPU to start (docs/benchmarks.md, "Archive: the incremental
// cut here, hashed and compressed on a worker"), and `crypto.subtle.digest` copies each input on
// the calling thread. OpenSSL's one-shot `SHA256`, which the node binary exports (linked in, or
// from its libcrypto), called through koffi's asynchronous calls runs on libuv's pool with no
// isolate and no copy: ~10–15 µs of the main thread per 64 KiB chunk against ~50 µs to hash it
// here. Where the symbol or koffi is not there, chunks are hashed on the calling thread.
//
// Measured on the bench's incremental (docs/benchmarks.md, "Archive: the incremental's hashes on
// libuv's pool"): the main thread's CPU fell by ~30 ms, the process's rose by ~30–50 ms (a call,
// a pool thread's wake-up and a callback per chunk), and the wall time did not fall on the shared
// two-core machine.
import { loadKoffi } from '../util/native.ts';
import { HASH_BYTES, sha256 } from './format.ts';

export interface ChunkHasher {
  /**
   * Writes the SHA-256 of each chunk of `data` (`lengths`, end to end from its start) into
   * `hashes` (HASH_BYTES apiece). `data` and `hashes` must stay as they are until it resolves.
   */
  hash(data: Uint8Array, lengths: Uint32Array, hashes: Uint8Array): Promise<void>;
}

/**
 * Hashes in flight on the pool at most. koffi runs 8 asynchronous calls from memory it keeps
 * (more allocate their own, and past 256 it refuses them), the pool has 4 threads, the machine may
 * have 2 cores: a few calls keep a pool thread busy while the main thread issues the next.
 */
export const POOL_HASHES_IN_FLIGHT_MAX = 4;

interface Sha256Function {
  (data: Uint8Array, length: number, digest: Uint8Array): unknown;
  async(data: Uint8Array, length: number, digest: Uint8Array, done: (error: unknown) => void): void;
}

/** Chunks of one `hash` call still to issue or to come back. */
interface Batch {
  data: Uint8Array;
  lengths: Uint32Array;
  hashes: Uint8Array;
  /** The next chunk to issue, and where it begins in `data`. */
  next: number;
  offset: number;
  /** Chunks not hashed yet (issued or not). */
  left: number;
  failure?: unknown;
  /** koffi's callback for each of its chunks (one function per batch, not one per chunk). */
  done: (error: unknown) => void;
  resolve: () => void;
  reject: (error: unknown) => void;
}

const resolved = Promise.resolve();

/** Hashes on the calling thread (node:crypto). */
export class ThreadChunkHasher implements ChunkHasher {
  hash(data: Uint8Array, lengths: Uint32Array, hashes: Uint8Array): Promise<void> {
    hashChunksHere(data, lengths, hashes);
    return resolved;
  }
}

/** The hashes of chunks [first, end) of `data` (all by default), chunk `first` beginning at `offset`, on this thread. */
export function hashChunksHere(data: Uint8Array, lengths: Uint32Array, hashes: Uint8Array, first = 0, offset = 0, end = lengths.length): void {
  let begin = offset;
  for (let index = first; index < end; index += 1) {
    const length = lengths[index]!;
    hashes.set(sha256(data.subarray(begin, begin + length)), index * HASH_BYTES);
    begin += length;
  }
}

/** Hashes on libuv's pool through `call` (OpenSSL's SHA256), POOL_HASHES_IN_FLIGHT_MAX at a time, calls in order. */
export class PoolChunkHasher implements ChunkHasher {
  readonly #call: Sha256Function;
  readonly #inFlightMax: number;
  /** Batches with chunks not issued yet, oldest first. */
  readonly #waiting: Batch[] = [];
  #inFlight = 0;

  constructor(call: Sha256Function, inFlightMax = POOL_HASHES_IN_FLIGHT_MAX) {
    this.#call = call;
    this.#inFlightMax = inFlightMax;
  }

  hash(data: Uint8Array, lengths: Uint32Array, hashes: Uint8Array): Promise<void> {
    if (lengths.length === 0) return resolved;
    return new Promise<void>((resolve, reject) => {
      const batch: Batch = { data, lengths, hashes, next: 0, offset: 0, left: lengths.length, done: () => undefined, resolve, reject };
      batch.done = (error: unknown) => {
        this.#inFlight -= 1;
        this.#settle(batch, error);
        this.#issue();
      };
      this.#waiting.push(batch);
      this.#issue();
    });
  }

  /** Issues waiting chunks while fewer than the maximum are in flight. */
  #issue(): void {
    while (this.#inFlight < this.#inFlightMax && this.#waiting.length > 0) {
      const batch = this.#waiting[0]!;
      const index = batch.next;
      const begin = batch.offset;
      const end = begin + batch.lengths[index]!;
      batch.next = index + 1;
      batch.offset = end;
      if (batch.next === batch.lengths.length) this.#waiting.shift();
      this.#inFlight += 1;
      try {
        // koffi passes the views' memory as it lies (no copy); `batch.done`, which koffi holds until
        // it is called, keeps `data` and `hashes` reachable, and the caller keeps their bytes as they are.
        this.#call.async(batch.data.subarray(begin, end), end - begin, batch.hashes.subarray(index * HASH_BYTES, (index + 1) * HASH_BYTES), batch.done);
      } catch {
        // koffi refused the call (its asynchronous calls all taken by others): hashed here.
        this.#inFlight -= 1;
        hashChunksHere(batch.data, batch.lengths, batch.hashes, index, begin, index + 1);
        this.#settle(batch, undefined);
      }
    }
  }

  /** One chunk of `batch` done (or failed); settles its promise after its last. */
  #settle(batch: Batch, error: unknown): void {
    if (error !== null && error !== undefined) batch.failure ??= error;
    batch.left -= 1;
    if (batch.left > 0) return;
    if (batch.failure === undefined) batch.resolve();
    else batch.reject(batch.failure);
  }
}

/**
 * OpenSSL's SHA256 from the running node binary through koffi, or undefined where either is not
 * there. Checked once against node:crypto, so that a symbol of that name that is something else
 * is never used.
 */
export function loadPoolSha256(): Sha256Function | undefined {
  try {
    const koffi = loadKoffi();
    const call = koffi.load(null).func('uint8_t *SHA256(const uint8_t *d, size_t n, _Out_ uint8_t *md)') as unknown as Sha256Function;
    if (typeof call.async !== 'function') return undefined;
    const probe = new TextEncoder().encode('thinbd');
    const digest = new Uint8Array(HASH_BYTES);
    call(probe, probe.length, digest);
    return Buffer.compare(digest, sha256(probe)) === 0 ? call : undefined;
  } catch {
    return undefined;
  }
}

let shared: ChunkHasher | undefined;

/** The process's hasher: one bound on the pool's calls for all jobs, the first time it is asked for. */
export function chunkHasher(): ChunkHasher {
  if (shared === undefined) {
    const call = loadPoolSha256();
    shared = call === undefined ? new ThreadChunkHasher() : new PoolChunkHasher(call);
  }
  return shared;
}
