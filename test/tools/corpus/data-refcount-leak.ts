// A leaked data block: a writer with a reference-count bug counts a block no mapping holds.
import { DATA_BLOCK_COUNT, rewriteDataSpaceMap } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'data-refcount-leak',
  description: 'a data block counted by the data space map but mapped by no volume is named as leaked; repair loses nothing',
  async damage(dir) {
    const leaked = DATA_BLOCK_COUNT - 1;
    await rewriteDataSpaceMap(dir, (dataSpace) => dataSpace.inc(leaked));
    return { problems: [new RegExp(`^data blocks \\[${leaked}, ${leaked + 1}\\): leaked`, 'm')] };
  },
};
