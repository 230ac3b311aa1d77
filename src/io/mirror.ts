// A block file kept in two (or more) copies: the metadata's redundancy (docs/format.md "Metadata
// mirror", F-MIR-1 and F-MIR-2). Every write goes to every copy; a read is served by the first copy that reads, and one
// that fails with EIO is retried on the next, then rewritten from what was read. The layer above
// also hands in a validator (readValidated): a copy that reads but fails it (a flipped bit, a torn
// or lost write) is passed over the same way and rewritten.
//
// It sits at the io seam, under pdata, so it knows nothing of what the blocks hold: any block
// layout (tree nodes, space maps, log records, superblock copies, whatever encoding a later format
// gives them) is mirrored alike. A copy is a place in a file: the pool keeps both copies in its one
// metadata file, `mirrorOffsetBytes` apart (one fdatasync covers both); the benchmark also puts
// the second copy in another file.
//
// Redundancy is kept per write, not per commit: a write succeeds when at least one copy took it
// (the others are marked bad and reported through onBadCopy, for the pool to record), and fails
// only when every copy failed or a copy failed for a reason other than the medium (a closed file,
// a lost machine). A sync syncs every distinct file and fails when any fails: a failed sync says
// nothing about where, so it stays fail-stop.
//
// Ordering: a repair (a rewrite of one copy from another) is itself a write; a later write of the
// same range waits for it, so a block freed and reused is never overwritten by a late repair of
// its old contents.
import { ThinError, assert } from '../errors.ts';
import type { BlockFile, SyncOptions } from './block-file.ts';
import { isMediaError } from './media-error.ts';

/** The unit copies are tracked in: the metadata block. */
const MIRROR_UNIT_BYTES = 4096;

export interface MirrorCopy {
  file: BlockFile;
  /** Where logical byte 0 of this copy lies in `file`. */
  offsetBytes: number;
}

export type BadCopyKind = 'read' | 'write' | 'invalid';

export interface BadCopyEvent {
  copyIndex: number;
  /** Logical range (a whole number of MIRROR_UNIT_BYTES units). */
  offsetBytes: number;
  lengthBytes: number;
  /** Where the bad copy lies in its file. */
  physicalOffsetBytes: number;
  kind: BadCopyKind;
  /** What the validator or the file said. */
  reason: string;
}

export interface MirrorCounters {
  /** Copy reads that failed with EIO. */
  copyReadErrors: number;
  /** Copy writes (and rewrites) that failed with EIO (the write went on with the other copies). */
  copyWriteErrors: number;
  /** Copies that read but failed the caller's validation. */
  invalidCopies: number;
  /** Copies rewritten from a good one. */
  repairs: number;
  repairFailures: number;
  /** Reads no copy could serve. */
  unrecoverableReads: number;
  /** Writes (whole, or a unit of one) that every copy refused with EIO: the write failed. */
  unrecoverableWrites: number;
}

/** What the layer above may ask of a file kept in copies. */
export interface RedundantBlockFile extends BlockFile {
  readonly copyCount: number;
  /** Opened read-only: copies found bad are reported, never rewritten. */
  readonly readOnly: boolean;
  readonly counters: MirrorCounters;
  /** Units (4 KiB) some copy of which is known bad now: the copies still to be rewritten. */
  readonly degradedUnits: number;
  /** Those copies, each with its place and what was wrong. */
  badCopies(): Array<{ offsetBytes: number; copyIndex: number; physicalOffsetBytes: number; reason: string }>;
  /**
   * Reads [offsetBytes, +target.length) (whole units) from the first copy that reads and passes
   * `validate` (undefined: valid; a string: what is wrong), unit by unit; rewrites the copies that
   * failed from the good one. Throws the first copy's error (or a THIN_CORRUPT_BLOCK naming each
   * copy's problem) when no copy passes.
   */
  readValidatedSync(target: Uint8Array, offsetBytes: number, validate: (bytes: Uint8Array, copyIndex: number) => string | undefined): void;
  readValidated(target: Uint8Array, offsetBytes: number, validate: (bytes: Uint8Array, copyIndex: number) => string | undefined): Promise<void>;
  /** One copy as it is (no fallback): for scrub and for tests. */
  readCopySync(copyIndex: number, target: Uint8Array, offsetBytes: number): void;
  /** Rewrites one copy of a unit with bytes known good; resolves whether it worked. */
  repairCopy(copyIndex: number, source: Uint8Array, offsetBytes: number): Promise<boolean>;
  /** Resolves once every repair started so far has finished. */
  repairsSettled(): Promise<void>;
  /** Every copy's physical place of a logical offset. */
  physicalPlaces(offsetBytes: number): Array<{ file: BlockFile; offsetBytes: number }>;
}

