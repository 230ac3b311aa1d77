// The archive store's objects, byte by byte (docs/format.md, "Archive store"; rule ids F-AR-*):
// the config, pack objects (compressed chunks and a trailer listing them), index objects (the
// trailers of many packs in one object), stream segments (a stretch of a volume as runs of chunk
// references, stored as a chunk) and stream roots (the committed record of a stream).
//
// Everything read from a store is untrusted: each decoder checks its object's layout and
// checksum and throws THIN_CORRUPT_ARCHIVE naming the object and what is wrong.
import { hash as digestOf, randomBytes } from 'node:crypto';
import { ThinError, assert } from '../errors.ts';
import {
  ARCHIVE_CHUNK_AVERAGE_BYTES_MAX,
  ARCHIVE_CHUNK_AVERAGE_BYTES_MIN,
  ARCHIVE_CHUNK_RAW_BYTES_MAX,
  ARCHIVE_FRAME_RAW_BYTES_MAX,
  ARCHIVE_PACK_BYTES_MAX,
  ARCHIVE_SEGMENT_AVERAGE_CHUNKS,
  ARCHIVE_STREAM_ROOT_BYTES_MAX,
  VOLUME_NAME_LENGTH_MAX,
  VOLUME_NAME_PATTERN,
  VOLUME_SIZE_BYTES_MAX,
} from '../constants.ts';

export const HASH_BYTES = 32;
export const PACK_ID_BYTES = 16;

/**
 * One call, no Hash object: pack hashes every chunk, and a Hash object per chunk cost more
 * (docs/benchmarks.md "Archive: the chunker's loop and the worker bundle").
 */
export function sha256(data: Uint8Array): Uint8Array {
  return digestOf('sha256', data, 'buffer');
}

export function hashHex(hash: Uint8Array): string {
  return Buffer.from(hash.buffer, hash.byteOffset, hash.byteLength).toString('hex');
}

