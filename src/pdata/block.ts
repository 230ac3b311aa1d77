// A metadata block: 4096 bytes that identify themselves. Every block starts with a header that
// carries a crc32c over the rest of the block, the block's type, its own block number, the
// transaction that wrote it and the pool's id (docs/format.md, "Metadata block header").
// A bare checksum would accept a valid block written to the wrong place (a misdirected write) or
// a stale block from an older transaction or another pool; the extra fields catch those.
import { loadCrc32 } from '../util/native.ts';
import { METADATA_BLOCK_HEADER_BYTES, METADATA_BLOCK_SIZE_BYTES } from '../constants.ts';
import { ThinError, assert } from '../errors.ts';

const { crc32c } = loadCrc32();

/** Block types (u16 at offset 4). Layers above may use numbers from 16 up for their own blocks. */
export const BlockType = {
  superblock: 1,
  btreeInternal: 2,
  btreeLeaf: 3,
  details: 4,
  deltaLog: 5,
} as const;
export type BlockTypeValue = number;

/** Both B+tree node types: what a reader expects when it does not yet know a node's level. */
export const BTREE_BLOCK_TYPES: readonly number[] = [BlockType.btreeInternal, BlockType.btreeLeaf];

/** Byte offsets of the header fields (F-BLK-1 .. F-BLK-6). */
export const BlockHeader = {
  checksumOffset: 0, // u32 crc32c of bytes 4..4095
  typeOffset: 4, // u16
  reservedOffset: 6, // u16, zero
  blockNrOffset: 8, // u64
  transactionIdOffset: 16, // u64
  poolIdOffset: 24, // u64
} as const;

assert(BlockHeader.poolIdOffset + 8 === METADATA_BLOCK_HEADER_BYTES, 'block header fields must fill the header');

/**
 * One metadata block in memory. `bytes` is the whole block, header included; the payload starts at
 * METADATA_BLOCK_HEADER_BYTES. A block returned by TransactionManager.read() must not be changed;
 * one returned by allocate() or shadow() may be changed until the transaction is sealed.
 */
export class Block {
  readonly blockNr: number;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Tree kind this block was last checked as a B+tree node for (0: not checked yet). */
  checkedTreeKind = 0;

  constructor(blockNr: number, bytes: Uint8Array) {
    if (!(bytes.length === METADATA_BLOCK_SIZE_BYTES)) assert(false, `metadata block ${blockNr} has ${bytes.length} bytes`);
    this.blockNr = blockNr;
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  get type(): number {
    return this.view.getUint16(BlockHeader.typeOffset, true);
  }

  get transactionId(): number {
    return getU64(this.view, BlockHeader.transactionIdOffset);
  }

  get poolId(): bigint {
    return this.view.getBigUint64(BlockHeader.poolIdOffset, true);
  }
}
export type WritableBlock = Block;

/** Reads a little-endian u64 as a number; values of 2^53 and above come back unsafe (callers check). */
export function getU64(view: DataView, offsetBytes: number): number {
  const low = view.getUint32(offsetBytes, true);
  const high = view.getUint32(offsetBytes + 4, true);
  return high * 0x1_0000_0000 + low;
}

export function setU64(view: DataView, offsetBytes: number, value: number): void {
  if (!(Number.isSafeInteger(value) && value >= 0)) assert(false, `u64 value ${value} is not a safe non-negative integer`);
  view.setUint32(offsetBytes, value % 0x1_0000_0000, true);
  view.setUint32(offsetBytes + 4, Math.floor(value / 0x1_0000_0000), true);
}

/** A block of zeros to compare against (never written to). */
const ZERO_BLOCK = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);

/**
 * Whether a whole block is zeros (never written): one memcmp, where `every` over its 4096 bytes
 * cost ~0.15 ms before the JIT warmed up, for each superblock copy a short command reads that was
 * never written.
 */
export function isZeroBlock(bytes: Uint8Array): boolean {
  return bytes.length === METADATA_BLOCK_SIZE_BYTES && Buffer.compare(bytes, ZERO_BLOCK) === 0;
}

export function checksumOf(bytes: Uint8Array): number {
  return crc32c(bytes.subarray(4)) >>> 0;
}

