// A model of a pool's block contents for crash tests, and the checker that holds a recovered pool
// against it (docs/fault-model.md G5).
//
// Every sector a workload writes carries a pattern naming (writeId, sector), so a sector read back
// is identified exactly: zeros, the pattern of one known write, or garbage. A write id belongs to
// one volume, so another volume's bytes, or a freed block's, are recognised for what they are.
//
// What a recovered pool may show, per volume and per 512-byte sector: the value the sector had in
// any model state from the last acknowledged flush up to the operation in flight at the crash
// (a FUA write raises that lower bound for its own sectors). Garbage is allowed only in a sector
// that a write or discard since that bound touched in place: a torn, unflushed write of that very
// sector. A volume may exist after the crash only if it existed in one of those states, and be
// missing only if it was missing in one.
import assert from 'node:assert/strict';
import type { Pool } from '../../src/pool/pool.ts';
import { isThinError } from '../../src/errors.ts';
import { SECTOR_SIZE_BYTES, bytesEqual, type SimMachine } from './sim-disk.ts';
import type { Rng } from './rng.ts';

// ---------------------------------------------------------------------------------------------
// Sector patterns

const UNIT_BYTES = 16;
const PATTERN_SALT = 0x7411bd00;
const patternCache = new Map<number, Buffer>();
const ZERO_SECTOR = Buffer.alloc(SECTOR_SIZE_BYTES);

/** The 512 bytes write writeId puts into sector `sector` of its volume. */
export function sectorPattern(writeId: number, sector: number): Buffer {
  const key = writeId * 2 ** 20 + sector;
  let pattern = patternCache.get(key);
  if (pattern === undefined) {
    pattern = Buffer.alloc(SECTOR_SIZE_BYTES);
    for (let offset = 0; offset < SECTOR_SIZE_BYTES; offset += UNIT_BYTES) {
      pattern.writeUInt32LE(writeId, offset);
      pattern.writeUInt32LE(sector, offset + 4);
      pattern.writeUInt32LE(~writeId >>> 0, offset + 8);
      pattern.writeUInt32LE((PATTERN_SALT ^ (sector + offset)) >>> 0, offset + 12);
    }
    if (patternCache.size > 200_000) patternCache.clear();
    patternCache.set(key, pattern);
  }
  return pattern;
}

