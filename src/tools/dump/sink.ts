// Where writers put their text: a bounded buffer in front of a Node stream (constant memory for
// any dump size) or of a file descriptor written directly, or a string in memory (tests, small
// outputs). Writers call `write` per line; the returned promise, when there is one, means "wait:
// the stream is full".
import { once } from 'node:events';
import { WriteStream, writeSync } from 'node:fs';
import type { Writable } from 'node:stream';
import { DUMP_OUTPUT_BUFFER_BYTES } from '../../constants.ts';
import { ThinError } from '../../errors.ts';
import type { VisitResult } from './events.ts';

export interface TextSink {
  write(text: string): VisitResult;
  /**
   * ASCII text already encoded (ascii-piece.ts), after what was written before. The sink keeps
   * `bytes` until it calls `reusable` (if ever: a sink that passes them on keeps them).
   */
  writeBytes(bytes: Uint8Array, reusable?: () => void): VisitResult;
  /** Writes what is buffered; resolves when the stream has taken it. Does not end the stream. */
  flush(): Promise<void>;
}

export class StreamSink implements TextSink {
  readonly #stream: Writable;
  /**
   * Whether the stream is done with a chunk when its write's callback runs: a file or standard
   * output writes it out. A stream that passes chunks on (a PassThrough) still holds them then.
   */
  readonly #writesOut: boolean;
  #chunks: string[] = [];
  #bufferedChars = 0;

  constructor(stream: Writable) {
    this.#stream = stream;
    // Not `=== process.stderr`: reading that makes stderr's stream (a socket when it is a pipe),
    // milliseconds of a short dump; nothing dumps to stderr.
    this.#writesOut = stream === process.stdout || stream instanceof WriteStream;
  }

  write(text: string): VisitResult {
    this.#chunks.push(text);
    this.#bufferedChars += text.length;
    if (this.#bufferedChars < DUMP_OUTPUT_BUFFER_BYTES) return undefined;
    return this.#drain();
  }

  writeBytes(bytes: Uint8Array, reusable?: () => void): VisitResult {
    return this.#drain(bytes, this.#writesOut ? reusable : undefined);
  }

  async flush(): Promise<void> {
    await this.#drain();
    // Resolve only once the stream has handed everything on (a file is written, a pipe taken).
    await new Promise<void>((resolve, reject) => {
      this.#stream.write('', (error) => (error ? reject(error) : resolve()));
    });
  }

  /** Hands the buffered text, then `bytes`, to the stream; waits when it is full. */
  async #drain(bytes?: Uint8Array, written?: () => void): Promise<void> {
    let taken = true;
    if (this.#chunks.length !== 0) {
      taken = this.#stream.write(this.#chunks.join(''));
      this.#chunks = [];
      this.#bufferedChars = 0;
    }
    if (bytes !== undefined) {
      if (written === undefined) taken = this.#stream.write(bytes);
      else {
        // Given back once: at once when the stream wrote it out within write() (standard output to
        // a file or a pipe holds nothing after), else when the write's callback runs.
        let given = false;
        const giveBack = () => {
          if (!given) written();
          given = true;
        };
        taken = this.#stream.write(bytes, (error) => {
          if (error === null || error === undefined) giveBack();
        });
        if (this.#stream.writableLength === 0) giveBack();
      }
    }
    if (!taken) {
      // Wait for 'drain', or fail on 'error'; the listener left over is removed either way.
      const controller = new AbortController();
      const { signal } = controller;
      try {
        await Promise.race([
          once(this.#stream, 'drain', { signal }),
          once(this.#stream, 'error', { signal }).then(([cause]) => {
            throw cause;
          }),
        ]);
      } finally {
        controller.abort();
      }
    }
  }
}

/**
 * A file or character device, written with writeSync on its descriptor as Node's own stream for
 * a file does, without that stream: loading Node's stream modules was ~1.5 ms of a short
 * `thinbd dump > file` (docs/benchmarks.md, "Command start-up"). Pipes and sockets, whose writes
 * would block, need a StreamSink.
 */
export class DescriptorSink implements TextSink {
  readonly #fd: number;
  readonly #description: string;
  #chunks: string[] = [];
  #bufferedChars = 0;

  /** `description` names the descriptor in errors ("standard output"). */
  constructor(fd: number, description: string) {
    this.#fd = fd;
    this.#description = description;
  }

  write(text: string): VisitResult {
    this.#chunks.push(text);
    this.#bufferedChars += text.length;
    if (this.#bufferedChars >= DUMP_OUTPUT_BUFFER_BYTES) this.#writeBuffered();
    return undefined;
  }

  writeBytes(bytes: Uint8Array, reusable?: () => void): VisitResult {
    this.#writeBuffered();
    this.#writeAll(bytes);
    reusable?.();
    return undefined;
  }

  async flush(): Promise<void> {
    this.#writeBuffered();
  }

  #writeBuffered(): void {
    if (this.#chunks.length === 0) return;
    const text = this.#chunks.join('');
    this.#chunks = [];
    this.#bufferedChars = 0;
    this.#writeAll(Buffer.from(text, 'utf8'));
  }

  #writeAll(bytes: Uint8Array): void {
    let doneBytes = 0;
    while (doneBytes < bytes.length) {
      try {
        doneBytes += writeSync(this.#fd, bytes, doneBytes, bytes.length - doneBytes);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') {
          throw new ThinError('THIN_IO', `Cannot write to ${this.#description}: ${(error as Error).message}`, { cause: error });
        }
        // A terminal another program left non-blocking, its buffer full: wait as a blocking write would.
        Atomics.wait(sleeper, 0, 0, WOULD_BLOCK_RETRY_MS);
      }
    }
  }
}

/** How long a write that would block waits before it tries again. */
const WOULD_BLOCK_RETRY_MS = 1;
/** Never notified: Atomics.wait on it is a sleep of the main thread. */
const sleeper = new Int32Array(new SharedArrayBuffer(4));

export class StringSink implements TextSink {
  #chunks: string[] = [];

  write(text: string): VisitResult {
    this.#chunks.push(text);
    return undefined;
  }

  writeBytes(bytes: Uint8Array): VisitResult {
    this.#chunks.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1'));
    return undefined;
  }

  async flush(): Promise<void> {}

  get text(): string {
    const joined = this.#chunks.join('');
    this.#chunks = [joined];
    return joined;
  }
}