export function hashFromHex(hex: string, where: string): Uint8Array {
  if (!/^[0-9a-f]{64}$/.test(hex)) throw corrupt(where, `'${hex.slice(0, 80)}' is not a SHA-256 hash in hex`);
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

export function corrupt(where: string, problem: string, cause?: unknown): ThinError {
  return new ThinError('THIN_CORRUPT_ARCHIVE', `${where}: ${problem}`, cause === undefined ? undefined : { cause });
}

export function newObjectId(): string {
  return randomBytes(PACK_ID_BYTES).toString('hex');
}

// ---- keys (F-AR-KEY) ----

export const CONFIG_KEY = 'config';
export const PACKS_PREFIX = 'packs/';
export const INDEX_PREFIX = 'index/';
export const STREAMS_PREFIX = 'streams/';
export const LOCKS_PREFIX = 'locks/';

/** F-AR-KEY-1: a pack lives at packs/<first two hex digits of its id>/<id>. */
export function packKey(packId: string): string {
  return `${PACKS_PREFIX}${packId.slice(0, 2)}/${packId}`;
}

/** The pack id a key under packs/ names, or undefined for a key that is not a pack's. */
export function packIdOfKey(key: string): string | undefined {
  const match = /^packs\/([0-9a-f]{2})\/([0-9a-f]{32})$/.exec(key);
  return match !== null && match[2]!.startsWith(match[1]!) ? match[2] : undefined;
}

export function indexKey(indexId: string): string {
  return `${INDEX_PREFIX}${indexId}`;
}

export function streamKey(name: string): string {
  return `${STREAMS_PREFIX}${name}`;
}

/** F-AR-KEY-2: stream names are spelled as volume names are. */
export function validStreamName(name: string): boolean {
  return name.length <= VOLUME_NAME_LENGTH_MAX && VOLUME_NAME_PATTERN.test(name);
}

// ---- config (F-AR-CFG) ----

export const STORE_FORMAT = 'thinbd-archive';
export const STORE_VERSION = 1;

export interface StoreConfig {
  format: typeof STORE_FORMAT;
  version: number;
  /** 32 hex digits, random at init. */
  id: string;
  createdAt: string;
  chunking: { algorithm: 'fastcdc-gear32'; minBytes: number; averageBytes: number; maxBytes: number };
  hash: 'sha256';
  compression: { algorithm: 'zstd'; level: number };
  /** Volume bytes per stream segment (F-AR-SEG-1). */
  segmentBytes: number;
}

export function makeStoreConfig(averageBytes: number, level: number, now: Date): StoreConfig {
  return {
    format: STORE_FORMAT,
    version: STORE_VERSION,
    id: newObjectId(),
    createdAt: now.toISOString(),
    chunking: { algorithm: 'fastcdc-gear32', minBytes: averageBytes / 4, averageBytes, maxBytes: averageBytes * 4 },
    hash: 'sha256',
    compression: { algorithm: 'zstd', level },
    segmentBytes: averageBytes * ARCHIVE_SEGMENT_AVERAGE_CHUNKS,
  };
}

export function encodeStoreConfig(config: StoreConfig): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`);
}

export function decodeStoreConfig(bytes: Uint8Array, where: string): StoreConfig {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (error) {
    throw corrupt(where, 'not a JSON document', error);
  }
  const config = value as Partial<StoreConfig> | null;
  if (typeof config !== 'object' || config === null || config.format !== STORE_FORMAT) throw corrupt(where, `not a thinbd archive store config (format is not '${STORE_FORMAT}')`);
  // F-AR-CFG-1: a reader refuses a version it does not know.
  if (config.version !== STORE_VERSION) throw new ThinError('THIN_FORMAT', `${where}: store format version ${String(config.version)}; this thinbd reads version ${STORE_VERSION}`);
  const chunking = config.chunking;
  const average = chunking?.averageBytes;
  // F-AR-CFG-2: the chunking is FastCDC with min = average / 4 and max = average × 4, average a power of two in range.
  if (
    chunking?.algorithm !== 'fastcdc-gear32' ||
    typeof average !== 'number' ||
    !Number.isSafeInteger(average) ||
    average < ARCHIVE_CHUNK_AVERAGE_BYTES_MIN ||
    average > ARCHIVE_CHUNK_AVERAGE_BYTES_MAX ||
    (average & (average - 1)) !== 0 ||
    chunking.minBytes !== average / 4 ||
    chunking.maxBytes !== average * 4
  ) {
    throw corrupt(where, 'unknown or invalid chunking parameters');
  }
  if (config.hash !== 'sha256') throw corrupt(where, `unknown hash '${String(config.hash)}'`);
  const level = config.compression?.level;
  if (config.compression?.algorithm !== 'zstd' || typeof level !== 'number' || !Number.isInteger(level) || level < -7 || level > 22) {
    throw corrupt(where, 'unknown or invalid compression');
  }
  // F-AR-CFG-3: segments cover ARCHIVE_SEGMENT_AVERAGE_CHUNKS average chunks.
  if (config.segmentBytes !== average * ARCHIVE_SEGMENT_AVERAGE_CHUNKS) throw corrupt(where, `segment size ${String(config.segmentBytes)} does not match the chunking`);
  if (typeof config.id !== 'string' || !/^[0-9a-f]{32}$/.test(config.id)) throw corrupt(where, 'invalid store id');
  return config as StoreConfig;
}

// ---- chunk entries (F-AR-ENTRY) ----

/** Flag bits of a chunk entry. */
export const CHUNK_FLAG_ZSTD = 1;
export const CHUNK_FLAG_SEGMENT = 2;
const CHUNK_FLAGS_KNOWN = CHUNK_FLAG_ZSTD | CHUNK_FLAG_SEGMENT;

/**
 * Where a chunk is inside its pack object, and what it is. A chunk is stored in a piece of the
 * pack: a zstd frame holding it and perhaps its neighbours, or its raw bytes (F-AR-CHUNK-2).
 */
export interface ChunkEntry {
  hash: Uint8Array;
  /** Where its piece (frame or raw bytes) starts in the pack object. */
  offsetBytes: number;
  /** The piece's length in the pack. */
  storedBytes: number;
  rawBytes: number;
  flags: number;
  /** Where the chunk starts in its frame's decompressed bytes (0 for a raw chunk, and in version-1 objects). */
  frameOffsetBytes: number;
}

/** Version 1 entries: hash (32) | offset u32 | stored bytes u32 | raw bytes u32 | flags u32, little-endian. */
export const ENTRY_V1_BYTES = 48;
/** Version 2 entries (F-AR-PACK-5): a version 1 entry, then frame offset u32. */
export const ENTRY_V2_BYTES = 52;
/** Where an entry's fields lie in it (after the hash). */
export const ENTRY_OFFSET_AT = 32;
export const ENTRY_STORED_AT = 36;
export const ENTRY_RAW_AT = 40;
export const ENTRY_FLAGS_AT = 44;
export const ENTRY_FRAME_OFFSET_AT = 48;

/** Entry bytes of an object of `version` (packs and indexes alike). */
function entryBytesOf(version: number): number {
  return version === 1 ? ENTRY_V1_BYTES : ENTRY_V2_BYTES;
}

/** Writes a version 2 entry. */
function writeEntry(view: DataView, bytes: Uint8Array, at: number, entry: ChunkEntry): void {
  bytes.set(entry.hash, at);
  view.setUint32(at + ENTRY_OFFSET_AT, entry.offsetBytes, true);
  view.setUint32(at + ENTRY_STORED_AT, entry.storedBytes, true);
  view.setUint32(at + ENTRY_RAW_AT, entry.rawBytes, true);
  view.setUint32(at + ENTRY_FLAGS_AT, entry.flags, true);
  view.setUint32(at + ENTRY_FRAME_OFFSET_AT, entry.frameOffsetBytes, true);
}

/**
 * Hashes read from an object are views of its bytes, which the caller must not reuse: a copy
 * each (an ArrayBuffer of its own) made an index load allocate once per chunk of the store.
 */
function readEntry(view: DataView, bytes: Uint8Array, at: number, entryBytes: number): ChunkEntry {
  return {
    hash: bytes.subarray(at, at + 32),
    offsetBytes: view.getUint32(at + ENTRY_OFFSET_AT, true),
    storedBytes: view.getUint32(at + ENTRY_STORED_AT, true),
    rawBytes: view.getUint32(at + ENTRY_RAW_AT, true),
    flags: view.getUint32(at + ENTRY_FLAGS_AT, true),
    frameOffsetBytes: entryBytes === ENTRY_V2_BYTES ? view.getUint32(at + ENTRY_FRAME_OFFSET_AT, true) : 0,
  };
}

/**
 * A pack's entries where they lie: `count` entries of `entryBytes` (ENTRY_V1_BYTES or
 * ENTRY_V2_BYTES, by the object's version) from byte `at` of `bytes` (an index object or a trailer).
 */
export interface PackEntryBytes {
  packId: string;
  bytes: Uint8Array;
  at: number;
  count: number;
  entryBytes: number;
}

/** The entries as objects (their hashes views of the bytes). */
export function entriesOf(run: PackEntryBytes): ChunkEntry[] {
  const view = new DataView(run.bytes.buffer, run.bytes.byteOffset, run.bytes.byteLength);
  const entries: ChunkEntry[] = [];
  for (let index = 0; index < run.count; index += 1) entries.push(readEntry(view, run.bytes, run.at + index * run.entryBytes, run.entryBytes));
  return entries;
}

/**
 * F-AR-PACK-3 and F-AR-PACK-5, on `count` entries where they lie in `bytes` from `at` (no object
 * per entry: an index load checks every entry of the store). Pieces (a frame or a raw chunk) are
 * in offset order from PACK_HEADER_BYTES, not overlapping; in a trailer (`trailerOffsetBytes`
 * given) each starts where the previous ended and the last ends at the trailer, while an index
 * may leave pieces out (gc lists only live chunks). Entries of one frame are consecutive, share
 * its offset, size and flags, and lie in the frame's bytes in order without overlapping. Raw
 * sizes within bounds; known flags only; a chunk stored raw has stored size = raw size and frame
 * offset 0.
 */
function checkEntryBytes(bytes: Uint8Array, at: number, count: number, entryBytes: number, trailerOffsetBytes: number | undefined, where: string): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const frames = entryBytes === ENTRY_V2_BYTES;
  let pieceEnd = PACK_HEADER_BYTES;
  let previous: { offsetBytes: number; storedBytes: number; flags: number; frameEnd: number } | undefined;
  for (let index = 0; index < count; index += 1) {
    const entryAt = at + index * entryBytes;
    const offsetBytes = view.getUint32(entryAt + ENTRY_OFFSET_AT, true);
    const storedBytes = view.getUint32(entryAt + ENTRY_STORED_AT, true);
    const rawBytes = view.getUint32(entryAt + ENTRY_RAW_AT, true);
    const flags = view.getUint32(entryAt + ENTRY_FLAGS_AT, true);
    const frameOffsetBytes = frames ? view.getUint32(entryAt + ENTRY_FRAME_OFFSET_AT, true) : 0;
    const zstd = (flags & CHUNK_FLAG_ZSTD) !== 0;
    let problem: string | undefined;
    const samePiece = frames && previous !== undefined && offsetBytes === previous.offsetBytes;
    if (samePiece && previous !== undefined) {
      if (!zstd || storedBytes !== previous.storedBytes || flags !== previous.flags) problem = `shares the piece at byte ${offsetBytes} with the chunk before it but not its size, flags or compression`;
      else if (frameOffsetBytes < previous.frameEnd) problem = `starts at byte ${frameOffsetBytes} of its frame, inside the chunk before it`;
    } else if (trailerOffsetBytes !== undefined ? offsetBytes !== pieceEnd : offsetBytes < pieceEnd) {
      problem = trailerOffsetBytes !== undefined ? `starts at byte ${offsetBytes}, not ${pieceEnd}` : `starts at byte ${offsetBytes}, inside the piece before it (which ends at ${pieceEnd})`;
    }
    if (problem === undefined) {
      if ((flags & ~CHUNK_FLAGS_KNOWN) !== 0) problem = `has unknown flags ${flags}`;
      else if (rawBytes > ARCHIVE_CHUNK_RAW_BYTES_MAX) problem = `claims ${rawBytes} raw bytes`;
      else if (!zstd && (storedBytes !== rawBytes || frameOffsetBytes !== 0)) problem = 'is stored raw but its sizes differ or it claims a frame offset';
      else if (frameOffsetBytes + rawBytes > ARCHIVE_FRAME_RAW_BYTES_MAX) problem = `ends at byte ${frameOffsetBytes + rawBytes} of its frame, past any frame`;
    }
    // Named only when wrong.
    if (problem !== undefined) throw corrupt(where, `chunk ${index} (${hashHex(bytes.subarray(entryAt, entryAt + HASH_BYTES))}) ${problem}`);
    if (!samePiece) pieceEnd = offsetBytes + storedBytes;
    previous = { offsetBytes, storedBytes, flags, frameEnd: frameOffsetBytes + rawBytes };
  }
  if (trailerOffsetBytes !== undefined && pieceEnd !== trailerOffsetBytes) throw corrupt(where, `the chunks end at byte ${pieceEnd}, the trailer starts at ${trailerOffsetBytes}`);
}

// ---- pack objects (F-AR-PACK) ----

const PACK_MAGIC = 'THINPACK';
const PACK_END_MAGIC = 'THINPEND';
/** The version written (F-AR-PACK-1); version 1 packs are read too. */
export const PACK_VERSION = 2;
/** magic (8) | version u32 | reserved u32. */
export const PACK_HEADER_BYTES = 16;
/** trailer offset u32 | entry count u32 | SHA-256 of the trailer (32) | magic (8). */
export const PACK_FOOTER_BYTES = 48;

export interface PackFooter {
  trailerOffsetBytes: number;
  entryCount: number;
  trailerHash: Uint8Array;
  /** Bytes per trailer entry (by the pack's version). */
  entryBytes: number;
}

export function encodePackHeader(): Uint8Array {
  const header = new Uint8Array(PACK_HEADER_BYTES);
  header.set(new TextEncoder().encode(PACK_MAGIC), 0);
  new DataView(header.buffer).setUint32(8, PACK_VERSION, true);
  return header;
}

/** The trailer (version 2 entries) and footer that close a pack whose payloads end at trailerOffsetBytes. */
export function encodePackTrailer(entries: ChunkEntry[], trailerOffsetBytes: number): Uint8Array {
  const bytes = new Uint8Array(entries.length * ENTRY_V2_BYTES + PACK_FOOTER_BYTES);
  const view = new DataView(bytes.buffer);
  entries.forEach((entry, index) => writeEntry(view, bytes, index * ENTRY_V2_BYTES, entry));
  checkEntryBytes(bytes, 0, entries.length, ENTRY_V2_BYTES, trailerOffsetBytes, 'a pack being written');
  const footerAt = entries.length * ENTRY_V2_BYTES;
  view.setUint32(footerAt, trailerOffsetBytes, true);
  view.setUint32(footerAt + 4, entries.length, true);
  bytes.set(sha256(bytes.subarray(0, footerAt)), footerAt + 8);
  bytes.set(new TextEncoder().encode(PACK_END_MAGIC), footerAt + 40);
  return bytes;
}

/**
 * Where a pack's trailer is, from its footer (the last PACK_FOOTER_BYTES of the object) and the
 * version its header gave (checkPackHeader).
 */
export function decodePackFooter(footer: Uint8Array, objectBytes: number, version: number, where: string): PackFooter {
  if (objectBytes < PACK_HEADER_BYTES + PACK_FOOTER_BYTES) throw corrupt(where, `${objectBytes} bytes is too short for a pack`);
  if (objectBytes > ARCHIVE_PACK_BYTES_MAX) throw corrupt(where, `${objectBytes} bytes is larger than any pack (F-AR-PACK-4)`);
  if (footer.length !== PACK_FOOTER_BYTES) throw corrupt(where, 'truncated footer');
  const view = new DataView(footer.buffer, footer.byteOffset, footer.byteLength);
  if (new TextDecoder().decode(footer.subarray(40, 48)) !== PACK_END_MAGIC) throw corrupt(where, 'no pack footer at its end (truncated?)');
  const trailerOffsetBytes = view.getUint32(0, true);
  const entryCount = view.getUint32(4, true);
  const entryBytes = entryBytesOf(version);
  // F-AR-PACK-2: the trailer runs from its offset to the footer, one entry per chunk.
  if (trailerOffsetBytes + entryCount * entryBytes + PACK_FOOTER_BYTES !== objectBytes) {
    throw corrupt(where, `the footer's trailer (${entryCount} entries at byte ${trailerOffsetBytes}) does not end at the footer of a ${objectBytes}-byte object`);
  }
  return { trailerOffsetBytes, entryCount, trailerHash: footer.slice(8, 40), entryBytes };
}

