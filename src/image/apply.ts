// Applies one tar stream's entries to the image's tree: a flat root file system, or one layer of
// an OCI / docker image (then `.wh.NAME` removes NAME from the layers below and `.wh..wh..opq`
// empties a directory of what lower layers put there). File data goes to the data stream as it
// arrives; every check of an entry's path, type and attributes happens before its data is placed.
import { ThinError } from '../errors.ts';
import type { DataStream } from './data-stream.ts';
import { SYMLINK_TARGET_BYTES_MAX } from './ext4/format.ts';
import { fitsInBlock, xattrEntries } from './ext4/xattr.ts';
import type { TarEntry, TarReader } from './tar.ts';
import {
  OPAQUE_WHITEOUT,
  WHITEOUT_PREFIX,
  invalidEntry,
  pathComponents,
  type EntryAttributes,
  type EntryContent,
  type EntryOrigin,
  type FsTree,
} from './tree.ts';

export interface ApplyContext {
  /** The tree the entries go into (unused when they are recorded). */
  tree?: FsTree;
  data: DataStream;
  /** Called after each entry (progress). */
  onEntry?: () => void;
}

export interface ApplyOptions {
  /** Names the stream in messages ("layer 2 (sha256:…)"); empty for the source itself. */
  stream: string;
  /** An OCI/docker layer: whiteouts apply. */
  layered: boolean;
  /**
   * Entries already read from the reader, in order (format detection reads the first one, and the
   * one after a leading './'); all but the last carry no data.
   */
  first?: TarEntry[];
  /** Skip the data of files (the stream's data is already in the volume: a shared layer); extents are still computed. */
  placeOnly?: boolean;
  /** Collect the changes instead of applying them (a layer read before the image's layer order is known; apply them with applyLayerChanges). */
  record?: TreeChange[];
}

/**
 * One entry's effect on the tree, as data: applied at once, kept for later (a layer read before
 * the image's layer order is known), or handed from the parsing thread to the main one.
 */
export type TreeChange =
  | { op: 'add'; components: string[]; attributes: EntryAttributes; content: EntryContent; origin: EntryOrigin }
  | { op: 'link'; components: string[]; target: string[]; origin: EntryOrigin }
  | { op: 'whiteout'; parent: string[]; name: string; origin: EntryOrigin }
  | { op: 'opaque'; parent: string[]; origin: EntryOrigin }
  | { op: 'none' };

export function applyChange(tree: FsTree, change: TreeChange): void {
  switch (change.op) {
    case 'add':
      tree.add(change.components, change.attributes, change.content, change.origin);
      return;
    case 'link':
      tree.link(change.components, change.target, change.origin);
      return;
    case 'whiteout':
      tree.whiteout(change.parent, change.name, change.origin);
      return;
    case 'opaque':
      tree.opaque(change.parent, change.origin);
      return;
    case 'none':
      return;
  }
}

/**
 * Applies one layer's changes as the OCI image spec's layer rules say ("Whiteouts"): a whiteout
 * (`.wh.NAME`) or an opaque marker (`.wh..wh..opq`) applies to the lower layers only; entries of
 * its own layer are never hidden by it, wherever the marker stands in the layer's tar. So the
 * layer's removals go first, against the lower layers' tree, then its entries in archive order.
 * Among the removals, explicit whiteouts go before opaque markers and deeper ones before shallower:
 * `.wh.x` next to an opaque marker, or under a whited-out directory, still finds what it names
 * (and fails, as a whiteout of a missing file does, only when no lower layer has it).
 */
export function applyLayerChanges(tree: FsTree, changes: readonly TreeChange[]): void {
  const whiteouts: Array<TreeChange & { op: 'whiteout' }> = [];
  const opaques: TreeChange[] = [];
  for (const change of changes) {
    if (change.op === 'whiteout') whiteouts.push(change);
    else if (change.op === 'opaque') opaques.push(change);
  }
  // Array.prototype.sort is stable: whiteouts at one depth keep their archive order.
  whiteouts.sort((a, b) => b.parent.length - a.parent.length);
  for (const change of whiteouts) applyChange(tree, change);
  for (const change of opaques) applyChange(tree, change);
  for (const change of changes) if (change.op !== 'whiteout' && change.op !== 'opaque') applyChange(tree, change);
  tree.danglingLinkCheck();
}

export interface ApplyResult {
  entries: number;
}

const NO_CHANGE: TreeChange = { op: 'none' };

/** Reads every entry of `reader` into the tree. */
export async function applyTar(reader: TarReader, context: ApplyContext, options: ApplyOptions): Promise<ApplyResult> {
  let entries = 0;
  // A layer's whiteouts may follow entries they must not hide: its changes are applied together at its end.
  const record = options.record ?? (options.layered ? [] : undefined);
  const read = options.first ?? [];
  let entry = read.length > 0 ? read[0] : await reader.next();
  while (entry !== undefined) {
    const prepared = prepareEntry(reader, entry, context, options);
    const change = prepared instanceof Promise ? await prepared : prepared;
    if (record !== undefined) record.push(change);
    else applyChange(context.tree!, change);
    entries++;
    context.onEntry?.();
    entry = entries < read.length ? read[entries] : await reader.next();
  }
  if (options.layered && options.record === undefined) applyLayerChanges(context.tree!, record!);
  else if (record === undefined) context.tree!.danglingLinkCheck();
  return { entries };
}

