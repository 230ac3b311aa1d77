// A flat tar from a local file is parsed on a second thread (parse-worker.ts), which also builds
// the tree and the file system's metadata: the main thread writes the buffers it fills (through
// block sharing into the pool) while it reads, decompresses, parses and copies the next ones.
// Both cores work on one import, and the main thread, which holds the pool, does only what must
// happen there (docs/benchmarks.md "Image import").
import { statSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { ThinError } from '../errors.ts';
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
 * registers it first.
 */
function startWorker(workerData: ParseJob): Worker {
  if (!import.meta.url.endsWith('.ts')) {
    const module = new URL('./parse-worker.js', import.meta.url);
    const bundle = new URL('../image-parse-worker.cjs', import.meta.url);
    const bundled = statSync(bundle, { throwIfNoEntry: false })?.mtimeMs;
    const compiled = statSync(module, { throwIfNoEntry: false })?.mtimeMs;
    return new Worker(bundled !== undefined && compiled !== undefined && bundled >= compiled ? bundle : module, { workerData });
  }
  const url = new URL('./parse-worker.ts', import.meta.url).href;
  const bootstrap = `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(url)}); });`;
  return new Worker(bootstrap, { eval: true, workerData });
}

/** Parses the file and builds the file system on a worker thread; resolves with what it built. */
export async function parseOnThread(options: ParseOptions, host: ParseHost): Promise<ParseResult> {
  const { bufferBytes, buffersMax, signal, ...job } = options;
  signal?.throwIfAborted();
  const buffers = Array.from({ length: buffersMax }, () => new SharedArrayBuffer(bufferBytes));
  const views = buffers.map((buffer) => new Uint8Array(buffer));
  const worker = startWorker({ ...job, buffers });
  try {
    return await new Promise<ParseResult>((resolve, reject) => {
      let failed = false;
      const fail = (error: unknown): void => {
        if (failed) return;
        failed = true;
        reject(error);
      };
      signal?.addEventListener('abort', () => fail(signal.reason), { once: true });
      worker.on('error', fail);
      worker.on('exit', (code) => fail(new ThinError('THIN_IO', `The image parsing thread stopped (exit code ${code})`)));
      worker.on('message', (message: ParseReply) => {
        if (failed) return;
        switch (message.t) {
          case 'write': {
            const answer = (error?: unknown): void => {
              const reply: ParseRequest = { t: 'written', seq: message.seq };
              if (error !== undefined) {
                reply.error = { code: error instanceof ThinError ? error.code : undefined, message: error instanceof Error ? error.message : String(error) };
                fail(error);
              }
              worker.postMessage(reply);
            };
            host.write(message.offsetBytes, views[message.buffer]!.subarray(message.byteOffset, message.byteOffset + message.length), message.data, message.bytesRead).then(() => answer(), answer);
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
    });
  } finally {
    await worker.terminate();
  }
}
