// One generic copy-on-write B+tree with u64 keys (JavaScript numbers below 2^53) and fixed-size
// values packed by a ValueCodec. Roots are metadata block numbers; every change returns the new
// root, because a change shadows (copies) the path from the root to the leaf unless those nodes
// are already private to the open transaction.
//
// Reference counting follows dm-thin: a node's count is the number of references to it, from
// parent nodes or from owners of a root (the layer above: a device tree entry, a snapshot). So a
// snapshot is retainTree(root), O(1). Shadowing a node whose count is > 1 makes a private copy
// whose children (or, in a leaf, whatever the values reference) gain one reference each.
//
// Internal node keys are lower bounds: key[i] <= every key under child[i] < key[i+1]. A removal
// may leave key[i] below the child's smallest key; that is still a valid bound.
//
// Tree operations are synchronous (misses read with readSync); recursion depth is bounded by the
// node levels, which are validated to decrease by one per step from a root below BTREE_DEPTH_MAX.
import { BTREE_DEPTH_MAX, METADATA_BLOCK_SIZE_BYTES } from '../../constants.ts';
import { ThinError, assert } from '../../errors.ts';
import { BTREE_BLOCK_TYPES, BlockType, type Block } from '../block.ts';
import type { BlockManager } from '../block-manager.ts';
import type { LeafColumns, LeafColumnsReader, ValueCodec } from './codec.ts';
import {
  CHILD_VALUE_BYTES,
  NODE_VALUE_BYTES_MAX,
  capacityOf,
  ceilingIndex,
  checkNodeFromDisk,
  childAt,
  childTransactionIdAt,
  copyEntries,
  entryCount,
  floorIndex,
  initNode,
  isLeaf,
  keyAt,
  compactNodeCapacity,
  isCompact,
  nodeCapacity,
  nodeEntriesMin,
  nodeLevel,
  nodeProblem,
  nodeTreeKind,
  openGap,
  removeAt,
  setChild,
  setEntryCount,
  setKey,
  shiftEntries,
  valueSizeOf,
  NodeLayout,
} from './node.ts';
import { checkLeafValues, leafEntries, leafEntryFits, leafValueAt, planLeaf, setLeafEntry, setLeafValue, writeLeaf } from './leaf.ts';

interface Split {
  key: number;
  blockNr: number;
  transactionId: number;
}

interface Frame {
  block: Block;
  index: number;
  keyBegin: number | undefined;
  keyEnd: number | undefined;
}

export class BTree<V> {
  readonly tm: BlockManager;
  readonly codec: ValueCodec<V>;

  constructor(tm: BlockManager, codec: ValueCodec<V>) {
    if (!(codec.treeKind >= 1 && codec.treeKind <= 0xffff)) assert(false, `bad tree kind ${codec.treeKind}`);
    if (!(codec.sizeBytes >= 1 && codec.sizeBytes <= NODE_VALUE_BYTES_MAX)) assert(false, `bad value size ${codec.sizeBytes}`);
    if (codec.compact !== undefined) {
      // A leaf and one more entry must split into two halves that each fit a wide leaf (the
      // layout any values fit): #rewriteLeaf relies on it.
      const compactCapacity = compactNodeCapacity(codec.compact.sizeBytes);
      if (!(compactCapacity + 1 <= 2 * nodeCapacity(codec.sizeBytes))) assert(false, `compact capacity ${compactCapacity} too large`);
    }
    this.tm = tm;
    this.codec = codec;
  }

  /** A new empty tree (one empty leaf, count 1, owned by the caller). */
  createEmpty(): number {
    const block = this.tm.allocate(BlockType.btreeLeaf);
    writeLeaf(block, [], planLeaf([], this.codec)!, this.codec);
    return block.blockNr;
  }

  lookup(root: number, key: number): V | undefined {
    const found = this.#findLeafEntry(root, key);
    return found === undefined ? undefined : this.#valueAt(found.block, found.index);
  }

  has(root: number, key: number): boolean {
    return this.#findLeafEntry(root, key) !== undefined;
  }

