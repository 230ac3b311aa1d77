// Where the metadata's copies lie in the metadata file (docs/format.md "Metadata mirror", F-MIR-5): the
// superblock names the mirror's offset (F-SB-11), so the file must be read once, plainly, before
// it can be read as a mirror. Superblock copies sit at the same blocks in the first copy of a
// mirrored file as in a plain one, so the plain read finds them; when none of them validates, the
// mirror is looked for where a pool of this file's size puts it (the second half), or, after a
// move of the mirror cut short, at a quarter, an eighth... of the file (F-MIR-6).
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES, SUPERBLOCK_BLOCK_NRS } from '../constants.ts';
import type { BlockFile } from '../io/block-file.ts';
import { isMediaError } from '../io/media-error.ts';
import { MirroredBlockFile } from '../io/mirror.ts';
import { decodeSuperblock } from './superblock.ts';

export interface MetadataLayout {
  /** The metadata as pdata reads it: the mirror over the file, or the file itself. */
  file: BlockFile;
  /** The mirror's offset in blocks; 0 for none. */
  mirrorOffsetBlocks: number;
  /**
   * The mirror offset the superblock names when the file is too short to hold that copy, so it is
   * read plainly (cut short, or written by `metadata unpack`): one copy is all there is until a
   * read-write open builds the mirror again.
   */
  missingMirrorOffsetBlocks?: number;
}

/** The metadata file seen through its mirror of mirrorOffsetBlocks (none for 0). */
export function mirroredMetadata(raw: BlockFile, mirrorOffsetBlocks: number, options: { readOnly?: boolean } = {}): BlockFile {
  if (mirrorOffsetBlocks === 0) return raw;
  return MirroredBlockFile.inOneFile(raw, mirrorOffsetBlocks * METADATA_BLOCK_SIZE_BYTES, { readOnly: options.readOnly === true });
}

/** The newest valid superblock copy's mirror offset among the copies found at `baseBlocks`, if any copy there validates. */
function mirrorOffsetAt(raw: BlockFile, baseBlocks: number): { generation: number; mirrorOffsetBlocks: number; metadataBlockCount: number } | undefined {
  let newest: { generation: number; mirrorOffsetBlocks: number; metadataBlockCount: number } | undefined;
  SUPERBLOCK_BLOCK_NRS.forEach((blockNr, copyIndex) => {
    const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
    try {
      raw.readSync(bytes, (baseBlocks + blockNr) * METADATA_BLOCK_SIZE_BYTES);
    } catch (error) {
      if (isMediaError(error)) return;
      throw error;
    }
    const fields = decodeSuperblock(bytes, copyIndex).fields;
    if (fields !== undefined && (newest === undefined || fields.generation > newest.generation)) {
      newest = { generation: fields.generation, mirrorOffsetBlocks: fields.mirrorOffsetBlocks, metadataBlockCount: fields.metadataBlockCount };
    }
  });
  return newest;
}

/**
 * Finds the layout of an existing metadata file. Never throws for bad bytes: a file no superblock
 * of which validates is returned as it is, and open then says what is wrong with each copy.
 */
export function probeMetadataLayout(raw: BlockFile, options: { readOnly?: boolean } = {}): MetadataLayout {
  const primary = mirrorOffsetAt(raw, 0);
  if (primary !== undefined) {
    // A file too short for the mirror it names (`metadata unpack` writes the first copy only; a
    // copy cut at the first half) has no second copy to trust: read it plain; a read-write open
    // then builds the mirror again (F-MIR-5).
    if ((primary.mirrorOffsetBlocks + primary.metadataBlockCount) * METADATA_BLOCK_SIZE_BYTES > raw.sizeBytes()) {
      return { file: raw, mirrorOffsetBlocks: 0, ...(primary.mirrorOffsetBlocks > 0 ? { missingMirrorOffsetBlocks: primary.mirrorOffsetBlocks } : {}) };
    }
    return { file: mirroredMetadata(raw, primary.mirrorOffsetBlocks, options), mirrorOffsetBlocks: primary.mirrorOffsetBlocks };
  }
  // No first copy validates: a pool made here puts its mirror at half the file, and a mirror that
  // moves (F-MIR-6) goes to twice, four times... its place after the file has grown to twice the
  // new place. So the mirror is at half the file, or, when a move was cut short, at a quarter, an
  // eighth...: the newest generation among the places whose copies name that place is taken.
  let found: { generation: number; mirrorOffsetBlocks: number } | undefined;
  for (let halfBlocks = Math.floor(raw.sizeBytes() / METADATA_BLOCK_SIZE_BYTES / 2); halfBlocks >= METADATA_BLOCK_COUNT_MIN; halfBlocks = Math.floor(halfBlocks / 2)) {
    const mirror = mirrorOffsetAt(raw, halfBlocks);
    if (mirror !== undefined && mirror.mirrorOffsetBlocks === halfBlocks && (found === undefined || mirror.generation > found.generation)) found = mirror;
  }
  if (found !== undefined) return { file: mirroredMetadata(raw, found.mirrorOffsetBlocks, options), mirrorOffsetBlocks: found.mirrorOffsetBlocks };
  return { file: raw, mirrorOffsetBlocks: 0 };
}
