// Frames of several chunks (F-AR-CHUNK-2, F-AR-PACK-5): pack gathers adjacent new chunks into one
// zstd frame while each chunk keeps its own name and index entry. A full unpack decompresses each
// frame once; a later stream reuses single chunks out of a frame; gc of a frame partly dead keeps
// what is live; and a store written by the version-1 writer (a frame per chunk, 48-byte entries)
// still reads, verifies, unpacks, takes new packs and collects.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Pool } from '../../src/pool/pool.ts';
import { Archive, ChunkReader } from '../../src/archive/archive.ts';
import { gcArchive, packVolume, removeArchiveStream, unpackVolume, verifyArchive } from '../../src/archive/commands.ts';
import type { ChunkLocation } from '../../src/archive/chunk-index.ts';
import { CHUNK_FLAG_SEGMENT, CHUNK_FLAG_ZSTD, hashHex, scanIndex, entriesOf, type ChunkEntry } from '../../src/archive/format.ts';
import { poolSources } from '../../src/archive/source.ts';
import { ARCHIVE_FRAME_RAW_BYTES_MAX, ARCHIVE_FRAME_TARGET_BYTES, ARCHIVE_UNPACK_WINDOW_BYTES } from '../../src/constants.ts';
import { ZstdCompressor, ZstdDecompressor } from '../../src/util/zstd.ts';
import { MiB, KiB, contentBytes, createPool, digest, readVolume, tempDir } from './helpers.ts';

const dir = tempDir('archive-frames');
let pool: Pool;
let store: string;
/** The first volume's bytes, parts of which the second volume repeats. */
const first = contentBytes(12 * MiB, 11);

before(async () => {
  pool = await createPool(join(dir.path, 'pool'));
  store = join(dir.path, 'store');
  await (await Archive.init(store, { averageChunkBytes: 64 * KiB, zstdLevel: 3 })).close();
  await (await pool.createVolume('a', { sizeBytes: 16 * MiB })).write(0, first);
  await pool.snapshot('a', 'a.1', { readOnly: true });
  // The second volume: 2.5 MiB from the middle of the first (CDC finds most of its chunks again), then bytes of its own.
  const b = await pool.createVolume('b', { sizeBytes: 16 * MiB });
  await b.write(0, first.subarray(3 * MiB + 100 * KiB, 5 * MiB + 612 * KiB));
  await b.write(4 * MiB, contentBytes(2 * MiB, 12));
  // And a little from inside a frame of the first: most of that frame is the first's alone.
  await b.write(7 * MiB, first.subarray(9 * MiB + 300 * KiB, 9 * MiB + 700 * KiB));
  await pool.snapshot('b', 'b.1', { readOnly: true });
});

after(async () => {
  await pool?.close().catch(() => undefined);
  dir.remove();
});

interface Piece {
  packId: string;
  offsetBytes: number;
  flags: number;
  chunks: Array<{ hash: Uint8Array; location: ChunkLocation }>;
}

/** The store's pieces (a frame or a raw chunk) as its index lists them, chunks in frame order. */
async function piecesOf(path: string): Promise<{ pieces: Piece[]; problems: string[] }> {
  const archive = await Archive.open(path);
  try {
    const loaded = await archive.loadIndex();
    const byPlace = new Map<string, Piece>();
    for (const { hash, location } of loaded.index.entries()) {
      const key = `${location.packId}@${location.offsetBytes}`;
      let piece = byPlace.get(key);
      if (piece === undefined) byPlace.set(key, (piece = { packId: location.packId, offsetBytes: location.offsetBytes, flags: location.flags, chunks: [] }));
      piece.chunks.push({ hash, location });
    }
    const pieces = [...byPlace.values()];
    for (const piece of pieces) piece.chunks.sort((a, b) => a.location.frameOffsetBytes - b.location.frameOffsetBytes);
    return { pieces, problems: loaded.problems };
  } finally {
    await archive.close();
  }
}

function packFile(path: string, packId: string): string {
  return join(path, 'packs', packId.slice(0, 2), packId);
}

/** A piece's stored bytes, read from its pack file. */
function storedBytes(path: string, piece: Piece): Uint8Array {
  const location = piece.chunks[0]!.location;
  return readFileSync(packFile(path, piece.packId)).subarray(location.offsetBytes, location.offsetBytes + location.storedBytes);
}

const sha = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

