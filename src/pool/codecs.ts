// The pool's on-disk structures inside pdata's blocks: the superblock payload, the device tree
// value, the mapping tree value (extent) and the volume details block. docs/format.md has the byte
// tables; every rule checked here cites its F-POOL number there.
//
// Bytes read from disk are untrusted: decoders validate and throw ThinError with the place named.
// Values built in memory are trusted: encoders assert.
import { ThinError, assert } from '../errors.ts';
import { VOLUME_NAME_LENGTH_MAX, VOLUME_NAME_PATTERN, VOLUME_SIZE_BYTES_MAX, WHEN_FULL_QUEUE_SECONDS_MAX } from '../constants.ts';
import type { Extent } from './ranges.ts';
import type { LowWater, SpaceSettings } from './space-policy.ts';
import type { CompactValueCodec } from '../pdata/index.ts';

/** "TBPL" little-endian: marks the payload as a thinbd pool's (F-POOL-1). */
export const POOL_PAYLOAD_MAGIC = 0x4c504254;
/** The pool format this build writes and reads (F-POOL-2). */
export const POOL_FORMAT_VERSION = 1;
export const POOL_PAYLOAD_SIZE_BYTES = 160;
/** Payloads written before the bad-range tree existed end at byte 88; it reads as none there. */
export const POOL_PAYLOAD_SIZE_BYTES_BEFORE_BAD_RANGES = 88;
/** The bad-range tree's root fields end here: a shorter payload has none (F-POOL-17). */
const POOL_PAYLOAD_BAD_RANGES_END = 104;
/** Payloads written before `userTransactionId` existed end at byte 80; it reads as 0 there. */
export const POOL_PAYLOAD_SIZE_BYTES_MIN = 80;
/** The space settings follow the bad-range root; payloads written before them end at byte 104 or earlier: every setting is its default (F-POOL-50). */
const POOL_PAYLOAD_SPACE_OFFSET = POOL_PAYLOAD_BAD_RANGES_END;
/** Space flags (F-POOL-51): automatic growth off; giving freed blocks back to the host off. */
export const SPACE_FLAG_NO_AUTO_GROW = 1;
export const SPACE_FLAG_NO_PUNCH = 2;
const SPACE_FLAGS_KNOWN = SPACE_FLAG_NO_AUTO_GROW | SPACE_FLAG_NO_PUNCH;
/** Low-water mark units (F-POOL-52). */
const LOW_WATER_UNIT_DEFAULT = 0;
const LOW_WATER_UNIT_BYTES = 1;
const LOW_WATER_UNIT_HUNDREDTHS_PERCENT = 2;
const LOW_WATER_UNIT_OFF = 3;
/** Payload flag: a commit failed or a check found damage; open read-only until repaired. */
export const POOL_FLAG_NEEDS_CHECK = 1;
/**
 * Payload flag: the data file does not read as zeros where it was never written (a block device
 * with old contents), so every newly provisioned block is written whole (F-POOL-40).
 */
export const POOL_FLAG_DATA_NOT_ZEROED = 2;
/**
 * Payload flag: the pool was made without a metadata mirror on purpose (`--no-metadata-mirror`),
 * so opening it does not add one (docs/format.md "Metadata mirror").
 */
export const POOL_FLAG_NO_METADATA_MIRROR = 4;
const POOL_FLAGS_KNOWN = POOL_FLAG_NEEDS_CHECK | POOL_FLAG_DATA_NOT_ZEROED | POOL_FLAG_NO_METADATA_MIRROR;

export const DEVICE_VALUE_SIZE_BYTES = 72;
export const DEVICE_FLAG_READ_ONLY = 1;

export const EXTENT_VALUE_SIZE_BYTES = 16;
/** lengthBlocks is a u32 on disk (F-POOL-22). */
export const EXTENT_LENGTH_BLOCKS_MAX = 0xffff_ffff;
/** Pool time is a u32, as dm-thin's superblock `time` (drivers/md/dm-thin-metadata.c). */
export const POOL_TIME_MAX = 0xffff_ffff;
/** Volume ids are u32 on disk; dm-thin limits them to 24 bits, which export will check. */
export const VOLUME_ID_MAX = 0xffff_ffff;

