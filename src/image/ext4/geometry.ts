// Where everything goes in the file systems thinbd writes (docs/image.md "Layout"):
//
//   block 0                     superblock (at byte 1024)
//   1 .. 1+gdt                  group descriptors
//   dataBegin .. dataEnd        file data, in archive order, in long runs (written while streaming)
//   dataEnd ..                  block bitmaps, inode bitmaps, inode tables of every group (flex_bg
//                               lets them sit anywhere), then the tail: directory blocks, extent
//                               tree blocks, attribute blocks, long symlink targets
//   .. usedEnd                  the journal (only its superblock is written)
//   at up to two group starts past usedEnd: backup superblock + descriptors (sparse_super2)
//   the rest                    free: the volume is thin, so headroom costs nothing until written
//
// File data starts at a fixed block (4 MiB) whatever the size, so the data of a layer lands at the
// same place in every image built on it: that is what lets images share layers' blocks.
import { ThinError } from '../../errors.ts';
import {
  BLOCKS_PER_GROUP,
  BLOCK_SIZE_BYTES,
  DESCS_PER_BLOCK,
  INODES_PER_BLOCK,
  INODES_PER_GROUP_MAX,
  LOGICAL_BLOCKS_MAX,
} from './format.ts';

/** File data starts here (4 MiB): room before it for the descriptors of up to 65472 groups (8 TiB). */
export const DATA_BEGIN_BLOCK = 1024;
/** The largest file system with data at DATA_BEGIN_BLOCK: its descriptors must end before it. */
export const FS_BLOCKS_MAX = (DATA_BEGIN_BLOCK - 1) * DESCS_PER_BLOCK * BLOCKS_PER_GROUP;
/** Inodes per group at mke2fs's default ratio (one per 16 KiB). */
const INODES_PER_GROUP_DEFAULT = (BLOCKS_PER_GROUP * BLOCK_SIZE_BYTES) / 16384;
/** Default size: the image plus at least this much free space (and at least as much again as the image). */
export const DEFAULT_HEADROOM_BLOCKS_MIN = (1024 * 1024 * 1024) / BLOCK_SIZE_BYTES;

export interface GeometryInput {
  /** First block after the file data. */
  dataEndBlock: number;
  /** Highest inode number in use. */
  inodesUsed: number;
  /** Directory, extent-tree, attribute and symlink blocks. */
  tailBlocks: number;
}

export interface Geometry {
  blockCount: number;
  groupCount: number;
  gdtBlocks: number;
  inodesPerGroup: number;
  inodeTableBlocksPerGroup: number;
  dataBeginBlock: number;
  dataEndBlock: number;
  blockBitmapBegin: number;
  inodeBitmapBegin: number;
  inodeTableBegin: number;
  tailBegin: number;
  tailBlocks: number;
  journalBegin: number;
  journalBlocks: number;
  /** First block after everything written (the journal's end). */
  usedEnd: number;
  /** Groups holding backup superblocks (s_backup_bgs; 0 = none). */
  backupGroups: [number, number];
}

/** mke2fs's journal size for a file system of `blockCount` blocks (e2fsprogs ext2fs_default_journal_size), at least 1024 blocks. */
export function journalBlocksFor(blockCount: number): number {
  if (blockCount < 32768) return 1024;
  if (blockCount < 256 * 1024) return 4096;
  if (blockCount < 512 * 1024) return 8192;
  if (blockCount < 4096 * 1024) return 16384;
  if (blockCount < 8192 * 1024) return 32768;
  if (blockCount < 16384 * 1024) return 65536;
  if (blockCount < 32768 * 1024) return 131072;
  return 262144;
}

/** Inodes per group: the default ratio, or more when the image needs it (twice its inodes, for headroom), within one bitmap block. */
function inodesPerGroupFor(groupCount: number, inodesUsed: number): number {
  const wanted = Math.ceil((2 * inodesUsed) / groupCount);
  const rounded = Math.ceil(Math.max(INODES_PER_GROUP_DEFAULT, wanted) / INODES_PER_BLOCK) * INODES_PER_BLOCK;
  return Math.min(rounded, INODES_PER_GROUP_MAX);
}

