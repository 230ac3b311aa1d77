// What a corpus entry is: a damage done to the base pool (base.ts), and what check and repair
// must make of it.
import type { PoolLayout } from './base.ts';

/** What repair must keep of one volume of the base pool. */
export type VolumeFate =
  /** Every block as it was before the damage. */
  | { kind: 'whole' }
  /** Gone from the repaired pool (it sat under the damage, or in a generation passed over). */
  | { kind: 'gone' }
  /** Kept, but the blocks in these virtual block ranges ([begin, end), end may be Infinity) read as zeros. */
  | { kind: 'lost'; ranges: Array<[number, number]> }
  /** Kept whole under another name (its details were unreadable). */
  | { kind: 'renamed'; name: string };

export interface Damage {
  /** Patterns that `thinbd check`'s output must match, each naming the place of a problem. */
  problems: RegExp[];
  /**
   * 0 for a state a crash can leave and open copes with (check warns, the pool is consistent);
   * 1 (the default) for damage.
   */
  checkExitCode?: 0 | 1;
  /** Patterns that check's warnings (stderr) must match. */
  warnings?: RegExp[];
  /** Repair rebuilds a pool (the default) or refuses, with its reason matching `refusal`. */
  refusal?: RegExp;
  /** With a refusal: the options with which `repair -o` rebuilds the pool after all (check --repair still refuses). */
  repairArgs?: string[];
  /** Patterns that repair's report must match for mappings it recovered from orphaned nodes. */
  recovered?: RegExp[];
  /** What repair keeps; a volume not named is kept whole. */
  fates?: Partial<Record<string, VolumeFate>>;
}

export interface CorpusEntry {
  /** File name of the entry, without extension. */
  name: string;
  /** What the damage is, as a sentence. */
  description: string;
  /** Damages the base pool in `dir`, whose layout before the damage is given. */
  damage(dir: string, layout: PoolLayout): Promise<Damage> | Damage;
}
