// The delta log (docs/format.md "Delta log"): between full commits (rollups), a flush appends one
// checksummed record to a fixed ring of metadata blocks instead of writing every shadowed tree
// node, the space maps and a superblock. The record lists the logical mapping changes since the
// previous flush, as ranges, and is itself the commit record:
//
//   data writes ─► await completions ─► fdatasync(data) ─► write record(s) ─► fdatasync(metadata) ─► ack
//
// Replay (replay.ts) re-applies the changes through the pool's own code paths on top of the last
// full commit, so the trees and reference counts come out as the original writes made them.
//
// Records of one log are tied to the superblock generation they follow (the "base generation",
// kept in the block header's transaction id field), numbered 1, 2, 3 ... from ring slot 0, and
// chained by the previous record's checksum. After every rollup the log starts again at slot 0
// under the new generation, so a record left from an older lap of the ring names another
// generation, or breaks the chain, and is never replayed. Generation numbers are never reused
// (pdata's nextTransactionId), which makes the generation the log's salt.
//
// Only mapping changes are logged: map (a run of new blocks), unmap (a discard) and remap (one
// copy-on-write, logged as one entry so that replay never shows the block unmapped between its
// unmap and its new mapping), and bad ranges (sectors that failed: a remap of a failing block is
// persisted by one record holding both, docs/format.md "Bad ranges"). Everything else (create, snapshot, remove, resize, a raised data
// high-water mark) forces a rollup: these are rare, and a record for them would be as large as
// the commit it replaces.
import {
  DELTA_LOG_BLOCK_COUNT,
  DELTA_LOG_BLOCKS_PER_FLUSH_MAX,
  DELTA_LOG_FIRST_BLOCK_NR,
  METADATA_BLOCK_HEADER_BYTES,
  METADATA_BLOCK_SIZE_BYTES,
} from '../constants.ts';
import { performance } from 'node:perf_hooks';
import { ThinError, assert } from '../errors.ts';
import type { BlockFile, SyncOptions } from '../io/block-file.ts';
import { loadCrc32 } from '../util/native.ts';
import { Block, BlockType, checksumOf, getU64, sealBlock, setU64 } from '../pdata/index.ts';

const { crc32c } = loadCrc32();

/** "TLOG" read as a little-endian u32. */
export const DELTA_LOG_MAGIC = 0x474f4c54;

/** Record fields after the block header (F-LOG-2). */
export const DeltaLogLayout = {
  magicOffset: METADATA_BLOCK_HEADER_BYTES + 0, // u32
  sequenceOffset: METADATA_BLOCK_HEADER_BYTES + 4, // u32, 1 for the first record after a rollup
  previousChecksumOffset: METADATA_BLOCK_HEADER_BYTES + 8, // u32, 0 for the first record
  entryCountOffset: METADATA_BLOCK_HEADER_BYTES + 12, // u32
  timeOffset: METADATA_BLOCK_HEADER_BYTES + 16, // u32, the pool time of every map in the record
  flagsOffset: METADATA_BLOCK_HEADER_BYTES + 20, // u16, DeltaLogRecordFlag
  carriedSlotCountOffset: METADATA_BLOCK_HEADER_BYTES + 22, // u16, ring slots after this record holding its carried bytes
  entriesOffset: METADATA_BLOCK_HEADER_BYTES + 24,
} as const;

export const DeltaLogRecordFlag = {
  /**
   * The data file was synced, after every data write completed before this record's flush
   * began, before the record was written (F-LOG-7): bytes carried by this or an earlier record
   * are durable in their data blocks, which later writes may have changed (F-LOG-9).
   */
  dataSynced: 1,
} as const;
export const DELTA_LOG_RECORD_FLAGS_KNOWN = 1;

/** One entry (F-LOG-3): 40 bytes. */
export const DeltaLogEntryLayout = {
  kindOffset: 0, // u8
  reservedOffset: 1, // 3 bytes, zero
  volumeIdOffset: 4, // u32
  virtualBlockOffset: 8, // u64
  lengthBlocksOffset: 16, // u32
  reserved2Offset: 20, // u32, zero
  dataBlockOffset: 24, // u64
  oldDataBlockOffset: 32, // u64, remap only (else zero)
  sizeBytes: 40,
} as const;

