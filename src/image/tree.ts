// The image's file tree in memory, built entry by entry from archives as `tar -x` (flat root file
// systems) and OCI layer application (whiteouts, opaque directories) would build it on disk.
//
// Names and paths are byte strings: JavaScript strings whose characters are the bytes 0-255 of
// the name (latin1), so a name that is not UTF-8 survives exactly and maps compare bytewise.
// `displayPath` turns one into text for messages.
//
// Nodes are inodes: a hard link is a second name for the same node. File data is already in the
// volume when a node is made (the data stream placed it); a node holds where (`extents`). When the
// last name of a file goes (replaced, whited out, or under a removed directory), the node goes
// with its extents; the importer discards the data no file in the finished tree holds.
//
// Parent components are resolved as the kernel would for `tar -x`: a symlink met on the way is
// followed, inside the image (an absolute target starts at the image's root, `..` stops there),
// with a bounded number of hops. The last component is never followed: an entry replaces what is
// there (a directory entry over a directory only updates its attributes, keeping its children).
import { ThinError, assert } from '../errors.ts';
import { IMAGE_SYMLINK_HOPS_MAX } from '../constants.ts';
import { LINKS_MAX } from './ext4/format.ts';

export type NodeKind = 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';

export interface FsNode {
  kind: NodeKind;
  /** Permission bits and setuid/setgid/sticky (mode & 0o7777). */
  permissions: number;
  uid: number;
  gid: number;
  mtimeSeconds: number;
  mtimeNanoseconds: number;
  atimeSeconds: number;
  atimeNanoseconds: number;
  ctimeSeconds: number;
  ctimeNanoseconds: number;
  /** Extended attributes by full name (byte string, e.g. "security.capability"). */
  xattrs: Map<string, Uint8Array> | undefined;
  /** File size, or symlink target length. */
  sizeBytes: number;
  /** Files: where the data lies, as [logicalBlock, physicalBlock, lengthBlocks] triples in order. */
  extents: number[] | undefined;
  /** Symlinks: the target bytes. */
  target: Uint8Array | undefined;
  deviceMajor: number;
  deviceMinor: number;
  /** Directories: children by name. */
  children: Map<string, FsNode> | undefined;
  /** Names this node has (hard links); directories keep 1. */
  links: number;
  /** The layer whose entry made or last replaced this node (opaque whiteouts keep the current layer's). */
  layer: number;
  /** Inode number, given by the file system writer. */
  ino: number;
}

/**
 * A new node (a directory has no children yet). An object literal rather than a class instance:
 * every node lives until the file system is written, and V8 allocates the objects of a literal
 * whose objects survive straight into the old generation (allocation-site pretenuring), where a
 * class instance was copied by each of the parsing thread's scavenges (docs/benchmarks.md "Image
 * import: larger writes").
 */
export function newNode(kind: NodeKind): FsNode {
  return {
    kind,
    permissions: 0o755,
    uid: 0,
    gid: 0,
    mtimeSeconds: 0,
    mtimeNanoseconds: 0,
    atimeSeconds: 0,
    atimeNanoseconds: 0,
    ctimeSeconds: 0,
    ctimeNanoseconds: 0,
    xattrs: undefined,
    sizeBytes: 0,
    extents: undefined,
    target: undefined,
    deviceMajor: 0,
    deviceMinor: 0,
    children: kind === 'dir' ? new Map() : undefined,
    links: 0,
    layer: 0,
    ino: 0,
  };
}

/** What an archive entry says a path should become. */
export interface EntryAttributes {
  permissions: number;
  uid: number;
  gid: number;
  mtimeSeconds: number;
  mtimeNanoseconds: number;
  atimeSeconds?: number;
  atimeNanoseconds?: number;
  ctimeSeconds?: number;
  ctimeNanoseconds?: number;
  xattrs?: Map<string, Uint8Array>;
}

export type EntryContent =
  | { kind: 'file'; sizeBytes: number; extents: number[] }
  | { kind: 'dir' }
  | { kind: 'symlink'; target: Uint8Array }
  | { kind: 'char' | 'block'; major: number; minor: number }
  | { kind: 'fifo' | 'socket' };

/** Where an entry came from, for messages: "layer 2 (sha256:ab12…) entry usr/bin/x at byte 1536". */
export interface EntryOrigin {
  /** The archive path as written (byte string). */
  path: string;
  /** Byte offset of the entry's header in its tar stream. */
  offsetBytes: number;
  /** The tar stream, when not the source itself ("layer 2 (sha256:…)"). */
  stream?: string;
}

