// Building a tree bottom-up from leaves written in key order (restore writes every leaf of a
// volume's mapping tree that way): the caller writes each leaf whole and hands its first key here;
// finish() lays the internal levels over them, each node as full as an even split allows, so no
// node but the root holds less than half of capacity (F-NODE-3 asks a third). Inserting entries
// one by one would shadow, split and re-encode leaves all along, and leave them half full.
import { BTREE_DEPTH_MAX } from '../../constants.ts';
import { assert } from '../../errors.ts';
import { BlockType, type Block } from '../block.ts';
import type { BlockManager } from '../block-manager.ts';
import { doubled } from '../../util/typed-array.ts';
import { CHILD_VALUE_BYTES, initNode, nodeCapacity, setChild, setEntryCount, setKey } from './node.ts';

/** The children of one level, in key order: first key, block number, transaction that wrote it. */
class ChildList {
  keys = new Float64Array(256);
  blockNrs = new Float64Array(256);
  transactionIds = new Float64Array(256);
  length = 0;

  push(key: number, blockNr: number, transactionId: number): void {
    if (this.length === this.keys.length) {
      this.keys = doubled(this.keys);
      this.blockNrs = doubled(this.blockNrs);
      this.transactionIds = doubled(this.transactionIds);
    }
    this.keys[this.length] = key;
    this.blockNrs[this.length] = blockNr;
    this.transactionIds[this.length] = transactionId;
    this.length += 1;
  }
}

export class BottomUpTree {
  readonly #tm: BlockManager;
  readonly #treeKind: number;
  #leaves = new ChildList();
  #lastKey = -1;

  constructor(tm: BlockManager, treeKind: number) {
    this.#tm = tm;
    this.#treeKind = treeKind;
  }

  /** Leaves handed in so far. */
  get leafCount(): number {
    return this.#leaves.length;
  }

  /** A leaf written whole, every key of it above those of the leaves before (its first key given). */
  addLeaf(firstKey: number, leaf: Block): void {
    if (!(firstKey > this.#lastKey)) assert(false, `bottom-up tree: leaf keys must ascend (${firstKey} after ${this.#lastKey})`);
    this.#lastKey = firstKey;
    this.#leaves.push(firstKey, leaf.blockNr, leaf.transactionId);
  }

  /**
   * Writes the internal nodes and returns the root (the one leaf itself when there is one). There
   * must be at least one leaf. Needs ceil(leaves / (capacity − 1)) blocks or so: the caller makes room.
   */
  finish(): number {
    let children = this.#leaves;
    assert(children.length > 0, 'bottom-up tree: no leaves');
    const capacity = nodeCapacity(CHILD_VALUE_BYTES);
    for (let level = 1; children.length > 1; level++) {
      // 168 children a node: 2^53 keys need 8 levels.
      if (!(level < BTREE_DEPTH_MAX)) assert(false, `bottom-up tree: more than ${BTREE_DEPTH_MAX} levels`);
      const parents = new ChildList();
      const nodeCount = Math.ceil(children.length / capacity);
      let first = 0;
      for (let node = 0; node < nodeCount; node++) {
        // Even split: the first (length mod nodeCount) nodes take one more child.
        const count = Math.floor(children.length / nodeCount) + (node < children.length % nodeCount ? 1 : 0);
        const block = this.#tm.allocate(BlockType.btreeInternal);
        initNode(block, this.#treeKind, level, CHILD_VALUE_BYTES);
        setEntryCount(block, count);
        for (let index = 0; index < count; index++) {
          setKey(block, index, children.keys[first + index]!);
          setChild(block, index, children.blockNrs[first + index]!, children.transactionIds[first + index]!);
        }
        parents.push(children.keys[first]!, block.blockNr, block.transactionId);
        first += count;
      }
      children = parents;
    }
    return children.blockNrs[0]!;
  }
}
