// `thinbd archive list | verify | rm | gc`: what a store holds, whether it is intact, and
// reclaiming what no stream needs.
import { ThinError, isThinError } from '../errors.ts';
import { ARCHIVE_FRAME_RAW_BYTES_MAX, ARCHIVE_GC_REPACK_LIVE_FRACTION_MAX, ARCHIVE_UNPACK_WINDOW_BYTES } from '../constants.ts';
import { ChunkIndex } from './chunk-index.ts';
import { ChunkReader, PackWriter, type Archive, type LoadedIndex } from './archive.ts';
import type { ChunkDecoder } from './chunk-decode.ts';
import { compressChunks, storedPieces } from './chunk-jobs.ts';
import {
  CHUNK_FLAG_SEGMENT,
  CHUNK_FLAG_ZSTD,
  INDEX_PREFIX,
  PACKS_PREFIX,
  STREAMS_PREFIX,
  encodeIndex,
  hashHex,
  indexKey,
  newObjectId,
  packKey,
  sha256,
  streamKey,
  type ChunkEntry,
  type ChunkRef,
  type PackListing,
  type StreamRoot,
} from './format.ts';
import { ZstdCompressor, ZstdDecompressor, ZstdFrameError } from '../util/zstd.ts';

// ---- list ----

/**
 * `bytes` per byte a stream stored, or null when it stored nothing: a stream whose every chunk
 * was in the store already (the best case) has no ratio, where 0 would read as the worst.
 */
export function storedRatio(bytes: number, bytesStored: number): number | null {
  return bytesStored === 0 ? null : bytes / bytesStored;
}

export interface StreamListing {
  name: string;
  createdAt: string;
  sizeBytes: number;
  mappedBytes: number;
  bytesRead: number;
  bytesNew: number;
  bytesStored: number;
  /** Mapped bytes per byte this stream added to the store; null when it added none (storedRatio). */
  dedupRatio: number | null;
  parent?: string;
  source: StreamRoot['source'];
  segmentCount: number;
}

export interface StoreListing {
  url: string;
  streams: StreamListing[];
  /** Streams whose root cannot be read, with why. */
  damaged: Array<{ name: string; problem: string }>;
  packCount: number;
  packBytes: number;
}

export async function listStore(archive: Archive): Promise<StoreListing> {
  const streams: StreamListing[] = [];
  const damaged: StoreListing['damaged'] = [];
  for (const name of await archive.streamNames()) {
    try {
      const root = await archive.readStream(name);
      const { stats } = root;
      streams.push({
        name,
        createdAt: root.createdAt,
        sizeBytes: root.sizeBytes,
        mappedBytes: stats.mappedBytes,
        bytesRead: stats.bytesRead,
        bytesNew: stats.bytesNew,
        bytesStored: stats.bytesStored,
        dedupRatio: storedRatio(stats.mappedBytes, stats.bytesStored),
        ...(root.parent === undefined ? {} : { parent: root.parent }),
        source: root.source,
        segmentCount: root.segments.length,
      });
    } catch (error) {
      if (isThinError(error, 'THIN_NOT_FOUND')) continue; // removed since the listing
      if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE') && !isThinError(error, 'THIN_FORMAT')) throw error;
      damaged.push({ name, problem: (error as Error).message });
    }
  }
  streams.sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.name < b.name ? -1 : 1));
  let packCount = 0;
  let packBytes = 0;
  for await (const object of archive.store.list(PACKS_PREFIX)) {
    packCount += 1;
    packBytes += object.sizeBytes;
  }
  return { url: archive.url, streams, damaged, packCount, packBytes };
}

// ---- verify ----

export interface VerifyReport {
  streamsChecked: number;
  chunksChecked: number;
  bytesChecked: number;
  /** Each problem a sentence naming the stream, chunk and offset (or the object). */
  problems: string[];
  /** The same problems, in the same order, as fields (for --json readers). */
  problemDetails: VerifyProblem[];
}

