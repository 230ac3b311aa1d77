// Reading the delta log back after an open (docs/format.md "Delta log", F-LOG-2..5).
//
// Replay trusts a record only when its block validates (checksum, type, own block number, pool),
// names the generation that was opened as its base, and carries the next sequence number and the
// previous record's checksum. It stops at the first record that does not: a torn write, a record
// never written, a stale one from an older lap of the ring or an older generation, a misdirected
// one. Every record before that point was complete, so the state replayed is the last full commit
// plus a prefix of the flushes made on it; acknowledged flushes are all in that prefix, because a
// flush is acknowledged only once its record is durable.
//
// Replay writes nothing: the pool applies the records in memory and then rolls up, so a crash
// during replay or during that rollup leaves the same committed generation and the same log, and
// the next open replays the same records onto the same state (idempotent by construction).
import { DELTA_LOG_BLOCK_COUNT, DELTA_LOG_FIRST_BLOCK_NR, METADATA_BLOCK_SIZE_BYTES } from '../constants.ts';
import { ThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { isMediaError } from '../io/media-error.ts';
import { isRedundant, type RedundantBlockFile } from '../io/mirror.ts';
import { Block, BlockType, blockProblem, checksumOf } from '../pdata/index.ts';
import { loadCrc32 } from '../util/native.ts';
import { DELTA_LOG_BLOCKS_PER_FLUSH_MAX } from '../constants.ts';
import {
  DELTA_LOG_ENTRIES_PER_RECORD,
  DELTA_LOG_MAGIC,
  DELTA_LOG_RECORD_FLAGS_KNOWN,
  DeltaLogEntryKind,
  DeltaLogLayout,
  DeltaLogRecordFlag,
  carriedSlotsFor,
  deltaLogBlockNr,
  emptyLogPosition,
  readEntry,
  type DeltaLogEntry,
  type DeltaLogPosition,
} from './log.ts';

const { crc32c } = loadCrc32();

export interface DeltaLogRecord {
  index: number;
  sequence: number;
  time: number;
  /** DeltaLogRecordFlag bits. */
  flags: number;
  /** Ring slots after the record holding its carried bytes. */
  carriedSlotCount: number;
  entries: DeltaLogEntry[];
  /** The bytes of each carried entry (kind 5), in their order (F-LOG-9). */
  carriedBytes: Uint8Array[];
}

export interface DeltaLogReadResult {
  records: DeltaLogRecord[];
  /** Where the log continues (after the last valid record). */
  position: DeltaLogPosition;
  /** Why reading stopped, for reports: "slot 3 (metadata block 4): checksum mismatch". */
  stoppedAt: string;
}

export interface DecodeRecordExpectation {
  index: number;
  poolId: bigint;
  baseGeneration: number;
  sequence: number;
  previousChecksum: number;
}

/** Decodes the record in ring slot `index`; returns what is wrong instead when it is not the next record. */
export function decodeRecord(bytes: Uint8Array, expect: DecodeRecordExpectation): DeltaLogRecord | string {
  const blockNr = deltaLogBlockNr(expect.index);
  const problem = blockProblem(bytes, { blockNr, expectedType: BlockType.deltaLog, poolId: expect.poolId }); // F-LOG-2
  if (problem !== undefined) return problem;
  const block = new Block(blockNr, bytes);
  const view = block.view;
  const baseGeneration = block.transactionId;
  if (baseGeneration !== expect.baseGeneration) {
    return `a record of generation ${baseGeneration}'s log, not of generation ${expect.baseGeneration} (a stale record)`; // F-LOG-2
  }
  if (view.getUint32(DeltaLogLayout.magicOffset, true) !== DELTA_LOG_MAGIC) return 'bad magic number';
  const sequence = view.getUint32(DeltaLogLayout.sequenceOffset, true);
  if (sequence !== expect.sequence) return `sequence ${sequence}, expected ${expect.sequence} (a stale record)`;
  const previousChecksum = view.getUint32(DeltaLogLayout.previousChecksumOffset, true);
  if (previousChecksum !== expect.previousChecksum) return `it follows a record with checksum ${previousChecksum}, not ${expect.previousChecksum} (a stale record)`;
  const entryCount = view.getUint32(DeltaLogLayout.entryCountOffset, true);
  const time = view.getUint32(DeltaLogLayout.timeOffset, true);
  const flags = view.getUint16(DeltaLogLayout.flagsOffset, true);
  const carriedSlotCount = view.getUint16(DeltaLogLayout.carriedSlotCountOffset, true);
  if ((flags & ~DELTA_LOG_RECORD_FLAGS_KNOWN) !== 0) return `unknown flags ${flags}`; // F-LOG-3
  if (carriedSlotCount >= DELTA_LOG_BLOCKS_PER_FLUSH_MAX || expect.index + 1 + carriedSlotCount > DELTA_LOG_BLOCK_COUNT) return `${carriedSlotCount} carried slots`;
  // A sync mark (F-LOG-9) has no entries; any other record 1..101.
  const isMark = entryCount === 0 && flags === DeltaLogRecordFlag.dataSynced && carriedSlotCount === 0;
  if ((entryCount < 1 && !isMark) || entryCount > DELTA_LOG_ENTRIES_PER_RECORD) return `entry count ${entryCount}`;
  const entries: DeltaLogEntry[] = [];
  let carriedByteCount = 0;
  for (let entryIndex = 0; entryIndex < entryCount; entryIndex++) {
    const { reserved, ...entry } = readEntry(view, entryIndex);
    const kinds: number[] = Object.values(DeltaLogEntryKind);
    const fieldsSafe = Number.isSafeInteger(entry.virtualBlock) && Number.isSafeInteger(entry.dataBlock) && Number.isSafeInteger(entry.oldDataBlock);
    if (reserved !== 0 || !kinds.includes(entry.kind) || entry.lengthBlocks < 1 || !fieldsSafe) return `entry ${entryIndex} is malformed`; // F-LOG-3
    if (entry.kind === DeltaLogEntryKind.remap && entry.lengthBlocks !== 1) return `entry ${entryIndex} remaps ${entry.lengthBlocks} blocks`;
    if (entry.kind !== DeltaLogEntryKind.remap && entry.kind !== DeltaLogEntryKind.carried && entry.oldDataBlock !== 0) return `entry ${entryIndex} is malformed`;
    if (entry.kind === DeltaLogEntryKind.unmap && entry.dataBlock !== 0) return `entry ${entryIndex} is malformed`;
    // A bad range: no volume, flags 1..7 naming a read or a write error (F-LOG-3, F-BAD-2).
    if (entry.kind === DeltaLogEntryKind.badRange && (entry.volumeId !== 0 || entry.dataBlock < 1 || entry.dataBlock > 7 || (entry.dataBlock & 3) === 0)) {
      return `entry ${entryIndex} is malformed`;
    }
    if (entry.kind === DeltaLogEntryKind.carried) {
      // F-LOG-9: bytes carried for a remap's new block; none in a record flagged dataSynced.
      if ((flags & DeltaLogRecordFlag.dataSynced) !== 0) return `entry ${entryIndex} is malformed`;
      carriedByteCount += entry.lengthBlocks;
    }
    entries.push(entry);
  }
  if (carriedSlotsFor(carriedByteCount) !== carriedSlotCount) return `${carriedSlotCount} carried slots for ${carriedByteCount} carried bytes`;
  return { index: expect.index, sequence, time, flags, carriedSlotCount, entries, carriedBytes: [] };
}

/**
 * Reads the log that follows generation `baseGeneration`: the valid, in-sequence records from
 * slot 0 up to the first break. A read error is a ThinError (THIN_IO), not a break: an unreadable
 * record may hold an acknowledged flush.
 */
export async function readDeltaLog(file: BlockFile, options: { poolId: bigint; baseGeneration: number }): Promise<DeltaLogReadResult> {
  const ring = new Uint8Array(DELTA_LOG_BLOCK_COUNT * METADATA_BLOCK_SIZE_BYTES);
  try {
    await file.read(ring, DELTA_LOG_FIRST_BLOCK_NR * METADATA_BLOCK_SIZE_BYTES);
  } catch (error) {
    throw new ThinError('THIN_IO', `Cannot read the delta log on ${file.description}`, { cause: error });
  }
  const records: DeltaLogRecord[] = [];
  let position = emptyLogPosition(options.baseGeneration);
  let stoppedAt = 'the end of the ring';
  while (position.nextIndex < DELTA_LOG_BLOCK_COUNT) {
    const index = position.nextIndex;
    const bytes = ring.subarray(index * METADATA_BLOCK_SIZE_BYTES, (index + 1) * METADATA_BLOCK_SIZE_BYTES);
    const expect: DecodeRecordExpectation = {
      index,
      poolId: options.poolId,
      baseGeneration: options.baseGeneration,
      sequence: position.nextSequence,
      previousChecksum: position.previousChecksum,
    };
    let decoded = decodeRecord(bytes, expect);
    // A mirrored log: the record the chain expects may be whole in another copy (a rotten or torn sector in this one).
    if (typeof decoded === 'string' && isRedundant(file)) decoded = decodeFromCopies(file, bytes, expect) ?? decoded;
    if (typeof decoded === 'string') {
      stoppedAt = `slot ${index} (metadata block ${deltaLogBlockNr(index)}): ${decoded}`;
      break;
    }
    if (decoded.carriedSlotCount > 0) {
      const slots = ring.subarray((index + 1) * METADATA_BLOCK_SIZE_BYTES, (index + 1 + decoded.carriedSlotCount) * METADATA_BLOCK_SIZE_BYTES);
      let carried = carriedBytesOf(decoded, slots);
      if (carried === undefined && isRedundant(file)) carried = carriedFromCopies(file, decoded, slots);
      if (carried === undefined) {
        // The record was written with its bytes, in one flush that was not acknowledged (F-LOG-9).
        stoppedAt = `slot ${index} (metadata block ${deltaLogBlockNr(index)}): its carried bytes fail their checksum (a torn flush)`;
        break;
      }
      decoded.carriedBytes = carried;
    }
    records.push(decoded);
    position = {
      baseGeneration: options.baseGeneration,
      nextIndex: index + 1 + decoded.carriedSlotCount,
      nextSequence: position.nextSequence + 1,
      previousChecksum: checksumOf(bytes),
    };
  }
  return { records, position, stoppedAt };
}

/**
 * Tries each copy of a mirrored ring slot (F-MIR-4); the first that decodes as the expected record is
 * copied into `bytes` and the others are rewritten from it. undefined when none does.
 */
function decodeFromCopies(file: RedundantBlockFile, bytes: Uint8Array, expect: DecodeRecordExpectation): DeltaLogRecord | undefined {
  const offsetBytes = deltaLogBlockNr(expect.index) * METADATA_BLOCK_SIZE_BYTES;
  const copies: Uint8Array[] = [];
  for (let copyIndex = 0; copyIndex < file.copyCount; copyIndex++) {
    const copy = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
    try {
      file.readCopySync(copyIndex, copy, offsetBytes);
    } catch (error) {
      if (!isMediaError(error)) throw error;
    }
    copies.push(copy);
  }
  for (const [copyIndex, copy] of copies.entries()) {
    const decoded = decodeRecord(copy, expect);
    if (typeof decoded === 'string') continue;
    bytes.set(copy);
    copies.forEach((other, otherIndex) => {
      if (otherIndex !== copyIndex && !Buffer.from(other).equals(copy)) void file.repairCopy(otherIndex, copy, offsetBytes);
    });
    return decoded;
  }
  return undefined;
}

/** The bytes of each carried entry of `record`, cut from its slots; undefined when one fails its crc32c (F-LOG-9). */
function carriedBytesOf(record: DeltaLogRecord, slots: Uint8Array): Uint8Array[] | undefined {
  const carried: Uint8Array[] = [];
  let at = 0;
  for (const entry of record.entries) {
    if (entry.kind !== DeltaLogEntryKind.carried) continue;
    const bytes = slots.slice(at, at + entry.lengthBlocks);
    at += entry.lengthBlocks;
    if (crc32c(bytes) >>> 0 !== entry.volumeId) return undefined;
    carried.push(bytes);
  }
  return carried;
}

/** Tries each copy of a mirrored record's carried slots (F-MIR-4); the first whose bytes check is copied into `slots`. */
function carriedFromCopies(file: RedundantBlockFile, record: DeltaLogRecord, slots: Uint8Array): Uint8Array[] | undefined {
  const offsetBytes = deltaLogBlockNr(record.index + 1) * METADATA_BLOCK_SIZE_BYTES;
  for (let copyIndex = 0; copyIndex < file.copyCount; copyIndex++) {
    const copy = new Uint8Array(slots.length);
    try {
      file.readCopySync(copyIndex, copy, offsetBytes);
    } catch (error) {
      if (!isMediaError(error)) throw error;
      continue;
    }
    const carried = carriedBytesOf(record, copy);
    if (carried === undefined) continue;
    slots.set(copy);
    return carried;
  }
  return undefined;
}
