// Moving a virtual block to another data block: copy-on-write of a shared block, and the remap of
// a block whose sectors fail (docs/format.md "Bad ranges"; docs/internals.md decision 12).
//
// Both build the block's new contents (what the write brings, the old block's bytes around it),
// write them to a newly reserved block, and move the mapping there. A remap differs in two ways:
// the bad sectors are recorded (the old block is held for good, never allocated again), and the
// change is made durable before the write is acknowledged (md's rule: record first, redirect
// after), by one delta-log record holding the remap and the bad range (or a full commit): F-BAD-5.
// That record also carries the bytes the write brought (F-LOG-9), so one sync, of the metadata
// file, makes both durable: the new block is rebuilt at replay from the old block, which is held
// for good, and those bytes. Two syncs in a row (the new block's, then the record's) cost about
// twice a sync on the acknowledged path (docs/benchmarks.md, "Failing disks").
//
// What the medium refuses is worked around where nothing is lost: a target block that refuses the
// write is recorded bad and another one taken, away from it (REMAP_TARGETS_MAX in all); sectors of the old block
// that cannot be read are fine when the write covers them, and otherwise fail the request with EIO
// (their contents are gone: the block stays where it was, its unreadable sectors recorded).
import { performance } from 'node:perf_hooks';
import { REMAP_TARGETS_MAX } from '../constants.ts';
import { ThinError, isThinError } from '../errors.ts';
import { MEDIA_SECTOR_BYTES } from '../io/media-error.ts';
import { BadRangeFlag, type BadRanges } from './bad-ranges.ts';
import { SectorsRefused, unreadableError, type MediaErrors, type SectorRange } from './bad-blocks.ts';
import type { Device } from './devices.ts';
import type { MappingChanges } from './mapping-changes.ts';

/** What the remapper needs from the data path and the engine. */
export interface RemapHost {
  readonly blockSizeBytes: number;
  readonly media: MediaErrors;
  readonly badRanges: BadRanges;
  readonly mappings: MappingChanges;
  /**
   * Reserves a free block for a move (the copy-on-write reserve may be used; a remap takes a spare
   * first) with the high-water mark covering it; after a target refused the write, one away from
   * that target (AllocateOptions.awayFrom).
   */
  reserveTarget(device: Device, reason: MoveReason, awayFrom?: number): Promise<number>;
  releaseTarget(block: number): void;
  /** Writes a whole block (throws SectorsRefused when sectors refuse it, after narrowing). */
  writeBlock(block: number, content: Uint8Array, reason: MoveReason): Promise<void>;
  takeBlockBuffer(): Uint8Array;
  giveBlockBuffer(buffer: Uint8Array): void;
  assertDeviceWritable(device: Device): void;
  /** Records bad data sectors when the pool may change (a read-only pool only counts them). */
  recordBad(ranges: readonly SectorRange[], flags: number): void;
  /** The bytes a remap wrote at offsetInBlockBytes of dataBlock, whose other bytes are oldDataBlock's (F-LOG-9). */
  noteCarried(dataBlock: number, oldDataBlock: number, offsetInBlockBytes: number, bytes: Uint8Array): void;
  /** Makes every change so far durable (a log record or a full commit). */
  persist(): Promise<void>;
  /** A remap's record is durable (or failed): the spare area may refill now (spare-area.ts). */
  remapped(): void;
}

export interface RemapCounters {
  /** Blocks moved off failing sectors. */
  remaps: number;
  /** Target blocks that refused a write and were passed over. */
  targetsRefused: number;
  /** Writes that could not be placed: every target refused, no free block, or unreadable sectors around them. */
  remapsFailed: number;
}

export type MoveReason = 'copy-on-write' | 'remap';

/**
 * When the last remap passed each step (performance.now(), ms; 0: not passed): the refused write
 * began and its narrowing ended (zero for a remap of recorded bad sectors, which nothing refused
 * this time), the move began, its persist was asked for, and the record was durable.
 * Pool.lastRemapPhases() turns them into the remap benchmark's phases.
 */
export interface RemapTimes {
  writeStartedMs: number;
  refusedMs: number;
  decidedMs: number;
  persistStartMs: number;
  durableMs: number;
}

export class Remapper {
  readonly counters: RemapCounters = { remaps: 0, targetsRefused: 0, remapsFailed: 0 };
  readonly lastTimes: RemapTimes = { writeStartedMs: 0, refusedMs: 0, decidedMs: 0, persistStartMs: 0, durableMs: 0 };
  readonly #host: RemapHost;

  constructor(host: RemapHost) {
    this.#host = host;
  }

