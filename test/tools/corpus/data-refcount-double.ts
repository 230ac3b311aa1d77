// A double reference: a data block mapped once but counted twice, so it would never be freed
// (and a write to it would copy it needlessly).
import { rewriteDataSpaceMap, volumeLayout } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'data-refcount-double',
  description: 'a data block held by one mapping leaf but counted twice is named with both counts; repair loses nothing',
  async damage(dir, layout) {
    const block = volumeLayout(layout, 'c').extents[0]![1].dataBlock;
    await rewriteDataSpaceMap(dir, (dataSpace) => dataSpace.inc(block));
    return { problems: [new RegExp(`^data blocks \\[${block}, ${block + 1}\\): the data space map counts 2 references, mappings hold 1`, 'm')] };
  },
};
