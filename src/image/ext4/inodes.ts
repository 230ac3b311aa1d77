// The inode table and the tail, in one pass in inode order: each inode is encoded into its table
// block, and what it owns beyond the inode (directory blocks, extent tree blocks, a long symlink's
// target, an attribute block shared by every inode with the same attributes) goes to the tail at
// the next free tail block. Both are written as two sequential runs.
//
// countTail sizes the tail beforehand with the same rules (the geometry needs the size before the
// tail can be placed); the write pass asserts that it uses exactly that many blocks.
import { ThinError, assert } from '../../errors.ts';
import { RunWriter, type BufferPool, type WriteQueue } from '../block-target.ts';
import type { FsNode } from '../tree.ts';
import { encodeDirectory, planDirectory, type DirEntry, type DirectoryPlan } from './directory.ts';
import { buildExtentTree, contiguousExtents, extentTreeBlockCount } from './extents.ts';
import {
  BLOCK_SIZE_BYTES,
  FAST_SYMLINK_BYTES_MAX,
  FT_BLKDEV,
  FT_CHRDEV,
  FT_DIR,
  FT_FIFO,
  FT_REG_FILE,
  FT_SOCK,
  FT_SYMLINK,
  INODES_PER_BLOCK,
  INODE_EXTRA_BYTES,
  INODE_FLAG_EXTENTS,
  INODE_FLAG_INDEX,
  INODE_SIZE_BYTES,
  JOURNAL_INODE,
  LINKS_MAX,
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
  encodeTimeExtra,
  encodeTimeLow,
  ext4Crc32c,
  inodeChecksumSeed,
} from './format.ts';
import type { Geometry } from './geometry.ts';
import { DataBitmap } from './groups.ts';
import { pathOf, type Numbering } from './numbering.ts';
import { INODE_XATTR_AREA_BYTES, encodeXattrBlock, fitsInBlock, fitsInInode, writeInodeXattrs, xattrEntries, xattrKey, type XattrEntry } from './xattr.ts';

/** mke2fs gives lost+found 16 KiB so that e2fsck can reconnect files without allocating. */
const LOST_AND_FOUND_BLOCKS = 4;
const I_BLOCK_AT = 40;
/** Inode fields: offsets in the 256-byte inode (e2fsprogs struct ext2_inode_large). */
const XATTR_AREA_AT = 128 + INODE_EXTRA_BYTES;

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

function directoryEntries(node: FsNode): DirEntry[] {
  const entries: DirEntry[] = [];
  // forEach: no [name, child] pair and iterator result per entry in unoptimized code (planDirectory).
  node.children!.forEach((child, name) => {
    entries.push({ name, ino: child.ino, fileType: KIND_TYPES[child.kind].fileType });
  });
  return entries;
}

/** How the tail will be laid out, found while counting it. */
export interface TailPlan {
  blocks: number;
  /** Attribute sets stored in blocks, by key: how many inodes use each. */
  xattrUsers: Map<string, number>;
  /** Plans of the directories, kept from counting for writing (each is sorted once). */
  directories: Map<FsNode, DirectoryPlan>;
}

function minBlocksOf(numbering: Numbering, node: FsNode): number {
  return node === numbering.lostAndFound ? LOST_AND_FOUND_BLOCKS : 1;
}

/** Checks what only the writer can (ext4's limits on one node), naming the node. */
function validateNode(numbering: Numbering, node: FsNode): void {
  if (node.kind === 'symlink' && (node.target!.length === 0 || node.target!.length > SYMLINK_TARGET_BYTES_MAX)) {
    throw invalidNode(numbering, node, `a symlink target of ${node.target!.length} bytes (ext4 holds 1 to ${SYMLINK_TARGET_BYTES_MAX})`);
  }
  if (node.uid > 0xffffffff || node.gid > 0xffffffff) throw invalidNode(numbering, node, `owner ${node.uid}:${node.gid} is beyond 32 bits`);
}

