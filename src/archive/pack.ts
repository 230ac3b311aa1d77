// `thinbd archive pack`: a volume into a stream of the store.
//
// A stream lists the volume's provisioned bytes as runs of chunks, segment by segment
// (docs/format.md "Archive store"). Pack reads only mapped blocks — holes are never read — in
// jobs of ARCHIVE_JOB_BYTES, cuts each into content-defined chunks, names them by SHA-256, and
// compresses and packs only the chunks the store lacks.
//
// With a base (`--delta-from SNAPSHOT`, SNAPSHOT read-only and packed before), the delta walker
// (tools/delta.ts) compares the two volumes' mappings: blocks that map the same data block hold
// the same bytes (copy-on-write never writes a block another volume maps), so the base stream's
// chunks that lie wholly on such blocks, and that the store still has, are reused without reading
// them, and only the rest of each run — the changed blocks, widened to the base's chunk edges — is
// read and chunked. An incremental of a large volume with few changes reads and hashes little more
// than the changes.
//
// The stream root is written once every pack is stored, by an exclusive create of its name, beside
// the last index object (F-AR-ORDER-1): a pack killed at any moment leaves packs and maybe an index
// object that no stream needs (gc removes them, or the next pack reuses their chunks), or a whole
// stream, never a half one.
import { ThinError, assert, isThinError } from '../errors.ts';
import { ARCHIVE_INLINE_BYTES_MAX, ARCHIVE_INLINE_JOBS_IN_FLIGHT_MAX, ARCHIVE_JOB_BYTES, ARCHIVE_JOB_GATHER_BYTES, ARCHIVE_JOBS_IN_FLIGHT_MAX } from '../constants.ts';
import type { MappedRun } from '../pool/volume.ts';
import { DeltaKind, deltaSteps } from '../tools/delta.ts';
import { ZstdCompressor } from '../util/zstd.ts';
import { ChunkReader, PackWriter, type Archive, type LoadedIndex } from './archive.ts';
import { InlineChunkJobs, storeChunk, type ChunkJobs } from './chunk-jobs.ts';
import type { ChunkerParams } from './chunker.ts';
import {
  CHUNK_FLAG_SEGMENT,
  HASH_BYTES,
  encodeSegment,
  encodeStreamRoot,
  hashHex,
  sha256,
  streamKey,
  validStreamName,
  type ChunkRef,
  type Segment,
  type SegmentRef,
  type StreamRoot,
  type StreamRun,
  type StreamSource,
  type StreamStats,
} from './format.ts';
import { runsAsMappings, type PackSource } from './source.ts';

export interface PackBase {
  root: StreamRoot;
  /** The base volume's mappings now (it is read-only, so they are those it had when packed). */
  runs: MappedRun[];
}

export interface PackOptions {
  name: string;
  base?: PackBase;
  /** Where chunking, hashing and compression run (default: this thread), for the store's chunking and level. */
  makeJobs?: (params: ChunkerParams, level: number) => ChunkJobs;
  /** Bytes pack expects to read up to which it works on this thread, not makeJobs' (default ARCHIVE_INLINE_BYTES_MAX). */
  inlineBytesMax?: number;
  /** Bytes read so far, and the bytes pack expects to read. */
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /** Aborting fails the pack with the signal's reason before its next read (a Ctrl-C). */
  signal?: AbortSignal;
  now?: () => Date;
}

interface ByteRange {
  begin: number;
  end: number;
}

/** The volume's mapped bytes as ranges, adjacent runs joined, clipped to its size. */
export function mappedByteRanges(runs: MappedRun[], blockSizeBytes: number, sizeBytes: number): ByteRange[] {
  const ranges: ByteRange[] = [];
  for (const run of runs) {
    const begin = run.virtualBlock * blockSizeBytes;
    const end = Math.min((run.virtualBlock + run.lengthBlocks) * blockSizeBytes, sizeBytes);
    if (end <= begin) continue;
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last.end === begin) last.end = end;
    else ranges.push({ begin, end });
  }
  return ranges;
}

