// What a pool may show after a power cut, for workloads of concurrent block requests (NBD
// clients on several connections) and volume management, judged sector by sector from the marks
// the workload left in the trace (docs/fault-model.md G5).
//
// The workload is a list of operations; each is marked `start I` when it was issued, then
// `done I` when it was acknowledged or `fail I` when it was refused. A FLUSH promises every
// operation acknowledged before the FLUSH was issued, on any connection (the pool's exports
// offer CAN_MULTI_CONN, NBD spec "Ordering of messages and writes"); a FUA operation promises
// itself once acknowledged. Nothing else is promised.
//
// Per volume and 512-byte sector, the operations that touched the sector are in issue order
// (requests on one connection reach the pool in the order they were sent, and the pool's range
// locks serve overlapping requests in that order; requests of different connections that were in
// flight together never overlap: the generators see to it). So after a crash a sector may hold:
//   - the value of the last promised operation on it (or, if none, the volume's value at birth:
//     the starting pool's, zeros for a new volume, its source's at the time for a snapshot);
//   - or the value of any operation issued after that one, acknowledged or not, failed or not
//     (a failed request may have changed part of its range);
//   - or garbage, only where such an operation wrote in place (a torn, unflushed write).
// Never zeros where zeros are not allowed, never another write's bytes, never a pattern of
// another sector (a misplaced block). A volume may exist after the crash only in a state between
// its last promised create / snapshot / remove and the last one issued; a promised write to a
// volume promises that the volume exists.
//
// Management operations (create, snapshot, remove) run alone: everything before them has been
// answered, and nothing after them is issued until they are. So a snapshot's contents at birth
// are exactly its source's at that moment (up to failed requests, which may have changed part of
// what they touched), whatever the crash: a snapshot that exists after the crash was committed,
// and its commit synced every write that completed before it.
//
// Volumes can be large (thousands of blocks): only the sectors the workload touched, with those
// of the volumes a snapshot came from, and a seeded sample of other blocks are read back, in
// segments of sectors that share one history.
import assert from 'node:assert/strict';
import type { Pool } from '../../src/pool/pool.ts';
import { isThinError } from '../../src/errors.ts';
import { SECTOR_SIZE_BYTES } from './sim-disk.ts';
import { decodeSector } from './pool-model.ts';
import type { Rng } from './rng.ts';

export interface OracleDataOp {
  kind: 'write' | 'trim' | 'zero';
  volume: string;
  beginSector: number;
  lengthSectors: number;
  fua: boolean;
  /** The write's id (its sector patterns, pool-model.ts); 0 for trim and zero. */
  writeId: number;
}

export type OracleOp =
  | OracleDataOp
  | { kind: 'flush' }
  | { kind: 'create'; name: string; sizeSectors: number }
  | { kind: 'snapshot'; source: string; name: string }
  | { kind: 'remove'; volume: string }
  /** Anything else the workload does (a commit timer tick): no promise, no change to the model. */
  | { kind: 'other' };

export interface BaseVolume {
  name: string;
  sizeSectors: number;
  /** Per sector: the id of the write whose bytes it holds, 0 for zeros (durable in the starting pool). */
  values: Uint32Array;
}

export function startMark(opIndex: number): string {
  return `start ${opIndex}`;
}

export function doneMark(opIndex: number): string {
  return `done ${opIndex}`;
}

export function failMark(opIndex: number): string {
  return `fail ${opIndex}`;
}

function isDataOp(op: OracleOp): op is OracleDataOp {
  return op.kind === 'write' || op.kind === 'trim' || op.kind === 'zero';
}

function touches(op: OracleDataOp, sector: number): boolean {
  return sector >= op.beginSector && sector < op.beginSector + op.lengthSectors;
}

