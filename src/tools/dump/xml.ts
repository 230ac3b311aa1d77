// thin_dump's XML, byte for byte as thin-provisioning-tools 0.9.0 writes it (its
// `xml_format.cc`): two spaces of indent per level, attributes in the
// grammar's order, one mapping per line, `flags` and `version` always printed, a device without
// mappings as an open and a close tag (never self-closed: the 1.x parser cannot read
// `<device …/>`), runs merged by thin_dump's rule (events.ts RunMerger).
//
// thinbd's volume facts (name, size, origin, labels, …) travel as one comment per device, first
// inside the element:
//
//   <!-- thinbd:volume {"name":"vm1","sizeBytes":8589934592} -->
//
// Why a comment and not attributes. Tried with thin_restore 0.9.0 (test/tools/dump-writers.test.ts
// keeps the evidence): extra attributes on <superblock> and <device> are accepted and ignored
// (rc 0), comments anywhere are accepted and ignored, and an unknown element fails the restore
// (`unknown tag type`, rc 1). The 1.x parser (thin-provisioning-tools 1.x src/thin/xml.rs) rejects unknown attributes
// (`bad_attr`) but skips comments (quick-xml Event::Comment). So a comment is the one carrier
// both generations of thin_restore accept. The JSON is pure ASCII and every `-` is
// written `\u002d`, so the comment can never contain `--` or end in `-` (both forbidden in XML
// comments) whatever the names and labels hold. restore-xml.ts reads it back.
//
// The pool's bad data ranges (events.ts DumpBadRange) travel the same way, one comment each
// inside <superblock> after the last device, for the same reason (an element would fail
// thin_restore 0.9.0 and 1.x; test/tools/bad-ranges.test.ts restores such a dump with thin_restore):
//
//   <!-- thinbd:bad-range {"beginSector":2048,"lengthSectors":8,"flags":5} -->
//
// so they are in every dump by default and no compatibility switch is needed.
import { assert } from '../../errors.ts';
import type { DeviceBegin, DumpBadRange, Mapping, SuperblockBegin, VolumeExtras } from './events.ts';
import { TextDumpWriter } from './text-writer.ts';
import { asciiText, type AsciiPiece } from './ascii-piece.ts';

/** The comment keyword that marks thinbd's volume facts inside a `<device>`. */
export const VOLUME_COMMENT_KEYWORD = 'thinbd:volume';
/** The comment keyword that marks a bad data range inside `<superblock>`. */
export const BAD_RANGE_COMMENT_KEYWORD = 'thinbd:bad-range';

export class XmlDumpWriter extends TextDumpWriter {
  protected override superblockBeginText(sb: SuperblockBegin): string {
    const snap = sb.metadataSnap === undefined ? '' : ` metadata_snap="${sb.metadataSnap}"`;
    return (
      `<superblock uuid="${escapeAttribute(sb.uuid)}" time="${sb.time}" transaction="${sb.transaction}"` +
      ` flags="${sb.flags}" version="${sb.version}" data_block_size="${sb.dataBlockSizeSectors}"` +
      ` nr_data_blocks="${sb.nrDataBlocks}"${snap}>\n`
    );
  }

  protected override deviceBeginText(device: DeviceBegin): string {
    let text =
      `  <device dev_id="${device.devId}" mapped_blocks="${device.mappedBlocks}" transaction="${device.transaction}"` +
      ` creation_time="${device.creationTime}" snap_time="${device.snapTime}">\n`;
    if (device.volume !== undefined) text += `    <!-- ${VOLUME_COMMENT_KEYWORD} ${encodeVolumeComment(device.volume)} -->\n`;
    return text;
  }

  // A scattered pool has a line per mapping: written as bytes (ascii-piece.ts).
  protected override runLine(run: Mapping, piece: AsciiPiece): undefined {
    if (run.length === 1) {
      piece.text(SINGLE_ORIGIN);
      piece.decimal(run.originBegin);
      piece.text(SINGLE_DATA);
      piece.decimal(run.dataBegin);
    } else {
      piece.text(RANGE_ORIGIN);
      piece.decimal(run.originBegin);
      piece.text(RANGE_DATA);
      piece.decimal(run.dataBegin);
      piece.text(RANGE_LENGTH);
      piece.decimal(run.length);
    }
    piece.text(TIME);
    piece.decimal(run.time);
    piece.text(LINE_END);
    return undefined;
  }

  protected override deviceEndText(): string {
    return '  </device>\n';
  }

  protected override badRangeText(range: DumpBadRange): string {
    return `  <!-- ${BAD_RANGE_COMMENT_KEYWORD} ${encodeBadRangeComment(range)} -->\n`;
  }

  protected override superblockEndText(): string {
    return '</superblock>\n';
  }
}

// `    <single_mapping origin_block="…" data_block="…" time="…"/>` and
// `    <range_mapping origin_begin="…" data_begin="…" length="…" time="…"/>`, in pieces.
const SINGLE_ORIGIN = asciiText('    <single_mapping origin_block="');
const SINGLE_DATA = asciiText('" data_block="');
const RANGE_ORIGIN = asciiText('    <range_mapping origin_begin="');
const RANGE_DATA = asciiText('" data_begin="');
const RANGE_LENGTH = asciiText('" length="');
const TIME = asciiText('" time="');
const LINE_END = asciiText('"/>\n');

/** XML attribute escaping (thin_dump writes the uuid raw; it is always empty there). */
export function escapeAttribute(text: string): string {
  return text.replace(/[&<>"]/g, (char) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[char] ?? char);
}

/** The volume comment's JSON: ASCII only, no `-` character (see the module comment). */
export function encodeVolumeComment(volume: VolumeExtras): string {
  const record: Record<string, unknown> = { name: volume.name };
  if (volume.sizeBytes !== undefined) {
    assert(Number.isSafeInteger(volume.sizeBytes) && volume.sizeBytes >= 0, `volume size ${volume.sizeBytes}`);
    record['sizeBytes'] = volume.sizeBytes;
  }
  if (volume.origin !== undefined) record['origin'] = volume.origin;
  if (volume.readOnly !== undefined) record['readOnly'] = volume.readOnly;
  if (volume.labels !== undefined && Object.keys(volume.labels).length > 0) record['labels'] = volume.labels;
  if (volume.createdAt !== undefined) record['createdAt'] = volume.createdAt;
  // Every number is non-negative, so a `-` can only sit inside a string, where \u002d means the same.
  return JSON.stringify(record).replace(/[^\x20-\x2c\x2e-\x7e]/g, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** A bad range's comment JSON: three whole numbers, so nothing in it can end or break the comment. */
export function encodeBadRangeComment(range: DumpBadRange): string {
  for (const [field, value] of Object.entries(range)) assert(Number.isSafeInteger(value) && value >= 0, `bad range ${field} ${value}`);
  return JSON.stringify({ beginSector: range.beginSector, lengthSectors: range.lengthSectors, flags: range.flags });
}
