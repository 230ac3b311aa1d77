// The pool's engine: thin semantics on top of pdata. Pool and Volume are façades over it; the work
// is done by its parts, each in a file named for what it owns:
//   devices.ts          the device table (volumes' working state) and the device tree
//   mapping-changes.ts  mapping tree changes and the data reference counts that follow them
//   data-path.ts        reads and writes of volume bytes, with the high-water mark (high-water-mark.ts)
//   bad-blocks.ts       reads and writes the medium refuses: retried, narrowed to sectors
//   remap.ts            copy-on-write, and moving a block off failing sectors durably
//   spare-area.ts       free blocks written ahead for remaps, once the data file has failed
//   bad-ranges.ts       the bad sectors recorded in the metadata, holding their blocks for good
//   health.ts           the devices' health: errors, bad ranges, remaps, spare, latency
//   commit-scheduler.ts when and how changes become durable: data syncs, log records, full commits
//   log-replay.ts       the delta log's records re-applied at open
//   space.ts            the space policy at work: low-water events (space-monitor.ts), growth of
//                       the files (growth.ts), writes waiting for space (when-full.ts), freed
//                       blocks given back to the host (hole-punch.ts), settings (space-policy.ts)
//   reports.ts          volume facts, thin_ls usage, the status types
// This file holds what they share: the pool's mode and its state machine, the one way a metadata
// change runs (mutate), the requests in flight, and the public operations Pool and Volume call.
//
// State lives in two places. The committed state is pdata's: the superblock payload, the device
// tree, the mapping trees and the data space map. The working state is the parts': one Device per
// volume holding its current mapping root, mapped block count and times; the device tree is
// brought up to date only when a transaction is sealed (sealPayload).
//
// Concurrency: metadata operations are synchronous (docs/internals.md decision 1), so they never
// interleave. Data I/O is asynchronous; requests hold range locks on the virtual blocks they touch
// (block-locks.ts), and snapshot / resize / remove hold the whole volume.
//
// States, and the method that makes each transition (as SQLite's pager.c writes its own):
//
//   mode   read-write ──fail(…, 'read-only'): out of metadata space (mutate)──► read-only*
//          read-write, read-only* ──fail(…): a metadata error in a change, a failed seal,
//              commit, log append, data write (failIo) or data sync; open after a fall back──► needs-check
//          read-only (opened so: readOnlyOpen) and needs-check (POOL_FLAG_NEEDS_CHECK) from the constructor.
//          read-only*: the state is intact, so commits still run (commitsWhileReadOnly).
//          needs-check is sticky until the pool is reopened: reads go on; every write, flush and
//          management call fails with THIN_READ_ONLY naming the reason. Nothing is guessed.
//   I/O failure  none ──fail() with a THIN_IO cause, failIo()──► failed: from then on every
//          commit (flush) fails with THIN_IO until reopen (docs/internals.md decision 11).
//   closing  open ──drain() (Pool.close)──► closing: new requests refused, no background commit
//          ──markClosed(), after the last commit settled──► closed.
//   commit (CommitScheduler)  idle ──commit()──► running ──commit() meanwhile──► running + queued
//          (every caller shares the queued one) ──running settles──► the queued one runs.
//          held (withCommitsHeld): a commit that would start waits until the hold ends.
//   space, data and metadata each (space-monitor.ts)  ok ──available < low-water mark: event──► low
//          ──a write refused or queued for lack of it──► full; low, full ──space added or freed
//          above the mark (re-armed)──► ok; full ──space added or freed, still below──► low.
//   growth, per file (growth.ts)  idle ──below its mark and it may grow, or pool resize──► growing
//          (file grown, count raised in memory by applyDataGrowth / applyMetadataGrowth, committed)──► idle.
//   punch (hole-punch.ts)  idle ──a full commit made frees reusable (committed)──► punching: each
//          fallocate call holds its blocks from the allocator until it returns ──queue empty──► idle.
//
//   A read or write the medium refuses with EIO is not an I/O failure in this sense: its sectors
//          are recorded (recordBad, bad-ranges.ts) and the request is worked around or fails alone
//          (docs/internals.md decision 12); the mode does not change.
//
// Invariants, checked by assertInvariants() at construction, at every mode change (fail), at seal
// (sealPayload), at the end of every commit, at every growth and at close (markClosed):
//   durable ≤ sealed ≤ target ≤ data block count (HighWaterMark);
//   an I/O failure ⇒ needs-check;  commitsWhileReadOnly ⇒ read-only;  readOnlyOpen ⇒ not read-write;
//   not read-write ⇒ a reason is recorded;  closed ⇒ closing;  the device table agrees with itself;
//   the bad-range table agrees with itself (ordered, one block each, indexed), and every bad data
//   block is counted used in the data space map (it holds a reference: never allocated again);
//   every spare (spare-area.ts) lies below the durable high-water mark (and is free in the data
//   space map: asserted when it is added and taken); the engine, the allocator, the data space map and the high-water mark count the same data
//   blocks, and the data file holds them all; the metadata file holds every metadata block or grows
//   to them at the next commit; blocks held by a punch lie below the data block count and are free;
//   closing ⇒ no write waits for space. (At the end of a commit the bad-range table is checked
//   a share at a time, in turn: BAD_RANGES_CHECKED_PER_COMMIT.)
import { BAD_RANGES_CHECKED_PER_COMMIT, BTREE_DEPTH_MAX, METADATA_BLOCK_COUNT_MAX, METADATA_BLOCK_SIZE_BYTES, METADATA_DIRTY_BLOCKS_SOFT_MAX, METADATA_COMMIT_RESERVE_BLOCKS, METADATA_RECOVERY_RESERVE_BLOCKS } from '../constants.ts';
import { ThinError, assert, isThinError } from '../errors.ts';
import { BTREE_BLOCK_TYPES, BTree, SpaceMap, type TransactionManager } from '../pdata/index.ts';
import type { DeltaLog, DeltaLogEntry } from '../journal/log.ts';
import type { DeltaLogRecord } from '../journal/replay.ts';
import { MEDIA_SECTOR_BYTES } from '../io/media-error.ts';
import type { MeasuredBlockFile } from '../io/measured.ts';
import { DataAllocator, dataReserveBlocks } from './allocator.ts';
import { BadRangeFlag, BadRanges, type BadRange } from './bad-ranges.ts';
import { BlockLocks } from './block-locks.ts';
import {
  DEVICE_FLAG_READ_ONLY,
  POOL_FLAG_DATA_NOT_ZEROED,
  POOL_FLAG_NEEDS_CHECK,
  POOL_FORMAT_VERSION,
  encodeDetails,
  encodePoolPayload,
  type PoolPayload,
  type VolumeDetails,
} from './codecs.ts';
import { CommitScheduler, type CommitHost } from './commit-scheduler.ts';
import { DataPath, type DataPathHost } from './data-path.ts';
import { DeviceTable, validateLabels, validateSize, type Device, type UpdateVolumeOptions } from './devices.ts';
import type { PoolFiles } from './files.ts';
import { poolHealth, type PoolHealth } from './health.ts';
import { HighWaterMark } from './high-water-mark.ts';
import { replayLogRecords } from './log-replay.ts';
import { MappingChanges, type MappingHost } from './mapping-changes.ts';
import type { PoolMutant } from './mutants.ts';
import type { Extent } from './ranges.ts';
import { referencedDataBlocks, volumeInfo, volumeUsage, type PoolMode, type PoolStatus, type VolumeInfo, type VolumeUsage } from './reports.ts';
import { dataLowWater, describeLowWater } from './space-policy.ts';
import { DETAILS_CAPACITY_BYTES, makeExtentCodec, writtenBy } from './trees.ts';
import { PoolSpace, type SpaceHost } from './space.ts';
import type { MetadataRoom, SpaceSettingsChange } from './space-policy.ts';

