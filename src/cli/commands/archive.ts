// thinbd archive init | pack | list | unpack | verify | rm | gc — deduplicated, compressed
// archives of volumes in a directory or an S3 bucket (src/archive).
import type { Command } from '@commander-js/extra-typings';
import type { Reporter } from '../report.ts';
import { UsageError, formatTable } from '../report.ts';
import { poolDirectory, poolOption, sizeOption, volumeName } from '../options.ts';
import { assertPoolExists, liveService, withPinnedView, withPool } from '../pool-access.ts';
import type { PoolService } from '../../daemon/service.ts';
import { poolSources, viewSources, type PackAccess, type PackSources } from '../../archive/source.ts';
import { formatSize } from '../sizes.ts';
import { catchInterrupts } from '../interrupt.ts';
import { growingProgress } from '../progress.ts';
import { ThinError } from '../../errors.ts';
import {
  ARCHIVE_CHUNK_AVERAGE_BYTES_DEFAULT,
  ARCHIVE_CHUNK_AVERAGE_BYTES_MAX,
  ARCHIVE_CHUNK_AVERAGE_BYTES_MIN,
  ARCHIVE_ZSTD_LEVEL_DEFAULT,
} from '../../constants.ts';
import { defaultStreamName, gcArchive, initArchive, listArchive, packVolume, removeArchiveStream, unpackVolume, verifyArchive, type PackResult } from '../../archive/commands.ts';
import { snapshotAccess } from '../../archive/pack-snapshot.ts';
import type { StreamSource } from '../../archive/format.ts';
import { WorkerChunkJobs } from '../../archive/chunk-workers.ts';
import type { ChunkerParams } from '../../archive/chunker.ts';
import type { StreamListing } from '../../archive/maintenance.ts';

/** Chunking, hashing, compression and decoding on one worker thread per core. */
const workerJobs = (params: ChunkerParams, level: number): WorkerChunkJobs => new WorkerChunkJobs(params, level);

/** workerJobs for pack: its first jobs are done on this thread while the workers start. */
const packJobs = (params: ChunkerParams, level: number): WorkerChunkJobs => new WorkerChunkJobs(params, level, undefined, { hereUntilReady: true });

const noLockHelp = 'read the store without taking a lock (a store you cannot write: read-only media, another user\'s); a gc running meanwhile can make this fail, never give wrong data';
const storeHelp = 'archive store: a directory or s3://BUCKET/PREFIX (default $THINBD_STORE)';
const endpointHelp = 'S3-compatible endpoint URL (default $AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL, then AWS)';

function storeSpec(option: string | undefined): string {
  const spec = option ?? process.env['THINBD_STORE'];
  if (spec === undefined || spec === '') throw new UsageError('--store: name an archive store (a directory or s3://BUCKET/PREFIX), or set $THINBD_STORE');
  return spec;
}

function streamName(text: string): string {
  return volumeName('stream name', text);
}

/** list's RATIO column: "all shared" for a stream that stored nothing new (its dedupRatio is null), "-" for one with nothing mapped. */
function ratioText(stream: StreamListing): string {
  if (stream.dedupRatio !== null) return `${stream.dedupRatio.toFixed(1)}x`;
  return stream.mappedBytes === 0 ? '-' : 'all shared';
}

function mbps(bytes: number, elapsedMs: number): string {
  return elapsedMs === 0 ? '-' : `${(bytes / 1e6 / (elapsedMs / 1000)).toFixed(0)} MB/s`;
}

