// What the pool reports about itself: a volume's facts (info), each volume's mapped, exclusive and
// shared blocks counted as thin_ls counts them (usage), and the types of the pool's status.
import { SubtreeShapes, TreeWalker, type BlockManager, type BTree, type WalkVisitor } from '../pdata/index.ts';
import { DEVICE_FLAG_READ_ONLY } from './codecs.ts';
import type { PoolHealth } from './health.ts';
import type { Device } from './devices.ts';
import { coverageRuns, overlapLength, type CoverageRun, type Extent } from './ranges.ts';
import type { SpaceStatus } from './space.ts';
import type { SpaceState } from './space-monitor.ts';

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
  /** Of them, records that carried a remap's bytes instead of a data sync (docs/format.md F-LOG-9). */
  logRecordsCarrying: number;
  /** Of them, sync marks: records with no entries, written after a data sync while carried bytes could be replayed (F-LOG-9). */
  logSyncMarks: number;
  /** Writes to a block shared with a snapshot that copied it first. */
  copyOnWrites: number;
  /** Commits a write started because the open transaction held too many dirty metadata blocks. */
  dirtyLimitCommits: number;
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
  /** Generations pinned for readers (docs/format.md F-TX-8), oldest first: blocks freed after them wait. */
  pinnedGenerations: number[];
  metadataPath: string;
  dataPath: string;
  /** The data space's state: ok, low (below its low-water mark and it cannot grow back), full (a write found no block). */
  state: SpaceState;
  /** Data space the pool can still give writes: its free blocks, what it may still grow by, within what the host can back. */
  freeBytes: number;
  /** Data space in use (blocks some volume maps). */
  usedBytes: number;
  /** The data low-water mark: the setting ("10%", "off", a byte count) and what it comes to now. */
  lowWater: { setting: string; bytes: number };
  /** Both spaces in full, the stored settings, growth, waiting writes and space given back to the host. */
  space: SpaceStatus;
  counters: PoolCounters;
  /** Per device: errors, bad ranges, remaps, spare, latency, and a state with its rule (health.ts). */
  health: PoolHealth;
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
  // One walk over distinct nodes: a subtree shared by n volumes (after snapshots) is read once,
  // and its leaves' blocks count n references, so the cost follows the distinct leaves, not the volumes.
  const walker = new TreeWalker(tm);
  const shapes = new SubtreeShapes();
  const leafExtents = new Map<number, Extent[]>();
  const visitor: WalkVisitor<Extent> = {
    node: shapes.node,
    revisit: shapes.revisit,
    leaf: (_key, extent, leafBlockNr) => {
      const extents = leafExtents.get(leafBlockNr);
      if (extents === undefined) leafExtents.set(leafBlockNr, [extent]);
      else extents.push(extent);
    },
    // The engine's own trees: damage here is met as it would be by a read.
    corrupt: (problem) => {
      throw problem.error;
    },
  };
  const memo = new Map<number, number[] | null>();
  const owners = new Map<number, number>();
  const leavesByDevice = new Map<number, number[]>();
  for (const device of devices) {
    walker.walk(device.value.mappingRoot, mappingTree.codec, visitor);
    const leaves = shapes.fold(device.value.mappingRoot, (leaf) => [leaf], (_node, pieces) => pieces.flat(), { memo }) ?? [];
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
      const counts = perLeaf.get(leaf);
      if (counts === undefined) continue; // an empty leaf
      mappedBlocks += counts.mappedBlocks;
      exclusiveBlocks += counts.exclusiveBlocks;
    }
    usage.set(id, { mappedBlocks, exclusiveBlocks, sharedBlocks: mappedBlocks - exclusiveBlocks });
  }
  return usage;
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
