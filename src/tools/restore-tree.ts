// One volume's mapping tree, built by restore from extents in ascending key order (every dump's
// order): leaves are laid out as the entries arrive, each written whole into a newly allocated
// block when full, and the internal levels are laid over them at the end (pdata BottomUpTree).
// Going through BTree.insert instead cost a shadow, a search and often a re-encoding of the leaf
// per mapping, and left the leaves half full.
//
// A leaf is compact (docs/format.md "Compact leaf", "Compact mapping value") while its entries fit
// one set of bases, up to the compact capacity; an entry that does not fit turns a leaf of fewer
// than a wide leaf's capacity wide (a wide leaf takes any extent), and closes a fuller one. So
// every leaf but the last holds at least a wide leaf's capacity, half a compact one's; the last
// is evened out with the one before when it would hold less than a third (F-NODE-3), as far as
// the layouts allow.
import { assert } from '../errors.ts';
import { BlockType, BottomUpTree, type Block, type TransactionManager } from '../pdata/index.ts';
import { CompactLeaf, NodeLayout, compactNodeCapacity, initNode, nodeCapacity, setCompactKeyBase, setEntryCount, setKey, valueOffset } from '../pdata/btree/node.ts';
import {
  COMPACT_EXTENT_VALUE_SIZE_BYTES,
  EXTENT_VALUE_SIZE_BYTES,
  MAPPING_TREE_KIND,
  compactExtentCodec,
  compactExtentsFit,
  packCompactExtent,
  packExtent,
} from '../pool/codecs.ts';
import type { Extent } from '../pool/ranges.ts';

const COMPACT_CAPACITY = compactNodeCapacity(COMPACT_EXTENT_VALUE_SIZE_BYTES);
const WIDE_CAPACITY = nodeCapacity(EXTENT_VALUE_SIZE_BYTES);
const COMPACT_KEY_SPAN_MAX = 0xffff_ffff;

/** The extremes of a run of entries, which decide whether they fit one compact leaf. */
interface Bounds {
  dataMin: number;
  dataMax: number;
  lengthMax: number;
  timeMin: number;
  timeMax: number;
}

export class MappingTreeBuilder {
  readonly #tm: TransactionManager;
  readonly #tree: BottomUpTree;
  // Entries not yet written: the leaf held back [0, #openStart) and the open leaf [#openStart, #count).
  readonly #keys = new Float64Array(2 * COMPACT_CAPACITY);
  readonly #dataBlocks = new Float64Array(2 * COMPACT_CAPACITY);
  readonly #lengths = new Float64Array(2 * COMPACT_CAPACITY);
  readonly #times = new Float64Array(2 * COMPACT_CAPACITY);
  #count = 0;
  #openStart = 0;
  #heldCompact = false;
  /** Whether the open leaf is compact (its entries fit #bounds' bases) or wide. */
  #openCompact = true;
  readonly #bounds: Bounds = { dataMin: 0, dataMax: 0, lengthMax: 0, timeMin: 0, timeMax: 0 };
  readonly #codec = compactExtentCodec(() => Number.MAX_SAFE_INTEGER);
  readonly #scratch: Extent = { dataBlock: 0, lengthBlocks: 1, time: 0 };

  constructor(tm: TransactionManager) {
    this.#tm = tm;
    this.#tree = new BottomUpTree(tm, MAPPING_TREE_KIND);
  }

