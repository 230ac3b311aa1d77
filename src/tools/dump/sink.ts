// Where writers put their text: a bounded buffer in front of a Node stream (constant memory for
// any dump size), or a string in memory (tests, small outputs). Writers call `write` per line;
// the returned promise, when there is one, means "wait: the stream is full".
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { DUMP_OUTPUT_BUFFER_BYTES } from '../../constants.ts';
import type { VisitResult } from './events.ts';

export interface TextSink {
  write(text: string): VisitResult;
  /** Writes what is buffered; resolves when the stream has taken it. Does not end the stream. */
  flush(): Promise<void>;
}

export class StreamSink implements TextSink {
  readonly #stream: Writable;
  #chunks: string[] = [];
  #bufferedChars = 0;

  constructor(stream: Writable) {
    this.#stream = stream;
  }

  write(text: string): VisitResult {
    this.#chunks.push(text);
    this.#bufferedChars += text.length;
    if (this.#bufferedChars < DUMP_OUTPUT_BUFFER_BYTES) return undefined;
    return this.#drain();
  }

  async flush(): Promise<void> {
    await this.#drain();
    // Resolve only once the stream has handed everything on (a file is written, a pipe taken).
    await new Promise<void>((resolve, reject) => {
      this.#stream.write('', (error) => (error ? reject(error) : resolve()));
    });
  }

  async #drain(): Promise<void> {
    if (this.#chunks.length === 0) return;
    const text = this.#chunks.join('');
    this.#chunks = [];
    this.#bufferedChars = 0;
    if (!this.#stream.write(text)) {
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

  async flush(): Promise<void> {}

  get text(): string {
    const joined = this.#chunks.join('');
    this.#chunks = [joined];
    return joined;
  }
}