/** How an engine is tuned beyond its on-disk state (Pool passes its open options). */
export interface PoolCoreOptions {
  /** Dirty metadata blocks after which a write starts a commit (default METADATA_DIRTY_BLOCKS_SOFT_MAX). */
  metadataDirtyBlocksMax?: number | undefined;
  /** Tests only: a deliberately broken engine (mutants.ts). */
  mutant?: PoolMutant | undefined;
  /** Most blocks the spare area keeps for remaps (default 0: off; spare-area.ts). */
  remapSpareBlocks?: number | undefined;
}

/** Worst case of new metadata blocks for one B+tree insert or removal: shadow and split every level, plus a new root. */
const METADATA_BLOCKS_PER_TREE_CHANGE_MAX = 2 * BTREE_DEPTH_MAX + 1;
/** Tree changes of the largest change a write makes (MappingChanges.remap). */
const TREE_CHANGES_PER_WRITE_MAX = 6;


/** The pool's files as measured (below the metadata mirror), for health. */
export interface MeasuredFiles {
  data: MeasuredBlockFile;
  metadata: MeasuredBlockFile;
}

export class PoolCore {
  readonly files: PoolFiles;
  readonly measured: MeasuredFiles;
  readonly tm: TransactionManager;
  readonly blockSizeBytes: number;
  readonly readOnlyOpen: boolean;
  readonly mappingTree: BTree<Extent>;
  readonly dataSpace: SpaceMap;
  readonly locks = new BlockLocks();
  readonly allocator: DataAllocator;
  readonly highWaterMark: HighWaterMark;
  readonly devices: DeviceTable;
  readonly badRanges: BadRanges;
  readonly mappings: MappingChanges;
  readonly dataPath: DataPath;
  readonly commits: CommitScheduler;
  readonly space: PoolSpace;
  /** Data blocks in the data file; grows (applyDataGrowth). */
  #dataBlockCount: number;
  /** The wall clock for volume creation times (Pool's `now` option; the simulator fixes it). */
  now: () => number = Date.now;
  readonly #creationTimeMs: number;
  readonly #flags: number;
  /** Tests only (mutants.ts). */
  readonly #mutant: PoolMutant | undefined;
  #mode: PoolMode;
  #modeReason: string | undefined;
  #modeCause: unknown;
  /** Read-only because metadata ran out, with the state intact: commits are still allowed. */
  #commitsWhileReadOnly = false;
  /** Where the next check after a commit takes up the bad-range table (assertInvariants). */
  #badRangesCheckedFrom = 0;
  /**
   * The first failed write or sync of either file (data or metadata). From then on every flush
   * fails with THIN_IO until the pool is reopened: after EIO the kernel may have dropped dirty
   * pages and a later sync can succeed, so no later sync proves anything written since the last
   * good one.
   */
  #ioFailure: { reason: string; cause: unknown } | undefined;
  #closing = false;
  #closed = false;
  /** True while open re-applies delta log records (they are not logged again, and run in any mode). */
  #replaying = false;
  #requestsInFlight = 0;
  /** Requests begun since open (the commit timer tells a quiet interval by it). */
  #requestsBegun = 0;
  #drainWaiters: Array<() => void> = [];

