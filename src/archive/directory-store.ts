// An object store in a directory: each object a file at its key's path, private to its owner as
// a pool is (directories 0700, files 0600: io/private.ts; restic keeps its repositories so). A
// write goes to a file
// under `tmp/`, is synced, then renamed (put) or linked (putNew, which link(2) makes atomic and
// exclusive) into place, and the directory synced: after a crash an object is there whole or
// not at all. Files left in `tmp/` by a killed writer are removed by `archive gc`.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ThinError } from '../errors.ts';
import { PRIVATE_FILE_MODE, makePrivateDirectory } from '../io/private.ts';
import { CONFIG_KEY, PACKS_PREFIX } from './format.ts';
import { checkKey, checkPrefix, type ObjectStore, type ObjectWriter, type StoredObject } from './store.ts';

export const DIRECTORY_TMP = 'tmp';
/** Pack objects whose descriptors a store keeps open for ranged reads. */
const READ_HANDLES_MAX = 16;
/** Entries of a directory whose sizes and sub-directories list() looks up at once. */
const LIST_BATCH_ENTRIES = 32;
/** A writer's temporary file under tmp/: TEMPORARY_ID_BYTES random bytes in hex, a dot, the last part of its key. */
const TEMPORARY_ID_BYTES = 8;
const TEMPORARY_NAME = /^[0-9a-f]{16}\.[^/]+$/;

export class DirectoryObjectStore implements ObjectStore {
  readonly url: string;
  readonly root: string;
  /** Open descriptors of pack objects for ranged reads, least recently used first (#withReadHandle). */
  readonly #readHandles = new Map<string, ReadHandle>();

  private constructor(root: string) {
    this.root = root;
    this.url = root;
  }

  /** The store in `dir` (created when missing; whether it holds an archive is the caller's question). */
  static open(dir: string): DirectoryObjectStore {
    const root = path.resolve(dir);
    return new DirectoryObjectStore(root);
  }

  /**
   * Refuses a place `archive init` must not make a store in, naming the path and why: a path
   * through a file, a file, or a directory that holds something other than a store (init would
   * mix the archive's objects into it, and gc would one day empty tmp/ there). A missing
   * directory (made with its parents) or an empty one is taken, and so is an existing store,
   * which init's exclusive create of the config then refuses.
   */
  async checkNewStorePlace(): Promise<void> {
    const cannot = (why: string) => `Cannot create an archive store at ${this.root}: ${why}`;
    const stats = await fsp.stat(this.root).catch((error: NodeJS.ErrnoException) => error);
    if (stats instanceof Error) {
      if (stats.code !== 'ENOENT' && stats.code !== 'ENOTDIR') throw new ThinError('THIN_IO', cannot(stats.code ?? stats.message), { cause: stats });
      // Missing: its nearest existing ancestor must be a directory for it to be made.
      let ancestor = path.dirname(this.root);
      for (;;) {
        const found = await fsp.stat(ancestor).catch(() => undefined);
        if (found !== undefined) {
          if (!found.isDirectory()) throw new ThinError('THIN_INVALID', cannot(`${ancestor} is a file, not a directory`));
          return;
        }
        if (path.dirname(ancestor) === ancestor) return;
        ancestor = path.dirname(ancestor);
      }
    }
    if (!stats.isDirectory()) throw new ThinError('THIN_INVALID', cannot('it is a file, not a directory'));
    const names = (await fsp.readdir(this.root)).filter((name) => name !== DIRECTORY_TMP);
    if (names.length === 0 || names.includes(CONFIG_KEY)) return;
    const shown = names.sort().slice(0, 3).map((name) => `'${name}'`).join(', ');
    throw new ThinError('THIN_EXISTS', cannot(`the directory is not empty (${shown}${names.length > 3 ? ', …' : ''}) and holds no archive store; name a new or empty directory`));
  }

