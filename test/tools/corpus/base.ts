// The pool every corpus entry starts from, and the tools the entries damage it with.
//
// The base pool is built through the library: volume a (384 scattered extents: a two-level
// mapping tree of compact leaves, which hold 335) and its snapshot a-snap, with one write to a
// after the snapshot so the two share some leaves and not others; b (768 scattered extents over
// three leaves); c (one long extent); d (32 blocks, every other one shared into d's second half, so
// their reference counts alternate 2, 1: the data space map holds them in dense entries,
// docs/format.md "Dense counts");
// then, as the last commit, late, a snapshot of c. An entry that makes the pool fall back one
// generation therefore costs exactly the volume late.
//
// Damage is done to the metadata file with plain file I/O, as a disk or a buggy writer would do
// it; `reseal` re-checksums a changed block, for damage that checksums do not catch.
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { METADATA_BLOCK_COUNT_MIN, METADATA_BLOCK_SIZE_BYTES, SUPERBLOCK_BLOCK_NRS } from '../../../src/constants.ts';
import { BTREE_BLOCK_TYPES, Block, SpaceMap, TransactionManager, TreeWalker, sealBlock, type NodeVisit, type ValueCodec } from '../../../src/pdata/index.ts';
import { FileBlockFile } from '../../../src/io/file.ts';
import { decodePoolPayload, encodePoolPayload } from '../../../src/pool/codecs.ts';
import { extentReadCodec, writtenBy } from '../../../src/pool/trees.ts';
import { Pool } from '../../../src/pool/pool.ts';
import type { Extent } from '../../../src/pool/ranges.ts';
import { PoolView } from '../../../src/tools/pool-view.ts';
import { Rng } from '../../sim/rng.ts';

export const BLOCK_SIZE_BYTES = 65536;
export const DATA_BLOCK_COUNT = 4096;
/** The smallest metadata file the format allows (68 MiB, sparse). */
export const METADATA_SIZE_BYTES = METADATA_BLOCK_COUNT_MIN * METADATA_BLOCK_SIZE_BYTES;
/** Bytes written at the start of each written block (the rest of the block reads as zeros). */
const WRITE_BYTES = 4096;

export const VOLUME_NAMES = ['a', 'b', 'c', 'd', 'a-snap', 'late'] as const;
export type VolumeName = (typeof VOLUME_NAMES)[number];

/** Blocks of volume d written (its second half shares every other one of them). */
const D_BLOCKS = 32;

/** Builds the base pool in `dir` (which must not exist). */
export async function buildBasePool(dir: string): Promise<void> {
  const rng = new Rng(5);
  const pool = await Pool.create(dir, {
    dataSizeBytes: DATA_BLOCK_COUNT * BLOCK_SIZE_BYTES,
    blockSizeBytes: BLOCK_SIZE_BYTES,
    metadataSizeBytes: METADATA_SIZE_BYTES,
    // One copy of the metadata: each entry damages blocks as one bad sector or one stray write
    // would, which the mirror mends (test/tools/check.test.ts "one bad copy of a mirrored node");
    // the corpus is about the damage that is left when nothing can mend it.
    metadataMirror: false,
  });
  try {
    const a = await pool.createVolume('a', { sizeBytes: 768 * BLOCK_SIZE_BYTES, labels: { role: 'origin' } });
    for (let block = 0; block < 768; block += 2) await a.write(block * BLOCK_SIZE_BYTES, rng.bytes(WRITE_BYTES));
    const b = await pool.createVolume('b', { sizeBytes: 1536 * BLOCK_SIZE_BYTES });
    for (let block = 0; block < 1536; block += 2) await b.write(block * BLOCK_SIZE_BYTES, rng.bytes(WRITE_BYTES));
    const c = await pool.createVolume('c', { sizeBytes: 64 * BLOCK_SIZE_BYTES });
    await c.write(0, rng.bytes(64 * BLOCK_SIZE_BYTES));
    const d = await pool.createVolume('d', { sizeBytes: 2 * D_BLOCKS * BLOCK_SIZE_BYTES });
    for (let block = 0; block < D_BLOCKS; block += 1) await d.write(block * BLOCK_SIZE_BYTES, rng.bytes(WRITE_BYTES));
    for (let block = 0; block < D_BLOCKS; block += 2) await pool.shareBlocks('d', block * BLOCK_SIZE_BYTES, 'd', (D_BLOCKS + block) * BLOCK_SIZE_BYTES, BLOCK_SIZE_BYTES);
    await pool.flush();
    await pool.snapshot('a', 'a-snap');
    await a.write(1 * BLOCK_SIZE_BYTES, rng.bytes(WRITE_BYTES));
    await pool.flush();
    await pool.snapshot('c', 'late');
    await pool.flush();
  } finally {
    await pool.close();
  }
}

/** sha256 of every block of every volume of the pool in `dir`, by volume name. */
export async function volumeContents(dir: string): Promise<Map<string, string[]>> {
  const pool = await Pool.open(dir, { readOnly: true });
  try {
    const contents = new Map<string, string[]>();
    const buffer = new Uint8Array(BLOCK_SIZE_BYTES);
    for (const info of pool.list()) {
      const volume = pool.volume(info.name);
      const blocks: string[] = [];
      for (let offsetBytes = 0; offsetBytes < info.sizeBytes; offsetBytes += BLOCK_SIZE_BYTES) {
        await volume.read(offsetBytes, buffer);
        blocks.push(createHash('sha256').update(buffer).digest('hex'));
      }
      contents.set(info.name, blocks);
    }
    return contents;
  } finally {
    await pool.close();
  }
}