/** One problem verify found: its sentence (as in VerifyReport.problems) and where it is. */
export interface VerifyProblem {
  message: string;
  /** What is damaged: a data chunk, a stream's segment, a stream root, or a store object (an index or pack). */
  kind: 'chunk' | 'segment' | 'stream' | 'object';
  stream?: string;
  /** The chunk's name (hex SHA-256): a data chunk's or the segment's. */
  chunk?: string;
  /** Where the data chunk lies in the stream's volume (bytes). */
  offset?: number;
  segment?: number;
  /** The object's key (kind 'object', when the problem names one). */
  object?: string;
  /** What is wrong, without where (e.g. "missing from the store"). */
  what: string;
}

/** Records a problem in both of a report's forms; `where` is the message's prefix naming the place, dropped from `what`. */
function addProblem(report: VerifyReport, message: string, where: string, fields: Omit<VerifyProblem, 'message' | 'what'>): void {
  const what = message.startsWith(`${where}: `) ? message.slice(where.length + 2) : message;
  report.problems.push(message);
  report.problemDetails.push({ message, ...fields, what });
}

/** A store-level problem (an index or pack object loadIndex could not use), its key taken from the sentence where it starts with one. */
function addObjectProblem(report: VerifyReport, message: string): void {
  const key = /^(?:index object |pack )?((?:packs|index)\/[0-9A-Za-z/._-]+)/.exec(message)?.[1];
  addProblem(report, message, key === undefined ? '' : message.slice(0, message.indexOf(key) + key.length), { kind: 'object', ...(key === undefined ? {} : { object: key }) });
}

export interface VerifyOptions {
  /** Only this stream (default: all). */
  name?: string;
  onProgress?: (doneStreams: number, totalStreams: number) => void;
  /** Where chunks are decompressed and checked (default: this thread). */
  decoder?: ChunkDecoder;
}

/**
 * Re-reads and re-hashes every chunk the streams need: their roots, segments and data chunks.
 * A chunk shared by several streams is read once, and its problem reported for each.
 */