  #path(key: string): string {
    checkKey(key);
    return path.join(this.root, ...key.split('/'));
  }

  async get(key: string): Promise<Uint8Array> {
    try {
      return new Uint8Array(await fsp.readFile(this.#path(key)));
    } catch (error) {
      throw this.#error('read', key, error);
    }
  }

  async getRange(key: string, beginBytes: number, endBytes: number, into?: Uint8Array): Promise<Uint8Array> {
    const path = this.#path(key);
    try {
      return await this.#withReadHandle(key, path, async (handle) => {
        const target = into !== undefined && into.length >= endBytes - beginBytes ? into.subarray(0, endBytes - beginBytes) : new Uint8Array(endBytes - beginBytes);
        let done = 0;
        while (done < target.length) {
          const { bytesRead } = await handle.read(target, done, target.length - done, beginBytes + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return done === target.length ? target : target.subarray(0, done);
      });
    } catch (error) {
      throw this.#error('read', key, error);
    }
  }

  /**
   * Runs `read` on an open descriptor of the object. A pack object never changes once in place
   * (docs/format.md, "Archive store"), and unpack reads each in hundreds of ranges: their
   * descriptors stay open, READ_HANDLES_MAX at most, the least recently used closed first (once
   * no read is using it). Other objects are opened for the one read.
   */
  async #withReadHandle<T>(key: string, path: string, read: (handle: fsp.FileHandle) => Promise<T>): Promise<T> {
    if (!key.startsWith(PACKS_PREFIX)) {
      const handle = await fsp.open(path, 'r');
      try {
        return await read(handle);
      } finally {
        await handle.close();
      }
    }
    let entry = this.#readHandles.get(key);
    if (entry === undefined) {
      const opened = fsp.open(path, 'r');
      const created: ReadHandle = { opened, users: 0, dropped: false };
      // A failed open is not kept: the next read tries again.
      opened.catch(() => {
        if (this.#readHandles.get(key) === created) this.#readHandles.delete(key);
      });
      if (this.#readHandles.size >= READ_HANDLES_MAX) void this.#dropReadHandle(this.#readHandles.keys().next().value!);
      entry = created;
    } else this.#readHandles.delete(key);
    this.#readHandles.set(key, entry); // now the most recently used
    entry.users += 1;
    try {
      return await read(await entry.opened);
    } finally {
      entry.users -= 1;
      if (entry.dropped && entry.users === 0) await closeReadHandle(entry);
    }
  }

  /** Forgets the descriptor of `key`, closing it now or when its last read ends. */
  #dropReadHandle(key: string): Promise<void> {
    const entry = this.#readHandles.get(key);
    if (entry === undefined) return Promise.resolve();
    this.#readHandles.delete(key);
    entry.dropped = true;
    return entry.users === 0 ? closeReadHandle(entry) : Promise.resolve();
  }


  async put(key: string, data: Uint8Array): Promise<void> {
    const final = this.#path(key);
    const temporary = await this.#writeTemporary(key, data);
    try {
      makePrivateDirectory(path.dirname(final), { recursive: true });
      await fsp.rename(temporary, final);
      await syncDirectory(path.dirname(final));
    } catch (error) {
      await fsp.rm(temporary, { force: true });
      throw this.#error('write', key, error);
    }
  }

  async putNew(key: string, data: Uint8Array): Promise<boolean> {
    const final = this.#path(key);
    const temporary = await this.#writeTemporary(key, data);
    try {
      makePrivateDirectory(path.dirname(final), { recursive: true });
      await fsp.link(temporary, final);
      await syncDirectory(path.dirname(final));
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw this.#error('write', key, error);
    } finally {
      await fsp.rm(temporary, { force: true });
    }
  }

  async #writeTemporary(key: string, data: Uint8Array): Promise<string> {
    const { temporary, handle } = await this.#openTemporary(key);
    try {
      await handle.writeFile(data);
      await handle.sync();
      await handle.close();
      return temporary;
    } catch (error) {
      await handle.close().catch(() => undefined);
      await fsp.rm(temporary, { force: true });
      throw this.#error('write', key, error);
    }
  }

  /** A new private file under tmp/ for `key`, open for writing. */
  async #openTemporary(key: string): Promise<{ temporary: string; handle: fsp.FileHandle }> {
    const dir = path.join(this.root, DIRECTORY_TMP);
    const temporary = path.join(dir, `${randomBytes(TEMPORARY_ID_BYTES).toString('hex')}.${path.basename(key)}`);
    let handle: fsp.FileHandle | undefined;
    try {
      makePrivateDirectory(dir, { recursive: true });
      handle = await fsp.open(temporary, 'wx', PRIVATE_FILE_MODE);
      await handle.chmod(PRIVATE_FILE_MODE);
      return { temporary, handle };
    } catch (error) {
      await handle?.close().catch(() => undefined);
      // The cause is the error above: a path through a file fails this rm too (ENOTDIR).
      await fsp.rm(temporary, { force: true }).catch(() => undefined);
      throw this.#error('write', key, error);
    }
  }

  /**
   * The object's bytes go to its temporary file as they come; commit syncs and renames it into
   * place. Writes overlap, so several may be in flight when one fails (ENOSPC, say): the first
   * failure is the writer's, every call from then on reports it, and the temporary file is
   * closed and removed only once the writes in flight have settled (closing it under them made
   * them fail with "file closed", which was then reported instead of the cause). Nothing of a
   * failed writer reaches its key: only commit renames, and it refuses after a failure.
   */
  async openWriter(key: string): Promise<ObjectWriter> {
    const final = this.#path(key);
    const { temporary, handle } = await this.#openTemporary(key);
    let positionBytes = 0;
    let failure: ThinError | undefined;
    /** The writes (each a whole writeRest or writeParts) not yet settled. */
    const inFlight = new Set<Promise<void>>();
    let discarded: Promise<void> | undefined;
    const discard = () => {
      discarded ??= (async () => {
        await Promise.allSettled(inFlight);
        await handle.close().catch(() => undefined);
        await fsp.rm(temporary, { force: true });
      })();
      return discarded;
    };
    /** Runs one write; after a failure (this one's or an earlier one's), reports the first. */
    const run = async (write: () => Promise<void>) => {
      if (failure !== undefined) throw failure;
      const pending = write();
      inFlight.add(pending);
      try {
        await pending;
        // Written, but into a file that another write's failure condemned.
        if (failure !== undefined) throw failure;
      } catch (error) {
        if (error === failure) throw failure;
        failure ??= this.#error('write', key, error);
        // Reported once the file is gone: a caller that gives up on the error leaves nothing in tmp/.
        await discard();
        throw failure;
      } finally {
        inFlight.delete(pending);
      }
    };
    /** Writes `bytes` from `done` on at `beginBytes` (a short write goes on from where it stopped). */
    const writeRest = async (bytes: Uint8Array, done: number, beginBytes: number) => {
      while (done < bytes.length) {
        const { bytesWritten } = await handle.write(bytes, done, bytes.length - done, beginBytes + done);
        done += bytesWritten;
      }
    };
    return {
      // Each write has its place when called, so writes may overlap.
      write: (bytes) => {
        const beginBytes = positionBytes;
        positionBytes += bytes.length;
        return run(() => writeRest(bytes, 0, beginBytes));
      },
      writeParts: (parts) => {
        const beginBytes = positionBytes;
        positionBytes += parts.reduce((sum, part) => sum + part.length, 0);
        return run(async () => {
          // One pwritev(2) (libuv splits it past IOV_MAX parts); after a short one, the rest part by part.
          const { bytesWritten } = await handle.writev(parts as Uint8Array[], beginBytes);
          let at = beginBytes;
          for (const part of parts) {
            await writeRest(part, Math.min(part.length, Math.max(0, beginBytes + bytesWritten - at)), at);
            at += part.length;
          }
        });
      },
      commit: async () => {
        await Promise.allSettled(inFlight);
        if (failure !== undefined) {
          await discard();
          throw failure;
        }
        try {
          await handle.sync();
          await handle.close();
          makePrivateDirectory(path.dirname(final), { recursive: true });
          await fsp.rename(temporary, final);
          await syncDirectory(path.dirname(final));
        } catch (error) {
          failure ??= this.#error('write', key, error);
          await discard();
          throw failure;
        }
      },
      abort: discard,
    };
  }

  async *list(prefix: string): AsyncGenerator<StoredObject> {
    checkPrefix(prefix);
    const base = prefix === '' ? this.root : path.join(this.root, ...prefix.slice(0, -1).split('/'));
    yield* this.#walk(base, prefix);
  }

  async *#walk(dir: string, keyPrefix: string): AsyncGenerator<StoredObject> {
    let entries: fs.Dirent[];
    try {
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw this.#error('list', keyPrefix, error);
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const listed = entries.filter((entry) => !(keyPrefix === '' && entry.name === DIRECTORY_TMP));
    // The sizes (a stat each) and sub-directories of a batch of entries are looked up at once and
    // yielded in key order: one after the other, each a round trip to libuv's thread pool, listing
    // a store's ~15 packs took 12 ms of a 0.35 s incremental pack (docs/benchmarks.md, "Archive:
    // the incremental's pipeline").
    for (let first = 0; first < listed.length; first += LIST_BATCH_ENTRIES) {
      const batch = listed.slice(first, first + LIST_BATCH_ENTRIES).map(async (entry): Promise<StoredObject[]> => {
        const key = keyPrefix + entry.name;
        const full = path.join(dir, entry.name);
        if (entry.isFile()) {
          // Deleted since the directory was read (a lock released, a stream removed): not listed.
          const stats = await fsp.stat(full).catch((error: NodeJS.ErrnoException) => {
            if (error.code === 'ENOENT') return undefined;
            throw this.#error('list', key, error);
          });
          return stats === undefined ? [] : [{ key, sizeBytes: stats.size }];
        }
        const objects: StoredObject[] = [];
        if (entry.isDirectory()) for await (const object of this.#walk(full, `${key}/`)) objects.push(object);
        return objects;
      });
      for (const objects of await Promise.all(batch)) yield* objects;
    }
  }

  async delete(key: string): Promise<void> {
    await this.#dropReadHandle(key);
    try {
      await fsp.rm(this.#path(key), { force: true });
    } catch (error) {
      throw this.#error('delete', key, error);
    }
  }

  /**
   * Removes whatever killed writers left in tmp/ (only while no writer runs: gc holds the store's
   * exclusive lock). Only names a writer makes (#openTemporary: 16 hex digits, a dot, the key's
   * last part) are removed, and a tmp/ that is a symbolic link is not entered: in a store others
   * can write, a tmp/ planted as a link to /etc would otherwise have root's gc empty /etc.
   */
  async removeUnfinished(): Promise<number> {
    const dir = path.join(this.root, DIRECTORY_TMP);
    let entries: fs.Dirent[];
    try {
      if (!(await fsp.lstat(dir)).isDirectory()) return 0;
      entries = await fsp.readdir(dir, { withFileTypes: true });
    } catch {
      return 0;
    }
    let removed = 0;
    for (const entry of entries) {
      if (!TEMPORARY_NAME.test(entry.name) || !(entry.isFile() || entry.isSymbolicLink())) continue;
      await fsp.rm(path.join(dir, entry.name), { force: true });
      removed++;
    }
    return removed;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#readHandles.keys()].map((key) => this.#dropReadHandle(key)));
  }

  #error(what: string, key: string, error: unknown): ThinError {
    if (error instanceof ThinError) return error;
    const where = path.join(this.root, key);
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new ThinError('THIN_NOT_FOUND', `Cannot ${what} ${where}: no such file`, { cause: error });
    return new ThinError('THIN_IO', `Cannot ${what} ${where}: ${(error as Error).message}`, { cause: error });
  }
}

/** A pack's descriptor kept open for ranged reads, with the reads using it. */
interface ReadHandle {
  opened: Promise<fsp.FileHandle>;
  users: number;
  /** No longer kept: closed when its last read ends. */
  dropped: boolean;
}

async function closeReadHandle(entry: ReadHandle): Promise<void> {
  await entry.opened.then((handle) => handle.close()).catch(() => undefined);
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await fsp.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
