// Bit rot in an internal node and in one leaf under it: the orphaned leaves that still read are
// recovered, the flipped one is lost.
import { flipBit, volumeLayout } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'mapping-internal-and-leaf-bit-flip',
  description: "bits flipped in the root of volume b's mapping tree and in one leaf under it cost exactly that leaf's blocks",
  damage(dir, layout) {
    const b = volumeLayout(layout, 'b');
    const root = b.nodes.find((node) => node.blockNr === b.mappingRoot)!;
    if (root.level < 1) throw new Error(`volume b's mapping root ${b.mappingRoot} is a leaf; the base pool must give it two levels`);
    const leaf = b.leaves[2]!;
    flipBit(dir, root.blockNr, 60);
    flipBit(dir, leaf.blockNr, 60);
    return {
      problems: [
        new RegExp(`^volume b \\(id ${b.id}\\), mapping tree, metadata block ${root.blockNr} \\(path ${root.blockNr}\\): .*checksum`, 'm'),
        // The leaf is under the unreadable node, so no walk reaches it; check still reads it.
        new RegExp(`^metadata block ${leaf.blockNr} \\(in use, reached by no tree walk[^)]*\\): checksum mismatch`, 'm'),
      ],
      fates: { b: { kind: 'lost', ranges: [[leaf.keyBegin ?? 0, leaf.keyEnd ?? Infinity]] } },
      recovered: [new RegExp(`^lost: volume b \\(id ${b.id}\\), mapping tree metadata block ${root.blockNr}: .*${b.leaves.length - 1} orphaned node`, 'm')],
    };
  },
};
