// Every superblock copy gone (zeroed): nothing says where the trees are. Check names each copy;
// repair refuses rather than guess (it does not scan the metadata for roots as thin_repair does).
import { SUPERBLOCK_BLOCK_NRS } from '../../../src/constants.ts';
import { writeBlock } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'superblocks-all-gone',
  description: 'all four superblock copies zeroed: check names every copy, repair refuses and says why',
  damage(dir) {
    for (const blockNr of SUPERBLOCK_BLOCK_NRS) writeBlock(dir, blockNr, new Uint8Array(4096));
    return {
      problems: [/^superblock: No usable superblock/m, ...SUPERBLOCK_BLOCK_NRS.map((blockNr) => new RegExp(`\\b${blockNr}\\b`))],
      refusal: /nothing to rebuild from/,
    };
  },
};
