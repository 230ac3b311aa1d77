// The simulated disk: a deterministic model of a machine whose disks lose power
// (docs/fault-model.md section 2).
//
// Model.
// - A SimMachine holds one or more SimDisks (a pool uses two: metadata and data). A power cut
//   hits every disk of the machine at the same instant, so the trace of events is machine-wide.
// - Each disk has a *volatile* image: what the running process reads back (page cache over
//   medium). A write is applied to it when the write completes. Writes, reads and syncs complete
//   asynchronously, one per macrotask, in an order drawn from the machine's seeded generator, so
//   the engine sees out-of-order completion exactly as on the libuv pool, and the same seed gives
//   the same order.
// - A write becomes *durable* only when a sync of its disk that was *started after the write
//   completed* completes successfully (the BlockFile contract: a sync does not cover writes still
//   in flight). Every other write issued so far is *pending*.
// - A crash after event k keeps the durable image and lets every pending write, independently,
//   be kept, lost or torn (SQLite test6.c's 3/8 : 3/8 : 1/4). A tear works on 512-byte sectors of
//   the disk (absolute offsets), never assuming that a sector is atomic: a left part, a right part
//   or a random set of sectors is bad, and a bad sector holds the old bytes or garbage (FDB's
//   AsyncFileNonDurable); in the "random sectors" shape each sector is new, old or garbage.
//   Garbage covers only the bytes the write itself carried within a sector: bytes the host never
//   asked to change are not destroyed (no software can defend those against its own disk).
// - File size and holes are modelled as a file system keeps them (docs/fault-model.md section 2):
//   growing a disk (ftruncate) and punching a hole (fallocate PUNCH_HOLE) change what the process
//   sees at once, and become durable only as a completed write does, by a later sync of that disk
//   (fsync/fdatasync persist the size with the data; a sync started before the growth does not).
//   Until then a crash keeps or loses a growth (never half of one), independently of the writes
//   around it (a journal commit may carry the new size before or after the data); a crash image's
//   size is the durable size, stretched by the growth and the writes past it that it keeps. A
//   punch is kept, lost or torn by whole 4 KiB pages (a file system frees a range extent by
//   extent, in several journal transactions), and a torn punch leaves each page punched or as it
//   was, never garbage. allocate (fallocate inside the file, the size kept) reserves space and
//   changes nothing anyone reads: it is traced, not modelled.
// - The trace records every write (disk, offset, bytes), its completion, every sync start and
//   completion, growth, punches, allocation, medium corruption, and named marks the test adds ("ack flush #3"), like
//   dm-log-writes. CrashPoint k enumerates the pending writes after event k and yields crash
//   images: all kept, all lost, every subset when few, each single one lost, then random SQLite
//   outcomes with tears, within a budget, deterministically from a seed.
// - Faults: bit flips and arbitrary corruption of the medium, read EIO (one-shot or persistent) on
//   byte ranges, write EIO, sync EIO, a misdirected write (the next write of a disk lands at
//   another offset), a dm-dust bad-sector list (reads fail with EIO until the sector is
//   written), persistent bad sectors (reads and writes fail with EIO for ever: a grown defect the
//   drive could not reallocate; carried over a crash like the dm-dust list), and SQLite's I/O-error
//   loop (the N-th I/O of the machine fails, once or from then on). A failed sync makes the disk
//   refuse every later sync, as FileBlockFile does; a write that fails with EIO refuses its own
//   range only (it stays pending: a crash may still keep or tear it).
//
// Images are sparse and copy-on-write by 4 KiB page, so thousands of crash images cost little.
import { createHash } from 'node:crypto';
import type { BlockFile } from '../../src/io/block-file.ts';
import { ThinError, assert } from '../../src/errors.ts';
import { Rng, mixSeed } from './rng.ts';

export const SECTOR_SIZE_BYTES = 512;
const PAGE_SIZE_BYTES = 4096;
/**
 * The one page every page written with zeros shares (never owned, so never changed in place): a
 * pool zero-fills the rest of each new block, and a fresh 4 KiB of memory for each of those pages
 * made memory the cost of big in-memory tests.
 */
const ZERO_PAGE = new Uint8Array(PAGE_SIZE_BYTES);

function isZero(bytes: Uint8Array): boolean {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).equals(ZERO_PAGE.subarray(0, bytes.length));
}

// ---------------------------------------------------------------------------------------------
// Sparse copy-on-write byte image

export class SparseImage {
  #sizeBytes: number;
  #pages: Map<number, Uint8Array>;
  /** Pages this image may change in place; every other page may be shared with a clone. */
  #owned: Set<number>;