  /** The entry with the greatest key <= key. */
  floor(root: number, key: number): [number, V] | undefined {
    for (const entry of this.#backward(root, key)) return entry;
    return undefined;
  }

  /** The entry with the least key >= key. */
  ceiling(root: number, key: number): [number, V] | undefined {
    for (const entry of this.#forward(root, key)) return entry;
    return undefined;
  }

  /**
   * Entries with beginKey <= key < endKey, ascending. Lazy: the tree must not be changed while
   * an iteration is in progress (collect first, then change).
   */
  *entries(root: number, beginKey = 0, endKey = Number.MAX_SAFE_INTEGER + 1): Generator<[number, V]> {
    for (const entry of this.#forward(root, beginKey)) {
      if (entry[0] >= endKey) return;
      yield entry;
    }
  }

  /**
   * Every leaf in key order, decoded whole into `columns` by `reader` (which must read this tree's
   * values): the same columns object is yielded once per leaf, refilled each time; a value the
   * reader refuses is named as entries() would name it. For the tools that read each node once
   * (dump, delta): a node not in memory is read into one buffer per level
   * instead of into the manager's cache, and the leaves under a node are read together
   * (BlockManager.readInto and prefetch). The same laziness rule as entries().
   */
  *leavesReadOnce<C extends LeafColumns>(root: number, reader: LeafColumnsReader<C>, columns: C): Generator<C> {
    const buffers: Uint8Array[] = [];
    for (let index = 0; index <= BTREE_DEPTH_MAX; index++) buffers.push(new Uint8Array(METADATA_BLOCK_SIZE_BYTES));
    for (const { block, keyBegin, keyEnd } of this.#leaves(root, 0, buffers, false)) {
      if (!reader.read(block, columns)) {
        checkLeafValues(block, this.codec, keyBegin, keyEnd);
        assert(false, `leaf ${block.blockNr}: the column reader refused a value its codec accepts`);
      }
      yield columns;
    }
  }

  /** Entries with key <= key, descending (the same laziness rule as entries()). */
  *entriesDescending(root: number, key = Number.MAX_SAFE_INTEGER): Generator<[number, V]> {
    yield* this.#backward(root, key);
  }

  /**
   * Sets key's value and returns the new root. An existing value is overwritten without
   * codec.retain/release: the caller owns value semantics.
   */
  insert(root: number, key: number, value: V): number {
    assertKey(key);
    const rootBlock = this.#readNode(root, undefined, undefined, undefined);
    // Worst case: shadow every level, split every level, add a root.
    this.tm.ensureMetadataSpace(2 * (nodeLevel(rootBlock) + 1) + 1);
    return this.#changing(() => this.#insertRoot(root, key, value));
  }

  #insertRoot(root: number, key: number, value: V): number {
    const node = this.#shadow(root, undefined);
    const split = this.#insertInto(node, key, value, true);
    if (split === undefined) return node.blockNr;
    const newRoot = this.tm.allocate(BlockType.btreeInternal);
    initNode(newRoot, this.codec.treeKind, nodeLevel(node) + 1, CHILD_VALUE_BYTES);
    assert(nodeLevel(newRoot) < BTREE_DEPTH_MAX, 'B+tree grew past its depth limit');
    setEntryCount(newRoot, 2);
    setKey(newRoot, 0, keyAt(node, 0));
    setChild(newRoot, 0, node.blockNr, node.transactionId);
    setKey(newRoot, 1, split.key);
    setChild(newRoot, 1, split.blockNr, split.transactionId);
    return newRoot.blockNr;
  }

  /** Removes key (a no-op when absent) and returns the new root. The value is not released. */
  remove(root: number, key: number): number {
    assertKey(key);
    if (!this.has(root, key)) return root;
    const rootBlock = this.#readNode(root, undefined, undefined, undefined);
    // Worst case: shadow every level and a sibling at each.
    this.tm.ensureMetadataSpace(2 * (nodeLevel(rootBlock) + 1));
    return this.#changing(() => this.#removeRoot(root, key));
  }

  #removeRoot(root: number, key: number): number {
    const node = this.#shadow(root, undefined);
    this.#removeFrom(node, key);
    let current = node;
    // An internal root with one child hands its place to the child.
    while (!isLeaf(current) && entryCount(current) === 1) {
      const child = childAt(current, 0);
      const childTransactionId = childTransactionIdAt(current, 0);
      this.tm.inc(child);
      this.#release(current.blockNr);
      current = this.#readNode(child, nodeLevel(current) - 1, undefined, undefined, childTransactionId);
    }
    return current.blockNr;
  }

