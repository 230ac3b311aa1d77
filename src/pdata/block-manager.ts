// What a B+tree, a space map and the walker need from the metadata store: the dozen members they
// call, and nothing else. TransactionManager implements it; tests may drive a tree or a space map
// with a fake (test/pdata/fake-block-manager.ts). Depending on this leaf instead of the concrete
// manager keeps the manager → tree → manager import cycle from forming, as thin-provisioning-tools'
// `space_map/base.rs` and `io_engine/base.rs` traits do for its trees.
//
// The contract (docs/internals.md "pdata"; the manager's module comment has its state machine):
// - read() returns a validated block that must not be changed; allocate() and shadow() return
//   blocks writable until the open transaction is sealed.
// - Reference counts count references from parent nodes and root owners; dec() to 0 frees the
//   block (at once when allocated in the open transaction, else once that transaction is durable).
// - ensureMetadataSpace() throws THIN_NO_METADATA_SPACE before a change that could not finish, so
//   running out never leaves a half-changed tree; markFailed() abandons the open transaction after
//   an error that did leave one.
import type { Block } from './block.ts';

export interface BlockManager {
  /** Blocks in the metadata file (tree nodes name no block at or past it). */
  readonly metadataBlockCount: number;
  /** The open (not yet committed) transaction: what new and shadowed blocks are stamped with. */
  readonly transactionId: number;
  /** The newest transaction whose commit is durable. */
  readonly durableTransactionId: number;
  /**
   * Blocks freed in transactions up to this one may be reused: the durable transaction, or an
   * older generation a reader has pinned (TransactionManager.pin), whichever is older (F-TX-8).
   */
  readonly reuseHorizon: number;
  /** Root of the metadata space map tree as of the last seal. */
  readonly metadataSpaceMapRoot: number;

  /**
   * A validated block of one of the given types (THIN_CORRUPT_BLOCK, THIN_IO). `transactionId`:
   * the transaction its parent or owner records, when known (a mirror then prefers that copy).
   */
  read(blockNr: number, type: number | readonly number[], transactionId?: number): Block;
  /**
   * As read(), for a block read once: one not in memory is read into `scratch` (a whole block) and
   * not cached, and stays valid until scratch is reused.
   */
  readInto(blockNr: number, type: number | readonly number[], transactionId: number | undefined, scratch: Uint8Array): Block;
  /** A hint: these blocks are about to be read once each, so they may be read together. */
  prefetch(blockNrs: readonly number[]): void;
  /** A new zeroed block with count 1, writable in the open transaction. */
  allocate(type: number): Block;
  /**
   * A writable version of blockNr: itself when private to the open transaction, else a copy (the
   * original loses one reference; wasShared says it had more than one, so the caller adds a
   * reference to everything the copy references).
   */
  shadow(blockNr: number, type: number): { block: Block; wasShared: boolean };
  inc(blockNr: number): void;
  dec(blockNr: number): void;
  refCount(blockNr: number): number;
  /**
   * Every block's reference count by block number, when the manager keeps them in one array (the
   * manager's own: read it, never change it): a check compares all of them, and a call per block
   * cost several times the comparison.
   */
  refCounts?(): Readonly<Uint32Array>;
  /** Throws THIN_NO_METADATA_SPACE unless blocksNeeded blocks can still be allocated. */
  ensureMetadataSpace(blocksNeeded: number): void;
  /** Abandons the open transaction: every later change and commit throws. */
  markFailed(error: unknown): void;
}
