// A misdirected metadata write: a valid leaf of volume a landed on the block of a leaf of volume
// b. Its checksum is right; its own block number (F-BLK-3) gives it away.
import { readBlock, volumeLayout, writeBlock } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'misdirected-write',
  description: "a valid node written to the wrong block is named by the place it landed; repair loses the leaf it overwrote",
  damage(dir, layout) {
    const a = volumeLayout(layout, 'a');
    const b = volumeLayout(layout, 'b');
    const source = a.leaves[0]!;
    const victim = b.leaves[1]!;
    writeBlock(dir, victim.blockNr, readBlock(dir, source.blockNr));
    return {
      problems: [new RegExp(`^volume b \\(id ${b.id}\\), mapping tree, metadata block ${victim.blockNr} \\(path [^)]*\\): .*${source.blockNr}`, 'm')],
      fates: { b: { kind: 'lost', ranges: [[victim.keyBegin ?? 0, victim.keyEnd ?? Infinity]] } },
    };
  },
};
