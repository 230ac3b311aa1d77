// Writes an ext4 file system's metadata around file data already in place (geometry.ts has the
// layout): the tree is numbered (numbering.ts), the tail it needs is counted, the geometry is
// chosen for the size, then the inode table and tail are written in one pass (inodes.ts), and the
// groups' bitmaps, descriptors, superblocks and the journal's superblock last (groups.ts).
//
// Features: has_journal ext_attr dir_index sparse_super2 filetype extent 64bit flex_bg
// sparse_super large_file huge_file dir_nlink extra_isize metadata_csum — mke2fs's ext4 defaults,
// with sparse_super2 in place of resize_inode so that no backup superblock lands in the data.
import { ThinError } from '../../errors.ts';
import type { BufferPool, WriteQueue } from '../block-target.ts';
import type { FsTree } from '../tree.ts';
import { contiguousExtents, extentTreeBlockCount } from './extents.ts';
import { BLOCK_SIZE_BYTES, INODES_PER_BLOCK, ext4Crc32c } from './format.ts';
import { defaultLayout, layoutFor, type Geometry, type GeometryInput } from './geometry.ts';
import { writeGroupMetadata } from './groups.ts';
import { countTail, writeInodes } from './inodes.ts';
import { numberInodes } from './numbering.ts';

export interface FilesystemOptions {
  /** First block after the file data. */
  dataEndBlock: number;
  /** The file system's size; default: defaultLayout's rule. */
  sizeBytes?: number;
  uuid: Uint8Array;
  hashSeed: Uint32Array;
  nowSeconds: number;
  /** Up to 16 bytes of volume label. */
  label?: string;
}

export interface FilesystemSummary {
  geometry: Geometry;
  inodesUsed: number;
  /** Inodes other than directories: regular files, symlinks, devices, FIFOs and sockets (a file with several names once). */
  files: number;
  /** Directories, the root and lost+found included. */
  directories: number;
  /** Bytes of regular files (sum of sizes; a file with several names counted once). */
  fileBytes: number;
  /** Bytes of the blocks regular files take (their sizes rounded up to whole blocks, holes left out). */
  fileBlockBytes: number;
  /** Blocks of metadata written (everything but file data). */
  metadataBlocksWritten: number;
  /** Runs of the data region no live file uses (replaced or whited-out files): [begin, end) block pairs. */
  freeDataRuns: number[];
}

/** Where the inode table lies, for sealing it (inodes.ts sealInodeTable): blocks [beginBlock, endBlock) hold inodes from 1. */
export interface UnsealedInodeTable {
  beginBlock: number;
  endBlock: number;
  fsSeed: number;
}

/**
 * Writes the file system's metadata for `tree`, whose file data is already at its extents.
 * `unsealed`: the inode table goes to the queue without its checksums; this is called with where
 * it lies before any of it is written, and the queue's target seals each block before writing it.
 */
export async function writeFilesystem(
  queue: WriteQueue,
  buffers: BufferPool,
  tree: FsTree,
  options: FilesystemOptions,
  unsealed?: (table: UnsealedInodeTable) => void,
): Promise<FilesystemSummary> {
  const fsSeed = ext4Crc32c(0xffffffff, options.uuid);
  const numbering = numberInodes(tree, options.nowSeconds);
  const tailPlan = countTail(numbering, options.hashSeed);
  const geometry = chooseGeometry({ dataEndBlock: options.dataEndBlock, inodesUsed: numbering.inodesUsed, tailBlocks: tailPlan.blocks }, options.sizeBytes);
  unsealed?.({ beginBlock: geometry.inodeTableBegin, endBlock: geometry.inodeTableBegin + Math.ceil(numbering.inodesUsed / INODES_PER_BLOCK), fsSeed });
  const inodes = await writeInodes(queue, buffers, numbering, tailPlan, geometry, {
    fsSeed,
    hashSeed: options.hashSeed,
    nowSeconds: options.nowSeconds,
    unsealed: unsealed !== undefined,
  });
  const groupBlocks = await writeGroupMetadata(queue, buffers, geometry, {
    fsSeed,
    liveData: inodes.liveData,
    inodesUsed: numbering.inodesUsed,
    directoriesPerGroup: inodes.directoriesPerGroup,
    uuid: options.uuid,
    hashSeed: options.hashSeed,
    nowSeconds: options.nowSeconds,
    label: options.label,
    journalIBlock: inodes.journalIBlock,
  });
  return {
    geometry,
    inodesUsed: numbering.inodesUsed,
    files: inodes.files,
    directories: inodes.directories,
    fileBytes: inodes.fileBytes,
    fileBlockBytes: inodes.liveData.usedBlocks() * BLOCK_SIZE_BYTES,
    metadataBlocksWritten: inodes.blocksWritten + groupBlocks,
    freeDataRuns: inodes.liveData.freeRuns(),
  };
}

function chooseGeometry(input: GeometryInput, sizeBytes: number | undefined): Geometry {
  // The journal's own extent tree needs a tail block when it has more than four extents.
  const withJournalTree = (geometry: Geometry): boolean => extentTreeBlockCount(contiguousExtents(0, geometry.journalBlocks).length / 3) > 0;
  const attempt = (tailBlocks: number): Geometry | string => {
    const adjusted = { ...input, tailBlocks };
    if (sizeBytes === undefined) return defaultLayout(adjusted);
    return layoutFor(adjusted, Math.floor(sizeBytes / BLOCK_SIZE_BYTES));
  };
  let geometry = attempt(input.tailBlocks);
  if (typeof geometry !== 'string' && withJournalTree(geometry)) geometry = attempt(input.tailBlocks + 1);
  if (typeof geometry === 'string') throw new ThinError('THIN_IMAGE_INVALID', `The image does not fit --size ${sizeBytes}: ${geometry}`);
  if (withJournalTree(geometry) && geometry.tailBlocks === input.tailBlocks) {
    throw new ThinError('THIN_IMAGE_INVALID', 'Cannot place the journal');
  }
  return geometry;
}

