// The pool's space policy at work: the settings (space-policy.ts), the monitor and its events
// (space-monitor.ts), automatic growth (growth.ts), writes waiting for space (when-full.ts) and
// freed blocks given back to the host (hole-punch.ts), called by the engine at the moments that
// change space: an allocation, a metadata change, a commit, the commit timer's tick.
//
// What a write that finds no data block does (dataSpaceWanted), in order: wait for a punch that
// holds free blocks; wait for a growth that is running; grow now if the file may grow; otherwise
// the pool is full: fail with ENOSPC (`--when-full error`, the default) or wait for space to be
// added or freed, up to the queue's seconds (`--when-full queue:SECONDS`).
//
// Metadata has three floors (docs/format.md F-POOL-47, F-POOL-48), from the top:
//   the metadata low-water mark   below it (when metadata cannot grow back above it) new volumes
//                                 and snapshots are refused: they can multiply metadata;
//   the recovery reserve          (METADATA_RECOVERY_RESERVE_BLOCKS) a write that needs metadata
//                                 fails with ENOSPC rather than take these blocks, which remove,
//                                 resize down and discard may use, so space can always be freed;
//   the commit reserve            (pdata's, F-TX-7) only sealing a transaction uses it.
// `thinbd check --repair` builds new metadata beside the old and may make it larger (repair.ts),
// so it never needs room in a full pool.
import { METADATA_BLOCK_COUNT_MAX, METADATA_BLOCK_SIZE_BYTES, METADATA_COMMIT_RESERVE_BLOCKS, METADATA_RECOVERY_RESERVE_BLOCKS } from '../constants.ts';
import { ThinError, assert } from '../errors.ts';
import type { SpaceMap, TransactionManager } from '../pdata/index.ts';
import type { DataAllocator } from './allocator.ts';
import type { PoolFiles } from './files.ts';
import { FileGrowth } from './growth.ts';
import type { HighWaterMark } from './high-water-mark.ts';
import { HolePuncher } from './hole-punch.ts';
import { SpaceMonitor, type SpaceEvent, type SpaceReport } from './space-monitor.ts';
import {
  changeSpaceSettings,
  dataGrowTarget,
  dataLowWaterBlocks,
  hostMarginBytes,
  metadataGrowTarget,
  metadataLowWaterBlocks,
  type DataSpaceInputs,
  type HostFigures,
  type MetadataSpaceInputs,
  type SpaceSettings,
  type SpaceSettingsChange,
} from './space-policy.ts';
import { WritesWaitingForSpace } from './when-full.ts';

/** What the space room needs from the engine (PoolCore). */
export interface SpaceHost {
  readonly files: PoolFiles;
  readonly tm: TransactionManager;
  readonly blockSizeBytes: number;
  readonly dataBlockCount: number;
  readonly dataSpace: SpaceMap;
  readonly allocator: DataAllocator;
  readonly highWaterMark: HighWaterMark;
  /** Free data blocks below the high-water mark that were punched (holes again). */
  readonly punchedFreeBlocks: number;
  /** The pool may change now: read-write and not closing. */
  readonly mayChange: boolean;
  /** Freed blocks may be punched now: read-write, closing included (PoolCore.mayPunch). */
  readonly mayPunch: boolean;
  /** A commit nobody waits for may start now (CommitScheduler.backgroundCommitMayStart). */
  readonly backgroundCommitMayStart: boolean;
  applyDataGrowth(blockCount: number): void;
  applyMetadataGrowth(blockCount: number): void;
  /** The most blocks the metadata may grow to (mirrored metadata: as far as its mirror may move). */
  readonly metadataBlockCountMax: number;
  /** Room in the metadata file for blockCount blocks: moves the mirror further on when it must (growth.ts). */
  roomForMetadata(blockCount: number): Promise<void>;
  /** The settings changed: the next commit stores them. */
  settingsChanged(): void;
  /** A full commit (growth and settings go into the superblock). */
  rollup(): Promise<void>;
  /** Blocks [begin, end) were punched and read as zeros (the data path may count on it). */
  punched(begin: number, end: number): void;
}

