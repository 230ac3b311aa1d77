// The data path: reads and writes of a volume's bytes, block by block, against its mappings.
//
// Ordering (docs/internals.md decisions 3-5; F-POOL-40, F-POOL-43):
// - A data block for a write is reserved in memory (allocator), the data written, and only then
//   is the mapping inserted and the block's reference count raised. A sealed transaction thus
//   references only completed data writes; the commit syncs the data file before its metadata.
// - A data block at or above the durable high-water mark has never been written (F-POOL-40).
//   Before the first write to such a block the mark is raised and committed, so after a crash no
//   block above the mark holds anything; below it, a reused block is written whole (zeros around
//   the data) unless this process knows it still reads zeros.
// - A data read or write the medium refuses with EIO is retried and narrowed to its sectors
//   (bad-blocks.ts): a write is moved to another block, durably before it is acknowledged
//   (remap.ts), a read fails with EIO for that range only and its sectors are recorded
//   (bad-ranges.ts). Any other failed write, and every failed sync, puts the pool in needs-check,
//   and from then on no flush is acknowledged until the pool is reopened (docs/internals.md
//   decisions 11 and 12); except ENOSPC from the host file system (THIN_NO_SPACE): the write
//   fails, nothing else (docs/fault-model.md section 3). Once the data file has refused a write,
//   remaps take their block from a spare area of free blocks written ahead (spare-area.ts).
// - A write that finds no free data block, or no metadata room for its mapping, asks the space
//   policy (space.ts) what to do: wait for a punch or a growth, grow, wait in the queue, or fail
//   with ENOSPC. It asks before it writes any data, so a refused write changes nothing.
//
// Every method that takes a device expects the caller to hold the lock of the blocks it touches.
import { performance } from 'node:perf_hooks';
import { COPY_BUFFERS_RETAINED_BYTES_MAX, DATA_HIGH_WATER_MARK_STEP_BLOCKS, REMAP_TARGETS_MAX } from '../constants.ts';
import { assert, isThinError, type ThinError } from '../errors.ts';
import { isMediaError } from '../io/media-error.ts';
import type { SpaceMap } from '../pdata/index.ts';
import type { AllocateOptions, DataAllocator } from './allocator.ts';
import { MediaErrors, SectorsRefused, unreadableError, type SectorRange } from './bad-blocks.ts';
import { BadRangeFlag, type BadRanges } from './bad-ranges.ts';
import { Remapper, type MoveReason } from './remap.ts';
import { SpareArea } from './spare-area.ts';
import type { Device } from './devices.ts';
import type { PoolFiles } from './files.ts';
import type { HighWaterMark } from './high-water-mark.ts';
import type { MappingChanges } from './mapping-changes.ts';
import { RangeSet, blockPieces, touchedBlocks } from './ranges.ts';

/** What the data path needs from the engine (PoolCore). */
export interface DataPathHost {
  assertWritable(): void;
  assertDeviceWritable(device: Device): void;
  /** A write or sync of the data file failed: needs-check, and no flush is acknowledged until reopen. */
  failIo(reason: string, error: unknown): void;
  /** The pool may change: read-write and not closing. */
  readonly mayChange: boolean;
  /** The open transaction changed (a raised high-water mark target must be committed). */
  metadataChanged(): void;
  commit(): Promise<void>;
  /** A commit a request waits for from inside (a remap's record): CommitScheduler.commit(1). */
  commitFromRequest(): Promise<void>;
  /** A remap's record is durable (or failed): a full log is rolled up in the background (CommitScheduler.rollupIfLogFull). */
  remapLogged(): void;
  rollup(): Promise<void>;
  /** The commit running now, if any. */
  readonly commitRunning: Promise<void> | undefined;
  /** A commit nobody waits for may start now (CommitScheduler.backgroundCommitMayStart). */
  readonly backgroundCommitMayStart: boolean;
  /** Flushes append to the delta log (blocks freed by logged changes stay pending until a rollup). */
  readonly logAttached: boolean;
  /** Records bad data sectors when the pool may change; a pool that may not only counts them. */
  recordBad(ranges: readonly SectorRange[], flags: number): void;
  /** The bytes a remap wrote into its new block: the log record may carry them instead of a data sync (F-LOG-9). */
  noteCarried(dataBlock: number, oldDataBlock: number, offsetInBlockBytes: number, bytes: Uint8Array): void;
  /** A data block was taken (the space policy's per-write check). */
  dataAllocated(): void;
  /** No data block could be taken: resolves to try again, throws to give up (space.ts). */
  dataSpaceWanted(error: ThinError, wait: { deadlineMs?: number }): Promise<void>;
  /** Room in the metadata for a write's mapping change (undefined: there is room now; a promise: growing), or THIN_NO_METADATA_SPACE (space.ts). */
  metadataForWrite(): Promise<void> | undefined;
}

