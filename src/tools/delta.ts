// thin_delta: how two devices' mappings differ, run by run, as thin-provisioning-tools 0.9.0
// computes and prints it (thin-provisioning-tools 0.9.0 `thin_delta.cc`):
//
// 1. Each device's mappings, in origin order, are gathered into runs that continue while both the
//    virtual and the data block are contiguous — time is ignored (mapping_recorder).
// 2. The two run lists are walked in parallel (dump_diff): where only one side maps a block it
//    is left_only / right_only; where both map it, it is `same` iff the data blocks are equal
//    (times are not compared), else `different`. Each step covers as many blocks as both current
//    runs allow.
// 3. The plain output merges consecutive steps of one kind whose blocks are contiguous
//    (simple_emitter); `--verbose` prints every step with its data blocks, grouping consecutive
//    steps of one kind in one container element (verbose_emitter).
//
// The functions work on iterables of mappings (mappings read from XML, a pool's runs) or on a
// pool's mapping leaves read in place, and hold one run per side: constant memory. The walk is a
// chain of cursors that refill their fields (mappings → runs → steps → merged runs), not of
// generators making an object per step: a scattered delta has millions of steps.
import { assert } from '../errors.ts';
import type { Mapping, VisitResult } from './dump/events.ts';
import { escapeAttribute } from './dump/xml.ts';
import type { TextSink } from './dump/sink.ts';
import { AsciiPiece, asciiText, type AsciiText } from './dump/ascii-piece.ts';

import type { ExtentColumns } from '../pool/trees.ts';
import { PoolView, type ViewTarget } from './pool-view.ts';

export const DeltaKind = {
  same: 'same',
  different: 'different',
  leftOnly: 'left_only',
  rightOnly: 'right_only',
} as const;
export type DeltaKind = (typeof DeltaKind)[keyof typeof DeltaKind];

/** One step of the parallel walk: `length` virtual blocks from `begin`. */
export interface DeltaStep {
  kind: DeltaKind;
  begin: number;
  length: number;
  /** Data block of `begin` on the left device (same, different, left_only). */
  leftDataBegin?: number;
  /** Data block of `begin` on the right device (same, different, right_only). */
  rightDataBegin?: number;
}

/** A merged run of the plain output. */
export interface DeltaRun {
  kind: DeltaKind;
  begin: number;
  length: number;
}

/** The superblock line of thin_delta's output (no flags, no version). */
export interface DeltaHeader {
  uuid: string;
  time: number;
  transaction: number;
  dataBlockSizeSectors: number;
  nrDataBlocks: number;
  metadataSnap?: number;
}

/**
 * Mappings in origin order, one at a time in fields the source refills (no object per mapping):
 * from an iterable of mappings, or from a pool's mapping leaves read in place.
 */
interface MappingSource {
  /** Moves to the next mapping; false at the end. */
  next(): boolean;
  originBegin: number;
  dataBegin: number;
  length: number;
}

class IterableMappings implements MappingSource {
  readonly #mappings: Iterator<Mapping>;
  originBegin = 0;
  dataBegin = 0;
  length = 0;

  constructor(mappings: Iterable<Mapping>) {
    this.#mappings = mappings[Symbol.iterator]();
  }

  next(): boolean {
    const step = this.#mappings.next();
    if (step.done === true) return false;
    this.originBegin = step.value.originBegin;
    this.dataBegin = step.value.dataBegin;
    this.length = step.value.length;
    return true;
  }
}

/** A pool volume's mappings: its leaves, each decoded into columns (PoolView.mappingLeaves). */
class LeafMappings implements MappingSource {
  readonly #leaves: Iterator<ExtentColumns>;
  #columns: ExtentColumns | undefined;
  #index = 0;
  originBegin = 0;
  dataBegin = 0;
  length = 0;

  constructor(leaves: Iterable<ExtentColumns>) {
    this.#leaves = leaves[Symbol.iterator]();
  }

  next(): boolean {
    while (this.#columns === undefined || this.#index >= this.#columns.count) {
      const step = this.#leaves.next();
      if (step.done === true) return false;
      this.#columns = step.value;
      this.#index = 0;
    }
    const columns = this.#columns;
    const index = this.#index++;
    this.originBegin = columns.keys[index]!;
    this.dataBegin = columns.dataBlocks[index]!;
    this.length = columns.lengths[index]!;
    return true;
  }
}

/**
 * Step 1, with a cursor into the current run (thin-provisioning-tools' mapping_stream): runs of
 * contiguous virtual and data blocks, whatever their times. `length` 0: no run left.
 */