export async function verifyStore(archive: Archive, options: VerifyOptions = {}): Promise<VerifyReport> {
  // The streams before the index: a stream committed by now has every pack in place (F-AR-ORDER-1),
  // so the index finds its chunks; one a pack beside verify commits later is not checked, rather
  // than checked against packs listed before they were written.
  const strays: string[] = [];
  const names = options.name === undefined ? await archive.streamNames((key) => strays.push(key)) : [options.name];
  const loaded = await archive.loadIndex();
  const reader = new ChunkReader(archive.store, loaded.index, options.decoder);
  const report: VerifyReport = { streamsChecked: 0, chunksChecked: 0, bytesChecked: 0, problems: [], problemDetails: [] };
  for (const key of strays) addProblem(report, `${key}: not a stream root's name (no stream can have it)`, key, { kind: 'object', object: key });
  if (options.name === undefined) for (const problem of loaded.problems) addObjectProblem(report, problem);
  const checked = new Map<string, string | undefined>(); // chunk hash → problem (undefined: intact)
  for (const name of names) {
    let root: StreamRoot;
    try {
      root = await archive.readStream(name);
    } catch (error) {
      // Removed since the listing ('archive rm' runs beside verify): not a stream to check.
      if (options.name === undefined && isThinError(error, 'THIN_NOT_FOUND')) continue;
      if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE') && !isThinError(error, 'THIN_FORMAT')) throw error;
      report.streamsChecked += 1;
      addProblem(report, (error as Error).message, `stream ${name}`, { kind: 'stream', stream: name });
      continue;
    }
    report.streamsChecked += 1;
    for (const segmentRef of root.segments) {
      let runs;
      try {
        runs = (await archive.readSegment(reader, root, segmentRef)).runs;
      } catch (error) {
        if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE') && !isThinError(error, 'THIN_FORMAT')) throw error;
        const chunk = hashHex(segmentRef.hash);
        addProblem(report, (error as Error).message, `stream ${root.name}, segment ${segmentRef.index} (chunk ${chunk})`, { kind: 'segment', stream: root.name, segment: segmentRef.index, chunk });
        continue;
      }
      for (const run of runs) {
        let window: Array<{ ref: ChunkRef; offset: number }> = [];
        let windowBytes = 0;
        let offset = run.beginBytes;
        const flush = async () => {
          await verifyWindow(reader, root.name, window, checked, report);
          window = [];
          windowBytes = 0;
        };
        for (const [position, ref] of run.chunks.entries()) {
          window.push({ ref, offset });
          windowBytes += ref.rawBytes;
          offset += ref.rawBytes;
          // Not between two chunks of one frame (it would be decompressed for each window), but
          // never past a window and a frame's worth: a run repeating one chunk (a region of one
          // byte value) is one frame's chunk over and over.
          const next = run.chunks[position + 1];
          const frameGoesOn = next !== undefined && reader.sameFrame(ref, next) && windowBytes < ARCHIVE_UNPACK_WINDOW_BYTES + ARCHIVE_FRAME_RAW_BYTES_MAX;
          if (windowBytes >= ARCHIVE_UNPACK_WINDOW_BYTES && !frameGoesOn) await flush();
        }
        await flush();
      }
    }
    options.onProgress?.(report.streamsChecked, names.length);
  }
  // The trailers of the packs whose chunks were read (of every pack, verifying the whole store):
  // the index objects stand in for them until the indexes are lost, when a pack whose trailer is
  // damaged could not be indexed again (docs/format.md F-AR-PACK-2, F-AR-IDX-1).
  const packIds = new Set<string>();
  if (options.name === undefined) for (const packId of loaded.packSizes.keys()) packIds.add(packId);
  else for (const hex of checked.keys()) {
    const location = loaded.index.get(Buffer.from(hex, 'hex'));
    if (location !== undefined) packIds.add(location.packId);
  }
  await checkPackTrailers(archive, loaded, packIds, report);
  return report;
}

/** Reads and checks the trailer of each pack in `packIds` that loading the index did not read already. */
async function checkPackTrailers(archive: Archive, loaded: LoadedIndex, packIds: Set<string>, report: VerifyReport): Promise<void> {
  const readAtLoad = new Set([...loaded.unindexed.map((listing) => listing.packId), ...loaded.unreadable]);
  for (const packId of packIds) {
    const sizeBytes = loaded.packSizes.get(packId);
    if (sizeBytes === undefined || readAtLoad.has(packId)) continue;
    try {
      await archive.readPackEntries(packId, sizeBytes);
    } catch (error) {
      if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE') && !isThinError(error, 'THIN_FORMAT') && !isThinError(error, 'THIN_NOT_FOUND')) throw error;
      addObjectProblem(report, (error as Error).message);
    }
  }
}

async function verifyWindow(
  reader: ChunkReader,
  stream: string,
  window: Array<{ ref: ChunkRef; offset: number }>,
  checked: Map<string, string | undefined>,
  report: VerifyReport,
): Promise<void> {
  const where = (item: { ref: ChunkRef; offset: number }) => `stream ${stream}, chunk ${hashHex(item.ref.hash)} at offset ${item.offset}`;
  // Each chunk once, however often the window repeats it.
  const seen = new Set<string>();
  const unread = window.filter((item) => {
    const hex = hashHex(item.ref.hash);
    if (checked.has(hex) || seen.has(hex)) return false;
    seen.add(hex);
    return true;
  });
  const record = (item: { ref: ChunkRef; offset: number }, problem: string | undefined) => {
    if (!checked.has(hashHex(item.ref.hash))) {
      report.chunksChecked += 1;
      report.bytesChecked += item.ref.rawBytes;
    }
    checked.set(hashHex(item.ref.hash), problem);
  };
  if (unread.length > 0) {
    try {
      await reader.read(unread.map((item) => item.ref), (index) => where(unread[index]!));
      for (const item of unread) record(item, undefined);
    } catch (error) {
      if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE')) throw error;
      // Find every bad chunk of the window, one by one.
      for (const item of unread) {
        if (checked.has(hashHex(item.ref.hash))) continue;
        try {
          await reader.read([item.ref], () => where(item));
          record(item, undefined);
        } catch (single) {
          if (!isThinError(single, 'THIN_CORRUPT_ARCHIVE')) throw single;
          record(item, (single as Error).message.slice(where(item).length + 2));
        }
      }
    }
  }
  for (const item of window) {
    const problem = checked.get(hashHex(item.ref.hash));
    if (problem !== undefined) addProblem(report, `${where(item)}: ${problem}`, where(item), { kind: 'chunk', stream, chunk: hashHex(item.ref.hash), offset: item.offset });
  }
}

