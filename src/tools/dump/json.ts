// The dump as one JSON document, written as it streams (one mapping per line, constant memory):
//
//   {
//     "superblock": { "uuid": "", "time": 1, …, "nrDataBlocks": 1024 },
//     "devices": [
//       { "devId": 1, "mappedBlocks": 10, …, "volume": { "name": "vm1", … }, "mappings": [
//         { "originBegin": 0, "dataBegin": 600, "length": 1, "time": 1 },
//         …
//       ] }
//     ],
//     "badRanges": [ { "beginSector": 2048, "lengthSectors": 8, "flags": 5 } ]
//   }
//
// ("badRanges", the pool's bad data ranges, is there only when it has some.)
// Field names are the event stream's (events.ts); mappings are merged by thin_dump's run rule so
// that the JSON and the XML of one pool list the same runs.
import type { DeviceBegin, DumpBadRange, Mapping, SuperblockBegin } from './events.ts';
import { TextDumpWriter } from './text-writer.ts';

export class JsonDumpWriter extends TextDumpWriter {
  #devicesWritten = 0;
  #runsWritten = 0;
  #badRangesWritten = 0;

  protected override superblockBeginText(superblock: SuperblockBegin): string {
    this.#devicesWritten = 0;
    this.#badRangesWritten = 0;
    return `{\n  "superblock": ${JSON.stringify(superblock)},\n  "devices": [`;
  }

  protected override deviceBeginText(device: DeviceBegin): string {
    const { volume, ...fields } = device;
    const head = JSON.stringify(volume === undefined ? fields : { ...fields, volume });
    const separator = this.#devicesWritten === 0 ? '\n' : ',\n';
    this.#devicesWritten += 1;
    this.#runsWritten = 0;
    return `${separator}    ${head.slice(0, -1)}, "mappings": [`;
  }

  protected override runLine(run: Mapping): string {
    const separator = this.#runsWritten === 0 ? '\n' : ',\n';
    this.#runsWritten += 1;
    return `${separator}      {"originBegin": ${run.originBegin}, "dataBegin": ${run.dataBegin}, "length": ${run.length}, "time": ${run.time}}`;
  }

  protected override deviceEndText(): string {
    return this.#runsWritten === 0 ? ']}' : '\n    ]}';
  }

  protected override badRangeText(range: DumpBadRange): string {
    const line = `{"beginSector": ${range.beginSector}, "lengthSectors": ${range.lengthSectors}, "flags": ${range.flags}}`;
    this.#badRangesWritten += 1;
    if (this.#badRangesWritten > 1) return `,\n    ${line}`;
    return `${this.#devicesEndText()},\n  "badRanges": [\n    ${line}`;
  }

  protected override superblockEndText(): string {
    if (this.#badRangesWritten > 0) return '\n  ]\n}\n';
    return `${this.#devicesEndText()}\n}\n`;
  }

  #devicesEndText(): string {
    return this.#devicesWritten === 0 ? ']' : '\n  ]';
  }
}
