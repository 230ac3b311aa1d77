// A truncated metadata file (a copy cut short): the two far superblock copies and everything
// past 4 MiB are gone. The trees all lie below the cut, so repair — which writes a metadata file
// of the recorded size — loses nothing.
import { truncateSync } from 'node:fs';
import path from 'node:path';
import { METADATA_BLOCK_SIZE_BYTES } from '../../../src/constants.ts';
import type { CorpusEntry } from './entry.ts';

const CUT_BLOCK_NR = 1024;

export const entry: CorpusEntry = {
  name: 'truncated-metadata',
  description: 'a metadata file cut short is named with its size and the size the superblock records; repair restores the size and loses nothing',
  damage(dir, layout) {
    const highest = layout.liveBlockNrs.at(-1)!;
    if (highest >= CUT_BLOCK_NR) throw new Error(`live metadata block ${highest} lies past the cut at ${CUT_BLOCK_NR}; the entry assumes none does`);
    truncateSync(path.join(dir, 'metadata'), CUT_BLOCK_NR * METADATA_BLOCK_SIZE_BYTES);
    return { problems: [new RegExp(`^metadata file: ${CUT_BLOCK_NR * METADATA_BLOCK_SIZE_BYTES} bytes, shorter than`, 'm')] };
  },
};