export interface SpaceStatus {
  data: SpaceReport;
  metadata: SpaceReport;
  /** The stored settings: an absent one is the default. */
  settings: SpaceSettings;
  /** The host file system's free space and the margin left to it, when the files are in one. */
  host?: { freeBytes: number; sizeBytes: number; marginBytes: number };
  /** Writes waiting for data space now (--when-full queue), and since open. */
  writesWaiting: number;
  writesWaited: number;
  /** Data space given back to the host since open, and in how many calls; false when the file cannot. */
  punchedBytes: number;
  punchCalls: number;
  punching: boolean;
}

export class PoolSpace {
  readonly monitor: SpaceMonitor;
  readonly growth: FileGrowth;
  readonly waiting = new WritesWaitingForSpace();
  readonly puncher: HolePuncher;
  readonly #host: SpaceHost;
  #settings: SpaceSettings;
  /** The host figures as last read (statfs is read at ticks, commits and growth decisions, not per write). */
  #hostFigures: HostFigures | undefined;

  constructor(host: SpaceHost, settings: SpaceSettings) {
    this.#host = host;
    this.#settings = settings;
    this.#hostFigures = host.files.host?.();
    const space = this;
    this.monitor = new SpaceMonitor({
      get settings() {
        return space.#settings;
      },
      dataInputs: () => this.#dataInputs(),
      // Blocks taken by writes in flight count as used: a run of new blocks is reserved whole
      // before its write, and the event that write raises must not report them as neither.
      get dataUsedBlocks() {
        return host.dataSpace.usedBlockCount + host.allocator.reservedCount;
      },
      metadataInputs: () => this.#metadataInputs(),
      get metadataUsedBlocks() {
        return host.tm.metadataBlocksUsed;
      },
    });
    this.growth = new FileGrowth({
      dataFile: host.files.data,
      metadataFile: host.files.metadata,
      blockSizeBytes: host.blockSizeBytes,
      get dataBlockCount() {
        return host.dataBlockCount;
      },
      get metadataBlockCount() {
        return host.tm.metadataBlockCount;
      },
      get mayChange() {
        return host.mayChange;
      },
      applyDataGrowth: (blockCount) => {
        host.applyDataGrowth(blockCount);
        this.waiting.wake();
      },
      applyMetadataGrowth: (blockCount) => host.applyMetadataGrowth(blockCount),
      roomForMetadata: (blockCount) => host.roomForMetadata(blockCount),
      commit: () => host.rollup(),
      monitor: this.monitor,
    });
    this.puncher = new HolePuncher({
      file: host.files.data,
      blockSizeBytes: host.blockSizeBytes,
      dataSpace: host.dataSpace,
      isReserved: (block) => host.allocator.isReserved(block),
      enabled: () => this.#settings.punchHoles !== false && host.mayPunch,
      punched: (begin, end) => host.punched(begin, end),
    });
    host.allocator.setHeld((block) => this.puncher.holds(block));
    host.dataSpace.trackReusable();
  }

  get settings(): SpaceSettings {
    return this.#settings;
  }

  /** Listens to space events (low water, full, restored, grown); returns the function that stops. */
  listen(listener: (event: SpaceEvent) => void): () => void {
    return this.monitor.listen(listener);
  }

  /** The pool opened: take the states the figures say (an event if it opens below a mark). */
  opened(): void {
    this.monitor.evaluate('data');
    this.monitor.evaluate('metadata');
  }

  // ---- the moments that change space ----

