// A read-only view of a pool's committed metadata for the tools that walk it volume by volume
// (dump, delta): the superblock payload, the device tree with each volume's details, and each
// volume's mapping extents in virtual block order.
//
// It opens the files as `check` does — the pool's lock taken, both files read-only, pdata's
// TransactionManager in read-only mode — so it never changes a byte and never runs beside a
// writer. It does not use pdata's TreeWalker: that walker visits a leaf shared by several
// snapshots once, which is right for counting references, while dump and delta need every
// volume's own full list of mappings; BTree.entries gives that lazily, one leaf at a time.
import path from 'node:path';
import { METADATA_BLOCK_HEADER_BYTES } from '../constants.ts';
import { ThinError } from '../errors.ts';
import { FileBlockFile } from '../io/file.ts';
import type { DirectoryLock } from '../io/lock.ts';
import { BTree, BlockType, TransactionManager, type OpenReport } from '../pdata/index.ts';
import {
  DEVICE_FLAG_READ_ONLY,
  POOL_FLAG_NEEDS_CHECK,
  decodeDetails,
  decodePoolPayload,
  type DeviceValue,
  type PoolPayload,
  type VolumeDetails,
} from '../pool/codecs.ts';
import { DATA_FILE_NAME, METADATA_FILE_NAME, lockPool, type PoolFiles } from '../pool/files.ts';
import { deviceReadCodec, extentReadCodec, validatePayloadRoots } from '../pool/trees.ts';
import type { Extent } from '../pool/ranges.ts';
import type { DeviceBegin, Mapping, SuperblockBegin } from './dump/events.ts';

const SECTOR_BYTES = 512;
/** dm-thin's metadata version, written by the kernel and thin-provisioning-tools 1.x. */
const DM_THIN_METADATA_VERSION = 2;

export interface ViewDevice {
  id: number;
  value: DeviceValue;
  details: VolumeDetails;
}

export interface PoolViewOptions {
  /**
   * Open the newest generation whose payload roots also validate (as the pool opens), instead of
   * the newest whose superblock and metadata space map do: what repair starts from.
   */
  validateRoots?: boolean;
}

export class PoolView {
  readonly tm: TransactionManager;
  readonly payload: PoolPayload;
  /** Which superblock generation was opened and what was passed over. */
  readonly openReport: OpenReport;
  readonly #files: PoolFiles;

  /** The metadata file the view reads (repair reads the delta log from it). */
  get metadataFile(): PoolFiles['metadata'] {
    return this.#files.metadata;
  }
  readonly #ownsFiles: boolean;
  readonly #lock: DirectoryLock | undefined;
  readonly #deviceTree: BTree<DeviceValue>;
  readonly #mappingTree: BTree<Extent>;

  private constructor(files: PoolFiles, ownsFiles: boolean, lock: DirectoryLock | undefined, tm: TransactionManager, payload: PoolPayload, openReport: OpenReport) {
    this.openReport = openReport;
    this.#files = files;
    this.#ownsFiles = ownsFiles;
    this.#lock = lock;
    this.tm = tm;
    this.payload = payload;
    this.#deviceTree = new BTree(tm, deviceReadCodec);
    this.#mappingTree = new BTree(tm, extentReadCodec(payload.dataBlockCount));
  }

  /** Opens the pool in a directory (taking its lock) or on given block files. */
  static async open(target: string | PoolFiles, options: PoolViewOptions = {}): Promise<PoolView> {
    if (typeof target !== 'string') return PoolView.#openOn(target, false, undefined, options);
    const lock = lockPool(target);
    const files: Partial<PoolFiles> = {};
    try {
      files.metadata = await FileBlockFile.open(path.join(target, METADATA_FILE_NAME), { readOnly: true });
      files.data = await FileBlockFile.open(path.join(target, DATA_FILE_NAME), { readOnly: true });
      return await PoolView.#openOn(files as PoolFiles, true, lock, options);
    } catch (error) {
      await files.metadata?.close().catch(() => undefined);
      await files.data?.close().catch(() => undefined);
      lock.release();
      throw error;
    }
  }

  static async #openOn(files: PoolFiles, ownsFiles: boolean, lock: DirectoryLock | undefined, options: PoolViewOptions): Promise<PoolView> {
    const { tm, payload, report } = await TransactionManager.open(files.metadata, {
      readOnly: true,
      ...(options.validateRoots === true ? { validatePayload: validatePayloadRoots } : {}),
    });
    return new PoolView(files, ownsFiles, lock, tm, decodePoolPayload(payload, tm.metadataBlockCount), report);
  }

  async close(): Promise<void> {
    if (this.#ownsFiles) {
      await this.#files.metadata.close().catch(() => undefined);
      await this.#files.data.close().catch(() => undefined);
    }
    this.#lock?.release();
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

  /** A volume's mappings as dump events, in virtual block order (one per extent). */
  *mappings(device: ViewDevice): Generator<Mapping> {
    for (const [key, extent] of this.#mappingTree.entries(device.value.mappingRoot)) {
      yield { originBegin: key, dataBegin: extent.dataBlock, length: extent.lengthBlocks, time: extent.time };
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
