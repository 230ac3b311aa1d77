// What thinbd creates holds volume data (VM root disks, keys, databases) or facts about it, so it
// is private to its owner whatever the umask: directories 0700, files 0600, as libvirt keeps
// images and restic its repositories. A umask can only clear bits, and a strict one (0277) could
// clear the owner's own, so modes are set explicitly after creation, not left to open/mkdir.
import { chmodSync, closeSync, existsSync, fchmodSync, mkdirSync, openSync, realpathSync, statSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';
import { ThinError } from '../errors.ts';

export const PRIVATE_FILE_MODE = 0o600;
export const PRIVATE_DIRECTORY_MODE = 0o700;

/**
 * Creates a directory 0700 (and, with `recursive`, any missing parents, which are the caller's
 * too). Returns whether it created the directory itself; an existing one keeps its mode.
 */
export function makePrivateDirectory(path: string, options: { recursive?: boolean } = {}): boolean {
  const existed = existsSync(path);
  const created = mkdirSync(path, { recursive: options.recursive === true, mode: PRIVATE_DIRECTORY_MODE });
  if (existed) return false;
  // mkdirSync(recursive) returns the first directory it made; a plain mkdir made exactly `path`.
  if (options.recursive !== true || created !== undefined) chmodSync(path, PRIVATE_DIRECTORY_MODE);
  return true;
}

/**
 * Opens a new file 0600 for writing (`flags` as openSync's, e.g. 'wx'), whatever the umask. A file
 * that cannot be made is a ThinError naming the path and why: an output (`dump -o`, `metadata pack
 * -o`) that already exists is refused, never overwritten.
 */
export function openPrivateFile(path: string, flags: string): number {
  let fd: number;
  try {
    fd = openSync(path, flags, PRIVATE_FILE_MODE);
  } catch (error) {
    throw cannotCreate(path, error);
  }
  try {
    fchmodSync(fd, PRIVATE_FILE_MODE);
  } catch (error) {
    closeSync(fd);
    throw error;
  }
  return fd;
}

/** Why a new file at `path` could not be made (its open failed with `cause`), as a ThinError naming it. */
export function cannotCreate(path: string, cause: unknown): ThinError {
  const code = (cause as NodeJS.ErrnoException).code ?? String(cause);
  switch (code) {
    case 'EEXIST':
      return new ThinError('THIN_EXISTS', `Cannot create ${path}: it already exists (thinbd does not overwrite it; remove it or name another file)`, { cause });
    case 'ENOENT':
      return new ThinError('THIN_NOT_FOUND', `Cannot create ${path}: its directory does not exist`, { cause });
    case 'EISDIR':
      return new ThinError('THIN_INVALID', `Cannot create ${path}: it is a directory`, { cause });
    case 'EACCES':
    case 'EPERM':
      return new ThinError('THIN_IO', `Cannot create ${path}: permission denied (${code})`, { cause });
    default:
      return new ThinError('THIN_IO', `Cannot create ${path}: ${code}`, { cause });
  }
}

/** True when users other than the owner may read or enter `path` (group or other bits set). */
export function isReadableByOthers(path: string): boolean {
  return (statSync(path).mode & 0o077) !== 0;
}

/**
 * Why users other than the owner can read a pool's files, or undefined when they cannot: a
 * regular file (the metadata or data, symbolic links followed) readable by group or others whose
 * every directory up to the root lets them through. Block devices are left out: their modes are
 * the system's (LVM's are root:disk 0660 by design).
 */
export function describeExposure(paths: readonly string[]): string | undefined {
  for (const path of paths) {
    const found = resolved(path);
    if (found === undefined) continue;
    const { real, stats } = found;
    if (!stats.isFile() || (stats.mode & 0o044) === 0) continue;
    if (!searchableByOthers(dirname(real))) continue;
    return `${real} is readable by other users (mode ${(stats.mode & 0o777).toString(8).padStart(4, '0')}); chmod 600 it, or 700 its directory`;
  }
  return undefined;
}

/**
 * Why users other than the caller (and root) could change what a directory's names point at, or
 * undefined when they cannot: a directory writable by group or others (without the sticky bit's
 * protection of names it does not own), or owned by another user. In such a pool directory that
 * user could put a link to any file or device in place of `data`, and a root `serve` would write
 * clients' data there.
 */
export function describeForeignControl(dir: string): string | undefined {
  const found = resolved(dir);
  if (found === undefined) return undefined;
  const { real, stats } = found;
  const self = process.geteuid?.() ?? stats.uid;
  const modeText = (stats.mode & 0o7777).toString(8).padStart(4, '0');
  // Group write counts when the group is not the caller's own (a umask of 002 gives the user's
  // private group, as Debian and Ubuntu make it, write to new directories).
  const groupWrites = (stats.mode & 0o020) !== 0 && stats.gid !== (process.getegid?.() ?? stats.gid);
  if (((stats.mode & 0o002) !== 0 || groupWrites) && (stats.mode & 0o1000) === 0) {
    return `${real} is writable by other users (mode ${modeText}), who could put links in place of its files; chmod 700 it`;
  }
  if (stats.uid !== self && stats.uid !== 0) {
    return `${real} belongs to uid ${stats.uid}, who could put links in place of its files (run thinbd as that user, or chown the directory)`;
  }
  return undefined;
}

/** The path with its links followed, and what it is; undefined when it cannot be reached. */
function resolved(path: string): { real: string; stats: Stats } | undefined {
  try {
    const real = realpathSync(path);
    return { real, stats: statSync(real) };
  } catch {
    return undefined;
  }
}

/** Whether a user other than the owner may pass through every directory from `dir` up to the root. */
function searchableByOthers(dir: string): boolean {
  for (let current = dir; ; current = dirname(current)) {
    if ((statSync(current).mode & 0o011) === 0) return false;
    if (dirname(current) === current) return true;
  }
}
