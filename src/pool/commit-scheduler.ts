// The commit scheduler: decides when and how the pool's changes become durable, and runs one
// commit at a time.
//
// A flush (a client's FLUSH or FUA) becomes what journal/rollup.ts's planFlush says: nothing, a
// data sync (only data written in place), a delta log record (only logged mapping changes), or a
// full commit that seals the open transaction and folds the log into the trees (a rollup). The
// commit timer (tick) makes changes nobody flushed durable and rolls the log up when the pool is
// quiet. Commits are issued one at a time: a call made while one runs shares the next one
// (queued), and while a reader holds the committed state (withCommitsHeld) none starts. The
// payload is built synchronously right before pdata seals, so the roots in the payload are
// exactly those of the sealed transaction.
import { DELTA_LOG_BLOCK_COUNT, INLINE_SYNC_DIRTY_BYTES_MAX, LOG_ROLLUP_TICKS_MAX } from '../constants.ts';
import { ThinError, assert } from '../errors.ts';
import type { SyncOptions } from '../io/block-file.ts';
import type { TransactionManager } from '../pdata/index.ts';
import { DeltaLogEntryKind, DeltaLogRecordFlag, type DeltaLog, type PendingLogEntries } from '../journal/log.ts';
import { idleRollupDue, planFlush, type FlushState } from '../journal/rollup.ts';
import type { DataPath } from './data-path.ts';
import type { PoolFiles } from './files.ts';
import type { HighWaterMark } from './high-water-mark.ts';
import type { PoolMutant } from './mutants.ts';
import type { PoolMode } from './reports.ts';

/** Ring blocks a remap carrying up to 4 KiB appends: its record and one slot of carried bytes (F-LOG-9). */
const REMAP_LOG_BLOCKS = 2;

/** What the scheduler needs from the engine (PoolCore), whose state machine it follows. */
export interface CommitHost {
  readonly mode: PoolMode;
  readonly closing: boolean;
  readonly readOnlyOpen: boolean;
  /** A commit may run: read-write, or read-only only for lack of metadata space. */
  readonly canCommit: boolean;
  readonly requestsInFlight: number;
  /** Requests begun since open. */
  readonly requestsBegun: number;
  /** The pool time, which a delta log record carries (F-LOG-4). */
  readonly time: number;
  assertWritable(): void;
  fail(reason: string, cause: unknown): void;
  /** THIN_IO naming the first failed write or sync since open, if there was one. */
  ioFailureError(): ThinError | undefined;
  /** Brings the device tree up to date and seals the high-water mark: the payload of the transaction to seal now. */
  sealPayload(): { payload: Uint8Array; highWaterMark: number };
  assertInvariants(): void;
  /** Records metadata copies found unwritable since the last flush (bad-ranges.ts): a flush makes them durable too. */
  absorbPendingBadRanges(): void;
  /** Such copies waiting to be recorded. */
  readonly pendingBadRanges: number;
  /** A full commit is durable: its frees are reusable now (the space policy punches them, wakes waiting writes). */
  committed(): void;
}

export interface CommitParts {
  tm: TransactionManager;
  files: PoolFiles;
  dataPath: DataPath;
  highWaterMark: HighWaterMark;
  /** Dirty metadata blocks after which a write starts a commit (commitIfManyDirty). */
  metadataDirtyBlocksMax: number;
  /** Tests only (mutants.ts). */
  mutant?: PoolMutant | undefined;
}

/** A move of the metadata mirror waiting for the next commit (moveMirror). */
interface MirrorMove {
  offsetBlocks: number;
  mayMove: () => void;
  moved: boolean;
  error: unknown;
}