export const DELTA_LOG_ENTRIES_PER_RECORD = Math.floor((METADATA_BLOCK_SIZE_BYTES - DeltaLogLayout.entriesOffset) / DeltaLogEntryLayout.sizeBytes);

assert(DeltaLogLayout.carriedSlotCountOffset + 2 === DeltaLogLayout.entriesOffset, 'delta log record fields must end where the entries start');
assert(DeltaLogEntryLayout.oldDataBlockOffset + 8 === DeltaLogEntryLayout.sizeBytes, 'delta log entry fields must fill the entry');
assert(DELTA_LOG_ENTRIES_PER_RECORD >= 100, 'a delta log record holds at least 100 entries');
assert(DELTA_LOG_BLOCKS_PER_FLUSH_MAX <= DELTA_LOG_BLOCK_COUNT, 'one flush fits the ring');

export const DeltaLogEntryKind = {
  /** Virtual blocks [virtualBlock, +lengthBlocks), unmapped, now map to data blocks [dataBlock, +lengthBlocks). */
  map: 1,
  /** Virtual blocks [virtualBlock, +lengthBlocks) are unmapped (mapped or not before). */
  unmap: 2,
  /** Virtual block virtualBlock moves from oldDataBlock to dataBlock (a copy-on-write); lengthBlocks 1. */
  remap: 3,
  /**
   * Sectors are bad (pool/bad-ranges.ts): virtualBlock holds the bad-range key (device × 2^48 +
   * first sector), lengthBlocks the sector count, dataBlock the flags; volumeId and oldDataBlock 0.
   */
  badRange: 4,
  /**
   * Bytes a remap wrote, carried in the ring slots after the record (F-LOG-9): dataBlock (the new
   * block) holds oldDataBlock's bytes with lengthBlocks bytes at byte virtualBlock of the block
   * replaced by these; volumeId holds their crc32c.
   */
  carried: 5,
} as const;
export type DeltaLogEntryKindValue = (typeof DeltaLogEntryKind)[keyof typeof DeltaLogEntryKind];

export interface DeltaLogEntry {
  kind: DeltaLogEntryKindValue;
  volumeId: number;
  virtualBlock: number;
  lengthBlocks: number;
  /** map, remap: the (new) data block; unmap: 0. */
  dataBlock: number;
  /** remap: the data block the virtual block left; otherwise 0. */
  oldDataBlock: number;
}

/** Where the next record goes and what it must carry to continue the chain. */
export interface DeltaLogPosition {
  /** The superblock generation the log's records follow. */
  baseGeneration: number;
  /** Ring slot of the next record (0 .. DELTA_LOG_BLOCK_COUNT). */
  nextIndex: number;
  nextSequence: number;
  previousChecksum: number;
}

export interface DeltaLogCounters {
  blocksWritten: number;
  records: number;
  /** Records that carried bytes (F-LOG-9). */
  recordsCarrying: number;
  /** Records without entries, flagged dataSynced (F-LOG-9). */
  syncMarks: number;
  syncs: number;
}

export function deltaLogBlockNr(index: number): number {
  if (!(Number.isSafeInteger(index) && index >= 0 && index < DELTA_LOG_BLOCK_COUNT)) assert(false, `delta log slot ${index} outside the ring`);
  return DELTA_LOG_FIRST_BLOCK_NR + index;
}

export function emptyLogPosition(baseGeneration: number): DeltaLogPosition {
  return { baseGeneration, nextIndex: 0, nextSequence: 1, previousChecksum: 0 };
}

/** Records needed for entryCount entries. */
export function recordsFor(entryCount: number): number {
  return Math.ceil(entryCount / DELTA_LOG_ENTRIES_PER_RECORD);
}

export interface EncodeRecordOptions {
  index: number;
  poolId: bigint;
  baseGeneration: number;
  sequence: number;
  previousChecksum: number;
  time: number;
  /** DeltaLogRecordFlag bits (default 0). */
  flags?: number;
  /** Ring slots after the record that hold its carried bytes (default 0). */
  carriedSlotCount?: number;
}