/** Fills in the header of `block` and its checksum (F-BLK-1). Call after the payload is final. */
export function sealBlock(block: Block, type: number, transactionId: number, poolId: bigint): void {
  const view = block.view;
  view.setUint16(BlockHeader.typeOffset, type, true);
  view.setUint16(BlockHeader.reservedOffset, 0, true);
  setU64(view, BlockHeader.blockNrOffset, block.blockNr);
  setU64(view, BlockHeader.transactionIdOffset, transactionId);
  view.setBigUint64(BlockHeader.poolIdOffset, poolId, true);
  view.setUint32(BlockHeader.checksumOffset, checksumOf(block.bytes), true);
}

/** Writes the header fields except the checksum: for a block that is still being changed. */
export function initBlockHeader(block: Block, type: number, transactionId: number, poolId: bigint): void {
  const view = block.view;
  view.setUint32(BlockHeader.checksumOffset, 0, true);
  view.setUint16(BlockHeader.typeOffset, type, true);
  view.setUint16(BlockHeader.reservedOffset, 0, true);
  setU64(view, BlockHeader.blockNrOffset, block.blockNr);
  setU64(view, BlockHeader.transactionIdOffset, transactionId);
  view.setBigUint64(BlockHeader.poolIdOffset, poolId, true);
}

export interface BlockExpectation {
  /** Where the block was read from: it must say so itself (F-BLK-3). */
  blockNr: number;
  /** One type or any of several (F-BLK-2). */
  expectedType: number | readonly number[];
  /** F-BLK-5; undefined while the pool id is not known yet (reading superblock copies). */
  poolId?: bigint;
  /** F-BLK-4: blocks written after this transaction cannot be part of the state being read. */
  transactionIdMax?: number;
}

/** Describes what is wrong with a block, or returns undefined when it validates. */
export function blockProblem(bytes: Uint8Array, expect: BlockExpectation): string | undefined {
  assert(bytes.length === METADATA_BLOCK_SIZE_BYTES, 'validateBlock needs a whole block');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const stored = view.getUint32(BlockHeader.checksumOffset, true);
  // F-BLK-1
  if (stored !== checksumOf(bytes)) {
    return isZeroBlock(bytes) ? 'never written (all zeros)' : 'checksum mismatch';
  }
  const type = view.getUint16(BlockHeader.typeOffset, true);
  const types = typeof expect.expectedType === 'number' ? [expect.expectedType] : expect.expectedType;
  if (!types.includes(type)) return /* F-BLK-2 */ `block type ${type}, expected ${types.join(' or ')}`;
  if (view.getUint16(BlockHeader.reservedOffset, true) !== 0) return /* F-BLK-6 */ 'reserved header field is not zero';
  const ownBlockNr = getU64(view, BlockHeader.blockNrOffset);
  if (ownBlockNr !== expect.blockNr) return /* F-BLK-3 */ `it says it is block ${ownBlockNr} (a misdirected or misplaced write)`;
  const transactionId = getU64(view, BlockHeader.transactionIdOffset);
  if (!Number.isSafeInteger(transactionId)) return `transaction id ${transactionId} is out of range`;
  // F-BLK-4
  if (expect.transactionIdMax !== undefined && transactionId > expect.transactionIdMax) {
    return `written by transaction ${transactionId}, newer than ${expect.transactionIdMax} (a stale or lost write)`;
  }
  const poolId = view.getBigUint64(BlockHeader.poolIdOffset, true);
  // F-BLK-5
  if (expect.poolId !== undefined && poolId !== expect.poolId) {
    return `belongs to pool ${poolId.toString(16)}, not ${expect.poolId.toString(16)}`;
  }
  return undefined;
}

/** Validates a block read from disk; throws THIN_CORRUPT_BLOCK naming the block and the problem. */
export function validateBlock(bytes: Uint8Array, expect: BlockExpectation): void {
  const problem = blockProblem(bytes, expect);
  if (problem !== undefined) {
    throw new ThinError('THIN_CORRUPT_BLOCK', `Cannot read metadata block ${expect.blockNr}: ${problem}`);
  }
}
