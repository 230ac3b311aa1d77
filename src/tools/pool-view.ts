// A read-only view of a pool's committed metadata for the tools that walk it volume by volume
// (dump, delta): the superblock payload, the device tree with each volume's details, and each
// volume's mapping extents in virtual block order.
//
// It opens the files as `check` does — the pool's lock taken, both files read-only, pdata's
// TransactionManager in read-only mode (openReadOnly) — so it never changes a byte and never runs
// beside a writer. It does not use pdata's TreeWalker: that walker visits a leaf shared by several
// snapshots once, which is right for counting references, while dump and delta need every
// volume's own full list of mappings; BTree.leavesReadOnce gives that lazily, one leaf at a time.
import { METADATA_BLOCK_HEADER_BYTES, SECTOR_BYTES } from '../constants.ts';
import { ThinError } from '../errors.ts';
import { BTree, BlockType, TransactionManager, type LeafColumnsReader, type OpenReport } from '../pdata/index.ts';
import {
  DEVICE_FLAG_READ_ONLY,
  POOL_FLAG_NEEDS_CHECK,
  decodeDetails,
  decodePoolPayload,
  type DeviceValue,
  type PoolPayload,
  type VolumeDetails,
} from '../pool/codecs.ts';
import { nodeFileSystem, type FileSystem } from '../io/file-system.ts';
import { readDeltaLog } from '../journal/replay.ts';
import { closePoolFiles, openPinnedPoolFiles, openPoolDirectory, type PoolFiles } from '../pool/files.ts';
import { deviceReadCodec, extentColumnsReader, extentReadCodec, validatePayloadRoots, type ExtentColumns } from '../pool/trees.ts';
import type { Extent } from '../pool/ranges.ts';
import { badRangeCodec, decodeBadRangeKey } from '../pool/bad-ranges.ts';
import type { DeviceBegin, DumpBadRange, Mapping, SuperblockBegin } from './dump/events.ts';

/** dm-thin's metadata version, written by the kernel and thin-provisioning-tools 1.x. */
const DM_THIN_METADATA_VERSION = 2;

/**
 * What a read-only tool reads: a pool directory (its lock taken), block files the caller owns, or
 * a generation that the process owning the pool pinned for this reader (docs/format.md "Pinned
 * generations"): the directory's files are then opened without the lock, at the superblock copy
 * the owner handed over.
 */
export type ViewTarget = string | PoolFiles | PinnedTarget;

export interface PinnedTarget {
  /** The pool's directory (its files are opened without the lock), or its block files. */
  pool: string | PoolFiles;
  /** The encoded superblock copy of the pinned generation. */
  pinnedSuperblock: Uint8Array;
  /** What each superblock copy's block holds for that generation (metadata pack images these, not the disk's). */
  superblockSlots: Array<{ blockNr: number; bytes: Uint8Array }>;
}

export function isPinned(target: ViewTarget): target is PinnedTarget {
  return typeof target === 'object' && 'pinnedSuperblock' in target;
}

/**
 * A pool's files opened read-only: a directory's under its lock (released, and the files closed,
 * by `release`), or block files the caller owns (release does nothing).
 */
export async function openReadOnly(
  target: string | PoolFiles,
  fileSystem: FileSystem = nodeFileSystem,
): Promise<{ files: PoolFiles; release: () => Promise<void> }> {
  if (typeof target !== 'string') return { files: target, release: async () => undefined };
  const { files, lock } = await openPoolDirectory(target, { readOnly: true, fileSystem });
  let released = false;
  return {
    files,
    release: async () => {
      if (released) return;
      released = true;
      await closePoolFiles(files);
      lock.release();
    },
  };
}

/** A volume's bytes for export: what the engine's Volume and a PoolView's reader both offer. */
export interface VolumeReader {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** Mapped and unmapped runs covering [offsetBytes, offsetBytes + lengthBytes), in order. */
  extents(offsetBytes: number, lengthBytes: number): Iterable<{ mapped: boolean; lengthBytes: number }>;
  read(offsetBytes: number, target: Uint8Array): Promise<unknown>;
}

