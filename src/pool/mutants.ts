// Deliberately broken pools, for tests only (PoolOpenOptions.mutant; the CLI and the daemon never
// set it). Each mutant removes one ordering or check that the pool's crash safety rests on, at the
// one place that owns it, so that a test can show the crash campaigns catch it: a campaign that
// also passes on a broken pool proves nothing (test/sim/mutants.test.ts). Each mutant is one
// branch at its seam, named here; nothing else in the engine changes.
//
//   no-data-sync-before-log-record       commit-scheduler.ts: a flush appends its delta log record
//                                        without first syncing the data the record points at
//                                        (F-LOG-7, dm-thin 694cfe7f).
//   flush-ack-before-metadata-sync       the delta log's metadata sync is started but not awaited,
//                                        so the flush is acknowledged before its record is durable
//                                        (F-LOG-7): the log writes through SyncNotAwaitedFile.
//   in-place-write-to-shared-block       mapping-changes.ts: a block is copied on write only when
//                                        its reference count in the open transaction says it is
//                                        shared, not by dm-thin's time test (F-POOL-24): a block
//                                        still shared in the last commit is written in place.
//   replay-skips-last-record             log-replay.ts: open applies every delta log record's
//                                        entries but the last record's, and rolls up (F-LOG-4).
import { ForwardingBlockFile } from '../io/forwarding.ts';
import type { SyncOptions } from '../io/block-file.ts';

export const POOL_MUTANTS = [
  'no-data-sync-before-log-record',
  'flush-ack-before-metadata-sync',
  'in-place-write-to-shared-block',
  'replay-skips-last-record',
] as const;

export type PoolMutant = (typeof POOL_MUTANTS)[number];

/** A file whose sync resolves at once while the real sync runs on (the flush-ack-before-metadata-sync mutant). */
export class SyncNotAwaitedFile extends ForwardingBlockFile {
  override sync(options?: SyncOptions): Promise<void> {
    this.inner.sync(options).catch(() => undefined);
    return Promise.resolve();
  }
}
