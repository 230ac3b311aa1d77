// The archive commands as library calls, one per `thinbd archive` subcommand: each opens the
// store, takes the lock its work needs (locks.ts), runs, and closes the store.
import { ThinError, assert, isThinError } from '../errors.ts';
import type { Pool } from '../pool/pool.ts';
import { Archive } from './archive.ts';
import type { ChunkJobs } from './chunk-jobs.ts';
import type { ChunkerParams } from './chunker.ts';
import type { StreamRoot, StreamSource } from './format.ts';
import { lockStore, type LockKind } from './locks.ts';
import { collectGarbage, listStore, removeStream, storedRatio, verifyStore, type GcReport, type StoreListing, type VerifyReport } from './maintenance.ts';
import { assertStreamNameFree, findBaseStream, packStream, sameVolume } from './pack.ts';
import type { PackAccess, PackSources } from './source.ts';
import type { OpenStoreOptions } from './open-store.ts';
import { unpackStream, type UnpackResult } from './unpack.ts';

export interface StoreOptions extends OpenStoreOptions {
  store: string;
  onNote?: (line: string) => void;
}

/**
 * For the commands that only read the store (unpack, verify): take no lock, as for a store the
 * user cannot write (another user's, read-only media; restic's --no-lock). A gc running meanwhile
 * can then make the command fail on a chunk it removed, never give other bytes: every chunk is
 * checked against its hash.
 */
export interface ReadOnlyStoreOptions extends StoreOptions {
  noLock?: boolean;
}

/** The commands that only read the store, which may run without a lock. */
const READERS: ReadonlySet<string> = new Set(['unpack', 'verify']);

async function withArchive<T>(options: ReadOnlyStoreOptions, lock: LockKind | undefined, command: string, work: (archive: Archive) => Promise<T>): Promise<T> {
  assert(options.noLock !== true || READERS.has(command), `${command} without a lock`);
  const archive = await Archive.open(options.store, options);
  try {
    const held = lock === undefined || options.noLock === true ? undefined : await lockStore(archive.store, lock, command, options.onNote).catch((error: unknown) => {
      if (!READERS.has(command) || !(error instanceof ThinError) || error.code === 'THIN_BUSY') throw error;
      throw new ThinError(error.code, `${error.message} (${command} writes a lock into the store first; '--no-lock' reads a store that cannot be written without one)`, { cause: error });
    });
    try {
      return await work(archive);
    } finally {
      await held?.release();
    }
  } finally {
    await archive.close();
  }
}

export interface InitResult {
  url: string;
  id: string;
  averageChunkBytes: number;
  zstdLevel: number;
}

export async function initArchive(options: StoreOptions & { averageChunkBytes: number; zstdLevel: number }): Promise<InitResult> {
  const archive = await Archive.init(options.store, options);
  try {
    return { url: archive.url, id: archive.config.id, averageChunkBytes: archive.config.chunking.averageBytes, zstdLevel: archive.config.compression.level };
  } finally {
    await archive.close();
  }
}

export interface PackCommandOptions extends StoreOptions {
  /** Where the volumes come from: a pool this process opened (poolSources) or a pinned view (viewSources). */
  sources?: PackSources;
  /** Instead of sources: volumes reached through a snapshot taken once the checks passed. */
  access?: PackAccess;
  volume: string;
  /** Default: VOLUME.<UTC time>. */
  name?: string;
  deltaFrom?: string;
  makeJobs?: (params: ChunkerParams, level: number) => ChunkJobs;
  /** PackOptions.inlineBytesMax. */
  inlineBytesMax?: number;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  /** PackOptions.signal: a pack aborted fails, removing the snapshot it read through. */
  signal?: AbortSignal;
}

export interface PackResult {
  stream: string;
  volume: string;
  parent?: string;
  sizeBytes: number;
  mappedBytes: number;
  bytesRead: number;
  bytesNew: number;
  bytesStored: number;
  /** Raw bytes of new chunks per byte stored (compression); null when nothing was stored (storedRatio). */
  compressionRatio: number | null;
  /** Mapped bytes per byte stored (dedup and compression together); null when nothing was stored. */
  dedupRatio: number | null;
  chunkCount: number;
  newChunkCount: number;
  elapsedMs: number;
  /** Bytes read per second, in MB (10^6). */
  readMBps: number;
}

