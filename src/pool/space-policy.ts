// The pool's space settings and what they come to in blocks: the low-water marks, the limits
// growth stops at, the growth steps, and what a write does when the data space is full. The
// settings are stored in the superblock payload (docs/format.md "Pool superblock payload", F-POOL-50..54);
// an absent setting is the default, so a pool written before they existed, or a setting put back
// with `default`, follows the defaults of the build that opens it.
//
// Everything here is arithmetic on numbers the engine passes in (no I/O, no state), so the
// figures `pool status` prints and the decisions the engine takes are the same function, and a
// unit test can hold them to a table.
//
// What "available" means. The data file is sparse, so a free block of the pool may be a hole the
// host file system has yet to back: the blocks above the high-water mark, and blocks punched back
// to the host (hole-punch.ts). A pool whose host file system is full cannot write into those, so
// the space a pool can still provide is
//     min(free + growable,  backed free + what the host can still give)
// where growable is how far the file may still grow (data-max), and the host gives its free space
// minus a margin (HOST_FREE_MARGIN_*). On a block device every free block is backed and nothing
// grows. The low-water event compares this figure with the mark, so growth that moves space from
// "growable" to "free" raises no event: the event means "running out, and growing will not help".
import {
  DATA_GROW_STEP_PERCENT_DEFAULT,
  DATA_HIGH_WATER_MARK_STEP_BLOCKS,
  DATA_LOW_WATER_PERCENT_DEFAULT,
  HOST_FREE_MARGIN_BYTES_MAX,
  HOST_FREE_MARGIN_BYTES_MIN,
  HOST_FREE_MARGIN_PERCENT,
  METADATA_BLOCK_COUNT_MAX,
  METADATA_BLOCK_SIZE_BYTES,
  METADATA_GROW_STEP_BLOCKS_MIN,
  METADATA_GROW_STEP_PERCENT,
  METADATA_LOW_WATER_BLOCKS_MIN,
  METADATA_LOW_WATER_PERCENT_DEFAULT,
  WHEN_FULL_QUEUE_SECONDS_MAX,
} from '../constants.ts';
import { ThinError } from '../errors.ts';

/**
 * What a metadata change does to space: `grows` (a write's mapping, a new volume) must leave the
 * recovery reserve free; `frees` (remove, discard, resize) may use it (F-POOL-47).
 */
export type MetadataRoom = 'grows' | 'frees';

/** A low-water mark: a share of the space (percent, two decimals kept), a size, or none. */
export type LowWater = { percent: number } | { bytes: number } | 'off';

/** What a write that finds no free data block does: fail at once (ENOSPC), or wait up to N seconds. */
export type WhenFull = 'error' | { queueSeconds: number };

/** The stored settings; an absent one is the default (see the module comment). */
export interface SpaceSettings {
  /** Data low-water mark; default DATA_LOW_WATER_PERCENT_DEFAULT % of the data space. */
  lowWater?: LowWater;
  /** Metadata low-water mark; default METADATA_LOW_WATER_PERCENT_DEFAULT %, at least METADATA_LOW_WATER_BLOCKS_MIN. */
  metadataLowWater?: LowWater;
  /** Largest data file growth goes to; default: as far as the host file system allows (auto; files with no host file system, in memory, do not grow). */
  dataMaxBytes?: number;
  /** Largest metadata file growth goes to; default auto, never past METADATA_BLOCK_COUNT_MAX blocks. */
  metadataMaxBytes?: number;
  /** Data growth step; default DATA_GROW_STEP_PERCENT_DEFAULT % of the data space, at least a high-water step. */
  growStepBytes?: number;
  /** Default 'error'. */
  whenFull?: WhenFull;
  /** Automatic growth of the files (default on; never for a block device). */
  autoGrow?: boolean;
  /** Freed data blocks go back to the host file system (default on; regular files only). */
  punchHoles?: boolean;
}

/** A change of settings: a value, or 'default' to put one back to its default. Absent: unchanged. */
export type SpaceSettingsChange = { [K in keyof SpaceSettings]?: SpaceSettings[K] | 'default' };

const SETTING_NAMES: ReadonlySet<string> = new Set(['lowWater', 'metadataLowWater', 'dataMaxBytes', 'metadataMaxBytes', 'growStepBytes', 'whenFull', 'autoGrow', 'punchHoles']);