export interface ViewDevice {
  id: number;
  value: DeviceValue;
  details: VolumeDetails;
}

export interface PoolViewOptions {
  /**
   * Open the newest generation whose payload roots also validate (as the pool opens), instead of
   * the newest whose superblock and metadata space map do.
   */
  validateRoots?: boolean;
  /** What opens a pool directory (default node:fs). */
  fileSystem?: FileSystem;
  /**
   * Refuse to read an older state than the pool's own: a fall back past a newer generation that
   * was committed and cannot be read (THIN_CORRUPT_SUPERBLOCK, F-SB-6, F-SB-10), or a generation
   * followed by delta-log records, flushes acknowledged after it that only a read-write open rolls
   * into the trees (THIN_LOG_PENDING, F-LOG-5). A view reads the trees alone, so dump and delta
   * would otherwise give that older state with no word of it, and a restore of such a dump would
   * lose what was acknowledged since. A pinned generation is neither: the owner opened it and
   * rolled its log up before pinning it.
   */
  requireLatest?: boolean;
}

export class PoolView {
  readonly tm: TransactionManager;
  readonly payload: PoolPayload;
  /** Which superblock generation was opened and what was passed over. */
  readonly openReport: OpenReport;
  /** The files the view reads (the tools opener reads the delta log and the file size from them). */
  readonly files: PoolFiles;
  readonly #release: () => Promise<void>;
  readonly #deviceTree: BTree<DeviceValue>;
  readonly #mappingTree: BTree<Extent>;
  readonly #extentColumns: LeafColumnsReader<ExtentColumns>;

  /** Made by PoolView.open and the tools opener (open.ts); `release` closes what the view owns. */
  constructor(files: PoolFiles, release: () => Promise<void>, opened: { tm: TransactionManager; payload: PoolPayload; report: OpenReport }) {
    this.files = files;
    this.#release = release;
    this.tm = opened.tm;
    this.payload = opened.payload;
    this.openReport = opened.report;
    this.#deviceTree = new BTree(opened.tm, deviceReadCodec);
    this.#mappingTree = new BTree(opened.tm, extentReadCodec(opened.payload.dataBlockCount));
    this.#extentColumns = extentColumnsReader(opened.payload.dataBlockCount);
  }

  /**
   * Opens the pool in a directory (taking its lock) or on given block files, with no fall back
   * and no findings: what dump and delta read. check and repair use openPoolForTools (open.ts).
   */
  static async open(target: ViewTarget, options: PoolViewOptions = {}): Promise<PoolView> {
    if (isPinned(target)) return PoolView.#openPinned(target);
    const { files, release } = await openReadOnly(target, options.fileSystem);
    try {
      const { tm, payload, report } = await TransactionManager.open(files.metadata, {
        readOnly: true,
        ...(options.validateRoots === true ? { validatePayload: validatePayloadRoots } : {}),
      });
      if (options.requireLatest === true) {
        const where = typeof target === 'string' ? target : files.metadata.description;
        if (report.fellBack) {
          const passedOver = report.rejected.map((entry) => `generation ${entry.generation}: ${entry.problem}`).join('; ');
          throw new ThinError(
            'THIN_CORRUPT_SUPERBLOCK',
            `Pool ${where}: generation ${report.newestGenerationSeen} was committed but cannot be read (${passedOver}), and generation ${report.generation} ` +
              'would give an older state: thinbd check names the damage, thinbd repair rebuilds what is readable',
          );
        }
        const log = await readDeltaLog(tm.file, { poolId: tm.poolId, baseGeneration: tm.generation });
        if (log.records.length > 0) {
          throw new ThinError(
            'THIN_LOG_PENDING',
            `Pool ${where} holds ${log.records.length} flushed change(s) in its delta log that are not in its trees yet (a crash or kill left them), ` +
              `and this reads only the trees: open the pool read-write once to roll them up${typeof target === 'string' ? ` (thinbd pool status --pool ${target})` : ''}`,
          );
        }
      }
      return new PoolView(files, release, { tm, payload: decodePoolPayload(payload, tm.metadataBlockCount), report });
    } catch (error) {
      await release();
      throw error;
    }
  }