async function unpackDigest(path: string, stream: string, volume: string): Promise<string> {
  await unpackVolume({ store: path, pool, stream, volume });
  const bytes = await readVolume(pool, volume);
  await pool.removeVolume(volume);
  return digest(bytes);
}

test('pack puts adjacent new chunks into one frame, each chunk still named; a full unpack decompresses each frame once', async () => {
  const result = await packVolume({ store, sources: poolSources(pool), volume: 'a.1', name: 's1' });
  const { pieces, problems } = await piecesOf(store);
  assert.deepEqual(problems, []);
  const frames = pieces.filter((piece) => (piece.flags & CHUNK_FLAG_SEGMENT) === 0 && (piece.flags & CHUNK_FLAG_ZSTD) !== 0);
  const chunksInFrames = frames.reduce((sum, piece) => sum + piece.chunks.length, 0);
  assert.ok(frames.length >= 8 && chunksInFrames >= 8 * frames.length, `${chunksInFrames} chunks in ${frames.length} frames`);
  for (const frame of frames) {
    // Pack writes whole frames: the chunks lie end to end from the frame's start, up to the target size.
    let at = 0;
    for (const chunk of frame.chunks) {
      assert.equal(chunk.location.frameOffsetBytes, at);
      at += chunk.location.rawBytes;
    }
    assert.ok(at <= ARCHIVE_FRAME_TARGET_BYTES || frame.chunks.length === 1, `a frame of ${at} bytes`);
    assert.equal(ZstdDecompressor.contentSize(storedBytes(store, frame)), at, "the frame header's content size is its chunks'");
  }
  assert.equal(result.chunkCount, chunksInFrames + pieces.filter((piece) => (piece.flags & (CHUNK_FLAG_SEGMENT | CHUNK_FLAG_ZSTD)) === 0).length);

  // Every decompression during a full unpack, by the frame decompressed.
  const calls = new Map<string, number>();
  const original = ZstdDecompressor.prototype.decompress;
  ZstdDecompressor.prototype.decompress = function (this: ZstdDecompressor, frame: Uint8Array, rawLengthBytes: number, into?: Uint8Array) {
    const key = sha(frame);
    calls.set(key, (calls.get(key) ?? 0) + 1);
    return original.call(this, frame, rawLengthBytes, into);
  };
  let unpacked: string;
  try {
    unpacked = await unpackDigest(store, 's1', 'copy');
  } finally {
    ZstdDecompressor.prototype.decompress = original;
  }
  assert.equal(unpacked, digest(await readVolume(pool, 'a.1')), 'the unpacked volume matches');
  for (const frame of frames) assert.equal(calls.get(sha(storedBytes(store, frame))), 1, `frame at byte ${frame.offsetBytes} decompressed once`);
});

test('a later stream reuses single chunks out of frames of an earlier one', async () => {
  const result = await packVolume({ store, sources: poolSources(pool), volume: 'b.1', name: 's2' });
  assert.ok(result.newChunkCount < result.chunkCount - 20, `${result.chunkCount - result.newChunkCount} of ${result.chunkCount} chunks reused`);
  const { pieces } = await piecesOf(store);
  const archive = await Archive.open(store);
  let reusedInsideFrames = 0;
  try {
    const root = await archive.readStream('s2');
    const { index } = await archive.loadIndex();
    const segment = await archive.readSegment(new ChunkReader(archive.store, index), root, root.segments[0]!);
    const s2Chunks = new Set(segment.runs.flatMap((run) => run.chunks.map((chunk) => hashHex(chunk.hash))));
    for (const piece of pieces) {
      const used = piece.chunks.filter((chunk) => s2Chunks.has(hashHex(chunk.hash)));
      // A frame that s2 uses only in part: some of its chunks are s1's alone.
      if (used.length > 0 && used.length < piece.chunks.length && used.some((chunk) => chunk.location.frameOffsetBytes > 0)) reusedInsideFrames += used.length;
    }
  } finally {
    await archive.close();
  }
  assert.ok(reusedInsideFrames >= 5, `${reusedInsideFrames} chunks reused from inside frames s2 uses in part`);
  assert.equal(await unpackDigest(store, 's2', 'copy2'), digest(await readVolume(pool, 'b.1')));
});