/** Stable tree kinds stored in every node, so a node of another tree is never taken for ours. */
export const DEVICE_TREE_KIND = 0x50;
export const MAPPING_TREE_KIND = 0x51;
export const BAD_RANGE_TREE_KIND = 0x52;

// ---- little-endian u64 as exact numbers ----

/** The high 32 bits of Number.MAX_SAFE_INTEGER (2^53 − 1). */
const U53_HIGH_MAX = 0x1f_ffff;

export function getU64(view: DataView, offsetBytes: number, field: string): number {
  // Two 32-bit halves, not a BigInt: this runs once per mapping a tool reads, and reading it as a
  // BigInt made two BigInts a mapping (the value and the bound).
  const low = view.getUint32(offsetBytes, true);
  const high = view.getUint32(offsetBytes + 4, true);
  if (high > U53_HIGH_MAX) {
    const value = view.getBigUint64(offsetBytes, true);
    throw new ThinError('THIN_CORRUPT_NODE', `${field} is ${value}, beyond the largest block or byte number thinbd uses (2^53)`);
  }
  return high * 0x1_0000_0000 + low;
}

export function setU64(view: DataView, offsetBytes: number, value: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, `u64 field value ${value}`);
  view.setBigUint64(offsetBytes, BigInt(value), true);
}

// ---- superblock payload (docs/format.md "Pool superblock payload") ----

export interface PoolPayload {
  formatVersion: number;
  blockSizeBytes: number;
  flags: number;
  dataBlockCount: number;
  dataSpaceMapRoot: number;
  deviceTreeRoot: number;
  /** Data blocks at or above this number have never been written (F-POOL-40). */
  dataHighWaterMark: number;
  time: number;
  nextVolumeId: number;
  creationTimeMs: number;
  /**
   * dm-thin's userspace transaction id (thin_dump's superblock `transaction`, which LVM sets with
   * `set_transaction_id` and checks on activation). A label kept for round trips through
   * dump/restore; thinbd's own commits count generations and never change it.
   */
  userTransactionId: number;
  /**
   * The transaction that wrote each root block, as its header says (F-POOL-8): a lost or
   * misdirected write of a root leaves an older valid block there, which only this tells apart.
   * 0 or absent: not recorded (not checked).
   */
  deviceTreeRootTransactionId?: number;
  dataSpaceMapRootTransactionId?: number;
  /** Root of the bad-range tree (docs/format.md "Bad ranges"); 0 while no range was ever recorded. */
  badRangeRoot?: number;
  badRangeRootTransactionId?: number;
  /** The space settings (docs/format.md "Pool superblock payload"); absent ones are defaults. */
  space: SpaceSettings;
}

export function encodePoolPayload(payload: PoolPayload): Uint8Array {
  const bytes = new Uint8Array(POOL_PAYLOAD_SIZE_BYTES);
  const view = new DataView(bytes.buffer);
  assert(payload.dataHighWaterMark <= payload.dataBlockCount, 'high-water mark past the data space');
  view.setUint32(0, POOL_PAYLOAD_MAGIC, true);
  view.setUint32(4, payload.formatVersion, true);
  view.setUint32(8, payload.blockSizeBytes, true);
  view.setUint32(12, payload.flags, true);
  setU64(view, 16, payload.dataBlockCount);
  setU64(view, 24, payload.dataSpaceMapRoot);
  setU64(view, 32, payload.deviceTreeRoot);
  setU64(view, 40, payload.dataHighWaterMark);
  view.setUint32(48, payload.time, true);
  view.setUint32(52, payload.nextVolumeId, true);
  setU64(view, 56, payload.creationTimeMs);
  setU64(view, 64, payload.deviceTreeRootTransactionId ?? 0);
  setU64(view, 72, payload.dataSpaceMapRootTransactionId ?? 0);
  setU64(view, 80, payload.userTransactionId);
  setU64(view, 88, payload.badRangeRoot ?? 0);
  setU64(view, 96, payload.badRangeRootTransactionId ?? 0);
  encodeSpaceSettings(payload.space, view, POOL_PAYLOAD_SPACE_OFFSET);
  return bytes;
}

