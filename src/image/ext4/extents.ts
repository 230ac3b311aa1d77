// Extent trees: up to four extents live in the inode's i_block; more go into full tree blocks of
// 340 entries, with index levels above them until the top level fits the inode (depth ≤ 5 for any
// file of ≤ 2^32 blocks). Trees are written once and whole, so every node is packed full.
import { assert } from '../../errors.ts';
import {
  BLOCK_SIZE_BYTES,
  EXTENTS_IN_INODE_MAX,
  EXTENTS_PER_BLOCK,
  EXTENT_ENTRY_BYTES,
  EXTENT_HEADER_BYTES,
  EXTENT_LENGTH_BLOCKS_MAX,
  EXTENT_MAGIC,
  EXTENT_TREE_DEPTH_MAX,
  ext4Crc32c,
} from './format.ts';

/** Size of i_block. */
export const I_BLOCK_BYTES = 60;

/** Splits a run of blocks into extents of at most 32768 blocks: [logical, physical, length] triples. */
export function contiguousExtents(firstBlock: number, blockCount: number): number[] {
  const extents: number[] = [];
  for (let logical = 0; logical < blockCount; logical += EXTENT_LENGTH_BLOCKS_MAX) {
    extents.push(logical, firstBlock + logical, Math.min(EXTENT_LENGTH_BLOCKS_MAX, blockCount - logical));
  }
  return extents;
}

/** Tree blocks needed for `extentCount` extents. */
export function extentTreeBlockCount(extentCount: number): number {
  let count = 0;
  let level = extentCount;
  while (level > EXTENTS_IN_INODE_MAX) {
    level = Math.ceil(level / EXTENTS_PER_BLOCK);
    count += level;
  }
  return count;
}

function writeHeader(view: DataView, offsetBytes: number, entries: number, max: number, depth: number): void {
  view.setUint16(offsetBytes, EXTENT_MAGIC, true);
  view.setUint16(offsetBytes + 2, entries, true);
  view.setUint16(offsetBytes + 4, max, true);
  view.setUint16(offsetBytes + 6, depth, true);
  view.setUint32(offsetBytes + 8, 0, true);
}

function writeLeafEntry(view: DataView, offsetBytes: number, logical: number, physical: number, length: number): void {
  view.setUint32(offsetBytes, logical, true);
  view.setUint16(offsetBytes + 4, length, true);
  view.setUint16(offsetBytes + 6, Math.floor(physical / 2 ** 32), true);
  view.setUint32(offsetBytes + 8, physical % 2 ** 32, true);
}

function writeIndexEntry(view: DataView, offsetBytes: number, logical: number, child: number): void {
  view.setUint32(offsetBytes, logical, true);
  view.setUint32(offsetBytes + 4, child % 2 ** 32, true);
  view.setUint16(offsetBytes + 8, Math.floor(child / 2 ** 32), true);
  view.setUint16(offsetBytes + 10, 0, true);
}

const NO_BLOCKS: readonly Uint8Array[] = [];

/**
 * Writes the tree for `extents` ([logical, physical, length] triples in logical order, each at
 * most 32768 blocks): its top into i_block (60 bytes at `iBlockAt` of `iView`), and returns the
 * tree blocks to write at firstBlock, firstBlock + 1, … (none for up to four extents); inodeSeed
 * checksums them.
 */
export function buildExtentTree(extents: readonly number[], firstBlock: number, inodeSeed: number, iView: DataView, iBlockAt: number): readonly Uint8Array[] {
  const extentCount = extents.length / 3;
  if (extentCount <= EXTENTS_IN_INODE_MAX) {
    writeHeader(iView, iBlockAt, extentCount, EXTENTS_IN_INODE_MAX, 0);
    for (let index = 0; index < extentCount; index++) {
      const length = extents[index * 3 + 2]!;
      assert(length > 0 && length <= EXTENT_LENGTH_BLOCKS_MAX, `extent length ${length}`);
      writeLeafEntry(iView, iBlockAt + EXTENT_HEADER_BYTES + index * EXTENT_ENTRY_BYTES, extents[index * 3]!, extents[index * 3 + 1]!, length);
    }
    return NO_BLOCKS;
  }
  const blocks: Uint8Array[] = [];
  const newBlock = (): { bytes: Uint8Array; view: DataView; blockNr: number } => {
    const bytes = new Uint8Array(BLOCK_SIZE_BYTES);
    blocks.push(bytes);
    return { bytes, view: new DataView(bytes.buffer), blockNr: firstBlock + blocks.length - 1 };
  };
  const seal = (bytes: Uint8Array): void => {
    const tailAt = EXTENT_HEADER_BYTES + EXTENTS_PER_BLOCK * EXTENT_ENTRY_BYTES;
    new DataView(bytes.buffer).setUint32(tailAt, ext4Crc32c(inodeSeed, bytes.subarray(0, tailAt)), true);
  };
  // Leaves: [first logical block, block number] of each node of the level being built.
  let level: Array<[number, number]> = [];
  for (let begin = 0; begin < extentCount; begin += EXTENTS_PER_BLOCK) {
    const count = Math.min(EXTENTS_PER_BLOCK, extentCount - begin);
    const { bytes, view, blockNr } = newBlock();
    writeHeader(view, 0, count, EXTENTS_PER_BLOCK, 0);
    for (let index = 0; index < count; index++) {
      const at = (begin + index) * 3;
      writeLeafEntry(view, EXTENT_HEADER_BYTES + index * EXTENT_ENTRY_BYTES, extents[at]!, extents[at + 1]!, extents[at + 2]!);
    }
    seal(bytes);
    level.push([extents[begin * 3]!, blockNr]);
  }
  let depth = 1;
  while (level.length > EXTENTS_IN_INODE_MAX) {
    const next: Array<[number, number]> = [];
    for (let begin = 0; begin < level.length; begin += EXTENTS_PER_BLOCK) {
      const count = Math.min(EXTENTS_PER_BLOCK, level.length - begin);
      const { bytes, view, blockNr } = newBlock();
      writeHeader(view, 0, count, EXTENTS_PER_BLOCK, depth);
      for (let index = 0; index < count; index++) {
        const [logical, child] = level[begin + index]!;
        writeIndexEntry(view, EXTENT_HEADER_BYTES + index * EXTENT_ENTRY_BYTES, logical, child);
      }
      seal(bytes);
      next.push([level[begin]![0], blockNr]);
    }
    level = next;
    depth++;
  }
  assert(depth <= EXTENT_TREE_DEPTH_MAX, `extent tree of depth ${depth}`);
  writeHeader(iView, iBlockAt, level.length, EXTENTS_IN_INODE_MAX, depth);
  level.forEach(([logical, child], index) => writeIndexEntry(iView, iBlockAt + EXTENT_HEADER_BYTES + index * EXTENT_ENTRY_BYTES, logical, child));
  assert(blocks.length === extentTreeBlockCount(extentCount), 'extent tree block count');
  return blocks;
}