  /** One more owner of the tree (a snapshot): O(1). */
  retainTree(root: number): void {
    this.tm.inc(root);
  }

  /**
   * One owner fewer. Nodes whose count reaches 0 are freed; their children lose a reference, and
   * the values of freed leaves go to codec.release.
   */
  releaseTree(root: number): void {
    this.tm.ensureMetadataSpace(0);
    this.#changing(() => this.#release(root));
  }

  /**
   * The transaction that wrote the root node. An owner that stores it beside the root (as parents
   * do for children, F-NODE-6) can later detect a stale root with verifyRoot: a lost or
   * misdirected write leaves an older, valid block that its own header cannot betray.
   */
  rootTransactionId(root: number): number {
    return this.#readNode(root, undefined, undefined, undefined).transactionId;
  }

  /** Throws THIN_CORRUPT_BLOCK unless the root node was written by transactionId. */
  verifyRoot(root: number, transactionId: number): void {
    this.#readNode(root, undefined, undefined, undefined, transactionId);
  }

  /** Levels of the tree at root (1 for a lone leaf). */
  depth(root: number): number {
    return nodeLevel(this.#readNode(root, undefined, undefined, undefined)) + 1;
  }

  /**
   * Runs a change that may fail half way (a nested allocation, a corrupt node, a codec callback):
   * a half-changed tree must never be committed, so the failure abandons the transaction.
   */
  #changing<T>(change: () => T): T {
    try {
      return change();
    } catch (error) {
      this.tm.markFailed(error);
      throw error;
    }
  }

  #release(root: number): void {
    const stack: Array<{ blockNr: number; level: number | undefined; transactionId: number | undefined }> = [
      { blockNr: root, level: undefined, transactionId: undefined },
    ];
    while (stack.length > 0) {
      const { blockNr, level, transactionId } = stack.pop()!;
      const node = this.#readNode(blockNr, level, undefined, undefined, transactionId);
      this.tm.dec(blockNr);
      if (this.tm.refCount(blockNr) > 0) continue;
      const count = entryCount(node);
      if (isLeaf(node)) {
        const release = this.codec.release;
        if (release !== undefined) {
          for (let index = 0; index < count; index++) release.call(this.codec, this.#valueAt(node, index));
        }
      } else {
        const childLevel = nodeLevel(node) - 1;
        for (let index = count - 1; index >= 0; index--) {
          stack.push({ blockNr: childAt(node, index), level: childLevel, transactionId: childTransactionIdAt(node, index) });
        }
      }
    }
  }

  /** Number of entries (walks every leaf: for tests and tools). */
  countEntries(root: number): number {
    let count = 0;
    for (const _ of this.#forward(root, 0)) count++;
    return count;
  }

  // ---- reading ----

  /**
   * Reads and validates a node. The full check (every key, child and value) runs once per block
   * load; the per-visit check of level and key bounds is cheap and catches a node reachable from
   * two places that disagree.
   */
  #readNode(
    blockNr: number,
    level: number | undefined,
    keyBegin: number | undefined,
    keyEnd: number | undefined,
    transactionId?: number,
    scratch?: Uint8Array,
    checkValues = true,
  ): Block {
    const types = level === undefined ? BTREE_BLOCK_TYPES : level === 0 ? BlockType.btreeLeaf : BlockType.btreeInternal;
    const block = scratch === undefined ? this.tm.read(blockNr, types, transactionId) : this.tm.readInto(blockNr, types, transactionId, scratch);
    if (transactionId !== undefined && block.transactionId !== transactionId) throw staleChild(block, transactionId);
    const expect = {
      treeKind: this.codec.treeKind,
      leafValueSizeBytes: this.codec.sizeBytes,
      compactValueSizeBytes: this.codec.compact?.sizeBytes,
      level,
      keyBegin,
      keyEnd,
      metadataBlockCount: this.tm.metadataBlockCount,
    };
    if (block.checkedTreeKind !== this.codec.treeKind) {
      checkNodeFromDisk(block, expect);
      if (!checkValues && isLeaf(block)) return block; // not marked checked: its values are the caller's to check
      if (isLeaf(block)) checkLeafValues(block, this.codec, keyBegin, keyEnd);
      block.checkedTreeKind = this.codec.treeKind;
      return block;
    }
    const nodeLevelFound = nodeLevel(block);
    const count = entryCount(block);
    if (
      (level !== undefined && nodeLevelFound !== level) ||
      (count > 0 && keyBegin !== undefined && keyAt(block, 0) < keyBegin) ||
      (count > 0 && keyEnd !== undefined && keyAt(block, count - 1) >= keyEnd)
    ) {
      checkNodeFromDisk(block, expect); // throws with the precise problem
    }
    return block;
  }