/** A pack's chunk entries from its trailer (entries only, without the footer). */
export function decodePackEntries(trailer: Uint8Array, footer: PackFooter, where: string): ChunkEntry[] {
  if (trailer.length !== footer.entryCount * footer.entryBytes) throw corrupt(where, 'truncated trailer');
  if (Buffer.compare(sha256(trailer), footer.trailerHash) !== 0) throw corrupt(where, 'the trailer fails its SHA-256');
  checkEntryBytes(trailer, 0, footer.entryCount, footer.entryBytes, footer.trailerOffsetBytes, where);
  return entriesOf({ packId: '', bytes: trailer, at: 0, count: footer.entryCount, entryBytes: footer.entryBytes });
}

/** F-AR-PACK-1: a pack starts with its magic and a version this reader knows (1 or 2); returns the version. */
export function checkPackHeader(header: Uint8Array, where: string): number {
  if (header.length < PACK_HEADER_BYTES || new TextDecoder().decode(header.subarray(0, 8)) !== PACK_MAGIC) throw corrupt(where, 'not a pack object (bad magic)');
  const version = new DataView(header.buffer, header.byteOffset, header.byteLength).getUint32(8, true);
  if (version !== 1 && version !== PACK_VERSION) throw new ThinError('THIN_FORMAT', `${where}: pack version ${version}; this thinbd reads versions 1 and ${PACK_VERSION}`);
  return version;
}

