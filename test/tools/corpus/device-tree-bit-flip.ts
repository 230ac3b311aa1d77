// Bit rot in the device tree: its root (one leaf for five volumes) in the newest generation. The
// previous generation's device tree is whole, so open — and repair — fall back to it, losing what
// the newest commit added: the snapshot late.
import { flipBit } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'device-tree-bit-flip',
  description: 'a bit flipped in the device tree root of the newest generation makes the pool fall back one generation, losing only what that generation committed',
  damage(dir, layout) {
    flipBit(dir, layout.deviceTreeRoot, 60);
    return {
      problems: [new RegExp(`^superblock generation ${layout.generation}: passed over for generation \\d+, .*: .*block ${layout.deviceTreeRoot}\\b.*checksum`, 'm')],
      fates: { late: { kind: 'gone' } },
    };
  },
};
