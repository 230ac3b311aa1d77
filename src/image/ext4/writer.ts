// Writes an ext4 file system's metadata around file data already in place (geometry.ts has the
// layout). The tree's nodes get inode numbers directory by directory (a directory's entries are
// numbered together, so listing a directory and stat-ing what it holds reads few inode table
// blocks); then one pass in inode order writes each inode and, at the same time, whatever it owns
// in the tail (directory blocks, extent tree blocks, a long symlink target, an attribute block
// shared by every inode with the same attributes). Both go out as two sequential runs. Bitmaps,
// group descriptors, the superblock, the journal superblock and the backups come last.
//
// Features: has_journal ext_attr dir_index sparse_super2 filetype extent 64bit flex_bg
// sparse_super large_file huge_file dir_nlink extra_isize metadata_csum — mke2fs's ext4 defaults,
// with sparse_super2 in place of resize_inode so that no backup superblock lands in the data.
import { ThinError, assert } from '../../errors.ts';
import { RunWriter, type BufferPool, type WriteQueue } from '../block-target.ts';
import { FsNode, type FsTree, displayPath } from '../tree.ts';
import { encodeDirectory, planDirectory, type DirEntry } from './directory.ts';
import { I_BLOCK_BYTES, buildExtentTree, extentTreeBlockCount } from './extents.ts';
import {
  BG_BLOCK_UNINIT,
  BG_INODE_UNINIT,
  BG_INODE_ZEROED,
  BLOCKS_PER_GROUP,
  BLOCK_SIZE_BYTES,
  COMPAT_DIR_INDEX,
  COMPAT_EXT_ATTR,
  COMPAT_HAS_JOURNAL,
  COMPAT_SPARSE_SUPER2,
  EXTENT_LENGTH_BLOCKS_MAX,
  FAST_SYMLINK_BYTES_MAX,
  FIRST_INODE,
  FT_BLKDEV,
  FT_CHRDEV,
  FT_DIR,
  FT_FIFO,
  FT_REG_FILE,
  FT_SOCK,
  FT_SYMLINK,
  GROUP_DESC_SIZE_BYTES,
  HASH_VERSION_HALF_MD4,
  INCOMPAT_64BIT,
  INCOMPAT_EXTENTS,
  INCOMPAT_FILETYPE,
  INCOMPAT_FLEX_BG,
  INODES_PER_BLOCK,
  INODE_EXTRA_BYTES,
  INODE_FLAG_EXTENTS,
  INODE_FLAG_INDEX,
  INODE_SIZE_BYTES,
  JBD2_MAGIC,
  JBD2_SUPERBLOCK_V2,
  JOURNAL_INODE,
  LINKS_MAX,
  LOG_BLOCK_SIZE,
  RO_COMPAT_DIR_NLINK,
  RO_COMPAT_EXTRA_ISIZE,
  RO_COMPAT_HUGE_FILE,
  RO_COMPAT_LARGE_FILE,
  RO_COMPAT_METADATA_CSUM,
  RO_COMPAT_SPARSE_SUPER,
  ROOT_INODE,
  SUPERBLOCK_OFFSET_BYTES,
  SUPER_FLAG_UNSIGNED_HASH,
  SUPER_MAGIC,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFREG,
  S_IFSOCK,
  SYMLINK_TARGET_BYTES_MAX,
  TIME_SECONDS_MAX,
  TIME_SECONDS_MIN,
  XATTR_BLOCK_REFCOUNT_MAX,
  encodeTime,
  ext4Crc32c,
  ext4Crc32cU32,
  inodeChecksumSeed,
} from './format.ts';
import { defaultLayout, layoutFor, type Geometry, type GeometryInput } from './geometry.ts';
import { INODE_XATTR_AREA_BYTES, encodeXattrBlock, fitsInBlock, fitsInInode, writeInodeXattrs, xattrEntries, xattrKey, type XattrEntry } from './xattr.ts';

export interface FilesystemOptions {
  /** First block after the file data. */
  dataEndBlock: number;
  /** The file system's size; default: defaultLayout's rule. */
  sizeBytes?: number;
  uuid: Uint8Array;
  hashSeed: Uint32Array;
  nowSeconds: number;
  /** Up to 16 bytes of volume label. */
  label?: string;
}

export interface FilesystemSummary {
  geometry: Geometry;
  inodesUsed: number;
  /** Regular files, directories and other inodes (the root and lost+found included). */
  files: number;
  directories: number;
  /** Bytes of regular files (sum of sizes; a file with several names counted once). */
  fileBytes: number;
  /** Blocks of metadata written (everything but file data). */
  metadataBlocksWritten: number;
  /** Runs of the data region no live file uses (replaced or whited-out files): [begin, end) block pairs. */
  freeDataRuns: number[];
}

const LOST_AND_FOUND = 'lost+found';
/** mke2fs gives lost+found 16 KiB so that e2fsck can reconnect files without allocating. */
const LOST_AND_FOUND_BLOCKS = 4;

