// The groups' metadata, written last: block and inode bitmaps (only for groups that have
// something in use; the rest are marked uninitialised, as mke2fs does), the group descriptors,
// the superblock and its sparse_super2 backups, and the journal's superblock.
import { assert } from '../../errors.ts';
import { RunWriter, type BufferPool, type WriteQueue } from '../block-target.ts';
import {
  BG_BLOCK_UNINIT,
  BG_INODE_UNINIT,
  BG_INODE_ZEROED,
  BLOCKS_PER_GROUP,
  BLOCK_SIZE_BYTES,
  COMPAT_DIR_INDEX,
  COMPAT_EXT_ATTR,
  COMPAT_HAS_JOURNAL,
  COMPAT_SPARSE_SUPER2,
  FIRST_INODE,
  GROUP_DESC_SIZE_BYTES,
  HASH_VERSION_HALF_MD4,
  INCOMPAT_64BIT,
  INCOMPAT_EXTENTS,
  INCOMPAT_FILETYPE,
  INCOMPAT_FLEX_BG,
  INODE_EXTRA_BYTES,
  INODE_SIZE_BYTES,
  JBD2_MAGIC,
  JBD2_SUPERBLOCK_V2,
  JOURNAL_INODE,
  LOG_BLOCK_SIZE,
  RO_COMPAT_DIR_NLINK,
  RO_COMPAT_EXTRA_ISIZE,
  RO_COMPAT_HUGE_FILE,
  RO_COMPAT_LARGE_FILE,
  RO_COMPAT_METADATA_CSUM,
  RO_COMPAT_SPARSE_SUPER,
  SUPERBLOCK_OFFSET_BYTES,
  SUPER_FLAG_UNSIGNED_HASH,
  SUPER_MAGIC,
  ext4Crc32c,
  ext4Crc32cU32,
} from './format.ts';
import type { Geometry } from './geometry.ts';

/** Which blocks of the data region live files use. */
export class DataBitmap {
  readonly begin: number;
  readonly end: number;
  readonly bits: Uint8Array;

  constructor(begin: number, end: number) {
    this.begin = begin;
    this.end = end;
    this.bits = new Uint8Array(Math.ceil(Math.max(0, end - begin) / 8));
  }

  mark(first: number, count: number): void {
    assert(first >= this.begin && first + count <= this.end, `file data at blocks ${first}+${count} outside the data region`);
    setBits(this.bits, first - this.begin, first - this.begin + count);
  }

  isUsed(block: number): boolean {
    const bit = block - this.begin;
    return (this.bits[bit >> 3]! & (1 << (bit & 7))) !== 0;
  }

  /** Blocks marked in use. */
  usedBlocks(): number {
    return countBits(this.bits, this.end - this.begin);
  }

  /** Runs of unused blocks in the region: [begin, end) pairs. */
  freeRuns(): number[] {
    const runs: number[] = [];
    const bits = this.bits;
    const length = this.end - this.begin;
    let runBegin = -1;
    for (let bit = 0; bit <= length; bit++) {
      // Whole bytes alike: all used (no run starts) or all free (a run goes on).
      if ((bit & 7) === 0 && bit + 8 <= length) {
        const byte = bits[bit >> 3]!;
        if ((byte === 0xff && runBegin < 0) || (byte === 0 && runBegin >= 0)) {
          bit += 7;
          continue;
        }
      }
      const free = bit < length && (bits[bit >> 3]! & (1 << (bit & 7))) === 0;
      if (free && runBegin < 0) runBegin = bit;
      if (!free && runBegin >= 0) {
        runs.push(this.begin + runBegin, this.begin + bit);
        runBegin = -1;
      }
    }
    return runs;
  }
}

/** Sets bits [from, to) of a little-endian bitmap: whole bytes at once. */
function setBits(bits: Uint8Array, from: number, to: number): void {
  let bit = from;
  while (bit < to && (bit & 7) !== 0) {
    bits[bit >> 3]! |= 1 << (bit & 7);
    bit++;
  }
  if (to - bit >= 8) {
    bits.fill(0xff, bit >> 3, to >> 3);
    bit = to & ~7;
  }
  for (; bit < to; bit++) bits[bit >> 3]! |= 1 << (bit & 7);
}

/** Set bits of a bitmap's bits [0, count). */
function countBits(bits: Uint8Array, count: number): number {
  let set = 0;
  for (let bit = 0; bit < count; ) {
    if ((bit & 7) === 0 && bit + 8 <= count) {
      set += BITS_SET[bits[bit >> 3]!]!;
      bit += 8;
    } else {
      if ((bits[bit >> 3]! & (1 << (bit & 7))) !== 0) set++;
      bit++;
    }
  }
  return set;
}

