// The device table: every volume's working state (its device tree value and details), by id and
// by name, and the device tree those values are stored in.
//
// A write changes a device's value in memory only (its mapping root, its mapped block count) and
// marks it dirty; dirty values are stored into the device tree when a transaction is sealed
// (storeDirty), as dm-thin writes its details at commit, so a write touches the device tree zero
// times instead of once per mapping. The table also holds the superblock fields that volume
// management advances or stamps: the pool time (the snapshot counter, F-POOL-24), the next volume
// id, and dm-thin's user transaction id, which a new volume records (F-POOL-9).
//
// Every method that changes the table runs inside the engine's metadata change (PoolCore's
// mutate), which checks for room first and enters needs-check when a change is cut short.
import { METADATA_BLOCK_HEADER_BYTES, VOLUME_SIZE_BYTES_MAX } from '../constants.ts';
import { ThinError, assert } from '../errors.ts';
import { BTREE_BLOCK_TYPES, BlockType, BTree, type BlockManager } from '../pdata/index.ts';
import {
  DEVICE_FLAG_READ_ONLY,
  POOL_TIME_MAX,
  VOLUME_ID_MAX,
  decodeDetails,
  encodeDetails,
  validateVolumeName,
  type DeviceValue,
  type VolumeDetails,
} from './codecs.ts';
import type { Extent } from './ranges.ts';
import { DETAILS_CAPACITY_BYTES, checkWrittenBy, makeDeviceCodec } from './trees.ts';

/** A volume's working state. */
export interface Device {
  readonly id: number;
  value: DeviceValue;
  details: VolumeDetails;
  /** The value differs from the device tree's. */
  dirty: boolean;
  removed: boolean;
}

/** What Pool.updateVolume changes; a field left out stays as it is. */
export interface UpdateVolumeOptions {
  /** A new name (THIN_EXISTS when taken). */
  name?: string;
  /** Replaces every label. */
  labels?: Record<string, string>;
  readOnly?: boolean;
}

export class DeviceTable {
  readonly tree: BTree<DeviceValue>;
  /** The pool time: raised by each snapshot, recorded with every mapping (F-POOL-24). */
  time: number;
  nextVolumeId: number;
  /** dm-thin's userspace transaction id, a label kept for dump/restore (F-POOL-9); thinbd never changes it. */
  readonly userTransactionId: number;
  readonly #tm: BlockManager;
  readonly #mappingTree: BTree<Extent>;
  #root: number;
  #byId = new Map<number, Device>();
  #idByName = new Map<string, number>();
  /** Devices whose value differs from the device tree's (stored at seal, or earlier for room). */
  #dirty = new Set<Device>();

  constructor(tm: BlockManager, mappingTree: BTree<Extent>, root: number, fields: { time: number; nextVolumeId: number; userTransactionId: number }) {
    this.#tm = tm;
    this.#mappingTree = mappingTree;
    this.tree = new BTree<DeviceValue>(tm, makeDeviceCodec(tm, () => mappingTree));
    this.#root = root;
    this.time = fields.time;
    this.nextVolumeId = fields.nextVolumeId;
    this.userTransactionId = fields.userTransactionId;
  }

  /** The device tree's root, as of the last storeDirty(). */
  get root(): number {
    return this.#root;
  }

  get count(): number {
    return this.#byId.size;
  }

  get dirtyCount(): number {
    return this.#dirty.size;
  }

