// The metadata blocks a pool holds for ever outside its trees: the superblock copies (F-SB-7) and
// the delta log's ring (F-LOG-1). The manager marks them used at format and refuses a space map
// that frees one; the walker adds their one reference each when it compares counts; the journal
// writes the ring. A leaf, so each of those can import it without importing the others.
import { DELTA_LOG_BLOCK_COUNT, DELTA_LOG_FIRST_BLOCK_NR, SUPERBLOCK_BLOCK_NRS } from '../constants.ts';

/** Metadata blocks of the delta log's ring, in ring order (F-LOG-1). */
export function deltaLogBlockNrs(): number[] {
  return Array.from({ length: DELTA_LOG_BLOCK_COUNT }, (_, index) => DELTA_LOG_FIRST_BLOCK_NR + index);
}

export function isSuperblockBlockNr(blockNr: number): boolean {
  return SUPERBLOCK_BLOCK_NRS.includes(blockNr);
}

/** Every reserved block and what it is, superblock copies first. */
export function reservedBlocks(): Array<{ blockNr: number; what: string }> {
  return [
    ...SUPERBLOCK_BLOCK_NRS.map((blockNr) => ({ blockNr, what: 'superblock' })),
    ...deltaLogBlockNrs().map((blockNr) => ({ blockNr, what: 'delta log' })),
  ];
}
