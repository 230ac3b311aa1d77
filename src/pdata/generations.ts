// Which superblock generation to open (docs/format.md "Superblock", F-SB-6, F-SB-9, F-SB-10): the
// newest whose superblock copy, metadata space map and payload roots validate, with every copy
// that does not validate, every generation passed over and every generation a misplaced copy
// proves was written, reported instead of silently skipped. The transaction manager opens each
// candidate (openGeneration); this module decides which one stands.
import { METADATA_FORMAT_VERSIONS_READ } from '../constants.ts';
import { ThinError, isThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import type { BlockManager } from './block-manager.ts';
import { readSuperblockCopies, superblockCandidates, type SuperblockCopy, type SuperblockFields } from './superblock.ts';

export interface SuperblockCopyReport {
  copyIndex: number;
  blockNr: number;
  /** Generation the copy holds, when it validates. */
  generation?: number;
  /** What is wrong with the copy: it does not validate, or (with generation set) it is stale. */
  problem?: string;
}

export interface OpenReport {
  /** Generation opened (the committed transaction id). */
  generation: number;
  /**
   * Newest generation any valid copy holds, or any checksum-valid superblock of this pool names
   * wherever it was found (F-SB-10). Above `generation` means a fall back (a rollback).
   */
  newestGenerationSeen: number;
  /**
   * True when open went back past a generation that was written: one with a valid copy whose
   * roots did not validate, or one only a misplaced or otherwise unusable checksum-valid copy
   * proves (F-SB-10). Acknowledged state may be lost: the layer above must say so, never go on
   * as if nothing happened (G9).
   */
  fellBack: boolean;
  /** Every copy and what was wrong with it. */
  copies: SuperblockCopyReport[];
  /** Generations passed over (rejected, or proven written but unusable), newest first, and why. */
  rejected: Array<{ generation: number; problem: string }>;
  /**
   * True when anything is not as a clean commit leaves it: an invalid or stale copy, a rejected
   * superblock, or a fall back. A cut during a commit also leaves this set (a torn or missing
   * copy of the generation being written); only `fellBack` means acknowledged state may be lost.
   */
  degraded: boolean;
}

export interface OpenOptions {
  readOnly?: boolean;
  /**
   * Rewrite a bad copy of a mirrored block from the good one as it is met (default: unless
   * readOnly). The pool opens its metadata writable even when it serves read-only (replay changes
   * the trees in memory) and passes false then.
   */
  repairMetadata?: boolean;
  /** Only copies of this pool are accepted; by default the pool most copies name. */
  poolId?: bigint;
  cacheBlocksMax?: number;
  /**
   * Validates the payload's roots against the candidate generation (read its trees through tm).
   * Throw a ThinError (THIN_CORRUPT_*) to reject the generation; open then tries an older one.
   */
  validatePayload?: (payload: Uint8Array, tm: BlockManager) => void;
}

/** Errors that reject a generation (open tries an older one); any other error is thrown. */
const CORRUPTION_CODES = new Set(['THIN_CORRUPT_BLOCK', 'THIN_CORRUPT_NODE', 'THIN_CORRUPT_SUPERBLOCK', 'THIN_FORMAT']);

/**
 * Opens the newest generation of the metadata on `file` that validates, through openGeneration
 * (which throws a THIN_CORRUPT_* error for a generation it cannot open), and reports what was
 * passed over; throws THIN_CORRUPT_SUPERBLOCK naming every copy and generation when none opens.
 */
export async function openNewestGeneration<T extends BlockManager>(
  file: BlockFile,
  options: OpenOptions,
  openGeneration: (fields: SuperblockFields, transactionId: number) => T,
): Promise<{ tm: T; payload: Uint8Array; report: OpenReport }> {
  const copies = await readSuperblockCopies(file);
  const candidates = superblockCandidates(copies, options.poolId);
  const copyReports: SuperblockCopyReport[] = copies.map((copy) => ({
    copyIndex: copy.copyIndex,
    blockNr: copy.blockNr,
    ...(copy.fields !== undefined
      ? { generation: copy.fields.generation, ...(copy.mirrorProblem !== undefined ? { problem: copy.mirrorProblem } : {}) }
      : { problem: copy.problem ?? 'invalid' }),
  }));
  // Both copies of a pair are written by every commit of that parity; a valid copy older than its
  // partner missed a write (lost, misdirected, or a cut between the two): valid, but report it.
  for (const copy of copies) {
    const partner = copies.find((other) => other.copyIndex !== copy.copyIndex && other.copyIndex % 2 === copy.copyIndex % 2);
    if (copy.fields !== undefined && partner?.fields !== undefined && copy.fields.generation < partner.fields.generation) {
      copyReports[copy.copyIndex]!.problem =
        `holds generation ${copy.fields.generation} while copy ${partner.copyIndex} of the same pair holds ` +
        `${partner.fields.generation} (a lost or misdirected superblock write)`;
    }
  }
  const lost = lostGenerations(copies, candidates, options.poolId ?? candidates[0]?.poolId);
  const newestGenerationSeen = Math.max(candidates[0]?.generation ?? 0, ...lost.map((entry) => entry.generation));
  const rejected: Array<{ generation: number; problem: string }> = [];
  for (const candidate of candidates) {
    if (!METADATA_FORMAT_VERSIONS_READ.includes(candidate.formatVersion)) {
      // Never roll back past a generation written by another version: refuse instead.
      throw new ThinError(
        'THIN_FORMAT',
        `Metadata generation ${candidate.generation} on ${file.description} has format version ${candidate.formatVersion}; ` +
          `this build reads versions ${METADATA_FORMAT_VERSIONS_READ.join(', ')}`,
      );
    }
    try {
      const tm = openGeneration(candidate, nextTransactionId(candidate.generation, newestGenerationSeen));
      options.validatePayload?.(candidate.payload, tm);
      // A generation proven written (F-SB-10) but newer than this one is passed over too.
      const passedOver = [...rejected, ...lost.filter((entry) => entry.generation > candidate.generation)];
      const report: OpenReport = {
        generation: candidate.generation,
        newestGenerationSeen,
        fellBack: candidate.generation !== newestGenerationSeen,
        copies: copyReports,
        rejected: passedOver.sort((a, b) => b.generation - a.generation),
        degraded:
          candidate.generation !== newestGenerationSeen || rejected.length > 0 || copyReports.some((copy) => copy.problem !== undefined),
      };
      return { tm, payload: candidate.payload, report };
    } catch (error) {
      if (!isThinError(error) || !CORRUPTION_CODES.has(error.code)) throw error;
      rejected.push({ generation: candidate.generation, problem: error.message });
    }
  }
  const copyText = copyReports
    .map((copy) => `copy ${copy.copyIndex} (block ${copy.blockNr}): ${copy.problem ?? `generation ${copy.generation}`}`)
    .join('; ');
  const rejectedText = rejected.map((entry) => `generation ${entry.generation}: ${entry.problem}`).join('; ');
  throw new ThinError(
    'THIN_CORRUPT_SUPERBLOCK',
    `No usable superblock on ${file.description}: ${copyText}${rejectedText === '' ? '' : `; rejected ${rejectedText}`}`,
  );
}

/**
 * Generations that a checksum-valid superblock block of this pool proves were written, though no
 * copy of them is usable (none is a candidate): a copy misdirected onto another copy's place, or
 * one with a bad field under a valid checksum (F-SB-10). Newest first, each with what proves it.
 */
function lostGenerations(
  copies: readonly SuperblockCopy[],
  candidates: ReadonlyArray<{ generation: number }>,
  poolId: bigint | undefined,
): Array<{ generation: number; problem: string }> {
  const evidence = new Map<number, string[]>();
  for (const copy of copies) {
    const written = copy.written;
    if (written === undefined || written.poolId !== poolId) continue;
    if (candidates.some((candidate) => candidate.generation === written.generation)) continue;
    const found = evidence.get(written.generation) ?? [];
    found.push(`copy ${copy.copyIndex}'s place (block ${copy.blockNr}) holds a checksum-valid superblock of it that is unusable there (${copy.problem ?? 'invalid'})`);
    evidence.set(written.generation, found);
  }
  return [...evidence]
    .map(([generation, found]) => ({
      generation,
      problem: `it was written, but no copy of it is usable: ${found.join('; ')} (a misdirected or lost superblock write)`,
    }))
    .sort((a, b) => b.generation - a.generation);
}

/**
 * The transaction after opening generation `opened` when copies of generations up to `newest`
 * exist (F-SB-9). Normally opened + 1. After a fall back, generation numbers are never reused
 * (so two valid copies of one generation always hold the same commit), and the next generation
 * goes to the pair that does not hold `opened`, overwriting the rejected copies, never the ones
 * the pool now stands on.
 */
export function nextTransactionId(opened: number, newest: number): number {
  if (newest <= opened) return opened + 1;
  return (newest + 1) % 2 !== opened % 2 ? newest + 1 : newest + 2;
}
