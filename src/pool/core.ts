// The pool's engine: thin semantics on top of pdata. Pool and Volume are façades over it.
//
// State lives in two places. The committed state is pdata's: the superblock payload, the device
// tree, the mapping trees and the data space map. The working state is here: one Device per
// volume holding its current mapping root, mapped block count and times. Device tree values are
// brought up to date only when a transaction is sealed (#commitNow), as dm-thin writes its
// details at commit, so a write touches the device tree zero times instead of once per mapping.
//
// Ordering (docs/internals.md decisions 3-5; refs/fault-model.md §5; F-POOL-43):
// - A data block for a write is reserved in memory (allocator), the data written, and only then
//   is the mapping inserted and the block's reference count raised. A sealed transaction thus
//   references only completed data writes; the commit syncs the data file before its metadata.
// - A data block at or above the persisted high-water mark has never been written (F-POOL-40).
//   Before the first write to such a block the mark is raised and committed, so after a crash no
//   block above the mark holds anything; below it, a reused block is written whole (zeros around
//   the data) unless this process knows it still reads zeros.
// - Commits are issued one at a time by this class, and the payload is built synchronously right
//   before pdata seals, so the roots in the payload are exactly those of the sealed transaction.
//
// Concurrency: metadata operations are synchronous (internals decision 1), so they never
// interleave. Data I/O is asynchronous; requests hold range locks on the virtual blocks they touch
// (block-locks.ts), and snapshot / resize / remove hold the whole volume.
//
// Failure: a failed commit, a corrupt metadata block met while changing a tree, or running out of
// metadata space puts the pool in a sticky 'needs-check' mode: reads go on, every write, flush and
// management call fails with THIN_READ_ONLY naming the cause. Nothing is guessed. A failed write
// or sync of either file (a data write included) does the same, and from then on every flush
// fails with THIN_IO until the pool is reopened (refs/fault-model.md §6, G10).
import { ThinError, assert, isThinError } from '../errors.ts';
import {
  DATA_BLOCKS_RESERVED_MAX,
  DATA_HIGH_WATER_MARK_STEP_BLOCKS,
  LOG_ROLLUP_TICKS_MAX,
  METADATA_BLOCK_SIZE_BYTES,
  METADATA_BLOCK_HEADER_BYTES,
  METADATA_DIRTY_BLOCKS_SOFT_MAX,
  BTREE_DEPTH_MAX,
  COPY_BUFFERS_RETAINED_BYTES_MAX,
  INLINE_SYNC_DIRTY_BYTES_MAX,
  VOLUME_SIZE_BYTES_MAX,
} from '../constants.ts';
import type { BlockFile, SyncOptions } from '../io/block-file.ts';
import { BTREE_BLOCK_TYPES, BlockType, BTree, SpaceMap, type TransactionManager, type ValueCodec } from '../pdata/index.ts';
import { childAt, entryCount, isLeaf, valueOffset } from '../pdata/btree/node.ts';
import { DeltaLogEntryKind, type DeltaLog, type DeltaLogEntry } from '../journal/log.ts';
import type { DeltaLogRecord } from '../journal/replay.ts';
import { idleRollupDue, planFlush, type FlushState } from '../journal/rollup.ts';
import { DataAllocator } from './allocator.ts';
import { BlockLocks, WHOLE_VOLUME_END } from './block-locks.ts';
import {
  DEVICE_FLAG_READ_ONLY,
  DEVICE_TREE_KIND,
  DEVICE_VALUE_SIZE_BYTES,
  EXTENT_LENGTH_BLOCKS_MAX,
  EXTENT_VALUE_SIZE_BYTES,
  MAPPING_TREE_KIND,
  POOL_FLAG_DATA_NOT_ZEROED,
  POOL_FLAG_NEEDS_CHECK,
  POOL_FORMAT_VERSION,
  POOL_TIME_MAX,
  VOLUME_ID_MAX,
  decodeDetails,
  decodePoolPayload,
  encodeDetails,
  encodePoolPayload,
  packDeviceValue,
  packExtent,
  unpackDeviceValue,
  unpackExtent,
  validateVolumeName,
  type DeviceValue,
  type PoolPayload,
  type VolumeDetails,
} from './codecs.ts';
import {
  RangeSet,
  blockPieces,
  canMerge,
  coverageRuns,
  cutExtent,
  overlapLength,
  touchedBlocks,
  type CoverageRun,
  type Extent,
  type KeyedExtent,
} from './ranges.ts';

export type PoolMode = 'read-write' | 'read-only' | 'needs-check';

export interface PoolFiles {
  metadata: BlockFile;
  data: BlockFile;
}

export interface VolumeInfo {
  name: string;
  id: number;
  sizeBytes: number;
  /** Name of the volume this one is a snapshot of (kept after that volume is removed). */
  origin?: string;
  originId?: number;
  readOnly: boolean;
  createdAt: string;
  labels: Record<string, string>;
}

export interface VolumeUsage {
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
}

export interface PoolCounters {
  /** Every metadata block written: tree nodes, space maps, superblock copies and delta log records. */
  metadataBlocksWritten: number;
  dataBytesWritten: number;
  syncs: number;
  /** Full commits (superblock generations written). */
  commits: number;
  /** Flushes asked for: flush calls and FUA writes. */
  flushes: number;
  /** Full commits that folded the delta log into the trees (while the log is on). */
  rollups: number;
  /** Ring blocks holding records of the current log (0 right after a rollup, or with the log off). */
  logBlocksUsed: number;
  /** Delta log records written. */
  logRecordsWritten: number;
}

export interface PoolStatus {
  /** The pool's id (16 hex digits), random at create: tells pools apart (archive streams record it). */
  poolId: string;
  blockSizeBytes: number;
  dataBlockCount: number;
  dataBlocksUsed: number;
  metadataBlockCount: number;
  metadataBlocksUsed: number;
  transactionId: number;
  volumeCount: number;
  mode: PoolMode;
  /** Why the pool is not read-write, when it is not. */
  modeReason?: string;
  metadataPath: string;
  dataPath: string;
  counters: PoolCounters;
}

/** A volume's working state. */
export interface Device {
  readonly id: number;
  value: DeviceValue;
  details: VolumeDetails;
  /** The value differs from the device tree's. */
  dirty: boolean;
  removed: boolean;
}

interface Mapping {
  key: number;
  extent: Extent;
  dataBlock: number;
}

/** The superblock fields other than tree roots, kept in memory. */
interface PoolFields {
  blockSizeBytes: number;
  dataBlockCount: number;
  time: number;
  nextVolumeId: number;
  creationTimeMs: number;
  flags: number;
  userTransactionId: number;
}

/** Reserve for copy-on-write (F-POOL-42): 1 % of the data blocks, at most DATA_BLOCKS_RESERVED_MAX. */
export function dataReserveBlocks(dataBlockCount: number): number {
  return Math.min(DATA_BLOCKS_RESERVED_MAX, Math.floor(dataBlockCount / 100));
}

/** Worst case of new metadata blocks for one B+tree insert or removal: shadow and split every level, plus a new root. */
const METADATA_BLOCKS_PER_TREE_CHANGE_MAX = 2 * BTREE_DEPTH_MAX + 1;
/** Extents cut per metadata change by unmapRange (see there). */
const UNMAP_EXTENTS_PER_CHANGE = 8;

/** Bytes of the details JSON that fit a details block (F-POOL-30). */
export const DETAILS_CAPACITY_BYTES = METADATA_BLOCK_SIZE_BYTES - METADATA_BLOCK_HEADER_BYTES;

/**
 * Open's check of a candidate superblock generation (F-SB-6, F-POOL-5): the payload decodes and
 * its two roots are B+tree nodes of this pool. A torn commit fails here and open falls back.
 */
export function validatePayloadRoots(bytes: Uint8Array, tm: TransactionManager): void {
  const payload = decodePoolPayload(bytes, tm.metadataBlockCount);
  checkWrittenBy(tm, payload.deviceTreeRoot, BTREE_BLOCK_TYPES, payload.deviceTreeRootTransactionId, 'the device tree root');
  checkWrittenBy(tm, payload.dataSpaceMapRoot, BTREE_BLOCK_TYPES, payload.dataSpaceMapRootTransactionId, 'the data space map root');
}

/**
 * Reads a block that a pool structure references and checks that the transaction recorded with
 * the reference wrote it (F-POOL-8, F-POOL-16): an older valid block in its place is a lost or
 * misdirected write. A recorded 0 means not recorded.
 */
export function checkWrittenBy(tm: TransactionManager, blockNr: number, type: number | readonly number[], transactionId: number | undefined, what: string): void {
  const problem = staleBlockProblem(tm, blockNr, type, transactionId, what);
  if (problem !== undefined) throw new ThinError('THIN_CORRUPT_BLOCK', problem);
}

/** What checkWrittenBy would throw, as a sentence; undefined when the block is the one recorded. Read errors throw. */
export function staleBlockProblem(tm: TransactionManager, blockNr: number, type: number | readonly number[], transactionId: number | undefined, what: string): string | undefined {
  const block = tm.read(blockNr, type);
  if (transactionId === undefined || transactionId === 0 || block.transactionId === transactionId) return undefined;
  return `Metadata block ${blockNr}, ${what}, was written by transaction ${block.transactionId}, not ${transactionId} as recorded: a lost or misdirected write left a stale block`;
}

