// ext4 on-disk constants for the file systems thinbd writes, and the checksum primitive.
//
// Facts from the kernel's Documentation/filesystems/ext4/ and e2fsprogs' lib/ext2fs/ext2_fs.h,
// ext3_extents.h, ext2_ext_attr.h and csum.c. Only the subset thinbd writes is named here;
// docs/image.md says which features are on and why.
import { loadCrc32 } from '../../util/native.ts';

const { crc32c } = loadCrc32();

export const BLOCK_SIZE_BYTES = 4096;
export const LOG_BLOCK_SIZE = 2; // s_log_block_size: 1024 << 2
export const BLOCKS_PER_GROUP = 32768; // one bitmap block of 4096 bytes covers 32768 blocks
export const INODE_SIZE_BYTES = 256;
export const INODES_PER_BLOCK = BLOCK_SIZE_BYTES / INODE_SIZE_BYTES;
/** Bytes of the inode after the 128-byte base: i_extra_isize (the fields up to i_projid). */
export const INODE_EXTRA_BYTES = 32;
export const GROUP_DESC_SIZE_BYTES = 64;
export const DESCS_PER_BLOCK = BLOCK_SIZE_BYTES / GROUP_DESC_SIZE_BYTES;
/** The inode bitmap is one block: a group has at most this many inodes. */
export const INODES_PER_GROUP_MAX = BLOCK_SIZE_BYTES * 8;
export const FIRST_INODE = 11;
export const ROOT_INODE = 2;
export const JOURNAL_INODE = 8;
export const SUPER_MAGIC = 0xef53;
export const SUPERBLOCK_OFFSET_BYTES = 1024;

export const EXTENT_MAGIC = 0xf30a;
/** An initialized extent covers at most 2^15 blocks (the high bit of ee_len marks unwritten extents). */
export const EXTENT_LENGTH_BLOCKS_MAX = 32768;
export const EXTENT_HEADER_BYTES = 12;
export const EXTENT_ENTRY_BYTES = 12;
/** Entries in the inode's i_block (60 bytes): a header and four extents or indexes. */
export const EXTENTS_IN_INODE_MAX = 4;
/** Entries in a tree block: (4096 - 12) / 12, the 4-byte checksum tail fits in the remainder. */
export const EXTENTS_PER_BLOCK = Math.floor((BLOCK_SIZE_BYTES - EXTENT_HEADER_BYTES) / EXTENT_ENTRY_BYTES);
/** Logical blocks are 32-bit: files end below 2^32 blocks (16 TiB). */
export const LOGICAL_BLOCKS_MAX = 2 ** 32;
/** Extent trees deeper than this cannot be reached by any file of at most 2^32 blocks. */
export const EXTENT_TREE_DEPTH_MAX = 5;

export const NAME_BYTES_MAX = 255;
/** The kernel's limit for a symlink target: one block including its terminating NUL. */
export const SYMLINK_TARGET_BYTES_MAX = BLOCK_SIZE_BYTES - 1;
/** A target shorter than i_block's 60 bytes is stored in the inode ("fast" symlink). */
export const FAST_SYMLINK_BYTES_MAX = 59;
/** EXT4_LINK_MAX: a file may have this many names; a directory past it counts 1 (dir_nlink). */
export const LINKS_MAX = 65000;

// Feature flags written (superblock s_feature_*).
export const COMPAT_HAS_JOURNAL = 0x4;
export const COMPAT_EXT_ATTR = 0x8;
export const COMPAT_DIR_INDEX = 0x20;
export const COMPAT_SPARSE_SUPER2 = 0x200;
export const INCOMPAT_FILETYPE = 0x2;
export const INCOMPAT_EXTENTS = 0x40;
export const INCOMPAT_64BIT = 0x80;
export const INCOMPAT_FLEX_BG = 0x200;
export const RO_COMPAT_SPARSE_SUPER = 0x1;
export const RO_COMPAT_LARGE_FILE = 0x2;
export const RO_COMPAT_HUGE_FILE = 0x8;
export const RO_COMPAT_DIR_NLINK = 0x20;
export const RO_COMPAT_EXTRA_ISIZE = 0x40;
export const RO_COMPAT_METADATA_CSUM = 0x400;

