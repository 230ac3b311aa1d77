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

test('compressInto writes a frame that fits its target and refuses one that does not', () => {
  const text = new TextEncoder().encode('thin volumes share blocks until written. '.repeat(3000));
  const target = new Uint8Array(new SharedArrayBuffer(text.length - 1));
  const frameBytes = compressor.compressInto(text, target);
  assert.ok(frameBytes !== undefined && frameBytes < text.length / 20, `a frame of ${frameBytes} bytes`);
  assert.deepEqual(Buffer.from(decompressor.decompress(target.subarray(0, frameBytes), text.length)), Buffer.from(text));
  const random = randomBytes(70_000);
  assert.equal(compressor.compressInto(random, new Uint8Array(random.length - 1)), undefined, 'random bytes do not compress');
  const roomy = new Uint8Array(random.length + 1000);
  const randomFrameBytes = compressor.compressInto(random, roomy);
  assert.ok(randomFrameBytes !== undefined && randomFrameBytes > random.length);
  assert.deepEqual(Buffer.from(decompressor.decompress(roomy.subarray(0, randomFrameBytes), random.length)), Buffer.from(random));
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
