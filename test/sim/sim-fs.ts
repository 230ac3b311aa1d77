// The simulated file system: directory entries over a SimMachine's disks (sim-disk.ts), for the
// commands that create, rename and remove a pool's files (pool create, restore, repair,
// check --repair). It implements src/io/file-system.ts's FileSystem.
//
// Model.
// - Every file is one SimDisk of the machine (its inode): its bytes and its size are the disk's,
//   so a new file's size is pending until a sync of the file, as sim-disk.ts models growth.
// - The tree the running process sees holds every entry operation at once. Each entry operation
//   (create, mkdir, symlink, link, rename, unlink, rmdir) is *pending* until a sync of the
//   directory that holds its entry completes after it: the parent of the new or removed name; for
//   a rename, the destination's directory (ext4 and XFS commit a rename's two sides in one
//   journal transaction, so the source side does not need its own sync). syncDirectory is
//   synchronous, as fsync of a directory is in the code under test.
// - Each operation and each directory sync adds a mark to the machine's trace ("fs: rename A -> B"),
//   so the crash campaigns cut power between any two of them, and between them and the disks'
//   writes and syncs.
// - A power cut keeps every durable operation and a prefix of the pending ones, in the order they
//   were made (a journalling file system commits metadata in order): all, none, or a seeded cut.
//   A rename pending at a cut thus leaves the old name or the new one, never both or neither; a
//   file whose create is lost is gone with its bytes.
// - Locks (flock on DIR/lock) are per process: a machine after a power cut has none held.
import path from 'node:path';
import { ThinError } from '../../src/errors.ts';
import type { BlockFile } from '../../src/io/block-file.ts';
import type { EntryKind, FileSystem } from '../../src/io/file-system.ts';
import { ForwardingBlockFile } from '../../src/io/forwarding.ts';
import type { DirectoryLock } from '../../src/io/lock.ts';
import { LOCK_FILE_NAME } from '../../src/io/lock.ts';
import { Rng, mixSeed } from './rng.ts';
import type { CrashContext } from './crash-harness.ts';
import type { SimDisk, SimMachine } from './sim-disk.ts';

/** A directory's id is its inode: it stays the directory's through renames. */
export type SimEntry = { kind: 'file'; disk: string } | { kind: 'directory'; id: number } | { kind: 'symlink'; target: string };

/** The id of `/`, which is not in a tree. */
const ROOT_DIRECTORY_ID = 0;

/** Absolute path to entry; `/` is always a directory and is not in the map. */
export type SimTree = Map<string, SimEntry>;

type EntryOp =
  | { kind: 'set'; path: string; entry: SimEntry }
  | { kind: 'remove'; path: string }
  | { kind: 'rename'; from: string; to: string };

interface LoggedOp {
  op: EntryOp;
  /** The id of the directory whose sync makes it durable. */
  dir: number;
  /** Event index of its mark in the machine's trace. */
  eventIndex: number;
  /** Event index of the directory sync that made it durable; Infinity while pending. */
  durableIndex: number;
}