/**
 * Throws THIN_INVALID naming the first setting that is out of range or of the wrong shape (the
 * settings may come from the control socket as JSON).
 */
export function validateSpaceSettings(settings: SpaceSettings): void {
  const invalid = (message: string): ThinError => new ThinError('THIN_INVALID', message);
  if (typeof settings !== 'object' || settings === null) throw invalid('The space settings are not an object');
  for (const key of Object.keys(settings)) {
    if (!SETTING_NAMES.has(key)) throw invalid(`Unknown space setting ${JSON.stringify(key)}`);
  }
  for (const name of ['autoGrow', 'punchHoles'] as const) {
    const value: unknown = settings[name];
    if (value !== undefined && typeof value !== 'boolean') throw invalid(`The ${name} setting ${JSON.stringify(value)} is not true or false`);
  }
  for (const [name, mark] of [['low-water', settings.lowWater], ['metadata low-water', settings.metadataLowWater]] as const) {
    if (mark === undefined || mark === 'off') continue;
    const shape: unknown = mark;
    if (typeof shape !== 'object' || shape === null || (!('percent' in shape) && !('bytes' in shape))) {
      throw invalid(`The ${name} mark ${JSON.stringify(shape)} is not a share, a size or off`);
    }
    if ('percent' in mark) {
      if (!(Number.isFinite(mark.percent) && mark.percent > 0 && mark.percent <= 100 && Number.isInteger(Math.round(mark.percent * 100)))) {
        throw invalid(`The ${name} mark ${mark.percent}% is not a share from 0.01% to 100%`);
      }
    } else if (!(Number.isSafeInteger(mark.bytes) && mark.bytes > 0)) {
      throw invalid(`The ${name} mark ${mark.bytes} is not a byte count above 0`);
    }
  }
  for (const [name, bytes] of [['data-max', settings.dataMaxBytes], ['metadata-max', settings.metadataMaxBytes], ['grow-step', settings.growStepBytes]] as const) {
    if (bytes !== undefined && !(Number.isSafeInteger(bytes) && bytes > 0)) throw invalid(`The ${name} ${bytes} is not a byte count above 0`);
  }
  const whenFull: unknown = settings.whenFull;
  if (whenFull !== undefined && whenFull !== 'error') {
    if (typeof whenFull !== 'object' || whenFull === null || !('queueSeconds' in whenFull) || typeof whenFull.queueSeconds !== 'number') {
      throw invalid(`The when-full setting ${JSON.stringify(whenFull)} is not error or a queue`);
    }
    if (!(Number.isSafeInteger(whenFull.queueSeconds) && whenFull.queueSeconds >= 1 && whenFull.queueSeconds <= WHEN_FULL_QUEUE_SECONDS_MAX)) {
      throw invalid(`A queue of ${whenFull.queueSeconds} seconds is not from 1 to ${WHEN_FULL_QUEUE_SECONDS_MAX}`);
    }
  }
}

/** The settings after a change; the result is validated. */
export function changeSpaceSettings(settings: SpaceSettings, change: SpaceSettingsChange): SpaceSettings {
  if (typeof change !== 'object' || change === null) throw new ThinError('THIN_INVALID', 'The space settings change is not an object');
  const next: Record<string, unknown> = { ...settings };
  for (const [key, value] of Object.entries(change)) {
    if (value === undefined) continue;
    if (value === 'default') delete next[key];
    else next[key] = value;
  }
  const result = next as SpaceSettings;
  validateSpaceSettings(result);
  return result;
}

/** "10%", "64M"-style text for status and messages (sizes in bytes, the CLI formats them). */
export function describeLowWater(mark: LowWater): string {
  if (mark === 'off') return 'off';
  return 'percent' in mark ? `${mark.percent}%` : `${mark.bytes} bytes`;
}

export function describeWhenFull(whenFull: WhenFull): string {
  return whenFull === 'error' ? 'error' : `queue:${whenFull.queueSeconds}`;
}

/** Blocks of a low-water mark over a space of sizeBlocks blocks (0: never low). */
export function lowWaterBlocks(mark: LowWater, sizeBlocks: number, blockSizeBytes: number): number {
  if (mark === 'off') return 0;
  if ('percent' in mark) return Math.ceil((sizeBlocks * Math.round(mark.percent * 100)) / 10_000);
  return Math.ceil(mark.bytes / blockSizeBytes);
}