/** Set bits of each byte value. */
const BITS_SET = (() => {
  const table = new Uint8Array(256);
  for (let value = 1; value < 256; value++) table[value] = (value & 1) + table[value >> 1]!;
  return table;
})();

export interface GroupMetadataInput {
  fsSeed: number;
  liveData: DataBitmap;
  inodesUsed: number;
  directoriesPerGroup: Uint32Array;
  uuid: Uint8Array;
  hashSeed: Uint32Array;
  nowSeconds: number;
  label: string | undefined;
  /** i_block of the journal inode (the superblock keeps a copy). */
  journalIBlock: Uint8Array;
}

/** Bitmaps, descriptors, superblocks and the journal superblock; returns blocks written. */
export async function writeGroupMetadata(queue: WriteQueue, buffers: BufferPool, geometry: Geometry, input: GroupMetadataInput): Promise<number> {
  const { fsSeed } = input;
  const writer = new RunWriter(queue, BLOCK_SIZE_BYTES, buffers);
  // Block bitmaps and inode bitmaps each lie in one run (a block per group): a writer each, so
  // that they go in a write or two rather than one per bitmap, alternating, each a round trip to
  // the main thread when the parsing thread writes them.
  const blockBitmapWriter = new RunWriter(queue, BLOCK_SIZE_BYTES, buffers);
  const inodeBitmapWriter = new RunWriter(queue, BLOCK_SIZE_BYTES, buffers);
  let written = 0;
  const hasSuper = (group: number): boolean => group === 0 || group === geometry.backupGroups[0] || group === geometry.backupGroups[1];
  const groupHasUsedBlocks = (group: number): boolean => {
    const begin = group * BLOCKS_PER_GROUP;
    return begin < geometry.usedEnd || hasSuper(group);
  };
  const descriptors = new Uint8Array(geometry.gdtBlocks * BLOCK_SIZE_BYTES);
  const descView = new DataView(descriptors.buffer);
  let freeBlocksTotal = 0;
  let freeInodesTotal = 0;
  const blockBitmap = new Uint8Array(BLOCK_SIZE_BYTES);
  const inodeBitmap = new Uint8Array(BLOCK_SIZE_BYTES);
  const ipg = geometry.inodesPerGroup;
  for (let group = 0; group < geometry.groupCount; group++) {
    const groupBegin = group * BLOCKS_PER_GROUP;
    const groupBlocks = Math.min(BLOCKS_PER_GROUP, geometry.blockCount - groupBegin);
    const isLast = group === geometry.groupCount - 1;
    let flags = BG_INODE_ZEROED;
    let freeBlocks = groupBlocks;
    let blockBitmapCsum = 0;
    if (groupHasUsedBlocks(group) || isLast) {
      fillBlockBitmap(blockBitmap, geometry, input.liveData, group, hasSuper(group));
      freeBlocks -= countBits(blockBitmap, groupBlocks);
      // Padding past the file system's end in the last group is marked used.
      setBits(blockBitmap, groupBlocks, BLOCKS_PER_GROUP);
      blockBitmapCsum = ext4Crc32c(fsSeed, blockBitmap.subarray(0, BLOCKS_PER_GROUP / 8));
      await blockBitmapWriter.put(geometry.blockBitmapBegin + group, blockBitmap);
      written++;
    } else {
      flags |= BG_BLOCK_UNINIT;
    }
    const firstIno = group * ipg + 1;
    const usedInGroup = Math.max(0, Math.min(ipg, input.inodesUsed - firstIno + 1));
    let inodeBitmapCsum = 0;
    if (usedInGroup > 0) {
      // Whole bytes at once: a bit at a time was ~25,000 steps a group, in code run once.
      inodeBitmap.fill(0);
      setBits(inodeBitmap, 0, usedInGroup);
      setBits(inodeBitmap, ipg, BLOCK_SIZE_BYTES * 8);
      inodeBitmapCsum = ext4Crc32c(fsSeed, inodeBitmap.subarray(0, ipg / 8));
      await inodeBitmapWriter.put(geometry.inodeBitmapBegin + group, inodeBitmap);
      written++;
    } else {
      flags |= BG_INODE_UNINIT;
    }
    freeBlocksTotal += freeBlocks;
    freeInodesTotal += ipg - usedInGroup;
    const at = group * GROUP_DESC_SIZE_BYTES;
    setLoHi32(descView, at + 0x00, at + 0x20, geometry.blockBitmapBegin + group);
    setLoHi32(descView, at + 0x04, at + 0x24, geometry.inodeBitmapBegin + group);
    setLoHi32(descView, at + 0x08, at + 0x28, geometry.inodeTableBegin + group * geometry.inodeTableBlocksPerGroup);
    setLoHi16(descView, at + 0x0c, at + 0x2c, freeBlocks);
    setLoHi16(descView, at + 0x0e, at + 0x2e, ipg - usedInGroup);
    setLoHi16(descView, at + 0x10, at + 0x30, input.directoriesPerGroup[group]!);
    descView.setUint16(at + 0x12, flags, true);
    setLoHi16(descView, at + 0x18, at + 0x38, blockBitmapCsum);
    setLoHi16(descView, at + 0x1a, at + 0x3a, inodeBitmapCsum);
    setLoHi16(descView, at + 0x1c, at + 0x32, ipg - usedInGroup);
    const descriptor = descriptors.subarray(at, at + GROUP_DESC_SIZE_BYTES);
    descView.setUint16(at + 0x1e, ext4Crc32c(ext4Crc32cU32(fsSeed, group), descriptor) & 0xffff, true);
  }
  await blockBitmapWriter.flush();
  await inodeBitmapWriter.flush();

  const superblock = (group: number): Uint8Array => encodeSuperblock(geometry, {
    ...input,
    group,
    freeBlocks: freeBlocksTotal,
    freeInodes: freeInodesTotal,
  });
  // Primary: block 0 holds the superblock at byte 1024, then the descriptors.
  const head = new Uint8Array((1 + geometry.gdtBlocks) * BLOCK_SIZE_BYTES);
  head.set(superblock(0), SUPERBLOCK_OFFSET_BYTES);
  head.set(descriptors, BLOCK_SIZE_BYTES);
  await writer.put(0, head);
  written += 1 + geometry.gdtBlocks;
  await writer.flush();
  for (const group of geometry.backupGroups) {
    if (group === 0) continue;
    const copy = new Uint8Array((1 + geometry.gdtBlocks) * BLOCK_SIZE_BYTES);
    copy.set(superblock(group), 0);
    copy.set(descriptors, BLOCK_SIZE_BYTES);
    await writer.put(group * BLOCKS_PER_GROUP, copy);
    await writer.flush();
    written += 1 + geometry.gdtBlocks;
  }
  await writer.put(geometry.journalBegin, encodeJournalSuperblock(geometry, input.uuid));
  await writer.flush();
  written++;
  return written;
}