class RunCursor {
  readonly #source: MappingSource;
  /** The source holds a mapping not yet joined to a run. */
  #pending: boolean;
  #previousEnd = -1;
  virtualBegin = 0;
  dataBegin = 0;
  length = 0;

  constructor(source: MappingSource) {
    this.#source = source;
    this.#pending = this.#advance();
    this.#nextRun();
  }

  consume(lengthBlocks: number): void {
    if (!(this.length >= 1 && lengthBlocks >= 1 && lengthBlocks <= this.length)) assert(false, 'consume past the run');
    if (lengthBlocks === this.length) {
      this.#nextRun();
      return;
    }
    this.virtualBegin += lengthBlocks;
    this.dataBegin += lengthBlocks;
    this.length -= lengthBlocks;
  }

  #advance(): boolean {
    const source = this.#source;
    if (!source.next()) return false;
    if (!(source.length >= 1)) assert(false, `mapping of length ${source.length}`);
    if (!(source.originBegin >= this.#previousEnd)) assert(false, `mappings out of origin order at block ${source.originBegin}`);
    this.#previousEnd = source.originBegin + source.length;
    return true;
  }

  #nextRun(): void {
    const source = this.#source;
    if (!this.#pending) {
      this.length = 0;
      return;
    }
    this.virtualBegin = source.originBegin;
    this.dataBegin = source.dataBegin;
    this.length = source.length;
    for (;;) {
      this.#pending = this.#advance();
      if (!this.#pending || source.originBegin !== this.virtualBegin + this.length || source.dataBegin !== this.dataBegin + this.length) return;
      this.length += source.length;
    }
  }
}

/** Steps one at a time in fields the walk refills: what the writers read. */
interface StepCursor {
  /** Moves to the next step; false at the end. */
  next(): boolean;
  kind: DeltaKind;
  begin: number;
  length: number;
  /** Data block of `begin` on the left device (same, different, left_only), else −1. */
  leftDataBegin: number;
  /** Data block of `begin` on the right device (same, different, right_only), else −1. */
  rightDataBegin: number;
}

/** Step 2: the parallel walk over two sources in origin order, without overlaps. */
class DeltaWalk implements StepCursor {
  readonly #left: RunCursor;
  readonly #right: RunCursor;
  kind: DeltaKind = DeltaKind.same;
  begin = 0;
  length = 0;
  leftDataBegin = -1;
  rightDataBegin = -1;

  constructor(left: MappingSource, right: MappingSource) {
    this.#left = new RunCursor(left);
    this.#right = new RunCursor(right);
  }

  next(): boolean {
    const l = this.#left;
    const r = this.#right;
    if (l.length === 0 && r.length === 0) return false;
    if (r.length === 0 || (l.length !== 0 && l.virtualBegin < r.virtualBegin)) {
      const length = r.length === 0 ? l.length : Math.min(l.length, r.virtualBegin - l.virtualBegin);
      this.#set(DeltaKind.leftOnly, l.virtualBegin, length, l.dataBegin, -1);
      l.consume(length);
    } else if (l.length === 0 || l.virtualBegin > r.virtualBegin) {
      const length = l.length === 0 ? r.length : Math.min(r.length, l.virtualBegin - r.virtualBegin);
      this.#set(DeltaKind.rightOnly, r.virtualBegin, length, -1, r.dataBegin);
      r.consume(length);
    } else {
      const length = Math.min(l.length, r.length);
      this.#set(l.dataBegin === r.dataBegin ? DeltaKind.same : DeltaKind.different, l.virtualBegin, length, l.dataBegin, r.dataBegin);
      l.consume(length);
      r.consume(length);
    }
    return true;
  }

  #set(kind: DeltaKind, begin: number, length: number, leftDataBegin: number, rightDataBegin: number): void {
    this.kind = kind;
    this.begin = begin;
    this.length = length;
    this.leftDataBegin = leftDataBegin;
    this.rightDataBegin = rightDataBegin;
  }
}

/** Steps 1 and 2 as values. Both inputs in origin order, without overlaps. */
export function* deltaSteps(left: Iterable<Mapping>, right: Iterable<Mapping>): Generator<DeltaStep> {
  yield* stepValues(new DeltaWalk(new IterableMappings(left), new IterableMappings(right)));
}

function* stepValues(walk: StepCursor): Generator<DeltaStep> {
  while (walk.next()) {
    const { kind, begin, length, leftDataBegin, rightDataBegin } = walk;
    if (kind === DeltaKind.leftOnly) yield { kind, begin, length, leftDataBegin };
    else if (kind === DeltaKind.rightOnly) yield { kind, begin, length, rightDataBegin };
    else yield { kind, begin, length, leftDataBegin, rightDataBegin };
  }
}

