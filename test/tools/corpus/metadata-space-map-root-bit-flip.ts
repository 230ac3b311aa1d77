// Bit rot in the metadata space map's root of the newest generation (named by its superblock).
// That generation no longer opens, so open, check and repair fall back to the previous one, losing
// what the newest commit added (the snapshot late); dump and delta, which read the trees alone,
// must refuse rather than give that older state as the pool's.
import { flipBit, readBlock } from './base.ts';
import type { CorpusEntry } from './entry.ts';

/** Byte offset of `metadataSpaceMapRoot` in a superblock copy (docs/format.md "Superblock"). */
const METADATA_SPACE_MAP_ROOT_OFFSET = 64;

export const entry: CorpusEntry = {
  name: 'metadata-space-map-root-bit-flip',
  description: 'a bit flipped in the metadata space map root of the newest generation makes the pool fall back one generation, losing only what that generation committed',
  damage(dir, layout) {
    const superblock = readBlock(dir, layout.newestCopyBlockNrs[0]!);
    const root = Number(new DataView(superblock.buffer).getBigUint64(METADATA_SPACE_MAP_ROOT_OFFSET, true));
    flipBit(dir, root, 100);
    return {
      problems: [new RegExp(`^superblock generation ${layout.generation}: passed over for generation \\d+, .*block ${root}\\b.*checksum`, 'm')],
      fates: { late: { kind: 'gone' } },
    };
  },
};
