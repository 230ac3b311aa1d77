// Where writers put their text: a bounded buffer in front of a Node stream (constant memory for
// any dump size), or a string in memory (tests, small outputs). Writers call `write` per line;
// the returned promise, when there is one, means "wait: the stream is full".
import { once } from 'node:events';
import { WriteStream } from 'node:fs';
import type { Writable } from 'node:stream';
import { DUMP_OUTPUT_BUFFER_BYTES } from '../../constants.ts';
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
    this.#writesOut = stream === process.stdout || stream === process.stderr || stream instanceof WriteStream;
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