export function registerArchiveCommands(program: Command, reporter: Reporter): void {
  const archive = program.command('archive').description('deduplicated, compressed archives of volumes in a directory or S3 (incremental; ship volumes between hosts)');
  const note = (line: string) => reporter.note(line);

  archive
    .command('init')
    .description('create an empty archive store')
    .option('--store <store>', storeHelp)
    .option('--chunk-size <size>', 'average chunk size (a power of two)', String(ARCHIVE_CHUNK_AVERAGE_BYTES_DEFAULT))
    .option('--level <n>', 'zstd compression level', String(ARCHIVE_ZSTD_LEVEL_DEFAULT))
    .option('--endpoint <url>', endpointHelp)
    .option('--json', 'print the result as JSON')
    .action(async (options) => {
      const averageChunkBytes = sizeOption('--chunk-size', options.chunkSize);
      if (averageChunkBytes < ARCHIVE_CHUNK_AVERAGE_BYTES_MIN || averageChunkBytes > ARCHIVE_CHUNK_AVERAGE_BYTES_MAX || (averageChunkBytes & (averageChunkBytes - 1)) !== 0) {
        throw new UsageError(`--chunk-size: ${options.chunkSize} is not a power of two from ${formatSize(ARCHIVE_CHUNK_AVERAGE_BYTES_MIN)} to ${formatSize(ARCHIVE_CHUNK_AVERAGE_BYTES_MAX)}`);
      }
      const zstdLevel = Number(options.level);
      if (!/^-?\d+$/.test(options.level) || zstdLevel < -7 || zstdLevel > 22) throw new UsageError(`--level: '${options.level}' is not a zstd level from -7 to 22`);
      const result = await initArchive({ store: storeSpec(options.store), averageChunkBytes, zstdLevel, ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }) });
      if (options.json === true) reporter.json(result);
      else reporter.out(`Created archive store ${result.url} (chunks of ${formatSize(averageChunkBytes)} on average, zstd level ${zstdLevel})`);
    });

  archive
    .command('pack')
    .description('pack a volume (or read-only snapshot) into a new stream; --delta-from reads only what changed since a snapshot packed before')
    .argument('<volume>', 'volume to pack')
    .addOption(poolOption())
    .option('--store <store>', storeHelp)
    .option('--name <name>', 'stream name (default VOLUME.<UTC time>)')
    .option('--delta-from <snapshot>', 'a read-only snapshot packed before: read only the blocks where the two differ')
    .option('--keep-snapshot', 'keep a read-only snapshot of a writable volume, named as the stream, of the state packed (on a served pool the one it is packed through), to be the --delta-from of the next pack; kept only when the pack succeeds')
    .option('--endpoint <url>', endpointHelp)
    .option('--json', 'print the statistics as JSON')
    .action(async (volumeText, options) => {
      const volume = volumeName('volume name', volumeText);
      const name = options.name === undefined ? undefined : streamName(options.name);
      const deltaFrom = options.deltaFrom === undefined ? undefined : volumeName('--delta-from', options.deltaFrom);
      const store = storeSpec(options.store);
      const progress = growingProgress(`pack ${volume}`);
      {
        const dir = poolDirectory(options.pool);
        assertPoolExists(dir);
        const stream = name ?? defaultStreamName(volume, new Date());
        const keepSnapshot = options.keepSnapshot === true;
        // Ctrl-C, SIGTERM or SIGHUP stops the pack cleanly: the snapshot it reads through is
        // removed (a kill leaves it for a later pack, pack-snapshot.ts).
        const interrupted = catchInterrupts((signal) => `Pack of ${volume} into stream ${stream} interrupted by ${signal}`);
        const pack = (reach: { sources: PackSources } | { access: PackAccess }): Promise<PackResult> =>
          packVolume({
            store,
            ...reach,
            volume,
            makeJobs: packJobs,
            onNote: note,
            onProgress: progress.update,
            name: stream,
            signal: interrupted.signal,
            ...(deltaFrom === undefined ? {} : { deltaFrom }),
            ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
          });
        let result: PackResult;
        try {
          const live = await liveService(dir);
          result = await (live === undefined
            ? packUnserved(dir, volume, stream, keepSnapshot, note, pack)
            : packServed(dir, live, volume, stream, keepSnapshot, note, pack));
        } finally {
          interrupted.release();
          progress.stop();
        }
        if (options.json === true) reporter.json(result);
        else {
          reporter.out(
            `Packed ${volume} into stream ${result.stream}${result.parent === undefined ? '' : ` (delta from ${result.parent})`}: ` +
              `read ${formatSize(result.bytesRead)} of ${formatSize(result.mappedBytes)} mapped, ${formatSize(result.bytesNew)} new, ` +
              `${formatSize(result.bytesStored)} stored, ${(result.elapsedMs / 1000).toFixed(1)} s, ${mbps(result.bytesRead, result.elapsedMs)}`,
          );
        }
      }
    });

  archive
    .command('list')
    .description('the streams of a store: name, volume size, bytes read, stored, dedup ratio, parent, time')
    .option('--store <store>', storeHelp)
    .option('--endpoint <url>', endpointHelp)
    .option('--json', 'print as JSON')
    .action(async (options) => {
      const listing = await listArchive({ store: storeSpec(options.store), ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }) });
      if (options.json === true) {
        reporter.json(listing);
        return;
      }
      const rows = listing.streams.map((stream) => [
        stream.name,
        formatSize(stream.sizeBytes),
        formatSize(stream.mappedBytes),
        formatSize(stream.bytesRead),
        formatSize(stream.bytesStored),
        ratioText(stream),
        stream.parent ?? '-',
        stream.createdAt,
      ]);
      for (const line of formatTable(['NAME', 'SIZE', 'MAPPED', 'READ', 'STORED', 'RATIO', 'PARENT', 'CREATED'], rows)) reporter.out(line);
      for (const damaged of listing.damaged) reporter.note(`damaged: ${damaged.problem}`);
      reporter.out(`${listing.streams.length} streams; ${listing.packCount} packs, ${formatSize(listing.packBytes)} stored in ${listing.url}`);
    });

  archive
    .command('unpack')
    .description('unpack a stream into a volume: a new one, or an existing one where only differing blocks are written and ranges unmapped in the stream are discarded')
    .argument('<name>', 'stream name')
    .argument('<volume>', 'volume to write (created when absent)')
    .addOption(poolOption())
    .option('--store <store>', storeHelp)
    .option('--endpoint <url>', endpointHelp)
    .option('--json', 'print the statistics as JSON')
    .option('--no-lock', noLockHelp)
    .action(async (nameText, volumeText, options) => {
      const stream = streamName(nameText);
      const volume = volumeName('volume name', volumeText);
      const store = storeSpec(options.store);
      const progress = growingProgress(`unpack ${stream}`);
      const result = await withPool(poolDirectory(options.pool), 'write', (pool) =>
        unpackVolume({ store, pool, stream, volume, noLock: !options.lock, makeJobs: workerJobs, onNote: note, onProgress: progress.update, ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }) }),
      ).finally(progress.stop);
      if (options.json === true) reporter.json(result);
      else {
        reporter.out(
          `Unpacked stream ${stream} into ${result.volumeCreated ? 'new ' : ''}volume ${volume}: ${formatSize(result.bytesWritten)} written, ` +
            `${formatSize(result.bytesUnchanged)} already there, ${formatSize(result.bytesDiscarded)} discarded, ${(result.elapsedMs / 1000).toFixed(1)} s`,
        );
      }
    });

  archive
    .command('verify')
    .description('re-read and re-hash every chunk the streams (or one stream) need; exit 1 naming each problem')
    .argument('[name]', 'stream name (default: every stream)')
    .option('--store <store>', storeHelp)
    .option('--endpoint <url>', endpointHelp)
    .option('--json', 'print the report as JSON')
    .option('--no-lock', noLockHelp)
    .action(async (nameText, options) => {
      const stream = nameText === undefined ? undefined : streamName(nameText);
      const report = await verifyArchive({ store: storeSpec(options.store), noLock: !options.lock, makeJobs: workerJobs, onNote: note, ...(stream === undefined ? {} : { stream }), ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }) });
      if (options.json === true) reporter.json(report);
      else {
        for (const problem of report.problems) reporter.out(problem);
        reporter.out(`${report.streamsChecked} streams, ${report.chunksChecked} chunks (${formatSize(report.bytesChecked)}) checked: ${report.problems.length === 0 ? 'intact' : `${report.problems.length} problems`}`);
      }
      if (report.problems.length > 0) {
        throw new ThinError('THIN_CORRUPT_ARCHIVE', `${report.problems.length} problems in ${storeSpec(options.store)}; the first: ${report.problems[0]}`);
      }
    });

  archive
    .command('rm')
    .description("remove a stream (its chunks stay until 'archive gc')")
    .argument('<name>', 'stream name')
    .option('--store <store>', storeHelp)
    .option('--endpoint <url>', endpointHelp)
    .action(async (nameText, options) => {
      const stream = streamName(nameText);
      await removeArchiveStream({ store: storeSpec(options.store), stream, onNote: note, ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }) });
      reporter.out(`Removed stream ${stream}; 'thinbd archive gc' reclaims its chunks`);
    });

  archive
    .command('gc')
    .description('delete packs no stream needs (and rewrite mostly dead ones); needs the store alone')
    .option('--store <store>', storeHelp)
    .option('--endpoint <url>', endpointHelp)
    .option('--json', 'print the report as JSON')
    .action(async (options) => {
      const report = await gcArchive({ store: storeSpec(options.store), onNote: note, ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }) });
      if (options.json === true) reporter.json(report);
      else {
        reporter.out(
          `gc: ${report.packsDeleted} packs deleted, ${report.packsRewritten} rewritten into ${report.packsWritten}; ` +
            `${formatSize(report.bytesBefore)} -> ${formatSize(report.bytesAfter)} stored for ${report.streams} streams` +
            (report.temporariesRemoved > 0 ? `; ${report.temporariesRemoved} unfinished writes of killed packs dropped` : ''),
        );
      }
    });
}

