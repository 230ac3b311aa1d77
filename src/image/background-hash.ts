// SHA-256 of a source on a worker thread: hashing an image's bytes on the main thread cost about a
// third of an import's time, and the machine has a second core. Two ways to hash:
// - a stream's chunks are copied by update() into a ring of slots in shared memory (made once: no
//   fresh pages to fault in), passed between the threads with Atomics (a message per chunk cost
//   more than the copy); the main thread waits only when every slot is still being hashed;
// - a local file is read by the worker itself (readFile(): the page cache serves it twice, once
//   to the parse and once here, and the two go at their own pace; fed from the parse's reads
//   through the slots instead, they went in step and the import took longer: docs/benchmarks.md
//   "Image import: the digest reads for itself"). The worker opens the file by its path and
//   refuses it unless it is the file the import opened (LocalFile's device and inode).
// Hashed on libuv's pool through OpenSSL's functions instead (no worker to start), the updates
// waited for the busy main thread's event loop one by one and the import took longer; hashed on
// the parsing thread as it reads, the import's critical path grew (docs/benchmarks.md "Image
// import: the digest elsewhere").
import { Worker } from 'node:worker_threads';
import { ThinError, assert } from '../errors.ts';

// Control words: chunks handed over (head), chunks hashed (tail), finish request, digest ready,
// and for a local file whether the worker reads it (MODE_*).
const HEAD = 0;
const TAIL = 1;
const FINISH = 2;
const READY = 3;
const MODE = 4;
const CONTROL_WORDS = 5;
const DIGEST_BYTES = 64;
/** A local file's worker waits to be told whether it reads the file, or the hash is not wanted. */
const MODE_UNDECIDED = 0;
const MODE_READ = 1;
const MODE_NONE = 2;

/** Atomics.waitAsync (ES2024; in every Node.js thinbd supports): resolves when woken or after timeoutMs. */
const waitAsync = (Atomics as unknown as {
  waitAsync(array: Int32Array, index: number, value: number, timeoutMs: number): { value: Promise<string> | string };
}).waitAsync;

async function waitUntilChanged(array: Int32Array, index: number, value: number): Promise<void> {
  const result = waitAsync(array, index, value, 1000).value;
  if (typeof result !== 'string') await result;
}

/** A local file to hash: its path, and the device and inode of the file the import opened there. */
export interface LocalFile {
  path: string;
  dev: bigint;
  ino: bigint;
}