/** 0 for zeros, the write id for a known pattern of this sector, -1 for anything else. */
export function decodeSector(bytes: Uint8Array, sector: number): number {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  if (buffer.equals(ZERO_SECTOR)) return 0;
  const writeId = buffer.readUInt32LE(0);
  if (writeId > 0 && writeId < 2 ** 31 && buffer.equals(sectorPattern(writeId, sector))) return writeId;
  // A pattern of another sector (a misplaced block) or garbage.
  const claimedSector = buffer.readUInt32LE(4);
  if (writeId > 0 && writeId < 2 ** 31 && claimedSector < 2 ** 20 && buffer.equals(sectorPattern(writeId, claimedSector))) {
    return -2 - claimedSector; // a known write's bytes in the wrong sector
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// Model

export interface VolumeModel {
  readonly sizeSectors: number;
  /** Per sector: the id of the write whose bytes it holds, 0 for zeros. */
  readonly sectors: Uint32Array;
}

export type ModelState = ReadonlyMap<string, VolumeModel>;

export type PoolOp = (
  | { kind: 'create'; name: string; sizeSectors: number }
  | { kind: 'write'; volume: string; beginSector: number; lengthSectors: number; fua: boolean; writeId: number; shape: string }
  | { kind: 'discard'; volume: string; beginSector: number; lengthSectors: number }
  | { kind: 'snapshot'; source: string; name: string }
  | { kind: 'remove'; volume: string }
  /** Pool.replaceVolumeContents: `volume` takes `source`'s contents and size, and `source` is gone. */
  | { kind: 'replace'; volume: string; source: string }
  | { kind: 'flush' }
  /** Grows or shrinks a volume (sizes in whole blocks: a shrink never zeroes a partial tail). */
  | { kind: 'resize'; volume: string; sizeSectors: number }
  /** A full commit folding the delta log into the trees (Pool.rollup). */
  | { kind: 'rollup' }
  /** One tick of the pool's commit timer: run by the test holding the timer, not by runOp. */
  | { kind: 'tick' }
) & {
  /**
   * Issued together with the op before it, without waiting for it (only writes, discards and
   * flushes, as NBD clients keep several in flight). The pool's range locks serve overlapping
   * requests in issue order, so the model applies them in list order all the same; what changes
   * is what a flush covers (not the requests issued with or after it) and which completions
   * the crash may fall between.
   */
  concurrent?: boolean;
};

export function describeOp(op: PoolOp): string {
  return `${op.concurrent === true ? '& ' : ''}${describeOpKind(op)}`;
}

function describeOpKind(op: PoolOp): string {
  switch (op.kind) {
    case 'create':
      return `create ${op.name} (${op.sizeSectors} sectors)`;
    case 'write':
      return `${op.fua ? 'fua ' : ''}write ${op.shape} #${op.writeId} ${op.volume} sectors [${op.beginSector}, +${op.lengthSectors})`;
    case 'discard':
      return `discard ${op.volume} sectors [${op.beginSector}, +${op.lengthSectors})`;
    case 'snapshot':
      return `snapshot ${op.source} -> ${op.name}`;
    case 'remove':
      return `remove ${op.volume}`;
    case 'replace':
      return `replace ${op.volume} with ${op.source}`;
    case 'flush':
      return 'flush';
    case 'resize':
      return `resize ${op.volume} to ${op.sizeSectors} sectors`;
    case 'rollup':
    case 'tick':
      return op.kind;
  }
}

export function applyOp(state: ModelState, op: PoolOp): ModelState {
  const next = new Map(state);
  switch (op.kind) {
    case 'create':
      assert.ok(!next.has(op.name));
      next.set(op.name, { sizeSectors: op.sizeSectors, sectors: new Uint32Array(op.sizeSectors) });
      break;
    case 'write':
    case 'discard': {
      const volume = next.get(op.volume);
      assert.ok(volume !== undefined);
      const sectors = new Uint32Array(volume.sectors);
      sectors.fill(op.kind === 'write' ? op.writeId : 0, op.beginSector, op.beginSector + op.lengthSectors);
      next.set(op.volume, { sizeSectors: volume.sizeSectors, sectors });
      break;
    }
    case 'snapshot': {
      const source = next.get(op.source);
      assert.ok(source !== undefined && !next.has(op.name));
      next.set(op.name, { sizeSectors: source.sizeSectors, sectors: new Uint32Array(source.sectors) });
      break;
    }
    case 'remove':
      assert.ok(next.delete(op.volume));
      break;
    case 'replace': {
      const source = next.get(op.source);
      assert.ok(source !== undefined && next.has(op.volume) && op.source !== op.volume);
      next.set(op.volume, source);
      next.delete(op.source);
      break;
    }
    case 'resize': {
      // F-POOL-14: growing after a shrink reads zeros past the old end.
      const volume = next.get(op.volume);
      assert.ok(volume !== undefined);
      const sectors = new Uint32Array(op.sizeSectors);
      sectors.set(volume.sectors.subarray(0, Math.min(op.sizeSectors, volume.sizeSectors)));
      next.set(op.volume, { sizeSectors: op.sizeSectors, sectors });
      break;
    }
    case 'flush':
    case 'rollup':
    case 'tick':
      break;
  }
  return next;
}

/** The bytes of a write op. */
export function writeBytes(op: { writeId: number; beginSector: number; lengthSectors: number }): Uint8Array {
  const bytes = new Uint8Array(op.lengthSectors * SECTOR_SIZE_BYTES);
  for (let index = 0; index < op.lengthSectors; index++) {
    bytes.set(sectorPattern(op.writeId, op.beginSector + index), index * SECTOR_SIZE_BYTES);
  }
  return bytes;
}

export function renderVolume(volume: VolumeModel): Uint8Array {
  const bytes = new Uint8Array(volume.sizeSectors * SECTOR_SIZE_BYTES);
  for (let sector = 0; sector < volume.sizeSectors; sector++) {
    const writeId = volume.sectors[sector] ?? 0;
    if (writeId !== 0) bytes.set(sectorPattern(writeId, sector), sector * SECTOR_SIZE_BYTES);
  }
  return bytes;
}

export async function runOp(pool: Pool, op: PoolOp): Promise<void> {
  switch (op.kind) {
    case 'create':
      await pool.createVolume(op.name, { sizeBytes: op.sizeSectors * SECTOR_SIZE_BYTES });
      return;
    case 'write':
      await pool.volume(op.volume).write(op.beginSector * SECTOR_SIZE_BYTES, writeBytes(op), { fua: op.fua });
      return;
    case 'discard':
      await pool.volume(op.volume).discard(op.beginSector * SECTOR_SIZE_BYTES, op.lengthSectors * SECTOR_SIZE_BYTES);
      return;
    case 'snapshot':
      await pool.snapshot(op.source, op.name);
      return;
    case 'remove':
      await pool.removeVolume(op.volume);
      return;
    case 'replace':
      await pool.replaceVolumeContents(op.volume, op.source);
      return;
    case 'flush':
      await pool.flush();
      return;
    case 'resize':
      await pool.resizeVolume(op.volume, op.sizeSectors * SECTOR_SIZE_BYTES);
      return;
    case 'rollup':
      await pool.rollup();
      return;
    case 'tick':
      throw new Error('a tick is run by the test that holds the pool\'s commit timer');
  }
}

// ---------------------------------------------------------------------------------------------
// Workload generation

export interface WorkloadShape {
  blockSizeSectors: number;
  volumeSizeSectors: number;
  volumesMax: number;
  /**
   * Also replace one volume's contents with another's (Pool.replaceVolumeContents), before 6 in 10
   * ops where two volumes exist. Off by default: the draws of the other campaigns' seeds stay as they were.
   */
  replaces?: boolean;
}

/**
 * Up to opsMax operations valid from `initial`, drawn from rng: sector, block, multi-block and
 * FUA writes, discards (whole and partial blocks), snapshot, remove, create, flush.
 */
export function generateOps(rng: Rng, initial: ModelState, opsMax: number, shape: WorkloadShape, firstWriteId: number): PoolOp[] {
  const ops: PoolOp[] = [];
  let state = initial;
  let writeId = firstWriteId;
  let nameIndex = 0;
  const freshName = (prefix: string): string => {
    for (;;) {
      const name = `${prefix}${nameIndex++}`;
      if (!state.has(name)) return name;
    }
  };
  const count = 1 + rng.int(opsMax);
  const { blockSizeSectors: bs, volumeSizeSectors: size } = shape;
  while (ops.length < count) {
    const names = [...state.keys()].sort();
    if (shape.replaces === true && names.length > 1 && rng.chance(0.6)) {
      const volume = rng.pick(names);
      const op: PoolOp = { kind: 'replace', volume, source: rng.pick(names.filter((name) => name !== volume)) };
      ops.push(op);
      state = applyOp(state, op);
      continue;
    }
    const draw = rng.int(100);
    let op: PoolOp | undefined;
    if (draw < 45 && names.length > 0) {
      const volume = rng.pick(names);
      const kind = rng.int(4);
      if (kind === 0) {
        op = { kind: 'write', volume, beginSector: rng.int(size), lengthSectors: 1, fua: false, writeId: 0, shape: 'sector' };
      } else if (kind === 1) {
        const block = rng.int(size / bs);
        op = { kind: 'write', volume, beginSector: block * bs, lengthSectors: bs, fua: false, writeId: 0, shape: 'block' };
      } else if (kind === 2) {
        // Crosses one or two block boundaries, starting anywhere (sector-aligned).
        const lengthSectors = bs + 1 + rng.int(bs);
        const beginSector = rng.int(size - lengthSectors);
        op = { kind: 'write', volume, beginSector, lengthSectors, fua: false, writeId: 0, shape: 'multi-block' };
      } else {
        const lengthSectors = 1 + rng.int(2 * bs);
        const beginSector = rng.int(size - lengthSectors);
        op = { kind: 'write', volume, beginSector, lengthSectors, fua: true, writeId: 0, shape: 'fua' };
      }
    } else if (draw < 55 && names.length > 0) {
      const volume = rng.pick(names);
      if (rng.chance(0.5)) {
        const begin = rng.int(size / bs);
        const lengthBlocks = 1 + rng.int(Math.min(2, size / bs - begin));
        op = { kind: 'discard', volume, beginSector: begin * bs, lengthSectors: lengthBlocks * bs };
      } else {
        const lengthSectors = 1 + rng.int(bs);
        op = { kind: 'discard', volume, beginSector: rng.int(size - lengthSectors), lengthSectors };
      }
    } else if (draw < 65 && names.length > 0 && names.length < shape.volumesMax) {
      op = { kind: 'snapshot', source: rng.pick(names), name: freshName('snap') };
    } else if (draw < 70 && names.length > 0) {
      op = { kind: 'remove', volume: rng.pick(names) };
    } else if (draw < 78 && names.length < shape.volumesMax) {
      op = { kind: 'create', name: freshName('vol'), sizeSectors: size };
    } else if (draw >= 78) {
      op = { kind: 'flush' };
    }
    if (op === undefined) continue;
    if (op.kind === 'write') op = { ...op, writeId: writeId++ };
    const previous = ops[ops.length - 1];
    const dataPath = (candidate: PoolOp | undefined): boolean =>
      candidate?.kind === 'write' || candidate?.kind === 'discard' || candidate?.kind === 'flush';
    if (dataPath(op) && dataPath(previous) && rng.chance(0.35)) op = { ...op, concurrent: true };
    ops.push(op);
    state = applyOp(state, op);
  }
  return ops;
}

// ---------------------------------------------------------------------------------------------
// Checking a recovered pool

export interface WorkloadRecord {
  /** For messages: which data block a sector falls in. */
  blockSizeSectors: number;
  ops: readonly PoolOp[];
  /** states[0] before the first op, states[i] after op i (1-based). */
  states: readonly ModelState[];
}

export function startMark(opIndex: number): string {
  return `start ${opIndex}`;
}

export function doneMark(opIndex: number): string {
  return `done ${opIndex}`;
}

/**
 * Runs a workload's ops on a pool, marking on the machine when each starts and when it is
 * acknowledged (the marks verifyRecoveredPool reads). Ops marked concurrent are issued with the
 * one before them; a group is awaited as a whole. `run` runs the op at a 0-based index: runOp
 * unless the test runs some ops another way.
 */
export async function runWorkload(
  machine: SimMachine,
  pool: Pool,
  ops: readonly PoolOp[],
  run: (op: PoolOp, index: number) => Promise<void> = (op) => runOp(pool, op),
): Promise<void> {
  let index = 0;
  while (index < ops.length) {
    const group: Promise<void>[] = [];
    do {
      const opIndex = index + 1;
      machine.mark(startMark(opIndex));
      group.push(run(ops[index] as PoolOp, index).then(() => machine.mark(doneMark(opIndex))));
      index += 1;
    } while (ops[index]?.concurrent === true);
    await Promise.all(group);
  }
}

interface Window {
  /** The state an acknowledged flush made durable (state index), 0 if none. */
  flushed: number;
  /** Highest state the crash may show: the last op issued. */
  highest: number;
  /** Ops (1-based) acknowledged before the crash. */
  done: ReadonlySet<number>;
}

/** First op of the group of concurrent ops that `opIndex` (1-based) belongs to. */
function groupStart(record: WorkloadRecord, opIndex: number): number {
  let start = opIndex;
  while (start > 1 && record.ops[start - 1]?.concurrent === true) start -= 1;
  return start;
}

function windowOf(record: WorkloadRecord, marks: readonly string[]): Window {
  const done = new Set<number>();
  let started = 0;
  for (const mark of marks) {
    if (mark.startsWith('start ')) started = Math.max(started, Number(mark.slice(6)));
    else if (mark.startsWith('done ')) done.add(Number(mark.slice(5)));
  }
  // A flush covers what was acknowledged before it was issued: not the ops issued with it.
  let flushed = 0;
  for (const index of done) {
    if (record.ops[index - 1]?.kind === 'flush') flushed = Math.max(flushed, groupStart(record, index) - 1);
  }
  return { flushed, highest: started, done };
}

/** The state index from which sector `sector` of `volume` is promised: raised by an acknowledged FUA write of it. */
function lowerBound(record: WorkloadRecord, window: Window, volume: string, sector: number): number {
  let bound = window.flushed;
  for (const index of window.done) {
    const op = record.ops[index - 1];
    if (index <= bound || op?.kind !== 'write' || !op.fua || op.volume !== volume) continue;
    if (sector >= op.beginSector && sector < op.beginSector + op.lengthSectors) bound = index;
  }
  return bound;
}

/** The state index from which the existence of `volume` is promised (a FUA write to it promises it exists). */
function volumeLowerBound(record: WorkloadRecord, window: Window, volume: string): number {
  let bound = window.flushed;
  for (const index of window.done) {
    const op = record.ops[index - 1];
    if (index > bound && op?.kind === 'write' && op.fua && op.volume === volume) bound = index;
  }
  return bound;
}

function touchedInPlace(record: WorkloadRecord, fromState: number, toState: number, volume: string, sector: number): boolean {
  for (let index = fromState + 1; index <= toState; index++) {
    const op = record.ops[index - 1];
    if ((op?.kind === 'write' || op?.kind === 'discard') && op.volume === volume) {
      if (sector >= op.beginSector && sector < op.beginSector + op.lengthSectors) return true;
    }
  }
  return false;
}

export interface RenderCache {
  get(stateIndex: number, volume: string): Uint8Array | undefined;
}

export function renderCache(record: WorkloadRecord): RenderCache {
  const cache = new Map<string, Uint8Array>();
  return {
    get(stateIndex, volume) {
      const model = record.states[stateIndex]?.get(volume);
      if (model === undefined) return undefined;
      const key = `${stateIndex}/${volume}`;
      let bytes = cache.get(key);
      if (bytes === undefined) {
        bytes = renderVolume(model);
        cache.set(key, bytes);
      }
      return bytes;
    },
  };
}

function opsText(record: WorkloadRecord): string {
  return record.ops.map((op, index) => `${index + 1}: ${describeOp(op)}`).join('; ');
}

/**
 * Checks a recovered pool against the model (module comment); sectors `unspecified` names per
 * volume may hold anything. Returns the contents read, per
 * volume, for later comparison. Throws an AssertionError naming the volume and sector.
 */
export async function verifyRecoveredPool(
  pool: Pool,
  record: WorkloadRecord,
  marks: readonly string[],
  renders: RenderCache,
  unspecified?: ReadonlyMap<string, ReadonlyArray<readonly [number, number]>>,
): Promise<Map<string, Uint8Array>> {
  const window = windowOf(record, marks);
  const names = new Set<string>();
  for (let index = window.flushed; index <= window.highest; index++) {
    for (const name of record.states[index]?.keys() ?? []) names.add(name);
  }
  const present = new Map(pool.list().map((info) => [info.name, info]));
  const context = `ops [${opsText(record)}], acknowledged flush at state ${window.flushed}, crash during/after op ${window.highest}`;
  for (const name of present.keys()) {
    assert.ok(names.has(name), `volume ${name} exists after the crash but in no state it may show; ${context}`);
  }
  const contents = new Map<string, Uint8Array>();
  for (const name of [...names].sort()) {
    const volumeBound = volumeLowerBound(record, window, name);
    const allowed: number[] = [];
    for (let index = volumeBound; index <= window.highest; index++) allowed.push(index);
    const info = present.get(name);
    if (info === undefined) {
      assert.ok(
        allowed.some((index) => !record.states[index]?.has(name)),
        `volume ${name} is missing after the crash, but it existed in every state since the acknowledged one; ${context}`,
      );
      continue;
    }
    const existing = allowed.filter((index) => record.states[index]?.has(name));
    assert.ok(existing.length > 0, `volume ${name} exists after the crash, but not in any state since the acknowledged one; ${context}`);
    const sizes = new Set(existing.map((index) => (record.states[index]?.get(name)?.sizeSectors ?? 0) * SECTOR_SIZE_BYTES));
    assert.ok(sizes.has(info.sizeBytes), `volume ${name} has ${info.sizeBytes} bytes, expected one of ${[...sizes].join(', ')}; ${context}`);

    const bytes = new Uint8Array(info.sizeBytes);
    try {
      await pool.volume(name).read(0, bytes);
    } catch (error) {
      const what = isThinError(error) ? `${error.code}: ${error.message}` : String(error);
      assert.fail(`reading volume ${name} after the crash failed: ${what}; ${context}`);
    }
    contents.set(name, bytes);
    // Fast path: the volume equals one whole state.
    if (existing.some((index) => bytesEqual(bytes, renders.get(index, name) ?? new Uint8Array(0)))) continue;
    // Sector by sector.
    const sizeSectors = info.sizeBytes / SECTOR_SIZE_BYTES;
    for (let sector = 0; sector < sizeSectors; sector++) {
      const actual = decodeSector(bytes.subarray(sector * SECTOR_SIZE_BYTES, (sector + 1) * SECTOR_SIZE_BYTES), sector);
      const bound = lowerBound(record, window, name, sector);
      const candidates = new Set<number>();
      for (let index = bound; index <= window.highest; index++) {
        const model = record.states[index]?.get(name);
        if (model !== undefined) candidates.add(model.sectors[sector] ?? 0);
      }
      if (candidates.has(actual)) continue;
      // Sectors [begin, end) of a request that failed: NBD leaves their contents unspecified.
      if (unspecified?.get(name)?.some(([begin, end]) => sector >= begin && sector < end) === true) continue;
      if (actual === -1 && touchedInPlace(record, bound, window.highest, name, sector)) continue;
      const shown = actual === -1 ? 'garbage' : actual <= -2 ? `the bytes of sector ${-2 - actual}` : actual === 0 ? 'zeros' : `write #${actual}`;
      assert.fail(
        `volume ${name} sector ${sector} (block ${Math.floor(sector / record.blockSizeSectors)}) holds ${shown}; ` +
          `expected ${[...candidates].map((id) => (id === 0 ? 'zeros' : `write #${id}`)).join(' or ')}; ${context}`,
      );
    }
  }
  return contents;
}
