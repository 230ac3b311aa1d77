// Superblock copies (docs/format.md, "Superblock"). The superblock is the small root written last
// in a commit: it names the generation, the metadata space map's root and an opaque payload that
// belongs to the layer above (the pool's device tree root, data space map root, ...).
//
// Copies live at fixed, far-apart metadata blocks (SUPERBLOCK_BLOCK_NRS). Generation g is written
// to the two copies whose index has g's parity, so while g is being written the other pair still
// holds g-1 whole, and once g is acknowledged it survives the loss of any one copy. Each copy
// names its own block, its copy index, the pool and the generation, under the checksum, so a
// misdirected or stale copy is recognized instead of trusted.
import {
  METADATA_BLOCK_COUNT_MAX,
  METADATA_BLOCK_HEADER_BYTES,
  METADATA_BLOCK_SIZE_BYTES,
  METADATA_FORMAT_VERSION,
  SUPERBLOCK_BLOCK_NRS,
  SUPERBLOCK_PAYLOAD_BYTES_MAX,
} from '../constants.ts';
import { assert } from '../errors.ts';
import type { BlockFile } from '../io/block-file.ts';
import { isMediaError } from '../io/media-error.ts';
import { isRedundant, type RedundantBlockFile } from '../io/mirror.ts';
import { Block, BlockHeader, BlockType, blockProblem, checksumOf, getU64, sealBlock, setU64 } from './block.ts';

/** "THNB" read as a little-endian u32. */
export const SUPERBLOCK_MAGIC = 0x424e4854;

export const SuperblockLayout = {
  magicOffset: METADATA_BLOCK_HEADER_BYTES + 0, // u32
  formatVersionOffset: METADATA_BLOCK_HEADER_BYTES + 4, // u32
  copyIndexOffset: METADATA_BLOCK_HEADER_BYTES + 8, // u32
  blockSizeOffset: METADATA_BLOCK_HEADER_BYTES + 12, // u32
  generationOffset: METADATA_BLOCK_HEADER_BYTES + 16, // u64
  metadataBlockCountOffset: METADATA_BLOCK_HEADER_BYTES + 24, // u64
  metadataSpaceMapRootOffset: METADATA_BLOCK_HEADER_BYTES + 32, // u64
  payloadLengthOffset: METADATA_BLOCK_HEADER_BYTES + 40, // u32
  reservedOffset: METADATA_BLOCK_HEADER_BYTES + 44, // u32, zero
  metadataSpaceMapRootTransactionIdOffset: METADATA_BLOCK_HEADER_BYTES + 48, // u64
  mirrorOffsetBlocksOffset: METADATA_BLOCK_HEADER_BYTES + 56, // u64, 0: no mirror (format 3; zero in format 2)
  reserved2Offset: METADATA_BLOCK_HEADER_BYTES + 64, // 32 bytes, zero
  payloadOffset: 128,
} as const;

assert(SuperblockLayout.reserved2Offset + 32 === SuperblockLayout.payloadOffset, 'superblock fields must end where the payload starts');
assert(SuperblockLayout.payloadOffset + SUPERBLOCK_PAYLOAD_BYTES_MAX === METADATA_BLOCK_SIZE_BYTES, 'superblock payload must fill the block');
assert(SUPERBLOCK_BLOCK_NRS.length === 4, 'two pairs of superblock copies');

export interface SuperblockFields {
  poolId: bigint;
  generation: number;
  metadataBlockCount: number;
  metadataSpaceMapRoot: number;
  /** The transaction that wrote the space map's root: a stale root is detected (F-SB-4). */
  metadataSpaceMapRootTransactionId: number;
  /**
   * Where the metadata's second copy begins, in blocks of the metadata file: block n's mirror is
   * block mirrorOffsetBlocks + n (F-SB-11, docs/format.md "Metadata mirror"); 0 when there is none.
   */
  mirrorOffsetBlocks: number;
  payload: Uint8Array;
}

export interface SuperblockCopy {
  copyIndex: number;
  blockNr: number;
  /** Set when the copy validates as a superblock (its format version may still be unknown). */
  fields?: SuperblockFields & { formatVersion: number };
  /** What is wrong with the copy, when fields is unset. */
  problem?: string;
  /** On a mirrored file: what was wrong with another place of this copy (it was rewritten). */
  mirrorProblem?: string;
  /**
   * Set when the block at this place is not a usable copy here yet is a checksum-valid superblock
   * (misplaced, of another copy index, with a bad field, or of another pool): the pool and
   * generation it names. Only a commit writes such a block, so it proves that generation was
   * written (F-SB-10).
   */
  written?: { poolId: bigint; generation: number };
}

