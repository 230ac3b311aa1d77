// Repair's last resort when no superblock copy is readable: find the trees by scanning.
//
// Every metadata block says what it is (type, tree kind, level), where it belongs (its own
// number), which pool wrote it and in which transaction (docs/format.md "Metadata block header",
// "B+tree node"). A commit writes a new root for every tree it changes, and every commit changes
// the metadata space map, so the newest generation is the transaction of the newest metadata
// space map root; the device tree and data space map roots of that generation are the newest
// roots of their kinds written by then. What the superblock alone knew — the data block size —
// must be given; the data block count follows from the data file's size, and the pool time and
// next volume id are taken from the volumes when they are rebuilt (restore's builder raises them).
//
// The scan reads the metadata through its BlockFile and writes a copy (only blocks that are not
// zero) into another BlockFile, with a superblock copy written for the chosen generation; repair
// then opens the copy like any pool. Both are block files, so the simulator can drive the scan.
// Generations are tried newest first, and the first whose device and mapping trees read without a
// corrupt node is taken (a commit cut short before its superblock leaves a newest generation whose
// blocks may be incomplete); when none reads whole, the newest that opens.
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES, SUPERBLOCK_BLOCK_NRS } from '../constants.ts';
import { ThinError, isThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { BTREE_BLOCK_TYPES, Block, TreeKind, TreeWalker, blockProblem, encodeSuperblock, isSuperblockBlockNr, isZeroBlock, nodeLevel, nodeTreeKind } from '../pdata/index.ts';
import { DEVICE_TREE_KIND, POOL_FORMAT_VERSION, VOLUME_ID_MAX, encodePoolPayload, type DeviceValue } from '../pool/codecs.ts';
import type { PoolFiles } from '../pool/files.ts';
import { deviceReadCodec, extentReadCodec } from '../pool/trees.ts';
import { PoolView } from './pool-view.ts';

/** Bytes read from the metadata file at a time while scanning. */
const SCAN_CHUNK_BYTES = 1024 * 1024;
/** Generations tried, newest first, before the newest that opens is taken as it is. */
const GENERATIONS_TRIED_MAX = 8;

interface RootCandidate {
  blockNr: number;
  transactionId: number;
  level: number;
}

export interface ScannedGeneration {
  generation: number;
  /** What the scan had to assume, for the repair report. */
  notes: string[];
}

/** The metadata blocks a copy of `source` must have. */
export function scanCopyBlockCount(source: BlockFile): number {
  return Math.max(Math.floor(source.sizeBytes() / METADATA_BLOCK_SIZE_BYTES), METADATA_BLOCK_COUNT_MIN);
}

/**
 * Copies the metadata of `source` into `copy` (at least scanCopyBlockCount blocks, reading as
 * zeros) and gives the copy a superblock found by scanning, so that a PoolView opens
 * `{ metadata: copy, data: source.data }`.
 */
export async function rebuildSuperblock(source: PoolFiles, copy: BlockFile, blockSizeBytes: number): Promise<ScannedGeneration> {
  const metadataBytes = source.metadata.sizeBytes();
  const metadataBlockCount = scanCopyBlockCount(source.metadata);
  const dataBlockCount = Math.floor(source.data.sizeBytes() / blockSizeBytes);
  if (dataBlockCount < 1) throw new ThinError('THIN_INVALID', `Cannot rebuild the superblock: the data file holds no whole block of ${blockSizeBytes} bytes`);
  if (copy.sizeBytes() < metadataBlockCount * METADATA_BLOCK_SIZE_BYTES) await copy.grow(metadataBlockCount * METADATA_BLOCK_SIZE_BYTES);

  // One pass: copy every block that is not zero, and note the tree nodes that validate.
  const roots = new Map<number, Map<number, RootCandidate>>(); // tree kind → transaction → highest node
  const poolIds = new Map<bigint, number>();
  const nodes: Array<{ poolId: bigint; treeKind: number; candidate: RootCandidate }> = [];
  const chunk = new Uint8Array(SCAN_CHUNK_BYTES);
  for (let offsetBytes = 0; offsetBytes < metadataBytes; offsetBytes += SCAN_CHUNK_BYTES) {
    await source.metadata.read(chunk, offsetBytes);
    const chunkBytes = Math.min(SCAN_CHUNK_BYTES, metadataBytes - offsetBytes);
    for (let at = 0; at + METADATA_BLOCK_SIZE_BYTES <= chunkBytes; at += METADATA_BLOCK_SIZE_BYTES) {
      const bytes = chunk.subarray(at, at + METADATA_BLOCK_SIZE_BYTES);
      if (isZeroBlock(bytes)) continue;
      const blockNr = (offsetBytes + at) / METADATA_BLOCK_SIZE_BYTES;
      if (isSuperblockBlockNr(blockNr)) continue; // unreadable, or there would be no scan
      await copy.write(bytes, offsetBytes + at);
      // F-BLK-1..3, F-BLK-6: a tree node that says it is this block; any pool, any transaction.
      if (blockProblem(bytes, { blockNr, expectedType: BTREE_BLOCK_TYPES }) !== undefined) continue;
      const block = new Block(blockNr, bytes.slice());
      poolIds.set(block.poolId, (poolIds.get(block.poolId) ?? 0) + 1);
      nodes.push({
        poolId: block.poolId,
        treeKind: nodeTreeKind(block),
        candidate: { blockNr, transactionId: block.transactionId, level: nodeLevel(block) },
      });
    }
  }
  await copy.sync();
  const poolId = [...poolIds.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
  if (poolId === undefined) throw new ThinError('THIN_CORRUPT_SUPERBLOCK', `Cannot rebuild the superblock of ${source.metadata.description}: no readable tree node in its metadata`);
  for (const { poolId: owner, treeKind, candidate } of nodes) {
    if (owner !== poolId) continue;
    let byTransaction = roots.get(treeKind);
    if (byTransaction === undefined) {
      byTransaction = new Map();
      roots.set(treeKind, byTransaction);
    }
    const known = byTransaction.get(candidate.transactionId);
    if (known === undefined || candidate.level > known.level) byTransaction.set(candidate.transactionId, candidate);
  }
  const newestBy = (treeKind: number, transactionIdMax: number): RootCandidate | undefined =>
    [...(roots.get(treeKind)?.values() ?? [])].filter((root) => root.transactionId <= transactionIdMax).sort((a, b) => b.transactionId - a.transactionId)[0];

  /** Writes the copy's one superblock for `generation`; false when a root of it is missing. */
  const writeSuperblockFor = async (generation: number): Promise<boolean> => {
    const metadataSpaceMapRoot = newestBy(TreeKind.metadataSpaceMap, generation);
    const deviceTreeRoot = newestBy(DEVICE_TREE_KIND, generation);
    const dataSpaceMapRoot = newestBy(TreeKind.dataSpaceMap, generation);
    if (metadataSpaceMapRoot === undefined || deviceTreeRoot === undefined || dataSpaceMapRoot === undefined) return false;
    const payload = encodePoolPayload({
      formatVersion: POOL_FORMAT_VERSION,
      blockSizeBytes,
      flags: 0,
      dataBlockCount,
      dataSpaceMapRoot: dataSpaceMapRoot.blockNr,
      deviceTreeRoot: deviceTreeRoot.blockNr,
      dataHighWaterMark: dataBlockCount,
      time: 0,
      nextVolumeId: VOLUME_ID_MAX,
      creationTimeMs: Date.now(),
      userTransactionId: 0, // lived only in the superblock copies, none of which is readable
      space: {}, // so did the space settings: the defaults
      deviceTreeRootTransactionId: deviceTreeRoot.transactionId,
      dataSpaceMapRootTransactionId: dataSpaceMapRoot.transactionId,
    });
    const copyIndex = generation % 2; // F-SB-4: a copy of the generation's parity
    const superblock = encodeSuperblock(
      {
        poolId,
        generation,
        metadataBlockCount,
        metadataSpaceMapRoot: metadataSpaceMapRoot.blockNr,
        metadataSpaceMapRootTransactionId: metadataSpaceMapRoot.transactionId,
        // The copy is plain: repair restores a pool from it, and the restored pool gets its own mirror.
        mirrorOffsetBlocks: 0,
        payload,
      },
      copyIndex,
    );
    for (const blockNr of SUPERBLOCK_BLOCK_NRS) await copy.write(new Uint8Array(METADATA_BLOCK_SIZE_BYTES), blockNr * METADATA_BLOCK_SIZE_BYTES);
    await copy.write(superblock, SUPERBLOCK_BLOCK_NRS[copyIndex]! * METADATA_BLOCK_SIZE_BYTES);
    await copy.sync();
    return true;
  };

  // Every commit writes a metadata space map root: their transactions are the generations.
  const generations = [...(roots.get(TreeKind.metadataSpaceMap)?.keys() ?? [])].sort((a, b) => b - a).slice(0, GENERATIONS_TRIED_MAX);
  const files: PoolFiles = { metadata: copy, data: source.data };
  let chosen: number | undefined;
  let written: number | undefined;
  const refusals: string[] = [];
  for (const generation of generations) {
    if (!(await writeSuperblockFor(generation))) continue;
    written = generation;
    let whole: boolean;
    try {
      whole = await readsWhole(files);
    } catch (error) {
      if (!isThinError(error)) throw error;
      refusals.push(`generation ${generation}: ${error.message}`);
      continue;
    }
    chosen ??= generation;
    if (whole) {
      chosen = generation;
      break;
    }
  }
  if (chosen === undefined) {
    throw new ThinError(
      'THIN_CORRUPT_SUPERBLOCK',
      `Cannot rebuild the superblock of ${source.metadata.description}: no generation found by scanning its metadata opens (${refusals.join('; ') || 'no tree roots found'})`,
    );
  }
  if (written !== chosen) await writeSuperblockFor(chosen);
  return {
    generation: chosen,
    notes: [
      `no superblock copy was readable: generation ${chosen} was found by scanning the metadata; data blocks of ${blockSizeBytes} bytes as given, ` +
        `${dataBlockCount} of them as the data file holds; the pool time and volume ids are taken from the volumes`,
    ],
  };
}

/** True when the device tree and every mapping tree of the pool on `files` read without a corrupt node. */
async function readsWhole(files: PoolFiles): Promise<boolean> {
  const view = await PoolView.open(files, { validateRoots: true });
  try {
    const walker = new TreeWalker(view.tm);
    const extentCodec = extentReadCodec(Number.MAX_SAFE_INTEGER);
    const devices: DeviceValue[] = [];
    walker.walk(view.payload.deviceTreeRoot, deviceReadCodec, { leaf: (_id, value) => devices.push(value) });
    for (const value of devices) walker.walk(value.mappingRoot, extentCodec);
    return walker.corruptions.length === 0;
  } finally {
    await view.close();
  }
}
