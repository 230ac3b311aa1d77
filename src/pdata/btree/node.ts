// The bytes of one B+tree node (docs/format.md, "B+tree node"). A node is a metadata block of type
// btreeInternal or btreeLeaf; after the block header comes a node header, then a key array and a
// value array, each sized for the node's capacity. Internal nodes hold child block numbers as
// their values. Entries are edited in place (shifting with copyWithin) rather than unpacked
// into objects, because lookups dominate and should touch only the keys they compare.
//
// A leaf has one of two layouts (the header's `layout`). Wide: u64 keys and the codec's values.
// Compact (trees whose codec has a compact form, the mapping trees): after the node header a key
// base (u64) and 16 bytes of value bases the codec owns, then u32 keys (offsets from the key
// base) and the codec's narrow values (offsets from its bases). Both are fixed width, so the
// in-place edits below serve both; a value too far from a compact leaf's bases is the B+tree's
// business (it re-encodes the leaf, or makes it wide).
import { METADATA_BLOCK_HEADER_BYTES, METADATA_BLOCK_SIZE_BYTES, BTREE_DEPTH_MAX } from '../../constants.ts';
import { ThinError, assert } from '../../errors.ts';
import { BlockType, getU64, setU64, type Block } from '../block.ts';

export const NodeHeader = {
  treeKindOffset: METADATA_BLOCK_HEADER_BYTES + 0, // u16
  levelOffset: METADATA_BLOCK_HEADER_BYTES + 2, // u16, 0 = leaf
  entryCountOffset: METADATA_BLOCK_HEADER_BYTES + 4, // u16
  layoutOffset: METADATA_BLOCK_HEADER_BYTES + 6, // u16, NodeLayout
  valueSizeOffset: METADATA_BLOCK_HEADER_BYTES + 8, // u32
  reserved2Offset: METADATA_BLOCK_HEADER_BYTES + 12, // u32, zero
  keysOffset: METADATA_BLOCK_HEADER_BYTES + 16,
} as const;

/** Where a compact leaf keeps its bases and keys (docs/format.md "Compact leaf"). */
export const CompactLeaf = {
  keyBaseOffset: METADATA_BLOCK_HEADER_BYTES + 16, // u64
  valueBasesOffset: METADATA_BLOCK_HEADER_BYTES + 24, // 16 bytes, the codec's
  keysOffset: METADATA_BLOCK_HEADER_BYTES + 40, // u32 × capacity, then values
} as const;
export const COMPACT_VALUE_BASES_BYTES = 16;
/** A compact key is a u32 offset from the leaf's key base. */
export const COMPACT_KEY_DELTA_MAX = 0xffff_ffff;

/** The header's `layout` (F-NODE-7). */
export const NodeLayout = { wide: 0, compact: 1 } as const;
export type NodeLayout = (typeof NodeLayout)[keyof typeof NodeLayout];

const KEY_BYTES = 8;
export const COMPACT_KEY_BYTES = 4;
/**
 * Internal nodes store, per child, its block number and the transaction that wrote it (u64 each).
 * The second makes a stale child detectable: a lost or misdirected write leaves an older, valid
 * block in the child's place, which its own header cannot betray (btrfs keeps the same pair).
 */
export const CHILD_VALUE_BYTES = 16;
/** Largest value a codec may declare: a leaf must still hold a handful of entries. */
export const NODE_VALUE_BYTES_MAX = 256;

/** Entries that fit in one wide node with values of `valueSizeBytes` (F-NODE-3). */
export function nodeCapacity(valueSizeBytes: number): number {
  return Math.floor((METADATA_BLOCK_SIZE_BYTES - NodeHeader.keysOffset) / (KEY_BYTES + valueSizeBytes));
}

/** Entries that fit in one compact leaf with narrow values of `valueSizeBytes` (F-NODE-3). */
export function compactNodeCapacity(valueSizeBytes: number): number {
  return Math.floor((METADATA_BLOCK_SIZE_BYTES - CompactLeaf.keysOffset) / (COMPACT_KEY_BYTES + valueSizeBytes));
}

/** Fewest entries a node other than the root keeps after a removal (a third of capacity). */
export function nodeEntriesMin(block: Block): number {
  return Math.floor(capacityOf(block) / 3);
}