/** Text for a byte-string path: UTF-8 when it is, escaped bytes otherwise. */
export function displayPath(path: string): string {
  const bytes = Buffer.from(path, 'latin1');
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  return text.replace(/[\u0000-\u001f\u007f\ufffd]/g, (char) => (char === '\ufffd' ? '\\?' : `\\x${char.charCodeAt(0).toString(16).padStart(2, '0')}`));
}

export function describeOrigin(origin: EntryOrigin): string {
  const where = origin.stream === undefined ? '' : `${origin.stream} `;
  return `${where}entry '${displayPath(origin.path)}' at byte ${origin.offsetBytes}`;
}

export function invalidEntry(origin: EntryOrigin, problem: string): ThinError {
  return new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${describeOrigin(origin)}: ${problem}`);
}

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_WHITEOUT = '.wh..wh..opq';
/** ext4's limit on one name (EXT4_NAME_LEN). */
const NAME_BYTES_MAX = 255;

/**
 * Splits an archive path into components: "./" and empty components dropped, "." and ".."
 * refused, as an absolute path is (an image's paths are relative to its root), and every name
 * within ext4's 255 bytes. With `whiteouts` (a layer), a last name `.wh.NAME` is never stored: the
 * limit applies to the NAME it removes.
 */
export function pathComponents(path: string, origin: EntryOrigin, what = 'path', whiteouts = false): string[] {
  if (path.startsWith('/')) throw invalidEntry(origin, `the ${what} is absolute; image paths are relative to the image's root`);
  const components: string[] = [];
  let overlongWhiteout = -1;
  for (const component of path.split('/')) {
    if (component === '' || component === '.') continue;
    if (component === '..') throw invalidEntry(origin, `the ${what} has a '..' component`);
    if (component.length > NAME_BYTES_MAX) {
      const removed = component.length - WHITEOUT_PREFIX.length;
      if (!whiteouts || !component.startsWith(WHITEOUT_PREFIX) || overlongWhiteout >= 0) throw overlongName(origin, what, component.length);
      if (removed > NAME_BYTES_MAX) throw invalidEntry(origin, `it whites out a name of ${removed} bytes; ext4 allows ${NAME_BYTES_MAX}`);
      overlongWhiteout = components.length;
    }
    if (component.includes('\0')) throw invalidEntry(origin, `the ${what} contains a NUL byte`);
    components.push(component);
  }
  // Only the last name can be a whiteout; a long `.wh.` directory name is a name like any other.
  if (overlongWhiteout >= 0 && overlongWhiteout !== components.length - 1) throw overlongName(origin, what, components[overlongWhiteout]!.length);
  return components;
}

function overlongName(origin: EntryOrigin, what: string, nameBytes: number): ThinError {
  return invalidEntry(origin, `a name in the ${what} is ${nameBytes} bytes long; ext4 allows ${NAME_BYTES_MAX}`);
}

export class FsTree {
  readonly root: FsNode;
  /** The layer entries are applied for (1 for a flat tar). */
  layer = 1;
  /** Nodes in the tree (the root included). */
  nodeCount = 1;
  /** Attributes for directories made because an entry below them came first. */
  readonly #implicitDirectory: EntryAttributes;
  /**
   * The first hard link whose target was not there: the import goes on to see whether the target
   * comes later in the archive (tar needs it first), and fails either way (danglingLinkCheck).
   */
  #danglingLink: { target: string[]; origin: EntryOrigin } | undefined;

