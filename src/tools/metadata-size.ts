// `thinbd metadata size`: how much metadata a pool needs, for thinbd's format, with dm-thin's
// figure beside it (thin_metadata_size 0.9.0's formula) for comparison.
//
// Both estimates count the worst case that dm-thin's formula counts: every mapped data block is
// its own mapping entry (no two neighbours contiguous), and B+tree leaves are half full on
// average ("double-fold # of nodes, because they aren't fully populated in average", thin-provisioning-tools 0.9.0
// thin_metadata_size.cc). thinbd stores extents, so a pool written in runs of R blocks needs about
// 1/R of the mapping and space-map part: `averageRunBlocks` says how long the runs are.
//
// thinbd's figure is derived from the node layout the code uses (pdata's node.ts capacities: compact
// leaves for the pool's extents and the space maps' reference-count extents, wide ones where their
// values do not fit a compact leaf, 16-byte children, the device tree's values), so it follows any
// change of the format. Mapping leaves are compact while runs are at most
// COMPACT_EXTENT_LENGTH_BLOCKS_MAX blocks and the pool has at most 2^32 data blocks (a leaf whose
// mappings were written more than 262,143 snapshots apart is wide; the estimate does not count that):
//   mapping leaves      ⌈N / (leaf capacity / 2)⌉          N = mapped blocks / averageRunBlocks
//   space-map leaves    ⌈S / (leaf capacity / 2)⌉          S = mapped blocks / 8 when runs are at most 2
//                                                          blocks long (every group of 8 blocks has 4 runs
//                                                          or more: one dense entry, docs/format.md "Dense
//                                                          counts"), else N (one count extent per run)
//   internal nodes      for each tree, ⌈children / (internal capacity / 2)⌉ per level up to one root
//   per volume          one details block + one mapping root + its device-tree share
//   fixed               superblock copies, and the metadata space map's own extents
// and rounded up to the smallest metadata file thinbd creates. Like dm-thin's formula, which leaves
// out its overflow tree for counts of 3 and more, the worst case counts reference counts of at most
// DENSE_COUNT_MAX (15): a group holding a higher count stays in extents, one per run.
import {
  DELTA_LOG_BLOCK_COUNT,
  METADATA_BLOCK_COUNT_MAX,
  METADATA_BLOCK_COUNT_MIN,
  METADATA_BLOCK_SIZE_BYTES,
  SECTOR_BYTES,
  SUPERBLOCK_BLOCK_NRS,
} from '../constants.ts';
import { ThinError } from '../errors.ts';
import { CHILD_VALUE_BYTES, compactNodeCapacity, nodeCapacity } from '../pdata/btree/node.ts';
import { DENSE_GROUP_BLOCKS, DENSE_RUNS_MIN, refCountExtentCodec } from '../pdata/space-map.ts';
import { TreeKind } from '../pdata/btree/codec.ts';
import type { ValueCodec } from '../pdata/btree/codec.ts';
import { COMPACT_EXTENT_LENGTH_BLOCKS_MAX, COMPACT_EXTENT_VALUE_SIZE_BYTES, DEVICE_VALUE_SIZE_BYTES, EXTENT_VALUE_SIZE_BYTES } from '../pool/codecs.ts';

/** A compact leaf's data block offsets are u32 (docs/format.md "Compact mapping value"). */
const COMPACT_DATA_BLOCKS_MAX = 2 ** 32;

/** Entries per leaf of a tree whose values have a compact form, when they fit it. */
function leafCapacity<V>(codec: ValueCodec<V>, compactFits: boolean): number {
  return codec.compact !== undefined && compactFits ? compactNodeCapacity(codec.compact.sizeBytes) : nodeCapacity(codec.sizeBytes);
}

/** dm-thin's node layout as thin_metadata_size 0.9.0 assumes it: 4096-byte nodes, 64-byte header, 16-byte entries. */
const DM_THIN_NODE_BYTES = 4096;
const DM_THIN_NODE_HEADER_BYTES = 64;
const DM_THIN_ENTRY_BYTES = 16;

export interface MetadataSizeOptions {
  dataSizeBytes: number;
  blockSizeBytes: number;
  /** Volumes and snapshots the pool will hold at most (thin_metadata_size's --max-thins). */
  volumeCount: number;
  /** Average length of a run of contiguous mappings; 1 is dm-thin's worst case. */
  averageRunBlocks?: number;
}

export interface MetadataSizeEstimate {
  dataBlockCount: number;
  volumeCount: number;
  averageRunBlocks: number;
  thinbd: {
    metadataBlocks: number;
    metadataBytes: number;
    /** What to pass to `pool create --metadata-size`: the estimate, at least thinbd's smallest metadata file. */
    recommendedMetadataBytes: number;
    /** The smallest metadata file thinbd makes: room for every superblock copy (sparse on a file system). */
    smallestFileBytes: number;
    breakdown: { mappingBlocks: number; dataSpaceMapBlocks: number; volumeBlocks: number; fixedBlocks: number };
  };
  dmThin: {
    /** thin_metadata_size 0.9.0: 1 + ⌊⌊2 × pool sectors / block sectors⌋ / 252⌋ + max thins, in 4 KiB blocks. */
    metadataBlocks: number;
    metadataBytes: number;
  };
}

