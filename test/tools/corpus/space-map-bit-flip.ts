// Bit rot in a space map node: the data space map's root leaf. Every generation on disk shares
// it (the last commits changed no data reference count), so no generation's roots validate; check
// still checks the newest and names the node, and repair, which counts data references anew from
// the mappings, loses nothing.
import { flipBit } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'space-map-bit-flip',
  description: 'a bit flipped in the data space map loses no mapping: repair counts references anew',
  damage(dir, layout) {
    flipBit(dir, layout.dataSpaceMapRoot, 60);
    return {
      problems: [new RegExp(`^data space map, metadata block ${layout.dataSpaceMapRoot} \\(path ${layout.dataSpaceMapRoot}\\): .*checksum`, 'm')],
    };
  },
};
