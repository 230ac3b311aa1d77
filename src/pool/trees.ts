// The pool's trees as pdata sees them: the value codecs of the mapping and device trees, and the
// checks that a block a pool structure points at was written by the transaction recorded beside
// the pointer (F-POOL-8, F-POOL-16). The engine and the tools (check, dump, delta, restore,
// repair) share these; a tool that needs a codec imports this module, not the engine.
import { METADATA_BLOCK_HEADER_BYTES, METADATA_BLOCK_SIZE_BYTES } from '../constants.ts';
import { ThinError } from '../errors.ts';
import {
  BTREE_BLOCK_TYPES,
  BlockType,
  COMPACT_KEY_BYTES,
  CompactLeaf,
  compactKeyBase,
  compactNodeCapacity,
  entryCount,
  isCompact,
  readKeys,
  valueOffset,
  type Block,
  type BlockManager,
  type BTree,
  type LeafColumns,
  type LeafColumnsReader,
  type SpaceMap,
  type ValueCodec,
} from '../pdata/index.ts';
import {
  DEVICE_TREE_KIND,
  DEVICE_VALUE_SIZE_BYTES,
  COMPACT_EXTENT_LENGTH_BLOCKS_MAX,
  COMPACT_EXTENT_VALUE_SIZE_BYTES,
  EXTENT_VALUE_SIZE_BYTES,
  MAPPING_TREE_KIND,
  POOL_TIME_MAX,
  decodePoolPayload,
  packDeviceValue,
  packExtent,
  unpackDeviceValue,
  unpackExtent,
  compactExtentCodec,
  type DeviceValue,
} from './codecs.ts';
import type { Extent } from './ranges.ts';

/** Bytes of the details JSON that fit a details block (F-POOL-30). */
export const DETAILS_CAPACITY_BYTES = METADATA_BLOCK_SIZE_BYTES - METADATA_BLOCK_HEADER_BYTES;

/**
 * Open's check of a candidate superblock generation (F-SB-6, F-POOL-5): the payload decodes and
 * its two roots are B+tree nodes of this pool. A torn commit fails here and open falls back.
 */
export function validatePayloadRoots(bytes: Uint8Array, tm: BlockManager): void {
  const payload = decodePoolPayload(bytes, tm.metadataBlockCount);
  checkWrittenBy(tm, payload.deviceTreeRoot, BTREE_BLOCK_TYPES, payload.deviceTreeRootTransactionId, 'the device tree root');
  checkWrittenBy(tm, payload.dataSpaceMapRoot, BTREE_BLOCK_TYPES, payload.dataSpaceMapRootTransactionId, 'the data space map root');
  if ((payload.badRangeRoot ?? 0) !== 0) checkWrittenBy(tm, payload.badRangeRoot!, BTREE_BLOCK_TYPES, payload.badRangeRootTransactionId, 'the bad-range tree root');
}

/**
 * Reads a block that a pool structure references and checks that the transaction recorded with
 * the reference wrote it (F-POOL-8, F-POOL-16): an older valid block in its place is a lost or
 * misdirected write. A recorded 0 means not recorded.
 */
export function checkWrittenBy(tm: BlockManager, blockNr: number, type: number | readonly number[], transactionId: number | undefined, what: string): void {
  const problem = staleBlockProblem(tm, blockNr, type, transactionId, what);
  if (problem !== undefined) throw new ThinError('THIN_CORRUPT_BLOCK', problem);
}

/** What checkWrittenBy would throw, as a sentence; undefined when the block is the one recorded. Read errors throw. */
export function staleBlockProblem(tm: BlockManager, blockNr: number, type: number | readonly number[], transactionId: number | undefined, what: string): string | undefined {
  const block = tm.read(blockNr, type, transactionId);
  if (transactionId === undefined || transactionId === 0 || block.transactionId === transactionId) return undefined;
  return `Metadata block ${blockNr}, ${what}, was written by transaction ${block.transactionId}, not ${transactionId} as recorded: a lost or misdirected write left a stale block`;
}