/** The error for a node ext4 cannot hold (a function, not a closure made for every node checked). */
function invalidNode(numbering: Numbering, node: FsNode, text: string): ThinError {
  return new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${pathOf(numbering, node)}: ${text}`);
}

/** The tail's size: every block any node owns outside its inode. */
export function countTail(numbering: Numbering, hashSeed: Uint32Array): TailPlan {
  const plan: TailPlan = { blocks: 0, xattrUsers: new Map(), directories: new Map() };
  for (let ino = 1; ino <= numbering.inodesUsed; ino++) {
    const node = numbering.nodes[ino];
    if (node === undefined) continue;
    validateNode(numbering, node);
    if (node.kind === 'dir') {
      const directory = planDirectory(directoryEntries(node), hashSeed, minBlocksOf(numbering, node), () => `directory ${pathOf(numbering, node)}`);
      plan.directories.set(node, directory);
      plan.blocks += directory.blockCount + extentTreeBlockCount(contiguousExtents(0, directory.blockCount).length / 3);
    } else if (node.kind === 'file') {
      plan.blocks += extentTreeBlockCount((node.extents?.length ?? 0) / 3);
    } else if (node.kind === 'symlink' && node.target!.length > FAST_SYMLINK_BYTES_MAX) {
      plan.blocks += 1;
    }
    if (node.xattrs !== undefined) {
      const entries = xattrEntries(node.xattrs);
      if (typeof entries === 'string') throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${pathOf(numbering, node)}: ${entries}`);
      if (!fitsInInode(entries)) {
        if (!fitsInBlock(entries)) {
          throw new ThinError('THIN_IMAGE_INVALID', `Invalid image: the extended attributes of ${pathOf(numbering, node)} do not fit one ext4 attribute block (4 KiB)`);
        }
        const key = xattrKey(entries);
        const users = (plan.xattrUsers.get(key) ?? 0) + 1;
        plan.xattrUsers.set(key, users);
        if (users % XATTR_BLOCK_REFCOUNT_MAX === 1) plan.blocks += 1;
      }
    }
  }
  return plan;
}

export interface InodesResult {
  files: number;
  directories: number;
  fileBytes: number;
  directoriesPerGroup: Uint32Array;
  liveData: DataBitmap;
  blocksWritten: number;
  /** i_block of the journal inode (the superblock keeps a copy). */
  journalIBlock: Uint8Array;
}

export interface InodeTableOptions {
  fsSeed: number;
  hashSeed: Uint32Array;
  nowSeconds: number;
  /**
   * Inode table blocks go to the queue without their inodes' checksums: whoever writes them seals
   * them first (sealInodeTable), on another thread.
   */
  unsealed: boolean;
}

/** Writes the inode table (inodes 1 .. inodesUsed) and the tail. */
export async function writeInodes(queue: WriteQueue, buffers: BufferPool, numbering: Numbering, tailPlan: TailPlan, geometry: Geometry, options: InodeTableOptions): Promise<InodesResult> {
  return new InodeTableWriter(queue, buffers, numbering, tailPlan, geometry, options).run();
}

/** i_extra_isize: never zero in an inode this writer encodes, always zero in one it leaves out. */
const EXTRA_ISIZE_AT = 128;

/**
 * Writes the checksums of the inodes in `bytes`, whole inode table blocks from inode `firstIno`
 * written unsealed (InodeTableOptions.unsealed); inodes left out (all zero) stay so. About 16,000
 * checksums per 4 MiB: the main thread computes them for the parsing thread, which goes on
 * encoding meanwhile (docs/benchmarks.md "Image import: a shorter metadata step").
 */
export function sealInodeTable(bytes: Uint8Array, firstIno: number, fsSeed: number): void {
  assert(bytes.length % BLOCK_SIZE_BYTES === 0, 'inode table blocks are whole');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  for (let at = 0, ino = firstIno; at < bytes.length; at += INODE_SIZE_BYTES, ino++) {
    if (view.getUint16(at + EXTRA_ISIZE_AT, true) !== 0) sealInode(bytes, view, at, ino, fsSeed);
  }
}

/** i_checksum_lo (in osd2) and i_checksum_hi. */
const CHECKSUM_LO_AT = 124;
const CHECKSUM_HI_AT = 130;

