// Every superblock copy gone (zeroed): nothing says where the trees are. Check names each copy.
// Repair and check --repair refuse rather than guess; `repair -o NEWDIR --block-size 64k` finds
// the newest generation's roots by scanning the metadata (the block size is the one fact only the
// superblock held) and loses nothing.
import { SUPERBLOCK_BLOCK_NRS } from '../../../src/constants.ts';
import { writeBlock } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'superblocks-all-gone',
  description: 'all four superblock copies zeroed: check names every copy; repair needs the block size, then finds the trees by scanning and loses nothing',
  damage(dir) {
    for (const blockNr of SUPERBLOCK_BLOCK_NRS) writeBlock(dir, blockNr, new Uint8Array(4096));
    return {
      problems: [/^superblock: No usable superblock/m, ...SUPERBLOCK_BLOCK_NRS.map((blockNr) => new RegExp(`\\b${blockNr}\\b`))],
      refusal: /nothing to rebuild from .*--block-size/,
      repairArgs: ['--block-size', '64k'],
    };
  },
};
