// What the pool reports about itself: a volume's facts (info), each volume's mapped, exclusive and
// shared blocks counted as thin_ls counts them (usage), and the types of the pool's status.
import { BTREE_DEPTH_MAX } from '../constants.ts';
import { assert } from '../errors.ts';
import { BTREE_BLOCK_TYPES, type BlockManager, type BTree } from '../pdata/index.ts';
import { childAt, entryCount, isLeaf, valueOffset } from '../pdata/btree/node.ts';
import { DEVICE_FLAG_READ_ONLY } from './codecs.ts';
import type { Device } from './devices.ts';
import { coverageRuns, overlapLength, type CoverageRun, type Extent } from './ranges.ts';

/** read-write; read-only (opened so, or out of metadata space); needs-check (sticky until reopened: see core.ts). */
export type PoolMode = 'read-write' | 'read-only' | 'needs-check';

export interface VolumeInfo {
  name: string;
  id: number;
  sizeBytes: number;
  /** Name of the volume this one is a snapshot of (kept after that volume is removed). */
  origin?: string;
  originId?: number;
  readOnly: boolean;
  createdAt: string;
  labels: Record<string, string>;
}

export interface VolumeUsage {
  mappedBlocks: number;
  exclusiveBlocks: number;
  sharedBlocks: number;
}

export interface PoolCounters {
  /** Every metadata block written: tree nodes, space maps, superblock copies and delta log records. */
  metadataBlocksWritten: number;
  dataBytesWritten: number;
  syncs: number;
  /** Full commits (superblock generations written). */
  commits: number;
  /** Flushes asked for: flush calls and FUA writes. */
  flushes: number;
  /** Full commits that folded the delta log into the trees (while the log is on). */
  rollups: number;
  /** Ring blocks holding records of the current log (0 right after a rollup, or with the log off). */
  logBlocksUsed: number;
  /** Delta log records written. */
  logRecordsWritten: number;
}

export interface PoolStatus {
  /** The pool's id (16 hex digits), random at create: tells pools apart (archive streams record it). */
  poolId: string;
  blockSizeBytes: number;
  dataBlockCount: number;
  dataBlocksUsed: number;
  metadataBlockCount: number;
  metadataBlocksUsed: number;
  transactionId: number;
  volumeCount: number;
  mode: PoolMode;
  /** Why the pool is not read-write, when it is not. */
  modeReason?: string;
  metadataPath: string;
  dataPath: string;
  counters: PoolCounters;
}

export function volumeInfo(device: Device): VolumeInfo {
  const info: VolumeInfo = {
    name: device.details.name,
    id: device.id,
    sizeBytes: device.value.sizeBytes,
    readOnly: (device.value.flags & DEVICE_FLAG_READ_ONLY) !== 0,
    createdAt: device.details.createdAt,
    labels: { ...device.details.labels },
  };
  if (device.details.originName !== undefined) info.origin = device.details.originName;
  if (device.details.originId !== undefined) info.originId = device.details.originId;
  return info;
}

/**
 * thin_ls counting (thin-provisioning-tools): a data block referenced from more than one volume's
 * mappings is shared; the rest of a volume's mapped blocks are exclusive.
 */
export function volumeUsage(tm: BlockManager, mappingTree: BTree<Extent>, devices: readonly Device[]): Map<number, VolumeUsage> {
  // One pass over distinct leaves: a leaf shared by n volumes (after snapshots) is read once and
  // its blocks count n references, so the cost follows the distinct leaves, not the volumes.
  const leafMemo = new Map<number, number[]>();
  const leafExtents = new Map<number, Extent[]>();
  const owners = new Map<number, number>();
  const leavesByDevice = new Map<number, number[]>();
  for (const device of devices) {
    const leaves = leavesOf(tm, mappingTree, device.value.mappingRoot, leafMemo, leafExtents, BTREE_DEPTH_MAX);
    leavesByDevice.set(device.id, leaves);
    for (const leaf of leaves) owners.set(leaf, (owners.get(leaf) ?? 0) + 1);
  }
  const ranges: CoverageRun[] = [];
  for (const [leaf, extents] of leafExtents) {
    const count = owners.get(leaf) ?? 0;
    if (count === 0) continue;
    for (const extent of extents) ranges.push({ begin: extent.dataBlock, end: extent.dataBlock + extent.lengthBlocks, count });
  }
  const runs = coverageRuns(ranges);
  const perLeaf = new Map<number, { mappedBlocks: number; exclusiveBlocks: number }>();
  for (const [leaf, extents] of leafExtents) {
    let mappedBlocks = 0;
    let exclusiveBlocks = 0;
    for (const extent of extents) {
      mappedBlocks += extent.lengthBlocks;
      exclusiveBlocks += overlapLength(runs, extent.dataBlock, extent.dataBlock + extent.lengthBlocks, (run) => run.count === 1);
    }
    perLeaf.set(leaf, { mappedBlocks, exclusiveBlocks });
  }
  const usage = new Map<number, VolumeUsage>();
  for (const [id, leaves] of leavesByDevice) {
    let mappedBlocks = 0;
    let exclusiveBlocks = 0;
    for (const leaf of leaves) {
      const counts = perLeaf.get(leaf)!;
      mappedBlocks += counts.mappedBlocks;
      exclusiveBlocks += counts.exclusiveBlocks;
    }
    usage.set(id, { mappedBlocks, exclusiveBlocks, sharedBlocks: mappedBlocks - exclusiveBlocks });
  }
  return usage;
}

/** The leaves under a mapping tree node, in key order; memoized per node, so shared subtrees are read once. */
function leavesOf(
  tm: BlockManager,
  mappingTree: BTree<Extent>,
  blockNr: number,
  memo: Map<number, number[]>,
  leafExtents: Map<number, Extent[]>,
  levelsLeft: number,
): number[] {
  const known = memo.get(blockNr);
  if (known !== undefined) return known;
  assert(levelsLeft > 0, `mapping tree deeper than ${BTREE_DEPTH_MAX} levels at block ${blockNr}`);
  const block = tm.read(blockNr, BTREE_BLOCK_TYPES);
  const count = entryCount(block);
  let leaves: number[];
  if (isLeaf(block)) {
    const extents: Extent[] = [];
    for (let index = 0; index < count; index += 1) extents.push(mappingTree.codec.unpack(block.view, valueOffset(block, index)));
    leafExtents.set(blockNr, extents);
    leaves = [blockNr];
  } else {
    leaves = [];
    for (let index = 0; index < count; index += 1) {
      for (const leaf of leavesOf(tm, mappingTree, childAt(block, index), memo, leafExtents, levelsLeft - 1)) leaves.push(leaf);
    }
  }
  memo.set(blockNr, leaves);
  return leaves;
}

/** Distinct data blocks some mapping refers to: equals the data space map's used count. */
export function referencedDataBlocks(mappingTree: BTree<Extent>, devices: readonly Device[]): number {
  const ranges: CoverageRun[] = [];
  for (const device of devices) {
    for (const [, extent] of mappingTree.entries(device.value.mappingRoot)) {
      ranges.push({ begin: extent.dataBlock, end: extent.dataBlock + extent.lengthBlocks, count: 1 });
    }
  }
  return coverageRuns(ranges).reduce((total, run) => total + (run.end - run.begin), 0);
}
