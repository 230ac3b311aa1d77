// Images store the bytes they share once (docs/image.md "Sharing"): every whole pool block of file
// data an import writes is looked up by its content among the blocks of the images already in the
// pool, and when one holds the same bytes the new volume maps that data block (Pool.shareBlocks)
// instead of writing another. A file of a pool block or more starts at a pool-block boundary
// (data-stream.ts), so its whole blocks match wherever the same file is: in an image built on the
// same base layers, in a flat tar of the same tree, or twice in one image. Whole blocks of zeros
// are not written at all (unmapped blocks read as zeros).
//
// The index of those blocks is a cache kept in the pool, in the hidden volume `image.blocks`: a header
// block, then one 16-byte record per pool block of each image (the CRC-32 of its bytes, the image
// volume's id, the block). A candidate is only ever a hint: its bytes are read and compared with
// the block's before anything is shared, so a stale record (a removed image, one made writable and
// changed, an index from a crash) or two blocks with the same CRC can waste a read, never change
// an image. Records of volumes no longer in the pool are dropped when the index is next written.
//
// One CRC is the key: version 1 of the index also kept a crc32c of every block, which cost an
// import about as much CPU as the crc32 (a 32-bit key among a pool's blocks rarely matches a block
// of other content, and such a match costs one read). A version 1 index is still read: its crc32s
// are the keys.
import { loadCrc32 } from '../util/native.ts';
import { ThinError } from '../errors.ts';
import type { Pool } from '../pool/pool.ts';
import type { Volume } from '../pool/volume.ts';
import { HIDDEN_LABEL } from '../tools/list.ts';
import type { BlockTarget } from './block-target.ts';

const { crc32 } = loadCrc32();

/** The volume holding the index. */
export const BLOCK_INDEX_VOLUME = 'image.blocks';
/**
 * The index volume's label (set when it is made, since the first index): a volume that only has
 * the name is someone's own, which an import neither reads as an index nor overwrites.
 */
const BLOCK_INDEX_LABEL = 'thinbd.image.block-index';
const INDEX_MAGIC = 'thinbd image block index';
const INDEX_VERSION = 2;
/** Version 1 records also held a crc32c (before the crc32); still read. */
const INDEX_VERSION_TWO_CRCS = 1;
const HEADER_BYTES = 4096;
const RECORD_BYTES = 16;

interface Candidate {
  volumeName: string;
  offsetBytes: number;
}

/** Content CRC → where a block with that content lies, for the images in a pool. */
export class BlockIndex {
  readonly blockSizeBytes: number;
  /** Records: [crc32, volume id, pool block] per block, flat. */
  readonly #records: number[] = [];
  /** CRC → the first record with it. */
  readonly #byKey = new Map<number, number>();
  /** Volume id → name, for the volumes records may point at. */
  readonly #names = new Map<number, string>();

  private constructor(blockSizeBytes: number) {
    this.blockSizeBytes = blockSizeBytes;
  }

  /** The records of the images in `pool` (an empty index when there is none, or it is unreadable). */
  static async load(pool: Pool): Promise<BlockIndex> {
    const blockSizeBytes = pool.status().blockSizeBytes;
    const index = new BlockIndex(blockSizeBytes);
    const images = new Map<number, string>();
    let indexVolume: Volume | undefined;
    for (const info of pool.list()) {
      if (info.name === BLOCK_INDEX_VOLUME && info.labels[BLOCK_INDEX_LABEL] !== undefined) indexVolume = pool.volume(info.name);
      else if (info.readOnly && info.labels['thinbd.image.format'] !== undefined) images.set(info.id, info.name);
    }
    if (indexVolume === undefined || indexVolume.sizeBytes < HEADER_BYTES) return index;
    const header = new Uint8Array(HEADER_BYTES);
    await indexVolume.read(0, header);
    const view = new DataView(header.buffer);
    if (Buffer.from(header.subarray(0, INDEX_MAGIC.length)).toString('latin1') !== INDEX_MAGIC) return index;
    const version = view.getUint32(32, true);
    if ((version !== INDEX_VERSION && version !== INDEX_VERSION_TWO_CRCS) || view.getUint32(36, true) !== blockSizeBytes) return index;
    const count = view.getUint32(40, true);
    if (HEADER_BYTES + count * RECORD_BYTES > indexVolume.sizeBytes) return index;
    const bytes = new Uint8Array(count * RECORD_BYTES);
    if (count > 0) await indexVolume.read(HEADER_BYTES, bytes);
    const records = new DataView(bytes.buffer);
    const crcAt = version === INDEX_VERSION_TWO_CRCS ? 4 : 0;
    for (let at = 0; at < bytes.length; at += RECORD_BYTES) {
      const volumeId = records.getUint32(at + 8, true);
      const name = images.get(volumeId);
      if (name === undefined) continue;
      index.#names.set(volumeId, name);
      index.#add(records.getUint32(at + crcAt, true), volumeId, records.getUint32(at + 12, true));
    }
    return index;
  }