test('gc of frames partly dead keeps the live chunks: whole frames mostly live, the rest compressed again', async () => {
  // The frames s2 uses less than half of: gc is to compress their live chunks again, alone.
  const archive = await Archive.open(store);
  let mostlyDead: string[] = [];
  try {
    const { index } = await archive.loadIndex();
    const root = await archive.readStream('s2');
    const segment = await archive.readSegment(new ChunkReader(archive.store, index), root, root.segments[0]!);
    const s2Chunks = new Set(segment.runs.flatMap((run) => run.chunks.map((chunk) => hashHex(chunk.hash))));
    mostlyDead = (await piecesOf(store)).pieces.flatMap((piece) => {
      const live = piece.chunks.filter((chunk) => s2Chunks.has(hashHex(chunk.hash)));
      const liveBytes = live.reduce((sum, chunk) => sum + chunk.location.rawBytes, 0);
      const allBytes = piece.chunks.reduce((sum, chunk) => sum + chunk.location.rawBytes, 0);
      return live.length > 0 && liveBytes * 2 < allBytes ? [live.map((chunk) => hashHex(chunk.hash)).join()] : [];
    });
  } finally {
    await archive.close();
  }
  assert.ok(mostlyDead.length >= 1, 's2 uses a frame of s1 only in small part');
  await removeArchiveStream({ store, stream: 's1' });
  const report = await gcArchive({ store });
  assert.ok(report.packsRewritten >= 1, `${report.packsRewritten} packs rewritten: ${JSON.stringify(report)}`);
  assert.ok(report.bytesAfter < report.bytesBefore / 2, `${report.bytesAfter} bytes of ${report.bytesBefore} kept`);
  const after = await piecesOf(store);
  assert.deepEqual(after.problems, [], 'the index gc wrote (live chunks only) loads without problems');
  let keptWithDead = 0;
  for (const piece of after.pieces) {
    if ((piece.flags & CHUNK_FLAG_ZSTD) === 0) continue;
    const liveBytes = piece.chunks.reduce((sum, chunk) => sum + chunk.location.rawBytes, 0);
    const frameBytes = ZstdDecompressor.contentSize(storedBytes(store, piece))!;
    assert.ok(liveBytes * 2 >= frameBytes, `a frame of ${frameBytes} bytes with ${liveBytes} live`);
    if (liveBytes < frameBytes) keptWithDead += 1;
  }
  assert.ok(keptWithDead >= 1, 'a frame partly dead but mostly live was kept whole');
  const piecesAfter = new Set(after.pieces.map((piece) => piece.chunks.map((chunk) => hashHex(chunk.hash)).join()));
  for (const live of mostlyDead) assert.ok(piecesAfter.has(live), 'the live chunks of a mostly dead frame make a frame of their own');
  const verify = await verifyArchive({ store });
  assert.deepEqual(verify.problems, []);
  assert.equal(await unpackDigest(store, 's2', 'copy3'), digest(await readVolume(pool, 'b.1')));
});

// ---- a version-1 store, made by an encoder of the version-1 layout written here ----

const V1_ENTRY_BYTES = 48;

function v1Entries(entries: ChunkEntry[]): Uint8Array {
  const bytes = new Uint8Array(entries.length * V1_ENTRY_BYTES);
  const view = new DataView(bytes.buffer);
  entries.forEach((entry, index) => {
    const at = index * V1_ENTRY_BYTES;
    bytes.set(entry.hash, at);
    view.setUint32(at + 32, entry.offsetBytes, true);
    view.setUint32(at + 36, entry.storedBytes, true);
    view.setUint32(at + 40, entry.rawBytes, true);
    view.setUint32(at + 44, entry.flags, true);
  });
  return bytes;
}

