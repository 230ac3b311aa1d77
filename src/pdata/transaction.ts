// The transaction manager: every metadata block passes through here. It hands out validated
// blocks (read), new blocks (allocate) and private copies of committed blocks (shadow), keeps the
// reference count of every metadata block, and commits.
//
// Reference counts of metadata blocks live in memory (a Uint32Array sized to the metadata file)
// while the pool is open, and are folded into an on-disk space map tree when a transaction is
// sealed; the fold allocates and frees tree nodes itself, so it repeats until nothing changes.
//
// Transaction states (docs/format.md, "Transaction/commit protocol"):
//
//        format()/open()
//              │
//              ▼
//   ┌──────► OPEN(T) ── read/allocate/shadow/inc/dec ──┐
//   │          │  ▲                                    │
//   │          │  └────────────────────────────────────┘
//   │     commit(): seal, synchronously: fold counts, checksum dirty blocks, build superblock
//   │          │
//   │          ├──────────────► OPEN(T+1) (mutations go on at once)
//   │          ▼
//   │     SEALED(T) ─ wait for commit T-1 ─► beforeMetadata() ─► write blocks ─► sync
//   │          │                                           ─► write superblock pair ─► sync
//   │          ▼
//   └──── DURABLE(T): blocks freed in T may be reused; cached blocks of T become clean
//
//   any failure while SEALED ──► FAILED (sticky: every later commit and change throws THIN_IO)
//
// Blocks freed in transaction T are reused only after T is durable (the committed state may still
// point at them), except blocks allocated in T itself, which nothing committed can reference.
// A reader may pin the durable generation G (pin()): while it holds the pin, blocks freed after G
// are not reused either, so every block G's trees name keeps its contents and the reader can walk
// G from its own file handles while commits go on (F-TX-8). reuseHorizon is min(durable, pins).
//
// Why this file is longer than the others (about 640 lines): the reference counts, the pending
// frees and the dirty and sealed block maps are private to one class, and the state machine above
// needs all of them together; choosing which generation to open is generations.ts's.
import {
  METADATA_BLOCK_COUNT_MAX,
  METADATA_BLOCK_COUNT_MIN,
  METADATA_BLOCK_SIZE_BYTES,
  METADATA_CACHE_BLOCKS_MAX,
  METADATA_READ_AHEAD_BLOCKS_MAX,
  METADATA_READ_AHEAD_SPANS,
  METADATA_WRITE_RUN_BLOCKS_MAX,
  METADATA_COMMIT_RESERVE_BLOCKS,
  SPACE_MAP_FOLD_ROUNDS_MAX,
  SUPERBLOCK_BLOCK_NRS,
  SUPERBLOCK_PAYLOAD_BYTES_MAX,
} from '../constants.ts';
import { ThinError, assert, isThinError } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { isMediaError } from '../io/media-error.ts';
import { MirroredBlockFile, NoGoodCopyError, isRedundant, type BadCopyEvent, type RedundantBlockFile } from '../io/mirror.ts';
import { BTREE_BLOCK_TYPES, Block, BlockHeader, BlockType, blockProblem, getU64, checksumOf, initBlockHeader, sealBlock, validateBlock, type BlockExpectation } from './block.ts';
import { BTree } from './btree/btree.ts';
import { TreeKind } from './btree/codec.ts';
import type { BlockManager } from './block-manager.ts';
import { BlockCache } from './cache.ts';
import { openNewestGeneration, type OpenOptions, type OpenReport } from './generations.ts';
import { mirroredMetadata, probeMetadataLayout } from './metadata-layout.ts';
import { reservedBlocks } from './reserved-blocks.ts';
import { SpaceMap, refCountExtentCodec } from './space-map.ts';
import { TreeWalker } from './btree/walker.ts';
import { decodeSuperblock, encodeSuperblock, superblockCopyIndexes, type SuperblockFields } from './superblock.ts';

export interface TransactionCounters {
  metadataBlocksWritten: number;
  metadataBlocksRead: number;
  syncs: number;
  commits: number;
}

export interface FormatOptions {
  metadataBlockCount: number;
  poolId: bigint;
  cacheBlocksMax?: number;
  /**
   * Keep a second copy of every metadata block in the same file, this many blocks after the
   * first (docs/format.md "Metadata mirror"); 0 or absent for none. At least metadataBlockCount.
   */
  mirrorOffsetBlocks?: number;
}

interface ManagerState {
  /** The metadata as read and written: the mirror over the metadata file, or the file itself. */
  file: BlockFile;
  mirrorOffsetBlocks: number;
  poolId: bigint;
  metadataBlockCount: number;
  transactionId: number;
  /** Defaults to transactionId - 1. */
  durableTransactionId?: number;
  readOnly: boolean;
  cacheBlocksMax: number;
}

const PENDING_NONE = 0;
/** Freed by a transaction that is not durable yet: free once it is (F-TX-4). */
const PENDING_FREE = 1;
/** A block with a bad copy, never allocated again (withholdBlock, F-BAD-3). */
const PENDING_WITHHELD = 2;

/**
 * A block in use, for the mirror's new place: the copy that holds a block (its checksum holds and
 * it names itself), so a copy bad in place is not carried over; a block in no such state in
 * either copy (a delta-log slot has its own layout) as the first copy that reads has it.
 */
function readForMove(mirror: MirroredBlockFile, target: Uint8Array, blockNr: number): void {
  const offsetBytes = blockNr * METADATA_BLOCK_SIZE_BYTES;
  let readable: Uint8Array | undefined;
  let firstError: unknown;
  for (let copyIndex = 0; copyIndex < mirror.copies.length; copyIndex++) {
    try {
      mirror.readCopySync(copyIndex, target, offsetBytes);
    } catch (error) {
      if (!isMediaError(error)) throw error;
      firstError ??= error;
      continue;
    }
    const view = new DataView(target.buffer, target.byteOffset, target.byteLength);
    if (view.getUint32(BlockHeader.checksumOffset, true) === checksumOf(target) && getU64(view, BlockHeader.blockNrOffset) === blockNr) return;
    readable ??= new Uint8Array(target);
  }
  if (readable === undefined) throw firstError;
  target.set(readable);
}

/**
 * Reads a block of mirrored metadata: the copy that passes the block checks and, when the recorded
 * transaction is known, was written by it (a copy that missed a write is stale, F-MIR-2). When no
 * copy is the recorded one but some copy passes the rest, that one is read and the caller names
 * the stale block.
 */