/** Ring slots that hold `byteCount` carried bytes. */
export function carriedSlotsFor(byteCount: number): number {
  return Math.ceil(byteCount / METADATA_BLOCK_SIZE_BYTES);
}

/**
 * One sealed record block holding `entries` (at most DELTA_LOG_ENTRIES_PER_RECORD; none only for
 * a sync mark: flags dataSynced, nothing carried).
 */
export function encodeRecord(entries: readonly DeltaLogEntry[], options: EncodeRecordOptions): Uint8Array {
  const flags = options.flags ?? 0;
  const carriedSlotCount = options.carriedSlotCount ?? 0;
  assert(entries.length <= DELTA_LOG_ENTRIES_PER_RECORD, `a delta log record of ${entries.length} entries`);
  assert(entries.length >= 1 || (flags === DeltaLogRecordFlag.dataSynced && carriedSlotCount === 0), 'an empty delta log record that is not a sync mark');
  assert((flags & ~DELTA_LOG_RECORD_FLAGS_KNOWN) === 0 && carriedSlotCount < DELTA_LOG_BLOCKS_PER_FLUSH_MAX, 'delta log record flags or carried slots out of range');
  const block = new Block(deltaLogBlockNr(options.index), new Uint8Array(METADATA_BLOCK_SIZE_BYTES));
  const view = block.view;
  view.setUint32(DeltaLogLayout.magicOffset, DELTA_LOG_MAGIC, true);
  view.setUint32(DeltaLogLayout.sequenceOffset, options.sequence, true);
  view.setUint32(DeltaLogLayout.previousChecksumOffset, options.previousChecksum, true);
  view.setUint32(DeltaLogLayout.entryCountOffset, entries.length, true);
  view.setUint32(DeltaLogLayout.timeOffset, options.time, true);
  view.setUint16(DeltaLogLayout.flagsOffset, flags, true);
  view.setUint16(DeltaLogLayout.carriedSlotCountOffset, carriedSlotCount, true);
  entries.forEach((entry, entryIndex) => {
    assert(entry.lengthBlocks >= 1 && entry.lengthBlocks <= 0xffff_ffff, `delta log entry of ${entry.lengthBlocks} blocks`);
    assert(entry.kind !== DeltaLogEntryKind.remap || entry.lengthBlocks === 1, 'a remap entry moves one block');
    const offsetBytes = DeltaLogLayout.entriesOffset + entryIndex * DeltaLogEntryLayout.sizeBytes;
    view.setUint8(offsetBytes + DeltaLogEntryLayout.kindOffset, entry.kind);
    view.setUint32(offsetBytes + DeltaLogEntryLayout.volumeIdOffset, entry.volumeId, true);
    setU64(view, offsetBytes + DeltaLogEntryLayout.virtualBlockOffset, entry.virtualBlock);
    view.setUint32(offsetBytes + DeltaLogEntryLayout.lengthBlocksOffset, entry.lengthBlocks, true);
    setU64(view, offsetBytes + DeltaLogEntryLayout.dataBlockOffset, entry.dataBlock);
    setU64(view, offsetBytes + DeltaLogEntryLayout.oldDataBlockOffset, entry.oldDataBlock);
  });
  sealBlock(block, BlockType.deltaLog, options.baseGeneration, options.poolId);
  return block.bytes;
}

/** What a flush hands to DeltaLog.append. */
export interface PendingLogEntries {
  /** In the order the changes were made; carried entries (kind 5) among them. */
  entries: DeltaLogEntry[];
  /** The bytes of each carried entry, in their order. */
  carriedBytes: Uint8Array[];
}

export interface AppendOptions {
  /** DeltaLogRecordFlag bits of every record written. */
  flags: number;
  syncOptions?: SyncOptions;
}

/**
 * The log writer of an open pool: collects the mapping changes of the open transaction that no
 * record holds yet, and appends them as records. The pool serializes appends and rollups (one
 * commit at a time), so the position only moves under one caller.
 */