export function dataLowWater(settings: SpaceSettings): LowWater {
  return settings.lowWater ?? { percent: DATA_LOW_WATER_PERCENT_DEFAULT };
}

/** The data low-water mark in blocks. */
export function dataLowWaterBlocks(settings: SpaceSettings, dataBlockCount: number, blockSizeBytes: number): number {
  return lowWaterBlocks(dataLowWater(settings), dataBlockCount, blockSizeBytes);
}

/** The metadata low-water mark in metadata blocks (the default has a floor, METADATA_LOW_WATER_BLOCKS_MIN). */
export function metadataLowWaterBlocks(settings: SpaceSettings, metadataBlockCount: number): number {
  if (settings.metadataLowWater !== undefined) return lowWaterBlocks(settings.metadataLowWater, metadataBlockCount, METADATA_BLOCK_SIZE_BYTES);
  return Math.max(METADATA_LOW_WATER_BLOCKS_MIN, lowWaterBlocks({ percent: METADATA_LOW_WATER_PERCENT_DEFAULT }, metadataBlockCount, METADATA_BLOCK_SIZE_BYTES));
}

/** The host file system's space a pool leaves alone (HOST_FREE_MARGIN_*). */
export function hostMarginBytes(hostSizeBytes: number): number {
  return Math.min(HOST_FREE_MARGIN_BYTES_MAX, Math.max(HOST_FREE_MARGIN_BYTES_MIN, Math.floor((hostSizeBytes * HOST_FREE_MARGIN_PERCENT) / 100)));
}

/** What the host file system holding a pool's files reports (statfs), or nothing for a block device or memory. */
export interface HostFigures {
  /** Free bytes unprivileged users may take (statfs f_bavail). */
  freeBytes: number;
  /** The file system's size. */
  sizeBytes: number;
}

/** Host bytes a pool may still take: free minus the margin, never below 0; Infinity without a host. */
export function hostSpareBytes(host: HostFigures | undefined): number {
  if (host === undefined) return Infinity;
  return Math.max(0, host.freeBytes - hostMarginBytes(host.sizeBytes));
}

/** The data space as the engine sees it at one moment. */
export interface DataSpaceInputs {
  blockSizeBytes: number;
  /** Blocks in the data file (the pool's data block count). */
  blockCount: number;
  /** Blocks neither used nor reserved for a write in flight (blocks freed in the open transaction count). */
  freeBlocks: number;
  /** The high-water mark the next commit writes: every block below it has been written or allocated ahead. */
  highWaterMark: number;
  /** Free blocks below the mark that were punched back to the host (holes again). */
  punchedFreeBlocks: number;
  /** Whether the data file can grow at all (a regular file; not a block device). */
  canGrow: boolean;
  host: HostFigures | undefined;
}

export interface DataSpaceFigures {
  /** Blocks the pool can still give writes: see the module comment. */
  availableBlocks: number;
  /** Free blocks the host already backs (written or allocated ahead). */
  backedFreeBlocks: number;
  /** The block count growth may reach now: data-max, capped by what the host can back. */
  growLimitBlocks: number;
  lowWaterBlocks: number;
}

/** Largest data block count a pool may have: its byte size stays an exact number (F-POOL-4). */
function dataBlockCountMax(blockSizeBytes: number): number {
  return Math.floor((Number.MAX_SAFE_INTEGER - 1) / blockSizeBytes);
}

export function dataSpaceFigures(settings: SpaceSettings, inputs: DataSpaceInputs): DataSpaceFigures {
  const { blockCount, freeBlocks, blockSizeBytes } = inputs;
  const unbackedFree = Math.min(freeBlocks, Math.max(0, blockCount - inputs.highWaterMark) + inputs.punchedFreeBlocks);
  const backedFreeBlocks = freeBlocks - unbackedFree;
  const hostBlocks = Math.floor(hostSpareBytes(inputs.host) / blockSizeBytes);
  let growLimitBlocks = blockCount;
  // Without a host file system to ask (files in memory, the simulator) only an explicit data-max lets
  // the file grow; with --auto-grow off nothing grows it by itself, so growth is no space it can give.
  if (inputs.canGrow && settings.autoGrow !== false && (settings.dataMaxBytes !== undefined || inputs.host !== undefined)) {
    const explicitMax = settings.dataMaxBytes === undefined ? Infinity : Math.floor(settings.dataMaxBytes / blockSizeBytes);
    // The host must back the holes already promised before it backs new ones.
    const hostLimit = blockCount + Math.max(0, hostBlocks - unbackedFree);
    growLimitBlocks = Math.max(blockCount, Math.min(explicitMax, hostLimit, dataBlockCountMax(blockSizeBytes)));
  }
  const growable = growLimitBlocks - blockCount;
  const availableBlocks = Math.max(0, Math.min(freeBlocks + growable, backedFreeBlocks + hostBlocks));
  return { availableBlocks, backedFreeBlocks, growLimitBlocks, lowWaterBlocks: dataLowWaterBlocks(settings, blockCount, blockSizeBytes) };
}

