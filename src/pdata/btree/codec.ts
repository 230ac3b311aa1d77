// Value codecs: what a B+tree stores in its leaves. The tree is generic over them, so one tree
// implementation serves mapping trees, the device tree and the space maps.
import { ThinError } from '../../errors.ts';
import { getU64, setU64, type Block } from '../block.ts';

/**
 * Tree kinds (u16 in every node header, F-NODE-2): a node found in a tree of another kind is
 * corrupt. pdata owns 1..15; layers above choose numbers from 16 up for their own trees.
 */
export const TreeKind = {
  metadataSpaceMap: 1,
  dataSpaceMap: 2,
  /** For tests and tools that need a plain u64 → u64 tree. */
  test: 15,
} as const;

export interface ValueCodec<V> {
  /** Stored in every node, so a node of another tree is detected (1..65535). */
  readonly treeKind: number;
  /** Bytes of one packed value; fixes the leaf capacity. */
  readonly sizeBytes: number;
  pack(value: V, view: DataView, offsetBytes: number): void;
  /** Validates the bytes: throws ThinError THIN_CORRUPT_NODE when they cannot be a value. */
  unpack(view: DataView, offsetBytes: number): V;
  /**
   * A narrower encoding for compact leaves (docs/format.md "Compact leaf"), used whenever a leaf's
   * values lie close enough to common bases; trees without it keep every leaf wide.
   */
  readonly compact?: CompactValueCodec<V>;
  /** A shared leaf was copied: raise the counts of what `value` references. */
  retain?(value: V): void;
  /** A leaf holding `value` lost its last reference: drop the counts of what `value` references. */
  release?(value: V): void;
}

/** Reads a u64 field of a value, throwing THIN_CORRUPT_NODE when it is 2^53 or more (F-NODE-6). */
export function unpackSafeU64(view: DataView, offsetBytes: number, what: string): number {
  const value = getU64(view, offsetBytes);
  if (!Number.isSafeInteger(value)) {
    throw new ThinError('THIN_CORRUPT_NODE', `B+tree value field ${what} is ${value}, beyond 2^53`);
  }
  return value;
}

/** A value that is a plain u64: the children of internal nodes, and test trees. */
export function u64Codec(treeKind: number): ValueCodec<number> {
  return {
    treeKind,
    sizeBytes: 8,
    pack(value, view, offsetBytes) {
      setU64(view, offsetBytes, value);
    },
    unpack(view, offsetBytes) {
      return unpackSafeU64(view, offsetBytes, 'u64');
    },
  };
}

/**
 * Values of a compact leaf: offsets from bases the leaf stores once (COMPACT_VALUE_BASES_BYTES at
 * `basesOffsetBytes`). Encoding is fixed width, so entries are edited in place as in wide leaves.
 */
export interface CompactValueCodec<V> {
  /** Bytes of one narrow value. */
  readonly sizeBytes: number;
  /**
   * Writes bases from which every one of `values` encodes and returns true, or returns false
   * (writing nothing) when no bases do: the leaf holding them must be wide.
   */
  chooseBases(values: readonly V[], view: DataView, basesOffsetBytes: number): boolean;
  /** Whether `value` encodes against the bases at basesOffsetBytes. */
  fits(value: V, view: DataView, basesOffsetBytes: number): boolean;
  /** Packs a value that fits (asserted). */
  pack(value: V, view: DataView, basesOffsetBytes: number, offsetBytes: number): void;
  /** Validates the bases and the bytes: throws ThinError THIN_CORRUPT_NODE when they cannot be a value. */
  unpack(view: DataView, basesOffsetBytes: number, offsetBytes: number): V;
}

/**
 * A whole leaf's entries as columns of numbers (typed arrays a walk reuses from leaf to leaf):
 * `count` entries, keys ascending. A reader for a tree's values extends it with one column per
 * value field.
 */
export interface LeafColumns {
  count: number;
  readonly keys: Float64Array;
}

/**
 * Reads a leaf in place into columns: what walks over millions of entries (check, dump, delta)
 * use instead of unpack(), which makes an object per entry. It reads the same bytes as the codec
 * of the tree it is used with and accepts exactly the values that codec's unpack accepts.
 */
export interface LeafColumnsReader<C extends LeafColumns> {
  /** Columns with room for the largest leaf. */
  create(): C;
  /**
   * Decodes every entry of a leaf that passed the node checks (nodeProblem) into `columns`.
   * Returns false when some value is one unpack() would refuse: the caller then unpacks the leaf
   * entry by entry to name it. Never throws on bad bytes.
   */
  read(block: Block, columns: C): boolean;
}