  constructor(importTimeSeconds: number) {
    this.root = newNode('dir');
    this.root.links = 1;
    this.#implicitDirectory = { permissions: 0o755, uid: 0, gid: 0, mtimeSeconds: importTimeSeconds, mtimeNanoseconds: 0 };
    setAttributes(this.root, this.#implicitDirectory);
  }

  /** Makes `components` what the entry says, replacing what was there. */
  add(components: string[], attributes: EntryAttributes, content: EntryContent, origin: EntryOrigin): FsNode {
    if (this.#danglingLink !== undefined) this.#checkLaterTarget(components, origin);
    if (components.length === 0) {
      if (content.kind !== 'dir') throw invalidEntry(origin, `the image's root can only be a directory, not a ${content.kind}`);
      setAttributes(this.root, attributes);
      this.root.layer = this.layer;
      return this.root;
    }
    const parent = this.#parentOf(components, origin);
    const name = components[components.length - 1]!;
    const existing = parent.children!.get(name);
    if (existing !== undefined && existing.kind === 'dir' && content.kind === 'dir') {
      setAttributes(existing, attributes);
      existing.layer = this.layer;
      return existing;
    }
    if (existing !== undefined) this.#unlink(parent, name, existing);
    const node = newNode(content.kind);
    setAttributes(node, attributes);
    switch (content.kind) {
      case 'file':
        node.sizeBytes = content.sizeBytes;
        node.extents = content.extents;
        break;
      case 'symlink':
        node.target = content.target;
        node.sizeBytes = content.target.length;
        break;
      case 'char':
      case 'block':
        node.deviceMajor = content.major;
        node.deviceMinor = content.minor;
        break;
      default:
        break;
    }
    node.layer = this.layer;
    node.links = 1;
    parent.children!.set(name, node);
    this.nodeCount++;
    return node;
  }

  /** A hard link: `components` becomes another name of the node at `targetComponents`. */
  link(components: string[], targetComponents: string[], origin: EntryOrigin): FsNode | undefined {
    const target = this.#lookup(targetComponents, origin);
    if (target === undefined) {
      // Failed at the archive's end, or when the target comes (a clearer message).
      this.#danglingLink ??= { target: targetComponents, origin };
      return undefined;
    }
    if (target.kind === 'dir') throw invalidEntry(origin, `it is a hard link to directory '${displayPath(targetComponents.join('/'))}'`);
    if (components.length === 0) throw invalidEntry(origin, "a hard link cannot replace the image's root");
    const parent = this.#parentOf(components, origin);
    const name = components[components.length - 1]!;
    const existing = parent.children!.get(name);
    if (existing === target) return target;
    if (target.links >= LINKS_MAX) throw invalidEntry(origin, `'${displayPath(targetComponents.join('/'))}' would have more than ${LINKS_MAX} names (ext4's link limit)`);
    if (existing !== undefined) this.#unlink(parent, name, existing);
    target.links++;
    parent.children!.set(name, target);
    return target;
  }

  /** Throws for a hard link whose target never came (call when a tar stream's entries are all applied). */
  danglingLinkCheck(): void {
    const dangling = this.#danglingLink;
    if (dangling === undefined) return;
    throw invalidEntry(dangling.origin, `it is a hard link to '${displayPath(dangling.target.join('/'))}', which is not in the image`);
  }

  /** Throws when an entry at `components` is what the dangling hard link names: its target came after it. */
  #checkLaterTarget(components: string[], origin: EntryOrigin): void {
    const target = this.#danglingLink!.target;
    if (components.length !== target.length || components.some((name, index) => name !== target[index])) return;
    const dangling = this.#danglingLink!;
    throw invalidEntry(
      dangling.origin,
      `it is a hard link to '${displayPath(target.join('/'))}', which comes later in the archive (at byte ${origin.offsetBytes}); a hard link's target must come before it`,
    );
  }

  /** An OCI whiteout `.wh.NAME` in directory `dirComponents`: NAME from a lower layer goes. */
  whiteout(dirComponents: string[], name: string, origin: EntryOrigin): void {
    const dir = this.#lookup(dirComponents, origin, true);
    const existing = dir?.kind === 'dir' ? dir.children!.get(name) : undefined;
    if (dir === undefined || existing === undefined) {
      const path = displayPath([...dirComponents, name].join('/'));
      throw invalidEntry(origin, `it whites out '${path}', which no lower layer has`);
    }
    this.#unlink(dir, name, existing);
  }

  /** An OCI opaque whiteout: the directory's children from lower layers go; this layer's stay. */
  opaque(dirComponents: string[], origin: EntryOrigin): void {
    let dir = this.#lookup(dirComponents, origin, true);
    if (dir === undefined) {
      // The opaque marker may come before the directory's own entry: make the directory now.
      dir = this.add(dirComponents, this.#implicitDirectory, { kind: 'dir' }, origin);
    }
    if (dir.kind !== 'dir') throw invalidEntry(origin, `it marks '${displayPath(dirComponents.join('/'))}' opaque, which is not a directory`);
    for (const [name, child] of [...dir.children!]) {
      if (child.layer !== this.layer) this.#unlink(dir, name, child);
    }
  }

  /** The node a path names, following symlinks in parent components only. */
  #lookup(components: string[], origin: EntryOrigin, followLast = false): FsNode | undefined {
    if (components.length === 0) return this.root;
    const parent = this.#resolveDirectory(components.slice(0, -1), origin, false);
    if (parent === undefined) return undefined;
    const node = parent.children!.get(components[components.length - 1]!);
    if (followLast && node?.kind === 'symlink') return this.#resolveDirectory(components, origin, false);
    return node;
  }

  /** The directory an entry's last component goes in, made (as `tar -x` does) when missing. */
  #parentOf(components: string[], origin: EntryOrigin): FsNode {
    const parent = this.#resolveDirectory(components.slice(0, -1), origin, true);
    assert(parent !== undefined, 'a created parent is missing');
    return parent;
  }

