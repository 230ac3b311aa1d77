// Both superblock copies of the newest generation torn, as a power cut during the superblock
// writes leaves them: the part of each holding the root fields and the payload (bytes 64..511)
// never reached the disk. (A tear past the first sector changes nothing here: the rest of a copy
// is zeros in every generation.) That generation was never acknowledged as far as
// anything on disk can tell, so open takes the previous one: check warns and passes, and the
// pool is the previous generation's, without the snapshot late.
import { writeBlock } from './base.ts';
import type { CorpusEntry } from './entry.ts';

export const entry: CorpusEntry = {
  name: 'superblocks-newest-torn',
  description: 'both copies of the newest superblock generation torn: the pool is the previous generation, check warns about each copy and passes',
  damage(dir, layout) {
    for (const blockNr of layout.newestCopyBlockNrs) writeBlock(dir, blockNr, new Uint8Array(448), 64);
    return {
      problems: [],
      checkExitCode: 0,
      warnings: layout.newestCopyBlockNrs.map((blockNr) => new RegExp(`^warning: superblock copy \\d \\(metadata block ${blockNr}\\): .*checksum`, 'm')),
      fates: { late: { kind: 'gone' } },
    };
  },
};