/** The transaction a block's header names (for a block changed in the open transaction: that one). */
export function writtenBy(tm: BlockManager, blockNr: number, type: number | readonly number[]): number {
  return tm.read(blockNr, type).transactionId;
}

/**
 * The device tree's values as stored, with nothing retained or released: what the tools that only
 * read a pool (check, dump, delta, repair) walk, so that no reference count can move.
 */
export const deviceReadCodec: ValueCodec<DeviceValue> = {
  treeKind: DEVICE_TREE_KIND,
  sizeBytes: DEVICE_VALUE_SIZE_BYTES,
  pack: packDeviceValue,
  unpack: unpackDeviceValue,
};

/**
 * Mapping tree values whose data blocks must lie below dataBlockCount, with nothing retained or
 * released (see deviceReadCodec). A tool that judges a mapping past the data device on its own
 * passes Number.MAX_SAFE_INTEGER, so that it costs that mapping and not the whole leaf holding it.
 */
export function extentReadCodec(dataBlockCount: number): ValueCodec<Extent> {
  return {
    treeKind: MAPPING_TREE_KIND,
    sizeBytes: EXTENT_VALUE_SIZE_BYTES,
    pack: packExtent,
    unpack: (view, offsetBytes) => unpackExtent(view, offsetBytes, dataBlockCount),
    compact: compactExtentCodec(() => dataBlockCount),
  };
}

/** A mapping leaf's extents as columns (extentColumnsReader): entry i maps lengths[i] virtual blocks from keys[i] to data blocks from dataBlocks[i]. */
export interface ExtentColumns extends LeafColumns {
  readonly dataBlocks: Float64Array;
  readonly lengths: Float64Array;
  readonly times: Float64Array;
}

/** High 32 bits of Number.MAX_SAFE_INTEGER: a u64 whose high word is above it is 2^53 or more. */
const SAFE_HIGH_MAX = 0x1f_ffff;

/**
 * Reads mapping leaves in place (pdata's LeafColumnsReader), accepting exactly what
 * extentReadCodec(dataBlockCount) unpacks: the tools' walks over millions of extents use it.
 */
export function extentColumnsReader(dataBlockCount: number): LeafColumnsReader<ExtentColumns> {
  return {
    create() {
      const capacity = compactNodeCapacity(COMPACT_EXTENT_VALUE_SIZE_BYTES);
      return {
        count: 0,
        keys: new Float64Array(capacity),
        dataBlocks: new Float64Array(capacity),
        lengths: new Float64Array(capacity),
        times: new Float64Array(capacity),
      };
    },
    read(block, columns) {
      const count = entryCount(block);
      columns.count = count;
      if (isCompact(block)) return readCompactExtents(block, count, columns, dataBlockCount);
      readKeys(block, count, columns.keys);
      return readWideExtents(block, count, columns, dataBlockCount);
    },
  };
}

// The two layouts' values (docs/format.md "Mapping tree value (extent)", "Compact mapping value"),
// with unpackExtent's checks (F-POOL-20, F-POOL-21, F-POOL-27) as comparisons, not throws.
function readWideExtents(block: Block, count: number, columns: ExtentColumns, dataBlockCount: number): boolean {
  const view = block.view;
  const { dataBlocks, lengths, times } = columns;
  for (let index = 0, offset = valueOffset(block, 0); index < count; index++, offset += EXTENT_VALUE_SIZE_BYTES) {
    const high = view.getUint32(offset + 4, true);
    const dataBlock = high * 0x1_0000_0000 + view.getUint32(offset, true);
    const lengthBlocks = view.getUint32(offset + 8, true);
    if (high > SAFE_HIGH_MAX || lengthBlocks < 1 || dataBlock + lengthBlocks > dataBlockCount || !(dataBlock + lengthBlocks <= Number.MAX_SAFE_INTEGER)) return false;
    dataBlocks[index] = dataBlock;
    lengths[index] = lengthBlocks;
    times[index] = view.getUint32(offset + 12, true);
  }
  return true;
}

