// The persistent-data layer's public surface: checksummed blocks, transactions, B+trees, space
// maps and superblock copies. Layers above import from here.
export { Block, BlockType, BTREE_BLOCK_TYPES, validateBlock, blockProblem, sealBlock, checksumOf, getU64, setU64, isZeroBlock } from './block.ts';
export type { WritableBlock, BlockExpectation } from './block.ts';
export { BlockCache } from './cache.ts';
export { TransactionManager } from './transaction.ts';
export { nextTransactionId, openNewestGeneration } from './generations.ts';
export type { BlockManager } from './block-manager.ts';
export { deltaLogBlockNrs, isSuperblockBlockNr, reservedBlocks } from './reserved-blocks.ts';
export type { TransactionCounters, FormatOptions } from './transaction.ts';
export type { OpenReport, OpenOptions, SuperblockCopyReport } from './generations.ts';
export { SpaceMap, refCountExtentCodec, isDense, denseCountAt, DENSE_GROUP_BLOCKS } from './space-map.ts';
export type { RefCountExtent, DenseCounts, SpaceMapValue, BlockRange } from './space-map.ts';
export {
  SUPERBLOCK_MAGIC,
  superblockCopyIndexes,
  encodeSuperblock,
  decodeSuperblock,
  readSuperblockCopies,
  superblockCandidates,
} from './superblock.ts';
export type { SuperblockFields, SuperblockCopy } from './superblock.ts';
export { BTree } from './btree/btree.ts';
export { BottomUpTree } from './btree/bulk.ts';
export { TreeKind, u64Codec, unpackSafeU64 } from './btree/codec.ts';
export type { CompactValueCodec, LeafColumns, LeafColumnsReader, ValueCodec } from './btree/codec.ts';
export { TreeWalker } from './btree/walker.ts';
export type { NodeVisit, CorruptNode, WalkVisitor } from './btree/walker.ts';
export { SubtreeShapes } from './btree/subtrees.ts';
export type { FoldOptions } from './btree/subtrees.ts';
export {
  nodeCapacity,
  compactNodeCapacity,
  nodeLevel,
  nodeTreeKind,
  entryCount,
  isCompact,
  readKeys,
  valueOffset,
  CompactLeaf,
  COMPACT_KEY_BYTES,
  compactKeyBase,
  CHILD_VALUE_BYTES,
} from './btree/node.ts';