  /** Loads every device and its details; names must be unique (F-POOL-32). */
  load(): void {
    for (const [id, value] of this.tree.entries(this.#root)) {
      checkWrittenBy(this.#tm, value.mappingRoot, BTREE_BLOCK_TYPES, value.mappingRootTransactionId, `the mapping root of volume id ${id}`);
      checkWrittenBy(this.#tm, value.detailsBlock, BlockType.details, value.detailsTransactionId, `the details of volume id ${id}`);
      const details = this.readDetails(value.detailsBlock, `of volume id ${id} (block ${value.detailsBlock})`, value.detailsTransactionId);
      if (this.#idByName.has(details.name)) {
        throw new ThinError('THIN_CORRUPT_NODE', `Two volumes are named ${details.name} (ids ${this.#idByName.get(details.name)} and ${id})`);
      }
      this.#byId.set(id, { id, value, details, dirty: false, removed: false });
      this.#idByName.set(details.name, id);
    }
  }

  readDetails(blockNr: number, where: string, transactionId?: number): VolumeDetails {
    const block = this.#tm.read(blockNr, BlockType.details, transactionId);
    return decodeDetails(block.bytes.subarray(METADATA_BLOCK_HEADER_BYTES), where);
  }

  byId(id: number): Device | undefined {
    return this.#byId.get(id);
  }

  byName(name: string): Device | undefined {
    const id = this.#idByName.get(name);
    if (id === undefined) return undefined;
    const device = this.#byId.get(id);
    assert(device !== undefined, `name ${name} maps to missing device ${id}`);
    return device;
  }

  /** Every device, by id. */
  all(): Device[] {
    return [...this.#byId.values()].sort((a, b) => a.id - b.id);
  }

  validateNewName(name: string): void {
    const problem = validateVolumeName(name);
    if (problem !== undefined) throw new ThinError('THIN_INVALID', `Invalid volume name: ${problem}`);
    if (this.#idByName.has(name)) throw new ThinError('THIN_EXISTS', `A volume named ${name} already exists`);
  }

  /** The id the next volume gets (THIN_INVALID once every id has been used). */
  nextId(): number {
    const id = this.nextVolumeId;
    if (id > VOLUME_ID_MAX) throw new ThinError('THIN_INVALID', 'Every volume id has been used');
    return id;
  }

  /** THIN_INVALID when a snapshot could not get a new pool time. */
  assertTimeLeft(): void {
    if (this.time >= POOL_TIME_MAX) throw new ThinError('THIN_INVALID', 'The pool time (snapshot counter) is exhausted');
  }

  /** A new empty volume; details were checked to fit (encodeDetails) before the change began. */
  create(id: number, details: VolumeDetails, sizeBytes: number): Device {
    const detailsBlock = this.#writeDetails(details);
    const mappingRoot = this.#mappingTree.createEmpty();
    const value: DeviceValue = {
      mappingRoot,
      detailsBlock,
      sizeBytes,
      mappedBlockCount: 0,
      transactionId: this.userTransactionId, // dm-thin's: the pool's user transaction id at creation
      creationTime: this.time,
      snapshottedTime: this.time,
      flags: 0,
    };
    this.nextVolumeId = id + 1;
    return this.#add(id, value, details);
  }

  /** The O(1) snapshot (F-POOL-25): shares the source's mapping root and starts a new pool time. */
  snapshot(source: Device, id: number, details: VolumeDetails, readOnly: boolean): Device {
    const detailsBlock = this.#writeDetails(details);
    this.#mappingTree.retainTree(source.value.mappingRoot);
    const time = this.time + 1;
    this.time = time;
    this.nextVolumeId = id + 1;
    source.value = { ...source.value, snapshottedTime: time };
    this.markDirty(source);
    const value: DeviceValue = {
      mappingRoot: source.value.mappingRoot,
      detailsBlock,
      sizeBytes: source.value.sizeBytes,
      mappedBlockCount: source.value.mappedBlockCount,
      transactionId: this.userTransactionId, // dm-thin's: the pool's user transaction id at creation
      creationTime: time,
      snapshottedTime: time,
      flags: readOnly ? DEVICE_FLAG_READ_ONLY : 0,
    };
    return this.#add(id, value, details);
  }

  /**
   * The volume under new details (a new name, new labels, a new origin name): a new details block
   * (F-POOL-30); its id and mappings stay.
   */
  replaceDetails(device: Device, details: VolumeDetails): void {
    const oldName = device.details.name;
    const detailsBlock = this.#writeDetails(details);
    this.#tm.dec(device.value.detailsBlock);
    device.value = { ...device.value, detailsBlock };
    device.details = details;
    if (details.name !== oldName) {
      this.#idByName.delete(oldName);
      this.#idByName.set(details.name, device.id);
    }
    this.markDirty(device);
  }

  /** Sets or clears the volume's read-only flag. */
  setReadOnly(device: Device, readOnly: boolean): void {
    const flags = readOnly ? device.value.flags | DEVICE_FLAG_READ_ONLY : device.value.flags & ~DEVICE_FLAG_READ_ONLY;
    if (flags === device.value.flags) return;
    device.value = { ...device.value, flags };
    this.markDirty(device);
  }

  /** Drops the volume's mappings, details and device tree entry. */
  remove(device: Device): void {
    this.#mappingTree.releaseTree(device.value.mappingRoot);
    this.#drop(device);
  }

  /**
   * `target` takes `source`'s mappings, size and mapped count; `source`'s entry and details go,
   * its mapping tree becomes target's (moved: no reference count changes) and target's old tree
   * is released. Target keeps its id, details, flags and times, its snapshotted time raised to
   * source's, so that blocks source shares (it may be a snapshot of target) are copied before a
   * write, as the time test (F-POOL-24) does for source.
   */
  adopt(target: Device, source: Device): void {
    this.#mappingTree.releaseTree(target.value.mappingRoot);
    target.value = {
      ...target.value,
      mappingRoot: source.value.mappingRoot,
      sizeBytes: source.value.sizeBytes,
      mappedBlockCount: source.value.mappedBlockCount,
      snapshottedTime: Math.max(target.value.snapshottedTime, source.value.snapshottedTime),
    };
    this.markDirty(target);
    this.#drop(source);
  }

  /** Drops the volume's details and device tree entry (not its mapping tree). */
  #drop(device: Device): void {
    this.#tm.dec(device.value.detailsBlock);
    if (this.tree.lookup(this.#root, device.id) !== undefined) this.#root = this.tree.remove(this.#root, device.id);
    device.removed = true;
    device.dirty = false;
    this.#dirty.delete(device);
    this.#byId.delete(device.id);
    this.#idByName.delete(device.details.name);
  }

  markDirty(device: Device): void {
    device.dirty = true;
    this.#dirty.add(device);
  }

  /** Writes the values of devices changed since they were last stored into the device tree; returns how many. */
  storeDirty(): number {
    let stored = 0;
    for (const device of [...this.#dirty].sort((a, b) => a.id - b.id)) {
      if (!device.removed) this.#root = this.tree.insert(this.#root, device.id, device.value);
      device.dirty = false;
      this.#dirty.delete(device);
      stored += 1;
    }
    return stored;
  }

  assertInvariants(): void {
    assert(this.#byId.size === this.#idByName.size, `${this.#byId.size} devices but ${this.#idByName.size} names`);
    for (const device of this.#dirty) {
      assert(device.dirty && !device.removed && this.#byId.get(device.id) === device, `device ${device.id} is in the dirty set but not dirty and present`);
    }
  }

  #add(id: number, value: DeviceValue, details: VolumeDetails): Device {
    const device: Device = { id, value, details, dirty: false, removed: false };
    this.#byId.set(id, device);
    this.#idByName.set(details.name, id);
    this.markDirty(device);
    return device;
  }

  /** Writes details into a new details block (F-POOL-30). */
  #writeDetails(details: VolumeDetails): number {
    const encoded = encodeDetails(details, DETAILS_CAPACITY_BYTES);
    const block = this.#tm.allocate(BlockType.details);
    block.bytes.fill(0, METADATA_BLOCK_HEADER_BYTES);
    block.bytes.set(encoded, METADATA_BLOCK_HEADER_BYTES);
    return block.blockNr;
  }
}

export function validateSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 1 || sizeBytes > VOLUME_SIZE_BYTES_MAX) {
    throw new ThinError('THIN_INVALID', `Volume size ${sizeBytes} is not a byte count from 1 to ${VOLUME_SIZE_BYTES_MAX}`);
  }
}

export function validateLabels(labels: Record<string, string>): void {
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) throw new ThinError('THIN_INVALID', 'Labels must be an object of strings');
  for (const [key, value] of Object.entries(labels)) {
    if (typeof value !== 'string') throw new ThinError('THIN_INVALID', `Label ${key} must be a string`);
  }
}