/**
 * The compact value's length and time fields as a mask and a shift: a u32 above 2^31 is a double
 * to V8, and `%` or `/` on one is a floating-point call per entry (most of a scattered check's
 * decoding time), where bit operations stay on 32-bit integers.
 */
const COMPACT_LENGTH_MASK = COMPACT_EXTENT_LENGTH_BLOCKS_MAX - 1;
const COMPACT_LENGTH_BITS = 31 - Math.clz32(COMPACT_EXTENT_LENGTH_BLOCKS_MAX);

function readCompactExtents(block: Block, count: number, columns: ExtentColumns, dataBlockCount: number): boolean {
  const view = block.view;
  const bases = CompactLeaf.valueBasesOffset;
  const baseHigh = view.getUint32(bases + 4, true);
  const dataBase = baseHigh * 0x1_0000_0000 + view.getUint32(bases, true);
  const timeBase = view.getUint32(bases + 8, true);
  if (count > 0 && (baseHigh > SAFE_HIGH_MAX || view.getUint32(bases + 12, true) !== 0)) return false;
  const keyBase = compactKeyBase(block);
  const { keys, dataBlocks, lengths, times } = columns;
  // Keys and values in one pass (pdata's readKeys reads compact keys the same way): a scattered
  // pool's leaves hold a million entries, and every loop over them is one more to warm up.
  for (
    let index = 0, keyOffset = CompactLeaf.keysOffset, offset = valueOffset(block, 0);
    index < count;
    index++, keyOffset += COMPACT_KEY_BYTES, offset += COMPACT_EXTENT_VALUE_SIZE_BYTES
  ) {
    keys[index] = keyBase + view.getUint32(keyOffset, true);
    const dataBlock = dataBase + view.getUint32(offset, true);
    const lengthAndTime = view.getUint32(offset + 4, true);
    const lengthBlocks = (lengthAndTime & COMPACT_LENGTH_MASK) + 1;
    const time = timeBase + (lengthAndTime >>> COMPACT_LENGTH_BITS);
    if (time > POOL_TIME_MAX || dataBlock + lengthBlocks > dataBlockCount || !(dataBlock + lengthBlocks <= Number.MAX_SAFE_INTEGER)) return false;
    dataBlocks[index] = dataBlock;
    lengths[index] = lengthBlocks;
    times[index] = time;
  }
  return true;
}

/**
 * The engine's mapping tree codec: every leaf entry holds one reference to each data block of its
 * extent (F-POOL-23). Extents are checked against the data space's block count now (it grows).
 */
export function makeExtentCodec(dataSpace: () => SpaceMap): ValueCodec<Extent> {
  return {
    treeKind: MAPPING_TREE_KIND,
    sizeBytes: EXTENT_VALUE_SIZE_BYTES,
    pack: packExtent,
    unpack: (view, offsetBytes) => unpackExtent(view, offsetBytes, dataSpace().blockCount),
    compact: compactExtentCodec(() => dataSpace().blockCount),
    retain: (value) => dataSpace().inc(value.dataBlock, value.lengthBlocks),
    release: (value) => dataSpace().dec(value.dataBlock, value.lengthBlocks),
  };
}

export function makeDeviceCodec(tm: BlockManager, mappingTree: () => BTree<Extent>): ValueCodec<DeviceValue> {
  return {
    ...deviceReadCodec,
    // The transactions that wrote the blocks a value points at are taken from those blocks when
    // the value is stored, never from the value, whose copies may be older (F-POOL-16).
    pack: (value, view, offsetBytes) =>
      packDeviceValue(
        {
          ...value,
          mappingRootTransactionId: writtenBy(tm, value.mappingRoot, BTREE_BLOCK_TYPES),
          detailsTransactionId: writtenBy(tm, value.detailsBlock, BlockType.details),
        },
        view,
        offsetBytes,
      ),
    // The device tree is never shared, but if it were, its values own a mapping root and a details block each.
    retain: (value) => {
      mappingTree().retainTree(value.mappingRoot);
      tm.inc(value.detailsBlock);
    },
    release: (value) => {
      mappingTree().releaseTree(value.mappingRoot);
      tm.dec(value.detailsBlock);
    },
  };
}
