// Store locks (F-AR-LOCK-1): who may run beside whom. Packs, unpacks, verifies and removals take a
// shared lock and run side by side — concurrent packs are safe: each writes packs and index
// objects under fresh random ids, and claims its stream name with an exclusive create. gc takes
// the exclusive lock, because it deletes packs that a running pack could be deduplicating
// against; it is refused while any other lock is held, and every other command is refused while
// gc holds one.
//
// A lock is an object locks/<id> (JSON: kind, host, pid, times). To take one: write it, then list
// the locks; on a conflict, delete ours and refuse (two racing takers may both back off, never
// both proceed). A holder rewrites its lock every ARCHIVE_LOCK_REFRESH_MS. A lock is stale when
// its process is gone (same host, no such pid) or it was not refreshed for ARCHIVE_LOCK_STALE_MS
// (another host); stale locks are removed by whoever finds them (restic's rules).
import os from 'node:os';
import { ThinError, isThinError } from '../errors.ts';
import { ARCHIVE_LOCK_REFRESH_MS, ARCHIVE_LOCK_STALE_MS } from '../constants.ts';
import { LOCKS_PREFIX, newObjectId } from './format.ts';
import { processAlive } from '../util/process.ts';
import type { ObjectStore } from './store.ts';

export type LockKind = 'shared' | 'exclusive';

export interface LockRecord {
  kind: LockKind;
  /** What the holder is doing: pack, unpack, gc, … */
  command: string;
  host: string;
  pid: number;
  startedAt: string;
  refreshedAt: string;
}

export interface StoreLock {
  readonly key: string;
  release(): Promise<void>;
}


export function lockIsStale(record: LockRecord, now: number): boolean {
  if (record.host === os.hostname()) return !processAlive(record.pid);
  return now - Date.parse(record.refreshedAt) > ARCHIVE_LOCK_STALE_MS;
}

function describeLock(record: LockRecord): string {
  return `${record.command} (pid ${record.pid} on ${record.host}, since ${record.startedAt})`;
}

async function readLocks(store: ObjectStore): Promise<Array<{ key: string; record: LockRecord | undefined }>> {
  const locks: Array<{ key: string; record: LockRecord | undefined }> = [];
  for await (const object of store.list(LOCKS_PREFIX)) {
    let record: LockRecord | undefined;
    try {
      record = JSON.parse(new TextDecoder().decode(await store.get(object.key))) as LockRecord;
    } catch (error) {
      // Deleted since the listing: released, so not held. Unreadable: it still counts as held.
      if (isThinError(error, 'THIN_NOT_FOUND')) continue;
      record = undefined;
    }
    locks.push({ key: object.key, record });
  }
  return locks;
}

/**
 * Takes a lock of `kind` on the store for `command`; THIN_BUSY naming the holder on a conflict.
 * `onNote` hears about stale locks removed.
 */
export async function lockStore(store: ObjectStore, kind: LockKind, command: string, onNote: (line: string) => void = () => {}): Promise<StoreLock> {
  const key = `${LOCKS_PREFIX}${newObjectId()}`;
  const startedAt = new Date().toISOString();
  const write = () => {
    const record: LockRecord = { kind, command, host: os.hostname(), pid: process.pid, startedAt, refreshedAt: new Date().toISOString() };
    return store.put(key, new TextEncoder().encode(`${JSON.stringify(record)}\n`));
  };
  await write();
  try {
    const now = Date.now();
    for (const other of await readLocks(store)) {
      if (other.key === key) continue;
      if (other.record !== undefined && lockIsStale(other.record, now)) {
        await store.delete(other.key);
        onNote(`removed a stale lock of ${describeLock(other.record)}`);
        continue;
      }
      if (other.record === undefined) {
        // Not a lock thinbd wrote, or a damaged one: whose it is cannot be told, so it is held as gc's.
        throw new ThinError(
          'THIN_BUSY',
          `The archive store ${store.url} holds ${other.key}, which is not a readable lock: it counts as held by gc, so ${command} cannot run. If no command is using the store, delete that object`,
        );
      }
      if (kind === 'exclusive' || other.record.kind === 'exclusive') {
        const need = kind === 'exclusive' ? `${command} needs it alone` : `${other.record.command} needs it alone`;
        throw new ThinError('THIN_BUSY', `The archive store ${store.url} is in use by ${describeLock(other.record)}; ${need}. Try again when it ends`);
      }
    }
  } catch (error) {
    await store.delete(key).catch(() => undefined);
    throw error;
  }
  let refreshing: Promise<void> | undefined;
  const timer = setInterval(() => {
    refreshing = write().catch(() => undefined);
  }, ARCHIVE_LOCK_REFRESH_MS);
  timer.unref();
  return {
    key,
    release: async () => {
      clearInterval(timer);
      await refreshing;
      await store.delete(key);
    },
  };
}