function readFromCopies(file: RedundantBlockFile, bytes: Uint8Array, blockNr: number, expect: BlockExpectation, transactionId: number | undefined): void {
  const offsetBytes = blockNr * METADATA_BLOCK_SIZE_BYTES;
  if (transactionId === undefined || transactionId === 0) {
    file.readValidatedSync(bytes, offsetBytes, (candidate) => blockProblem(candidate, expect));
    return;
  }
  try {
    file.readValidatedSync(bytes, offsetBytes, (candidate) => {
      const problem = blockProblem(candidate, expect);
      if (problem !== undefined) return problem;
      const written = getU64(new DataView(candidate.buffer, candidate.byteOffset, candidate.byteLength), BlockHeader.transactionIdOffset);
      return written === transactionId ? undefined : `written by transaction ${written}, not ${transactionId} as recorded (a lost write)`;
    });
  } catch (error) {
    if (!(error instanceof NoGoodCopyError)) throw error;
    file.readValidatedSync(bytes, offsetBytes, (candidate) => blockProblem(candidate, expect));
  }
}

export class TransactionManager implements BlockManager {
  /** The metadata as read and written (through the mirror when there is one). */
  file: BlockFile;
  readonly poolId: bigint;
  readonly readOnly: boolean;
  readonly counters: TransactionCounters = { metadataBlocksWritten: 0, metadataBlocksRead: 0, syncs: 0, commits: 0 };

  #metadataBlockCount: number;
  #counts: Uint32Array;
  /** Blocks with count > 0. */
  #usedBlocks = 0;
  /** Blocks with count 0 that are neither pending free nor withheld. */
  #freeBlocks: number;
  /** Per block: PENDING_FREE (count 0, freed by a transaction not durable yet), PENDING_WITHHELD, or PENDING_NONE. */
  #pendingFlags: Uint8Array;
  #pendingByTransaction = new Map<number, number[]>();
  /** Blocks whose count may differ from the on-disk space map tree. */
  #changed = new Set<number>();
  /** Every block below this one is used or pending free: allocation is first fit, keeping the sparse file compact. */
  #allocationCursor = 0;
  /** Blocks allocated in the open transaction (writable). */
  #dirty = new Map<number, Block>();
  /** Blocks of sealed transactions not yet durable (pinned, read-only). */
  #sealed = new Map<number, Block>();
  #cache: BlockCache;
  #transactionId: number;
  #durableTransactionId: number;
  /** The superblock fields of the durable generation (what pin() hands a reader). */
  #durableFields: SuperblockFields | undefined;
  /** Pinned generations and how many pins each has (F-TX-8). */
  #pins = new Map<number, number>();
  #metadataSpaceMap: SpaceMap | undefined;
  #sealing = false;
  #commitChain: Promise<void> = Promise.resolve();
  #failure: unknown;
  /** What the next superblock records as the mirror's place (F-SB-11). */
  #mirrorOffsetBlocks: number;
  /**
   * Spans read ahead by prefetch(), unvalidated: two, so that two walks side by side (delta's)
   * each keep theirs; a new span replaces the older.
   */
  readonly #ahead: Array<{ bytes: Uint8Array; begin: number; count: number }> = [];
  #aheadNext = 0;
  /** Where a commit gathers a run of neighbouring blocks for one write (allocated at the first run). */
  #writeRun: Uint8Array | undefined;

  /** Use TransactionManager.format or TransactionManager.open. */
  constructor(state: ManagerState) {
    assert(
      Number.isSafeInteger(state.metadataBlockCount) &&
        state.metadataBlockCount >= METADATA_BLOCK_COUNT_MIN &&
        state.metadataBlockCount <= METADATA_BLOCK_COUNT_MAX,
      `metadata block count ${state.metadataBlockCount} outside [${METADATA_BLOCK_COUNT_MIN}, ${METADATA_BLOCK_COUNT_MAX}]`,
    );
    assert(state.poolId > 0n && state.poolId < 1n << 64n, 'pool id must be a non-zero u64');
    this.file = state.file;
    this.#listenToMirror();
    this.#mirrorOffsetBlocks = state.mirrorOffsetBlocks;
    assert(state.mirrorOffsetBlocks === 0 || state.mirrorOffsetBlocks >= state.metadataBlockCount, 'the mirror overlaps the metadata');
    this.poolId = state.poolId;
    this.readOnly = state.readOnly;
    this.#metadataBlockCount = state.metadataBlockCount;
    this.#counts = new Uint32Array(state.metadataBlockCount);
    this.#pendingFlags = new Uint8Array(state.metadataBlockCount);
    this.#freeBlocks = state.metadataBlockCount;
    this.#cache = new BlockCache(state.cacheBlocksMax);
    this.#transactionId = state.transactionId;
    this.#durableTransactionId = state.durableTransactionId ?? state.transactionId - 1;
    assert(this.#durableTransactionId < this.#transactionId, 'the open transaction must follow the durable one');
  }

  /**
   * A new, empty metadata store. Does no I/O: the metadata file becomes a pool on the first
   * commit(), which writes every block and then superblock generation 1.
   */
  static format(file: BlockFile, options: FormatOptions): TransactionManager {
    if (
      !Number.isSafeInteger(options.metadataBlockCount) ||
      options.metadataBlockCount < METADATA_BLOCK_COUNT_MIN ||
      options.metadataBlockCount > METADATA_BLOCK_COUNT_MAX
    ) {
      throw new ThinError(
        'THIN_INVALID',
        `Metadata of ${options.metadataBlockCount} blocks is outside [${METADATA_BLOCK_COUNT_MIN}, ${METADATA_BLOCK_COUNT_MAX}] blocks`,
      );
    }
    const mirrorOffsetBlocks = options.mirrorOffsetBlocks ?? 0;
    if (mirrorOffsetBlocks !== 0 && (mirrorOffsetBlocks < options.metadataBlockCount || mirrorOffsetBlocks > METADATA_BLOCK_COUNT_MAX)) {
      throw new ThinError('THIN_INVALID', `A metadata mirror at block ${mirrorOffsetBlocks} would overlap the ${options.metadataBlockCount} metadata blocks`);
    }
    const tm = new TransactionManager({
      file: mirroredMetadata(file, mirrorOffsetBlocks),
      mirrorOffsetBlocks,
      poolId: options.poolId,
      metadataBlockCount: options.metadataBlockCount,
      transactionId: 1,
      readOnly: false,
      cacheBlocksMax: options.cacheBlocksMax ?? METADATA_CACHE_BLOCKS_MAX,
    });
    // F-SB-7, F-LOG-1: superblock copies and the delta log's ring (src/journal writes it, never
    // pdata) are permanently used blocks of the metadata space map.
    for (const { blockNr } of reservedBlocks()) tm.#setCount(blockNr, 1);
    tm.#metadataSpaceMap = SpaceMap.create(tm, options.metadataBlockCount, TreeKind.metadataSpaceMap);
    return tm;
  }

  /**
   * Opens the newest generation whose superblock copy, metadata space map and payload roots
   * validate (generations.ts chooses it). Falling back to an older generation, or any copy that
   * does not validate, is reported in `report`; when no generation validates, throws
   * THIN_CORRUPT_SUPERBLOCK naming what was wrong with each copy and each generation tried.
   */
  static async open(
    file: BlockFile,
    options: OpenOptions = {},
  ): Promise<{ tm: TransactionManager; payload: Uint8Array; report: OpenReport; missingMirrorOffsetBlocks?: number }> {
    // The superblock says where the mirror is (metadata-layout.ts); a read-only reader never rewrites a bad copy.
    const layout = probeMetadataLayout(file, { readOnly: options.readOnly === true || options.repairMetadata === false });
    const opened = await openNewestGeneration(layout.file, options, (fields, transactionId) =>
      TransactionManager.#openGeneration(layout.file, fields, transactionId, options, layout.mirrorOffsetBlocks),
    );
    // A mirror the superblock names but the file is too short to hold (MetadataLayout): check says so.
    return layout.missingMirrorOffsetBlocks === undefined ? opened : { ...opened, missingMirrorOffsetBlocks: layout.missingMirrorOffsetBlocks };
  }

  static #openGeneration(file: BlockFile, fields: SuperblockFields, transactionId: number, options: OpenOptions, mirrorOffsetBlocks: number): TransactionManager {
    if (fields.metadataBlockCount < METADATA_BLOCK_COUNT_MIN || fields.metadataBlockCount > METADATA_BLOCK_COUNT_MAX) {
      throw new ThinError(
        'THIN_CORRUPT_SUPERBLOCK',
        `Superblock generation ${fields.generation} says the metadata has ${fields.metadataBlockCount} blocks`,
      );
    }
    const tm = new TransactionManager({
      file,
      mirrorOffsetBlocks: mirrorOffsetBlocks >= fields.metadataBlockCount ? mirrorOffsetBlocks : 0,
      poolId: fields.poolId,
      metadataBlockCount: fields.metadataBlockCount,
      transactionId,
      durableTransactionId: fields.generation,
      readOnly: options.readOnly ?? false,
      cacheBlocksMax: options.cacheBlocksMax ?? METADATA_CACHE_BLOCKS_MAX,
    });
    const spaceMapRoot = tm.read(fields.metadataSpaceMapRoot, BTREE_BLOCK_TYPES, fields.metadataSpaceMapRootTransactionId);
    if (spaceMapRoot.transactionId !== fields.metadataSpaceMapRootTransactionId) {
      throw new ThinError(
        'THIN_CORRUPT_BLOCK',
        `Cannot read metadata block ${spaceMapRoot.blockNr}: written by transaction ${spaceMapRoot.transactionId}, but superblock ` +
          `generation ${fields.generation} expects ${fields.metadataSpaceMapRootTransactionId} (a lost or misdirected write)`,
      );
    }
    const spaceMap = new SpaceMap(tm, fields.metadataSpaceMapRoot, fields.metadataBlockCount, TreeKind.metadataSpaceMap);
    for (const extent of spaceMap.extents()) {
      for (let blockNr = extent.begin; blockNr < extent.begin + extent.lengthBlocks; blockNr++) tm.#setCount(blockNr, extent.count);
    }
    // The space map's own nodes must be marked used, or the next allocation would overwrite them.
    const walker = new TreeWalker(tm);
    const found = walker.walk(fields.metadataSpaceMapRoot, refCountExtentCodec(TreeKind.metadataSpaceMap));
    if (found.length > 0) throw found[0]!.error;
    for (const blockNr of walker.references.keys()) {
      if (tm.#counts[blockNr] === 0) {
        throw new ThinError('THIN_CORRUPT_NODE', `Metadata space map of generation ${fields.generation} marks its own node ${blockNr} free`);
      }
    }
    for (const { blockNr, what } of reservedBlocks()) {
      if (tm.#counts[blockNr] === 0) {
        throw new ThinError('THIN_CORRUPT_NODE', `Metadata space map of generation ${fields.generation} marks ${what} block ${blockNr} free`);
      }
    }
    tm.#changed.clear();
    tm.#metadataSpaceMap = spaceMap;
    tm.#durableFields = fields;
    return tm;
  }