export function isRedundant(file: BlockFile): file is RedundantBlockFile {
  return typeof (file as Partial<RedundantBlockFile>).readValidatedSync === 'function';
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A read no copy could serve, though some read: THIN_CORRUPT_BLOCK with each copy's problem. */
export class NoGoodCopyError extends ThinError {
  readonly copyProblems: readonly string[];

  constructor(offsetBytes: number, description: string, copyProblems: string[], cause: unknown) {
    super('THIN_CORRUPT_BLOCK', `No copy of bytes [${offsetBytes}, +${MIRROR_UNIT_BYTES}) of ${description} is good: ${copyProblems.join('; ')}`, { cause });
    this.copyProblems = copyProblems;
  }
}

interface FailedCopy {
  copyIndex: number;
  kind: BadCopyKind;
  reason: string;
}

/** What the copies of one unit did while it was read: the bookkeeping shared by the two readers. */
class UnitAttempt {
  readonly failed: FailedCopy[] = [];
  firstError: unknown;

  constructor(earlierError: unknown) {
    this.firstError = earlierError;
  }

  /** A copy's read failed: the medium's EIO is noted, anything else thrown. */
  readFailed(copyIndex: number, error: unknown): void {
    if (!isMediaError(error)) throw error;
    this.firstError ??= error;
    this.failed.push({ copyIndex, kind: 'read', reason: messageOf(error) });
  }

  valid(piece: Uint8Array, copyIndex: number, validate: (bytes: Uint8Array, copyIndex: number) => string | undefined): boolean {
    const problem = validate(piece, copyIndex);
    if (problem === undefined) return true;
    this.failed.push({ copyIndex, kind: 'invalid', reason: problem });
    return false;
  }
}

export class MirroredBlockFile implements RedundantBlockFile {
  readonly description: string;
  /** The copies; relocateCopy() replaces one (the pool moving its mirror to let metadata grow). */
  copies: readonly MirrorCopy[];
  readonly counters: MirrorCounters = { copyReadErrors: 0, copyWriteErrors: 0, invalidCopies: 0, repairs: 0, repairFailures: 0, unrecoverableReads: 0, unrecoverableWrites: 0 };
  /** Told of every copy found bad (the pool records it durably). */
  onBadCopy: ((event: BadCopyEvent) => void) | undefined;
  /** The logical size: copies do not overlap, so a copy ends where the next begins (same file) or at its file's end. */
  #limitBytes: number;
  readonly #files: BlockFile[];
  /** Unit index → bit mask of copies known bad. */
  readonly #bad = new Map<number, number>();
  /** Unit index → copy index → what was wrong there, for the units in #bad. */
  readonly #reasons = new Map<number, Map<number, string>>();
  /** Unit index → the repair write in flight there. */
  readonly #repairs = new Map<number, Promise<boolean>>();

  /** Read-only: bad copies are reported, never rewritten (check, dump, a read-only open). */
  readonly readOnly: boolean;

  constructor(copies: readonly MirrorCopy[], options: { limitBytes: number; description?: string; readOnly?: boolean }) {
    assert(copies.length >= 2 && copies.length <= 8, `a mirror of ${copies.length} copies`);
    assert(Number.isSafeInteger(options.limitBytes) && options.limitBytes > 0 && options.limitBytes % MIRROR_UNIT_BYTES === 0, `bad mirror size ${options.limitBytes}`);
    for (const copy of copies) {
      assert(Number.isSafeInteger(copy.offsetBytes) && copy.offsetBytes >= 0 && copy.offsetBytes % MIRROR_UNIT_BYTES === 0, `bad copy offset ${copy.offsetBytes}`);
    }
    // Copies sharing a file must not overlap.
    for (let a = 0; a < copies.length; a++) {
      for (let b = a + 1; b < copies.length; b++) {
        if (copies[a]!.file !== copies[b]!.file) continue;
        assert(Math.abs(copies[a]!.offsetBytes - copies[b]!.offsetBytes) >= options.limitBytes, 'mirror copies in one file overlap');
      }
    }
    this.copies = copies;
    this.#limitBytes = options.limitBytes;
    this.#files = [...new Set(copies.map((copy) => copy.file))];
    this.description = options.description ?? copies[0]!.file.description;
    this.readOnly = options.readOnly === true;
  }

  /** Two copies in one file, `mirrorOffsetBytes` apart: the pool's metadata layout. */
  static inOneFile(file: BlockFile, mirrorOffsetBytes: number, options: { readOnly?: boolean } = {}): MirroredBlockFile {
    return new MirroredBlockFile(
      [
        { file, offsetBytes: 0 },
        { file, offsetBytes: mirrorOffsetBytes },
      ],
      { limitBytes: mirrorOffsetBytes, readOnly: options.readOnly === true },
    );
  }

  get copyCount(): number {
    return this.copies.length;
  }

  /**
   * True when a copy's file cannot grow (a block device). A mirror whose logical size has reached
   * the next copy can still grow once that copy is moved further on (relocateCopy; the pool does
   * so, docs/format.md F-MIR-6); grow() alone refuses to pass it.
   */
  get fixedSize(): boolean {
    return this.copies.some((copy) => copy.file.fixedSize === true);
  }

  /** Where the next copy begins: the logical size grow() may reach without moving a copy. */
  get limitBytes(): number {
    return this.#limitBytes;
  }

  /**
   * Copy `copyIndex` now lies at `offsetBytes` of its file, and the logical size may reach
   * `limitBytes`: the caller has already written and synced every unit that matters there
   * (TransactionManager.moveMirror). What was known bad about the copy's old place is forgotten.
   */
  relocateCopy(copyIndex: number, offsetBytes: number, limitBytes: number): void {
    const old = this.copies[copyIndex];
    assert(old !== undefined, `no copy ${copyIndex}`);
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && offsetBytes % MIRROR_UNIT_BYTES === 0, `bad copy offset ${offsetBytes}`);
    assert(Number.isSafeInteger(limitBytes) && limitBytes >= this.#limitBytes && limitBytes % MIRROR_UNIT_BYTES === 0, `bad mirror size ${limitBytes}`);
    assert(this.#repairs.size === 0, 'a copy is moved while repairs are in flight');
    const copies = this.copies.map((copy, index) => (index === copyIndex ? { file: copy.file, offsetBytes } : copy));
    for (let a = 0; a < copies.length; a++) {
      for (let b = a + 1; b < copies.length; b++) {
        if (copies[a]!.file !== copies[b]!.file) continue;
        assert(Math.abs(copies[a]!.offsetBytes - copies[b]!.offsetBytes) >= limitBytes, 'mirror copies in one file overlap');
      }
    }
    this.copies = copies;
    this.#limitBytes = limitBytes;
    for (const [unit, mask] of [...this.#bad]) {
      const left = mask & ~(1 << copyIndex);
      this.#reasons.get(unit)?.delete(copyIndex);
      if (left === 0) {
        this.#bad.delete(unit);
        this.#reasons.delete(unit);
      } else this.#bad.set(unit, left);
    }
  }

  get degradedUnits(): number {
    return this.#bad.size;
  }

  /** The copies known bad and not rewritten since, with what was wrong (check lists them; scrub and repairs clear them). */
  badCopies(): Array<{ offsetBytes: number; copyIndex: number; physicalOffsetBytes: number; reason: string }> {
    const list: Array<{ offsetBytes: number; copyIndex: number; physicalOffsetBytes: number; reason: string }> = [];
    for (const [unit, mask] of [...this.#bad].sort((a, b) => a[0] - b[0])) {
      this.copies.forEach((copy, copyIndex) => {
        if ((mask & (1 << copyIndex)) === 0) return;
        const offsetBytes = unit * MIRROR_UNIT_BYTES;
        list.push({ offsetBytes, copyIndex, physicalOffsetBytes: copy.offsetBytes + offsetBytes, reason: this.#reasons.get(unit)?.get(copyIndex) ?? 'bad' });
      });
    }
    return list;
  }

  sizeBytes(): number {
    let size = this.#limitBytes;
    for (const copy of this.copies) size = Math.min(size, Math.max(0, copy.file.sizeBytes() - copy.offsetBytes));
    return size;
  }

  physicalPlaces(offsetBytes: number): Array<{ file: BlockFile; offsetBytes: number }> {
    return this.copies.map((copy) => ({ file: copy.file, offsetBytes: copy.offsetBytes + offsetBytes }));
  }

  // ---- reads ----

  readSync(target: Uint8Array, offsetBytes: number): void {
    this.#checkRange(offsetBytes, target.length);
    this.readValidatedSync(target, offsetBytes, () => undefined);
  }

  read(target: Uint8Array, offsetBytes: number): Promise<void> {
    this.#checkRange(offsetBytes, target.length);
    return this.readValidated(target, offsetBytes, () => undefined);
  }

  readCopySync(copyIndex: number, target: Uint8Array, offsetBytes: number): void {
    const copy = this.copies[copyIndex];
    assert(copy !== undefined, `no copy ${copyIndex}`);
    this.#checkRange(offsetBytes, target.length);
    copy.file.readSync(target, copy.offsetBytes + offsetBytes);
  }

  readValidatedSync(target: Uint8Array, offsetBytes: number, validate: (bytes: Uint8Array, copyIndex: number) => string | undefined): void {
    this.#checkRange(offsetBytes, target.length);
    if (target.length === 0) return;
    // The common case: one read of the preferred copy, valid.
    const first = this.#preferredCopy(offsetBytes, target.length);
    let firstError: unknown;
    try {
      this.copies[first]!.file.readSync(target, this.copies[first]!.offsetBytes + offsetBytes);
      if (target.length <= MIRROR_UNIT_BYTES ? validate(target, first) === undefined : this.#allUnitsValid(target, first, validate)) return;
    } catch (error) {
      if (!isMediaError(error)) throw error;
      firstError = error;
    }
    // Unit by unit, each from the first copy that reads and validates.
    for (let unitOffset = 0; unitOffset < target.length; unitOffset += MIRROR_UNIT_BYTES) {
      const piece = target.subarray(unitOffset, Math.min(target.length, unitOffset + MIRROR_UNIT_BYTES));
      this.#readUnitSync(piece, offsetBytes + unitOffset, validate, firstError);
    }
  }

  async readValidated(target: Uint8Array, offsetBytes: number, validate: (bytes: Uint8Array, copyIndex: number) => string | undefined): Promise<void> {
    this.#checkRange(offsetBytes, target.length);
    if (target.length === 0) return;
    const first = this.#preferredCopy(offsetBytes, target.length);
    let firstError: unknown;
    try {
      await this.copies[first]!.file.read(target, this.copies[first]!.offsetBytes + offsetBytes);
      if (target.length <= MIRROR_UNIT_BYTES ? validate(target, first) === undefined : this.#allUnitsValid(target, first, validate)) return;
    } catch (error) {
      if (!isMediaError(error)) throw error;
      firstError = error;
    }
    for (let unitOffset = 0; unitOffset < target.length; unitOffset += MIRROR_UNIT_BYTES) {
      const piece = target.subarray(unitOffset, Math.min(target.length, unitOffset + MIRROR_UNIT_BYTES));
      await this.#readUnit(piece, offsetBytes + unitOffset, validate, firstError);
    }
  }

  #allUnitsValid(target: Uint8Array, copyIndex: number, validate: (bytes: Uint8Array, copyIndex: number) => string | undefined): boolean {
    for (let unitOffset = 0; unitOffset < target.length; unitOffset += MIRROR_UNIT_BYTES) {
      if (validate(target.subarray(unitOffset, Math.min(target.length, unitOffset + MIRROR_UNIT_BYTES)), copyIndex) !== undefined) return false;
    }
    return true;
  }

  #readUnitSync(piece: Uint8Array, offsetBytes: number, validate: (bytes: Uint8Array, copyIndex: number) => string | undefined, earlierError: unknown): void {
    const attempt = new UnitAttempt(earlierError);
    for (const copyIndex of this.#copyOrder(offsetBytes)) {
      const copy = this.copies[copyIndex]!;
      try {
        copy.file.readSync(piece, copy.offsetBytes + offsetBytes);
      } catch (error) {
        attempt.readFailed(copyIndex, error);
        continue;
      }
      if (attempt.valid(piece, copyIndex, validate)) return this.#afterGoodRead(piece, offsetBytes, copyIndex, attempt.failed);
    }
    this.#unrecoverable(offsetBytes, attempt);
  }

  async #readUnit(piece: Uint8Array, offsetBytes: number, validate: (bytes: Uint8Array, copyIndex: number) => string | undefined, earlierError: unknown): Promise<void> {
    const attempt = new UnitAttempt(earlierError);
    for (const copyIndex of this.#copyOrder(offsetBytes)) {
      const copy = this.copies[copyIndex]!;
      try {
        await copy.file.read(piece, copy.offsetBytes + offsetBytes);
      } catch (error) {
        attempt.readFailed(copyIndex, error);
        continue;
      }
      if (attempt.valid(piece, copyIndex, validate)) return this.#afterGoodRead(piece, offsetBytes, copyIndex, attempt.failed);
    }
    this.#unrecoverable(offsetBytes, attempt);
  }

  /** A unit read well from one copy after others failed: note them and rewrite them from it. */
  #afterGoodRead(piece: Uint8Array, offsetBytes: number, goodCopy: number, failed: readonly FailedCopy[]): void {
    if (failed.length === 0) return;
    const good = new Uint8Array(piece);
    for (const { copyIndex, kind, reason } of failed) {
      if (copyIndex === goodCopy) continue;
      this.#noteBad(copyIndex, offsetBytes, piece.length, kind, reason);
      void this.repairCopy(copyIndex, good, offsetBytes);
    }
  }

  #unrecoverable(offsetBytes: number, attempt: UnitAttempt): never {
    this.counters.unrecoverableReads += 1;
    for (const { copyIndex, kind, reason } of attempt.failed) this.#noteBad(copyIndex, offsetBytes, MIRROR_UNIT_BYTES, kind, reason);
    if (attempt.failed.every((entry) => entry.kind === 'read') && attempt.firstError !== undefined) throw attempt.firstError;
    throw new NoGoodCopyError(
      offsetBytes,
      this.description,
      attempt.failed.map((entry) => `copy ${entry.copyIndex}: ${entry.reason}`),
      attempt.firstError,
    );
  }

  // ---- writes ----

  async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    this.#checkRange(offsetBytes, source.length);
    if (source.length === 0) return;
    await this.#waitForRepairs(offsetBytes, source.length);
    const results = await Promise.allSettled(this.copies.map((copy) => copy.file.write(source, copy.offsetBytes + offsetBytes)));
    let succeeded = 0;
    let firstError: unknown;
    results.forEach((result, copyIndex) => {
      if (result.status === 'fulfilled') {
        succeeded += 1;
        this.#clearBad(copyIndex, offsetBytes, source.length);
        return;
      }
      firstError ??= result.reason;
    });
    if (succeeded === this.copies.length) return;
    // Anything but the medium refusing the write (closed, power lost, ENOSPC) fails the write.
    const other = results.find((result) => result.status === 'rejected' && !isMediaError(result.reason));
    if (other !== undefined && other.status === 'rejected') throw other.reason;
    if (source.length > MIRROR_UNIT_BYTES) {
      await this.#writeUnitByUnit(source, offsetBytes, results.map((result) => result.status === 'rejected'));
      return;
    }
    if (succeeded === 0) {
      this.counters.unrecoverableWrites += 1;
      throw firstError;
    }
    results.forEach((result, copyIndex) => {
      if (result.status === 'rejected') {
        this.#noteBad(copyIndex, offsetBytes, source.length, 'write', messageOf(result.reason));
      }
    });
  }

  /**
   * A write of several units that some copies refused (EIO): on those copies, written again unit
   * by unit, so only the units that refuse it are marked bad (a batch of delta log blocks is one
   * write). Fails when a unit is in no copy.
   */
  async #writeUnitByUnit(source: Uint8Array, offsetBytes: number, refusedCopies: readonly boolean[]): Promise<void> {
    for (let unitOffset = 0; unitOffset < source.length; unitOffset += MIRROR_UNIT_BYTES) {
      const piece = source.subarray(unitOffset, Math.min(source.length, unitOffset + MIRROR_UNIT_BYTES));
      let held = refusedCopies.some((refused) => !refused);
      let firstError: unknown;
      const refusals: Array<{ copyIndex: number; error: unknown }> = [];
      for (const [copyIndex, copy] of this.copies.entries()) {
        if (!refusedCopies[copyIndex]) continue;
        try {
          await copy.file.write(piece, copy.offsetBytes + offsetBytes + unitOffset);
          held = true;
          this.#clearBad(copyIndex, offsetBytes + unitOffset, piece.length);
        } catch (error) {
          if (!isMediaError(error)) throw error;
          firstError ??= error;
          refusals.push({ copyIndex, error });
        }
      }
      if (!held) {
        this.counters.unrecoverableWrites += 1;
        throw firstError;
      }
      for (const { copyIndex, error } of refusals) this.#noteBad(copyIndex, offsetBytes + unitOffset, piece.length, 'write', messageOf(error));
    }
  }

  async repairCopy(copyIndex: number, source: Uint8Array, offsetBytes: number): Promise<boolean> {
    const copy = this.copies[copyIndex];
    assert(copy !== undefined, `no copy ${copyIndex}`);
    this.#checkRange(offsetBytes, source.length);
    if (this.readOnly) return false;
    const unit = Math.floor(offsetBytes / MIRROR_UNIT_BYTES);
    const before = this.#repairs.get(unit);
    const repair = (async (): Promise<boolean> => {
      await before?.catch(() => false);
      try {
        await copy.file.write(source, copy.offsetBytes + offsetBytes);
      } catch (error) {
        this.counters.repairFailures += 1;
        // A copy that cannot even be rewritten is a bad place for good: the pool records it.
        if (isMediaError(error)) this.#noteBad(copyIndex, offsetBytes, source.length, 'write', messageOf(error));
        return false;
      }
      this.counters.repairs += 1;
      this.#clearBad(copyIndex, offsetBytes, source.length);
      return true;
    })();
    this.#repairs.set(unit, repair);
    void repair.finally(() => {
      if (this.#repairs.get(unit) === repair) this.#repairs.delete(unit);
    });
    return repair;
  }

  async repairsSettled(): Promise<void> {
    while (this.#repairs.size > 0) await Promise.allSettled([...this.#repairs.values()]);
  }

  async #waitForRepairs(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.#repairs.size === 0) return;
    const first = Math.floor(offsetBytes / MIRROR_UNIT_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / MIRROR_UNIT_BYTES);
    const waits: Array<Promise<boolean>> = [];
    for (const [unit, repair] of this.#repairs) if (unit >= first && unit <= last) waits.push(repair);
    if (waits.length > 0) await Promise.allSettled(waits);
  }

  // ---- the rest of BlockFile ----

  async sync(options?: SyncOptions): Promise<void> {
    if (this.#files.length === 1) {
      await this.#files[0]!.sync(options);
      return;
    }
    // Several files: an inline sync runs them one after the other on this thread; otherwise at once.
    if (options?.inline === true) {
      for (const file of this.#files) await file.sync(options);
      return;
    }
    const results = await Promise.allSettled(this.#files.map((file) => file.sync(options)));
    const failed = results.find((result) => result.status === 'rejected');
    if (failed !== undefined && failed.status === 'rejected') throw failed.reason;
  }

  async allocate(offsetBytes: number, lengthBytes: number): Promise<void> {
    await Promise.all(this.copies.map((copy) => copy.file.allocate?.(copy.offsetBytes + offsetBytes, lengthBytes)));
  }

  async grow(sizeBytes: number): Promise<void> {
    if (sizeBytes > this.#limitBytes) {
      throw new ThinError(
        'THIN_INVALID',
        `Cannot grow ${this.description} to ${sizeBytes} bytes: its mirror copy begins at ${this.#limitBytes} bytes (move the copy further first)`,
      );
    }
    for (const copy of this.copies) await copy.file.grow(copy.offsetBytes + sizeBytes);
  }

  async close(): Promise<void> {
    await this.repairsSettled();
    for (const file of this.#files) await file.close();
  }

  // ---- bookkeeping ----

  /** The copy to read first: the first one not known bad anywhere in the range. */
  #preferredCopy(offsetBytes: number, lengthBytes: number): number {
    if (this.#bad.size === 0) return 0;
    let mask = 0;
    const last = Math.floor((offsetBytes + lengthBytes - 1) / MIRROR_UNIT_BYTES);
    for (let unit = Math.floor(offsetBytes / MIRROR_UNIT_BYTES); unit <= last; unit++) mask |= this.#bad.get(unit) ?? 0;
    for (let copyIndex = 0; copyIndex < this.copies.length; copyIndex++) if ((mask & (1 << copyIndex)) === 0) return copyIndex;
    return 0;
  }

  /** Copies in the order to try for one unit: those not known bad first. */
  #copyOrder(offsetBytes: number): number[] {
    const mask = this.#bad.get(Math.floor(offsetBytes / MIRROR_UNIT_BYTES)) ?? 0;
    const indexes = this.copies.map((_, index) => index);
    return [...indexes.filter((index) => (mask & (1 << index)) === 0), ...indexes.filter((index) => (mask & (1 << index)) !== 0)];
  }

  #noteBad(copyIndex: number, offsetBytes: number, lengthBytes: number, kind: BadCopyKind, reason: string): void {
    if (kind === 'read') this.counters.copyReadErrors += 1;
    else if (kind === 'write') this.counters.copyWriteErrors += 1;
    else this.counters.invalidCopies += 1;
    const beginUnit = Math.floor(offsetBytes / MIRROR_UNIT_BYTES);
    const endUnit = Math.ceil((offsetBytes + lengthBytes) / MIRROR_UNIT_BYTES);
    for (let unit = beginUnit; unit < endUnit; unit++) {
      this.#bad.set(unit, (this.#bad.get(unit) ?? 0) | (1 << copyIndex));
      const reasons = this.#reasons.get(unit) ?? new Map<number, string>();
      reasons.set(copyIndex, reason);
      this.#reasons.set(unit, reasons);
    }
    const copy = this.copies[copyIndex]!;
    this.onBadCopy?.({
      copyIndex,
      offsetBytes: beginUnit * MIRROR_UNIT_BYTES,
      lengthBytes: (endUnit - beginUnit) * MIRROR_UNIT_BYTES,
      physicalOffsetBytes: copy.offsetBytes + beginUnit * MIRROR_UNIT_BYTES,
      kind,
      reason,
    });
  }

  #clearBad(copyIndex: number, offsetBytes: number, lengthBytes: number): void {
    if (this.#bad.size === 0) return;
    const beginUnit = Math.floor(offsetBytes / MIRROR_UNIT_BYTES);
    const endUnit = Math.ceil((offsetBytes + lengthBytes) / MIRROR_UNIT_BYTES);
    for (let unit = beginUnit; unit < endUnit; unit++) {
      const mask = (this.#bad.get(unit) ?? 0) & ~(1 << copyIndex);
      this.#reasons.get(unit)?.delete(copyIndex);
      if (mask === 0) {
        this.#bad.delete(unit);
        this.#reasons.delete(unit);
      } else this.#bad.set(unit, mask);
    }
  }

  #checkRange(offsetBytes: number, lengthBytes: number): void {
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, `bad offset ${offsetBytes}`);
    assert(Number.isSafeInteger(lengthBytes) && lengthBytes >= 0, `bad length ${lengthBytes}`);
    if (offsetBytes + lengthBytes > this.#limitBytes) {
      throw new ThinError(
        'THIN_INVALID',
        `Cannot reach bytes [${offsetBytes}, +${lengthBytes}) of ${this.description}: its mirror copy begins at ${this.#limitBytes} bytes`,
      );
    }
  }
}