export function initNode(block: Block, treeKind: number, level: number, valueSizeBytes: number, layout: NodeLayout = NodeLayout.wide): void {
  if (!(treeKind >= 1 && treeKind <= 0xffff)) assert(false, `bad tree kind ${treeKind}`);
  if (!(level >= 0 && level < BTREE_DEPTH_MAX)) assert(false, `bad level ${level}`);
  if (!(valueSizeBytes >= 1 && valueSizeBytes <= NODE_VALUE_BYTES_MAX)) assert(false, `bad value size ${valueSizeBytes}`);
  if (!(layout === NodeLayout.wide || level === 0)) assert(false, 'an internal node is always wide');
  block.bytes.fill(0, METADATA_BLOCK_HEADER_BYTES);
  const view = block.view;
  view.setUint16(NodeHeader.treeKindOffset, treeKind, true);
  view.setUint16(NodeHeader.levelOffset, level, true);
  view.setUint16(NodeHeader.entryCountOffset, 0, true);
  view.setUint16(NodeHeader.layoutOffset, layout, true);
  view.setUint32(NodeHeader.valueSizeOffset, valueSizeBytes, true);
  block.checkedTreeKind = treeKind;
}

export function nodeTreeKind(block: Block): number {
  return block.view.getUint16(NodeHeader.treeKindOffset, true);
}
export function nodeLevel(block: Block): number {
  return block.view.getUint16(NodeHeader.levelOffset, true);
}
export function isLeaf(block: Block): boolean {
  return nodeLevel(block) === 0;
}
export function entryCount(block: Block): number {
  return block.view.getUint16(NodeHeader.entryCountOffset, true);
}
export function setEntryCount(block: Block, count: number): void {
  if (!(count >= 0 && count <= capacityOf(block))) assert(false, `entry count ${count} out of bounds`);
  block.view.setUint16(NodeHeader.entryCountOffset, count, true);
}
export function valueSizeOf(block: Block): number {
  return block.view.getUint32(NodeHeader.valueSizeOffset, true);
}
export function nodeLayout(block: Block): number {
  return block.view.getUint16(NodeHeader.layoutOffset, true);
}
export function isCompact(block: Block): boolean {
  return nodeLayout(block) === NodeLayout.compact;
}
export function capacityOf(block: Block): number {
  return isCompact(block) ? compactNodeCapacity(valueSizeOf(block)) : nodeCapacity(valueSizeOf(block));
}
function keyBytesOf(block: Block): number {
  return isCompact(block) ? COMPACT_KEY_BYTES : KEY_BYTES;
}
function keysOffsetOf(block: Block): number {
  return isCompact(block) ? CompactLeaf.keysOffset : NodeHeader.keysOffset;
}

/** A compact leaf's key base: every key is base + a u32. */
export function compactKeyBase(block: Block): number {
  return getU64(block.view, CompactLeaf.keyBaseOffset);
}
export function setCompactKeyBase(block: Block, keyBase: number): void {
  assert(isCompact(block) && entryCount(block) === 0, 'a key base is set on an empty compact leaf');
  setU64(block.view, CompactLeaf.keyBaseOffset, keyBase);
}
/** Whether key can be stored in the compact leaf without a new key base. */
export function compactKeyFits(block: Block, key: number): boolean {
  const keyBase = compactKeyBase(block);
  return key >= keyBase && key - keyBase <= COMPACT_KEY_DELTA_MAX;
}

export function keyAt(block: Block, index: number): number {
  if (isCompact(block)) return compactKeyBase(block) + block.view.getUint32(CompactLeaf.keysOffset + index * COMPACT_KEY_BYTES, true);
  return getU64(block.view, NodeHeader.keysOffset + index * KEY_BYTES);
}
export function setKey(block: Block, index: number, key: number): void {
  if (isCompact(block)) {
    if (!compactKeyFits(block, key)) assert(false, `key ${key} does not fit compact leaf ${block.blockNr} (base ${compactKeyBase(block)})`);
    block.view.setUint32(CompactLeaf.keysOffset + index * COMPACT_KEY_BYTES, key - compactKeyBase(block), true);
    return;
  }
  setU64(block.view, NodeHeader.keysOffset + index * KEY_BYTES, key);
}

/**
 * The first `count` keys of a node into `keys` (a leaf read whole: one pass, no call per key).
 * The node passed nodeProblem, so every key is a safe integer.
 */