/** The copy indexes generation g is written to (F-SB-5). */
export function superblockCopyIndexes(generation: number): number[] {
  const parity = generation % 2;
  return SUPERBLOCK_BLOCK_NRS.map((_, index) => index).filter((index) => index % 2 === parity);
}

export function encodeSuperblock(fields: SuperblockFields, copyIndex: number): Uint8Array {
  if (!(copyIndex >= 0 && copyIndex < SUPERBLOCK_BLOCK_NRS.length)) assert(false, `bad copy index ${copyIndex}`);
  if (!(fields.payload.length <= SUPERBLOCK_PAYLOAD_BYTES_MAX)) assert(false, `superblock payload of ${fields.payload.length} bytes is too large`);
  const block = new Block(SUPERBLOCK_BLOCK_NRS[copyIndex]!, new Uint8Array(METADATA_BLOCK_SIZE_BYTES));
  const view = block.view;
  view.setUint32(SuperblockLayout.magicOffset, SUPERBLOCK_MAGIC, true);
  view.setUint32(SuperblockLayout.formatVersionOffset, METADATA_FORMAT_VERSION, true);
  view.setUint32(SuperblockLayout.copyIndexOffset, copyIndex, true);
  view.setUint32(SuperblockLayout.blockSizeOffset, METADATA_BLOCK_SIZE_BYTES, true);
  setU64(view, SuperblockLayout.generationOffset, fields.generation);
  setU64(view, SuperblockLayout.metadataBlockCountOffset, fields.metadataBlockCount);
  setU64(view, SuperblockLayout.metadataSpaceMapRootOffset, fields.metadataSpaceMapRoot);
  view.setUint32(SuperblockLayout.payloadLengthOffset, fields.payload.length, true);
  setU64(view, SuperblockLayout.metadataSpaceMapRootTransactionIdOffset, fields.metadataSpaceMapRootTransactionId);
  setU64(view, SuperblockLayout.mirrorOffsetBlocksOffset, fields.mirrorOffsetBlocks);
  block.bytes.set(fields.payload, SuperblockLayout.payloadOffset);
  sealBlock(block, BlockType.superblock, fields.generation, fields.poolId);
  return block.bytes;
}

/** Decodes one copy read from its place; never throws on bad bytes (F-SB-1..4, F-SB-10). */
export function decodeSuperblock(bytes: Uint8Array, copyIndex: number): SuperblockCopy {
  const copy = decodeCopy(bytes, copyIndex);
  if (copy.problem !== undefined) {
    const written = writtenSuperblock(bytes);
    if (written !== undefined) copy.written = written;
  }
  return copy;
}

/**
 * The pool and generation of a checksum-valid superblock block, wherever it was found, else
 * undefined. A torn or rotten block does not pass the checksum, so such a block was written by a
 * commit of that generation (F-SB-10), even when it sits at the wrong place.
 */
export function writtenSuperblock(bytes: Uint8Array): { poolId: bigint; generation: number } | undefined {
  if (bytes.length !== METADATA_BLOCK_SIZE_BYTES) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(BlockHeader.checksumOffset, true) !== checksumOf(bytes)) return undefined;
  if (view.getUint16(BlockHeader.typeOffset, true) !== BlockType.superblock) return undefined;
  if (view.getUint32(SuperblockLayout.magicOffset, true) !== SUPERBLOCK_MAGIC) return undefined;
  const generation = getU64(view, BlockHeader.transactionIdOffset);
  if (!Number.isSafeInteger(generation) || generation < 1) return undefined;
  return { poolId: view.getBigUint64(BlockHeader.poolIdOffset, true), generation };
}

