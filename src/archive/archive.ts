// An archive store opened for use: its config, the index of its chunks, and the machinery that
// writes chunks into pack objects and reads them back. pack.ts, unpack.ts and maintenance.ts
// build the commands on it.
//
// Write order (F-AR-ORDER-1), which is what makes a killed command harmless: pack objects first,
// then the stream root beside the index object listing them. Until the root exists nothing refers
// to the new packs; gc deletes packs no stream needs; and the next pack finds packs that no index
// lists by reading their trailers, so an interrupted upload is not repeated.
import { ThinError, assert, isThinError } from '../errors.ts';
import {
  ARCHIVE_COMMITS_IN_FLIGHT_MAX,
  ARCHIVE_INDEX_BYTES_MAX,
  ARCHIVE_PACK_TARGET_BYTES,
  ARCHIVE_PACKS_PER_INDEX_MAX,
  ARCHIVE_READ_GAP_BYTES_MAX,
  ARCHIVE_READ_RAW_BYTES_MAX,
  ARCHIVE_UPLOADS_IN_FLIGHT_MAX,
} from '../constants.ts';
import { ChunkIndex, type ChunkLocation } from './chunk-index.ts';
import { InlineChunkDecoder, type ChunkDecoder, type DecodeItem } from './chunk-decode.ts';
import { Chunker } from './chunker.ts';
import {
  CHUNK_FLAG_SEGMENT,
  CHUNK_FLAG_ZSTD,
  CONFIG_KEY,
  INDEX_PREFIX,
  PACK_FOOTER_BYTES,
  PACK_HEADER_BYTES,
  PACKS_PREFIX,
  STREAMS_PREFIX,
  checkPackHeader,
  corrupt,
  decodePackEntries,
  decodePackFooter,
  decodeSegment,
  decodeStoreConfig,
  decodeStreamRoot,
  encodeIndex,
  encodePackHeader,
  encodePackTrailer,
  encodeStoreConfig,
  hashHex,
  indexKey,
  makeStoreConfig,
  newObjectId,
  packIdOfKey,
  packKey,
  scanIndex,
  sha256,
  streamKey,
  validStreamName,
  type ChunkEntry,
  type ChunkRef,
  type PackEntryBytes,
  type PackListing,
  type Segment,
  type SegmentRef,
  type StoreConfig,
  type StreamRoot,
} from './format.ts';
import { openObjectStore, type OpenStoreOptions } from './open-store.ts';
import type { ObjectStore, ObjectWriter } from './store.ts';

export interface InitOptions extends OpenStoreOptions {
  averageChunkBytes: number;
  zstdLevel: number;
}

/**
 * Refuses to make a store where something else is (the store's own check where it has one, a
 * directory's; else, under an S3 prefix, any object but a store's config): an existing store is
 * left to the config's exclusive create, which says so.
 */
async function checkNewStorePlace(store: ObjectStore): Promise<void> {
  if (store.checkNewStorePlace !== undefined) return await store.checkNewStorePlace();
  for await (const object of store.list('')) {
    if (object.key === CONFIG_KEY) return;
    throw new ThinError('THIN_EXISTS', `Cannot create an archive store at ${store.url}: objects are there (${object.key}) and no archive store; name a new or empty prefix`);
  }
}

/** What loading the index found, beyond the chunks. */
export interface LoadedIndex {
  index: ChunkIndex;
  /** Every pack object in the store, by id: its size. */
  packSizes: Map<string, number>;
  /** Packs no index object lists (left by an interrupted pack): their trailers were read. */
  unindexed: PackListing[];
  /** Index objects read, by key. */
  indexKeys: string[];
  /** Objects that could not be used, each a sentence (verify reports them; pack carries on without them). */
  problems: string[];
  /** Packs no index lists whose own trailers could not be read: what they hold is unknown (gc keeps them). */
  unreadable: Set<string>;
}

export class Archive {
  readonly store: ObjectStore;
  readonly config: StoreConfig;
  readonly chunker: Chunker;

  private constructor(store: ObjectStore, config: StoreConfig) {
    this.store = store;
    this.config = config;
    this.chunker = new Chunker(config.chunking);
  }

  get url(): string {
    return this.store.url;
  }

