// Scrubbing the metadata (`thinbd scrub`): every metadata block in use is read in each of its
// copies, as it is, and the copies are compared (docs/format.md "Metadata mirror"). Copies that
// are equal are fine (both never written counts: a delta-log slot not used yet). Copies that
// differ or fail to read are judged by the block checks that need no knowledge of the block's
// place in a tree (F-BLK-1, F-BLK-3, F-BLK-5, F-BLK-6: checksum, own block number, pool); the
// newest valid copy (highest transaction id) is written over the others. Choosing the newest is
// what makes this safe beside a running pool: a commit writing a block writes the same bytes to
// both copies, so a scrub that reads between the two writes sees the new one win; and a rewrite
// of one copy is ordered before any later write of the same block (io/mirror.ts). Blocks the
// live pool has allocated but not written yet (its open or committing transaction) are passed
// over: their places on disk hold an older block or nothing, which says nothing of the metadata.
// A block found with no valid copy is judged again once the commits under way have finished.
//
// Reading is synchronous per block (readCopySync) and the caller's pacing (a rate in bytes per
// second) is applied between batches, so a live pool's requests interleave with the scrub.
import { METADATA_BLOCK_SIZE_BYTES } from '../constants.ts';
import { isMediaError } from '../io/media-error.ts';
import { BlockHeader, BlockType, blockProblem, getU64 } from './block.ts';
import type { TransactionManager } from './transaction.ts';

const ALL_BLOCK_TYPES = Object.values(BlockType);

export interface MetadataScrubReport {
  /** Blocks in use whose copies were read. */
  blocksRead: number;
  /** Blocks in use passed over because the live pool had not written them yet (TransactionManager.awaitsWrite). */
  blocksBeingWritten: number;
  /** Copies that failed to read or did not match the newest valid copy. */
  copiesBad: number;
  copiesRewritten: number;
  /** Blocks no copy of which is valid while the copies differ: named, nothing rewritten. */
  blocksLost: Array<{ blockNr: number; problems: string[] }>;
  /** Metadata kept in one copy: nothing to compare (blocks were still read, so EIO shows). */
  single: boolean;
  /** Blocks of a single-copy metadata file that could not be read. */
  unreadableBlocks: number[];
}

/** Waits as needed between batches; resolves false to stop (the pool is closing). */
export type ScrubPacer = (bytesJustRead: number) => Promise<boolean>;

/** Blocks read between two calls of the pacer. */
const BATCH_BLOCKS = 256;

export async function scrubMetadata(tm: TransactionManager, pace: ScrubPacer): Promise<MetadataScrubReport> {
  const report: MetadataScrubReport = {
    blocksRead: 0,
    blocksBeingWritten: 0,
    copiesBad: 0,
    copiesRewritten: 0,
    blocksLost: [],
    single: tm.mirror === undefined,
    unreadableBlocks: [],
  };
  const mirror = tm.mirror;
  const copyCount = mirror?.copyCount ?? 1;
  // Buffers, so equals() compares them as they are (Buffer.from of a Uint8Array copies it).
  const copies = Array.from({ length: copyCount }, () => Buffer.alloc(METADATA_BLOCK_SIZE_BYTES));
  const repairs: Array<Promise<boolean>> = [];

  /** Reads every copy of blockNr and mends the bad ones; returns what was wrong when no copy is valid. */
  const examine = (blockNr: number): string[] | undefined => {
    const offsetBytes = blockNr * METADATA_BLOCK_SIZE_BYTES;
    if (mirror === undefined) {
      try {
        tm.file.readSync(copies[0]!, offsetBytes);
      } catch (error) {
        if (!isMediaError(error)) throw error;
        report.unreadableBlocks.push(blockNr);
      }
      return undefined;
    }
    const readError: Array<string | undefined> = copies.map((copy, copyIndex) => {
      try {
        mirror.readCopySync(copyIndex, copy, offsetBytes);
        return undefined;
      } catch (error) {
        if (!isMediaError(error)) throw error;
        return `read failed: ${error instanceof Error ? error.message : String(error)}`;
      }
    });
    const allEqual = readError.every((error) => error === undefined) && copies.every((copy) => copy.equals(copies[0]!));
    if (allEqual) return undefined;
    const problems = copies.map((copy, copyIndex) => readError[copyIndex] ?? copyProblem(tm, blockNr, copy));
    let best: number | undefined;
    copies.forEach((copy, copyIndex) => {
      if (problems[copyIndex] !== undefined) return;
      if (best === undefined || transactionIdOf(copy) > transactionIdOf(copies[best]!)) best = copyIndex;
    });
    if (best === undefined) return problems.map((problem, copyIndex) => `copy ${copyIndex}: ${problem ?? 'valid'}`);
    const good = Buffer.from(copies[best]!); // a copy: the buffers are read into again (a Buffer's slice() is a view)
    copies.forEach((copy, copyIndex) => {
      if (copyIndex === best || (readError[copyIndex] === undefined && copy.equals(good))) return;
      report.copiesBad += 1;
      repairs.push(mirror.repairCopy(copyIndex, good, offsetBytes));
    });
    return undefined;
  };

  // Blocks no copy of which is valid, judged again once the commits under way have finished: a
  // block the pool was writing while it was read (a delta-log record between its two copies) is
  // whole by then.
  const suspects: number[] = [];
  let inBatch = 0;
  let stopped = false;
  for (let blockNr = 0; blockNr < tm.metadataBlockCount; blockNr++) {
    if (tm.refCount(blockNr) === 0) continue;
    if (tm.awaitsWrite(blockNr)) {
      report.blocksBeingWritten += 1;
      continue;
    }
    report.blocksRead += 1;
    if (examine(blockNr) !== undefined) suspects.push(blockNr);
    inBatch += 1;
    if (inBatch === BATCH_BLOCKS) {
      inBatch = 0;
      if (!(await pace(BATCH_BLOCKS * METADATA_BLOCK_SIZE_BYTES * copyCount))) {
        stopped = true;
        break;
      }
    }
  }
  if (suspects.length > 0 && !stopped) await tm.idle();
  for (const blockNr of suspects) {
    if (stopped || tm.refCount(blockNr) === 0 || tm.awaitsWrite(blockNr)) continue;
    const problems = examine(blockNr);
    if (problems === undefined) continue;
    report.blocksLost.push({ blockNr, problems });
    // Counted as a read through the mirror that found no good copy would be, so that the pool's
    // health says failing (H-FAIL-4), not "each served from the other copy".
    if (mirror !== undefined) mirror.counters.unrecoverableReads += 1;
  }
  for (const repaired of await Promise.all(repairs)) if (repaired) report.copiesRewritten += 1;
  if (inBatch > 0) await pace(inBatch * METADATA_BLOCK_SIZE_BYTES * copyCount);
  return report;
}

/**
 * What is wrong with one copy of metadata block `blockNr` judged alone, by the checks that need
 * no knowledge of its place in a tree (F-BLK-1, F-BLK-3, F-BLK-5, F-BLK-6), or undefined.
 */
export function copyProblem(tm: TransactionManager, blockNr: number, bytes: Uint8Array): string | undefined {
  return blockProblem(bytes, { blockNr, expectedType: ALL_BLOCK_TYPES, poolId: tm.poolId });
}

/** The transaction that wrote a block (its header's), to tell the newer of two valid copies. */
export function transactionIdOf(bytes: Uint8Array): number {
  return getU64(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), BlockHeader.transactionIdOffset);
}