export class CommitScheduler {
  readonly #host: CommitHost;
  readonly #tm: TransactionManager;
  readonly #files: PoolFiles;
  readonly #dataPath: DataPath;
  readonly #highWaterMark: HighWaterMark;
  readonly #metadataDirtyBlocksMax: number;
  /** The no-data-sync-before-log-record mutant (mutants.ts): tests only. */
  readonly #skipDataSyncBeforeRecord: boolean;
  #running: Promise<void> | undefined;
  #queued: Promise<void> | undefined;
  /** A move of the metadata mirror the next commit makes first (moveMirror). */
  #mirrorMove: MirrorMove | undefined;
  /** While set, no commit starts: a reader of the committed state (a live check) is using it. */
  #hold: Promise<void> | undefined;
  /** Metadata changed since the last sealed transaction. */
  #metadataDirty = false;
  /** A change the delta log does not describe was made since the last full commit: the next commit is one. */
  #unloggedChange = false;
  /** The delta log (src/journal), when flushes append records instead of committing. */
  #log: DeltaLog | undefined;
  #flushes = 0;
  #rollups = 0;
  #dataSyncs = 0;
  #dirtyLimitCommits = 0;
  /** Requests begun at the timer's last tick (to tell a quiet interval). */
  #requestsBegunAtTick = 0;
  /** Rollups seen at the last tick, and ticks since the count last changed (LOG_ROLLUP_TICKS_MAX). */
  #rollupsAtTick = 0;
  #ticksSinceRollup = 0;
  #backgroundRollup: Promise<void> | undefined;

  constructor(parts: CommitParts, host: CommitHost) {
    this.#host = host;
    this.#tm = parts.tm;
    this.#files = parts.files;
    this.#dataPath = parts.dataPath;
    this.#highWaterMark = parts.highWaterMark;
    this.#metadataDirtyBlocksMax = parts.metadataDirtyBlocksMax;
    this.#skipDataSyncBeforeRecord = parts.mutant === 'no-data-sync-before-log-record';
  }

  get running(): Promise<void> | undefined {
    return this.#running;
  }

  get queued(): boolean {
    return this.#queued !== undefined;
  }

  get held(): boolean {
    return this.#hold !== undefined;
  }

  get log(): DeltaLog | undefined {
    return this.#log;
  }

  get flushes(): number {
    return this.#flushes;
  }

  get rollups(): number {
    return this.#rollups;
  }

  get dataSyncs(): number {
    return this.#dataSyncs;
  }

  get dirtyLimitCommits(): number {
    return this.#dirtyLimitCommits;
  }

  /** A commit nobody waits for may start: read-write, not closing, no commit running or queued. */
  get backgroundCommitMayStart(): boolean {
    return this.#host.mode === 'read-write' && !this.#host.closing && this.#running === undefined && this.#queued === undefined;
  }

  /** The open transaction changed (the next flush commits or logs). */
  metadataChanged(): void {
    this.#metadataDirty = true;
  }

  /** A change the delta log cannot describe was made: the next flush is a full commit (F-LOG-6). */
  unloggedChange(): void {
    this.#unloggedChange = true;
  }

