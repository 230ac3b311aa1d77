// The dump/restore event stream (one producer and many visitors, as thin-provisioning-tools'
// dump and restore share one). A producer — the pool
// walker of `thinbd dump`, or the XML reader of `thinbd restore` — calls a DumpVisitor in this
// order:
//
//   superblockBegin (deviceBegin mapping* deviceEnd | badRange)* superblockEnd
//
// (`thinbd dump` sends its bad ranges after the last device.)
// Writers (XML, JSON, human) and the pool builder of restore are visitors. The fields are
// thin_dump's (thin-provisioning-tools' XML grammar), in its units: data block size in 512-byte sectors,
// everything else in data blocks. thinbd's own volume facts (name, size, origin, labels) ride
// along in `DeviceBegin.volume`; in XML they travel as a comment that thin_restore ignores
// (see xml.ts for why a comment and not attributes).
//
// A visitor method may return a promise (a writer waiting for its output to drain, a builder
// waiting on I/O); producers await it only when one is returned, so a million mappings cost a
// million plain calls, not a million microtasks.
import { assert } from '../../errors.ts';
import { BAD_RANGE_FLAGS_KNOWN, BadRangeFlag } from '../../pool/bad-ranges.ts';
import type { ExtentColumns } from '../../pool/trees.ts';

export interface SuperblockBegin {
  /** thin_dump always prints ""; kept so a restore of a kernel dump round-trips. */
  uuid: string;
  /** Pool time: the snapshot counter (dm-thin's superblock `time`). */
  time: number;
  /** Userspace transaction id. */
  transaction: number;
  /** Bit 0 is NEEDS_CHECK. */
  flags: number;
  /** Metadata version; 0.9.0 writes 1 when absent, the kernel 2. */
  version: number;
  dataBlockSizeSectors: number;
  nrDataBlocks: number;
  /** Held metadata snapshot root, when one is held (thin_dump never prints it). */
  metadataSnap?: number;
}

/** thinbd's facts about a volume that dm-thin does not keep. */
export interface VolumeExtras {
  name: string;
  sizeBytes?: number;
  /** Name of the volume this one was snapshotted from, when it still exists. */
  origin?: string;
  readOnly?: boolean;
  labels?: Record<string, string>;
  /** ISO 8601, UTC. */
  createdAt?: string;
}

export interface DeviceBegin {
  devId: number;
  /** As stored in the device details; 0.9.0 restore recounts it, thinbd restore does too. */
  mappedBlocks: number;
  transaction: number;
  creationTime: number;
  snapTime: number;
  volume?: VolumeExtras;
}

/** Virtual blocks originBegin .. originBegin+length-1 live at dataBegin .. dataBegin+length-1. */
export interface Mapping {
  originBegin: number;
  dataBegin: number;
  length: number;
  time: number;
}

/**
 * Sectors of the data device recorded bad (docs/format.md "Bad ranges", F-BAD-2): a restore or a
 * repair records them again, so that their block is never allocated. In 512-byte sectors of the
 * data device; a range lies inside one data block. Metadata ranges are not carried: they name
 * sectors of the old metadata file, and a restore or a repair writes a new one.
 */
export interface DumpBadRange {
  beginSector: number;
  lengthSectors: number;
  /** F-BAD-2's flags: 1 read error, 2 write error, 4 relocated (at least one of 1 and 2). */
  flags: number;
}

/**
 * What is wrong with a bad range of a pool of `dataBlockCount` blocks of `blockSizeSectors`, after
 * one that ended at sector `previousEnd` (ranges come in order and never overlap); undefined if
 * nothing is.
 */