export const ZERO_BLOCK_HASH = createHash('sha256').update(new Uint8Array(BLOCK_SIZE_BYTES)).digest('hex');

export interface VolumeLayout {
  id: number;
  mappingRoot: number;
  detailsBlock: number;
  /** Every node of the volume's mapping tree, with the key range its parent promised. */
  nodes: NodeVisit[];
  /** The leaves, in key order. */
  leaves: NodeVisit[];
  extents: Array<[number, Extent]>;
}

export interface PoolLayout {
  generation: number;
  dataBlockCount: number;
  deviceTreeRoot: number;
  dataSpaceMapRoot: number;
  volumes: Map<string, VolumeLayout>;
  /** The superblock copy blocks that hold the newest generation (F-SB-5: the pair of its parity). */
  newestCopyBlockNrs: number[];
  /** Metadata blocks in use, superblock copies excluded (highest last). */
  liveBlockNrs: number[];
}

export async function layoutOf(dir: string): Promise<PoolLayout> {
  const view = await PoolView.open(dir);
  try {
    const codec: ValueCodec<Extent> = extentReadCodec(view.payload.dataBlockCount);
    const volumes = new Map<string, VolumeLayout>();
    for (const device of view.devices()) {
      const nodes: NodeVisit[] = [];
      const extents: Array<[number, Extent]> = [];
      new TreeWalker(view.tm).walk(device.value.mappingRoot, codec, {
        node: (visit) => nodes.push(visit),
        leaf: (key, extent) => extents.push([key, extent]),
      });
      const leaves = nodes.filter((node) => node.level === 0).sort((x, y) => (x.keyBegin ?? 0) - (y.keyBegin ?? 0));
      volumes.set(device.details.name, { id: device.id, mappingRoot: device.value.mappingRoot, detailsBlock: device.value.detailsBlock, nodes, leaves, extents });
    }
    const generation = view.tm.durableTransactionId;
    const liveBlockNrs: number[] = [];
    for (let blockNr = 0; blockNr < view.tm.metadataBlockCount; blockNr += 1) {
      if (view.tm.refCount(blockNr) > 0 && !SUPERBLOCK_BLOCK_NRS.includes(blockNr)) liveBlockNrs.push(blockNr);
    }
    return {
      generation,
      dataBlockCount: view.payload.dataBlockCount,
      deviceTreeRoot: view.payload.deviceTreeRoot,
      dataSpaceMapRoot: view.payload.dataSpaceMapRoot,
      volumes,
      newestCopyBlockNrs: SUPERBLOCK_BLOCK_NRS.filter((_, copyIndex) => copyIndex % 2 === generation % 2),
      liveBlockNrs,
    };
  } finally {
    await view.close();
  }
}

export function volumeLayout(layout: PoolLayout, name: string): VolumeLayout {
  const volume = layout.volumes.get(name);
  if (volume === undefined) throw new Error(`the base pool has no volume ${name}`);
  return volume;
}

function metadataPath(dir: string): string {
  return path.join(dir, 'metadata');
}

export function readBlock(dir: string, blockNr: number): Uint8Array {
  const bytes = new Uint8Array(METADATA_BLOCK_SIZE_BYTES);
  const fd = openSync(metadataPath(dir), 'r');
  try {
    readSync(fd, bytes, 0, bytes.length, blockNr * METADATA_BLOCK_SIZE_BYTES);
  } finally {
    closeSync(fd);
  }
  return bytes;
}

export function writeBlock(dir: string, blockNr: number, bytes: Uint8Array, offsetInBlockBytes = 0): void {
  const fd = openSync(metadataPath(dir), 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, blockNr * METADATA_BLOCK_SIZE_BYTES + offsetInBlockBytes);
  } finally {
    closeSync(fd);
  }
}

/** Flips one bit of a metadata block in place (bit rot): the checksum no longer matches. */
export function flipBit(dir: string, blockNr: number, byteOffset: number, bit = 3): void {
  const bytes = readBlock(dir, blockNr);
  bytes[byteOffset]! ^= 1 << bit;
  writeBlock(dir, blockNr, bytes);
}

/** Changes a metadata block and checksums it again (damage a checksum cannot see). */
export function reseal(dir: string, blockNr: number, change: (view: DataView) => void, options: { transactionId?: number } = {}): void {
  const bytes = readBlock(dir, blockNr);
  const block = new Block(blockNr, bytes);
  change(block.view);
  sealBlock(block, block.type, options.transactionId ?? block.transactionId, block.view.getBigUint64(24, true));
  writeBlock(dir, blockNr, bytes);
}

/**
 * Opens the metadata with pdata alone, lets `change` alter the data space map, and commits a new
 * generation with the pool's payload otherwise unchanged: a writer with a reference-count bug.
 */
export async function rewriteDataSpaceMap(dir: string, change: (dataSpace: SpaceMap) => void): Promise<void> {
  const file = await FileBlockFile.open(metadataPath(dir));
  try {
    const { tm, payload } = await TransactionManager.open(file);
    const fields = decodePoolPayload(payload, tm.metadataBlockCount);
    const dataSpace = new SpaceMap(tm, fields.dataSpaceMapRoot, fields.dataBlockCount);
    change(dataSpace);
    await tm.commit(
      encodePoolPayload({ ...fields, dataSpaceMapRoot: dataSpace.root, dataSpaceMapRootTransactionId: writtenBy(tm, dataSpace.root, BTREE_BLOCK_TYPES) }),
    );
  } finally {
    await file.close();
  }
}
