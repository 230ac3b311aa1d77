// The pool: two block files (metadata and data, as dm-thin) holding thin volumes and snapshots.
// This module opens, creates and closes pools and carries the volume management API; the thin
// semantics live in core.ts (and the parts it names) and the block I/O in volume.ts.
//
// A pool directory holds `metadata`, `data` (both sparse files) and `lock`: create and open take
// the directory's exclusive lock (src/io/lock.ts) and close releases it, so two processes never
// open one pool at once.
//
// Management calls (createVolume, snapshot, removeVolume, resizeVolume) change the open
// transaction only; like writes, they become durable at the next flush() or close(). A snapshot is
// taken while no request is in flight on its source: it holds the source's whole-volume lock.
import path from 'node:path';
import { ThinError } from '../errors.ts';
import {
  DATA_BLOCK_SIZE_BYTES_MAX,
  DATA_BLOCK_SIZE_BYTES_MIN,
  METADATA_BLOCK_COUNT_DEFAULT,
  METADATA_BLOCK_COUNT_MAX,
  METADATA_BLOCK_COUNT_MIN,
  METADATA_BLOCK_SIZE_BYTES,
  COMMIT_INTERVAL_MS_DEFAULT,
} from '../constants.ts';
import type { FaultRule } from '../io/fault-injection.ts';
import type { BlockFile } from '../io/block-file.ts';
import { makeDurableDirectory, nodeFileSystem, type FileSystem } from '../io/file-system.ts';
import type { DirectoryLock } from '../io/lock.ts';
import { BTREE_BLOCK_TYPES, BTree, SpaceMap, TransactionManager } from '../pdata/index.ts';
import { DeltaLog, emptyLogPosition } from '../journal/log.ts';
import { readDeltaLog } from '../journal/replay.ts';
import { POOL_FLAG_DATA_NOT_ZEROED, POOL_FLAG_NO_METADATA_MIRROR, POOL_FORMAT_VERSION, decodePoolPayload, encodePoolPayload, type DeviceValue } from './codecs.ts';
import { WHOLE_VOLUME_END } from './block-locks.ts';
import { BadRangeFlag } from './bad-ranges.ts';
import { CarriedOverlay, rebuildCarried } from './carried.ts';
import { PoolCore, type PoolCoreOptions } from './core.ts';
import { SyncNotAwaitedFile, type PoolMutant } from './mutants.ts';
import { scrubPool, type ScrubHost, type ScrubOptions, type ScrubReport } from './scrub.ts';
import type { Device, UpdateVolumeOptions } from './devices.ts';
import { DATA_FILE_NAME, METADATA_FILE_NAME, assertPoolExists, closePoolFiles, hostFiguresOf, instrumentPoolFiles, openPoolDirectory, type PoolFiles } from './files.ts';
import type { PoolStatus, VolumeInfo, VolumeUsage } from './reports.ts';
import type { SpaceEvent } from './space-monitor.ts';
import { validateSpaceSettings, type SpaceSettings, type SpaceSettingsChange } from './space-policy.ts';
import { makeDeviceCodec, validatePayloadRoots, writtenBy } from './trees.ts';
import { Volume } from './volume.ts';

export type { PoolStatus, PoolMode, VolumeInfo, VolumeUsage, PoolCounters } from './reports.ts';
export type { ScrubOptions, ScrubReport } from './scrub.ts';
export { POOL_MUTANTS, type PoolMutant } from './mutants.ts';
export type { UpdateVolumeOptions } from './devices.ts';
export type { SpaceEvent, SpaceEventKind, SpaceReport, SpaceState } from './space-monitor.ts';
export type { LowWater, SpaceSettings, SpaceSettingsChange, WhenFull } from './space-policy.ts';
export type { SpaceStatus } from './space.ts';
export { DATA_FILE_NAME, METADATA_FILE_NAME, assertPoolExists, type PoolFiles };

/** Blocks shared per metadata change by shareBlocks (each run of them a few tree changes). */
const SHARE_BLOCKS_PER_CHANGE = 64;

export interface PoolCreateOptions
  extends Pick<PoolOpenOptions, 'fileSystem' | 'commitIntervalMs' | 'commitTimer' | 'deltaLog' | 'now' | 'faultRules' | 'metadataDirtyBlocksMax' | 'mutant' | 'remapSpareBlocks'> {
  dataSizeBytes: number;
  blockSizeBytes: number;
  /** The space settings stored in the pool (space-policy.ts); absent ones are defaults. */
  space?: SpaceSettings;
  /** Default: METADATA_BLOCK_COUNT_DEFAULT blocks (a sparse file). */
  metadataSizeBytes?: number;
  /**
   * Whether the data file reads as zeros wherever it was never written (true for a new sparse
   * file, the default). False for a block device with old contents: then every newly provisioned
   * block is written whole (F-POOL-40).
   */
  dataReadsZeros?: boolean;
  /**
   * The new pool's id (a non-zero u64); default random. The simulator passes one so that a trace
   * replays byte for byte in another process.
   */
  poolId?: bigint;
  /**
   * Keep every metadata block in two copies in the metadata file (default true; docs/format.md
   * "Metadata mirror"): one bad metadata sector then loses nothing. False records the choice, so
   * later opens do not add a mirror (metadata on a device that is itself redundant).
   */
  metadataMirror?: boolean;
}