export function readKeys(block: Block, count: number, keys: Float64Array): void {
  const view = block.view;
  if (isCompact(block)) {
    const keyBase = compactKeyBase(block);
    for (let index = 0, offset = CompactLeaf.keysOffset; index < count; index++, offset += COMPACT_KEY_BYTES) {
      keys[index] = keyBase + view.getUint32(offset, true);
    }
    return;
  }
  for (let index = 0, offset = NodeHeader.keysOffset; index < count; index++, offset += KEY_BYTES) {
    keys[index] = view.getUint32(offset + 4, true) * 0x1_0000_0000 + view.getUint32(offset, true);
  }
}

/** Byte offset of the value of entry `index`. */
export function valueOffset(block: Block, index: number): number {
  const valueSizeBytes = valueSizeOf(block);
  return keysOffsetOf(block) + capacityOf(block) * keyBytesOf(block) + index * valueSizeBytes;
}

export function childAt(block: Block, index: number): number {
  return getU64(block.view, valueOffset(block, index));
}
/** The transaction that wrote child `index`, as its parent remembers it. */
export function childTransactionIdAt(block: Block, index: number): number {
  return getU64(block.view, valueOffset(block, index) + 8);
}
export function setChild(block: Block, index: number, childBlockNr: number, childTransactionId: number): void {
  const offsetBytes = valueOffset(block, index);
  setU64(block.view, offsetBytes, childBlockNr);
  setU64(block.view, offsetBytes + 8, childTransactionId);
}

/** Largest index whose key is <= key, or -1. */
export function floorIndex(block: Block, key: number): number {
  let low = 0;
  let high = entryCount(block) - 1;
  while (low <= high) {
    const middle = (low + high) >>> 1;
    if (keyAt(block, middle) <= key) low = middle + 1;
    else high = middle - 1;
  }
  return high;
}