  get recordCount(): number {
    return this.#records.length / 3;
  }

  #add(crc: number, volumeId: number, block: number): void {
    if (!this.#byKey.has(crc)) this.#byKey.set(crc, this.#records.length);
    this.#records.push(crc, volumeId, block);
  }

  /** Where a block with this CRC may lie. */
  find(crc: number): Candidate | undefined {
    const at = this.#byKey.get(crc);
    if (at === undefined) return undefined;
    const volumeName = this.#names.get(this.#records[at + 1]!);
    if (volumeName === undefined) return undefined;
    return { volumeName, offsetBytes: this.#records[at + 2]! * this.blockSizeBytes };
  }

  /** Records that `volume` holds a block with this CRC at offsetBytes. */
  note(crc: number, volume: Volume, offsetBytes: number): void {
    this.#names.set(volume.id, volume.name);
    this.#add(crc, volume.id, offsetBytes / this.blockSizeBytes);
  }

  /**
   * Writes the index (the records of volumes still in the pool) to its volume; not when a volume
   * not made as the index has its name (later imports then share nothing with this one).
   */
  async save(pool: Pool): Promise<void> {
    const existing = pool.list().find((info) => info.name === BLOCK_INDEX_VOLUME);
    if (existing !== undefined && existing.labels[BLOCK_INDEX_LABEL] === undefined) return;
    const live = new Set(pool.list().map((info) => info.id));
    const kept: number[] = [];
    for (let at = 0; at < this.#records.length; at += 3) if (live.has(this.#records[at + 1]!)) kept.push(at);
    const bytes = new Uint8Array(HEADER_BYTES + kept.length * RECORD_BYTES);
    const view = new DataView(bytes.buffer);
    bytes.set(Buffer.from(INDEX_MAGIC, 'latin1'));
    view.setUint32(32, INDEX_VERSION, true);
    view.setUint32(36, this.blockSizeBytes, true);
    view.setUint32(40, kept.length, true);
    kept.forEach((at, position) => {
      const offset = HEADER_BYTES + position * RECORD_BYTES;
      view.setUint32(offset, this.#records[at]!, true);
      view.setUint32(offset + 8, this.#records[at + 1]!, true);
      view.setUint32(offset + 12, this.#records[at + 2]!, true);
    });
    const sizeBytes = Math.ceil(bytes.length / this.blockSizeBytes) * this.blockSizeBytes;
    if (existing === undefined) {
      await pool.createVolume(BLOCK_INDEX_VOLUME, { sizeBytes, labels: { [BLOCK_INDEX_LABEL]: String(INDEX_VERSION), [HIDDEN_LABEL]: 'image block index' } });
    } else {
      const volume = pool.volume(BLOCK_INDEX_VOLUME);
      if (volume.sizeBytes !== sizeBytes) await pool.resizeVolume(BLOCK_INDEX_VOLUME, sizeBytes);
    }
    const volume = pool.volume(BLOCK_INDEX_VOLUME);
    const padded = new Uint8Array(sizeBytes);
    padded.set(bytes);
    await volume.write(0, padded);
  }
}

/** What sharing saved an import. */
export interface SharingCounts {
  /** Bytes of whole pool blocks mapped from blocks already in the pool instead of written. */
  sharedBytes: number;
  /** Bytes of whole pool blocks of zeros left unmapped. */
  zeroBytes: number;
  /** Bytes written. */
  writtenBytes: number;
}

/**
 * The volume being imported, as a write target that shares what it can: each whole pool block
 * written to it is looked up in the index, read back from the candidate and compared, and shared
 * when equal; the rest is written in runs as given. After `stop` (the metadata), writes go straight
 * through.
 */
export class SharingTarget implements BlockTarget {
  readonly counts: SharingCounts = { sharedBytes: 0, zeroBytes: 0, writtenBytes: 0 };
  readonly #pool: Pool;
  readonly #volume: Volume;
  readonly #index: BlockIndex;
  readonly #blockSizeBytes: number;
  readonly #zeros: Uint8Array;
  readonly #zeroCrc: number;
  /** Scratch blocks for reading candidates back (one per write in flight). */
  readonly #scratch: Uint8Array[] = [];
  #sharing = true;

  constructor(pool: Pool, volume: Volume, index: BlockIndex) {
    this.#pool = pool;
    this.#volume = volume;
    this.#index = index;
    this.#blockSizeBytes = index.blockSizeBytes;
    this.#zeros = new Uint8Array(this.#blockSizeBytes);
    this.#zeroCrc = crc32(this.#zeros as Buffer);
  }

  /** From now on every write goes straight to the volume (the file system's metadata). */
  stop(): void {
    this.#sharing = false;
  }

  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.#volume.discard(offsetBytes, lengthBytes);
  }

  async write(offsetBytes: number, bytes: Uint8Array): Promise<void> {
    if (!this.#sharing) {
      await this.#volume.write(offsetBytes, bytes);
      return;
    }
    const bs = this.#blockSizeBytes;
    // [pendingFrom, at) is yet to be written: one write per run of blocks that are not shared.
    let pendingFrom = 0;
    let at = (bs - (offsetBytes % bs)) % bs;
    while (at + bs <= bytes.length) {
      const block = bytes.subarray(at, at + bs);
      const kept = await this.#keep(offsetBytes + at, block);
      if (kept) {
        await this.#writePart(offsetBytes, bytes, pendingFrom, at);
        pendingFrom = at + bs;
      }
      at += bs;
    }
    await this.#writePart(offsetBytes, bytes, pendingFrom, bytes.length);
  }

  async #writePart(offsetBytes: number, bytes: Uint8Array, from: number, to: number): Promise<void> {
    if (to <= from) return;
    this.counts.writtenBytes += to - from;
    await this.#volume.write(offsetBytes + from, bytes.subarray(from, to));
  }

  /** Whether the block at offsetBytes needs no write: zeros, or shared with a block already in the pool. */
  async #keep(offsetBytes: number, block: Uint8Array): Promise<boolean> {
    const crc = crc32(block as Buffer);
    if (crc === this.#zeroCrc && Buffer.from(block.buffer, block.byteOffset, block.length).equals(this.#zeros)) {
      this.counts.zeroBytes += block.length;
      return true;
    }
    const candidate = this.#index.find(crc);
    this.#index.note(crc, this.#volume, offsetBytes);
    if (candidate === undefined) return false;
    const scratch = this.#scratch.pop() ?? new Uint8Array(block.length);
    try {
      await this.#pool.volume(candidate.volumeName).read(candidate.offsetBytes, scratch);
      if (!Buffer.from(scratch.buffer, scratch.byteOffset, scratch.length).equals(block)) return false;
      const shared = await this.#pool.shareBlocks(candidate.volumeName, candidate.offsetBytes, this.#volume.name, offsetBytes, block.length);
      if (shared !== block.length) return false;
    } catch (error) {
      // A candidate that went away (removed, shrunk) is only a missed chance; anything else is not.
      if (error instanceof ThinError && (error.code === 'THIN_NOT_FOUND' || error.code === 'THIN_OUT_OF_RANGE')) return false;
      throw error;
    } finally {
      this.#scratch.push(scratch);
    }
    this.counts.sharedBytes += block.length;
    return true;
  }
}
