// The walker: visits every node reachable from one or more roots exactly once, however many
// parents or roots share it, and counts the references it saw to each node. It owns the reading,
// the set of nodes already seen and the error bookkeeping; check, the pool's usage report and
// repair's orphan search are visitors. A node reached again (a subtree shared by snapshots, or by
// two parents) is told to the visitor's revisit(), so a visitor can account for a shared subtree
// without walking it again or reading its nodes by hand (subtrees.ts folds summaries up that way).
//
// A corrupt node is reported (with the path of block numbers from its root and the key range its
// parent promised) and its subtree skipped; the walk goes on. Reference counts a checker needs:
// - metadata: `references` (one per parent entry or root owner), compared with the space map;
// - data: the visitor's leaf() sees each distinct leaf's entries once, which is what a data
//   block's reference count counts under dm-thin's scheme (a leaf shared by snapshots is one
//   reference).
// The walk is iterative; levels must decrease by one per step, so corrupt input cannot loop.
import { METADATA_BLOCK_SIZE_BYTES } from '../../constants.ts';
import { ThinError, assert, isThinError } from '../../errors.ts';
import { BTREE_BLOCK_TYPES, BlockType } from '../block.ts';
import type { BlockManager } from '../block-manager.ts';
import { reservedBlocks } from '../reserved-blocks.ts';
import { TreeKind, type LeafColumns, type LeafColumnsReader, type ValueCodec } from './codec.ts';
import { refCountExtentCodec } from '../space-map.ts';
import { childAt, childTransactionIdAt, describeKeyRange, entryCount, isLeaf, keyAt, nodeLevel, nodeProblem } from './node.ts';
import { leafValueAt } from './leaf.ts';

export interface NodeVisit {
  blockNr: number;
  treeKind: number;
  level: number;
  entryCount: number;
  /** Key range the parent promised ([keyBegin, keyEnd)); undefined bounds are open. */
  keyBegin: number | undefined;
  keyEnd: number | undefined;
  /** Block numbers from the root to this node, both included. */
  path: number[];
}

export interface CorruptNode {
  blockNr: number;
  path: number[];
  keyBegin: number | undefined;
  keyEnd: number | undefined;
  error: ThinError;
}

export interface WalkVisitor<V, C extends LeafColumns = LeafColumns> {
  /** Once per distinct node, before its children. */
  node?(visit: NodeVisit): void;
  /**
   * Once per further reference to a node already visited whole (another parent's entry, or
   * another root), once that reference was checked against what the node is (tree kind, level,
   * transaction, key bounds). Its subtree is not walked again. `path` ends with the node.
   */
  revisit?(visit: NodeVisit): void;
  /** Once per entry of each distinct leaf. */
  leaf?(key: number, value: V, leafBlockNr: number): void;
  /**
   * In place of leaf(), for walks over millions of entries: once per distinct leaf, its entries
   * read in place by `reader` (which must read the walked tree's values) into columns reused from
   * leaf to leaf, so that no object is made per entry.
   */
  leafColumns?: { reader: LeafColumnsReader<C>; visit(columns: C, leafBlockNr: number): void };
  /** A node that cannot be read or breaks an invariant; its subtree is skipped. */
  corrupt?(problem: CorruptNode): void;
}

interface Seen {
  /** The node read and passed its checks (it was visited); false for a corrupt node. */
  visited: boolean;
  treeKind: number;
  transactionId: number | undefined;
  level: number;
  entryCount: number;
  firstKey: number | undefined;
  lastKey: number | undefined;
}

interface Pending {
  blockNr: number;
  /** The transaction the parent says wrote this node; undefined for a root. */
  transactionId: number | undefined;
  level: number | undefined;
  keyBegin: number | undefined;
  keyEnd: number | undefined;
  path: number[];
}

export class TreeWalker {
  readonly tm: BlockManager;
  /** References seen to each metadata block: one per parent entry, plus one per walk() of it as a root. */
  readonly references = new Map<number, number>();
  /** Every corrupt node found so far. */
  readonly corruptions: CorruptNode[] = [];
  #seen = new Map<number, Seen>();

  constructor(tm: BlockManager) {
    this.tm = tm;
  }

  referenceCount(blockNr: number): number {
    return this.references.get(blockNr) ?? 0;
  }

  /** Nodes visited so far (distinct blocks). */
  get nodeCount(): number {
    return this.#seen.size;
  }

