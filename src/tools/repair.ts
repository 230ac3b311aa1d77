// `thinbd repair --pool DIR -o NEWDIR` and `thinbd check --repair`: rebuild a consistent pool from
// whatever of DIR's metadata is readable, and say what was lost.
//
// It reads DIR read-only under its lock: the generation the pool itself would open — the newest
// whose superblock copy, metadata space map and payload roots validate — or, when no generation's
// roots validate (a root every generation on disk shares is damaged), the newest whose superblock
// and metadata space map do. Then the device tree and every volume's mapping tree, each walked by
// pdata's TreeWalker, which reports a node that fails its checksum or breaks an invariant — with
// the key range its parent promised — and skips its subtree. Everything that was read becomes
// the event stream of dump/restore (events.ts) and goes to restore's builder, which writes fresh
// trees into NEWDIR and counts data references anew from the mappings (so a damaged data space
// map costs nothing). NEWDIR's `data` is a link to DIR's data: no data block is copied or moved,
// and the damaged pool is left as it was. In place (check --repair), the new metadata is built
// aside in DIR and swapped in by a rename (repairPoolInPlace).
//
// What is lost, each named: a newer generation passed over (everything it committed), volumes
// under an unreadable device tree node (by id range), the mappings under an unreadable mapping
// node (by volume and virtual block range; readable orphaned subtrees under it are kept), volume
// details that cannot be read (the volume is kept, named recovered-<id>), mappings past the data
// device, past a volume's end or overlapping an earlier one. When no superblock generation opens
// there is nothing to start from: repair says so, unless it is given the data block size, with
// which it finds the newest generation's roots by scanning the metadata (superblock-scan.ts).
//
// The bad data ranges are carried over (restore records them again, each holding its block, so a
// bad sector is never allocated); those under an unreadable node of the bad-range tree are named
// as lost, since their blocks may then be allocated again. Bad metadata ranges are left behind:
// they name sectors of the old metadata file, and the rebuilt pool writes a new one.
import path from 'node:path';
import { METADATA_BLOCK_HEADER_BYTES, METADATA_BLOCK_SIZE_BYTES, SECTOR_BYTES } from '../constants.ts';
import { ThinError, isThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { nodeFileSystem, type FileSystem } from '../io/file-system.ts';
import { processAlive } from '../util/process.ts';
import { BlockType, TreeWalker, type ValueCodec, type WalkVisitor } from '../pdata/index.ts';
import {
  DEVICE_FLAG_READ_ONLY,
  decodeDetails,
  validateVolumeName,
  type DeviceValue,
  type VolumeDetails,
} from '../pool/codecs.ts';
import { DATA_FILE_NAME, METADATA_FILE_NAME } from '../pool/files.ts';
import { checkPool, type CheckOptions, type CheckReport } from './check.ts';
import { rebuildSuperblock, scanCopyBlockCount } from './superblock-scan.ts';
import type { Extent } from '../pool/ranges.ts';
import { badRangeProblem, isPending, type DumpBadRange, type DumpVisitor, type Mapping, type VisitResult } from './dump/events.ts';
import { badRangeCodec, decodeBadRangeKey } from '../pool/bad-ranges.ts';
import { openPoolForTools, type FindingKind, type OpenFinding } from './open.ts';
import { PoolView, openReadOnly } from './pool-view.ts';
import type { Problem } from './problem.ts';
import { deviceReadCodec, extentReadCodec } from '../pool/trees.ts';
import { buildPool, removeDeadScratch, scratchPath, type RestoredVolume } from './restore.ts';

/** What repair could not carry over: where, and a sentence (the same shape as check's problems). */
export type RepairLoss = Problem;

/** What the opener finds that the rebuilt pool will lack: losses. */
const LOSS_KINDS: ReadonlySet<FindingKind> = new Set(['generation-passed-over', 'log-records', 'log-unreadable']);

export interface RepairReport {
  dir: string;
  volumes: RestoredVolume[];
  mappedBlockCount: number;
  /** Bad data ranges carried over (never allocated in the rebuilt pool either). */
  badRangeCount: number;
  /** Everything that could not be carried over; empty when the metadata was whole. */
  lost: RepairLoss[];
}

export interface RepairOptions {
  /** Size of the new metadata file; default the damaged pool's. */
  metadataSizeBytes?: number;
  /**
   * The data block size, for when no superblock copy is readable: the trees are then found by
   * scanning the metadata (superblock-scan.ts), which cannot tell the block size. Repair into a
   * new directory only.
   */
  blockSizeBytes?: number;
  /** What opens and makes pool directories and files (default node:fs); the crash simulator passes its own. */
  fileSystem?: FileSystem;
}

function range(begin: number | undefined, end: number | undefined): string {
  return `[${begin ?? 0}, ${end === undefined ? 'end' : end})`;
}

/**
 * Opens what repair starts from, as check opens it (open.ts): the generation the pool itself would
 * open, with what the rebuilt pool will lack listed as losses — a newer generation passed over
 * (what it committed is gone), and delta log records after the generation (repair rebuilds from
 * the trees and does not replay onto damaged ones; a pool that still opens read-write rolls them
 * up first, e.g. with thinbd pool status). When no generation opens, the trees are found by
 * scanning the metadata (superblock-scan.ts), given the data block size.
 */
async function openSource(
  fileSystem: FileSystem,
  sourceDir: string,
  lost: RepairLoss[],
  scan?: { blockSizeBytes: number; scratchDir: string },
): Promise<PoolView> {
  const opened = await openPoolForTools(sourceDir, { fileSystem });
  for (const finding of opened.findings) if (LOSS_KINDS.has(finding.kind)) lost.push(asLoss(finding, sourceDir));
  if (opened.view !== undefined) return opened.view;
  const error = opened.openError;
  if (!isThinError(error, 'THIN_CORRUPT_SUPERBLOCK')) throw error;
  if (scan === undefined) {
    throw new ThinError(
      'THIN_CORRUPT_SUPERBLOCK',
      `Cannot repair ${sourceDir}: no superblock generation opens, so there is nothing to rebuild from unless the trees are found by scanning the metadata, ` +
        `which needs the data block size (repair -o NEWDIR --block-size SIZE) (${error.message})`,
      { cause: error },
    );
  }
  // The source stays locked and open while its copy is scanned and read.
  const source = await openReadOnly(sourceDir, fileSystem);
  let copy: BlockFile | undefined;
  const release = async (): Promise<void> => {
    await copy?.close().catch(() => undefined);
    await source.release();
  };
  try {
    fileSystem.makeDirectory(scan.scratchDir);
    copy = await fileSystem.createFile(path.join(scan.scratchDir, METADATA_FILE_NAME), {
      sizeBytes: scanCopyBlockCount(source.files.metadata) * METADATA_BLOCK_SIZE_BYTES,
    });
    const scanned = await rebuildSuperblock(source.files, copy, scan.blockSizeBytes);
    for (const note of scanned.notes) lost.push({ where: 'superblock', message: note });
    const fromCopy = await openPoolForTools({ metadata: copy, data: source.files.data }, { release });
    for (const finding of fromCopy.findings) if (LOSS_KINDS.has(finding.kind)) lost.push(asLoss(finding, sourceDir));
    if (fromCopy.view === undefined) throw fromCopy.openError;
    return fromCopy.view;
  } catch (scanError) {
    await release();
    throw scanError;
  }
}

/**
 * An opener's finding as a loss of the rebuilt pool. Log records are replayed only by an open of
 * the pool itself: a read-write open rolls them up into its trees, an open after a fall back serves
 * them in needs-check mode without rolling them up. The rebuilt pool lacks them either way.
 */
function asLoss(finding: OpenFinding, sourceDir: string): RepairLoss {
  if (finding.kind !== 'log-records') return { where: finding.where, message: finding.message };
  const count = /^(\d+) record/.exec(finding.message)?.[1] ?? 'its';
  return {
    where: finding.where,
    message:
      `${count} record(s) of flushed changes after the generation rebuilt from are not in the rebuilt pool. ` +
      `An open of the pool replays them: to keep them, before repairing, open it read-write ('thinbd pool status --pool ${sourceDir}' rolls them up), ` +
      `or, where it opens needing a check (after a fall back), export its volumes ('thinbd export --pool ${sourceDir} NAME FILE')`,
  };
}

async function rebuild(view: PoolView, sourceDir: string, targetDir: string, options: RepairOptions, lost: RepairLoss[]): Promise<RepairReport> {
  const fileSystem = options.fileSystem ?? nodeFileSystem;
  const dataPath = fileSystem.realpath(path.join(sourceDir, DATA_FILE_NAME));
  const metadataSizeBytes = options.metadataSizeBytes ?? view.tm.metadataBlockCount * METADATA_BLOCK_SIZE_BYTES;
  // The space settings come along; the metadata grows as the rebuilt trees need (buildPool).
  const built = await buildPool({ dir: targetDir, data: { path: dataPath }, metadataSizeBytes, space: view.payload.space, fileSystem }, (visitor) => salvage(view, visitor, lost));
  return { dir: built.dir, volumes: built.volumes, mappedBlockCount: built.mappedBlockCount, badRangeCount: built.badRangeCount, lost };
}

/** Rebuilds the pool in sourceDir into a new pool directory targetDir; sourceDir is left as it was. */
export async function repairPool(sourceDir: string, targetDir: string, options: RepairOptions = {}): Promise<RepairReport> {
  const fileSystem = options.fileSystem ?? nodeFileSystem;
  const lost: RepairLoss[] = [];
  removeDeadScratch(fileSystem, path.resolve(targetDir), 'scan');
  const scratchDir = scratchPath(path.resolve(targetDir), 'scan');
  try {
    const view = await openSource(fileSystem, sourceDir, lost, options.blockSizeBytes === undefined ? undefined : { blockSizeBytes: options.blockSizeBytes, scratchDir });
    try {
      return await rebuild(view, sourceDir, targetDir, options, lost);
    } finally {
      await view.close();
    }
  } finally {
    fileSystem.remove(scratchDir, { recursive: true }); // the scan's copy of the metadata, if one was made
  }
}

export interface InPlaceRepairReport extends RepairReport {
  /** Where the damaged metadata file was kept. */
  savedMetadataPath: string;
}

/**
 * Repairs the pool in `dir` in place: the new metadata is built aside (in a directory inside
 * `dir`, so on the same file system), then swapped in by one rename while the pool's lock is
 * held, after the old file got a second name: at every moment `dir/metadata` is the old file or
 * the whole new one, and the old one stays as `metadata.bad-<time>`. The data file is not
 * touched. Metadata that is a block device or a link to one cannot be swapped by a rename:
 * repair into a new directory (`repairPool`) then.
 */
export async function repairPoolInPlace(dir: string, options: RepairOptions = {}): Promise<InPlaceRepairReport> {
  const fileSystem = options.fileSystem ?? nodeFileSystem;
  const metadataPath = path.join(dir, METADATA_FILE_NAME);
  if (fileSystem.kind(metadataPath, { noFollow: true }) !== 'file') {
    throw new ThinError(
      'THIN_INVALID',
      `Cannot repair ${dir} in place: its metadata is not a regular file (a device or a link); repair into a new directory with 'thinbd repair --pool ${dir} -o NEWDIR'`,
    );
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  removeDeadAsides(fileSystem, dir);
  const aside = path.join(dir, `repair-${stamp}-${process.pid}`);
  const savedMetadataPath = path.join(dir, `${METADATA_FILE_NAME}.bad-${stamp}`);
  const lost: RepairLoss[] = [];
  const view = await openSource(fileSystem, dir, lost);
  try {
    const report = await rebuild(view, dir, aside, options, lost);
    fileSystem.link(metadataPath, savedMetadataPath);
    fileSystem.rename(path.join(aside, METADATA_FILE_NAME), metadataPath);
    fileSystem.syncDirectory(dir);
    return { ...report, dir, savedMetadataPath };
  } finally {
    fileSystem.remove(aside, { recursive: true }); // the new pool's data link and lock file: never the data
    await view.close();
  }
}

/**
 * Removes what in-place repairs killed before their cleanup left in `dir`: `repair-<time>-<pid>`
 * (the new pool built, not yet swapped in or not yet removed) and its build directory
 * `repair-<time>-<pid>.tmp-<pid>-<random>`, when that pid's process is gone.
 */
function removeDeadAsides(fileSystem: FileSystem, dir: string): void {
  for (const name of fileSystem.list(dir)) {
    const match = /^repair-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d-\d{3}Z-(\d+)(?:\.tmp-\d+-[0-9a-f]{8})?$/.exec(name);
    if (match === null) continue;
    const pid = Number(match[1]);
    if (pid === process.pid || processAlive(pid)) continue;
    fileSystem.remove(path.join(dir, name), { recursive: true }); // its data link, never the data
  }
}

export interface CheckRepairReport {
  /** The check before any repair. */
  check: CheckReport;
  /** The repair, when the check found problems. */
  repair?: InPlaceRepairReport;
  /** The check of the repaired pool. */
  after?: CheckReport;
  /** True when the pool is consistent now (clean, or repaired and then checked clean). */
  ok: boolean;
}

/** `thinbd check --repair`: checks the pool in `dir` and, when it has problems, repairs it in place and checks it again. */
export async function checkAndRepairPool(dir: string, options: CheckOptions & RepairOptions = {}): Promise<CheckRepairReport> {
  const check = await checkPool(dir, options);
  if (check.ok) return { check, ok: true };
  const fileSystem = options.fileSystem === undefined ? {} : { fileSystem: options.fileSystem };
  const repair = await repairPoolInPlace(dir, { ...fileSystem, ...(options.metadataSizeBytes === undefined ? {} : { metadataSizeBytes: options.metadataSizeBytes }) });
  const after = await checkPool(dir, { ...fileSystem, ...(options.problemsMax === undefined ? {} : { problemsMax: options.problemsMax }) });
  return { check, repair, after, ok: after.ok };
}

/** Mappings found under one unreadable mapping node. */
interface Recovered {
  nodeCount: number;
  extents: Array<[number, Extent]>;
}

/**
 * An unreadable internal node hides subtrees that are themselves whole: the blocks under it are
 * still counted in the metadata space map, and nothing that was walked reaches them. Each such
 * orphaned mapping subtree (the topmost orphan nodes, walked and validated like any tree) is given
 * back to the volumes whose unreadable node promised a key range holding all of its keys — to
 * every volume that shares that node, and only when exactly one unreadable node can have held it.
 * The unreadable nodes themselves are never used (a stale or misdirected block is not trusted),
 * nor are orphans written after the generation repaired from. Returns, by volume id and
 * unreadable node, what was recovered.
 */
function recoverOrphans(
  view: PoolView,
  devices: Array<{ id: number; value: DeviceValue }>,
  extentCodec: ValueCodec<Extent>,
  lost: RepairLoss[],
): Map<number, Map<number, Recovered>> {
  const { tm } = view;
  const reached = new Set<number>();
  const unreadable = new Set<number>();
  const holes: Array<{ id: number; blockNr: number; keyBegin: number; keyEnd: number }> = [];
  for (const { id, value } of devices) {
    new TreeWalker(tm).walk(value.mappingRoot, extentCodec, {
      node: (visit) => reached.add(visit.blockNr),
      corrupt: (problem) => {
        unreadable.add(problem.blockNr);
        holes.push({ id, blockNr: problem.blockNr, keyBegin: problem.keyBegin ?? 0, keyEnd: problem.keyEnd ?? Number.POSITIVE_INFINITY });
      },
    });
  }
  const result = new Map<number, Map<number, Recovered>>();
  if (holes.length === 0) return result;

  // Every block still counted that no walk reached is walked as a root of its own: one that reads
  // as a mapping node (of the generation repaired from: pdata's read refuses a newer one) is a
  // candidate; a node reached under another candidate, first or again (revisit), is not a top.
  // Blocks that are not mapping nodes are reported corrupt to the scan, and left alone.
  const scan = new TreeWalker(tm);
  const candidates: number[] = [];
  const children = new Set<number>();
  const scanVisitor: WalkVisitor<Extent> = {
    node: (visit) => (visit.path.length === 1 ? candidates.push(visit.blockNr) : children.add(visit.blockNr)),
    revisit: (visit) => {
      if (visit.path.length > 1) children.add(visit.blockNr);
    },
  };
  for (let blockNr = 0; blockNr < tm.metadataBlockCount; blockNr += 1) {
    if (tm.refCount(blockNr) === 0 || reached.has(blockNr) || unreadable.has(blockNr)) continue;
    scan.walk(blockNr, extentCodec, scanVisitor);
  }
  for (const top of candidates.filter((blockNr) => !children.has(blockNr))) {
    const extents: Array<[number, Extent]> = [];
    let nodeCount = 0;
    new TreeWalker(tm).walk(top, extentCodec, { node: () => (nodeCount += 1), leaf: (key, extent) => extents.push([key, extent]) });
    if (extents.length === 0) continue;
    const keyBegin = extents[0]![0];
    // Not Math.max(...): an orphaned subtree may hold millions of extents, more than a call takes arguments.
    const keyEnd = extents.reduce((end, [key, extent]) => Math.max(end, key + extent.lengthBlocks), 0);
    const fits = holes.filter((hole) => hole.keyBegin <= keyBegin && keyEnd <= hole.keyEnd);
    const holders = new Set(fits.map((hole) => hole.blockNr));
    if (holders.size !== 1) {
      if (holders.size > 1) {
        lost.push({
          where: `orphaned mapping node ${top}`,
          message: `its mappings of virtual blocks [${keyBegin}, ${keyEnd}) fit under more than one unreadable node (${[...holders].join(', ')}), so they were not given to any volume`,
        });
      }
      continue;
    }
    for (const hole of fits) {
      let byNode = result.get(hole.id);
      if (byNode === undefined) {
        byNode = new Map();
        result.set(hole.id, byNode);
      }
      const found = byNode.get(hole.blockNr) ?? { nodeCount: 0, extents: [] };
      found.nodeCount += nodeCount;
      for (const extent of extents) found.extents.push(extent);
      byNode.set(hole.blockNr, found);
    }
  }
  return result;
}

async function settle(result: VisitResult): Promise<void> {
  if (isPending(result)) await result;
}

/** Walks what can be read of the pool in `view` into `visitor`, recording each loss. */
async function salvage(view: PoolView, visitor: DumpVisitor, lost: RepairLoss[]): Promise<void> {
  const { tm, payload } = view;
  // The rebuilt pool is consistent: it does not inherit a needs-check flag.
  await settle(visitor.superblockBegin({ ...view.superblock(), flags: 0 }));

  const devices: Array<[number, DeviceValue]> = [];
  new TreeWalker(tm).walk(payload.deviceTreeRoot, deviceReadCodec, {
    leaf: (id, value) => devices.push([id, value]),
    corrupt: (problem) =>
      lost.push({ where: `device tree, metadata block ${problem.blockNr}`, message: `volumes with ids in ${range(problem.keyBegin, problem.keyEnd)}: ${problem.error.message}` }),
  });

  // Bounded by 2^53 rather than the data space, so that one mapping past the data device costs
  // that mapping (dropped below, named) and not the whole leaf holding it.
  const extentCodec = extentReadCodec(Number.MAX_SAFE_INTEGER);
  const names = new Set<string>();
  const named: Array<{ id: number; value: DeviceValue; details: VolumeDetails | undefined }> = devices.map(([id, value]) => {
    try {
      const block = tm.read(value.detailsBlock, BlockType.details);
      return { id, value, details: decodeDetails(block.bytes.subarray(METADATA_BLOCK_HEADER_BYTES), `of volume id ${id} (block ${value.detailsBlock})`) };
    } catch (error) {
      if (!isThinError(error)) throw error;
      lost.push({ where: `volume id ${id}, details block ${value.detailsBlock}`, message: `its name, labels and origin (${error.message}); kept as recovered-${id}` });
      return { id, value, details: undefined };
    }
  });
  for (const device of named) if (device.details !== undefined) names.add(device.details.name);

  const recovered = recoverOrphans(view, named, extentCodec, lost);

  const blockSizeBytes = payload.blockSizeBytes;
  for (const { id, value, details } of named) {
    let name = details?.name ?? `recovered-${id}`;
    while (details === undefined && names.has(name)) name = `${name}+`;
    names.add(name);
    if (validateVolumeName(name) !== undefined) name = `recovered-${id}`;
    const label = `volume ${name} (id ${id})`;
    const extents: Array<[number, Extent]> = [];
    // One walker per volume: a leaf shared with a snapshot must be read for each volume holding it.
    new TreeWalker(tm).walk(value.mappingRoot, extentCodec, {
      leaf: (key, extent) => extents.push([key, extent]),
      corrupt: (problem) => {
        const found = recovered.get(id)?.get(problem.blockNr);
        const foundText =
          found === undefined ? '' : `; ${found.extents.length} mapping(s) under it were recovered from ${found.nodeCount} orphaned node(s) the metadata space map still counts`;
        lost.push({
          where: `${label}, mapping tree metadata block ${problem.blockNr}`,
          message: `the mappings of virtual blocks ${range(problem.keyBegin, problem.keyEnd)}: ${problem.error.message}${foundText}`,
        });
        if (found !== undefined) for (const extent of found.extents) extents.push(extent);
      },
    });
    extents.sort((left, right) => left[0] - right[0]);
    const endBlock = Math.ceil(value.sizeBytes / blockSizeBytes);
    const mappings: Mapping[] = [];
    let previousEnd = 0;
    for (const [key, extent] of extents) {
      if (key < previousEnd) {
        lost.push({ where: label, message: `the mapping of virtual blocks [${key}, ${key + extent.lengthBlocks}): it overlaps the one before` });
        continue;
      }
      if (extent.dataBlock + extent.lengthBlocks > payload.dataBlockCount) {
        lost.push({
          where: label,
          message: `the mapping of virtual blocks [${key}, ${key + extent.lengthBlocks}): its data blocks [${extent.dataBlock}, ${extent.dataBlock + extent.lengthBlocks}) lie past the data device (${payload.dataBlockCount} blocks)`,
        });
        continue;
      }
      let lengthBlocks = extent.lengthBlocks;
      if (key + lengthBlocks > endBlock) {
        lost.push({ where: label, message: `the mapping of virtual blocks [${Math.max(key, endBlock)}, ${key + lengthBlocks}): past the volume's end` });
        lengthBlocks = Math.max(0, endBlock - key);
        if (lengthBlocks === 0) continue;
      }
      mappings.push({ originBegin: key, dataBegin: extent.dataBlock, length: lengthBlocks, time: extent.time });
      previousEnd = key + lengthBlocks;
    }
    const mappedBlocks = mappings.reduce((total, mapping) => total + mapping.length, 0);
    await settle(
      visitor.deviceBegin({
        devId: id,
        mappedBlocks,
        transaction: value.transactionId,
        creationTime: value.creationTime,
        snapTime: value.snapshottedTime,
        volume: {
          name,
          sizeBytes: value.sizeBytes,
          readOnly: (value.flags & DEVICE_FLAG_READ_ONLY) !== 0,
          ...(details === undefined
            ? {}
            : { labels: details.labels, createdAt: details.createdAt, ...(details.originName === undefined ? {} : { origin: details.originName }) }),
        },
      }),
    );
    for (const mapping of mappings) await settle(visitor.mapping(mapping));
    await settle(visitor.deviceEnd());
  }
  for (const range of salvageBadRanges(view, lost)) await settle(visitor.badRange(range));
  await settle(visitor.superblockEnd());
}

/** The bad data ranges that can be read and hold together, in order; the rest named as lost. */
function salvageBadRanges(view: PoolView, lost: RepairLoss[]): DumpBadRange[] {
  const { tm, payload } = view;
  const root = payload.badRangeRoot ?? 0;
  if (root === 0) return [];
  const ranges: DumpBadRange[] = [];
  const blockSizeSectors = payload.blockSizeBytes / SECTOR_BYTES;
  new TreeWalker(tm).walk(root, badRangeCodec, {
    leaf: (key, value) => {
      const decoded = decodeBadRangeKey(key);
      if (decoded?.device !== 'data') return;
      const range = { beginSector: decoded.beginSector, lengthSectors: value.lengthSectors, flags: value.flags };
      const last = ranges[ranges.length - 1];
      const problem = badRangeProblem(range, blockSizeSectors, payload.dataBlockCount, last === undefined ? 0 : last.beginSector + last.lengthSectors);
      if (problem === undefined) ranges.push(range);
      else lost.push({ where: `bad-range tree`, message: `the bad data range of sectors [${range.beginSector}, ${range.beginSector + range.lengthSectors}): ${problem}` });
    },
    corrupt: (problem) => {
      lost.push({
        where: `bad-range tree, metadata block ${problem.blockNr}`,
        message: `the bad ranges under it (their data blocks may be allocated again): ${problem.error.message}`,
      });
    },
  });
  return ranges;
}