/**
 * The data block count automatic growth goes to now, or undefined when it should not grow: it
 * grows below the low-water mark, or (`urgent`) when a write found no block it may take.
 */
export function dataGrowTarget(settings: SpaceSettings, inputs: DataSpaceInputs, figures: DataSpaceFigures, urgent = false): number | undefined {
  if (settings.autoGrow === false || !inputs.canGrow) return undefined;
  if (!urgent && inputs.freeBlocks >= figures.lowWaterBlocks) return undefined;
  const target = Math.min(inputs.blockCount + dataGrowStepBlocks(settings, inputs.blockCount, inputs.blockSizeBytes), figures.growLimitBlocks);
  return target > inputs.blockCount ? target : undefined;
}

/** The data growth step in blocks: the setting, or DATA_GROW_STEP_PERCENT_DEFAULT % and at least one high-water step. */
export function dataGrowStepBlocks(settings: SpaceSettings, blockCount: number, blockSizeBytes: number): number {
  if (settings.growStepBytes !== undefined) return Math.max(1, Math.ceil(settings.growStepBytes / blockSizeBytes));
  return Math.max(DATA_HIGH_WATER_MARK_STEP_BLOCKS, Math.ceil((blockCount * DATA_GROW_STEP_PERCENT_DEFAULT) / 100));
}

/** The metadata as the engine sees it. */
export interface MetadataSpaceInputs {
  blockCount: number;
  /** Free blocks beyond pdata's commit reserve (blocks freed in the open transaction do not count). */
  freeBlocks: number;
  canGrow: boolean;
  /** The most blocks the metadata may have (mirrored metadata: where its moved mirror may still begin, F-MIR-6); default METADATA_BLOCK_COUNT_MAX. */
  blockCountMax?: number;
  host: HostFigures | undefined;
}

export interface MetadataSpaceFigures {
  availableBlocks: number;
  growLimitBlocks: number;
  lowWaterBlocks: number;
}

export function metadataSpaceFigures(settings: SpaceSettings, inputs: MetadataSpaceInputs): MetadataSpaceFigures {
  const { blockCount, freeBlocks } = inputs;
  let growLimitBlocks = blockCount;
  if (inputs.canGrow && settings.autoGrow !== false && (settings.metadataMaxBytes !== undefined || inputs.host !== undefined)) {
    const explicitMax = settings.metadataMaxBytes === undefined ? METADATA_BLOCK_COUNT_MAX : Math.floor(settings.metadataMaxBytes / METADATA_BLOCK_SIZE_BYTES);
    const hostLimit = blockCount + Math.floor(hostSpareBytes(inputs.host) / METADATA_BLOCK_SIZE_BYTES);
    growLimitBlocks = Math.max(blockCount, Math.min(explicitMax, inputs.blockCountMax ?? METADATA_BLOCK_COUNT_MAX, hostLimit));
  }
  return {
    availableBlocks: freeBlocks + (growLimitBlocks - blockCount),
    growLimitBlocks,
    lowWaterBlocks: metadataLowWaterBlocks(settings, blockCount),
  };
}

/** The metadata block count automatic growth goes to now (below its low-water mark), or undefined. */
export function metadataGrowTarget(settings: SpaceSettings, inputs: MetadataSpaceInputs, figures: MetadataSpaceFigures, urgent = false): number | undefined {
  if (settings.autoGrow === false || !inputs.canGrow || (!urgent && inputs.freeBlocks >= figures.lowWaterBlocks)) return undefined;
  const step = Math.max(METADATA_GROW_STEP_BLOCKS_MIN, Math.ceil((inputs.blockCount * METADATA_GROW_STEP_PERCENT) / 100));
  const target = Math.min(inputs.blockCount + step, figures.growLimitBlocks);
  return target > inputs.blockCount ? target : undefined;
}