  /**
   * Adds an extent (valid: the caller checked it against the data space and the extent length
   * limit) whose key lies above every key added before.
   */
  append(key: number, dataBlock: number, lengthBlocks: number, time: number): void {
    const openCount = this.#count - this.#openStart;
    if (openCount === 0) {
      this.#startOpen(dataBlock, lengthBlocks, time);
    } else if (this.#openCompact) {
      const bounds = this.#bounds;
      const dataMin = Math.min(bounds.dataMin, dataBlock);
      const dataMax = Math.max(bounds.dataMax, dataBlock);
      const lengthMax = Math.max(bounds.lengthMax, lengthBlocks);
      const timeMin = Math.min(bounds.timeMin, time);
      const timeMax = Math.max(bounds.timeMax, time);
      const fits = key - this.#keys[this.#openStart]! <= COMPACT_KEY_SPAN_MAX && compactExtentsFit(dataMin, dataMax, lengthMax, timeMin, timeMax);
      if (fits && openCount < COMPACT_CAPACITY) {
        bounds.dataMin = dataMin;
        bounds.dataMax = dataMax;
        bounds.lengthMax = lengthMax;
        bounds.timeMin = timeMin;
        bounds.timeMax = timeMax;
      } else if (!fits && openCount < WIDE_CAPACITY) {
        this.#openCompact = false;
      } else {
        this.#closeOpen();
        this.#startOpen(dataBlock, lengthBlocks, time);
      }
    } else if (openCount === WIDE_CAPACITY) {
      this.#closeOpen();
      this.#startOpen(dataBlock, lengthBlocks, time);
    }
    const index = this.#count;
    this.#keys[index] = key;
    this.#dataBlocks[index] = dataBlock;
    this.#lengths[index] = lengthBlocks;
    this.#times[index] = time;
    this.#count = index + 1;
  }

  /** Leaves written so far. */
  get leafCount(): number {
    return this.#tree.leafCount;
  }