// Inode flags.
export const INODE_FLAG_INDEX = 0x1000;
export const INODE_FLAG_EXTENTS = 0x80000;

// Group descriptor flags.
export const BG_INODE_UNINIT = 0x1;
export const BG_BLOCK_UNINIT = 0x2;
export const BG_INODE_ZEROED = 0x4;

// i_mode file types.
export const S_IFIFO = 0x1000;
export const S_IFCHR = 0x2000;
export const S_IFDIR = 0x4000;
export const S_IFBLK = 0x6000;
export const S_IFREG = 0x8000;
export const S_IFLNK = 0xa000;
export const S_IFSOCK = 0xc000;

// Directory entry file types.
export const FT_REG_FILE = 1;
export const FT_DIR = 2;
export const FT_CHRDEV = 3;
export const FT_BLKDEV = 4;
export const FT_FIFO = 5;
export const FT_SOCK = 6;
export const FT_SYMLINK = 7;

/** The 12-byte fake entry at the end of every directory leaf block that holds its checksum. */
export const DIRENT_TAIL_BYTES = 12;
export const DIRENT_TAIL_NAME_LEN = 0xde00;
export const HASH_VERSION_HALF_MD4 = 1;
export const SUPER_FLAG_UNSIGNED_HASH = 0x2;

export const XATTR_MAGIC = 0xea020000;
export const XATTR_BLOCK_HEADER_BYTES = 32;
export const XATTR_ENTRY_HEADER_BYTES = 16;
/** EXT4_XATTR_REFCOUNT_MAX: inodes sharing one attribute block. */
export const XATTR_BLOCK_REFCOUNT_MAX = 1024;

export const JBD2_MAGIC = 0xc03b3998;
export const JBD2_SUPERBLOCK_V2 = 4;

/** The raw crc32c ext4 uses (crc32c_le without the final inversion), chained through `seed`. */
export function ext4Crc32c(seed: number, bytes: Uint8Array): number {
  return ~crc32c(bytes as Buffer, ~seed >>> 0) >>> 0;
}

/** crc32c (Castagnoli, reflected) table for the few bytes hashed in JavaScript. */
const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let byte = 0; byte < 256; byte++) {
    let crc = byte;
    for (let bit = 0; bit < 8; bit++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
    table[byte] = crc >>> 0;
  }
  return table;
})();

/**
 * ext4Crc32c over one little-endian u32 (inode numbers, generations, group numbers), in
 * JavaScript: a native call costs more than four table steps.
 */
export function ext4Crc32cU32(seed: number, value: number): number {
  let crc = seed >>> 0;
  for (let byte = 0; byte < 4; byte++) crc = (CRC32C_TABLE[(crc ^ (value >>> (byte * 8))) & 0xff]! ^ (crc >>> 8)) >>> 0;
  return crc;
}

/** The per-inode checksum seed: crc32c(fs seed, inode number, generation). */
export function inodeChecksumSeed(fsSeed: number, ino: number, generation: number): number {
  return ext4Crc32cU32(ext4Crc32cU32(fsSeed, ino), generation);
}

export function setU64(view: DataView, offsetBytes: number, value: number): void {
  view.setUint32(offsetBytes, value % 2 ** 32, true);
  view.setUint32(offsetBytes + 4, Math.floor(value / 2 ** 32), true);
}

/**
 * Seconds since the epoch as ext4's 32-bit field (this) and the epoch bits of the extra field
 * (encodeTimeExtra): two numbers, not an object per time (four per inode).
 */
export function encodeTimeLow(seconds: number): number {
  return (seconds | 0) >>> 0;
}

/** The extra field: the epoch bits and the nanoseconds. */
export function encodeTimeExtra(seconds: number, nanoseconds: number): number {
  const epoch = (seconds - (seconds | 0)) / 2 ** 32;
  return ((epoch & 3) | (nanoseconds << 2)) >>> 0;
}

/** Timestamps ext4 can hold with the extra epoch bits: [-2^31, 2^34 - 2^31). */
export const TIME_SECONDS_MIN = -(2 ** 31);
export const TIME_SECONDS_MAX = 2 ** 34 - 1 - 2 ** 31;
