// `thinbd check`: verifies a pool's metadata against itself without writing anything.
//
// What is checked (docs/format.md F-POOL rules; thin_check does the same for dm-thin, except that
// it skips data reference counts — refs/dm-thin-interop.md §3 — which this checker counts):
// - the superblock copies (an invalid copy is a warning: a crash leaves one), a newer generation
//   passed over (a problem: it was committed and then damaged), the metadata file's size;
// - every metadata block reached: checksum, type, own location, pool id (pdata's read);
// - every B+tree: node invariants, key order and the bounds parents promise (pdata's walker);
// - the superblock payload, every device value and details block: names valid and unique, sizes,
//   times, ids, origins;
// - every volume's mappings: extents in order without overlap, within the volume's size and the
//   data space, below the data high-water mark, mapped block count as recorded;
// - reference counts of data blocks (one per distinct mapping leaf holding the block) and of
//   metadata blocks (one per parent entry or owner) against the space maps: no leak, no block
//   referenced but free, no miscount.
//
// It keeps going after a problem and names the place of each: a block number, a volume, a key or
// block range. A node found corrupt is reported once and its subtree skipped.
import { METADATA_BLOCK_HEADER_BYTES, METADATA_BLOCK_SIZE_BYTES } from '../constants.ts';
import { isThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { FileBlockFile } from '../io/file.ts';
import type { DirectoryLock } from '../io/lock.ts';
import {
  BTREE_BLOCK_TYPES,
  BlockType,
  SpaceMap,
  SubtreeShapes,
  blockProblem,
  TransactionManager,
  TreeKind,
  TreeWalker,
  refCountExtentCodec,
  type ValueCodec,
} from '../pdata/index.ts';
import {
  decodeDetails,
  decodePoolPayload,
  type DeviceValue,
  type PoolPayload,
} from '../pool/codecs.ts';
import type { CoverageRun } from '../pool/ranges.ts';
import { ReferenceRuns } from './reference-runs.ts';
import { readDeltaLog } from '../journal/replay.ts';
import { DATA_FILE_NAME, METADATA_FILE_NAME, lockPool, type PoolFiles } from '../pool/files.ts';
import { deviceReadCodec, extentReadCodec, staleBlockProblem, validatePayloadRoots } from '../pool/trees.ts';
import path from 'node:path';

export interface CheckProblem {
  /** Where: "superblock", "metadata block 17", "volume web (id 3), mapping leaf 812, blocks [40, 48)", … */
  where: string;
  message: string;
}

export interface CheckStats {
  transactionId: number;
  volumes: number;
  /** Mapping tree entries (extents) summed over volumes, shared leaves counted for each volume. */
  mappingEntries: number;
  /** Mapped virtual blocks summed over volumes. */
  mappedBlocks: number;
  /** Distinct data blocks referenced by some mapping. */
  dataBlocksReferenced: number;
  /** Data blocks the data space map counts as used. */
  dataBlocksUsed: number;
  metadataBlocksUsed: number;
  /** Distinct B+tree nodes visited. */
  metadataNodes: number;
  /** Delta-log records after the checked generation: flushes not yet rolled up into its trees. */
  logRecords: number;
}

export interface CheckReport {
  ok: boolean;
  problems: CheckProblem[];
  /** States a crash or a damaged copy leaves that open copes with (a superblock copy that does not validate, a fall back). */
  warnings: CheckProblem[];
  stats: CheckStats;
}

export interface CheckOptions {
  /** Problems listed before the rest are only counted (default 1000). */
  problemsMax?: number;
  /** Called now and then with mapped blocks walked so far and in all (for a progress bar). */
  onProgress?: (doneBlocks: number, totalBlocks: number) => void;
}

/** Extents between two progress calls: often enough for a bar, rare enough to cost nothing. */
const PROGRESS_EXTENTS_STEP = 65536;

const PROBLEMS_MAX_DEFAULT = 1000;

/** Checks the pool in a directory (taking its lock, opening read-only) or on given block files. */
export async function checkPool(target: string | PoolFiles, options: CheckOptions = {}): Promise<CheckReport> {
  if (typeof target !== 'string') return checkFiles(target, options);
  let lock: DirectoryLock | undefined;
  const opened: Partial<PoolFiles> = {};
  try {
    lock = lockPool(target);
    opened.metadata = await FileBlockFile.open(path.join(target, METADATA_FILE_NAME), { readOnly: true });
    opened.data = await FileBlockFile.open(path.join(target, DATA_FILE_NAME), { readOnly: true });
    return await checkFiles(opened as PoolFiles, options);
  } finally {
    await opened.metadata?.close().catch(() => undefined);
    await opened.data?.close().catch(() => undefined);
    lock?.release();
  }
}

/** What is wrong with a block in use that no walk reached, read as a tree node or details block; never-written blocks pass. */
function unreachedBlockProblem(file: BlockFile, blockNr: number, tm: TransactionManager): string | undefined {
  const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
  file.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
  if (bytes.every((byte) => byte === 0)) return undefined;
  return blockProblem(bytes, {
    blockNr,
    expectedType: [...BTREE_BLOCK_TYPES, BlockType.details],
    poolId: tm.poolId,
    transactionIdMax: tm.durableTransactionId,
  });
}

function isAllZeros(file: BlockFile, blockNr: number): boolean {
  const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
  file.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
  return bytes.every((byte) => byte === 0);
}

/** Summary of a mapping subtree, for ordering and counts per volume. */
interface Subtree {
  firstKey: number;
  /** One past the last virtual block mapped. */
  endKey: number;
  mappedBlocks: number;
  entries: number;
  maxTime: number;
}

class Checker {
  readonly problems: CheckProblem[] = [];
  readonly warnings: CheckProblem[] = [];
  #problemsMax: number;
  #omitted = 0;

  constructor(problemsMax: number) {
    this.#problemsMax = problemsMax;
  }

  problem(where: string, message: string): void {
    if (this.problems.length < this.#problemsMax) this.problems.push({ where, message });
    else this.#omitted += 1;
  }

  finish(): void {
    if (this.#omitted > 0) this.problems.push({ where: 'check', message: `${this.#omitted} more problems not listed` });
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

async function checkFiles(files: PoolFiles, options: CheckOptions): Promise<CheckReport> {
  const checker = new Checker(options.problemsMax ?? PROBLEMS_MAX_DEFAULT);
  const stats: CheckStats = {
    transactionId: 0,
    volumes: 0,
    mappingEntries: 0,
    mappedBlocks: 0,
    dataBlocksReferenced: 0,
    dataBlocksUsed: 0,
    metadataBlocksUsed: 0,
    metadataNodes: 0,
    logRecords: 0,
  };
  const report = (): CheckReport => {
    checker.finish();
    return { ok: checker.problems.length === 0, problems: checker.problems, warnings: checker.warnings, stats };
  };

  // ---- superblock ----
  let tm: TransactionManager;
  let payloadBytes: Uint8Array;
  try {
    let opened;
    try {
      opened = await TransactionManager.open(files.metadata, { readOnly: true, validatePayload: validatePayloadRoots });
    } catch (error) {
      // No generation's roots validate (a root every generation on disk shares is damaged): the
      // newest generation whose superblock and metadata space map do is still worth checking,
      // so that the walks below name the damaged node and everything else is judged.
      if (!isThinError(error, 'THIN_CORRUPT_SUPERBLOCK')) throw error;
      opened = await TransactionManager.open(files.metadata, { readOnly: true });
      checker.problem('superblock', `no generation's roots validate, generation ${opened.report.generation} checked as it is: ${error.message}`);
    }
    tm = opened.tm;
    payloadBytes = opened.payload;
    for (const copy of opened.report.copies) {
      // Until the first generation of the other parity is committed, its copies are rightly empty.
      const neverYetWritten = opened.report.generation < 2 && copy.copyIndex % 2 !== opened.report.generation % 2 && isAllZeros(files.metadata, copy.blockNr);
      if (copy.problem !== undefined && !neverYetWritten) checker.warnings.push({ where: `superblock copy ${copy.copyIndex} (metadata block ${copy.blockNr})`, message: copy.problem });
    }
    // A generation with a valid superblock copy whose trees do not validate was committed and
    // then damaged: a problem, unlike a copy a crash tore (a warning above).
    for (const rejected of opened.report.rejected) {
      checker.problem(`superblock generation ${rejected.generation}`, `passed over, generation ${opened.report.generation} checked instead: ${rejected.problem}`);
    }
  } catch (error) {
    checker.problem('superblock', messageOf(error));
    return report();
  }
  // Flushes after the checked generation may be delta-log records not yet rolled up into the
  // trees checked below; the next read-write open replays them (docs/format.md "Delta log").
  // Check reads no further than naming them: it never writes, so it never replays.
  try {
    const log = await readDeltaLog(files.metadata, { poolId: tm.poolId, baseGeneration: tm.generation });
    stats.logRecords = log.records.length;
    if (log.records.length > 0) {
      checker.warnings.push({
        where: 'delta log',
        message:
          `${log.records.length} record(s) after generation ${tm.generation} hold flushed changes not yet rolled up into ` +
          'the trees checked here; the next read-write open replays them (a crash or kill left them)',
      });
    }
  } catch (error) {
    checker.problem('delta log', messageOf(error));
  }
  // A metadata file shorter than the superblock says (cut short by a copy or a resize) reads as
  // zeros past its end: blocks there are lost, and the next commit could not write them.
  const metadataBytes = files.metadata.sizeBytes();
  if (metadataBytes < tm.metadataBlockCount * METADATA_BLOCK_SIZE_BYTES) {
    checker.problem(
      'metadata file',
      `${metadataBytes} bytes, shorter than the ${tm.metadataBlockCount} blocks of ${METADATA_BLOCK_SIZE_BYTES} bytes the superblock records (truncated?)`,
    );
  }
  stats.transactionId = tm.durableTransactionId;
  stats.metadataBlocksUsed = tm.metadataBlocksUsed;
  let payload: PoolPayload;
  try {
    payload = decodePoolPayload(payloadBytes, tm.metadataBlockCount);
  } catch (error) {
    checker.problem('superblock payload', messageOf(error));
    return report();
  }
  const blockSizeBytes = payload.blockSizeBytes;
  const walker = new TreeWalker(tm);
  const corruptWhere = (tree: string, problem: { blockNr: number; path: number[] }): string =>
    `${tree}, metadata block ${problem.blockNr} (path ${problem.path.join(' → ')})`;

  // ---- data space map ----
  let dataSpace: SpaceMap | undefined;
  walker.walk(payload.dataSpaceMapRoot, refCountExtentCodec(TreeKind.dataSpaceMap), {
    corrupt: (problem) => checker.problem(corruptWhere('data space map', problem), problem.error.message),
  });
  try {
    dataSpace = new SpaceMap(tm, payload.dataSpaceMapRoot, payload.dataBlockCount);
    stats.dataBlocksUsed = dataSpace.usedBlockCount;
  } catch (error) {
    checker.problem('data space map', `${messageOf(error)}; data reference counts are not checked`);
  }

  // ---- device tree ----
  const devices: Array<[number, DeviceValue]> = [];
  walker.walk(payload.deviceTreeRoot, deviceReadCodec, {
    leaf: (id, value) => devices.push([id, value]),
    corrupt: (problem) => checker.problem(corruptWhere('device tree', problem), problem.error.message),
  });
  devices.sort((a, b) => a[0] - b[0]);
  stats.volumes = devices.length;

  // ---- volumes ----
  const extentCodec = extentReadCodec(payload.dataBlockCount);
  const dataReferences = new ReferenceRuns();
  const names = new Map<string, number>();
  const ids = new Set(devices.map(([id]) => id));
  const corruptNodes = new Set<number>();
  // Each distinct leaf's summary, built as the walker hands over its entries (in key order): the
  // per-leaf figures summarize() needs, without keeping every extent in memory.
  const leafSummaries = new Map<number, Subtree>();
  let leafBlockNrNow = -1;
  let leafSummaryNow: Subtree | undefined;
  const shapes = new SubtreeShapes();
  const subtrees = new Map<number, Subtree | null>();
  const totalBlocks = devices.reduce((total, [, value]) => total + value.mappedBlockCount, 0);
  let doneBlocks = 0;
  let extentsWalked = 0;
  for (const [id, value] of devices) {
    let where = `volume id ${id}`;
    // Details block: one reference from the device value (F-POOL-30).
    walker.references.set(value.detailsBlock, walker.referenceCount(value.detailsBlock) + 1);
    // F-POOL-16: the blocks the value points at were written by the transactions it recorded.
    for (const [blockNr, type, transactionId, what] of [
      [value.mappingRoot, BTREE_BLOCK_TYPES, value.mappingRootTransactionId, 'mapping root'],
      [value.detailsBlock, BlockType.details, value.detailsTransactionId, 'details block'],
    ] as const) {
      let problem: string | undefined;
      try {
        problem = staleBlockProblem(tm, blockNr, type, transactionId, `the ${what} of volume id ${id}`);
      } catch {
        continue; // a block that cannot be read is reported where it is walked or decoded
      }
      if (problem !== undefined) {
        corruptNodes.add(blockNr);
        checker.problem(`volume id ${id}, ${what} (metadata block ${blockNr})`, problem);
      }
    }
    try {
      const block = tm.read(value.detailsBlock, BlockType.details);
      const details = decodeDetails(block.bytes.subarray(METADATA_BLOCK_HEADER_BYTES), `block ${value.detailsBlock}`);
      where = `volume ${details.name} (id ${id})`;
      const other = names.get(details.name);
      if (other !== undefined) checker.problem(where, `the name ${details.name} is also used by volume id ${other}`);
      else names.set(details.name, id);
      if (details.originId !== undefined && (details.originId >= payload.nextVolumeId || details.originId === id)) {
        checker.problem(where, `origin id ${details.originId} is not the id of an earlier volume`);
      }
      if (details.originId !== undefined && ids.has(details.originId) === false && details.originName === undefined) {
        checker.problem(where, `origin id ${details.originId} has no name recorded`);
      }
    } catch (error) {
      checker.problem(`${where}, details block ${value.detailsBlock}`, messageOf(error));
    }
    // F-POOL-10..12: ids and times the superblock has handed out (a device's transaction id is a label, F-POOL-9).
    if (id >= payload.nextVolumeId) checker.problem(where, `id ${id} is not below the next volume id ${payload.nextVolumeId}`);
    if (value.creationTime > payload.time || value.snapshottedTime > payload.time) {
      checker.problem(where, `creation time ${value.creationTime} or snapshotted time ${value.snapshottedTime} is after the pool time ${payload.time}`);
    }

    // Mapping tree: the walker reads and validates each distinct node once; the shapes it
    // records (shared subtrees included) are folded into per-subtree summaries below.
    walker.walk(value.mappingRoot, extentCodec, {
      node: shapes.node,
      revisit: shapes.revisit,
      leaf: (key, extent, leafBlockNr) => {
        const endKey = key + extent.lengthBlocks;
        if (leafBlockNr !== leafBlockNrNow || leafSummaryNow === undefined) {
          leafBlockNrNow = leafBlockNr;
          leafSummaryNow = { firstKey: key, endKey, mappedBlocks: extent.lengthBlocks, entries: 1, maxTime: extent.time };
          leafSummaries.set(leafBlockNr, leafSummaryNow);
        } else {
          // F-POOL-21: entries never overlap.
          if (leafSummaryNow.endKey > key) {
            checker.problem(
              `${where}, mapping node ${leafBlockNr}, virtual blocks [${key}, ${leafSummaryNow.endKey})`,
              `an extent ending at ${leafSummaryNow.endKey} overlaps the next one starting at ${key}`,
            );
          }
          leafSummaryNow.endKey = Math.max(leafSummaryNow.endKey, endKey);
          leafSummaryNow.mappedBlocks += extent.lengthBlocks;
          leafSummaryNow.entries += 1;
          leafSummaryNow.maxTime = Math.max(leafSummaryNow.maxTime, extent.time);
        }
        doneBlocks += extent.lengthBlocks;
        extentsWalked += 1;
        if (options.onProgress !== undefined && extentsWalked % PROGRESS_EXTENTS_STEP === 0) options.onProgress(Math.min(doneBlocks, totalBlocks), totalBlocks);
        // F-POOL-23: a data block's count has one reference per distinct leaf entry covering it.
        // Runs that continue one another are joined as they come (the sweep's sum is the same): a
        // volume written in order gives one run, not one per extent.
        dataReferences.add(extent.dataBlock, extent.dataBlock + extent.lengthBlocks);
        // F-POOL-40: every mapped data block lies below the high-water mark.
        if (extent.dataBlock + extent.lengthBlocks > payload.dataHighWaterMark) {
          checker.problem(
            `${where}, mapping leaf ${leafBlockNr}, virtual block ${key}`,
            `data blocks [${extent.dataBlock}, ${extent.dataBlock + extent.lengthBlocks}) reach past the high-water mark ${payload.dataHighWaterMark}`,
          );
        }
      },
      corrupt: (problem) => {
        corruptNodes.add(problem.blockNr);
        checker.problem(corruptWhere(`${where}, mapping tree`, problem), problem.error.message);
      },
    });
    options.onProgress?.(Math.min(doneBlocks, totalBlocks), totalBlocks);
    const summary = shapes.fold(
      value.mappingRoot,
      (leaf) => leafSummaries.get(leaf),
      (node, pieces) => combineSubtrees(node, pieces, where, checker),
      { memo: subtrees, skip: (blockNr) => corruptNodes.has(blockNr) },
    );
    const mapped = summary?.mappedBlocks ?? 0;
    stats.mappedBlocks += mapped;
    stats.mappingEntries += summary?.entries ?? 0;
    // F-POOL-15: the recorded mapped block count is the tree's.
    if (corruptNodes.size === 0 && mapped !== value.mappedBlockCount) {
      checker.problem(where, `maps ${mapped} blocks, but its device entry says ${value.mappedBlockCount}`);
    }
    if (summary !== undefined) {
      const sizeBlocks = Math.ceil(value.sizeBytes / blockSizeBytes);
      // F-POOL-14: no mapping past the volume's end.
      if (summary.endKey > sizeBlocks) {
        checker.problem(`${where}, virtual blocks [${sizeBlocks}, ${summary.endKey})`, `mapped past the end of the volume (${value.sizeBytes} bytes, ${sizeBlocks} blocks)`);
      }
      if (summary.maxTime > payload.time) checker.problem(where, `a mapping has time ${summary.maxTime}, after the pool time ${payload.time}`);
    }
  }
  stats.metadataNodes = walker.nodeCount;

  // ---- data reference counts (F-POOL-23) ----
  const expected = dataReferences.coverage();
  stats.dataBlocksReferenced = expected.reduce((total, run) => total + (run.end - run.begin), 0);
  if (dataSpace !== undefined) {
    const actual: CoverageRun[] = [];
    try {
      for (const extent of dataSpace.extents()) actual.push({ begin: extent.begin, end: extent.begin + extent.lengthBlocks, count: extent.count });
      const anyCorrupt = walker.corruptions.length > 0 || corruptNodes.size > 0;
      for (const difference of differences(expected, actual)) {
        // Mappings under a corrupt node were not seen: counts above what was seen cannot be judged.
        if (anyCorrupt && difference.actual > difference.expected) continue;
        const where = `data blocks [${difference.begin}, ${difference.end})`;
        if (difference.actual === 0) checker.problem(where, `referenced ${difference.expected} times by mappings but free in the data space map`);
        else if (difference.expected === 0) checker.problem(where, `leaked: the data space map counts ${difference.actual} references, no mapping refers to them`);
        else checker.problem(where, `the data space map counts ${difference.actual} references, mappings hold ${difference.expected}`);
      }
    } catch (error) {
      checker.problem('data space map', messageOf(error));
    }
  }

  // ---- metadata reference counts ----
  // The payload owns the device tree and data space map roots (counted by their walks above).
  try {
    const corruptionsBefore = walker.corruptions.length;
    const mismatches = walker.metadataReferenceMismatches(refCountExtentCodec(TreeKind.metadataSpaceMap) as ValueCodec<unknown>);
    for (const corrupt of walker.corruptions) corruptNodes.add(corrupt.blockNr);
    for (const mismatch of mismatches) {
      // Below a corrupt node nothing was counted: the counts there cannot be judged. But the
      // blocks no walk reached are still read, so that damage under an unreadable node is named.
      if (corruptNodes.size > 0 && mismatch.seen < mismatch.counted) {
        const problem = mismatch.seen === 0 ? unreachedBlockProblem(files.metadata, mismatch.blockNr, tm) : undefined;
        if (problem !== undefined) checker.problem(`metadata block ${mismatch.blockNr} (in use, reached by no tree walk: under an unreadable node?)`, problem);
        continue;
      }
      const where = `metadata block ${mismatch.blockNr}`;
      if (mismatch.seen === 0) checker.problem(where, `leaked: reference count ${mismatch.counted}, nothing refers to it`);
      else if (mismatch.counted === 0) checker.problem(where, `referenced ${mismatch.seen} times but free in the metadata space map`);
      else checker.problem(where, `reference count ${mismatch.counted}, references found ${mismatch.seen}`);
    }
    for (const corrupt of walker.corruptions.slice(corruptionsBefore)) {
      checker.problem(corruptWhere('metadata space map', corrupt), corrupt.error.message);
    }
  } catch (error) {
    checker.problem('metadata space map', messageOf(error));
  }
  return report();
}

/**
 * The summary of a mapping subtree from its children's (a shared subtree is summarized once, see
 * SubtreeShapes), checking that their extents follow one another without overlap (F-POOL-21).
 */
function combineSubtrees(blockNr: number, pieces: Subtree[], where: string, checker: Checker): Subtree | undefined {
  for (let index = 1; index < pieces.length; index += 1) {
    const previous = pieces[index - 1]!;
    const next = pieces[index]!;
    if (previous.endKey > next.firstKey) {
      checker.problem(
        `${where}, mapping node ${blockNr}, virtual blocks [${next.firstKey}, ${previous.endKey})`,
        `an extent ending at ${previous.endKey} overlaps the next one starting at ${next.firstKey}`,
      );
    }
  }
  if (pieces.length === 0) return undefined;
  return {
    firstKey: pieces[0]!.firstKey,
    endKey: Math.max(...pieces.map((piece) => piece.endKey)),
    mappedBlocks: pieces.reduce((total, piece) => total + piece.mappedBlocks, 0),
    entries: pieces.reduce((total, piece) => total + piece.entries, 0),
    maxTime: Math.max(...pieces.map((piece) => piece.maxTime)),
  };
}

/** Ranges where two sorted, disjoint run lists disagree on the count. */
function differences(expected: CoverageRun[], actual: CoverageRun[]): Array<{ begin: number; end: number; expected: number; actual: number }> {
  const points = new Set<number>();
  for (const run of [...expected, ...actual]) {
    points.add(run.begin);
    points.add(run.end);
  }
  const sorted = [...points].sort((a, b) => a - b);
  const result: Array<{ begin: number; end: number; expected: number; actual: number }> = [];
  let e = 0;
  let a = 0;
  for (let index = 0; index + 1 < sorted.length; index += 1) {
    const begin = sorted[index]!;
    const end = sorted[index + 1]!;
    while (e < expected.length && expected[e]!.end <= begin) e += 1;
    while (a < actual.length && actual[a]!.end <= begin) a += 1;
    const expectedCount = e < expected.length && expected[e]!.begin <= begin ? expected[e]!.count : 0;
    const actualCount = a < actual.length && actual[a]!.begin <= begin ? actual[a]!.count : 0;
    if (expectedCount === actualCount) continue;
    const last = result[result.length - 1];
    if (last !== undefined && last.end === begin && last.expected === expectedCount && last.actual === actualCount) last.end = end;
    else result.push({ begin, end, expected: expectedCount, actual: actualCount });
  }
  return result;
}

