// An exclusive lock on a pool directory, so two processes never open one pool for writing.
//
// It is a kernel lock, flock(LOCK_EX | LOCK_NB) on DIR/lock, not a lock *file*: the kernel drops
// it when the holder's last descriptor closes, which includes the holder being killed with
// SIGKILL, so a crash never leaves a stale lock for an operator to delete by hand. The lock file
// itself stays; it holds the pid of the last holder, for the "in use by" message only (a stale
// pid in it means nothing while the file is unlocked).
//
// Core fs has no flock, so it is called from libc through koffi. flock locks belong to the open
// file description: a second open() in the same process is refused too, which makes it a
// single-writer guard within one process as well.
//
// The lock file is opened with O_NOFOLLOW and must be a regular file: taking the lock truncates
// it, so a `lock` planted as a symbolic link to another file, in a pool directory someone else can
// write, would otherwise have root, running a command there, truncate that file (/etc/passwd).
import { closeSync, constants, fstatSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { loadKoffi } from '../util/native.ts';
import { ThinError } from '../errors.ts';
import { PRIVATE_FILE_MODE } from './private.ts';

const koffi = loadKoffi();

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
const EWOULDBLOCK = 11;
const EINTR = 4;

const flock = koffi.load('libc.so.6').func('int flock(int, int)') as (fd: number, operation: number) => number;

/** Name of the lock file inside a pool directory. */
export const LOCK_FILE_NAME = 'lock';

export interface DirectoryLock {
  /** The lock file's path. */
  readonly path: string;
  /** Drops the lock; later calls do nothing. */
  release(): void;
}

/**
 * Takes the exclusive lock of a pool directory without waiting.
 * Throws THIN_BUSY when another open file description holds it, THIN_NOT_FOUND when the
 * directory does not exist.
 */
export function lockDirectory(directoryPath: string): DirectoryLock {
  const lockPath = join(directoryPath, LOCK_FILE_NAME);
  let fd: number;
  try {
    // O_RDWR | O_CREAT, no O_TRUNC: the holder's pid must survive a refused attempt. (libuv opens
    // every descriptor close-on-exec, so a child process never inherits the lock.)
    fd = openSync(lockPath, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, PRIVATE_FILE_MODE);
  } catch (error) {
    const code = errorCode(error);
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new ThinError('THIN_NOT_FOUND', `Cannot lock pool ${directoryPath}: no such directory`, { cause: error });
    }
    if (code === 'ELOOP') {
      throw new ThinError('THIN_INVALID', `Cannot lock pool ${directoryPath}: ${lockPath} is a symbolic link (thinbd does not follow it; remove it)`, { cause: error });
    }
    throw new ThinError('THIN_IO', `Cannot lock pool ${directoryPath}: cannot open ${lockPath}: ${code}`, {
      cause: error,
    });
  }

  const stats = fstatSync(fd);
  if (!stats.isFile()) {
    closeSync(fd);
    throw new ThinError('THIN_INVALID', `Cannot lock pool ${directoryPath}: ${lockPath} is not a regular file (thinbd writes its pid there; remove it)`);
  }

  let result: number;
  let errno = 0;
  do {
    result = flock(fd, LOCK_EX | LOCK_NB);
    errno = result === 0 ? 0 : koffi.errno();
  } while (result !== 0 && errno === EINTR);

  if (result !== 0) {
    const holderPid = readHolderPid(fd);
    closeSync(fd);
    if (errno === EWOULDBLOCK) {
      const holder = holderPid === undefined ? 'pid unknown' : `pid ${holderPid}`;
      throw new ThinError('THIN_BUSY', `Pool ${directoryPath} is in use by another process (${holder})`);
    }
    throw new ThinError('THIN_IO', `Cannot lock pool ${directoryPath}: flock failed (errno ${errno})`);
  }

  try {
    const text = Buffer.from(`${process.pid}\n`);
    ftruncateSync(fd, 0);
    writeSync(fd, text, 0, text.length, 0);
  } catch (error) {
    flock(fd, LOCK_UN);
    closeSync(fd);
    throw new ThinError('THIN_IO', `Cannot lock pool ${directoryPath}: cannot write ${lockPath}: ${errorCode(error)}`, {
      cause: error,
    });
  }

  let held = true;
  return {
    path: lockPath,
    release(): void {
      if (!held) return;
      held = false;
      // Clear the pid first, while the lock still keeps others out; closing drops the lock.
      try {
        ftruncateSync(fd, 0);
      } catch {
        // The pid is advisory; an unlocked file with a stale pid in it is harmless.
      }
      // Closing the last descriptor drops the lock anyway; unlocking first just says so early.
      flock(fd, LOCK_UN);
      closeSync(fd);
    },
  };
}

function readHolderPid(fd: number): number | undefined {
  try {
    const buffer = Buffer.alloc(32);
    const readBytes = readSync(fd, buffer, 0, buffer.length, 0);
    const text = buffer.subarray(0, readBytes).toString('latin1').trim();
    return /^[0-9]+$/.test(text) ? Number(text) : undefined;
  } catch {
    return undefined;
  }
}

function errorCode(error: unknown): string {
  if (typeof error === 'object' && error !== null && 'code' in error && typeof error.code === 'string') {
    return error.code;
  }
  return String(error);
}