  /** A data block was taken for a write: the per-write check (cheap unless near the mark). */
  dataAllocated(): void {
    const host = this.#host;
    const freeBlocks = host.allocator.freeBlockCount();
    const lowWater = dataLowWaterBlocks(this.#settings, host.dataBlockCount, host.blockSizeBytes);
    if (freeBlocks >= lowWater && this.monitor.state('data') === 'ok') return;
    this.monitor.evaluate('data');
    this.#growDataIfLow(false);
  }

  /** Metadata changed: grow it below its mark (the check is two numbers unless it is low). */
  metadataChanged(): void {
    const tm = this.#host.tm;
    const free = tm.metadataBlocksFree - METADATA_COMMIT_RESERVE_BLOCKS;
    if (free >= metadataLowWaterBlocks(this.#settings, tm.metadataBlockCount) && this.monitor.state('metadata') === 'ok') return;
    this.monitor.evaluate('metadata');
    this.#growMetadataIfLow(false);
  }

  /** A full commit finished: its frees are reusable now. Punch them, wake waiting writes, re-evaluate. */
  committed(): void {
    this.#hostFigures = this.#host.files.host?.();
    this.puncher.collect();
    this.monitor.evaluate('data');
    this.monitor.evaluate('metadata');
    this.waiting.wake();
  }

  /**
   * The commit timer's tick: the host's free space is read again (it changes under the pool), and
   * when writes wait for space while blocks freed by logged changes wait for a rollup, the rollup
   * runs now (a write waiting counts as a request in flight, so the pool is never idle for the
   * timer's own idle rollup).
   */
  tick(): void {
    const before = this.#hostFigures?.freeBytes;
    this.#hostFigures = this.#host.files.host?.();
    if (this.#hostFigures !== undefined && before !== undefined && this.#hostFigures.freeBytes > before) this.growth.retry();
    this.monitor.evaluate('data');
    this.monitor.evaluate('metadata');
    this.#growDataIfLow(false);
    this.#growMetadataIfLow(false);
    if (this.waiting.count > 0 && this.#host.backgroundCommitMayStart && this.#host.dataSpace.pendingFreeBlockCount > 0) {
      this.#host.rollup().catch(() => undefined);
    }
  }

  /**
   * A write found no data block it may take (allocator THIN_NO_SPACE). Resolves when it should try
   * again; throws when it should give up: `error` (ENOSPC) in error mode, or once the queue's
   * seconds are over. `wait` carries the request's deadline across its tries.
   */
  async dataSpaceWanted(error: ThinError, wait: { deadlineMs?: number }): Promise<void> {
    const punching = this.puncher.idleCall();
    if (punching !== undefined) return punching;
    const growing = this.growth.running('data');
    if (growing !== undefined) return growing.catch(() => undefined);
    if (this.#growDataIfLow(true)) return this.growth.running('data')?.catch(() => undefined);
    this.monitor.markFull('data');
    const whenFull = this.#settings.whenFull ?? 'error';
    if (whenFull === 'error') throw error;
    wait.deadlineMs ??= Date.now() + whenFull.queueSeconds * 1000;
    if (!(await this.waiting.wait(wait.deadlineMs))) {
      const why = this.waiting.stopped
        ? 'The pool is closing, so the write does not wait (--when-full queue) for space.'
        : `The write waited ${whenFull.queueSeconds} s (--when-full queue) for space to be added or freed.`;
      throw new ThinError('THIN_NO_SPACE', `${error.message} ${why}`, { cause: error });
    }
  }

  /**
   * Before a write that will need a mapping: room for it above the recovery reserve, growing the
   * metadata when it may; THIN_NO_METADATA_SPACE (ENOSPC) when it cannot, the pool staying
   * read-write so that removes and discards can free space.
   */
  metadataForWrite(blocksNeeded: number): Promise<void> | undefined {
    // The common case answers without a promise: this runs before every block a write provisions.
    const tm = this.#host.tm;
    if (tm.metadataBlocksFree - METADATA_COMMIT_RESERVE_BLOCKS - METADATA_RECOVERY_RESERVE_BLOCKS >= blocksNeeded) return undefined;
    return this.#metadataForWriteSlow(blocksNeeded);
  }

  async #metadataForWriteSlow(blocksNeeded: number): Promise<void> {
    for (;;) {
      const tm = this.#host.tm;
      const spare = tm.metadataBlocksFree - METADATA_COMMIT_RESERVE_BLOCKS - METADATA_RECOVERY_RESERVE_BLOCKS;
      if (spare >= blocksNeeded) return;
      const growing = this.growth.running('metadata');
      if (growing !== undefined) {
        await growing.catch(() => undefined);
        continue;
      }
      if (!this.#growMetadataIfLow(true)) throw this.metadataFullError('a write', blocksNeeded, spare);
    }
  }

  /** The refusal of a change that would take the recovery reserve (F-POOL-47); marks metadata full. */
  metadataFullError(what: string, blocksNeeded: number, spare: number): ThinError {
    this.monitor.markFull('metadata');
    return new ThinError(
      'THIN_NO_METADATA_SPACE',
      `Metadata is full: ${what} refused (${blocksNeeded} blocks needed, ${Math.max(0, spare)} free beyond the last ` +
        `${METADATA_RECOVERY_RESERVE_BLOCKS} kept for remove, discard and resize down); free space or let metadata grow (pool set --metadata-max, pool resize --metadata-size)`,
    );
  }

  /**
   * Before a new volume or snapshot (F-POOL-48): refused while metadata is below its low-water mark
   * and cannot grow above it; grows it first when it can.
   */
  metadataForNewVolume(what: string): Promise<void> | undefined {
    const figures = this.monitor.metadataFigures();
    if (figures.availableBlocks < figures.lowWaterBlocks) {
      this.monitor.evaluate('metadata');
      throw new ThinError(
        'THIN_NO_METADATA_SPACE',
        `Cannot ${what}: metadata is below its low-water mark (${figures.availableBlocks * METADATA_BLOCK_SIZE_BYTES} bytes can still be given, ` +
          `the mark is ${figures.lowWaterBlocks * METADATA_BLOCK_SIZE_BYTES}); new volumes and snapshots are refused until space is freed ` +
          '(remove a volume) or metadata may grow (pool set --metadata-max, pool resize --metadata-size); writes go on',
      );
    }
    // Undefined (no await) unless a growth runs: a snapshot issued before a write takes effect before it.
    if (this.#growMetadataIfLow(false)) return this.growth.running('metadata')?.catch(() => undefined);
    return undefined;
  }

  // ---- management ----

  /** Changes the settings (validated whole first); the next commit stores them. */
  changeSettings(change: SpaceSettingsChange): SpaceSettings {
    this.#settings = changeSpaceSettings(this.#settings, change);
    this.#host.settingsChanged();
    this.growth.retry();
    this.monitor.evaluate('data');
    this.monitor.evaluate('metadata');
    this.waiting.wake();
    if (this.#settings.punchHoles !== false) this.puncher.collect();
    return this.#settings;
  }

  /** Grows the data and/or metadata space to the given sizes now (pool resize); never shrinks. */
  async resize(sizes: { dataSizeBytes?: number; metadataSizeBytes?: number }): Promise<void> {
    const host = this.#host;
    for (const [name, bytes] of [['data size', sizes.dataSizeBytes], ['metadata size', sizes.metadataSizeBytes]] as const) {
      if (bytes !== undefined && !(Number.isSafeInteger(bytes) && bytes > 0)) throw new ThinError('THIN_INVALID', `The ${name} ${JSON.stringify(bytes)} is not a byte count above 0`);
    }
    if (sizes.dataSizeBytes !== undefined) {
      const blocks = Math.floor(sizes.dataSizeBytes / host.blockSizeBytes);
      if (blocks < host.dataBlockCount) {
        throw new ThinError(
          'THIN_INVALID',
          `Cannot shrink the data space from ${host.dataBlockCount * host.blockSizeBytes} to ${sizes.dataSizeBytes} bytes: a pool only grows`,
        );
      }
      this.growth.retry();
      await this.growth.grow('data', blocks, { explicit: true });
    }
    if (sizes.metadataSizeBytes !== undefined) {
      const blocks = Math.floor(sizes.metadataSizeBytes / METADATA_BLOCK_SIZE_BYTES);
      if (blocks < host.tm.metadataBlockCount) {
        throw new ThinError(
          'THIN_INVALID',
          `Cannot shrink the metadata from ${host.tm.metadataBlockCount * METADATA_BLOCK_SIZE_BYTES} to ${sizes.metadataSizeBytes} bytes: a pool only grows`,
        );
      }
      if (blocks > METADATA_BLOCK_COUNT_MAX) {
        throw new ThinError('THIN_INVALID', `Cannot grow the metadata to ${sizes.metadataSizeBytes} bytes: the largest metadata is ${METADATA_BLOCK_COUNT_MAX * METADATA_BLOCK_SIZE_BYTES} bytes`);
      }
      await this.growth.grow('metadata', blocks, { explicit: true });
    }
    this.waiting.wake();
  }

  status(): SpaceStatus {
    const host = this.#hostFigures;
    const status: SpaceStatus = {
      data: this.monitor.report('data'),
      metadata: this.monitor.report('metadata'),
      settings: { ...this.#settings },
      writesWaiting: this.waiting.count,
      writesWaited: this.waiting.waitedCount,
      punchedBytes: this.puncher.punchedBytes,
      punchCalls: this.puncher.calls,
      punching: this.#settings.punchHoles !== false && !this.puncher.unsupported,
    };
    if (host !== undefined) status.host = { freeBytes: host.freeBytes, sizeBytes: host.sizeBytes, marginBytes: hostMarginBytes(host.sizeBytes) };
    return status;
  }

  /** The pool is closing, its last commit made: no write waits; the punches queued finish, no other starts. */
  async close(): Promise<void> {
    this.waiting.close();
    await this.puncher.close();
  }

  /** Resolves when no punch and no growth runs (tests, and what waits for `du` to fall). */
  async settled(): Promise<void> {
    for (;;) {
      const growing = this.growth.running('data') ?? this.growth.running('metadata');
      if (growing !== undefined) {
        await growing.catch(() => undefined);
        continue;
      }
      await this.puncher.idle();
      if (this.growth.running('data') === undefined && this.growth.running('metadata') === undefined && this.puncher.queuedBlocks === 0) return;
    }
  }

  assertInvariants(): void {
    this.monitor.assertInvariants();
    this.waiting.assertInvariants();
    this.puncher.assertInvariants();
    const host = this.#host;
    assert(host.allocator.dataBlockCount === host.dataBlockCount && host.dataSpace.blockCount === host.dataBlockCount, 'the data block count differs between the allocator, the space map and the engine');
    assert(host.highWaterMark.blockCount === host.dataBlockCount, 'the high-water mark spans another data block count');
  }

  // ---- internals ----

  #dataInputs(): DataSpaceInputs {
    const host = this.#host;
    return {
      blockSizeBytes: host.blockSizeBytes,
      blockCount: host.dataBlockCount,
      freeBlocks: host.allocator.freeBlockCount(),
      highWaterMark: host.highWaterMark.target,
      punchedFreeBlocks: host.punchedFreeBlocks,
      canGrow: host.files.data.fixedSize !== true,
      host: this.#hostFigures,
    };
  }

  #metadataInputs(): MetadataSpaceInputs {
    const tm = this.#host.tm;
    return {
      blockCount: tm.metadataBlockCount,
      freeBlocks: Math.max(0, tm.metadataBlocksFree - METADATA_COMMIT_RESERVE_BLOCKS),
      canGrow: this.#host.files.metadata.fixedSize !== true,
      blockCountMax: this.#host.metadataBlockCountMax,
      host: this.#hostFigures,
    };
  }

  /** Starts a data growth when the policy says so (urgent: a write found nothing). True when one runs. */
  #growDataIfLow(urgent: boolean): boolean {
    if (this.growth.running('data') !== undefined) return true;
    if (this.growth.failed('data') || !this.#host.mayChange) return false;
    if (urgent) this.#hostFigures = this.#host.files.host?.();
    const inputs = this.#dataInputs();
    const target = dataGrowTarget(this.#settings, inputs, this.monitor.dataFigures(), urgent);
    if (target === undefined) return false;
    this.growth.grow('data', target).catch(() => undefined);
    return true;
  }

  #growMetadataIfLow(urgent: boolean): boolean {
    if (this.growth.running('metadata') !== undefined) return true;
    if (this.growth.failed('metadata') || !this.#host.mayChange) return false;
    if (urgent) this.#hostFigures = this.#host.files.host?.();
    const target = metadataGrowTarget(this.#settings, this.#metadataInputs(), this.monitor.metadataFigures(), urgent);
    if (target === undefined) return false;
    this.growth.grow('metadata', target).catch(() => undefined);
    return true;
  }
}
