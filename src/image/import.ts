// thinbd image import: an archive (a flat root file system tar, a `docker save` archive or an OCI
// layout; plain, gzip or zstd; from a file, stdin, http(s) or S3) becomes a read-only volume
// holding ext4, without root, a mount, or a copy of the tree on the host (docs/image.md).
//
// The volume is built under a temporary name: file data streams into it as the archive is read,
// the file system's metadata is written at the end, and only then is it renamed to NAME, made
// read-only and labelled. A failure at any point removes what the import made, so the pool is as
// it was (list and check agree).
//
// Images store shared bytes once (docs/image.md "Sharing"), two ways. Every whole pool block of
// file data is looked up by content among the images already in the pool and, when one holds the
// same bytes, mapped to that data block instead of written (block-sharing.ts): files in common
// between any images, flat tars and streams included. And after each
// layer of a docker/OCI image, a read-only snapshot of the volume so far is kept as a layer volume
// named after the layers' chain id. File data is laid out in a fixed, deterministic way, so a
// later image whose first k layers are those finds the layer volume, starts as a snapshot of it,
// and only checks (reads and hashes) those layers instead of writing them again. That needs the
// layer order before the layers, which random access gives (a local file: the archive's index is
// read first). A stream (stdin, a compressed archive) is read once in archive order; its layers
// are applied in the manifest's order at the end and its data is not shared.
import { createHash, randomBytes } from 'node:crypto';
import { resolve as resolvePath } from 'node:path';
import { performance } from 'node:perf_hooks';
import { ThinError, isThinError } from '../errors.ts';
import { DATA_BLOCK_SIZE_BYTES_DEFAULT, IMAGE_JSON_BYTES_MAX, IMAGE_WRITES_IN_FLIGHT_MAX, IMAGE_WRITE_BUFFER_BYTES, VOLUME_NAME_LENGTH_MAX } from '../constants.ts';
import { dataReserveBlocks } from '../pool/allocator.ts';
import type { Pool } from '../pool/pool.ts';
import type { Volume } from '../pool/volume.ts';
import { applyLayerChanges, applyTar, type ApplyContext, type TreeChange } from './apply.ts';
import { BufferPool, WriteQueue, type BlockTarget } from './block-target.ts';
import { BLOCK_INDEX_VOLUME, BlockIndex, SharingTarget } from './block-sharing.ts';
import { ByteInput, type ChunkSource } from './byte-input.ts';
import { DataStream, NO_SPACE_HEADING } from './data-stream.ts';
import { BLOCK_SIZE_BYTES } from './ext4/format.ts';
import { DATA_BEGIN_BLOCK, FS_BLOCKS_MAX } from './ext4/geometry.ts';
import { writeFilesystem, type FilesystemOptions, type FilesystemSummary } from './ext4/writer.ts';
import { chainIds, describeImageArchive, isArchiveRoot, looksLikeImageArchivePath, normalizeArchivePath, type ImageDescription, type JsonReader } from './oci.ts';
import { decompressChunks, detectCompression, isPathSource, openSource, type Compression, type OpenedSource, type SourceOpeners } from './source.ts';
import type { LocalFile } from './background-hash.ts';
import { ParseThread, parseOnThread } from './parse-thread.ts';
import { NotTarError, TarReader, drainTrailer, type TarEntry } from './tar.ts';
import { FsTree, displayPath } from './tree.ts';
import { WriteBackPacer } from './write-back.ts';
import { MappedBlockCounter } from './mapped-blocks.ts';

export type ImageFormat = 'auto' | 'tar' | 'oci';

/** Labels thinbd keeps on image and layer volumes (docs/image.md). */
export const IMAGE_LABELS = {
  source: 'thinbd.image.source',
  digest: 'thinbd.image.digest',
  format: 'thinbd.image.format',
  files: 'thinbd.image.files',
  bytes: 'thinbd.image.bytes',
  layers: 'thinbd.image.layers',
  tags: 'thinbd.image.tags',
  /**
   * On the volume being built, from the change that makes it until it becomes the image: the name
   * it is being built as, so a later import of that name knows a leftover as an import's own.
   */
  importing: 'thinbd.image.importing',
  /**
   * On an image: its own volume id. Snapshots copy labels but get a new id, so a machine made from
   * an image is not taken for one (image ls); a rename keeps the id.
   */
  volumeId: 'thinbd.image.volume-id',
  layerChain: 'thinbd.layer.chain',
  layerDiffId: 'thinbd.layer.diff-id',
  layerDataEnd: 'thinbd.layer.data-end-block',
  layerLayout: 'thinbd.layer.layout',
} as const;

/**
 * The version of the data layout (where each file's data goes): a layer volume is reused only by
 * an import that lays data out the same way.
 */
export const LAYER_LAYOUT_VERSION = `2-${DATA_BEGIN_BLOCK}`;

/**
 * How much more data than the source's bytes the pool's high-water mark is raised over when an
 * import starts: a tar of small files takes more room in 4 KiB blocks than in 512-byte ones (a tar
 * of /usr/share: 1.10x its size with the metadata). A compressed source takes more as it comes.
 */
const HIGH_WATER_MARK_AHEAD_OF_SOURCE = 1.25;