export function badRangeProblem(range: DumpBadRange, blockSizeSectors: number, dataBlockCount: number, previousEnd: number): string | undefined {
  const { beginSector, lengthSectors, flags } = range;
  const endSector = beginSector + lengthSectors;
  const block = Math.floor(beginSector / blockSizeSectors);
  if ((flags & ~BAD_RANGE_FLAGS_KNOWN) !== 0 || (flags & (BadRangeFlag.readError | BadRangeFlag.writeError)) === 0) {
    return `flags ${flags} are not a read error (1) and/or a write error (2), optionally relocated (4)`;
  }
  if (Math.floor((endSector - 1) / blockSizeSectors) !== block) return `it crosses the end of data block ${block}`;
  if (block >= dataBlockCount) return `it lies in data block ${block}, past the data device's ${dataBlockCount} blocks`;
  if (beginSector < previousEnd) return `it overlaps or comes before the bad range before it (which ends at sector ${previousEnd})`;
  return undefined;
}

export type VisitResult = void | Promise<void>;

export interface DumpVisitor {
  superblockBegin(superblock: SuperblockBegin): VisitResult;
  deviceBegin(device: DeviceBegin): VisitResult;
  /** Mappings of the open device, in any order a producer likes; dump producers give origin order. */
  mapping(mapping: Mapping): VisitResult;
  /**
   * Optional, for a producer that reads mapping leaves in place (`thinbd dump`): the leaf's
   * extents as columns (virtual block keys[i], data block dataBlocks[i], lengths[i], times[i]),
   * to be taken as mapping() once per entry in order. The columns are reused after the call (and
   * after the promise it returns settles): copy what is kept.
   */
  mappingColumns?(columns: ExtentColumns): VisitResult;
  deviceEnd(): VisitResult;
  /** A bad range of the data device, outside any device. */
  badRange(range: DumpBadRange): VisitResult;
  superblockEnd(): VisitResult;
}

/** True for a promise-like result, so producers can skip `await` on plain returns. */
export function isPending(result: VisitResult): result is Promise<void> {
  return result !== undefined && typeof (result as Promise<void>).then === 'function';
}

/**
 * thin_dump's run-merging rule (thin-provisioning-tools 0.9.0 `metadata_dumper.cc` add_mapping): while walking
 * a device's mappings in origin order, the next mapping extends the current run iff its origin,
 * its data block and its time continue the run. A writer emits a run of length 1 as a
 * single_mapping and a longer run as a range_mapping. Mappings here are ranges already, so a
 * range extends a run when its first block would.
 */
export class RunMerger {
  // The run in progress as numbers (#length 0: none): a scattered pool makes a run per mapping.
  #originBegin = 0;
  #dataBegin = 0;
  #length = 0;
  #time = 0;
  /** What emit is handed: one object, refilled per run. */
  readonly #run: Mapping = { originBegin: 0, dataBegin: 0, length: 0, time: 0 };
  readonly #emit: (run: Mapping) => VisitResult;

  /** `emit` gets each finished run; it must not keep the object past its call (it is reused). */
  constructor(emit: (run: Mapping) => VisitResult) {
    this.#emit = emit;
  }

  add(mapping: Mapping): VisitResult {
    return this.addValues(mapping.originBegin, mapping.dataBegin, mapping.length, mapping.time);
  }

  /** add() of a mapping given as its fields. */
  addValues(originBegin: number, dataBegin: number, length: number, time: number): VisitResult {
    if (!(length >= 1)) assert(false, `mapping of length ${length}`);
    if (this.#length !== 0 && originBegin === this.#originBegin + this.#length && dataBegin === this.#dataBegin + this.#length && time === this.#time) {
      this.#length += length;
      return undefined;
    }
    const result = this.#length === 0 ? undefined : this.#emitRun();
    this.#originBegin = originBegin;
    this.#dataBegin = dataBegin;
    this.#length = length;
    this.#time = time;
    return result;
  }

  /** Emits the run in progress (at the end of a device). */
  flush(): VisitResult {
    if (this.#length === 0) return undefined;
    const result = this.#emitRun();
    this.#length = 0;
    return result;
  }

  #emitRun(): VisitResult {
    const run = this.#run;
    run.originBegin = this.#originBegin;
    run.dataBegin = this.#dataBegin;
    run.length = this.#length;
    run.time = this.#time;
    return this.#emit(run);
  }
}

