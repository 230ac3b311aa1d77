// Fault injection at the io seam, for operators and tests: `thinbd serve --inject FILE`, or
// FaultInjectingBlockFile in the library. Like nbdkit's error filter (and dm-flakey, dm-dust), but
// below the pool, on the raw data and metadata files: given sectors fail their reads or writes,
// every I/O fails after N, syncs fail, or reads come back with a bit flipped.
//
// The rules file is JSON:
//
//   { "rules": [
//       { "file": "data", "op": "read", "beginSector": 2048, "sectorCount": 8 },
//       { "file": "data", "op": "write", "beginSector": 4096, "endSector": 4104, "times": 1 },
//       { "file": "metadata", "op": "read", "beginSector": 80, "sectorCount": 8, "healOnWrite": true },
//       { "file": "metadata", "op": "read", "beginSector": 96, "sectorCount": 8, "effect": "flip-bit" },
//       { "file": "data", "op": "any", "afterIos": 5000, "times": 1 },
//       { "file": "data", "op": "sync", "afterIos": 100 } ] }
//
// file       "data" or "metadata" (the raw file: for a mirrored metadata file, physical sectors, so
//            a rule can hit one copy)
// op         "read", "write", "sync" or "any"
// beginSector, and endSector (exclusive) or sectorCount: the 512-byte sectors a read or write
//            must overlap to fail; absent, every sector. Not for "sync".
// afterIos   the rule fires only once the file has seen this many I/O operations (reads, writes
//            and syncs), so sectors can go bad under a running workload (default 0)
// times      fires at most this many times (default: every time)
// effect     "eio" (default): the operation fails with EIO; "flip-bit" (reads only): the read
//            succeeds with the lowest bit of the first byte of each matching sector flipped
// healOnWrite  reads of a sector fail until a write covers it (dm-dust's bad-block list), instead
//            of for ever
//
// Untrusted input: a malformed file is refused with a message naming the rule and the field.
import fs from 'node:fs';
import { ThinError, assert } from '../errors.ts';
import type { BlockFile, SyncOptions } from './block-file.ts';
import { ForwardingBlockFile } from './forwarding.ts';
import { MEDIA_SECTOR_BYTES } from './media-error.ts';

export type FaultFile = 'data' | 'metadata';
export type FaultOp = 'read' | 'write' | 'sync' | 'any';
export type FaultEffect = 'eio' | 'flip-bit';

export interface FaultRule {
  file: FaultFile;
  op: FaultOp;
  /** Sectors [beginSector, endSector); absent: every sector. */
  beginSector?: number;
  endSector?: number;
  afterIos?: number;
  times?: number;
  effect?: FaultEffect;
  healOnWrite?: boolean;
}

/** Rules are at most this many: a rules file is written by hand or by a test, not generated without bound. */
const FAULT_RULES_MAX = 100_000;
/** Largest rules file read. */
const FAULT_RULES_FILE_BYTES_MAX = 16 * 1024 * 1024;

const KNOWN_FIELDS = new Set(['file', 'op', 'beginSector', 'endSector', 'sectorCount', 'afterIos', 'times', 'effect', 'healOnWrite']);

/** Parses and validates a rules document (see the module comment); THIN_INVALID naming what is wrong. */
export function parseFaultRules(text: string, source = 'the fault rules'): FaultRule[] {
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch (error) {
    throw new ThinError('THIN_INVALID', `Cannot parse ${source}: ${error instanceof Error ? error.message : String(error)}`);
  }
  const rulesValue = typeof document === 'object' && document !== null && !Array.isArray(document) ? (document as { rules?: unknown }).rules : undefined;
  if (!Array.isArray(rulesValue)) throw new ThinError('THIN_INVALID', `${source}: expected an object with a "rules" array`);
  if (rulesValue.length > FAULT_RULES_MAX) throw new ThinError('THIN_INVALID', `${source}: ${rulesValue.length} rules, at most ${FAULT_RULES_MAX}`);
  return rulesValue.map((value, index) => parseRule(value, `${source}, rule ${index + 1}`));
}