export function defaultStreamName(volume: string, now: Date): string {
  const stamp = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${volume.slice(0, 128 - stamp.length - 1)}.${stamp}`;
}

/** Reads `volume` of `sources` as it is. */
function directAccess(sources: PackSources, volume: string): PackAccess {
  return { identify: (name) => sources(name).identity, read: (work) => work(sources, volume) };
}

/** The identity of the --delta-from volume; THIN_NOT_FOUND naming the option. */
function deltaFromIdentity(access: PackAccess, name: string): StreamSource {
  try {
    return access.identify(name);
  } catch (error) {
    if (isThinError(error, 'THIN_NOT_FOUND')) throw new ThinError('THIN_NOT_FOUND', `--delta-from: no volume named ${name}`, { cause: error });
    throw error;
  }
}

/**
 * Everything that can be checked without reading the volume is checked first (the store, the
 * stream name, --delta-from), so that a pack refused takes no snapshot (PackAccess).
 */
export async function packVolume(options: PackCommandOptions): Promise<PackResult> {
  assert((options.sources === undefined) !== (options.access === undefined), 'packVolume takes sources or access');
  const access = options.access ?? directAccess(options.sources!, options.volume);
  const name = options.name ?? defaultStreamName(options.volume, new Date());
  const volumeIdentity = access.identify(options.volume);
  return await withArchive(options, 'shared', 'pack', async (archive) => {
    const storedStreams = await assertStreamNameFree(archive, name);
    let baseRoot: StreamRoot | undefined;
    if (options.deltaFrom !== undefined) {
      const baseIdentity = deltaFromIdentity(access, options.deltaFrom);
      if (baseIdentity.volumeId === volumeIdentity.volumeId) throw new ThinError('THIN_INVALID', `--delta-from ${options.deltaFrom} is the volume being packed`);
      baseRoot = await findBaseStream(archive, baseIdentity);
    }
    const root = await access.read(async (sources, packed) => {
      const source = sources(packed);
      let base: { root: StreamRoot; runs: ReturnType<typeof source.mappedRuns> } | undefined;
      if (options.deltaFrom !== undefined) {
        const baseSource = sources(options.deltaFrom);
        // Checked before the snapshot; the same volume still (not one made since under its name)?
        if (!sameVolume(baseSource.identity, baseRoot!.source)) throw new ThinError('THIN_INVALID', `--delta-from ${options.deltaFrom} was replaced by another volume while the pack started`);
        base = { root: baseRoot!, runs: baseSource.mappedRuns() };
      }
      return packStream(archive, source, {
        name,
        ...(base === undefined ? {} : { base }),
        ...(options.makeJobs === undefined ? {} : { makeJobs: options.makeJobs }),
        ...(options.inlineBytesMax === undefined ? {} : { inlineBytesMax: options.inlineBytesMax }),
        ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      });
    }, storedStreams);
    const { stats } = root;
    return {
      stream: root.name,
      volume: options.volume,
      ...(root.parent === undefined ? {} : { parent: root.parent }),
      sizeBytes: root.sizeBytes,
      mappedBytes: stats.mappedBytes,
      bytesRead: stats.bytesRead,
      bytesNew: stats.bytesNew,
      bytesStored: stats.bytesStored,
      compressionRatio: storedRatio(stats.bytesNew, stats.bytesStored),
      dedupRatio: storedRatio(stats.mappedBytes, stats.bytesStored),
      chunkCount: stats.chunkCount,
      newChunkCount: stats.newChunkCount,
      elapsedMs: stats.elapsedMs,
      readMBps: stats.elapsedMs === 0 ? 0 : stats.bytesRead / 1e6 / (stats.elapsedMs / 1000),
    };
  });
}

export interface UnpackCommandOptions extends ReadOnlyStoreOptions {
  pool: Pool;
  stream: string;
  volume: string;
  /** Where chunks are decompressed and checked (default: this thread). */
  makeJobs?: (params: ChunkerParams, level: number) => ChunkJobs;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}

/** The store's chunk jobs for the work, closed after it. */
async function withJobs<T>(archive: Archive, makeJobs: ((params: ChunkerParams, level: number) => ChunkJobs) | undefined, work: (jobs: ChunkJobs | undefined) => Promise<T>): Promise<T> {
  const jobs = makeJobs?.(archive.config.chunking, archive.config.compression.level);
  try {
    return await work(jobs);
  } finally {
    await jobs?.close();
  }
}

export async function unpackVolume(options: UnpackCommandOptions): Promise<UnpackResult & { writeMBps: number }> {
  return await withArchive(options, 'shared', 'unpack', async (archive) => {
    const root = await archive.readStream(options.stream);
    const result = await withJobs(archive, options.makeJobs, (decoder) =>
      unpackStream(archive, root, options.pool, options.volume, {
        ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
        ...(options.onNote === undefined ? {} : { onNote: options.onNote }),
        ...(decoder === undefined ? {} : { decoder }),
      }),
    );
    return { ...result, writeMBps: result.elapsedMs === 0 ? 0 : result.mappedBytes / 1e6 / (result.elapsedMs / 1000) };
  });
}

export async function listArchive(options: StoreOptions): Promise<StoreListing> {
  return await withArchive(options, undefined, 'list', (archive) => listStore(archive));
}

export async function verifyArchive(
  options: ReadOnlyStoreOptions & { stream?: string; onProgress?: (done: number, total: number) => void; makeJobs?: (params: ChunkerParams, level: number) => ChunkJobs },
): Promise<VerifyReport> {
  return await withArchive(options, 'shared', 'verify', (archive) =>
    withJobs(archive, options.makeJobs, (decoder) =>
      verifyStore(archive, {
        ...(options.stream === undefined ? {} : { name: options.stream }),
        ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
        ...(decoder === undefined ? {} : { decoder }),
      }),
    ),
  );
}

export async function removeArchiveStream(options: StoreOptions & { stream: string }): Promise<void> {
  await withArchive(options, 'shared', 'rm', (archive) => removeStream(archive, options.stream));
}

export async function gcArchive(options: StoreOptions): Promise<GcReport> {
  return await withArchive(options, 'exclusive', 'gc', (archive) => collectGarbage(archive, options.onNote));
}