  /** Walks the tree at root, counting one reference to root for its owner. Returns the corruptions found in this walk. */
  walk<V, C extends LeafColumns = LeafColumns>(root: number, codec: ValueCodec<V>, visitor: WalkVisitor<V, C> = {}): CorruptNode[] {
    const found: CorruptNode[] = [];
    const report = (pending: Pending, error: ThinError): void => {
      const problem: CorruptNode = { blockNr: pending.blockNr, path: pending.path, keyBegin: pending.keyBegin, keyEnd: pending.keyEnd, error };
      found.push(problem);
      this.corruptions.push(problem);
      visitor.corrupt?.(problem);
    };
    // Each node is read once: into one buffer per walk (a visitor may start another walk), not
    // into the manager's cache (BlockManager.readInto). A leaf's keys and values are decoded whole
    // before the visitor sees any, into arrays reused from leaf to leaf.
    const scratch = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
    const keys: number[] = [];
    const values: V[] = [];
    const columnsHook = visitor.leafColumns;
    const columns = columnsHook?.reader.create();
    const stack: Pending[] = [{ blockNr: root, transactionId: undefined, level: undefined, keyBegin: undefined, keyEnd: undefined, path: [root] }];
    while (stack.length > 0) {
      const pending = stack.pop()!;
      const { blockNr } = pending;
      this.references.set(blockNr, this.referenceCount(blockNr) + 1);
      const seen = this.#seen.get(blockNr);
      if (seen !== undefined) {
        const problem = revisitProblem(seen, codec.treeKind, pending);
        if (problem !== undefined) report(pending, corruptNode(pending, problem));
        else if (seen.visited && visitor.revisit !== undefined) {
          visitor.revisit({
            blockNr,
            treeKind: seen.treeKind,
            level: seen.level,
            entryCount: seen.entryCount,
            keyBegin: pending.keyBegin,
            keyEnd: pending.keyEnd,
            path: pending.path,
          });
        }
        continue;
      }
      let block;
      try {
        const types = pending.level === undefined ? BTREE_BLOCK_TYPES : pending.level === 0 ? BlockType.btreeLeaf : BlockType.btreeInternal;
        block = this.tm.readInto(blockNr, types, pending.transactionId, scratch);
        if (pending.transactionId !== undefined && block.transactionId !== pending.transactionId) {
          throw new ThinError(
            'THIN_CORRUPT_BLOCK',
            `Cannot read metadata block ${blockNr}: written by transaction ${block.transactionId}, but its parent expects ` +
              `${pending.transactionId} (a lost or misdirected write left a stale block)`,
          );
        }
      } catch (error) {
        if (!isThinError(error)) throw error;
        this.#seen.set(blockNr, {
          visited: false,
          treeKind: codec.treeKind,
          transactionId: undefined,
          level: pending.level ?? -1,
          entryCount: 0,
          firstKey: undefined,
          lastKey: undefined,
        });
        report(pending, error);
        continue;
      }
      const problem = nodeProblem(block, {
        treeKind: codec.treeKind,
        leafValueSizeBytes: codec.sizeBytes,
        compactValueSizeBytes: codec.compact?.sizeBytes,
        level: pending.level,
        keyBegin: pending.keyBegin,
        keyEnd: pending.keyEnd,
        metadataBlockCount: this.tm.metadataBlockCount,
      });
      const count = entryCount(block);
      const level = nodeLevel(block);
      const seenNow: Seen = {
        visited: false,
        treeKind: codec.treeKind,
        transactionId: block.transactionId,
        level,
        entryCount: count,
        firstKey: problem === undefined && count > 0 ? keyAt(block, 0) : undefined,
        lastKey: problem === undefined && count > 0 ? keyAt(block, count - 1) : undefined,
      };
      this.#seen.set(blockNr, seenNow);
      if (problem !== undefined) {
        report(pending, corruptNode(pending, problem));
        continue;
      }
      visitor.node?.({
        blockNr,
        treeKind: codec.treeKind,
        level,
        entryCount: count,
        keyBegin: pending.keyBegin,
        keyEnd: pending.keyEnd,
        path: pending.path,
      });
      if (isLeaf(block)) {
        if (columnsHook !== undefined && columnsHook.reader.read(block, columns!)) {
          seenNow.visited = true;
          columnsHook.visit(columns!, blockNr);
          continue;
        }
        // The reader refused a value (or there is none): unpacking entry by entry names it.
        keys.length = 0;
        values.length = 0;
        try {
          for (let index = 0; index < count; index++) {
            keys.push(keyAt(block, index));
            values.push(leafValueAt(block, index, codec));
          }
        } catch (error) {
          if (!isThinError(error)) throw error;
          report(pending, corruptNode(pending, `bad value at entry ${values.length}: ${error.message}`));
          continue;
        }
        assert(columnsHook === undefined, `leaf ${blockNr}: the column reader refused a value its codec accepts`);
        seenNow.visited = true;
        if (visitor.leaf !== undefined) for (let index = 0; index < count; index++) visitor.leaf(keys[index]!, values[index]!, blockNr);
        continue;
      }
      seenNow.visited = true;
      if (level === 1) {
        // The leaves below are read next, one after another.
        const children: number[] = [];
        for (let index = 0; index < count; index++) if (!this.#seen.has(childAt(block, index))) children.push(childAt(block, index));
        this.tm.prefetch(children);
      }
      // Push children in reverse so they are visited in key order.
      for (let index = count - 1; index >= 0; index--) {
        stack.push({
          blockNr: childAt(block, index),
          transactionId: childTransactionIdAt(block, index),
          level: level - 1,
          keyBegin: keyAt(block, index),
          keyEnd: index + 1 < count ? keyAt(block, index + 1) : pending.keyEnd,
          path: [...pending.path, childAt(block, index)],
        });
      }
    }
    return found;
  }

  /**
   * Walks the metadata space map itself and adds the superblock copies, then compares every
   * metadata block's reference count with the references seen. Call after walking every other
   * root the layer above owns (each once per owner). An empty result means no leaks and no
   * miscounts among the trees walked.
   */
  metadataReferenceMismatches(
    metadataSpaceMapCodec: ValueCodec<unknown> = refCountExtentCodec(TreeKind.metadataSpaceMap),
  ): Array<{ blockNr: number; counted: number; seen: number }> {
    this.walk(this.tm.metadataSpaceMapRoot, metadataSpaceMapCodec);
    // Counted per block in an array: the loop below visits every block of the metadata file
    // (262,144 in 1 GiB), most of which nothing refers to, and a map lookup for each took twice
    // as long as this (docs/benchmarks.md "Command start-up").
    const blockCount = this.tm.metadataBlockCount;
    // Four bytes a block, as the manager's counts, unless some count could overflow them (each
    // reserved block below adds one): then the byte comparison below cannot be used.
    let referencesMax = 0;
    for (const count of this.references.values()) referencesMax = Math.max(referencesMax, count);
    const seen = referencesMax < 0xffff_ffff ? new Uint32Array(blockCount) : new Float64Array(blockCount);
    for (const [blockNr, count] of this.references) if (blockNr < blockCount) seen[blockNr] = count;
    // F-SB-7, F-LOG-1: superblock copies and the delta log's ring are used for ever, referenced by nothing in the trees.
    for (const { blockNr } of reservedBlocks()) if (blockNr < blockCount) seen[blockNr]! += 1;
    // The common answer, none, from one comparison of the two arrays' bytes: the loop below runs
    // once per block, cold, mostly before it is optimized (3-4 ms of a 1 GiB metadata file's check).
    const counts = this.tm.refCounts?.();
    if (counts !== undefined && seen instanceof Uint32Array && counts.length === blockCount && sameBytes(counts, seen)) return [];
    const mismatches: Array<{ blockNr: number; counted: number; seen: number }> = [];
    for (let blockNr = 0; blockNr < blockCount; blockNr++) {
      const counted = this.tm.refCount(blockNr);
      const references = seen[blockNr]!;
      if (counted !== references) mismatches.push({ blockNr, counted, seen: references });
    }
    return mismatches;
  }
}

