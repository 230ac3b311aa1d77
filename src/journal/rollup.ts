// When the delta log is folded into the trees (a rollup: one full pdata commit of the open
// transaction, which already holds every logged change in memory) and what a flush writes.
//
// A flush:
//   nothing changed                          → nothing
//   only data written in place               → fdatasync(data), no metadata at all
//   mapping changes, all logged already      → fdatasync(data) if data was written
//   mapping changes the ring has room for    → append: fdatasync(data), record(s), fdatasync(metadata)
//   a change the log does not describe
//   (create, snapshot, remove, resize, a
//   raised high-water mark), the log off,
//   or the ring full                         → rollup
//
// A rollup also runs on a commit timer tick after a change was logged, once a commit interval
// passed with no request or LOG_ROLLUP_TICKS_MAX ticks passed without a rollup (and nothing is in
// flight), and on clean close. After it is durable the log starts again, empty, under the new
// generation (DeltaLog.restart). The timer commits only mapping changes: data written in place
// waits for a client's flush (or the kernel's writeback), as with any disk.
//
// Stall bound: a rollup seals synchronously (folds reference counts, checksums the dirty blocks:
// at most METADATA_DIRTY_BLOCKS_SOFT_MAX blocks, since the pool commits once that many are dirty),
// then writes asynchronously while reads and writes go on against the next transaction. What
// waits is a flush issued during the rollup: it waits for that one full commit (its block writes
// and two syncs) and then for its own append. Client writes never wait on a rollup, except a
// write that needs the data high-water mark raised, which is a full commit in any case.
import type { DeltaLog } from './log.ts';

export type FlushPlan = 'nothing' | 'sync-data' | 'append' | 'rollup';

export interface FlushState {
  /** undefined when the log is off: every flush that changed metadata is a full commit. */
  log: DeltaLog | undefined;
  /** The open transaction differs from the last full commit. */
  metadataChanged: boolean;
  /** A change was made that the log does not describe. */
  unloggedChange: boolean;
  /** Data writes completed since the last data sync. */
  dataWritten: boolean;
}

export function planFlush(state: FlushState): FlushPlan {
  if (!state.metadataChanged) return state.dataWritten ? 'sync-data' : 'nothing';
  if (state.log === undefined || state.unloggedChange) return 'rollup';
  if (state.log.pendingEntryCount === 0) return state.dataWritten ? 'sync-data' : 'nothing';
  return state.log.pendingFits() ? 'append' : 'rollup';
}

/**
 * The idle rule, asked on a commit timer tick that finds nothing in flight after a quiet interval
 * (or after LOG_ROLLUP_TICKS_MAX ticks without a rollup; CommitScheduler.tick): everything
 * changed is already logged, so fold the log now, while nobody waits for it.
 */
export function idleRollupDue(state: FlushState): boolean {
  if (state.log === undefined || !state.metadataChanged) return false;
  return state.log.pendingEntryCount === 0;
}