/** The inode's checksum, over the whole inode with both checksum fields zero (so sealing again gives the same). */
function sealInode(bytes: Uint8Array, view: DataView, at: number, ino: number, fsSeed: number): void {
  view.setUint16(at + CHECKSUM_LO_AT, 0, true);
  view.setUint16(at + CHECKSUM_HI_AT, 0, true);
  const crc = ext4Crc32c(inodeChecksumSeed(fsSeed, ino, 0), bytes.subarray(at, at + INODE_SIZE_BYTES));
  view.setUint16(at + CHECKSUM_LO_AT, crc & 0xffff, true);
  view.setUint16(at + CHECKSUM_HI_AT, crc >>> 16, true);
}

class InodeTableWriter {
  readonly #numbering: Numbering;
  readonly #tailPlan: TailPlan;
  readonly #geometry: Geometry;
  readonly #fsSeed: number;
  readonly #hashSeed: Uint32Array;
  readonly #nowSeconds: number;
  readonly #unsealed: boolean;
  readonly #itable: RunWriter;
  readonly #tail: RunWriter;
  #tailCursor: number;
  /** Attribute blocks by key: the block being shared now, its users and refcount, and users still to come. */
  readonly #xattrBlocks = new Map<string, { blockNr: number; users: number; refcount: number; remaining: number }>();
  readonly #result: InodesResult;
  readonly #tableBlock = new Uint8Array(BLOCK_SIZE_BYTES);
  readonly #view = new DataView(this.#tableBlock.buffer);
  /** Where directories are encoded (encodeDirectory's `space`), as large as the largest so far. */
  #directorySpace = new Uint8Array(BLOCK_SIZE_BYTES);
  /**
   * The fields of the inode being encoded: one object filled for each inode. An object literal
   * per inode, with a {low, extra} pair per time, was ~15 MB of garbage for the parsing thread's
   * collector in an import of /usr/share, its code still unoptimized for most of them.
   */
  readonly #fields: InodeFields = {
    mode: 0,
    uid: 0,
    gid: 0,
    sizeBytes: 0,
    atimeSeconds: 0,
    atimeNanoseconds: 0,
    ctimeSeconds: 0,
    ctimeNanoseconds: 0,
    mtimeSeconds: 0,
    mtimeNanoseconds: 0,
    links: 0,
    blocks512: 0,
    flags: 0,
    fileAclBlock: 0,
    xattrs: undefined,
  };

  constructor(queue: WriteQueue, buffers: BufferPool, numbering: Numbering, tailPlan: TailPlan, geometry: Geometry, options: InodeTableOptions) {
    this.#numbering = numbering;
    this.#tailPlan = tailPlan;
    this.#geometry = geometry;
    this.#fsSeed = options.fsSeed;
    this.#hashSeed = options.hashSeed;
    this.#nowSeconds = options.nowSeconds;
    this.#unsealed = options.unsealed;
    this.#itable = new RunWriter(queue, BLOCK_SIZE_BYTES, buffers);
    this.#tail = new RunWriter(queue, BLOCK_SIZE_BYTES, buffers);
    this.#tailCursor = geometry.tailBegin;
    this.#result = {
      files: 0,
      directories: 0,
      fileBytes: 0,
      directoriesPerGroup: new Uint32Array(geometry.groupCount),
      liveData: new DataBitmap(geometry.dataBeginBlock, geometry.dataEndBlock),
      blocksWritten: 0,
      journalIBlock: new Uint8Array(0),
    };
  }

  #allocateTail(count: number): number {
    const first = this.#tailCursor;
    this.#tailCursor += count;
    assert(this.#tailCursor <= this.#geometry.journalBegin, 'the tail outgrew its count');
    return first;
  }

  /** Writes tail blocks from blockNr; a promise only when there are any (most inodes have none). */
  #putTail(blockNr: number, blocks: readonly Uint8Array[]): void | Promise<void> {
    if (blocks.length === 0) return undefined;
    this.#result.blocksWritten += blocks.length;
    return this.#putBlocks(blockNr, blocks);
  }

  async #putBlocks(blockNr: number, blocks: readonly Uint8Array[]): Promise<void> {
    for (let index = 0; index < blocks.length; index++) {
      const pending = this.#tail.put(blockNr + index, blocks[index]!);
      if (pending !== undefined) await pending;
    }
  }

  async run(): Promise<InodesResult> {
    const inodesUsed = this.#numbering.inodesUsed;
    const tableBlocks = Math.ceil(inodesUsed / INODES_PER_BLOCK);
    for (let tableBlock = 0; tableBlock < tableBlocks; tableBlock++) {
      this.#tableBlock.fill(0);
      for (let slot = 0; slot < INODES_PER_BLOCK; slot++) {
        const ino = tableBlock * INODES_PER_BLOCK + slot + 1;
        if (ino > inodesUsed) break;
        const at = slot * INODE_SIZE_BYTES;
        if (ino === JOURNAL_INODE) {
          await this.#journalInode(ino, at);
          continue;
        }
        const node = this.#numbering.nodes[ino];
        if (node !== undefined) await this.#inode(ino, node, at);
      }
      const pending = this.#itable.put(this.#geometry.inodeTableBegin + tableBlock, this.#tableBlock);
      if (pending !== undefined) await pending;
      this.#result.blocksWritten++;
    }
    assert(this.#tailCursor === this.#geometry.journalBegin, `the tail used ${this.#tailCursor - this.#geometry.tailBegin} blocks of ${this.#geometry.tailBlocks} counted`);
    await this.#itable.flush();
    await this.#tail.flush();
    return this.#result;
  }

  /** The journal: contiguous blocks after the tail; only its superblock is ever written (groups.ts). */
  async #journalInode(ino: number, at: number): Promise<void> {
    const geometry = this.#geometry;
    const extents = contiguousExtents(geometry.journalBegin, geometry.journalBlocks);
    const treeBlocks = extentTreeBlockCount(extents.length / 3);
    const treeAt = treeBlocks > 0 ? this.#allocateTail(treeBlocks) : 0;
    await this.#putTail(treeAt, buildExtentTree(extents, treeAt, inodeChecksumSeed(this.#fsSeed, ino, 0), this.#view, at + I_BLOCK_AT));
    this.#result.journalIBlock = this.#tableBlock.slice(at + I_BLOCK_AT, at + I_BLOCK_AT + 60);
    const now = this.#nowSeconds;
    const fields = this.#fields;
    fields.mode = S_IFREG | 0o600;
    fields.uid = 0;
    fields.gid = 0;
    fields.sizeBytes = geometry.journalBlocks * BLOCK_SIZE_BYTES;
    fields.atimeSeconds = now;
    fields.atimeNanoseconds = 0;
    fields.ctimeSeconds = now;
    fields.ctimeNanoseconds = 0;
    fields.mtimeSeconds = now;
    fields.mtimeNanoseconds = 0;
    fields.links = 1;
    fields.blocks512 = (geometry.journalBlocks + treeBlocks) * (BLOCK_SIZE_BYTES / 512);
    fields.flags = INODE_FLAG_EXTENTS;
    fields.fileAclBlock = 0;
    fields.xattrs = undefined;
    this.#encode(at, ino, fields);
  }

  async #inode(ino: number, node: FsNode, at: number): Promise<void> {
    const inodeSeed = inodeChecksumSeed(this.#fsSeed, ino, 0);
    const view = this.#view;
    const iBlockAt = at + I_BLOCK_AT;
    let flags = 0;
    let sizeBytes = node.sizeBytes;
    let ownedBlocks = 0;
    let links = node.links;
    const result = this.#result;
    switch (node.kind) {
      case 'dir': {
        result.directories++;
        result.directoriesPerGroup[Math.floor((ino - 1) / this.#geometry.inodesPerGroup)]!++;
        const plan = this.#tailPlan.directories.get(node);
        assert(plan !== undefined, 'a directory not planned when the tail was counted');
        const first = this.#allocateTail(plan.blockCount);
        // The blocks are views of one space, reused: put copies them before the next directory.
        if (this.#directorySpace.length < plan.blockCount * BLOCK_SIZE_BYTES) this.#directorySpace = new Uint8Array(plan.blockCount * BLOCK_SIZE_BYTES);
        await this.#putTail(first, encodeDirectory(plan, ino, this.#numbering.parentIno[ino]!, inodeSeed, this.#directorySpace));
        const extents = contiguousExtents(first, plan.blockCount);
        const treeBlocks = extentTreeBlockCount(extents.length / 3);
        const treeAt = treeBlocks > 0 ? this.#allocateTail(treeBlocks) : 0;
        await this.#putTail(treeAt, buildExtentTree(extents, treeAt, inodeSeed, view, iBlockAt));
        flags = INODE_FLAG_EXTENTS | (plan.levels > 0 ? INODE_FLAG_INDEX : 0);
        sizeBytes = plan.blockCount * BLOCK_SIZE_BYTES;
        ownedBlocks = plan.blockCount + treeBlocks;
        const subdirs = this.#numbering.subdirs[ino]!;
        links = 2 + subdirs > LINKS_MAX ? 1 : 2 + subdirs;
        break;
      }
      case 'file': {
        result.files++;
        result.fileBytes += node.sizeBytes;
        const extents = node.extents ?? [];
        for (let index = 0; index < extents.length; index += 3) {
          result.liveData.mark(extents[index + 1]!, extents[index + 2]!);
          ownedBlocks += extents[index + 2]!;
        }
        const treeBlocks = extentTreeBlockCount(extents.length / 3);
        const treeAt = treeBlocks > 0 ? this.#allocateTail(treeBlocks) : 0;
        const pending = this.#putTail(treeAt, buildExtentTree(extents, treeAt, inodeSeed, view, iBlockAt));
        if (pending !== undefined) await pending;
        flags = INODE_FLAG_EXTENTS;
        ownedBlocks += treeBlocks;
        break;
      }
      case 'symlink': {
        result.files++;
        const target = node.target!;
        if (target.length <= FAST_SYMLINK_BYTES_MAX) {
          this.#tableBlock.set(target, iBlockAt);
        } else {
          const blockNr = this.#allocateTail(1);
          const block = new Uint8Array(BLOCK_SIZE_BYTES);
          block.set(target);
          await this.#putTail(blockNr, [block]);
          buildExtentTree([0, blockNr, 1], 0, inodeSeed, view, iBlockAt);
          flags = INODE_FLAG_EXTENTS;
          ownedBlocks = 1;
        }
        break;
      }
      case 'char':
      case 'block': {
        result.files++;
        const { deviceMajor: major, deviceMinor: minor } = node;
        // Old encoding when both fit a byte, else the new one in the second word (Linux new_encode_dev).
        if (major < 256 && minor < 256) view.setUint32(iBlockAt, (major << 8) | minor, true);
        else view.setUint32(iBlockAt + 4, ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0, true);
        sizeBytes = 0;
        break;
      }
      default:
        result.files++;
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
        fileAclBlock = await this.#xattrBlock(entries);
        ownedBlocks += 1;
      }
    }
    const fields = this.#fields;
    fields.mode = KIND_TYPES[node.kind].modeType | node.permissions;
    fields.uid = node.uid;
    fields.gid = node.gid;
    fields.sizeBytes = sizeBytes;
    fields.atimeSeconds = node.atimeSeconds;
    fields.atimeNanoseconds = node.atimeNanoseconds;
    fields.ctimeSeconds = node.ctimeSeconds;
    fields.ctimeNanoseconds = node.ctimeNanoseconds;
    fields.mtimeSeconds = node.mtimeSeconds;
    fields.mtimeNanoseconds = node.mtimeNanoseconds;
    fields.links = links;
    fields.blocks512 = ownedBlocks * (BLOCK_SIZE_BYTES / 512);
    fields.flags = flags;
    fields.fileAclBlock = fileAclBlock;
    fields.xattrs = inInode;
    this.#encode(at, ino, fields);
  }

  /** The attribute block for `entries`: shared by up to XATTR_BLOCK_REFCOUNT_MAX inodes, written when first used. */
  async #xattrBlock(entries: readonly XattrEntry[]): Promise<number> {
    const key = xattrKey(entries);
    let shared = this.#xattrBlocks.get(key);
    if (shared === undefined || shared.users === shared.refcount) {
      const remaining = shared === undefined ? this.#tailPlan.xattrUsers.get(key)! : shared.remaining;
      const refcount = Math.min(XATTR_BLOCK_REFCOUNT_MAX, remaining);
      assert(refcount > 0, 'more attribute block users than counted');
      shared = { blockNr: this.#allocateTail(1), users: 0, refcount, remaining: remaining - refcount };
      this.#xattrBlocks.set(key, shared);
      await this.#putTail(shared.blockNr, [encodeXattrBlock(entries, refcount, shared.blockNr, this.#fsSeed)]);
    }
    shared.users++;
    return shared.blockNr;
  }

  /** Writes the inode's fields around its i_block (already in place) and its checksum. */
  #encode(at: number, ino: number, fields: InodeFields): void {
    const view = this.#view;
    view.setUint16(at, fields.mode, true);
    view.setUint16(at + 2, fields.uid & 0xffff, true);
    view.setUint32(at + 4, fields.sizeBytes % 2 ** 32, true);
    setTime(view, at + 8, at + 140, fields.atimeSeconds, fields.atimeNanoseconds);
    setTime(view, at + 12, at + 132, fields.ctimeSeconds, fields.ctimeNanoseconds);
    setTime(view, at + 16, at + 136, fields.mtimeSeconds, fields.mtimeNanoseconds);
    setTime(view, at + 144, at + 148, fields.ctimeSeconds, fields.ctimeNanoseconds); // crtime
    view.setUint16(at + 24, fields.gid & 0xffff, true);
    view.setUint16(at + 26, fields.links, true);
    view.setUint32(at + 28, fields.blocks512 % 2 ** 32, true);
    view.setUint32(at + 32, fields.flags, true);
    view.setUint32(at + 104, fields.fileAclBlock % 2 ** 32, true);
    view.setUint32(at + 108, Math.floor(fields.sizeBytes / 2 ** 32), true);
    view.setUint16(at + 116, Math.floor(fields.blocks512 / 2 ** 32), true);
    view.setUint16(at + 118, Math.floor(fields.fileAclBlock / 2 ** 32), true);
    // Ids are at most 32 bits (validated): a shift, where a division by 65536 left V8's optimized
    // code the first time an id was not a multiple of it ('lost precision').
    view.setUint16(at + 120, fields.uid >>> 16, true);
    view.setUint16(at + 122, fields.gid >>> 16, true);
    view.setUint16(at + EXTRA_ISIZE_AT, INODE_EXTRA_BYTES, true);
    if (fields.xattrs !== undefined) writeInodeXattrs(this.#tableBlock.subarray(at + XATTR_AREA_AT, at + XATTR_AREA_AT + INODE_XATTR_AREA_BYTES), fields.xattrs);
    if (!this.#unsealed) sealInode(this.#tableBlock, view, at, ino, this.#fsSeed);
  }
}

interface InodeFields {
  mode: number;
  uid: number;
  gid: number;
  sizeBytes: number;
  atimeSeconds: number;
  atimeNanoseconds: number;
  ctimeSeconds: number;
  ctimeNanoseconds: number;
  mtimeSeconds: number;
  mtimeNanoseconds: number;
  links: number;
  blocks512: number;
  flags: number;
  fileAclBlock: number;
  xattrs: readonly XattrEntry[] | undefined;
}

/**
 * Clamps as the kernel's timestamp_truncate() does for what `tar -x` writes: a time at or past
 * either end of ext4's range becomes that end with no nanoseconds (the kernel would otherwise show
 * the clamped second plus the archive's fraction, a time tar -x never makes).
 */
function setTime(view: DataView, lowAt: number, extraAt: number, seconds: number, nanoseconds: number): void {
  const clamped = Math.min(TIME_SECONDS_MAX, Math.max(TIME_SECONDS_MIN, seconds));
  const atEnd = clamped === TIME_SECONDS_MIN || clamped === TIME_SECONDS_MAX;
  view.setUint32(lowAt, encodeTimeLow(clamped), true);
  view.setUint32(extraAt, encodeTimeExtra(clamped, atEnd ? 0 : nanoseconds), true);
}
