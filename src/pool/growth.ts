// Growth of the pool's files: the data file by data blocks, the metadata file by metadata blocks,
// automatically below their low-water marks (space.ts decides when) or when asked
// (`thinbd pool resize`). One growth of each file runs at a time; a caller that asks meanwhile
// waits for it and asks again if it still needs more.
//
// Crash safety (docs/format.md F-POOL-45): a superblock never records a size the file does not
// durably have. A growth (1) grows the file (ftruncate; sparse), (2) raises the pool's count in
// memory, and (3) commits. The commit syncs the file before it writes the superblock that records
// the new count: the data file by the data sync every commit makes before its metadata (F-TX-3),
// the metadata file by the sync that follows its metadata blocks (F-TX-1); both syncs start after
// step 1 completed, so they cover the new size (a size change is durable once synced, like a
// write: docs/fault-model.md). A crash before the superblock leaves the old count and a longer
// file, which is harmless: the blocks past the count are simply not used, and the next growth
// reuses them. Mirrored metadata whose second copy begins below the new count first moves that
// copy further on, in a commit of its own that is durable before the count is raised, so no
// block of the grown metadata is ever written over a copy a durable superblock still names
// (TransactionManager.moveMirror, F-MIR-6). New data blocks lie above the high-water mark, so no write reaches them before a
// commit that records the new count (F-POOL-40); none is logged in the delta log before it either
// (the growth forces a full commit), so replay never meets a block past the count it replays on.
import { METADATA_BLOCK_SIZE_BYTES } from '../constants.ts';
import { ThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import type { SpaceMonitor, SpaceResource } from './space-monitor.ts';

/** What growth needs from the engine (PoolCore). */
export interface GrowthHost {
  readonly dataFile: BlockFile;
  readonly metadataFile: BlockFile;
  readonly blockSizeBytes: number;
  readonly dataBlockCount: number;
  readonly metadataBlockCount: number;
  /** The pool may change now (read-write, not closing). */
  readonly mayChange: boolean;
  /** Raises the data block count in memory (the file already has the room). */
  applyDataGrowth(blockCount: number): void;
  /** Raises the metadata block count in memory (the file already has the room). */
  applyMetadataGrowth(blockCount: number): void;
  /**
   * Makes room in the metadata file for blockCount blocks before it grows: mirrored metadata
   * whose second copy begins below that moves it further on first (a commit of its own, F-MIR-6).
   */
  roomForMetadata(blockCount: number): Promise<void>;
  /** A full commit of the open transaction (the new count goes into its superblock). */
  commit(): Promise<void>;
  readonly monitor: SpaceMonitor;
}

export class FileGrowth {
  readonly #host: GrowthHost;
  readonly #running: Record<SpaceResource, Promise<void> | undefined> = { data: undefined, metadata: undefined };
  /**
   * The last automatic growth of each file failed (the host file system refused the room, the file
   * is a block device): automatic growth waits until the settings or the host's free space change
   * (space.ts calls retry()) instead of trying again at every write.
   */
  readonly #failed: Record<SpaceResource, boolean> = { data: false, metadata: false };

  constructor(host: GrowthHost) {
    this.#host = host;
  }

  /** The growth of that file running now, if any. */
  running(resource: SpaceResource): Promise<void> | undefined {
    return this.#running[resource];
  }

  /** Whether automatic growth of that file is held back after a failure. */
  failed(resource: SpaceResource): boolean {
    return this.#failed[resource];
  }

  /** Lets automatic growth try again (the settings changed, the host has more room). */
  retry(): void {
    this.#failed.data = false;
    this.#failed.metadata = false;
  }

  /**
   * Grows the file to `blockCount` blocks of its kind and commits. With `explicit` (pool resize) a
   * failure is thrown; an automatic growth that fails raises a `-grow-failed` event, holds further
   * automatic growth back, and resolves.
   */
  async grow(resource: SpaceResource, blockCount: number, options: { explicit?: boolean } = {}): Promise<void> {
    while (this.#running[resource] !== undefined) await this.#running[resource]?.catch(() => undefined);
    const current = resource === 'data' ? this.#host.dataBlockCount : this.#host.metadataBlockCount;
    if (blockCount <= current) return;
    const running = this.#grow(resource, current, blockCount, options.explicit === true);
    this.#running[resource] = running;
    try {
      await running;
    } finally {
      this.#running[resource] = undefined;
    }
  }

  async #grow(resource: SpaceResource, from: number, to: number, explicit: boolean): Promise<void> {
    const host = this.#host;
    if (!host.mayChange) {
      if (explicit) throw new ThinError('THIN_READ_ONLY', `Cannot grow the ${resource} space: the pool is not read-write`);
      return;
    }
    const unitBytes = resource === 'data' ? host.blockSizeBytes : METADATA_BLOCK_SIZE_BYTES;
    const file = resource === 'data' ? host.dataFile : host.metadataFile;
    try {
      if (resource === 'metadata') await host.roomForMetadata(to);
      await file.grow(to * unitBytes);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      if (explicit) throw error;
      this.#failed[resource] = true;
      host.monitor.emit(`${resource}-grow-failed`, resource, `the ${resource} file could not grow from ${from * unitBytes} to ${to * unitBytes} bytes: ${reason}`);
      return;
    }
    // The pool may have left read-write while the file grew: the longer file is then simply unused.
    if (!host.mayChange) {
      if (explicit) throw new ThinError('THIN_READ_ONLY', `Cannot grow the ${resource} space: the pool is not read-write`);
      return;
    }
    if (resource === 'data') host.applyDataGrowth(to);
    else host.applyMetadataGrowth(to);
    this.#failed[resource] = false;
    await host.commit();
    host.monitor.grew(resource, from, to);
  }
}
