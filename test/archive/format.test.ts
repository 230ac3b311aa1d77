// The store's objects encode and decode; damage of any kind is THIN_CORRUPT_ARCHIVE naming the
// object, never a wrong value. And the chunk index agrees with a Map under random adds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  CHUNK_FLAG_ZSTD,
  PACK_FOOTER_BYTES,
  PACK_VERSION,
  decodeIndex,
  decodePackEntries,
  decodePackFooter,
  decodeSegment,
  decodeStreamRoot,
  encodeIndex,
  encodePackTrailer,
  encodeSegment,
  encodeStreamRoot,
  scanIndex,
  type ChunkEntry,
  type StreamRoot,
} from '../../src/archive/format.ts';
import { ChunkIndex } from '../../src/archive/chunk-index.ts';
import { isThinError } from '../../src/errors.ts';

const corrupt = (error: unknown) => isThinError(error, 'THIN_CORRUPT_ARCHIVE');

function entries(count: number): ChunkEntry[] {
  let offset = 16;
  return Array.from({ length: count }, (_, index) => {
    const entry = { hash: new Uint8Array(randomBytes(32)), offsetBytes: offset, storedBytes: 100 + index, rawBytes: 200 + index, flags: CHUNK_FLAG_ZSTD, frameOffsetBytes: 0 };
    offset += entry.storedBytes;
    return entry;
  });
}

test('a pack trailer round-trips; a flipped bit anywhere in it is caught', () => {
  const list = entries(5);
  const end = list[4]!.offsetBytes + list[4]!.storedBytes;
  const trailer = encodePackTrailer(list, end);
  const size = end + trailer.length;
  const footer = decodePackFooter(trailer.subarray(trailer.length - PACK_FOOTER_BYTES), size, PACK_VERSION, 'pack p');
  assert.deepEqual(decodePackEntries(trailer.subarray(0, trailer.length - PACK_FOOTER_BYTES), footer, 'pack p'), list);
  for (let position = 0; position < trailer.length; position += 7) {
    const damaged = Uint8Array.from(trailer);
    damaged[position]! ^= 0x10;
    assert.throws(() => {
      const f = decodePackFooter(damaged.subarray(damaged.length - PACK_FOOTER_BYTES), size, PACK_VERSION, 'pack p');
      decodePackEntries(damaged.subarray(0, damaged.length - PACK_FOOTER_BYTES), f, 'pack p');
    }, corrupt, `flip at ${position}`);
  }
  assert.throws(() => decodePackFooter(trailer.subarray(trailer.length - PACK_FOOTER_BYTES), size - 1, PACK_VERSION, 'pack p'), corrupt, 'a truncated pack');
});

test('an index round-trips and a damaged or truncated one is refused', () => {
  const packs = [{ packId: 'ab'.repeat(16), entries: entries(3) }, { packId: 'cd'.repeat(16), entries: entries(1) }];
  const bytes = encodeIndex(packs);
  assert.deepEqual(decodeIndex(bytes, 'index i'), packs);
  assert.throws(() => decodeIndex(bytes.subarray(0, bytes.length - 1), 'index i'), corrupt);
  const damaged = Uint8Array.from(bytes);
  damaged[40]! ^= 1;
  assert.throws(() => decodeIndex(damaged, 'index i'), /index i: the index fails its SHA-256/);
});

test('a segment round-trips; runs out of range or chunks that do not add up are refused', () => {
  const segmentBytes = 1 << 30;
  const segment = { index: 1, runs: [{ beginBytes: segmentBytes + 65536, lengthBytes: 300, chunks: [{ hash: new Uint8Array(32).fill(1), rawBytes: 100 }, { hash: new Uint8Array(32).fill(2), rawBytes: 200 }] }] };
  const expect = { index: 1, segmentBytes, volumeBytes: 3 * segmentBytes, chunkMaxBytes: 1 << 20 };
  assert.deepEqual(decodeSegment(encodeSegment(segment), expect, 'seg'), segment);
  assert.throws(() => decodeSegment(encodeSegment(segment), { ...expect, index: 2 }, 'seg'), /holds segment 1, not 2/);
  assert.throws(() => decodeSegment(encodeSegment(segment), { ...expect, volumeBytes: segmentBytes + 65536 }, 'seg'), /outside the segment/);
  const bytes = encodeSegment(segment);
  new DataView(bytes.buffer).setUint32(24 + 24 + 32, 99, true);
  assert.throws(() => decodeSegment(bytes, expect, 'seg'), /chunks hold 299 bytes, the run 300/);
});

