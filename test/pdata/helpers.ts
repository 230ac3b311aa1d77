// Shared pieces of the pdata tests: a seeded generator, a fresh transaction manager, codecs that
// stand for the layers above, the reference-count check every tree test ends with, and raw
// access to metadata blocks for tests that damage them.
import assert from 'node:assert/strict';
import { MemoryBlockFile } from '../../src/io/memory.ts';
import { ThinError } from '../../src/errors.ts';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES } from '../../src/constants.ts';
import { TransactionManager } from '../../src/pdata/transaction.ts';
import { TreeKind, unpackSafeU64, type ValueCodec } from '../../src/pdata/btree/codec.ts';
import { TreeWalker } from '../../src/pdata/btree/walker.ts';
import { refCountExtentCodec } from '../../src/pdata/space-map.ts';
import { setU64 } from '../../src/pdata/block.ts';

/** mulberry32: small, fast, and a seed replays a run exactly. */
export class Random {
  readonly seed: number;
  #state: number;

  constructor(seed: number) {
    this.seed = seed;
    this.#state = seed >>> 0;
  }

  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) >>> 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, end). */
  below(end: number): number {
    return Math.floor(this.next() * end);
  }

  chance(probability: number): boolean {
    return this.next() < probability;
  }
}

export const POOL_ID = 0x7468_696e_6264_0001n;

/** Metadata block blockNr of a file in memory, as it is now. */
export function readBlock(file: MemoryBlockFile, blockNr: number): Uint8Array {
  const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
  file.readSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
  return bytes;
}

/** Overwrites metadata block blockNr at once, behind the transaction manager's back (damage, a lost write). */
export function writeBlock(file: MemoryBlockFile, blockNr: number, bytes: Uint8Array): void {
  file.writeSync(bytes, blockNr * METADATA_BLOCK_SIZE_BYTES);
}

export function newManager(metadataBlockCount = METADATA_BLOCK_COUNT_MIN): { file: MemoryBlockFile; tm: TransactionManager } {
  const file = new MemoryBlockFile(0, 'test metadata');
  const tm = TransactionManager.format(file, { metadataBlockCount, poolId: POOL_ID });
  return { file, tm };
}

/** Payload used by tests: a list of u64 roots. */
export function rootsPayload(...roots: number[]): Uint8Array {
  const bytes = new Uint8Array(8 * roots.length);
  const view = new DataView(bytes.buffer);
  roots.forEach((root, index) => setU64(view, index * 8, root));
  return bytes;
}

export function payloadRoots(payload: Uint8Array): number[] {
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const roots: number[] = [];
  for (let offset = 0; offset + 8 <= payload.length; offset += 8) roots.push(unpackSafeU64(view, offset, 'root'));
  return roots;
}

/**
 * A wide value (so nodes hold few entries and trees get deep) that stands for a reference to a
 * data block: retain/release count references in `dataRefs`, as a pool's mapping codec would.
 */
export function dataRefCodec(sizeBytes: number, dataRefs: Map<number, number>, treeKind: number = TreeKind.test): ValueCodec<number> {
  return {
    treeKind,
    sizeBytes,
    pack(value, view, offsetBytes) {
      setU64(view, offsetBytes, value);
      for (let index = 8; index < sizeBytes; index++) view.setUint8(offsetBytes + index, (value + index) & 0xff);
    },
    unpack(view, offsetBytes) {
      const value = unpackSafeU64(view, offsetBytes, 'value');
      for (let index = 8; index < sizeBytes; index++) {
        if (view.getUint8(offsetBytes + index) !== ((value + index) & 0xff)) {
          throw new ThinError('THIN_CORRUPT_NODE', `test value ${value} has bad filler at byte ${index}`);
        }
      }
      return value;
    },
    retain(value) {
      dataRefs.set(value, (dataRefs.get(value) ?? 0) + 1);
    },
    release(value) {
      const count = dataRefs.get(value) ?? 0;
      assert.ok(count > 0, `release of value ${value} with no references`);
      if (count === 1) dataRefs.delete(value);
      else dataRefs.set(value, count - 1);
    },
  };
}

/**
 * dataRefCodec(8) with a compact form: a u32 offset from a u64 base per leaf. Values more than
 * 2^32 apart cannot share a compact leaf, which is how the model tests reach the wide fallback.
 */
export function compactDataRefCodec(dataRefs: Map<number, number>): ValueCodec<number> {
  const fits = (value: number, base: number): boolean => value >= base && value - base <= 0xffff_ffff;
  return {
    ...dataRefCodec(8, dataRefs),
    compact: {
      sizeBytes: 4,
      chooseBases(values, view, basesOffsetBytes) {
        const base = values.length === 0 ? 0 : Math.min(...values);
        if (!values.every((value) => fits(value, base))) return false;
        setU64(view, basesOffsetBytes, base);
        setU64(view, basesOffsetBytes + 8, 0);
        return true;
      },
      fits(value, view, basesOffsetBytes) {
        return fits(value, unpackSafeU64(view, basesOffsetBytes, 'base'));
      },
      pack(value, view, basesOffsetBytes, offsetBytes) {
        const base = unpackSafeU64(view, basesOffsetBytes, 'base');
        assert.ok(fits(value, base), `test value ${value} does not fit base ${base}`);
        view.setUint32(offsetBytes, value - base, true);
      },
      unpack(view, basesOffsetBytes, offsetBytes) {
        const value = unpackSafeU64(view, basesOffsetBytes, 'base') + view.getUint32(offsetBytes, true);
        if (!Number.isSafeInteger(value)) throw new ThinError('THIN_CORRUPT_NODE', `test value ${value} is beyond 2^53`);
        return value;
      },
    },
  };
}

/**
 * Walks every root (once per owner) and the metadata space map, and checks that every metadata
 * block's count equals the references found, that no node is corrupt, and (when given) that the
 * data references the codec kept equal the values in distinct leaves.
 */
export function checkReferences(
  tm: TransactionManager,
  roots: number[],
  codec: ValueCodec<number>,
  dataRefs?: Map<number, number>,
  context = '',
): void {
  const walker = new TreeWalker(tm);
  const seenData = new Map<number, number>();
  for (const root of roots) {
    walker.walk(root, codec, {
      leaf(_key, value) {
        seenData.set(value, (seenData.get(value) ?? 0) + 1);
      },
    });
  }
  assert.deepEqual(walker.corruptions.map((problem) => problem.error.message), [], `corrupt nodes ${context}`);
  const mismatches = walker.metadataReferenceMismatches(refCountExtentCodec(TreeKind.metadataSpaceMap));
  assert.deepEqual(mismatches.slice(0, 10), [], `metadata reference counts differ from the references found ${context}`);
  if (dataRefs !== undefined) {
    assert.deepEqual(
      [...dataRefs.entries()].sort((a, b) => a[0] - b[0]),
      [...seenData.entries()].sort((a, b) => a[0] - b[0]),
      `data references differ from distinct leaf values ${context}`,
    );
  }
}

/** Runs a randomized test body so that any failure, an unexpected exception included, names its seed. */
export async function withSeed(seed: number, body: () => Promise<void> | void): Promise<void> {
  try {
    await body();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    if (message.includes(`seed ${seed}`)) throw error;
    throw new Error(`seed ${seed}: ${message}`, { cause: error });
  }
}