  /** Creates a new, empty store at `spec` (THIN_EXISTS if one is there). */
  static async init(spec: string, options: InitOptions): Promise<Archive> {
    const store = await openObjectStore(spec, options);
    try {
      await checkNewStorePlace(store);
      const config = makeStoreConfig(options.averageChunkBytes, options.zstdLevel, new Date());
      // F-AR-CFG-4: the config is written once, by an exclusive create; it never changes.
      if (!(await store.putNew(CONFIG_KEY, encodeStoreConfig(config)))) {
        throw new ThinError('THIN_EXISTS', `An archive store already exists at ${store.url}`);
      }
      return new Archive(store, config);
    } catch (error) {
      await store.close();
      throw error;
    }
  }

  static async open(spec: string, options: OpenStoreOptions = {}): Promise<Archive> {
    const store = await openObjectStore(spec, options);
    try {
      let bytes: Uint8Array;
      try {
        bytes = await store.get(CONFIG_KEY);
      } catch (error) {
        if (isThinError(error, 'THIN_NOT_FOUND')) {
          await store.checkPlace?.(); // a missing bucket is named as one: init could not make a store there
          throw new ThinError('THIN_NOT_FOUND', `No archive store at ${store.url} (no config object); create one with 'thinbd archive init --store ${store.url}'`, { cause: error });
        }
        throw error;
      }
      return new Archive(store, decodeStoreConfig(bytes, `the store config of ${store.url}`));
    } catch (error) {
      await store.close();
      throw error;
    }
  }

  async close(): Promise<void> {
    await this.store.close();
  }

  // ---- the chunk index ----

  /** Reads every index object, and the trailers of packs none lists, into a ChunkIndex. */
  async loadIndex(): Promise<LoadedIndex> {
    const packSizes = new Map<string, number>();
    const problems: string[] = [];
    for await (const object of this.store.list(PACKS_PREFIX)) {
      const packId = packIdOfKey(object.key);
      if (packId === undefined) problems.push(`${object.key}: not a pack object's name`);
      else packSizes.set(packId, object.sizeBytes);
    }
    const covered = new Set<string>();
    const indexKeys: string[] = [];
    const listed: PackEntryBytes[] = [];
    let listedEntries = 0;
    for await (const object of this.store.list(INDEX_PREFIX)) {
      indexKeys.push(object.key);
      let listings: PackEntryBytes[];
      try {
        if (object.sizeBytes > ARCHIVE_INDEX_BYTES_MAX) throw corrupt(object.key, `${object.sizeBytes} bytes is larger than any index`);
        listings = scanIndex(await this.store.get(object.key), `index object ${object.key}`);
      } catch (error) {
        if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE') && !isThinError(error, 'THIN_NOT_FOUND')) throw error;
        problems.push((error as Error).message);
        continue;
      }
      for (const listing of listings) {
        // An index may list a pack that gc has since deleted: such entries are dropped.
        if (!packSizes.has(listing.packId)) continue;
        covered.add(listing.packId);
        listed.push(listing);
        listedEntries += listing.count;
      }
    }
    // Sized for what the indexes list (and a pack's worth more), so it does not grow while loading;
    // the entries go in from the index objects' bytes, without an object each.
    const index = new ChunkIndex(listedEntries + 1024);
    for (const listing of listed) index.addEntries(listing);
    const unindexed: PackListing[] = [];
    const unreadable = new Set<string>();
    for (const [packId, sizeBytes] of packSizes) {
      if (covered.has(packId)) continue;
      try {
        const entries = await this.readPackEntries(packId, sizeBytes);
        unindexed.push({ packId, entries });
        for (const entry of entries) index.add(packId, entry);
      } catch (error) {
        if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE') && !isThinError(error, 'THIN_NOT_FOUND')) throw error;
        problems.push((error as Error).message);
        unreadable.add(packId);
      }
    }
    return { index, packSizes, unindexed, indexKeys, problems, unreadable };
  }

  /** A pack's entries, from its own trailer (F-AR-PACK-2). */
  async readPackEntries(packId: string, sizeBytes: number): Promise<ChunkEntry[]> {
    const key = packKey(packId);
    const where = `pack ${key}`;
    // The header's version says how long the trailer's entries are (F-AR-PACK-5).
    const version = checkPackHeader(await this.store.getRange(key, 0, Math.min(sizeBytes, PACK_HEADER_BYTES)), where);
    const footerBytes = await this.store.getRange(key, Math.max(0, sizeBytes - PACK_FOOTER_BYTES), sizeBytes);
    const footer = decodePackFooter(footerBytes, sizeBytes, version, where);
    const trailer = await this.store.getRange(key, footer.trailerOffsetBytes, sizeBytes - PACK_FOOTER_BYTES);
    return decodePackEntries(footer.entryCount === 0 ? new Uint8Array(0) : trailer, footer, where);
  }