test('a stream root round-trips; truncated or edited, it is refused', () => {
  const root: StreamRoot = {
    name: 's',
    createdAt: '2026-12-01T00:00:00.000Z',
    sizeBytes: 5 << 20,
    blockSizeBytes: 65536,
    source: { poolId: '00000000000000ff', volumeId: 3, volumeName: 'v', volumeCreatedAt: '2026-11-30T00:00:00.000Z', readOnly: true },
    parent: 'p',
    stats: { mappedBytes: 1, bytesRead: 1, bytesNew: 1, bytesStored: 1, chunkCount: 1, newChunkCount: 1, elapsedMs: 1 },
    segments: [{ index: 0, hash: new Uint8Array(32).fill(7), rawBytes: 60, mappedBytes: 1 }],
  };
  const bytes = encodeStreamRoot(root);
  const expect = { name: 's', segmentBytes: 1 << 30 };
  assert.deepEqual(decodeStreamRoot(bytes, expect, 'stream s'), root);
  assert.throws(() => decodeStreamRoot(bytes.subarray(0, bytes.length - 10), expect, 'stream s'), corrupt);
  const edited = new TextEncoder().encode(new TextDecoder().decode(bytes).replace('"sizeBytes": 5242880', '"sizeBytes": 5242881'));
  assert.throws(() => decodeStreamRoot(edited, expect, 'stream s'), /fails its SHA-256/);
  assert.throws(() => decodeStreamRoot(bytes, { ...expect, name: 't' }, 'stream t'), /names stream 's'/);
});

test('the chunk index agrees with a Map through growth', () => {
  const index = new ChunkIndex();
  const model = new Map<string, { packId: string; offsetBytes: number }>();
  for (let step = 0; step < 20_000; step += 1) {
    const hash = new Uint8Array(randomBytes(32));
    const packId = `${step % 7}`.repeat(32);
    assert.equal(index.add(packId, { hash, offsetBytes: step, storedBytes: step + 1, rawBytes: step + 2, flags: step % 4, frameOffsetBytes: step % 5 }), true);
    model.set(Buffer.from(hash).toString('hex'), { packId, offsetBytes: step });
    if (step % 1000 === 0) assert.equal(index.add('x'.repeat(32), { hash, offsetBytes: 0, storedBytes: 0, rawBytes: 0, flags: 0, frameOffsetBytes: 0 }), false, 'a duplicate is not added');
  }
  assert.equal(index.size, model.size);
  for (const [hex, expected] of model) {
    const found = index.get(new Uint8Array(Buffer.from(hex, 'hex')));
    assert.equal(found?.packId, expected.packId);
    assert.equal(found?.offsetBytes, expected.offsetBytes);
    assert.equal(found?.rawBytes, expected.offsetBytes + 2);
    assert.equal(found?.flags, expected.offsetBytes % 4);
    assert.equal(found?.frameOffsetBytes, expected.offsetBytes % 5);
  }
  assert.equal(index.get(new Uint8Array(32)), undefined);
  assert.equal([...index.entries()].length, model.size);
  assert.ok(index.memoryBytes / index.size <= 128, `${index.memoryBytes / index.size} bytes per chunk`);
});

test('an index object goes into the chunk index from its bytes as it does entry by entry; a bad entry in it is named', () => {
  const packs = [
    { packId: 'ab'.repeat(16), entries: entries(3000) },
    { packId: 'cd'.repeat(16), entries: entries(1) },
    { packId: 'ef'.repeat(16), entries: [] },
  ];
  // A chunk listed twice (in two packs): the first location stays, as with add().
  packs[1]!.entries[0]!.hash = packs[0]!.entries[7]!.hash;
  const bytes = encodeIndex(packs);
  const fromBytes = new ChunkIndex();
  const added = scanIndex(bytes, 'index i').map((run) => fromBytes.addEntries(run));
  assert.deepEqual(added, [3000, 0, 0]);
  const oneByOne = new ChunkIndex();
  for (const pack of packs) for (const entry of pack.entries) oneByOne.add(pack.packId, entry);
  assert.equal(fromBytes.size, oneByOne.size);
  for (const pack of packs) {
    for (const entry of pack.entries) assert.deepEqual(fromBytes.get(entry.hash), oneByOne.get(entry.hash));
  }
  assert.equal(fromBytes.get(packs[1]!.entries[0]!.hash)?.packId, 'ab'.repeat(16));
  // An entry that starts inside the one before it, with the index's hash made right again.
  const bad = encodeIndex([{ packId: 'ab'.repeat(16), entries: entries(4).map((entry, index) => (index === 2 ? { ...entry, offsetBytes: entry.offsetBytes - 1 } : entry)) }]);
  assert.throws(() => scanIndex(bad, 'index j'), (error: unknown) => corrupt(error) && /index j \(pack abab.*\): chunk 2 \([0-9a-f]{64}\) starts at byte \d+, inside the piece before it/.test((error as Error).message));
});

/** A frame at byte `offset` of `storedBytes` holding chunks of `sizes` raw bytes, end to end. */
function frameEntries(offset: number, storedBytes: number, sizes: number[]): ChunkEntry[] {
  let frameOffsetBytes = 0;
  return sizes.map((rawBytes) => {
    const entry = { hash: new Uint8Array(randomBytes(32)), offsetBytes: offset, storedBytes, rawBytes, flags: CHUNK_FLAG_ZSTD, frameOffsetBytes };
    frameOffsetBytes += rawBytes;
    return entry;
  });
}