export interface DataPathParts {
  files: PoolFiles;
  blockSizeBytes: number;
  highWaterMark: HighWaterMark;
  allocator: DataAllocator;
  mappings: MappingChanges;
  dataSpace: SpaceMap;
  badRanges: BadRanges;
  /** The data file reads as zeros wherever it was never written (no POOL_FLAG_DATA_NOT_ZEROED). */
  dataReadsZeros: boolean;
  /** Most blocks the spare area keeps (default 0: off; spare-area.ts). */
  spareBlocksMax?: number | undefined;
}

export class DataPath {
  readonly blockSizeBytes: number;
  /** Long-lived zero buffer of one block, shared by every zeroing write. */
  readonly zeroBlock: Uint8Array;
  readonly #files: PoolFiles;
  readonly #highWaterMark: HighWaterMark;
  readonly #allocator: DataAllocator;
  readonly #mappings: MappingChanges;
  readonly #dataSpace: SpaceMap;
  readonly #badRanges: BadRanges;
  readonly #host: DataPathHost;
  /** Retries and narrowing of reads and writes the medium refuses. */
  readonly media: MediaErrors;
  /** Copy-on-write and remaps off failing sectors. */
  readonly remapper: Remapper;
  /** Free blocks kept written for remaps, once the data file has failed. */
  readonly spares: SpareArea;
  /** Data blocks this process knows read as zeros: never written since the data file was made or grew, or punched. */
  readonly #knownZero = new RangeSet();
  /** Free blocks punched back to the host (hole-punch.ts) and not taken since: holes the host must back again. */
  readonly #punched = new RangeSet();
  readonly #dataReadsZeros: boolean;
  /**
   * Free block-sized scratch buffers for copy-on-write and partly written new blocks: one
   * allocated per such write made the garbage collector a large share of the server's CPU on the
   * copy-on-write row (docs/benchmarks.md, "Figures behind code decisions"). Bounded by
   * COPY_BUFFERS_RETAINED_BYTES_MAX.
   */
  readonly #blockBuffers: Uint8Array[] = [];
  #bytesWritten = 0;
  #copyOnWrites = 0;
  /** Bytes of data writes completed since the last data sync was started. */
  #bytesSinceSync = 0;