function fsError(code: string, message: string): Error {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

function applyOp(tree: SimTree, op: EntryOp): void {
  switch (op.kind) {
    case 'set':
      tree.set(op.path, op.entry);
      return;
    case 'remove':
      for (const key of [...tree.keys()]) if (key === op.path || key.startsWith(`${op.path}/`)) tree.delete(key);
      return;
    case 'rename': {
      // A source whose own entry is not in this tree (its create was lost at the cut) is not
      // renamed: entries under it stay where they were, unreachable.
      if (!tree.has(op.from)) return;
      const moved: Array<[string, SimEntry]> = [];
      for (const [key, entry] of tree) if (key === op.from || key.startsWith(`${op.from}/`)) moved.push([key, entry]);
      for (const key of [...tree.keys()]) if (key === op.to || key.startsWith(`${op.to}/`)) tree.delete(key);
      for (const [key] of moved) tree.delete(key);
      for (const [key, entry] of moved) tree.set(op.to + key.slice(op.from.length), entry);
      return;
    }
  }
}

/** A file opened on the simulated file system: the file's disk, closed without closing the disk. */
class SimFileHandle extends ForwardingBlockFile<SimDisk> {
  readonly #description: string;
  readonly #readOnly: boolean;
  #closed = false;

  constructor(disk: SimDisk, filePath: string, readOnly: boolean) {
    super(disk);
    this.#description = `sim:${filePath}`;
    this.#readOnly = readOnly;
  }

  override get description(): string {
    return this.#description;
  }

  override write(source: Uint8Array, offsetBytes: number): Promise<void> {
    if (this.#closed) return Promise.reject(new ThinError('THIN_CLOSED', `${this.#description} is closed`));
    if (this.#readOnly) return Promise.reject(new ThinError('THIN_IO', `Cannot write ${this.#description}: opened read-only (EBADF)`));
    return super.write(source, offsetBytes);
  }

  override grow(sizeBytes: number): Promise<void> {
    if (this.#readOnly) return Promise.reject(new ThinError('THIN_IO', `Cannot grow ${this.#description}: opened read-only (EBADF)`));
    return super.grow(sizeBytes);
  }

  override async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.inner.machine.idle(this.inner);
  }
}

export class SimFs implements FileSystem {
  readonly machine: SimMachine;
  readonly #tree: SimTree;
  /** The tree at the start of the trace (treated as durable). */
  readonly #baseline: SimTree;
  readonly #log: LoggedOp[] = [];
  readonly #locked = new Set<string>();
  #nextInode: number;
  #nextDirectoryId: number;

  constructor(machine: SimMachine, tree: ReadonlyMap<string, SimEntry> = new Map()) {
    this.machine = machine;
    this.#tree = new Map(tree);
    this.#baseline = new Map(tree);
    this.#nextInode = machine.diskNames().length + 1;
    this.#nextDirectoryId = 1 + Math.max(ROOT_DIRECTORY_ID, ...[...tree.values()].map((entry) => (entry.kind === 'directory' ? entry.id : 0)));
  }

  /** A directory entry for a tree given to the constructor (a test's starting state). */
  static directory(id: number): SimEntry {
    return { kind: 'directory', id };
  }

  /** The tree as the running process sees it (a copy): with the machine's current images, a state to start other machines from. */
  currentTree(): SimTree {
    return new Map(this.#tree);
  }

  /** Pending entry operations (for tests of the model). */
  get pendingCount(): number {
    return this.#log.filter((logged) => logged.durableIndex === Infinity).length;
  }

  /**
   * The tree a power cut after the first `eventCount` events leaves: the durable operations and
   * the first `keptPending` pending ones (all when undefined).
   */
  treeAt(eventCount: number, keptPending?: number): SimTree {
    const tree = new Map(this.#baseline);
    let pendingSeen = 0;
    for (const logged of this.#log) {
      if (logged.eventIndex >= eventCount) break;
      if (logged.durableIndex >= eventCount) {
        pendingSeen += 1;
        if (keptPending !== undefined && pendingSeen > keptPending) continue;
      }
      applyOp(tree, logged.op);
    }
    return tree;
  }

  /** Entry operations issued and not durable after the first eventCount events. */
  pendingAt(eventCount: number): number {
    return this.#log.filter((logged) => logged.eventIndex < eventCount && logged.durableIndex >= eventCount).length;
  }

  /**
   * How many of the operations pending at a crash point its crash states keep: all, none, and one
   * seeded cut in between (when there are two or more), each a state of its own.
   */
  keptChoices(context: CrashContext): number[] {
    const eventCount = context.crashPoint.eventCount;
    const pending = this.pendingAt(eventCount);
    const choices = new Set([pending, 0]);
    if (pending >= 2) choices.add(1 + new Rng(mixSeed(context.seed, eventCount, context.variant.variantIndex, 0xd1e)).int(pending - 1));
    return [...choices];
  }

  /** The file system a crash state powers up with: on `machine` (the crash image's disks), the tree that keeps `kept` pending operations. */
  afterCrash(machine: SimMachine, eventCount: number, kept: number): { fs: SimFs; description: string; treeKey: string } {
    const tree = this.treeAt(eventCount, kept);
    const treeKey = [...tree].map(([key, entry]) => `${key}=${entry.kind === 'file' ? entry.disk : entry.kind === 'symlink' ? `>${entry.target}` : `d${entry.id}`}`).sort().join(',');
    return { fs: new SimFs(machine, tree), description: `${kept} of ${this.pendingAt(eventCount)} pending directory operations kept`, treeKey };
  }

  // --- FileSystem ---

  async openFile(filePath: string, options: { readOnly: boolean }): Promise<BlockFile> {
    const resolved = this.realpathOrUndefined(filePath);
    const entry = resolved === undefined ? undefined : this.#tree.get(resolved);
    if (entry === undefined || resolved === undefined) throw new ThinError('THIN_NOT_FOUND', `Cannot open ${filePath}: no such file`);
    if (entry.kind !== 'file') throw new ThinError('THIN_IO', `Cannot open ${filePath}: EISDIR`);
    return new SimFileHandle(this.machine.disk(entry.disk), resolved, options.readOnly);
  }

  async createFile(filePath: string, options: { sizeBytes: number }): Promise<BlockFile> {
    const absolute = path.resolve(filePath);
    if (this.#isDirectory(path.dirname(absolute)) !== true) throw new ThinError('THIN_NOT_FOUND', `Cannot create ${filePath}: its directory does not exist`);
    if (this.#tree.has(absolute)) throw new ThinError('THIN_EXISTS', `Cannot create ${filePath}: it already exists`);
    const disk = this.#newDisk();
    this.#record({ kind: 'set', path: absolute, entry: { kind: 'file', disk: disk.name } }, `create ${absolute}`);
    const handle = new SimFileHandle(disk, absolute, false);
    await handle.grow(options.sizeBytes);
    return handle;
  }

  kind(entryPath: string, options: { noFollow?: boolean } = {}): EntryKind | undefined {
    const absolute = path.resolve(entryPath);
    if (absolute === '/') return 'directory';
    if (!this.#reachable(absolute)) return undefined;
    if (options.noFollow === true) return this.#tree.get(absolute)?.kind;
    const resolved = this.realpathOrUndefined(absolute);
    return resolved === undefined ? undefined : resolved === '/' ? 'directory' : this.#tree.get(resolved)?.kind;
  }

  list(dir: string): string[] {
    const absolute = path.resolve(dir);
    if (this.kind(absolute) !== 'directory') throw fsError('ENOTDIR', `scandir '${dir}'`);
    const prefix = absolute === '/' ? '/' : `${absolute}/`;
    return [...this.#tree.keys()].filter((key) => key.startsWith(prefix) && !key.slice(prefix.length).includes('/')).map((key) => key.slice(prefix.length)).sort();
  }

  makeDirectory(dir: string, options: { recursive?: boolean } = {}): boolean {
    const absolute = path.resolve(dir);
    const existing = this.kind(absolute);
    if (existing !== undefined) {
      if (options.recursive === true && existing === 'directory') return false;
      throw fsError('EEXIST', `mkdir '${dir}'`);
    }
    const parent = path.dirname(absolute);
    if (this.kind(parent) !== 'directory') {
      if (options.recursive !== true) throw fsError('ENOENT', `mkdir '${dir}'`);
      this.makeDirectory(parent, options);
    }
    this.#record({ kind: 'set', path: absolute, entry: { kind: 'directory', id: this.#nextDirectoryId++ } }, `mkdir ${absolute}`);
    return true;
  }

  removeDirectory(dir: string): void {
    const absolute = path.resolve(dir);
    if (this.kind(absolute, { noFollow: true }) !== 'directory') throw fsError('ENOTDIR', `rmdir '${dir}'`);
    if (this.list(absolute).length > 0) throw fsError('ENOTEMPTY', `rmdir '${dir}'`);
    this.#record({ kind: 'remove', path: absolute }, `rmdir ${absolute}`);
  }

  remove(entryPath: string, options: { recursive?: boolean } = {}): void {
    const absolute = path.resolve(entryPath);
    const kind = this.kind(absolute, { noFollow: true });
    if (kind === undefined) return;
    if (kind === 'directory' && options.recursive !== true) throw fsError('ERR_FS_EISDIR', `rm '${entryPath}': is a directory`);
    this.#record({ kind: 'remove', path: absolute }, `remove ${absolute}`);
  }

  rename(fromPath: string, toPath: string): void {
    const from = path.resolve(fromPath);
    const to = path.resolve(toPath);
    const kind = this.kind(from, { noFollow: true });
    if (kind === undefined) throw fsError('ENOENT', `rename '${fromPath}' -> '${toPath}'`);
    if (this.kind(path.dirname(to)) !== 'directory') throw fsError('ENOENT', `rename '${fromPath}' -> '${toPath}'`);
    const target = this.kind(to, { noFollow: true });
    if (target === 'directory' && (kind !== 'directory' || this.list(to).length > 0)) throw fsError('ENOTEMPTY', `rename '${fromPath}' -> '${toPath}'`);
    if (target !== undefined && target !== 'directory' && kind === 'directory') throw fsError('ENOTDIR', `rename '${fromPath}' -> '${toPath}'`);
    this.#record({ kind: 'rename', from, to }, `rename ${from} -> ${to}`);
  }

  link(existingPath: string, newPath: string): void {
    const existing = path.resolve(existingPath);
    const created = path.resolve(newPath);
    const entry = this.#tree.get(existing);
    if (entry === undefined || !this.#reachable(existing)) throw fsError('ENOENT', `link '${existingPath}' -> '${newPath}'`);
    if (entry.kind === 'directory') throw fsError('EPERM', `link '${existingPath}' -> '${newPath}'`);
    if (this.kind(created, { noFollow: true }) !== undefined) throw fsError('EEXIST', `link '${existingPath}' -> '${newPath}'`);
    this.#record({ kind: 'set', path: created, entry }, `link ${existing} -> ${created}`);
  }

  symlink(target: string, linkPath: string): void {
    const absolute = path.resolve(linkPath);
    if (this.kind(path.dirname(absolute)) !== 'directory') throw fsError('ENOENT', `symlink '${target}' -> '${linkPath}'`);
    if (this.kind(absolute, { noFollow: true }) !== undefined) throw fsError('EEXIST', `symlink '${target}' -> '${linkPath}'`);
    this.#record({ kind: 'set', path: absolute, entry: { kind: 'symlink', target } }, `symlink ${absolute} -> ${target}`);
  }

  realpath(entryPath: string): string {
    const resolved = this.realpathOrUndefined(entryPath);
    if (resolved === undefined) throw fsError('ENOENT', `realpath '${entryPath}'`);
    return resolved;
  }

  /** Follows symbolic links (absolute or relative targets); undefined when the path leads nowhere. */
  realpathOrUndefined(entryPath: string): string | undefined {
    let current = path.resolve(entryPath);
    for (let hops = 0; hops < 40; hops += 1) {
      if (current === '/') return current;
      if (!this.#reachable(current)) return undefined;
      const entry = this.#tree.get(current);
      if (entry === undefined) return undefined;
      if (entry.kind !== 'symlink') return current;
      current = path.resolve(path.dirname(current), entry.target);
    }
    return undefined;
  }

  syncDirectory(dir: string): void {
    const absolute = path.resolve(dir);
    if (this.kind(absolute) !== 'directory') throw fsError('ENOENT', `open '${dir}'`);
    const id = this.#directoryId(this.realpath(absolute));
    this.machine.mark(`fs: sync ${absolute}`);
    const index = this.machine.events.length - 1;
    for (const logged of this.#log) if (logged.dir === id && logged.durableIndex === Infinity) logged.durableIndex = index;
  }

  lock(dir: string): DirectoryLock {
    const absolute = path.resolve(dir);
    if (this.kind(absolute) !== 'directory') throw new ThinError('THIN_NOT_FOUND', `Cannot lock pool ${dir}: no such directory`);
    if (this.#locked.has(absolute)) throw new ThinError('THIN_BUSY', `Pool ${dir} is in use by another process (pid unknown)`);
    const lockPath = path.join(absolute, LOCK_FILE_NAME);
    // O_CREAT: the lock file is made when missing, an entry like any other.
    if (this.kind(lockPath, { noFollow: true }) === undefined) {
      this.#record({ kind: 'set', path: lockPath, entry: { kind: 'file', disk: this.#newDisk().name } }, `create ${lockPath}`);
    }
    this.#locked.add(absolute);
    let held = true;
    return {
      path: lockPath,
      release: () => {
        if (!held) return;
        held = false;
        this.#locked.delete(absolute);
      },
    };
  }

  // --- internals ---

  #newDisk(): SimDisk {
    const names = new Set(this.machine.diskNames());
    while (names.has(`inode-${this.#nextInode}`)) this.#nextInode += 1;
    return this.machine.createDisk(`inode-${this.#nextInode++}`, 0);
  }

  #record(op: EntryOp, label: string): void {
    // The directory that holds the entry, as it is now (its id stays with it through a rename).
    const dir = this.#directoryId(this.realpath(path.dirname(op.kind === 'rename' ? op.to : op.path)));
    applyOp(this.#tree, op);
    this.machine.mark(`fs: ${label}`);
    this.#log.push({ op, dir, eventIndex: this.machine.events.length - 1, durableIndex: Infinity });
  }

  #directoryId(absolute: string): number {
    if (absolute === '/') return ROOT_DIRECTORY_ID;
    const entry = this.#tree.get(absolute);
    if (entry?.kind !== 'directory') throw fsError('ENOTDIR', absolute);
    return entry.id;
  }

  /** Whether every ancestor of the path is a directory in the tree (an entry under a lost directory is gone). */
  #reachable(absolute: string): boolean {
    for (let parent = path.dirname(absolute); parent !== '/'; parent = path.dirname(parent)) {
      if (this.#tree.get(parent)?.kind !== 'directory') return false;
    }
    return true;
  }

  #isDirectory(absolute: string): boolean {
    return this.kind(absolute) === 'directory';
  }
}