/** Block ranges where the two volumes map the same data blocks (the delta walker's `same`). */
export function sameBlockRanges(baseRuns: MappedRun[], runs: MappedRun[]): ByteRange[] {
  const ranges: ByteRange[] = [];
  for (const step of deltaSteps(runsAsMappings(baseRuns), runsAsMappings(runs))) {
    if (step.kind !== DeltaKind.same) continue;
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last.end === step.begin) last.end += step.length;
    else ranges.push({ begin: step.begin, end: step.begin + step.length });
  }
  return ranges;
}

/** Whether [begin, end) lies inside one of `ranges` (sorted, disjoint, half-open). */
export function coveredBy(ranges: ReadonlyArray<{ begin: number; end: number }>, begin: number, end: number): boolean {
  let low = 0;
  let high = ranges.length - 1;
  while (low <= high) {
    const middle = (low + high) >>> 1;
    const range = ranges[middle]!;
    if (range.end <= begin) low = middle + 1;
    else if (range.begin > begin) high = middle - 1;
    else return end <= range.end;
  }
  return false;
}

/** Whether source matches the volume a stream was packed from. */
export function sameVolume(a: StreamSource, b: StreamSource): boolean {
  return a.poolId === b.poolId && a.volumeId === b.volumeId && a.volumeCreatedAt === b.volumeCreatedAt;
}

/**
 * The newest stream packed from `base` (a read-only volume, then and now: F-AR-STREAM-3), for --delta-from.
 * THIN_NOT_FOUND or THIN_INVALID saying why there is none.
 */
export async function findBaseStream(archive: Archive, base: StreamSource): Promise<StreamRoot> {
  if (!base.readOnly) {
    throw new ThinError('THIN_INVALID', `--delta-from ${base.volumeName}: the volume is writable, so its blocks may have changed since it was packed; pack against a read-only snapshot ('thinbd snapshot --read-only')`);
  }
  let found: StreamRoot | undefined;
  let writableMatch = false;
  /** A stream whose root cannot be read: it does not say what it was packed from. */
  let damaged: string | undefined;
  for (const name of await archive.streamNames()) {
    let root: StreamRoot;
    try {
      root = await archive.readStream(name);
    } catch (error) {
      if (isThinError(error, 'THIN_NOT_FOUND')) continue; // removed since the listing
      // Any intact stream of the base will do (they hold the same bytes): a damaged one elsewhere does not stop the pack.
      if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE') && !isThinError(error, 'THIN_FORMAT')) throw error;
      damaged ??= name;
      continue;
    }
    if (!sameVolume(root.source, base)) continue;
    if (!root.source.readOnly) {
      writableMatch = true;
      continue;
    }
    if (found === undefined || root.createdAt > found.createdAt) found = root;
  }
  if (found !== undefined) return found;
  if (writableMatch) throw new ThinError('THIN_INVALID', `--delta-from ${base.volumeName}: it was writable when it was packed, so it cannot be a base`);
  const unknown = damaged === undefined ? '' : ` (stream ${damaged} is damaged: 'thinbd archive verify' names it)`;
  throw new ThinError('THIN_NOT_FOUND', `--delta-from ${base.volumeName}: no stream in ${archive.url} was packed from this volume; pack it first${unknown}`);
}

interface JobBuffers {
  /** A job's bytes. */
  data: Uint8Array;
  /** Its chunks' zstd frames. */
  out: Uint8Array;
}

interface BaseChunk {
  begin: number;
  end: number;
  ref: ChunkRef;
}

/** Ranges of fresh volume bytes read into one job end to end; `job` resolves to each range's chunks once it started. */
interface GatheredJob {
  ranges: ByteRange[];
  bytes: number;
  job?: Promise<ChunkRef[][]>;
}

/** A piece of a run: a chunk of the base stream reused, or a range of a job. */
type Piece = ChunkRef | { gathered: GatheredJob; range: number };

interface PlannedSegment {
  segment: number;
  runs: ByteRange[];
  planned: Array<{ run: ByteRange; pieces: Piece[] }>;
}