  /**
   * Opens the generation a superblock copy handed over by pin() describes (in another process,
   * read-only): the copy is validated as open validates copies on disk, and the generation is
   * read as it is, without choosing among the copies on disk (a writer may be overwriting them).
   */
  static openPinned(file: BlockFile, superblock: Uint8Array, options: OpenOptions = {}): { tm: TransactionManager; payload: Uint8Array } {
    const copyIndex = superblock.length === METADATA_BLOCK_SIZE_BYTES ? new DataView(superblock.buffer, superblock.byteOffset).getUint32(40, true) : -1;
    const copy = decodeSuperblock(superblock, copyIndex);
    if (copy.fields === undefined) {
      throw new ThinError('THIN_CORRUPT_SUPERBLOCK', `The pinned superblock does not validate: ${copy.problem ?? 'invalid'}`);
    }
    // Read through the mirror the copy names, read-only: a bad sector in one copy is served from the other, never rewritten here.
    const mirrorOffsetBlocks = copy.fields.mirrorOffsetBlocks;
    const metadata = mirroredMetadata(file, mirrorOffsetBlocks, { readOnly: true });
    const tm = TransactionManager.#openGeneration(metadata, copy.fields, copy.fields.generation + 1, { ...options, readOnly: true }, mirrorOffsetBlocks);
    options.validatePayload?.(copy.fields.payload, tm);
    return { tm, payload: copy.fields.payload };
  }

  // ---- state ----

  /** Id of the open (not yet committed) transaction. */
  get transactionId(): number {
    return this.#transactionId;
  }

  /** The newest transaction whose superblock is durable (0 before the first commit). */
  get durableTransactionId(): number {
    return this.#durableTransactionId;
  }

  /** The superblock generation on disk: the same number as durableTransactionId. */
  get generation(): number {
    return this.#durableTransactionId;
  }