  /** Turns the delta log on: from now on a flush appends a record instead of committing. */
  attachLog(log: DeltaLog): void {
    assert(this.#log === undefined, 'a second delta log');
    this.#log = log;
  }

  /** A flush asked for by a client (flush or FUA): counted, then a commit or a log append. */
  flush(): Promise<void> {
    this.#flushes += 1;
    return this.commit();
  }

  /** A full commit whatever changed: the superblock must say something new (the metadata mirror was added). */
  recordLayoutChange(): Promise<void> {
    this.#metadataDirty = true;
    this.#unloggedChange = true;
    return this.commit();
  }

  /**
   * Moves the metadata mirror to `offsetBlocks` (TransactionManager.moveMirror, docs/format.md
   * F-MIR-6) at the start of a commit of its own, so that no other metadata write runs meanwhile;
   * that commit is a full one, and its superblock is the first to name the new place. `mayMove`
   * runs first, in the same turn, and throws when the mirror may not move now. Resolves when that
   * commit is durable. A move that fails (the file cannot grow, no copy of a block reads) rejects
   * and leaves the mirror where it was; the commit goes on without it.
   */
  async moveMirror(offsetBlocks: number, mayMove: () => void): Promise<void> {
    assert(this.#mirrorMove === undefined, 'two mirror moves at once');
    const move: MirrorMove = { offsetBlocks, mayMove, moved: false, error: undefined };
    this.#mirrorMove = move;
    try {
      // A commit running now has planned already: the move waits for the next, queued behind it.
      await this.recordLayoutChange();
    } finally {
      if (this.#mirrorMove === move) this.#mirrorMove = undefined;
    }
    if (move.error !== undefined) throw move.error;
    if (!move.moved) throw new ThinError('THIN_READ_ONLY', 'The metadata mirror was not moved: the pool made no commit (it is not read-write)');
  }

  /** A full commit that folds the delta log into the trees (when anything changed). */
  rollup(): Promise<void> {
    if (this.#metadataDirty) this.#unloggedChange = true;
    return this.commit();
  }

  /**
   * Makes every completed write durable: commits the transaction if metadata changed, else syncs
   * the data file if data was written. Calls made while a commit runs share the next one.
   * `callerRequests`: requests in flight that are the caller's own and wait for this commit (a
   * remap persists from inside its write request): with no other request in flight, a small
   * flush's syncs may still run on the main thread (#flushSyncOptions).
   */
  commit(callerRequests = 0): Promise<void> {
    const ioFailure = this.#host.ioFailureError();
    if (ioFailure !== undefined) return Promise.reject(ioFailure);
    if (this.#host.mode === 'read-only' && this.#host.readOnlyOpen) return Promise.resolve();
    if (!this.#host.canCommit) this.#host.assertWritable();
    if (this.#queued !== undefined) return this.#queued;
    if (this.#running === undefined) return this.#start(callerRequests);
    const queued = this.#running.catch(() => undefined).then(() => {
      this.#queued = undefined;
      return this.#start(callerRequests);
    });
    this.#queued = queued;
    return queued;
  }

  /**
   * Starts a commit nobody asked for when the open transaction holds many dirty metadata blocks
   * (METADATA_DIRTY_BLOCKS_SOFT_MAX unless the pool was opened with a lower limit), so memory
   * stays bounded between a client's flushes. A
   * failure enters the sticky mode; the caller's request is not failed by it.
   */
  commitIfManyDirty(): void {
    if (!this.backgroundCommitMayStart || this.#tm.dirtyBlockCount < this.#metadataDirtyBlocksMax) return;
    this.#dirtyLimitCommits += 1;
    this.rollup().catch(() => undefined);
  }

  /**
   * The commit timer's tick: makes mapping changes nobody flushed durable (with the delta log, the
   * first tick after a change logs it, and a tick after a quiet interval rolls the log up). Data
   * written in place, with no mapping change, is left to the kernel's writeback until a client
   * flushes, as qemu-nbd and nbdkit leave it: syncing it unasked made every write workload wait
   * on an fdatasync of everything written each second, and promised nobody anything. Resolves
   * when the commit the tick started, if any, has ended (never rejects: a failed background
   * commit is the pool's to report).
   */
  tick(): Promise<void> {
    const requestsBegun = this.#host.requestsBegun;
    const quietInterval = requestsBegun === this.#requestsBegunAtTick;
    this.#requestsBegunAtTick = requestsBegun;
    if (this.#rollups !== this.#rollupsAtTick) {
      this.#rollupsAtTick = this.#rollups;
      this.#ticksSinceRollup = 0;
    } else this.#ticksSinceRollup += 1;
    const quiet = this.#host.requestsInFlight === 0 && (quietInterval || this.#ticksSinceRollup >= LOG_ROLLUP_TICKS_MAX);
    if (!this.backgroundCommitMayStart) return Promise.resolve();
    if (this.#host.pendingBadRanges > 0) return this.commit().catch(() => undefined);
    const state = this.#flushState();
    if (quiet && idleRollupDue(state)) return this.rollup().catch(() => undefined);
    const plan = planFlush(state);
    if (plan === 'append' || plan === 'rollup') return this.commit().catch(() => undefined);
    return Promise.resolve();
  }

  /**
   * After a remap's record (remap.ts): when the ring has no room left for another remap carrying
   * its bytes (REMAP_LOG_BLOCKS), folds the log in the background now, so that the next remap
   * appends a record instead of making a full commit (two syncs and the trees' writes) on its
   * acknowledged path: a failing disk's remaps come one at a time, apart. Returns the rollup
   * started, if any (never rejects: a failed background commit is the pool's to report).
   */
  rollupIfLogFull(): Promise<void> | undefined {
    const log = this.#log;
    if (log === undefined || !this.backgroundCommitMayStart || log.blocksUsed + REMAP_LOG_BLOCKS <= DELTA_LOG_BLOCK_COUNT) return undefined;
    const rollup = this.rollup().catch(() => undefined);
    this.#backgroundRollup = rollup;
    void rollup.finally(() => {
      if (this.#backgroundRollup === rollup) this.#backgroundRollup = undefined;
    });
    return rollup;
  }

  /** The rollup rollupIfLogFull started, while it runs. */
  get backgroundRollup(): Promise<void> | undefined {
    return this.#backgroundRollup;
  }

  /**
   * Commits, then runs work while no commit may start, so the committed generation's blocks stay
   * as they are on disk (blocks it frees are reused only after a later commit). Flushes asked
   * meanwhile wait for work to end; reads and writes go on.
   */
  async withCommitsHeld<T>(work: () => Promise<T>): Promise<T> {
    while (this.#hold !== undefined) await this.#hold.catch(() => undefined);
    // A rollup, so that the committed trees hold everything (the delta log is not in them).
    await this.rollup();
    let release!: () => void;
    this.#hold = new Promise<void>((resolve) => {
      release = resolve;
    });
    try {
      return await work();
    } finally {
      this.#hold = undefined;
      release();
    }
  }

  /** Waits for a running commit (for close) without starting one. */
  async settle(): Promise<void> {
    while (this.#running !== undefined || this.#queued !== undefined) {
      await (this.#queued ?? this.#running)?.catch(() => undefined);
    }
  }

  #start(callerRequests = 0): Promise<void> {
    assert(this.#running === undefined, 'two commits at once');
    if (this.#hold !== undefined) {
      const held = this.#hold.then(() => {
        this.#running = undefined;
        return this.#start(callerRequests);
      });
      this.#running = held;
      return held;
    }
    const running = this.#commitNow(callerRequests).finally(() => {
      this.#running = undefined;
      this.#host.assertInvariants();
    });
    this.#running = running;
    return running;
  }

  async #commitNow(callerRequests: number): Promise<void> {
    // A flush queued behind the commit that failed fails too.
    const ioFailure = this.#host.ioFailureError();
    if (ioFailure !== undefined) throw ioFailure;
    if (!this.#host.canCommit) this.#host.assertWritable();
    this.#host.absorbPendingBadRanges();
    const move = this.#mirrorMove;
    if (move !== undefined) {
      this.#mirrorMove = undefined;
      try {
        move.mayMove();
        await this.#tm.moveMirror(move.offsetBlocks);
        move.moved = true;
      } catch (error) {
        move.error = error;
      }
      // Whatever happened, this commit is a full one (its superblock names the mirror's place).
      this.#metadataDirty = true;
      this.#unloggedChange = true;
      this.#host.absorbPendingBadRanges();
    }
    let plan = planFlush(this.#flushState());
    if (plan === 'nothing') return;
    const log = this.#log;
    if (plan === 'sync-data' && log?.carriedSinceSync === true && !log.markFits) {
      // The sync mark F-LOG-9 asks for has no room in the ring: a full commit ends the log instead.
      this.#metadataDirty = true;
      this.#unloggedChange = true;
      plan = 'rollup';
    }
    if (plan === 'sync-data') {
      const options = this.#flushSyncOptions(callerRequests);
      this.#dataPath.syncStarted();
      await this.#syncData(options);
      // Bytes a record carried must not be replayed over a block this flush made durable (F-LOG-9).
      if (log?.carriedSinceSync === true) await this.#appendToLog(log, { entries: [], carriedBytes: [] }, DeltaLogRecordFlag.dataSynced, options);
      return;
    }
    if (plan === 'append') {
      await this.#appendLog(callerRequests);
      return;
    }
    // Seal: bring the device tree up to date, then hand pdata the payload, all in this turn.
    let sealed: { payload: Uint8Array; highWaterMark: number };
    try {
      sealed = this.#host.sealPayload();
    } catch (error) {
      this.#host.fail(`metadata error while sealing a transaction: ${error instanceof Error ? error.message : String(error)}`, error);
      throw error;
    }
    this.#metadataDirty = false;
    this.#dataPath.syncStarted();
    // The sealed transaction holds every logged and pending change: the log starts again after it.
    const generation = this.#tm.transactionId;
    this.#log?.discardPending();
    this.#unloggedChange = false;
    let dataSynced = false;
    try {
      await this.#tm.commit(sealed.payload, async () => {
        dataSynced = true;
        await this.#syncData();
      });
      // Defensive: a transaction manager that skipped beforeMetadata must not make a flush
      // acknowledge data that was never synced.
      if (!dataSynced) await this.#syncData();
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      this.#host.fail(`a commit failed: ${why}`, error);
      throw new ThinError('THIN_IO', `The commit failed (${why}); the pool now needs a check and acknowledges no flush until it is reopened`, { cause: error });
    }
    this.#highWaterMark.committed(sealed.highWaterMark);
    if (this.#log !== undefined) {
      this.#log.restart(generation);
      this.#rollups += 1;
    }
    this.#host.committed();
  }

  #flushState(): FlushState {
    return {
      log: this.#log,
      metadataChanged: this.#metadataDirty,
      unloggedChange: this.#unloggedChange || this.#highWaterMark.raisePending,
      dataWritten: this.#dataPath.bytesSinceSync > 0,
    };
  }

  /**
   * A flush as a delta log record (src/journal/log.ts): the data the pending entries point at is
   * synced first, then the record is written and synced; it is the commit record (F-LOG-7). When
   * the only data written since the last sync is remaps' new blocks and their bytes fit the ring,
   * the record carries those bytes instead (F-LOG-9): one sync, of the metadata file, makes the
   * remap and its write durable, and replay rebuilds the block from them.
   */
  async #appendLog(callerRequests: number): Promise<void> {
    const log = this.#log;
    assert(log !== undefined, 'appending to a delta log that is off');
    const carry = this.#dataPath.bytesSinceSync === 0 && log.pendingFitsCarried();
    let pending = log.takePending();
    const options = this.#flushSyncOptions(callerRequests);
    if (carry && pending.carriedBytes.length > 0) {
      await this.#appendToLog(log, pending, 0, options);
      return;
    }
    if (!this.#skipDataSyncBeforeRecord) {
      this.#dataPath.syncStarted();
      await this.#syncData(options);
    }
    // Synced, the new blocks hold their bytes: nothing to carry.
    if (pending.carriedBytes.length > 0) pending = { entries: pending.entries.filter((entry) => entry.kind !== DeltaLogEntryKind.carried), carriedBytes: [] };
    await this.#appendToLog(log, pending, DeltaLogRecordFlag.dataSynced, options);
  }

  async #appendToLog(log: DeltaLog, pending: PendingLogEntries, flags: number, syncOptions: SyncOptions): Promise<void> {
    try {
      await log.append(pending, this.#host.time, { flags, syncOptions });
    } catch (error) {
      const why = error instanceof Error ? error.message : String(error);
      this.#host.fail(`appending to the delta log failed: ${why}`, error);
      // Not "the flush failed": a remap's write makes itself durable through the log too.
      throw new ThinError('THIN_IO', `Appending to the delta log failed (${why}); the pool now needs a check and acknowledges no flush until it is reopened`, { cause: error });
    }
  }

  /**
   * How a flush's syncs run: on the main thread when no request is in flight (but the caller's
   * own, which waits for them) and little data is dirty (INLINE_SYNC_DIRTY_BYTES_MAX), since then
   * nothing waits for the event loop and the worker thread's round trip is a large part of a
   * small sync (docs/benchmarks.md, "Figures behind code decisions"); otherwise on a worker thread.
   */
  #flushSyncOptions(callerRequests = 0): SyncOptions {
    return { inline: this.#host.requestsInFlight <= callerRequests && this.#dataPath.bytesSinceSync <= INLINE_SYNC_DIRTY_BYTES_MAX };
  }

  async #syncData(options: SyncOptions = {}): Promise<void> {
    this.#dataSyncs += 1;
    try {
      await this.#files.data.sync(options);
    } catch (error) {
      this.#host.fail(`syncing the data file failed: ${error instanceof Error ? error.message : String(error)}`, error);
      throw error;
    }
  }
}
