// Bit rot in an internal node: the root of volume b's two-level mapping tree. The leaves under it
// are whole, still counted by the metadata space map and reached by nothing else: repair finds
// them as orphans and gives them back to b, so nothing is lost but the node itself.
import { flipBit, volumeLayout } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'mapping-internal-bit-flip',
  description: "a bit flipped in the internal root node of volume b's mapping tree costs no mapping: repair recovers the orphaned leaves under it",
  damage(dir, layout) {
    const b = volumeLayout(layout, 'b');
    const root = b.nodes.find((node) => node.blockNr === b.mappingRoot)!;
    if (root.level < 1) throw new Error(`volume b's mapping root ${b.mappingRoot} is a leaf; the base pool must give it two levels`);
    flipBit(dir, root.blockNr, 60);
    return {
      problems: [new RegExp(`^volume b \\(id ${b.id}\\), mapping tree, metadata block ${root.blockNr} \\(path ${root.blockNr}\\): .*checksum`, 'm')],
      recovered: [new RegExp(`^lost: volume b \\(id ${b.id}\\), mapping tree metadata block ${root.blockNr}: .*${b.leaves.length} orphaned node`, 'm')],
    };
  },
};
