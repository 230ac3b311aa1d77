// The image source layer (src/image/source.ts): zstd decoded in bounded chunks whatever the ratio,
// zstd streams that begin with a skippable frame, downloads cut short reported as such (and the
// temporary volume removed), and URLs of schemes thinbd does not read refused as such.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import type * as ZstdBinding from 'zstd-napi/binding.js';
import { run, tempDir } from '../nbd/helpers.ts';
import { THINBD, thinbd } from '../cli/run-thinbd.ts';
import { IMAGE_READ_CHUNK_BYTES } from '../../src/constants.ts';
import { decompressChunks, detectCompression } from '../../src/image/source.ts';
import type { ChunkSource } from '../../src/image/byte-input.ts';
import { sh } from './helpers.ts';
import { tarArchive, tarEntry, type TarSpec } from './tar-writer.ts';

const require = createRequire(import.meta.url);
const binding = require('zstd-napi/binding.js') as typeof ZstdBinding;
const zstd = require('zstd-napi') as typeof import('zstd-napi');

let work: { path: string; remove(): void };
let pool: string;
let server: http.Server;
let baseUrl: string;
/** Path -> the body a request gets, and how many of its bytes are sent before the connection closes. */
const served = new Map<string, { body: Buffer; sentBytes: number }>();

const FLAT: TarSpec[] = [
  { path: 'etc/', type: 'dir' },
  { path: 'etc/motd', data: 'hello\n' },
];

/** ZERO_FILE_BYTES of zeros in one file: a few kilobytes as zstd, a quarter gigabyte decoded. */
const ZERO_FILE_BYTES = 256 * 1024 * 1024;

before(async () => {
  work = tempDir('image-source');
  pool = path.join(work.path, 'pool');
  assert.equal(thinbd(['pool', 'create', '--pool', pool, '--data-size', '2G']).code, 0);
  server = http.createServer((request, response) => {
    const file = served.get(request.url ?? '');
    if (file === undefined) {
      response.writeHead(404).end();
      return;
    }
    // The whole length promised, part of it sent, then the connection closed.
    response.writeHead(200, { 'content-length': file.body.length });
    response.write(file.body.subarray(0, file.sentBytes), () => setTimeout(() => response.destroy(), 50));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  await new Promise((resolve) => server?.close(resolve));
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

/** A zstd skippable frame (RFC 8878 section 3.1.2), as pzstd writes before each frame. */
function skippableFrame(magicLowNibble: number, payload: Uint8Array): Buffer {
  const frame = Buffer.alloc(8 + payload.length);
  frame.writeUInt32LE(0x184d2a50 + magicLowNibble, 0);
  frame.writeUInt32LE(payload.length, 4);
  frame.set(payload, 8);
  return frame;
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

function volumeNames(): string[] {
  return (JSON.parse(thinbd(['list', '--pool', pool, '--json']).stdout) as Array<{ name: string }>).map((volume) => volume.name).sort();
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

test('a zstd stream that begins with skippable frames is read as zstd', () => {
  const frames = Buffer.concat([skippableFrame(0, Buffer.from([4, 0, 0, 0])), skippableFrame(0xf, Buffer.alloc(3)), Buffer.from(zstd.compress(tarArchive(FLAT)))]);
  assert.equal(detectCompression(frames, 'test'), 'zstd');
  for (const nibble of [0, 7, 0xf]) assert.equal(detectCompression(skippableFrame(nibble, Buffer.alloc(0)), 'test'), 'zstd');
  const file = path.join(work.path, 'skippable.tar.zst');
  fs.writeFileSync(file, frames);
  const result = thinbd(['image', 'import', '--pool', pool, 'skippable', file, '--json']);
  assert.equal(result.code, 0, result.stderr);
  assert.equal((JSON.parse(result.stdout) as { compression: string; files: number }).compression, 'zstd');
  const raw = path.join(work.path, 'skippable.raw');
  assert.equal(thinbd(['export', '--pool', pool, 'skippable', raw]).code, 0);
  assert.equal(sh('debugfs', ['-R', 'cat /etc/motd', raw]).stdout, 'hello\n');
});

test('a download that ends before its Content-Length is one error naming the bytes and the entry being read, and leaves no volume', async () => {
  // Incompressible file data, so that the cut falls inside it after a few chunks of each form.
  const data = Buffer.alloc(4 * 1024 * 1024);
  for (let index = 0; index < data.length; index += 4) data.writeUInt32LE((Math.imul(index, 2654435761) ^ (index >>> 7)) >>> 0, index);
  const tar = tarArchive([...FLAT, { path: 'big', data }]);
  const forms: Array<[string, Buffer]> = [['cut.tar', tar], ['cut.tar.gz', zlib.gzipSync(tar, { level: 1 })], ['cut.tar.zst', Buffer.from(zstd.compress(tar))]];
  const before = volumeNames();
  for (const [name, body] of forms) {
    const sentBytes = Math.floor(body.length / 2);
    served.set(`/${name}`, { body, sentBytes });
    const url = `${baseUrl}/${name}`;
    const result = await run(process.execPath, [THINBD, 'image', 'import', '--pool', pool, 'cut', url], { allowFailure: true });
    assert.equal(result.code, 1, `${name}: ${result.stderr}`);
    assert.equal(result.stderr.trim().split('\n').length, 1, `one line: ${result.stderr}`);
    assert.match(result.stderr, new RegExp(`^thinbd: Cannot read ${url.replaceAll('.', '\\.')}: the download ended after \\d+ of ${body.length} bytes, while reading entry 'big' \\(its header at byte \\d+\\)$`, 'm'), name);
    assert.deepEqual(volumeNames(), before, `${name}: the volumes changed`);
  }
  const check = thinbd(['check', '--pool', pool]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
});

test('a URL of a scheme thinbd does not read is refused naming the sources it reads', () => {
  for (const source of ['ftp://example.com/image.tar', 'file:///tmp/image.tar']) {
    const result = thinbd(['image', 'import', '--pool', pool, 'other', source]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /^thinbd: Cannot read \S+: thinbd does not read (ftp|file):\/\/ URLs; a source is a path, - \(standard input\), an http:\/\/ or https:\/\/ URL, or s3:\/\/BUCKET\/KEY/);
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr);
  }
  assert.match(thinbd(['image', 'import', '--pool', pool, 'other', 'file:///tmp/image.tar']).stderr, /give its path/);
});