// ---- rm ----

export async function removeStream(archive: Archive, name: string): Promise<void> {
  await archive.readStream(name).catch((error: unknown) => {
    // A damaged root may be removed; a missing one is an error.
    if (isThinError(error, 'THIN_NOT_FOUND') || isThinError(error, 'THIN_INVALID')) throw error;
  });
  await archive.store.delete(streamKey(name));
}

// ---- gc ----

export interface GcReport {
  streams: number;
  liveChunks: number;
  packsBefore: number;
  packsDeleted: number;
  packsRewritten: number;
  packsWritten: number;
  bytesBefore: number;
  bytesAfter: number;
  indexObjectsReplaced: number;
  /** Writes killed packs left unfinished, dropped: temporary files in a directory, multipart uploads on S3. */
  temporariesRemoved: number;
}

/**
 * Deletes what no stream needs: packs with no live chunk, and packs mostly dead (live bytes under
 * ARCHIVE_GC_REPACK_LIVE_FRACTION_MAX of the pack), whose live chunks are first copied into new
 * packs. Then one index object replaces all others. The caller holds the exclusive store lock.
 *
 * Crash-safe by order (F-AR-ORDER-2): new packs, then the new index, then the old index objects, then the old
 * packs. Killed after the new index, the old one still lists the deleted-to-be packs (dropped
 * when missing) and the packs still there are read from their trailers: nothing is lost, and
 * the next gc finishes the job. A damaged stream stops gc: it cannot say what that stream needs.
 */