/** A job's chunk refs split by the ranges it held (ending at `rangeEnds` in it); each range ends at a cut. */
export function refsByRange(refs: ChunkRef[], rangeEnds: readonly number[]): ChunkRef[][] {
  const byRange: ChunkRef[][] = [];
  let chunk = 0;
  let offset = 0;
  for (const end of rangeEnds) {
    const first = chunk;
    while (offset < end) {
      offset += refs[chunk]!.rawBytes;
      chunk += 1;
    }
    assert(offset === end, 'a chunk across the end of a range');
    byRange.push(refs.slice(first, chunk));
  }
  assert(chunk === refs.length, 'chunks beyond the last range');
  return byRange;
}

/**
 * THIN_INVALID for a name that is not a stream name, THIN_EXISTS when the store has a stream of
 * that name; else the names of the store's streams.
 */
export async function assertStreamNameFree(archive: Archive, name: string): Promise<string[]> {
  if (!validStreamName(name)) throw new ThinError('THIN_INVALID', `Invalid stream name '${name}': use letters, digits and . _ + - and start with a letter or digit`);
  const names = await archive.streamNames();
  if (names.includes(name)) throw new ThinError('THIN_EXISTS', `A stream named ${name} already exists in ${archive.url}`);
  return names;
}

/**
 * Packs `source` into a new stream named options.name and returns its root. The caller holds a
 * shared store lock.
 */
