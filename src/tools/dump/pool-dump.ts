// `thinbd dump`: the producer side of the event stream for a thinbd pool. It reads the committed
// metadata through a read-only PoolView (the pool's lock held, nothing written) and calls the
// visitor — an XML, JSON or human writer — volume by volume in id order, each volume's extents
// in virtual block order, so memory stays flat however many mappings there are. Extents go a leaf
// at a time, as columns read in place (DumpVisitor.mappingColumns) to a visitor that takes them.
//
// What dm-thin cannot hold is reported, not hidden: a volume id above 2^24 − 1 (the kernel's
// MAX_DEV_ID) and a mapping time above 2^24 − 1 (dm-thin keeps 24 bits of time) are dumped as
// they are, with a warning that thin_restore would refuse or truncate them.
import { DM_THIN_DEV_ID_MAX, DM_THIN_MAPPING_TIME_MAX, PROGRESS_EXTENTS_STEP } from '../../constants.ts';

import { PoolView, type ViewTarget } from '../pool-view.ts';
import { isPending, type DumpVisitor, type VisitResult } from './events.ts';

export interface PoolDumpOptions {
  /** Dump only these volumes (names, or ids in decimal); default every volume. */
  volumes?: string[];
  /** Called now and then with mapped blocks dumped so far and in all (for a progress bar). */
  onProgress?: (doneBlocks: number, totalBlocks: number) => void;
}


export interface PoolDumpSummary {
  deviceCount: number;
  /** Extents read (before the writers' run merging). */
  extentCount: number;
  mappedBlockCount: number;
  /** Bad data ranges dumped (events.ts DumpBadRange). */
  badRangeCount: number;
  /** What a dm-thin pool could not hold as dumped. */
  warnings: string[];
}

export async function dumpPool(target: ViewTarget, visitor: DumpVisitor, options: PoolDumpOptions = {}): Promise<PoolDumpSummary> {
  const view = await PoolView.open(target, { requireLatest: true });
  try {
    return await dumpView(view, visitor, options);
  } finally {
    await view.close();
  }
}

export async function dumpView(view: PoolView, visitor: DumpVisitor, options: PoolDumpOptions = {}): Promise<PoolDumpSummary> {
  const summary: PoolDumpSummary = { deviceCount: 0, extentCount: 0, mappedBlockCount: 0, badRangeCount: 0, warnings: [] };
  const devices = options.volumes === undefined ? view.devices() : options.volumes.map((name) => view.device(name)).sort((a, b) => a.id - b.id);
  const totalBlocks = devices.reduce((total, device) => total + device.value.mappedBlockCount, 0);
  const progress = options.onProgress;
  await settle(visitor.superblockBegin(view.superblock()));
  for (const device of devices) {
    const begin = view.deviceBegin(device);
    if (device.id > DM_THIN_DEV_ID_MAX) {
      summary.warnings.push(`volume ${device.details.name} has id ${device.id}, above dm-thin's largest device id ${DM_THIN_DEV_ID_MAX}`);
    }
    await settle(visitor.deviceBegin(begin));
    let timeWarned = false;
    const warnTime = (time: number): void => {
      summary.warnings.push(`volume ${device.details.name} has mappings of time ${time}; dm-thin keeps 24 bits and would truncate it`);
      timeWarned = true;
    };
    const mappingColumns = visitor.mappingColumns?.bind(visitor);
    for (const columns of view.mappingLeaves(device)) {
      const { count, keys, dataBlocks, lengths, times } = columns;
      const extentsBefore = summary.extentCount;
      for (let index = 0; index < count; index++) {
        if (!timeWarned && times[index]! > DM_THIN_MAPPING_TIME_MAX) warnTime(times[index]!);
        summary.mappedBlockCount += lengths[index]!;
      }
      summary.extentCount += count;
      if (mappingColumns !== undefined) await settle(mappingColumns(columns));
      else {
        // A visitor without the column form gets one object per mapping (it may keep them).
        for (let index = 0; index < count; index++) {
          const result = visitor.mapping({ originBegin: keys[index]!, dataBegin: dataBlocks[index]!, length: lengths[index]!, time: times[index]! });
          if (isPending(result)) await result;
        }
      }
      if (progress !== undefined && Math.floor(summary.extentCount / PROGRESS_EXTENTS_STEP) !== Math.floor(extentsBefore / PROGRESS_EXTENTS_STEP)) {
        progress(summary.mappedBlockCount, totalBlocks);
      }
    }
    await settle(visitor.deviceEnd());
    summary.deviceCount += 1;
    progress?.(summary.mappedBlockCount, totalBlocks);
  }
  // A dump of some volumes only is still of the whole pool's data device: its bad ranges go too.
  for (const range of view.badDataRanges()) {
    await settle(visitor.badRange(range));
    summary.badRangeCount += 1;
  }
  await settle(visitor.superblockEnd());
  return summary;
}

async function settle(result: VisitResult): Promise<void> {
  if (isPending(result)) await result;
}