export interface ImageImportOptions {
  /** The volume's size; default: what the image needs plus headroom (docs/image.md). */
  sizeBytes?: number;
  format?: ImageFormat;
  labels?: Record<string, string>;
  /** Source bytes read so far and in all (when known). */
  onProgress?: (doneBytes: number, totalBytes: number | undefined) => void;
  /** Openers for s3:// sources. */
  openers?: SourceOpeners;
  /** A dry run (measureImage): the block size of the pool it counts for (default the pool default, 64 KiB). */
  poolBlockSizeBytes?: number;
  stdin?: NodeJS.ReadableStream;
  /** Wall clock in ms (tests fix it). */
  now?: () => number;
  /** Aborting stops the import between entries (and chunks), removing what it made. */
  signal?: AbortSignal;
  /**
   * A parsing thread started ahead (startParseThreadAhead): a flat tar in a local file is parsed
   * there; the import ends it when it runs it, the caller closes it in any case.
   */
  parseThread?: ParseThread | undefined;
}

export interface ImportedLayer {
  diffId: string;
  /** The layer's data was already in the pool (a layer volume of an earlier import). */
  shared: boolean;
  /** The layer volume holding the image's data up to this layer, when there is one. */
  volume?: string;
}

export interface ImageImportResult {
  name: string;
  source: string;
  format: 'tar' | 'docker' | 'oci';
  compression: Compression;
  digest: string;
  files: number;
  directories: number;
  fileBytes: number;
  sizeBytes: number;
  sourceBytes: number;
  /** File data written to the pool (shared layers' data and shared blocks are not written again). */
  dataBytesWritten: number;
  /** File data found in the pool (whole pool blocks of other images, or of this one) and shared, not written. */
  dataBytesShared: number;
  /** Whole pool blocks of zeros in files, left unmapped. */
  dataBytesZero: number;
  /** Metadata written to the pool (inodes, directories, bitmaps, superblocks...). */
  metadataBytesWritten: number;
  /** Data blocks of the pool the image's volume maps. */
  blocksMapped: number;
  seconds: number;
  /** The process's peak resident set so far (the import's, when it is the process's main work). */
  peakRssBytes: number;
  /** CPU seconds (user and system, every thread) the import took. */
  cpuSeconds: number;
  layers: ImportedLayer[];
}

/** Whether a flat tar is parsed on a second thread (THINBD_IMAGE_PARSE_THREAD=0: on the main thread). */
function parseThreadWanted(): boolean {
  return process.env['THINBD_IMAGE_PARSE_THREAD'] !== '0';
}

/**
 * The parsing thread an import of SOURCE will likely use (a local file that may be a flat tar),
 * started now so that it loads while the pool and the source open (30-40 ms of the import's
 * start otherwise); undefined when no thread would be used. The caller closes it.
 */
export function startParseThreadAhead(source: string, format: ImageFormat): ParseThread | undefined {
  if (format === 'oci' || !parseThreadWanted() || !isPathSource(source)) return undefined;
  return new ParseThread();
}

/** Imports SOURCE into a new read-only volume NAME. */
export async function importImage(pool: Pool, name: string, source: string, options: ImageImportOptions = {}): Promise<ImageImportResult> {
  if (pool.list().some((info) => info.name === name)) throw new ThinError('THIN_EXISTS', `A volume named ${name} already exists`);
  if (name === BLOCK_INDEX_VOLUME) throw new ThinError('THIN_INVALID', `${name} is the name of the image block index an import keeps in the pool: choose another name for the image`);
  return await runImport(pool, name, source, options);
}

/**
 * Reads SOURCE as an import would and builds the file system's metadata, writing nothing
 * anywhere: what the image holds and what importing it would write (image stats --deep).
 */
export async function measureImage(source: string, options: ImageImportOptions = {}): Promise<ImageImportResult> {
  return await runImport(undefined, 'measure', source, options);
}

async function runImport(pool: Pool | undefined, name: string, source: string, options: ImageImportOptions): Promise<ImageImportResult> {
  const started = performance.now();
  const cpuBefore = process.cpuUsage();
  options.signal?.throwIfAborted();
  const opened = await openSource(source, options.openers, options.stdin);
  const build = new ImageBuild(pool, name, opened, recordedSource(source, opened), options);
  // Aborting closes the source, so a read waiting for input (a pipe, a download) ends at once.
  const onAbort = (): void => void opened.close().catch(() => undefined);
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const result = await build.run();
    options.signal?.throwIfAborted();
    const cpu = process.cpuUsage(cpuBefore);
    return { ...result, seconds: (performance.now() - started) / 1000, peakRssBytes: process.resourceUsage().maxRSS * 1024, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
  } catch (error) {
    await build.abort();
    // What the closed source made of the abort (a truncated archive) is not the reason.
    if (options.signal?.aborted === true) throw options.signal.reason;
    if (pool !== undefined && isThinError(error, 'THIN_NO_SPACE')) {
      // The pool's own "No free data block" says nothing of the import; either way, say what to do.
      const message = error.message.startsWith(NO_SPACE_HEADING) ? error.message : `${NO_SPACE_HEADING}: ${error.message}`;
      throw new ThinError('THIN_NO_SPACE', `${message.replace(/\.$/, '')}; the pool is as it was: grow it (thinbd pool resize --data-size) or free space, and import again`, { cause: error });
    }
    throw error;
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    await opened.close().catch(() => undefined);
  }
}

/**
 * What the image's source label records: a local path made absolute (a relative one names nothing
 * once the shell's directory changes), anything else as the source describes itself (a URL,
 * "standard input").
 */
function recordedSource(source: string, opened: OpenedSource): string {
  return isPathSource(source) ? resolvePath(source) : opened.description;
}

/** The file system's metadata, written: what it holds and what writing it took. */
interface BuiltFilesystem {
  summary: FilesystemSummary;
  metadataBytesWritten: number;
}

const TEMPORARY_SUFFIX_BYTES = '.importing-'.length + 8;