function parseRule(value: unknown, where: string): FaultRule {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ThinError('THIN_INVALID', `${where}: not an object`);
  const fields = value as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    if (!KNOWN_FIELDS.has(key)) throw new ThinError('THIN_INVALID', `${where}: unknown field "${key}"`);
  }
  const bad = (field: string, expected: string): ThinError => new ThinError('THIN_INVALID', `${where}: "${field}" must be ${expected}, not ${JSON.stringify(fields[field])}`);
  const count = (field: string): number | undefined => {
    const raw = fields[field];
    if (raw === undefined) return undefined;
    if (typeof raw !== 'number' || !Number.isSafeInteger(raw) || raw < 0) throw bad(field, 'a whole number from 0');
    return raw;
  };
  if (fields.file !== 'data' && fields.file !== 'metadata') throw bad('file', '"data" or "metadata"');
  if (fields.op !== 'read' && fields.op !== 'write' && fields.op !== 'sync' && fields.op !== 'any') throw bad('op', '"read", "write", "sync" or "any"');
  if (fields.effect !== undefined && fields.effect !== 'eio' && fields.effect !== 'flip-bit') throw bad('effect', '"eio" or "flip-bit"');
  if (fields.healOnWrite !== undefined && typeof fields.healOnWrite !== 'boolean') throw bad('healOnWrite', 'true or false');
  const rule: FaultRule = { file: fields.file, op: fields.op };
  const beginSector = count('beginSector');
  const endSector = count('endSector');
  const sectorCount = count('sectorCount');
  if (endSector !== undefined && sectorCount !== undefined) throw new ThinError('THIN_INVALID', `${where}: give "endSector" or "sectorCount", not both`);
  if ((endSector !== undefined || sectorCount !== undefined) && beginSector === undefined) throw new ThinError('THIN_INVALID', `${where}: "beginSector" is missing`);
  if (beginSector !== undefined) {
    const end = endSector ?? beginSector + (sectorCount ?? 1);
    if (end <= beginSector) throw new ThinError('THIN_INVALID', `${where}: the sector range [${beginSector}, ${end}) is empty`);
    if (rule.op === 'sync') throw new ThinError('THIN_INVALID', `${where}: a sync has no sectors; drop "beginSector"`);
    rule.beginSector = beginSector;
    rule.endSector = end;
  }
  const afterIos = count('afterIos');
  if (afterIos !== undefined) rule.afterIos = afterIos;
  const times = count('times');
  if (times !== undefined) {
    if (times === 0) throw bad('times', 'at least 1 (leave it out for every time)');
    rule.times = times;
  }
  if (fields.effect !== undefined) rule.effect = fields.effect;
  if (rule.effect === 'flip-bit' && rule.op !== 'read') throw new ThinError('THIN_INVALID', `${where}: "flip-bit" applies to reads only`);
  if (fields.healOnWrite === true) {
    if (rule.op !== 'read' || rule.beginSector === undefined) throw new ThinError('THIN_INVALID', `${where}: "healOnWrite" applies to read rules with sectors`);
    rule.healOnWrite = true;
  }
  return rule;
}

/** Reads a rules file (THIN_NOT_FOUND, THIN_INVALID). */
export function readFaultRules(path: string): FaultRule[] {
  let text: string;
  try {
    const stats = fs.statSync(path);
    if (stats.size > FAULT_RULES_FILE_BYTES_MAX) throw new ThinError('THIN_INVALID', `Fault rules file ${path} is ${stats.size} bytes, more than ${FAULT_RULES_FILE_BYTES_MAX}`);
    text = fs.readFileSync(path, 'utf8');
  } catch (error) {
    if (error instanceof ThinError) throw error;
    const code = typeof error === 'object' && error !== null && 'code' in error ? String(error.code) : String(error);
    if (code === 'ENOENT') throw new ThinError('THIN_NOT_FOUND', `No fault rules file ${path}`);
    throw new ThinError('THIN_IO', `Cannot read fault rules file ${path}: ${code}`, { cause: error });
  }
  return parseFaultRules(text, `fault rules file ${path}`);
}

interface LiveRule {
  readonly rule: FaultRule;
  readonly index: number;
  fired: number;
  /** Sectors a write healed (healOnWrite). */
  healed: Set<number> | undefined;
}

export interface FaultCounters {
  /** Operations failed or corrupted by a rule. */
  injected: number;
}

/**
 * The error of a refused read or write, made without stack traces: where in the injector it was
 * thrown says nothing, and capturing two stacks per refusal was a large share of a remapped
 * write's CPU (a 4 KiB write into bad sectors is refused 9 times while it is narrowed;
 * docs/benchmarks.md, "Failing disks").
 */