function decodeCopy(bytes: Uint8Array, copyIndex: number): SuperblockCopy {
  const blockNr = SUPERBLOCK_BLOCK_NRS[copyIndex]!;
  const base = { copyIndex, blockNr };
  const problem = blockProblem(bytes, { blockNr, expectedType: BlockType.superblock }); // F-SB-1
  if (problem !== undefined) return { ...base, problem };
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(SuperblockLayout.magicOffset, true) !== SUPERBLOCK_MAGIC) return /* F-SB-2 */ { ...base, problem: 'bad magic number' };
  const formatVersion = view.getUint32(SuperblockLayout.formatVersionOffset, true);
  const storedCopyIndex = view.getUint32(SuperblockLayout.copyIndexOffset, true);
  if (storedCopyIndex !== copyIndex) return /* F-SB-3 */ { ...base, problem: `it is copy ${storedCopyIndex}, not ${copyIndex}` };
  const blockSizeBytes = view.getUint32(SuperblockLayout.blockSizeOffset, true);
  if (blockSizeBytes !== METADATA_BLOCK_SIZE_BYTES) return { ...base, problem: `metadata block size ${blockSizeBytes}` };
  const generation = getU64(view, SuperblockLayout.generationOffset);
  const headerTransactionId = getU64(view, BlockHeader.transactionIdOffset);
  // F-SB-4
  if (!Number.isSafeInteger(generation) || generation < 1 || generation !== headerTransactionId) {
    return { ...base, problem: `generation ${generation} does not match its header (${headerTransactionId})` };
  }
  if (generation % 2 !== copyIndex % 2) return { ...base, problem: `generation ${generation} does not belong in copy ${copyIndex}` };
  const metadataBlockCount = getU64(view, SuperblockLayout.metadataBlockCountOffset);
  const metadataSpaceMapRoot = getU64(view, SuperblockLayout.metadataSpaceMapRootOffset);
  if (!Number.isSafeInteger(metadataBlockCount) || metadataSpaceMapRoot >= metadataBlockCount) {
    return { ...base, problem: `space map root ${metadataSpaceMapRoot} is outside the ${metadataBlockCount} metadata blocks` };
  }
  const payloadLengthBytes = view.getUint32(SuperblockLayout.payloadLengthOffset, true);
  if (payloadLengthBytes > SUPERBLOCK_PAYLOAD_BYTES_MAX) return /* F-SB-8 */ { ...base, problem: `payload length ${payloadLengthBytes}` };
  const metadataSpaceMapRootTransactionId = getU64(view, SuperblockLayout.metadataSpaceMapRootTransactionIdOffset);
  if (!Number.isSafeInteger(metadataSpaceMapRootTransactionId) || metadataSpaceMapRootTransactionId > generation) {
    return { ...base, problem: `space map root written by transaction ${metadataSpaceMapRootTransactionId}, after generation ${generation}` };
  }
  // F-SB-11: the mirror's place, in format 3; format 2 had no mirror, and zeros there.
  const mirrorOffsetBlocks = getU64(view, SuperblockLayout.mirrorOffsetBlocksOffset);
  if (formatVersion >= 3 && mirrorOffsetBlocks !== 0 && !(mirrorOffsetBlocks >= metadataBlockCount && mirrorOffsetBlocks <= METADATA_BLOCK_COUNT_MAX)) {
    return { ...base, problem: `mirror offset ${mirrorOffsetBlocks} blocks is neither 0 nor from the metadata's ${metadataBlockCount} blocks to ${METADATA_BLOCK_COUNT_MAX}` };
  }
  const reservedRanges: Array<[number, number]> = [
    [SuperblockLayout.reservedOffset, SuperblockLayout.reservedOffset + 4],
    [formatVersion >= 3 ? SuperblockLayout.reserved2Offset : SuperblockLayout.mirrorOffsetBlocksOffset, SuperblockLayout.payloadOffset],
  ];
  for (const [begin, end] of reservedRanges) {
    for (let offset = begin; offset < end; offset++) {
      if (bytes[offset] !== 0) return { ...base, problem: 'reserved fields are not zero' };
    }
  }
  const payload = bytes.slice(SuperblockLayout.payloadOffset, SuperblockLayout.payloadOffset + payloadLengthBytes);
  const poolId = view.getBigUint64(BlockHeader.poolIdOffset, true);
  return {
    ...base,
    fields: {
      poolId,
      generation,
      metadataBlockCount,
      metadataSpaceMapRoot,
      metadataSpaceMapRootTransactionId,
      mirrorOffsetBlocks: formatVersion >= 3 ? mirrorOffsetBlocks : 0,
      payload,
      formatVersion,
    },
  };
}

/**
 * Reads and decodes every copy; a copy that cannot be read is reported, not thrown. On a mirrored
 * metadata file (io/mirror.ts) each copy's places are all read: the newest valid one stands for
 * the copy, and the others, when they are invalid or older, are rewritten from it (a read-only
 * mirror only reports them).
 */