export interface PoolOpenOptions {
  readOnly?: boolean;
  /** What opens the pool directory's files (default node:fs); the crash simulator passes its own. */
  fileSystem?: FileSystem;
  /**
   * Commit this often when something changed, so writes a client never flushes are not held in
   * memory for ever (dm-thin commits every second). Default COMMIT_INTERVAL_MS_DEFAULT for
   * create/open, off (0) for createOn/openOn, whose tests and simulator want every commit asked for.
   */
  commitIntervalMs?: number;
  /**
   * What calls the commit timer's tick (default: a timer every commitIntervalMs, when that is above
   * 0). A test passes its own to tick at the moments it chooses: the simulator at seeded points of
   * a trace, unit tests instead of waiting on the wall clock.
   */
  commitTimer?: CommitTimer;
  /**
   * Dirty metadata blocks after which a write starts a commit (default
   * METADATA_DIRTY_BLOCKS_SOFT_MAX). The simulator lowers it to reach that commit in a workload
   * small enough to crash at every point.
   */
  metadataDirtyBlocksMax?: number;
  /** Tests only: a deliberately broken pool, to show that the crash campaigns catch it (mutants.ts). */
  mutant?: PoolMutant;
  /**
   * Flushes append a delta log record instead of making a full commit (src/journal; default true).
   * False gives a full commit per flush. Either way, open replays a log left by an earlier run.
   */
  deltaLog?: boolean;
  /**
   * The wall clock in milliseconds (default Date.now): the pool's creation time and each volume's
   * creation time come from it. The simulator passes a fixed clock so that traces replay byte for byte.
   */
  now?: () => number;
  /**
   * Fault injection at the io seam (io/fault-injection.ts; `thinbd serve --inject`): the data and
   * metadata files fail or corrupt what these rules say. For operators' drills and tests.
   */
  faultRules?: readonly FaultRule[];
  /**
   * Data blocks kept written ahead for remaps once the data file has refused a write
   * (spare-area.ts; `serve --remap-spares`): at most REMAP_SPARE_BLOCKS_MAX, 1 MiB of them and
   * 1/16 of the pool. Default 0, off: remaps then take new blocks, which measured as fast on
   * this project's test machine (docs/benchmarks.md, "Failing disks"; the benchmark compares both).
   */
  remapSpareBlocks?: number;
}

/** A committed generation pinned for a reader (Pool.pinCommitted, docs/format.md F-TX-8). */
/** Pool.lastRemapPhases(): where the last remap's time went, in ms. */
export interface RemapPhases {
  narrowMs: number;
  moveMs: number;
  persistMs: number;
  scheduleMs?: number;
  recordIoMs?: number;
  readBackMs?: number;
}

export interface PinnedGeneration {
  generation: number;
  /** The encoded superblock copy of the generation: what the reader opens (TransactionManager.openPinned). */
  superblock: Uint8Array;
  /** What each superblock copy's block holds for the generation (for an image of the metadata). */
  superblockSlots: Array<{ blockNr: number; bytes: Uint8Array }>;
  /** Ends the pin; idempotent. */
  release(): void;
}

/**
 * Starts calling `tick` now and then; returns the function that stops it. A tick resolves when
 * the commit it started, if any, has ended (it never rejects), so a test that ticks can wait.
 */
export type CommitTimer = (tick: () => Promise<void>) => () => void;