  /** Writes what is held and the internal levels; returns the root (an empty leaf for no entries). */
  finish(): number {
    const openCount = this.#count - this.#openStart;
    if (this.#openStart > 0 && openCount > 0 && openCount < Math.floor((this.#openCompact ? COMPACT_CAPACITY : WIDE_CAPACITY) / 3)) this.#evenOut();
    if (this.#openStart > 0) this.#writeLeaf(0, this.#openStart, this.#heldCompact);
    if (this.#count > this.#openStart) this.#writeLeaf(this.#openStart, this.#count, this.#openCompact);
    this.#count = 0;
    this.#openStart = 0;
    if (this.#tree.leafCount === 0) this.#writeLeaf(0, 0, true);
    return this.#tree.finish();
  }

  #startOpen(dataBlock: number, lengthBlocks: number, time: number): void {
    const bounds = this.#bounds;
    bounds.dataMin = dataBlock;
    bounds.dataMax = dataBlock;
    bounds.lengthMax = lengthBlocks;
    bounds.timeMin = time;
    bounds.timeMax = time;
    this.#openCompact = compactExtentsFit(dataBlock, dataBlock, lengthBlocks, time, time);
  }

  /** The open leaf is full: the held one is written and the open one held in its place. */
  #closeOpen(): void {
    if (this.#openStart > 0) this.#writeLeaf(0, this.#openStart, this.#heldCompact);
    const openCount = this.#count - this.#openStart;
    this.#keys.copyWithin(0, this.#openStart, this.#count);
    this.#dataBlocks.copyWithin(0, this.#openStart, this.#count);
    this.#lengths.copyWithin(0, this.#openStart, this.#count);
    this.#times.copyWithin(0, this.#openStart, this.#count);
    this.#heldCompact = this.#openCompact;
    this.#count = openCount;
    this.#openStart = openCount;
  }

  /** Moves entries from the held leaf to the short last one, if both still fit a layout after. */
  #evenOut(): void {
    const split = Math.floor(this.#count / 2);
    const heldLayout = this.#layoutOf(0, split);
    const openLayout = this.#layoutOf(split, this.#count);
    if (heldLayout === undefined || openLayout === undefined) return;
    this.#heldCompact = heldLayout === NodeLayout.compact;
    this.#openCompact = openLayout === NodeLayout.compact;
    this.#openStart = split;
  }

  /** The layout that holds entries [begin, end) in one leaf, compact if it can be; undefined if none does. */
  #layoutOf(begin: number, end: number): NodeLayout | undefined {
    const count = end - begin;
    if (count <= COMPACT_CAPACITY && this.#keys[end - 1]! - this.#keys[begin]! <= COMPACT_KEY_SPAN_MAX) {
      const bounds = this.#boundsOf(begin, end);
      if (compactExtentsFit(bounds.dataMin, bounds.dataMax, bounds.lengthMax, bounds.timeMin, bounds.timeMax)) return NodeLayout.compact;
    }
    return count <= WIDE_CAPACITY ? NodeLayout.wide : undefined;
  }

  #boundsOf(begin: number, end: number): Bounds {
    const bounds: Bounds = { dataMin: Infinity, dataMax: 0, lengthMax: 0, timeMin: Infinity, timeMax: 0 };
    for (let index = begin; index < end; index++) {
      const dataBlock = this.#dataBlocks[index]!;
      const time = this.#times[index]!;
      if (dataBlock < bounds.dataMin) bounds.dataMin = dataBlock;
      if (dataBlock > bounds.dataMax) bounds.dataMax = dataBlock;
      if (this.#lengths[index]! > bounds.lengthMax) bounds.lengthMax = this.#lengths[index]!;
      if (time < bounds.timeMin) bounds.timeMin = time;
      if (time > bounds.timeMax) bounds.timeMax = time;
    }
    return bounds;
  }

  /** Writes entries [begin, end) into a new leaf block (compact: they fit one set of bases). */
  #writeLeaf(begin: number, end: number, compact: boolean): void {
    const block: Block = this.#tm.allocate(BlockType.btreeLeaf);
    const count = end - begin;
    const view = block.view;
    if (compact) {
      initNode(block, MAPPING_TREE_KIND, 0, COMPACT_EXTENT_VALUE_SIZE_BYTES, NodeLayout.compact);
      const keyBase = count === 0 ? 0 : this.#keys[begin]!;
      setCompactKeyBase(block, keyBase);
      const bounds = this.#boundsOf(begin, end);
      // The shared encoder picks the bases from the extremes (every entry lies between them).
      const extremes: Extent[] =
        count === 0
          ? []
          : [
              { dataBlock: bounds.dataMin, lengthBlocks: bounds.lengthMax, time: bounds.timeMin },
              { dataBlock: bounds.dataMax, lengthBlocks: 1, time: bounds.timeMax },
            ];
      const fitted = this.#codec.chooseBases(extremes, view, CompactLeaf.valueBasesOffset);
      assert(fitted, 'compact leaf entries do not fit their bases');
      const dataBase = count === 0 ? 0 : Number(view.getBigUint64(CompactLeaf.valueBasesOffset, true));
      const timeBase = view.getUint32(CompactLeaf.valueBasesOffset + 8, true);
      setEntryCount(block, count);
      const valuesOffset = valueOffset(block, 0);
      for (let index = 0; index < count; index++) {
        const entry = begin + index;
        view.setUint32(CompactLeaf.keysOffset + 4 * index, this.#keys[entry]! - keyBase, true);
        packCompactExtent(view, valuesOffset + COMPACT_EXTENT_VALUE_SIZE_BYTES * index, this.#dataBlocks[entry]! - dataBase, this.#lengths[entry]!, this.#times[entry]! - timeBase);
      }
    } else {
      initNode(block, MAPPING_TREE_KIND, 0, EXTENT_VALUE_SIZE_BYTES, NodeLayout.wide);
      setEntryCount(block, count);
      const scratch = this.#scratch;
      for (let index = 0; index < count; index++) {
        const entry = begin + index;
        setKey(block, index, this.#keys[entry]!);
        scratch.dataBlock = this.#dataBlocks[entry]!;
        scratch.lengthBlocks = this.#lengths[entry]!;
        scratch.time = this.#times[entry]!;
        packExtent(scratch, view, valueOffset(block, index));
      }
    }
    this.#tree.addLeaf(count === 0 ? 0 : this.#keys[begin]!, block);
  }
}
