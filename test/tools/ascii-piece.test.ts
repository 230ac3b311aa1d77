// Lines written as bytes (src/tools/dump/ascii-piece.ts): the digits of every size of number,
// fixed text of every length, and pieces handed to a stream in order with text written between.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { AsciiPiece, asciiText } from '../../src/tools/dump/ascii-piece.ts';
import { StreamSink, StringSink } from '../../src/tools/dump/sink.ts';

test('decimal writes every whole number as String() does, across the 32-bit boundaries', async () => {
  const values = [0, 1, 9, 10, 99, 100, 12345, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 1e15, Number.MAX_SAFE_INTEGER];
  for (let power = 1; power < 1e16; power *= 10) values.push(power - 1, power, power + 1);
  const sink = new StringSink();
  const piece = new AsciiPiece(sink);
  const space = asciiText(' ');
  for (const value of values) {
    piece.decimal(value);
    piece.text(space);
  }
  await piece.flush();
  assert.equal(sink.text, values.map((value) => `${value} `).join(''));
});

test('decimal refuses what is not a whole number, rather than writing wrong digits', () => {
  const piece = new AsciiPiece(new StringSink());
  for (const bad of [-1, 1.5, Number.NaN, 2 ** 53]) assert.throws(() => piece.decimal(bad), RangeError);
});

test('fixed text of every length up to 9 bytes is copied whole (words and the bytes after them)', async () => {
  const sink = new StringSink();
  const piece = new AsciiPiece(sink);
  const texts = ['', 'a', 'ab', 'abc', 'abcd', 'abcde', '<same begin="', '"/>\n', 'x y z w v'];
  for (const text of texts) piece.text(asciiText(text));
  await piece.flush();
  assert.equal(sink.text, texts.join(''));
  assert.throws(() => asciiText('é'), RangeError);
});

test('a stream gets text and pieces in the order they were written, over many pieces', async () => {
  const stream = new PassThrough();
  const received: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => received.push(chunk));
  const sink = new StreamSink(stream);
  const piece = new AsciiPiece(sink);
  const line = asciiText('    <same begin="');
  const end = asciiText('"/>\n');
  let expected = '';
  await sink.write('<head>\n');
  expected += '<head>\n';
  for (let index = 0; index < 20_000; index++) {
    piece.text(line);
    piece.decimal(index * 7919);
    piece.text(end);
    expected += `    <same begin="${index * 7919}"/>\n`;
    const full = piece.endLine();
    if (full !== undefined) await full;
  }
  await piece.flush();
  await sink.write('</head>\n');
  expected += '</head>\n';
  await sink.flush();
  assert.ok(expected.length > 4 * 64 * 1024, 'the lines span several pieces');
  assert.equal(Buffer.concat(received).toString('latin1'), expected);
});

test('through a file, pieces the stream has written out are filled again, and every line arrives as written', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'thinbd-ascii-piece-'));
  try {
    const file = join(dir, 'out');
    const stream = createWriteStream(file);
    const sink = new StreamSink(stream);
    const piece = new AsciiPiece(sink);
    const line = asciiText('    <different begin="');
    const end = asciiText('"/>\n');
    // The pieces the file stream is handed: a piece given back is handed again, with new lines in it.
    const handed = new Set<ArrayBufferLike>();
    let handedAgain = 0;
    const write = stream.write.bind(stream) as (chunk: unknown, callback?: (error?: Error | null) => void) => boolean;
    stream.write = ((chunk: unknown, ...rest: unknown[]) => {
      if (chunk instanceof Uint8Array) {
        if (handed.has(chunk.buffer)) handedAgain += 1;
        handed.add(chunk.buffer);
      }
      return (write as (...args: unknown[]) => boolean)(chunk, ...rest);
    }) as typeof stream.write;
    const expected: string[] = [];
    // The first pieces wait in the stream (corked, not awaited): none may be filled again before
    // the file has them.
    stream.cork();
    for (let index = 0; index < 60_000; index++) {
      if (index === 10_000) stream.uncork();
      piece.text(line);
      piece.decimal(index * 104729);
      piece.text(end);
      expected.push(`    <different begin="${index * 104729}"/>\n`);
      const full = piece.endLine();
      if (full !== undefined && index >= 10_000) await full;
    }
    await piece.flush();
    await sink.flush();
    stream.end();
    await once(stream, 'finish');
    assert.ok(handedAgain > 0, 'a piece the file has written is filled again');
    assert.ok(handed.size < 8, `${handed.size} pieces for ${expected.length} lines`);
    assert.equal(readFileSync(file, 'latin1'), expected.join(''));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