function injectedEio(description: string, verb: string, lengthBytes: number, offsetBytes: number, ruleIndex: number): ThinError {
  const stackTraceLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return new ThinError('THIN_IO', `Cannot ${verb} ${lengthBytes} bytes at offset ${offsetBytes} of ${description}: EIO (injected by fault rule ${ruleIndex + 1})`, {
      cause: Object.assign(new Error('EIO: i/o error (injected)'), { code: 'EIO', errno: -5 }),
    });
  } finally {
    Error.stackTraceLimit = stackTraceLimit;
  }
}

/** A block file that applies the fault rules of one file (data or metadata) to what passes through. */
export class FaultInjectingBlockFile extends ForwardingBlockFile {
  readonly counters: FaultCounters = { injected: 0 };
  #rules: LiveRule[] = [];
  /**
   * The rules with sectors, sorted by beginSector (then index), and the longest one's length: an
   * I/O looks up only the rules whose range can reach it, by binary search. A linear scan of the
   * rules per I/O made an injected bad disk with a few hundred bad ranges cost more CPU than the
   * pool's own work on every refused write (docs/benchmarks.md, "Failing disks").
   */
  #sectored: LiveRule[] = [];
  #sectorCountMax = 0;
  /** The rules without sectors (every sector, and syncs), in index order. */
  #everywhere: LiveRule[] = [];
  /** The healOnWrite rules: a write heals only these. */
  #healing: { readonly rule: FaultRule; readonly healed: Set<number> }[] = [];
  #ios = 0;
  #syncFailure: ThinError | undefined;

  constructor(inner: BlockFile, rules: readonly FaultRule[] = []) {
    super(inner);
    this.addRules(rules);
  }

