// A flat tar from a local file is parsed on a second thread (parse-worker.ts): the main thread
// writes the buffers it fills (through block sharing into the pool) and puts its entries into the
// tree, while it reads, decompresses, parses and copies the next ones. Both cores work on one
// import; on the main thread alone, parsing and copying were about a third of an import's time
// (docs/benchmarks.md "Image import").
import { Worker } from 'node:worker_threads';
import { ThinError } from '../errors.ts';
import type { TreeChange } from './apply.ts';
import type { ParseJob, ParseReply, ParseRequest } from './parse-worker.ts';

export interface ParseHost {
  /** Writes a full buffer's bytes at offsetBytes of the volume (the buffer is reused once this resolves). */
  write(offsetBytes: number, bytes: Uint8Array): Promise<void>;
  /** Entries parsed, in archive order; throwing stops the import. */
  changes(changes: TreeChange[], bytesRead: number): void;
}

export interface ParseOptions extends Omit<ParseJob, 'buffers'> {
  bufferBytes: number;
  buffersMax: number;
  signal?: AbortSignal | undefined;
}

/**
 * Built, the worker is JavaScript beside this module; run from source under tsx (the tests), it
 * is TypeScript, and Node 20 does not hand tsx's loader to worker threads: it registers it first.
 */
function startWorker(workerData: ParseJob): Worker {
  if (!import.meta.url.endsWith('.ts')) return new Worker(new URL('./parse-worker.js', import.meta.url), { workerData });
  const url = new URL('./parse-worker.ts', import.meta.url).href;
  const bootstrap = `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(url)}); });`;
  return new Worker(bootstrap, { eval: true, workerData });
}

/** Parses the file on a worker thread; resolves with the bytes of the data region it filled and the source bytes read. */
export async function parseOnThread(options: ParseOptions, host: ParseHost): Promise<{ dataBytes: number; bytesRead: number }> {
  const { bufferBytes, buffersMax, signal, ...job } = options;
  signal?.throwIfAborted();
  const buffers = Array.from({ length: buffersMax }, () => new SharedArrayBuffer(bufferBytes));
  const views = buffers.map((buffer) => new Uint8Array(buffer));
  const worker = startWorker({ ...job, buffers });
  try {
    return await new Promise<{ dataBytes: number; bytesRead: number }>((resolve, reject) => {
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
            host.write(message.offsetBytes, views[message.buffer]!.subarray(message.byteOffset, message.byteOffset + message.length)).then(() => answer(), answer);
            return;
          }
          case 'changes':
            try {
              host.changes(message.changes, message.bytesRead);
            } catch (error) {
              fail(error);
            }
            return;
          case 'done':
            resolve({ dataBytes: message.dataBytes, bytesRead: message.bytesRead });
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
