// Bit rot in a volume's details block (its name, labels, origin).
import { flipBit, volumeLayout } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'details-bit-flip',
  description: "a bit flipped in volume b's details block loses its name, not its data: repair keeps it as recovered-<id>",
  damage(dir, layout) {
    const b = volumeLayout(layout, 'b');
    flipBit(dir, b.detailsBlock, 40);
    return {
      problems: [new RegExp(`^volume id ${b.id}, details block ${b.detailsBlock}: .*checksum`, 'm')],
      fates: { b: { kind: 'renamed', name: `recovered-${b.id}` } },
    };
  },
};
