// Directory blocks. A directory whose entries fit one block is a plain (linear) block, names in
// byte order. A larger one is an htree (dir_index): a root block indexing leaves by name hash, with
// one level of index nodes between when the root's 507 slots are not enough, so lookups read two
// or three blocks whatever the directory's size. Leaves are packed full in hash order; a hash
// that continues from one leaf into the next is marked in the index (its low bit), as ext4 does.
// Every block ends in its checksum (a dirent tail, or a dx tail for index blocks).
import { ThinError, assert } from '../../errors.ts';
import { BLOCK_SIZE_BYTES, DIRENT_TAIL_BYTES, DIRENT_TAIL_NAME_LEN, HASH_VERSION_HALF_MD4, ext4Crc32c } from './format.ts';
import { dirNameHash } from './hash.ts';

export interface DirEntry {
  /** The name as a byte string (each character one byte). */
  name: string;
  ino: number;
  fileType: number;
}

const latin1Write = (Buffer.prototype as unknown as { latin1Write(this: Uint8Array, text: string, offset: number, length: number): number }).latin1Write;

/** Bytes a leaf's entries may use: the block minus the checksum tail. */
const LEAF_BYTES = BLOCK_SIZE_BYTES - DIRENT_TAIL_BYTES;
/** dx_root: "." (12) + ".." header (12) + dx_root_info (8), then the count/limit and entries. */
const ROOT_COUNT_OFFSET = 32;
/** dx_node: an empty 8-byte entry spanning the block, then the count/limit and entries. */
const NODE_COUNT_OFFSET = 8;
const DX_TAIL_BYTES = 8;
const ROOT_LIMIT = (BLOCK_SIZE_BYTES - ROOT_COUNT_OFFSET - DX_TAIL_BYTES) / 8;
const NODE_LIMIT = (BLOCK_SIZE_BYTES - NODE_COUNT_OFFSET - DX_TAIL_BYTES) / 8;

export function recordBytes(nameBytes: number): number {
  return (8 + nameBytes + 3) & ~3;
}

export interface DirectoryPlan {
  /** Entries other than "." and "..", in block order (names for a linear block, hashes for an htree). */
  entries: DirEntry[];
  hashes: number[] | undefined;
  /** Htree: index in `entries` where each leaf begins. */
  leafBegins: number[];
  /** 0: linear; 1: root → leaves; 2: root → nodes → leaves. */
  levels: number;
  blockCount: number;
}

