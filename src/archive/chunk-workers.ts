// ChunkJobs on worker threads: chunking, SHA-256 and zstd are CPU work, and pack and unpack are
// bound by them, so they run on one worker per core (the main thread reads, keeps the index and uploads).
// A job's bytes are shared memory, read by its worker in place and held until the main thread says
// which chunks to compress; the frames go into the caller's shared output buffer, so no chunk is
// copied between threads. Jobs go to the worker with the fewest in hand among those that have
// started (a job sent to one still starting waits for its start), or, for pack, to the main
// thread itself while none has (hereUntilReady); decodes to the one with the fewest, started or not.
import { statSync } from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { assert } from '../errors.ts';
import type { ChunkerParams } from './chunker.ts';
import { InlineChunkJobs, storedPieces, type ChunkJobs, type ChunkedJob, type StoredPiece } from './chunk-jobs.ts';
import type { DecodeItem, DecodeOutcome } from './chunk-decode.ts';
import { HASH_BYTES } from './format.ts';
import type { WorkerReply, WorkerRequest, WorkerStart } from './chunk-worker.ts';

/** Worker threads at most: enough for the machines thinbd runs on; each holds a few jobs' bytes. */
const WORKERS_MAX = 8;

/** How long close() waits at most for the workers to report their end. */
const WORKER_CLOSE_WAIT_MS = 1_000;

interface Waiter {
  resolve: (reply: WorkerReply) => void;
  reject: (error: Error) => void;
}

/** The worker of `workers` with the fewest jobs in hand. */
function leastBusy(workers: PoolWorker[]): PoolWorker {
  return workers.reduce((best, candidate) => (candidate.jobs < best.jobs ? candidate : best));
}

interface PoolWorker {
  worker: Worker;
  /** Its place in #started. */
  slot: number;
  jobs: number;
  waiters: Map<number, Waiter>;
}

export interface WorkerChunkJobsOptions {
  /**
   * Chunk jobs on the calling thread while no worker has started yet, rather than queue them
   * for workers still starting: a worker was ready 40–150 ms after it was started, while pack
   * loaded the store's index in 20–60 ms meanwhile and then waited (docs/benchmarks.md, "Archive:
   * the incremental's start, branch inc2").
   */
  hereUntilReady?: boolean;
}

/** A file's modification time, undefined when it is missing. */
function modifiedMs(url: URL): number | undefined {
  return statSync(url, { throwIfNoEntry: false })?.mtimeMs;
}

/**
 * Built, the worker is JavaScript: the one-file bundle dist/chunk-worker.cjs when it is at least
 * as new as the worker's module (scripts/bundle.mjs makes it after tsc; a worker loads it faster
 * than the modules it was made from), else the module beside this one, so a bare tsc run never
 * starts stale code. Run from source under tsx (the tests), it is TypeScript, and Node 20 does not
 * hand tsx's loader to worker threads: the worker registers it first.
 */
function startWorker(workerData: WorkerStart): Worker {
  if (!import.meta.url.endsWith('.ts')) {
    const module = new URL('./chunk-worker.js', import.meta.url);
    const bundle = new URL('../chunk-worker.cjs', import.meta.url);
    const bundled = modifiedMs(bundle);
    const compiled = modifiedMs(module);
    return new Worker(bundled !== undefined && compiled !== undefined && bundled >= compiled ? bundle : module, { workerData });
  }
  const url = new URL('./chunk-worker.ts', import.meta.url).href;
  const bootstrap = `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(url)}); });`;
  return new Worker(bootstrap, { eval: true, workerData });
}

export class WorkerChunkJobs implements ChunkJobs {
  readonly #count: number;
  #workers: PoolWorker[] | undefined;
  readonly #params: { params: ChunkerParams; level: number };
  /** Per worker, 1 once it is ready for jobs (it sets it: chunk-worker.ts). */
  readonly #started: Int32Array;
  /** Jobs chunked and not yet compressed: their worker, bytes and chunk lengths, or their id on this thread. */
  readonly #owner = new Map<number, { entry: PoolWorker; data: Uint8Array; lengths: Uint32Array } | { hereId: number }>();
  #nextId = 1;
  readonly #hereUntilReady: boolean;
  /** The jobs chunked on this thread (hereUntilReady), made at the first. */
  #here: InlineChunkJobs | undefined;
  #jobsHere = 0;