// ---- index objects (F-AR-IDX) ----

const INDEX_MAGIC = 'THINPIDX';
/** The version written; version 1 indexes are read too. */
export const INDEX_VERSION = 2;

export interface PackListing {
  packId: string;
  entries: ChunkEntry[];
}

/**
 * magic (8) | version u32 | pack count u32, then per pack: id (16) | entry count u32 | reserved
 * u32 | entries (version 2); then the SHA-256 of everything before it (32).
 */
export function encodeIndex(packs: PackListing[]): Uint8Array {
  let size = 16 + HASH_BYTES;
  for (const pack of packs) size += 24 + pack.entries.length * ENTRY_V2_BYTES;
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  bytes.set(new TextEncoder().encode(INDEX_MAGIC), 0);
  view.setUint32(8, INDEX_VERSION, true);
  view.setUint32(12, packs.length, true);
  let at = 16;
  for (const pack of packs) {
    bytes.set(Buffer.from(pack.packId, 'hex'), at);
    view.setUint32(at + 16, pack.entries.length, true);
    at += 24;
    for (const entry of pack.entries) {
      writeEntry(view, bytes, at, entry);
      at += ENTRY_V2_BYTES;
    }
  }
  assert(at === size - HASH_BYTES, 'index size');
  bytes.set(sha256(bytes.subarray(0, at)), at);
  return bytes;
}