  // ---- streams ----

  /**
   * The names of the stream roots. An object under streams/ whose name no stream can have (F-AR-KEY-2:
   * an editor's or a copy tool's file) is no stream root: it is left out, and its key given to `onStray`.
   */
  async streamNames(onStray?: (key: string) => void): Promise<string[]> {
    const names: string[] = [];
    for await (const object of this.store.list(STREAMS_PREFIX)) {
      const name = object.key.slice(STREAMS_PREFIX.length);
      if (validStreamName(name)) names.push(name);
      else onStray?.(object.key);
    }
    return names;
  }

  async readStream(name: string): Promise<StreamRoot> {
    if (!validStreamName(name)) throw new ThinError('THIN_INVALID', `Invalid stream name '${name}'`);
    let bytes: Uint8Array;
    try {
      bytes = await this.store.get(streamKey(name));
    } catch (error) {
      if (isThinError(error, 'THIN_NOT_FOUND')) throw new ThinError('THIN_NOT_FOUND', `No stream named ${name} in ${this.url}`, { cause: error });
      throw error;
    }
    return decodeStreamRoot(bytes, { name, segmentBytes: this.config.segmentBytes }, `stream ${name}`);
  }

  /** A segment of a stream, read through `reader` (its chunk is checked against its hash). */
  async readSegment(reader: ChunkReader, root: StreamRoot, ref: SegmentRef): Promise<Segment> {
    const where = `stream ${root.name}, segment ${ref.index} (chunk ${hashHex(ref.hash)})`;
    const [bytes] = await reader.read([{ hash: ref.hash, rawBytes: ref.rawBytes }], () => where, CHUNK_FLAG_SEGMENT);
    return decodeSegment(bytes!, { index: ref.index, segmentBytes: this.config.segmentBytes, volumeBytes: root.sizeBytes, chunkMaxBytes: this.config.chunking.maxBytes }, where);
  }
}

// ---- writing chunks into packs ----

/** A chunk of a piece handed to PackWriter: its name, raw size and place in the frame's decompressed bytes. */
export interface PieceChunk {
  hash: Uint8Array;
  rawBytes: number;
  frameOffsetBytes: number;
}

interface OpenPack {
  id: string;
  sink: PackSink;
  entries: ChunkEntry[];
  /** Bytes handed to the sink so far, the header included. */
  offsetBytes: number;
}

/** Where an open pack's bytes go, in order: header, payloads, trailer. */
interface PackSink {
  /** Appends bytes; they are copied (or written out) when it resolves. */
  append(bytes: Uint8Array): Promise<void>;
  /**
   * Appends the parts end to end: their place is taken when called (what is appended next comes
   * after them), they are copied or written out when it resolves, and end() waits for them.
   */
  appendParts(parts: Uint8Array[]): Promise<void>;
  /** Everything is appended: nothing of it is left in buffers shared with the next pack. */
  end(): Promise<void>;
  /** Stores the pack, durably, after end. */
  commit(): Promise<void>;
  /** Drops the pack. */
  abort(): Promise<void>;
}

export interface PackWriterStats {
  packs: number;
  /** Bytes of pack objects written (payloads, trailers and headers). */
  bytesWritten: number;
}

/** Room a pack buffer keeps past ARCHIVE_PACK_TARGET_BYTES: the chunk that crosses it and the trailer (more is made when needed). */
const PACK_BUFFER_SLACK_BYTES = 1024 * 1024;
/** Bytes a streamed pack gathers before a write: small chunks go out in few system calls. */
const PACK_STAGING_BYTES = 1024 * 1024;

/**
 * Collects stored chunks into pack objects of about ARCHIVE_PACK_TARGET_BYTES and uploads them,
 * ARCHIVE_UPLOADS_IN_FLIGHT_MAX at a time (ARCHIVE_COMMITS_IN_FLIGHT_MAX for a directory's,
 * which hold no buffer), then lists them in index objects. Each chunk added goes into the chunk
 * index at once, so a chunk seen twice in one run is stored once.
 *
 * Where the store takes objects in parts (a directory), a pack is written out as its chunks come,
 * through two small staging buffers; otherwise (S3) it is assembled in a buffer and put whole, the
 * buffers reused from pack to pack. Either way no memory grows with the bytes packed: on a
 * virtual machine, memory touched for the first time cost more than the work done in it
 * (docs/benchmarks.md, "Archive").
 */