/** Nodes of a tree with `entryCount` leaf entries, leaves and internal nodes half full. */
function treeBlocks(entryCount: number, leafCapacity: number): number {
  if (entryCount === 0) return 1;
  const internalHalf = Math.max(1, Math.floor(nodeCapacity(CHILD_VALUE_BYTES) / 2));
  let level = Math.ceil(entryCount / Math.max(1, Math.floor(leafCapacity / 2)));
  let total = level;
  while (level > 1) {
    level = Math.ceil(level / internalHalf);
    total += level;
  }
  return total;
}

/** thin_metadata_size 0.9.0's estimate in 4 KiB blocks (integer arithmetic as in print_estimated_result). */
export function dmThinMetadataBlocks(dataSizeBytes: number, blockSizeBytes: number, maxThins: number): number {
  const poolSectors = BigInt(Math.floor(dataSizeBytes / SECTOR_BYTES));
  const blockSectors = BigInt(Math.floor(blockSizeBytes / SECTOR_BYTES));
  const mappingsPerBlock = BigInt((DM_THIN_NODE_BYTES - DM_THIN_NODE_HEADER_BYTES) / DM_THIN_ENTRY_BYTES);
  return Number(1n + (2n * poolSectors) / blockSectors / mappingsPerBlock + BigInt(maxThins));
}

export function estimateMetadataSize(options: MetadataSizeOptions): MetadataSizeEstimate {
  const { dataSizeBytes, blockSizeBytes, volumeCount } = options;
  const averageRunBlocks = options.averageRunBlocks ?? 1;
  if (!Number.isSafeInteger(blockSizeBytes) || blockSizeBytes < SECTOR_BYTES || (blockSizeBytes & (blockSizeBytes - 1)) !== 0) {
    throw new ThinError('THIN_INVALID', `The block size ${blockSizeBytes} is not a power of two of at least 512 bytes`);
  }
  if (!Number.isSafeInteger(dataSizeBytes) || dataSizeBytes <= blockSizeBytes) {
    throw new ThinError('THIN_INVALID', `The data size ${dataSizeBytes} must be larger than the block size ${blockSizeBytes}`);
  }
  if (!Number.isSafeInteger(volumeCount) || volumeCount < 1) {
    throw new ThinError('THIN_INVALID', `The volume count ${volumeCount} must be a whole number of at least 1`);
  }
  if (!Number.isFinite(averageRunBlocks) || averageRunBlocks < 1) {
    throw new ThinError('THIN_INVALID', `The average run length ${averageRunBlocks} must be at least 1 block`);
  }
  const dataBlockCount = Math.floor(dataSizeBytes / blockSizeBytes);
  const entryCount = Math.ceil(dataBlockCount / averageRunBlocks);

  const mappingCompact = averageRunBlocks <= COMPACT_EXTENT_LENGTH_BLOCKS_MAX && dataBlockCount <= COMPACT_DATA_BLOCKS_MAX;
  const mappingBlocks = treeBlocks(
    entryCount,
    mappingCompact ? compactNodeCapacity(COMPACT_EXTENT_VALUE_SIZE_BYTES) : nodeCapacity(EXTENT_VALUE_SIZE_BYTES),
  );
  // Runs of at most 2 blocks make 4 runs or more in every group of 8 blocks, which are stored dense
  // (F-SM-8); longer runs are counted as an extent each (a dense group never takes more entries).
  const denseGroups = averageRunBlocks <= DENSE_GROUP_BLOCKS / DENSE_RUNS_MIN;
  const dataSpaceMapEntryCount = denseGroups ? Math.ceil(dataBlockCount / DENSE_GROUP_BLOCKS) : entryCount;
  // A space map extent fits a compact leaf up to 2^32 blocks long: always, for the runs counted here.
  const dataSpaceMapBlocks = treeBlocks(dataSpaceMapEntryCount, leafCapacity(refCountExtentCodec(TreeKind.dataSpaceMap), averageRunBlocks <= 2 ** 32));
  // Each volume: a details block and the root of its mapping tree; the device tree holds one value each.
  const volumeBlocks = 2 * volumeCount + treeBlocks(volumeCount, nodeCapacity(DEVICE_VALUE_SIZE_BYTES));
  const counted = mappingBlocks + dataSpaceMapBlocks + volumeBlocks;
  // The metadata space map counts those blocks as extents too; worst case one extent per block.
  const metadataSpaceMapBlocks = treeBlocks(counted, leafCapacity(refCountExtentCodec(TreeKind.metadataSpaceMap), true));
  const fixedBlocks = SUPERBLOCK_BLOCK_NRS.length + DELTA_LOG_BLOCK_COUNT + metadataSpaceMapBlocks;
  const metadataBlocks = counted + fixedBlocks;
  const metadataBytes = metadataBlocks * METADATA_BLOCK_SIZE_BYTES;
  const recommendedBlocks = Math.min(Math.max(metadataBlocks, METADATA_BLOCK_COUNT_MIN), METADATA_BLOCK_COUNT_MAX);

  const dmThinBlocks = dmThinMetadataBlocks(dataSizeBytes, blockSizeBytes, volumeCount);
  return {
    dataBlockCount,
    volumeCount,
    averageRunBlocks,
    thinbd: {
      metadataBlocks,
      metadataBytes,
      recommendedMetadataBytes: recommendedBlocks * METADATA_BLOCK_SIZE_BYTES,
      smallestFileBytes: METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES,
      breakdown: { mappingBlocks, dataSpaceMapBlocks, volumeBlocks, fixedBlocks },
    },
    dmThin: { metadataBlocks: dmThinBlocks, metadataBytes: dmThinBlocks * DM_THIN_NODE_BYTES },
  };
}