/** Smallest index whose key is >= key, or the entry count. */
export function ceilingIndex(block: Block, key: number): number {
  let low = 0;
  let high = entryCount(block);
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (keyAt(block, middle) < key) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** Opens a gap at `index` (entries at and after it move one to the right); the caller fills it. */
export function openGap(block: Block, index: number): void {
  const count = entryCount(block);
  const valueSizeBytes = valueSizeOf(block);
  assert(count < capacityOf(block), 'openGap on a full node');
  if (!(index >= 0 && index <= count)) assert(false, `openGap index ${index} of ${count}`);
  const keyBase = keysOffsetOf(block);
  const keyBytes = keyBytesOf(block);
  const valueBase = valueOffset(block, 0);
  block.bytes.copyWithin(keyBase + (index + 1) * keyBytes, keyBase + index * keyBytes, keyBase + count * keyBytes);
  block.bytes.copyWithin(
    valueBase + (index + 1) * valueSizeBytes,
    valueBase + index * valueSizeBytes,
    valueBase + count * valueSizeBytes,
  );
  setEntryCount(block, count + 1);
}

/** Removes entry `index`, closing the gap. */
export function removeAt(block: Block, index: number): void {
  const count = entryCount(block);
  const valueSizeBytes = valueSizeOf(block);
  if (!(index >= 0 && index < count)) assert(false, `removeAt index ${index} of ${count}`);
  const keyBase = keysOffsetOf(block);
  const keyBytes = keyBytesOf(block);
  const valueBase = valueOffset(block, 0);
  block.bytes.copyWithin(keyBase + index * keyBytes, keyBase + (index + 1) * keyBytes, keyBase + count * keyBytes);
  block.bytes.copyWithin(
    valueBase + index * valueSizeBytes,
    valueBase + (index + 1) * valueSizeBytes,
    valueBase + count * valueSizeBytes,
  );
  setEntryCount(block, count - 1);
}

/** Copies `count` entries from source[sourceIndex..] over target[targetIndex..] (same layout, and for compact leaves the same bases). */
export function copyEntries(source: Block, sourceIndex: number, target: Block, targetIndex: number, count: number): void {
  const valueSizeBytes = valueSizeOf(source);
  assert(valueSizeBytes === valueSizeOf(target), 'copyEntries between nodes of different value sizes');
  assert(nodeLayout(source) === nodeLayout(target), 'copyEntries between nodes of different layouts');
  assert(
    !isCompact(source) || sameBytes(source, target, CompactLeaf.keyBaseOffset, CompactLeaf.keysOffset),
    'copyEntries between compact leaves of different bases',
  );
  assert(targetIndex + count <= capacityOf(target) && sourceIndex + count <= entryCount(source), 'copyEntries out of bounds');
  const keyBase = keysOffsetOf(source);
  const keyBytes = keyBytesOf(source);
  target.bytes.set(
    source.bytes.subarray(keyBase + sourceIndex * keyBytes, keyBase + (sourceIndex + count) * keyBytes),
    keyBase + targetIndex * keyBytes,
  );
  const sourceValues = valueOffset(source, 0);
  const targetValues = valueOffset(target, 0);
  target.bytes.set(
    source.bytes.subarray(sourceValues + sourceIndex * valueSizeBytes, sourceValues + (sourceIndex + count) * valueSizeBytes),
    targetValues + targetIndex * valueSizeBytes,
  );
}

/** Moves `count` entries starting at `from` to start at `to` within one node (overlap allowed). */
export function shiftEntries(block: Block, from: number, to: number, count: number): void {
  if (count === 0 || from === to) return;
  const valueSizeBytes = valueSizeOf(block);
  const keyBase = keysOffsetOf(block);
  const keyBytes = keyBytesOf(block);
  const valueBase = valueOffset(block, 0);
  assert(Math.max(from, to) + count <= capacityOf(block), 'shiftEntries out of bounds');
  block.bytes.copyWithin(keyBase + to * keyBytes, keyBase + from * keyBytes, keyBase + (from + count) * keyBytes);
  block.bytes.copyWithin(valueBase + to * valueSizeBytes, valueBase + from * valueSizeBytes, valueBase + (from + count) * valueSizeBytes);
}

function sameBytes(a: Block, b: Block, begin: number, end: number): boolean {
  for (let offset = begin; offset < end; offset++) if (a.bytes[offset] !== b.bytes[offset]) return false;
  return true;
}

export interface NodeExpectation {
  treeKind: number;
  /** Value size of leaves; internal nodes always use CHILD_VALUE_BYTES. */
  leafValueSizeBytes: number;
  /** Value size of compact leaves; undefined when the tree has none (its codec has no compact form). */
  compactValueSizeBytes: number | undefined;
  /** Level the parent implies; undefined for a root. */
  level?: number;
  /** Keys must lie in [keyBegin, keyEnd) (F-NODE-5); undefined bounds are open. */
  keyBegin?: number;
  keyEnd?: number;
  metadataBlockCount: number;
}

/**
 * What is wrong with a node, or undefined (F-NODE-1..7). Run right after a node is read from
 * disk (problems are corruption) and right before a changed node is written (problems are bugs).
 */
export function nodeProblem(block: Block, expect: NodeExpectation): string | undefined {
  const view = block.view;
  const type = block.type;
  // F-NODE-1
  if (type !== BlockType.btreeInternal && type !== BlockType.btreeLeaf) return `block type ${type} is not a B+tree node`;
  const treeKind = nodeTreeKind(block);
  if (treeKind !== expect.treeKind) return /* F-NODE-2 */ `tree kind ${treeKind}, expected ${expect.treeKind}`;
  const level = nodeLevel(block);
  if (level >= BTREE_DEPTH_MAX) return `level ${level} is beyond the depth limit ${BTREE_DEPTH_MAX}`;
  if (expect.level !== undefined && level !== expect.level) return `level ${level}, expected ${expect.level}`;
  if ((level === 0) !== (type === BlockType.btreeLeaf)) return `level ${level} does not match block type ${type}`;
  // F-NODE-7
  if (view.getUint32(NodeHeader.reserved2Offset, true) !== 0) return 'reserved node header field is not zero';
  const layout = nodeLayout(block);
  if (layout !== NodeLayout.wide && layout !== NodeLayout.compact) return `layout ${layout} is unknown`;
  if (layout === NodeLayout.compact && (level !== 0 || expect.compactValueSizeBytes === undefined)) {
    return level !== 0 ? 'an internal node has the compact layout' : `compact leaf in a tree of kind ${treeKind}, which has none`;
  }
  const valueSizeBytes = valueSizeOf(block);
  // F-NODE-2
  const expectedValueSize =
    level !== 0 ? CHILD_VALUE_BYTES : layout === NodeLayout.compact ? expect.compactValueSizeBytes! : expect.leafValueSizeBytes;
  if (valueSizeBytes !== expectedValueSize) return `value size ${valueSizeBytes}, expected ${expectedValueSize}`;
  const count = entryCount(block);
  // F-NODE-3
  if (count > capacityOf(block)) return `entry count ${count} exceeds capacity ${capacityOf(block)}`;
  // F-NODE-8
  if (layout === NodeLayout.compact) {
    const keyBase = view.getBigUint64(CompactLeaf.keyBaseOffset, true);
    if (keyBase > BigInt(Number.MAX_SAFE_INTEGER)) return `compact key base ${keyBase} is beyond 2^53`;
  }
  if (level > 0 && count === 0) return 'internal node has no entries';
  if (level === 0) {
    const problem = leafKeysProblem(block, layout, count);
    if (problem !== undefined) return problem;
    return boundsProblem(block, count, count > 0 ? keyAt(block, count - 1) : -1, expect);
  }
  // An internal node: its keys, and its children (F-NODE-6).
  let previous = -1;
  for (let index = 0; index < count; index++) {
    const key = keyAt(block, index);
    // F-NODE-4
    if (!Number.isSafeInteger(key)) return `key ${index} is ${key}, beyond 2^53`;
    if (key <= previous) return `keys not strictly increasing at entry ${index} (${previous} then ${key})`;
    previous = key;
    // F-NODE-6
    const child = childAt(block, index);
    if (!Number.isSafeInteger(child) || child >= expect.metadataBlockCount) {
      return `child ${index} points to block ${child}, past the metadata (${expect.metadataBlockCount} blocks)`;
    }
    if (child === block.blockNr) return `child ${index} points to the node itself`;
    const childTransactionId = childTransactionIdAt(block, index);
    if (!Number.isSafeInteger(childTransactionId) || childTransactionId > block.transactionId) {
      return `child ${index} is said to be written by transaction ${childTransactionId}, after its parent (${block.transactionId})`;
    }
  }
  return boundsProblem(block, count, previous, expect);
}

/**
 * F-NODE-4 for a leaf: keys strictly increasing and below 2^53, in one pass over the key array
 * with the layout and the key base read once (a leaf has hundreds of keys, and keyAt per key
 * was most of a scattered check's node checks). The key named is the one keyAt gives.
 */
function leafKeysProblem(block: Block, layout: number, count: number): string | undefined {
  const view = block.view;
  let previous = -1;
  if (layout === NodeLayout.compact) {
    const keyBase = compactKeyBase(block);
    for (let index = 0, offset = CompactLeaf.keysOffset; index < count; index++, offset += COMPACT_KEY_BYTES) {
      const key = keyBase + view.getUint32(offset, true);
      if (!(key <= Number.MAX_SAFE_INTEGER)) return `key ${index} is ${key}, beyond 2^53`;
      if (key <= previous) return `keys not strictly increasing at entry ${index} (${previous} then ${key})`;
      previous = key;
    }
    return undefined;
  }
  for (let index = 0, offset = NodeHeader.keysOffset; index < count; index++, offset += KEY_BYTES) {
    const key = view.getUint32(offset + 4, true) * 0x1_0000_0000 + view.getUint32(offset, true);
    if (!(key <= Number.MAX_SAFE_INTEGER)) return `key ${index} is ${key}, beyond 2^53`;
    if (key <= previous) return `keys not strictly increasing at entry ${index} (${previous} then ${key})`;
    previous = key;
  }
  return undefined;
}

/** F-NODE-5: the first and last keys within the bounds the parent promised. */
function boundsProblem(block: Block, count: number, last: number, expect: NodeExpectation): string | undefined {
  if (count > 0) {
    const first = keyAt(block, 0);
    if (expect.keyBegin !== undefined && first < expect.keyBegin) {
      return `first key ${first} is below the parent's bound ${expect.keyBegin}`;
    }
    if (expect.keyEnd !== undefined && last >= expect.keyEnd) {
      return `last key ${last} is not below the parent's bound ${expect.keyEnd}`;
    }
  }
  return undefined;
}

export function describeKeyRange(keyBegin: number | undefined, keyEnd: number | undefined): string {
  return `keys [${keyBegin ?? 0}, ${keyEnd ?? '∞'})`;
}

/** Validates a node read from disk: throws THIN_CORRUPT_NODE with the block number and key range. */
export function checkNodeFromDisk(block: Block, expect: NodeExpectation): void {
  const problem = nodeProblem(block, expect);
  if (problem !== undefined) {
    throw new ThinError(
      'THIN_CORRUPT_NODE',
      `B+tree node at metadata block ${block.blockNr} (${describeKeyRange(expect.keyBegin, expect.keyEnd)}) is corrupt: ${problem}`,
    );
  }
}
