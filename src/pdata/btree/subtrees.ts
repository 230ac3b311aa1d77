// Summaries of subtrees, folded bottom-up from the shape a walk recorded, once per distinct node:
// a subtree that several parents or roots share (snapshots) is summarized once and reused, and
// no node is read again or picked apart by hand. A visitor records the shape by passing its
// node() and revisit() hooks to TreeWalker.walk; fold() then combines leaf summaries upwards.
import { BTREE_DEPTH_MAX } from '../../constants.ts';
import { assert } from '../../errors.ts';
import type { NodeVisit } from './walker.ts';

export interface FoldOptions<S> {
  /** Summaries already folded, by node: share it between folds of trees that share subtrees. */
  memo?: Map<number, S | null>;
  /** A node not to summarize (nor anything under it, unless reached another way). */
  skip?: (blockNr: number) => boolean;
}

export class SubtreeShapes {
  /** Children of each internal node walked, in key order (a corrupt child is left out). */
  readonly #children = new Map<number, number[]>();
  readonly #leaves = new Set<number>();

  /** WalkVisitor.node: records a node under its parent. */
  readonly node = (visit: NodeVisit): void => {
    if (visit.level === 0) this.#leaves.add(visit.blockNr);
    else if (!this.#children.has(visit.blockNr)) this.#children.set(visit.blockNr, []);
    this.#recordChild(visit);
  };

  /** WalkVisitor.revisit: a shared node is a child of this parent too. */
  readonly revisit = (visit: NodeVisit): void => {
    this.#recordChild(visit);
  };

  #recordChild(visit: NodeVisit): void {
    if (visit.path.length < 2) return;
    const parent = visit.path[visit.path.length - 2]!;
    const children = this.#children.get(parent);
    // The messages here only when they fail: a template string per node was built for nothing.
    if (children === undefined) assert(false, `node ${visit.blockNr} reached under ${parent}, which was never visited`);
    children.push(visit.blockNr);
  }

  /**
   * The summary of the subtree at blockNr: `leaf` for a leaf, `combine` of the children's
   * summaries (in key order, those that have one) for an internal node; undefined for a node the
   * walk did not visit whole, a skipped node, or when `combine` gives undefined.
   */
  fold<S>(
    blockNr: number,
    leaf: (blockNr: number) => S | undefined,
    combine: (blockNr: number, pieces: S[]) => S | undefined,
    options: FoldOptions<S> = {},
  ): S | undefined {
    const memo = options.memo ?? new Map<number, S | null>();
    const visit = (node: number, depth: number): S | undefined => {
      const known = memo.get(node);
      if (known !== undefined) return known ?? undefined;
      if (options.skip?.(node) === true) return undefined;
      // The walker checked that levels fall by one per step from a root below the bound.
      if (!(depth < BTREE_DEPTH_MAX)) assert(false, `a folded subtree deeper than ${BTREE_DEPTH_MAX} levels at block ${node}`);
      let result: S | undefined;
      if (this.#leaves.has(node)) result = leaf(node);
      else {
        const children = this.#children.get(node);
        if (children === undefined) return undefined;
        const pieces: S[] = [];
        for (const child of children) {
          const piece = visit(child, depth + 1);
          if (piece !== undefined) pieces.push(piece);
        }
        result = combine(node, pieces);
      }
      memo.set(node, result ?? null);
      return result;
    };
    return visit(blockNr, 0);
  }
}