/** Runs a visitor's calls in order, awaiting only those that return a promise. */
export async function replay(events: Iterable<DumpEvent> | AsyncIterable<DumpEvent>, visitor: DumpVisitor): Promise<void> {
  for await (const event of events) {
    const result = dispatch(event, visitor);
    if (isPending(result)) await result;
  }
}

/** The same stream as values, for tests and for producers that batch. */
export type DumpEvent =
  | ({ kind: 'superblockBegin' } & SuperblockBegin)
  | ({ kind: 'deviceBegin' } & DeviceBegin)
  | ({ kind: 'mapping' } & Mapping)
  | { kind: 'deviceEnd' }
  | ({ kind: 'badRange' } & DumpBadRange)
  | { kind: 'superblockEnd' };

export function dispatch(event: DumpEvent, visitor: DumpVisitor): VisitResult {
  switch (event.kind) {
    case 'superblockBegin': {
      const { kind: _kind, ...superblock } = event;
      return visitor.superblockBegin(superblock);
    }
    case 'deviceBegin': {
      const { kind: _kind, ...device } = event;
      return visitor.deviceBegin(device);
    }
    case 'mapping':
      // Field by field, not `...rest`: a restore dispatches millions of these, and an object rest
      // copy is several times slower than a literal.
      return visitor.mapping({ originBegin: event.originBegin, dataBegin: event.dataBegin, length: event.length, time: event.time });
    case 'deviceEnd':
      return visitor.deviceEnd();
    case 'badRange': {
      const { kind: _kind, ...range } = event;
      return visitor.badRange(range);
    }
    case 'superblockEnd':
      return visitor.superblockEnd();
  }
}

/** A visitor that records the stream as values (tests, and small in-memory conversions). */
export class EventRecorder implements DumpVisitor {
  readonly events: DumpEvent[] = [];
  superblockBegin(superblock: SuperblockBegin): void {
    this.events.push({ kind: 'superblockBegin', ...superblock });
  }
  deviceBegin(device: DeviceBegin): void {
    this.events.push({ kind: 'deviceBegin', ...device });
  }
  mapping(mapping: Mapping): void {
    this.events.push({ kind: 'mapping', ...mapping });
  }
  deviceEnd(): void {
    this.events.push({ kind: 'deviceEnd' });
  }
  badRange(range: DumpBadRange): void {
    this.events.push({ kind: 'badRange', ...range });
  }
  superblockEnd(): void {
    this.events.push({ kind: 'superblockEnd' });
  }
}

/** Checks the call order a producer must keep; wraps a visitor so that a bug in a producer stops. */
export class OrderCheckingVisitor implements DumpVisitor {
  readonly #inner: DumpVisitor;
  #state: 'start' | 'superblock' | 'device' | 'end' = 'start';

  constructor(inner: DumpVisitor) {
    this.#inner = inner;
  }
  superblockBegin(superblock: SuperblockBegin): VisitResult {
    assert(this.#state === 'start', `superblockBegin in state ${this.#state}`);
    this.#state = 'superblock';
    return this.#inner.superblockBegin(superblock);
  }
  deviceBegin(device: DeviceBegin): VisitResult {
    assert(this.#state === 'superblock', `deviceBegin in state ${this.#state}`);
    this.#state = 'device';
    return this.#inner.deviceBegin(device);
  }
  mapping(mapping: Mapping): VisitResult {
    assert(this.#state === 'device', `mapping in state ${this.#state}`);
    return this.#inner.mapping(mapping);
  }
  deviceEnd(): VisitResult {
    assert(this.#state === 'device', `deviceEnd in state ${this.#state}`);
    this.#state = 'superblock';
    return this.#inner.deviceEnd();
  }
  badRange(range: DumpBadRange): VisitResult {
    assert(this.#state === 'superblock', `badRange in state ${this.#state}`);
    return this.#inner.badRange(range);
  }
  superblockEnd(): VisitResult {
    assert(this.#state === 'superblock', `superblockEnd in state ${this.#state}`);
    this.#state = 'end';
    return this.#inner.superblockEnd();
  }
}