/** Rewrites every pack and index object of a store in the version-1 layout: one frame per chunk, 48-byte entries. */
async function downgradeToVersion1(path: string): Promise<void> {
  const archive = await Archive.open(path);
  const compressor = new ZstdCompressor(archive.config.compression.level);
  const decompressor = new ZstdDecompressor();
  const listings = new Map<string, ChunkEntry[]>();
  try {
    for (const prefix of readdirSync(join(path, 'packs'))) {
      for (const packId of readdirSync(join(path, 'packs', prefix))) {
        const file = join(path, 'packs', prefix, packId);
        const old = readFileSync(file);
        const parts: Uint8Array[] = [];
        const entries: ChunkEntry[] = [];
        let offset = 16;
        for (const entry of await archive.readPackEntries(packId, statSync(file).size)) {
          const stored = old.subarray(entry.offsetBytes, entry.offsetBytes + entry.storedBytes);
          const raw = (entry.flags & CHUNK_FLAG_ZSTD) === 0 ? stored : decompressor.decompressFrame(stored, 4 * MiB).slice(entry.frameOffsetBytes, entry.frameOffsetBytes + entry.rawBytes);
          const frame = compressor.compress(raw);
          const zstd = frame.length < raw.length;
          const piece = zstd ? frame : Uint8Array.from(raw);
          parts.push(piece);
          entries.push({ hash: entry.hash, offsetBytes: offset, storedBytes: piece.length, rawBytes: raw.length, flags: (entry.flags & CHUNK_FLAG_SEGMENT) | (zstd ? CHUNK_FLAG_ZSTD : 0), frameOffsetBytes: 0 });
          offset += piece.length;
        }
        const header = Buffer.alloc(16);
        header.write('THINPACK', 0, 'latin1');
        header.writeUInt32LE(1, 8);
        const trailer = v1Entries(entries);
        const footer = Buffer.alloc(48);
        footer.writeUInt32LE(offset, 0);
        footer.writeUInt32LE(entries.length, 4);
        footer.set(createHash('sha256').update(trailer).digest(), 8);
        footer.write('THINPEND', 40, 'latin1');
        writeFileSync(file, Buffer.concat([header, ...parts, trailer, footer]));
        listings.set(packId, entries);
      }
    }
    for (const name of readdirSync(join(path, 'index'))) {
      const file = join(path, 'index', name);
      const packs = scanIndex(readFileSync(file), name).map((run) => ({ packId: run.packId, hashes: new Set(entriesOf(run).map((entry) => hashHex(entry.hash))) }));
      const body: Uint8Array[] = [];
      const head = Buffer.alloc(16);
      head.write('THINPIDX', 0, 'latin1');
      head.writeUInt32LE(1, 8);
      head.writeUInt32LE(packs.length, 12);
      body.push(head);
      for (const pack of packs) {
        const entries = listings.get(pack.packId)!.filter((entry) => pack.hashes.has(hashHex(entry.hash)));
        const packHead = Buffer.alloc(24);
        packHead.write(pack.packId, 0, 'hex');
        packHead.writeUInt32LE(entries.length, 16);
        body.push(packHead, v1Entries(entries));
      }
      const bytes = Buffer.concat(body);
      writeFileSync(file, Buffer.concat([bytes, createHash('sha256').update(bytes).digest()]));
    }
  } finally {
    await archive.close();
  }
}

test('a version-1 store reads, verifies and unpacks; new packs go into it beside the old; gc collects the mixed store', async () => {
  const old = join(dir.path, 'store-v1');
  await (await Archive.init(old, { averageChunkBytes: 64 * KiB, zstdLevel: 3 })).close();
  await packVolume({ store: old, sources: poolSources(pool), volume: 'a.1', name: 'old' });
  await downgradeToVersion1(old);
  const packVersions = () =>
    readdirSync(join(old, 'packs')).flatMap((prefix) => readdirSync(join(old, 'packs', prefix)).map((packId) => readFileSync(packFile(old, packId)).readUInt32LE(8)));
  assert.deepEqual([...new Set(packVersions())], [1], 'the store holds version-1 packs only');
  const v1 = await piecesOf(old);
  assert.deepEqual(v1.problems, []);
  assert.ok(v1.pieces.every((piece) => piece.chunks.length === 1), 'one chunk per frame');

  assert.deepEqual((await verifyArchive({ store: old })).problems, []);
  const expectedA = digest(await readVolume(pool, 'a.1'));
  assert.equal(await unpackDigest(old, 'old', 'from-v1'), expectedA);

  // The new writer adds version-2 packs (and index) to the old store, reusing its chunks.
  const result = await packVolume({ store: old, sources: poolSources(pool), volume: 'b.1', name: 'new' });
  assert.ok(result.newChunkCount < result.chunkCount - 20, 'chunks of the version-1 packs are reused');
  assert.deepEqual([...new Set(packVersions())].sort(), [1, 2]);
  assert.deepEqual((await verifyArchive({ store: old })).problems, []);
  assert.equal(await unpackDigest(old, 'new', 'from-mixed'), digest(await readVolume(pool, 'b.1')));

  await removeArchiveStream({ store: old, stream: 'old' });
  const report = await gcArchive({ store: old });
  assert.ok(report.packsRewritten + report.packsDeleted >= 1);
  assert.deepEqual((await verifyArchive({ store: old })).problems, []);
  assert.equal(await unpackDigest(old, 'new', 'after-gc'), digest(await readVolume(pool, 'b.1')));
});

