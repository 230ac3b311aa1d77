// Bit rot in an internal node: the root of volume b's two-level mapping tree.
import { flipBit, volumeLayout } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'mapping-internal-bit-flip',
  description: "a bit flipped in the internal root node of volume b's mapping tree costs every mapping of b, and nothing of the other volumes",
  damage(dir, layout) {
    const b = volumeLayout(layout, 'b');
    const root = b.nodes.find((node) => node.blockNr === b.mappingRoot)!;
    if (root.level < 1) throw new Error(`volume b's mapping root ${b.mappingRoot} is a leaf; the base pool must give it two levels`);
    flipBit(dir, root.blockNr, 60);
    return {
      problems: [new RegExp(`^volume b \\(id ${b.id}\\), mapping tree, metadata block ${root.blockNr} \\(path ${root.blockNr}\\): .*checksum`, 'm')],
      fates: { b: { kind: 'lost', ranges: [[0, Infinity]] } },
    };
  },
};
