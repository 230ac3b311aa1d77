// Output text built as bytes: fixed ASCII pieces and decimal numbers written straight into a
// buffer, handed to the sink a buffer at a time. A scattered dump or delta prints a line per
// block (millions of lines); a template string per line made a string per number and per line,
// then the sink joined and encoded them again, which cost more than reading the metadata.
import { assert } from '../../errors.ts';
import type { VisitResult } from './events.ts';
import type { TextSink } from './sink.ts';

/** Bytes gathered before they go to the sink (a pipe takes 64 KiB at a time). */
const ASCII_TEXT_BUFFER_BYTES = 64 * 1024;
/** Room a writer may fill between two room() calls: the longest line it writes, with margin. */
export const ASCII_TEXT_LINE_BYTES_MAX = 1024;

export class AsciiText {
  readonly #out: TextSink;
  #bytes = new Uint8Array(ASCII_TEXT_BUFFER_BYTES);
  #length = 0;

  constructor(out: TextSink) {
    this.#out = out;
  }

  /** A fixed piece of text, encoded once (ASCII only). */
  static piece(text: string): Uint8Array {
    const bytes = new Uint8Array(text.length);
    for (let index = 0; index < text.length; index++) {
      const code = text.charCodeAt(index);
      assert(code < 0x80, `text piece ${JSON.stringify(text)} is not ASCII`);
      bytes[index] = code;
    }
    return bytes;
  }

  /**
   * Makes room for a line (ASCII_TEXT_LINE_BYTES_MAX bytes), handing what is gathered to the
   * sink first when the buffer is nearly full: call before each line, and await what it returns.
   */
  room(): VisitResult {
    if (this.#length + ASCII_TEXT_LINE_BYTES_MAX <= this.#bytes.length) return undefined;
    return this.flush();
  }

  /** Hands what is gathered to the sink (which keeps the bytes: a new buffer is started). */
  flush(): VisitResult {
    if (this.#length === 0) return undefined;
    const full = this.#bytes.subarray(0, this.#length);
    this.#bytes = new Uint8Array(ASCII_TEXT_BUFFER_BYTES);
    this.#length = 0;
    return this.#out.writeBytes(full);
  }

  put(piece: Uint8Array): void {
    this.#bytes.set(piece, this.#length);
    this.#length += piece.length;
  }

  /** A non-negative safe integer in decimal. */
  number(value: number): void {
    if (!(Number.isSafeInteger(value) && value >= 0)) assert(false, `number ${value} is not a non-negative safe integer`);
    const bytes = this.#bytes;
    let digits = 1;
    for (let rest = value; rest >= 10; rest = Math.floor(rest / 10)) digits++;
    let position = this.#length + digits;
    this.#length = position;
    let rest = value;
    do {
      const next = Math.floor(rest / 10);
      bytes[--position] = 0x30 + (rest - next * 10);
      rest = next;
    } while (rest > 0);
  }
}