export function decodeIndex(bytes: Uint8Array, where: string): PackListing[] {
  return scanIndex(bytes, where).map((run) => ({ packId: run.packId, entries: entriesOf(run) }));
}

/**
 * decodeIndex without an object per entry: each pack's entries where they lie in `bytes`, checked
 * as decodeIndex checks them. An index load reads every entry of the store (millions per TiB)
 * straight from these into the chunk index (ChunkIndex.addEntries).
 */
export function scanIndex(bytes: Uint8Array, where: string): PackEntryBytes[] {
  if (bytes.length < 16 + HASH_BYTES) throw corrupt(where, 'truncated index');
  if (new TextDecoder().decode(bytes.subarray(0, 8)) !== INDEX_MAGIC) throw corrupt(where, 'not an index object (bad magic)');
  const bodyBytes = bytes.length - HASH_BYTES;
  // F-AR-IDX-1: the last 32 bytes are the SHA-256 of the rest.
  if (Buffer.compare(sha256(bytes.subarray(0, bodyBytes)), bytes.subarray(bodyBytes)) !== 0) throw corrupt(where, 'the index fails its SHA-256 (damaged or truncated)');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  if (version !== 1 && version !== INDEX_VERSION) throw new ThinError('THIN_FORMAT', `${where}: index version ${version}; this thinbd reads versions 1 and ${INDEX_VERSION}`);
  const entryBytes = entryBytesOf(version);
  const packCount = view.getUint32(12, true);
  const packs: PackEntryBytes[] = [];
  let at = 16;
  for (let pack = 0; pack < packCount; pack += 1) {
    if (at + 24 > bodyBytes) throw corrupt(where, `pack ${pack} runs past the end`);
    const packId = Buffer.from(bytes.subarray(at, at + 16)).toString('hex');
    const count = view.getUint32(at + 16, true);
    at += 24;
    if (at + count * entryBytes > bodyBytes) throw corrupt(where, `pack ${packId}'s entries run past the end`);
    checkEntryBytes(bytes, at, count, entryBytes, undefined, `${where} (pack ${packId})`);
    packs.push({ packId, bytes, at, count, entryBytes });
    at += count * entryBytes;
  }
  if (at !== bodyBytes) throw corrupt(where, `${bodyBytes - at} bytes after the last pack`);
  return packs;
}

