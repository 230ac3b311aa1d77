// `thinbd restore`: builds a new pool from thin_dump XML — a kernel pool's (thin_dump of its
// metadata device) or a thinbd pool's (`thinbd dump`) — over a data file or device that already
// holds the data (data block n at byte n × block size, as dm-thin lays it out), or over a new
// sparse data file.
//
// The builder is the consumer side of the event stream (dump/events.ts); restore-xml.ts is the
// producer and does the validation that needs line numbers. The builder writes pdata structures
// directly — a mapping tree per volume with the extents and times the dump names, the data space
// map (built at the end, in block order) with one reference per volume mapping a block (restore
// shares no tree nodes between volumes, like thin_restore 0.9.0, so each volume's leaves hold
// their own references), the device tree with ids, times and transaction ids as dumped — because
// the Pool API allocates data blocks itself and cannot place a mapping on a chosen block. A
// volume's mappings arrive in origin order in any dump: its tree is built bottom-up from full
// leaves as they come (restore-tree.ts); a mapping below one already placed waits for the tree to
// be finished and is inserted into it.
//
// Bad data ranges (dump/events.ts DumpBadRange) go into a new bad-range tree, each holding one
// reference to its data block as the pool's own record does (F-BAD-3), so the block is never
// allocated again; a block that is also mapped keeps its mappings' references besides.
//
// Names: a volume comment's name (xml.ts), else the device id in decimal. Sizes: the comment's,
// else the size that covers the highest mapped block (at least one block). Origins named in
// comments are linked by name when that volume is restored too.
//
// Transaction ids are carried over as dumped: dm-thin's superblock `transaction` is a label userspace
// (LVM) sets with `set_transaction_id` and checks on activation, and a device's is that label when
// the device was created. thinbd keeps both apart from its own commit generation (docs/format.md,
// F-POOL-9), so a pool moved from LVM and back activates.
//
// Nothing half-built is left behind: the pool is built in `DIR.tmp-<pid>-<random>` next to DIR
// and renamed to DIR only after its one commit is durable; on any failure the temporary
// directory is removed, and one a killed build left (its process gone) is removed by the next
// build of DIR. With `data: { path }` the pool's `data` entry is a symbolic link to that
// path (the data is reused in place and never copied; removing a failed build removes the link,
// never its target).
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import {
  BTREE_DEPTH_MAX,
  DATA_BLOCK_SIZE_BYTES_MAX,
  DATA_BLOCK_SIZE_BYTES_MIN,
  METADATA_BLOCK_COUNT_DEFAULT,
  METADATA_BLOCK_COUNT_MAX,
  METADATA_BLOCK_COUNT_MIN,
  METADATA_BLOCK_HEADER_BYTES,
  METADATA_BLOCK_SIZE_BYTES,
  METADATA_COMMIT_RESERVE_BLOCKS,
  METADATA_DIRTY_BLOCKS_SOFT_MAX,
  RESTORE_METADATA_CACHE_BLOCKS,
  SECTOR_BYTES,
  VOLUME_SIZE_BYTES_MAX,
} from '../constants.ts';
import { ThinError, assert } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { nodeFileSystem, type FileSystem } from '../io/file-system.ts';
import { processAlive } from '../util/process.ts';
import { BTree, BlockType, SpaceMap, TransactionManager } from '../pdata/index.ts';
import {
  DEVICE_FLAG_READ_ONLY,
  EXTENT_LENGTH_BLOCKS_MAX,
  POOL_FLAG_NEEDS_CHECK,
  POOL_FORMAT_VERSION,
  POOL_TIME_MAX,
  VOLUME_ID_MAX,
  encodeDetails,
  encodePoolPayload,
  validateVolumeName,
  type DeviceValue,
  type PoolPayload,
  type VolumeDetails,
} from '../pool/codecs.ts';
import { DATA_FILE_NAME, METADATA_FILE_NAME } from '../pool/files.ts';
import { DETAILS_CAPACITY_BYTES, makeDeviceCodec, makeExtentCodec } from '../pool/trees.ts';
import type { Extent } from '../pool/ranges.ts';
import { badRangeProblem, isPending, type DeviceBegin, type DumpBadRange, type DumpVisitor, type Mapping, type SuperblockBegin, type VisitResult } from './dump/events.ts';
import { badRangeCodec, badRangeKey } from '../pool/bad-ranges.ts';
import { readThinXml, type MappingBatch, type XmlReadSummary } from './restore-xml.ts';
import { MappingTreeBuilder } from './restore-tree.ts';
import { ReferenceRuns } from './reference-runs.ts';
import type { SpaceSettings } from '../pool/space-policy.ts';

