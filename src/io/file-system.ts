// The file-system calls a pool and its tools make on pool directories: opening and creating the
// block files, directory entries (mkdir, rename, link, symlink, unlink), the directory's lock,
// and fsync of a directory. Everything that creates, renames or removes a pool's files goes
// through one of these objects, so the crash simulator (test/sim/sim-fs.ts) can stand in for
// node:fs and cut power between a rename and its directory's fsync.
//
// Durability (POSIX, as ext4 and XFS honour it): a new entry, a rename or an unlink is durable
// only once the directory holding the entry was fsynced after it (syncDirectory); a rename
// across directories, once the destination directory was. A file's size and contents are the
// BlockFile's business (sync). Callers sync each directory whose entries must survive a crash.
import { closeSync, fsyncSync, linkSync, lstatSync, openSync, readdirSync, realpathSync, renameSync, rmSync, rmdirSync, statSync, symlinkSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { BlockFile } from './block-file.ts';
import { FileBlockFile } from './file.ts';
import { lockDirectory, type DirectoryLock } from './lock.ts';
import { makePrivateDirectory } from './private.ts';

/** What a path names: its own kind with `noFollow` (lstat), else what it leads to (stat). */
export type EntryKind = 'file' | 'directory' | 'symlink' | 'other';

export interface FileSystem {
  /** Opens an existing file or block device (THIN_NOT_FOUND when there is none). */
  openFile(filePath: string, options: { readOnly: boolean }): Promise<BlockFile>;
  /** Creates a new sparse file of sizeBytes, private to its owner; THIN_EXISTS if the path exists. */
  createFile(filePath: string, options: { sizeBytes: number }): Promise<BlockFile>;
  /** The kind of what the path names, undefined when nothing is there (or a link leads nowhere). */
  kind(entryPath: string, options?: { noFollow?: boolean }): EntryKind | undefined;
  /** The names in a directory. */
  list(dir: string): string[];
  /** Creates a directory 0700 (with `recursive`, its missing parents too); whether it was created. */
  makeDirectory(dir: string, options?: { recursive?: boolean }): boolean;
  /** Removes an empty directory. */
  removeDirectory(dir: string): void;
  /** Removes a file, a link or (with `recursive`) a directory tree; nothing there is not an error. */
  remove(entryPath: string, options?: { recursive?: boolean }): void;
  rename(fromPath: string, toPath: string): void;
  /** A second name (hard link) for an existing file. */
  link(existingPath: string, newPath: string): void;
  symlink(target: string, linkPath: string): void;
  /** The path with every symbolic link resolved. */
  realpath(entryPath: string): string;
  /** Makes the directory's entries (new, renamed, removed) durable: fsync of the directory itself. */
  syncDirectory(dir: string): void;
  /** Takes the exclusive lock of a pool directory (io/lock.ts): THIN_BUSY, THIN_NOT_FOUND. */
  lock(dir: string): DirectoryLock;
}

/** The real file system, through node:fs. */
export const nodeFileSystem: FileSystem = {
  openFile: (filePath, options) => FileBlockFile.open(filePath, options),
  createFile: (filePath, options) => FileBlockFile.create(filePath, options),
  kind(entryPath, options = {}) {
    let stats: Stats;
    try {
      stats = options.noFollow === true ? lstatSync(entryPath) : statSync(entryPath);
    } catch {
      return undefined;
    }
    if (stats.isSymbolicLink()) return 'symlink';
    if (stats.isDirectory()) return 'directory';
    return stats.isFile() ? 'file' : 'other';
  },
  list: (dir) => readdirSync(dir),
  makeDirectory: (dir, options = {}) => makePrivateDirectory(dir, options),
  removeDirectory: (dir) => rmdirSync(dir),
  remove: (entryPath, options = {}) => rmSync(entryPath, { recursive: options.recursive === true, force: true }),
  rename: (fromPath, toPath) => renameSync(fromPath, toPath),
  link: (existingPath, newPath) => linkSync(existingPath, newPath),
  symlink: (target, linkPath) => symlinkSync(target, linkPath),
  realpath: (entryPath) => realpathSync(entryPath),
  syncDirectory(dir) {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  },
  lock: (dir) => lockDirectory(dir),
};

/**
 * Creates `dir` (and missing parents) as makeDirectory does, and makes the new entries durable:
 * the parent of each directory it made is synced, so a directory reported made survives a crash.
 */
export function makeDurableDirectory(fileSystem: FileSystem, dir: string, options: { recursive?: boolean } = {}): boolean {
  const missing: string[] = [];
  for (let current = resolve(dir); fileSystem.kind(current) === undefined; current = dirname(current)) {
    missing.push(current);
    if (dirname(current) === current || options.recursive !== true) break;
  }
  const created = fileSystem.makeDirectory(dir, options);
  if (created) for (const made of missing) fileSystem.syncDirectory(dirname(made));
  return created;
}