function attributesOf(entry: TarEntry, origin: EntryOrigin): EntryAttributes {
  if (entry.uid > 0xffffffff || entry.gid > 0xffffffff) throw invalidEntry(origin, `owner ${entry.uid}:${entry.gid} does not fit ext4's 32-bit ids`);
  const attributes: EntryAttributes = {
    permissions: entry.permissions,
    uid: entry.uid,
    gid: entry.gid,
    mtimeSeconds: entry.mtimeSeconds,
    mtimeNanoseconds: entry.mtimeNanoseconds,
  };
  if (entry.atimeSeconds !== undefined) {
    attributes.atimeSeconds = entry.atimeSeconds;
    attributes.atimeNanoseconds = entry.atimeNanoseconds ?? 0;
  }
  if (entry.ctimeSeconds !== undefined) {
    attributes.ctimeSeconds = entry.ctimeSeconds;
    attributes.ctimeNanoseconds = entry.ctimeNanoseconds ?? 0;
  }
  if (entry.xattrs.size > 0) {
    const entries = xattrEntries(entry.xattrs);
    if (typeof entries === 'string') throw invalidEntry(origin, entries);
    if (!fitsInBlock(entries)) throw invalidEntry(origin, 'its extended attributes do not fit one ext4 attribute block (4 KiB)');
    attributes.xattrs = entry.xattrs;
  }
  return attributes;
}

/**
 * Checks an entry, places its data, and says what it does to the tree; a promise only when placing
 * the data had to wait (most entries need no promise: an image has tens of thousands of them).
 */
function prepareEntry(reader: TarReader, entry: TarEntry, context: ApplyContext, options: ApplyOptions): TreeChange | Promise<TreeChange> {
  const origin: EntryOrigin = options.stream === '' ? { path: entry.path, offsetBytes: entry.offsetBytes } : { path: entry.path, offsetBytes: entry.offsetBytes, stream: options.stream };
  const components = pathComponents(entry.path, origin, 'path', options.layered);
  const name = components[components.length - 1];
  if (options.layered && name !== undefined && name.startsWith(WHITEOUT_PREFIX)) {
    const parent = components.slice(0, -1);
    if (name === OPAQUE_WHITEOUT) return { op: 'opaque', parent, origin };
    // Other .wh..wh. names are AUFS bookkeeping (hard link stores), not files of the image.
    if (name.startsWith(`${WHITEOUT_PREFIX}${WHITEOUT_PREFIX}`)) return NO_CHANGE;
    const target = name.slice(WHITEOUT_PREFIX.length);
    if (target === '' || target === '.' || target === '..') throw invalidEntry(origin, `'${name}' whites out nothing`);
    return { op: 'whiteout', parent, name: target, origin };
  }
  const attributes = attributesOf(entry, origin);
  switch (entry.type) {
    case 'file': {
      const fail = (problem: string): ThinError => invalidEntry(origin, problem);
      const file = context.data.file(fail, entry.sizeBytes);
      const change = (extents: number[]): TreeChange => ({ op: 'add', components, attributes, content: { kind: 'file', sizeBytes: entry.sizeBytes, extents }, origin });
      let reading: void | Promise<void> = undefined;
      if (options.placeOnly === true) file.place(entry.sparseMap ?? [0, entry.storedBytes]);
      else reading = reader.readData(entry, file);
      if (reading !== undefined) return reading.then(async () => change(await file.finish()));
      const extents = file.finish();
      return Array.isArray(extents) ? change(extents) : extents.then(change);
    }
    case 'hardlink': {
      const target = pathComponents(entry.linkPath, origin, 'hard link target');
      return { op: 'link', components, target, origin };
    }
    case 'symlink': {
      const target = Buffer.from(entry.linkPath, 'latin1');
      if (target.length === 0) throw invalidEntry(origin, 'a symlink with an empty target');
      if (target.length > SYMLINK_TARGET_BYTES_MAX) throw invalidEntry(origin, `a symlink target of ${target.length} bytes (ext4 holds at most ${SYMLINK_TARGET_BYTES_MAX})`);
      // A symlink's permissions mean nothing to Linux, which makes every symlink 0777 (as tar -x does).
      return { op: 'add', components, attributes: { ...attributes, permissions: 0o777 }, content: { kind: 'symlink', target }, origin };
    }
    case 'char':
    case 'block': {
      const type = entry.type;
      if (entry.deviceMajor > 0xfff || entry.deviceMinor > 0xfffff) {
        throw invalidEntry(origin, `device ${entry.deviceMajor}:${entry.deviceMinor} does not fit Linux's 12-bit major and 20-bit minor`);
      }
      return { op: 'add', components, attributes, content: { kind: type, major: entry.deviceMajor, minor: entry.deviceMinor }, origin };
    }
    case 'dir':
      return { op: 'add', components, attributes, content: { kind: 'dir' }, origin };
    case 'fifo':
      return { op: 'add', components, attributes, content: { kind: 'fifo' }, origin };
  }
}