// ---- stream segments (F-AR-SEG) ----

/** A reference to a chunk from a stream: its name and raw size. */
export interface ChunkRef {
  hash: Uint8Array;
  rawBytes: number;
}

/** Mapped volume bytes [beginBytes, +lengthBytes), as chunks in order. */
export interface StreamRun {
  beginBytes: number;
  lengthBytes: number;
  chunks: ChunkRef[];
}

export interface Segment {
  index: number;
  runs: StreamRun[];
}

const SEGMENT_MAGIC = 'THINSEGM';
export const SEGMENT_VERSION = 1;
const SEGMENT_HEADER_BYTES = 24;
const RUN_HEADER_BYTES = 24;
const REF_BYTES = HASH_BYTES + 4;

/**
 * magic (8) | version u32 | run count u32 | segment index u64; per run: begin u64 | length u64 |
 * chunk count u32 | reserved u32, then per chunk: hash (32) | raw bytes u32. Little-endian.
 */
export function encodeSegment(segment: Segment): Uint8Array {
  let size = SEGMENT_HEADER_BYTES;
  for (const run of segment.runs) size += RUN_HEADER_BYTES + run.chunks.length * REF_BYTES;
  // F-AR-SEG-3: at most 4 MiB, whatever the chunking (ARCHIVE_SEGMENT_AVERAGE_CHUNKS).
  assert(size <= ARCHIVE_CHUNK_RAW_BYTES_MAX, `a segment of ${size} bytes`);
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  bytes.set(new TextEncoder().encode(SEGMENT_MAGIC), 0);
  view.setUint32(8, SEGMENT_VERSION, true);
  view.setUint32(12, segment.runs.length, true);
  view.setBigUint64(16, BigInt(segment.index), true);
  let at = SEGMENT_HEADER_BYTES;
  for (const run of segment.runs) {
    assert(run.chunks.reduce((sum, chunk) => sum + chunk.rawBytes, 0) === run.lengthBytes, 'a run whose chunks do not add up to its length');
    view.setBigUint64(at, BigInt(run.beginBytes), true);
    view.setBigUint64(at + 8, BigInt(run.lengthBytes), true);
    view.setUint32(at + 16, run.chunks.length, true);
    at += RUN_HEADER_BYTES;
    for (const chunk of run.chunks) {
      bytes.set(chunk.hash, at);
      view.setUint32(at + 32, chunk.rawBytes, true);
      at += REF_BYTES;
    }
  }
  return bytes;
}

