// A flat tar from a local file is parsed on a second thread (parse-worker.ts), which also builds
// the tree and the file system's metadata: the main thread writes the buffers it fills (through
// block sharing into the pool) while it reads, decompresses, parses and copies the next ones.
// Both cores work on one import, and the main thread, which holds the pool, does only what must
// happen there (docs/benchmarks.md "Image import").
import { statSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { ThinError, assert } from '../errors.ts';
import { sealInodeTable } from './ext4/inodes.ts';
import type { ParseJob, ParseReply, ParseRequest, ParseResult } from './parse-worker.ts';

export interface ParseHost {
  /**
   * Writes a full buffer's bytes at offsetBytes of the volume (the buffer is reused once this
   * resolves): file data (`data`: block sharing looks it up) or the metadata (written as it is).
   * `bytesRead`: of the source, so far.
   */
  write(offsetBytes: number, bytes: Uint8Array, data: boolean, bytesRead: number): Promise<void>;
}

export interface ParseOptions extends Omit<ParseJob, 'buffers'> {
  bufferBytes: number;
  buffersMax: number;
  signal?: AbortSignal | undefined;
}

/**
 * Built, the worker is JavaScript: the one-file bundle dist/image-parse-worker.cjs when it is at
 * least as new as the worker's module (scripts/bundle.mjs makes it after tsc; a thread loads one
 * file faster than the ~30 modules it was made from, and the import waits for that start), else
 * the module beside this one, so a bare tsc run never starts stale code. Run from source under
 * tsx (the tests), it is TypeScript, and Node 20 does not hand tsx's loader to worker threads: it
 * registers it first. The job comes later, as the first message.
 */
function startWorker(): Worker {
  if (!import.meta.url.endsWith('.ts')) {
    const module = new URL('./parse-worker.js', import.meta.url);
    const bundle = new URL('../image-parse-worker.cjs', import.meta.url);
    const bundled = statSync(bundle, { throwIfNoEntry: false })?.mtimeMs;
    const compiled = statSync(module, { throwIfNoEntry: false })?.mtimeMs;
    return new Worker(bundled !== undefined && compiled !== undefined && bundled >= compiled ? bundle : module);
  }
  const url = new URL('./parse-worker.ts', import.meta.url).href;
  const bootstrap = `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(url)}); });`;
  return new Worker(bootstrap, { eval: true });
}

/**
 * A parsing thread, started before its job is known: a thread takes 30-40 ms to start and load
 * its code, which the import otherwise waited for after opening the pool and the source. It runs
 * one job (run()); close() ends it, run or not, and a thread that waits for its job does not keep
 * the process alive.
 */
export class ParseThread {
  readonly #worker: Worker;
  /** Why the thread stopped or failed, once it has. */
  #failure: unknown;
  /** Called with that, while a job runs. */
  #onFailure: ((error: unknown) => void) | undefined;
  #ran = false;
  /** The thread's end, once asked for. */
  #terminated: Promise<unknown> | undefined;

  constructor() {
    this.#worker = startWorker();
    this.#worker.unref();
    this.#worker.on('error', (error) => this.#failed(error));
    this.#worker.on('exit', (code) => this.#failed(new ThinError('THIN_IO', `The image parsing thread stopped (exit code ${code})`)));
  }

  #failed(error: unknown): void {
    if (this.#failure !== undefined) return;
    this.#failure = error;
    this.#onFailure?.(error);
  }

  /** Parses the file and builds the file system on the thread; resolves with what it built. */
  async run(options: ParseOptions, host: ParseHost): Promise<ParseResult> {
    assert(!this.#ran && this.#terminated === undefined, 'a parsing thread runs one job');
    this.#ran = true;
    const { bufferBytes, buffersMax, signal, ...job } = options;
    signal?.throwIfAborted();
    if (this.#failure !== undefined) throw this.#failure;
    const buffers = Array.from({ length: buffersMax }, () => new SharedArrayBuffer(bufferBytes));
    const views = buffers.map((buffer) => new Uint8Array(buffer));
    const worker = this.#worker;
    // Its replies are what this thread waits for now.
    worker.ref();
    return await new Promise<ParseResult>((resolve, reject) => {
      let failed = false;
      const fail = (error: unknown): void => {
        if (failed) return;
        failed = true;
        reject(error);
      };
      this.#onFailure = fail;
      signal?.addEventListener('abort', () => fail(signal.reason), { once: true });
      worker.on('message', (message: ParseReply) => {
        if (failed) return;
        switch (message.t) {
          case 'write': {
            const answer = (error?: unknown): void => {
              const reply: Extract<ParseRequest, { t: 'written' }> = { t: 'written', seq: message.seq };
              if (error !== undefined) {
                reply.error = { code: error instanceof ThinError ? error.code : undefined, message: error instanceof Error ? error.message : String(error) };
                fail(error);
              }
              worker.postMessage(reply);
            };
            const bytes = views[message.buffer]!.subarray(message.byteOffset, message.byteOffset + message.length);
            if (message.unsealed !== undefined) {
              try {
                sealInodeTable(bytes, message.unsealed.firstIno, message.unsealed.fsSeed);
              } catch (error) {
                answer(error);
                return;
              }
            }
            host.write(message.offsetBytes, bytes, message.data, message.bytesRead).then(() => answer(), answer);
            return;
          }
          case 'done':
            resolve(message.result);
            return;
          case 'error':
            fail(message.code === undefined ? new Error(message.message) : new ThinError(message.code as 'THIN_IO', message.message));
            return;
        }
      });
      worker.postMessage({ t: 'job', job: { ...job, buffers } } satisfies ParseRequest);
    });
  }

  /**
   * Ends the thread (at once: a job still running is abandoned); resolves once it has ended. Its
   * end takes ~10 ms (its heap is torn down): a caller with other work may let it go on meanwhile.
   */
  close(): Promise<void> {
    if (this.#terminated === undefined) {
      this.#onFailure = undefined;
      this.#terminated = this.#worker.terminate().catch(() => undefined);
    }
    return this.#terminated.then(() => undefined);
  }
}

/**
 * Parses the file and builds the file system on a worker thread (`thread`, started earlier, or a
 * new one); resolves with what it built. The thread is ended either way, without waiting for its
 * end: the import completes the volume meanwhile, and the process waits for threads it ends.
 */
export async function parseOnThread(options: ParseOptions, host: ParseHost, thread?: ParseThread): Promise<ParseResult> {
  const running = thread ?? new ParseThread();
  try {
    return await running.run(options, host);
  } finally {
    void running.close();
  }
}