  /** Adds rules (for this file's kind: the caller filters by `file`); their afterIos counts from now. */
  addRules(rules: readonly FaultRule[]): void {
    for (const rule of rules) {
      const live: LiveRule = { rule: { ...rule, ...(rule.afterIos !== undefined ? { afterIos: this.#ios + rule.afterIos } : {}) }, index: this.#rules.length, fired: 0, healed: rule.healOnWrite ? new Set() : undefined };
      this.#rules.push(live);
      if (live.healed !== undefined) this.#healing.push({ rule: live.rule, healed: live.healed });
      if (rule.beginSector === undefined) {
        this.#everywhere.push(live);
      } else {
        this.#sectored.push(live);
        this.#sectorCountMax = Math.max(this.#sectorCountMax, rule.endSector! - rule.beginSector);
      }
    }
    this.#sectored.sort((a, b) => a.rule.beginSector! - b.rule.beginSector! || a.index - b.index);
  }

  get ioCount(): number {
    return this.#ios;
  }

  override readSync(target: Uint8Array, offsetBytes: number): void {
    const rule = this.#take('read', offsetBytes, target.length);
    if (rule !== undefined && (rule.rule.effect ?? 'eio') === 'eio') throw injectedEio(this.description, 'read', target.length, offsetBytes, rule.index);
    super.readSync(target, offsetBytes);
    if (rule !== undefined) this.#flip(rule, target, offsetBytes);
  }

  override async read(target: Uint8Array, offsetBytes: number): Promise<void> {
    const rule = this.#take('read', offsetBytes, target.length);
    if (rule !== undefined && (rule.rule.effect ?? 'eio') === 'eio') throw injectedEio(this.description, 'read', target.length, offsetBytes, rule.index);
    await super.read(target, offsetBytes);
    if (rule !== undefined) this.#flip(rule, target, offsetBytes);
  }

  override async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    const rule = this.#take('write', offsetBytes, source.length);
    if (rule !== undefined) throw injectedEio(this.description, 'write', source.length, offsetBytes, rule.index);
    await super.write(source, offsetBytes);
    this.#heal(offsetBytes, source.length);
  }

  override async sync(options?: SyncOptions): Promise<void> {
    // A failed sync is fail-stop, as on a real file (io/file.ts): every later one fails too.
    if (this.#syncFailure !== undefined) {
      throw new ThinError('THIN_IO', `Cannot sync ${this.description}: an earlier sync failed (${this.#syncFailure.message})`, { cause: this.#syncFailure });
    }
    const rule = this.#take('sync', 0, 0);
    if (rule !== undefined) {
      this.#syncFailure = new ThinError('THIN_IO', `Cannot sync ${this.description}: EIO (injected by fault rule ${rule.index + 1})`, {
        cause: Object.assign(new Error('EIO: i/o error (injected)'), { code: 'EIO', errno: -5 }),
      });
      throw this.#syncFailure;
    }
    await super.sync(options);
  }

  /** Counts an operation and returns the first rule (lowest index) it trips, if any (counting that firing). */
  #take(op: 'read' | 'write' | 'sync', offsetBytes: number, lengthBytes: number): LiveRule | undefined {
    this.#ios += 1;
    if (this.#rules.length === 0) return undefined;
    let first: LiveRule | undefined;
    for (const live of this.#everywhere) {
      if (this.#applies(live, op)) {
        first = live;
        break;
      }
    }
    const sectored = this.#sectored;
    if (op !== 'sync' && sectored.length > 0) {
      const beginSector = Math.floor(offsetBytes / MEDIA_SECTOR_BYTES);
      const endSector = Math.ceil((offsetBytes + lengthBytes) / MEDIA_SECTOR_BYTES);
      // Rules that begin before endSector, walked back while they may still reach beginSector.
      let low = 0;
      let high = sectored.length;
      while (low < high) {
        const middle = (low + high) >>> 1;
        if (sectored[middle]!.rule.beginSector! < endSector) low = middle + 1;
        else high = middle;
      }
      for (let at = low - 1; at >= 0; at--) {
        const live = sectored[at]!;
        if (live.rule.beginSector! + this.#sectorCountMax <= beginSector) break;
        if (first !== undefined && live.index > first.index) continue;
        if (this.#applies(live, op) && this.#overlapsUnhealed(live, offsetBytes, lengthBytes)) first = live;
      }
    }
    if (first === undefined) return undefined;
    first.fired += 1;
    this.counters.injected += 1;
    return first;
  }

  /** Whether the rule may fire on this operation now (its sectors aside). */
  #applies(live: LiveRule, op: 'read' | 'write' | 'sync'): boolean {
    const { rule } = live;
    if (rule.op !== op && rule.op !== 'any') return false;
    if (rule.afterIos !== undefined && this.#ios <= rule.afterIos) return false;
    return rule.times === undefined || live.fired < rule.times;
  }

  #overlapsUnhealed(live: LiveRule, offsetBytes: number, lengthBytes: number): boolean {
    const begin = Math.max(live.rule.beginSector!, Math.floor(offsetBytes / MEDIA_SECTOR_BYTES));
    const end = Math.min(live.rule.endSector!, Math.ceil((offsetBytes + lengthBytes) / MEDIA_SECTOR_BYTES));
    if (begin >= end) return false;
    if (live.healed === undefined) return true;
    for (let sector = begin; sector < end; sector++) if (!live.healed.has(sector)) return true;
    return false;
  }

  #heal(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes === 0) return;
    for (const live of this.#healing) {
      const begin = Math.max(live.rule.beginSector!, Math.ceil(offsetBytes / MEDIA_SECTOR_BYTES));
      const end = Math.min(live.rule.endSector!, Math.floor((offsetBytes + lengthBytes) / MEDIA_SECTOR_BYTES));
      for (let sector = begin; sector < end; sector++) live.healed.add(sector);
    }
  }

  /** flip-bit: the lowest bit of the first byte of each sector of the rule that the read returned. */
  #flip(live: LiveRule, target: Uint8Array, offsetBytes: number): void {
    assert(live.rule.effect === 'flip-bit', 'only flip-bit rules let a read through');
    const firstSector = live.rule.beginSector ?? Math.ceil(offsetBytes / MEDIA_SECTOR_BYTES);
    const endSector = live.rule.endSector ?? Math.ceil((offsetBytes + target.length) / MEDIA_SECTOR_BYTES);
    for (let sector = Math.max(firstSector, Math.ceil(offsetBytes / MEDIA_SECTOR_BYTES)); sector < endSector; sector++) {
      const index = sector * MEDIA_SECTOR_BYTES - offsetBytes;
      if (index < 0 || index >= target.length) continue;
      target[index] = target[index]! ^ 1;
    }
  }
}