  /** Blocks freed in transactions up to this one may be reused (F-TX-8): min(durable, pinned generations). */
  get reuseHorizon(): number {
    let horizon = this.#durableTransactionId;
    for (const generation of this.#pins.keys()) horizon = Math.min(horizon, generation);
    return horizon;
  }

  /** Generations pinned now, oldest first (for status and tests). */
  get pinnedGenerations(): number[] {
    return [...this.#pins.keys()].sort((a, b) => a - b);
  }

  /**
   * Pins the durable generation for a reader (F-TX-8): until release() is called, no block freed
   * after it is reused, so the reader can walk it from the superblock copy returned while commits
   * go on. release() is idempotent.
   *
   * `superblockSlots` is what each superblock copy's block held for that generation, for a reader
   * that images the metadata (metadata pack): the generation's own pair, and the other pair as
   * read now when it validates and is older (a commit writing it may race this read; then it is
   * left out, as zeros).
   */
  pin(): { generation: number; superblock: Uint8Array; superblockSlots: Array<{ blockNr: number; bytes: Uint8Array }>; release(): void } {
    const fields = this.#durableFields;
    if (fields === undefined || this.#durableTransactionId < 1) {
      throw new ThinError('THIN_INVALID', 'Nothing is committed yet to pin');
    }
    assert(fields.generation === this.#durableTransactionId, 'the durable fields belong to the durable generation');
    const generation = fields.generation;
    const ownCopies = superblockCopyIndexes(generation);
    const superblockSlots = SUPERBLOCK_BLOCK_NRS.map((blockNr, copyIndex) => {
      if (ownCopies.includes(copyIndex)) return { blockNr, bytes: encodeSuperblock(fields, copyIndex) };
      const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
      try {
        this.file.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
      } catch {
        return { blockNr, bytes: new Uint8Array(METADATA_BLOCK_SIZE_BYTES) };
      }
      const copy = decodeSuperblock(bytes, copyIndex);
      const older = copy.fields !== undefined && copy.fields.poolId === this.poolId && copy.fields.generation < generation;
      return { blockNr, bytes: older ? bytes : new Uint8Array(METADATA_BLOCK_SIZE_BYTES) };
    });
    this.#pins.set(generation, (this.#pins.get(generation) ?? 0) + 1);
    let released = false;
    return {
      generation,
      superblockSlots,
      superblock: encodeSuperblock(fields, ownCopies[0]!),
      release: () => {
        if (released) return;
        released = true;
        const count = this.#pins.get(generation)!;
        if (count > 1) this.#pins.set(generation, count - 1);
        else this.#pins.delete(generation);
        this.#releasePendingFrees();
      },
    };
  }

  get metadataBlockCount(): number {
    return this.#metadataBlockCount;
  }

  /** Metadata blocks with a reference count of at least 1 (superblock copies included). */
  get metadataBlocksUsed(): number {
    return this.#usedBlocks;
  }

  /** Metadata blocks allocatable now (count 0 and not pending free), the commit reserve included. */
  get metadataBlocksFree(): number {
    return this.#freeBlocks;
  }

  /** Blocks changed in the open transaction; commit when above METADATA_DIRTY_BLOCKS_SOFT_MAX. */
  get dirtyBlockCount(): number {
    return this.#dirty.size;
  }

  /** Root of the metadata space map tree as of the last seal (for check and dump). */
  get metadataSpaceMapRoot(): number {
    return this.#spaceMap().root;
  }

  /** Where the next superblock says the mirror is, in blocks (0: none). */
  get mirrorOffsetBlocks(): number {
    return this.#mirrorOffsetBlocks;
  }

  /** The mirror the metadata is read and written through, if it has one. */
  get mirror(): RedundantBlockFile | undefined {
    return isRedundant(this.file) ? this.file : undefined;
  }

  /** The error that failed a commit, after which this manager refuses changes; undefined if none. */
  get failure(): unknown {
    return this.#failure;
  }

  // ---- blocks ----

  /**
   * A validated block, from memory or disk (readSync). The block must not be changed: use
   * shadow() for that. Throws THIN_CORRUPT_BLOCK when the block fails its checksum, type, own
   * location, pool or transaction checks, or lies past the metadata. `transactionId`: the one its
   * parent (or owner) records, when known: on mirrored metadata the copy written by it is chosen,
   * so a write lost in one copy is served from the other (F-MIR-2); the caller still compares.
   */
  read(blockNr: number, type: number | readonly number[], transactionId?: number): Block {
    const inMemory = this.#inMemory(blockNr, type);
    if (inMemory !== undefined) return inMemory;
    const block = new Block(blockNr, this.#readFromFile(blockNr, type, transactionId, new Uint8Array(METADATA_BLOCK_SIZE_BYTES)));
    this.#cache.put(block);
    return block;
  }

  /**
   * As read(), but a block not in memory is read into `scratch` and not cached: for a walk that
   * reads each node once. Fresh memory is dear (every new 4 KiB buffer is a page the process has
   * not touched yet: most of a check's reading time, docs/benchmarks.md), and a cache of blocks
   * never read again only evicts the ones that are. The block is valid until scratch is reused.
   */
  readInto(blockNr: number, type: number | readonly number[], transactionId: number | undefined, scratch: Uint8Array): Block {
    const inMemory = this.#inMemory(blockNr, type);
    if (inMemory !== undefined) return inMemory;
    return new Block(blockNr, this.#readFromFile(blockNr, type, transactionId, scratch));
  }

  /**
   * A hint that these blocks are about to be read once each (a walk's next leaves): when those not
   * in memory lie close together (at most METADATA_READ_AHEAD_BLOCKS_MAX apart, a quarter of the
   * span or more wanted), the span is read in one call, and each block is still validated when
   * read. Only on read-only metadata without a mirror: there no block changes while it is read
   * (a read-write manager reuses freed blocks; a mirror chooses between copies block by block). A
   * read-ahead that fails is dropped: each block is then read alone, so an error names its block.
   */
  prefetch(blockNrs: readonly number[]): void {
    if (!this.readOnly || isRedundant(this.file)) return;
    let begin = Number.POSITIVE_INFINITY;
    let last = -1;
    let wanted = 0;
    for (const blockNr of blockNrs) {
      if (!Number.isSafeInteger(blockNr) || blockNr < 0 || blockNr >= this.#metadataBlockCount || this.#cache.get(blockNr) !== undefined) continue;
      begin = Math.min(begin, blockNr);
      last = Math.max(last, blockNr);
      wanted += 1;
    }
    const spanBlocks = last - begin + 1;
    if (wanted < 2 || spanBlocks > METADATA_READ_AHEAD_BLOCKS_MAX || wanted * 4 < spanBlocks) return;
    if (this.#ahead.length < METADATA_READ_AHEAD_SPANS) {
      this.#ahead.push({ bytes: new Uint8Array(METADATA_READ_AHEAD_BLOCKS_MAX * METADATA_BLOCK_SIZE_BYTES), begin: 0, count: 0 });
    }
    const span = this.#ahead[this.#aheadNext % this.#ahead.length]!;
    this.#aheadNext += 1;
    span.count = 0;
    try {
      this.file.readSync(span.bytes.subarray(0, spanBlocks * METADATA_BLOCK_SIZE_BYTES), begin * METADATA_BLOCK_SIZE_BYTES);
    } catch {
      return;
    }
    span.begin = begin;
    span.count = spanBlocks;
  }

  /** The bytes of blockNr in a span read ahead, or undefined. */
  #readAhead(blockNr: number): Uint8Array | undefined {
    for (const span of this.#ahead) {
      if (blockNr >= span.begin && blockNr < span.begin + span.count) {
        const offsetBytes = (blockNr - span.begin) * METADATA_BLOCK_SIZE_BYTES;
        return span.bytes.subarray(offsetBytes, offsetBytes + METADATA_BLOCK_SIZE_BYTES);
      }
    }
    return undefined;
  }

  /** The block from the open transaction, the sealed one or the cache, type-checked; undefined when none holds it. */
  #inMemory(blockNr: number, type: number | readonly number[]): Block | undefined {
    if (!Number.isSafeInteger(blockNr) || blockNr < 0 || blockNr >= this.#metadataBlockCount) {
      throw new ThinError(
        'THIN_CORRUPT_BLOCK',
        `Cannot read metadata block ${blockNr}: outside the metadata (${this.#metadataBlockCount} blocks)`,
      );
    }
    const inMemory = this.#dirty.get(blockNr) ?? this.#sealed.get(blockNr) ?? this.#cache.get(blockNr);
    if (inMemory !== undefined) {
      const types = typeof type === 'number' ? [type] : type;
      if (!types.includes(inMemory.type)) {
        throw new ThinError(
          'THIN_CORRUPT_BLOCK',
          `Cannot read metadata block ${blockNr}: block type ${inMemory.type}, expected ${types.join(' or ')}`,
        );
      }
    }
    return inMemory;
  }

  /** Reads and validates blockNr from the metadata file (or its mirror's good copy) into bytes. */
  #readFromFile(blockNr: number, type: number | readonly number[], transactionId: number | undefined, bytes: Uint8Array): Uint8Array {
    assert(bytes.length === METADATA_BLOCK_SIZE_BYTES, 'a block is read into a whole block');
    // F-BLK-4: the state being read was committed by durableTransactionId at the latest.
    const expect: BlockExpectation = { blockNr, expectedType: type, poolId: this.poolId, transactionIdMax: this.#durableTransactionId };
    const file = this.file;
    try {
      if (isRedundant(file)) {
        // The first copy that reads and validates; the others are rewritten from it (io/mirror.ts).
        readFromCopies(file, bytes, blockNr, expect, transactionId);
      } else {
        const ahead = this.#readAhead(blockNr);
        if (ahead !== undefined) bytes.set(ahead);
        else file.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
      }
    } catch (error) {
      if (error instanceof NoGoodCopyError) {
        throw new ThinError('THIN_CORRUPT_BLOCK', `Cannot read metadata block ${blockNr}: no copy is good (${error.copyProblems.join('; ')})`, { cause: error });
      }
      if (isThinError(error)) throw error;
      throw new ThinError('THIN_IO', `Cannot read metadata block ${blockNr} of ${this.file.description}`, { cause: error });
    }
    this.counters.metadataBlocksRead += 1;
    if (!isRedundant(file)) validateBlock(bytes, expect);
    return bytes;
  }

  /** A new zeroed block with count 1, writable until the transaction is sealed; the commit reserve stays free (F-TX-7). */
  allocate(type: number): Block {
    this.#assertWritable();
    const reserve = this.#sealing ? 0 : METADATA_COMMIT_RESERVE_BLOCKS;
    if (this.#freeBlocks <= reserve) {
      throw new ThinError(
        'THIN_NO_METADATA_SPACE',
        `No free metadata block: ${this.#usedBlocks} of ${this.#metadataBlockCount} used, ${this.#freeBlocks} free (${METADATA_COMMIT_RESERVE_BLOCKS} kept for commits)`,
      );
    }
    const blockNr = this.#findFreeBlock();
    this.#setCount(blockNr, 1);
    this.#cache.delete(blockNr);
    const block = new Block(blockNr, new Uint8Array(METADATA_BLOCK_SIZE_BYTES));
    initBlockHeader(block, type, this.#transactionId, this.poolId);
    this.#dirty.set(blockNr, block);
    return block;
  }

  /**
   * A writable version of blockNr (F-TX-5: a block a committed generation may reference is never
   * rewritten, only copied). A block allocated in the open transaction and referenced once is
   * returned itself (wasShared false). Otherwise the block is copied into a new block and
   * blockNr loses one reference; wasShared says it had more than one, so the caller must add a
   * reference to everything the copy references.
   */
  shadow(blockNr: number, type: number): { block: Block; wasShared: boolean } {
    this.#assertWritable();
    const dirty = this.#dirty.get(blockNr);
    if (dirty !== undefined && this.#counts[blockNr] === 1) {
      if (dirty.type !== type) {
        throw new ThinError('THIN_CORRUPT_BLOCK', `Cannot shadow metadata block ${blockNr}: block type ${dirty.type}, expected ${type}`);
      }
      return { block: dirty, wasShared: false };
    }
    const source = this.read(blockNr, type);
    const count = this.#counts[blockNr]!;
    if (count === 0) {
      throw new ThinError('THIN_CORRUPT_BLOCK', `Cannot shadow metadata block ${blockNr}: the space map says it is free`);
    }
    const copy = this.allocate(type);
    copy.bytes.set(source.bytes);
    initBlockHeader(copy, type, this.#transactionId, this.poolId);
    copy.checkedTreeKind = source.checkedTreeKind;
    this.dec(blockNr);
    return { block: copy, wasShared: count > 1 };
  }

  /** One more reference to a used block. */
  inc(blockNr: number): void {
    this.#assertWritable();
    this.#assertBlockNr(blockNr);
    const count = this.#counts[blockNr]!;
    if (count === 0) {
      throw new ThinError('THIN_CORRUPT_BLOCK', `Cannot reference metadata block ${blockNr}: the space map says it is free`);
    }
    if (!(count < 0xffff_ffff)) assert(false, `reference count of metadata block ${blockNr} overflows`);
    this.#setCount(blockNr, count + 1);
  }

  /** One reference fewer. At 0 the block is free: at once if allocated in the open transaction, else once it commits. */
  dec(blockNr: number): void {
    this.#assertWritable();
    this.#assertBlockNr(blockNr);
    const count = this.#counts[blockNr]!;
    if (count === 0) {
      throw new ThinError('THIN_CORRUPT_BLOCK', `Cannot drop a reference to metadata block ${blockNr}: the space map says it is free`);
    }
    this.#setCount(blockNr, count - 1);
    if (count - 1 > 0) return;
    if (this.#pendingFlags[blockNr] === PENDING_WITHHELD) {
      // Never free again (withholdBlock; #setCount did not count it free).
      this.#dirty.delete(blockNr);
      this.#cache.delete(blockNr);
      return;
    }
    if (this.#dirty.delete(blockNr)) return; // never committed: free at once (#setCount counted it)
    this.#freeBlocks -= 1;
    this.#pendingFlags[blockNr] = PENDING_FREE;
    const list = this.#pendingByTransaction.get(this.#transactionId);
    if (list === undefined) this.#pendingByTransaction.set(this.#transactionId, [blockNr]);
    else list.push(blockNr);
    this.#cache.delete(blockNr);
  }

  /**
   * Withdraws a block from allocation for good (a bad metadata range, pool/bad-ranges.ts, F-BAD-3):
   * it keeps whatever it holds while in use, and once its count drops to 0 it is never counted
   * free nor allocated again. Reference counts are not touched: a count above 1 means a shared
   * node to the B+tree, which a bad sector must not fake. In memory only; the pool withholds its
   * bad metadata blocks again at every open.
   */
  withholdBlock(blockNr: number): void {
    this.#assertBlockNr(blockNr);
    const flag = this.#pendingFlags[blockNr];
    if (flag === PENDING_WITHHELD) return;
    if (flag === PENDING_FREE) {
      // Pending blocks are neither used nor counted free: take it out of its pending list.
      for (const [transactionId, blockNrs] of this.#pendingByTransaction) {
        const index = blockNrs.indexOf(blockNr);
        if (index < 0) continue;
        blockNrs.splice(index, 1);
        if (blockNrs.length === 0) this.#pendingByTransaction.delete(transactionId);
        break;
      }
    } else if (this.#counts[blockNr] === 0) {
      this.#freeBlocks -= 1;
    }
    this.#pendingFlags[blockNr] = PENDING_WITHHELD;
  }

  /** Blocks withheld from allocation (withholdBlock). */
  get withheldBlockCount(): number {
    let count = 0;
    for (const flag of this.#pendingFlags) if (flag === PENDING_WITHHELD) count += 1;
    return count;
  }

  refCount(blockNr: number): number {
    this.#assertBlockNr(blockNr);
    return this.#counts[blockNr]!;
  }

  refCounts(): Readonly<Uint32Array> {
    return this.#counts;
  }

  /**
   * True when blockNr's bytes on disk are not its contents yet: it was allocated (or shadowed into)
   * in the open transaction, or belongs to a sealed transaction whose commit has not finished.
   * A scrub of a live pool passes over such blocks: what it would read there is an older block,
   * or nothing at all, and the commit is about to write both copies.
   */
  awaitsWrite(blockNr: number): boolean {
    this.#assertBlockNr(blockNr);
    return this.#dirty.has(blockNr) || this.#sealed.has(blockNr);
  }

  /** True when blockNr was freed by a transaction that is not durable yet. */
  isPendingFree(blockNr: number): boolean {
    this.#assertBlockNr(blockNr);
    return this.#pendingFlags[blockNr] === PENDING_FREE;
  }

  /**
   * Throws THIN_NO_METADATA_SPACE unless blocksNeeded blocks can be allocated beyond the commit
   * reserve. Tree operations call it before changing anything, so running out never leaves a
   * half-changed tree.
   */
  ensureMetadataSpace(blocksNeeded: number): void {
    this.#assertWritable();
    const reserve = this.#sealing ? 0 : METADATA_COMMIT_RESERVE_BLOCKS;
    if (this.#freeBlocks - reserve < blocksNeeded) {
      throw new ThinError(
        'THIN_NO_METADATA_SPACE',
        `Metadata is full: ${blocksNeeded} blocks needed, ${Math.max(0, this.#freeBlocks - reserve)} available ` +
          `(${this.#usedBlocks} of ${this.#metadataBlockCount} used)`,
      );
    }
  }

  /** Grows the metadata to blockCount blocks (the file grows at the next commit). */
  growMetadata(blockCount: number): void {
    this.#assertWritable();
    if (!Number.isSafeInteger(blockCount) || blockCount < this.#metadataBlockCount || blockCount > METADATA_BLOCK_COUNT_MAX) {
      throw new ThinError('THIN_INVALID', `Cannot grow metadata from ${this.#metadataBlockCount} to ${blockCount} blocks`);
    }
    const counts = new Uint32Array(blockCount);
    counts.set(this.#counts);
    const pending = new Uint8Array(blockCount);
    pending.set(this.#pendingFlags);
    this.#freeBlocks += blockCount - this.#metadataBlockCount;
    this.#counts = counts;
    this.#pendingFlags = pending;
    this.#metadataBlockCount = blockCount;
    this.#spaceMap().grow(blockCount);
  }

  // ---- commit ----

  /**
   * Seals the open transaction (synchronously: folds reference counts into the metadata space
   * map, checksums every changed block, builds the superblock) and opens the next one; then, after
   * any earlier commit has finished, awaits beforeMetadata, writes the blocks, syncs, writes the
   * superblock pair of this generation and syncs. Resolves when the generation is durable.
   */
  async commit(payload: Uint8Array, beforeMetadata?: () => Promise<void>): Promise<void> {
    this.#assertWritable();
    if (payload.length > SUPERBLOCK_PAYLOAD_BYTES_MAX) {
      throw new ThinError('THIN_INVALID', `Superblock payload of ${payload.length} bytes exceeds ${SUPERBLOCK_PAYLOAD_BYTES_MAX}`);
    }
    let sealed: { fields: SuperblockFields; blocks: Block[] };
    try {
      sealed = this.#seal(payload);
    } catch (error) {
      // A seal cut short leaves counts half folded: nothing of this transaction may be committed.
      this.markFailed(error);
      throw error;
    }
    const previous = this.#commitChain;
    const done = (async () => {
      await previous.catch(() => undefined); // F-TX-6
      if (this.#failure !== undefined) throw this.#failedError();
      try {
        // F-TX-3: data before metadata: the layer above syncs what the sealed trees point at.
        if (beforeMetadata !== undefined) await beforeMetadata();
        await this.#writeSealed(sealed);
      } catch (error) {
        this.markFailed(error);
        throw isThinError(error)
          ? error
          : new ThinError('THIN_IO', `Commit of metadata generation ${sealed.fields.generation} to ${this.file.description} failed`, {
              cause: error,
            });
      }
    })();
    this.#commitChain = done;
    return done;
  }

  /** Resolves when every commit started so far has finished (successfully or not). */
  async idle(): Promise<void> {
    await this.#commitChain.catch(() => undefined);
  }

  #seal(payload: Uint8Array): { fields: SuperblockFields; blocks: Block[] } {
    const generation = this.#transactionId;
    this.#sealing = true;
    try {
      this.#foldReferenceCounts();
    } finally {
      this.#sealing = false;
    }
    const blocks = [...this.#dirty.values()];
    for (const block of blocks) {
      if (block.type === BlockType.btreeInternal || block.type === BlockType.btreeLeaf) {
        BTree.checkBeforeWrite(block, this.#metadataBlockCount);
      }
      sealBlock(block, block.type, generation, this.poolId);
      this.#sealed.set(block.blockNr, block);
    }
    this.#dirty = new Map();
    this.#transactionId = generation + 1;
    const fields: SuperblockFields = {
      poolId: this.poolId,
      generation,
      metadataBlockCount: this.#metadataBlockCount,
      metadataSpaceMapRoot: this.#spaceMap().root,
      metadataSpaceMapRootTransactionId: this.read(this.#spaceMap().root, BTREE_BLOCK_TYPES).transactionId,
      mirrorOffsetBlocks: this.#mirrorOffsetBlocks,
      payload: payload.slice(),
    };
    return { fields, blocks };
  }

  /** Writes counts that changed into the metadata space map until its own changes settle. */
  #foldReferenceCounts(): void {
    const spaceMap = this.#spaceMap();
    const counts = this.#counts;
    for (let round = 0; round < SPACE_MAP_FOLD_ROUNDS_MAX; round++) {
      if (this.#changed.size === 0) return;
      const blockNrs = [...this.#changed].sort((a, b) => a - b);
      this.#changed.clear();
      let index = 0;
      while (index < blockNrs.length) {
        const begin = blockNrs[index]!;
        let end = begin + 1;
        index += 1;
        while (index < blockNrs.length && blockNrs[index] === end) {
          end += 1;
          index += 1;
        }
        spaceMap.setCounts(begin, end - begin, (blockNr) => counts[blockNr]!);
      }
    }
    assert(false, `metadata space map did not settle in ${SPACE_MAP_FOLD_ROUNDS_MAX} rounds`);
  }

  /**
   * Writes a commit's blocks: neighbours in one write of up to METADATA_WRITE_RUN_BLOCKS_MAX
   * blocks, copied into one buffer reused run after run (a new buffer per run is fresh memory,
   * dear on this machine: docs/benchmarks.md), the runs one after another and single blocks
   * beside them. On mirrored metadata a block at a time: a copy notes a failed write's whole range
   * as bad (io/mirror.ts), and a block's good copy must not be judged by its neighbours'.
   */
  async #writeBlocks(blocks: Block[]): Promise<void> {
    const write = (block: Block): Promise<void> => this.file.write(block.bytes, block.blockNr * METADATA_BLOCK_SIZE_BYTES);
    if (isRedundant(this.file)) {
      await Promise.all(blocks.map(write));
      return;
    }
    const sorted = [...blocks].sort((a, b) => a.blockNr - b.blockNr);
    const singles: Array<Promise<void>> = [];
    const runs: Array<[number, number]> = [];
    for (let begin = 0; begin < sorted.length; ) {
      let end = begin + 1;
      while (end < sorted.length && end - begin < METADATA_WRITE_RUN_BLOCKS_MAX && sorted[end]!.blockNr === sorted[end - 1]!.blockNr + 1) end++;
      if (end - begin === 1) singles.push(write(sorted[begin]!));
      else runs.push([begin, end]);
      begin = end;
    }
    const writeRuns = async (): Promise<void> => {
      for (const [begin, end] of runs) {
        this.#writeRun ??= new Uint8Array(METADATA_WRITE_RUN_BLOCKS_MAX * METADATA_BLOCK_SIZE_BYTES);
        const run = this.#writeRun.subarray(0, (end - begin) * METADATA_BLOCK_SIZE_BYTES);
        for (let index = begin; index < end; index++) run.set(sorted[index]!.bytes, (index - begin) * METADATA_BLOCK_SIZE_BYTES);
        await this.file.write(run, sorted[begin]!.blockNr * METADATA_BLOCK_SIZE_BYTES);
      }
    };
    await Promise.all([...singles, writeRuns()]);
  }

  async #writeSealed(sealed: { fields: SuperblockFields; blocks: Block[] }): Promise<void> {
    const { fields, blocks } = sealed;
    for (const block of blocks) {
      assert(
        block.view.getUint32(0, true) === checksumOf(block.bytes),
        `metadata block ${block.blockNr} was changed after its transaction was sealed`,
      );
    }
    const neededBytes = fields.metadataBlockCount * METADATA_BLOCK_SIZE_BYTES;
    if (this.file.sizeBytes() < neededBytes) await this.file.grow(neededBytes);
    // F-TX-1: metadata blocks, all awaited, then a sync, before any superblock copy.
    await this.#writeBlocks(blocks);
    this.counters.metadataBlocksWritten += blocks.length;
    await this.#sync();
    // F-TX-2: the superblock pair of this generation, awaited, then a sync.
    const copyIndexes = superblockCopyIndexes(fields.generation);
    await Promise.all(
      copyIndexes.map((copyIndex) =>
        this.file.write(encodeSuperblock(fields, copyIndex), SUPERBLOCK_BLOCK_NRS[copyIndex]! * METADATA_BLOCK_SIZE_BYTES),
      ),
    );
    this.counters.metadataBlocksWritten += copyIndexes.length;
    await this.#sync();
    // Durable: blocks of this generation become clean, and frees up to it become reusable (F-TX-4),
    // unless a reader pinned an older generation (F-TX-8).
    this.#durableTransactionId = fields.generation;
    this.#durableFields = fields;
    for (const block of blocks) {
      if (this.#sealed.get(block.blockNr) === block) {
        this.#sealed.delete(block.blockNr);
        if (this.#counts[block.blockNr]! > 0) this.#cache.put(block);
      }
    }
    this.#releasePendingFrees();
    this.counters.commits += 1;
  }

  /** Makes blocks freed up to the reuse horizon allocatable again (F-TX-4, F-TX-8). */
  #releasePendingFrees(): void {
    const horizon = this.reuseHorizon;
    for (const [transactionId, blockNrs] of this.#pendingByTransaction) {
      if (transactionId > horizon) continue;
      for (const blockNr of blockNrs) {
        if (!(this.#pendingFlags[blockNr] === PENDING_FREE && this.#counts[blockNr] === 0)) assert(false, `pending block ${blockNr} changed while pending`);
        this.#pendingFlags[blockNr] = PENDING_NONE;
        this.#freeBlocks += 1;
        if (blockNr < this.#allocationCursor) this.#allocationCursor = blockNr;
      }
      this.#pendingByTransaction.delete(transactionId);
    }
  }

  async #sync(): Promise<void> {
    this.counters.syncs += 1;
    await this.file.sync();
  }

  // ---- the mirror ----

  /**
   * Gives metadata without a mirror (a format 2 pool) its second copy, `metadataBlockCount` blocks
   * on: every used block is copied there and synced; from then on every write goes to both, and
   * the next commit's superblock names the mirror (F-SB-11). Until that commit is durable the pool
   * on disk is the one it was, so a crash part way leaves it as it was. Resolves false when the
   * file cannot hold the mirror (a block device too small: metadata stays single).
   */
  async addMirror(): Promise<boolean> {
    this.#assertWritable();
    assert(!isRedundant(this.file) && this.#mirrorOffsetBlocks === 0, 'the metadata already has a mirror');
    assert(this.#dirty.size === 0 && this.#sealed.size === 0, 'a mirror is added before anything changes');
    await this.idle();
    const raw = this.file;
    const mirrorOffsetBlocks = this.#metadataBlockCount;
    try {
      await raw.grow((mirrorOffsetBlocks + this.#metadataBlockCount) * METADATA_BLOCK_SIZE_BYTES);
    } catch (error) {
      if (isThinError(error, 'THIN_INVALID')) return false;
      throw error;
    }
    const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES * 64);
    let batch: number[] = [];
    const flush = async (): Promise<void> => {
      await Promise.all(
        batch.map((blockNr, index) => {
          const piece = bytes.subarray(index * METADATA_BLOCK_SIZE_BYTES, (index + 1) * METADATA_BLOCK_SIZE_BYTES);
          raw.readSync(piece, blockNr * METADATA_BLOCK_SIZE_BYTES);
          return raw.write(piece, (mirrorOffsetBlocks + blockNr) * METADATA_BLOCK_SIZE_BYTES);
        }),
      );
      batch = [];
    };
    for (let blockNr = 0; blockNr < this.#metadataBlockCount; blockNr++) {
      if (this.#counts[blockNr] === 0) continue;
      batch.push(blockNr);
      if (batch.length === 64) await flush();
    }
    await flush();
    await raw.sync();
    this.file = mirroredMetadata(raw, mirrorOffsetBlocks);
    this.#listenToMirror();
    this.#mirrorOffsetBlocks = mirrorOffsetBlocks;
    return true;
  }

  /**
   * Moves the mirror (the second copy) to `offsetBlocks`, so that the metadata may grow up to that
   * many blocks (docs/format.md F-MIR-6). Runs between commits: the caller (the pool's commit
   * scheduler) starts no commit until it resolves and then commits, and that commit's superblock
   * names the new place. Every block in use, or freed by a transaction not yet durable, is copied
   * from the copy that reads there to `offsetBlocks + n`, and the file is synced, before any write
   * goes to the new place; the old copy is not written again. Until a superblock naming the new
   * place is durable, the pool on disk is the one it was (its mirror at the old place, whole), so a
   * crash part way leaves it as it was; after that, the old place is unused and the metadata may
   * grow over it. The file first grows to twice the new offset, durably, so the mirror begins at
   * half the file as in a new pool, and a move cut short leaves the old mirror at a quarter (or an
   * eighth...) of it: where open looks when no first copy validates (metadata-layout.ts).
   */
  async moveMirror(offsetBlocks: number): Promise<void> {
    this.#assertWritable();
    const mirror = this.file;
    assert(mirror instanceof MirroredBlockFile && this.#mirrorOffsetBlocks > 0 && mirror.copies.length === 2, 'moveMirror() of metadata without a mirror in one file');
    const raw = mirror.copies[1]!.file;
    assert(mirror.copies[0]!.file === raw && mirror.copies[0]!.offsetBytes === 0, 'moveMirror() of a mirror across files');
    const count = this.#metadataBlockCount;
    const oldOffset = this.#mirrorOffsetBlocks;
    if (!(Number.isSafeInteger(offsetBlocks) && offsetBlocks >= oldOffset + count && offsetBlocks <= METADATA_BLOCK_COUNT_MAX)) {
      throw new ThinError(
        'THIN_INVALID',
        `Cannot move the metadata mirror from block ${oldOffset} to ${offsetBlocks}: the new place must lie past the old copy (block ${oldOffset + count}) ` +
          `and at most at ${METADATA_BLOCK_COUNT_MAX}`,
      );
    }
    await this.idle();
    await mirror.repairsSettled();
    assert(this.#sealed.size === 0, 'moveMirror() while a commit is writing');
    // The file's new size is durable before any copy lands there, so a power cut leaves the file
    // at twice the old place or twice the new one, where open looks (metadata-layout.ts).
    await raw.grow(2 * offsetBlocks * METADATA_BLOCK_SIZE_BYTES);
    this.counters.syncs += 1;
    await raw.sync();
    const batchBlocks = 64;
    const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES * batchBlocks);
    let batch: number[] = [];
    const flush = async (): Promise<void> => {
      const writes = batch.map((blockNr, index) => {
        const piece = bytes.subarray(index * METADATA_BLOCK_SIZE_BYTES, (index + 1) * METADATA_BLOCK_SIZE_BYTES);
        readForMove(mirror, piece, blockNr);
        return raw.write(piece, (offsetBlocks + blockNr) * METADATA_BLOCK_SIZE_BYTES);
      });
      batch = [];
      await Promise.all(writes);
    };
    for (let blockNr = 0; blockNr < count; blockNr++) {
      if (this.#counts[blockNr] === 0 && this.#pendingFlags[blockNr] !== PENDING_FREE) continue;
      batch.push(blockNr);
      if (batch.length === batchBlocks) await flush();
    }
    await flush();
    this.counters.syncs += 1;
    await raw.sync();
    await mirror.repairsSettled();
    mirror.relocateCopy(1, offsetBlocks * METADATA_BLOCK_SIZE_BYTES, offsetBlocks * METADATA_BLOCK_SIZE_BYTES);
    this.#mirrorOffsetBlocks = offsetBlocks;
  }

  /** Told of every copy of a mirrored block found bad (the pool records the ones that cannot be written). */
  onBadCopy: ((event: BadCopyEvent) => void) | undefined;

  #listenToMirror(): void {
    if (this.file instanceof MirroredBlockFile) this.file.onBadCopy = (event) => this.onBadCopy?.(event);
  }

  // ---- internals ----

  #spaceMap(): SpaceMap {
    assert(this.#metadataSpaceMap !== undefined, 'metadata space map used before it was loaded');
    return this.#metadataSpaceMap;
  }

  #setCount(blockNr: number, count: number): void {
    const old = this.#counts[blockNr]!;
    if (old === count) return;
    this.#counts[blockNr] = count;
    this.#changed.add(blockNr);
    if (old === 0) {
      this.#usedBlocks += 1;
      this.#freeBlocks -= 1;
    } else if (count === 0) {
      this.#usedBlocks -= 1;
      if (this.#pendingFlags[blockNr] !== PENDING_WITHHELD) this.#freeBlocks += 1;
      if (this.#pendingFlags[blockNr] === PENDING_NONE && blockNr < this.#allocationCursor) this.#allocationCursor = blockNr;
    }
  }

  #findFreeBlock(): number {
    const counts = this.#counts;
    const pending = this.#pendingFlags;
    const blockCount = this.#metadataBlockCount;
    for (let blockNr = this.#allocationCursor; blockNr < blockCount; blockNr++) {
      if (counts[blockNr] === 0 && pending[blockNr] === PENDING_NONE) {
        this.#allocationCursor = blockNr + 1;
        return blockNr;
      }
    }
    assert(false, `free metadata block count ${this.#freeBlocks} but none at or after ${this.#allocationCursor}`);
  }

  #assertBlockNr(blockNr: number): void {
    if (!(Number.isSafeInteger(blockNr) && blockNr >= 0 && blockNr < this.#metadataBlockCount)) assert(false, `metadata block ${blockNr} out of range`);
  }

  #assertWritable(): void {
    if (this.readOnly) throw new ThinError('THIN_READ_ONLY', `Metadata on ${this.file.description} is open read-only`);
    if (this.#failure !== undefined) throw this.#failedError();
  }

  /**
   * Abandons the open transaction after an error that may have left it half changed (a tree
   * operation cut short, a failed seal or commit). Sticky: every later change and commit throws,
   * with the first error's code (THIN_IO when it was not a ThinError). The layer above reopens.
   */
  markFailed(error: unknown): void {
    if (this.#failure === undefined) this.#failure = error ?? new Error('unknown failure');
  }

  #failedError(): ThinError {
    const cause = this.#failure;
    const code = isThinError(cause) ? cause.code : 'THIN_IO';
    const reason = cause instanceof Error ? cause.message : String(cause);
    return new ThinError(code, `Metadata on ${this.file.description} refuses changes after an earlier failure (${reason}); reopen the pool`, {
      cause,
    });
  }
}
