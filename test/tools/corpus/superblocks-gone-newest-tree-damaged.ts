// Every superblock copy gone and, on top, the newest generation's device tree root flipped: the
// scan that repair -o --block-size does must not take the newest roots blindly. It tries
// generations newest first and takes the first whose trees read whole: the one before the
// snapshot late.
import { SUPERBLOCK_BLOCK_NRS } from '../../../src/constants.ts';
import { flipBit, writeBlock } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'superblocks-gone-newest-tree-damaged',
  description: "all superblock copies zeroed and the newest device tree root flipped: the scan falls back to the newest generation whose trees read whole",
  damage(dir, layout) {
    for (const blockNr of SUPERBLOCK_BLOCK_NRS) writeBlock(dir, blockNr, new Uint8Array(4096));
    flipBit(dir, layout.deviceTreeRoot, 60);
    return {
      problems: [/^superblock: No usable superblock/m],
      refusal: /nothing to rebuild from .*--block-size/,
      repairArgs: ['--block-size', '64k'],
      fates: { late: { kind: 'gone' } },
    };
  },
};