  constructor(sizeBytes = 0) {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, `bad image size ${sizeBytes}`);
    this.#sizeBytes = sizeBytes;
    this.#pages = new Map();
    this.#owned = new Set();
  }

  static fromBytes(bytes: Uint8Array): SparseImage {
    const image = new SparseImage(bytes.length);
    image.write(bytes, 0);
    return image;
  }

  get sizeBytes(): number {
    return this.#sizeBytes;
  }

  grow(sizeBytes: number): void {
    if (sizeBytes > this.#sizeBytes) this.#sizeBytes = sizeBytes;
  }

  /** Makes [offsetBytes, +lengthBytes) read as zeros without changing the size: whole pages are dropped. */
  punch(offsetBytes: number, lengthBytes: number): void {
    const endBytes = Math.min(offsetBytes + lengthBytes, this.#sizeBytes);
    let positionBytes = offsetBytes;
    while (positionBytes < endBytes) {
      const pageIndex = Math.floor(positionBytes / PAGE_SIZE_BYTES);
      const inPageBytes = positionBytes - pageIndex * PAGE_SIZE_BYTES;
      const chunkBytes = Math.min(PAGE_SIZE_BYTES - inPageBytes, endBytes - positionBytes);
      if (this.#pages.has(pageIndex)) {
        if (chunkBytes === PAGE_SIZE_BYTES) {
          this.#pages.delete(pageIndex);
          this.#owned.delete(pageIndex);
        } else {
          this.#writablePage(pageIndex).fill(0, inPageBytes, inPageBytes + chunkBytes);
        }
      }
      positionBytes += chunkBytes;
    }
  }

  /** Pages that hold bytes (a file system's allocated blocks): what `du` of the file would count. */
  get allocatedBytes(): number {
    let pages = 0;
    for (const pageIndex of this.#pages.keys()) if (pageIndex * PAGE_SIZE_BYTES < this.#sizeBytes) pages += 1;
    return pages * PAGE_SIZE_BYTES;
  }

  /** Fills target from offsetBytes; bytes never written (or past the end) read as zeros. */
  read(target: Uint8Array, offsetBytes: number): void {
    let doneBytes = 0;
    while (doneBytes < target.length) {
      const positionBytes = offsetBytes + doneBytes;
      const pageIndex = Math.floor(positionBytes / PAGE_SIZE_BYTES);
      const inPageBytes = positionBytes - pageIndex * PAGE_SIZE_BYTES;
      const chunkBytes = Math.min(PAGE_SIZE_BYTES - inPageBytes, target.length - doneBytes);
      const page = this.#pages.get(pageIndex);
      if (page === undefined || positionBytes >= this.#sizeBytes) {
        target.fill(0, doneBytes, doneBytes + chunkBytes);
      } else {
        target.set(page.subarray(inPageBytes, inPageBytes + chunkBytes), doneBytes);
      }
      doneBytes += chunkBytes;
    }
    // Bytes past the end read as zeros even if a page holds stale bytes there.
    if (offsetBytes + target.length > this.#sizeBytes) {
      target.fill(0, Math.max(0, this.#sizeBytes - offsetBytes));
    }
  }

  /** Writes source at offsetBytes, extending the image when it ends beyond it. */
  write(source: Uint8Array, offsetBytes: number): void {
    let doneBytes = 0;
    while (doneBytes < source.length) {
      const positionBytes = offsetBytes + doneBytes;
      const pageIndex = Math.floor(positionBytes / PAGE_SIZE_BYTES);
      const inPageBytes = positionBytes - pageIndex * PAGE_SIZE_BYTES;
      const chunkBytes = Math.min(PAGE_SIZE_BYTES - inPageBytes, source.length - doneBytes);
      const chunk = source.subarray(doneBytes, doneBytes + chunkBytes);
      if ((chunkBytes === PAGE_SIZE_BYTES || !this.#pages.has(pageIndex)) && isZero(chunk)) {
        // The page reads as zeros whole: share ZERO_PAGE (it still counts as allocated, as a file system's would).
        this.#pages.set(pageIndex, ZERO_PAGE);
        this.#owned.delete(pageIndex);
      } else {
        this.#writablePage(pageIndex).set(chunk, inPageBytes);
      }
      doneBytes += chunkBytes;
    }
    const endBytes = offsetBytes + source.length;
    if (endBytes > this.#sizeBytes) this.#sizeBytes = endBytes;
  }

  /** A copy that shares pages with this image until either side writes them. */
  clone(): SparseImage {
    const copy = new SparseImage(this.#sizeBytes);
    copy.#pages = new Map(this.#pages);
    this.#owned.clear();
    return copy;
  }

  toBytes(): Uint8Array {
    const bytes = new Uint8Array(this.#sizeBytes);
    this.read(bytes, 0);
    return bytes;
  }

  equals(other: SparseImage): boolean {
    if (other.#sizeBytes !== this.#sizeBytes) return false;
    const pageIndexes = new Set([...this.#pages.keys(), ...other.#pages.keys()]);
    const mine = new Uint8Array(PAGE_SIZE_BYTES);
    const theirs = new Uint8Array(PAGE_SIZE_BYTES);
    for (const pageIndex of pageIndexes) {
      if (this.#pages.get(pageIndex) === other.#pages.get(pageIndex)) continue;
      const offsetBytes = pageIndex * PAGE_SIZE_BYTES;
      this.read(mine, offsetBytes);
      other.read(theirs, offsetBytes);
      if (!bytesEqual(mine, theirs)) return false;
    }
    return true;
  }

  #writablePage(pageIndex: number): Uint8Array {
    const page = this.#pages.get(pageIndex);
    if (page !== undefined && this.#owned.has(pageIndex)) return page;
    const fresh = new Uint8Array(PAGE_SIZE_BYTES);
    if (page !== undefined) fresh.set(page);
    this.#pages.set(pageIndex, fresh);
    this.#owned.add(pageIndex);
    return fresh;
  }
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}

// ---------------------------------------------------------------------------------------------
// Trace

export type SimEvent =
  | { kind: 'write'; disk: string; writeId: number; offsetBytes: number; lengthBytes: number; misdirectedFromBytes?: number }
  | { kind: 'write-done'; disk: string; writeId: number; failed: boolean }
  | { kind: 'sync'; disk: string; syncId: number; coveredWriteIds: readonly number[] }
  | { kind: 'sync-done'; disk: string; syncId: number; failed: boolean }
  | { kind: 'grow'; disk: string; writeId: number; sizeBytes: number }
  | { kind: 'punch'; disk: string; writeId: number; offsetBytes: number; lengthBytes: number }
  | { kind: 'allocate'; disk: string; offsetBytes: number; lengthBytes: number }
  | { kind: 'corrupt'; disk: string; writeId: number; offsetBytes: number; lengthBytes: number }
  | { kind: 'mark'; label: string };

/**
 * What a pending change does to a disk: a write of bytes, a growth of the file (to offsetBytes
 * bytes), or a punched hole of lengthBytes at offsetBytes. Growth and punches are pending and
 * become durable as writes do (see the module comment).
 */
export type SimChange = 'write' | 'grow' | 'punch';

/** One write (or growth, or punch) as the trace knows it. */
export interface SimWrite {
  readonly writeId: number;
  readonly disk: string;
  /** 'write' unless the change is a growth or a punch. */
  readonly change: SimChange;
  /** Where the bytes landed (differs from where they were aimed after a misdirected write); the new size of a growth. */
  readonly offsetBytes: number;
  /** The bytes written; empty for a growth or a punch. */
  readonly bytes: Uint8Array;
  /** Bytes the change covers: the write's length, a punch's length, 0 for a growth. */
  readonly lengthBytes: number;
  /** Event index of the write's issue. */
  readonly issueIndex: number;
  /** Event index of its completion; Infinity while in flight. */
  doneIndex: number;
  failed: boolean;
  /** Event index of the sync-done (or corruption) that made it durable; Infinity while not durable. */
  durableIndex: number;
}

function describeEvent(event: SimEvent): string {
  switch (event.kind) {
    case 'write':
      return `write #${event.writeId} ${event.disk} [${event.offsetBytes}, +${event.lengthBytes})` +
        (event.misdirectedFromBytes === undefined ? '' : ` (misdirected from ${event.misdirectedFromBytes})`);
    case 'write-done':
      return `write #${event.writeId} ${event.disk} ${event.failed ? 'failed' : 'done'}`;
    case 'sync':
      return `sync #${event.syncId} ${event.disk} (covers ${event.coveredWriteIds.length} writes)`;
    case 'sync-done':
      return `sync #${event.syncId} ${event.disk} ${event.failed ? 'failed' : 'done'}`;
    case 'grow':
      return `grow #${event.writeId} ${event.disk} to ${event.sizeBytes}`;
    case 'punch':
      return `punch #${event.writeId} ${event.disk} [${event.offsetBytes}, +${event.lengthBytes})`;
    case 'allocate':
      return `allocate ${event.disk} [${event.offsetBytes}, +${event.lengthBytes})`;
    case 'corrupt':
      return `corrupt ${event.disk} [${event.offsetBytes}, +${event.lengthBytes})`;
    case 'mark':
      return `mark "${event.label}"`;
  }
}

// ---------------------------------------------------------------------------------------------
// Crash outcomes

export type TearShape = 'left' | 'right' | 'sectors';

/** What the crash does to one pending write. */
export type WriteOutcome =
  | { kind: 'kept' }
  | { kind: 'lost' }
  | { kind: 'torn'; shape: TearShape; seed: number };

export interface CrashVariant {
  /** 0-based index among the variants of its crash point. */
  readonly variantIndex: number;
  /** One outcome per pending write, in CrashPoint.pending order. */
  readonly outcomes: readonly WriteOutcome[];
  /** "kept 3, lost 1, torn 1 (#12 left)" */
  readonly description: string;
}

function describeOutcomes(pending: readonly SimWrite[], outcomes: readonly WriteOutcome[]): string {
  let kept = 0;
  let lost = 0;
  const torn: string[] = [];
  outcomes.forEach((outcome, index) => {
    if (outcome.kind === 'kept') kept += 1;
    else if (outcome.kind === 'lost') lost += 1;
    else torn.push(`#${pending[index]?.writeId} ${outcome.shape}`);
  });
  return `kept ${kept}, lost ${lost}, torn ${torn.length}` + (torn.length > 0 ? ` (${torn.join(', ')})` : '');
}

/** SQLite's crash outcome for one write: written 3/8, dropped 3/8, garbage (here: torn) 1/4. */
function randomOutcome(rng: Rng): WriteOutcome {
  const draw = rng.int(8);
  if (draw < 3) return { kind: 'kept' };
  if (draw < 6) return { kind: 'lost' };
  return { kind: 'torn', shape: rng.pick<TearShape>(['left', 'right', 'sectors']), seed: rng.next() };
}

/** Applies a change whole onto image: the bytes written, the size grown, the hole punched. */
function applyChange(image: SparseImage, write: SimWrite): void {
  if (write.change === 'write') image.write(write.bytes, write.offsetBytes);
  else if (write.change === 'grow') image.grow(write.offsetBytes);
  else image.punch(write.offsetBytes, write.lengthBytes);
}

/**
 * Applies a torn write onto image. Sectors are the disk's 512-byte sectors the write overlaps;
 * within each, only the write's own bytes change. A torn growth is lost (a size changes whole or
 * not at all); a torn punch leaves each 4 KiB page it covers punched or as it was.
 */
function applyTorn(image: SparseImage, write: SimWrite, shape: TearShape, seed: number): void {
  if (write.change === 'grow') return;
  const rng = new Rng(seed);
  if (write.change === 'punch') {
    applyTornPunch(image, write, shape, rng);
    return;
  }
  const beginBytes = write.offsetBytes;
  const endBytes = write.offsetBytes + write.bytes.length;
  if (endBytes === beginBytes) return;
  const firstSector = Math.floor(beginBytes / SECTOR_SIZE_BYTES);
  const sectorCount = Math.ceil(endBytes / SECTOR_SIZE_BYTES) - firstSector;
  // Per sector: 0 = new bytes, 1 = old bytes, 2 = garbage.
  const fates = new Uint8Array(sectorCount);
  if (shape === 'sectors') {
    for (let index = 0; index < sectorCount; index++) fates[index] = rng.int(3);
  } else {
    // The bad part: a left or right run of 1..sectorCount sectors, all old or all garbage.
    const badCount = 1 + rng.int(sectorCount);
    const badFate = rng.chance(0.5) ? 1 : 2;
    for (let index = 0; index < badCount; index++) {
      fates[shape === 'left' ? index : sectorCount - 1 - index] = badFate;
    }
  }
  for (let index = 0; index < sectorCount; index++) {
    const fate = fates[index];
    if (fate === 1) continue;
    const sectorBeginBytes = Math.max(beginBytes, (firstSector + index) * SECTOR_SIZE_BYTES);
    const sectorEndBytes = Math.min(endBytes, (firstSector + index + 1) * SECTOR_SIZE_BYTES);
    const piece =
      fate === 0
        ? write.bytes.subarray(sectorBeginBytes - beginBytes, sectorEndBytes - beginBytes)
        : rng.bytes(sectorEndBytes - sectorBeginBytes);
    image.write(piece, sectorBeginBytes);
  }
}

function applyTornPunch(image: SparseImage, write: SimWrite, shape: TearShape, rng: Rng): void {
  const beginBytes = write.offsetBytes;
  const endBytes = write.offsetBytes + write.lengthBytes;
  const firstPage = Math.floor(beginBytes / PAGE_SIZE_BYTES);
  const pageCount = Math.ceil(endBytes / PAGE_SIZE_BYTES) - firstPage;
  if (pageCount <= 0) return;
  // Per page: punched or not; 'left' / 'right' keep a run at that end as it was.
  const punched = new Uint8Array(pageCount).fill(1);
  if (shape === 'sectors') {
    for (let index = 0; index < pageCount; index++) punched[index] = rng.chance(0.5) ? 1 : 0;
  } else {
    const keptCount = 1 + rng.int(pageCount);
    for (let index = 0; index < keptCount; index++) punched[shape === 'left' ? index : pageCount - 1 - index] = 0;
  }
  for (let index = 0; index < pageCount; index++) {
    if (punched[index] === 0) continue;
    const pageBeginBytes = Math.max(beginBytes, (firstPage + index) * PAGE_SIZE_BYTES);
    const pageEndBytes = Math.min(endBytes, (firstPage + index + 1) * PAGE_SIZE_BYTES);
    image.punch(pageBeginBytes, pageEndBytes - pageBeginBytes);
  }
}

// ---------------------------------------------------------------------------------------------
// Crash points

/**
 * The machine's state after the first `eventCount` events of a trace: the durable images and
 * the pending writes. Variants turn it into crash images.
 */
export class CrashPoint {
  /** Number of events before the crash (crash point k is "after event k-1"). */
  readonly eventCount: number;
  /** The last event before the crash, if any. */
  readonly lastEvent: SimEvent | undefined;
  /** Writes issued and not durable, in the order a crash applies them: completion order, then in flight by issue order. */
  readonly pending: readonly SimWrite[];
  /** Labels of the marks before the crash, in order. */
  readonly marks: readonly string[];
  /** Disks grown since their last sync, and the size the process saw (their pending growths): a variant keeps or loses each. */
  readonly pendingSizes: ReadonlyMap<string, number>;
  /** Identifies the crash states: two points with equal keys yield the same images. */
  readonly stateKey: string;
  readonly #durable: ReadonlyMap<string, SparseImage>;
  readonly #durableKey: string;
  readonly #badSectors: ReadonlyMap<string, ReadonlySet<number>>;
  readonly #deadSectors: ReadonlyMap<string, ReadonlySet<number>>;
  readonly #seed: number;

  constructor(options: {
    eventCount: number;
    lastEvent: SimEvent | undefined;
    pending: readonly SimWrite[];
    marks: readonly string[];
    durable: ReadonlyMap<string, SparseImage>;
    durableKey: string;
    badSectors: ReadonlyMap<string, ReadonlySet<number>>;
    deadSectors: ReadonlyMap<string, ReadonlySet<number>>;
    seed: number;
  }) {
    this.eventCount = options.eventCount;
    this.lastEvent = options.lastEvent;
    this.pending = options.pending;
    const pendingSizes = new Map<string, number>();
    for (const change of this.pending) {
      if (change.change !== 'grow' || change.offsetBytes <= (options.durable.get(change.disk)?.sizeBytes ?? 0)) continue;
      pendingSizes.set(change.disk, Math.max(pendingSizes.get(change.disk) ?? 0, change.offsetBytes));
    }
    this.pendingSizes = pendingSizes;
    this.marks = options.marks;
    this.#durable = options.durable;
    this.#durableKey = options.durableKey;
    this.#badSectors = options.badSectors;
    this.#deadSectors = options.deadSectors;
    this.#seed = options.seed;
    this.stateKey = `${options.durableKey}|${this.pending.map((write) => write.writeId).join(',')}|${this.marks.length}`;
  }

  describe(): string {
    const last = this.lastEvent === undefined ? 'before any event' : `after ${describeEvent(this.lastEvent)}`;
    const grown = [...this.pendingSizes].map(([disk, sizeBytes]) => `${disk} to ${sizeBytes}`);
    return `${last}; ${this.pending.length} pending writes${grown.length > 0 ? `, growth not synced (${grown.join(', ')})` : ''}; marks [${this.marks.join(', ')}]`;
  }

  /**
   * Up to budget variants, deterministic from the point's seed: all kept, all lost, every
   * kept/lost subset when there are few pending writes, otherwise each single write lost; then
   * random SQLite outcomes, which tear. With no pending write there is exactly one state.
   */
  *variants(budget: number): Generator<CrashVariant> {
    assert(Number.isSafeInteger(budget) && budget >= 1, `bad variant budget ${budget}`);
    const count = this.pending.length;
    const rng = new Rng(mixSeed(this.#seed, this.eventCount, 0x7a1a));
    let variantIndex = 0;
    const seen = new Set<string>();
    const make = (drawn: WriteOutcome[]): CrashVariant | undefined => {
      // A torn growth is a lost one (a size changes whole): one state, one variant.
      const outcomes = drawn.map((outcome, index): WriteOutcome => (outcome.kind === 'torn' && this.pending[index]?.change === 'grow' ? { kind: 'lost' } : outcome));
      const key = outcomes.map((outcome) => (outcome.kind === 'torn' ? `t${outcome.seed}` : outcome.kind[0])).join('');
      if (seen.has(key)) return undefined;
      seen.add(key);
      return { variantIndex: variantIndex++, outcomes, description: describeOutcomes(this.pending, outcomes) };
    };
    const kept = (): WriteOutcome => ({ kind: 'kept' });
    const lost = (): WriteOutcome => ({ kind: 'lost' });

    const structured: WriteOutcome[][] = [];
    structured.push(Array.from({ length: count }, kept));
    structured.push(Array.from({ length: count }, lost));
    if (count > 0 && 2 ** count <= budget / 2) {
      for (let mask = 1; mask < 2 ** count - 1; mask++) {
        structured.push(Array.from({ length: count }, (_, index) => ((mask >> index) & 1 ? lost() : kept())));
      }
    } else if (count > 0) {
      // Each single write lost (the others kept), starting at a random write so that a small
      // budget still reaches every write across crash points.
      const singlesMax = Math.min(count, Math.floor((budget - 2) / 2));
      const start = rng.int(count);
      for (let step = 0; step < singlesMax; step++) {
        const lostIndex = (start + step) % count;
        structured.push(Array.from({ length: count }, (_, index) => (index === lostIndex ? lost() : kept())));
      }
    }
    for (const outcomes of structured) {
      if (variantIndex >= budget) return;
      const variant = make(outcomes);
      if (variant !== undefined) yield variant;
    }
    if (count === 0) return;
    // Random outcomes; give up after a few duplicates (a small space is already covered).
    let duplicates = 0;
    while (variantIndex < budget && duplicates < 4 * budget) {
      const outcomes = Array.from({ length: count }, () => randomOutcome(rng));
      const variant = make(outcomes);
      if (variant === undefined) duplicates += 1;
      else yield variant;
    }
  }

  /** A variant drawn at random as a real power cut would: 10 % of crashes keep everything (FDB). */
  randomVariant(rng: Rng): CrashVariant {
    const outcomes = rng.chance(0.1)
      ? this.pending.map((): WriteOutcome => ({ kind: 'kept' }))
      : this.pending.map(() => randomOutcome(rng));
    return { variantIndex: 0, outcomes, description: describeOutcomes(this.pending, outcomes) };
  }

  /** The disks' images after the crash. */
  images(variant: CrashVariant): Map<string, SparseImage> {
    assert(variant.outcomes.length === this.pending.length, 'a variant belongs to its crash point');
    const images = new Map<string, SparseImage>();
    for (const [name, image] of this.#durable) images.set(name, image.clone());
    this.pending.forEach((write, index) => {
      const outcome = variant.outcomes[index];
      const image = images.get(write.disk);
      assert(outcome !== undefined && image !== undefined);
      if (outcome.kind === 'kept') applyChange(image, write);
      else if (outcome.kind === 'torn') applyTorn(image, write, outcome.shape, outcome.seed);
    });
    return images;
  }

  /**
   * Names the crash images of variant by their bytes: the durable state (identified within its
   * trace) and the final contents of every page a pending write touched that differs from it.
   * Two variants (or crash points) of one trace with equal digests power up on identical disks,
   * so a campaign counts distinct crash images, not recoveries.
   */
  imageDigest(variant: CrashVariant): string {
    const images = this.images(variant);
    const pages = new Set<string>();
    for (const write of this.pending) {
      const first = Math.floor(write.offsetBytes / PAGE_SIZE_BYTES);
      const end = Math.ceil((write.offsetBytes + write.lengthBytes) / PAGE_SIZE_BYTES); // a punch's pages too; a growth is in the sizes
      for (let page = first; page < end; page++) pages.add(`${write.disk}:${page}`);
    }
    const hash = createHash('sha1');
    hash.update(this.#durableKey);
    for (const [disk, image] of [...images].sort(([a], [b]) => (a < b ? -1 : 1))) hash.update(`${disk}:${image.sizeBytes};`);
    const after = new Uint8Array(PAGE_SIZE_BYTES);
    const before = new Uint8Array(PAGE_SIZE_BYTES);
    for (const key of [...pages].sort()) {
      const [disk, pageText] = key.split(':') as [string, string];
      const offsetBytes = Number(pageText) * PAGE_SIZE_BYTES;
      images.get(disk)?.read(after, offsetBytes);
      this.#durable.get(disk)?.read(before, offsetBytes);
      if (bytesEqual(after, before)) continue;
      hash.update(key);
      hash.update(after);
    }
    return hash.digest('hex');
  }

  /** A new machine, powered up on the crash images of variant: recovery runs on it. */
  machine(variant: CrashVariant, seed = mixSeed(this.#seed, this.eventCount, variant.variantIndex)): SimMachine {
    return new SimMachine({ seed, images: this.images(variant), badSectors: this.#badSectors, deadSectors: this.#deadSectors });
  }
}

/** Walks a trace forward, keeping the durable image of every disk, and yields crash points. */
class TraceWalker {
  readonly #events: readonly SimEvent[];
  readonly #writes: ReadonlyMap<number, SimWrite>;
  readonly #durable = new Map<string, SparseImage>();
  readonly #syncCovers = new Map<number, readonly number[]>();
  readonly #marks: string[] = [];
  readonly #badSectors: ReadonlyMap<string, ReadonlySet<number>>;
  readonly #deadSectors: ReadonlyMap<string, ReadonlySet<number>>;
  readonly #seed: number;
  #eventCount = 0;
  #durableCount = 0;

  constructor(options: {
    events: readonly SimEvent[];
    writes: ReadonlyMap<number, SimWrite>;
    baseline: ReadonlyMap<string, SparseImage>;
    badSectors: ReadonlyMap<string, ReadonlySet<number>>;
    deadSectors: ReadonlyMap<string, ReadonlySet<number>>;
    seed: number;
  }) {
    this.#events = options.events;
    this.#writes = options.writes;
    for (const [name, image] of options.baseline) this.#durable.set(name, image.clone());
    this.#badSectors = options.badSectors;
    this.#deadSectors = options.deadSectors;
    this.#seed = options.seed;
  }

  get eventCount(): number {
    return this.#eventCount;
  }

  /** Applies the next event. */
  step(): void {
    const index = this.#eventCount;
    const event = this.#events[index];
    assert(event !== undefined, 'stepped past the end of the trace');
    switch (event.kind) {
      case 'sync':
        this.#syncCovers.set(event.syncId, event.coveredWriteIds);
        break;
      case 'sync-done': {
        if (event.failed) break;
        // The covered writes are a prefix of the disk's completion order (see the module
        // comment), so applying them in completion order gives the disk's contents.
        const covered = (this.#syncCovers.get(event.syncId) ?? [])
          .map((writeId) => this.#writes.get(writeId))
          .filter((write): write is SimWrite => write !== undefined && write.durableIndex === index)
          .sort((a, b) => a.doneIndex - b.doneIndex);
        for (const write of covered) {
          applyChange(this.#image(write.disk), write);
          this.#durableCount += 1;
        }
        break;
      }
      case 'corrupt': {
        const write = this.#writes.get(event.writeId);
        assert(write !== undefined);
        this.#image(write.disk).write(write.bytes, write.offsetBytes);
        this.#durableCount += 1;
        break;
      }
      case 'mark':
        this.#marks.push(event.label);
        break;
      case 'write':
      case 'write-done':
      case 'grow':
      case 'punch':
      case 'allocate':
        break;
    }
    this.#eventCount += 1;
  }

  /**
   * Whether every sector of a failed write was written again, by writes issued after it that are
   * durable at eventCount: the medium then holds those, and the failed write can no longer land
   * (a retry that succeeded, synced, is not undone by the attempt that failed before it).
   */
  #superseded(failed: SimWrite, eventCount: number): boolean {
    const begin = failed.offsetBytes;
    const end = failed.offsetBytes + failed.bytes.length;
    const later = [...this.#writes.values()]
      .filter((write) => write.disk === failed.disk && !write.failed && write.issueIndex > failed.issueIndex && write.durableIndex < eventCount)
      .filter((write) => write.offsetBytes < end && write.offsetBytes + write.bytes.length > begin)
      .sort((a, b) => a.offsetBytes - b.offsetBytes);
    let covered = begin;
    for (const write of later) {
      if (write.offsetBytes > covered) return false;
      covered = Math.max(covered, write.offsetBytes + write.bytes.length);
      if (covered >= end) return true;
    }
    return covered >= end;
  }

  point(): CrashPoint {
    const eventCount = this.#eventCount;
    const pending: SimWrite[] = [];
    for (const write of this.#writes.values()) {
      if (write.issueIndex < eventCount && write.durableIndex >= eventCount && !(write.failed && this.#superseded(write, eventCount))) pending.push(write);
    }
    const orderOf = (write: SimWrite): number => (write.doneIndex < eventCount ? write.doneIndex : Infinity);
    pending.sort((a, b) => orderOf(a) - orderOf(b) || a.issueIndex - b.issueIndex);
    const durable = new Map<string, SparseImage>();
    for (const [name, image] of this.#durable) durable.set(name, image.clone());
    const durableSizes = [...this.#durable].map(([name, image]) => `${name}=${image.sizeBytes}`).join(',');
    return new CrashPoint({
      eventCount,
      lastEvent: this.#events[eventCount - 1],
      pending,
      marks: [...this.#marks],
      durable,
      durableKey: `${this.#durableCount}/${durableSizes}`,
      badSectors: this.#badSectors,
      deadSectors: this.#deadSectors,
      seed: this.#seed,
    });
  }

  #image(disk: string): SparseImage {
    let image = this.#durable.get(disk);
    if (image === undefined) {
      image = new SparseImage(0);
      this.#durable.set(disk, image);
    }
    return image;
  }
}

// ---------------------------------------------------------------------------------------------
// Machine

export interface SimMachineOptions {
  seed: number;
  /** Disks and their contents at power-up (treated as durable). */
  images?: ReadonlyMap<string, SparseImage> | Record<string, Uint8Array | SparseImage>;
  /** Bad sectors per disk (dm-dust list), carried over a crash: they are on the medium. */
  badSectors?: ReadonlyMap<string, ReadonlySet<number>>;
  /** Persistent bad sectors per disk (reads and writes fail for ever), carried over a crash likewise. */
  deadSectors?: ReadonlyMap<string, ReadonlySet<number>>;
}

interface QueuedOperation {
  readonly disk: SimDisk;
  run(): void;
  abort(error: Error): void;
}

export class SimMachine {
  readonly seed: number;
  readonly #rng: Rng;
  readonly #disks = new Map<string, SimDisk>();
  readonly #events: SimEvent[] = [];
  readonly #writes = new Map<number, SimWrite>();
  readonly #baseline = new Map<string, SparseImage>();
  readonly #queue: QueuedOperation[] = [];
  #drainScheduled = false;
  #nextWriteId = 1;
  #ioOperationCount = 0;
  #ioPlan:
    | { countdown: number; persistent: boolean; hit: { disk: string; kind: 'read' | 'write' | 'sync'; operationIndex: number } | undefined }
    | undefined;
  #nextSyncId = 1;
  #killed = false;

  constructor(options: SimMachineOptions) {
    this.seed = options.seed;
    this.#rng = new Rng(mixSeed(options.seed, 0xd15c));
    const images =
      options.images instanceof Map
        ? options.images
        : new Map(Object.entries(options.images ?? {}));
    for (const [name, content] of images) {
      const image = content instanceof SparseImage ? content.clone() : SparseImage.fromBytes(content);
      const disk = new SimDisk(this, name, image.clone(), options.badSectors?.get(name), options.deadSectors?.get(name));
      this.#disks.set(name, disk);
      this.#baseline.set(name, image);
    }
  }

  /** A new, zero-filled disk. */
  createDisk(name: string, sizeBytes: number): SimDisk {
    assert(!this.#disks.has(name), `disk ${name} exists`);
    const disk = new SimDisk(this, name, new SparseImage(sizeBytes), undefined, undefined);
    this.#disks.set(name, disk);
    this.#baseline.set(name, new SparseImage(sizeBytes));
    return disk;
  }

  disk(name: string): SimDisk {
    const disk = this.#disks.get(name);
    assert(disk !== undefined, `no disk ${name}`);
    return disk;
  }

  diskNames(): string[] {
    return [...this.#disks.keys()];
  }

  /**
   * SQLite's I/O-error loop: the I/O operation (read, write or sync, on any disk of the machine)
   * that comes after `afterOperations` more fails with EIO; with `persistent`, every later one of
   * the same kind on the same disk fails too.
   */
  failIo(options: { afterOperations: number; persistent?: boolean }): void {
    assert(Number.isSafeInteger(options.afterOperations) && options.afterOperations >= 0, 'bad I/O fault position');
    this.#ioPlan = { countdown: options.afterOperations, persistent: options.persistent === true, hit: undefined };
  }

  /** I/O operations (reads, writes, syncs) issued on this machine's disks so far. */
  get ioOperationCount(): number {
    return this.#ioOperationCount;
  }

  /** The operation the I/O plan failed, once it has. */
  get ioFaultHit(): { disk: string; kind: 'read' | 'write' | 'sync'; operationIndex: number } | undefined {
    return this.#ioPlan?.hit;
  }

  /** @internal Counts an I/O operation and says whether the I/O plan fails it. */
  takeIoFault(disk: SimDisk, kind: 'read' | 'write' | 'sync'): boolean {
    const operationIndex = this.#ioOperationCount++;
    const plan = this.#ioPlan;
    if (plan === undefined) return false;
    if (plan.hit !== undefined) return plan.persistent && plan.hit.disk === disk.name && plan.hit.kind === kind;
    if (plan.countdown > 0) {
      plan.countdown -= 1;
      return false;
    }
    plan.hit = { disk: disk.name, kind, operationIndex };
    return true;
  }

  /** Adds a named mark to the trace ("ack flush #3"): crash points after it carry it. */
  mark(label: string): void {
    this.#events.push({ kind: 'mark', label });
  }

  get events(): readonly SimEvent[] {
    return this.#events;
  }

  get writes(): ReadonlyMap<number, SimWrite> {
    return this.#writes;
  }

  /** Operations issued and not yet completed. */
  get inFlightCount(): number {
    return this.#queue.length;
  }

  /** A digest of the trace, to check that a seed replays the same run. */
  traceDigest(): string {
    let hash = 0x811c9dc5;
    const add = (text: string): void => {
      for (let index = 0; index < text.length; index++) hash = Math.imul(hash ^ text.charCodeAt(index), 0x01000193);
    };
    for (const event of this.#events) add(describeEvent(event));
    for (const write of this.#writes.values()) {
      for (let index = 0; index < write.bytes.length; index += 61) add(String(write.bytes[index]));
    }
    return `${this.#events.length}:${(hash >>> 0).toString(16)}`;
  }

  /**
   * Starts a new trace at the current state, as if everything so far had been synced: for a test
   * whose setup (creating a pool) is not under test. Nothing may be in flight.
   */
  resetTrace(): void {
    assert(this.#queue.length === 0, 'resetTrace() with operations in flight');
    this.#events.length = 0;
    this.#writes.clear();
    for (const [name, disk] of this.#disks) this.#baseline.set(name, disk.volatileImage().clone());
  }

  /**
   * Copies of every disk as the running process sees it: to power up other machines on (e.g. a
   * pool made once, then closed). Nothing may be in flight.
   */
  currentImages(): Map<string, SparseImage> {
    assert(this.#queue.length === 0, 'currentImages() with operations in flight');
    const images = new Map<string, SparseImage>();
    for (const [name, disk] of this.#disks) images.set(name, disk.volatileImage().clone());
    return images;
  }

  /** The machine state after the first eventCount events. */
  crashPoint(eventCount: number): CrashPoint {
    assert(eventCount >= 0 && eventCount <= this.#events.length, `no crash point ${eventCount}`);
    const walker = this.#walker();
    while (walker.eventCount < eventCount) walker.step();
    return walker.point();
  }

  /** Every crash point, from before the first event to after the last. */
  *crashPoints(): Generator<CrashPoint> {
    const walker = this.#walker();
    for (;;) {
      yield walker.point();
      if (walker.eventCount === this.#events.length) return;
      walker.step();
    }
  }

  /**
   * The crash points after the given numbers of events (ascending), without building the ones in
   * between: a long trace's sample costs one walk of the trace.
   */
  *crashPointsAt(eventCounts: readonly number[]): Generator<CrashPoint> {
    const walker = this.#walker();
    let previous = -1;
    for (const eventCount of eventCounts) {
      assert(eventCount > previous && eventCount <= this.#events.length, `crash points must be ascending and at most ${this.#events.length}`);
      previous = eventCount;
      while (walker.eventCount < eventCount) walker.step();
      yield walker.point();
    }
  }

  /**
   * Pulls the plug now: this machine stops (every operation in flight or later fails), and the
   * returned machine powers up on the disks as a random crash left them.
   */
  crash(rng: Rng): { machine: SimMachine; point: CrashPoint; variant: CrashVariant } {
    const point = this.crashPoint(this.#events.length);
    const variant = point.randomVariant(rng);
    this.kill();
    return { machine: point.machine(variant, rng.next()), point, variant };
  }

  /** Stops the machine: operations in flight and later fail with THIN_IO. */
  kill(): void {
    this.#killed = true;
    const error = new ThinError('THIN_IO', 'The simulated machine lost power');
    for (const operation of this.#queue.splice(0)) operation.abort(error);
  }

  get killed(): boolean {
    return this.#killed;
  }

  #walker(): TraceWalker {
    const badSectors = new Map<string, ReadonlySet<number>>();
    const deadSectors = new Map<string, ReadonlySet<number>>();
    for (const [name, disk] of this.#disks) {
      badSectors.set(name, new Set(disk.badSectors()));
      deadSectors.set(name, new Set(disk.deadSectors()));
    }
    return new TraceWalker({
      events: this.#events,
      writes: this.#writes,
      baseline: this.#baseline,
      badSectors,
      deadSectors,
      seed: this.seed,
    });
  }

  // --- used by SimDisk ---

  /** @internal */
  recordEvent(event: SimEvent): number {
    this.#events.push(event);
    return this.#events.length - 1;
  }

  /** @internal */
  newWrite(disk: string, offsetBytes: number, bytes: Uint8Array, misdirectedFromBytes?: number): SimWrite {
    const writeId = this.#nextWriteId++;
    const event: SimEvent = { kind: 'write', disk, writeId, offsetBytes, lengthBytes: bytes.length };
    if (misdirectedFromBytes !== undefined) event.misdirectedFromBytes = misdirectedFromBytes;
    return this.#pendingChange({ writeId, disk, change: 'write', offsetBytes, bytes, lengthBytes: bytes.length }, event);
  }

  /** @internal A growth (to sizeBytes) or a punch: pending like a write until a later sync of its disk. */
  newChange(disk: string, change: 'grow' | 'punch', offsetBytes: number, lengthBytes: number): SimWrite {
    const writeId = this.#nextWriteId++;
    const event: SimEvent =
      change === 'grow' ? { kind: 'grow', disk, writeId, sizeBytes: offsetBytes } : { kind: 'punch', disk, writeId, offsetBytes, lengthBytes };
    return this.#pendingChange({ writeId, disk, change, offsetBytes, bytes: new Uint8Array(0), lengthBytes }, event);
  }

  #pendingChange(change: Pick<SimWrite, 'writeId' | 'disk' | 'change' | 'offsetBytes' | 'bytes' | 'lengthBytes'>, event: SimEvent): SimWrite {
    const issueIndex = this.recordEvent(event);
    const write: SimWrite = { ...change, issueIndex, doneIndex: Infinity, failed: false, durableIndex: Infinity };
    this.#writes.set(write.writeId, write);
    return write;
  }

  /** @internal Medium corruption: durable at once, never pending. */
  corruptMedium(disk: string, offsetBytes: number, bytes: Uint8Array): void {
    const writeId = this.#nextWriteId++;
    const index = this.#events.length;
    const write: SimWrite = {
      writeId,
      disk,
      change: 'write',
      offsetBytes,
      bytes,
      lengthBytes: bytes.length,
      issueIndex: index,
      doneIndex: index,
      failed: false,
      durableIndex: index,
    };
    this.#writes.set(writeId, write);
    this.recordEvent({ kind: 'corrupt', disk, writeId, offsetBytes, lengthBytes: bytes.length });
  }

  /** @internal */
  newSyncId(): number {
    return this.#nextSyncId++;
  }

  /** @internal Queues an operation; operations complete one per macrotask in seeded random order. */
  enqueue(operation: QueuedOperation): void {
    if (this.#killed) {
      operation.abort(new ThinError('THIN_IO', 'The simulated machine lost power'));
      return;
    }
    this.#queue.push(operation);
    this.#scheduleDrain();
  }

  /** @internal Waits until no operation of disk is queued. */
  async idle(disk: SimDisk): Promise<void> {
    while (this.#queue.some((operation) => operation.disk === disk)) {
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  #scheduleDrain(): void {
    if (this.#drainScheduled) return;
    this.#drainScheduled = true;
    setImmediate(() => {
      this.#drainScheduled = false;
      if (this.#queue.length === 0) return;
      const [operation] = this.#queue.splice(this.#rng.int(this.#queue.length), 1);
      assert(operation !== undefined);
      operation.run();
      if (this.#queue.length > 0) this.#scheduleDrain();
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Disk

export interface ByteRange {
  beginBytes: number;
  endBytes: number;
}

interface RangeFault extends ByteRange {
  persistent: boolean;
}

function overlaps(range: ByteRange, offsetBytes: number, lengthBytes: number): boolean {
  return offsetBytes < range.endBytes && range.beginBytes < offsetBytes + lengthBytes;
}

function simulatedEio(): Error {
  return Object.assign(new Error('EIO: i/o error (simulated)'), { code: 'EIO', errno: -5 });
}

export interface SimDiskCounters {
  reads: number;
  writes: number;
  syncs: number;
  allocations: number;
  punches: number;
  readErrors: number;
  writeErrors: number;
  syncErrors: number;
}

export class SimDisk implements BlockFile {
  readonly name: string;
  readonly description: string;
  readonly counters: SimDiskCounters = { reads: 0, writes: 0, syncs: 0, allocations: 0, punches: 0, readErrors: 0, writeErrors: 0, syncErrors: 0 };
  readonly #machine: SimMachine;
  readonly #image: SparseImage;
  /** Completed writes not yet covered by a started sync, in completion order. */
  #completedUnsynced: SimWrite[] = [];
  #closed = false;
  #failure: ThinError | undefined;
  #readFaults: RangeFault[] = [];
  #writeFaults: RangeFault[] = [];
  #syncFaults: { persistent: boolean } | undefined;
  #misdirectToBytes: number | undefined;
  #misdirectSkipWrites = 0;
  readonly #badSectors: Set<number>;
  readonly #deadSectors: Set<number>;

  /** @internal Use SimMachine.createDisk. */
  constructor(machine: SimMachine, name: string, image: SparseImage, badSectors: ReadonlySet<number> | undefined, deadSectors: ReadonlySet<number> | undefined) {
    this.#machine = machine;
    this.name = name;
    this.description = `sim:${name}`;
    this.#image = image;
    this.#badSectors = new Set(badSectors ?? []);
    this.#deadSectors = new Set(deadSectors ?? []);
  }

  get machine(): SimMachine {
    return this.#machine;
  }

  /** @internal The image the running process sees. */
  volatileImage(): SparseImage {
    return this.#image;
  }

  sizeBytes(): number {
    return this.#image.sizeBytes;
  }

  readSync(target: Uint8Array, offsetBytes: number): void {
    this.#checkOpen();
    checkRange(offsetBytes, target.length);
    this.counters.reads += 1;
    const fault = this.#machine.takeIoFault(this, 'read')
      ? this.#plannedReadError(offsetBytes, target.length)
      : this.#readFault(offsetBytes, target.length);
    if (fault !== undefined) throw fault;
    this.#image.read(target, offsetBytes);
  }

  read(target: Uint8Array, offsetBytes: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#checkOpen();
      checkRange(offsetBytes, target.length);
      this.counters.reads += 1;
      const planned = this.#machine.takeIoFault(this, 'read');
      this.#machine.enqueue({
        disk: this,
        run: () => {
          const fault = planned ? this.#plannedReadError(offsetBytes, target.length) : this.#readFault(offsetBytes, target.length);
          if (fault !== undefined) {
            reject(fault);
            return;
          }
          this.#image.read(target, offsetBytes);
          resolve();
        },
        abort: reject,
      });
    });
  }

  write(source: Uint8Array, offsetBytes: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#checkOpen();
      checkRange(offsetBytes, source.length);
      this.counters.writes += 1;
      let landingBytes = offsetBytes;
      let misdirectedFromBytes: number | undefined;
      if (this.#misdirectToBytes !== undefined && this.#misdirectSkipWrites > 0) {
        this.#misdirectSkipWrites -= 1;
      } else if (this.#misdirectToBytes !== undefined) {
        landingBytes = this.#misdirectToBytes;
        misdirectedFromBytes = offsetBytes;
        this.#misdirectToBytes = undefined;
      }
      const writeFault =
        this.#machine.takeIoFault(this, 'write') || this.#takeRangeFault(this.#writeFaults, offsetBytes, source.length) || this.#hitsDeadSector(offsetBytes, source.length);
      // The bytes are taken when the write is issued: the caller may reuse its buffer once the
      // write completes.
      const write = this.#machine.newWrite(this.name, landingBytes, new Uint8Array(source), misdirectedFromBytes);
      this.#machine.enqueue({
        disk: this,
        run: () => {
          if (writeFault) {
            // A failed write may still have reached some sectors: it stays pending until later
            // writes of all its sectors are durable, so a crash keeps, drops or tears it; the
            // process reads the old bytes.
            write.failed = true;
            write.doneIndex = this.#machine.recordEvent({ kind: 'write-done', disk: this.name, writeId: write.writeId, failed: true });
            this.counters.writeErrors += 1;
            // EIO names this range only: later syncs still cover the other writes (FileBlockFile).
            reject(new ThinError('THIN_IO', `Cannot write ${source.length} bytes at offset ${offsetBytes} of ${this.description}: EIO`, { cause: simulatedEio() }));
            return;
          }
          this.#image.write(write.bytes, write.offsetBytes);
          this.#clearBadSectors(write.offsetBytes, write.bytes.length);
          write.doneIndex = this.#machine.recordEvent({ kind: 'write-done', disk: this.name, writeId: write.writeId, failed: false });
          this.#completedUnsynced.push(write);
          resolve();
        },
        abort: reject,
      });
    });
  }

  sync(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#checkOpen();
      this.counters.syncs += 1;
      if (this.#failure !== undefined) {
        reject(
          new ThinError(
            'THIN_IO',
            `Cannot sync ${this.description}: an earlier write or sync failed, so what the disk holds is ` +
              `unknown until the file is reopened (${this.#failure.message})`,
            { cause: this.#failure },
          ),
        );
        return;
      }
      const syncId = this.#machine.newSyncId();
      const covered = this.#completedUnsynced;
      this.#completedUnsynced = [];
      this.#machine.recordEvent({ kind: 'sync', disk: this.name, syncId, coveredWriteIds: covered.map((write) => write.writeId) });
      let failed = this.#machine.takeIoFault(this, 'sync');
      if (!failed && this.#syncFaults !== undefined) {
        failed = true;
        if (!this.#syncFaults.persistent) this.#syncFaults = undefined;
      }
      this.#machine.enqueue({
        disk: this,
        run: () => {
          const index = this.#machine.recordEvent({ kind: 'sync-done', disk: this.name, syncId, failed });
          if (failed) {
            this.counters.syncErrors += 1;
            reject(this.#fail(new ThinError('THIN_IO', `Cannot sync ${this.description}: EIO`, { cause: simulatedEio() })));
            return;
          }
          for (const write of covered) write.durableIndex = index;
          resolve();
        },
        abort: reject,
      });
    });
  }

  /**
   * Grows the file at once, as ftruncate does; the new size is durable once a sync started after
   * this resolves completes (a crash before may keep or lose it).
   */
  async grow(sizeBytes: number): Promise<void> {
    this.#checkOpen();
    checkRange(sizeBytes, 0);
    if (sizeBytes <= this.#image.sizeBytes) return;
    if (this.#machine.killed) throw new ThinError('THIN_IO', 'The simulated machine lost power');
    this.#image.grow(sizeBytes);
    const growth = this.#machine.newChange(this.name, 'grow', sizeBytes, 0);
    growth.doneIndex = growth.issueIndex;
    this.#completedUnsynced.push(growth);
  }

  /**
   * fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeros once this resolves; the size does
   * not change. Completes asynchronously like a write, and is durable like one (a crash before a
   * later sync keeps it, loses it or tears it by pages). Always supported here: resolves true.
   */
  punch(offsetBytes: number, lengthBytes: number): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      this.#checkOpen();
      checkRange(offsetBytes, lengthBytes);
      this.counters.punches += 1;
      const punch = this.#machine.newChange(this.name, 'punch', offsetBytes, lengthBytes);
      this.#machine.enqueue({
        disk: this,
        run: () => {
          this.#image.punch(offsetBytes, lengthBytes);
          punch.doneIndex = this.#machine.recordEvent({ kind: 'write-done', disk: this.name, writeId: punch.writeId, failed: false });
          this.#completedUnsynced.push(punch);
          resolve(true);
        },
        abort: reject,
      });
    });
  }

  /** Bytes of the file that hold data (pages written and not punched): `du` of the simulated file. */
  allocatedBytes(): number {
    return this.#image.allocatedBytes;
  }

  /** fallocate inside the file (its size kept): reserves space, changes nothing a read returns. */
  async allocate(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.#checkOpen();
    checkRange(offsetBytes, lengthBytes);
    const endBytes = Math.min(offsetBytes + lengthBytes, this.#image.sizeBytes);
    if (endBytes <= offsetBytes) return;
    this.counters.allocations += 1;
    this.#machine.recordEvent({ kind: 'allocate', disk: this.name, offsetBytes, lengthBytes: endBytes - offsetBytes });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#machine.idle(this);
  }

  // --- fault injection ---

  /** Flips one bit of the medium (bit rot): durable at once, seen by every later read. */
  flipBit(offsetBytes: number, bitIndex: number): void {
    assert(bitIndex >= 0 && bitIndex < 8, `bad bit index ${bitIndex}`);
    const byte = new Uint8Array(1);
    this.#image.read(byte, offsetBytes);
    byte[0] = (byte[0] ?? 0) ^ (1 << bitIndex);
    this.corrupt(offsetBytes, byte);
  }

  /** Overwrites the medium with bytes (garbage, a stale block, a zeroed sector): durable at once. */
  corrupt(offsetBytes: number, bytes: Uint8Array): void {
    const copy = new Uint8Array(bytes);
    this.#image.write(copy, offsetBytes);
    this.#machine.corruptMedium(this.name, offsetBytes, copy);
  }

  /** Reads overlapping the range fail with EIO: the next one only, or every one. */
  failReads(range: ByteRange, options: { persistent?: boolean } = {}): void {
    this.#readFaults.push({ ...range, persistent: options.persistent === true });
  }

  /** Writes overlapping the range (default: all) fail with EIO: the next one only, or every one. */
  failWrites(range: ByteRange = { beginBytes: 0, endBytes: Infinity }, options: { persistent?: boolean } = {}): void {
    this.#writeFaults.push({ ...range, persistent: options.persistent === true });
  }

  /** The next sync (or every sync) fails with EIO. */
  failSyncs(options: { persistent?: boolean } = {}): void {
    this.#syncFaults = { persistent: options.persistent === true };
  }

  /**
   * The next write to this disk (or the one after `skipWrites` more) lands at toOffsetBytes
   * instead of where it was aimed.
   */
  misdirectNextWrite(toOffsetBytes: number, options: { skipWrites?: number } = {}): void {
    this.#misdirectToBytes = toOffsetBytes;
    this.#misdirectSkipWrites = options.skipWrites ?? 0;
  }

  /** dm-dust: reads of these 512-byte sectors fail with EIO until a write covers them. */
  addBadSectors(beginSector: number, sectorCount = 1): void {
    for (let sector = beginSector; sector < beginSector + sectorCount; sector++) this.#badSectors.add(sector);
  }

  badSectors(): number[] {
    return [...this.#badSectors].sort((a, b) => a - b);
  }

  /** Persistent bad sectors: reads and writes of these 512-byte sectors fail with EIO for ever. */
  addDeadSectors(beginSector: number, sectorCount = 1): void {
    for (let sector = beginSector; sector < beginSector + sectorCount; sector++) this.#deadSectors.add(sector);
  }

  deadSectors(): number[] {
    return [...this.#deadSectors].sort((a, b) => a - b);
  }

  clearFaults(): void {
    this.#readFaults = [];
    this.#writeFaults = [];
    this.#syncFaults = undefined;
    this.#misdirectToBytes = undefined;
    this.#misdirectSkipWrites = 0;
    this.#badSectors.clear();
    this.#deadSectors.clear();
  }

  /** The first sync failure, if any (the disk then refuses syncs). */
  get failure(): ThinError | undefined {
    return this.#failure;
  }

  #plannedReadError(offsetBytes: number, lengthBytes: number): ThinError {
    this.counters.readErrors += 1;
    return new ThinError('THIN_IO', `Cannot read ${lengthBytes} bytes at offset ${offsetBytes} of ${this.description}: EIO`, {
      cause: simulatedEio(),
    });
  }

  #readFault(offsetBytes: number, lengthBytes: number): ThinError | undefined {
    let failed = this.#takeRangeFault(this.#readFaults, offsetBytes, lengthBytes) || this.#hitsDeadSector(offsetBytes, lengthBytes);
    if (!failed && this.#badSectors.size > 0 && lengthBytes > 0) {
      const first = Math.floor(offsetBytes / SECTOR_SIZE_BYTES);
      const last = Math.floor((offsetBytes + lengthBytes - 1) / SECTOR_SIZE_BYTES);
      for (let sector = first; sector <= last && !failed; sector++) failed = this.#badSectors.has(sector);
    }
    if (!failed) return undefined;
    this.counters.readErrors += 1;
    return new ThinError('THIN_IO', `Cannot read ${lengthBytes} bytes at offset ${offsetBytes} of ${this.description}: EIO`, {
      cause: simulatedEio(),
    });
  }

  #takeRangeFault(faults: RangeFault[], offsetBytes: number, lengthBytes: number): boolean {
    const index = faults.findIndex((fault) => overlaps(fault, offsetBytes, lengthBytes));
    if (index < 0) return false;
    if (!faults[index]?.persistent) faults.splice(index, 1);
    return true;
  }

  #hitsDeadSector(offsetBytes: number, lengthBytes: number): boolean {
    if (this.#deadSectors.size === 0 || lengthBytes === 0) return false;
    const first = Math.floor(offsetBytes / SECTOR_SIZE_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / SECTOR_SIZE_BYTES);
    for (let sector = first; sector <= last; sector++) if (this.#deadSectors.has(sector)) return true;
    return false;
  }

  #clearBadSectors(offsetBytes: number, lengthBytes: number): void {
    if (this.#badSectors.size === 0 || lengthBytes === 0) return;
    const first = Math.floor(offsetBytes / SECTOR_SIZE_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / SECTOR_SIZE_BYTES);
    for (let sector = first; sector <= last; sector++) this.#badSectors.delete(sector);
  }

  #fail(error: ThinError): ThinError {
    if (this.#failure === undefined) this.#failure = error;
    return error;
  }

  #checkOpen(): void {
    if (this.#closed) throw new ThinError('THIN_CLOSED', `${this.description} is closed`);
  }
}

function checkRange(offsetBytes: number, lengthBytes: number): void {
  assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, `bad offset ${offsetBytes}`);
  assert(Number.isSafeInteger(offsetBytes + lengthBytes), `bad length ${lengthBytes}`);
}

/** For failure messages: the trace around a crash point. */
export function describeTrace(events: readonly SimEvent[], aroundIndex: number, radius = 6): string {
  const lines: string[] = [];
  for (let index = Math.max(0, aroundIndex - radius); index < Math.min(events.length, aroundIndex + radius); index++) {
    const event = events[index];
    if (event === undefined) continue;
    lines.push(`${index < aroundIndex ? ' ' : '!'} ${index}: ${describeEvent(event)}`);
  }
  return lines.join('\n');
}
