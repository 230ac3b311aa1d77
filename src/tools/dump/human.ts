// thin_dump -f human_readable, as thin-provisioning-tools 0.9.0 prints it (thin-provisioning-tools 0.9.0
// human_readable_format.cc): a superblock line, five lines per device, then one line per run —
// `    (0..9) -> (100..109), 0` for a range (inclusive ends), `    5 -> 600, 1` for one block —
// and a blank line after each device. thinbd's volume facts, when present, follow the device's
// `snap time:` line as `name:`, `size_bytes:`, `origin:`, `read_only:` and `labels:` lines.
// The pool's bad data ranges follow the last device, one line each:
// `bad data sectors: (2048..2055), read error, relocated` (inclusive ends, as the runs).
import { BadRangeFlag } from '../../pool/bad-ranges.ts';
import type { DeviceBegin, DumpBadRange, Mapping, SuperblockBegin } from './events.ts';
import { TextDumpWriter } from './text-writer.ts';

export class HumanDumpWriter extends TextDumpWriter {
  protected override superblockBeginText(sb: SuperblockBegin): string {
    const snap = sb.metadataSnap === undefined ? '' : `, ${sb.metadataSnap}`;
    return `begin superblock: "${sb.uuid}", ${sb.time}, ${sb.transaction}, ${sb.flags}, ${sb.version}, ${sb.dataBlockSizeSectors}, ${sb.nrDataBlocks}${snap}\n`;
  }

  protected override deviceBeginText(device: DeviceBegin): string {
    let text =
      `device: ${device.devId}\nmapped_blocks: ${device.mappedBlocks}\ntransaction: ${device.transaction}\n` +
      `creation time: ${device.creationTime}\nsnap time: ${device.snapTime}\n`;
    const volume = device.volume;
    if (volume !== undefined) {
      text += `name: ${volume.name}\n`;
      if (volume.sizeBytes !== undefined) text += `size_bytes: ${volume.sizeBytes}\n`;
      if (volume.origin !== undefined) text += `origin: ${volume.origin}\n`;
      if (volume.readOnly !== undefined) text += `read_only: ${volume.readOnly}\n`;
      if (volume.labels !== undefined && Object.keys(volume.labels).length > 0) text += `labels: ${JSON.stringify(volume.labels)}\n`;
    }
    return text;
  }

  protected override runLine(run: Mapping): string {
    if (run.length === 1) return `    ${run.originBegin} -> ${run.dataBegin}, ${run.time}\n`;
    const last = run.length - 1;
    return `    (${run.originBegin}..${run.originBegin + last}) -> (${run.dataBegin}..${run.dataBegin + last}), ${run.time}\n`;
  }

  protected override deviceEndText(): string {
    return '\n';
  }

  protected override badRangeText(range: DumpBadRange): string {
    const why = (
      [
        [BadRangeFlag.readError, 'read error'],
        [BadRangeFlag.writeError, 'write error'],
        [BadRangeFlag.relocated, 'relocated'],
      ] as const
    )
      .filter(([bit]) => (range.flags & bit) !== 0)
      .map(([, text]) => text);
    return `bad data sectors: (${range.beginSector}..${range.beginSector + range.lengthSectors - 1}), ${why.join(', ')}\n`;
  }

  protected override superblockEndText(): string {
    return 'end superblock\n';
  }
}