/** A temporary name for the volume being built: valid, unlikely to be taken, recognisable. */
function temporaryName(name: string): string {
  const suffix = `.importing-${randomBytes(4).toString('hex')}`;
  return `${name.slice(0, VOLUME_NAME_LENGTH_MAX - suffix.length)}${suffix}`;
}

/** What removeStaleImports found. */
export interface StaleImports {
  /** Left by an import (marked as such, with the name the mark gives): removed. */
  removed: string[];
  /** Named like a temporary volume of NAME but not marked as an import's own: left alone. */
  leftAlone: string[];
}

/** The prefix of the temporary names of an import of `name` (temporaryName). */
function temporaryPrefix(name: string): string {
  return `${name.slice(0, VOLUME_NAME_LENGTH_MAX - TEMPORARY_SUFFIX_BYTES)}.importing-`;
}

/** Whether `volumeName` is a temporary name of an import of `name`. */
function isTemporaryNameOf(volumeName: string, name: string): boolean {
  const prefix = temporaryPrefix(name);
  return volumeName.startsWith(prefix) && /^[0-9a-f]{8}$/.test(volumeName.slice(prefix.length));
}

/**
 * Removes what imports killed before they could clean up left behind (their temporary volumes);
 * the caller holds the pool alone (the CLI's pool lock), so no import is running. Only volumes
 * that carry an import's mark (set in the change that made them) and are named as a temporary
 * volume of the import the mark names are removed, whatever that name: an import killed and
 * never run again under its name would otherwise keep its half-written blocks for good. A volume
 * someone else named the same way is left alone (and named when it is named like one of NAME's);
 * since every import picks a new random temporary name, such a volume never stands in its way.
 */
export async function removeStaleImports(pool: Pool, name: string): Promise<StaleImports> {
  const volumes = pool.list();
  const stale = volumes.filter((info) => {
    const importing = info.labels[IMAGE_LABELS.importing];
    return !info.readOnly && importing !== undefined && isTemporaryNameOf(info.name, importing);
  });
  for (const info of stale) await pool.removeVolume(info.name);
  if (stale.length > 0) await pool.flush();
  const leftAlone = volumes.filter((info) => isTemporaryNameOf(info.name, name) && !stale.includes(info));
  return { removed: stale.map((info) => info.name), leftAlone: leftAlone.map((info) => info.name) };
}

class ImageBuild {
  /** Undefined for a dry run: nothing is created, the writes are only counted (MappedBlockCounter). */
  readonly #pool: Pool | undefined;
  readonly #name: string;
  readonly #opened: OpenedSource;
  /** The source as the image's labels record it (recordedSource). */
  readonly #source: string;
  readonly #options: ImageImportOptions;
  readonly #nowSeconds: number;
  readonly #tree: FsTree;
  readonly #blockSizeBytes: number;
  #temporary: string | undefined;
  #volume: Volume | undefined;
  #queue: WriteQueue | undefined;
  #data: DataStream | undefined;
  #buffers: BufferPool | undefined;
  #sharing: SharingTarget | undefined;
  /** A dry run's target: the pool blocks an import would map. */
  #counter: MappedBlockCounter | undefined;
  #index: BlockIndex | undefined;
  #writeBack: WriteBackPacer | undefined;
  readonly #layerVolumesMade: string[] = [];
  #lastProgressBytes = -1;
  /** Source bytes the parsing thread read (it reads a local file itself). */
  #threadBytesRead = 0;
  /** The first entry's path, when it alone made the source an image archive (--format auto). */
  #detectedBy: string | undefined;

  constructor(pool: Pool | undefined, name: string, opened: OpenedSource, source: string, options: ImageImportOptions) {
    this.#pool = pool;
    this.#name = name;
    this.#opened = opened;
    this.#source = source;
    this.#options = options;
    this.#nowSeconds = Math.floor((options.now ?? Date.now)() / 1000);
    this.#tree = new FsTree(this.#nowSeconds);
    this.#blockSizeBytes = pool?.status().blockSizeBytes ?? options.poolBlockSizeBytes ?? DATA_BLOCK_SIZE_BYTES_DEFAULT;
  }

  /** Source bytes read, by this thread or the parsing thread. */
  #bytesRead(): number {
    return Math.max(this.#opened.bytesRead(), this.#threadBytesRead);
  }

  #progress(): void {
    this.#options.signal?.throwIfAborted();
    const done = this.#bytesRead();
    if (done - this.#lastProgressBytes < 1024 * 1024) return;
    this.#lastProgressBytes = done;
    this.#options.onProgress?.(done, this.#opened.totalBytes);
  }

  get #context(): ApplyContext {
    return { tree: this.#tree, data: this.#data!, onEntry: () => this.#progress() };
  }