function encodeLowWater(mark: LowWater | undefined): { unit: number; value: number } {
  if (mark === undefined) return { unit: LOW_WATER_UNIT_DEFAULT, value: 0 };
  if (mark === 'off') return { unit: LOW_WATER_UNIT_OFF, value: 0 };
  if ('percent' in mark) return { unit: LOW_WATER_UNIT_HUNDREDTHS_PERCENT, value: Math.round(mark.percent * 100) };
  return { unit: LOW_WATER_UNIT_BYTES, value: mark.bytes };
}

function encodeSpaceSettings(space: SpaceSettings, view: DataView, offsetBytes: number): void {
  const flags = (space.autoGrow === false ? SPACE_FLAG_NO_AUTO_GROW : 0) | (space.punchHoles === false ? SPACE_FLAG_NO_PUNCH : 0);
  const data = encodeLowWater(space.lowWater);
  const metadata = encodeLowWater(space.metadataLowWater);
  view.setUint32(offsetBytes, flags, true);
  view.setUint32(offsetBytes + 4, space.whenFull === undefined || space.whenFull === 'error' ? 0 : space.whenFull.queueSeconds, true);
  view.setUint32(offsetBytes + 8, data.unit, true);
  view.setUint32(offsetBytes + 12, metadata.unit, true);
  setU64(view, offsetBytes + 16, data.value);
  setU64(view, offsetBytes + 24, metadata.value);
  setU64(view, offsetBytes + 32, space.dataMaxBytes ?? 0);
  setU64(view, offsetBytes + 40, space.metadataMaxBytes ?? 0);
  setU64(view, offsetBytes + 48, space.growStepBytes ?? 0);
}

function decodeLowWater(unit: number, value: number, name: string): LowWater | undefined {
  // F-POOL-52: a known unit; no value with the default or off; a share of at most 100 %.
  switch (unit) {
    case LOW_WATER_UNIT_DEFAULT:
    case LOW_WATER_UNIT_OFF:
      if (value !== 0) throw corruptPayload(`${name} low-water mark has unit ${unit} and a value ${value}`);
      return unit === LOW_WATER_UNIT_OFF ? 'off' : undefined;
    case LOW_WATER_UNIT_BYTES:
      if (value < 1) throw corruptPayload(`${name} low-water mark of 0 bytes`);
      return { bytes: value };
    case LOW_WATER_UNIT_HUNDREDTHS_PERCENT:
      if (value < 1 || value > 10_000) throw corruptPayload(`${name} low-water mark of ${value / 100}%`);
      return { percent: value / 100 };
    default:
      throw corruptPayload(`${name} low-water mark has unknown unit ${unit}`);
  }
}

/** The space settings at offsetBytes of a payload long enough to hold them (F-POOL-50..54). */
function decodeSpaceSettings(view: DataView, offsetBytes: number, field: (name: string, offset: number) => number): SpaceSettings {
  const space: SpaceSettings = {};
  const flags = view.getUint32(offsetBytes, true);
  // F-POOL-51: unknown space flags are refused.
  if ((flags & ~SPACE_FLAGS_KNOWN) !== 0) throw corruptPayload(`unknown space flags 0x${flags.toString(16)}`);
  if ((flags & SPACE_FLAG_NO_AUTO_GROW) !== 0) space.autoGrow = false;
  if ((flags & SPACE_FLAG_NO_PUNCH) !== 0) space.punchHoles = false;
  const queueSeconds = view.getUint32(offsetBytes + 4, true);
  // F-POOL-53: a queue of at most WHEN_FULL_QUEUE_SECONDS_MAX seconds.
  if (queueSeconds > WHEN_FULL_QUEUE_SECONDS_MAX) throw corruptPayload(`a full pool queues writes for ${queueSeconds} seconds, more than ${WHEN_FULL_QUEUE_SECONDS_MAX}`);
  if (queueSeconds > 0) space.whenFull = { queueSeconds };
  const lowWater = decodeLowWater(view.getUint32(offsetBytes + 8, true), field('data low-water mark', offsetBytes + 16), 'the data');
  const metadataLowWater = decodeLowWater(view.getUint32(offsetBytes + 12, true), field('metadata low-water mark', offsetBytes + 24), 'the metadata');
  if (lowWater !== undefined) space.lowWater = lowWater;
  if (metadataLowWater !== undefined) space.metadataLowWater = metadataLowWater;
  // F-POOL-54: 0 means the default; any other value is a byte count.
  const dataMaxBytes = field('data-max', offsetBytes + 32);
  const metadataMaxBytes = field('metadata-max', offsetBytes + 40);
  const growStepBytes = field('grow step', offsetBytes + 48);
  if (dataMaxBytes > 0) space.dataMaxBytes = dataMaxBytes;
  if (metadataMaxBytes > 0) space.metadataMaxBytes = metadataMaxBytes;
  if (growStepBytes > 0) space.growStepBytes = growStepBytes;
  return space;
}