export type RestoreData = { path: string } | { sizeBytes: number };

export interface RestoreOptions {
  /** The pool directory to create; it must not hold a pool (an empty directory is replaced). */
  dir: string;
  /** An existing data file or block device to reuse in place, or the size of a new sparse data file. */
  data: RestoreData;
  /**
   * Size of the new metadata file (sparse); default METADATA_BLOCK_COUNT_DEFAULT blocks. When the
   * volumes do not fit, it grows (a warning says so), up to `space.metadataMaxBytes` or the largest
   * metadata: a restore or a repair of a pool whose metadata was full must not fail for room.
   */
  metadataSizeBytes?: number;
  /** The space settings the new pool stores (repair carries the damaged pool's); default none (defaults). */
  space?: SpaceSettings;
  /** What makes the pool's directory and files (default node:fs); the crash simulator passes its own. */
  fileSystem?: FileSystem;
}

export interface RestoredVolume {
  name: string;
  id: number;
  sizeBytes: number;
  mappedBlocks: number;
}

export interface RestoreSummary {
  dir: string;
  blockSizeBytes: number;
  dataBlockCount: number;
  volumes: RestoredVolume[];
  mappedBlockCount: number;
  /** Bad data ranges recorded in the new pool (never allocated). */
  badRangeCount: number;
  /** The dump's superblock transaction id (dm-thin's userspace transaction id), kept in the pool. */
  sourceTransaction: number;
  input: XmlReadSummary;
  /** Facts of the input that the pool does not keep as given (e.g. a pool time raised). */
  warnings: string[];
}

/** Restores the XML read from `input` (a file stream, or chunks) into a new pool at options.dir. */
export async function restorePool(
  input: AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>,
  options: RestoreOptions,
): Promise<RestoreSummary> {
  const { produced, ...built } = await buildPool(options, (visitor) => readThinXml(input, visitor));
  return { ...built, input: produced };
}

/**
 * Builds a new pool at options.dir from the events `produce` sends to the visitor it is given
 * (the XML reader for restore, the tolerant metadata walk for repair); all or nothing.
 */
export async function buildPool<T>(
  options: RestoreOptions,
  produce: (visitor: DumpVisitor) => Promise<T>,
): Promise<Omit<RestoreSummary, 'input'> & { produced: T }> {
  const dir = path.resolve(options.dir);
  const fileSystem = options.fileSystem ?? nodeFileSystem;
  assertNoPool(fileSystem, dir);
  const metadataBlockCount = metadataBlockCountFor(options.metadataSizeBytes);
  removeDeadScratch(fileSystem, dir, 'tmp');
  const temporary = scratchPath(dir, 'tmp');
  fileSystem.makeDirectory(temporary);
  const builder = new PoolBuilder(fileSystem, temporary, options.data, metadataBlockCount, options.space ?? {});
  try {
    const produced = await produce(builder);
    const built = await builder.finish();
    fileSystem.syncDirectory(temporary);
    if (fileSystem.kind(dir) !== undefined) fileSystem.removeDirectory(dir); // empty (assertNoPool); rename cannot replace it on every system
    fileSystem.rename(temporary, dir);
    fileSystem.syncDirectory(path.dirname(dir));
    return { dir, ...built, produced };
  } catch (error) {
    await builder.abandon();
    fileSystem.remove(temporary, { recursive: true });
    throw error;
  }
}