/** Steps given as values, as a cursor (what the writers read). */
class StepValues implements StepCursor {
  readonly #steps: Iterator<DeltaStep>;
  kind: DeltaKind = DeltaKind.same;
  begin = 0;
  length = 0;
  leftDataBegin = -1;
  rightDataBegin = -1;

  constructor(steps: Iterable<DeltaStep>) {
    this.#steps = steps[Symbol.iterator]();
  }

  next(): boolean {
    const step = this.#steps.next();
    if (step.done === true) return false;
    const value = step.value;
    this.kind = value.kind;
    this.begin = value.begin;
    this.length = value.length;
    this.leftDataBegin = value.leftDataBegin ?? -1;
    this.rightDataBegin = value.rightDataBegin ?? -1;
    return true;
  }
}

function stepCursor(steps: Iterable<DeltaStep> | StepCursor): StepCursor {
  return Symbol.iterator in steps ? new StepValues(steps) : steps;
}

/** Step 3 (plain output): consecutive steps of one kind over contiguous blocks become one run. */
export function* mergeDeltaSteps(steps: Iterable<DeltaStep>): Generator<DeltaRun> {
  let run: DeltaRun | undefined;
  for (const step of steps) {
    if (run !== undefined && run.kind === step.kind && run.begin + run.length === step.begin) {
      run.length += step.length;
      continue;
    }
    if (run !== undefined) yield run;
    run = { kind: step.kind, begin: step.begin, length: step.length };
  }
  if (run !== undefined) yield run;
}

/** Same/different/left/right block counts of a delta (for summaries and JSON). */
export function deltaTotals(steps: Iterable<DeltaStep>): Record<DeltaKind, number> {
  const totals: Record<DeltaKind, number> = { same: 0, different: 0, left_only: 0, right_only: 0 };
  for (const step of steps) totals[step.kind] += step.length;
  return totals;
}

// ---- writers ----

/** thin_delta's XML, byte for byte (0.9.0), plain or `--verbose`. */
export async function writeDeltaXml(
  out: TextSink,
  header: DeltaHeader,
  leftDevId: number,
  rightDevId: number,
  steps: Iterable<DeltaStep> | StepCursor,
  options: { verbose?: boolean } = {},
): Promise<void> {
  const snap = header.metadataSnap === undefined ? '' : ` metadata_snap="${header.metadataSnap}"`;
  await settle(
    out.write(
      `<superblock uuid="${escapeAttribute(header.uuid)}" time="${header.time}" transaction="${header.transaction}"` +
        ` data_block_size="${header.dataBlockSizeSectors}" nr_data_blocks="${header.nrDataBlocks}"${snap}>\n` +
        `  <diff left="${leftDevId}" right="${rightDevId}">\n`,
    ),
  );
  const walk = stepCursor(steps);
  // A scattered delta has a line per block or two: lines are written as bytes (ascii-piece.ts).
  const piece = new AsciiPiece(out);
  if (options.verbose === true) {
    let open: DeltaKind | undefined;
    while (walk.next()) {
      const kind = walk.kind;
      if (open !== kind) {
        if (open !== undefined) piece.text(deltaBytes(open).close);
        piece.text(deltaBytes(kind).open);
        open = kind;
      }
      const bytes = deltaBytes(kind);
      piece.text(bytes.rangeBegin);
      piece.decimal(walk.begin);
      if (kind === DeltaKind.different) {
        piece.text(LEFT_DATA_BEGIN);
        piece.decimal(walk.leftDataBegin);
        piece.text(RIGHT_DATA_BEGIN);
        piece.decimal(walk.rightDataBegin);
      } else {
        piece.text(DATA_BEGIN);
        piece.decimal(kind === DeltaKind.rightOnly ? walk.rightDataBegin : walk.leftDataBegin);
      }
      piece.text(LENGTH);
      piece.decimal(walk.length);
      piece.text(LINE_END);
      const full = piece.endLine();
      if (full !== undefined) await full;
    }
    if (open !== undefined) piece.text(deltaBytes(open).close);
  } else {
    // Step 3: consecutive steps of one kind over contiguous blocks become one run.
    let kind: DeltaKind | undefined;
    let begin = 0;
    let length = 0;
    while (walk.next()) {
      if (kind === walk.kind && begin + length === walk.begin) {
        length += walk.length;
        continue;
      }
      if (kind !== undefined) {
        runLine(piece, kind, begin, length);
        const full = piece.endLine();
      if (full !== undefined) await full;
      }
      kind = walk.kind;
      begin = walk.begin;
      length = walk.length;
    }
    if (kind !== undefined) runLine(piece, kind, begin, length);
  }
  await settle(piece.flush());
  await settle(out.write('  </diff>\n</superblock>\n'));
}