  /**
   * The workers start at once: a worker's start (an isolate, its modules, the zstd binding) took
   * 0.1–0.2 s here, which the caller's own set-up (the store's index, the pool) then hides.
   */
  constructor(params: ChunkerParams, level: number, count = Math.min(WORKERS_MAX, os.availableParallelism()), options: WorkerChunkJobsOptions = {}) {
    this.#params = { params, level };
    this.#count = Math.max(1, count);
    this.#started = new Int32Array(new SharedArrayBuffer(this.#count * Int32Array.BYTES_PER_ELEMENT));
    this.#hereUntilReady = options.hereUntilReady === true;
    this.#start();
  }

  /** Jobs chunked on this thread so far (hereUntilReady). */
  get jobsHere(): number {
    return this.#jobsHere;
  }

  /** How many of the workers have started (are ready for jobs). */
  get startedWorkers(): number {
    return (this.#workers ?? []).filter((entry) => this.#isStarted(entry)).length;
  }

  #isStarted(entry: PoolWorker): boolean {
    return Atomics.load(this.#started, entry.slot) === 1;
  }

  #start(): PoolWorker[] {
    this.#workers = Array.from({ length: this.#count }, (_, slot) => {
      Atomics.store(this.#started, slot, 0);
      const entry: PoolWorker = { worker: startWorker({ ...this.#params, started: this.#started, startedAt: slot }), slot, jobs: 0, waiters: new Map() };
      entry.worker.on('message', (reply: WorkerReply) => {
        const waiter = entry.waiters.get(reply.id);
        entry.waiters.delete(reply.id);
        if (entry.waiters.size === 0) entry.worker.unref();
        if (reply.type === 'failed') waiter?.reject(new Error(`chunk worker: ${reply.message}`));
        else waiter?.resolve(reply);
      });
      const failAll = (error: Error): void => {
        for (const waiter of entry.waiters.values()) waiter.reject(error);
        entry.waiters.clear();
        entry.worker.unref();
      };
      entry.worker.on('error', failAll);
      // A worker that stops without an error event (killed, out of memory) fails what it held,
      // rather than leaving its callers waiting for replies that cannot come.
      entry.worker.on('exit', (code) => failAll(new Error(`chunk worker stopped (exit code ${code})`)));
      // An idle worker does not hold the process open (workers start before the caller's set-up,
      // which may fail before it reaches close()); one with a reply awaited does (#send). After the
      // listeners: adding a 'message' listener refs the worker's port again.
      entry.worker.unref();
      return entry;
    });
    return this.#workers;
  }

  #send(entry: PoolWorker, request: WorkerRequest, transfer: ArrayBuffer[] = []): Promise<WorkerReply> {
    return new Promise((resolve, reject) => {
      if (entry.waiters.size === 0) entry.worker.ref();
      entry.waiters.set(request.id, { resolve, reject });
      entry.worker.postMessage(request, transfer);
    });
  }

  /**
   * The worker with the fewest jobs in hand among those started, else among all (the job waits
   * for its start); undefined when none has started and `hereUntilReady` allows this thread.
   */
  #pick(): PoolWorker | undefined {
    const workers = this.#workers ?? this.#start();
    const started = workers.filter((candidate) => this.#isStarted(candidate));
    if (started.length === 0 && this.#hereUntilReady) return undefined;
    return leastBusy(started.length > 0 ? started : workers);
  }

  async chunk(data: Uint8Array, rangeEnds?: number[]): Promise<{ id: number; result: ChunkedJob }> {
    const entry = this.#pick();
    const id = this.#nextId++;
    if (entry === undefined) {
      this.#here ??= new InlineChunkJobs(this.#params.params, this.#params.level);
      this.#jobsHere += 1;
      const chunked = await this.#here.chunk(data, rangeEnds);
      this.#owner.set(id, { hereId: chunked.id });
      return { id, result: chunked.result };
    }
    entry.jobs += 1;
    // Shared memory is read by the worker where it lies (the caller keeps it until compress, whose
    // raw chunks are views of it).
    assert(data.buffer instanceof SharedArrayBuffer, 'a job outside shared memory');
    const reply = await this.#send(entry, { type: 'chunk', id, data, ...(rangeEnds === undefined ? {} : { rangeEnds }) });
    assert(reply.type === 'chunked', 'a chunk reply');
    this.#owner.set(id, { entry, data, lengths: reply.lengths });
    return { id, result: { lengths: reply.lengths, hashes: reply.hashes } };
  }

  async compress(id: number, indexes: number[], out: Uint8Array): Promise<StoredPiece[]> {
    const job = this.#owner.get(id);
    assert(job !== undefined, `no job ${id}`);
    this.#owner.delete(id);
    if ('hereId' in job) return await this.#here!.compress(job.hereId, indexes, out);
    assert(out.buffer instanceof SharedArrayBuffer && out.length >= job.data.length, 'an output buffer outside shared memory or shorter than its job');
    try {
      const reply = await this.#send(job.entry, { type: 'compress', id, indexes, out });
      assert(reply.type === 'compressed', 'a compress reply');
      return storedPieces(job.data, job.lengths, indexes, out, reply.frameBytes);
    } finally {
      job.entry.jobs -= 1;
    }
  }

  /**
   * Decodes on the worker with the fewest jobs in hand, started or not: unpack asks for many at
   * once from its start, and sending them to the workers already started took it ~1% longer in
   * paired runs (noise, or the later worker left idle). Bytes in shared memory are read there in
   * place (the caller keeps them until this resolves); others move there (a copy when they share
   * their buffer). Targets in shared memory are written by the worker in place; others are
   * ignored (the chunks come back end to end).
   */
  async decode(bytes: Uint8Array, items: DecodeItem[], targets?: Uint8Array[]): Promise<DecodeOutcome> {
    const entry = leastBusy(this.#workers ?? this.#start());
    const shared = bytes.buffer instanceof SharedArrayBuffer;
    const owned = shared || (bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength) ? bytes : bytes.slice();
    entry.jobs += 1;
    try {
      // The names go in one buffer: a view posted alone would take its whole buffer along (a segment's).
      const hashes = new Uint8Array(items.length * HASH_BYTES);
      items.forEach((item, position) => hashes.set(item.hash, position * HASH_BYTES));
      const places = items.map(({ beginBytes, storedBytes, rawBytes, zstd, frameOffsetBytes }) => ({ beginBytes, storedBytes, rawBytes, zstd, frameOffsetBytes }));
      const sharedTargets = targets !== undefined && targets.every((target) => target.buffer instanceof SharedArrayBuffer) ? targets : undefined;
      const request: WorkerRequest = { type: 'decode', id: this.#nextId++, bytes: owned, places, hashes, ...(sharedTargets === undefined ? {} : { targets: sharedTargets }) };
      const reply = await this.#send(entry, request, shared ? [hashes.buffer] : [owned.buffer as ArrayBuffer, hashes.buffer]);
      assert(reply.type === 'decoded', 'a decode reply');
      return reply.outcome;
    } finally {
      entry.jobs -= 1;
    }
  }

  /**
   * Ends the workers. They stop holding the process open at once (unref), and the wait for them
   * is bounded: a worker ended while it is still loading its modules can take long to report its
   * end, and the command's result must not wait for it. The bound's timer does hold the process:
   * with nothing else left to wait for, an unsettled wait let the event loop run dry, and Node
   * ended a failed `archive unpack` with exit code 13 before it printed its error (about 1 run in
   * 50, when a worker was still decoding a chunk of the failed read).
   */
  async close(): Promise<void> {
    const workers = this.#workers ?? [];
    this.#workers = undefined;
    await this.#here?.close();
    for (const entry of workers) entry.worker.unref();
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, WORKER_CLOSE_WAIT_MS);
    });
    try {
      await Promise.race([Promise.all(workers.map((entry) => entry.worker.terminate())), bound]);
    } finally {
      clearTimeout(timer);
    }
  }
}