/** A directory beside `dir` for work on it: `DIR.KIND-<pid>-<random>`, named so removeDeadScratch finds it. */
export function scratchPath(dir: string, kind: 'tmp' | 'scan'): string {
  return `${dir}.${kind}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/**
 * Removes the `DIR.KIND-<pid>-<random>` directories beside `dir` whose process is gone: a restore
 * or repair killed before its rename (or its cleanup) leaves one, and only the next run of it
 * on that directory knows the name. Those of running processes are theirs and are kept.
 */
export function removeDeadScratch(fileSystem: FileSystem, dir: string, kind: 'tmp' | 'scan'): void {
  const parent = path.dirname(dir);
  if (fileSystem.kind(parent) !== 'directory') return;
  const prefix = `${path.basename(dir)}.${kind}-`;
  for (const name of fileSystem.list(parent)) {
    const match = name.startsWith(prefix) ? /^(\d+)-[0-9a-f]{8}$/.exec(name.slice(prefix.length)) : null;
    if (match === null) continue;
    const pid = Number(match[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    fileSystem.remove(path.join(parent, name), { recursive: true }); // a data link inside is removed, never its target
  }
}

function assertNoPool(fileSystem: FileSystem, dir: string): void {
  const kind = fileSystem.kind(dir);
  if (kind === undefined) return;
  if (kind !== 'directory') throw new ThinError('THIN_EXISTS', `${dir} exists and is not a directory`);
  if (fileSystem.kind(path.join(dir, METADATA_FILE_NAME)) !== undefined) throw new ThinError('THIN_EXISTS', `A pool already exists at ${dir}`);
  if (fileSystem.list(dir).length > 0) throw new ThinError('THIN_EXISTS', `${dir} is not empty; restore creates a new pool directory`);
}

function metadataBlockCountFor(metadataSizeBytes: number | undefined): number {
  if (metadataSizeBytes === undefined) return METADATA_BLOCK_COUNT_DEFAULT;
  const count = Math.floor(metadataSizeBytes / METADATA_BLOCK_SIZE_BYTES);
  if (!Number.isSafeInteger(metadataSizeBytes) || count < METADATA_BLOCK_COUNT_MIN || count > METADATA_BLOCK_COUNT_MAX) {
    throw new ThinError(
      'THIN_INVALID',
      `Metadata size ${metadataSizeBytes} is out of range: from ${METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES} to ${METADATA_BLOCK_COUNT_MAX * METADATA_BLOCK_SIZE_BYTES} bytes`,
    );
  }
  return count;
}

function randomPoolId(): bigint {
  const id = randomBytes(8).readBigUInt64LE(0);
  return id === 0n ? 1n : id;
}

/** What the builder keeps of a volume until the end (the details are written last, to link origins). */
interface BuiltDevice {
  id: number;
  value: Omit<DeviceValue, 'detailsBlock'>;
  details: VolumeDetails;
}

interface Engine {
  tm: TransactionManager;
  dataSpace: SpaceMap;
  mappingTree: BTree<Extent>;
  deviceTree: BTree<DeviceValue>;
  /** Empty until finish(); intermediate commits name it. */
  deviceTreeRoot: number;
  blockSizeBytes: number;
  dataBlockCount: number;
  superblock: SuperblockBegin;
}

interface OpenDevice {
  begin: DeviceBegin;
  /** The mapping tree's root, once `tree` has finished (deviceEnd). */
  root: number;
  /** Builds the tree from the runs that come in origin order (all of them, in a dump). */
  tree: MappingTreeBuilder;
  /** Runs below one placed before them: inserted into the finished tree one by one. */
  late: Mapping[];
  /** The run being gathered (runLength 0: none): placed when the next mapping does not continue it. */
  runOrigin: number;
  runData: number;
  runLength: number;
  runTime: number;
  mappedBlocks: number;
  /** One past the highest mapped virtual block. */
  endBlock: number;
}

/** The event stream's consumer: builds the pool's metadata (see the module comment). */
class PoolBuilder implements DumpVisitor {
  readonly #fileSystem: FileSystem;
  readonly #dir: string;
  readonly #data: RestoreData;
  readonly #metadataBlockCount: number;
  #metadataFile: BlockFile | undefined;
  #dataFile: BlockFile | undefined;
  #engine: Engine | undefined;
  #device: OpenDevice | undefined;
  readonly #built: BuiltDevice[] = [];
  readonly #names = new Map<string, number>();
  #timeMax = 0;
  #dataEndMax = 0;
  #mappedBlockCount = 0;
  /** One reference per inserted extent; the data space map is built from them at the end. */
  #dataReferences = new ReferenceRuns(0);
  readonly #badRanges: DumpBadRange[] = [];
  #finished = false;
  readonly #warnings: string[] = [];

  readonly #space: SpaceSettings;

  constructor(fileSystem: FileSystem, dir: string, data: RestoreData, metadataBlockCount: number, space: SpaceSettings) {
    this.#fileSystem = fileSystem;
    this.#dir = dir;
    this.#data = data;
    this.#metadataBlockCount = metadataBlockCount;
    this.#space = space;
  }

  superblockBegin(superblock: SuperblockBegin): VisitResult {
    return this.#start(superblock);
  }

  async #start(superblock: SuperblockBegin): Promise<void> {
    const blockSizeBytes = superblock.dataBlockSizeSectors * SECTOR_BYTES;
    if (blockSizeBytes < DATA_BLOCK_SIZE_BYTES_MIN || blockSizeBytes > DATA_BLOCK_SIZE_BYTES_MAX || (blockSizeBytes & (blockSizeBytes - 1)) !== 0) {
      throw new ThinError(
        'THIN_INVALID',
        `restore: data_block_size="${superblock.dataBlockSizeSectors}" sectors (${blockSizeBytes} bytes) is not a power of two from 64 KiB to 1 GiB, as thinbd requires ` +
          '(dm-thin also takes other multiples of 64 KiB: a pool of such blocks cannot move to thinbd)',
      );
    }
    if (superblock.nrDataBlocks < 1) throw new ThinError('THIN_INVALID', 'restore: nr_data_blocks="0": a pool needs at least one data block');
    let dataBlockCount = superblock.nrDataBlocks;
    if ('path' in this.#data) {
      const target = path.resolve(this.#data.path);
      this.#dataFile = await this.#fileSystem.openFile(target, { readOnly: false });
      const needBytes = superblock.nrDataBlocks * blockSizeBytes;
      if (this.#dataFile.sizeBytes() < needBytes) {
        throw new ThinError(
          'THIN_INVALID',
          `restore: the data at ${target} holds ${this.#dataFile.sizeBytes()} bytes, less than the ${superblock.nrDataBlocks} blocks of ${blockSizeBytes} bytes the dump's nr_data_blocks needs`,
        );
      }
      this.#fileSystem.symlink(target, path.join(this.#dir, DATA_FILE_NAME));
    } else {
      dataBlockCount = Math.floor(this.#data.sizeBytes / blockSizeBytes);
      if (dataBlockCount < superblock.nrDataBlocks) {
        throw new ThinError(
          'THIN_INVALID',
          `restore: --data-size ${this.#data.sizeBytes} holds ${dataBlockCount} blocks of ${blockSizeBytes} bytes; the dump has nr_data_blocks="${superblock.nrDataBlocks}"`,
        );
      }
      this.#dataFile = await this.#fileSystem.createFile(path.join(this.#dir, DATA_FILE_NAME), { sizeBytes: dataBlockCount * blockSizeBytes });
    }
    this.#metadataFile = await this.#fileSystem.createFile(path.join(this.#dir, METADATA_FILE_NAME), {
      sizeBytes: this.#metadataBlockCount * METADATA_BLOCK_SIZE_BYTES,
    });
    const tm = TransactionManager.format(this.#metadataFile, {
      metadataBlockCount: this.#metadataBlockCount,
      poolId: randomPoolId(),
      cacheBlocksMax: RESTORE_METADATA_CACHE_BLOCKS,
    });
    const dataSpace = SpaceMap.create(tm, dataBlockCount);
    const mappingTree = new BTree<Extent>(tm, makeExtentCodec(() => dataSpace));
    const deviceTree = new BTree<DeviceValue>(tm, makeDeviceCodec(tm, () => mappingTree));
    const deviceTreeRoot = deviceTree.createEmpty();
    this.#engine = { tm, dataSpace, mappingTree, deviceTree, deviceTreeRoot, blockSizeBytes, dataBlockCount, superblock };
    this.#dataReferences = new ReferenceRuns(dataBlockCount);
    this.#timeMax = superblock.time;
  }

  deviceBegin(begin: DeviceBegin): VisitResult {
    const engine = this.#needEngine();
    assert(this.#device === undefined, 'deviceBegin inside a device');
    if (begin.devId > VOLUME_ID_MAX - 1) {
      throw new ThinError('THIN_INVALID', `restore: device ${begin.devId}: thinbd volume ids go up to ${VOLUME_ID_MAX - 1}`);
    }
    if (begin.snapTime < begin.creationTime) {
      throw new ThinError('THIN_INVALID', `restore: device ${begin.devId}: snap_time="${begin.snapTime}" is before creation_time="${begin.creationTime}"`);
    }
    this.#timeMax = Math.max(this.#timeMax, begin.snapTime);
    this.#device = {
      begin,
      root: 0,
      tree: new MappingTreeBuilder(engine.tm),
      late: [],
      runOrigin: 0,
      runData: 0,
      runLength: 0,
      runTime: 0,
      mappedBlocks: 0,
      endBlock: 0,
    };
    return undefined;
  }

  mapping(mapping: Mapping): VisitResult {
    return this.#addMapping(mapping.originBegin, mapping.dataBegin, mapping.length, mapping.time);
  }

  /** The XML reader's mappings, many at a time (restore-xml.ts): no object per mapping. */
  mappings(batch: MappingBatch): VisitResult {
    const { originBegins, dataBegins, lengths, times, count } = batch;
    for (let index = 0; index < count; index++) {
      const result = this.#addMapping(originBegins[index]!, dataBegins[index]!, lengths[index]!, times[index]!);
      if (isPending(result)) return this.#finishBatch(result, batch, index + 1);
    }
    return undefined;
  }

  async #finishBatch(pending: Promise<void>, batch: MappingBatch, from: number): Promise<void> {
    await pending;
    const { originBegins, dataBegins, lengths, times, count } = batch;
    for (let index = from; index < count; index++) {
      const result = this.#addMapping(originBegins[index]!, dataBegins[index]!, lengths[index]!, times[index]!);
      if (isPending(result)) await result;
    }
  }

  #addMapping(originBegin: number, dataBegin: number, length: number, time: number): VisitResult {
    const device = this.#device;
    assert(device !== undefined, 'mapping outside a device');
    const runLength = device.runLength;
    if (
      runLength > 0 &&
      originBegin === device.runOrigin + runLength &&
      dataBegin === device.runData + runLength &&
      time === device.runTime &&
      runLength + length <= EXTENT_LENGTH_BLOCKS_MAX
    ) {
      device.runLength = runLength + length;
      return undefined;
    }
    if (runLength > 0) this.#placeRun(device, device.runOrigin, device.runData, runLength, device.runTime);
    device.runOrigin = originBegin;
    device.runData = dataBegin;
    device.runLength = length;
    device.runTime = time;
    return this.#maybeCommit();
  }

  /** Checks a run and adds it to the tree being built, or keeps it for later when it lies below one added before. */
  #placeRun(device: OpenDevice, originBegin: number, dataBegin: number, length: number, time: number): void {
    this.#checkRun(device, dataBegin, length, time);
    if (originBegin < device.endBlock) {
      device.late.push({ originBegin, dataBegin, length, time });
      return;
    }
    for (let done = 0; done < length; ) {
      const pieceLength = Math.min(length - done, EXTENT_LENGTH_BLOCKS_MAX);
      device.tree.append(originBegin + done, dataBegin + done, pieceLength, time);
      this.#dataReferences.add(dataBegin + done, dataBegin + done + pieceLength);
      done += pieceLength;
    }
    this.#counted(device, originBegin, dataBegin, length, time);
  }

  #checkRun(device: OpenDevice, dataBegin: number, length: number, time: number): void {
    const engine = this.#needEngine();
    if (dataBegin + length > engine.dataBlockCount) {
      throw new ThinError('THIN_INVALID', `restore: device ${device.begin.devId}: data blocks [${dataBegin}, ${dataBegin + length}) lie past the data space (${engine.dataBlockCount} blocks)`);
    }
    if (time > POOL_TIME_MAX) throw new ThinError('THIN_INVALID', `restore: device ${device.begin.devId}: mapping time ${time} is beyond 32 bits`);
  }

  /** The counts and bounds a placed run adds to. */
  #counted(device: OpenDevice, originBegin: number, dataBegin: number, length: number, time: number): void {
    this.#timeMax = Math.max(this.#timeMax, time);
    device.mappedBlocks += length;
    device.endBlock = Math.max(device.endBlock, originBegin + length);
    this.#dataEndMax = Math.max(this.#dataEndMax, dataBegin + length);
    this.#mappedBlockCount += length;
  }

  /**
   * Inserts one extent (or several, past the u32 extent length) into the finished tree, merging
   * with neighbours already in it: the way for runs that came out of origin order.
   */
  #insertRun(device: OpenDevice, run: Mapping): void {
    const engine = this.#needEngine();
    const tree = engine.mappingTree;
    let virtualBegin = run.originBegin;
    let dataBegin = run.dataBegin;
    let remaining = run.length;
    while (remaining > 0) {
      const length = Math.min(remaining, EXTENT_LENGTH_BLOCKS_MAX);
      let key = virtualBegin;
      let extent: Extent = { dataBlock: dataBegin, lengthBlocks: length, time: run.time };
      // Join an extent that ends where this one starts, or starts where it ends.
      const [leftKey, leftExtent] = (virtualBegin > 0 ? tree.floor(device.root, virtualBegin - 1) : undefined) ?? [undefined, undefined];
      if (leftKey !== undefined && leftExtent !== undefined && mergeable(leftKey, leftExtent, key, extent)) {
        key = leftKey;
        extent = { ...leftExtent, lengthBlocks: leftExtent.lengthBlocks + extent.lengthBlocks };
      }
      const right = tree.lookup(device.root, virtualBegin + length);
      if (right !== undefined && mergeable(key, extent, virtualBegin + length, right)) {
        device.root = tree.remove(device.root, virtualBegin + length);
        extent = { ...extent, lengthBlocks: extent.lengthBlocks + right.lengthBlocks };
      }
      device.root = tree.insert(device.root, key, extent);
      this.#dataReferences.add(dataBegin, dataBegin + length);
      virtualBegin += length;
      dataBegin += length;
      remaining -= length;
    }
    this.#counted(device, run.originBegin, run.dataBegin, run.length, run.time);
  }

  async deviceEnd(): Promise<void> {
    const engine = this.#needEngine();
    const device = this.#device;
    assert(device !== undefined, 'deviceEnd outside a device');
    if (device.runLength > 0) this.#placeRun(device, device.runOrigin, device.runData, device.runLength, device.runTime);
    device.runLength = 0;
    // The leaves held back and the internal levels: an internal node per 84 to 168 nodes below.
    await this.#roomFor(2 + Math.ceil(device.tree.leafCount / 80) + BTREE_DEPTH_MAX);
    device.root = device.tree.finish();
    for (const run of device.late) {
      this.#insertRun(device, run);
      const result = this.#maybeCommit();
      if (isPending(result)) await result;
    }
    this.#device = undefined;
    const { begin } = device;
    const volume = begin.volume;
    const name = volume?.name ?? String(begin.devId);
    const nameProblem = validateVolumeName(name);
    if (nameProblem !== undefined) throw new ThinError('THIN_INVALID', `restore: device ${begin.devId}: ${nameProblem}`);
    const clash = this.#names.get(name);
    if (clash !== undefined) {
      throw new ThinError('THIN_INVALID', `restore: devices ${clash} and ${begin.devId} would both be named ${name}; volume names must be unique`);
    }
    this.#names.set(name, begin.devId);
    const coveredBytes = Math.max(1, device.endBlock) * engine.blockSizeBytes;
    let sizeBytes = volume?.sizeBytes ?? coveredBytes;
    if (volume?.sizeBytes !== undefined && device.endBlock > 0 && volume.sizeBytes <= (device.endBlock - 1) * engine.blockSizeBytes) {
      throw new ThinError(
        'THIN_INVALID',
        `restore: volume ${name} (device ${begin.devId}): its size of ${volume.sizeBytes} bytes does not cover its highest mapped block ${device.endBlock - 1}`,
      );
    }
    if (sizeBytes > VOLUME_SIZE_BYTES_MAX) {
      throw new ThinError('THIN_INVALID', `restore: volume ${name} (device ${begin.devId}) would be ${sizeBytes} bytes, beyond thinbd's largest volume (${VOLUME_SIZE_BYTES_MAX})`);
    }
    sizeBytes = Math.max(1, sizeBytes);
    if (begin.mappedBlocks !== device.mappedBlocks) {
      this.#warnings.push(`device ${begin.devId}: mapped_blocks="${begin.mappedBlocks}" in the dump, ${device.mappedBlocks} mapped; the count restored is the one mapped`);
    }
    const details: VolumeDetails = {
      name,
      labels: { ...(volume?.labels ?? {}) },
      createdAt: volume?.createdAt ?? new Date().toISOString(),
      ...(volume?.origin === undefined ? {} : { originName: volume.origin }),
    };
    encodeDetails(details, DETAILS_CAPACITY_BYTES); // THIN_INVALID now, not at the end
    this.#built.push({
      id: begin.devId,
      details,
      value: {
        mappingRoot: device.root,
        sizeBytes,
        mappedBlockCount: device.mappedBlocks,
        transactionId: begin.transaction,
        creationTime: begin.creationTime,
        snapshottedTime: begin.snapTime,
        flags: volume?.readOnly === true ? DEVICE_FLAG_READ_ONLY : 0,
      },
    });
    const result = this.#maybeCommit();
    if (isPending(result)) await result;
  }

  badRange(range: DumpBadRange): VisitResult {
    const engine = this.#needEngine();
    assert(this.#device === undefined, 'badRange inside a device');
    const blockSizeSectors = engine.blockSizeBytes / SECTOR_BYTES;
    const last = this.#badRanges[this.#badRanges.length - 1];
    const problem = badRangeProblem(range, blockSizeSectors, engine.dataBlockCount, last === undefined ? 0 : last.beginSector + last.lengthSectors);
    if (problem !== undefined) {
      throw new ThinError('THIN_INVALID', `restore: bad data range of sectors [${range.beginSector}, ${range.beginSector + range.lengthSectors}): ${problem}`);
    }
    this.#badRanges.push({ ...range });
    const block = Math.floor(range.beginSector / blockSizeSectors);
    this.#dataReferences.add(block, block + 1);
    return undefined;
  }

  superblockEnd(): VisitResult {
    return undefined;
  }

  /** Writes the details and the device tree, then the one commit that makes the pool. */
  async finish(): Promise<Omit<RestoreSummary, 'dir' | 'input'>> {
    const engine = this.#needEngine();
    assert(this.#device === undefined, 'finish inside a device');
    const { tm, deviceTree } = engine;
    // Data reference counts in one ordered pass: an update of the data space map per mapping, in
    // the dump's order, costs several times the rest of a restore when the data is scattered.
    for (const run of this.#dataReferences.coverage()) {
      for (let count = 0; count < run.count; count += 1) engine.dataSpace.inc(run.begin, run.end - run.begin);
      await this.#maybeCommit();
    }
    let deviceTreeRoot = engine.deviceTreeRoot;
    await this.#roomFor(2 * this.#built.length);
    const volumes: RestoredVolume[] = [];
    for (const device of [...this.#built].sort((a, b) => a.id - b.id)) {
      const details = { ...device.details };
      if (details.originName !== undefined) {
        const originId = this.#names.get(details.originName);
        if (originId !== undefined) details.originId = originId;
      }
      const encoded = encodeDetails(details, DETAILS_CAPACITY_BYTES);
      const block = tm.allocate(BlockType.details);
      block.bytes.fill(0, METADATA_BLOCK_HEADER_BYTES);
      block.bytes.set(encoded, METADATA_BLOCK_HEADER_BYTES);
      deviceTreeRoot = deviceTree.insert(deviceTreeRoot, device.id, { ...device.value, detailsBlock: block.blockNr });
      volumes.push({ name: details.name, id: device.id, sizeBytes: device.value.sizeBytes, mappedBlocks: device.value.mappedBlockCount });
    }
    if (this.#timeMax > engine.superblock.time) {
      this.#warnings.push(`the dump's pool time ${engine.superblock.time} is older than its devices and mappings; the pool time restored is ${this.#timeMax}`);
    }
    let badRangeRoot = 0;
    if (this.#badRanges.length > 0) {
      const tree = new BTree(tm, badRangeCodec);
      badRangeRoot = tree.createEmpty();
      for (const range of this.#badRanges) {
        badRangeRoot = tree.insert(badRangeRoot, badRangeKey('data', range.beginSector), { lengthSectors: range.lengthSectors, flags: range.flags });
      }
    }
    const nextVolumeId = volumes.reduce((max, volume) => Math.max(max, volume.id + 1), 1);
    const payload = { ...this.#payload(deviceTreeRoot, nextVolumeId), badRangeRoot };
    await tm.commit(encodePoolPayload(payload), () => this.#dataFile!.sync());
    this.#finished = true;
    await this.#closeFiles();
    return {
      blockSizeBytes: engine.blockSizeBytes,
      dataBlockCount: engine.dataBlockCount,
      volumes,
      mappedBlockCount: this.#mappedBlockCount,
      badRangeCount: this.#badRanges.length,
      sourceTransaction: engine.superblock.transaction,
      warnings: this.#warnings,
    };
  }

  #payload(deviceTreeRoot: number, nextVolumeId: number): PoolPayload {
    const engine = this.#needEngine();
    return {
      formatVersion: POOL_FORMAT_VERSION,
      blockSizeBytes: engine.blockSizeBytes,
      flags: (engine.superblock.flags & 1) !== 0 ? POOL_FLAG_NEEDS_CHECK : 0,
      dataBlockCount: engine.dataBlockCount,
      dataSpaceMapRoot: engine.dataSpace.root,
      deviceTreeRoot,
      // A reused data device may hold anything in blocks no mapping names: none reads as known zeros.
      // A new sparse file reads zeros everywhere past the blocks the dump maps.
      dataHighWaterMark: 'path' in this.#data ? engine.dataBlockCount : this.#dataEndMax,
      time: this.#timeMax,
      nextVolumeId,
      creationTimeMs: Date.now(),
      userTransactionId: engine.superblock.transaction,
      space: { ...this.#space },
    };
  }

  /**
   * A large restore commits along the way so dirty metadata stays bounded. The intermediate
   * superblocks name the still empty device tree; they live in the temporary directory only.
   */
  #maybeCommit(): VisitResult {
    const engine = this.#needEngine();
    const room = this.#roomFor(0);
    if (engine.tm.dirtyBlockCount < METADATA_DIRTY_BLOCKS_SOFT_MAX) return room;
    return (async () => {
      await room;
      await engine.tm.commit(encodePoolPayload(this.#payload(engine.deviceTreeRoot, 1)), () => this.#dataFile!.sync());
    })();
  }

  /**
   * Keeps RESTORE_METADATA_HEADROOM_BLOCKS (plus `blocks`) free by growing the metadata file: the
   * rebuilt trees share nothing between snapshots (dump and restore carry mappings, not shared
   * nodes), so they may need more metadata than the pool they come from.
   */
  #roomFor(blocks: number): Promise<void> | undefined {
    const engine = this.#needEngine();
    const { tm } = engine;
    const wanted = RESTORE_METADATA_HEADROOM_BLOCKS + blocks;
    if (tm.metadataBlocksFree - METADATA_COMMIT_RESERVE_BLOCKS >= wanted) return undefined;
    const limit = Math.min(METADATA_BLOCK_COUNT_MAX, this.#space.metadataMaxBytes === undefined ? Infinity : Math.floor(this.#space.metadataMaxBytes / METADATA_BLOCK_SIZE_BYTES));
    const target = Math.min(limit, Math.max(tm.metadataBlockCount * 2, tm.metadataBlockCount + 2 * wanted));
    if (target <= tm.metadataBlockCount) return undefined; // at the limit: pdata refuses with THIN_NO_METADATA_SPACE
    const from = tm.metadataBlockCount;
    return (async () => {
      await this.#metadataFile!.grow(target * METADATA_BLOCK_SIZE_BYTES);
      tm.growMetadata(target);
      this.#warnings.push(`the metadata grew from ${from * METADATA_BLOCK_SIZE_BYTES} to ${target * METADATA_BLOCK_SIZE_BYTES} bytes to hold the restored volumes`);
    })();
  }

  #needEngine(): Engine {
    assert(this.#engine !== undefined, 'restore event before superblockBegin');
    return this.#engine;
  }

  async #closeFiles(): Promise<void> {
    await this.#metadataFile?.close().catch(() => undefined);
    await this.#dataFile?.close().catch(() => undefined);
    this.#metadataFile = undefined;
    this.#dataFile = undefined;
  }

  /** After a failure: close what is open (the caller removes the directory). */
  async abandon(): Promise<void> {
    if (!this.#finished) await this.#closeFiles();
  }
}

/**
 * Free metadata blocks a restore keeps in hand between two checks (one mapping run or one device
 * per check; a run is a few tree changes of at most 25 blocks each): 1024 blocks, 4 MiB.
 */
const RESTORE_METADATA_HEADROOM_BLOCKS = 1024;

function mergeable(leftKey: number, left: Extent, rightKey: number, right: Extent): boolean {
  return (
    leftKey + left.lengthBlocks === rightKey &&
    left.dataBlock + left.lengthBlocks === right.dataBlock &&
    left.time === right.time &&
    left.lengthBlocks + right.lengthBlocks <= EXTENT_LENGTH_BLOCKS_MAX
  );
}
