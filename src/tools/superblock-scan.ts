// Repair's last resort when no superblock copy is readable: find the trees by scanning.
//
// Every metadata block says what it is (type, tree kind, level), where it belongs (its own
// number), which pool wrote it and in which transaction. A commit writes a new root for every
// tree it changes, and every commit changes the metadata space map, so the newest generation is
// the transaction of the newest metadata space map root; the device tree and data space map roots
// of that generation are the newest roots of their kinds written by then. What the superblock
// alone knew — the data block size — must be given; the data block count follows from the data
// file's size, and the pool time and next volume id are taken from the volumes when they are
// rebuilt (restore's builder raises them).
//
// The scan works on a sparse copy of the metadata (only blocks that are not zero are copied), in
// a scratch directory beside the repair's target, with a superblock copy written for the chosen
// generation; repair then opens that copy like any pool. Generations are tried newest first, and
// the first whose device and mapping trees read without a corrupt node is taken (a commit cut
// short before its superblock leaves a newest generation whose blocks may be incomplete); when
// none reads whole, the newest that opens.
import fs from 'node:fs';
import path from 'node:path';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES, SUPERBLOCK_BLOCK_NRS } from '../constants.ts';
import { ThinError, isThinError } from '../errors.ts';
import { BlockType, TreeKind, TreeWalker, checksumOf, encodeSuperblock, getU64 } from '../pdata/index.ts';
import {
  DEVICE_TREE_KIND,
  POOL_FORMAT_VERSION,
  VOLUME_ID_MAX,
  encodePoolPayload,
  type DeviceValue,
} from '../pool/codecs.ts';
import { DATA_FILE_NAME, METADATA_FILE_NAME } from '../pool/files.ts';
import { PoolView } from './pool-view.ts';
import { deviceReadCodec, extentReadCodec } from '../pool/trees.ts';

/** Offsets in a metadata block header and a B+tree node header (docs/format.md). */
const HEADER_TYPE_OFFSET = 4;
const HEADER_BLOCK_NR_OFFSET = 8;
const HEADER_TRANSACTION_ID_OFFSET = 16;
const HEADER_POOL_ID_OFFSET = 24;
const NODE_TREE_KIND_OFFSET = 32;
const NODE_LEVEL_OFFSET = 34;
/** Bytes read from the metadata file at a time while scanning. */
const SCAN_CHUNK_BYTES = 1024 * 1024;
/** Generations tried, newest first, before the newest that opens is taken as it is. */
const GENERATIONS_TRIED_MAX = 8;

interface RootCandidate {
  blockNr: number;
  transactionId: number;
  level: number;
}

export interface ScannedPool {
  /** The scratch pool directory holding the copy with its rebuilt superblock. */
  dir: string;
  generation: number;
  /** What the scan had to assume, for the repair report. */
  notes: string[];
}

/**
 * Copies the metadata of `sourceDir` into `scratchDir` (created) and gives the copy a superblock
 * found by scanning, so that PoolView can open it. The caller removes `scratchDir`.
 */
