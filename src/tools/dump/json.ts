// The dump as one JSON document, written as it streams (one mapping per line, constant memory):
//
//   {
//     "superblock": { "uuid": "", "time": 1, …, "nrDataBlocks": 1024 },
//     "devices": [
//       { "devId": 1, "mappedBlocks": 10, …, "volume": { "name": "vm1", … }, "mappings": [
//         { "originBegin": 0, "dataBegin": 600, "length": 1, "time": 1 },
//         …
//       ] }
//     ]
//   }
//
// Field names are the event stream's (events.ts); mappings are merged by thin_dump's run rule so
// that the JSON and the XML of one pool list the same runs.
import { RunMerger, type DeviceBegin, type DumpVisitor, type Mapping, type SuperblockBegin, type VisitResult } from './events.ts';
import type { TextSink } from './sink.ts';

export class JsonDumpWriter implements DumpVisitor {
  readonly #out: TextSink;
  readonly #runs: RunMerger;
  #devicesWritten = 0;
  #runsWritten = 0;

  constructor(out: TextSink) {
    this.#out = out;
    this.#runs = new RunMerger((run) => this.#writeRun(run));
  }

  superblockBegin(superblock: SuperblockBegin): VisitResult {
    this.#devicesWritten = 0;
    return this.#out.write(`{\n  "superblock": ${JSON.stringify(superblock)},\n  "devices": [`);
  }

  deviceBegin(device: DeviceBegin): VisitResult {
    const { volume, ...fields } = device;
    const head = JSON.stringify(volume === undefined ? fields : { ...fields, volume });
    const separator = this.#devicesWritten === 0 ? '\n' : ',\n';
    this.#devicesWritten += 1;
    this.#runsWritten = 0;
    return this.#out.write(`${separator}    ${head.slice(0, -1)}, "mappings": [`);
  }

  mapping(mapping: Mapping): VisitResult {
    return this.#runs.add(mapping);
  }

  deviceEnd(): VisitResult {
    const pending = this.#runs.flush();
    const close = (): VisitResult => this.#out.write(this.#runsWritten === 0 ? ']}' : '\n    ]}');
    if (pending !== undefined) return pending.then(close);
    return close();
  }

  superblockEnd(): VisitResult {
    return this.#out.write(this.#devicesWritten === 0 ? ']\n}\n' : '\n  ]\n}\n');
  }

  #writeRun(run: Mapping): VisitResult {
    const separator = this.#runsWritten === 0 ? '\n' : ',\n';
    this.#runsWritten += 1;
    return this.#out.write(
      `${separator}      {"originBegin": ${run.originBegin}, "dataBegin": ${run.dataBegin}, "length": ${run.length}, "time": ${run.time}}`,
    );
  }
}