  constructor(files: PoolFiles, measured: MeasuredFiles, tm: TransactionManager, payload: PoolPayload, readOnly: boolean, options: PoolCoreOptions = {}) {
    this.files = files;
    this.measured = measured;
    this.tm = tm;
    this.readOnlyOpen = readOnly;
    this.blockSizeBytes = payload.blockSizeBytes;
    this.#dataBlockCount = payload.dataBlockCount;
    this.#creationTimeMs = payload.creationTimeMs;
    this.#flags = payload.flags;
    this.#mutant = options.mutant;
    this.dataSpace = new SpaceMap(tm, payload.dataSpaceMapRoot, payload.dataBlockCount);
    this.mappingTree = new BTree<Extent>(tm, makeExtentCodec(() => this.dataSpace));
    this.devices = new DeviceTable(tm, this.mappingTree, payload.deviceTreeRoot, payload);
    this.allocator = new DataAllocator(this.dataSpace, payload.dataBlockCount, dataReserveBlocks(payload.dataBlockCount));
    this.highWaterMark = new HighWaterMark(payload.dataHighWaterMark, payload.dataBlockCount);
    this.mappings = new MappingChanges(this.mappingTree, this.dataSpace, this.#mappingHost(), options.mutant);
    const core = this;
    this.badRanges = new BadRanges(
      {
        tm,
        dataSpace: this.dataSpace,
        blockSizeBytes: payload.blockSizeBytes,
        // Read at each use: the data file may grow while the pool is open.
        get dataBlockCount() {
          return core.#dataBlockCount;
        },
        mirrorOffsetBlocks: () => tm.mirrorOffsetBlocks,
      },
      payload.badRangeRoot ?? 0,
      { mutate: (what, treeChanges, change) => this.#mutate(what, treeChanges, change), note: (entry) => this.#note(entry) },
    );
    // A metadata copy that cannot even be written is a bad range; it is recorded at the next flush.
    tm.onBadCopy = (event) => {
      if (event.kind !== 'write') return;
      this.badRanges.notePendingMetadata(event.physicalOffsetBytes, event.lengthBytes, BadRangeFlag.writeError);
      this.commits.metadataChanged();
    };
    this.dataPath = new DataPath(
      {
        files,
        blockSizeBytes: payload.blockSizeBytes,
        highWaterMark: this.highWaterMark,
        allocator: this.allocator,
        mappings: this.mappings,
        dataSpace: this.dataSpace,
        badRanges: this.badRanges,
        dataReadsZeros: (payload.flags & POOL_FLAG_DATA_NOT_ZEROED) === 0,
        spareBlocksMax: options.remapSpareBlocks,
      },
      this.#dataPathHost(),
    );
    this.commits = new CommitScheduler(
      {
        tm,
        files,
        dataPath: this.dataPath,
        highWaterMark: this.highWaterMark,
        metadataDirtyBlocksMax: options.metadataDirtyBlocksMax ?? METADATA_DIRTY_BLOCKS_SOFT_MAX,
        mutant: options.mutant,
      },
      this.#commitHost(),
    );
    this.space = new PoolSpace(this.#spaceHost(), payload.space);
    if (readOnly) {
      this.#mode = 'read-only';
      this.#modeReason = 'opened read-only';
    } else if ((payload.flags & POOL_FLAG_NEEDS_CHECK) !== 0) {
      this.#mode = 'needs-check';
      this.#modeReason = 'the pool is marked as needing a check';
    } else {
      this.#mode = 'read-write';
    }
    this.assertInvariants();
  }

  // ---- the state machine (see the module comment) ----

  get mode(): PoolMode {
    return this.#mode;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get dataBlockCount(): number {
    return this.#dataBlockCount;
  }

  /** The pool may change: read-write and not closing (growth and punching ask). */
  get mayChange(): boolean {
    return this.#mode === 'read-write' && !this.#closing && !this.#closed;
  }

  /**
   * Freed blocks may be given back to the host: read-write and not closed. Also while closing:
   * no allocation runs then (requests are drained), and close waits for the punches of its last
   * commit so that `du` falls by the time a one-shot command returns.
   */
  get mayPunch(): boolean {
    return this.#mode === 'read-write' && !this.#closed;
  }

  /** Whether a commit may run: read-write, or read-only only for lack of metadata space. */
  get canCommit(): boolean {
    return !this.#closed && (this.#mode === 'read-write' || (this.#mode === 'read-only' && this.#commitsWhileReadOnly));
  }

  assertOpen(): void {
    if (this.#closed) throw new ThinError('THIN_CLOSED', 'The pool is closed');
  }

  assertWritable(): void {
    this.assertOpen();
    if (this.#mode !== 'read-write') {
      throw new ThinError('THIN_READ_ONLY', `The pool is ${this.#mode}: ${this.#modeReason ?? 'unknown reason'}`, { cause: this.#modeCause });
    }
  }

  assertDeviceWritable(device: Device): void {
    this.assertWritable();
    if (device.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${device.details.name} was removed`);
    if ((device.value.flags & DEVICE_FLAG_READ_ONLY) !== 0) throw new ThinError('THIN_READ_ONLY', `Volume ${device.details.name} is read-only`);
  }

  /** Enters needs-check (or, out of metadata space, read-only with commits allowed); see the module comment. */
  fail(reason: string, cause: unknown, mode: 'read-only' | 'needs-check' = 'needs-check'): void {
    if (this.#ioFailure === undefined && isThinError(cause, 'THIN_IO')) this.#ioFailure = { reason, cause };
    if (this.#mode === 'needs-check' || (this.#mode === 'read-only' && mode === 'read-only')) return;
    // Out of metadata space the state is intact (see mutate): what is done may still be committed.
    this.#commitsWhileReadOnly = mode === 'read-only';
    // What a failed change left half done is committed whole or not at all, never logged.
    this.commits.unloggedChange();
    this.#mode = mode;
    this.#modeReason = reason;
    this.#modeCause = cause;
    this.assertInvariants();
  }

  /** A failed write or sync of the data file: needs-check, and no flush until reopen, whatever the error's code. */
  #failIo(reason: string, error: unknown): void {
    this.#ioFailure ??= { reason, cause: error };
    this.fail(reason, error);
  }

  /** What a flush fails with after a failed write or sync: THIN_IO naming the first failure. */
  #ioFailureError(): ThinError | undefined {
    if (this.#ioFailure === undefined) return undefined;
    return new ThinError('THIN_IO', `Cannot flush: ${this.#ioFailure.reason}; the pool acknowledges no flush until it is reopened`, {
      cause: this.#ioFailure.cause,
    });
  }

  /**
   * `afterCommit`: the check made at the end of every commit, where the bad-range table is
   * checked BAD_RANGES_CHECKED_PER_COMMIT ranges at a time, in turn (the whole table every
   * count/BAD_RANGES_CHECKED_PER_COMMIT commits), since a lookup in the data space map per range
   * at every commit made each remap on a dying disk cost more than the last.
   */
  assertInvariants(afterCommit = false): void {
    this.highWaterMark.assertInvariants();
    this.devices.assertInvariants();
    let badRanges: readonly BadRange[];
    if (afterCommit && this.badRanges.count > BAD_RANGES_CHECKED_PER_COMMIT) {
      badRanges = this.badRanges.assertInvariantsOf(this.#badRangesCheckedFrom, BAD_RANGES_CHECKED_PER_COMMIT);
      this.#badRangesCheckedFrom = (this.#badRangesCheckedFrom + BAD_RANGES_CHECKED_PER_COMMIT) % this.badRanges.count;
    } else {
      this.badRanges.assertInvariants();
      badRanges = this.badRanges.all();
    }
    for (const range of badRanges) {
      if (range.device === 'data') assert(this.dataSpace.count(range.block) >= 1, `bad data block ${range.block} is free in the data space map`);
    }
    this.dataPath.spares.assertInvariants(this.highWaterMark.durable);
    this.space.assertInvariants();
    assert(this.files.data.sizeBytes() >= this.#dataBlockCount * this.blockSizeBytes, `the data file is shorter than its ${this.#dataBlockCount} blocks`);
    assert(this.#ioFailure === undefined || this.#mode === 'needs-check', `an I/O failure left the pool ${this.#mode}`);
    assert(!this.#commitsWhileReadOnly || this.#mode === 'read-only', `commits allowed while read-only, but the pool is ${this.#mode}`);
    assert(!this.readOnlyOpen || this.#mode !== 'read-write', 'a pool opened read-only is read-write');
    assert(this.#mode === 'read-write' || this.#modeReason !== undefined, `the pool is ${this.#mode} for no recorded reason`);
    assert(!this.#closed || this.#closing, 'closed without draining');
  }

  // ---- requests in flight (close waits for them) ----

  /** Counts a request in; refused once close() has begun. */
  beginRequest(): void {
    this.assertOpen();
    if (this.#closing) throw new ThinError('THIN_CLOSED', 'The pool is closing');
    this.#requestsInFlight += 1;
    this.#requestsBegun += 1;
  }

  endRequest(): void {
    assert(this.#requestsInFlight > 0, 'request count below zero');
    this.#requestsInFlight -= 1;
    if (this.#requestsInFlight === 0) {
      for (const resolve of this.#drainWaiters.splice(0)) resolve();
    }
  }

  /** Refuses new requests and resolves when those in flight have finished (a write waiting for space stops waiting). */
  drain(): Promise<void> {
    this.#closing = true;
    this.space.waiting.close();
    if (this.#requestsInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  markClosed(): void {
    this.#closed = true;
    this.assertInvariants();
  }

  // ---- metadata changes ----

  /**
   * Runs a synchronous metadata change of at most `treeChanges` B+tree inserts or removals (space
   * map updates included). pdata checks for room before each of its own operations, but a pool
   * change is several of them: room for all is checked first, so running out of metadata fails
   * the change before anything moved (F-POOL-44), and the pool goes read-only saying why, its
   * state intact. Any other error half way leaves the open transaction unusable: needs-check.
   */
  #mutate<T>(what: string, treeChanges: number, change: () => T, room: MetadataRoom = 'grows'): T {
    // Replay at open re-applies acknowledged changes whatever mode the pool opens in, and may use
    // the recovery reserve: they were made once already.
    if (!this.#replaying) this.assertWritable();
    const keepBlocks = room === 'grows' && !this.#replaying ? METADATA_RECOVERY_RESERVE_BLOCKS : 0;
    try {
      this.#ensureRoom(treeChanges, keepBlocks);
    } catch (error) {
      if (!isThinError(error, 'THIN_NO_METADATA_SPACE')) throw error;
      // A change that adds metadata is refused before it takes the recovery reserve, and the pool
      // stays read-write so that removes and discards can free space (F-POOL-47). Only a change
      // that frees space and still finds no room makes the pool read-only (F-POOL-44).
      if (keepBlocks > 0 && this.#roomFor(treeChanges, 0)) throw this.space.metadataFullError(what, this.#roomNeeded(treeChanges), this.#spareBlocks(keepBlocks));
      this.fail(`out of metadata space while ${what}: ${error.message}`, error, 'read-only');
      throw error;
    }
    try {
      const result = change();
      this.commits.metadataChanged();
      if (!this.#replaying) this.space.metadataChanged();
      return result;
    } catch (error) {
      this.fail(`metadata error while ${what}: ${error instanceof Error ? error.message : String(error)}`, error);
      throw error;
    }
  }

  /**
   * Room for `treeChanges` and, after them, for storing every dirty device value when the
   * transaction is sealed (one tree change each), so sealing never runs out. When that headroom is
   * what is missing, the dirty values are stored now (each store is one independent tree change,
   * so stopping half way is harmless) and the room checked again.
   */
  #ensureRoom(treeChanges: number, keepBlocks: number): void {
    const needed = (): number => this.#roomNeeded(treeChanges) + keepBlocks;
    try {
      this.tm.ensureMetadataSpace(needed());
      return;
    } catch (error) {
      if (!isThinError(error, 'THIN_NO_METADATA_SPACE') || this.devices.dirtyCount === 0) throw error;
    }
    try {
      this.#storeDirtyDevices();
    } catch (error) {
      if (!isThinError(error, 'THIN_NO_METADATA_SPACE')) {
        this.fail(`metadata error while storing volume entries: ${error instanceof Error ? error.message : String(error)}`, error);
      }
      throw error;
    }
    this.tm.ensureMetadataSpace(needed());
  }

  /** Metadata blocks a change of `treeChanges` tree operations may take, with the seal's room for dirty devices. */
  #roomNeeded(treeChanges: number): number {
    return (treeChanges + this.devices.dirtyCount + 1) * METADATA_BLOCKS_PER_TREE_CHANGE_MAX;
  }

  /** Free metadata blocks beyond the commit reserve and `keepBlocks`. */
  #spareBlocks(keepBlocks: number): number {
    return this.tm.metadataBlocksFree - METADATA_COMMIT_RESERVE_BLOCKS - keepBlocks;
  }

  #roomFor(treeChanges: number, keepBlocks: number): boolean {
    return this.#spareBlocks(keepBlocks) >= this.#roomNeeded(treeChanges);
  }

  #storeDirtyDevices(): void {
    if (this.devices.storeDirty() > 0) this.commits.metadataChanged();
  }

  #note(entry: DeltaLogEntry): void {
    const log = this.commits.log;
    if (log !== undefined && !this.#replaying) log.note(entry);
  }

  /** The bytes a remap wrote into its new block, for the log record that may carry them (F-LOG-9). */
  noteCarried(dataBlock: number, oldDataBlock: number, offsetInBlockBytes: number, bytes: Uint8Array): void {
    const log = this.commits.log;
    if (log !== undefined && !this.#replaying) log.noteCarried(dataBlock, oldDataBlock, offsetInBlockBytes, bytes);
  }

  // ---- volumes ----

  deviceByName(name: string): Device {
    this.assertOpen();
    const device = this.devices.byName(name);
    if (device === undefined) throw new ThinError('THIN_NOT_FOUND', `No volume named ${name}`);
    return device;
  }

  validateNewName(name: string): void {
    this.devices.validateNewName(name);
  }

  createDevice(name: string, sizeBytes: number, labels: Record<string, string>): Device {
    this.assertWritable();
    this.devices.validateNewName(name);
    validateSize(sizeBytes);
    validateLabels(labels);
    const id = this.devices.nextId();
    const details: VolumeDetails = { name, labels: { ...labels }, createdAt: new Date(this.now()).toISOString() };
    encodeDetails(details, DETAILS_CAPACITY_BYTES); // THIN_INVALID before anything changes
    return this.#mutate(`creating volume ${name}`, 1, () => {
      const device = this.devices.create(id, details, sizeBytes);
      this.commits.unloggedChange();
      return device;
    });
  }

  /** The O(1) snapshot (F-POOL-25); the caller holds the source's whole-volume lock. */
  snapshotDevice(source: Device, name: string, readOnly: boolean, labels?: Record<string, string>): Device {
    this.assertWritable();
    if (source.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${source.details.name} was removed`);
    this.devices.validateNewName(name);
    if (labels !== undefined) validateLabels(labels);
    const id = this.devices.nextId();
    this.devices.assertTimeLeft();
    const details: VolumeDetails = {
      name,
      labels: { ...(labels ?? source.details.labels) },
      createdAt: new Date(this.now()).toISOString(),
      originName: source.details.name,
      originId: source.id,
    };
    encodeDetails(details, DETAILS_CAPACITY_BYTES);
    return this.#mutate(`snapshotting ${source.details.name} as ${name}`, 1, () => {
      const device = this.devices.snapshot(source, id, details, readOnly);
      this.commits.unloggedChange();
      return device;
    });
  }

  /**
   * Maps target's virtual blocks [targetBlock, +lengthBlocks), which must be unmapped, to the data
   * blocks source maps at [sourceBlock, +lengthBlocks) (a reflink, as FICLONERANGE does between
   * files; source may be target, at blocks that do not overlap): the bytes are shared, their reference counts go up, and source's unmapped blocks stay
   * unmapped in target. Returns the blocks shared.
   *
   * Sharing must look like a snapshot to dm-thin's time test (F-POOL-24, F-POOL-26), for both sides: a write
   * to either copies the block first. The target's new mappings get a time before its snapshotted
   * time; when that time is 0, or some shared mapping of the source is not older than the source's
   * snapshotted time, a new pool time begins and both volumes take it as their snapshotted time,
   * as a snapshot makes them. So a volume that shares from many others starts at most one pool time
   * per source, not one per call. The change is a full commit's (as a snapshot is): the delta
   * log's entries carry no mapping time. The caller holds both ranges' locks.
   */
  shareBlocks(source: Device, sourceBlock: number, target: Device, targetBlock: number, lengthBlocks: number): number {
    this.assertDeviceWritable(target);
    if (source.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${source.details.name} was removed`);
    if (source === target && sourceBlock < targetBlock + lengthBlocks && targetBlock < sourceBlock + lengthBlocks) {
      throw new ThinError('THIN_INVALID', `Cannot share blocks [${sourceBlock}, ${sourceBlock + lengthBlocks}) of volume ${source.details.name} with blocks of itself they overlap`);
    }
    const runs = this.mappings.blockRuns(source, sourceBlock, sourceBlock + lengthBlocks).filter((run) => run.dataBlock !== undefined);
    if (runs.length === 0) return 0;
    if (this.mappings.blockRuns(target, targetBlock, targetBlock + lengthBlocks).some((run) => run.dataBlock !== undefined)) {
      throw new ThinError('THIN_INVALID', `Cannot share blocks into [${targetBlock}, ${targetBlock + lengthBlocks}) of volume ${target.details.name}: some are mapped`);
    }
    const sourceOlder = runs.every((run) => run.time! < source.value.snapshottedTime);
    const newTime = !sourceOlder || target.value.snapshottedTime === 0;
    if (newTime) this.devices.assertTimeLeft();
    return this.#mutate(`sharing blocks of volume ${source.details.name} with volume ${target.details.name}`, 2 + 5 * runs.length, () => {
      if (newTime) {
        const time = this.devices.time + 1;
        this.devices.time = time;
        source.value = { ...source.value, snapshottedTime: time };
        target.value = { ...target.value, snapshottedTime: time };
        this.devices.markDirty(source);
        this.devices.markDirty(target);
      }
      const mappingTime = target.value.snapshottedTime - 1;
      let shared = 0;
      for (const run of runs) {
        this.mappings.insertShared(target, targetBlock + (run.begin - sourceBlock), run.dataBlock!, run.end - run.begin, mappingTime);
        shared += run.end - run.begin;
      }
      this.commits.unloggedChange();
      return shared;
    });
  }

  /** The caller holds the device's whole-volume lock. */
  removeDevice(device: Device): void {
    this.assertWritable();
    if (device.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${device.details.name} was removed`);
    this.#mutate(
      `removing volume ${device.details.name}`,
      8,
      () => {
        this.commits.unloggedChange();
        this.devices.remove(device);
        this.allocator.forgetVolume(device.id);
      },
      'frees',
    );
  }

  /**
   * Volume `target` takes `source`'s contents (mappings and size) in one change, keeping its id,
   * name, labels and snapshots; `source` is gone (DeviceTable.adopt). What an unpack onto an
   * existing volume ends with. The caller holds both volumes' whole-volume locks.
   */
  replaceDeviceContents(target: Device, source: Device): void {
    this.assertDeviceWritable(target);
    if (source.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${source.details.name} was removed`);
    assert(source !== target, 'a volume\'s contents replaced with its own (Pool refuses it before taking its lock twice)');
    this.#mutate(
      `replacing the contents of volume ${target.details.name} with those of ${source.details.name}`,
      8,
      () => {
        this.commits.unloggedChange();
        this.devices.adopt(target, source);
        this.allocator.forgetVolume(source.id);
      },
      'frees',
    );
  }

  /**
   * Renames a volume, replaces its labels or sets its read-only flag (F-POOL-30: new details
   * blocks), as one change. Snapshots of a renamed volume get its new name as their origin's. The
   * caller holds the device's whole-volume lock.
   */
  updateDevice(device: Device, changes: UpdateVolumeOptions): void {
    this.assertWritable();
    if (device.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${device.details.name} was removed`);
    const oldName = device.details.name;
    const name = changes.name ?? oldName;
    if (name !== oldName) this.devices.validateNewName(name);
    const labels = changes.labels ?? device.details.labels;
    validateLabels(labels);
    const details: VolumeDetails = { ...device.details, name, labels: { ...labels } };
    encodeDetails(details, DETAILS_CAPACITY_BYTES); // THIN_INVALID before anything changes
    const children = name === oldName ? [] : this.devices.all().filter((other) => other.details.originId === device.id);
    const childDetails = children.map((child): VolumeDetails => ({ ...child.details, originName: name }));
    for (const updated of childDetails) encodeDetails(updated, DETAILS_CAPACITY_BYTES);
    this.#mutate(name === oldName ? `updating volume ${oldName}` : `renaming volume ${oldName} to ${name}`, 1 + children.length, () => {
      this.devices.replaceDetails(device, details);
      if (changes.readOnly !== undefined) this.devices.setReadOnly(device, changes.readOnly);
      children.forEach((child, index) => this.devices.replaceDetails(child, childDetails[index]!));
      this.commits.unloggedChange();
    });
  }

  /** The caller holds the device's whole-volume lock. */
  async resizeDevice(device: Device, sizeBytes: number): Promise<void> {
    this.assertDeviceWritable(device);
    validateSize(sizeBytes);
    const bs = this.blockSizeBytes;
    const oldSizeBytes = device.value.sizeBytes;
    if (sizeBytes < oldSizeBytes) {
      // F-POOL-14: no mapping past the end; the tail of a partial last block reads zeros.
      // The tail first: it may need a block (copy-on-write) and fail with THIN_NO_SPACE, and a
      // failed resize must change nothing a reader can see.
      const endBlock = Math.ceil(sizeBytes / bs);
      const tailBytes = sizeBytes % bs;
      if (tailBytes !== 0 && this.mappings.lookup(device, endBlock - 1) !== undefined) {
        await this.dataPath.writeInBlock(device, endBlock - 1, tailBytes, undefined, bs - tailBytes);
      }
      this.mappings.unmapRange(device, endBlock, Math.ceil(oldSizeBytes / bs));
    }
    this.#mutate(
      `resizing volume ${device.details.name}`,
      0,
      () => {
        this.commits.unloggedChange();
        device.value = { ...device.value, sizeBytes };
        this.devices.markDirty(device);
      },
      // A size is one device value: no tree grows, and shrinking is how space is freed.
      'frees',
    );
  }

  // ---- reports ----

  info(device: Device): VolumeInfo {
    return volumeInfo(device);
  }

  usage(): Map<number, VolumeUsage> {
    return volumeUsage(this.tm, this.mappingTree, this.devices.all());
  }

  referencedDataBlocks(): number {
    return referencedDataBlocks(this.mappingTree, this.devices.all());
  }

  status(): PoolStatus {
    const tmCounters = this.tm.counters;
    const log = this.commits.log;
    const status: PoolStatus = {
      poolId: this.tm.poolId.toString(16).padStart(16, '0'),
      blockSizeBytes: this.blockSizeBytes,
      dataBlockCount: this.dataBlockCount,
      dataBlocksUsed: this.dataSpace.usedBlockCount,
      metadataBlockCount: this.tm.metadataBlockCount,
      metadataBlocksUsed: this.tm.metadataBlocksUsed,
      transactionId: this.tm.transactionId,
      volumeCount: this.devices.count,
      mode: this.#mode,
      pinnedGenerations: this.tm.pinnedGenerations,
      metadataPath: this.files.metadata.description,
      dataPath: this.files.data.description,
      state: 'ok',
      freeBytes: 0,
      usedBytes: 0,
      lowWater: { setting: 'default', bytes: 0 },
      space: this.space.status(),
      counters: {
        metadataBlocksWritten: tmCounters.metadataBlocksWritten + (log?.counters.blocksWritten ?? 0),
        dataBytesWritten: this.dataPath.bytesWritten,
        syncs: tmCounters.syncs + this.commits.dataSyncs + (log?.counters.syncs ?? 0),
        commits: tmCounters.commits,
        flushes: this.commits.flushes,
        rollups: this.commits.rollups,
        logBlocksUsed: log?.blocksUsed ?? 0,
        logRecordsWritten: log?.counters.records ?? 0,
        logRecordsCarrying: log?.counters.recordsCarrying ?? 0,
        logSyncMarks: log?.counters.syncMarks ?? 0,
        copyOnWrites: this.dataPath.copyOnWrites,
        dirtyLimitCommits: this.commits.dirtyLimitCommits,
      },
      health: this.health(),
    };
    if (this.#modeReason !== undefined) status.modeReason = this.#modeReason;
    const data = status.space.data;
    status.state = data.state;
    status.freeBytes = data.freeBytes;
    status.usedBytes = data.usedBytes;
    status.lowWater = { setting: describeLowWater(dataLowWater(this.space.settings)), bytes: data.lowWaterBytes };
    return status;
  }

  health(): PoolHealth {
    return poolHealth({
      dataFile: this.measured.data,
      metadataFile: this.measured.metadata,
      mirror: this.tm.mirror,
      badRanges: this.badRanges,
      media: this.dataPath.media.counters,
      remaps: this.dataPath.remapper.counters,
      // A remap may take any free block, the spares first.
      freeDataBlocks: Math.max(0, this.allocator.freeBlockCount()) + this.allocator.spareCount,
      spareArea: { blocks: this.allocator.spareCount, ...this.dataPath.spares.counters },
      freeMetadataBlocks: this.tm.metadataBlocksFree,
      syncFailed: { data: this.measured.data.errors.sync > 0, metadata: this.measured.metadata.errors.sync > 0 },
    });
  }

  /**
   * Records data sectors the medium refused. Only a read-write pool records (a read-only one only
   * counts them, in the health report); a record that cannot be made (out of metadata space) has
   * already moved the pool to the mode that says why, and the request goes on as it would.
   */
  recordBadData(ranges: readonly { beginSector: number; endSector: number }[], flags: number): void {
    if (this.#mode !== 'read-write' || this.#closed) return;
    for (const range of ranges) {
      try {
        this.badRanges.record('data', range.beginSector, range.endSector, flags);
      } catch (error) {
        if (!isThinError(error)) throw error;
        return;
      }
    }
  }

  /** Records the metadata copies found unwritable since the last flush (tm.onBadCopy). */
  absorbPendingBadRanges(): void {
    if (this.#mode !== 'read-write' || this.#closed || this.badRanges.pendingCount === 0) return;
    try {
      this.badRanges.absorbPending();
    } catch (error) {
      if (!isThinError(error)) throw error;
    }
  }

  // ---- space (space.ts) ----

  /** Changes the stored space settings (pool set); committed by the next flush. */
  changeSpaceSettings(change: SpaceSettingsChange): void {
    this.assertWritable();
    this.space.changeSettings(change);
  }

  /**
   * The data file holds `blockCount` blocks now (growth.ts grew it): every part that counts data
   * blocks follows, and the next commit, a full one, records the count (F-POOL-45).
   */
  #applyDataGrowth(blockCount: number): void {
    this.assertWritable();
    const from = this.#dataBlockCount;
    assert(blockCount > from && this.files.data.sizeBytes() >= blockCount * this.blockSizeBytes, `data growth from ${from} to ${blockCount} blocks without the room`);
    this.dataSpace.grow(blockCount);
    this.highWaterMark.grow(blockCount);
    this.allocator.grow(blockCount, dataReserveBlocks(blockCount));
    this.dataPath.grew(from, blockCount);
    this.#dataBlockCount = blockCount;
    this.commits.unloggedChange();
    this.commits.metadataChanged();
    this.assertInvariants();
  }

  /** The metadata file holds `blockCount` blocks now: pdata may use them; the next commit records the count. */
  /** Mirrored metadata ends where its second copy begins, and that copy moves by doubling its place up to METADATA_BLOCK_COUNT_MAX (F-MIR-6). */
  #metadataBlockCountMax(): number {
    let offset = this.tm.mirror === undefined ? 0 : this.tm.mirrorOffsetBlocks;
    if (offset === 0) return METADATA_BLOCK_COUNT_MAX;
    while (2 * offset <= METADATA_BLOCK_COUNT_MAX) offset *= 2;
    return offset;
  }

  /**
   * Mirrored metadata grows past the place of its second copy only once that copy has moved
   * further on (docs/format.md F-MIR-6): to twice its place (four times, ... when the new count
   * needs it), so the metadata may then grow to there without another move.
   */
  async #roomForMetadata(blockCount: number): Promise<void> {
    const offset = this.tm.mirrorOffsetBlocks;
    if (this.tm.mirror === undefined || offset === 0 || blockCount <= offset) return;
    // Twice the place (or four times...): past the old copy, which is at most `offset` long, and
    // where open looks for a mirror whose move a power cut stopped (metadata-layout.ts).
    let target = 2 * offset;
    while (target < blockCount) target *= 2;
    if (target > METADATA_BLOCK_COUNT_MAX) {
      throw new ThinError(
        'THIN_INVALID',
        `Cannot grow the mirrored metadata to ${blockCount * METADATA_BLOCK_SIZE_BYTES} bytes: its second copy, at ${offset * METADATA_BLOCK_SIZE_BYTES} bytes, ` +
          `would have to move past the largest metadata (${METADATA_BLOCK_COUNT_MAX * METADATA_BLOCK_SIZE_BYTES} bytes)`,
      );
    }
    await this.commits.moveMirror(target, () => {
      // A bad range names a physical sector of one copy: those of the copy that moves away would
      // name no block of the pool once it has moved (F-BAD-1), so such a mirror stays where it is.
      const sectorsPerBlock = METADATA_BLOCK_SIZE_BYTES / MEDIA_SECTOR_BYTES;
      const inOldCopy = this.badRanges.all().filter((range) => range.device === 'metadata' && range.beginSector >= offset * sectorsPerBlock).length;
      if (inOldCopy > 0) {
        throw new ThinError(
          'THIN_INVALID',
          `Cannot move the metadata mirror to let the metadata grow: ${inOldCopy} bad range(s) are recorded in its second copy ` +
            '(the metadata disk is failing: `thinbd pool status` lists them)',
        );
      }
    });
  }

  #applyMetadataGrowth(blockCount: number): void {
    this.assertWritable();
    assert(this.files.metadata.sizeBytes() >= blockCount * METADATA_BLOCK_SIZE_BYTES, `metadata growth to ${blockCount} blocks without the room`);
    this.tm.growMetadata(blockCount);
    this.commits.unloggedChange();
    this.commits.metadataChanged();
    this.assertInvariants();
  }

  // ---- the delta log ----

  /** Turns the delta log on: from now on a flush appends a record instead of committing. */
  attachLog(log: DeltaLog): void {
    this.commits.attachLog(log);
  }

  /**
   * Re-applies delta log records read at open (log-replay.ts) through the same code paths as the
   * original writes, whatever mode the pool opened in.
   */
  applyLogRecords(records: readonly DeltaLogRecord[]): void {
    this.#replaying = true;
    try {
      replayLogRecords(
        {
          devices: this.devices,
          badRanges: this.badRanges,
          mappings: this.mappings,
          dataSpace: this.dataSpace,
          blockSizeBytes: this.blockSizeBytes,
          highWaterMarkDurable: this.highWaterMark.durable,
          applied: () => this.commits.metadataChanged(),
          skipLastRecord: this.#mutant === 'replay-skips-last-record',
        },
        records,
      );
    } finally {
      this.#replaying = false;
    }
  }

  // ---- the superblock payload ----

  /** The payload of the transaction being sealed: the device tree brought up to date, the high-water mark sealed. */
  #sealPayload(): { payload: Uint8Array; highWaterMark: number } {
    this.#storeDirtyDevices();
    const highWaterMark = this.highWaterMark.seal();
    const payload = encodePoolPayload(this.payloadFields(highWaterMark));
    this.assertInvariants();
    return { payload, highWaterMark };
  }

  payloadFields(highWaterMark: number): PoolPayload {
    return {
      formatVersion: POOL_FORMAT_VERSION,
      blockSizeBytes: this.blockSizeBytes,
      flags: this.#flags,
      dataBlockCount: this.#dataBlockCount,
      dataSpaceMapRoot: this.dataSpace.root,
      deviceTreeRoot: this.devices.root,
      dataHighWaterMark: highWaterMark,
      time: this.devices.time,
      nextVolumeId: this.devices.nextVolumeId,
      creationTimeMs: this.#creationTimeMs,
      userTransactionId: this.devices.userTransactionId,
      space: this.space.settings,
      deviceTreeRootTransactionId: writtenBy(this.tm, this.devices.root, BTREE_BLOCK_TYPES),
      dataSpaceMapRootTransactionId: writtenBy(this.tm, this.dataSpace.root, BTREE_BLOCK_TYPES),
      badRangeRoot: this.badRanges.root,
      badRangeRootTransactionId: this.badRanges.root === 0 ? 0 : writtenBy(this.tm, this.badRanges.root, BTREE_BLOCK_TYPES),
    };
  }

  // ---- what the parts may ask of the engine ----

  #mappingHost(): MappingHost {
    const core = this;
    return {
      mutate: (what, treeChanges, change, room) => this.#mutate(what, treeChanges, change, room),
      markDirty: (device) => this.devices.markDirty(device),
      note: (entry) => this.#note(entry),
      get time() {
        return core.devices.time;
      },
    };
  }

  #dataPathHost(): DataPathHost {
    const core = this;
    return {
      assertWritable: () => this.assertWritable(),
      assertDeviceWritable: (device) => this.assertDeviceWritable(device),
      failIo: (reason, error) => this.#failIo(reason, error),
      get mayChange() {
        return core.mayChange;
      },
      metadataChanged: () => this.commits.metadataChanged(),
      commit: () => this.commits.commit(),
      commitFromRequest: () => this.commits.commit(1),
      remapLogged: () => void this.commits.rollupIfLogFull(),
      rollup: () => this.commits.rollup(),
      get commitRunning() {
        return core.commits.running;
      },
      get backgroundCommitMayStart() {
        return core.commits.backgroundCommitMayStart;
      },
      get logAttached() {
        return core.commits.log !== undefined;
      },
      recordBad: (ranges, flags) => this.recordBadData(ranges, flags),
      noteCarried: (dataBlock, oldDataBlock, offsetInBlockBytes, bytes) => this.noteCarried(dataBlock, oldDataBlock, offsetInBlockBytes, bytes),
      dataAllocated: () => this.space.dataAllocated(),
      dataSpaceWanted: (error, wait) => this.space.dataSpaceWanted(error, wait),
      metadataForWrite: () => this.space.metadataForWrite(this.#roomNeeded(TREE_CHANGES_PER_WRITE_MAX)),
    };
  }

  #spaceHost(): SpaceHost {
    const core = this;
    return {
      files: this.files,
      tm: this.tm,
      blockSizeBytes: this.blockSizeBytes,
      get dataBlockCount() {
        return core.#dataBlockCount;
      },
      dataSpace: this.dataSpace,
      allocator: this.allocator,
      highWaterMark: this.highWaterMark,
      get punchedFreeBlocks() {
        return core.dataPath.punchedFreeBlocks;
      },
      get mayChange() {
        return core.mayChange;
      },
      get mayPunch() {
        return core.mayPunch;
      },
      get backgroundCommitMayStart() {
        return core.commits.backgroundCommitMayStart;
      },
      applyDataGrowth: (blockCount) => this.#applyDataGrowth(blockCount),
      applyMetadataGrowth: (blockCount) => this.#applyMetadataGrowth(blockCount),
      roomForMetadata: (blockCount) => this.#roomForMetadata(blockCount),
      get metadataBlockCountMax() {
        return core.#metadataBlockCountMax();
      },
      settingsChanged: () => {
        this.commits.unloggedChange();
        this.commits.metadataChanged();
      },
      rollup: () => this.commits.rollup(),
      punched: (begin, end) => this.dataPath.punched(begin, end),
    };
  }

  #commitHost(): CommitHost {
    const core = this;
    return {
      get mode() {
        return core.#mode;
      },
      get closing() {
        return core.#closing;
      },
      get readOnlyOpen() {
        return core.readOnlyOpen;
      },
      get canCommit() {
        return core.canCommit;
      },
      get requestsInFlight() {
        return core.#requestsInFlight;
      },
      get requestsBegun() {
        return core.#requestsBegun;
      },
      get time() {
        return core.devices.time;
      },
      assertWritable: () => this.assertWritable(),
      fail: (reason, cause) => this.fail(reason, cause),
      ioFailureError: () => this.#ioFailureError(),
      sealPayload: () => this.#sealPayload(),
      assertInvariants: () => this.assertInvariants(true),
      absorbPendingBadRanges: () => this.absorbPendingBadRanges(),
      get pendingBadRanges() {
        return core.badRanges.pendingCount;
      },
      committed: () => this.space.committed(),
    };
  }
}