  /**
   * Where the data may go: --size or the largest file system (limitBlock), and the pool's free
   * space (newDataLimit: what the import may write, not counting layers it starts from).
   */
  #dataLimit(): { limitBlock: number; limitReason: string; newDataLimit?: { bytes: number; reason: string; sharedBytes?: () => number } } {
    const sizeBytes = this.#options.sizeBytes;
    const limit =
      sizeBytes !== undefined && Math.floor(sizeBytes / BLOCK_SIZE_BYTES) < FS_BLOCKS_MAX
        ? // At most: the metadata after the data (inode tables, journal) needs room too.
          { limitBlock: Math.floor(sizeBytes / BLOCK_SIZE_BYTES), limitReason: `--size ${sizeBytes} leaves at most ${(Math.floor(sizeBytes / BLOCK_SIZE_BYTES) - DATA_BEGIN_BLOCK) * BLOCK_SIZE_BYTES} bytes for data` }
        : { limitBlock: FS_BLOCKS_MAX, limitReason: `the largest file system thinbd writes holds ${FS_BLOCKS_MAX * BLOCK_SIZE_BYTES} bytes` };
    if (this.#pool === undefined) return limit;
    const status = this.#pool.status();
    // What new blocks may take: the pool keeps a reserve back for copy-on-write.
    const freeBytes = Math.max(0, status.dataBlockCount - status.dataBlocksUsed - dataReserveBlocks(status.dataBlockCount)) * status.blockSizeBytes;
    return { ...limit, newDataLimit: { bytes: Math.floor(freeBytes / BLOCK_SIZE_BYTES) * BLOCK_SIZE_BYTES, reason: `the pool has ${freeBytes} bytes of free data space` } };
  }

  /** Makes the volume being built: empty, or a writable snapshot of a layer volume. */
  async #begin(base?: string): Promise<void> {
    let target: BlockTarget;
    if (this.#pool === undefined) {
      // A dry run lays the data out as an import would, and only counts where it would go.
      this.#counter = new MappedBlockCounter(this.#blockSizeBytes);
      target = this.#counter;
    } else {
      const temporary = temporaryName(this.#name);
      const sizeBytes = this.#options.sizeBytes ?? FS_BLOCKS_MAX * BLOCK_SIZE_BYTES;
      // Marked in the change that makes it (no commit between can leave it unmarked); a snapshot of
      // a layer volume does not keep the layer's labels, or a leftover could pass for a layer volume.
      const labels = { [IMAGE_LABELS.importing]: this.#name };
      if (base === undefined) {
        this.#volume = await this.#pool.createVolume(temporary, { sizeBytes, labels });
      } else {
        this.#volume = await this.#pool.snapshot(base, temporary, { labels });
        if (this.#volume.sizeBytes !== sizeBytes) await this.#pool.resizeVolume(temporary, sizeBytes);
      }
      this.#temporary = temporary;
      // The data is written as one stream about as large as the source: the pool's high-water
      // mark is raised over that at once (a quarter more: files padded to whole 4 KiB blocks), not
      // by a commit every 64 MiB that the writes wait for when the host's disk is slow. Not when
      // layers already in the pool are shared: most of the source is then not written.
      if (base === undefined && this.#opened.totalBytes !== undefined) {
        await this.#pool.raiseHighWaterMarkAhead(this.#opened.totalBytes * HIGH_WATER_MARK_AHEAD_OF_SOURCE);
      }
      this.#index = await BlockIndex.load(this.#pool);
      this.#sharing = new SharingTarget(this.#pool, this.#volume, this.#index);
      this.#writeBack = new WriteBackPacer(this.#pool);
      target = this.#writeBack.pacing(this.#sharing);
    }
    this.#queue = new WriteQueue(target, IMAGE_WRITES_IN_FLIGHT_MAX);
    // Room for every write in flight and the two runs the file system writer fills at once.
    this.#buffers = new BufferPool(Math.max(IMAGE_WRITE_BUFFER_BYTES, this.#blockSizeBytes), IMAGE_WRITES_IN_FLIGHT_MAX + 2);
    const limit = this.#dataLimit();
    // Blocks found in the pool and shared take none of its free space (on the parsing thread, whose
    // stream cannot see what this thread shares, they still count: the check errs on refusing).
    const sharing = this.#sharing;
    if (limit.newDataLimit !== undefined && sharing !== undefined) limit.newDataLimit = { ...limit.newDataLimit, sharedBytes: () => sharing.counts.sharedBytes };
    this.#data = new DataStream(this.#queue, {
      beginBlock: DATA_BEGIN_BLOCK,
      ...limit,
      alignBytes: this.#blockSizeBytes,
      buffers: this.#buffers,
    });
  }