/** The transaction a block's header names (for a block changed in the open transaction: that one). */
export function writtenBy(tm: TransactionManager, blockNr: number, type: number | readonly number[]): number {
  return tm.read(blockNr, type).transactionId;
}

export function makeExtentCodec(dataBlockCount: number, dataSpace: () => SpaceMap): ValueCodec<Extent> {
  return {
    treeKind: MAPPING_TREE_KIND,
    sizeBytes: EXTENT_VALUE_SIZE_BYTES,
    pack: packExtent,
    unpack: (view, offsetBytes) => unpackExtent(view, offsetBytes, dataBlockCount),
    // F-POOL-23: every leaf entry holds one reference to each data block of its extent.
    retain: (value) => dataSpace().inc(value.dataBlock, value.lengthBlocks),
    release: (value) => dataSpace().dec(value.dataBlock, value.lengthBlocks),
  };
}

export function makeDeviceCodec(tm: TransactionManager, mappingTree: () => BTree<Extent>): ValueCodec<DeviceValue> {
  return {
    treeKind: DEVICE_TREE_KIND,
    sizeBytes: DEVICE_VALUE_SIZE_BYTES,
    // The transactions that wrote the blocks a value points at are taken from those blocks when
    // the value is stored, never from the value, whose copies may be older (F-POOL-16).
    pack: (value, view, offsetBytes) =>
      packDeviceValue(
        {
          ...value,
          mappingRootTransactionId: writtenBy(tm, value.mappingRoot, BTREE_BLOCK_TYPES),
          detailsTransactionId: writtenBy(tm, value.detailsBlock, BlockType.details),
        },
        view,
        offsetBytes,
      ),
    unpack: unpackDeviceValue,
    // The device tree is never shared, but if it were, its values own a mapping root and a details block each.
    retain: (value) => {
      mappingTree().retainTree(value.mappingRoot);
      tm.inc(value.detailsBlock);
    },
    release: (value) => {
      mappingTree().releaseTree(value.mappingRoot);
      tm.dec(value.detailsBlock);
    },
  };
}

export class PoolCore {
  readonly files: PoolFiles;
  readonly tm: TransactionManager;
  readonly blockSizeBytes: number;
  readonly dataBlockCount: number;
  readonly readOnlyOpen: boolean;
  readonly mappingTree: BTree<Extent>;
  readonly deviceTree: BTree<DeviceValue>;
  readonly dataSpace: SpaceMap;
  readonly locks = new BlockLocks();
  #allocator: DataAllocator;
  #fields: PoolFields;
  #deviceTreeRoot: number;
  #devices = new Map<number, Device>();
  /** Devices whose value differs from the device tree's (stored at seal, or earlier for room). */
  #dirtyDevices = new Set<Device>();
  #idByName = new Map<string, number>();
  /** Data blocks this process knows read as zeros: never written since the data file was made. */
  #knownZero = new RangeSet();
  /** The high-water mark in the last durable superblock, and the one the next commit will write. */
  #highWaterMarkDurable: number;
  #highWaterMarkTarget: number;
  /** The mark in the transaction sealed last (durable once its commit finishes). */
  #highWaterMarkSealed: number;
  #mode: PoolMode;
  #modeReason: string | undefined;
  #modeCause: unknown;
  /** Metadata changed since the last sealed transaction. */
  #metadataDirty = false;
  /** Bytes of data writes completed since the last data sync was started. */
  #dataBytesSinceSync = 0;
  #commitRunning: Promise<void> | undefined;
  #commitQueued: Promise<void> | undefined;
  /** While set, no commit starts: a reader of the committed state (a live check) is using it. */
  #commitHold: Promise<void> | undefined;
  #closed = false;
  #closing = false;
  /** Read-only because metadata ran out, with the state intact: commits are still allowed. */
  #commitsWhileReadOnly = false;
  /**
   * The first failed write or sync of either file (data or metadata). From then on every flush
   * fails with THIN_IO until the pool is reopened (refs/fault-model.md §6, G10): after EIO the
   * kernel may have dropped dirty pages and a later sync can succeed, so no later sync proves
   * anything written since the last good one.
   */
  #ioFailure: { reason: string; cause: unknown } | undefined;
  #requestsInFlight = 0;
  /** Requests begun since open, and that count at the commit timer's last tick (to tell a quiet interval). */
  #requestsBegun = 0;
  #requestsBegunAtTick = 0;
  /** Rollups seen at the last tick, and ticks since the count last changed (LOG_ROLLUP_TICKS_MAX). */
  #rollupsAtTick = 0;
  #ticksSinceRollup = 0;
  #drainWaiters: Array<() => void> = [];
  #dataBytesWritten = 0;
  #dataSyncs = 0;
  /** The delta log (src/journal), when flushes append records instead of committing. */
  #log: DeltaLog | undefined;
  /** A change the delta log does not describe was made since the last full commit: the next commit is one. */
  #unloggedChange = false;
  /** True while open re-applies delta log records (they are not logged again). */
  #replaying = false;
  #flushes = 0;
  #rollups = 0;
  /** Copy-on-write buffers of one block; long-lived zero buffer shared by every zeroing write. */
  readonly zeroBlock: Uint8Array;
  /**
   * Free block-sized scratch buffers for copy-on-write and partly written new blocks: one
   * allocated per such write made the garbage collector ~22% of the server's CPU on the
   * copy-on-write row. Bounded by COPY_BUFFERS_RETAINED_BYTES_MAX.
   */
  readonly #blockBuffers: Uint8Array[] = [];
  /** The wall clock for volume creation times (Pool's `now` option; the simulator fixes it). */
  now: () => number = Date.now;