  constructor(parts: DataPathParts, host: DataPathHost) {
    this.#files = parts.files;
    this.blockSizeBytes = parts.blockSizeBytes;
    this.#highWaterMark = parts.highWaterMark;
    this.#allocator = parts.allocator;
    this.#mappings = parts.mappings;
    this.#dataSpace = parts.dataSpace;
    this.#badRanges = parts.badRanges;
    this.#host = host;
    this.#dataReadsZeros = parts.dataReadsZeros;
    if (parts.dataReadsZeros) this.#knownZero.add(parts.highWaterMark.durable, parts.highWaterMark.blockCount);
    this.zeroBlock = new Uint8Array(parts.blockSizeBytes);
    this.media = new MediaErrors(parts.files.data);
    const bs = parts.blockSizeBytes;
    this.remapper = new Remapper({
      blockSizeBytes: bs,
      media: this.media,
      badRanges: parts.badRanges,
      mappings: parts.mappings,
      reserveTarget: (device, reason, awayFrom) => this.#reserveMoveTarget(device, reason, awayFrom),
      releaseTarget: (block) => this.#allocator.release(block),
      // A remap's new block is not counted for a flush's data sync: the record that logs the remap
      // carries the bytes written (F-LOG-9), or is written after a data sync (F-LOG-7).
      writeBlock: (block, content, reason) => this.#writeData(content, block * bs, reason !== 'remap'),
      takeBlockBuffer: () => this.#takeBlockBuffer(),
      giveBlockBuffer: (buffer) => this.#giveBlockBuffer(buffer),
      assertDeviceWritable: (device) => host.assertDeviceWritable(device),
      recordBad: (ranges, flags) => host.recordBad(ranges, flags),
      noteCarried: (dataBlock, oldDataBlock, offsetInBlockBytes, bytes) => host.noteCarried(dataBlock, oldDataBlock, offsetInBlockBytes, bytes),
      persist: () => host.commitFromRequest(),
      remapped: () => {
        this.spares.refill();
        host.remapLogged();
      },
    });
    this.spares = new SpareArea(
      {
        blockSizeBytes: bs,
        get dataBlockCount() {
          return parts.allocator.dataBlockCount;
        },
        allocator: parts.allocator,
        get mayChange() {
          return host.mayChange;
        },
        coverByHighWaterMark: async (block) => {
          if (block >= this.#highWaterMark.durable) await this.#coverByHighWaterMark(block);
        },
        writeZeros: (block) => {
          // Written, the block is backed by the host again (and still reads zeros).
          this.#punched.remove(block, block + 1);
          return this.#writeData(this.zeroBlock, block * bs, false);
        },
        sync: () => this.#syncForSpares(),
        isFree: (block) => this.#dataSpace.count(block) === 0 && !this.#dataSpace.isPendingFree(block),
        recordBad: (ranges, flags) => host.recordBad(ranges, flags),
      },
      parts.spareBlocksMax,
    );
  }

  /** Data bytes written since open. */
  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  /** Writes to a shared block (a snapshot's) that gave the volume its own copy, since open. */
  get copyOnWrites(): number {
    return this.#copyOnWrites;
  }

  /** Data bytes whose writes completed since the last data sync began: a flush must sync when above 0. */
  get bytesSinceSync(): number {
    return this.#bytesSinceSync;
  }

  /** Free blocks punched and not taken since (for the space figures). */
  get punchedFreeBlocks(): number {
    return this.#punched.blockCount;
  }

  /** The data file grew from `from` to `to` blocks: the new blocks read as zeros (a sparse extension). */
  grew(from: number, to: number): void {
    if (this.#dataReadsZeros) this.#knownZero.add(from, to);
  }

  /**
   * Blocks [begin, end) were punched (hole-punch.ts): they read as zeros, and that is durable by
   * the time a mapping to them is (the punch completed before they could be taken again, and the
   * data sync before that mapping's commit covers it).
   */
  punched(begin: number, end: number): void {
    this.#punched.add(begin, end);
    if (this.#dataReadsZeros) this.#knownZero.add(begin, end);
  }

  /** A data sync begins: it covers every write completed so far. */
  syncStarted(): void {
    this.#bytesSinceSync = 0;
  }

  /**
   * Writes to the data file. A write the medium refuses (EIO) is narrowed to its sectors
   * (bad-blocks.ts): when some refuse it even piece by piece, SectorsRefused names them and the
   * caller works around them (remap.ts); the pool goes on. Any other failure puts the pool in
   * needs-check.
   */
  dataWrite(source: Uint8Array, offsetBytes: number): Promise<void> {
    return this.#writeData(source, offsetBytes, true);
  }

  /**
   * dataWrite; `flushCovers` false for the spare area's zeros, which its own sync covers (a flush
   * need not sync for them).
   */
  async #writeData(source: Uint8Array, offsetBytes: number, flushCovers: boolean): Promise<void> {
    this.#bytesWritten += source.length;
    const startedMs = performance.now();
    try {
      try {
        await this.#files.data.write(source, offsetBytes);
      } catch (error) {
        if (!isMediaError(error)) throw error;
        const refused = await this.media.narrowWrite(source, offsetBytes);
        if (refused.length > 0) {
          // The data file fails: remaps will follow, keep blocks written ahead for them.
          this.spares.arm();
          throw new SectorsRefused(this.#files.data.description, offsetBytes, source.length, refused, startedMs);
        }
      }
    } catch (error) {
      if (error instanceof SectorsRefused) throw error;
      // The request fails, and so does every later flush: the next sync might succeed without
      // the pages this write or an earlier one left dirty. Not so for a full host file system
      // (THIN_NO_SPACE): it dirtied nothing it did not report written.
      if (!isThinError(error, 'THIN_CLOSED') && !isThinError(error, 'THIN_NO_SPACE')) {
        this.#host.failIo(`a data write of ${source.length} bytes at byte ${offsetBytes} failed: ${error instanceof Error ? error.message : String(error)}`, error);
      }
      throw error;
    }
    // Counted on completion: a write still in flight when a commit resets the count is not
    // covered by that commit's sync, and the next flush must sync for it.
    if (flushCovers) this.#bytesSinceSync += source.length;
  }

  /**
   * Starts writing the data written so far to the disk, not waiting for it (Pool.writeBackData).
   * Resolves once it ended, never rejects: a failure is any data sync's (no flush until reopen).
   */
  async writeBack(): Promise<void> {
    try {
      await this.#files.data.sync();
    } catch (error) {
      if (!isThinError(error, 'THIN_CLOSED')) this.#host.failIo(`writing the data file back failed: ${error instanceof Error ? error.message : String(error)}`, error);
    }
  }

  /** The spare area's sync: a failure is any data sync's (needs-check, no flush until reopen). */
  async #syncForSpares(): Promise<void> {
    try {
      await this.#files.data.sync();
    } catch (error) {
      this.#host.failIo(`syncing the data file (spare blocks for remaps) failed: ${error instanceof Error ? error.message : String(error)}`, error);
      throw error;
    }
  }

  /**
   * Reads from the data file; a read the medium refuses is tried again, then narrowed: its
   * unreadable sectors are recorded and the request fails with EIO for them (bad-blocks.ts).
   */
  async #dataRead(target: Uint8Array, offsetBytes: number, dataBlock: number, what: () => string): Promise<void> {
    try {
      await this.#files.data.read(target, offsetBytes);
      return;
    } catch (error) {
      if (!isMediaError(error)) throw error;
    }
    const unreadable = await this.media.read(target, offsetBytes, 1);
    if (unreadable.length === 0) return;
    this.#host.recordBad(unreadable, BadRangeFlag.readError);
    throw unreadableError(what(), dataBlock, unreadable);
  }

  /**
   * Reads virtual bytes [offsetBytes, +target.length) of a device. Resolves true when some of the
   * range is unmapped (read as zeros).
   */
  async readRange(device: Device, offsetBytes: number, target: Uint8Array): Promise<boolean> {
    const bs = this.blockSizeBytes;
    const { begin, end } = touchedBlocks(offsetBytes, target.length, bs);
    if (end - begin === 1) {
      // Most requests (4 KiB from a guest) sit inside one block: one lookup, no run list.
      const mapping = this.#mappings.lookup(device, begin);
      if (mapping === undefined) {
        target.fill(0);
        return true;
      }
      await this.#dataRead(target, mapping.dataBlock * bs + (offsetBytes - begin * bs), mapping.dataBlock, () => describeRange(device, offsetBytes, target.length));
      return false;
    }
    const endBytes = offsetBytes + target.length;
    const reads: Promise<void>[] = [];
    let unmapped = false;
    for (const run of this.#mappings.blockRuns(device, begin, end)) {
      const runBeginBytes = Math.max(run.begin * bs, offsetBytes);
      const runEndBytes = Math.min(run.end * bs, endBytes);
      const piece = target.subarray(runBeginBytes - offsetBytes, runEndBytes - offsetBytes);
      if (run.dataBlock === undefined) {
        piece.fill(0);
        unmapped = true;
      } else {
        const firstBlock = run.dataBlock + Math.floor((runBeginBytes - run.begin * bs) / bs);
        reads.push(this.#dataRead(piece, run.dataBlock * bs + (runBeginBytes - run.begin * bs), firstBlock, () => describeRange(device, offsetBytes, target.length)));
      }
    }
    await settleAll(reads);
    return unmapped;
  }

  /**
   * Writes bytes [offsetBytes, +lengthBytes). A write that lies inside one mapped extent the
   * device owns goes in place in one system call (a 1 MiB write to a sequentially written volume
   * was sixteen 64 KiB pwrites, lookups and promises); so does, run by run, a write of whole
   * blocks none of which is mapped (a volume filled in order: an image import, a restore); any
   * other is written block by block.
   */
  async writeRange(device: Device, offsetBytes: number, source: Uint8Array | undefined, lengthBytes: number): Promise<void> {
    if (source !== undefined) {
      const inPlaceBytes = this.#inPlaceOffset(device, offsetBytes, lengthBytes);
      if (inPlaceBytes !== undefined) {
        this.#host.assertDeviceWritable(device);
        try {
          await this.dataWrite(source.subarray(0, lengthBytes), inPlaceBytes);
          return;
        } catch (error) {
          // Some sectors refuse it: block by block, each failing block is moved (writeInBlock).
          if (!(error instanceof SectorsRefused)) throw error;
        }
      }
      if (this.#isUnmappedWholeBlocks(device, offsetBytes, lengthBytes)) {
        await this.#provisionRuns(device, offsetBytes / this.blockSizeBytes, source.subarray(0, lengthBytes));
        return;
      }
    }
    const pieces = blockPieces(offsetBytes, lengthBytes, this.blockSizeBytes);
    await settleAll(
      pieces.map((piece) =>
        this.writeInBlock(
          device,
          piece.virtualBlock,
          piece.offsetInBlockBytes,
          source?.subarray(piece.requestOffsetBytes, piece.requestOffsetBytes + piece.lengthBytes),
          piece.lengthBytes,
        ),
      ),
    );
  }

  /** Writes `source` (or zeros, when source is undefined) at offsetInBlockBytes of virtualBlock. */
  async writeInBlock(device: Device, virtualBlock: number, offsetInBlockBytes: number, source: Uint8Array | undefined, lengthBytes: number): Promise<void> {
    this.#host.assertDeviceWritable(device);
    const mapping = this.#mappings.lookup(device, virtualBlock);
    if (mapping === undefined) {
      await this.#provision(device, virtualBlock, offsetInBlockBytes, source, lengthBytes);
      return;
    }
    if (this.#mappings.mustCopy(device, mapping)) {
      await this.remapper.move(device, virtualBlock, mapping.dataBlock, offsetInBlockBytes, source, lengthBytes, 'copy-on-write');
      return;
    }
    // A block with recorded bad sectors moves on the first write that covers them (remap.ts).
    if (this.#badRanges.hasDataBlock(mapping.dataBlock) && this.remapper.coversBadSectors(mapping.dataBlock, offsetInBlockBytes, lengthBytes)) {
      await this.remapper.move(device, virtualBlock, mapping.dataBlock, offsetInBlockBytes, source, lengthBytes, 'remap');
      return;
    }
    const bytes = source ?? this.zeroBlock.subarray(0, lengthBytes);
    try {
      await this.dataWrite(bytes, mapping.dataBlock * this.blockSizeBytes + offsetInBlockBytes);
    } catch (error) {
      if (!(error instanceof SectorsRefused)) throw error;
      await this.remapper.move(device, virtualBlock, mapping.dataBlock, offsetInBlockBytes, source, lengthBytes, 'remap', error);
    }
  }

  /**
   * Zeros bytes [offsetBytes, +lengthBytes): blocks covered whole are unmapped (or, with keepAllocated,
   * provisioned and zeroed); partial pieces of mapped blocks are zeroed in place or by copy-on-write.
   * A block that ends at the volume's end counts as covered whole.
   */
  async zeroRange(device: Device, offsetBytes: number, lengthBytes: number, keepAllocated: boolean): Promise<void> {
    const bs = this.blockSizeBytes;
    const work: Promise<void>[] = [];
    const unmapBlocks: number[] = [];
    for (const piece of blockPieces(offsetBytes, lengthBytes, bs)) {
      const blockEndBytes = Math.min((piece.virtualBlock + 1) * bs, device.value.sizeBytes);
      const whole = piece.offsetInBlockBytes === 0 && piece.virtualBlock * bs + piece.lengthBytes >= blockEndBytes;
      if (whole && !keepAllocated) {
        unmapBlocks.push(piece.virtualBlock);
      } else if (keepAllocated || this.#mappings.lookup(device, piece.virtualBlock) !== undefined) {
        const lengthInBlock = whole ? bs : piece.lengthBytes;
        work.push(this.writeInBlock(device, piece.virtualBlock, piece.offsetInBlockBytes, undefined, lengthInBlock));
      }
    }
    if (unmapBlocks.length > 0) {
      this.#host.assertDeviceWritable(device);
      // The blocks to unmap are consecutive: pieces come in order and only the ends can be partial.
      this.#mappings.unmapRange(device, unmapBlocks[0]!, unmapBlocks[unmapBlocks.length - 1]! + 1);
    }
    await settleAll(work);
  }

  /** The range is two or more whole blocks, none of them mapped. */
  #isUnmappedWholeBlocks(device: Device, offsetBytes: number, lengthBytes: number): boolean {
    const bs = this.blockSizeBytes;
    if (offsetBytes % bs !== 0 || lengthBytes % bs !== 0 || lengthBytes < 2 * bs) return false;
    const begin = offsetBytes / bs;
    const runs = this.#mappings.blockRuns(device, begin, begin + lengthBytes / bs);
    return runs.length === 1 && runs[0]!.dataBlock === undefined;
  }

  /**
   * Writes whole blocks from `virtualBlock` on, none of them mapped, into runs of consecutive new
   * data blocks: per run one allocation, one data write and one mapping, in #provision's order
   * (the high-water mark covers the run before it is written, the mapping follows the write) and
   * under the same space rules: metadata room before each run, a full pool's growth, queue or
   * ENOSPC (#allocateRun), punched and held blocks skipped (the allocator), bad blocks never
   * taken (they are counted used). Sixteen provisions per 1 MiB made an eighth of the garbage of
   * an image import.
   */
  async #provisionRuns(device: Device, virtualBlock: number, source: Uint8Array): Promise<void> {
    const bs = this.blockSizeBytes;
    const totalBlocks = source.length / bs;
    let doneBlocks = 0;
    while (doneBlocks < totalBlocks) {
      // Each run inserts one mapping: room for it first, as #provision does for its block.
      const room = this.#host.metadataForWrite();
      if (room !== undefined) await room;
      const run = await this.#allocateRun(device, totalBlocks - doneBlocks);
      const runEnd = run.begin + run.lengthBlocks;
      let refused = false;
      try {
        this.#knownZero.remove(run.begin, runEnd);
        this.#punched.remove(run.begin, runEnd);
        this.#raiseAhead(run.begin);
        if (runEnd - 1 >= this.#highWaterMark.durable) await this.#coverByHighWaterMark(runEnd - 1);
        try {
          await this.dataWrite(source.subarray(doneBlocks * bs, (doneBlocks + run.lengthBlocks) * bs), run.begin * bs);
        } catch (error) {
          if (!(error instanceof SectorsRefused)) throw error;
          // Sectors of the run refuse the write: they are recorded bad, and the run's blocks go
          // one by one below, each to a block that takes it (#provision), as a single write would.
          this.remapper.counters.targetsRefused += 1;
          this.#host.recordBad(error.ranges, BadRangeFlag.writeError);
          refused = true;
        }
        if (!refused) {
          this.#host.assertDeviceWritable(device);
          this.#mappings.insertMapping(device, virtualBlock + doneBlocks, run.begin, run.lengthBlocks);
        }
      } finally {
        for (let block = run.begin; block < runEnd; block++) this.#allocator.release(block);
      }
      if (refused) {
        for (let at = doneBlocks; at < doneBlocks + run.lengthBlocks; at++) {
          await this.#provision(device, virtualBlock + at, 0, source.subarray(at * bs, (at + 1) * bs), bs, run.begin);
        }
      }
      doneBlocks += run.lengthBlocks;
    }
  }

  /** Where in the data file the range is, when one extent maps all of it and needs no copy. */
  #inPlaceOffset(device: Device, offsetBytes: number, lengthBytes: number): number | undefined {
    const bs = this.blockSizeBytes;
    const { begin, end } = touchedBlocks(offsetBytes, lengthBytes, bs);
    const mapping = this.#mappings.lookup(device, begin);
    if (mapping === undefined || end > mapping.key + mapping.extent.lengthBlocks || this.#mappings.mustCopy(device, mapping)) return undefined;
    return mapping.dataBlock * bs + (offsetBytes - begin * bs);
  }

  /**
   * Reserves a data block. When none may be taken: with the delta log, blocks freed by logged
   * changes stay pending until a rollup commits (F-LOG-8), so a rollup comes first when there are
   * such blocks; then the space policy decides (dataSpaceWanted: wait for a punch or a growth,
   * grow, queue, or give up with ENOSPC).
   */
  async #allocateData(device: Device, options: AllocateOptions): Promise<number> {
    return (await this.#allocateRun(device, 1, options)).begin;
  }

  /** Reserves a run of up to lengthBlocksMax consecutive data blocks, as #allocateData does one. */
  async #allocateRun(device: Device, lengthBlocksMax: number, options: AllocateOptions = {}): Promise<{ begin: number; lengthBlocks: number }> {
    const wait: { deadlineMs?: number } = {};
    let rolledUp = false;
    for (;;) {
      try {
        const run = this.#allocator.allocateRun(device.id, lengthBlocksMax, options);
        this.#host.dataAllocated();
        return run;
      } catch (error) {
        if (!isThinError(error, 'THIN_NO_SPACE')) throw error;
        if (!rolledUp && this.#host.logAttached && this.#dataSpace.pendingFreeBlockCount > 0) {
          rolledUp = true;
          await this.#host.rollup();
        } else {
          await this.#host.dataSpaceWanted(error, wait);
          rolledUp = false;
        }
      }
      this.#host.assertDeviceWritable(device);
    }
  }