function corruptPayload(message: string): ThinError {
  return new ThinError('THIN_CORRUPT_SUPERBLOCK', `Pool superblock payload: ${message}`);
}

export function decodePoolPayload(bytes: Uint8Array, metadataBlockCount: number): PoolPayload {
  if (bytes.length < POOL_PAYLOAD_SIZE_BYTES_MIN) {
    throw corruptPayload(`${bytes.length} bytes, expected at least ${POOL_PAYLOAD_SIZE_BYTES_MIN}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const magic = view.getUint32(0, true);
  // F-POOL-1: the magic must read "TBPL".
  if (magic !== POOL_PAYLOAD_MAGIC) throw corruptPayload(`magic is 0x${magic.toString(16)}, not a thinbd pool`);
  const formatVersion = view.getUint32(4, true);
  // F-POOL-2: a reader must refuse a format version it does not know.
  if (formatVersion !== POOL_FORMAT_VERSION) {
    throw new ThinError('THIN_FORMAT', `The pool has format version ${formatVersion}; this build reads version ${POOL_FORMAT_VERSION}`);
  }
  const field = (name: string, offset: number): number => {
    try {
      return getU64(view, offset, name);
    } catch (error) {
      throw corruptPayload(error instanceof Error ? error.message : String(error));
    }
  };
  const payload: PoolPayload = {
    formatVersion,
    blockSizeBytes: view.getUint32(8, true),
    flags: view.getUint32(12, true),
    dataBlockCount: field('data block count', 16),
    dataSpaceMapRoot: field('data space map root', 24),
    deviceTreeRoot: field('device tree root', 32),
    dataHighWaterMark: field('data high-water mark', 40),
    time: view.getUint32(48, true),
    nextVolumeId: view.getUint32(52, true),
    creationTimeMs: field('creation time', 56),
    deviceTreeRootTransactionId: field('device tree root transaction', 64),
    dataSpaceMapRootTransactionId: field('data space map root transaction', 72),
    // F-POOL-9: absent from payloads written before the field existed.
    userTransactionId: bytes.length >= 88 ? field('user transaction id', 80) : 0,
    // F-POOL-17: absent from payloads written before bad ranges were recorded.
    badRangeRoot: bytes.length >= POOL_PAYLOAD_BAD_RANGES_END ? field('bad-range tree root', 88) : 0,
    badRangeRootTransactionId: bytes.length >= POOL_PAYLOAD_BAD_RANGES_END ? field('bad-range tree root transaction', 96) : 0,
    // F-POOL-50: absent from payloads written before the space settings existed: all defaults.
    space: bytes.length >= POOL_PAYLOAD_SIZE_BYTES ? decodeSpaceSettings(view, POOL_PAYLOAD_SPACE_OFFSET, field) : {},
  };
  const { blockSizeBytes } = payload;
  // F-POOL-3: the block size is a power of two in dm-thin's range.
  if (blockSizeBytes < 64 * 1024 || blockSizeBytes > 1024 ** 3 || (blockSizeBytes & (blockSizeBytes - 1)) !== 0) {
    throw corruptPayload(`block size ${blockSizeBytes} is not a power of two from 64 KiB to 1 GiB`);
  }
  // F-POOL-4: at least one data block; the byte size of the data space stays an exact number.
  if (payload.dataBlockCount < 1 || !Number.isSafeInteger(payload.dataBlockCount * blockSizeBytes)) {
    throw corruptPayload(`data block count ${payload.dataBlockCount} is out of range`);
  }
  // F-POOL-5: roots are metadata blocks.
  for (const [name, root] of [['data space map root', payload.dataSpaceMapRoot], ['device tree root', payload.deviceTreeRoot], ['bad-range tree root', payload.badRangeRoot ?? 0]] as const) {
    if (root >= metadataBlockCount) throw corruptPayload(`${name} ${root} is past the metadata (${metadataBlockCount} blocks)`);
  }
  // F-POOL-6: the high-water mark lies within the data space.
  if (payload.dataHighWaterMark > payload.dataBlockCount) {
    throw corruptPayload(`data high-water mark ${payload.dataHighWaterMark} is past the data space (${payload.dataBlockCount} blocks)`);
  }
  // F-POOL-7: unknown flags are refused rather than ignored.
  if ((payload.flags & ~POOL_FLAGS_KNOWN) !== 0) throw corruptPayload(`unknown flags 0x${payload.flags.toString(16)}`);
  return payload;
}

// ---- device tree value (docs/format.md "Device tree value") ----

export interface DeviceValue {
  mappingRoot: number;
  detailsBlock: number;
  sizeBytes: number;
  mappedBlockCount: number;
  transactionId: number;
  creationTime: number;
  snapshottedTime: number;
  flags: number;
  /**
   * The transactions that wrote the mapping root and the details block, as their headers say
   * (F-POOL-16). Written by the pool's device codec from the blocks themselves; 0 or absent:
   * not recorded (not checked).
   */
  mappingRootTransactionId?: number;
  detailsTransactionId?: number;
}

export function packDeviceValue(value: DeviceValue, view: DataView, offsetBytes: number): void {
  assert(value.sizeBytes >= 1 && value.sizeBytes <= VOLUME_SIZE_BYTES_MAX, `volume size ${value.sizeBytes}`);
  assert(value.snapshottedTime >= value.creationTime, 'snapshotted before created');
  setU64(view, offsetBytes, value.mappingRoot);
  setU64(view, offsetBytes + 8, value.detailsBlock);
  setU64(view, offsetBytes + 16, value.sizeBytes);
  setU64(view, offsetBytes + 24, value.mappedBlockCount);
  setU64(view, offsetBytes + 32, value.transactionId);
  view.setUint32(offsetBytes + 40, value.creationTime, true);
  view.setUint32(offsetBytes + 44, value.snapshottedTime, true);
  view.setUint32(offsetBytes + 48, value.flags, true);
  view.setUint32(offsetBytes + 52, 0, true);
  setU64(view, offsetBytes + 56, value.mappingRootTransactionId ?? 0);
  setU64(view, offsetBytes + 64, value.detailsTransactionId ?? 0);
}

export function unpackDeviceValue(view: DataView, offsetBytes: number): DeviceValue {
  const value: DeviceValue = {
    mappingRoot: getU64(view, offsetBytes, 'device mapping root'),
    detailsBlock: getU64(view, offsetBytes + 8, 'device details block'),
    sizeBytes: getU64(view, offsetBytes + 16, 'device size'),
    mappedBlockCount: getU64(view, offsetBytes + 24, 'device mapped block count'),
    transactionId: getU64(view, offsetBytes + 32, 'device transaction id'),
    creationTime: view.getUint32(offsetBytes + 40, true),
    snapshottedTime: view.getUint32(offsetBytes + 44, true),
    flags: view.getUint32(offsetBytes + 48, true),
    mappingRootTransactionId: getU64(view, offsetBytes + 56, 'device mapping root transaction'),
    detailsTransactionId: getU64(view, offsetBytes + 64, 'device details transaction'),
  };
  // F-POOL-11: size within [1, VOLUME_SIZE_BYTES_MAX].
  if (value.sizeBytes < 1 || value.sizeBytes > VOLUME_SIZE_BYTES_MAX) {
    throw new ThinError('THIN_CORRUPT_NODE', `device size ${value.sizeBytes} is out of range`);
  }
  // F-POOL-12: a device is snapshotted no earlier than it was created.
  if (value.snapshottedTime < value.creationTime) {
    throw new ThinError('THIN_CORRUPT_NODE', `device snapshotted time ${value.snapshottedTime} is before its creation time ${value.creationTime}`);
  }
  // F-POOL-13: unknown device flags and a non-zero reserved field are refused.
  if ((value.flags & ~DEVICE_FLAG_READ_ONLY) !== 0 || view.getUint32(offsetBytes + 52, true) !== 0) {
    throw new ThinError('THIN_CORRUPT_NODE', `device flags 0x${value.flags.toString(16)} are unknown`);
  }
  return value;
}

// ---- mapping tree value (docs/format.md "Mapping tree value (extent)") ----

export function packExtent(value: Extent, view: DataView, offsetBytes: number): void {
  assert(value.lengthBlocks >= 1 && value.lengthBlocks <= EXTENT_LENGTH_BLOCKS_MAX, `extent length ${value.lengthBlocks}`);
  assert(value.time >= 0 && value.time <= POOL_TIME_MAX, `extent time ${value.time}`);
  setU64(view, offsetBytes, value.dataBlock);
  view.setUint32(offsetBytes + 8, value.lengthBlocks, true);
  view.setUint32(offsetBytes + 12, value.time, true);
}

/** Unpacks an extent and checks it against the data space. */
export function unpackExtent(view: DataView, offsetBytes: number, dataBlockCount: number): Extent {
  const extent: Extent = {
    dataBlock: getU64(view, offsetBytes, 'extent data block'),
    lengthBlocks: view.getUint32(offsetBytes + 8, true),
    time: view.getUint32(offsetBytes + 12, true),
  };
  checkExtent(extent, dataBlockCount);
  return extent;
}

function checkExtent(extent: Extent, dataBlockCount: number): void {
  // F-POOL-20, F-POOL-21: at least one block, all inside the data space.
  if (!Number.isSafeInteger(extent.dataBlock + extent.lengthBlocks)) {
    throw new ThinError('THIN_CORRUPT_NODE', `extent at data block ${extent.dataBlock} runs beyond 2^53`);
  }
  if (extent.lengthBlocks < 1) throw new ThinError('THIN_CORRUPT_NODE', `extent at data block ${extent.dataBlock} has length 0`);
  if (extent.dataBlock + extent.lengthBlocks > dataBlockCount) {
    throw new ThinError(
      'THIN_CORRUPT_NODE',
      `extent at data blocks [${extent.dataBlock}, ${extent.dataBlock + extent.lengthBlocks}) runs past the data space (${dataBlockCount} blocks)`,
    );
  }
}

// ---- compact mapping leaf value (docs/format.md "Compact mapping value") ----

/**
 * Bytes of an extent in a compact leaf: a u32 data block offset, then a u32 holding length − 1 in
 * its low COMPACT_LENGTH_BITS bits and the time offset in the rest.
 */
export const COMPACT_EXTENT_VALUE_SIZE_BYTES = 8;
const COMPACT_DATA_OFFSET_MAX = 0xffff_ffff;
/**
 * 14 bits of length, 18 of time: extents up to 16,384 blocks (1 GiB of 64 KiB blocks; longer runs
 * are few entries and live in wide leaves), and 262,143 snapshots between the oldest and newest
 * mapping of one leaf (one a minute for half a year) before the leaf must be wide.
 */
const COMPACT_LENGTH_BITS = 14;
export const COMPACT_EXTENT_LENGTH_BLOCKS_MAX = 2 ** COMPACT_LENGTH_BITS;
const COMPACT_TIME_OFFSET_MAX = 2 ** (32 - COMPACT_LENGTH_BITS) - 1;
/**
 * Room a new base leaves above the largest data block it covers (and keys, node.ts): a pool below
 * 2^31 data blocks (128 TiB of 64 KiB blocks) keeps base 0, so no new mapping ever needs a rebase.
 */
const COMPACT_BASE_HEADROOM = 2 ** 31;

/** The data block base of a compact leaf whose extents start at data blocks dataMin..dataMax. */
function compactDataBase(dataMin: number, dataMax: number): number {
  return Math.min(dataMin, Math.max(0, dataMax - COMPACT_BASE_HEADROOM));
}

/**
 * Whether extents with data blocks from dataMin to dataMax, lengths up to lengthMax and times from
 * timeMin to timeMax fit the bases chooseBases would give them: a builder that lays out leaves
 * from sorted extents (restore) asks it about the extremes instead of keeping every extent.
 */
export function compactExtentsFit(dataMin: number, dataMax: number, lengthMax: number, timeMin: number, timeMax: number): boolean {
  return dataMax - compactDataBase(dataMin, dataMax) <= COMPACT_DATA_OFFSET_MAX && lengthMax <= COMPACT_EXTENT_LENGTH_BLOCKS_MAX && timeMax - timeMin <= COMPACT_TIME_OFFSET_MAX;
}

/** Writes one compact extent given as offsets from its leaf's bases (which it fits: compactExtentsFit). */
export function packCompactExtent(view: DataView, offsetBytes: number, dataOffset: number, lengthBlocks: number, timeOffset: number): void {
  view.setUint32(offsetBytes, dataOffset, true);
  view.setUint32(offsetBytes + 4, (lengthBlocks - 1 + timeOffset * COMPACT_EXTENT_LENGTH_BLOCKS_MAX) >>> 0, true);
}

function compactExtentFits(value: Extent, dataBase: number, timeBase: number): boolean {
  return (
    value.dataBlock >= dataBase &&
    value.dataBlock - dataBase <= COMPACT_DATA_OFFSET_MAX &&
    value.lengthBlocks <= COMPACT_EXTENT_LENGTH_BLOCKS_MAX &&
    value.time >= timeBase &&
    value.time - timeBase <= COMPACT_TIME_OFFSET_MAX
  );
}

/**
 * The compact form of mapping tree values: offsets from a data block base and a time base the
 * leaf stores once. Scattered mappings (one entry per block) then cost 12 bytes each instead of 24.
 */
export function compactExtentCodec(dataBlockCount: () => number): CompactValueCodec<Extent> {
  return {
    sizeBytes: COMPACT_EXTENT_VALUE_SIZE_BYTES,
    chooseBases(values, view, basesOffsetBytes) {
      let dataMin = Number.MAX_SAFE_INTEGER;
      let dataMax = 0;
      let timeMin = POOL_TIME_MAX;
      for (const value of values) {
        dataMin = Math.min(dataMin, value.dataBlock);
        dataMax = Math.max(dataMax, value.dataBlock);
        timeMin = Math.min(timeMin, value.time);
      }
      const dataBase = values.length === 0 ? 0 : compactDataBase(dataMin, dataMax);
      const timeBase = values.length === 0 ? 0 : timeMin;
      for (const value of values) if (!compactExtentFits(value, dataBase, timeBase)) return false;
      setU64(view, basesOffsetBytes, dataBase);
      view.setUint32(basesOffsetBytes + 8, timeBase, true);
      view.setUint32(basesOffsetBytes + 12, 0, true);
      return true;
    },
    fits(value, view, basesOffsetBytes) {
      return compactExtentFits(value, Number(view.getBigUint64(basesOffsetBytes, true)), view.getUint32(basesOffsetBytes + 8, true));
    },
    pack(value, view, basesOffsetBytes, offsetBytes) {
      const dataBase = Number(view.getBigUint64(basesOffsetBytes, true));
      const timeBase = view.getUint32(basesOffsetBytes + 8, true);
      // The message only when it fails: a JSON.stringify per entry packed was a restore's largest cost.
      if (!(value.lengthBlocks >= 1 && compactExtentFits(value, dataBase, timeBase))) assert(false, `extent ${JSON.stringify(value)} does not fit compact bases`);
      packCompactExtent(view, offsetBytes, value.dataBlock - dataBase, value.lengthBlocks, value.time - timeBase);
    },
    unpack(view, basesOffsetBytes, offsetBytes) {
      // F-POOL-27: the bases are sane; the value they give obeys F-POOL-20 and F-POOL-21.
      const dataBase = getU64(view, basesOffsetBytes, 'compact leaf data block base');
      const timeBase = view.getUint32(basesOffsetBytes + 8, true);
      if (view.getUint32(basesOffsetBytes + 12, true) !== 0) throw new ThinError('THIN_CORRUPT_NODE', 'compact leaf bases: reserved field is not zero');
      const lengthAndTime = view.getUint32(offsetBytes + 4, true);
      const time = timeBase + Math.floor(lengthAndTime / COMPACT_EXTENT_LENGTH_BLOCKS_MAX);
      if (time > POOL_TIME_MAX) throw new ThinError('THIN_CORRUPT_NODE', `compact extent time ${time} is beyond the largest pool time`);
      const extent: Extent = {
        dataBlock: dataBase + view.getUint32(offsetBytes, true),
        lengthBlocks: (lengthAndTime % COMPACT_EXTENT_LENGTH_BLOCKS_MAX) + 1,
        time,
      };
      checkExtent(extent, dataBlockCount());
      return extent;
    },
  };
}

// ---- volume details (docs/format.md "Volume details block") ----

export interface VolumeDetails {
  name: string;
  labels: Record<string, string>;
  /** ISO 8601, UTC. */
  createdAt: string;
  originName?: string;
  originId?: number;
}

export function validateVolumeName(name: unknown): string | undefined {
  if (typeof name !== 'string') return 'a volume name must be a string';
  if (name.length < 1 || name.length > VOLUME_NAME_LENGTH_MAX) {
    return `volume name "${name}" must be 1 to ${VOLUME_NAME_LENGTH_MAX} characters`;
  }
  if (!VOLUME_NAME_PATTERN.test(name)) {
    return `volume name "${name}" may contain only letters, digits and . _ + - and must start with a letter or digit`;
  }
  return undefined;
}

/** Encodes details as `u32 length` + UTF-8 JSON; THIN_INVALID if they do not fit `capacityBytes`. */
export function encodeDetails(details: VolumeDetails, capacityBytes: number): Uint8Array {
  const json: Record<string, unknown> = { name: details.name, labels: details.labels, createdAt: details.createdAt };
  if (details.originName !== undefined) json['originName'] = details.originName;
  if (details.originId !== undefined) json['originId'] = details.originId;
  const text = new TextEncoder().encode(JSON.stringify(json));
  if (text.length + 4 > capacityBytes) {
    throw new ThinError('THIN_INVALID', `The details of volume ${details.name} (labels included) take ${text.length} bytes; at most ${capacityBytes - 4} fit`);
  }
  const bytes = new Uint8Array(4 + text.length);
  new DataView(bytes.buffer).setUint32(0, text.length, true);
  bytes.set(text, 4);
  return bytes;
}

export function decodeDetails(bytes: Uint8Array, where: string): VolumeDetails {
  const corrupt = (message: string): ThinError => new ThinError('THIN_CORRUPT_BLOCK', `Volume details ${where}: ${message}`);
  if (bytes.length < 4) throw corrupt('too short');
  const lengthBytes = new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(0, true);
  // F-POOL-30: the JSON fits inside the block.
  if (lengthBytes + 4 > bytes.length) throw corrupt(`JSON length ${lengthBytes} runs past the block`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(4, 4 + lengthBytes)));
  } catch (error) {
    throw new ThinError('THIN_CORRUPT_BLOCK', `Volume details ${where}: not UTF-8 JSON`, { cause: error });
  }
  // F-POOL-31: the fields have these types; the name is a valid volume name.
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw corrupt('not a JSON object');
  const record = parsed as Record<string, unknown>;
  const nameProblem = validateVolumeName(record['name']);
  if (nameProblem !== undefined) throw corrupt(nameProblem);
  const labels = record['labels'];
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels) || Object.values(labels).some((v) => typeof v !== 'string')) {
    throw corrupt('labels are not an object of strings');
  }
  if (typeof record['createdAt'] !== 'string' || Number.isNaN(Date.parse(record['createdAt']))) throw corrupt('createdAt is not a date');
  const details: VolumeDetails = { name: record['name'] as string, labels: { ...(labels as Record<string, string>) }, createdAt: record['createdAt'] };
  if (record['originName'] !== undefined) {
    if (validateVolumeName(record['originName']) !== undefined) throw corrupt('originName is not a volume name');
    details.originName = record['originName'] as string;
  }
  if (record['originId'] !== undefined) {
    const originId = record['originId'];
    if (typeof originId !== 'number' || !Number.isInteger(originId) || originId < 0 || originId > VOLUME_ID_MAX) throw corrupt('originId is not a volume id');
    details.originId = originId;
  }
  return details;
}