  static async #openPinned(target: PinnedTarget): Promise<PoolView> {
    const owned = typeof target.pool === 'string';
    const files = typeof target.pool === 'string' ? await openPinnedPoolFiles(target.pool) : target.pool;
    const release = async (): Promise<void> => {
      if (owned) await closePoolFiles(files);
    };
    try {
      const { tm, payload } = TransactionManager.openPinned(files.metadata, target.pinnedSuperblock, { validatePayload: validatePayloadRoots });
      const report: OpenReport = {
        generation: tm.generation,
        newestGenerationSeen: tm.generation,
        fellBack: false,
        copies: [],
        rejected: [],
        degraded: false,
      };
      return new PoolView(files, release, {
        tm,
        payload: decodePoolPayload(payload, tm.metadataBlockCount),
        report,
      });
    } catch (error) {
      await release();
      throw error;
    }
  }

  async close(): Promise<void> {
    await this.#release();
  }

  /** Every volume, by id. */
  devices(): ViewDevice[] {
    const devices: ViewDevice[] = [];
    for (const [id, value] of this.#deviceTree.entries(this.payload.deviceTreeRoot)) {
      const block = this.tm.read(value.detailsBlock, BlockType.details);
      const details = decodeDetails(block.bytes.subarray(METADATA_BLOCK_HEADER_BYTES), `of volume id ${id} (block ${value.detailsBlock})`);
      devices.push({ id, value, details });
    }
    return devices;
  }

  /** The volume named `name`, or else the one whose id `name` spells in decimal (THIN_NOT_FOUND). */
  device(name: string): ViewDevice {
    const devices = this.devices();
    const byName = devices.find((device) => device.details.name === name);
    if (byName !== undefined) return byName;
    const byId = /^\d+$/.test(name) ? devices.find((device) => device.id === Number(name)) : undefined;
    if (byId !== undefined) return byId;
    throw new ThinError('THIN_NOT_FOUND', `No volume named ${name}`);
  }

  /**
   * A volume's bytes as the committed generation holds them, read from the data file (unmapped
   * ranges read as zeros, as the engine reads them). Only a read-only volume is stable under a
   * pin: a writable one may be written in place by the process that owns the pool.
   */
  volumeReader(device: ViewDevice): VolumeReader {
    const blockSizeBytes = this.payload.blockSizeBytes;
    const data = this.files.data;
    const overlapping = (beginBytes: number, endBytes: number): Generator<Mapping> =>
      this.mappingsBetween(device, Math.floor(beginBytes / blockSizeBytes), Math.ceil(endBytes / blockSizeBytes));
    return {
      sizeBytes: device.value.sizeBytes,
      readOnly: (device.value.flags & DEVICE_FLAG_READ_ONLY) !== 0,
      *extents(offsetBytes: number, lengthBytes: number): Generator<{ mapped: boolean; lengthBytes: number }> {
        const beginBytes = offsetBytes;
        const endBytes = offsetBytes + lengthBytes;
        let position = beginBytes;
        for (const mapping of overlapping(beginBytes, endBytes)) {
          const mappedBegin = Math.max(mapping.originBegin * blockSizeBytes, position);
          const mappedEnd = Math.min((mapping.originBegin + mapping.length) * blockSizeBytes, endBytes);
          if (mappedBegin > position) yield { mapped: false, lengthBytes: mappedBegin - position };
          yield { mapped: true, lengthBytes: mappedEnd - mappedBegin };
          position = mappedEnd;
        }
        if (position < endBytes) yield { mapped: false, lengthBytes: endBytes - position };
      },
      async read(offsetBytes: number, target: Uint8Array): Promise<void> {
        const endBytes = offsetBytes + target.length;
        target.fill(0);
        const reads: Promise<void>[] = [];
        for (const mapping of overlapping(offsetBytes, endBytes)) {
          const mappedBegin = Math.max(mapping.originBegin * blockSizeBytes, offsetBytes);
          const mappedEnd = Math.min((mapping.originBegin + mapping.length) * blockSizeBytes, endBytes);
          const dataOffsetBytes = mapping.dataBegin * blockSizeBytes + (mappedBegin - mapping.originBegin * blockSizeBytes);
          reads.push(data.read(target.subarray(mappedBegin - offsetBytes, mappedEnd - offsetBytes), dataOffsetBytes));
        }
        await Promise.all(reads);
      },
    };
  }

  /** The mappings of a volume that overlap virtual blocks [beginBlock, endBlock), in order. */
  *mappingsBetween(device: ViewDevice, beginBlock: number, endBlock: number): Generator<Mapping> {
    const root = device.value.mappingRoot;
    const before = this.#mappingTree.floor(root, beginBlock);
    if (before !== undefined && before[0] < beginBlock && before[0] + before[1].lengthBlocks > beginBlock) {
      const [key, extent] = before;
      yield { originBegin: key, dataBegin: extent.dataBlock, length: extent.lengthBlocks, time: extent.time };
    }
    for (const [key, extent] of this.#mappingTree.entries(root, beginBlock, endBlock)) {
      yield { originBegin: key, dataBegin: extent.dataBlock, length: extent.lengthBlocks, time: extent.time };
    }
  }

  /** A volume's mappings as dump events, in virtual block order (one per extent). */
  *mappings(device: ViewDevice): Generator<Mapping> {
    for (const { count, keys, dataBlocks, lengths, times } of this.mappingLeaves(device)) {
      for (let index = 0; index < count; index++) {
        yield { originBegin: keys[index]!, dataBegin: dataBlocks[index]!, length: lengths[index]!, time: times[index]! };
      }
    }
  }

  /**
   * A volume's mapping leaves in virtual block order, each read once and decoded in place into
   * the same columns (refilled per leaf: read them before asking for the next): for the tools
   * that read every mapping (dump, delta), which then make no object per extent.
   */
  mappingLeaves(device: ViewDevice): Generator<ExtentColumns> {
    return this.#mappingTree.leavesReadOnce(device.value.mappingRoot, this.#extentColumns, this.#extentColumns.create());
  }

  /**
   * The pool's bad data ranges, in sector order (metadata ranges name sectors of this metadata
   * file, which a restore or a repair does not keep: events.ts DumpBadRange).
   */
  *badDataRanges(): Generator<DumpBadRange> {
    const root = this.payload.badRangeRoot ?? 0;
    if (root === 0) return;
    for (const [key, value] of new BTree(this.tm, badRangeCodec).entries(root)) {
      const decoded = decodeBadRangeKey(key);
      if (decoded?.device === 'data') yield { beginSector: decoded.beginSector, lengthSectors: value.lengthSectors, flags: value.flags };
    }
  }

  /** thin_dump's superblock fields for this pool. */
  superblock(): SuperblockBegin {
    const { payload } = this;
    return {
      uuid: '',
      time: payload.time,
      transaction: payload.userTransactionId,
      flags: (payload.flags & POOL_FLAG_NEEDS_CHECK) !== 0 ? 1 : 0,
      version: DM_THIN_METADATA_VERSION,
      dataBlockSizeSectors: payload.blockSizeBytes / SECTOR_BYTES,
      nrDataBlocks: payload.dataBlockCount,
    };
  }

  /** thin_dump's device fields, with thinbd's volume facts. */
  deviceBegin(device: ViewDevice): DeviceBegin {
    const { value, details } = device;
    return {
      devId: device.id,
      mappedBlocks: value.mappedBlockCount,
      transaction: value.transactionId,
      creationTime: value.creationTime,
      snapTime: value.snapshottedTime,
      volume: {
        name: details.name,
        sizeBytes: value.sizeBytes,
        ...(details.originName === undefined ? {} : { origin: details.originName }),
        readOnly: (value.flags & DEVICE_FLAG_READ_ONLY) !== 0,
        labels: details.labels,
        createdAt: details.createdAt,
      },
    };
  }
}