export async function rebuildSuperblock(sourceDir: string, scratchDir: string, blockSizeBytes: number): Promise<ScannedPool> {
  fs.mkdirSync(scratchDir);
  const sourcePath = path.join(sourceDir, METADATA_FILE_NAME);
  const copyPath = path.join(scratchDir, METADATA_FILE_NAME);
  fs.symlinkSync(fs.realpathSync(path.join(sourceDir, DATA_FILE_NAME)), path.join(scratchDir, DATA_FILE_NAME));
  const metadataBytes = fs.statSync(sourcePath).size;
  const metadataBlockCount = Math.max(Math.floor(metadataBytes / METADATA_BLOCK_SIZE_BYTES), METADATA_BLOCK_COUNT_MIN);
  const dataBlockCount = Math.floor(fs.statSync(path.join(sourceDir, DATA_FILE_NAME)).size / blockSizeBytes);
  if (dataBlockCount < 1) throw new ThinError('THIN_INVALID', `Cannot rebuild the superblock: the data file holds no whole block of ${blockSizeBytes} bytes`);

  // One pass: copy every block that is not zero, and note the tree nodes that validate.
  const roots = new Map<number, Map<number, RootCandidate>>(); // tree kind → transaction → highest node
  const poolIds = new Map<bigint, number>();
  const nodes: Array<{ poolId: bigint; treeKind: number; candidate: RootCandidate }> = [];
  const source = fs.openSync(sourcePath, 'r');
  const copy = fs.openSync(copyPath, 'w');
  try {
    fs.ftruncateSync(copy, metadataBlockCount * METADATA_BLOCK_SIZE_BYTES);
    const chunk = Buffer.alloc(SCAN_CHUNK_BYTES);
    for (let offsetBytes = 0; offsetBytes < metadataBytes; offsetBytes += SCAN_CHUNK_BYTES) {
      const readBytes = fs.readSync(source, chunk, 0, SCAN_CHUNK_BYTES, offsetBytes);
      for (let at = 0; at + METADATA_BLOCK_SIZE_BYTES <= readBytes; at += METADATA_BLOCK_SIZE_BYTES) {
        const block = chunk.subarray(at, at + METADATA_BLOCK_SIZE_BYTES);
        if (block.every((byte) => byte === 0)) continue;
        const blockNr = (offsetBytes + at) / METADATA_BLOCK_SIZE_BYTES;
        if (SUPERBLOCK_BLOCK_NRS.includes(blockNr)) continue; // unreadable, or there would be no scan
        fs.writeSync(copy, block, 0, METADATA_BLOCK_SIZE_BYTES, offsetBytes + at);
        const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
        if (view.getUint32(0, true) !== checksumOf(block)) continue;
        if (getU64(view, HEADER_BLOCK_NR_OFFSET) !== blockNr) continue;
        const type = view.getUint16(HEADER_TYPE_OFFSET, true);
        if (type !== BlockType.btreeInternal && type !== BlockType.btreeLeaf) continue;
        const poolId = view.getBigUint64(HEADER_POOL_ID_OFFSET, true);
        poolIds.set(poolId, (poolIds.get(poolId) ?? 0) + 1);
        nodes.push({
          poolId,
          treeKind: view.getUint16(NODE_TREE_KIND_OFFSET, true),
          candidate: { blockNr, transactionId: getU64(view, HEADER_TRANSACTION_ID_OFFSET), level: view.getUint16(NODE_LEVEL_OFFSET, true) },
        });
      }
    }
    fs.fsyncSync(copy);
  } finally {
    fs.closeSync(source);
    fs.closeSync(copy);
  }
  const poolId = [...poolIds.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
  if (poolId === undefined) throw new ThinError('THIN_CORRUPT_SUPERBLOCK', `Cannot rebuild the superblock of ${sourceDir}: no readable tree node in its metadata`);
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
  const writeSuperblockFor = (generation: number): boolean => {
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
      deviceTreeRootTransactionId: deviceTreeRoot.transactionId,
      dataSpaceMapRootTransactionId: dataSpaceMapRoot.transactionId,
    });
    const copyIndex = generation % 2; // F-SB-4: a copy of the generation's parity
    const superblock = encodeSuperblock(
      { poolId, generation, metadataBlockCount, metadataSpaceMapRoot: metadataSpaceMapRoot.blockNr, metadataSpaceMapRootTransactionId: metadataSpaceMapRoot.transactionId, payload },
      copyIndex,
    );
    const fd = fs.openSync(copyPath, 'r+');
    try {
      for (const blockNr of SUPERBLOCK_BLOCK_NRS) fs.writeSync(fd, new Uint8Array(METADATA_BLOCK_SIZE_BYTES), 0, METADATA_BLOCK_SIZE_BYTES, blockNr * METADATA_BLOCK_SIZE_BYTES);
      fs.writeSync(fd, superblock, 0, superblock.length, SUPERBLOCK_BLOCK_NRS[copyIndex]! * METADATA_BLOCK_SIZE_BYTES);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    return true;
  };

  // Every commit writes a metadata space map root: their transactions are the generations.
  const generations = [...(roots.get(TreeKind.metadataSpaceMap)?.keys() ?? [])].sort((a, b) => b - a).slice(0, GENERATIONS_TRIED_MAX);
  let chosen: number | undefined;
  let written: number | undefined;
  const refusals: string[] = [];
  for (const generation of generations) {
    if (!writeSuperblockFor(generation)) continue;
    written = generation;
    let whole: boolean;
    try {
      whole = await readsWhole(scratchDir);
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
      `Cannot rebuild the superblock of ${sourceDir}: no generation found by scanning its metadata opens (${refusals.join('; ') || 'no tree roots found'})`,
    );
  }
  if (written !== chosen) writeSuperblockFor(chosen);
  return {
    dir: scratchDir,
    generation: chosen,
    notes: [
      `no superblock copy was readable: generation ${chosen} was found by scanning the metadata; data blocks of ${blockSizeBytes} bytes as given, ` +
        `${dataBlockCount} of them as the data file holds; the pool time and volume ids are taken from the volumes`,
    ],
  };
}

/** True when the device tree and every mapping tree of the pool in `dir` read without a corrupt node. */
async function readsWhole(dir: string): Promise<boolean> {
  const view = await PoolView.open(dir, { validateRoots: true });
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
