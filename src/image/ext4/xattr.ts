// Extended attributes as ext4 stores them: in the inode's spare bytes after i_extra_isize when
// they fit, otherwise in one attribute block that inodes with identical attributes share
// (h_refcount). Entries are sorted by (name index, name length, name), which the kernel's block
// lookup relies on. POSIX ACLs arrive from tar in the VFS xattr format (version 2) and are stored
// in ext4's own format (version 1), as the kernel converts them.
import {
  BLOCK_SIZE_BYTES,
  INODE_EXTRA_BYTES,
  INODE_SIZE_BYTES,
  XATTR_BLOCK_HEADER_BYTES,
  XATTR_ENTRY_HEADER_BYTES,
  XATTR_MAGIC,
  ext4Crc32c,
  setU64,
} from './format.ts';
import { xattrBlockHash, xattrEntryHash } from './hash.ts';

export interface XattrEntry {
  index: number;
  /** The name after the index's prefix. */
  name: Uint8Array;
  value: Uint8Array;
  hash: number;
}

/** Name prefixes and their ext4 indexes (e2fsprogs' ea_names), most specific first. */
const PREFIXES: ReadonlyArray<[string, number]> = [
  ['system.posix_acl_default', 3],
  ['system.posix_acl_access', 2],
  ['system.richacl', 8],
  ['security.', 6],
  ['trusted.', 4],
  ['system.', 7],
  ['user.', 1],
];

/** Bytes of the inode's attribute area: after the 128-byte base and i_extra_isize, to the inode's end. */
export const INODE_XATTR_AREA_BYTES = INODE_SIZE_BYTES - 128 - INODE_EXTRA_BYTES;

/** Converts a VFS POSIX ACL value (version 2, 8 bytes per entry) to ext4's (version 1, short entries for the owner/group/mask/other). */
export function aclToExt4(value: Uint8Array): Uint8Array | string {
  if (value.length < 4 || (value.length - 4) % 8 !== 0) return 'a POSIX ACL value must be a 4-byte header and 8-byte entries';
  const view = new DataView(value.buffer, value.byteOffset, value.length);
  if (view.getUint32(0, true) !== 2) return `POSIX ACL version ${view.getUint32(0, true)} (expected 2)`;
  const count = (value.length - 4) / 8;
  const parts: number[][] = [];
  for (let index = 0; index < count; index++) {
    const tag = view.getUint16(4 + index * 8, true);
    const perm = view.getUint16(6 + index * 8, true);
    const id = view.getUint32(8 + index * 8, true);
    if (tag === 0x02 || tag === 0x08) parts.push([tag, perm, id]);
    else if (tag === 0x01 || tag === 0x04 || tag === 0x10 || tag === 0x20) parts.push([tag, perm]);
    else return `POSIX ACL entry ${index} has unknown tag ${tag}`;
  }
  const out = new Uint8Array(4 + parts.reduce((sum, part) => sum + (part.length === 3 ? 8 : 4), 0));
  const outView = new DataView(out.buffer);
  outView.setUint32(0, 1, true);
  let offset = 4;
  for (const part of parts) {
    outView.setUint16(offset, part[0]!, true);
    outView.setUint16(offset + 2, part[1]!, true);
    if (part.length === 3) outView.setUint32(offset + 4, part[2]!, true);
    offset += part.length === 3 ? 8 : 4;
  }
  return out;
}

/** The entries for a map of full attribute names, sorted; or why one cannot be stored. */
export function xattrEntries(xattrs: Map<string, Uint8Array>): XattrEntry[] | string {
  const entries: XattrEntry[] = [];
  for (const [fullName, rawValue] of xattrs) {
    const prefix = PREFIXES.find(([text]) => fullName.startsWith(text));
    if (prefix === undefined) return `attribute '${fullName}' is in no namespace Linux has (user., trusted., security., system.)`;
    const [text, index] = prefix;
    const name = Buffer.from(fullName.slice(text.length), 'latin1');
    if ((index === 2 || index === 3) && name.length > 0) return `attribute '${fullName}' is not a POSIX ACL name`;
    if (index !== 2 && index !== 3 && name.length === 0) return `attribute '${fullName}' has an empty name`;
    if (name.length > 255) return `attribute name '${fullName}' is longer than 255 bytes`;
    let value = rawValue;
    if (index === 2 || index === 3) {
      const converted = aclToExt4(rawValue);
      if (typeof converted === 'string') return `attribute '${fullName}': ${converted}`;
      value = converted;
    }
    entries.push({ index, name, value, hash: xattrEntryHash(name, value) });
  }
  entries.sort((a, b) => a.index - b.index || a.name.length - b.name.length || Buffer.compare(a.name, b.name));
  return entries;
}