export async function packStream(archive: Archive, source: PackSource, options: PackOptions): Promise<StreamRoot> {
  const { name, base } = options;
  await assertStreamNameFree(archive, name);
  const startMs = performance.now();
  const now = options.now ?? (() => new Date());
  const { config } = archive;
  const bs = source.blockSizeBytes;
  const segmentBytes = config.segmentBytes;
  assert(segmentBytes % ARCHIVE_JOB_BYTES === 0, 'jobs do not divide segments');
  if (base !== undefined && base.root.blockSizeBytes !== bs) {
    throw new ThinError('THIN_INVALID', `--delta-from: stream ${base.root.name} came from a pool with ${base.root.blockSizeBytes}-byte blocks, this one has ${bs}`);
  }

  const sourceRuns = source.mappedRuns();
  const ranges = mappedByteRanges(sourceRuns, bs, source.sizeBytes);
  const same = base === undefined ? [] : sameBlockRanges(base.runs, sourceRuns);
  const baseSegments = new Map((base?.root.segments ?? []).map((segment) => [segment.index, segment]));
  const mappedBytes = ranges.reduce((sum, range) => sum + range.end - range.begin, 0);
  let expectedBytes = mappedBytes;
  if (base !== undefined) {
    for (const range of same) expectedBytes -= Math.max(0, Math.min(range.end * bs, source.sizeBytes) - range.begin * bs);
  }

  // The jobs first: worker threads start while the index loads. A small pack (an incremental of
  // up to 64 MiB) does its work on this thread: on two cores, worker threads took the bench's
  // incremental no sooner and cost it ~0.1 s more CPU (docs/benchmarks.md, "Archive: the
  // incremental on the main thread").
  const inline = (params: ChunkerParams, level: number) => new InlineChunkJobs(params, level);
  const small = expectedBytes <= (options.inlineBytesMax ?? ARCHIVE_INLINE_BYTES_MAX);
  const makeJobs = small ? inline : (options.makeJobs ?? inline);
  const jobsInFlightMax = small ? ARCHIVE_INLINE_JOBS_IN_FLIGHT_MAX : ARCHIVE_JOBS_IN_FLIGHT_MAX;
  const jobs = makeJobs(config.chunking, config.compression.level);
  let loaded: LoadedIndex;
  try {
    loaded = await archive.loadIndex();
  } catch (error) {
    await jobs.close();
    throw error;
  }
  const { index } = loaded;
  const writer = new PackWriter(archive.store, index, loaded.unindexed);
  const reader = new ChunkReader(archive.store, index);
  const segmentCompressor = new ZstdCompressor(config.compression.level);

  const stats: StreamStats = { mappedBytes, bytesRead: 0, bytesNew: 0, bytesStored: 0, chunkCount: 0, newChunkCount: 0, elapsedMs: 0 };
  const pendingNew = new Set<string>();
  const inFlight = new Set<Promise<unknown>>();
  let failure: unknown;

  const report = () => options.onProgress?.(stats.bytesRead, Math.max(expectedBytes, stats.bytesRead));

  // Job buffers are made once and reused, each with a buffer of the same size for its chunks'
  // frames (shared memory: a worker thread reads a job and writes its frames where they lie). A
  // fresh 8 MiB buffer per job cost 2,048 page faults, which on a virtual machine took longer than
  // reading the bytes into it (docs/benchmarks.md, "Archive"); pages are touched only as far as
  // jobs fill them, so small jobs (an incremental's) touch little.
  const freeBuffers: JobBuffers[] = [];
  const takeBuffers = (): JobBuffers =>
    freeBuffers.pop() ?? { data: new Uint8Array(new SharedArrayBuffer(ARCHIVE_JOB_BYTES)), out: new Uint8Array(new SharedArrayBuffer(ARCHIVE_JOB_BYTES)) };

  /** Reads, chunks and stores volume ranges (one job, end to end in its buffer); resolves to each range's chunk refs. */
  const runJob = async (ranges: ByteRange[]): Promise<ChunkRef[][]> => {
    const bytes = ranges.reduce((sum, range) => sum + range.end - range.begin, 0);
    assert(bytes <= ARCHIVE_JOB_BYTES, 'a job larger than a job buffer');
    const buffers = takeBuffers();
    try {
      return await chunkAndStore(ranges, buffers.data.subarray(0, bytes), buffers.out);
    } finally {
      freeBuffers.push(buffers);
    }
  };

  /** runJob's work, on `ranges` read into `data`; `data` and `out` are free again when it resolves. */
  const chunkAndStore = async (ranges: ByteRange[], data: Uint8Array, out: Uint8Array): Promise<ChunkRef[][]> => {
    const rangeEnds: number[] = [];
    for (const range of ranges) {
      options.signal?.throwIfAborted();
      const at = rangeEnds[rangeEnds.length - 1] ?? 0;
      // The length first: `at + range.end` can pass 2^31, and a sum held as a double, though
      // small again, deoptimized the chunker's loop on this thread ("not a Smi").
      const end = at + (range.end - range.begin);
      await source.read(range.begin, data.subarray(at, end));
      rangeEnds.push(end);
    }
    stats.bytesRead += data.length;
    report();
    const { id, result } = await jobs.chunk(data, rangeEnds);
    const refs: ChunkRef[] = [];
    const fresh: number[] = [];
    for (let chunk = 0; chunk < result.lengths.length; chunk += 1) {
      const hash = result.hashes.subarray(chunk * HASH_BYTES, (chunk + 1) * HASH_BYTES);
      refs.push({ hash, rawBytes: result.lengths[chunk]! });
      if (index.has(hash)) continue;
      const hex = hashHex(hash);
      if (pendingNew.has(hex)) continue; // another job in flight stores it
      pendingNew.add(hex);
      fresh.push(chunk);
    }
    // Adjacent new chunks of a range share a zstd frame (F-AR-CHUNK-2); each is still named and found alone.
    const pieces = (await jobs.compress(id, fresh, out)).map((piece) => ({ ...piece, chunks: piece.chunks.map(({ position, frameOffsetBytes }) => ({ ...refs[fresh[position]!]!, frameOffsetBytes })) }));
    await writer.addPieces(pieces);
    for (const piece of pieces) {
      for (const chunk of piece.chunks) {
        pendingNew.delete(hashHex(chunk.hash));
        stats.bytesNew += chunk.rawBytes;
        stats.newChunkCount += 1;
      }
      stats.bytesStored += piece.stored.length;
    }
    return refsByRange(refs, rangeEnds);
  };

  /** Starts a job once fewer than the maximum are in flight; `job` resolves to each range's refs. */
  const startJob = async (ranges: ByteRange[]): Promise<{ job: Promise<ChunkRef[][]> }> => {
    while (inFlight.size >= jobsInFlightMax) await Promise.race(inFlight);
    if (failure !== undefined) throw failure;
    const job = runJob(ranges);
    const tracked = job.then(
      () => undefined,
      (error: unknown) => {
        failure ??= error;
      },
    );
    inFlight.add(tracked);
    void tracked.finally(() => inFlight.delete(tracked));
    return { job };
  };

  // Fresh bytes are gathered into jobs of up to ARCHIVE_JOB_BYTES, several ranges to a job: an
  // incremental's changed runs are a few hundred KiB each, and a job apiece cost two round trips
  // to a worker thread per run, which kept the workers and this thread waiting on each other
  // (docs/benchmarks.md, "Archive: the incremental's pipeline"). Each range is still cut alone,
  // so the chunks are those of a job per range.
  let gathering: GatheredJob | undefined;

  /** Adds fresh bytes [begin, end) to the job being gathered, started first when they would not fit in it. */
  const gather = async (begin: number, end: number, into: Piece[]) => {
    if (gathering !== undefined && gathering.bytes + end - begin > ARCHIVE_JOB_GATHER_BYTES) await startGathered();
    gathering ??= { ranges: [], bytes: 0 };
    into.push({ gathered: gathering, range: gathering.ranges.length });
    gathering.ranges.push({ begin, end });
    gathering.bytes += end - begin;
  };

  /** Starts the job being gathered, if any. */
  const startGathered = async () => {
    const gathered = gathering;
    if (gathered === undefined) return;
    gathering = undefined;
    gathered.job = (await startJob(gathered.ranges)).job;
  };

  /** Fresh bytes [begin, end) into jobs, cut at multiples of ARCHIVE_JOB_BYTES. */
  const freshJobs = async (begin: number, end: number, into: Piece[]) => {
    for (let position = begin; position < end; ) {
      const jobEnd = Math.min(end, (Math.floor(position / ARCHIVE_JOB_BYTES) + 1) * ARCHIVE_JOB_BYTES);
      await gather(position, jobEnd, into);
      position = jobEnd;
    }
  };

  /** A segment of the base stream; a damaged or missing one is THIN_CORRUPT_ARCHIVE saying that a full pack does without it. */
  const readBaseSegment = async (ref: SegmentRef): Promise<Segment> => {
    try {
      return await archive.readSegment(reader, base!.root, ref);
    } catch (error) {
      if (!isThinError(error, 'THIN_CORRUPT_ARCHIVE')) throw error;
      throw new ThinError('THIN_CORRUPT_ARCHIVE', `--delta-from: ${(error as Error).message}; a full pack (without --delta-from) does not read stream ${base!.root.name}`, { cause: error });
    }
  };

  /** Plans a segment: its runs as pieces, base chunks reused where the volumes share blocks, jobs for the rest. */
  const planSegment = async (segment: number, runs: ByteRange[]): Promise<PlannedSegment> => {
    const baseRef = baseSegments.get(segment);
    const baseChunks: BaseChunk[] = [];
    if (baseRef !== undefined && base !== undefined) {
      for (const run of (await readBaseSegment(baseRef)).runs) {
        let position = run.beginBytes;
        for (const ref of run.chunks) {
          baseChunks.push({ begin: position, end: position + ref.rawBytes, ref });
          position += ref.rawBytes;
        }
      }
    }
    const planned: PlannedSegment['planned'] = [];
    let baseAt = 0;
    for (const run of runs) {
      const pieces: Piece[] = [];
      let position = run.begin;
      while (baseAt < baseChunks.length && baseChunks[baseAt]!.end <= run.begin) baseAt += 1;
      for (; baseAt < baseChunks.length && baseChunks[baseAt]!.begin < run.end; baseAt += 1) {
        const chunk = baseChunks[baseAt]!;
        if (chunk.begin < position || chunk.end > run.end) continue;
        if (!coveredBy(same, Math.floor(chunk.begin / bs), Math.ceil(chunk.end / bs))) continue;
        // A chunk the store lost (its pack deleted) is read again, as a full pack would store it:
        // reused, it would make a stream that cannot be unpacked.
        if (!index.has(chunk.ref.hash)) continue;
        // Only for fresh bytes: an await per base chunk reused (thousands a segment) cost a
        // promise and a turn each, and made this loop V8's costliest compile on the main thread.
        if (position < chunk.begin) await freshJobs(position, chunk.begin, pieces);
        pieces.push(chunk.ref);
        position = chunk.end;
      }
      if (position < run.end) await freshJobs(position, run.end, pieces);
      planned.push({ run, pieces });
    }
    return { segment, runs, planned };
  };

  /** Waits for a planned segment's jobs (started by then), then stores the segment. */
  const storeSegment = async ({ segment, runs, planned }: PlannedSegment) => {
    const streamRuns: StreamRun[] = [];
    for (const { run, pieces } of planned) {
      const chunks: ChunkRef[] = [];
      for (const piece of pieces) {
        if (!('gathered' in piece)) chunks.push(piece);
        else {
          assert(piece.gathered.job !== undefined, 'a job awaited before it started');
          chunks.push(...(await piece.gathered.job)[piece.range]!);
        }
      }
      stats.chunkCount += chunks.length;
      streamRuns.push({ beginBytes: run.begin, lengthBytes: run.end - run.begin, chunks });
    }
    if (failure !== undefined) throw failure;
    const encoded = encodeSegment({ index: segment, runs: streamRuns });
    const hash = sha256(encoded);
    if (!index.has(hash)) {
      const { stored, flags } = storeChunk(segmentCompressor, encoded);
      await writer.add(hash, stored, encoded.length, flags | CHUNK_FLAG_SEGMENT);
      stats.bytesStored += stored.length;
    }
    segmentRefs.push({ index: segment, hash, rawBytes: encoded.length, mappedBytes: runs.reduce((sum, run) => sum + run.end - run.begin, 0) });
  };

  const segmentRefs: SegmentRef[] = [];
  /** The jobs' end, begun once every job is done. */
  let closing: Promise<void> | undefined;
  try {
    // A segment is stored once the next one is planned (its jobs started), so that the jobs of
    // one segment run while those of the one before finish.
    let previous: PlannedSegment | undefined;
    let rangeIndex = 0;
    while (rangeIndex < ranges.length) {
      const segment = Math.floor(ranges[rangeIndex]!.begin / segmentBytes);
      const segmentBegin = segment * segmentBytes;
      const segmentEnd = segmentBegin + segmentBytes;
      // This segment's runs: the ranges (or parts of them) inside it.
      const runs: ByteRange[] = [];
      while (rangeIndex < ranges.length && ranges[rangeIndex]!.begin < segmentEnd) {
        const range = ranges[rangeIndex]!;
        runs.push({ begin: Math.max(range.begin, segmentBegin), end: Math.min(range.end, segmentEnd) });
        if (range.end <= segmentEnd) rangeIndex += 1;
        else {
          range.begin = segmentEnd;
          break;
        }
      }
      const planned = await planSegment(segment, runs);
      if (previous !== undefined) {
        await startGathered();
        await storeSegment(previous);
      }
      previous = planned;
    }
    await startGathered();
    if (previous !== undefined) await storeSegment(previous);
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
    // The workers end while the last pack is synced and the stream committed: awaited before,
    // their end took 5–7 ms of an incremental's (docs/benchmarks.md, "Archive: the incremental's
    // start, branch inc2").
    closing = jobs.close();
    await writer.finishPacks();
  } catch (error) {
    await Promise.all(inFlight);
    try {
      await writer.abandon();
    } finally {
      await (closing ?? jobs.close());
    }
    throw error;
  }

  stats.elapsedMs = Math.round(performance.now() - startMs);
  const root: StreamRoot = {
    name,
    createdAt: now().toISOString(),
    sizeBytes: source.sizeBytes,
    blockSizeBytes: bs,
    source: source.identity,
    ...(base === undefined ? {} : { parent: base.root.name }),
    stats,
    segments: segmentRefs,
  };
  // F-AR-STREAM-5: a stream is committed by creating its root, once. Its packs are stored by now;
  // the index object that lists them is written beside it (F-AR-ORDER-1: until it is, pack and
  // unpack find those packs' chunks in their trailers).
  const [committed] = await Promise.all([archive.store.putNew(streamKey(name), encodeStreamRoot(root)), writer.finish(), closing]);
  if (!committed) {
    throw new ThinError('THIN_EXISTS', `A stream named ${name} was committed to ${archive.url} while this pack ran; this pack's chunks stay for gc to collect`);
  }
  return root;
}
