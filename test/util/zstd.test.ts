// src/util/zstd.ts: round trips, and damaged or mis-sized frames refused without over-allocating.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { ZstdCompressor, ZstdDecompressor, ZstdFrameError } from '../../src/util/zstd.ts';

const compressor = new ZstdCompressor(3);
const decompressor = new ZstdDecompressor();

test('compressible and incompressible data round-trip through reused contexts', () => {
  const text = new TextEncoder().encode('thin volumes share blocks until written. '.repeat(3000));
  const random = randomBytes(70_000);
  for (const raw of [text, random, new Uint8Array(65536), new Uint8Array(0), text, random]) {
    const frame = compressor.compress(raw);
    assert.deepEqual(Buffer.from(decompressor.decompress(frame, raw.length)), Buffer.from(raw));
  }
  assert.ok(compressor.compress(text).length < text.length / 20, 'repetitive text compresses');
});

test('a frame that holds another size than expected is refused', () => {
  const raw = randomBytes(1000);
  const frame = compressor.compress(raw);
  assert.throws(() => decompressor.decompress(frame, 999), ZstdFrameError);
  assert.throws(() => decompressor.decompress(frame, 1001), /holds 1000 bytes, not 1001|not a valid zstd frame/);
});

test('a damaged frame is refused, not decoded into wrong bytes', () => {
  const raw = new TextEncoder().encode('abcdefgh'.repeat(10_000));
  const frame = compressor.compress(raw);
  for (const position of [0, 4, Math.floor(frame.length / 2), frame.length - 1]) {
    const damaged = Uint8Array.from(frame);
    damaged[position]! ^= 0x40;
    let decoded: Uint8Array | undefined;
    try {
      decoded = decompressor.decompress(damaged, raw.length);
    } catch (error) {
      assert.ok(error instanceof ZstdFrameError, String(error));
      continue;
    }
    // zstd frames here carry no checksum: a flip inside a literal can decode to other bytes of
    // the right length. Callers name chunks by a hash of the raw bytes and check it.
    assert.equal(decoded.length, raw.length);
  }
  assert.throws(() => decompressor.decompress(new Uint8Array([1, 2, 3, 4, 5, 6]), 5), ZstdFrameError);
});
