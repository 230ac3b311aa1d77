// `thinbd check`: verifies a pool's metadata against itself without writing anything.
//
// What is checked (docs/format.md F-POOL rules; thin-provisioning-tools' thin_check does the same
// for dm-thin, except that it does not count data references, which this checker does):
// - the superblock copies (an invalid copy is a warning: a crash leaves one), a newer generation
//   passed over (a problem: it was committed and then damaged), the metadata file's size, the
//   delta log (open.ts, shared with repair);
// - every metadata block reached: checksum, type, own location, pool id (pdata's read);
// - every B+tree: node invariants, key order and the bounds parents promise (pdata's walker);
// - the superblock payload, every device value and details block: names valid and unique, sizes,
//   times, ids, origins;
// - every volume's mappings: extents in order without overlap, within the volume's size and the
//   data space, below the data high-water mark, mapped block count as recorded;
// - the bad-range tree: keys, values, each range inside one block and no overlap (F-BAD-1..4);
// - reference counts of data blocks (one per distinct mapping leaf holding the block, one per bad
//   range in it) and of metadata blocks (one per parent entry or owner) against the space maps: no
//   leak, no block referenced but free, no miscount.
//
// It keeps going after a problem and names the place of each: a block number, a volume, a key or
// block range. A node found corrupt is reported once and its subtree skipped. The work is a few
// phases over one context, in this order: the data space map, the device tree, the volumes (and
// their mapping trees), the bad ranges, the data reference counts, the metadata reference counts.
import { METADATA_BLOCK_HEADER_BYTES, METADATA_BLOCK_SIZE_BYTES, PROGRESS_EXTENTS_STEP, SUPERBLOCK_BLOCK_NRS, DELTA_LOG_FIRST_BLOCK_NR, DELTA_LOG_BLOCK_COUNT } from '../constants.ts';
import { isMediaError } from '../io/media-error.ts';
import type { BlockFile } from '../io/block-file.ts';
import type { FileSystem } from '../io/file-system.ts';
import {
  BTREE_BLOCK_TYPES,
  BlockType,
  SpaceMap,
  SubtreeShapes,
  blockProblem,
  isZeroBlock,
  TreeKind,
  TreeWalker,
  refCountExtentCodec,
  type TransactionManager,
  type ValueCodec,
} from '../pdata/index.ts';
import { copyProblem, transactionIdOf } from '../pdata/scrub.ts';
import { badRangeCodec, decodeBadRangeKey } from '../pool/bad-ranges.ts';
import { decodeDetails, type DeviceValue, type PoolPayload } from '../pool/codecs.ts';
import type { PoolFiles } from '../pool/files.ts';
import type { CoverageRun } from '../pool/ranges.ts';
import { deviceReadCodec, extentColumnsReader, extentReadCodec, staleBlockProblem } from '../pool/trees.ts';
import { openPoolForTools, type FindingKind, type ToolsOpen } from './open.ts';
import type { Problem } from './problem.ts';
import { ReferenceRuns } from './reference-runs.ts';

export type CheckProblem = Problem;

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
  /** Bad ranges recorded (docs/format.md "Bad ranges"), per device. */
  badRanges: { data: number; metadata: number };
}

export interface CheckReport {
  ok: boolean;
  problems: Problem[];
  /** States a crash or a damaged copy leaves that open copes with (a superblock copy that does not validate, a fall back). */
  warnings: Problem[];
  stats: CheckStats;
}

export interface CheckOptions {
  /** Problems listed before the rest are only counted (default 1000). */
  problemsMax?: number;
  /** Called now and then with mapped blocks walked so far and in all (for a progress bar). */
  onProgress?: (doneBlocks: number, totalBlocks: number) => void;
  /** What opens a pool directory (default node:fs); the crash simulator passes its own. */
  fileSystem?: FileSystem;
}

const PROBLEMS_MAX_DEFAULT = 1000;

/** What the opener finds that open copes with: warnings. Every other finding is a problem. */
const WARNING_KINDS: ReadonlySet<FindingKind> = new Set(['superblock-copy', 'log-records']);

/** Checks the pool in a directory (taking its lock, opening read-only) or on given block files. */
export async function checkPool(target: string | PoolFiles, options: CheckOptions = {}): Promise<CheckReport> {
  const opened = await openPoolForTools(target, options.fileSystem === undefined ? {} : { fileSystem: options.fileSystem });
  try {
    return checkOpened(opened, options);
  } finally {
    await opened.view?.close();
  }
}