  constructor(files: PoolFiles, tm: TransactionManager, payload: PoolPayload, readOnly: boolean) {
    this.files = files;
    this.tm = tm;
    this.readOnlyOpen = readOnly;
    this.blockSizeBytes = payload.blockSizeBytes;
    this.dataBlockCount = payload.dataBlockCount;
    this.#fields = {
      blockSizeBytes: payload.blockSizeBytes,
      dataBlockCount: payload.dataBlockCount,
      time: payload.time,
      nextVolumeId: payload.nextVolumeId,
      creationTimeMs: payload.creationTimeMs,
      flags: payload.flags,
      userTransactionId: payload.userTransactionId,
    };
    this.#deviceTreeRoot = payload.deviceTreeRoot;
    this.dataSpace = new SpaceMap(tm, payload.dataSpaceMapRoot, payload.dataBlockCount);
    this.mappingTree = new BTree<Extent>(tm, makeExtentCodec(payload.dataBlockCount, () => this.dataSpace));
    this.deviceTree = new BTree<DeviceValue>(tm, makeDeviceCodec(tm, () => this.mappingTree));
    this.#allocator = new DataAllocator(this.dataSpace, payload.dataBlockCount, dataReserveBlocks(payload.dataBlockCount));
    this.#highWaterMarkDurable = payload.dataHighWaterMark;
    this.#highWaterMarkTarget = payload.dataHighWaterMark;
    this.#highWaterMarkSealed = payload.dataHighWaterMark;
    if ((payload.flags & POOL_FLAG_DATA_NOT_ZEROED) === 0) this.#knownZero.add(payload.dataHighWaterMark, payload.dataBlockCount);
    this.zeroBlock = new Uint8Array(payload.blockSizeBytes);
    if (readOnly) {
      this.#mode = 'read-only';
      this.#modeReason = 'opened read-only';
    } else if ((payload.flags & POOL_FLAG_NEEDS_CHECK) !== 0) {
      this.#mode = 'needs-check';
      this.#modeReason = 'the pool is marked as needing a check';
    } else {
      this.#mode = 'read-write';
    }
  }

  // ---- opening ----

  /** Loads every device and its details; names must be unique (F-POOL-32). */
  loadDevices(): void {
    for (const [id, value] of this.deviceTree.entries(this.#deviceTreeRoot)) {
      checkWrittenBy(this.tm, value.mappingRoot, BTREE_BLOCK_TYPES, value.mappingRootTransactionId, `the mapping root of volume id ${id}`);
      checkWrittenBy(this.tm, value.detailsBlock, BlockType.details, value.detailsTransactionId, `the details of volume id ${id}`);
      const details = this.readDetails(value.detailsBlock, `of volume id ${id} (block ${value.detailsBlock})`);
      if (this.#idByName.has(details.name)) {
        throw new ThinError('THIN_CORRUPT_NODE', `Two volumes are named ${details.name} (ids ${this.#idByName.get(details.name)} and ${id})`);
      }
      this.#devices.set(id, { id, value, details, dirty: false, removed: false });
      this.#idByName.set(details.name, id);
    }
  }

  readDetails(blockNr: number, where: string): VolumeDetails {
    const block = this.tm.read(blockNr, BlockType.details);
    return decodeDetails(block.bytes.subarray(METADATA_BLOCK_HEADER_BYTES), where);
  }

  /** Writes details into a new details block (F-POOL-30). */
  #writeDetails(details: VolumeDetails): number {
    const encoded = encodeDetails(details, DETAILS_CAPACITY_BYTES);
    const block = this.tm.allocate(BlockType.details);
    block.bytes.fill(0, METADATA_BLOCK_HEADER_BYTES);
    block.bytes.set(encoded, METADATA_BLOCK_HEADER_BYTES);
    return block.blockNr;
  }

  // ---- state queries ----

  get mode(): PoolMode {
    return this.#mode;
  }

  get time(): number {
    return this.#fields.time;
  }

  get highWaterMarkDurable(): number {
    return this.#highWaterMarkDurable;
  }

  get deviceTreeRoot(): number {
    return this.#deviceTreeRoot;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get allocator(): DataAllocator {
    return this.#allocator;
  }

  deviceById(id: number): Device | undefined {
    return this.#devices.get(id);
  }

  deviceByName(name: string): Device {
    this.assertOpen();
    const id = this.#idByName.get(name);
    if (id === undefined) throw new ThinError('THIN_NOT_FOUND', `No volume named ${name}`);
    const device = this.#devices.get(id);
    assert(device !== undefined, `name ${name} maps to missing device ${id}`);
    return device;
  }

  devices(): Device[] {
    return [...this.#devices.values()].sort((a, b) => a.id - b.id);
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
    if ((device.value.flags & DEVICE_FLAG_READ_ONLY) !== 0) {
      throw new ThinError('THIN_READ_ONLY', `Volume ${device.details.name} is read-only`);
    }
  }

  /** Enters the sticky needs-check mode (see the module comment). */
  fail(reason: string, cause: unknown, mode: 'read-only' | 'needs-check' = 'needs-check'): void {
    if (this.#ioFailure === undefined && isThinError(cause, 'THIN_IO')) this.#ioFailure = { reason, cause };
    if (this.#mode === 'needs-check' || (this.#mode === 'read-only' && mode === 'read-only')) return;
    // Out of metadata space the state is intact (see #mutate): what is done may still be committed.
    this.#commitsWhileReadOnly = mode === 'read-only';
    // What a failed change left half done is committed whole or not at all, never logged.
    this.#unloggedChange = true;
    this.#mode = mode;
    this.#modeReason = reason;
    this.#modeCause = cause;
  }

  /**
   * Runs a synchronous metadata change of at most `treeChanges` B+tree inserts or removals (space
   * map updates included). pdata checks for room before each of its own operations, but a pool
   * change is several of them: room for all is checked first, so running out of metadata fails
   * the change before anything moved (F-POOL-44), and the pool goes read-only saying why, its
   * state intact. Any other error half way leaves the open transaction unusable: needs-check.
   */
  #mutate<T>(what: string, treeChanges: number, change: () => T): T {
    // Replay at open re-applies acknowledged changes whatever mode the pool opens in.
    if (!this.#replaying) this.assertWritable();
    try {
      this.#ensureRoom(treeChanges);
    } catch (error) {
      if (isThinError(error, 'THIN_NO_METADATA_SPACE')) this.fail(`out of metadata space while ${what}: ${error.message}`, error, 'read-only');
      throw error;
    }
    try {
      const result = change();
      this.#metadataDirty = true;
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
  #ensureRoom(treeChanges: number): void {
    const needed = (): number => (treeChanges + this.#dirtyDevices.size + 1) * METADATA_BLOCKS_PER_TREE_CHANGE_MAX;
    try {
      this.tm.ensureMetadataSpace(needed());
      return;
    } catch (error) {
      if (!isThinError(error, 'THIN_NO_METADATA_SPACE') || this.#dirtyDevices.size === 0) throw error;
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

  #markDirty(device: Device): void {
    device.dirty = true;
    this.#dirtyDevices.add(device);
  }

  /** Writes the values of devices changed since they were last stored into the device tree. */
  #storeDirtyDevices(): void {
    for (const device of [...this.#dirtyDevices].sort((a, b) => a.id - b.id)) {
      if (!device.removed) this.#deviceTreeRoot = this.deviceTree.insert(this.#deviceTreeRoot, device.id, device.value);
      device.dirty = false;
      this.#dirtyDevices.delete(device);
      this.#metadataDirty = true;
    }
  }

  // ---- mapping lookups ----

  lookup(device: Device, virtualBlock: number): Mapping | undefined {
    const found = this.mappingTree.floor(device.value.mappingRoot, virtualBlock);
    if (found === undefined) return undefined;
    const [key, extent] = found;
    if (virtualBlock >= key + extent.lengthBlocks) return undefined;
    return { key, extent, dataBlock: extent.dataBlock + (virtualBlock - key) };
  }

  /** Mapped and unmapped runs of virtual blocks [begin, end), in order. */
  blockRuns(device: Device, begin: number, end: number): Array<{ begin: number; end: number; dataBlock?: number }> {
    const runs: Array<{ begin: number; end: number; dataBlock?: number }> = [];
    const root = device.value.mappingRoot;
    let position = begin;
    const first = this.mappingTree.floor(root, begin);
    const extents: KeyedExtent[] = [];
    if (first !== undefined && first[0] + first[1].lengthBlocks > begin) extents.push({ virtualBlock: first[0], ...first[1] });
    for (const [key, extent] of this.mappingTree.entries(root, begin, end)) {
      if (key === first?.[0]) continue;
      extents.push({ virtualBlock: key, ...extent });
    }
    for (const extent of extents) {
      const extentBegin = Math.max(extent.virtualBlock, begin);
      const extentEnd = Math.min(extent.virtualBlock + extent.lengthBlocks, end);
      if (extentBegin >= extentEnd) continue;
      if (extentBegin > position) runs.push({ begin: position, end: extentBegin });
      runs.push({ begin: extentBegin, end: extentEnd, dataBlock: extent.dataBlock + (extentBegin - extent.virtualBlock) });
      position = extentEnd;
    }
    if (position < end) runs.push({ begin: position, end });
    return runs;
  }

  // ---- mapping changes (synchronous) ----

  /** Maps virtualBlock (unmapped) to dataBlock at the current time, merging with neighbours (F-POOL-22). */
  #insertMapping(device: Device, virtualBlock: number, dataBlock: number, logged = true): void {
    this.#mutate(`mapping block ${virtualBlock} of volume ${device.details.name}`, 5, () => {
      const root = this.#insertJoined(device.value.mappingRoot, { virtualBlock, dataBlock, lengthBlocks: 1, time: this.#fields.time }, true, true);
      this.dataSpace.inc(dataBlock, 1);
      device.value = { ...device.value, mappingRoot: root, mappedBlockCount: device.value.mappedBlockCount + 1 };
      this.#markDirty(device);
      if (logged) this.#note({ kind: DeltaLogEntryKind.map, volumeId: device.id, virtualBlock, lengthBlocks: 1, dataBlock, oldDataBlock: 0 });
    });
  }

  /**
   * Removes the mappings of virtual blocks [begin, end), dropping their data references. Extents
   * are cut a few at a time, each batch one change (#mutate), so a discard of a long, fragmented
   * range never needs room for all of it at once.
   */
  unmapRange(device: Device, begin: number, end: number, logged = true): number {
    if (begin >= end) return 0;
    const tree = this.mappingTree;
    const extents: Array<[number, Extent]> = [];
    const first = tree.floor(device.value.mappingRoot, begin);
    if (first !== undefined && first[0] < begin && first[0] + first[1].lengthBlocks > begin) extents.push(first);
    for (const entry of tree.entries(device.value.mappingRoot, begin, end)) extents.push(entry);
    let unmappedBlocks = 0;
    for (let batchBegin = 0; batchBegin < extents.length; batchBegin += UNMAP_EXTENTS_PER_CHANGE) {
      const batch = extents.slice(batchBegin, batchBegin + UNMAP_EXTENTS_PER_CHANGE);
      unmappedBlocks += this.#mutate(`unmapping blocks [${begin}, ${end}) of volume ${device.details.name}`, 4 * batch.length, () => {
        let root = device.value.mappingRoot;
        let batchBlocks = 0;
        for (const [key, extent] of batch) {
          const cut = cutExtent(key, extent, begin, end);
          if (cut.removed === undefined) continue;
          if (cut.left !== undefined) root = tree.insert(root, key, { dataBlock: cut.left.dataBlock, lengthBlocks: cut.left.lengthBlocks, time: cut.left.time });
          else root = tree.remove(root, key);
          if (cut.right !== undefined) {
            root = tree.insert(root, cut.right.virtualBlock, { dataBlock: cut.right.dataBlock, lengthBlocks: cut.right.lengthBlocks, time: cut.right.time });
          }
          this.dataSpace.dec(cut.removed.dataBlock, cut.removed.lengthBlocks);
          batchBlocks += cut.removed.lengthBlocks;
        }
        assert(batchBlocks <= device.value.mappedBlockCount, 'unmapped more blocks than were mapped');
        device.value = { ...device.value, mappingRoot: root, mappedBlockCount: device.value.mappedBlockCount - batchBlocks };
        this.#markDirty(device);
        if (logged && batchBlocks > 0) {
          // The batch's extents are every mapping between its first and last, so unmapping that
          // span again on replay removes exactly these.
          const [lastKey, lastExtent] = batch[batch.length - 1]!;
          const spanBegin = Math.max(begin, batch[0]![0]);
          const spanEnd = Math.min(end, lastKey + lastExtent.lengthBlocks);
          this.#note({ kind: DeltaLogEntryKind.unmap, volumeId: device.id, virtualBlock: spanBegin, lengthBlocks: spanEnd - spanBegin, dataBlock: 0, oldDataBlock: 0 });
        }
        return batchBlocks;
      });
    }
    return unmappedBlocks;
  }

  /**
   * Inserts the one-block extent `block`, whose virtual block `root` leaves unmapped, joined with
   * the neighbour on either side that it continues (F-POOL-22); a side passed false is one the
   * caller knows cannot continue it, and is not looked up. Returns the new root.
   */
  #insertJoined(root: number, block: KeyedExtent, joinLeft: boolean, joinRight: boolean): number {
    const tree = this.mappingTree;
    const { virtualBlock } = block;
    let joined = block;
    if (joinLeft && virtualBlock > 0) {
      const left = tree.floor(root, virtualBlock - 1);
      if (left !== undefined) {
        const leftExtent: KeyedExtent = { virtualBlock: left[0], ...left[1] };
        assert(leftExtent.virtualBlock + leftExtent.lengthBlocks <= virtualBlock, `block ${virtualBlock} is already mapped`);
        if (canMerge(leftExtent, joined, EXTENT_LENGTH_BLOCKS_MAX)) joined = { ...leftExtent, lengthBlocks: leftExtent.lengthBlocks + 1 };
      }
    }
    if (joinRight) {
      const right = tree.lookup(root, virtualBlock + 1);
      if (right !== undefined && canMerge(joined, { virtualBlock: virtualBlock + 1, ...right }, EXTENT_LENGTH_BLOCKS_MAX)) {
        root = tree.remove(root, virtualBlock + 1);
        joined = { ...joined, lengthBlocks: joined.lengthBlocks + right.lengthBlocks };
      }
    }
    return tree.insert(root, joined.virtualBlock, { dataBlock: joined.dataBlock, lengthBlocks: joined.lengthBlocks, time: joined.time });
  }

  /**
   * Moves virtualBlock (mapped to oldBlock) to newBlock at the current time: the end of a
   * copy-on-write, as one change. The extent holding the block keeps the parts around it; the
   * new mapping merges with a neighbour it continues (F-POOL-22). Four tree operations for a
   * block inside an extent, where an unmap and a separate insert took seven (the remap was a
   * fifth of the server's CPU on writes after a snapshot).
   */
  #remap(device: Device, virtualBlock: number, oldBlock: number, newBlock: number): void {
    this.#mutate(`moving block ${virtualBlock} of volume ${device.details.name}`, 6, () => {
      const tree = this.mappingTree;
      let root = device.value.mappingRoot;
      const found = tree.floor(root, virtualBlock);
      assert(
        found !== undefined && virtualBlock < found[0] + found[1].lengthBlocks && found[1].dataBlock + (virtualBlock - found[0]) === oldBlock,
        `block ${virtualBlock} moved during copy-on-write`,
      );
      const [key, extent] = found;
      const before = virtualBlock - key;
      const after = extent.lengthBlocks - before - 1;
      if (before > 0) root = tree.insert(root, key, { dataBlock: extent.dataBlock, lengthBlocks: before, time: extent.time });
      else root = tree.remove(root, key);
      if (after > 0) root = tree.insert(root, virtualBlock + 1, { dataBlock: oldBlock + 1, lengthBlocks: after, time: extent.time });
      // The kept pieces of the old extent hold old blocks, which the new one never continues.
      root = this.#insertJoined(root, { virtualBlock, dataBlock: newBlock, lengthBlocks: 1, time: this.#fields.time }, before === 0, after === 0);
      this.dataSpace.dec(oldBlock, 1);
      this.dataSpace.inc(newBlock, 1);
      device.value = { ...device.value, mappingRoot: root };
      this.#markDirty(device);
    });
    // One entry: replay never shows the block unmapped between the two halves.
    this.#note({ kind: DeltaLogEntryKind.remap, volumeId: device.id, virtualBlock, lengthBlocks: 1, dataBlock: newBlock, oldDataBlock: oldBlock });
  }

  #note(entry: DeltaLogEntry): void {
    if (this.#log !== undefined && !this.#replaying) this.#log.note(entry);
  }

  /**
   * Whether a write to a mapped block must copy it. dm-thin's time test (F-POOL-24): a mapping
   * written before the volume's last snapshot may be shared, so it is copied, even when the data
   * block's count now says only this volume holds it. The count cannot be trusted for this: it
   * reflects the open transaction, and when the other holder broke sharing in that transaction,
   * the last committed state still has it pointing at the block. Writing in place would change
   * that holder's committed contents, which a crash before the next commit brings back (the
   * crash simulator found this). A copied block gets the current time and is written in place
   * from then on.
   */
  #mustCopy(device: Device, mapping: Mapping): boolean {
    return mapping.extent.time < device.value.snapshottedTime;
  }

  // ---- data I/O ----

  async dataWrite(source: Uint8Array, offsetBytes: number): Promise<void> {
    this.#dataBytesWritten += source.length;
    try {
      await this.files.data.write(source, offsetBytes);
    } catch (error) {
      // The request fails, and so does every later flush (see #ioFailure): the next sync might
      // succeed without the pages this write or an earlier one left dirty.
      if (!isThinError(error, 'THIN_CLOSED')) {
        const reason = `a data write of ${source.length} bytes at byte ${offsetBytes} failed: ${error instanceof Error ? error.message : String(error)}`;
        this.#ioFailure ??= { reason, cause: error };
        this.fail(reason, error);
      }
      throw error;
    }
    // Counted on completion: a write still in flight when a commit resets the count is not
    // covered by that commit's sync, and the next flush must sync for it.
    this.#dataBytesSinceSync += source.length;
  }

  /**
   * Starts the commit that raises the high-water mark while half a step is still left below it,
   * so that allocating writes rarely wait for it: waiting, a run of new or copied blocks stalled
   * on one commit (an fdatasync of up to a step of data) every DATA_HIGH_WATER_MARK_STEP_BLOCKS.
   * Only a raise that was due anyway, made sooner; F-POOL-40 holds because writes above the
   * durable mark still wait in #coverByHighWaterMark.
   */
  #raiseHighWaterMarkAhead(block: number): void {
    if (block + DATA_HIGH_WATER_MARK_STEP_BLOCKS / 2 < this.#highWaterMarkTarget) return;
    if (this.#highWaterMarkTarget >= this.dataBlockCount || block >= this.#highWaterMarkDurable) return;
    if (this.#mode !== 'read-write' || this.#closing || this.#commitRunning !== undefined || this.#commitQueued !== undefined) return;
    this.#raiseHighWaterMarkTarget(this.#highWaterMarkTarget + DATA_HIGH_WATER_MARK_STEP_BLOCKS);
    this.commit().catch(() => undefined);
  }

  /**
   * The next commit raises the high-water mark to `target` blocks. The data file's space for the
   * new blocks is allocated now (a hint, see BlockFile.allocate): the writes that provision and
   * copy into them are then cheaper, and the host file system's space is taken a step ahead.
   */
  #raiseHighWaterMarkTarget(target: number): void {
    const from = this.#highWaterMarkTarget;
    this.#highWaterMarkTarget = Math.min(this.dataBlockCount, target);
    this.#metadataDirty = true;
    const bs = this.blockSizeBytes;
    if (this.#highWaterMarkTarget > from) void this.files.data.allocate?.(from * bs, (this.#highWaterMarkTarget - from) * bs);
  }

  /** Raises and commits the high-water mark so that `block` lies below it (F-POOL-40). */
  async #coverByHighWaterMark(block: number): Promise<void> {
    while (block >= this.#highWaterMarkDurable) {
      if (block < this.#highWaterMarkSealed && this.#commitRunning !== undefined) {
        // The commit already running raises the mark past this block: wait for it, start none.
        await this.#commitRunning.catch(() => undefined);
        this.assertWritable();
        continue;
      }
      if (block >= this.#highWaterMarkTarget) {
        this.#raiseHighWaterMarkTarget(Math.max(block + 1, this.#highWaterMarkTarget) + DATA_HIGH_WATER_MARK_STEP_BLOCKS);
      }
      await this.commit();
    }
  }

  /**
   * Writes `source` (or zeros, when source is undefined) at offsetInBlockBytes of virtualBlock.
   * The caller holds the block's lock.
   */
  async writeInBlock(device: Device, virtualBlock: number, offsetInBlockBytes: number, source: Uint8Array | undefined, lengthBytes: number): Promise<void> {
    this.assertDeviceWritable(device);
    const mapping = this.lookup(device, virtualBlock);
    if (mapping === undefined) {
      await this.#provision(device, virtualBlock, offsetInBlockBytes, source, lengthBytes);
      return;
    }
    if (this.#mustCopy(device, mapping)) {
      await this.#copyOnWrite(device, virtualBlock, mapping.dataBlock, offsetInBlockBytes, source, lengthBytes);
      return;
    }
    const bytes = source ?? this.zeroBlock.subarray(0, lengthBytes);
    await this.dataWrite(bytes, mapping.dataBlock * this.blockSizeBytes + offsetInBlockBytes);
  }

  /**
   * Reserves a data block. With the delta log, blocks freed by logged changes stay pending until a
   * rollup commits (F-LOG-8), so when only such blocks are left, a rollup frees them and the
   * allocation is tried once more.
   */
  async #allocateData(device: Device, options: { mayUseReserve?: boolean }): Promise<number> {
    try {
      return this.#allocator.allocate(device.id, options);
    } catch (error) {
      if (!isThinError(error, 'THIN_NO_SPACE') || this.#log === undefined || this.dataSpace.pendingFreeBlockCount === 0) throw error;
    }
    await this.rollup();
    this.assertDeviceWritable(device);
    return this.#allocator.allocate(device.id, options);
  }

  async #provision(device: Device, virtualBlock: number, offsetInBlockBytes: number, source: Uint8Array | undefined, lengthBytes: number): Promise<void> {
    const block = await this.#allocateData(device, {});
    try {
      const knownZero = this.#knownZero.has(block);
      this.#knownZero.remove(block, block + 1);
      this.#raiseHighWaterMarkAhead(block);
      if (block >= this.#highWaterMarkDurable) await this.#coverByHighWaterMark(block);
      const offsetBytes = block * this.blockSizeBytes;
      if (knownZero && (source === undefined || offsetInBlockBytes !== 0)) {
        // The block reads zeros: write only the bytes asked for, and nothing at all for zeros.
        if (source !== undefined) await this.dataWrite(source, offsetBytes + offsetInBlockBytes);
      } else if (source !== undefined && lengthBytes === this.blockSizeBytes) {
        await this.dataWrite(source, offsetBytes);
      } else {
        // A reused block may hold anything: write it whole, zeros around the data. So is a
        // never-written block whose first write starts at its beginning: that is usually the head
        // of a sequential stream (a journal, a log, a file appended with fsync), and the file
        // system then allocates the whole block at once, so the stream's later writes into it
        // overwrite written space. Written piece by piece, every sync after a write into a
        // fallocated (unwritten) part costs ext4 a journal commit to convert it (ext4 fsync loop:
        // 574 -> 628 rewrites/s); random writes begin a block only once in blockSize/writeSize.
        if (source === undefined) {
          await this.dataWrite(this.zeroBlock, offsetBytes);
        } else {
          const whole = this.#takeBlockBuffer();
          try {
            whole.fill(0, 0, offsetInBlockBytes);
            whole.set(source, offsetInBlockBytes);
            whole.fill(0, offsetInBlockBytes + lengthBytes);
            await this.dataWrite(whole, offsetBytes);
          } finally {
            this.#giveBlockBuffer(whole);
          }
        }
      }
      this.assertDeviceWritable(device);
      this.#insertMapping(device, virtualBlock, block);
    } finally {
      this.#allocator.release(block);
    }
  }

  async #copyOnWrite(device: Device, virtualBlock: number, oldBlock: number, offsetInBlockBytes: number, source: Uint8Array | undefined, lengthBytes: number): Promise<void> {
    const block = await this.#allocateData(device, { mayUseReserve: true });
    try {
      this.#knownZero.remove(block, block + 1);
      this.#raiseHighWaterMarkAhead(block);
      if (block >= this.#highWaterMarkDurable) await this.#coverByHighWaterMark(block);
      if (lengthBytes === this.blockSizeBytes) {
        await this.dataWrite(source ?? this.zeroBlock, block * this.blockSizeBytes);
      } else {
        const whole = this.#takeBlockBuffer();
        try {
          await this.files.data.read(whole, oldBlock * this.blockSizeBytes);
          if (source !== undefined) whole.set(source, offsetInBlockBytes);
          else whole.fill(0, offsetInBlockBytes, offsetInBlockBytes + lengthBytes);
          await this.dataWrite(whole, block * this.blockSizeBytes);
        } finally {
          this.#giveBlockBuffer(whole);
        }
      }
      this.assertDeviceWritable(device);
      this.#remap(device, virtualBlock, oldBlock, block);
    } finally {
      this.#allocator.release(block);
    }
  }

  #takeBlockBuffer(): Uint8Array {
    return this.#blockBuffers.pop() ?? new Uint8Array(this.blockSizeBytes);
  }

  #giveBlockBuffer(buffer: Uint8Array): void {
    assert(buffer.length === this.blockSizeBytes, 'a scratch buffer of another size');
    if ((this.#blockBuffers.length + 1) * this.blockSizeBytes <= COPY_BUFFERS_RETAINED_BYTES_MAX) this.#blockBuffers.push(buffer);
  }

  /**
   * Reads virtual bytes [offsetBytes, +target.length) of a device; the caller holds the lock.
   * Resolves true when some of the range is unmapped (read as zeros).
   */
  async readRange(device: Device, offsetBytes: number, target: Uint8Array): Promise<boolean> {
    const bs = this.blockSizeBytes;
    const { begin, end } = touchedBlocks(offsetBytes, target.length, bs);
    if (end - begin === 1) {
      // Most requests (4 KiB from a guest) sit inside one block: one lookup, no run list.
      const mapping = this.lookup(device, begin);
      if (mapping === undefined) {
        target.fill(0);
        return true;
      }
      await this.files.data.read(target, mapping.dataBlock * bs + (offsetBytes - begin * bs));
      return false;
    }
    const endBytes = offsetBytes + target.length;
    const reads: Promise<void>[] = [];
    let unmapped = false;
    for (const run of this.blockRuns(device, begin, end)) {
      const runBeginBytes = Math.max(run.begin * bs, offsetBytes);
      const runEndBytes = Math.min(run.end * bs, endBytes);
      const piece = target.subarray(runBeginBytes - offsetBytes, runEndBytes - offsetBytes);
      if (run.dataBlock === undefined) {
        piece.fill(0);
        unmapped = true;
      } else {
        reads.push(this.files.data.read(piece, run.dataBlock * bs + (runBeginBytes - run.begin * bs)));
      }
    }
    await settleAll(reads);
    return unmapped;
  }

  /**
   * Writes bytes [offsetBytes, +lengthBytes); the caller holds the lock. A write that lies inside
   * one mapped extent the device owns goes in place in one system call (a 1 MiB write to a
   * sequentially written volume was sixteen 64 KiB pwrites, lookups and promises); any other is
   * written block by block.
   */
  async writeRange(device: Device, offsetBytes: number, source: Uint8Array | undefined, lengthBytes: number): Promise<void> {
    if (source !== undefined) {
      const inPlaceBytes = this.#inPlaceOffset(device, offsetBytes, lengthBytes);
      if (inPlaceBytes !== undefined) {
        this.assertDeviceWritable(device);
        await this.dataWrite(source.subarray(0, lengthBytes), inPlaceBytes);
        return;
      }
    }
    const pieces = blockPieces(offsetBytes, lengthBytes, this.blockSizeBytes);
    await settleAll(
      pieces.map((piece) =>
        this.writeInBlock(
          device,
          piece.virtualBlock,
          piece.offsetInBlockBytes,
          source?.subarray(piece.requestOffsetBytes, piece.requestOffsetBytes + piece.lengthBytes),
          piece.lengthBytes,
        ),
      ),
    );
  }

  /** Where in the data file the range is, when one extent maps all of it and needs no copy. */
  #inPlaceOffset(device: Device, offsetBytes: number, lengthBytes: number): number | undefined {
    const bs = this.blockSizeBytes;
    const { begin, end } = touchedBlocks(offsetBytes, lengthBytes, bs);
    const mapping = this.lookup(device, begin);
    if (mapping === undefined || end > mapping.key + mapping.extent.lengthBlocks || this.#mustCopy(device, mapping)) return undefined;
    return mapping.dataBlock * bs + (offsetBytes - begin * bs);
  }

  /**
   * Zeros bytes [offsetBytes, +lengthBytes): blocks covered whole are unmapped (or, with keepAllocated,
   * provisioned and zeroed); partial pieces of mapped blocks are zeroed in place or by copy-on-write.
   * A block that ends at the volume's end counts as covered whole. The caller holds the lock.
   */
  async zeroRange(device: Device, offsetBytes: number, lengthBytes: number, keepAllocated: boolean): Promise<void> {
    const bs = this.blockSizeBytes;
    const work: Promise<void>[] = [];
    const unmapBlocks: number[] = [];
    for (const piece of blockPieces(offsetBytes, lengthBytes, bs)) {
      const blockEndBytes = Math.min((piece.virtualBlock + 1) * bs, device.value.sizeBytes);
      const whole = piece.offsetInBlockBytes === 0 && piece.virtualBlock * bs + piece.lengthBytes >= blockEndBytes;
      if (whole && !keepAllocated) {
        unmapBlocks.push(piece.virtualBlock);
      } else if (keepAllocated || this.lookup(device, piece.virtualBlock) !== undefined) {
        const lengthInBlock = whole ? bs : piece.lengthBytes;
        work.push(this.writeInBlock(device, piece.virtualBlock, piece.offsetInBlockBytes, undefined, lengthInBlock));
      }
    }
    if (unmapBlocks.length > 0) {
      this.assertDeviceWritable(device);
      // The blocks to unmap are consecutive: pieces come in order and only the ends can be partial.
      this.unmapRange(device, unmapBlocks[0]!, unmapBlocks[unmapBlocks.length - 1]! + 1);
    }
    await settleAll(work);
  }

  // ---- volumes ----

  validateNewName(name: string): void {
    const problem = validateVolumeName(name);
    if (problem !== undefined) throw new ThinError('THIN_INVALID', `Invalid volume name: ${problem}`);
    if (this.#idByName.has(name)) throw new ThinError('THIN_EXISTS', `A volume named ${name} already exists`);
  }

  #nextId(): number {
    const id = this.#fields.nextVolumeId;
    if (id > VOLUME_ID_MAX) throw new ThinError('THIN_INVALID', 'Every volume id has been used');
    return id;
  }

  createDevice(name: string, sizeBytes: number, labels: Record<string, string>): Device {
    this.assertWritable();
    this.validateNewName(name);
    validateSize(sizeBytes);
    validateLabels(labels);
    const id = this.#nextId();
    const details: VolumeDetails = { name, labels: { ...labels }, createdAt: new Date(this.now()).toISOString() };
    encodeDetails(details, DETAILS_CAPACITY_BYTES); // THIN_INVALID before anything changes
    return this.#mutate(`creating volume ${name}`, 1, () => {
      const detailsBlock = this.#writeDetails(details);
      const mappingRoot = this.mappingTree.createEmpty();
      const time = this.#fields.time;
      const value: DeviceValue = {
        mappingRoot,
        detailsBlock,
        sizeBytes,
        mappedBlockCount: 0,
        transactionId: this.#fields.userTransactionId, // dm-thin's: the pool's user transaction id at creation
        creationTime: time,
        snapshottedTime: time,
        flags: 0,
      };
      this.#fields.nextVolumeId = id + 1;
      this.#unloggedChange = true;
      return this.#addDevice(id, value, details);
    });
  }

  #addDevice(id: number, value: DeviceValue, details: VolumeDetails): Device {
    const device: Device = { id, value, details, dirty: false, removed: false };
    this.#devices.set(id, device);
    this.#idByName.set(details.name, id);
    this.#markDirty(device);
    return device;
  }

  /** The O(1) snapshot (F-POOL-25); the caller holds the source's whole-volume lock. */
  snapshotDevice(source: Device, name: string, readOnly: boolean): Device {
    this.assertWritable();
    if (source.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${source.details.name} was removed`);
    this.validateNewName(name);
    const id = this.#nextId();
    if (this.#fields.time >= POOL_TIME_MAX) throw new ThinError('THIN_INVALID', 'The pool time (snapshot counter) is exhausted');
    const details: VolumeDetails = {
      name,
      labels: { ...source.details.labels },
      createdAt: new Date(this.now()).toISOString(),
      originName: source.details.name,
      originId: source.id,
    };
    encodeDetails(details, DETAILS_CAPACITY_BYTES);
    return this.#mutate(`snapshotting ${source.details.name} as ${name}`, 1, () => {
      const detailsBlock = this.#writeDetails(details);
      this.mappingTree.retainTree(source.value.mappingRoot);
      const time = this.#fields.time + 1;
      this.#fields.time = time;
      this.#fields.nextVolumeId = id + 1;
      source.value = { ...source.value, snapshottedTime: time };
      this.#markDirty(source);
      const value: DeviceValue = {
        mappingRoot: source.value.mappingRoot,
        detailsBlock,
        sizeBytes: source.value.sizeBytes,
        mappedBlockCount: source.value.mappedBlockCount,
        transactionId: this.#fields.userTransactionId, // dm-thin's: the pool's user transaction id at creation
        creationTime: time,
        snapshottedTime: time,
        flags: readOnly ? DEVICE_FLAG_READ_ONLY : 0,
      };
      this.#unloggedChange = true;
      return this.#addDevice(id, value, details);
    });
  }

  /** The caller holds the device's whole-volume lock. */
  removeDevice(device: Device): void {
    this.assertWritable();
    if (device.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${device.details.name} was removed`);
    this.#mutate(`removing volume ${device.details.name}`, 8, () => {
      this.#unloggedChange = true;
      this.mappingTree.releaseTree(device.value.mappingRoot);
      this.tm.dec(device.value.detailsBlock);
      if (this.deviceTree.lookup(this.#deviceTreeRoot, device.id) !== undefined) {
        this.#deviceTreeRoot = this.deviceTree.remove(this.#deviceTreeRoot, device.id);
      }
      device.removed = true;
      device.dirty = false;
      this.#dirtyDevices.delete(device);
      this.#devices.delete(device.id);
      this.#idByName.delete(device.details.name);
      this.#allocator.forgetVolume(device.id);
    });
  }

  /** Gives a volume a new name (a new details block, F-POOL-30); its id, mappings and labels stay. */
  renameDevice(device: Device, newName: string): void {
    this.assertWritable();
    if (device.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${device.details.name} was removed`);
    this.validateNewName(newName);
    const oldName = device.details.name;
    const details: VolumeDetails = { ...device.details, name: newName };
    encodeDetails(details, DETAILS_CAPACITY_BYTES);
    this.#mutate(`renaming volume ${oldName} to ${newName}`, 1, () => {
      const detailsBlock = this.#writeDetails(details);
      this.tm.dec(device.value.detailsBlock);
      device.value = { ...device.value, detailsBlock };
      device.details = details;
      this.#idByName.delete(oldName);
      this.#idByName.set(newName, device.id);
      this.#unloggedChange = true;
      this.#markDirty(device);
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
      if (tailBytes !== 0 && this.lookup(device, endBlock - 1) !== undefined) {
        await this.writeInBlock(device, endBlock - 1, tailBytes, undefined, bs - tailBytes);
      }
      this.unmapRange(device, endBlock, Math.ceil(oldSizeBytes / bs));
    }
    this.#mutate(`resizing volume ${device.details.name}`, 0, () => {
      this.#unloggedChange = true;
      device.value = { ...device.value, sizeBytes };
      this.#markDirty(device);
    });
  }

  // ---- reports ----

  info(device: Device): VolumeInfo {
    const info: VolumeInfo = {
      name: device.details.name,
      id: device.id,
      sizeBytes: device.value.sizeBytes,
      readOnly: (device.value.flags & DEVICE_FLAG_READ_ONLY) !== 0,
      createdAt: device.details.createdAt,
      labels: { ...device.details.labels },
    };
    if (device.details.originName !== undefined) info.origin = device.details.originName;
    if (device.details.originId !== undefined) info.originId = device.details.originId;
    return info;
  }

  /**
   * thin_ls counting (refs/dm-thin-interop.md §4): a data block referenced from more than one
   * volume's mappings is shared; the rest of a volume's mapped blocks are exclusive.
   */
  usage(): Map<number, VolumeUsage> {
    // One pass over distinct leaves: a leaf shared by n volumes (after snapshots) is read once and
    // its blocks count n references, so the cost follows the distinct leaves, not the volumes.
    const leafMemo = new Map<number, number[]>();
    const leafExtents = new Map<number, Extent[]>();
    const owners = new Map<number, number>();
    const leavesByDevice = new Map<number, number[]>();
    for (const device of this.devices()) {
      const leaves = this.#leavesOf(device.value.mappingRoot, leafMemo, leafExtents, BTREE_DEPTH_MAX);
      leavesByDevice.set(device.id, leaves);
      for (const leaf of leaves) owners.set(leaf, (owners.get(leaf) ?? 0) + 1);
    }
    const ranges: CoverageRun[] = [];
    for (const [leaf, extents] of leafExtents) {
      const count = owners.get(leaf) ?? 0;
      if (count === 0) continue;
      for (const extent of extents) ranges.push({ begin: extent.dataBlock, end: extent.dataBlock + extent.lengthBlocks, count });
    }
    const runs = coverageRuns(ranges);
    const perLeaf = new Map<number, { mappedBlocks: number; exclusiveBlocks: number }>();
    for (const [leaf, extents] of leafExtents) {
      let mappedBlocks = 0;
      let exclusiveBlocks = 0;
      for (const extent of extents) {
        mappedBlocks += extent.lengthBlocks;
        exclusiveBlocks += overlapLength(runs, extent.dataBlock, extent.dataBlock + extent.lengthBlocks, (run) => run.count === 1);
      }
      perLeaf.set(leaf, { mappedBlocks, exclusiveBlocks });
    }
    const usage = new Map<number, VolumeUsage>();
    for (const [id, leaves] of leavesByDevice) {
      let mappedBlocks = 0;
      let exclusiveBlocks = 0;
      for (const leaf of leaves) {
        const counts = perLeaf.get(leaf)!;
        mappedBlocks += counts.mappedBlocks;
        exclusiveBlocks += counts.exclusiveBlocks;
      }
      usage.set(id, { mappedBlocks, exclusiveBlocks, sharedBlocks: mappedBlocks - exclusiveBlocks });
    }
    return usage;
  }

  /** The leaves under a mapping tree node, in key order; memoized per node, so shared subtrees are read once. */
  #leavesOf(blockNr: number, memo: Map<number, number[]>, leafExtents: Map<number, Extent[]>, levelsLeft: number): number[] {
    const known = memo.get(blockNr);
    if (known !== undefined) return known;
    assert(levelsLeft > 0, `mapping tree deeper than ${BTREE_DEPTH_MAX} levels at block ${blockNr}`);
    const block = this.tm.read(blockNr, BTREE_BLOCK_TYPES);
    const count = entryCount(block);
    let leaves: number[];
    if (isLeaf(block)) {
      const extents: Extent[] = [];
      for (let index = 0; index < count; index += 1) extents.push(this.mappingTree.codec.unpack(block.view, valueOffset(block, index)));
      leafExtents.set(blockNr, extents);
      leaves = [blockNr];
    } else {
      leaves = [];
      for (let index = 0; index < count; index += 1) {
        for (const leaf of this.#leavesOf(childAt(block, index), memo, leafExtents, levelsLeft - 1)) leaves.push(leaf);
      }
    }
    memo.set(blockNr, leaves);
    return leaves;
  }

  /** Distinct data blocks some mapping refers to: equals the data space map's used count. */
  referencedDataBlocks(): number {
    const ranges: CoverageRun[] = [];
    for (const device of this.devices()) {
      for (const [, extent] of this.mappingTree.entries(device.value.mappingRoot)) {
        ranges.push({ begin: extent.dataBlock, end: extent.dataBlock + extent.lengthBlocks, count: 1 });
      }
    }
    return coverageRuns(ranges).reduce((total, run) => total + (run.end - run.begin), 0);
  }

  status(): PoolStatus {
    const tmCounters = this.tm.counters;
    const status: PoolStatus = {
      poolId: this.tm.poolId.toString(16).padStart(16, '0'),
      blockSizeBytes: this.blockSizeBytes,
      dataBlockCount: this.dataBlockCount,
      dataBlocksUsed: this.dataSpace.usedBlockCount,
      metadataBlockCount: this.tm.metadataBlockCount,
      metadataBlocksUsed: this.tm.metadataBlocksUsed,
      transactionId: this.tm.transactionId,
      volumeCount: this.#devices.size,
      mode: this.#mode,
      metadataPath: this.files.metadata.description,
      dataPath: this.files.data.description,
      counters: {
        metadataBlocksWritten: tmCounters.metadataBlocksWritten + (this.#log?.counters.blocksWritten ?? 0),
        dataBytesWritten: this.#dataBytesWritten,
        syncs: tmCounters.syncs + this.#dataSyncs + (this.#log?.counters.syncs ?? 0),
        commits: tmCounters.commits,
        flushes: this.#flushes,
        rollups: this.#rollups,
        logBlocksUsed: this.#log?.blocksUsed ?? 0,
        logRecordsWritten: this.#log?.counters.records ?? 0,
      },
    };
    if (this.#modeReason !== undefined) status.modeReason = this.#modeReason;
    return status;
  }

  // ---- commit ----

  /**
   * Starts a commit nobody asked for when the open transaction holds many dirty metadata blocks
   * (METADATA_DIRTY_BLOCKS_SOFT_MAX), so memory stays bounded between a client's flushes. A
   * failure enters the sticky mode (#commitNow); the caller's request is not failed by it.
   */
  commitIfManyDirty(): void {
    if (this.#mode !== 'read-write' || this.#closing) return;
    if (this.tm.dirtyBlockCount < METADATA_DIRTY_BLOCKS_SOFT_MAX) return;
    if (this.#commitRunning !== undefined || this.#commitQueued !== undefined) return;
    this.rollup().catch(() => undefined);
  }

  /**
   * The commit timer's tick: makes mapping changes nobody flushed durable (with the delta log, the
   * first tick after a change logs it, and a tick after a quiet interval rolls the log up). Data
   * written in place, with no mapping change, is left to the kernel's writeback until a client
   * flushes, as qemu-nbd and nbdkit leave it: syncing it unasked made every write workload wait
   * on an fdatasync of everything written each second, and promised nobody anything.
   */
  commitIfChanged(): void {
    const quietInterval = this.#requestsBegun === this.#requestsBegunAtTick;
    this.#requestsBegunAtTick = this.#requestsBegun;
    if (this.#rollups !== this.#rollupsAtTick) {
      this.#rollupsAtTick = this.#rollups;
      this.#ticksSinceRollup = 0;
    } else this.#ticksSinceRollup += 1;
    const quiet = this.#requestsInFlight === 0 && (quietInterval || this.#ticksSinceRollup >= LOG_ROLLUP_TICKS_MAX);
    if (this.#mode !== 'read-write' || this.#closing) return;
    if (this.#commitRunning !== undefined || this.#commitQueued !== undefined) return;
    const state = this.#flushState();
    if (quiet && idleRollupDue(state)) {
      this.rollup().catch(() => undefined);
      return;
    }
    const plan = planFlush(state);
    if (plan === 'append' || plan === 'rollup') this.commit().catch(() => undefined);
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

  /** Refuses new requests and resolves when those in flight have finished. */
  drain(): Promise<void> {
    this.#closing = true;
    if (this.#requestsInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /**
   * Makes every completed write durable: commits the transaction if metadata changed, else syncs
   * the data file if data was written. Calls made while a commit runs share the next one.
   */
  /** Whether a commit may run: read-write, or read-only only for lack of metadata space. */
  get canCommit(): boolean {
    return !this.#closed && (this.#mode === 'read-write' || (this.#mode === 'read-only' && this.#commitsWhileReadOnly));
  }

  commit(): Promise<void> {
    if (this.#ioFailure !== undefined) return Promise.reject(this.#ioFailureError());
    if (this.#mode === 'read-only' && this.readOnlyOpen) return Promise.resolve();
    if (!this.canCommit) this.assertWritable();
    if (this.#commitQueued !== undefined) return this.#commitQueued;
    if (this.#commitRunning === undefined) return this.#startCommit();
    const queued = this.#commitRunning.catch(() => undefined).then(() => {
      this.#commitQueued = undefined;
      return this.#startCommit();
    });
    this.#commitQueued = queued;
    return queued;
  }

  /**
   * Commits, then runs work while no commit may start, so the committed generation's blocks stay
   * as they are on disk (blocks it frees are reused only after a later commit). Flushes asked
   * meanwhile wait for work to end; reads and writes go on.
   */
  async withCommitsHeld<T>(work: () => Promise<T>): Promise<T> {
    while (this.#commitHold !== undefined) await this.#commitHold.catch(() => undefined);
    // A rollup, so that the committed trees hold everything (the delta log is not in them).
    await this.rollup();
    let release!: () => void;
    this.#commitHold = new Promise<void>((resolve) => {
      release = resolve;
    });
    try {
      return await work();
    } finally {
      this.#commitHold = undefined;
      release();
    }
  }

  #startCommit(): Promise<void> {
    assert(this.#commitRunning === undefined, 'two commits at once');
    if (this.#commitHold !== undefined) {
      const held = this.#commitHold.then(() => {
        this.#commitRunning = undefined;
        return this.#startCommit();
      });
      this.#commitRunning = held;
      return held;
    }
    const running = this.#commitNow().finally(() => {
      this.#commitRunning = undefined;
    });
    this.#commitRunning = running;
    return running;
  }

  /** What a flush fails with after a failed write or sync: THIN_IO naming the first failure. */
  #ioFailureError(): ThinError {
    assert(this.#ioFailure !== undefined, 'no I/O failure to report');
    return new ThinError(
      'THIN_IO',
      `Cannot flush: ${this.#ioFailure.reason}; the pool acknowledges no flush until it is reopened`,
      { cause: this.#ioFailure.cause },
    );
  }

  async #commitNow(): Promise<void> {
    // A flush queued behind the commit that failed fails too.
    if (this.#ioFailure !== undefined) throw this.#ioFailureError();
    if (!this.canCommit) this.assertWritable();
    const plan = planFlush(this.#flushState());
    if (plan === 'nothing') return;
    if (plan === 'sync-data') {
      const options = this.#flushSyncOptions();
      this.#dataBytesSinceSync = 0;
      await this.#syncData(options);
      return;
    }
    if (plan === 'append') {
      await this.#appendLog();
      return;
    }
    // Seal: bring the device tree up to date, then hand pdata the payload, all in this turn.
    let payload: Uint8Array;
    let highWaterMark: number;
    try {
      this.#storeDirtyDevices();
      highWaterMark = this.#highWaterMarkTarget;
      this.#highWaterMarkSealed = highWaterMark;
      payload = encodePoolPayload(this.payloadFields(highWaterMark));
    } catch (error) {
      this.fail(`metadata error while sealing a transaction: ${error instanceof Error ? error.message : String(error)}`, error);
      throw error;
    }
    this.#metadataDirty = false;
    this.#dataBytesSinceSync = 0;
    // The sealed transaction holds every logged and pending change: the log starts again after it.
    const generation = this.tm.transactionId;
    this.#log?.discardPending();
    this.#unloggedChange = false;
    let dataSynced = false;
    try {
      await this.tm.commit(payload, async () => {
        dataSynced = true;
        await this.#syncData();
      });
      // Defensive: a transaction manager that skipped beforeMetadata must not make a flush
      // acknowledge data that was never synced.
      if (!dataSynced) await this.#syncData();
    } catch (error) {
      this.fail(`a commit failed: ${error instanceof Error ? error.message : String(error)}`, error);
      throw new ThinError('THIN_IO', 'The commit failed; the pool now needs a check and acknowledges no flush until it is reopened', { cause: error });
    }
    this.#highWaterMarkDurable = Math.max(this.#highWaterMarkDurable, highWaterMark);
    if (this.#log !== undefined) {
      this.#log.restart(generation);
      this.#rollups += 1;
    }
  }

  #flushState(): FlushState {
    return {
      log: this.#log,
      metadataChanged: this.#metadataDirty,
      unloggedChange: this.#unloggedChange || this.#highWaterMarkTarget !== this.#highWaterMarkSealed,
      dataWritten: this.#dataBytesSinceSync > 0,
    };
  }

  /**
   * A flush as a delta log record (src/journal/log.ts): the data the pending entries point at is
   * synced first, then the record is written and synced; it is the commit record (F-LOG-7).
   */
  async #appendLog(): Promise<void> {
    const log = this.#log;
    assert(log !== undefined, 'appending to a delta log that is off');
    const entries = log.takePending();
    const time = this.#fields.time;
    const options = this.#flushSyncOptions();
    this.#dataBytesSinceSync = 0;
    await this.#syncData(options);
    try {
      await log.append(entries, time, options);
    } catch (error) {
      this.fail(`appending to the delta log failed: ${error instanceof Error ? error.message : String(error)}`, error);
      throw new ThinError('THIN_IO', 'The flush failed; the pool now needs a check and acknowledges no flush until it is reopened', { cause: error });
    }
  }

  // ---- delta log (src/journal) ----

  /** Turns the delta log on: from now on a flush appends a record instead of committing. */
  attachLog(log: DeltaLog): void {
    assert(this.#log === undefined, 'a second delta log');
    this.#log = log;
  }

  /** A flush asked for by a client (flush or FUA): counted, then a commit or a log append. */
  flush(): Promise<void> {
    this.#flushes += 1;
    return this.commit();
  }

  /** A full commit that folds the delta log into the trees (when anything changed). */
  rollup(): Promise<void> {
    if (this.#metadataDirty) this.#unloggedChange = true;
    return this.commit();
  }

  /**
   * Re-applies delta log records read at open (src/journal/replay.ts) through the same code paths
   * as the original writes, so the trees and counts come out the same. A record that names what
   * does not exist, or a data block that is not free, is corruption under a valid checksum.
   */
  applyLogRecords(records: readonly DeltaLogRecord[]): void {
    this.#replaying = true;
    try {
      for (const record of records) {
        const where = `Delta log record ${record.sequence} (ring slot ${record.index})`;
        if (record.time !== this.#fields.time) {
          throw new ThinError('THIN_CORRUPT_BLOCK', `${where} has pool time ${record.time}, but the pool's time is ${this.#fields.time}`);
        }
        for (const entry of record.entries) this.#applyLogEntry(entry, where);
        this.#metadataDirty = true;
      }
    } finally {
      this.#replaying = false;
    }
  }

  #applyLogEntry(entry: DeltaLogEntry, where: string): void {
    const corrupt = (problem: string): ThinError => new ThinError('THIN_CORRUPT_BLOCK', `${where} ${problem}`);
    const device = this.#devices.get(entry.volumeId);
    if (device === undefined) throw corrupt(`names volume id ${entry.volumeId}, which does not exist`);
    const sizeBlocks = Math.ceil(device.value.sizeBytes / this.blockSizeBytes);
    if (entry.virtualBlock + entry.lengthBlocks > sizeBlocks) {
      throw corrupt(`changes virtual blocks [${entry.virtualBlock}, ${entry.virtualBlock + entry.lengthBlocks}) past the end of volume ${device.details.name}`);
    }
    const checkFree = (dataBlock: number): void => {
      if (!(dataBlock < this.#highWaterMarkDurable) || this.dataSpace.count(dataBlock) !== 0 || this.dataSpace.isPendingFree(dataBlock)) {
        throw corrupt(`maps data block ${dataBlock}, which is not a free block below the high-water mark ${this.#highWaterMarkDurable}`);
      }
    };
    if (entry.kind === DeltaLogEntryKind.unmap) {
      this.unmapRange(device, entry.virtualBlock, entry.virtualBlock + entry.lengthBlocks);
    } else if (entry.kind === DeltaLogEntryKind.map) {
      for (let index = 0; index < entry.lengthBlocks; index++) {
        const virtualBlock = entry.virtualBlock + index;
        const dataBlock = entry.dataBlock + index;
        if (this.lookup(device, virtualBlock) !== undefined) throw corrupt(`maps virtual block ${virtualBlock} of volume ${device.details.name}, which is mapped`);
        checkFree(dataBlock);
        this.#insertMapping(device, virtualBlock, dataBlock);
      }
    } else {
      const mapping = this.lookup(device, entry.virtualBlock);
      if (mapping?.dataBlock !== entry.oldDataBlock) {
        throw corrupt(`moves virtual block ${entry.virtualBlock} of volume ${device.details.name} from data block ${entry.oldDataBlock}, but it maps ${mapping?.dataBlock ?? 'nothing'}`);
      }
      checkFree(entry.dataBlock);
      this.#remap(device, entry.virtualBlock, entry.oldDataBlock, entry.dataBlock);
    }
  }

  /**
   * How a flush's syncs run: on the main thread when no request is in flight and little data is
   * dirty (INLINE_SYNC_DIRTY_BYTES_MAX), since then nothing waits for the event loop and the
   * worker thread's round trip is a fifth of the sync; otherwise on a worker thread.
   */
  #flushSyncOptions(): SyncOptions {
    return { inline: this.#requestsInFlight === 0 && this.#dataBytesSinceSync <= INLINE_SYNC_DIRTY_BYTES_MAX };
  }

  async #syncData(options: SyncOptions = {}): Promise<void> {
    this.#dataSyncs += 1;
    try {
      await this.files.data.sync(options);
    } catch (error) {
      this.fail(`syncing the data file failed: ${error instanceof Error ? error.message : String(error)}`, error);
      throw error;
    }
  }

  payloadFields(highWaterMark: number): PoolPayload {
    return {
      formatVersion: POOL_FORMAT_VERSION,
      blockSizeBytes: this.blockSizeBytes,
      flags: this.#fields.flags,
      dataBlockCount: this.dataBlockCount,
      dataSpaceMapRoot: this.dataSpace.root,
      deviceTreeRoot: this.#deviceTreeRoot,
      dataHighWaterMark: highWaterMark,
      time: this.#fields.time,
      nextVolumeId: this.#fields.nextVolumeId,
      creationTimeMs: this.#fields.creationTimeMs,
      userTransactionId: this.#fields.userTransactionId,
      deviceTreeRootTransactionId: writtenBy(this.tm, this.#deviceTreeRoot, BTREE_BLOCK_TYPES),
      dataSpaceMapRootTransactionId: writtenBy(this.tm, this.dataSpace.root, BTREE_BLOCK_TYPES),
    };
  }

  /** Waits for a running commit (for close) without starting one. */
  async settle(): Promise<void> {
    while (this.#commitRunning !== undefined || this.#commitQueued !== undefined) {
      await (this.#commitQueued ?? this.#commitRunning)?.catch(() => undefined);
    }
  }

  markClosed(): void {
    this.#closed = true;
  }
}

export function validateSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 1 || sizeBytes > VOLUME_SIZE_BYTES_MAX) {
    throw new ThinError('THIN_INVALID', `Volume size ${sizeBytes} is not a byte count from 1 to ${VOLUME_SIZE_BYTES_MAX}`);
  }
}

function validateLabels(labels: Record<string, string>): void {
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) throw new ThinError('THIN_INVALID', 'Labels must be an object of strings');
  for (const [key, value] of Object.entries(labels)) {
    if (typeof value !== 'string') throw new ThinError('THIN_INVALID', `Label ${key} must be a string`);
  }
}

/** Awaits every promise, then throws the first failure: no write is left running unobserved. */
export async function settleAll(promises: Promise<unknown>[]): Promise<void> {
  if (promises.length === 0) return;
  if (promises.length === 1) {
    await promises[0];
    return;
  }
  const results = await Promise.allSettled(promises);
  for (const result of results) {
    if (result.status === 'rejected') throw result.reason;
  }
}

export { WHOLE_VOLUME_END };