export async function collectGarbage(archive: Archive, onNote: (line: string) => void = () => {}): Promise<GcReport> {
  const loaded = await archive.loadIndex();
  for (const problem of loaded.problems) onNote(`warning: ${problem}`);
  const reader = new ChunkReader(archive.store, loaded.index);
  const live = new ChunkIndex();
  const names = await archive.streamNames();
  const mark = (hash: Uint8Array) => live.add('live', { hash, offsetBytes: 0, storedBytes: 0, rawBytes: 0, flags: 0, frameOffsetBytes: 0 });
  for (const name of names) {
    let root: StreamRoot;
    try {
      root = await archive.readStream(name);
      for (const segmentRef of root.segments) {
        mark(segmentRef.hash);
        for (const run of (await archive.readSegment(reader, root, segmentRef)).runs) for (const ref of run.chunks) mark(ref.hash);
      }
    } catch (error) {
      if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE') && !isThinError(error, 'THIN_FORMAT')) throw error;
      throw new ThinError('THIN_CORRUPT_ARCHIVE', `gc stopped, nothing deleted: ${(error as Error).message}. Remove the damaged stream with 'thinbd archive rm' first`, { cause: error });
    }
  }
  // Live entries by pack, and the raw bytes each piece holds, live and in all (as far as the
  // index lists them): a frame's stored bytes count as live in the share its live chunks hold.
  const liveByPack = new Map<string, ChunkEntry[]>();
  const pieceRawBytes = new Map<string, { all: number; live: number }>();
  const pieceKey = (location: { packId: string; offsetBytes: number }) => `${location.packId}@${location.offsetBytes}`;
  for (const { hash, location } of loaded.index.entries()) {
    let piece = pieceRawBytes.get(pieceKey(location));
    if (piece === undefined) pieceRawBytes.set(pieceKey(location), (piece = { all: 0, live: 0 }));
    piece.all += location.rawBytes;
    if (!live.has(hash)) continue;
    piece.live += location.rawBytes;
    let entries = liveByPack.get(location.packId);
    if (entries === undefined) liveByPack.set(location.packId, (entries = []));
    entries.push({ hash, offsetBytes: location.offsetBytes, storedBytes: location.storedBytes, rawBytes: location.rawBytes, flags: location.flags, frameOffsetBytes: location.frameOffsetBytes });
  }
  const report: GcReport = {
    streams: names.length,
    liveChunks: live.size,
    packsBefore: loaded.packSizes.size,
    packsDeleted: 0,
    packsRewritten: 0,
    packsWritten: 0,
    bytesBefore: [...loaded.packSizes.values()].reduce((a, b) => a + b, 0),
    bytesAfter: 0,
    indexObjectsReplaced: loaded.indexKeys.length,
    temporariesRemoved: 0,
  };
  const kept: PackListing[] = [];
  const doomed: string[] = [];
  const rewrite: Array<{ packId: string; entries: ChunkEntry[] }> = [];
  for (const [packId, sizeBytes] of loaded.packSizes) {
    // A pack whose trailer cannot be read may hold chunks streams need: it stays as it is, listed
    // by no index, so verify and unpack go on naming it (nothing already stored is deleted).
    if (loaded.unreadable.has(packId)) {
      onNote(`warning: kept ${packKey(packId)}, whose chunks could not be listed`);
      continue;
    }
    const entries = (liveByPack.get(packId) ?? []).sort((a, b) => a.offsetBytes - b.offsetBytes || a.frameOffsetBytes - b.frameOffsetBytes);
    let liveBytes = 0;
    for (const [position, entry] of entries.entries()) {
      if (position > 0 && entries[position - 1]!.offsetBytes === entry.offsetBytes) continue; // the piece is counted
      const piece = pieceRawBytes.get(pieceKey({ packId, offsetBytes: entry.offsetBytes }))!;
      liveBytes += (entry.storedBytes * piece.live) / piece.all;
    }
    if (entries.length === 0) doomed.push(packId);
    else if (liveBytes < sizeBytes * ARCHIVE_GC_REPACK_LIVE_FRACTION_MAX) rewrite.push({ packId, entries });
    else kept.push({ packId, entries });
  }
  // Copy the live chunks of mostly dead packs into new packs (checked on the way: gc must not
  // spread damage under a fresh name). A frame goes over as it is while at least half of its bytes
  // are live; a frame mostly dead has its live chunks compressed again into a frame of their own,
  // so a frame's dead chunks are reclaimed like a pack's (F-AR-ORDER-2).
  const fresh = new ChunkIndex();
  const writer = new PackWriter(archive.store, fresh, [], { writeIndex: false });
  const decompressor = new ZstdDecompressor();
  const compressor = new ZstdCompressor(archive.config.compression.level);
  for (const { packId, entries } of rewrite) {
    const key = packKey(packId);
    const first = entries[0]!;
    const last = entries[entries.length - 1]!;
    const bytes = await archive.store.getRange(key, first.offsetBytes, last.offsetBytes + last.storedBytes);
    const damaged = (entry: ChunkEntry, problem = '') =>
      new ThinError('THIN_CORRUPT_ARCHIVE', `gc stopped: chunk ${hashHex(entry.hash)} in pack ${key} is damaged${problem === '' ? '' : ` (${problem})`} (run 'thinbd archive verify')`);
    for (let at = 0; at < entries.length; ) {
      // The live entries of one piece: those that share its offset.
      let end = at + 1;
      while (end < entries.length && entries[end]!.offsetBytes === entries[at]!.offsetBytes) end += 1;
      const members = entries.slice(at, end);
      at = end;
      const piece = members[0]!;
      const flags = piece.flags & (CHUNK_FLAG_ZSTD | CHUNK_FLAG_SEGMENT);
      const stored = bytes.subarray(piece.offsetBytes - first.offsetBytes, piece.offsetBytes - first.offsetBytes + piece.storedBytes);
      if ((piece.flags & CHUNK_FLAG_ZSTD) === 0) {
        if (Buffer.compare(sha256(stored), piece.hash) !== 0) throw damaged(piece);
        await writer.add(piece.hash, stored, piece.rawBytes, flags);
        continue;
      }
      let frame: Uint8Array;
      try {
        frame = decompressor.decompressFrame(stored, ARCHIVE_FRAME_RAW_BYTES_MAX);
      } catch (error) {
        if (error instanceof ZstdFrameError) throw damaged(piece, error.message);
        throw error;
      }
      let liveBytes = 0;
      for (const entry of members) {
        const end = entry.frameOffsetBytes + entry.rawBytes;
        if (end > frame.length || Buffer.compare(sha256(frame.subarray(entry.frameOffsetBytes, end)), entry.hash) !== 0) throw damaged(entry);
        liveBytes += entry.rawBytes;
      }
      if (liveBytes * 2 >= frame.length) {
        await writer.addPiece(stored, members, flags);
        continue;
      }
      // The live chunks end to end, stored as pack stores a job's new chunks (chunk-jobs.ts).
      const joined = new Uint8Array(liveBytes);
      let joinedBytes = 0;
      for (const entry of members) {
        joined.set(frame.subarray(entry.frameOffsetBytes, entry.frameOffsetBytes + entry.rawBytes), joinedBytes);
        joinedBytes += entry.rawBytes;
      }
      const lengths = Uint32Array.from(members, (entry) => entry.rawBytes);
      const indexes = members.map((_, position) => position);
      const out = new Uint8Array(joined.length);
      for (const rewritten of storedPieces(joined, lengths, indexes, out, compressChunks(compressor, joined, lengths, indexes, out))) {
        const chunks = rewritten.chunks.map(({ position, frameOffsetBytes }) => ({ hash: members[position]!.hash, rawBytes: members[position]!.rawBytes, frameOffsetBytes }));
        await writer.addPiece(rewritten.stored, chunks, rewritten.flags | (flags & CHUNK_FLAG_SEGMENT));
      }
    }
    doomed.push(packId);
    report.packsRewritten += 1;
  }
  await writer.finish();
  report.packsWritten = writer.stats.packs;
  const listings = [...kept, ...writer.listings];
  await archive.store.put(indexKey(newObjectId()), encodeIndex(listings));
  for await (const object of archive.store.list(INDEX_PREFIX)) {
    if (!loaded.indexKeys.includes(object.key)) continue;
    await archive.store.delete(object.key);
  }
  for (const packId of doomed) {
    await archive.store.delete(packKey(packId));
    if (!rewrite.some((pack) => pack.packId === packId)) report.packsDeleted += 1;
  }
  // What killed packs left half written: temporary files, multipart uploads S3 would keep (and bill).
  const owned = (key: string): boolean => [PACKS_PREFIX, INDEX_PREFIX, STREAMS_PREFIX].some((prefix) => key.startsWith(prefix));
  // A store that refuses (credentials without s3:ListBucketMultipartUploads) costs only the note:
  // the packs are already reclaimed.
  try {
    report.temporariesRemoved = (await archive.store.removeUnfinished?.(owned)) ?? 0;
  } catch (error) {
    if (!(error instanceof ThinError)) throw error;
    onNote(`warning: unfinished writes of killed packs were not dropped (${error.message}); an S3 lifecycle rule (AbortIncompleteMultipartUpload) drops them too`);
  }
  for await (const object of archive.store.list(PACKS_PREFIX)) report.bytesAfter += object.sizeBytes;
  return report;
}