function entryBytes(entry: XattrEntry): number {
  return (XATTR_ENTRY_HEADER_BYTES + entry.name.length + 3) & ~3;
}

function valueBytes(entry: XattrEntry): number {
  return (entry.value.length + 3) & ~3;
}

/** Bytes the entries take: headers and names, the 4-byte end marker, padded values. */
export function xattrSpaceBytes(entries: readonly XattrEntry[]): number {
  return entries.reduce((sum, entry) => sum + entryBytes(entry) + valueBytes(entry), 4);
}

export function fitsInInode(entries: readonly XattrEntry[]): boolean {
  return 4 + xattrSpaceBytes(entries) <= INODE_XATTR_AREA_BYTES;
}

export function fitsInBlock(entries: readonly XattrEntry[]): boolean {
  return XATTR_BLOCK_HEADER_BYTES + xattrSpaceBytes(entries) <= BLOCK_SIZE_BYTES;
}

/**
 * Writes entries and values into `area` (entries from `entriesAt`, values packed down from the
 * area's end). Value offsets are relative to `offsetBase` (the block start, or the inode's first
 * entry).
 */
function writeEntries(area: Uint8Array, entriesAt: number, offsetBase: number, entries: readonly XattrEntry[]): void {
  const view = new DataView(area.buffer, area.byteOffset, area.length);
  let entryOffset = entriesAt;
  let valueEnd = area.length;
  for (const entry of entries) {
    valueEnd -= valueBytes(entry);
    area[entryOffset] = entry.name.length;
    area[entryOffset + 1] = entry.index;
    view.setUint16(entryOffset + 2, entry.value.length === 0 ? 0 : valueEnd - offsetBase, true);
    view.setUint32(entryOffset + 4, 0, true);
    view.setUint32(entryOffset + 8, entry.value.length, true);
    view.setUint32(entryOffset + 12, entry.hash, true);
    area.set(entry.name, entryOffset + XATTR_ENTRY_HEADER_BYTES);
    area.set(entry.value, valueEnd);
    entryOffset += entryBytes(entry);
  }
}

/** Fills the inode's attribute area (INODE_XATTR_AREA_BYTES at byte 160 of the inode). */
export function writeInodeXattrs(area: Uint8Array, entries: readonly XattrEntry[]): void {
  area.fill(0);
  new DataView(area.buffer, area.byteOffset, area.length).setUint32(0, XATTR_MAGIC, true);
  // In the inode, value offsets count from the first entry (just after the magic).
  writeEntries(area, 4, 4, entries);
}

/** An attribute block for `refcount` inodes at fs block `blockNr`, with its checksum. */
export function encodeXattrBlock(entries: readonly XattrEntry[], refcount: number, blockNr: number, fsSeed: number): Uint8Array {
  const block = new Uint8Array(BLOCK_SIZE_BYTES);
  const view = new DataView(block.buffer);
  view.setUint32(0, XATTR_MAGIC, true);
  view.setUint32(4, refcount, true);
  view.setUint32(8, 1, true);
  view.setUint32(12, xattrBlockHash(entries.map((entry) => entry.hash)), true);
  writeEntries(block, XATTR_BLOCK_HEADER_BYTES, 0, entries);
  const blockNumber = new Uint8Array(8);
  setU64(new DataView(blockNumber.buffer), 0, blockNr);
  view.setUint32(16, ext4Crc32c(ext4Crc32c(fsSeed, blockNumber), block), true);
  return block;
}

/** A key equal for equal attribute sets: inodes with the same key share one block. */
export function xattrKey(entries: readonly XattrEntry[]): string {
  return entries.map((entry) => `${entry.index}:${Buffer.from(entry.name).toString('hex')}=${Buffer.from(entry.value).toString('hex')}`).join(';');
}