const WORKER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const fs = require('node:fs');
const { control, lengths, data, digest, slots, slotBytes, file } = workerData;
const ctrl = new Int32Array(control);
const lens = new Int32Array(lengths);
const bytes = new Uint8Array(data);
const hash = createHash('sha256');
if (file !== undefined) {
  while (Atomics.load(ctrl, ${MODE}) === ${MODE_UNDECIDED}) Atomics.wait(ctrl, ${MODE}, ${MODE_UNDECIDED});
  if (Atomics.load(ctrl, ${MODE}) === ${MODE_READ}) {
    // Read the file here, in slot-sized pieces, costing the main thread nothing.
    const fd = fs.openSync(file.path, 'r');
    try {
      const opened = fs.fstatSync(fd, { bigint: true });
      if (opened.dev !== file.dev || opened.ino !== file.ino) throw new Error('it is no longer the file being imported (it was replaced meanwhile)');
      const buffer = Buffer.allocUnsafe(slotBytes);
      for (let read; (read = fs.readSync(fd, buffer, 0, slotBytes, null)) > 0;) hash.update(buffer.subarray(0, read));
    } finally {
      fs.closeSync(fd);
    }
    Atomics.store(ctrl, ${FINISH}, 1);
  }
}
for (;;) {
  const tail = Atomics.load(ctrl, ${TAIL});
  if (Atomics.load(ctrl, ${HEAD}) === tail) {
    if (Atomics.load(ctrl, ${FINISH}) === 1) break;
    Atomics.wait(ctrl, ${HEAD}, tail);
    continue;
  }
  const slot = tail % slots;
  hash.update(bytes.subarray(slot * slotBytes, slot * slotBytes + lens[slot]));
  Atomics.store(ctrl, ${TAIL}, tail + 1);
  Atomics.notify(ctrl, ${TAIL});
}
new Uint8Array(digest).set(Buffer.from(hash.digest('hex'), 'latin1'));
Atomics.store(ctrl, ${READY}, 1);
Atomics.notify(ctrl, ${READY});
`;

export class BackgroundHash {
  readonly #worker: Worker;
  readonly #control: Int32Array;
  readonly #lengths: Int32Array;
  readonly #data: Uint8Array;
  readonly #digest: Uint8Array;
  readonly #slots: number;
  readonly #slotBytes: number;
  #head = 0;
  #failure: Error | undefined;
  #closed = false;
  readonly #isFile: boolean;
  /** Resolves when the worker has stopped, whyever: a wait for it ends then, never hangs. */
  readonly #stopped: Promise<void>;

  /**
   * Hashes what update() is given, or (with `file`) the file, read by the worker itself
   * (readFile(), or at digest()); `source` names it in errors.
   */
  constructor(slotBytes: number, slots: number, source: string, file?: LocalFile) {
    assert(slots >= 1 && slotBytes >= 1, 'a background hash needs a slot');
    const control = new SharedArrayBuffer(CONTROL_WORDS * 4);
    const lengths = new SharedArrayBuffer(slots * 4);
    // A file's worker reads into memory of its own: no slots to share.
    const data = new SharedArrayBuffer(file === undefined ? slots * slotBytes : 0);
    const digest = new SharedArrayBuffer(DIGEST_BYTES);
    this.#isFile = file !== undefined;
    this.#control = new Int32Array(control);
    this.#lengths = new Int32Array(lengths);
    this.#data = new Uint8Array(data);
    this.#digest = new Uint8Array(digest);
    this.#slots = slots;
    this.#slotBytes = slotBytes;
    this.#worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { control, lengths, data, digest, slots, slotBytes, file } });
    this.#worker.unref();
    this.#worker.on('error', (error) => {
      this.#failure ??= new ThinError('THIN_IO', `Cannot read ${source} for its SHA-256: ${error.message}`, { cause: error });
    });
    this.#stopped = new Promise((resolve) => {
      this.#worker.once('exit', (code) => {
        // After an 'error' event, or terminated by close(); otherwise it stopped before its digest.
        if (!this.#closed && Atomics.load(this.#control, READY) === 0) this.#failure ??= new ThinError('THIN_IO', `The thread hashing ${source} stopped (exit code ${code})`);
        resolve();
      });
    });
  }

  /** A local file: the worker starts reading it. Nothing when already decided. */
  readFile(): void {
    assert(this.#isFile, 'only a local file\'s hash reads it');
    this.#decide(MODE_READ);
  }

  #decide(mode: number): void {
    if (Atomics.compareExchange(this.#control, MODE, MODE_UNDECIDED, mode) === MODE_UNDECIDED) Atomics.notify(this.#control, MODE);
  }

  async update(bytes: Uint8Array): Promise<void> {
    for (let offset = 0; offset < bytes.length; offset += this.#slotBytes) {
      const piece = bytes.subarray(offset, Math.min(bytes.length, offset + this.#slotBytes));
      for (;;) {
        // Closed (the digest is not wanted after all): what is still given is dropped.
        if (this.#closed) return;
        if (this.#failure !== undefined) throw this.#failure;
        const tail = Atomics.load(this.#control, TAIL);
        if (this.#head - tail < this.#slots) break;
        await this.#waiting(waitUntilChanged(this.#control, TAIL, tail));
      }
      const slot = this.#head % this.#slots;
      this.#data.set(piece, slot * this.#slotBytes);
      this.#lengths[slot] = piece.length;
      this.#head++;
      Atomics.store(this.#control, HEAD, this.#head);
      Atomics.notify(this.#control, HEAD);
    }
  }

  /**
   * A pending waitAsync does not keep the event loop alive: the (otherwise unref'd) worker does,
   * meanwhile, and a worker that stops (a failed read) ends the wait at once.
   */
  async #waiting(wait: Promise<void>): Promise<void> {
    this.#worker.ref();
    try {
      await Promise.race([wait, this.#stopped]);
    } finally {
      // close() holds the worker until it has stopped.
      if (!this.#closed) this.#worker.unref();
    }
  }

  /** The hex digest of everything given; the hash is finished (and its worker stopped). */
  async digest(): Promise<string> {
    assert(!this.#closed, 'the digest of a hash already closed');
    if (this.#isFile) this.readFile();
    Atomics.store(this.#control, FINISH, 1);
    Atomics.notify(this.#control, HEAD);
    while (Atomics.load(this.#control, READY) === 0) {
      if (this.#failure !== undefined) throw this.#failure;
      await this.#waiting(waitUntilChanged(this.#control, READY, 0));
    }
    const hex = Buffer.from(this.#digest).toString('latin1');
    await this.close();
    return hex;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // A worker still waiting to be told whether it reads the file finishes at once.
    if (this.#isFile) this.#decide(MODE_NONE);
    Atomics.store(this.#control, FINISH, 1);
    Atomics.notify(this.#control, HEAD);
    // An update() waiting for a slot sees the hash closed.
    Atomics.notify(this.#control, TAIL);
    // Held until it has stopped (an unref'd worker's exit would not keep the event loop alive).
    this.#worker.ref();
    await this.#worker.terminate();
  }
}