class Checker {
  readonly problems: Problem[] = [];
  readonly warnings: Problem[] = [];
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

/** Summary of a mapping subtree, for ordering and counts per volume. */
interface Subtree {
  firstKey: number;
  /** One past the last virtual block mapped. */
  endKey: number;
  mappedBlocks: number;
  entries: number;
  maxTime: number;
}

/** What the phases share. */
interface CheckContext {
  readonly checker: Checker;
  readonly stats: CheckStats;
  readonly options: CheckOptions;
  readonly tm: TransactionManager;
  readonly metadataFile: BlockFile;
  readonly payload: PoolPayload;
  /** One walker for every tree: it counts the metadata references the last phase compares. */
  readonly walker: TreeWalker;
  /** Nodes found corrupt or stale: below them nothing was counted. */
  readonly corruptNodes: Set<number>;
  /** Data references the mappings imply (F-POOL-23), one per distinct leaf entry. */
  readonly dataReferences: ReferenceRuns;
  dataSpace: SpaceMap | undefined;
  devices: Array<[number, DeviceValue]>;
}

function checkOpened(opened: ToolsOpen, options: CheckOptions): CheckReport {
  const checker = new Checker(options.problemsMax ?? PROBLEMS_MAX_DEFAULT);
  const stats: CheckStats = {
    transactionId: opened.tm?.durableTransactionId ?? 0,
    volumes: 0,
    mappingEntries: 0,
    mappedBlocks: 0,
    dataBlocksReferenced: 0,
    dataBlocksUsed: 0,
    metadataBlocksUsed: opened.tm?.metadataBlocksUsed ?? 0,
    metadataNodes: 0,
    logRecords: opened.logRecords,
    badRanges: { data: 0, metadata: 0 },
  };
  for (const finding of opened.findings) {
    if (WARNING_KINDS.has(finding.kind)) checker.warnings.push({ where: finding.where, message: finding.message });
    else checker.problem(finding.where, finding.message);
  }
  const { view } = opened;
  if (view !== undefined) {
    const context: CheckContext = {
      checker,
      stats,
      options,
      tm: view.tm,
      metadataFile: view.files.metadata,
      payload: view.payload,
      walker: new TreeWalker(view.tm),
      corruptNodes: new Set(),
      dataReferences: new ReferenceRuns(view.payload.dataBlockCount),
      dataSpace: undefined,
      devices: [],
    };
    checkDataSpaceMap(context);
    checkDeviceTree(context);
    checkVolumes(context);
    checkBadRanges(context);
    checkDataReferences(context);
    checkMetadataReferences(context);
  }
  // A copy of a mirrored block that fails where the other is good loses nothing: a warning, named
  // (docs/format.md F-MIR-2). The read-only mirror only reports it; scrub or a read-write open mends it.
  // A block whose every copy failed is not such a copy: the read that found it is a problem already.
  const mirror = view?.tm.mirror;
  if (view !== undefined) checkOtherCopies(view.tm, checker);
  const badCopies = mirror?.badCopies() ?? [];
  const badCopyCounts = new Map<number, number>();
  for (const event of badCopies) badCopyCounts.set(event.offsetBytes, (badCopyCounts.get(event.offsetBytes) ?? 0) + 1);
  for (const event of badCopies) {
    if (badCopyCounts.get(event.offsetBytes) === mirror!.copyCount) continue;
    checker.warnings.push({
      where: `metadata block ${Math.floor(event.offsetBytes / METADATA_BLOCK_SIZE_BYTES)}, copy ${event.copyIndex} (byte ${event.physicalOffsetBytes} of the metadata file)`,
      message: `${event.reason}; the other copy is good (\`thinbd scrub\` or a read-write open rewrites this one)`,
    });
  }
  checker.finish();
  return { ok: checker.problems.length === 0, problems: checker.problems, warnings: checker.warnings, stats };
}

/**
 * The copies the walks did not read. A read takes the first copy that passes (F-MIR-2), so a
 * damaged second copy of a block whose first is good is never read by the walks, nor by an open:
 * the redundancy is gone with no word, until the first copy fails too. Every block in use is
 * compared with its first copy, as scrub does, and a copy that differs is a warning naming what is
 * wrong with it; but the superblock copies, judged at open (F-MIR-3), and the delta log's ring, which a
 * served pool appends to while check reads and whose records are read from either copy (F-MIR-4). A block some copy of which the
 * walks already found bad is named by that read; one being written by a live pool is passed over.
 */
function checkOtherCopies(tm: TransactionManager, checker: Checker): void {
  const mirror = tm.mirror;
  if (mirror === undefined) return;
  const known = new Set(mirror.badCopies().map((event) => event.offsetBytes / METADATA_BLOCK_SIZE_BYTES));
  // Buffers, so equals() compares them as they are (Buffer.from of a Uint8Array copies it).
  const first = Buffer.alloc(METADATA_BLOCK_SIZE_BYTES);
  const other = Buffer.alloc(METADATA_BLOCK_SIZE_BYTES);
  for (let blockNr = 0; blockNr < tm.metadataBlockCount; blockNr++) {
    if (tm.refCount(blockNr) === 0 || SUPERBLOCK_BLOCK_NRS.includes(blockNr) || known.has(blockNr) || tm.awaitsWrite(blockNr)) continue;
    if (blockNr >= DELTA_LOG_FIRST_BLOCK_NR && blockNr < DELTA_LOG_FIRST_BLOCK_NR + DELTA_LOG_BLOCK_COUNT) continue;
    const offsetBytes = blockNr * METADATA_BLOCK_SIZE_BYTES;
    try {
      mirror.readCopySync(0, first, offsetBytes);
    } catch (error) {
      if (!isMediaError(error)) throw error;
      continue; // the walks' read of this block went to another copy and named it
    }
    for (let copyIndex = 1; copyIndex < mirror.copyCount; copyIndex++) {
      let problem: string | undefined;
      try {
        mirror.readCopySync(copyIndex, other, offsetBytes);
        if (other.equals(first)) continue;
        problem =
          copyProblem(tm, blockNr, other) ??
          `a valid block of transaction ${transactionIdOf(other)} where copy 0 holds transaction ${transactionIdOf(first)}`;
      } catch (error) {
        if (!isMediaError(error)) throw error;
        problem = `read failed: ${messageOf(error)}`;
      }
      checker.warnings.push({
        where: `metadata block ${blockNr}, copy ${copyIndex} (byte ${mirror.physicalPlaces(offsetBytes)[copyIndex]!.offsetBytes} of the metadata file)`,
        message: `${problem}; copy 0 is the one read (\`thinbd scrub\` rewrites this one from it)`,
      });
    }
  }
}


function corruptWhere(tree: string, problem: { blockNr: number; path: number[] }): string {
  return `${tree}, metadata block ${problem.blockNr} (path ${problem.path.join(' → ')})`;
}

/** The data space map's tree, and its extents (F-SM-1..4). */
function checkDataSpaceMap(context: CheckContext): void {
  const { checker, payload } = context;
  context.walker.walk(payload.dataSpaceMapRoot, refCountExtentCodec(TreeKind.dataSpaceMap), {
    corrupt: (problem) => checker.problem(corruptWhere('data space map', problem), problem.error.message),
  });
  try {
    context.dataSpace = new SpaceMap(context.tm, payload.dataSpaceMapRoot, payload.dataBlockCount);
    context.stats.dataBlocksUsed = context.dataSpace.usedBlockCount;
  } catch (error) {
    checker.problem('data space map', `${messageOf(error)}; data reference counts are not checked`);
  }
}

function checkDeviceTree(context: CheckContext): void {
  const devices: Array<[number, DeviceValue]> = [];
  context.walker.walk(context.payload.deviceTreeRoot, deviceReadCodec, {
    leaf: (id, value) => devices.push([id, value]),
    corrupt: (problem) => context.checker.problem(corruptWhere('device tree', problem), problem.error.message),
  });
  devices.sort((a, b) => a[0] - b[0]);
  context.devices = devices;
  context.stats.volumes = devices.length;
}

/** Every volume: its device value, details block and mapping tree. */
function checkVolumes(context: CheckContext): void {
  const { checker, tm, payload, walker, stats, options, corruptNodes } = context;
  const extentCodec = extentReadCodec(payload.dataBlockCount);
  const names = new Map<string, number>();
  const ids = new Set(context.devices.map(([id]) => id));
  // Each distinct leaf's summary, built as the walker hands over its entries (in key order): the
  // per-leaf figures the subtree summaries need, without keeping every extent in memory.
  const leafSummaries = new Map<number, Subtree>();
  const extentColumns = extentColumnsReader(payload.dataBlockCount);
  const shapes = new SubtreeShapes();
  const subtrees = new Map<number, Subtree | null>();
  const totalBlocks = context.devices.reduce((total, [, value]) => total + value.mappedBlockCount, 0);
  let doneBlocks = 0;
  let extentsWalked = 0;
  for (const [id, value] of context.devices) {
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
      leafColumns: {
        reader: extentColumns,
        visit: (columns, leafBlockNr) => {
          const { count, keys, dataBlocks, lengths, times } = columns;
          if (count === 0) return;
          const mark = payload.dataHighWaterMark;
          let endKey = 0;
          let mappedBlocks = 0;
          let maxTime = 0;
          for (let index = 0; index < count; index++) {
            const key = keys[index]!;
            const lengthBlocks = lengths[index]!;
            const dataBlock = dataBlocks[index]!;
            // F-POOL-21: entries never overlap.
            if (index > 0 && endKey > key) {
              checker.problem(
                `${where}, mapping node ${leafBlockNr}, virtual blocks [${key}, ${endKey})`,
                `an extent ending at ${endKey} overlaps the next one starting at ${key}`,
              );
            }
            endKey = Math.max(endKey, key + lengthBlocks);
            mappedBlocks += lengthBlocks;
            maxTime = Math.max(maxTime, times[index]!);
            // F-POOL-23: a data block's count has one reference per distinct leaf entry covering it.
            // Runs that continue one another are joined as they come (the sweep's sum is the same): a
            // volume written in order gives one run, not one per extent.
            context.dataReferences.add(dataBlock, dataBlock + lengthBlocks);
            // F-POOL-40: every mapped data block lies below the high-water mark.
            if (dataBlock + lengthBlocks > mark) {
              checker.problem(
                `${where}, mapping leaf ${leafBlockNr}, virtual block ${key}`,
                `data blocks [${dataBlock}, ${dataBlock + lengthBlocks}) reach past the high-water mark ${mark}`,
              );
            }
          }
          leafSummaries.set(leafBlockNr, { firstKey: keys[0]!, endKey, mappedBlocks, entries: count, maxTime });
          doneBlocks += mappedBlocks;
          const stepsBefore = Math.floor(extentsWalked / PROGRESS_EXTENTS_STEP);
          extentsWalked += count;
          if (options.onProgress !== undefined && Math.floor(extentsWalked / PROGRESS_EXTENTS_STEP) !== stepsBefore) {
            options.onProgress(Math.min(doneBlocks, totalBlocks), totalBlocks);
          }
        },
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
      const sizeBlocks = Math.ceil(value.sizeBytes / payload.blockSizeBytes);
      // F-POOL-14: no mapping past the volume's end.
      if (summary.endKey > sizeBlocks) {
        checker.problem(`${where}, virtual blocks [${sizeBlocks}, ${summary.endKey})`, `mapped past the end of the volume (${value.sizeBytes} bytes, ${sizeBlocks} blocks)`);
      }
      if (summary.maxTime > payload.time) checker.problem(where, `a mapping has time ${summary.maxTime}, after the pool time ${payload.time}`);
    }
  }
  stats.metadataNodes = walker.nodeCount;
}

/**
 * The bad-range tree (F-BAD-1..4): every range inside one block of its device, none overlapping;
 * each data range holds one reference to its data block (F-BAD-3).
 */
function checkBadRanges(context: CheckContext): void {
  const { checker, payload, tm } = context;
  const root = payload.badRangeRoot ?? 0;
  if (root === 0) return;
  const sectorsPerDataBlock = payload.blockSizeBytes / 512;
  const sectorsPerMetadataBlock = METADATA_BLOCK_SIZE_BYTES / 512;
  const mirrorOffsetBlocks = tm.mirrorOffsetBlocks;
  let previousEndKey = 0;
  context.walker.walk(root, badRangeCodec, {
    leaf: (key, value) => {
      const where = `bad-range tree, key ${key}`;
      const decoded = decodeBadRangeKey(key);
      if (decoded === undefined) {
        checker.problem(where, 'names no device (F-BAD-1)');
        return;
      }
      if (key < previousEndKey) checker.problem(where, `overlaps the range before it, which ends at key ${previousEndKey} (F-BAD-4)`);
      previousEndKey = key + value.lengthSectors;
      const { device, beginSector } = decoded;
      const endSector = beginSector + value.lengthSectors;
      const perBlock = device === 'data' ? sectorsPerDataBlock : sectorsPerMetadataBlock;
      const physical = Math.floor(beginSector / perBlock);
      if (Math.floor((endSector - 1) / perBlock) !== physical) {
        checker.problem(where, `${device} sectors [${beginSector}, ${endSector}) cross a block boundary (F-BAD-1)`);
        return;
      }
      if (device === 'data') {
        if (physical >= payload.dataBlockCount) {
          checker.problem(where, `data sectors [${beginSector}, ${endSector}) lie past the data's ${payload.dataBlockCount} blocks (F-BAD-1)`);
          return;
        }
        context.stats.badRanges.data += 1;
        context.dataReferences.add(physical, physical + 1);
        return;
      }
      let logical: number | undefined;
      if (physical < tm.metadataBlockCount) logical = physical;
      else if (mirrorOffsetBlocks !== 0 && physical >= mirrorOffsetBlocks && physical < mirrorOffsetBlocks + tm.metadataBlockCount) logical = physical - mirrorOffsetBlocks;
      if (logical === undefined) {
        checker.problem(where, `metadata sectors [${beginSector}, ${endSector}) lie in no copy of the metadata (F-BAD-1)`);
        return;
      }
      // A metadata range holds no reference: its block is withheld from allocation in memory (F-BAD-3).
      context.stats.badRanges.metadata += 1;
    },
    corrupt: (problem) => checker.problem(corruptWhere('bad-range tree', problem), problem.error.message),
  });
}

/** The data space map's counts against the references the mappings hold (F-POOL-23). */
function checkDataReferences(context: CheckContext): void {
  const { checker, walker, corruptNodes, dataSpace } = context;
  const expected = context.dataReferences.coverage();
  context.stats.dataBlocksReferenced = expected.reduce((total, run) => total + (run.end - run.begin), 0);
  if (dataSpace === undefined) return;
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

/** Every metadata block's count against the references the walks found (the payload owns the two roots walked first). */
function checkMetadataReferences(context: CheckContext): void {
  const { checker, walker, corruptNodes } = context;
  try {
    const corruptionsBefore = walker.corruptions.length;
    const mismatches = walker.metadataReferenceMismatches(refCountExtentCodec(TreeKind.metadataSpaceMap) as ValueCodec<unknown>);
    for (const corrupt of walker.corruptions) corruptNodes.add(corrupt.blockNr);
    for (const mismatch of mismatches) {
      // Below a corrupt node nothing was counted: the counts there cannot be judged. But the
      // blocks no walk reached are still read, so that damage under an unreadable node is named.
      if (corruptNodes.size > 0 && mismatch.seen < mismatch.counted) {
        const problem = mismatch.seen === 0 ? unreachedBlockProblem(context, mismatch.blockNr) : undefined;
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
}

/** What is wrong with a block in use that no walk reached, read as a tree node or details block; never-written blocks pass. */
function unreachedBlockProblem(context: CheckContext, blockNr: number): string | undefined {
  const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
  context.metadataFile.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
  if (isZeroBlock(bytes)) return undefined;
  return blockProblem(bytes, {
    blockNr,
    expectedType: [...BTREE_BLOCK_TYPES, BlockType.details],
    poolId: context.tm.poolId,
    transactionIdMax: context.tm.durableTransactionId,
  });
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

/**
 * Ranges where two sorted, disjoint run lists disagree on the count: one pass over both, from
 * boundary to boundary (a pool with snapshots has a run per block whose count changes).
 */
function differences(expected: CoverageRun[], actual: CoverageRun[]): Array<{ begin: number; end: number; expected: number; actual: number }> {
  const result: Array<{ begin: number; end: number; expected: number; actual: number }> = [];
  let e = 0;
  let a = 0;
  let position = Math.min(expected[0]?.begin ?? Number.POSITIVE_INFINITY, actual[0]?.begin ?? Number.POSITIVE_INFINITY);
  for (;;) {
    while (e < expected.length && expected[e]!.end <= position) e += 1;
    while (a < actual.length && actual[a]!.end <= position) a += 1;
    const expectedRun = expected[e];
    const actualRun = actual[a];
    if (expectedRun === undefined && actualRun === undefined) return result;
    // The next boundary: where a run in force ends, or where the next one begins.
    let next = Number.POSITIVE_INFINITY;
    if (expectedRun !== undefined) next = Math.min(next, expectedRun.begin > position ? expectedRun.begin : expectedRun.end);
    if (actualRun !== undefined) next = Math.min(next, actualRun.begin > position ? actualRun.begin : actualRun.end);
    const expectedCount = expectedRun !== undefined && expectedRun.begin <= position ? expectedRun.count : 0;
    const actualCount = actualRun !== undefined && actualRun.begin <= position ? actualRun.count : 0;
    if (expectedCount !== actualCount) {
      const last = result[result.length - 1];
      if (last !== undefined && last.end === position && last.expected === expectedCount && last.actual === actualCount) last.end = next;
      else result.push({ begin: position, end: next, expected: expectedCount, actual: actualCount });
    }
    position = next;
  }
}