export async function readSuperblockCopies(file: BlockFile): Promise<SuperblockCopy[]> {
  return Promise.all(
    SUPERBLOCK_BLOCK_NRS.map(async (blockNr, copyIndex) => {
      if (isRedundant(file)) return readMirroredCopy(file, blockNr, copyIndex);
      const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
      try {
        await file.read(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
      } catch (error) {
        return { copyIndex, blockNr, problem: `read failed: ${error instanceof Error ? error.message : String(error)}` };
      }
      return decodeSuperblock(bytes, copyIndex);
    }),
  );
}

/** F-MIR-3: both places of a superblock copy; the newest valid one stands, the other is rewritten. */
function readMirroredCopy(file: RedundantBlockFile, blockNr: number, copyIndex: number): SuperblockCopy {
  const places: Array<{ bytes?: Uint8Array; copy: SuperblockCopy }> = [];
  for (let place = 0; place < file.copyCount; place++) {
    const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
    try {
      file.readCopySync(place, bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
    } catch (error) {
      if (!isMediaError(error)) throw error;
      places.push({ copy: { copyIndex, blockNr, problem: `read failed: ${error instanceof Error ? error.message : String(error)}` } });
      continue;
    }
    places.push({ bytes, copy: decodeSuperblock(bytes, copyIndex) });
  }
  const valid = places.filter((place) => place.copy.fields !== undefined).sort((a, b) => b.copy.fields!.generation - a.copy.fields!.generation);
  const best = valid[0];
  if (best === undefined) {
    const problem = places.map((place, index) => `mirror place ${index}: ${place.copy.problem ?? 'invalid'}`).join('; ');
    const written = places.map((place) => place.copy.written).find((entry) => entry !== undefined);
    return { copyIndex, blockNr, problem, ...(written !== undefined ? { written } : {}) };
  }
  const stale: string[] = [];
  places.forEach((place, index) => {
    if (place === best || (place.copy.fields !== undefined && place.copy.fields.generation === best.copy.fields!.generation)) return;
    stale.push(`mirror place ${index}: ${place.copy.problem ?? `holds generation ${place.copy.fields?.generation}`}`);
    void file.repairCopy(index, best.bytes!, blockNr * METADATA_BLOCK_SIZE_BYTES);
  });
  if (stale.length === 0) return best.copy;
  const action = file.readOnly ? 'to be rewritten from the newest place by a read-write open or scrub' : 'rewritten from the newest place';
  return { ...best.copy, mirrorProblem: `${action} (${stale.join('; ')})` };
}

/**
 * The distinct superblocks to try, newest generation first (F-SB-6). Copies
 * of another pool than the one most copies (or the caller) name are set aside as misplaced.
 */
export function superblockCandidates(
  copies: SuperblockCopy[],
  poolId?: bigint,
): Array<SuperblockFields & { formatVersion: number }> {
  let expectedPoolId = poolId;
  if (expectedPoolId === undefined) {
    const votes = new Map<bigint, number>();
    for (const copy of copies) {
      if (copy.fields !== undefined) votes.set(copy.fields.poolId, (votes.get(copy.fields.poolId) ?? 0) + 1);
    }
    let best = 0;
    // Ties go to the pool of the newest copy, which comes later in this order.
    const sorted = copies.filter((copy) => copy.fields !== undefined).sort((a, b) => a.fields!.generation - b.fields!.generation);
    for (const copy of sorted) {
      const count = votes.get(copy.fields!.poolId)!;
      if (count >= best) {
        best = count;
        expectedPoolId = copy.fields!.poolId;
      }
    }
  }
  const candidates: Array<SuperblockFields & { formatVersion: number }> = [];
  for (const copy of copies) {
    const fields = copy.fields;
    if (fields === undefined) continue;
    if (fields.poolId !== expectedPoolId) {
      delete copy.fields;
      copy.problem = `belongs to pool ${fields.poolId.toString(16)}, not ${expectedPoolId?.toString(16)} (a misplaced copy)`;
      copy.written = { poolId: fields.poolId, generation: fields.generation };
      continue;
    }
    // Two copies of one commit are identical; copies that disagree are both tried (F-SB-9).
    if (!candidates.some((candidate) => sameSuperblock(candidate, fields))) candidates.push(fields);
  }
  return candidates.sort((a, b) => b.generation - a.generation);
}

function sameSuperblock(a: SuperblockFields & { formatVersion: number }, b: SuperblockFields & { formatVersion: number }): boolean {
  return (
    a.generation === b.generation &&
    a.formatVersion === b.formatVersion &&
    a.metadataBlockCount === b.metadataBlockCount &&
    a.metadataSpaceMapRoot === b.metadataSpaceMapRoot &&
    a.metadataSpaceMapRootTransactionId === b.metadataSpaceMapRootTransactionId &&
    a.mirrorOffsetBlocks === b.mirrorOffsetBlocks &&
    a.payload.length === b.payload.length &&
    a.payload.every((byte, index) => byte === b.payload[index])
  );
}