interface VolumeHistory {
  name: string;
  sizeSectors: number;
  base: BaseVolume | undefined;
  /** Op index of its create or snapshot (undefined for a volume of the starting pool). */
  birth: number | undefined;
  /** Snapshot source. */
  source: string | undefined;
  death: number | undefined;
  /** Op indexes of its data operations, in issue order. */
  dataOps: number[];
  /** Sectors where the starting pool's value changes (its runs' edges). */
  baseEdges: number[];
}

/** What the marks before a crash say. */
interface Acknowledged {
  started: Set<number>;
  /** Op index -> position of its done mark. */
  succeeded: Map<number, number>;
  failed: Set<number>;
  /** The latest position at which an acknowledged FLUSH was issued: operations acknowledged before it are promised. */
  flushedBefore: number;
}

export interface OracleOptions {
  /** Volumes of at most this many sectors are read whole; larger ones by segments (module comment). */
  wholeVolumeSectorsMax?: number;
  /** Other blocks read back per large volume. */
  sampleBlocks?: number;
  blockSizeSectors: number;
}

export class VolumeOracle {
  readonly ops: readonly OracleOp[];
  readonly #volumes = new Map<string, VolumeHistory>();
  readonly #options: Required<OracleOptions>;

  constructor(base: readonly BaseVolume[], ops: readonly OracleOp[], options: OracleOptions) {
    this.ops = ops;
    this.#options = { wholeVolumeSectorsMax: 64 * options.blockSizeSectors, sampleBlocks: 16, ...options };
    for (const volume of base) {
      assert.equal(volume.values.length, volume.sizeSectors);
      const baseEdges: number[] = [];
      for (let sector = 1; sector < volume.values.length; sector++) if (volume.values[sector] !== volume.values[sector - 1]) baseEdges.push(sector);
      this.#volumes.set(volume.name, {
        name: volume.name,
        sizeSectors: volume.sizeSectors,
        base: volume,
        birth: undefined,
        source: undefined,
        death: undefined,
        dataOps: [],
        baseEdges,
      });
    }
    ops.forEach((op, index) => {
      if (op.kind === 'create' || op.kind === 'snapshot') {
        assert.ok(!this.#volumes.has(op.name), `the workload reuses the name ${op.name}`);
        const sizeSectors = op.kind === 'create' ? op.sizeSectors : this.#history(op.source).sizeSectors;
        this.#volumes.set(op.name, {
          name: op.name,
          sizeSectors,
          base: undefined,
          birth: index,
          source: op.kind === 'snapshot' ? op.source : undefined,
          death: undefined,
          dataOps: [],
          baseEdges: [],
        });
      } else if (op.kind === 'remove') {
        this.#history(op.volume).death = index;
      } else if (isDataOp(op)) {
        const history = this.#history(op.volume);
        assert.ok(op.beginSector + op.lengthSectors <= history.sizeSectors, `op ${index} passes the end of ${op.volume}`);
        history.dataOps.push(index);
      }
    });
  }

  /** Every volume name the workload knows. */
  get volumeNames(): string[] {
    return [...this.#volumes.keys()];
  }

  #history(name: string): VolumeHistory {
    const history = this.#volumes.get(name);
    assert.ok(history !== undefined, `the workload names an unknown volume ${name}`);
    return history;
  }

  #acknowledged(marks: readonly string[]): Acknowledged {
    const acks: Acknowledged = { started: new Set(), succeeded: new Map(), failed: new Set(), flushedBefore: -1 };
    const startedAt = new Map<number, number>();
    marks.forEach((mark, position) => {
      const space = mark.indexOf(' ');
      const index = Number(mark.slice(space + 1));
      switch (mark.slice(0, space)) {
        case 'start':
          acks.started.add(index);
          startedAt.set(index, position);
          break;
        case 'done':
          acks.succeeded.set(index, position);
          if (this.ops[index]?.kind === 'flush') acks.flushedBefore = Math.max(acks.flushedBefore, startedAt.get(index) ?? -1);
          break;
        case 'fail':
          acks.failed.add(index);
          break;
      }
    });
    return acks;
  }

  #promised(acks: Acknowledged, index: number): boolean {
    const position = acks.succeeded.get(index);
    if (position === undefined) return false;
    if (position < acks.flushedBefore) return true;
    const op = this.ops[index];
    return op !== undefined && isDataOp(op) && op.fua;
  }

  /**
   * Holds the recovered pool against the workload (module comment). Returns how many sectors
   * were read back. Throws an AssertionError naming the volume, sector and operations.
   */
  async verify(pool: Pool, marks: readonly string[], rng: Rng): Promise<number> {
    const acks = this.#acknowledged(marks);
    const present = new Map(pool.list().map((info) => [info.name, info]));
    for (const name of present.keys()) {
      assert.ok(this.#volumes.has(name), `volume ${name} exists after the crash, but the workload never made it`);
    }
    let sectorsRead = 0;
    for (const history of this.#volumes.values()) {
      const allowed = this.#allowedExistence(history, acks);
      const info = present.get(history.name);
      const context = `${this.#lifecycleText(history, acks)}`;
      if (info === undefined) {
        assert.ok(allowed.has(false), `volume ${history.name} is missing after the crash; ${context}`);
        continue;
      }
      assert.ok(allowed.has(true), `volume ${history.name} exists after the crash; ${context}`);
      assert.equal(info.sizeBytes, history.sizeSectors * SECTOR_SIZE_BYTES, `volume ${history.name} has ${info.sizeBytes} bytes`);
      sectorsRead += await this.#verifyContents(pool, history, acks, rng);
    }
    return sectorsRead;
  }

  /** Whether the volume may exist (true) or be missing (false) after the crash. */
  #allowedExistence(history: VolumeHistory, acks: Acknowledged): Set<boolean> {
    // States in order: before birth, after birth, after death; a starting pool's volume is born.
    const states: Array<{ exists: boolean; promised: boolean; started: boolean }> = [{ exists: history.base !== undefined, promised: true, started: true }];
    if (history.birth !== undefined) {
      const promised =
        this.#promised(acks, history.birth) || history.dataOps.some((index) => this.#promised(acks, index));
      states.push({ exists: true, promised, started: acks.started.has(history.birth) });
    }
    if (history.death !== undefined) {
      states.push({ exists: false, promised: this.#promised(acks, history.death), started: acks.started.has(history.death) });
    }
    let lowest = 0;
    let highest = 0;
    states.forEach((state, index) => {
      if (state.promised) lowest = index;
      if (state.started) highest = index;
    });
    const allowed = new Set<boolean>();
    for (let index = lowest; index <= Math.max(lowest, highest); index++) allowed.add(states[index]!.exists);
    return allowed;
  }

  #lifecycleText(history: VolumeHistory, acks: Acknowledged): string {
    const parts: string[] = [history.base !== undefined ? 'in the starting pool' : ''];
    const describe = (index: number | undefined, what: string): void => {
      if (index === undefined) return;
      parts.push(`${what} (op ${index}: ${this.#status(acks, index)})`);
    };
    describe(history.birth, history.source === undefined ? 'created' : `snapshot of ${history.source}`);
    describe(history.death, 'removed');
    return parts.filter((part) => part !== '').join(', ');
  }

  #status(acks: Acknowledged, index: number): string {
    if (this.#promised(acks, index)) return 'promised';
    if (acks.succeeded.has(index)) return 'acknowledged';
    if (acks.failed.has(index)) return 'failed';
    if (acks.started.has(index)) return 'in flight';
    return 'not issued';
  }

  /**
   * Values a sector of `history` may hold had there been no crash, just before op `beforeIndex`
   * (everything before it was answered): the last successful operation's, and any failed one's
   * after it.
   */
  #valuesAt(history: VolumeHistory, sector: number, beforeIndex: number, acks: Acknowledged): Set<number> {
    let values: Set<number> | undefined;
    const failed: number[] = [];
    for (const index of history.dataOps) {
      if (index >= beforeIndex) break;
      const op = this.ops[index] as OracleDataOp;
      if (!touches(op, sector)) continue;
      // Ops before a management op were all answered before it began, so once it began (as it
      // did if its volume exists) the marks say which failed.
      if (acks.succeeded.has(index)) {
        values = new Set([op.writeId]);
        failed.length = 0;
      } else failed.push(op.writeId);
    }
    values ??= this.#birthValues(history, sector, acks);
    for (const value of failed) values.add(value);
    return values;
  }

  #birthValues(history: VolumeHistory, sector: number, acks: Acknowledged): Set<number> {
    if (history.base !== undefined) return new Set([history.base.values[sector] ?? 0]);
    if (history.source === undefined) return new Set([0]);
    return this.#valuesAt(this.#history(history.source), sector, history.birth!, acks);
  }

  /** What the sector may hold after the crash, and whether garbage is allowed there. */
  #allowed(history: VolumeHistory, sector: number, acks: Acknowledged): { values: Set<number>; garbage: boolean; ops: number[] } {
    const ops = history.dataOps.filter((index) => touches(this.ops[index] as OracleDataOp, sector));
    let last = -1;
    ops.forEach((index, position) => {
      if (this.#promised(acks, index)) last = position;
    });
    const values = last >= 0 ? new Set([(this.ops[ops[last]!] as OracleDataOp).writeId]) : this.#birthValues(history, sector, acks);
    let garbage = false;
    for (const index of ops.slice(last + 1)) {
      if (!acks.started.has(index)) continue;
      values.add((this.ops[index] as OracleDataOp).writeId);
      garbage = true;
    }
    return { values, garbage, ops };
  }

  /** Sector numbers where a volume's history may change: its own and its ancestors' op edges, the starting pool's runs. */
  #boundaries(history: VolumeHistory, into: Set<number>): void {
    for (const index of history.dataOps) {
      const op = this.ops[index] as OracleDataOp;
      into.add(op.beginSector);
      into.add(op.beginSector + op.lengthSectors);
    }
    for (const sector of history.baseEdges) into.add(sector);
    if (history.source !== undefined) this.#boundaries(this.#history(history.source), into);
  }

  async #verifyContents(pool: Pool, history: VolumeHistory, acks: Acknowledged, rng: Rng): Promise<number> {
    const size = history.sizeSectors;
    const cuts = new Set<number>([0, size]);
    this.#boundaries(history, cuts);
    const whole = size <= this.#options.wholeVolumeSectorsMax;
    // Which sectors to read: all of a small volume; of a large one what any op of its lineage
    // touched (every segment edge is such an op's edge) and a seeded sample of blocks.
    const wanted: Array<[number, number]> = [];
    if (whole) wanted.push([0, size]);
    else {
      for (let lineage: VolumeHistory | undefined = history; lineage !== undefined; lineage = lineage.source === undefined ? undefined : this.#history(lineage.source)) {
        for (const index of lineage.dataOps) {
          const op = this.ops[index] as OracleDataOp;
          wanted.push([op.beginSector, op.beginSector + op.lengthSectors]);
        }
      }
      const blockSectors = this.#options.blockSizeSectors;
      for (let sample = 0; sample < this.#options.sampleBlocks; sample++) {
        const begin = rng.int(Math.ceil(size / blockSectors)) * blockSectors;
        const end = Math.min(size, begin + blockSectors);
        wanted.push([begin, end]);
        cuts.add(begin);
        cuts.add(end);
      }
    }
    const edges = [...cuts].filter((sector) => sector <= size).sort((a, b) => a - b);
    const ranges = mergeRanges(wanted);
    const volume = pool.volume(history.name);
    let sectorsRead = 0;
    for (const [begin, end] of ranges) {
      const bytes = new Uint8Array((end - begin) * SECTOR_SIZE_BYTES);
      try {
        await volume.read(begin * SECTOR_SIZE_BYTES, bytes);
      } catch (error) {
        const what = isThinError(error) ? `${error.code}: ${error.message}` : String(error);
        assert.fail(`reading sectors [${begin}, ${end}) of volume ${history.name} after the crash failed: ${what}`);
      }
      sectorsRead += end - begin;
      // Walk the segments inside [begin, end): one allowed set per segment.
      let edgeIndex = upperBound(edges, begin);
      let segmentBegin = begin;
      while (segmentBegin < end) {
        const segmentEnd = Math.min(end, edges[edgeIndex] ?? end);
        const allowed = this.#allowed(history, segmentBegin, acks);
        for (let sector = segmentBegin; sector < segmentEnd; sector++) {
          const at = (sector - begin) * SECTOR_SIZE_BYTES;
          const actual = decodeSector(bytes.subarray(at, at + SECTOR_SIZE_BYTES), sector);
          if (allowed.values.has(actual) || (actual === -1 && allowed.garbage)) continue;
          this.#failSector(history, sector, actual, allowed, acks);
        }
        segmentBegin = segmentEnd;
        edgeIndex += 1;
      }
    }
    return sectorsRead;
  }

  #failSector(history: VolumeHistory, sector: number, actual: number, allowed: { values: Set<number>; garbage: boolean; ops: number[] }, acks: Acknowledged): never {
    const shown = actual === -1 ? 'garbage' : actual <= -2 ? `the bytes of sector ${-2 - actual}` : actual === 0 ? 'zeros' : `write #${actual}`;
    const expected = [...allowed.values].map((value) => (value === 0 ? 'zeros' : `write #${value}`));
    if (allowed.garbage) expected.push('garbage (a torn unflushed write)');
    const history_ = allowed.ops.map((index) => `op ${index} ${describeOracleOp(this.ops[index]!)} (${this.#status(acks, index)})`);
    assert.fail(
      `volume ${history.name} sector ${sector} (block ${Math.floor(sector / this.#options.blockSizeSectors)}) holds ${shown}; ` +
        `expected ${expected.join(' or ')}; at birth: ${[...this.#birthValues(history, sector, acks)].map((value) => (value === 0 ? 'zeros' : `#${value}`)).join('/')}` +
        `${history.birth === undefined ? '' : ` (op ${history.birth})`}; ops on it: ${history_.join('; ') || 'none'}; ` +
        `last acknowledged FLUSH issued at mark ${acks.flushedBefore}`,
    );
  }
}