  /**
   * Writes `source` (zeros when undefined) at offsetInBlockBytes of virtualBlock, now at oldBlock,
   * into a new block holding the rest of oldBlock's bytes, and maps the virtual block there.
   * For a remap, `refusal` names the sectors of oldBlock a write just refused (if any): they and
   * the old block's recorded ranges are marked relocated, and the change is durable on return.
   */
  async move(
    device: Device,
    virtualBlock: number,
    oldBlock: number,
    offsetInBlockBytes: number,
    source: Uint8Array | undefined,
    lengthBytes: number,
    reason: MoveReason,
    refusal?: SectorsRefused,
  ): Promise<void> {
    const decidedMs = performance.now();
    const refused = refusal?.ranges ?? [];
    const host = this.#host;
    const bs = host.blockSizeBytes;
    const content = host.takeBlockBuffer();
    try {
      if (lengthBytes < bs) {
        const unreadable = await host.media.read(content, oldBlock * bs);
        // Unreadable sectors the write covers are overwritten anyway; any other is lost data.
        const lost = unreadable.filter((range) => !covers(oldBlock * bs + offsetInBlockBytes, lengthBytes, range));
        if (unreadable.length > 0) host.recordBad(unreadable, BadRangeFlag.readError);
        if (lost.length > 0) {
          if (reason === 'remap' && refused.length > 0) host.recordBad(refused, BadRangeFlag.writeError);
          this.counters.remapsFailed += 1;
          throw unreadableError(`around the write to block ${virtualBlock} of volume ${device.details.name}`, oldBlock, lost);
        }
      }
      if (source !== undefined) content.set(source, offsetInBlockBytes);
      else content.fill(0, offsetInBlockBytes, offsetInBlockBytes + lengthBytes);
      const target = await this.#writeSomewhere(device, content, reason);
      try {
        host.assertDeviceWritable(device);
        host.mappings.remap(device, virtualBlock, oldBlock, target);
        if (reason === 'remap') {
          if (refused.length > 0) host.recordBad(refused, BadRangeFlag.writeError | BadRangeFlag.relocated);
          host.badRanges.markRelocated(oldBlock);
          // The old block is held for good (F-BAD-3): it and the write's bytes rebuild the new one.
          host.noteCarried(target, oldBlock, offsetInBlockBytes, content.subarray(offsetInBlockBytes, offsetInBlockBytes + lengthBytes));
        }
      } finally {
        host.releaseTarget(target);
      }
    } finally {
      host.giveBlockBuffer(content);
    }
    if (reason === 'remap') {
      this.counters.remaps += 1;
      const persistStartMs = performance.now();
      try {
        await host.persist();
      } finally {
        host.remapped();
      }
      const times = this.lastTimes;
      times.writeStartedMs = refusal?.writeStartedMs ?? 0;
      times.refusedMs = refusal?.refusedMs ?? 0;
      times.decidedMs = decidedMs;
      times.persistStartMs = persistStartMs;
      times.durableMs = performance.now();
    }
  }

  /** Whether a write of [offsetInBlockBytes, +lengthBytes) covers every recorded bad sector of `block`: then it moves the block. */
  coversBadSectors(block: number, offsetInBlockBytes: number, lengthBytes: number): boolean {
    const ranges = this.#host.badRanges.dataRangesIn(block);
    if (ranges.length === 0) return false;
    const begin = block * this.#host.blockSizeBytes + offsetInBlockBytes;
    return ranges.every((range) => covers(begin, lengthBytes, range));
  }

  /** Writes a whole block's content to a newly reserved block, passing over blocks that refuse it. Returns the block, still reserved. */
  async #writeSomewhere(device: Device, content: Uint8Array, reason: MoveReason): Promise<number> {
    const host = this.#host;
    let lastRefusal: SectorsRefused | undefined;
    let refusedTarget: number | undefined;
    for (let attempt = 0; attempt < REMAP_TARGETS_MAX; attempt++) {
      let target: number;
      try {
        target = await host.reserveTarget(device, reason, refusedTarget);
      } catch (error) {
        if (!isThinError(error, 'THIN_NO_SPACE') || lastRefusal === undefined) throw error;
        this.counters.remapsFailed += 1;
        throw new ThinError('THIN_IO', `${lastRefusal.message}, and no free block is left to write it to`, { cause: lastRefusal });
      }
      try {
        await host.writeBlock(target, content, reason);
        return target;
      } catch (error) {
        host.releaseTarget(target);
        if (!(error instanceof SectorsRefused)) throw error;
        this.counters.targetsRefused += 1;
        lastRefusal = error;
        refusedTarget = target;
        host.recordBad(error.ranges, BadRangeFlag.writeError);
      }
    }
    this.counters.remapsFailed += 1;
    throw new ThinError('THIN_IO', `Cannot write a block of volume ${device.details.name}: ${REMAP_TARGETS_MAX} data blocks in a row refused the write (EIO)`, {
      cause: lastRefusal,
    });
  }
}

/** Whether [offsetBytes, +lengthBytes) covers every byte of the sector range. */
function covers(offsetBytes: number, lengthBytes: number, range: SectorRange): boolean {
  return offsetBytes <= range.beginSector * MEDIA_SECTOR_BYTES && range.endSector * MEDIA_SECTOR_BYTES <= offsetBytes + lengthBytes;
}