/**
 * F-AR-SEG-2: runs in order, not overlapping, inside the segment's range and the volume; each
 * run's chunks add up to its length, none empty or longer than the store's maximum chunk.
 */
export function decodeSegment(bytes: Uint8Array, expect: { index: number; segmentBytes: number; volumeBytes: number; chunkMaxBytes: number }, where: string): Segment {
  if (bytes.length < SEGMENT_HEADER_BYTES || new TextDecoder().decode(bytes.subarray(0, 8)) !== SEGMENT_MAGIC) throw corrupt(where, 'not a stream segment (bad magic)');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(8, true) !== SEGMENT_VERSION) throw new ThinError('THIN_FORMAT', `${where}: segment version ${view.getUint32(8, true)}; this thinbd reads version ${SEGMENT_VERSION}`);
  const runCount = view.getUint32(12, true);
  const index = Number(view.getBigUint64(16, true));
  if (index !== expect.index) throw corrupt(where, `holds segment ${index}, not ${expect.index}`);
  const segmentBegin = index * expect.segmentBytes;
  const segmentEnd = Math.min(segmentBegin + expect.segmentBytes, expect.volumeBytes);
  const runs: StreamRun[] = [];
  let at = SEGMENT_HEADER_BYTES;
  let previousEnd = segmentBegin;
  for (let runIndex = 0; runIndex < runCount; runIndex += 1) {
    if (at + RUN_HEADER_BYTES > bytes.length) throw corrupt(where, `run ${runIndex} runs past the end`);
    const beginBytes = Number(view.getBigUint64(at, true));
    const lengthBytes = Number(view.getBigUint64(at + 8, true));
    const chunkCount = view.getUint32(at + 16, true);
    at += RUN_HEADER_BYTES;
    if (beginBytes < previousEnd || lengthBytes < 1 || beginBytes + lengthBytes > segmentEnd) {
      throw corrupt(where, `run ${runIndex} [${beginBytes}, +${lengthBytes}) is out of order or outside the segment [${segmentBegin}, ${segmentEnd})`);
    }
    if (at + chunkCount * REF_BYTES > bytes.length) throw corrupt(where, `run ${runIndex}'s chunks run past the end`);
    const chunks: ChunkRef[] = [];
    let total = 0;
    for (let chunk = 0; chunk < chunkCount; chunk += 1) {
      const rawBytes = view.getUint32(at + 32, true);
      if (rawBytes < 1 || rawBytes > expect.chunkMaxBytes) throw corrupt(where, `run ${runIndex} chunk ${chunk} has ${rawBytes} bytes`);
      chunks.push({ hash: bytes.subarray(at, at + 32), rawBytes }); // a view, as readEntry's
      total += rawBytes;
      at += REF_BYTES;
    }
    if (total !== lengthBytes) throw corrupt(where, `run ${runIndex}'s chunks hold ${total} bytes, the run ${lengthBytes}`);
    runs.push({ beginBytes, lengthBytes, chunks });
    previousEnd = beginBytes + lengthBytes;
  }
  if (at !== bytes.length) throw corrupt(where, `${bytes.length - at} bytes after the last run`);
  return { index, runs };
}

// ---- stream roots (F-AR-STREAM) ----

export const STREAM_FORMAT = 'thinbd-archive-stream';
export const STREAM_VERSION = 1;

/** Where a stream came from: enough to tell whether a volume is still the one packed. */
export interface StreamSource {
  poolId: string;
  volumeId: number;
  volumeName: string;
  volumeCreatedAt: string;
  readOnly: boolean;
}

export interface StreamStats {
  /** Provisioned bytes of the volume (what unpack writes into a new volume). */
  mappedBytes: number;
  /** Bytes read from the volume by pack. */
  bytesRead: number;
  /** Raw bytes of the chunks this pack added to the store. */
  bytesNew: number;
  /** Bytes this pack added to the store (compressed chunks and segments). */
  bytesStored: number;
  chunkCount: number;
  newChunkCount: number;
  elapsedMs: number;
}

export interface SegmentRef {
  index: number;
  hash: Uint8Array;
  /** The segment encoding's size, as the chunk's raw size. */
  rawBytes: number;
  mappedBytes: number;
}