export function describeOracleOp(op: OracleOp): string {
  switch (op.kind) {
    case 'write':
    case 'trim':
    case 'zero':
      return `${op.fua ? 'fua ' : ''}${op.kind}${op.kind === 'write' ? ` #${op.writeId}` : ''} ${op.volume} [${op.beginSector}, +${op.lengthSectors})`;
    case 'flush':
      return 'flush';
    case 'create':
      return `create ${op.name}`;
    case 'snapshot':
      return `snapshot ${op.source} -> ${op.name}`;
    case 'remove':
      return `remove ${op.volume}`;
    case 'other':
      return 'other';
  }
}

function mergeRanges(ranges: Array<[number, number]>): Array<[number, number]> {
  const sorted = ranges.filter(([begin, end]) => end > begin).sort((a, b) => a[0] - b[0]);
  const merged: Array<[number, number]> = [];
  for (const [begin, end] of sorted) {
    const last = merged[merged.length - 1];
    if (last !== undefined && begin <= last[1]) last[1] = Math.max(last[1], end);
    else merged.push([begin, end]);
  }
  // Reads of at most 4 MiB at a time.
  const limit = (4 * 1024 * 1024) / SECTOR_SIZE_BYTES;
  return merged.flatMap(([begin, end]) => {
    const pieces: Array<[number, number]> = [];
    for (let at = begin; at < end; at += limit) pieces.push([at, Math.min(end, at + limit)]);
    return pieces;
  });
}

/** Index of the first element > value. */
function upperBound(sorted: readonly number[], value: number): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (sorted[middle]! <= value) low = middle + 1;
    else high = middle;
  }
  return low;
}