  #valueAt(block: Block, index: number): V {
    return leafValueAt(block, index, this.codec);
  }

  /** `buffers`: read once (leavesReadOnce), into the buffer of the child's level. */
  #childFrame(parent: Frame, index: number, buffers?: Uint8Array[], checkValues = true): Frame {
    const node = parent.block;
    const keyBegin = keyAt(node, index);
    const keyEnd = index + 1 < entryCount(node) ? keyAt(node, index + 1) : parent.keyEnd;
    const level = nodeLevel(node) - 1;
    const block = this.#readNode(childAt(node, index), level, keyBegin, keyEnd, childTransactionIdAt(node, index), buffers?.[level], checkValues);
    if (buffers !== undefined) this.#prefetchLeaves(block);
    return { block, index: 0, keyBegin, keyEnd };
  }

  /** For a read-once walk: the leaves below a level-1 node are read next, one after another. */
  #prefetchLeaves(block: Block): void {
    if (nodeLevel(block) !== 1) return;
    const children: number[] = [];
    for (let index = 0; index < entryCount(block); index++) children.push(childAt(block, index));
    this.tm.prefetch(children);
  }

  #findLeafEntry(root: number, key: number): { block: Block; index: number } | undefined {
    let frame: Frame = { block: this.#readNode(root, undefined, undefined, undefined), index: 0, keyBegin: undefined, keyEnd: undefined };
    while (!isLeaf(frame.block)) {
      const index = floorIndex(frame.block, key);
      if (index < 0) return undefined;
      frame = this.#childFrame(frame, index);
    }
    const index = ceilingIndex(frame.block, key);
    if (index < entryCount(frame.block) && keyAt(frame.block, index) === key) return { block: frame.block, index };
    return undefined;
  }

  /** Entries with key >= key, ascending; `buffers` as #leaves. */
  *#forward(root: number, key: number, buffers?: Uint8Array[]): Generator<[number, V]> {
    for (const { block } of this.#leaves(root, key, buffers, true)) {
      const count = entryCount(block);
      for (let index = ceilingIndex(block, key); index < count; index++) yield [keyAt(block, index), this.#valueAt(block, index)];
    }
  }

  /**
   * The leaves that may hold keys >= key, in key order. `buffers`: read each node once
   * (leavesReadOnce): one buffer per level, the root's last, so a leaf yielded is valid until the
   * next is asked for. `checkValues` false: the caller validates the leaf's values itself.
   */
  *#leaves(root: number, key: number, buffers: Uint8Array[] | undefined, checkValues: boolean): Generator<Frame> {
    const rootBlock = this.#readNode(root, undefined, undefined, undefined, undefined, buffers?.[BTREE_DEPTH_MAX], checkValues);
    if (buffers !== undefined) this.#prefetchLeaves(rootBlock);
    const stack: Frame[] = [{ block: rootBlock, index: 0, keyBegin: undefined, keyEnd: undefined }];
    // Descend towards key.
    for (;;) {
      const top = stack[stack.length - 1]!;
      if (isLeaf(top.block)) break;
      top.index = Math.max(floorIndex(top.block, key), 0);
      stack.push(this.#childFrame(top, top.index, buffers, checkValues));
    }
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (isLeaf(top.block)) {
        yield top;
        stack.pop();
        continue;
      }
      // Back at an internal node: its child at top.index is done.
      top.index += 1;
      if (top.index >= entryCount(top.block)) {
        stack.pop();
        continue;
      }
      stack.push(this.#childFrame(top, top.index, buffers, checkValues));
      // Descend to the leftmost leaf below.
      for (;;) {
        const last = stack[stack.length - 1]!;
        if (isLeaf(last.block)) break;
        last.index = 0;
        stack.push(this.#childFrame(last, 0, buffers, checkValues));
      }
    }
  }

  *#backward(root: number, key: number): Generator<[number, V]> {
    const stack: Frame[] = [{ block: this.#readNode(root, undefined, undefined, undefined), index: 0, keyBegin: undefined, keyEnd: undefined }];
    for (;;) {
      const top = stack[stack.length - 1]!;
      top.index = floorIndex(top.block, key);
      if (isLeaf(top.block)) break;
      if (top.index < 0) return; // every key is above key
      stack.push(this.#childFrame(top, top.index));
    }
    while (stack.length > 0) {
      const top = stack[stack.length - 1]!;
      if (isLeaf(top.block)) {
        if (top.index >= 0) {
          const index = top.index--;
          yield [keyAt(top.block, index), this.#valueAt(top.block, index)];
          continue;
        }
        stack.pop();
        continue;
      }
      top.index -= 1;
      if (top.index < 0) {
        stack.pop();
        continue;
      }
      stack.push(this.#childFrame(top, top.index));
      for (;;) {
        const last = stack[stack.length - 1]!;
        last.index = entryCount(last.block) - 1;
        if (isLeaf(last.block)) break;
        stack.push(this.#childFrame(last, last.index));
      }
    }
  }

  // ---- changing ----

  /** Makes blockNr private to the open transaction; a copy of a shared node retains what it references. */
  #shadow(blockNr: number, level: number | undefined, transactionId?: number): Block {
    const original = this.#readNode(blockNr, level, undefined, undefined, transactionId);
    const { block, wasShared } = this.tm.shadow(blockNr, original.type);
    block.checkedTreeKind = this.codec.treeKind;
    if (wasShared) {
      const count = entryCount(block);
      if (isLeaf(block)) {
        const retain = this.codec.retain;
        if (retain !== undefined) {
          for (let index = 0; index < count; index++) retain.call(this.codec, this.#valueAt(block, index));
        }
      } else {
        for (let index = 0; index < count; index++) this.tm.inc(childAt(block, index));
      }
    }
    if (block.blockNr !== blockNr && isLeaf(block) && !isCompact(block) && this.codec.compact !== undefined) {
      // A wide leaf copied into this transaction (written by an older build, or holding values
      // that once did not fit) is rewritten compact when its entries now fit one: pools of format
      // version 3 and older become compact where they change.
      const entries = leafEntries(block, this.codec);
      const plan = planLeaf(entries, this.codec);
      if (plan !== undefined && plan.layout === NodeLayout.compact) writeLeaf(block, entries, plan, this.codec);
    }
    return block;
  }

  /** Shadows child `index` of the private node `parent` and points parent at the copy. */
  #shadowChild(parent: Block, index: number): Block {
    const childBlockNr = childAt(parent, index);
    const child = this.#shadow(childBlockNr, nodeLevel(parent) - 1, childTransactionIdAt(parent, index));
    if (child.blockNr !== childBlockNr) setChild(parent, index, child.blockNr, child.transactionId);
    return child;
  }

  /** `rightmost`: node is the last at its level, so a key past its last entry is an append. */
  #insertInto(node: Block, key: number, value: V, rightmost: boolean): Split | undefined {
    if (isLeaf(node)) {
      const index = ceilingIndex(node, key);
      const exists = index < entryCount(node) && keyAt(node, index) === key;
      const codec = this.codec;
      if (codec.compact !== undefined) {
        if (leafEntryFits(node, key, value, codec)) {
          if (exists) {
            setLeafValue(node, index, value, codec);
            return undefined;
          }
          if (entryCount(node) < capacityOf(node)) {
            openGap(node, index);
            setLeafEntry(node, index, key, value, codec);
            return undefined;
          }
        }
        return this.#rewriteLeaf(node, index, exists, key, value, rightmost);
      }
      if (exists) {
        setLeafValue(node, index, value, codec);
        return undefined;
      }
      return this.#insertEntry(node, index, key, rightmost, (block, at) => setLeafValue(block, at, value, codec));
    }
    let index = floorIndex(node, key);
    if (index < 0) {
      index = 0;
      setKey(node, 0, key); // key[0] stays a lower bound of everything under child 0
    }
    const child = this.#shadowChild(node, index);
    const split = this.#insertInto(child, key, value, rightmost && index === entryCount(node) - 1);
    if (split === undefined) return undefined;
    return this.#insertEntry(node, index + 1, split.key, rightmost, (block, at) => setChild(block, at, split.blockNr, split.transactionId));
  }

  /**
   * Inserts an entry at index, splitting a full node in two; returns the new right sibling if any.
   * An append to the last node of its level (keys arriving in ascending order: a restore, a volume
   * written from start to end) leaves the full node full and starts the sibling with the new entry
   * alone, so such trees are built with full nodes rather than half-full ones. Elsewhere the node
   * splits in halves, which leaves room on both sides for keys arriving in any order.
   */
  #insertEntry(
    node: Block,
    index: number,
    key: number,
    rightmost: boolean,
    writeValue: (block: Block, index: number) => void,
  ): Split | undefined {
    const count = entryCount(node);
    if (count < capacityOf(node)) {
      openGap(node, index);
      setKey(node, index, key);
      writeValue(node, index);
      return undefined;
    }
    const right = this.tm.allocate(node.type);
    initNode(right, this.codec.treeKind, nodeLevel(node), valueSizeOf(node));
    const half = rightmost && index === count ? count : count >>> 1;
    copyEntries(node, half, right, 0, count - half);
    setEntryCount(right, count - half);
    setEntryCount(node, half);
    if (index <= half && half < count) {
      openGap(node, index);
      setKey(node, index, key);
      writeValue(node, index);
    } else {
      openGap(right, index - half);
      setKey(right, index - half, key);
      writeValue(right, index - half);
    }
    return { key: keyAt(right, 0), blockNr: right.blockNr, transactionId: right.transactionId };
  }

  /**
   * A leaf of a tree with compact leaves that cannot take the entry in place (full, or a compact
   * leaf whose bases are too far from it): its entries and the new one are laid out again, in one
   * leaf when they fit one (compact when they can be), else in two. The halves always fit, wide at
   * worst (checked in the constructor). An append to the last leaf keeps the old entries together,
   * as #insertEntry does.
   */
  #rewriteLeaf(node: Block, index: number, exists: boolean, key: number, value: V, rightmost: boolean): Split | undefined {
    const codec = this.codec;
    const entries = leafEntries(node, codec);
    if (exists) entries[index] = [key, value];
    else entries.splice(index, 0, [key, value]);
    const whole = planLeaf(entries, codec);
    if (whole !== undefined) {
      writeLeaf(node, entries, whole, codec);
      return undefined;
    }
    let half = entries.length >>> 1;
    if (rightmost && !exists && index === entries.length - 1 && planLeaf(entries.slice(0, -1), codec) !== undefined) half = entries.length - 1;
    const leftEntries = entries.slice(0, half);
    const rightEntries = entries.slice(half);
    const leftPlan = planLeaf(leftEntries, codec);
    const rightPlan = planLeaf(rightEntries, codec);
    if (leftPlan === undefined || rightPlan === undefined) assert(false, `${entries.length} leaf entries do not fit two leaves`);
    const right = this.tm.allocate(BlockType.btreeLeaf);
    writeLeaf(node, leftEntries, leftPlan, codec);
    writeLeaf(right, rightEntries, rightPlan, codec);
    return { key: rightEntries[0]![0], blockNr: right.blockNr, transactionId: right.transactionId };
  }

  #removeFrom(node: Block, key: number): void {
    if (isLeaf(node)) {
      const index = ceilingIndex(node, key);
      if (!(index < entryCount(node) && keyAt(node, index) === key)) assert(false, `key ${key} vanished during remove`);
      removeAt(node, index);
      return;
    }
    const index = floorIndex(node, key);
    if (!(index >= 0)) assert(false, `key ${key} is below every key of node ${node.blockNr} yet was found`);
    const child = this.#shadowChild(node, index);
    this.#removeFrom(child, key);
    if (entryCount(child) < nodeEntriesMin(child)) this.#rebalance(node, index, child);
  }

  /** Child `index` of the private node `parent` is underfull: merge it with a sibling or even them out. */
  #rebalance(parent: Block, index: number, child: Block): void {
    if (entryCount(parent) < 2) return; // a root with one child; remove() collapses it
    let leftIndex: number;
    let left: Block;
    let right: Block;
    if (index > 0) {
      leftIndex = index - 1;
      left = this.#shadowChild(parent, leftIndex);
      right = child;
    } else {
      leftIndex = index;
      left = child;
      right = this.#shadowChild(parent, index + 1);
    }
    if (isLeaf(left) && this.codec.compact !== undefined) {
      this.#rebalanceLeaves(parent, leftIndex, left, right);
      return;
    }
    const leftCount = entryCount(left);
    const rightCount = entryCount(right);
    const total = leftCount + rightCount;
    const capacity = capacityOf(left);
    if (total <= capacity - Math.floor(capacity / 4)) {
      // Merge right into left; right's references now belong to left, so right is freed without release.
      copyEntries(right, 0, left, leftCount, rightCount);
      setEntryCount(left, total);
      removeAt(parent, leftIndex + 1);
      this.tm.dec(right.blockNr);
      return;
    }
    const leftTarget = total >>> 1;
    if (leftCount > leftTarget) {
      const moved = leftCount - leftTarget;
      shiftEntries(right, 0, moved, rightCount);
      setEntryCount(right, rightCount + moved);
      copyEntries(left, leftTarget, right, 0, moved);
      setEntryCount(left, leftTarget);
    } else if (leftCount < leftTarget) {
      const moved = leftTarget - leftCount;
      copyEntries(right, 0, left, leftCount, moved);
      setEntryCount(left, leftTarget);
      shiftEntries(right, moved, 0, rightCount - moved);
      setEntryCount(right, rightCount - moved);
    }
    setKey(parent, leftIndex + 1, keyAt(right, 0));
  }

  /**
   * #rebalance for leaves of a tree with compact leaves: siblings may differ in layout and bases,
   * so their entries are laid out again. Two halves that would not fit (more entries than a wide
   * leaf holds, with values no compact leaf can share) stay as they are: readers do not depend on
   * the minimum fill (F-NODE-3).
   */
  #rebalanceLeaves(parent: Block, leftIndex: number, left: Block, right: Block): void {
    const codec = this.codec;
    const entries = [...leafEntries(left, codec), ...leafEntries(right, codec)];
    const whole = planLeaf(entries, codec);
    if (whole !== undefined) {
      const capacity = whole.layout === NodeLayout.compact ? compactNodeCapacity(codec.compact!.sizeBytes) : nodeCapacity(codec.sizeBytes);
      if (entries.length <= capacity - Math.floor(capacity / 4)) {
        // Merge into left; right's references now belong to left, so right is freed without release.
        writeLeaf(left, entries, whole, codec);
        removeAt(parent, leftIndex + 1);
        this.tm.dec(right.blockNr);
        return;
      }
    }
    const half = entries.length >>> 1;
    const leftPlan = planLeaf(entries.slice(0, half), codec);
    const rightPlan = planLeaf(entries.slice(half), codec);
    if (leftPlan === undefined || rightPlan === undefined) return;
    writeLeaf(left, entries.slice(0, half), leftPlan, codec);
    writeLeaf(right, entries.slice(half), rightPlan, codec);
    setKey(parent, leftIndex + 1, keyAt(right, 0));
  }

  /** Checks a changed node right before it is written: a problem here is a bug (assert). */
  static checkBeforeWrite(block: Block, metadataBlockCount: number): void {
    const level = nodeLevel(block);
    const problem = nodeProblem(block, {
      treeKind: nodeTreeKind(block),
      leafValueSizeBytes: level === 0 ? valueSizeOf(block) : CHILD_VALUE_BYTES,
      compactValueSizeBytes: isCompact(block) ? valueSizeOf(block) : undefined,
      metadataBlockCount,
    });
    if (!(problem === undefined)) assert(false, `B+tree node at metadata block ${block.blockNr} is about to be written broken: ${problem}`);
  }
}

function staleChild(block: Block, expectedTransactionId: number): ThinError {
  return new ThinError(
    'THIN_CORRUPT_BLOCK',
    `Cannot read metadata block ${block.blockNr}: written by transaction ${block.transactionId}, but its parent expects ` +
      `${expectedTransactionId} (a lost or misdirected write left a stale block)`,
  );
}

function assertKey(key: number): void {
  if (!(Number.isSafeInteger(key) && key >= 0)) assert(false, `B+tree key ${key} is not a safe non-negative integer`);
}