  /**
   * Maps an unmapped virtual block to a new block holding the write; a block that refuses it is
   * recorded bad and another taken, away from it (AllocateOptions.awayFrom), REMAP_TARGETS_MAX in
   * all. `awayFrom`: a block that refused this write already (a run's, #provisionRuns).
   */
  async #provision(device: Device, virtualBlock: number, offsetInBlockBytes: number, source: Uint8Array | undefined, lengthBytes: number, awayFrom?: number): Promise<void> {
    // Room for the mapping change before a block is taken; no await unless metadata is growing, so
    // a snapshot issued before this write still takes effect before it (space.ts).
    const room = this.#host.metadataForWrite();
    if (room !== undefined) await room;
    let refusedBlock = awayFrom;
    for (let attempt = 1; ; attempt++) {
      const block = await this.#allocateData(device, refusedBlock === undefined ? {} : { awayFrom: refusedBlock });
      try {
        await this.#writeNewBlock(block, offsetInBlockBytes, source, lengthBytes);
        this.#host.assertDeviceWritable(device);
        this.#mappings.insertMapping(device, virtualBlock, block);
        return;
      } catch (error) {
        if (!(error instanceof SectorsRefused)) throw error;
        // Recorded even when this was the last try: a block that refused a write is never
        // handed out again (docs/format.md F-BAD-3).
        this.remapper.counters.targetsRefused += 1;
        this.#host.recordBad(error.ranges, BadRangeFlag.writeError);
        if (attempt >= REMAP_TARGETS_MAX) {
          this.remapper.counters.remapsFailed += 1;
          throw error;
        }
        refusedBlock = block;
      } finally {
        this.#allocator.release(block);
      }
    }
  }

  async #writeNewBlock(block: number, offsetInBlockBytes: number, source: Uint8Array | undefined, lengthBytes: number): Promise<void> {
    const knownZero = this.#knownZero.has(block);
    this.#knownZero.remove(block, block + 1);
    this.#punched.remove(block, block + 1);
    this.#raiseAhead(block);
    if (block >= this.#highWaterMark.durable) await this.#coverByHighWaterMark(block);
    const offsetBytes = block * this.blockSizeBytes;
    if (knownZero && (source === undefined || offsetInBlockBytes !== 0)) {
      // The block reads zeros: write only the bytes asked for, and nothing at all for zeros.
      if (source !== undefined) await this.dataWrite(source, offsetBytes + offsetInBlockBytes);
    } else if (source !== undefined && lengthBytes === this.blockSizeBytes) {
      await this.dataWrite(source, offsetBytes);
    } else {
      // A reused block may hold anything: write it whole, zeros around the data. So is a
      // never-written block whose first write starts at its beginning: that is usually the head
      // of a sequential stream (a journal, a log, a file appended with fsync), and the file
      // system then allocates the whole block at once, so the stream's later writes into it
      // overwrite written space. Written piece by piece, every sync after a write into a
      // fallocated (unwritten) part costs ext4 a journal commit to convert it (docs/benchmarks.md,
      // "Figures behind code decisions"); random writes begin a block only once in
      // blockSize/writeSize.
      if (source === undefined) {
        await this.dataWrite(this.zeroBlock, offsetBytes);
      } else {
        const whole = this.#takeBlockBuffer();
        try {
          whole.fill(0, 0, offsetInBlockBytes);
          whole.set(source, offsetInBlockBytes);
          whole.fill(0, offsetInBlockBytes + lengthBytes);
          await this.dataWrite(whole, offsetBytes);
        } finally {
          this.#giveBlockBuffer(whole);
        }
      }
    }
  }

  /**
   * A block for a move (copy-on-write, remap): may use the reserve; the high-water mark covers it
   * on return. A remap takes a spare first (spare-area.ts): written and synced already, below the mark.
   * After a target refused the write (`awayFrom`), the next is taken away from it, not a spare
   * (the spares lie together, low in the file).
   */
  async #reserveMoveTarget(device: Device, reason: MoveReason, awayFrom: number | undefined): Promise<number> {
    // Room for the mapping change before a block is taken; no await unless metadata is growing, so
    // a snapshot issued before this write still takes effect before it (space.ts).
    const room = this.#host.metadataForWrite();
    if (room !== undefined) await room;
    const spare = reason === 'remap' && awayFrom === undefined ? this.spares.take() : undefined;
    const block = spare ?? (await this.#allocateData(device, awayFrom === undefined ? { mayUseReserve: true } : { mayUseReserve: true, awayFrom }));
    this.#copyOnWrites++;
    try {
      this.#knownZero.remove(block, block + 1);
      this.#punched.remove(block, block + 1);
      this.#raiseAhead(block);
      if (block >= this.#highWaterMark.durable) await this.#coverByHighWaterMark(block);
    } catch (error) {
      this.#allocator.release(block);
      throw error;
    }
    return block;
  }

  /**
   * Raises the high-water mark over `blocks` more than the pool uses, now, in one commit, for a
   * writer about to provision that many new blocks in a stream (an image import): otherwise each
   * step of DATA_HIGH_WATER_MARK_STEP_BLOCKS costs a commit (an fdatasync of the data written
   * since) that writes past the mark wait for when it lags. Only a raise made sooner: blocks it
   * covers and the stream does not take are free blocks below the mark, as after any step, and
   * the next such raise counts from the blocks in use, so the mark never runs further ahead.
   */
  async raiseHighWaterMarkAhead(blocks: number): Promise<void> {
    const mark = this.#highWaterMark;
    const last = Math.min(mark.blockCount, this.#dataSpace.usedBlockCount + Math.max(0, Math.floor(blocks))) - 1;
    if (last < mark.durable) return;
    if (last >= mark.target) this.#raiseTarget(last + 1);
    await this.#coverByHighWaterMark(last);
  }

  /** Raises and commits the high-water mark so that `block` lies below it (F-POOL-40). */
  async #coverByHighWaterMark(block: number): Promise<void> {
    const mark = this.#highWaterMark;
    while (block >= mark.durable) {
      if (block < mark.sealed && this.#host.commitRunning !== undefined) {
        // The commit already running raises the mark past this block: wait for it, start none.
        await this.#host.commitRunning.catch(() => undefined);
        this.#host.assertWritable();
        continue;
      }
      if (block >= mark.target) this.#raiseTarget(Math.max(block + 1, mark.target) + DATA_HIGH_WATER_MARK_STEP_BLOCKS);
      await this.#host.commit();
    }
  }

  /**
   * Starts the commit that raises the high-water mark while half a step is still left below it,
   * so that allocating writes rarely wait for it: waiting, a run of new or copied blocks stalled
   * on one commit (an fdatasync of up to a step of data) every DATA_HIGH_WATER_MARK_STEP_BLOCKS.
   * Only a raise that was due anyway, made sooner; F-POOL-40 holds because writes above the
   * durable mark still wait in #coverByHighWaterMark.
   */
  #raiseAhead(block: number): void {
    const mark = this.#highWaterMark;
    if (block + DATA_HIGH_WATER_MARK_STEP_BLOCKS / 2 < mark.target) return;
    if (mark.target >= mark.blockCount || block >= mark.durable) return;
    if (!this.#host.backgroundCommitMayStart) return;
    this.#raiseTarget(mark.target + DATA_HIGH_WATER_MARK_STEP_BLOCKS);
    this.#host.commit().catch(() => undefined);
  }

  /**
   * The next commit raises the high-water mark to `target` blocks. The data file's space for the
   * new blocks is allocated now (a hint, see BlockFile.allocate): the writes that provision and
   * copy into them are then cheaper, and the host file system's space is taken a step ahead.
   */
  #raiseTarget(target: number): void {
    const from = this.#highWaterMark.raiseTarget(target);
    this.#host.metadataChanged();
    const to = this.#highWaterMark.target;
    const bs = this.blockSizeBytes;
    if (to > from) void this.#files.data.allocate?.(from * bs, (to - from) * bs);
  }

  #takeBlockBuffer(): Uint8Array {
    return this.#blockBuffers.pop() ?? new Uint8Array(this.blockSizeBytes);
  }

  #giveBlockBuffer(buffer: Uint8Array): void {
    assert(buffer.length === this.blockSizeBytes, 'a scratch buffer of another size');
    if ((this.#blockBuffers.length + 1) * this.blockSizeBytes <= COPY_BUFFERS_RETAINED_BYTES_MAX) this.#blockBuffers.push(buffer);
  }
}

function describeRange(device: Device, offsetBytes: number, lengthBytes: number): string {
  return `${lengthBytes} bytes at offset ${offsetBytes} of volume ${device.details.name}`;
}

/** Awaits every promise, then throws the first failure: no write is left running unobserved. */
export async function settleAll(promises: Promise<unknown>[]): Promise<void> {
  if (promises.length === 0) return;
  if (promises.length === 1) {
    await promises[0];
    return;
  }
  const results = await Promise.allSettled(promises);
  for (const result of results) {
    if (result.status === 'rejected') throw result.reason;
  }
}