/** How a directory with these entries is laid out (its block count, for planning, included). */
export function planDirectory(entries: DirEntry[], hashSeed: Uint32Array, minBlocks = 1, where: () => string = () => 'a directory'): DirectoryPlan {
  const dotsBytes = recordBytes(1) + recordBytes(2);
  let total = dotsBytes;
  // Indexed loops here and in the callers: this code runs once per import, mostly before V8 has
  // optimized it, and an unoptimized for-of makes an iterator result per element (twice the time
  // of an indexed loop over /usr/share's 53,000 entries).
  for (let index = 0; index < entries.length; index++) total += recordBytes(entries[index]!.name.length);
  if (total <= LEAF_BYTES) {
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return { entries, hashes: undefined, leafBegins: [], levels: 0, blockCount: Math.max(1, minBlocks) };
  }
  // Arrays here are filled by push, not Array.prototype.map: map's result is a packed or a holey
  // array depending on whether V8 runs it optimized, and optimized code built for one kind left on
  // the other ('wrong map') 24 times in an import of /usr/share, all in the file system's write.
  const keyed: Array<{ entry: DirEntry; hash: number }> = [];
  for (let index = 0; index < entries.length; index++) {
    const entry = entries[index]!;
    keyed.push({ entry, hash: dirNameHash(entry.name, hashSeed) });
  }
  keyed.sort((a, b) => a.hash - b.hash || (a.entry.name < b.entry.name ? -1 : a.entry.name > b.entry.name ? 1 : 0));
  const sorted: DirEntry[] = [];
  const hashes: number[] = [];
  const leafBegins: number[] = [];
  let used = LEAF_BYTES;
  for (let index = 0; index < keyed.length; index++) {
    const { entry, hash } = keyed[index]!;
    const bytes = recordBytes(entry.name.length);
    if (used + bytes > LEAF_BYTES) {
      leafBegins.push(sorted.length);
      used = 0;
    }
    used += bytes;
    sorted.push(entry);
    hashes.push(hash);
  }
  const leaves = leafBegins.length;
  let levels = 1;
  let nodes = 0;
  if (leaves > ROOT_LIMIT) {
    levels = 2;
    nodes = Math.ceil(leaves / NODE_LIMIT);
    if (nodes > ROOT_LIMIT) {
      throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${where()} has ${entries.length} entries, more than a two-level ext4 directory index holds`);
    }
  }
  return { entries: sorted, hashes, leafBegins, levels, blockCount: 1 + nodes + leaves };
}

function writeEntry(view: DataView, bytes: Uint8Array, offset: number, entry: DirEntry, recLen: number): void {
  view.setUint32(offset, entry.ino, true);
  view.setUint16(offset + 4, recLen, true);
  bytes[offset + 6] = entry.name.length;
  bytes[offset + 7] = entry.fileType;
  latin1Write.call(bytes, entry.name, offset + 8, entry.name.length);
}

function sealLeaf(bytes: Uint8Array, inodeSeed: number): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  view.setUint32(LEAF_BYTES, 0, true);
  view.setUint16(LEAF_BYTES + 4, DIRENT_TAIL_BYTES, true);
  view.setUint16(LEAF_BYTES + 6, DIRENT_TAIL_NAME_LEN, true);
  view.setUint32(LEAF_BYTES + 8, ext4Crc32c(inodeSeed, bytes.subarray(0, LEAF_BYTES)), true);
}

const NO_ENTRIES: readonly DirEntry[] = [];

/**
 * A leaf holding `dots` (a linear directory's "." and "..", or none), then entries [begin, end)
 * (the last record stretched to the tail): a range, not a copy of the entries per leaf.
 */
function leafBlock(bytes: Uint8Array, dots: readonly DirEntry[], entries: readonly DirEntry[], begin: number, end: number, inodeSeed: number): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const count = dots.length + end - begin;
  if (count === 0) view.setUint16(4, LEAF_BYTES, true);
  let offset = 0;
  for (let index = 0; index < count; index++) {
    const entry = index < dots.length ? dots[index]! : entries[begin + index - dots.length]!;
    const recLen = index === count - 1 ? LEAF_BYTES - offset : recordBytes(entry.name.length);
    writeEntry(view, bytes, offset, entry, recLen);
    offset += recLen;
  }
  sealLeaf(bytes, inodeSeed);
  return bytes;
}

function sealIndex(bytes: Uint8Array, countOffset: number, limit: number, count: number, inodeSeed: number): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  view.setUint16(countOffset, limit, true);
  view.setUint16(countOffset + 2, count, true);
  const tailAt = countOffset + limit * 8;
  view.setUint32(tailAt, 0, true);
  let crc = ext4Crc32c(inodeSeed, bytes.subarray(0, countOffset + count * 8));
  crc = ext4Crc32c(crc, bytes.subarray(tailAt, tailAt + 4));
  crc = ext4Crc32c(crc, new Uint8Array(4));
  view.setUint32(tailAt + 4, crc, true);
}

/** Index entries (hash, block) after the implicit first one. */
function writeIndexEntries(view: DataView, countOffset: number, targets: ReadonlyArray<[number, number]>): void {
  targets.forEach(([hash, block], index) => {
    if (index > 0) view.setUint32(countOffset + index * 8, hash, true);
    view.setUint32(countOffset + index * 8 + 4, block, true);
  });
}

const DOT = '.';
const DOTDOT = '..';

/**
 * The blocks of a planned directory, in logical order; inodeSeed is the directory's checksum seed.
 * The blocks are views of `space` (at least plan.blockCount blocks; zeroed here) when given, so
 * the caller writes them out before it encodes the next directory: a fresh 4 KiB array per block
 * cost the parsing thread ~8 µs each, in code still unoptimized.
 */
export function encodeDirectory(plan: DirectoryPlan, selfIno: number, parentIno: number, inodeSeed: number, space?: Uint8Array): Uint8Array[] {
  let used = 0;
  const newBlock = (): Uint8Array => {
    if (space === undefined) return new Uint8Array(BLOCK_SIZE_BYTES);
    const block = space.subarray(used, used + BLOCK_SIZE_BYTES);
    assert(block.length === BLOCK_SIZE_BYTES, 'directory space smaller than the directory');
    used += BLOCK_SIZE_BYTES;
    return block.fill(0);
  };
  const dot: DirEntry = { name: DOT, ino: selfIno, fileType: 2 };
  const dotdot: DirEntry = { name: DOTDOT, ino: parentIno, fileType: 2 };
  if (plan.levels === 0) {
    const blocks = [leafBlock(newBlock(), [dot, dotdot], plan.entries, 0, plan.entries.length, inodeSeed)];
    while (blocks.length < plan.blockCount) blocks.push(leafBlock(newBlock(), NO_ENTRIES, NO_ENTRIES, 0, 0, inodeSeed));
    return blocks;
  }
  const hashes = plan.hashes!;
  const leaves = plan.leafBegins.length;
  // Leaf i's index hash: its first entry's, with the low bit set when the previous leaf ends on the same hash.
  const leafHash = (leaf: number): number => {
    const begin = plan.leafBegins[leaf]!;
    const hash = hashes[begin]!;
    return begin > 0 && hashes[begin - 1] === hash ? (hash | 1) >>> 0 : hash;
  };
  const nodes = plan.levels === 2 ? Math.ceil(leaves / NODE_LIMIT) : 0;
  const firstLeafBlock = 1 + nodes;
  const blocks: Uint8Array[] = [];
  const root = newBlock();
  const rootView = new DataView(root.buffer, root.byteOffset, root.length);
  writeEntry(rootView, root, 0, dot, 12);
  writeEntry(rootView, root, 12, dotdot, BLOCK_SIZE_BYTES - 12);
  rootView.setUint32(24, 0, true);
  root[28] = HASH_VERSION_HALF_MD4;
  root[29] = 8;
  root[30] = plan.levels - 1;
  root[31] = 0;
  blocks.push(root);
  if (plan.levels === 1) {
    const targets: Array<[number, number]> = [];
    for (let leaf = 0; leaf < leaves; leaf++) targets.push([leafHash(leaf), firstLeafBlock + leaf]);
    writeIndexEntries(rootView, ROOT_COUNT_OFFSET, targets);
    sealIndex(root, ROOT_COUNT_OFFSET, ROOT_LIMIT, targets.length, inodeSeed);
  } else {
    const rootTargets: Array<[number, number]> = [];
    for (let node = 0; node < nodes; node++) {
      const bytes = newBlock();
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
      view.setUint16(4, BLOCK_SIZE_BYTES, true);
      const targets: Array<[number, number]> = [];
      const first = node * NODE_LIMIT;
      for (let leaf = first; leaf < Math.min(leaves, first + NODE_LIMIT); leaf++) targets.push([leafHash(leaf), firstLeafBlock + leaf]);
      writeIndexEntries(view, NODE_COUNT_OFFSET, targets);
      sealIndex(bytes, NODE_COUNT_OFFSET, NODE_LIMIT, targets.length, inodeSeed);
      blocks.push(bytes);
      rootTargets.push([leafHash(first), 1 + node]);
    }
    writeIndexEntries(rootView, ROOT_COUNT_OFFSET, rootTargets);
    sealIndex(root, ROOT_COUNT_OFFSET, ROOT_LIMIT, rootTargets.length, inodeSeed);
  }
  for (let leaf = 0; leaf < leaves; leaf++) {
    const end = leaf + 1 < leaves ? plan.leafBegins[leaf + 1]! : plan.entries.length;
    blocks.push(leafBlock(newBlock(), NO_ENTRIES, plan.entries, plan.leafBegins[leaf]!, end, inodeSeed));
  }
  assert(blocks.length === plan.blockCount, 'directory block count');
  return blocks;
}