/** The layout of a file system of exactly blockCount blocks, or why the image does not fit it. */
export function layoutFor(input: GeometryInput, blockCount: number): Geometry | string {
  if (blockCount > FS_BLOCKS_MAX) return `file systems above ${FS_BLOCKS_MAX * BLOCK_SIZE_BYTES} bytes are not supported`;
  const groupCount = Math.ceil(blockCount / BLOCKS_PER_GROUP);
  const gdtBlocks = Math.ceil(groupCount / DESCS_PER_BLOCK);
  const inodesPerGroup = inodesPerGroupFor(groupCount, input.inodesUsed);
  if (groupCount * inodesPerGroup < input.inodesUsed) {
    return `the image has ${input.inodesUsed} inodes and a file system of ${blockCount * BLOCK_SIZE_BYTES} bytes holds at most ${groupCount * inodesPerGroup}`;
  }
  if (groupCount * inodesPerGroup >= LOGICAL_BLOCKS_MAX) return 'more than 2^32 inodes';
  const inodeTableBlocksPerGroup = inodesPerGroup / INODES_PER_BLOCK;
  const blockBitmapBegin = input.dataEndBlock;
  const inodeBitmapBegin = blockBitmapBegin + groupCount;
  const inodeTableBegin = inodeBitmapBegin + groupCount;
  const tailBegin = inodeTableBegin + groupCount * inodeTableBlocksPerGroup;
  const journalBegin = tailBegin + input.tailBlocks;
  const journalBlocks = journalBlocksFor(blockCount);
  const usedEnd = journalBegin + journalBlocks;
  if (usedEnd > blockCount) {
    return `the image needs ${usedEnd * BLOCK_SIZE_BYTES} bytes (data, metadata and a ${journalBlocks * BLOCK_SIZE_BYTES}-byte journal) and the file system has ${blockCount * BLOCK_SIZE_BYTES}`;
  }
  // Backup superblocks in free groups past everything written, where one fits whole.
  const backups: number[] = [];
  const fits = (group: number): boolean => group * BLOCKS_PER_GROUP >= usedEnd && group * BLOCKS_PER_GROUP + 1 + gdtBlocks <= blockCount;
  const first = Math.ceil(usedEnd / BLOCKS_PER_GROUP);
  if (first < groupCount && fits(first)) backups.push(first);
  if (groupCount - 1 > first && fits(groupCount - 1)) backups.push(groupCount - 1);
  return {
    blockCount,
    groupCount,
    gdtBlocks,
    inodesPerGroup,
    inodeTableBlocksPerGroup,
    dataBeginBlock: DATA_BEGIN_BLOCK,
    dataEndBlock: input.dataEndBlock,
    blockBitmapBegin,
    inodeBitmapBegin,
    inodeTableBegin,
    tailBegin,
    tailBlocks: input.tailBlocks,
    journalBegin,
    journalBlocks,
    usedEnd,
    backupGroups: [backups[0] ?? 0, backups[1] ?? 0],
  };
}

/**
 * The default size: what the image uses (data, metadata, journal) plus as much again, and at least
 * DEFAULT_HEADROOM_BLOCKS_MIN free, rounded up to whole groups (128 MiB).
 */
export function defaultLayout(input: GeometryInput): Geometry {
  let used = input.dataEndBlock + input.tailBlocks;
  for (let round = 0; round < 16; round++) {
    const blockCount = Math.ceil((used + Math.max(used, DEFAULT_HEADROOM_BLOCKS_MIN)) / BLOCKS_PER_GROUP) * BLOCKS_PER_GROUP;
    const geometry = layoutFor(input, Math.min(blockCount, FS_BLOCKS_MAX));
    if (typeof geometry !== 'string' && geometry.blockCount - geometry.usedEnd >= Math.min(geometry.usedEnd, DEFAULT_HEADROOM_BLOCKS_MIN)) return geometry;
    if (typeof geometry !== 'string') used = geometry.usedEnd;
    else if (blockCount >= FS_BLOCKS_MAX) throw new ThinError('THIN_IMAGE_INVALID', `The image does not fit the largest file system thinbd writes: ${geometry}`);
    else used = Math.max(used * 2, used + BLOCKS_PER_GROUP);
  }
  throw new ThinError('THIN_IMAGE_INVALID', 'Cannot find a file system size for the image');
}
