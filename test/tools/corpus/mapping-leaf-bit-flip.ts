// Bit rot in a mapping leaf: one flipped bit in a leaf of volume b's mapping tree.
import { flipBit, volumeLayout } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'mapping-leaf-bit-flip',
  description: "a bit flipped in a leaf of volume b's mapping tree costs the blocks that leaf maps",
  damage(dir, layout) {
    const b = volumeLayout(layout, 'b');
    const leaf = b.leaves[1]!;
    flipBit(dir, leaf.blockNr, 60);
    return {
      problems: [new RegExp(`^volume b \\(id ${b.id}\\), mapping tree, metadata block ${leaf.blockNr} \\(path [^)]*\\): .*checksum`, 'm')],
      fates: { b: { kind: 'lost', ranges: [[leaf.keyBegin ?? 0, leaf.keyEnd ?? Infinity]] } },
    };
  },
};