function sameBytes(a: Readonly<Uint32Array>, b: Uint32Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function corruptNode(pending: Pending, problem: string): ThinError {
  return new ThinError(
    'THIN_CORRUPT_NODE',
    `B+tree node at metadata block ${pending.blockNr} (${describeKeyRange(pending.keyBegin, pending.keyEnd)}, ` +
      `path ${pending.path.join(' → ')}) is corrupt: ${problem}`,
  );
}

function revisitProblem(seen: Seen, treeKind: number, pending: Pending): string | undefined {
  if (seen.treeKind !== treeKind) return `shared between trees of kinds ${seen.treeKind} and ${treeKind}`;
  if (pending.transactionId !== undefined && seen.transactionId !== undefined && seen.transactionId !== pending.transactionId) {
    return `written by transaction ${seen.transactionId}, but a parent expects ${pending.transactionId}`;
  }
  if (pending.level !== undefined && seen.level !== -1 && seen.level !== pending.level) {
    return `reached at level ${pending.level} and at level ${seen.level}`;
  }
  if (seen.firstKey !== undefined && pending.keyBegin !== undefined && seen.firstKey < pending.keyBegin) {
    return `first key ${seen.firstKey} is below a parent's bound ${pending.keyBegin}`;
  }
  if (seen.lastKey !== undefined && pending.keyEnd !== undefined && seen.lastKey >= pending.keyEnd) {
    return `last key ${seen.lastKey} is not below a parent's bound ${pending.keyEnd}`;
  }
  return undefined;
}
