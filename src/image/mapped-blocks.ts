// Where a dry run of an import (image stats --deep) writes: nothing is stored, only which pool
// blocks the writes would map, counted as the pool would count the image volume's mapped blocks.
// The dry run lays the image out with the same code as an import (data-stream.ts, ext4/), so the
// count is the import's, but for blocks an import shares with other images (block-sharing.ts):
// those are mapped here as written, as they are in the image's volume.
import type { BlockTarget } from './block-target.ts';

export class MappedBlockCounter implements BlockTarget {
  readonly #blockSizeBytes: number;
  readonly #zeros: Buffer;
  /** One bit per pool block of the volume. */
  #bitmap = new Uint8Array(1024);
  /** File data first: whole pool blocks of zeros are left unmapped, as SharingTarget leaves them. */
  #skippingZeros = true;

  constructor(blockSizeBytes: number) {
    this.#blockSizeBytes = blockSizeBytes;
    this.#zeros = Buffer.alloc(blockSizeBytes);
  }

  /** From now on every write maps its blocks (the file system's metadata, as SharingTarget.stop). */
  stop(): void {
    this.#skippingZeros = false;
  }

  async write(offsetBytes: number, bytes: Uint8Array): Promise<void> {
    const bs = this.#blockSizeBytes;
    const end = offsetBytes + bytes.length;
    for (let block = Math.floor(offsetBytes / bs); block * bs < end; block++) {
      const from = block * bs - offsetBytes;
      const whole = from >= 0 && from + bs <= bytes.length;
      if (whole && this.#skippingZeros && this.#zeros.equals(bytes.subarray(from, from + bs))) continue;
      this.#set(block, true);
    }
  }

  /** A thin volume unmaps the whole pool blocks inside the range (zeroing the ends keeps them mapped). */
  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    const bs = this.#blockSizeBytes;
    for (let block = Math.ceil(offsetBytes / bs); (block + 1) * bs <= offsetBytes + lengthBytes; block++) this.#set(block, false);
  }

  /** Pool blocks mapped. */
  get mappedBlocks(): number {
    let count = 0;
    for (const byte of this.#bitmap) {
      let bits = byte;
      while (bits !== 0) {
        bits &= bits - 1;
        count++;
      }
    }
    return count;
  }

  #set(block: number, mapped: boolean): void {
    const index = block >>> 3;
    if (index >= this.#bitmap.length) {
      if (!mapped) return;
      const grown = new Uint8Array(Math.max(index + 1, this.#bitmap.length * 2));
      grown.set(this.#bitmap);
      this.#bitmap = grown;
    }
    const bit = 1 << (block & 7);
    this.#bitmap[index] = mapped ? this.#bitmap[index]! | bit : this.#bitmap[index]! & ~bit;
  }
}