type Pack = (reach: { sources: PackSources } | { access: PackAccess }) => Promise<PackResult>;

/**
 * Pack from a pool `thinbd serve` owns: the volumes are read from a generation the server pins
 * (docs/format.md "Pinned generations") while clients write. A writable volume is packed through
 * a read-only snapshot taken for it, named as the stream (src/archive/pack-snapshot.ts): removed
 * after the pack, or kept with --keep-snapshot to be the --delta-from of the next one.
 */
async function packServed(dir: string, live: PoolService, volume: string, stream: string, keepSnapshot: boolean, note: (line: string) => void, pack: Pack): Promise<PackResult> {
  try {
    const [volumes, status] = await Promise.all([live.listVolumes(), live.status()]);
    const identify = (name: string): StreamSource => {
      const listed = volumes.find((entry) => entry.name === name);
      if (listed === undefined) throw new ThinError('THIN_NOT_FOUND', `No volume named ${name}`);
      return { poolId: status.poolId, volumeId: listed.id, volumeName: listed.name, volumeCreatedAt: listed.createdAt, readOnly: listed.readOnly };
    };
    return await pack({
      access: snapshotAccess({
        pool: live,
        volumes,
        identify,
        volume,
        stream,
        keep: keepSnapshot,
        onNote: note,
        withSources: (work) => withPinnedView(dir, live, (view) => work(viewSources(view))),
      }),
    });
  } finally {
    await live.close();
  }
}

/**
 * Pack from a pool this process opens, which holds its lock: nothing changes the volume while it
 * is read. With --keep-snapshot, a writable volume is packed through a read-only snapshot of it
 * named as the stream, as on a served pool, and the snapshot is kept (the pool is opened for
 * writing then).
 */
async function packUnserved(dir: string, volume: string, stream: string, keepSnapshot: boolean, note: (line: string) => void, pack: Pack): Promise<PackResult> {
  if (!keepSnapshot) return withPool(dir, 'read', (pool) => pack({ sources: poolSources(pool) }));
  const { LocalPoolService } = await import('../../daemon/service.ts');
  return withPool(dir, 'write', (pool) => {
    const sources = poolSources(pool);
    return pack({
      access: snapshotAccess({
        pool: new LocalPoolService(pool, { closePool: false }),
        volumes: pool.list(),
        identify: (name) => sources(name).identity,
        volume,
        stream,
        keep: true,
        onNote: note,
        withSources: (work) => work(sources),
      }),
    });
  });
}