test('frames of several chunks (F-AR-PACK-5): entries round-trip in trailers and indexes; an index may leave chunks and pieces out; bad frame entries are named', () => {
  const raw = { hash: new Uint8Array(randomBytes(32)), offsetBytes: 16 + 500, storedBytes: 70, rawBytes: 70, flags: 0, frameOffsetBytes: 0 };
  const list = [...frameEntries(16, 500, [100, 200, 300]), raw, ...frameEntries(16 + 570, 40, [4000])];
  const end = 16 + 570 + 40;
  const trailer = encodePackTrailer(list, end);
  const footer = decodePackFooter(trailer.subarray(trailer.length - PACK_FOOTER_BYTES), end + trailer.length, PACK_VERSION, 'pack f');
  assert.deepEqual(decodePackEntries(trailer.subarray(0, trailer.length - PACK_FOOTER_BYTES), footer, 'pack f'), list);
  // An index listing the live chunks only (as gc writes it): the frame's middle chunk and the raw piece left out.
  const live = [list[0]!, list[2]!, list[4]!];
  assert.deepEqual(decodeIndex(encodeIndex([{ packId: 'ab'.repeat(16), entries: live }]), 'index f'), [{ packId: 'ab'.repeat(16), entries: live }]);
  const refused = (entries: ChunkEntry[], pattern: RegExp) =>
    assert.throws(() => scanIndex(encodeIndex([{ packId: 'ab'.repeat(16), entries }]), 'index g'), (error: unknown) => corrupt(error) && pattern.test((error as Error).message), pattern.source);
  refused([list[0]!, { ...list[1]!, frameOffsetBytes: 50 }], /chunk 1 \([0-9a-f]{64}\) starts at byte 50 of its frame, inside the chunk before it/);
  refused([list[0]!, { ...list[1]!, storedBytes: 499 }], /chunk 1 .* shares the piece at byte 16 with the chunk before it but not its size/);
  refused([{ ...raw, offsetBytes: 16 }, { ...raw, offsetBytes: 16, hash: new Uint8Array(randomBytes(32)) }], /chunk 1 .* shares the piece at byte 16 .* compression/);
  refused([{ ...raw, frameOffsetBytes: 4 }], /stored raw but its sizes differ or it claims a frame offset/);
  refused([{ ...list[4]!, frameOffsetBytes: 4 * 1024 * 1024 - 100 }], /past any frame/);
  assert.throws(() => encodePackTrailer([list[0]!, list[2]!, raw], end), corrupt, 'a trailer covers its pieces up to the trailer');
});

test('version-1 packs and indexes (48-byte entries, a frame per chunk) are read', () => {
  const list = entries(3);
  const v1 = new Uint8Array(16 + 24 + 48 * list.length + 32);
  const view = new DataView(v1.buffer);
  v1.set(Buffer.from('THINPIDX'), 0);
  view.setUint32(8, 1, true);
  view.setUint32(12, 1, true);
  v1.set(Buffer.from('cd'.repeat(16), 'hex'), 16);
  view.setUint32(32, list.length, true);
  list.forEach((entry, index) => {
    const at = 40 + index * 48;
    v1.set(entry.hash, at);
    view.setUint32(at + 32, entry.offsetBytes, true);
    view.setUint32(at + 36, entry.storedBytes, true);
    view.setUint32(at + 40, entry.rawBytes, true);
    view.setUint32(at + 44, entry.flags, true);
  });
  v1.set(createHash('sha256').update(v1.subarray(0, v1.length - 32)).digest(), v1.length - 32);
  assert.deepEqual(decodeIndex(v1, 'index v1'), [{ packId: 'cd'.repeat(16), entries: list }]);
  const index = new ChunkIndex();
  for (const run of scanIndex(v1, 'index v1')) index.addEntries(run);
  assert.equal(index.get(list[1]!.hash)?.frameOffsetBytes, 0);
  // A version-1 pack's trailer is sized by 48-byte entries.
  const trailerOffset = list[2]!.offsetBytes + list[2]!.storedBytes;
  const footer = new Uint8Array(PACK_FOOTER_BYTES);
  const footerView = new DataView(footer.buffer);
  footerView.setUint32(0, trailerOffset, true);
  footerView.setUint32(4, list.length, true);
  footer.set(Buffer.from('THINPEND'), 40);
  assert.equal(decodePackFooter(footer, trailerOffset + 48 * list.length + PACK_FOOTER_BYTES, 1, 'pack v1').entryBytes, 48);
  assert.throws(() => decodePackFooter(footer, trailerOffset + 48 * list.length + PACK_FOOTER_BYTES, 2, 'pack v1'), corrupt, 'read as version 2 its sizes do not add up');
});