  /**
   * Walks `components` from the root, following symlinks inside the image. With `create`, missing
   * directories are made; without, undefined when something is missing.
   */
  #resolveDirectory(components: string[], origin: EntryOrigin, create: boolean): FsNode | undefined {
    let hops = 0;
    const stack: FsNode[] = [this.root];
    const pending = [...components].reverse();
    while (pending.length > 0) {
      const name = pending.pop()!;
      const dir = stack[stack.length - 1]!;
      if (name === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      if (name === '.' || name === '') continue;
      let child = dir.children!.get(name);
      if (child === undefined) {
        if (!create) return undefined;
        child = newNode('dir');
        setAttributes(child, this.#implicitDirectory);
        child.links = 1;
        child.layer = this.layer;
        dir.children!.set(name, child);
        this.nodeCount++;
      }
      if (child.kind === 'symlink') {
        if (++hops > IMAGE_SYMLINK_HOPS_MAX) {
          throw invalidEntry(origin, `resolving its directory met more than ${IMAGE_SYMLINK_HOPS_MAX} symlinks (a loop?)`);
        }
        const target = Buffer.from(child.target!).toString('latin1');
        if (target.startsWith('/')) stack.length = 1;
        pending.push(...target.split('/').reverse());
        continue;
      }
      if (child.kind !== 'dir') {
        if (!create) return undefined;
        throw invalidEntry(origin, `'${displayPath(name)}' on its path is a ${child.kind}, not a directory`);
      }
      stack.push(child);
    }
    return stack[stack.length - 1]!;
  }

  /**
   * Two paths of different files whose data lies in the same blocks, if there are any. Entries
   * read once each place their data once; only a layer applied twice from one reading (an image
   * naming a layer twice, read as a stream) can give two files the same blocks: when a file of
   * its first application kept another name (a later layer's hard link to it).
   */
  filesSharingData(): [string, string] | undefined {
    const runs: Array<{ begin: number; end: number; node: FsNode; path: string }> = [];
    const seen = new Set<FsNode>();
    const pending: Array<{ node: FsNode; path: string }> = [{ node: this.root, path: '' }];
    while (pending.length > 0) {
      const { node, path } = pending.pop()!;
      for (const [name, child] of node.children!) {
        const childPath = `${path}/${name}`;
        if (child.kind === 'dir') pending.push({ node: child, path: childPath });
        else if (child.kind === 'file' && child.extents !== undefined && !seen.has(child)) {
          seen.add(child);
          for (let at = 0; at < child.extents.length; at += 3) {
            runs.push({ begin: child.extents[at + 1]!, end: child.extents[at + 1]! + child.extents[at + 2]!, node: child, path: childPath });
          }
        }
      }
    }
    runs.sort((a, b) => a.begin - b.begin);
    for (let at = 1; at < runs.length; at++) {
      const [before, run] = [runs[at - 1]!, runs[at]!];
      if (run.begin < before.end && run.node !== before.node) return [before.path, run.path];
    }
    return undefined;
  }

  /** Removes one name; a node whose last name went is released (a directory with all below it). */
  #unlink(dir: FsNode, name: string, node: FsNode): void {
    dir.children!.delete(name);
    this.#release(node);
  }

  /** Drops one name of `node`; a node left without names goes, with everything below a directory. */
  #release(node: FsNode): void {
    // Iteratively, so a deep tree cannot overflow the stack.
    const pending: FsNode[] = [node];
    while (pending.length > 0) {
      const current = pending.pop()!;
      current.links--;
      if (current.links > 0) continue;
      this.nodeCount--;
      if (current.kind === 'file') current.extents = undefined;
      if (current.kind === 'dir') {
        // One at a time: spread into push, a directory of more than ~120,000 entries overflowed the stack.
        for (const child of current.children!.values()) pending.push(child);
        current.children!.clear();
      }
    }
  }
}

function setAttributes(node: FsNode, attributes: EntryAttributes): void {
  node.permissions = attributes.permissions & 0o7777;
  node.uid = attributes.uid;
  node.gid = attributes.gid;
  node.mtimeSeconds = attributes.mtimeSeconds;
  node.mtimeNanoseconds = attributes.mtimeNanoseconds;
  node.atimeSeconds = attributes.atimeSeconds ?? attributes.mtimeSeconds;
  node.atimeNanoseconds = attributes.atimeSeconds === undefined ? attributes.mtimeNanoseconds : (attributes.atimeNanoseconds ?? 0);
  node.ctimeSeconds = attributes.ctimeSeconds ?? attributes.mtimeSeconds;
  node.ctimeNanoseconds = attributes.ctimeSeconds === undefined ? attributes.mtimeNanoseconds : (attributes.ctimeNanoseconds ?? 0);
  node.xattrs = attributes.xattrs !== undefined && attributes.xattrs.size > 0 ? attributes.xattrs : undefined;
}