export class PackWriter {
  readonly #store: ObjectStore;
  readonly #index: ChunkIndex;
  #open: OpenPack | undefined;
  /** The add in progress (adds run one at a time, in the order called). */
  #adding: Promise<void> = Promise.resolve();
  readonly #uploads = new Set<Promise<void>>();
  #failure: unknown;
  /** Uploaded packs not yet listed by an index object. */
  #unlisted: PackListing[];
  readonly #writeIndexes: boolean;
  /** Every pack this writer uploaded. */
  readonly listings: PackListing[] = [];
  readonly stats: PackWriterStats = { packs: 0, bytesWritten: 0 };
  /** Buffers of packs already uploaded whole, for the next ones (#packBuffer). */
  readonly #spareBuffers: Uint8Array[] = [];
  /** The staging buffers of streamed packs (one pack is open at a time), each with its write in flight. */
  #staging: Array<{ bytes: Uint8Array; written: Promise<void> }> | undefined;

  /**
   * `unlisted`: packs found without an index (an interrupted run's), to list in this run's index.
   * `writeIndex: false` leaves listing the packs to the caller (gc writes one index for all).
   */
  constructor(store: ObjectStore, index: ChunkIndex, unlisted: PackListing[] = [], options: { writeIndex?: boolean } = {}) {
    this.#store = store;
    this.#index = index;
    this.#unlisted = [...unlisted];
    this.#writeIndexes = options.writeIndex !== false;
  }

