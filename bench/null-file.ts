// A data file that stores nothing: writes vanish, reads give zeros. Lets a benchmark map a
// million 64 KiB blocks (64 GiB of virtual data) to measure metadata alone.
import type { BlockFile } from '../src/io/block-file.ts';

export class NullBlockFile implements BlockFile {
  readonly description = 'null';
  #sizeBytes: number;

  constructor(sizeBytes: number) {
    this.#sizeBytes = sizeBytes;
  }

  sizeBytes(): number {
    return this.#sizeBytes;
  }

  readSync(target: Uint8Array): void {
    target.fill(0);
  }

  async read(target: Uint8Array): Promise<void> {
    target.fill(0);
  }

  async write(source: Uint8Array, offsetBytes: number): Promise<void> {
    this.#sizeBytes = Math.max(this.#sizeBytes, offsetBytes + source.length);
  }

  async sync(): Promise<void> {}

  async grow(sizeBytes: number): Promise<void> {
    this.#sizeBytes = Math.max(this.#sizeBytes, sizeBytes);
  }

  async close(): Promise<void> {}
}