/**
 * Group `group`'s block bitmap (its blocks past the file system's end aside): the superblock and
 * descriptors at the start, file data by the live-data bitmap, the bitmaps, inode tables, tail and
 * journal after the data, and a backup superblock with its descriptors.
 */
function fillBlockBitmap(bitmap: Uint8Array, geometry: Geometry, liveData: DataBitmap, group: number, hasBackup: boolean): void {
  bitmap.fill(0);
  const groupBegin = group * BLOCKS_PER_GROUP;
  const groupEnd = groupBegin + BLOCKS_PER_GROUP;
  const mark = (from: number, to: number): void => {
    const begin = Math.max(from, groupBegin);
    const end = Math.min(to, groupEnd);
    if (end > begin) setBits(bitmap, begin - groupBegin, end - groupBegin);
  };
  // The data region and groups both start at multiples of 8 blocks: its bits copy byte for byte.
  const dataFrom = Math.max(geometry.dataBeginBlock, groupBegin);
  const dataTo = Math.min(geometry.dataEndBlock, groupEnd);
  if (dataTo > dataFrom) {
    assert((dataFrom - liveData.begin) % 8 === 0 && (dataFrom - groupBegin) % 8 === 0, 'the data region starts off a byte of the bitmap');
    const bytes = liveData.bits.subarray((dataFrom - liveData.begin) >> 3, Math.ceil((dataTo - liveData.begin) / 8));
    bitmap.set(bytes, (dataFrom - groupBegin) >> 3);
  }
  mark(0, 1 + geometry.gdtBlocks);
  mark(geometry.blockBitmapBegin, geometry.usedEnd);
  if (group > 0 && hasBackup) mark(groupBegin, groupBegin + 1 + geometry.gdtBlocks);
}

function setLoHi32(view: DataView, lowAt: number, highAt: number, value: number): void {
  view.setUint32(lowAt, value % 2 ** 32, true);
  view.setUint32(highAt, Math.floor(value / 2 ** 32), true);
}

function setLoHi16(view: DataView, lowAt: number, highAt: number, value: number): void {
  view.setUint16(lowAt, value & 0xffff, true);
  view.setUint16(highAt, Math.floor(value / 65536), true);
}

interface SuperblockInput extends GroupMetadataInput {
  group: number;
  freeBlocks: number;
  freeInodes: number;
}

