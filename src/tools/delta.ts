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
// The functions work on iterables of mappings (a pool's tree walk, or mappings read from XML),
// and hold one run per side: constant memory.
import { assert } from '../errors.ts';
import type { Mapping, VisitResult } from './dump/events.ts';
import { escapeAttribute } from './dump/xml.ts';
import type { TextSink } from './dump/sink.ts';

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

interface Run {
  virtualBegin: number;
  dataBegin: number;
  length: number;
}

/** Step 1: runs of contiguous virtual and data blocks, whatever their times. */
export function* dataRuns(mappings: Iterable<Mapping>): Generator<Run> {
  let run: Run | undefined;
  let previousEnd = -1;
  for (const mapping of mappings) {
    assert(mapping.length >= 1, `mapping of length ${mapping.length}`);
    assert(mapping.originBegin >= previousEnd, `mappings out of origin order at block ${mapping.originBegin}`);
    previousEnd = mapping.originBegin + mapping.length;
    if (run !== undefined && mapping.originBegin === run.virtualBegin + run.length && mapping.dataBegin === run.dataBegin + run.length) {
      run.length += mapping.length;
      continue;
    }
    if (run !== undefined) yield run;
    run = { virtualBegin: mapping.originBegin, dataBegin: mapping.dataBegin, length: mapping.length };
  }
  if (run !== undefined) yield run;
}

/** A run list with a cursor into its current run (thin-provisioning-tools' mapping_stream). */
class RunCursor {
  readonly #runs: Iterator<Run>;
  current: Run | undefined;

  constructor(runs: Iterable<Run>) {
    this.#runs = runs[Symbol.iterator]();
    this.#next();
  }

  consume(lengthBlocks: number): void {
    const run = this.current;
    assert(run !== undefined && lengthBlocks >= 1 && lengthBlocks <= run.length, 'consume past the run');
    if (lengthBlocks === run.length) {
      this.#next();
      return;
    }
    this.current = { virtualBegin: run.virtualBegin + lengthBlocks, dataBegin: run.dataBegin + lengthBlocks, length: run.length - lengthBlocks };
  }

  #next(): void {
    const step = this.#runs.next();
    // A copy, field by field (consume() replaces it; an object spread per run is a runtime call).
    const run = step.done === true ? undefined : step.value;
    this.current = run === undefined ? undefined : { virtualBegin: run.virtualBegin, dataBegin: run.dataBegin, length: run.length };
  }
}

/** Step 2: the parallel walk. Both inputs in origin order, without overlaps. */
export function* deltaSteps(left: Iterable<Mapping>, right: Iterable<Mapping>): Generator<DeltaStep> {
  const leftRuns = new RunCursor(dataRuns(left));
  const rightRuns = new RunCursor(dataRuns(right));
  for (;;) {
    const l = leftRuns.current;
    const r = rightRuns.current;
    if (l === undefined || r === undefined) break;
    if (l.virtualBegin < r.virtualBegin) {
      const length = Math.min(l.length, r.virtualBegin - l.virtualBegin);
      yield { kind: DeltaKind.leftOnly, begin: l.virtualBegin, length, leftDataBegin: l.dataBegin };
      leftRuns.consume(length);
    } else if (l.virtualBegin > r.virtualBegin) {
      const length = Math.min(r.length, l.virtualBegin - r.virtualBegin);
      yield { kind: DeltaKind.rightOnly, begin: r.virtualBegin, length, rightDataBegin: r.dataBegin };
      rightRuns.consume(length);
    } else {
      const length = Math.min(l.length, r.length);
      const kind = l.dataBegin === r.dataBegin ? DeltaKind.same : DeltaKind.different;
      yield { kind, begin: l.virtualBegin, length, leftDataBegin: l.dataBegin, rightDataBegin: r.dataBegin };
      leftRuns.consume(length);
      rightRuns.consume(length);
    }
  }
  for (let l = leftRuns.current; l !== undefined; l = leftRuns.current) {
    yield { kind: DeltaKind.leftOnly, begin: l.virtualBegin, length: l.length, leftDataBegin: l.dataBegin };
    leftRuns.consume(l.length);
  }
  for (let r = rightRuns.current; r !== undefined; r = rightRuns.current) {
    yield { kind: DeltaKind.rightOnly, begin: r.virtualBegin, length: r.length, rightDataBegin: r.dataBegin };
    rightRuns.consume(r.length);
  }
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
  steps: Iterable<DeltaStep>,
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
  if (options.verbose === true) {
    let open: DeltaKind | undefined;
    for (const step of steps) {
      let text = '';
      if (open !== step.kind) {
        if (open !== undefined) text += `    </${open}>\n`;
        text += `    <${step.kind}>\n`;
        open = step.kind;
      }
      text += `      ${verboseRange(step)}\n`;
      await settle(out.write(text));
    }
    if (open !== undefined) await settle(out.write(`    </${open}>\n`));
  } else {
    for (const run of mergeDeltaSteps(steps)) {
      await settle(out.write(`    <${run.kind} begin="${run.begin}" length="${run.length}"/>\n`));
    }
  }
  await settle(out.write('  </diff>\n</superblock>\n'));
}

function verboseRange(step: DeltaStep): string {
  switch (step.kind) {
    case DeltaKind.different:
      return `<range begin="${step.begin}" left_data_begin="${step.leftDataBegin}" right_data_begin="${step.rightDataBegin}" length="${step.length}"/>`;
    case DeltaKind.rightOnly:
      return `<range begin="${step.begin}" data_begin="${step.rightDataBegin}" length="${step.length}"/>`;
    default:
      return `<range begin="${step.begin}" data_begin="${step.leftDataBegin}" length="${step.length}"/>`;
  }
}

/** The delta as one JSON document: the header, the two devices, the merged runs (or the steps, verbose). */
export async function writeDeltaJson(
  out: TextSink,
  header: DeltaHeader,
  left: { devId: number; name?: string },
  right: { devId: number; name?: string },
  steps: Iterable<DeltaStep>,
  options: { verbose?: boolean } = {},
): Promise<void> {
  await settle(out.write(`{\n  "superblock": ${JSON.stringify(header)},\n  "left": ${JSON.stringify(left)},\n  "right": ${JSON.stringify(right)},\n  "diff": [`));
  let count = 0;
  const items: Iterable<DeltaStep | DeltaRun> = options.verbose === true ? steps : mergeDeltaSteps(steps);
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
  const view = await PoolView.open(target);
  try {
    const left = view.device(leftName);
    const right = view.device(rightName);
    const { metadataSnap: _snap, flags: _flags, version: _version, ...header } = view.superblock();
    const steps = deltaSteps(view.mappings(left), view.mappings(right));
    const verbose = options.verbose === true;
    if (options.format === 'xml') await writeDeltaXml(out, header, left.id, right.id, steps, { verbose });
    else await writeDeltaJson(out, header, { devId: left.id, name: left.details.name }, { devId: right.id, name: right.details.name }, steps, { verbose });
  } finally {
    await view.close();
  }
}