  async run(): Promise<Omit<ImageImportResult, 'seconds' | 'peakRssBytes' | 'cpuSeconds'>> {
    const sizeBytes = this.#options.sizeBytes;
    if (sizeBytes !== undefined && sizeBytes <= DATA_BEGIN_BLOCK * BLOCK_SIZE_BYTES) {
      // The data region starts at a fixed 4 MiB (docs/image.md "Layout"), the metadata before it.
      throw new ThinError('THIN_INVALID', `--size ${sizeBytes} is too small: the file system's metadata alone needs more than ${DATA_BEGIN_BLOCK * BLOCK_SIZE_BYTES} bytes`);
    }
    const outer = new TarReader(new ByteInput(this.#opened.chunks));
    // A layout archived from its directory (`tar -C layout -cf image.tar .`) begins with that
    // directory, './': the entry after it tells the format (docker load and podman load read both).
    const leading: TarEntry[] = [];
    let first = await outer.next();
    if (first !== undefined && first.type === 'dir' && isArchiveRoot(first.path)) {
      leading.push(first);
      first = await outer.next();
    }
    const format = this.#options.format ?? 'auto';
    const isArchive = format === 'oci' || (format === 'auto' && first !== undefined && looksLikeImageArchivePath(first.path));
    if (format === 'oci' && (first === undefined || !looksLikeImageArchivePath(first.path))) {
      throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${this.#opened.description} is not a docker save archive or an OCI layout (its first entry is '${first?.path ?? 'none'}')`);
    }
    if (!isArchive) {
      if (this.#pool !== undefined && this.#opened.localFile !== undefined && parseThreadWanted()) {
        const built = await this.#parseOnThread(this.#opened.localFile);
        return this.#complete('tar', `sha256:${await this.#opened.digest()}`, [], [], built);
      }
      this.#opened.startHash();
      await this.#begin();
      await applyTar(outer, this.#context, { stream: '', layered: false, first: first === undefined ? leading : [...leading, first] });
      await drainTrailer(outer);
      return this.#finish('tar', `sha256:${await this.#opened.digest()}`, [], []);
    }
    // An image archive's digest is its config's: the source's own is not computed.
    this.#opened.skipHash();
    if (format === 'auto') this.#detectedBy = first!.path;
    if (this.#opened.ranges !== undefined && this.#opened.compression === 'none') return this.#runIndexed();
    return this.#runStreamed(outer, first!);
  }

  /**
   * A flat tar in a local file, parsed on a second thread (parse-thread.ts), which also builds the
   * tree and the file system's metadata: this thread writes what it fills.
   * THINBD_IMAGE_PARSE_THREAD=0 keeps it all here (for comparing the two).
   */
  async #parseOnThread(file: LocalFile): Promise<BuiltFilesystem> {
    // The source's digest: its worker reads the file itself from now on, beside the parse. Fed
    // from the parsing thread's own reads instead (the file read once), the two threads went in
    // step through a ring of four 1 MiB slots, each waiting whenever the other was off its core:
    // the import took ~7% longer for the ~0.1 s of system time a second read from the page
    // cache costs (docs/benchmarks.md "Image import: the digest reads for itself").
    this.#opened.startHash();
    const limit = this.#dataLimit();
    const parsing = parseOnThread(
      {
        file,
        description: this.#opened.description,
        compression: this.#opened.compression,
        beginBlock: DATA_BEGIN_BLOCK,
        ...limit,
        alignBytes: this.#blockSizeBytes,
        writesInFlight: IMAGE_WRITES_IN_FLIGHT_MAX,
        filesystem: this.#filesystemOptions(),
        bufferBytes: Math.max(IMAGE_WRITE_BUFFER_BYTES, this.#blockSizeBytes),
        buffersMax: IMAGE_WRITES_IN_FLIGHT_MAX + 2,
        signal: this.#options.signal,
      },
      {
        write: async (offsetBytes, bytes, data, bytesRead) => {
          await begun;
          this.#threadBytesRead = bytesRead;
          this.#progress();
          if (data) await this.#sharing!.write(offsetBytes, bytes);
          else await this.#volume!.write(offsetBytes, bytes);
          this.#writeBack!.note(bytes.length);
        },
      },
      this.#options.parseThread,
    );
    // The volume is made while the thread starts or reads its first buffer: that buffer waits for
    // the volume, and a failure waits for both, so abort() sees everything made.
    const begun = this.#begin();
    const [made, parsed] = await Promise.allSettled([begun, parsing]);
    if (made.status === 'rejected') throw made.reason;
    if (parsed.status === 'rejected') throw parsed.reason;
    const result = parsed.value;
    this.#threadBytesRead = result.bytesRead;
    return { summary: result.summary, metadataBytesWritten: result.metadataBytesGiven };
  }

  /** A docker/OCI archive with random access: layers in order, shared with earlier imports. */
  async #runIndexed(): Promise<Omit<ImageImportResult, 'seconds' | 'peakRssBytes' | 'cpuSeconds'>> {
    // The whole-object stream (a download) is not needed: ranged reads take over.
    await this.#opened.chunks.close?.();
    const ranges = this.#opened.ranges!;
    const index = await indexArchive(ranges.read(0, ranges.sizeBytes, 64 * 1024), this.#opened.description);
    const readJson: JsonReader = async (path) => {
      const entry = index.get(path);
      if (entry === undefined) return undefined;
      const bytes = await readAll(ranges.read(entry.dataOffsetBytes, entry.dataOffsetBytes + entry.sizeBytes, 256 * 1024), entry.sizeBytes, path);
      return { value: parseJson(bytes, path), bytes };
    };
    const description = await this.#describe(readJson);
    const chains = chainIds(description.layers.map((layer) => layer.diffId));
    // The deepest layer volume already in the pool.
    let sharedLayers = 0;
    let base: string | undefined;
    const layerVolumes = (this.#pool?.list() ?? []).filter((info) => info.labels[IMAGE_LABELS.layerLayout] === LAYER_LAYOUT_VERSION);
    for (let depth = chains.length; depth > 0 && base === undefined; depth--) {
      const found = layerVolumes.find((info) => info.labels[IMAGE_LABELS.layerChain] === chains[depth - 1]);
      if (found !== undefined) {
        sharedLayers = depth;
        base = found.name;
      }
    }
    await this.#begin(base);
    if (sharedLayers > 0) await this.#data!.startSkipping();
    const layers: ImportedLayer[] = [];
    for (const [position, layer] of description.layers.entries()) {
      const entry = index.get(layer.path);
      if (entry === undefined) throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: the manifest names layer ${layer.path}, which is not in the archive`);
      const streamName = layerName(position, layer.diffId);
      const chunks = ranges.read(entry.dataOffsetBytes, entry.dataOffsetBytes + entry.sizeBytes, 2 * 1024 * 1024);
      const shared = position < sharedLayers;
      this.#tree.layer = position + 1;
      await this.#applyLayer(chunks, streamName, layer.diffId, { placeOnly: shared });
      if (shared && position + 1 === sharedLayers) {
        const expected = layerVolumes.find((info) => info.name === base)!.labels[IMAGE_LABELS.layerDataEnd];
        if (String(this.#data!.cursorBlock) !== expected) {
          throw new ThinError('THIN_IMAGE_INVALID', `Layer volume ${base} does not match ${streamName} (its data ends at block ${expected}, the layer's at ${this.#data!.cursorBlock}); remove it and import again`);
        }
        this.#data!.resumeWriting();
      }
      const volume = shared ? (position + 1 === sharedLayers ? base : undefined) : await this.#keepLayerVolume(chains[position]!, layer.diffId);
      layers.push({ diffId: layer.diffId, shared, ...(volume === undefined ? {} : { volume }) });
    }
    return this.#finish(description.kind, description.configDigest, layers, description.tags);
  }

  /** A docker/OCI archive read once in archive order (a stream): layers applied in order at the end. */
  async #runStreamed(outer: TarReader, first: TarEntry): Promise<Omit<ImageImportResult, 'seconds' | 'peakRssBytes' | 'cpuSeconds'>> {
    await this.#begin();
    const documents = new Map<string, Uint8Array>();
    const aliases = new Map<string, string>();
    const layers = new Map<string, { changes: TreeChange[]; diffId: string } | { error: unknown }>();
    let entry: TarEntry | undefined = first;
    while (entry !== undefined) {
      const path = normalizeArchivePath(entry.path);
      if (entry.type === 'symlink' || entry.type === 'hardlink') {
        // Docker's legacy save links a layer that repeats to its first copy.
        const target = entry.type === 'symlink' ? normalizeArchivePath(joinArchivePath(path, entry.linkPath)) : normalizeArchivePath(entry.linkPath);
        aliases.set(path, target);
      } else if (entry.type === 'file') {
        const head = await peekChunks(outer.dataChunks(entry));
        const named = path.endsWith('.json') || path.endsWith('/json') || path.endsWith('/VERSION') || path === 'oci-layout' || path === 'repositories';
        if (named || (head.first?.[0] === 0x7b && entry.storedBytes <= IMAGE_JSON_BYTES_MAX)) {
          documents.set(path, await readAll(head.chunks, entry.storedBytes, path));
        } else {
          const changes: TreeChange[] = [];
          try {
            const diffId = await this.#applyLayer(head.chunks, `layer ${path}`, undefined, { record: changes });
            layers.set(path, { changes, diffId });
          } catch (error) {
            // A blob that is not a tar is not a layer: an error only if the manifest names it.
            if (!(error instanceof NotTarError)) throw error;
            layers.set(path, { error });
          }
        }
      }
      this.#progress();
      entry = await outer.next();
    }
    await drainTrailer(outer);
    const readJson: JsonReader = async (path) => {
      const bytes = documents.get(path);
      return bytes === undefined ? undefined : { value: parseJson(bytes, path), bytes };
    };
    const description = await this.#describe(readJson);
    const applied = new Set<string>();
    let repeated: string | undefined;
    const imported: ImportedLayer[] = [];
    for (const [position, layer] of description.layers.entries()) {
      let path = layer.path;
      for (let hops = 0; aliases.has(path) && hops < 8; hops++) path = aliases.get(path)!;
      const read = layers.get(path);
      if (read === undefined) throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: the manifest names layer ${layer.path}, which is not in the archive`);
      if ('error' in read) throw read.error;
      if (read.diffId !== layer.diffId) {
        throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${layerName(position, layer.diffId)} (${layer.path}) has content digest ${read.diffId}, not its diff_id ${layer.diffId}`);
      }
      // A layer named twice is applied twice from its one reading: its files' data lies once, which
      // is right unless a file of the first application kept a name (checked below).
      if (applied.has(path) && read.changes.length > 0) repeated ??= layer.path;
      applied.add(path);
      this.#tree.layer = position + 1;
      applyLayerChanges(this.#tree, read.changes);
      imported.push({ diffId: layer.diffId, shared: false });
    }
    const sharing = repeated === undefined ? undefined : this.#tree.filesSharingData();
    if (sharing !== undefined) {
      const how = this.#opened.compression === 'none' ? 'from a file (not a stream)' : `decompressed, from a file (a ${this.#opened.compression} archive is read once, in order)`;
      throw new ThinError(
        'THIN_IMAGE_INVALID',
        `Invalid image: layer ${repeated} appears twice in the image and ${displayPath(sharing[0])} and ${displayPath(sharing[1])} would be two files of one data, ` +
          `read once; import the archive ${how} to read it twice`,
      );
    }
    return this.#finish(description.kind, description.configDigest, imported, description.tags);
  }

  /**
   * The image the archive's manifest or index describes. When only its first entry made it an image
   * archive (--format auto), a failure says so: a flat tree may begin with an index.json of its own.
   */
  async #describe(read: JsonReader): Promise<ImageDescription> {
    try {
      return await describeImageArchive(read);
    } catch (error) {
      if (this.#detectedBy === undefined || !isThinError(error, 'THIN_IMAGE_INVALID')) throw error;
      const hint = `read as a docker save archive or OCI layout since its first entry is '${displayPath(this.#detectedBy)}'; --format tar reads it as a root file system`;
      throw new ThinError('THIN_IMAGE_INVALID', `${error.message} (${hint})`, { cause: error });
    }
  }

  /**
   * Reads one layer blob (compressed or not) as a tar into the tree (or into `record`), checking
   * its uncompressed sha256 against `diffId` when given; returns that digest.
   */
  async #applyLayer(raw: ChunkSource, stream: string, diffId: string | undefined, options: { placeOnly?: boolean; record?: TreeChange[] }): Promise<string> {
    const head = await peekChunks(raw);
    const compression = compressionOf(head.first);
    const decompressed = compression === 'none' ? head.chunks : decompressChunks(head.chunks, compression, stream, () => this.#opened.bytesRead());
    const hash = createHash('sha256');
    const hashed: ChunkSource = {
      next: async () => {
        const chunk = await decompressed.next();
        if (chunk !== undefined) hash.update(chunk);
        return chunk;
      },
      close: () => decompressed.close?.() ?? Promise.resolve(),
    };
    const input = new ByteInput(hashed);
    // Each layer starts at a pool-block boundary: the same layer packs into the same blocks in any image.
    await this.#data!.skipToPoolBlock((problem) => new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${stream}: ${problem}`));
    await applyTar(new TarReader(input, stream), this.#context, {
      stream,
      layered: true,
      ...(options.placeOnly === true ? { placeOnly: true } : {}),
      ...(options.record === undefined ? {} : { record: options.record }),
    });
    // The digest covers the whole blob: the padding after the tar's end too.
    while ((await input.readSome(1024 * 1024)) !== undefined);
    const digest = `sha256:${hash.digest('hex')}`;
    if (diffId !== undefined && digest !== diffId) {
      throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${stream} has content digest ${digest}, not its diff_id ${diffId}`);
    }
    return digest;
  }

  /** After a written layer: a read-only snapshot of the data so far, for later images to share. */
  async #keepLayerVolume(chain: string, diffId: string): Promise<string | undefined> {
    const name = `layer.${chain.slice('sha256:'.length, 'sha256:'.length + 16)}`;
    if (this.#pool === undefined || this.#pool.list().some((info) => info.name === name)) return undefined;
    await this.#data!.flush();
    // Labelled in the change that makes it: a kill before it is made read-only leaves a layer
    // volume a later import can use (its data is the layers'), not one that only blocks the name
    // with the labels of the volume being built.
    await this.#pool.snapshot(this.#temporary!, name, {
      labels: {
        [IMAGE_LABELS.layerChain]: chain,
        [IMAGE_LABELS.layerDiffId]: diffId,
        [IMAGE_LABELS.layerDataEnd]: String(this.#data!.cursorBlock),
        [IMAGE_LABELS.layerLayout]: LAYER_LAYOUT_VERSION,
      },
    });
    this.#layerVolumesMade.push(name);
    // Sized to its data (its virtual size is only what `list` shows).
    await this.#pool.resizeVolume(name, this.#data!.cursorBlock * BLOCK_SIZE_BYTES);
    await this.#pool.updateVolume(name, { readOnly: true });
    return name;
  }

  /** The file system's options (where the data ends aside). */
  #filesystemOptions(): Omit<FilesystemOptions, 'dataEndBlock'> {
    return {
      ...(this.#options.sizeBytes === undefined ? {} : { sizeBytes: this.#options.sizeBytes }),
      uuid: randomBytes(16),
      hashSeed: new Uint32Array(randomBytes(16).buffer),
      nowSeconds: this.#nowSeconds,
      label: this.#name.slice(0, 16),
    };
  }

  /** Writes the file system's metadata after the data, then completes the image. */
  async #finish(format: ImageImportResult['format'], digest: string, layers: ImportedLayer[], tags: string[]): Promise<Omit<ImageImportResult, 'seconds' | 'peakRssBytes' | 'cpuSeconds'>> {
    const data = this.#data!;
    const queue = this.#queue!;
    await data.finish();
    const dataBytesGiven = queue.bytesWritten;
    this.#sharing?.stop();
    this.#counter?.stop();
    const summary = await writeFilesystem(queue, this.#buffers!, this.#tree, { ...this.#filesystemOptions(), dataEndBlock: data.cursorBlock });
    await queue.drain();
    return this.#complete(format, digest, layers, tags, { summary, metadataBytesWritten: queue.bytesWritten - dataBytesGiven });
  }

  /** The file system is written: its volume becomes the image. */
  async #complete(format: ImageImportResult['format'], digest: string, layers: ImportedLayer[], tags: string[], built: BuiltFilesystem): Promise<Omit<ImageImportResult, 'seconds' | 'peakRssBytes' | 'cpuSeconds'>> {
    const { summary, metadataBytesWritten } = built;
    const counts = this.#sharing?.counts;
    const sizeBytes = this.#options.sizeBytes ?? summary.geometry.blockCount * BLOCK_SIZE_BYTES;
    const result = {
      name: this.#name,
      source: this.#source,
      format,
      compression: this.#opened.compression,
      digest,
      files: summary.files,
      directories: summary.directories,
      fileBytes: summary.fileBytes,
      sizeBytes,
      sourceBytes: this.#bytesRead(),
      // A dry run shares nothing: what it would write is the data region's live blocks.
      dataBytesWritten: counts === undefined ? summary.fileBlockBytes : counts.writtenBytes,
      dataBytesShared: counts?.sharedBytes ?? 0,
      dataBytesZero: counts?.zeroBytes ?? 0,
      metadataBytesWritten,
      blocksMapped: 0,
      layers,
    };
    if (this.#pool === undefined) {
      await this.#discardFreeData(this.#counter!, summary.freeDataRuns);
      return { ...result, blocksMapped: this.#counter!.mappedBlocks };
    }
    await this.#discardFreeData(this.#volume!, summary.freeDataRuns);
    // The image's blocks join the index for later imports (the records name the volume by id, which the rename keeps).
    await this.#index!.save(this.#pool);
    const temporary = this.#temporary!;
    await this.#pool.resizeVolume(temporary, sizeBytes);
    const labels: Record<string, string> = {
      ...this.#options.labels,
      [IMAGE_LABELS.source]: this.#source,
      [IMAGE_LABELS.digest]: digest,
      [IMAGE_LABELS.format]: this.#opened.compression === 'none' ? format : `${format}+${this.#opened.compression}`,
      [IMAGE_LABELS.files]: String(summary.files),
      [IMAGE_LABELS.bytes]: String(summary.fileBytes),
      [IMAGE_LABELS.volumeId]: String(this.#volume!.id),
    };
    if (layers.length > 0) labels[IMAGE_LABELS.layers] = String(layers.length);
    if (tags.length > 0) labels[IMAGE_LABELS.tags] = tags.join(',');
    await this.#pool.updateVolume(temporary, { name: this.#name, readOnly: true, labels });
    this.#temporary = undefined;
    await this.#writeBack!.settled();
    await this.#pool.flush();
    const usage = this.#pool.usage().get(this.#volume!.id);
    this.#options.onProgress?.(this.#bytesRead(), this.#opened.totalBytes);
    return { ...result, blocksMapped: usage?.mappedBlocks ?? 0 };
  }

  /** Data of replaced and whited-out files is not kept: whole pool blocks in free runs are unmapped. */
  async #discardFreeData(target: Pick<BlockTarget, 'discard'>, runs: readonly number[]): Promise<void> {
    const poolBlock = this.#blockSizeBytes;
    for (let index = 0; index < runs.length; index += 2) {
      const begin = Math.ceil((runs[index]! * BLOCK_SIZE_BYTES) / poolBlock) * poolBlock;
      const end = Math.floor((runs[index + 1]! * BLOCK_SIZE_BYTES) / poolBlock) * poolBlock;
      if (end > begin) await target.discard(begin, end - begin);
    }
  }

  /** Removes what this import made (the volume being built, layer volumes of this import). */
  async abort(): Promise<void> {
    await this.#queue?.drain().catch(() => undefined);
    await this.#writeBack?.settled();
    if (this.#pool === undefined) return;
    for (const name of [...this.#layerVolumesMade, ...(this.#temporary === undefined ? [] : [this.#temporary])]) {
      await this.#pool.removeVolume(name).catch(() => undefined);
    }
    await this.#pool.flush().catch(() => undefined);
  }
}

function layerName(position: number, diffId: string): string {
  return `layer ${position + 1} (${diffId.slice(0, 'sha256:'.length + 12)})`;
}

function compressionOf(head: Uint8Array | undefined): Compression {
  return head === undefined ? 'none' : detectCompression(head, 'a layer');
}

/** A chunk source's first chunk, and a source that still yields it. */
async function peekChunks(source: ChunkSource): Promise<{ first: Uint8Array | undefined; chunks: ChunkSource }> {
  let first = await source.next();
  const copy = first;
  return {
    first: copy,
    chunks: {
      next: async () => {
        if (first !== undefined) {
          const chunk = first;
          first = undefined;
          return chunk;
        }
        return source.next();
      },
      close: () => source.close?.() ?? Promise.resolve(),
      ...(source.skip === undefined ? {} : { skip: (count: number) => source.skip!(count) }),
    },
  };
}

async function readAll(source: ChunkSource, expectedBytes: number, what: string): Promise<Uint8Array> {
  if (expectedBytes > IMAGE_JSON_BYTES_MAX) throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${what} is ${expectedBytes} bytes, more than a manifest or config may be (${IMAGE_JSON_BYTES_MAX})`);
  const bytes = new Uint8Array(expectedBytes);
  let got = 0;
  for (let chunk = await source.next(); chunk !== undefined; chunk = await source.next()) {
    if (got + chunk.length > expectedBytes) throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${what} is longer than its header says`);
    bytes.set(chunk, got);
    got += chunk.length;
  }
  if (got !== expectedBytes) throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${what} ends after ${got} of ${expectedBytes} bytes: truncated`);
  return bytes;
}

function parseJson(bytes: Uint8Array, path: string): unknown {
  try {
    return JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (error) {
    throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${path} is not JSON: ${(error as Error).message}`, { cause: error });
  }
}

function joinArchivePath(from: string, target: string): string {
  if (target.startsWith('/')) return target.slice(1);
  const parts = from.split('/').slice(0, -1);
  for (const part of target.split('/')) {
    if (part === '..') parts.pop();
    else if (part !== '.' && part !== '') parts.push(part);
  }
  return parts.join('/');
}

interface IndexedEntry {
  dataOffsetBytes: number;
  sizeBytes: number;
}

/** The outer archive's regular files and where their data lies (headers only are read: data is skipped by seeking). */
async function indexArchive(chunks: ChunkSource, description: string): Promise<Map<string, IndexedEntry>> {
  const input = new ByteInput(chunks);
  const reader = new TarReader(input, description);
  const index = new Map<string, IndexedEntry>();
  const links = new Map<string, string>();
  for (let entry = await reader.next(); entry !== undefined; entry = await reader.next()) {
    const path = normalizeArchivePath(entry.path);
    if (entry.type === 'file') index.set(path, { dataOffsetBytes: input.offsetBytes, sizeBytes: entry.storedBytes });
    else if (entry.type === 'symlink') links.set(path, normalizeArchivePath(joinArchivePath(path, entry.linkPath)));
    else if (entry.type === 'hardlink') links.set(path, normalizeArchivePath(entry.linkPath));
  }
  await chunks.close?.();
  for (const [path, target] of links) {
    const found = index.get(target);
    if (found !== undefined) index.set(path, found);
  }
  return index;
}