/** The 1024-byte superblock (for the primary, group 0, or a backup's group). */
function encodeSuperblock(geometry: Geometry, input: SuperblockInput): Uint8Array {
  const sb = new Uint8Array(1024);
  const view = new DataView(sb.buffer);
  const now = input.nowSeconds >>> 0;
  view.setUint32(0x00, geometry.groupCount * geometry.inodesPerGroup, true);
  setLoHi32(view, 0x04, 0x150, geometry.blockCount);
  setLoHi32(view, 0x08, 0x154, 0);
  setLoHi32(view, 0x0c, 0x158, input.freeBlocks);
  view.setUint32(0x10, input.freeInodes, true);
  view.setUint32(0x14, 0, true); // s_first_data_block
  view.setUint32(0x18, LOG_BLOCK_SIZE, true);
  view.setUint32(0x1c, LOG_BLOCK_SIZE, true);
  view.setUint32(0x20, BLOCKS_PER_GROUP, true);
  view.setUint32(0x24, BLOCKS_PER_GROUP, true);
  view.setUint32(0x28, geometry.inodesPerGroup, true);
  view.setUint32(0x30, now, true); // s_wtime
  view.setUint16(0x36, 0xffff, true); // s_max_mnt_count: -1, no mount-count checks
  view.setUint16(0x38, SUPER_MAGIC, true);
  view.setUint16(0x3a, 1, true); // s_state: clean
  view.setUint16(0x3c, 1, true); // s_errors: continue
  view.setUint32(0x40, now, true); // s_lastcheck
  view.setUint32(0x4c, 1, true); // s_rev_level: dynamic
  view.setUint32(0x54, FIRST_INODE, true);
  view.setUint16(0x58, INODE_SIZE_BYTES, true);
  view.setUint16(0x5a, input.group, true);
  view.setUint32(0x5c, COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2, true);
  view.setUint32(0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG, true);
  view.setUint32(
    0x64,
    RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_HUGE_FILE | RO_COMPAT_DIR_NLINK | RO_COMPAT_EXTRA_ISIZE | RO_COMPAT_METADATA_CSUM,
    true,
  );
  sb.set(input.uuid, 0x68);
  if (input.label !== undefined) sb.set(Buffer.from(input.label, 'utf8').subarray(0, 16), 0x78);
  view.setUint32(0xe0, JOURNAL_INODE, true);
  for (let index = 0; index < 4; index++) view.setUint32(0xec + index * 4, input.hashSeed[index]!, true);
  sb[0xfc] = HASH_VERSION_HALF_MD4;
  sb[0xfd] = 1; // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
  view.setUint16(0xfe, GROUP_DESC_SIZE_BYTES, true);
  view.setUint32(0x100, 0x0004 | 0x0008, true); // default mount options: user_xattr, acl
  view.setUint32(0x108, now, true); // s_mkfs_time
  // s_jnl_blocks: i_block of the journal inode, then i_size_high and i_size.
  sb.set(input.journalIBlock, 0x10c);
  const journalBytes = geometry.journalBlocks * BLOCK_SIZE_BYTES;
  view.setUint32(0x10c + 15 * 4, Math.floor(journalBytes / 2 ** 32), true);
  view.setUint32(0x10c + 16 * 4, journalBytes % 2 ** 32, true);
  view.setUint16(0x15c, INODE_EXTRA_BYTES, true);
  view.setUint16(0x15e, INODE_EXTRA_BYTES, true);
  view.setUint32(0x160, SUPER_FLAG_UNSIGNED_HASH, true);
  sb[0x174] = 4; // s_log_groups_per_flex
  sb[0x175] = 1; // s_checksum_type: crc32c
  view.setUint32(0x24c, geometry.backupGroups[0], true);
  view.setUint32(0x250, geometry.backupGroups[1], true);
  view.setUint32(0x3fc, ext4Crc32c(0xffffffff, sb.subarray(0, 0x3fc)), true);
  return sb;
}

/** A clean, empty jbd2 superblock (v2, as mke2fs writes it; the kernel adds checksum features at mount). */
function encodeJournalSuperblock(geometry: Geometry, uuid: Uint8Array): Uint8Array {
  const block = new Uint8Array(BLOCK_SIZE_BYTES);
  const view = new DataView(block.buffer);
  view.setUint32(0x00, JBD2_MAGIC);
  view.setUint32(0x04, JBD2_SUPERBLOCK_V2);
  view.setUint32(0x0c, BLOCK_SIZE_BYTES);
  view.setUint32(0x10, geometry.journalBlocks);
  view.setUint32(0x14, 1); // s_first
  view.setUint32(0x18, 1); // s_sequence
  view.setUint32(0x1c, 0); // s_start: 0 = clean, nothing to replay
  block.set(uuid, 0x30);
  view.setUint32(0x40, 1); // s_nr_users
  return block;
}