test('verify of a run that repeats one chunk (a region of one byte value) reads it once and a window at a time', async () => {
  const repeated = join(dir.path, 'store-repeated');
  await (await Archive.init(repeated, { averageChunkBytes: 16 * KiB, zstdLevel: 3 })).close();
  const volume = await pool.createVolume('ones', { sizeBytes: 48 * MiB });
  await volume.write(0, new Uint8Array(48 * MiB).fill(0xff));
  await pool.snapshot('ones', 'ones.1', { readOnly: true });
  const packed = await packVolume({ store: repeated, sources: poolSources(pool), volume: 'ones.1', name: 'ones' });
  assert.ok(packed.chunkCount > 500 && packed.newChunkCount <= 3, `${packed.chunkCount} chunks, ${packed.newChunkCount} new: one chunk repeated`);
  // Every read verify asks for: the refs and their raw bytes.
  let largestReadBytes = 0;
  let refsRead = 0;
  const read = ChunkReader.prototype.read;
  ChunkReader.prototype.read = function (this: ChunkReader, ...args: Parameters<ChunkReader['read']>) {
    largestReadBytes = Math.max(largestReadBytes, args[0].reduce((sum, ref) => sum + ref.rawBytes, 0));
    refsRead += args[0].length;
    return read.apply(this, args);
  };
  try {
    const report = await verifyArchive({ store: repeated });
    assert.deepEqual(report.problems, []);
    assert.ok(report.chunksChecked <= 4, `${report.chunksChecked} distinct chunks checked`);
  } finally {
    ChunkReader.prototype.read = read;
  }
  assert.ok(refsRead <= 8, `${refsRead} chunk reads for a stream of one repeated chunk (and its segment)`);
  assert.ok(largestReadBytes <= ARCHIVE_UNPACK_WINDOW_BYTES + ARCHIVE_FRAME_RAW_BYTES_MAX, `a read of ${largestReadBytes} bytes`);
});

test('gc keeps a pack whose trailer it cannot read (no index lists it): its chunks may be live', async () => {
  const damaged = join(dir.path, 'store-trailer');
  await (await Archive.init(damaged, { averageChunkBytes: 64 * KiB, zstdLevel: 3 })).close();
  // More than a pack's worth (16 MiB stored): the damaged pack holds data chunks only, the stream's
  // segment is in a later one, so gc gets as far as deciding what to delete.
  const big = await pool.createVolume('big', { sizeBytes: 40 * MiB });
  await big.write(0, contentBytes(40 * MiB, 5));
  await pool.snapshot('big', 'big.1', { readOnly: true });
  await packVolume({ store: damaged, sources: poolSources(pool), volume: 'big.1', name: 's1' });
  // As if pack was killed before its last index: the packs are found by their trailers alone.
  for (const name of readdirSync(join(damaged, 'index'))) rmSync(join(damaged, 'index', name));
  const packs = readdirSync(join(damaged, 'packs')).flatMap((prefix) => readdirSync(join(damaged, 'packs', prefix)).map((packId) => packFile(damaged, packId)));
  const victim = packs.sort((a, b) => statSync(b).size - statSync(a).size)[0]!;
  const bytes = readFileSync(victim);
  bytes[bytes.length - 60]! ^= 0x01; // a bit of the footer's trailer hash
  writeFileSync(victim, bytes);
  const before = (await verifyArchive({ store: damaged })).problems;
  assert.ok(before.length >= 1);
  const notes: string[] = [];
  await gcArchive({ store: damaged, onNote: (line) => notes.push(line) });
  assert.deepEqual(readFileSync(victim), bytes, 'the pack is still there, unchanged');
  const id = basename(victim);
  assert.ok(notes.some((line) => line.includes(`kept packs/${id.slice(0, 2)}/${id}`)), notes.join('\n'));
  // Mending the bit shows nothing was lost.
  bytes[bytes.length - 60]! ^= 0x01;
  writeFileSync(victim, bytes);
  assert.deepEqual((await verifyArchive({ store: damaged })).problems, []);
  assert.equal(await unpackDigest(damaged, 's1', 'after-kept'), digest(await readVolume(pool, 'big.1')));
});
