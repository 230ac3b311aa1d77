// The parsing thread of a flat tar import (parse-thread.ts starts it): it reads the local file
// itself, decompresses it, parses the tar and copies file data into the import's write buffers
// (shared memory, 1 MiB each), exactly as the main thread would (apply.ts, data-stream.ts). The
// main thread gets full buffers to write ("write", answered "written" when the buffer may be
// filled again) and the entries' tree changes in batches, so that the two threads share the work:
// parsing and copying here, the pool's writes, block sharing and the tree there.
import fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { IMAGE_READ_CHUNK_BYTES } from '../constants.ts';
import { ThinError, isThinError } from '../errors.ts';
import { applyTar, type TreeChange } from './apply.ts';
import { BufferPool, WriteQueue, type BlockTarget } from './block-target.ts';
import { ByteInput } from './byte-input.ts';
import { DataStream } from './data-stream.ts';
import { FileChunks, decompressChunks, type Compression } from './source.ts';
import { TarReader, drainTrailer } from './tar.ts';

export interface ParseJob {
  path: string;
  description: string;
  compression: Compression;
  beginBlock: number;
  limitBlock: number;
  limitReason: string;
  alignBytes: number;
  writesInFlight: number;
  /** The write buffers, seen by both threads. */
  buffers: SharedArrayBuffer[];
}

/** Messages from the parsing thread. */
export type ParseReply =
  | { t: 'write'; seq: number; offsetBytes: number; buffer: number; byteOffset: number; length: number }
  | { t: 'changes'; changes: TreeChange[]; bytesRead: number }
  | { t: 'done'; dataBytes: number; bytesRead: number }
  | { t: 'error'; code: string | undefined; message: string };

/** Messages to the parsing thread. */
export interface ParseRequest {
  t: 'written';
  seq: number;
  error?: { code: string | undefined; message: string };
}

/** Tree changes per message: a message costs more than a few dozen entries' cloning. */
const CHANGES_PER_MESSAGE = 512;

const job = workerData as ParseJob;
const port = parentPort!;
const views = job.buffers.map((buffer) => new Uint8Array(buffer));
const waiting = new Map<number, { resolve: () => void; reject: (error: unknown) => void }>();
let seq = 0;

port.on('message', (message: ParseRequest) => {
  const waiter = waiting.get(message.seq);
  waiting.delete(message.seq);
  if (message.error === undefined) waiter?.resolve();
  else waiter?.reject(new ThinError((message.error.code ?? 'THIN_IO') as 'THIN_IO', message.error.message));
});

/** Writes are the main thread's: a buffer is named by its index, and comes back when written. */
const target: BlockTarget = {
  write: (offsetBytes, bytes) =>
    new Promise<void>((resolve, reject) => {
      const buffer = views.findIndex((view) => view.buffer === bytes.buffer);
      const id = ++seq;
      waiting.set(id, { resolve, reject });
      port.postMessage({ t: 'write', seq: id, offsetBytes, buffer, byteOffset: bytes.byteOffset, length: bytes.length } satisfies ParseReply);
    }),
  discard: () => Promise.reject(new Error('the parsing thread discards nothing')),
};

async function parse(): Promise<void> {
  const fd = fs.openSync(job.path, 'r');
  try {
    let bytesRead = 0;
    const raw = new FileChunks(fd, 0, fs.fstatSync(fd).size, {
      chunkBytes: IMAGE_READ_CHUNK_BYTES,
      reuse: job.compression === 'none',
      onBytes: (chunk) => {
        bytesRead += chunk.length;
      },
    });
    const chunks = job.compression === 'none' ? raw : decompressChunks(raw, job.compression, job.description, () => bytesRead);
    const queue = new WriteQueue(target, job.writesInFlight);
    const data = new DataStream(queue, {
      beginBlock: job.beginBlock,
      limitBlock: job.limitBlock,
      limitReason: job.limitReason,
      alignBytes: job.alignBytes,
      buffers: BufferPool.over(views),
    });
    const record: TreeChange[] = [];
    const send = (): void => {
      if (record.length > 0) port.postMessage({ t: 'changes', changes: record.splice(0), bytesRead } satisfies ParseReply);
    };
    const reader = new TarReader(new ByteInput(chunks));
    await applyTar(reader, { data, onEntry: () => (record.length >= CHANGES_PER_MESSAGE ? send() : undefined) }, { stream: '', layered: false, record });
    await drainTrailer(reader);
    await data.finish();
    send();
    port.postMessage({ t: 'done', dataBytes: data.writtenBytes, bytesRead } satisfies ParseReply);
  } finally {
    fs.closeSync(fd);
  }
}

parse().catch((error: unknown) => {
  port.postMessage({ t: 'error', code: isThinError(error) ? error.code : undefined, message: error instanceof Error ? error.message : String(error) } satisfies ParseReply);
});
