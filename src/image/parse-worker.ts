// The parsing thread of a flat tar import (parse-thread.ts starts it): it reads the local file
// itself, decompresses it, parses the tar, copies file data into the import's write buffers
// (shared memory, 1 MiB each) and builds the tree, exactly as the main thread would (apply.ts,
// data-stream.ts); at the end it writes the file system's metadata (ext4/writer.ts) through the
// same buffers. The main thread gets full buffers to write ("write", answered "written" when the
// buffer may be filled again) and the summary at the end: the two threads share the work, the
// pool's writes and block sharing's look-ups there, everything else here.
import fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { IMAGE_READ_CHUNK_BYTES } from '../constants.ts';
import { ThinError, assert, isThinError } from '../errors.ts';
import { applyTar } from './apply.ts';
import { BufferPool, WriteQueue, type BlockTarget } from './block-target.ts';
import { ByteInput } from './byte-input.ts';
import { DataStream } from './data-stream.ts';
import { BLOCK_SIZE_BYTES, INODES_PER_BLOCK } from './ext4/format.ts';
import { writeFilesystem, type FilesystemOptions, type FilesystemSummary, type UnsealedInodeTable } from './ext4/writer.ts';
import { FileChunks, decompressChunks, type Compression } from './source.ts';
import type { LocalFile } from './background-hash.ts';
import { TarReader, drainTrailer } from './tar.ts';
import { FsTree } from './tree.ts';

export interface ParseJob {
  /** The source, opened here again: the file the import opened (it is checked). */
  file: LocalFile;
  description: string;
  compression: Compression;
  beginBlock: number;
  limitBlock: number;
  limitReason: string;
  /** Without sharedBytes: a function does not cross to the thread. */
  newDataLimit?: { bytes: number; reason: string } | undefined;
  alignBytes: number;
  writesInFlight: number;
  /** The file system's options but where its data ends (the parse finds that). */
  filesystem: Omit<FilesystemOptions, 'dataEndBlock'>;
  /** The write buffers, seen by both threads. */
  buffers: SharedArrayBuffer[];
}

/** What the parsing thread built. */
export interface ParseResult {
  summary: FilesystemSummary;
  /** Bytes of file data handed over for writing (padding included), and of metadata. */
  dataBytesGiven: number;
  metadataBytesGiven: number;
  bytesRead: number;
}

/** Messages from the parsing thread. */
export type ParseReply =
  // data: file data (block sharing looks it up), or the metadata (written as it is).
  // unsealed: inode table blocks from inode firstIno, to seal (sealInodeTable) before writing.
  | { t: 'write'; seq: number; offsetBytes: number; buffer: number; byteOffset: number; length: number; data: boolean; bytesRead: number; unsealed?: { firstIno: number; fsSeed: number } }
  | { t: 'done'; result: ParseResult }
  | { t: 'error'; code: string | undefined; message: string };

/** Messages to the parsing thread: its job (the first, once), then buffers written. */
export type ParseRequest =
  | { t: 'job'; job: ParseJob }
  | { t: 'written'; seq: number; error?: { code: string | undefined; message: string } };

const port = parentPort!;
/** The job's write buffers. */
let views: Uint8Array[] = [];
const waiting = new Map<number, { resolve: () => void; reject: (error: unknown) => void }>();
let seq = 0;
let bytesRead = 0;
/** File data is being written (block sharing looks its blocks up); then the metadata. */
let writingData = true;
/** The inode table, once placed: its blocks go unsealed, and the main thread seals them. */
let inodeTable: UnsealedInodeTable | undefined;

/** An unsealed write's first inode, when the write is of the inode table. */
function unsealedAt(offsetBytes: number, length: number): { firstIno: number; fsSeed: number } | undefined {
  if (inodeTable === undefined) return undefined;
  const block = offsetBytes / BLOCK_SIZE_BYTES;
  const endBlock = block + length / BLOCK_SIZE_BYTES;
  if (endBlock <= inodeTable.beginBlock || block >= inodeTable.endBlock) return undefined;
  // A write that held inode table blocks and others would go out partly unsealed: none does (the
  // table has buffers of its own), and one that did is a bug to stop at, not a corrupt image.
  assert(block >= inodeTable.beginBlock && endBlock <= inodeTable.endBlock, 'an inode table write crosses the table\'s bounds');
  return { firstIno: (block - inodeTable.beginBlock) * INODES_PER_BLOCK + 1, fsSeed: inodeTable.fsSeed };
}

port.on('message', (message: ParseRequest) => {
  if (message.t === 'job') {
    start(message.job);
    return;
  }
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
      const unsealed = writingData ? undefined : unsealedAt(offsetBytes, bytes.length);
      port.postMessage({ t: 'write', seq: id, offsetBytes, buffer, byteOffset: bytes.byteOffset, length: bytes.length, data: writingData, bytesRead, unsealed } satisfies ParseReply);
    }),
  discard: () => Promise.reject(new Error('the parsing thread discards nothing')),
};

async function parse(job: ParseJob): Promise<ParseResult> {
  const fd = fs.openSync(job.file.path, 'r');
  const opened = fs.fstatSync(fd, { bigint: true });
  if (opened.dev !== job.file.dev || opened.ino !== job.file.ino) {
    fs.closeSync(fd);
    throw new ThinError('THIN_IO', `Cannot read ${job.file.path}: it is no longer the file being imported (it was replaced meanwhile)`);
  }
  const queue = new WriteQueue(target, job.writesInFlight);
  const buffers = BufferPool.over(views);
  const tree = new FsTree(job.filesystem.nowSeconds);
  let dataEndBlock: number;
  try {
    const onBytes = (chunk: Uint8Array): void => {
      bytesRead += chunk.length;
    };
    const raw = new FileChunks(fd, 0, Number(opened.size), { chunkBytes: IMAGE_READ_CHUNK_BYTES, reuse: job.compression === 'none', onBytes });
    const chunks = job.compression === 'none' ? raw : decompressChunks(raw, job.compression, job.description, () => bytesRead);
    const data = new DataStream(queue, {
      beginBlock: job.beginBlock,
      limitBlock: job.limitBlock,
      limitReason: job.limitReason,
      newDataLimit: job.newDataLimit,
      alignBytes: job.alignBytes,
      buffers,
    });
    const reader = new TarReader(new ByteInput(chunks));
    await applyTar(reader, { tree, data }, { stream: '', layered: false });
    await drainTrailer(reader);
    await data.finish();
    dataEndBlock = data.cursorBlock;
  } finally {
    fs.closeSync(fd);
  }
  const dataBytesGiven = queue.bytesWritten;
  writingData = false;
  // The inodes' checksums (~50,000 for /usr/share) are the main thread's, which otherwise
  // waits for these buffers with nothing to do.
  const summary = await writeFilesystem(queue, buffers, tree, { ...job.filesystem, dataEndBlock }, (table) => {
    inodeTable = table;
  });
  await queue.drain();
  return { summary, dataBytesGiven, metadataBytesGiven: queue.bytesWritten - dataBytesGiven, bytesRead };
}

function start(job: ParseJob): void {
  views = job.buffers.map((buffer) => new Uint8Array(buffer));
  parse(job).then(
    (result) => port.postMessage({ t: 'done', result } satisfies ParseReply),
    (error: unknown) => {
      port.postMessage({ t: 'error', code: isThinError(error) ? error.code : undefined, message: error instanceof Error ? error.message : String(error) } satisfies ParseReply);
    },
  );
}