export interface StreamRoot {
  name: string;
  createdAt: string;
  sizeBytes: number;
  blockSizeBytes: number;
  source: StreamSource;
  /** The stream this one was packed against (--delta-from), if any. */
  parent?: string;
  stats: StreamStats;
  segments: SegmentRef[];
}

const STREAM_TRAILER_PREFIX = '#sha256 ';

/** JSON, then a line `#sha256 <hex of the SHA-256 of the JSON bytes>` (F-AR-STREAM-1). */
export function encodeStreamRoot(root: StreamRoot): Uint8Array {
  const body = JSON.stringify(
    {
      format: STREAM_FORMAT,
      version: STREAM_VERSION,
      ...root,
      segments: root.segments.map((segment) => ({ index: segment.index, hash: hashHex(segment.hash), rawBytes: segment.rawBytes, mappedBytes: segment.mappedBytes })),
    },
    null,
    1,
  );
  const bodyBytes = new TextEncoder().encode(`${body}\n`);
  const trailer = new TextEncoder().encode(`${STREAM_TRAILER_PREFIX}${hashHex(sha256(bodyBytes))}\n`);
  const bytes = new Uint8Array(bodyBytes.length + trailer.length);
  bytes.set(bodyBytes);
  bytes.set(trailer, bodyBytes.length);
  return bytes;
}

export function decodeStreamRoot(bytes: Uint8Array, expect: { name: string; segmentBytes: number }, where: string): StreamRoot {
  if (bytes.length > ARCHIVE_STREAM_ROOT_BYTES_MAX) throw corrupt(where, `${bytes.length} bytes is larger than any stream index`);
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
  const trailerAt = text.lastIndexOf(`\n${STREAM_TRAILER_PREFIX}`);
  if (trailerAt === -1 || !text.endsWith('\n')) throw corrupt(where, 'truncated stream index (no checksum line at its end)');
  const bodyBytes = bytes.subarray(0, trailerAt + 1);
  const expected = text.slice(trailerAt + 1 + STREAM_TRAILER_PREFIX.length, -1);
  if (expected !== hashHex(sha256(bodyBytes))) throw corrupt(where, 'the stream index fails its SHA-256 (damaged or truncated)');
  let value: Record<string, unknown>;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bodyBytes)) as Record<string, unknown>;
  } catch (error) {
    throw corrupt(where, 'the stream index is not JSON', error);
  }
  if (value['format'] !== STREAM_FORMAT) throw corrupt(where, 'not a stream index');
  if (value['version'] !== STREAM_VERSION) throw new ThinError('THIN_FORMAT', `${where}: stream version ${String(value['version'])}; this thinbd reads version ${STREAM_VERSION}`);
  const root = value as unknown as StreamRoot;
  const rawSegments = value['segments'] as Array<{ index: number; hash: unknown; rawBytes: number; mappedBytes: number }>;
  // F-AR-STREAM-2: the name matches the key; sizes are byte counts in range; segments in
  // increasing order inside the volume.
  if (root.name !== expect.name) throw corrupt(where, `names stream '${String(root.name)}'`);
  const count = (value: unknown, max: number) => typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 && value <= max;
  if (!count(root.sizeBytes, VOLUME_SIZE_BYTES_MAX) || !count(root.blockSizeBytes, 2 ** 30) || root.blockSizeBytes === 0) throw corrupt(where, 'invalid volume or block size');
  if (typeof root.source !== 'object' || root.source === null || typeof root.stats !== 'object' || root.stats === null || !Array.isArray(root.segments)) {
    throw corrupt(where, 'missing source, stats or segments');
  }
  const segmentCount = Math.ceil(root.sizeBytes / expect.segmentBytes);
  let previous = -1;
  const segments: SegmentRef[] = rawSegments.map((segment, position) => {
    if (!count(segment.index, segmentCount - 1) || segment.index <= previous) throw corrupt(where, `segment entry ${position} has index ${String(segment.index)}, out of order or past the volume`);
    previous = segment.index;
    if (!count(segment.rawBytes, ARCHIVE_CHUNK_RAW_BYTES_MAX) || !count(segment.mappedBytes, expect.segmentBytes)) throw corrupt(where, `segment ${segment.index} has invalid sizes`);
    return { index: segment.index, hash: hashFromHex(String(segment.hash), where), rawBytes: segment.rawBytes, mappedBytes: segment.mappedBytes };
  });
  const { format: _format, version: _version, ...rest } = root as unknown as Record<string, unknown>;
  return { ...(rest as unknown as StreamRoot), segments };
}