/** Each kind's directory entry file type and i_mode type bits. */
const KIND_TYPES: Record<FsNode['kind'], { fileType: number; modeType: number }> = {
  file: { fileType: FT_REG_FILE, modeType: S_IFREG },
  dir: { fileType: FT_DIR, modeType: S_IFDIR },
  symlink: { fileType: FT_SYMLINK, modeType: S_IFLNK },
  char: { fileType: FT_CHRDEV, modeType: S_IFCHR },
  block: { fileType: FT_BLKDEV, modeType: S_IFBLK },
  fifo: { fileType: FT_FIFO, modeType: S_IFIFO },
  socket: { fileType: FT_SOCK, modeType: S_IFSOCK },
};

/** The tree numbered: nodes by inode number, each directory's parent. */
interface Numbering {
  nodes: Array<FsNode | undefined>;
  parentIno: Uint32Array;
  lostAndFound: FsNode;
  inodesUsed: number;
}

function numberInodes(tree: FsTree, nowSeconds: number): Numbering {
  const root = tree.root;
  let lostAndFound = root.children!.get(LOST_AND_FOUND);
  if (lostAndFound === undefined) {
    lostAndFound = new FsNode('dir');
    lostAndFound.permissions = 0o700;
    lostAndFound.links = 1;
    lostAndFound.mtimeSeconds = lostAndFound.atimeSeconds = lostAndFound.ctimeSeconds = nowSeconds;
    root.children!.set(LOST_AND_FOUND, lostAndFound);
    tree.nodeCount++;
  } else if (lostAndFound.kind !== 'dir') {
    throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: /${LOST_AND_FOUND} is a ${lostAndFound.kind}; ext4 keeps a directory there for e2fsck`);
  }
  for (const node of [root, lostAndFound]) node.ino = 0;
  const nodes: Array<FsNode | undefined> = [];
  const parents: number[] = [];
  const assign = (node: FsNode, ino: number, parent: number): void => {
    node.ino = ino;
    nodes[ino] = node;
    parents[ino] = parent;
  };
  assign(root, ROOT_INODE, ROOT_INODE);
  assign(lostAndFound, FIRST_INODE, ROOT_INODE);
  let next = FIRST_INODE + 1;
  // Reset numbers left from another write of the same tree (a retried size).
  const pendingReset: FsNode[] = [root];
  while (pendingReset.length > 0) {
    const dir = pendingReset.pop()!;
    for (const child of dir.children!.values()) {
      if (child === lostAndFound) continue;
      child.ino = 0;
      if (child.kind === 'dir') pendingReset.push(child);
    }
  }
  const pending: FsNode[] = [root];
  while (pending.length > 0) {
    const dir = pending.pop()!;
    const names = [...dir.children!.keys()].sort();
    const subdirs: FsNode[] = [];
    for (const name of names) {
      const child = dir.children!.get(name)!;
      if (child.ino === 0) assign(child, next++, dir.ino);
      if (child.kind === 'dir' && child !== lostAndFound) subdirs.push(child);
    }
    if (dir === root) subdirs.unshift(lostAndFound);
    // Depth first, in name order: reversed onto the stack.
    for (let index = subdirs.length - 1; index >= 0; index--) pending.push(subdirs[index]!);
  }
  const parentIno = new Uint32Array(next);
  for (let ino = 0; ino < next; ino++) parentIno[ino] = parents[ino] ?? 0;
  return { nodes, parentIno, lostAndFound, inodesUsed: next - 1 };
}

function directoryEntries(node: FsNode): DirEntry[] {
  const entries: DirEntry[] = [];
  for (const [name, child] of node.children!) entries.push({ name: Buffer.from(name, 'latin1'), ino: child.ino, fileType: KIND_TYPES[child.kind].fileType });
  return entries;
}

/** Where a node's path is, for messages (walks from the root; only used on errors). */
function pathOf(numbering: Numbering, node: FsNode): string {
  const names: string[] = [];
  let current = node;
  for (let guard = 0; guard < 4096 && current.ino !== ROOT_INODE; guard++) {
    const parent = numbering.nodes[numbering.parentIno[current.ino]!];
    if (parent === undefined) break;
    for (const [name, child] of parent.children!) {
      if (child === current) {
        names.push(name);
        break;
      }
    }
    current = parent;
  }
  return `/${displayPath(names.reverse().join('/'))}`;
}

/** Splits a run of blocks into extents of at most 32768 blocks. */
function contiguousExtents(firstBlock: number, blockCount: number): number[] {
  const extents: number[] = [];
  for (let logical = 0; logical < blockCount; logical += EXTENT_LENGTH_BLOCKS_MAX) {
    extents.push(logical, firstBlock + logical, Math.min(EXTENT_LENGTH_BLOCKS_MAX, blockCount - logical));
  }
  return extents;
}

interface XattrPlan {
  /** Inode attribute sets that go to a block, by key: how many inodes use each. */
  blockUsers: Map<string, number>;
}

/** What each node stores outside the inode, counted in blocks (the tail's size). */
function countTailBlocks(numbering: Numbering, hashSeed: Uint32Array, xattrPlan: XattrPlan): number {
  let blocks = 0;
  for (let ino = ROOT_INODE; ino <= numbering.inodesUsed; ino++) {
    const node = numbering.nodes[ino];
    if (node === undefined) continue;
    if (node.kind === 'dir') {
      const plan = planDirectory(directoryEntries(node), hashSeed, node === numbering.lostAndFound ? LOST_AND_FOUND_BLOCKS : 1, () => `directory ${pathOf(numbering, node)}`);
      blocks += plan.blockCount + extentTreeBlockCount(contiguousExtents(0, plan.blockCount).length / 3);
    } else if (node.kind === 'file') {
      blocks += extentTreeBlockCount((node.extents?.length ?? 0) / 3);
    } else if (node.kind === 'symlink' && node.target!.length > FAST_SYMLINK_BYTES_MAX) {
      blocks += 1;
    }
    if (node.xattrs !== undefined) {
      const entries = xattrEntries(node.xattrs);
      if (typeof entries === 'string') throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${pathOf(numbering, node)}: ${entries}`);
      if (!fitsInInode(entries)) {
        if (!fitsInBlock(entries)) {
          throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: the extended attributes of ${pathOf(numbering, node)} do not fit one ext4 attribute block (4 KiB)`);
        }
        const key = xattrKey(entries);
        const users = (xattrPlan.blockUsers.get(key) ?? 0) + 1;
        xattrPlan.blockUsers.set(key, users);
        if (users % XATTR_BLOCK_REFCOUNT_MAX === 1) blocks += 1;
      }
    }
  }
  return blocks;
}

/** Checks what only the writer can: sizes and times ext4 can hold. */
function validateNode(numbering: Numbering, node: FsNode): void {
  const problem = (text: string): ThinError => new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${pathOf(numbering, node)}: ${text}`);
  if (node.kind === 'symlink' && (node.target!.length === 0 || node.target!.length > SYMLINK_TARGET_BYTES_MAX)) {
    throw problem(`a symlink target of ${node.target!.length} bytes (ext4 holds 1 to ${SYMLINK_TARGET_BYTES_MAX})`);
  }
  if (node.uid > 0xffffffff || node.gid > 0xffffffff) throw problem(`owner ${node.uid}:${node.gid} is beyond 32 bits`);
}

function clampTime(seconds: number): number {
  return Math.min(TIME_SECONDS_MAX, Math.max(TIME_SECONDS_MIN, seconds));
}

interface InodeFields {
  mode: number;
  uid: number;
  gid: number;
  sizeBytes: number;
  atime: [number, number];
  ctime: [number, number];
  mtime: [number, number];
  crtime: [number, number];
  links: number;
  blocks512: number;
  flags: number;
  iBlock: Uint8Array;
  fileAclBlock: number;
  xattrs: readonly XattrEntry[] | undefined;
}

function encodeInode(out: Uint8Array, ino: number, fields: InodeFields, fsSeed: number): void {
  assert(out.length === INODE_SIZE_BYTES, 'inode slot size');
  out.fill(0);
  const view = new DataView(out.buffer, out.byteOffset, out.length);
  view.setUint16(0, fields.mode, true);
  view.setUint16(2, fields.uid & 0xffff, true);
  view.setUint32(4, fields.sizeBytes % 2 ** 32, true);
  const setTime = (lowAt: number, extraAt: number, [seconds, nanoseconds]: [number, number]): void => {
    const { low, extra } = encodeTime(clampTime(seconds), nanoseconds);
    view.setUint32(lowAt, low, true);
    view.setUint32(extraAt, extra, true);
  };
  setTime(8, 140, fields.atime);
  setTime(12, 132, fields.ctime);
  setTime(16, 136, fields.mtime);
  setTime(144, 148, fields.crtime);
  view.setUint16(24, fields.gid & 0xffff, true);
  view.setUint16(26, fields.links, true);
  view.setUint32(28, fields.blocks512 % 2 ** 32, true);
  view.setUint32(32, fields.flags, true);
  out.set(fields.iBlock, 40);
  view.setUint32(104, fields.fileAclBlock % 2 ** 32, true);
  view.setUint32(108, Math.floor(fields.sizeBytes / 2 ** 32), true);
  view.setUint16(116, Math.floor(fields.blocks512 / 2 ** 32), true);
  view.setUint16(118, Math.floor(fields.fileAclBlock / 2 ** 32), true);
  view.setUint16(120, Math.floor(fields.uid / 65536), true);
  view.setUint16(122, Math.floor(fields.gid / 65536), true);
  view.setUint16(128, INODE_EXTRA_BYTES, true);
  if (fields.xattrs !== undefined) writeInodeXattrs(out.subarray(128 + INODE_EXTRA_BYTES, 128 + INODE_EXTRA_BYTES + INODE_XATTR_AREA_BYTES), fields.xattrs);
  // Checksum over the whole inode with both checksum fields zero (they are: filled above).
  const crc = ext4Crc32c(inodeChecksumSeed(fsSeed, ino, 0), out);
  view.setUint16(124, crc & 0xffff, true);
  view.setUint16(130, crc >>> 16, true);
}

/** Writes the file system's metadata for `tree`, whose file data is already at its extents. */
export async function writeFilesystem(queue: WriteQueue, buffers: BufferPool, tree: FsTree, options: FilesystemOptions): Promise<FilesystemSummary> {
  const fsSeed = ext4Crc32c(0xffffffff, options.uuid);
  const numbering = numberInodes(tree, options.nowSeconds);
  for (let ino = ROOT_INODE; ino <= numbering.inodesUsed; ino++) {
    const node = numbering.nodes[ino];
    if (node !== undefined) validateNode(numbering, node);
  }
  const xattrPlan: XattrPlan = { blockUsers: new Map() };
  const tailBlocks = countTailBlocks(numbering, options.hashSeed, xattrPlan);
  const geometry = chooseGeometry({ dataEndBlock: options.dataEndBlock, inodesUsed: numbering.inodesUsed, tailBlocks }, options.sizeBytes);

  const itable = new RunWriter(queue, BLOCK_SIZE_BYTES, buffers);
  const tail = new RunWriter(queue, BLOCK_SIZE_BYTES, buffers);
  let metadataBlocksWritten = 0;
  let tailCursor = geometry.tailBegin;
  const allocateTail = (count: number): number => {
    const first = tailCursor;
    tailCursor += count;
    assert(tailCursor <= geometry.journalBegin, 'the tail outgrew its count');
    return first;
  };
  const putTail = async (blockNr: number, blocks: readonly Uint8Array[]): Promise<void> => {
    for (let index = 0; index < blocks.length; index++) await tail.put(blockNr + index, blocks[index]!);
    metadataBlocksWritten += blocks.length;
  };
  // Attribute blocks by key: the block being shared now, its users so far and its refcount, and
  // the users still to come (a block holds at most XATTR_BLOCK_REFCOUNT_MAX).
  const xattrBlocks = new Map<string, { blockNr: number; users: number; refcount: number; remaining: number }>();
  const directoriesPerGroup = new Uint32Array(geometry.groupCount);
  let files = 0;
  let directories = 0;
  let fileBytes = 0;
  const liveData = new DataBitmap(geometry.dataBeginBlock, geometry.dataEndBlock);

  // The journal's extent tree (more than four extents only for journals above 512 MiB) leads the tail.
  const journalExtents = contiguousExtents(geometry.journalBegin, geometry.journalBlocks);
  const journalTreeBlocks = extentTreeBlockCount(journalExtents.length / 3);
  const journalTreeAt = journalTreeBlocks > 0 ? allocateTail(journalTreeBlocks) : 0;
  const journalTree = buildExtentTree(journalExtents, journalTreeAt, inodeChecksumSeed(fsSeed, JOURNAL_INODE, 0));
  await putTail(journalTreeAt, journalTree.blocks);

  const inodeBlock = new Uint8Array(BLOCK_SIZE_BYTES);
  const inodeCount = numbering.inodesUsed;
  const lastInodeBlock = Math.ceil(inodeCount / INODES_PER_BLOCK);
  for (let tableBlock = 0; tableBlock < lastInodeBlock; tableBlock++) {
    inodeBlock.fill(0);
    for (let slot = 0; slot < INODES_PER_BLOCK; slot++) {
      const ino = tableBlock * INODES_PER_BLOCK + slot + 1;
      if (ino > inodeCount) break;
      const out = inodeBlock.subarray(slot * INODE_SIZE_BYTES, (slot + 1) * INODE_SIZE_BYTES);
      if (ino === JOURNAL_INODE) {
        const now: [number, number] = [options.nowSeconds, 0];
        encodeInode(out, ino, {
          mode: S_IFREG | 0o600,
          uid: 0,
          gid: 0,
          sizeBytes: geometry.journalBlocks * BLOCK_SIZE_BYTES,
          atime: now,
          ctime: now,
          mtime: now,
          crtime: now,
          links: 1,
          blocks512: (geometry.journalBlocks + journalTreeBlocks) * (BLOCK_SIZE_BYTES / 512),
          flags: INODE_FLAG_EXTENTS,
          iBlock: journalTree.iBlock,
          fileAclBlock: 0,
          xattrs: undefined,
        }, fsSeed);
        continue;
      }
      const node = numbering.nodes[ino];
      if (node === undefined) continue;
      const inodeSeed = inodeChecksumSeed(fsSeed, ino, 0);
      let iBlock: Uint8Array = new Uint8Array(I_BLOCK_BYTES);
      let flags = 0;
      let sizeBytes = node.sizeBytes;
      let ownedBlocks = 0;
      let links = node.links;
      switch (node.kind) {
        case 'dir': {
          directories++;
          directoriesPerGroup[Math.floor((ino - 1) / geometry.inodesPerGroup)]!++;
          const entries = directoryEntries(node);
          const plan = planDirectory(entries, options.hashSeed, node === numbering.lostAndFound ? LOST_AND_FOUND_BLOCKS : 1);
          const dirExtents = contiguousExtents(0, plan.blockCount);
          const treeBlocks = extentTreeBlockCount(dirExtents.length / 3);
          const first = allocateTail(plan.blockCount);
          for (let index = 0; index < dirExtents.length; index += 3) dirExtents[index + 1] = first + dirExtents[index]!;
          await putTail(first, encodeDirectory(plan, ino, numbering.parentIno[ino]!, inodeSeed));
          const treeAt = treeBlocks > 0 ? allocateTail(treeBlocks) : 0;
          const tree = buildExtentTree(dirExtents, treeAt, inodeSeed);
          await putTail(treeAt, tree.blocks);
          iBlock = tree.iBlock;
          flags = INODE_FLAG_EXTENTS | (plan.levels > 0 ? INODE_FLAG_INDEX : 0);
          sizeBytes = plan.blockCount * BLOCK_SIZE_BYTES;
          ownedBlocks = plan.blockCount + treeBlocks;
          let subdirs = 0;
          for (const child of node.children!.values()) if (child.kind === 'dir') subdirs++;
          links = 2 + subdirs > LINKS_MAX ? 1 : 2 + subdirs;
          break;
        }
        case 'file': {
          files++;
          fileBytes += node.sizeBytes;
          const extents = node.extents ?? [];
          for (let index = 0; index < extents.length; index += 3) {
            liveData.mark(extents[index + 1]!, extents[index + 2]!);
            ownedBlocks += extents[index + 2]!;
          }
          const treeBlocks = extentTreeBlockCount(extents.length / 3);
          const treeAt = treeBlocks > 0 ? allocateTail(treeBlocks) : 0;
          const tree = buildExtentTree(extents, treeAt, inodeSeed);
          await putTail(treeAt, tree.blocks);
          iBlock = tree.iBlock;
          flags = INODE_FLAG_EXTENTS;
          ownedBlocks += treeBlocks;
          break;
        }
        case 'symlink': {
          files++;
          const target = node.target!;
          if (target.length <= FAST_SYMLINK_BYTES_MAX) {
            iBlock.set(target);
          } else {
            const blockNr = allocateTail(1);
            const block = new Uint8Array(BLOCK_SIZE_BYTES);
            block.set(target);
            await putTail(blockNr, [block]);
            iBlock = buildExtentTree([0, blockNr, 1], 0, inodeSeed).iBlock;
            flags = INODE_FLAG_EXTENTS;
            ownedBlocks = 1;
          }
          break;
        }
        case 'char':
        case 'block': {
          files++;
          const view = new DataView(iBlock.buffer);
          const { deviceMajor: major, deviceMinor: minor } = node;
          if (major < 256 && minor < 256) view.setUint32(0, (major << 8) | minor, true);
          else view.setUint32(4, ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0, true);
          sizeBytes = 0;
          break;
        }
        default:
          files++;
          sizeBytes = 0;
          break;
      }
      let inInode: readonly XattrEntry[] | undefined;
      let fileAclBlock = 0;
      if (node.xattrs !== undefined) {
        const entries = xattrEntries(node.xattrs);
        assert(typeof entries !== 'string', 'attributes validated when counted');
        if (fitsInInode(entries)) {
          inInode = entries;
        } else {
          const key = xattrKey(entries);
          let shared = xattrBlocks.get(key);
          if (shared === undefined || shared.users === shared.refcount) {
            const remaining = shared === undefined ? xattrPlan.blockUsers.get(key)! : shared.remaining;
            const refcount = Math.min(XATTR_BLOCK_REFCOUNT_MAX, remaining);
            assert(refcount > 0, 'more attribute block users than counted');
            shared = { blockNr: allocateTail(1), users: 0, refcount, remaining: remaining - refcount };
            xattrBlocks.set(key, shared);
            await putTail(shared.blockNr, [encodeXattrBlock(entries, refcount, shared.blockNr, fsSeed)]);
          }
          shared.users++;
          fileAclBlock = shared.blockNr;
          ownedBlocks += 1;
        }
      }
      encodeInode(out, ino, {
        mode: KIND_TYPES[node.kind].modeType | node.permissions,
        uid: node.uid,
        gid: node.gid,
        sizeBytes,
        atime: [node.atimeSeconds, node.atimeNanoseconds],
        ctime: [node.ctimeSeconds, node.ctimeNanoseconds],
        mtime: [node.mtimeSeconds, node.mtimeNanoseconds],
        crtime: [node.ctimeSeconds, node.ctimeNanoseconds],
        links,
        blocks512: ownedBlocks * (BLOCK_SIZE_BYTES / 512),
        flags,
        iBlock,
        fileAclBlock,
        xattrs: inInode,
      }, fsSeed);
    }
    await itable.put(geometry.inodeTableBegin + tableBlock, inodeBlock);
    metadataBlocksWritten++;
  }
  assert(tailCursor === geometry.journalBegin, `the tail used ${tailCursor - geometry.tailBegin} blocks of ${geometry.tailBlocks} counted`);
  await itable.flush();
  await tail.flush();

  metadataBlocksWritten += await writeGroupMetadata(queue, buffers, geometry, {
    fsSeed,
    liveData,
    inodesUsed: inodeCount,
    directoriesPerGroup,
    options,
    journalIBlock: journalTree.iBlock,
  });
  return { geometry, inodesUsed: inodeCount, files, directories, fileBytes, metadataBlocksWritten, freeDataRuns: liveData.freeRuns() };
}

function chooseGeometry(input: GeometryInput, sizeBytes: number | undefined): Geometry {
  // The journal's own extent tree needs a tail block when it has more than four extents.
  const withJournalTree = (geometry: Geometry): boolean => extentTreeBlockCount(contiguousExtents(0, geometry.journalBlocks).length / 3) > 0;
  const attempt = (tailBlocks: number): Geometry | string => {
    const adjusted = { ...input, tailBlocks };
    if (sizeBytes === undefined) return defaultLayout(adjusted);
    return layoutFor(adjusted, Math.floor(sizeBytes / BLOCK_SIZE_BYTES));
  };
  let geometry = attempt(input.tailBlocks);
  if (typeof geometry !== 'string' && withJournalTree(geometry)) geometry = attempt(input.tailBlocks + 1);
  if (typeof geometry === 'string') throw new ThinError('THIN_IMAGE_INVALID', `The image does not fit --size ${sizeBytes}: ${geometry}`);
  if (withJournalTree(geometry) && geometry.tailBlocks === input.tailBlocks) {
    throw new ThinError('THIN_IMAGE_INVALID', 'Cannot place the journal');
  }
  return geometry;
}

/** Which blocks of the data region live files use. */
export class DataBitmap {
  readonly begin: number;
  readonly end: number;
  readonly bits: Uint8Array;

  constructor(begin: number, end: number) {
    this.begin = begin;
    this.end = end;
    this.bits = new Uint8Array(Math.ceil(Math.max(0, end - begin) / 8));
  }

  mark(first: number, count: number): void {
    assert(first >= this.begin && first + count <= this.end, `file data at blocks ${first}+${count} outside the data region`);
    for (let block = first - this.begin; block < first - this.begin + count; block++) this.bits[block >> 3]! |= 1 << (block & 7);
  }

  isUsed(block: number): boolean {
    const bit = block - this.begin;
    return (this.bits[bit >> 3]! & (1 << (bit & 7))) !== 0;
  }

  /** Runs of unused blocks in the region: [begin, end) pairs. */
  freeRuns(): number[] {
    const runs: number[] = [];
    let runBegin = -1;
    for (let block = this.begin; block <= this.end; block++) {
      const free = block < this.end && !this.isUsed(block);
      if (free && runBegin < 0) runBegin = block;
      if (!free && runBegin >= 0) {
        runs.push(runBegin, block);
        runBegin = -1;
      }
    }
    return runs;
  }
}

interface GroupMetadataInput {
  fsSeed: number;
  liveData: DataBitmap;
  inodesUsed: number;
  directoriesPerGroup: Uint32Array;
  options: FilesystemOptions;
  journalIBlock: Uint8Array;
}

/** Bitmaps, descriptors, superblocks and the journal superblock; returns blocks written. */
async function writeGroupMetadata(queue: WriteQueue, buffers: BufferPool, geometry: Geometry, input: GroupMetadataInput): Promise<number> {
  const { fsSeed } = input;
  const writer = new RunWriter(queue, BLOCK_SIZE_BYTES, buffers);
  let written = 0;
  const hasSuper = (group: number): boolean => group === 0 || group === geometry.backupGroups[0] || group === geometry.backupGroups[1];
  const isUsed = (block: number): boolean => {
    if (block < 1 + geometry.gdtBlocks) return true;
    if (block >= geometry.dataBeginBlock && block < geometry.dataEndBlock) return input.liveData.isUsed(block);
    if (block >= geometry.blockBitmapBegin && block < geometry.usedEnd) return true;
    const group = Math.floor(block / BLOCKS_PER_GROUP);
    return group > 0 && hasSuper(group) && block - group * BLOCKS_PER_GROUP < 1 + geometry.gdtBlocks;
  };
  const groupHasUsedBlocks = (group: number): boolean => {
    const begin = group * BLOCKS_PER_GROUP;
    return begin < geometry.usedEnd || hasSuper(group);
  };
  const descriptors = new Uint8Array(geometry.gdtBlocks * BLOCK_SIZE_BYTES);
  const descView = new DataView(descriptors.buffer);
  let freeBlocksTotal = 0;
  let freeInodesTotal = 0;
  const blockBitmap = new Uint8Array(BLOCK_SIZE_BYTES);
  const inodeBitmap = new Uint8Array(BLOCK_SIZE_BYTES);
  const ipg = geometry.inodesPerGroup;
  for (let group = 0; group < geometry.groupCount; group++) {
    const groupBegin = group * BLOCKS_PER_GROUP;
    const groupBlocks = Math.min(BLOCKS_PER_GROUP, geometry.blockCount - groupBegin);
    const isLast = group === geometry.groupCount - 1;
    let flags = BG_INODE_ZEROED;
    let freeBlocks = groupBlocks;
    let blockBitmapCsum = 0;
    if (groupHasUsedBlocks(group) || isLast) {
      blockBitmap.fill(0);
      const markUsed = (bit: number): void => {
        const mask = 1 << (bit & 7);
        if ((blockBitmap[bit >> 3]! & mask) !== 0) return;
        blockBitmap[bit >> 3]! |= mask;
        freeBlocks--;
      };
      // Past usedEnd only a backup superblock and its descriptors are in use.
      const scanEnd = Math.min(groupBlocks, Math.max(0, geometry.usedEnd - groupBegin));
      for (let bit = 0; bit < scanEnd; bit++) if (isUsed(groupBegin + bit)) markUsed(bit);
      if (group > 0 && hasSuper(group)) for (let bit = 0; bit < 1 + geometry.gdtBlocks; bit++) markUsed(bit);
      // Padding past the file system's end in the last group is marked used.
      for (let bit = groupBlocks; bit < BLOCKS_PER_GROUP; bit++) blockBitmap[bit >> 3]! |= 1 << (bit & 7);
      blockBitmapCsum = ext4Crc32c(fsSeed, blockBitmap.subarray(0, BLOCKS_PER_GROUP / 8));
      await writer.put(geometry.blockBitmapBegin + group, blockBitmap);
      written++;
    } else {
      flags |= BG_BLOCK_UNINIT;
    }
    const firstIno = group * ipg + 1;
    const usedInGroup = Math.max(0, Math.min(ipg, input.inodesUsed - firstIno + 1));
    let inodeBitmapCsum = 0;
    if (usedInGroup > 0) {
      inodeBitmap.fill(0);
      for (let bit = 0; bit < usedInGroup; bit++) inodeBitmap[bit >> 3]! |= 1 << (bit & 7);
      for (let bit = ipg; bit < BLOCK_SIZE_BYTES * 8; bit++) inodeBitmap[bit >> 3]! |= 1 << (bit & 7);
      inodeBitmapCsum = ext4Crc32c(fsSeed, inodeBitmap.subarray(0, ipg / 8));
      await writer.put(geometry.inodeBitmapBegin + group, inodeBitmap);
      written++;
    } else {
      flags |= BG_INODE_UNINIT;
    }
    freeBlocksTotal += freeBlocks;
    freeInodesTotal += ipg - usedInGroup;
    const at = group * GROUP_DESC_SIZE_BYTES;
    setLoHi32(descView, at + 0x00, at + 0x20, geometry.blockBitmapBegin + group);
    setLoHi32(descView, at + 0x04, at + 0x24, geometry.inodeBitmapBegin + group);
    setLoHi32(descView, at + 0x08, at + 0x28, geometry.inodeTableBegin + group * geometry.inodeTableBlocksPerGroup);
    setLoHi16(descView, at + 0x0c, at + 0x2c, freeBlocks);
    setLoHi16(descView, at + 0x0e, at + 0x2e, ipg - usedInGroup);
    setLoHi16(descView, at + 0x10, at + 0x30, input.directoriesPerGroup[group]!);
    descView.setUint16(at + 0x12, flags, true);
    setLoHi16(descView, at + 0x18, at + 0x38, blockBitmapCsum);
    setLoHi16(descView, at + 0x1a, at + 0x3a, inodeBitmapCsum);
    setLoHi16(descView, at + 0x1c, at + 0x32, ipg - usedInGroup);
    const descriptor = descriptors.subarray(at, at + GROUP_DESC_SIZE_BYTES);
    descView.setUint16(at + 0x1e, ext4Crc32c(ext4Crc32cU32(fsSeed, group), descriptor) & 0xffff, true);
  }
  await writer.flush();

  const superblock = (group: number): Uint8Array => encodeSuperblock(geometry, {
    ...input,
    group,
    freeBlocks: freeBlocksTotal,
    freeInodes: freeInodesTotal,
  });
  // Primary: block 0 holds the superblock at byte 1024, then the descriptors.
  const head = new Uint8Array((1 + geometry.gdtBlocks) * BLOCK_SIZE_BYTES);
  head.set(superblock(0), SUPERBLOCK_OFFSET_BYTES);
  head.set(descriptors, BLOCK_SIZE_BYTES);
  await writer.put(0, head);
  written += 1 + geometry.gdtBlocks;
  await writer.flush();
  for (const group of geometry.backupGroups) {
    if (group === 0) continue;
    const copy = new Uint8Array((1 + geometry.gdtBlocks) * BLOCK_SIZE_BYTES);
    copy.set(superblock(group), 0);
    copy.set(descriptors, BLOCK_SIZE_BYTES);
    await writer.put(group * BLOCKS_PER_GROUP, copy);
    await writer.flush();
    written += 1 + geometry.gdtBlocks;
  }
  await writer.put(geometry.journalBegin, encodeJournalSuperblock(geometry, input.options.uuid));
  await writer.flush();
  written++;
  return written;
}

function setLoHi32(view: DataView, lowAt: number, highAt: number, value: number): void {
  view.setUint32(lowAt, value % 2 ** 32, true);
  view.setUint32(highAt, Math.floor(value / 2 ** 32), true);
}

function setLoHi16(view: DataView, lowAt: number, highAt: number, value: number): void {
  view.setUint16(lowAt, value & 0xffff, true);
  view.setUint16(highAt, Math.floor(value / 65536), true);
}

interface SuperblockInput extends GroupMetadataInput {
  group: number;
  freeBlocks: number;
  freeInodes: number;
}

/** The 1024-byte superblock (for the primary, group 0, or a backup's group). */
function encodeSuperblock(geometry: Geometry, input: SuperblockInput): Uint8Array {
  const sb = new Uint8Array(1024);
  const view = new DataView(sb.buffer);
  const now = input.options.nowSeconds >>> 0;
  view.setUint32(0x00, geometry.groupCount * geometry.inodesPerGroup, true);
  setLoHi32(view, 0x04, 0x150, geometry.blockCount);
  setLoHi32(view, 0x08, 0x154, 0);
  setLoHi32(view, 0x0c, 0x158, input.freeBlocks);
  view.setUint32(0x10, input.freeInodes, true);
  view.setUint32(0x14, 0, true); // s_first_data_block
  view.setUint32(0x18, LOG_BLOCK_SIZE, true);
  view.setUint32(0x1c, LOG_BLOCK_SIZE, true);
  view.setUint32(0x20, BLOCKS_PER_GROUP, true);
  view.setUint32(0x24, BLOCKS_PER_GROUP, true);
  view.setUint32(0x28, geometry.inodesPerGroup, true);
  view.setUint32(0x30, now, true); // s_wtime
  view.setUint16(0x36, 0xffff, true); // s_max_mnt_count: -1, no mount-count checks
  view.setUint16(0x38, SUPER_MAGIC, true);
  view.setUint16(0x3a, 1, true); // s_state: clean
  view.setUint16(0x3c, 1, true); // s_errors: continue
  view.setUint32(0x40, now, true); // s_lastcheck
  view.setUint32(0x4c, 1, true); // s_rev_level: dynamic
  view.setUint32(0x54, FIRST_INODE, true);
  view.setUint16(0x58, INODE_SIZE_BYTES, true);
  view.setUint16(0x5a, input.group, true);
  view.setUint32(0x5c, COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2, true);
  view.setUint32(0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG, true);
  view.setUint32(
    0x64,
    RO_COMPAT_SPARSE_SUPER | RO_COMPAT_LARGE_FILE | RO_COMPAT_HUGE_FILE | RO_COMPAT_DIR_NLINK | RO_COMPAT_EXTRA_ISIZE | RO_COMPAT_METADATA_CSUM,
    true,
  );
  sb.set(input.options.uuid, 0x68);
  if (input.options.label !== undefined) sb.set(Buffer.from(input.options.label, 'utf8').subarray(0, 16), 0x78);
  view.setUint32(0xe0, JOURNAL_INODE, true);
  for (let index = 0; index < 4; index++) view.setUint32(0xec + index * 4, input.options.hashSeed[index]!, true);
  sb[0xfc] = HASH_VERSION_HALF_MD4;
  sb[0xfd] = 1; // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
  view.setUint16(0xfe, GROUP_DESC_SIZE_BYTES, true);
  view.setUint32(0x100, 0x0004 | 0x0008, true); // default mount options: user_xattr, acl
  view.setUint32(0x108, now, true); // s_mkfs_time
  // s_jnl_blocks: i_block of the journal inode, then i_size_high and i_size.
  sb.set(input.journalIBlock, 0x10c);
  const journalBytes = geometry.journalBlocks * BLOCK_SIZE_BYTES;
  view.setUint32(0x10c + 15 * 4, Math.floor(journalBytes / 2 ** 32), true);
  view.setUint32(0x10c + 16 * 4, journalBytes % 2 ** 32, true);
  view.setUint16(0x15c, INODE_EXTRA_BYTES, true);
  view.setUint16(0x15e, INODE_EXTRA_BYTES, true);
  view.setUint32(0x160, SUPER_FLAG_UNSIGNED_HASH, true);
  sb[0x174] = 4; // s_log_groups_per_flex
  sb[0x175] = 1; // s_checksum_type: crc32c
  view.setUint32(0x24c, geometry.backupGroups[0], true);
  view.setUint32(0x250, geometry.backupGroups[1], true);
  view.setUint32(0x3fc, ext4Crc32c(0xffffffff, sb.subarray(0, 0x3fc)), true);
  return sb;
}

/** A clean, empty jbd2 superblock (v2, as mke2fs writes it; the kernel adds checksum features at mount). */
function encodeJournalSuperblock(geometry: Geometry, uuid: Uint8Array): Uint8Array {
  const block = new Uint8Array(BLOCK_SIZE_BYTES);
  const view = new DataView(block.buffer);
  view.setUint32(0x00, JBD2_MAGIC);
  view.setUint32(0x04, JBD2_SUPERBLOCK_V2);
  view.setUint32(0x0c, BLOCK_SIZE_BYTES);
  view.setUint32(0x10, geometry.journalBlocks);
  view.setUint32(0x14, 1); // s_first
  view.setUint32(0x18, 1); // s_sequence
  view.setUint32(0x1c, 0); // s_start: 0 = clean, nothing to replay
  block.set(uuid, 0x30);
  view.setUint32(0x40, 1); // s_nr_users
  return block;
}