  /**
   * addPiece of each piece, in order, the pieces of a pack written out together: a job's pieces
   * go to a directory store in one system call, from where they lie, rather than copied into the
   * staging buffers (which cost 10 ms of a 0.33 s incremental pack: docs/benchmarks.md, "Archive:
   * the incremental's pipeline"). The caller may reuse the pieces' bytes when it resolves; the
   * next add does not wait for the disk.
   */
  addPieces(pieces: ReadonlyArray<{ stored: Uint8Array; chunks: PieceChunk[]; flags: number }>): Promise<void> {
    const placed = this.#adding.then(() => this.#addPieces(pieces));
    // The next add goes on once these pieces have their places, not once they are on disk.
    this.#adding = placed.then(
      () => undefined,
      () => undefined,
    );
    return placed.then((writes) => Promise.all(writes)).then(() => undefined);
  }

  /** Places the pieces; resolves to the writes of their bytes (a pack sealed meanwhile has had its writes finished). */
  async #addPieces(pieces: ReadonlyArray<{ stored: Uint8Array; chunks: PieceChunk[]; flags: number }>): Promise<Array<Promise<void>>> {
    if (this.#failure !== undefined) throw this.#failure;
    const writes: Array<Promise<void>> = [];
    const append = (sink: PackSink, parts: Uint8Array[]) => {
      const written = sink.appendParts(parts);
      // A failure is seen by the caller (or by the pack's end), not as an unhandled rejection.
      written.catch(() => undefined);
      writes.push(written);
    };
    let parts: Uint8Array[] = [];
    for (const { stored, chunks, flags } of pieces) {
      assert(chunks.length > 0 && (chunks.length === 1 || (flags & CHUNK_FLAG_ZSTD) !== 0), 'a piece of several chunks that is not a frame');
      this.#open ??= await this.#openPack();
      const pack = this.#open;
      parts.push(stored);
      this.#place(pack, stored, chunks, flags);
      if (pack.offsetBytes >= ARCHIVE_PACK_TARGET_BYTES) {
        append(pack.sink, parts);
        parts = [];
        await this.#seal();
      }
    }
    if (parts.length > 0) append(this.#open!.sink, parts);
    return writes;
  }

  /** Lists a piece's chunks in `pack` (and the index) at the pack's end, which the piece then extends. */
  #place(pack: OpenPack, stored: Uint8Array, chunks: PieceChunk[], flags: number): void {
    for (const chunk of chunks) {
      const entry: ChunkEntry = { hash: chunk.hash, offsetBytes: pack.offsetBytes, storedBytes: stored.length, rawBytes: chunk.rawBytes, flags, frameOffsetBytes: chunk.frameOffsetBytes };
      pack.entries.push(entry);
      if (!this.#index.add(pack.id, entry)) assert(false, `chunk ${hashHex(chunk.hash)} added twice`);
    }
    pack.offsetBytes += stored.length;
  }

  /** addPiece of one chunk alone in its piece (its own frame, or its raw bytes). */
  add(hash: Uint8Array, stored: Uint8Array, rawBytes: number, flags: number): Promise<void> {
    return this.addPiece(stored, [{ hash, rawBytes, frameOffsetBytes: 0 }], flags);
  }

  /**
   * Adds a piece in its stored form — a zstd frame holding `chunks` where their frame offsets
   * say, or one chunk's raw bytes — copied or written out before this resolves (the caller may
   * then reuse `stored`); resolves when there is room for more. A piece is never split between packs.
   */
  addPiece(stored: Uint8Array, chunks: PieceChunk[], flags: number): Promise<void> {
    const added = this.#adding.then(() => this.#add(stored, chunks, flags));
    this.#adding = added.catch(() => undefined);
    return added;
  }

  async #add(stored: Uint8Array, chunks: PieceChunk[], flags: number): Promise<void> {
    if (this.#failure !== undefined) throw this.#failure;
    assert(chunks.length > 0 && (chunks.length === 1 || (flags & CHUNK_FLAG_ZSTD) !== 0), 'a piece of several chunks that is not a frame');
    this.#open ??= await this.#openPack();
    const pack = this.#open;
    await pack.sink.append(stored);
    this.#place(pack, stored, chunks, flags);
    if (pack.offsetBytes >= ARCHIVE_PACK_TARGET_BYTES) await this.#seal();
  }

  async #openPack(): Promise<OpenPack> {
    const id = newObjectId();
    const sink = this.#store.openWriter === undefined ? this.#bufferedSink(id) : this.#streamedSink(await this.#store.openWriter(packKey(id)));
    const header = encodePackHeader();
    await sink.append(header).catch(async (error: unknown) => {
      await sink.abort().catch(() => undefined);
      throw error;
    });
    return { id, sink, entries: [], offsetBytes: header.length };
  }

  /** A pack assembled in a (reused) buffer and put whole. */
  #bufferedSink(id: string): PackSink {
    let bytes = this.#packBuffer(ARCHIVE_PACK_TARGET_BYTES + PACK_BUFFER_SLACK_BYTES);
    let lengthBytes = 0;
    const copy = (part: Uint8Array) => {
      if (lengthBytes + part.length > bytes.length) {
        const larger = this.#packBuffer(lengthBytes + part.length + PACK_BUFFER_SLACK_BYTES);
        larger.set(bytes.subarray(0, lengthBytes), 0);
        bytes = larger;
      }
      bytes.set(part, lengthBytes);
      lengthBytes += part.length;
    };
    return {
      append: async (part) => copy(part),
      appendParts: async (parts) => {
        for (const part of parts) copy(part);
      },
      end: async () => {},
      commit: async () => {
        await this.#store.put(packKey(id), bytes.subarray(0, lengthBytes));
        this.#spareBuffers.push(bytes);
      },
      abort: async () => {
        this.#spareBuffers.push(bytes);
      },
    };
  }

  /**
   * A pack written out as it comes, through two staging buffers: one fills while the other is
   * written, so adds rarely wait for the disk.
   */
  #streamedSink(writer: ObjectWriter): PackSink {
    this.#staging ??= [
      { bytes: new Uint8Array(PACK_STAGING_BYTES), written: Promise.resolve() },
      { bytes: new Uint8Array(PACK_STAGING_BYTES), written: Promise.resolve() },
    ];
    const buffers = this.#staging;
    let current = 0;
    let stagedBytes = 0;
    const flush = () => {
      if (stagedBytes === 0) return;
      const buffer = buffers[current]!;
      buffer.written = writer.write(buffer.bytes.subarray(0, stagedBytes));
      // Its failure is seen by whoever waits for the buffer next, not as an unhandled rejection.
      buffer.written.catch(() => undefined);
      current = 1 - current;
      stagedBytes = 0;
    };
    const settled = () => Promise.all(buffers.map((buffer) => buffer.written)).then(() => undefined);
    /** appendParts' writes, each with its failure handled here too (end reports it). */
    const direct = new Set<Promise<void>>();
    return {
      append: async (part) => {
        if (stagedBytes + part.length > PACK_STAGING_BYTES) flush();
        if (part.length >= PACK_STAGING_BYTES) {
          await writer.write(part);
          return;
        }
        if (stagedBytes === 0) await buffers[current]!.written;
        buffers[current]!.bytes.set(part, stagedBytes);
        stagedBytes += part.length;
      },
      // After what is staged (it has its place first), straight from where the parts lie.
      appendParts: (parts) => {
        flush();
        const written = writer.writeParts(parts);
        direct.add(written);
        written.catch(() => undefined);
        return written;
      },
      end: async () => {
        flush();
        await settled();
        await Promise.all(direct);
      },
      // After end: the next pack's bytes may fill the staging buffers while this one commits.
      commit: () => writer.commit(),
      abort: async () => {
        stagedBytes = 0;
        await settled().catch(() => undefined);
        await Promise.allSettled(direct);
        await writer.abort();
      },
    };
  }

  async #seal(): Promise<void> {
    const pack = this.#open;
    if (pack === undefined) return;
    this.#open = undefined;
    const trailer = encodePackTrailer(pack.entries, pack.offsetBytes);
    try {
      await pack.sink.append(trailer);
      await pack.sink.end();
    } catch (error) {
      // No longer the open pack, so abandon() would not drop it: dropped here.
      await pack.sink.abort().catch(() => undefined);
      throw error;
    }
    const objectBytes = pack.offsetBytes + trailer.length;
    const upload = (async () => {
      await pack.sink.commit();
      this.stats.packs += 1;
      this.stats.bytesWritten += objectBytes;
      this.listings.push({ packId: pack.id, entries: pack.entries });
      this.#unlisted.push({ packId: pack.id, entries: pack.entries });
      if (this.#unlisted.length >= ARCHIVE_PACKS_PER_INDEX_MAX) await this.#writeIndex();
    })();
    const tracked = upload.catch((error: unknown) => {
      this.#failure ??= error;
    });
    this.#uploads.add(tracked);
    void tracked.finally(() => this.#uploads.delete(tracked));
    const inFlightMax = this.#store.openWriter === undefined ? ARCHIVE_UPLOADS_IN_FLIGHT_MAX : ARCHIVE_COMMITS_IN_FLIGHT_MAX;
    while (this.#uploads.size >= inFlightMax) await Promise.race(this.#uploads);
    if (this.#failure !== undefined) throw this.#failure;
  }

  /**
   * A buffer of at least `capacityBytes` for a pack, reusing one whose upload has finished: a
   * fresh 16 MiB buffer per pack cost 4,096 page faults, more than copying the chunks into it
   * (docs/benchmarks.md, "Archive"). Not zero-filled: the pack is written before it is read.
   */
  #packBuffer(capacityBytes: number): Uint8Array {
    const spare = this.#spareBuffers.pop();
    if (spare !== undefined && spare.length >= capacityBytes) return spare;
    return new Uint8Array(Buffer.allocUnsafeSlow(capacityBytes).buffer, 0, capacityBytes);
  }

  async #writeIndex(): Promise<void> {
    if (this.#unlisted.length === 0 || !this.#writeIndexes) return;
    const listings = this.#unlisted;
    this.#unlisted = [];
    await this.#store.put(indexKey(newObjectId()), encodeIndex(listings));
  }

  /** Uploads what is left: every pack of this run is stored when it resolves. */
  async finishPacks(): Promise<void> {
    await this.#adding;
    if (this.#failure !== undefined) throw this.#failure;
    await this.#seal();
    await Promise.all(this.#uploads);
    if (this.#failure !== undefined) throw this.#failure;
  }

  /** finishPacks, then lists every pack of this run not yet listed in an index object. */
  async finish(): Promise<void> {
    await this.finishPacks();
    await this.#writeIndex();
  }

  /** Drops the open pack and waits for uploads in flight (after a failure elsewhere), ignoring their errors. */
  async abandon(): Promise<void> {
    await this.#adding;
    const open = this.#open;
    this.#open = undefined;
    await open?.sink.abort().catch(() => undefined);
    await Promise.all(this.#uploads);
  }
}

// ---- reading chunks back ----

/** The largest reused read buffer: a joined read of ARCHIVE_READ_RAW_BYTES_MAX of chunks with room for its gaps. */
const READ_BUFFER_BYTES = ARCHIVE_READ_RAW_BYTES_MAX + 4 * ARCHIVE_READ_GAP_BYTES_MAX;
/** The smallest: a read of one chunk or a few. */
const READ_BUFFER_MIN_BYTES = 64 * 1024;

/** The size of buffer a read of `bytes` takes: a power of two from the smallest, the largest at most. */
function readBufferBytes(bytes: number): number {
  let size = READ_BUFFER_MIN_BYTES;
  while (size < bytes) size *= 2;
  return Math.min(size, READ_BUFFER_BYTES);
}

interface PendingRead {
  refIndex: number;
  location: ChunkLocation;
}

/**
 * Reads chunks by hash: locates them in the index, joins neighbouring chunks of one pack into
 * one ranged read (gaps up to ARCHIVE_READ_GAP_BYTES_MAX, ARCHIVE_READ_RAW_BYTES_MAX of chunks at most, each decoded as one job), decompresses each and checks it
 * against its name. Any problem is THIN_CORRUPT_ARCHIVE naming the chunk as `describe` places it.
 */
export class ChunkReader {
  readonly #store: ObjectStore;
  readonly #index: ChunkIndex;
  readonly #decoder: ChunkDecoder;
  /**
   * Read buffers free for the next joined read (#readGroup), by size. A read takes the smallest
   * size that holds it, so the buffers in use add up to about what the reads in flight span: a
   * window of chunks scattered over many packs is many small reads, not many largest buffers.
   */
  readonly #readBuffers = new Map<number, Uint8Array[]>();

  /** `decoder`: where chunks are decompressed and checked (default: on this thread). */
  constructor(store: ObjectStore, index: ChunkIndex, decoder: ChunkDecoder = new InlineChunkDecoder()) {
    this.#store = store;
    this.#index = index;
    this.#decoder = decoder;
  }

  /** Where a chunk is, or a THIN_CORRUPT_ARCHIVE error saying it is missing. */
  locate(ref: ChunkRef, where: string, kind = 0): ChunkLocation {
    const location = this.#index.get(ref.hash);
    if (location === undefined) throw corrupt(where, 'missing from the store (no pack holds it)');
    if (location.rawBytes !== ref.rawBytes) throw corrupt(where, `the store holds ${location.rawBytes} bytes under this name, the stream expects ${ref.rawBytes}`);
    if ((location.flags & CHUNK_FLAG_SEGMENT) !== kind) throw corrupt(where, `stored as a ${kind === 0 ? 'segment' : 'data chunk'}`);
    return location;
  }

  /** Whether two chunks the index has are stored in one frame (a reader takes them together). */
  sameFrame(a: ChunkRef, b: ChunkRef): boolean {
    const first = this.#index.get(a.hash);
    const second = this.#index.get(b.hash);
    return first !== undefined && second !== undefined && (first.flags & CHUNK_FLAG_ZSTD) !== 0 && first.packId === second.packId && first.offsetBytes === second.offsetBytes;
  }

  /**
   * The raw bytes of each ref, in order. With `into` (as long as the refs together), the chunks are
   * decompressed straight into it end to end, and the results are views of it.
   */
  async read(refs: ChunkRef[], describe: (refIndex: number) => string, kind = 0, into?: Uint8Array): Promise<Uint8Array[]> {
    const pending: PendingRead[] = [];
    for (const [refIndex, ref] of refs.entries()) {
      const location = this.#index.get(ref.hash);
      // The common case needs no description; a problem gets one.
      if (location === undefined || location.rawBytes !== ref.rawBytes || (location.flags & CHUNK_FLAG_SEGMENT) !== kind) this.locate(ref, describe(refIndex), kind);
      pending.push({ refIndex, location: location! });
    }
    let targets: Uint8Array[] | undefined;
    if (into !== undefined) {
      targets = [];
      let at = 0;
      for (const ref of refs) {
        targets.push(into.subarray(at, at + ref.rawBytes));
        at += ref.rawBytes;
      }
      assert(at === into.length, 'a target of another size than the chunks');
    }
    pending.sort((a, b) =>
      a.location.packId < b.location.packId ? -1 : a.location.packId > b.location.packId ? 1 : a.location.offsetBytes - b.location.offsetBytes || a.location.frameOffsetBytes - b.location.frameOffsetBytes,
    );
    const results: Uint8Array[] = new Array<Uint8Array>(refs.length);
    // The chunks read from one piece go into one group (a frame is decompressed once per group):
    // a group is cut only between pieces, and its raw bytes, counted a piece at a time, stay
    // within ARCHIVE_READ_RAW_BYTES_MAX.
    const samePiece = (a: ChunkLocation, b: ChunkLocation) => a.packId === b.packId && a.offsetBytes === b.offsetBytes;
    const groups: PendingRead[][] = [];
    let groupRawBytes = 0;
    for (let at = 0; at < pending.length; ) {
      let end = at + 1;
      let pieceRawBytes = pending[at]!.location.rawBytes;
      while (end < pending.length && samePiece(pending[end]!.location, pending[at]!.location)) pieceRawBytes += pending[end++]!.location.rawBytes;
      const reads = pending.slice(at, end);
      at = end;
      const { location } = reads[0]!;
      const group = groups[groups.length - 1];
      const last = group?.[group.length - 1]?.location;
      if (
        group !== undefined &&
        last !== undefined &&
        last.packId === location.packId &&
        location.offsetBytes >= last.offsetBytes &&
        location.offsetBytes - (last.offsetBytes + last.storedBytes) <= ARCHIVE_READ_GAP_BYTES_MAX &&
        groupRawBytes + pieceRawBytes <= ARCHIVE_READ_RAW_BYTES_MAX
      ) {
        group.push(...reads);
        groupRawBytes += pieceRawBytes;
      } else {
        groups.push(reads);
        groupRawBytes = pieceRawBytes;
      }
    }
    await Promise.all(groups.map((group) => this.#readGroup(group, refs, results, describe, targets)));
    return results;
  }

  /** An object's size from a listing of its prefix (for an error: a read that began past its end tells none). */
  async #objectSize(key: string): Promise<number | undefined> {
    for await (const object of this.#store.list(key.slice(0, key.lastIndexOf('/') + 1))) if (object.key === key) return object.sizeBytes;
    return undefined;
  }

  async #readGroup(group: PendingRead[], refs: ChunkRef[], results: Uint8Array[], describe: (refIndex: number) => string, targets: Uint8Array[] | undefined): Promise<void> {
    const first = group[0]!.location;
    const beginBytes = first.offsetBytes;
    const endBytes = Math.max(...group.map((read) => read.location.offsetBytes + read.location.storedBytes));
    const key = packKey(first.packId);
    // The bytes go into a reused buffer (shared memory, read by a worker thread in place), free
    // again once they are decoded: unpack reads a stream's whole stored size, and fresh buffers
    // cost a page fault per 4 KiB (docs/benchmarks.md, "Archive"). A read larger than one (joined
    // across many gaps) gets a buffer of its own.
    const bufferBytes = readBufferBytes(endBytes - beginBytes);
    const buffer = endBytes - beginBytes <= bufferBytes ? (this.#readBuffers.get(bufferBytes)?.pop() ?? new Uint8Array(new SharedArrayBuffer(bufferBytes))) : undefined;
    try {
      let bytes: Uint8Array;
      try {
        bytes = await this.#store.getRange(key, beginBytes, endBytes, buffer);
      } catch (error) {
        if (isThinError(error, 'THIN_NOT_FOUND')) throw corrupt(describe(group[0]!.refIndex), `its pack ${key} is missing`, error);
        throw error;
      }
      const items: DecodeItem[] = [];
      for (const read of group) {
        const { location } = read;
        const begin = location.offsetBytes - beginBytes;
        if (begin + location.storedBytes > bytes.length) {
          const sizeBytes = bytes.length > 0 ? beginBytes + bytes.length : await this.#objectSize(key);
          const size = sizeBytes === undefined ? 'now missing' : `${sizeBytes} bytes`;
          throw corrupt(describe(read.refIndex), `its pack ${key} is truncated (${size}; this chunk needs at least ${location.offsetBytes + location.storedBytes})`);
        }
        const zstd = (location.flags & CHUNK_FLAG_ZSTD) !== 0;
        items.push({ beginBytes: begin, storedBytes: location.storedBytes, rawBytes: location.rawBytes, zstd, frameOffsetBytes: location.frameOffsetBytes, hash: refs[read.refIndex]!.hash });
      }
      const groupTargets = targets === undefined ? undefined : group.map((read) => targets[read.refIndex]!);
      const outcome = await this.#decoder.decode(bytes, items, groupTargets);
      if ('failedItem' in outcome) {
        // F-AR-CHUNK-1: a chunk's name is the SHA-256 of its raw bytes; anything else is damage.
        const read = group[outcome.failedItem]!;
        const inFrame = read.location.frameOffsetBytes === 0 ? '' : ` (byte ${read.location.frameOffsetBytes} of the zstd frame there)`;
        throw corrupt(describe(read.refIndex), `damaged in pack ${key} at byte ${read.location.offsetBytes}${inFrame}: ${outcome.message}`);
      }
      let at = 0;
      for (const [position, read] of group.entries()) {
        const target = groupTargets?.[position];
        const rawBytes = read.location.rawBytes;
        if (target === undefined) results[read.refIndex] = outcome.raw.subarray(at, at + rawBytes);
        else {
          // A decoder on another thread hands the chunks back end to end.
          if (outcome.raw.length > 0) target.set(outcome.raw.subarray(at, at + rawBytes));
          results[read.refIndex] = target;
        }
        at += rawBytes;
      }
    } finally {
      if (buffer !== undefined) {
        const free = this.#readBuffers.get(buffer.length);
        if (free === undefined) this.#readBuffers.set(buffer.length, [buffer]);
        else free.push(buffer);
      }
    }
  }
}
