// The image source layer (src/image/source.ts): zstd decoded in bounded chunks whatever the ratio.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import type * as ZstdBinding from 'zstd-napi/binding.js';
import { tempDir } from '../nbd/helpers.ts';
import { thinbd } from '../cli/run-thinbd.ts';
import { IMAGE_READ_CHUNK_BYTES } from '../../src/constants.ts';
import { decompressChunks } from '../../src/image/source.ts';
import type { ChunkSource } from '../../src/image/byte-input.ts';
import { tarEntry } from './tar-writer.ts';

const require = createRequire(import.meta.url);
const binding = require('zstd-napi/binding.js') as typeof ZstdBinding;

let work: { path: string; remove(): void };
let pool: string;

/** ZERO_FILE_BYTES of zeros in one file: a few kilobytes as zstd, a quarter gigabyte decoded. */
const ZERO_FILE_BYTES = 256 * 1024 * 1024;

before(() => {
  work = tempDir('image-source');
  pool = path.join(work.path, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '2G']).code, 0);
});

after(() => {
  work?.remove();
});

/** A tar of one file of `sizeBytes` zeros, compressed with zstd as a stream (the tar is never whole in memory). */
function zstdZeroTar(sizeBytes: number): Buffer {
  const header = Buffer.from(tarEntry({ path: 'zeros', data: Buffer.alloc(0) }));
  header.write(`${sizeBytes.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  header.write('        ', 148, 'latin1');
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0`, 148, 'latin1');
  const context = new binding.CCtx();
  context.setParameter(binding.CParameter.compressionLevel, 3);
  const output = Buffer.alloc(1024 * 1024);
  const parts: Buffer[] = [];
  const feed = (input: Uint8Array, end: boolean): void => {
    let rest = input;
    for (;;) {
      const [left, produced, consumed] = context.compressStream2(output, rest, end ? binding.EndDirective.end : binding.EndDirective.continue);
      parts.push(Buffer.from(output.subarray(0, produced)));
      rest = rest.subarray(consumed);
      if (rest.length === 0 && (!end || left === 0)) return;
    }
  };
  feed(header, false);
  const zeros = new Uint8Array(1024 * 1024);
  for (let fed = 0; fed < sizeBytes; fed += zeros.length) feed(zeros.subarray(0, Math.min(zeros.length, sizeBytes - fed)), false);
  feed(new Uint8Array(1024), true);
  return Buffer.concat(parts);
}

/** A chunk source over `bytes` in pieces of `chunkBytes`. */
function chunksOf(bytes: Uint8Array, chunkBytes: number): ChunkSource {
  let at = 0;
  return {
    next: async () => {
      if (at >= bytes.length) return undefined;
      const chunk = bytes.subarray(at, at + chunkBytes);
      at += chunk.length;
      return chunk;
    },
  };
}

test('zstd is decoded in chunks of at most a read chunk, however well it compresses', async () => {
  const compressed = zstdZeroTar(ZERO_FILE_BYTES);
  assert.ok(compressed.length < 64 * 1024, `${compressed.length} bytes compressed`);
  const chunks = decompressChunks(chunksOf(compressed, IMAGE_READ_CHUNK_BYTES), 'zstd', 'zeros.tar.zst', () => 0);
  let totalBytes = 0;
  let largestBytes = 0;
  for (let chunk = await chunks.next(); chunk !== undefined; chunk = await chunks.next()) {
    totalBytes += chunk.length;
    largestBytes = Math.max(largestBytes, chunk.length);
  }
  assert.equal(totalBytes, 512 + ZERO_FILE_BYTES + 1024);
  assert.ok(largestBytes <= IMAGE_READ_CHUNK_BYTES, `a chunk of ${largestBytes} bytes`);
});

test('a zstd tar that inflates to hundreds of megabytes imports in bounded memory', () => {
  const file = path.join(work.path, 'zeros.tar.zst');
  fs.writeFileSync(file, zstdZeroTar(2 * ZERO_FILE_BYTES));
  for (const [name, source, input] of [['zeros', file, undefined], ['zeros-stdin', '-', fs.readFileSync(file)]] as const) {
    const result = thinbd(['image', 'import', '--pool', pool, name, source, '--json'], input === undefined ? {} : { input });
    assert.equal(result.code, 0, result.stderr);
    const summary = JSON.parse(result.stdout) as { fileBytes: number; compression: string; peakRssBytes: number };
    assert.equal(summary.compression, 'zstd');
    assert.equal(summary.fileBytes, 2 * ZERO_FILE_BYTES);
    // The image's 512 MiB went through a process that never held more than a fraction of it.
    assert.ok(summary.peakRssBytes <= 256 * 1024 * 1024, `peak RSS ${summary.peakRssBytes} bytes importing from ${source}`);
  }
});
