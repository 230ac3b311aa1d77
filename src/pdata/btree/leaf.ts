// Leaf entries as keys and values, whichever layout the leaf has (node.ts): the B+tree and the
// walker read values through here, and the B+tree re-encodes a leaf through here when an entry
// does not fit it in place (a compact leaf whose bases are too far from a new value, a full leaf).
import { ThinError, assert, isThinError } from '../../errors.ts';
import type { Block } from '../block.ts';
import type { ValueCodec } from './codec.ts';
import {
  COMPACT_KEY_DELTA_MAX,
  COMPACT_VALUE_BASES_BYTES,
  CompactLeaf,
  NodeLayout,
  compactKeyFits,
  compactNodeCapacity,
  describeKeyRange,
  entryCount,
  initNode,
  isCompact,
  keyAt,
  nodeCapacity,
  setCompactKeyBase,
  setEntryCount,
  setKey,
  valueOffset,
} from './node.ts';

export function leafValueAt<V>(block: Block, index: number, codec: ValueCodec<V>): V {
  if (isCompact(block)) {
    // The message only when it fails: a template string per value read was built for nothing.
    if (codec.compact === undefined) assert(false, `compact leaf ${block.blockNr} read with a codec that has no compact form`);
    return codec.compact.unpack(block.view, CompactLeaf.valueBasesOffset, valueOffset(block, index));
  }
  return codec.unpack(block.view, valueOffset(block, index));
}

/**
 * Unpacks every value of a leaf read from disk; throws THIN_CORRUPT_NODE naming the leaf, the key
 * range its parent promised and the first bad value's key.
 */
export function checkLeafValues<V>(block: Block, codec: ValueCodec<V>, keyBegin: number | undefined, keyEnd: number | undefined): void {
  const count = entryCount(block);
  for (let index = 0; index < count; index++) {
    try {
      leafValueAt(block, index, codec);
    } catch (error) {
      if (!isThinError(error)) throw error;
      throw new ThinError(
        'THIN_CORRUPT_NODE',
        `B+tree leaf at metadata block ${block.blockNr} (${describeKeyRange(keyBegin, keyEnd)}) has a bad value ` +
          `at key ${keyAt(block, index)}: ${error.message}`,
        { cause: error },
      );
    }
  }
}

/** Whether key and value can be stored in the leaf as it is (a wide leaf takes anything). */
export function leafEntryFits<V>(block: Block, key: number, value: V, codec: ValueCodec<V>): boolean {
  if (!isCompact(block)) return true;
  return compactKeyFits(block, key) && codec.compact!.fits(value, block.view, CompactLeaf.valueBasesOffset);
}

/** Stores entry `index`'s key and value; they must fit (leafEntryFits). */
export function setLeafEntry<V>(block: Block, index: number, key: number, value: V, codec: ValueCodec<V>): void {
  setKey(block, index, key);
  setLeafValue(block, index, value, codec);
}

export function setLeafValue<V>(block: Block, index: number, value: V, codec: ValueCodec<V>): void {
  if (isCompact(block)) codec.compact!.pack(value, block.view, CompactLeaf.valueBasesOffset, valueOffset(block, index));
  else codec.pack(value, block.view, valueOffset(block, index));
}

export function leafEntries<V>(block: Block, codec: ValueCodec<V>): Array<[number, V]> {
  const count = entryCount(block);
  const entries: Array<[number, V]> = new Array(count);
  for (let index = 0; index < count; index++) entries[index] = [keyAt(block, index), leafValueAt(block, index, codec)];
  return entries;
}

/** How a list of entries would be stored in one leaf: compact when it can be, else wide. */
export interface LeafPlan {
  layout: NodeLayout;
  /** Key base and value bases of a compact leaf (24 bytes, as stored from CompactLeaf.keyBaseOffset). */
  bases: Uint8Array | undefined;
}

const scratch = new DataView(new ArrayBuffer(8 + COMPACT_VALUE_BASES_BYTES));

/** The layout that holds `entries` (ascending keys) in one leaf, or undefined when none does. */
export function planLeaf<V>(entries: ReadonlyArray<readonly [number, V]>, codec: ValueCodec<V>): LeafPlan | undefined {
  const compact = codec.compact;
  if (compact !== undefined && entries.length <= compactNodeCapacity(compact.sizeBytes)) {
    const keyBase = entries.length === 0 ? 0 : entries[0]![0];
    const keySpan = entries.length === 0 ? 0 : entries[entries.length - 1]![0] - keyBase;
    if (keySpan <= COMPACT_KEY_DELTA_MAX && compact.chooseBases(entries.map(([, value]) => value), scratch, 8)) {
      scratch.setBigUint64(0, BigInt(keyBase), true);
      return { layout: NodeLayout.compact, bases: new Uint8Array(scratch.buffer.slice(0)) };
    }
  }
  if (entries.length <= nodeCapacity(codec.sizeBytes)) return { layout: NodeLayout.wide, bases: undefined };
  return undefined;
}

/** Rewrites `block` as a leaf of `plan`'s layout holding exactly `entries`. */
export function writeLeaf<V>(block: Block, entries: ReadonlyArray<readonly [number, V]>, plan: LeafPlan, codec: ValueCodec<V>): void {
  const level = 0;
  if (plan.layout === NodeLayout.compact) {
    initNode(block, codec.treeKind, level, codec.compact!.sizeBytes, NodeLayout.compact);
    setCompactKeyBase(block, Number(new DataView(plan.bases!.buffer).getBigUint64(0, true)));
    block.bytes.set(plan.bases!.subarray(8), CompactLeaf.valueBasesOffset);
  } else {
    initNode(block, codec.treeKind, level, codec.sizeBytes, NodeLayout.wide);
  }
  setEntryCount(block, entries.length);
  for (let index = 0; index < entries.length; index++) setLeafEntry(block, index, entries[index]![0], entries[index]![1], codec);
}