/** A merged run's line of the plain output: `    <same begin="…" length="…"/>`. */
function runLine(piece: AsciiPiece, kind: DeltaKind, begin: number, length: number): void {
  piece.text(deltaBytes(kind).runBegin);
  piece.decimal(begin);
  piece.text(LENGTH);
  piece.decimal(length);
  piece.text(LINE_END);
}

/** A kind's fixed text as bytes: a run's start, a verbose container's tags and range start. */
interface KindBytes {
  runBegin: AsciiText;
  open: AsciiText;
  close: AsciiText;
  rangeBegin: AsciiText;
}

function kindBytes(kind: DeltaKind): KindBytes {
  return {
    runBegin: asciiText(`    <${kind} begin="`),
    open: asciiText(`    <${kind}>\n`),
    close: asciiText(`    </${kind}>\n`),
    rangeBegin: asciiText('      <range begin="'),
  };
}

const SAME_BYTES = kindBytes(DeltaKind.same);
const DIFFERENT_BYTES = kindBytes(DeltaKind.different);
const LEFT_ONLY_BYTES = kindBytes(DeltaKind.leftOnly);
const RIGHT_ONLY_BYTES = kindBytes(DeltaKind.rightOnly);

/**
 * The fixed text of a kind, by comparisons with the kinds (interned strings: a pointer compare
 * each), not by a lookup keyed by the kind, whose key changing from line to line made it a
 * generic keyed load per line of a scattered delta.
 */
function deltaBytes(kind: DeltaKind): KindBytes {
  if (kind === DeltaKind.same) return SAME_BYTES;
  if (kind === DeltaKind.different) return DIFFERENT_BYTES;
  return kind === DeltaKind.leftOnly ? LEFT_ONLY_BYTES : RIGHT_ONLY_BYTES;
}
const LEFT_DATA_BEGIN = asciiText('" left_data_begin="');
const RIGHT_DATA_BEGIN = asciiText('" right_data_begin="');
const DATA_BEGIN = asciiText('" data_begin="');
const LENGTH = asciiText('" length="');
const LINE_END = asciiText('"/>\n');

/** The delta as one JSON document: the header, the two devices, the merged runs (or the steps, verbose). */
export async function writeDeltaJson(
  out: TextSink,
  header: DeltaHeader,
  left: { devId: number; name?: string },
  right: { devId: number; name?: string },
  steps: Iterable<DeltaStep> | StepCursor,
  options: { verbose?: boolean } = {},
): Promise<void> {
  const values = Symbol.iterator in steps ? steps : stepValues(steps);
  await settle(out.write(`{\n  "superblock": ${JSON.stringify(header)},\n  "left": ${JSON.stringify(left)},\n  "right": ${JSON.stringify(right)},\n  "diff": [`));
  let count = 0;
  const items: Iterable<DeltaStep | DeltaRun> = options.verbose === true ? values : mergeDeltaSteps(values);
  for (const item of items) {
    await settle(out.write(`${count === 0 ? '\n' : ',\n'}    ${JSON.stringify(item)}`));
    count += 1;
  }
  await settle(out.write(count === 0 ? ']\n}\n' : '\n  ]\n}\n'));
}

async function settle(result: VisitResult): Promise<void> {
  if (result !== undefined) await result;
}

// ---- over a pool ----

export interface PoolDeltaOptions {
  format: 'xml' | 'json';
  verbose?: boolean;
}

/**
 * `thinbd delta`: the delta of two volumes of a pool (names, or ids in decimal), written to `out`.
 * The pool is read through a read-only PoolView; the two mapping trees are walked in step.
 */
export async function writePoolDelta(target: ViewTarget, leftName: string, rightName: string, out: TextSink, options: PoolDeltaOptions): Promise<void> {
  const view = await PoolView.open(target, { requireLatest: true });
  try {
    const left = view.device(leftName);
    const right = view.device(rightName);
    const { metadataSnap: _snap, flags: _flags, version: _version, ...header } = view.superblock();
    const steps = new DeltaWalk(new LeafMappings(view.mappingLeaves(left)), new LeafMappings(view.mappingLeaves(right)));
    const verbose = options.verbose === true;
    if (options.format === 'xml') await writeDeltaXml(out, header, left.id, right.id, steps, { verbose });
    else await writeDeltaJson(out, header, { devId: left.id, name: left.details.name }, { devId: right.id, name: right.details.name }, steps, { verbose });
  } finally {
    await view.close();
  }
}