export class DeltaLog {
  readonly file: BlockFile;
  readonly poolId: bigint;
  readonly counters: DeltaLogCounters = { blocksWritten: 0, records: 0, recordsCarrying: 0, syncMarks: 0, syncs: 0 };
  /** When the last append had its records built, and when its sync returned (performance.now(), ms): the remap benchmark's persist phase. */
  readonly lastAppendMs = { builtMs: 0, syncedMs: 0 };
  #position: DeltaLogPosition;
  #pending: DeltaLogEntry[] = [];
  #pendingCarriedBytes: Uint8Array[] = [];
  #pendingCarriedByteCount = 0;
  /** A record carrying bytes was written since the last record flagged dataSynced (or the restart): F-LOG-9. */
  #carriedSinceSync = false;

  constructor(file: BlockFile, poolId: bigint, position: DeltaLogPosition, carriedSinceSync = false) {
    assert(position.nextIndex >= 0 && position.nextIndex <= DELTA_LOG_BLOCK_COUNT, `delta log position ${position.nextIndex} outside the ring`);
    this.file = file;
    this.poolId = poolId;
    this.#position = { ...position };
    this.#carriedSinceSync = carriedSinceSync;
  }

  get position(): DeltaLogPosition {
    return { ...this.#position };
  }

  /** Ring blocks holding records of the current log (0 right after a rollup). */
  get blocksUsed(): number {
    return this.#position.nextIndex;
  }

  /** Pending entries that change mappings or bad ranges (carried bytes aside). */
  get pendingEntryCount(): number {
    return this.#pending.length - this.#pendingCarriedBytes.length;
  }

  /**
   * Whether bytes carried by a record may be replayed over their data blocks (F-LOG-9): a flush
   * that syncs the data file must then write a record flagged dataSynced (a sync mark when it
   * has no entries), or a later write to such a block it acknowledges could be undone by replay.
   */
  get carriedSinceSync(): boolean {
    return this.#carriedSinceSync;
  }

  /** Records a change made in memory; a map or unmap that continues the previous entry extends it. */
  note(entry: DeltaLogEntry): void {
    assert(entry.lengthBlocks >= 1, 'an empty delta log entry');
    assert(entry.kind !== DeltaLogEntryKind.carried, 'carried bytes are noted with noteCarried');
    const last = this.#pending[this.#pending.length - 1];
    if (
      last !== undefined &&
      last.kind === entry.kind &&
      (entry.kind === DeltaLogEntryKind.map || entry.kind === DeltaLogEntryKind.unmap) &&
      last.volumeId === entry.volumeId &&
      last.virtualBlock + last.lengthBlocks === entry.virtualBlock &&
      (entry.kind === DeltaLogEntryKind.unmap || last.dataBlock + last.lengthBlocks === entry.dataBlock) &&
      last.lengthBlocks + entry.lengthBlocks <= 0xffff_ffff
    ) {
      last.lengthBlocks += entry.lengthBlocks;
      return;
    }
    this.#pending.push({ ...entry });
  }

  /**
   * Notes the bytes a remap wrote at offsetInBlockBytes of dataBlock, the rest of which holds
   * oldDataBlock's bytes: the flush that logs the remap may carry them instead of syncing the
   * data file (F-LOG-9). The bytes are copied.
   */
  noteCarried(dataBlock: number, oldDataBlock: number, offsetInBlockBytes: number, bytes: Uint8Array): void {
    assert(bytes.length >= 1, 'no carried bytes');
    this.#pending.push({
      kind: DeltaLogEntryKind.carried,
      volumeId: crc32c(bytes) >>> 0,
      virtualBlock: offsetInBlockBytes,
      lengthBlocks: bytes.length,
      dataBlock,
      oldDataBlock,
    });
    this.#pendingCarriedBytes.push(bytes.slice());
    this.#pendingCarriedByteCount += bytes.length;
  }

  /** Whether the pending entries, carried bytes aside, fit one flush's records in the ring's free slots. */
  pendingFits(): boolean {
    return this.#fits(recordsFor(this.pendingEntryCount));
  }

  /** Whether the pending entries fit with their carried bytes (in the worst case, every record's bytes padded to a slot of its own). */
  pendingFitsCarried(): boolean {
    const records = recordsFor(this.#pending.length);
    return this.#fits(records + carriedSlotsFor(this.#pendingCarriedByteCount) + records - 1);
  }

  #fits(blocks: number): boolean {
    return blocks <= DELTA_LOG_BLOCKS_PER_FLUSH_MAX && this.#position.nextIndex + blocks <= DELTA_LOG_BLOCK_COUNT;
  }

  /** Whether a sync mark (one record block) fits the ring. */
  get markFits(): boolean {
    return this.#position.nextIndex < DELTA_LOG_BLOCK_COUNT;
  }

  /** Hands the pending entries to an append; later notes go to the next one. */
  takePending(): PendingLogEntries {
    const taken = { entries: this.#pending, carriedBytes: this.#pendingCarriedBytes };
    this.#pending = [];
    this.#pendingCarriedBytes = [];
    this.#pendingCarriedByteCount = 0;
    return taken;
  }

  /** Drops the pending entries: a full commit sealed them into the trees. */
  discardPending(): void {
    this.takePending();
  }

  /**
   * Writes `pending` as the next record(s), each followed by the slots holding the bytes its
   * carried entries carry, awaits every write, then syncs the metadata file. The caller has
   * already synced the data the entries point at, unless carried entries carry it (F-LOG-7,
   * F-LOG-9), and says how the sync may run. Without entries, writes a sync mark (flags must
   * be dataSynced). Resolves when the records are durable.
   */
  async append(pending: PendingLogEntries, time: number, options: AppendOptions): Promise<void> {
    const { entries, carriedBytes } = pending;
    const synced = (options.flags & DeltaLogRecordFlag.dataSynced) !== 0;
    assert(entries.length > 0 || synced, 'appending no delta log entries');
    assert(!synced || carriedBytes.length === 0, 'a record flagged dataSynced carries nothing');
    const recordCount = Math.max(1, recordsFor(entries.length));
    const start = this.#position;
    // The records and their carried slots, back to back in ring order (no wrap: asserted below).
    const blocks: Uint8Array[] = [];
    let position = { ...start };
    let carriedIndex = 0;
    for (let record = 0; record < recordCount; record++) {
      const slice = entries.slice(record * DELTA_LOG_ENTRIES_PER_RECORD, (record + 1) * DELTA_LOG_ENTRIES_PER_RECORD);
      const carried: Uint8Array[] = [];
      for (const entry of slice) if (entry.kind === DeltaLogEntryKind.carried) carried.push(carriedBytes[carriedIndex++]!);
      const carriedByteCount = carried.reduce((total, bytes) => total + bytes.length, 0);
      const carriedSlotCount = carriedSlotsFor(carriedByteCount);
      assert(position.nextIndex + 1 + carriedSlotCount <= DELTA_LOG_BLOCK_COUNT, 'delta log append past the ring');
      const bytes = encodeRecord(slice, {
        index: position.nextIndex,
        poolId: this.poolId,
        baseGeneration: position.baseGeneration,
        sequence: position.nextSequence,
        previousChecksum: position.previousChecksum,
        time,
        flags: options.flags,
        carriedSlotCount,
      });
      blocks.push(bytes);
      if (carriedSlotCount > 0) {
        // The carried bytes, back to back, zeros after the last: crc32c per entry (F-LOG-9).
        const slots = new Uint8Array(carriedSlotCount * METADATA_BLOCK_SIZE_BYTES);
        let at = 0;
        for (const piece of carried) {
          slots.set(piece, at);
          at += piece.length;
        }
        blocks.push(slots);
      }
      position = {
        baseGeneration: position.baseGeneration,
        nextIndex: position.nextIndex + 1 + carriedSlotCount,
        nextSequence: position.nextSequence + 1,
        previousChecksum: checksumOf(bytes),
      };
    }
    assert(carriedIndex === carriedBytes.length, 'carried bytes without their entries');
    // One write of the whole batch (the records and their slots are consecutive ring blocks): a
    // write per block cost a system call and, mirrored, a promise per copy each, on a remap's
    // acknowledged path (docs/benchmarks.md, "Failing disks").
    const batch = blocks.length === 1 ? blocks[0]! : Buffer.concat(blocks);
    const firstBlockNr = deltaLogBlockNr(start.nextIndex);
    const batchBlocks = batch.length / METADATA_BLOCK_SIZE_BYTES;
    // A later record is only ever written once the one before it is durable or in this very
    // batch, so a crash leaves a prefix of the chain, possibly with this batch torn anywhere.
    this.lastAppendMs.builtMs = performance.now();
    try {
      await this.file.write(batch, firstBlockNr * METADATA_BLOCK_SIZE_BYTES);
      this.counters.blocksWritten += batchBlocks;
      this.counters.syncs += 1;
      await this.file.sync(options.syncOptions ?? {});
      this.lastAppendMs.syncedMs = performance.now();
    } catch (error) {
      throw new ThinError('THIN_IO', `Appending ${recordCount} delta log record(s) to ${this.file.description} failed: ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    }
    // Nothing else points at a record (a tree node has a parent that records which transaction
    // wrote it; the last record has no successor), so a write that landed elsewhere or was lost
    // would go unnoticed until a crash dropped the flush. Read the batch back before the flush
    // is acknowledged: one read, usually from the page cache.
    const readBack = Buffer.allocUnsafe(batch.length);
    try {
      await this.file.read(readBack, firstBlockNr * METADATA_BLOCK_SIZE_BYTES);
    } catch (error) {
      throw new ThinError('THIN_IO', `Cannot read back delta log blocks ${firstBlockNr}..${firstBlockNr + batchBlocks - 1} of ${this.file.description}`, { cause: error });
    }
    // A native comparison: a callback per byte was measurably slower (docs/benchmarks.md,
    // "Figures behind code decisions").
    if (!readBack.equals(batch)) {
      let blockNr = firstBlockNr;
      for (let at = 0; at < batch.length && readBack.subarray(at, at + METADATA_BLOCK_SIZE_BYTES).equals(batch.subarray(at, at + METADATA_BLOCK_SIZE_BYTES)); at += METADATA_BLOCK_SIZE_BYTES) blockNr += 1;
      throw new ThinError('THIN_IO', `Delta log block ${blockNr} of ${this.file.description} reads back different from what was written and synced (a misdirected or lost write)`);
    }
    this.counters.records += recordCount;
    if (carriedBytes.length > 0) this.counters.recordsCarrying += 1;
    if (entries.length === 0) this.counters.syncMarks += 1;
    this.#position = position;
    if (synced) this.#carriedSinceSync = false;
    else if (carriedBytes.length > 0) this.#carriedSinceSync = true;
  }

  /** Starts an empty log after a rollup made `generation` durable. */
  restart(generation: number): void {
    assert(generation >= this.#position.baseGeneration, `delta log restarted at older generation ${generation}`);
    this.#position = emptyLogPosition(generation);
    this.#carriedSinceSync = false;
  }
}

/** Reads one entry of a record (no validation: decodeRecord in replay.ts validates). */
export function readEntry(view: DataView, entryIndex: number): DeltaLogEntry & { reserved: number } {
  const offsetBytes = DeltaLogLayout.entriesOffset + entryIndex * DeltaLogEntryLayout.sizeBytes;
  return {
    kind: view.getUint8(offsetBytes + DeltaLogEntryLayout.kindOffset) as DeltaLogEntryKindValue,
    volumeId: view.getUint32(offsetBytes + DeltaLogEntryLayout.volumeIdOffset, true),
    virtualBlock: getU64(view, offsetBytes + DeltaLogEntryLayout.virtualBlockOffset),
    lengthBlocks: view.getUint32(offsetBytes + DeltaLogEntryLayout.lengthBlocksOffset, true),
    dataBlock: getU64(view, offsetBytes + DeltaLogEntryLayout.dataBlockOffset),
    oldDataBlock: getU64(view, offsetBytes + DeltaLogEntryLayout.oldDataBlockOffset),
    reserved:
      view.getUint8(offsetBytes + 1) | view.getUint8(offsetBytes + 2) | view.getUint8(offsetBytes + 3) |
      view.getUint32(offsetBytes + DeltaLogEntryLayout.reserved2Offset, true),
  };
}
