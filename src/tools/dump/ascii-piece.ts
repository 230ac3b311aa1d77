// Output lines written as bytes into a piece of DUMP_OUTPUT_BUFFER_BYTES, handed to a sink whole:
// for writers whose lines are fixed ASCII text and whole numbers, millions of them (a scattered
// delta prints a line per block or two). A line built as a template string costs a string per
// number and per line, a join of the pieces and an encoding pass; here each number's digits are
// written in place and the fixed text copied from bytes encoded once.
import { DUMP_OUTPUT_BUFFER_BYTES } from '../../constants.ts';
import type { VisitResult } from './events.ts';
import type { TextSink } from './sink.ts';

/** Room a line may take at most: its fixed text and a few numbers of up to 16 digits. */
const LINE_ROOM_BYTES = 512;

/**
 * Fixed ASCII text encoded once, as little-endian 32-bit words and the bytes after the last whole
 * word: copied a word at a time, a line's fixed text costs a few stores, not one per character.
 */
export interface AsciiText {
  readonly words: Uint32Array;
  readonly tail: Uint8Array;
}

export function asciiText(text: string): AsciiText {
  if (!/^[\x20-\x7e\n]*$/.test(text)) throw new RangeError(`not printable ASCII: ${JSON.stringify(text)}`);
  const bytes = Buffer.from(text, 'latin1');
  const wholeWords = Math.floor(bytes.length / 4);
  const words = new Uint32Array(wholeWords);
  for (let index = 0; index < wholeWords; index++) words[index] = bytes.readUInt32LE(index * 4);
  return { words, tail: Uint8Array.from(bytes.subarray(wholeWords * 4)) };
}

export class AsciiPiece {
  readonly #out: TextSink;
  /**
   * Pieces the sink has written out, for the next lines: a fresh piece per 64 KiB cost 16 page
   * faults, which on a virtual machine came to a tenth of a scattered delta's time
   * (docs/benchmarks.md, "Tools").
   */
  readonly #free: Array<Buffer<ArrayBuffer>> = [];
  #bytes = Buffer.allocUnsafeSlow(DUMP_OUTPUT_BUFFER_BYTES);
  #view = new DataView(this.#bytes.buffer, this.#bytes.byteOffset, this.#bytes.byteLength);
  #at = 0;

  constructor(out: TextSink) {
    this.#out = out;
  }

  /** Appends fixed text. */
  text(text: AsciiText): void {
    const view = this.#view;
    let at = this.#at;
    const words = text.words;
    for (let index = 0; index < words.length; index++) {
      view.setUint32(at, words[index]!, true);
      at += 4;
    }
    const tail = text.tail;
    const into = this.#bytes;
    for (let index = 0; index < tail.length; index++) into[at++] = tail[index]!;
    this.#at = at;
  }

  /** Appends a whole number ≥ 0 (a safe integer) in decimal. */
  decimal(value: number): void {
    if (!(Number.isSafeInteger(value) && value >= 0)) throw new RangeError(`not a whole number: ${value}`);
    let digits = 1;
    for (let power = 10; power <= value; power *= 10) digits++;
    const into = this.#bytes;
    let at = this.#at + digits;
    this.#at = at;
    if (value <= 0x7fffffff) {
      // Small integers (nearly every block number): integer division, not a float remainder,
      // which V8 leaves to a C library call.
      let rest = value | 0;
      do {
        const quotient = (rest / 10) | 0;
        into[--at] = 48 + rest - quotient * 10;
        rest = quotient;
      } while (rest !== 0);
      return;
    }
    let rest = value;
    do {
      const digit = rest % 10;
      into[--at] = 48 + digit;
      rest = (rest - digit) / 10;
    } while (rest !== 0);
  }

  /**
   * Call after each line: hands the piece to the sink once another line might not fit (a promise
   * then means "wait: the stream is full", as TextSink.write's).
   */
  endLine(): VisitResult {
    return this.#at > this.#bytes.length - LINE_ROOM_BYTES ? this.flush() : undefined;
  }

  /** Hands what is written so far to the sink; the next lines go into a new piece. */
  flush(): VisitResult {
    if (this.#at === 0) return undefined;
    const spent = this.#bytes;
    const filled = spent.subarray(0, this.#at);
    // The sink keeps the bytes until its stream has written them out: the next lines go into a
    // piece it has given back, or a new one.
    this.#bytes = this.#free.pop() ?? Buffer.allocUnsafeSlow(DUMP_OUTPUT_BUFFER_BYTES);
    this.#view = new DataView(this.#bytes.buffer, this.#bytes.byteOffset, this.#bytes.byteLength);
    this.#at = 0;
    return this.#out.writeBytes(filled, () => this.#free.push(spent));
  }
}
