// Replay of delta log records read at open (src/journal/replay.ts reads them): each entry is
// re-applied through the same mapping changes as the write that logged it, so the trees, the
// reference counts and the device values come out as they would have (F-LOG-4). A record that
// names what does not exist, or a data block that is not free, is corruption under a valid
// checksum: open fails naming the record.
import { ThinError } from '../errors.ts';
import type { SpaceMap } from '../pdata/index.ts';
import { DeltaLogEntryKind, type DeltaLogEntry } from '../journal/log.ts';
import type { DeltaLogRecord } from '../journal/replay.ts';
import { decodeBadRangeKey, type BadRanges } from './bad-ranges.ts';
import type { DeviceTable } from './devices.ts';
import type { MappingChanges } from './mapping-changes.ts';

export interface ReplayTarget {
  devices: DeviceTable;
  badRanges: BadRanges;
  mappings: MappingChanges;
  dataSpace: SpaceMap;
  blockSizeBytes: number;
  /** The high-water mark of the generation replayed onto: every logged block lies below it. */
  highWaterMarkDurable: number;
  /** Called after each record is applied. */
  applied(): void;
  /** The replay-skips-last-record mutant (mutants.ts): tests only. */
  skipLastRecord?: boolean;
}

/** Applies the records in order (the caller marks the engine as replaying, so nothing is logged again). */
export function replayLogRecords(target: ReplayTarget, records: readonly DeltaLogRecord[]): void {
  records.forEach((record, index) => {
    const where = `Delta log record ${record.sequence} (ring slot ${record.index})`;
    if (record.time !== target.devices.time) {
      throw new ThinError('THIN_CORRUPT_BLOCK', `${where} has pool time ${record.time}, but the pool's time is ${target.devices.time}`);
    }
    const skipped = target.skipLastRecord === true && index === records.length - 1;
    if (!skipped) for (const entry of record.entries) applyEntry(target, entry, where);
    target.applied();
  });
}

function applyEntry(target: ReplayTarget, entry: DeltaLogEntry, where: string): void {
  const { mappings } = target;
  const corrupt = (problem: string): ThinError => new ThinError('THIN_CORRUPT_BLOCK', `${where} ${problem}`);
  if (entry.kind === DeltaLogEntryKind.badRange) {
    // F-BAD-6: recorded as the pool records it, merged with what is there.
    const decoded = decodeBadRangeKey(entry.virtualBlock);
    if (decoded === undefined || !target.badRanges.contains(decoded.device, decoded.beginSector, decoded.beginSector + entry.lengthBlocks)) {
      throw corrupt(`records bad sectors at key ${entry.virtualBlock} (+${entry.lengthBlocks}) outside the pool's files`);
    }
    target.badRanges.record(decoded.device, decoded.beginSector, decoded.beginSector + entry.lengthBlocks, entry.dataBlock);
    return;
  }
  if (entry.kind === DeltaLogEntryKind.carried) {
    // F-LOG-9: the bytes are written by rebuildCarried (carried.ts); the remap before them in
    // this record moved a virtual block to dataBlock, which must be in use now.
    if (entry.virtualBlock + entry.lengthBlocks > target.blockSizeBytes || target.dataSpace.count(entry.dataBlock) === 0) {
      throw corrupt(`carries ${entry.lengthBlocks} bytes at byte ${entry.virtualBlock} of data block ${entry.dataBlock}, which is not a block in use of ${target.blockSizeBytes} bytes`);
    }
    return;
  }
  const device = target.devices.byId(entry.volumeId);
  if (device === undefined) throw corrupt(`names volume id ${entry.volumeId}, which does not exist`);
  const sizeBlocks = Math.ceil(device.value.sizeBytes / target.blockSizeBytes);
  if (entry.virtualBlock + entry.lengthBlocks > sizeBlocks) {
    throw corrupt(`changes virtual blocks [${entry.virtualBlock}, ${entry.virtualBlock + entry.lengthBlocks}) past the end of volume ${device.details.name}`);
  }
  const checkFree = (dataBlock: number): void => {
    if (!(dataBlock < target.highWaterMarkDurable) || target.dataSpace.count(dataBlock) !== 0 || target.dataSpace.isPendingFree(dataBlock)) {
      throw corrupt(`maps data block ${dataBlock}, which is not a free block below the high-water mark ${target.highWaterMarkDurable}`);
    }
  };
  if (entry.kind === DeltaLogEntryKind.unmap) {
    mappings.unmapRange(device, entry.virtualBlock, entry.virtualBlock + entry.lengthBlocks);
  } else if (entry.kind === DeltaLogEntryKind.map) {
    for (let index = 0; index < entry.lengthBlocks; index++) {
      const virtualBlock = entry.virtualBlock + index;
      const dataBlock = entry.dataBlock + index;
      if (mappings.lookup(device, virtualBlock) !== undefined) throw corrupt(`maps virtual block ${virtualBlock} of volume ${device.details.name}, which is mapped`);
      checkFree(dataBlock);
      mappings.insertMapping(device, virtualBlock, dataBlock);
    }
  } else {
    const mapping = mappings.lookup(device, entry.virtualBlock);
    if (mapping?.dataBlock !== entry.oldDataBlock) {
      throw corrupt(`moves virtual block ${entry.virtualBlock} of volume ${device.details.name} from data block ${entry.oldDataBlock}, but it maps ${mapping?.dataBlock ?? 'nothing'}`);
    }
    checkFree(entry.dataBlock);
    mappings.remap(device, entry.virtualBlock, entry.oldDataBlock, entry.dataBlock);
  }
}