/** The default commit timer: every intervalMs (none at 0), not keeping the process alive. */
function intervalCommitTimer(intervalMs: number): CommitTimer | undefined {
  if (!(intervalMs > 0)) return undefined;
  return (tick) => {
    const timer = setInterval(() => void tick(), intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  };
}

function commitTimerOf(options: Pick<PoolOpenOptions, 'commitIntervalMs' | 'commitTimer'>, defaultIntervalMs: number): CommitTimer | undefined {
  return options.commitTimer ?? intervalCommitTimer(options.commitIntervalMs ?? defaultIntervalMs);
}

function coreOptionsOf(options: Pick<PoolOpenOptions, 'metadataDirtyBlocksMax' | 'mutant' | 'remapSpareBlocks'>): PoolCoreOptions {
  if (options.metadataDirtyBlocksMax !== undefined && !(Number.isSafeInteger(options.metadataDirtyBlocksMax) && options.metadataDirtyBlocksMax >= 1)) {
    throw new ThinError('THIN_INVALID', `metadataDirtyBlocksMax ${options.metadataDirtyBlocksMax} is not a positive block count`);
  }
  if (options.remapSpareBlocks !== undefined && !(Number.isSafeInteger(options.remapSpareBlocks) && options.remapSpareBlocks >= 0)) {
    throw new ThinError('THIN_INVALID', `remapSpareBlocks ${options.remapSpareBlocks} is not a block count`);
  }
  return { metadataDirtyBlocksMax: options.metadataDirtyBlocksMax, mutant: options.mutant, remapSpareBlocks: options.remapSpareBlocks };
}

export interface CreateVolumeOptions {
  sizeBytes: number;
  labels?: Record<string, string>;
}

export interface SnapshotOptions {
  readOnly?: boolean;
  /** The snapshot's labels, set in the same change that makes it; default: the source's. */
  labels?: Record<string, string>;
}

function metadataBlockCountFor(options: PoolCreateOptions): number {
  if (options.metadataSizeBytes === undefined) return METADATA_BLOCK_COUNT_DEFAULT;
  const count = Math.floor(options.metadataSizeBytes / METADATA_BLOCK_SIZE_BYTES);
  if (!Number.isSafeInteger(options.metadataSizeBytes) || count < METADATA_BLOCK_COUNT_MIN || count > METADATA_BLOCK_COUNT_MAX) {
    throw new ThinError(
      'THIN_INVALID',
      `Metadata size ${options.metadataSizeBytes} is out of range: from ${METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES} to ${METADATA_BLOCK_COUNT_MAX * METADATA_BLOCK_SIZE_BYTES} bytes`,
    );
  }
  return count;
}

function validateCreateOptions(options: PoolCreateOptions): { dataBlockCount: number; metadataBlockCount: number } {
  const { blockSizeBytes, dataSizeBytes } = options;
  if (
    !Number.isSafeInteger(blockSizeBytes) ||
    blockSizeBytes < DATA_BLOCK_SIZE_BYTES_MIN ||
    blockSizeBytes > DATA_BLOCK_SIZE_BYTES_MAX ||
    (blockSizeBytes & (blockSizeBytes - 1)) !== 0
  ) {
    throw new ThinError('THIN_INVALID', `Block size ${blockSizeBytes} is not a power of two from 64 KiB to 1 GiB`);
  }
  if (options.poolId !== undefined && !(options.poolId > 0n && options.poolId < 1n << 64n)) {
    throw new ThinError('THIN_INVALID', `Pool id ${options.poolId} is not a non-zero 64-bit number`);
  }
  if (!Number.isSafeInteger(dataSizeBytes) || dataSizeBytes < blockSizeBytes) {
    throw new ThinError('THIN_INVALID', `Data size ${dataSizeBytes} is smaller than one block of ${blockSizeBytes} bytes`);
  }
  validateSpaceSettings(options.space ?? {});
  return { dataBlockCount: Math.floor(dataSizeBytes / blockSizeBytes), metadataBlockCount: metadataBlockCountFor(options) };
}

function randomPoolId(): bigint {
  const bytes = new BigUint64Array(1);
  crypto.getRandomValues(bytes);
  return bytes[0]! === 0n ? 1n : bytes[0]!;
}

/** The file the delta log writes through: the metadata file (a mutant's wrapper of it in tests, mutants.ts). */
function logFileOf(files: PoolFiles, options: Pick<PoolOpenOptions, 'mutant'>): BlockFile {
  return options.mutant === 'flush-ack-before-metadata-sync' ? new SyncNotAwaitedFile(files.metadata) : files.metadata;
}

/** Where create makes the metadata file until the pool is whole (then it is renamed to `metadata`). */
const METADATA_CREATING_FILE_NAME = `${METADATA_FILE_NAME}.creating`;

/**
 * A create interrupted by a crash or a kill leaves `metadata.creating` and no `metadata`. Its
 * files are its own: create refuses to start where `metadata` or `data` exists, and nothing else
 * makes `metadata.creating`. They are removed, so create runs again where it was cut.
 */
function removeInterruptedCreate(fileSystem: FileSystem, dir: string): void {
  const creatingPath = path.join(dir, METADATA_CREATING_FILE_NAME);
  if (fileSystem.kind(path.join(dir, METADATA_FILE_NAME), { noFollow: true }) !== undefined) return;
  if (fileSystem.kind(creatingPath, { noFollow: true }) !== 'file') return;
  const dataPath = path.join(dir, DATA_FILE_NAME);
  if (fileSystem.kind(dataPath, { noFollow: true }) === 'file') fileSystem.remove(dataPath);
  fileSystem.remove(creatingPath);
  fileSystem.syncDirectory(dir);
}

export class Pool {
  #core: PoolCore;
  #lock: DirectoryLock | undefined;
  #volumes = new Map<number, Volume>();
  #closing: Promise<void> | undefined;
  #stopCommitTimer: (() => void) | undefined;

  /** Made by create/open; not for callers. */
  constructor(core: PoolCore, lock: DirectoryLock | undefined, commitTimer: CommitTimer | undefined, now?: () => number) {
    this.#core = core;
    if (now !== undefined) core.now = now;
    this.#lock = lock;
    if (commitTimer !== undefined && core.mode === 'read-write') {
      // The space policy ticks with the commit timer: the host's free space read again, growth
      // below the low-water mark, a rollup for writes waiting on blocks freed by logged changes.
      this.#stopCommitTimer = commitTimer(() => {
        const committing = core.commits.tick();
        core.space.tick();
        return committing;
      });
    }
    if (core.mode === 'read-write') {
      // The states the figures say at open: a pool that opens below a mark tells its listeners then.
      core.space.opened();
      // A data file with bad ranges recorded has failed before: keep spares for its remaps.
      if (core.badRanges.all().some((range) => range.device === 'data')) core.dataPath.spares.arm();
    }
  }

  /** Creates DIR with sparse `metadata` and `data` files and a new pool in them (THIN_EXISTS if one is there). */
  static async create(dir: string, options: PoolCreateOptions): Promise<Pool> {
    const { dataBlockCount, metadataBlockCount } = validateCreateOptions(options);
    const fileSystem = options.fileSystem ?? nodeFileSystem;
    // A directory made here is synced into its parent: a pool reported created survives a crash.
    makeDurableDirectory(fileSystem, dir, { recursive: true });
    const lock = fileSystem.lock(dir);
    const files: Partial<PoolFiles> = {};
    const created: string[] = [];
    const metadataPath = path.join(dir, METADATA_FILE_NAME);
    const creatingPath = path.join(dir, METADATA_CREATING_FILE_NAME);
    const dataPath = path.join(dir, DATA_FILE_NAME);
    try {
      removeInterruptedCreate(fileSystem, dir);
      for (const name of [METADATA_FILE_NAME, DATA_FILE_NAME]) {
        if (fileSystem.kind(path.join(dir, name)) !== undefined) throw new ThinError('THIN_EXISTS', `A pool already exists at ${dir} (it has a ${name} file)`);
      }
      if (fileSystem === nodeFileSystem) files.host = hostFiguresOf(dir);
      // The metadata is made under another name and renamed into place last: a crash part way
      // leaves no `metadata`, so no half-made pool that nothing opens and create refuses.
      const copies = options.metadataMirror === false ? 1 : 2;
      files.metadata = await fileSystem.createFile(creatingPath, { sizeBytes: copies * metadataBlockCount * METADATA_BLOCK_SIZE_BYTES });
      created.push(creatingPath);
      files.data = await fileSystem.createFile(dataPath, { sizeBytes: dataBlockCount * options.blockSizeBytes });
      created.push(dataPath);
      await Pool.#format(files as PoolFiles, options, dataBlockCount, metadataBlockCount);
      const failure = await closePoolFiles(files);
      delete files.metadata;
      delete files.data;
      if (failure !== undefined) throw failure;
      // `data` is durable before `metadata` appears, and `metadata` before the pool is reported created.
      fileSystem.syncDirectory(dir);
      fileSystem.rename(creatingPath, metadataPath);
      created[0] = metadataPath;
      fileSystem.syncDirectory(dir);
      files.metadata = await fileSystem.openFile(metadataPath, { readOnly: false });
      files.data = await fileSystem.openFile(dataPath, { readOnly: false });
      const core = await Pool.#load(files as PoolFiles, false, options);
      return new Pool(core, lock, commitTimerOf(options, COMMIT_INTERVAL_MS_DEFAULT), options.now);
    } catch (error) {
      await closePoolFiles(files);
      // A half-made pool would be refused by the next create (THIN_EXISTS) and opened by nobody.
      for (const createdPath of created) fileSystem.remove(createdPath);
      lock.release();
      throw error;
    }
  }

  /** Opens the pool in DIR, taking its lock (THIN_BUSY if another process holds it). */
  static async open(dir: string, options: PoolOpenOptions = {}): Promise<Pool> {
    const readOnly = options.readOnly === true;
    const { files, lock } = await openPoolDirectory(dir, { readOnly, ...(options.fileSystem === undefined ? {} : { fileSystem: options.fileSystem }) });
    try {
      const core = await Pool.#load(files, readOnly, options);
      return new Pool(core, lock, commitTimerOf(options, COMMIT_INTERVAL_MS_DEFAULT), options.now);
    } catch (error) {
      await closePoolFiles(files);
      lock.release();
      throw error;
    }
  }

  /** Creates a pool on the given block files (tests, the simulator); grows them to size. */
  static async createOn(files: PoolFiles, options: PoolCreateOptions): Promise<Pool> {
    const { dataBlockCount, metadataBlockCount } = validateCreateOptions(options);
    await files.metadata.grow((options.metadataMirror === false ? 1 : 2) * metadataBlockCount * METADATA_BLOCK_SIZE_BYTES);
    await files.data.grow(dataBlockCount * options.blockSizeBytes);
    return new Pool(await Pool.#format(files, options, dataBlockCount, metadataBlockCount), undefined, commitTimerOf(options, 0), options.now);
  }

  static async openOn(files: PoolFiles, options: PoolOpenOptions = {}): Promise<Pool> {
    return new Pool(await Pool.#load(files, options.readOnly === true, options), undefined, commitTimerOf(options, 0), options.now);
  }

  static async #format(rawFiles: PoolFiles, options: PoolCreateOptions, dataBlockCount: number, metadataBlockCount: number): Promise<PoolCore> {
    const { files: measuredFiles, measured } = instrumentPoolFiles(rawFiles, options.faultRules);
    const mirrored = options.metadataMirror !== false;
    const tm = TransactionManager.format(measuredFiles.metadata, {
      metadataBlockCount,
      poolId: options.poolId ?? randomPoolId(),
      mirrorOffsetBlocks: mirrored ? metadataBlockCount : 0,
    });
    const files: PoolFiles = { ...rawFiles, metadata: tm.file, data: measuredFiles.data };
    const dataSpace = SpaceMap.create(tm, dataBlockCount);
    const deviceTree = new BTree<DeviceValue>(tm, makeDeviceCodec(tm, () => {
      throw new Error('thinbd internal error (a bug): the device tree of a new pool has no values');
    }));
    const deviceTreeRoot = deviceTree.createEmpty();
    const payload = {
      formatVersion: POOL_FORMAT_VERSION,
      blockSizeBytes: options.blockSizeBytes,
      flags: (options.dataReadsZeros === false ? POOL_FLAG_DATA_NOT_ZEROED : 0) | (mirrored ? 0 : POOL_FLAG_NO_METADATA_MIRROR),
      dataBlockCount,
      dataSpaceMapRoot: dataSpace.root,
      deviceTreeRoot,
      dataHighWaterMark: 0,
      time: 0,
      nextVolumeId: 1,
      creationTimeMs: (options.now ?? Date.now)(),
      userTransactionId: 0,
      space: { ...(options.space ?? {}) },
      deviceTreeRootTransactionId: writtenBy(tm, deviceTreeRoot, BTREE_BLOCK_TYPES),
      dataSpaceMapRootTransactionId: writtenBy(tm, dataSpace.root, BTREE_BLOCK_TYPES),
    };
    await tm.commit(encodePoolPayload(payload), () => files.data.sync());
    const core = new PoolCore(files, measured, tm, payload, false, coreOptionsOf(options));
    if (options.deltaLog !== false) core.attachLog(new DeltaLog(logFileOf(files, options), tm.poolId, emptyLogPosition(tm.generation)));
    return core;
  }

  static async #load(rawFiles: PoolFiles, readOnly: boolean, options: PoolOpenOptions): Promise<PoolCore> {
    const { files: measuredFiles, measured } = instrumentPoolFiles(rawFiles, options.faultRules);
    // pdata opens writable even for a read-only pool: replaying the delta log changes the trees in
    // memory. The pool's mode refuses every change and commit of a read-only pool, and a read-only
    // pool never rewrites a bad metadata copy.
    const { tm, payload, report } = await TransactionManager.open(measuredFiles.metadata, {
      readOnly: false,
      repairMetadata: !readOnly,
      validatePayload: validatePayloadRoots,
    });
    const decoded = decodePoolPayload(payload, tm.metadataBlockCount);
    const dataBytes = decoded.dataBlockCount * decoded.blockSizeBytes;
    if (measuredFiles.data.sizeBytes() < dataBytes) {
      throw new ThinError(
        'THIN_CORRUPT_SUPERBLOCK',
        `The data at ${measuredFiles.data.description} holds ${measuredFiles.data.sizeBytes()} bytes, less than the ${decoded.dataBlockCount} blocks of ` +
          `${decoded.blockSizeBytes} bytes the pool records (${dataBytes} bytes): truncated, or the wrong file?`,
      );
    }
    // The delta log after this generation: every flush acknowledged since its commit (F-LOG-2,
    // F-LOG-5), and the blocks whose bytes its records carried (F-LOG-9): a read-only open
    // serves those from memory.
    const log = await readDeltaLog(tm.file, { poolId: tm.poolId, baseGeneration: tm.generation });
    const carried = await rebuildCarried(log.records, measuredFiles.data, decoded.blockSizeBytes, decoded.dataBlockCount);
    const data = readOnly && carried.blocks.size > 0 ? new CarriedOverlay(measuredFiles.data, carried.blocks, decoded.blockSizeBytes) : measuredFiles.data;
    const files: PoolFiles = { ...rawFiles, metadata: tm.file, data };
    const core = new PoolCore(files, measured, tm, decoded, readOnly, coreOptionsOf(options));
    core.devices.load();
    core.badRanges.load();
    if (report.fellBack) {
      // A newer generation was committed (a valid superblock copy with damaged trees, or a
      // checksum-valid copy found at the wrong place), and a flush may have been acknowledged on
      // it. Serving the older one as if nothing happened would lose that silently, so the pool
      // opens needing a check and says why (F-SB-6, F-SB-10).
      const passedOver = report.rejected.map((entry) => `generation ${entry.generation}: ${entry.problem}`).join('; ');
      core.fail(
        `opened generation ${report.generation}, older than generation ${report.newestGenerationSeen}, which was committed but cannot be opened (${passedOver})`,
        undefined,
      );
    }
    core.applyLogRecords(log.records);
    if (!readOnly) {
      // Written before the rollup below, which syncs the data file before its superblock; until
      // then the log still holds the bytes, and the next open rebuilds the same blocks.
      for (const [block, content] of carried.blocks) await files.data.write(content, block * decoded.blockSizeBytes);
      core.recordBadData(carried.unreadable, BadRangeFlag.readError);
    }
    if (options.deltaLog !== false) core.attachLog(new DeltaLog(logFileOf(files, options), tm.poolId, log.position, carried.carriedSinceSync));
    // Fold the replayed records in at once: the log starts empty, and a crash during this rollup
    // leaves the same generation and log to replay again.
    if (log.records.length > 0 && core.canCommit && !readOnly) await core.commits.rollup();
    // Metadata without a mirror (a format 2 pool, a restored one) gets one at its first read-write
    // open, unless it was made without one on purpose (docs/format.md "Metadata mirror", F-SB-11).
    if (core.canCommit && !readOnly && tm.mirror === undefined && (decoded.flags & POOL_FLAG_NO_METADATA_MIRROR) === 0) {
      if (await tm.addMirror()) await core.commits.recordLayoutChange();
    }
    return core;
  }

  // ---- volumes ----

  #volumeOf(device: Device): Volume {
    let volume = this.#volumes.get(device.id);
    if (volume === undefined) {
      volume = new Volume(this.#core, device);
      this.#volumes.set(device.id, volume);
    }
    return volume;
  }

  /** Creates an empty thin volume of sizeBytes (any byte count from 1 to VOLUME_SIZE_BYTES_MAX). */
  async createVolume(name: string, options: CreateVolumeOptions): Promise<Volume> {
    this.#core.beginRequest();
    try {
      this.#core.assertWritable();
      this.#core.validateNewName(name);
      const room = this.#core.space.metadataForNewVolume(`create volume ${name}`);
      if (room !== undefined) await room;
      return this.#volumeOf(this.#core.createDevice(name, options.sizeBytes, options.labels ?? {}));
    } finally {
      this.#core.endRequest();
    }
  }

  /** A new volume sharing every block of `sourceName` as it is now: O(1) metadata (F-POOL-25). */
  async snapshot(sourceName: string, name: string, options: SnapshotOptions = {}): Promise<Volume> {
    const source = this.#core.deviceByName(sourceName);
    this.#core.assertWritable();
    this.#core.validateNewName(name);
    // Checked inside the hold: the hold is taken in the order requests come, and the check answers
    // at once unless the metadata grows first.
    return this.#holdingWholeVolume(source, async () => {
      const room = this.#core.space.metadataForNewVolume(`snapshot ${sourceName} as ${name}`);
      if (room !== undefined) await room;
      return this.#volumeOf(this.#core.snapshotDevice(source, name, options.readOnly === true, options.labels));
    });
  }

  /**
   * Maps lengthBytes of `targetName` from targetOffsetBytes, unmapped there, to the data blocks
   * `sourceName` maps from sourceOffsetBytes: the same bytes, stored once, copied on the first
   * write to either (a reflink between volumes, or between ranges of one volume; an image import
   * shares file data this way).
   * Offsets and length are whole pool blocks. Returns the bytes shared (unmapped source blocks
   * share nothing).
   */
  async shareBlocks(sourceName: string, sourceOffsetBytes: number, targetName: string, targetOffsetBytes: number, lengthBytes: number): Promise<number> {
    const source = this.#core.deviceByName(sourceName);
    const target = this.#core.deviceByName(targetName);
    const bs = this.#core.blockSizeBytes;
    for (const [what, value] of [['source offset', sourceOffsetBytes], ['target offset', targetOffsetBytes], ['length', lengthBytes]] as const) {
      if (!Number.isSafeInteger(value) || value < 0 || value % bs !== 0) throw new ThinError('THIN_INVALID', `Cannot share blocks: the ${what} ${value} is not a whole number of ${bs}-byte blocks`);
    }
    if (sourceOffsetBytes + lengthBytes > source.value.sizeBytes || targetOffsetBytes + lengthBytes > target.value.sizeBytes) {
      throw new ThinError('THIN_OUT_OF_RANGE', `Cannot share ${lengthBytes} bytes from offset ${sourceOffsetBytes} of ${sourceName} to offset ${targetOffsetBytes} of ${targetName}: past a volume's end`);
    }
    if (lengthBytes === 0) return 0;
    const sourceBegin = sourceOffsetBytes / bs;
    const targetBegin = targetOffsetBytes / bs;
    const lengthBlocks = lengthBytes / bs;
    // Locks in (volume id, block) order, so two calls sharing each way cannot wait on each other.
    const ranges = [
      { id: source.id, begin: sourceBegin },
      { id: target.id, begin: targetBegin },
    ].sort((a, b) => a.id - b.id || a.begin - b.begin);
    if (source === target && ranges[0]!.begin + lengthBlocks > ranges[1]!.begin) {
      throw new ThinError('THIN_INVALID', `Cannot share ${lengthBytes} bytes of volume ${sourceName} with an overlapping range of itself`);
    }
    this.#core.beginRequest();
    try {
      return await this.#core.locks.with(ranges[0]!.id, ranges[0]!.begin, ranges[0]!.begin + lengthBlocks, () =>
        this.#core.locks.with(ranges[1]!.id, ranges[1]!.begin, ranges[1]!.begin + lengthBlocks, () => {
          let shared = 0;
          // A few blocks per metadata change, as unmapRange cuts a long range.
          for (let done = 0; done < lengthBlocks; done += SHARE_BLOCKS_PER_CHANGE) {
            const count = Math.min(SHARE_BLOCKS_PER_CHANGE, lengthBlocks - done);
            shared += this.#core.shareBlocks(source, sourceBegin + done, target, targetBegin + done, count);
          }
          return shared * bs;
        }),
      );
    } finally {
      this.#core.endRequest();
    }
  }

  /** Removes a volume; its snapshots keep their blocks, blocks no one else maps become free. */
  async removeVolume(name: string): Promise<void> {
    const device = this.#core.deviceByName(name);
    this.#core.assertWritable();
    await this.#holdingWholeVolume(device, () => {
      this.#core.removeDevice(device);
      this.#volumes.delete(device.id);
    });
  }

  /**
   * Volume `name` takes the contents of volume `sourceName` (its blocks and size) in one change,
   * and `sourceName` is removed; `name` keeps its id, labels and snapshots (which keep their own
   * blocks). An unpack onto an existing volume ends with it.
   */
  async replaceVolumeContents(name: string, sourceName: string): Promise<void> {
    const target = this.#core.deviceByName(name);
    const source = this.#core.deviceByName(sourceName);
    this.#core.assertDeviceWritable(target);
    if (source === target) throw new ThinError('THIN_INVALID', `Cannot replace the contents of volume ${name} with its own`);
    // Both whole-volume locks, the lower id's first (a fixed order: no deadlock with another pair).
    const [first, second] = target.id < source.id ? [target, source] : [source, target];
    await this.#holdingWholeVolume(first, () =>
      this.#holdingWholeVolume(second, () => {
        this.#core.replaceDeviceContents(target, source);
        this.#volumes.delete(source.id);
      }),
    );
  }

  /** Renames a volume (lvrename): the same volume, blocks and labels under a new name; THIN_EXISTS if taken. */
  async renameVolume(name: string, newName: string): Promise<void> {
    await this.updateVolume(name, { name: newName });
  }

  /** Grows or shrinks a volume; shrinking unmaps past the end, and growing later reads zeros there. */
  async resizeVolume(name: string, sizeBytes: number): Promise<void> {
    const device = this.#core.deviceByName(name);
    this.#core.assertDeviceWritable(device);
    await this.#holdingWholeVolume(device, () => this.#core.resizeDevice(device, sizeBytes));
  }

  /**
   * Renames a volume, replaces its labels, or makes it read-only or writable (lvrename and
   * lvchange). Its data and snapshots are untouched; snapshots name it by its new name.
   */
  async updateVolume(name: string, changes: UpdateVolumeOptions): Promise<void> {
    const device = this.#core.deviceByName(name);
    this.#core.assertWritable();
    await this.#holdingWholeVolume(device, () => this.#core.updateDevice(device, changes));
  }

  /** Runs `work` once no request is in flight on the volume, holding off new ones meanwhile. */
  async #holdingWholeVolume<T>(device: Device, work: () => Promise<T> | T): Promise<T> {
    this.#core.beginRequest();
    try {
      return await this.#core.locks.with(device.id, 0, WHOLE_VOLUME_END, work);
    } finally {
      this.#core.endRequest();
    }
  }

  /** The volume named `name` (THIN_NOT_FOUND). The same object for as long as the volume exists. */
  volume(name: string): Volume {
    return this.#volumeOf(this.#core.deviceByName(name));
  }

  list(): VolumeInfo[] {
    this.#core.assertOpen();
    return this.#core.devices.all().map((device) => this.#core.info(device));
  }

  /** Per volume id: mapped, exclusive and shared blocks, counted as thin_ls counts them. */
  usage(): Map<number, VolumeUsage> {
    this.#core.assertOpen();
    return this.#core.usage();
  }

  /** Distinct data blocks referenced by some volume's mappings (a walk of every mapping; for checks and tests). */
  referencedDataBlocks(): number {
    this.#core.assertOpen();
    return this.#core.referencedDataBlocks();
  }

  status(): PoolStatus {
    this.#core.assertOpen();
    return this.#core.status();
  }

  // ---- space (space.ts) ----

  /**
   * Changes the space settings stored in the pool (low-water marks, limits, growth step, what a
   * full pool does with writes); live at once, durable at the next flush (or close).
   */
  changeSpaceSettings(change: SpaceSettingsChange): SpaceSettings {
    this.#core.assertOpen();
    this.#core.changeSpaceSettings(change);
    return this.#core.space.settings;
  }

  /** Grows the data and/or metadata space to the given sizes now, durably; a smaller size is refused. */
  async resizePool(sizes: { dataSizeBytes?: number; metadataSizeBytes?: number }): Promise<void> {
    this.#core.assertWritable();
    await this.#core.space.resize(sizes);
  }

  /** Resolves when no growth and no punch runs: freed space given back to the host by then. */
  spaceSettled(): Promise<void> {
    return this.#core.space.settled();
  }

  /**
   * Calls listener with every space event (low-water marks crossed, a full pool, space restored,
   * growth): synchronously, so it must not throw. Returns the function that stops it.
   */
  onSpaceEvent(listener: (event: SpaceEvent) => void): () => void {
    return this.#core.space.listen(listener);
  }

  /**
   * The caller is about to write about `bytes` of new data in a stream (an image import): the
   * data high-water mark is raised over that much more than the pool uses now, in one commit,
   * rather than a commit every 64 MiB as the writes reach it (docs/format.md F-POOL-40).
   */
  async raiseHighWaterMarkAhead(bytes: number): Promise<void> {
    this.#core.assertWritable();
    await this.#core.dataPath.raiseHighWaterMarkAhead(Math.ceil(bytes / this.#core.blockSizeBytes));
  }

  /**
   * Starts writing the data written so far back to the disk (an fdatasync on a worker thread),
   * to be waited for or not: a long stream of writes flushed at its end (an image import) then
   * has the disk write as it goes, rather than all of it at the flush (docs/benchmarks.md, "Image
   * import"). Durability is still the flush's. Resolves once done, never rejects: a failure is
   * any data sync's (the next flush fails). A pool that takes no writes throws at once, as a
   * write would.
   */
  writeBackData(): Promise<void> {
    this.#core.assertWritable();
    return this.#core.dataPath.writeBack();
  }

  /** Makes every write completed before the call durable (a commit when metadata changed). */
  async flush(): Promise<void> {
    this.#core.assertOpen();
    await this.#core.commits.flush();
  }

  /**
   * Reads every metadata block in use (each copy, mending a bad one from the good) and every data
   * block in use (recording sectors that stay unreadable as bad ranges), at a bounded rate, beside
   * whatever else the pool is doing (pool/scrub.ts). What it records is durable on return.
   */
  async scrub(options: ScrubOptions = {}): Promise<ScrubReport> {
    this.#core.assertOpen();
    const core = this.#core;
    const host: ScrubHost = {
      tm: core.tm,
      dataSpace: core.dataSpace,
      blockSizeBytes: core.blockSizeBytes,
      media: core.dataPath.media,
      badRanges: core.badRanges,
      recordBad: (ranges, flags) => core.recordBadData(ranges, flags),
      get closed() {
        return core.closed;
      },
    };
    const report = await scrubPool(host, options);
    await core.tm.mirror?.repairsSettled();
    if (!core.closed && core.canCommit) await core.commits.flush();
    report.badRanges = core.badRanges.count;
    return report;
  }

  /**
   * Resolves when no background work a remap started runs: the refill of the remaps' spare area
   * (spare-area.ts), the rollup of a log a remap filled (CommitScheduler.rollupIfLogFull). Tests
   * and the remap benchmark.
   */
  async remapSparesSettled(): Promise<void> {
    const core = this.#core;
    for (let running = core.dataPath.spares.running ?? core.commits.backgroundRollup; running !== undefined; running = core.dataPath.spares.running ?? core.commits.backgroundRollup) await running;
  }

  /**
   * Where the last remap's time went (ms; the remap benchmark): `narrowMs`, from the refused
   * write's start to the end of its narrowing (0 for a remap of recorded bad sectors); `moveMs`,
   * from the decision to move to the persist (the old block read, the new one written, the mapping
   * and bad ranges changed); `persistMs`, from the persist asked for to the record durable, and of
   * it, when a log record made it durable: `scheduleMs` (to the record built), `recordIoMs` (the
   * record's writes and its fdatasync: record built → fdatasync returned) and `readBackMs`.
   * Undefined before the first remap.
   */
  lastRemapPhases(): RemapPhases | undefined {
    const times = this.#core.dataPath.remapper.lastTimes;
    if (times.durableMs === 0) return undefined;
    const phases: RemapPhases = {
      narrowMs: times.refusedMs - times.writeStartedMs,
      moveMs: times.persistStartMs - times.decidedMs,
      persistMs: times.durableMs - times.persistStartMs,
    };
    const append = this.#core.commits.log?.lastAppendMs;
    if (append !== undefined && append.builtMs >= times.persistStartMs && append.syncedMs <= times.durableMs && append.syncedMs >= append.builtMs) {
      phases.scheduleMs = append.builtMs - times.persistStartMs;
      phases.recordIoMs = append.syncedMs - append.builtMs;
      phases.readBackMs = times.durableMs - append.syncedMs;
    }
    return phases;
  }

  /** Folds the delta log into the trees now (a full commit); flush() is enough for durability. */
  async rollup(): Promise<void> {
    this.#core.assertOpen();
    await this.#core.commits.rollup();
  }

  /**
   * Rolls the delta log up into a full commit, then pins that generation for a reader (F-TX-8):
   * until `release()`, no block freed after it is reused, so a process reading the pool's files
   * from the returned superblock copy sees exactly that generation while this pool goes on.
   */
  async pinCommitted(): Promise<PinnedGeneration> {
    this.#core.assertOpen();
    await this.#core.commits.rollup();
    const pinned = this.#core.tm.pin();
    const core = this.#core;
    return {
      ...pinned,
      release: () => {
        pinned.release();
        // Blocks freed after the pinned generation may be reused and given back now.
        if (!core.closed) core.space.committed();
      },
    };
  }

  /** Commits, then runs work while no commit starts (see CommitScheduler.withCommitsHeld): a live check. */
  withCommitsHeld<T>(work: () => Promise<T>): Promise<T> {
    this.#core.assertOpen();
    return this.#core.commits.withCommitsHeld(work);
  }

  /**
   * Writes stop waiting for data space (`--when-full queue`): those waiting fail now with
   * THIN_NO_SPACE, as at the end of their queue time, and later ones do not wait. A server calls
   * this as it stops, so that its clients get their answers before it drains their connections.
   */
  stopWaitingForSpace(): void {
    this.#core.space.waiting.stop();
  }

  /** Flushes, then closes both files and releases the pool's lock. A second call waits for the first. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    let failure: unknown;
    this.#stopCommitTimer?.();
    // Requests already in flight finish first; new ones are refused (THIN_CLOSED).
    await this.#core.drain();
    // The spare area stops; its blocks are free blocks again, given back to the host like any.
    this.#core.space.puncher.giveBack(await this.#core.dataPath.spares.close());
    try {
      if (this.#core.canCommit) await this.#core.commits.rollup();
    } catch (error) {
      failure = error;
    }
    await this.#core.commits.settle();
    await this.#core.space.close();
    this.#core.markClosed();
    const closeFailure = await closePoolFiles(this.#core.files);
    failure ??= closeFailure;
    this.#lock?.release();
    if (failure !== undefined) throw failure;
  }
}

export { Volume };
