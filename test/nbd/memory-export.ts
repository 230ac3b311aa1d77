// A sparse in-memory NBD export for tests: blocks that were never written (or were trimmed or
// zeroed whole) are absent, so block status reports them as holes that read as zeros.
// Options let a test make it slow (random latency, so replies come back out of order), full
// (THIN_NO_SPACE past a block budget), or failing.

import type { NbdExport, NbdExtent } from '../../src/nbd/backend.ts';

export interface MemoryExportOptions {
  name: string;
  sizeBytes: number;
  description?: string;
  blockSizeBytes?: number;
  readOnly?: boolean;
  canTrim?: boolean;
  canZero?: boolean;
  canFastZero?: boolean;
  canFua?: boolean;
  canMultiConn?: boolean;
  canCache?: boolean;
  blockSizeMinBytes?: number;
  /** Each operation waits a random 0..latencyMsMax ms (0: resolves on the next microtask). */
  latencyMsMax?: number;
  /** Allocated blocks allowed; writes needing more fail with THIN_NO_SPACE. */
  blockCountMax?: number;
  /** zero() with fastZero refuses (code ENOTSUP) instead of zeroing, as a slow store would. */
  fastZeroRefused?: boolean;
}

function codedError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

export class MemoryExport implements NbdExport {
  readonly name: string;
  readonly description: string;
  readonly readOnly: boolean;
  readonly canTrim: boolean;
  readonly canZero: boolean;
  readonly canFastZero: boolean;
  readonly canFua: boolean;
  readonly canMultiConn: boolean;
  readonly canCache: boolean;
  readonly blockSizeMinBytes: number;
  readonly blockSizePreferredBytes = 4096;
  readonly blockSizeMaxBytes = 32 * 1024 * 1024;
  readonly blockSizeBytes: number;
  #sizeBytes: number;
  readonly #blocks = new Map<number, Uint8Array>();
  readonly #latencyMsMax: number;
  readonly #blockCountMax: number;
  readonly #fastZeroRefused: boolean;
  /** Operation counts, for tests that check what the server asked for. */
  readonly counts = { read: 0, write: 0, flush: 0, trim: 0, zero: 0, blockStatus: 0, cache: 0, fua: 0 };
  /** Operations running now, and the most ever at once. */
  inFlight = 0;
  inFlightMax = 0;
  /** When set, every operation fails with this code. */
  failWith: string | undefined;

  constructor(options: MemoryExportOptions) {
    this.name = options.name;
    this.description = options.description ?? `memory export ${options.name}`;
    this.#sizeBytes = options.sizeBytes;
    this.blockSizeBytes = options.blockSizeBytes ?? 4096;
    this.readOnly = options.readOnly ?? false;
    this.canTrim = options.canTrim ?? true;
    this.canZero = options.canZero ?? true;
    this.canFastZero = options.canFastZero ?? true;
    this.canFua = options.canFua ?? true;
    this.canMultiConn = options.canMultiConn ?? true;
    this.canCache = options.canCache ?? true;
    this.blockSizeMinBytes = options.blockSizeMinBytes ?? 1;
    this.#latencyMsMax = options.latencyMsMax ?? 0;
    this.#blockCountMax = options.blockCountMax ?? Infinity;
    this.#fastZeroRefused = options.fastZeroRefused ?? false;
  }

  sizeBytes(): number {
    return this.#sizeBytes;
  }

  resize(sizeBytes: number): void {
    this.#sizeBytes = sizeBytes;
  }

  get allocatedBlockCount(): number {
    return this.#blocks.size;
  }

  /** The whole contents (a copy), for comparing with what a client wrote. */
  contents(): Uint8Array {
    const bytes = new Uint8Array(this.#sizeBytes);
    for (const [index, block] of this.#blocks) {
      const begin = index * this.blockSizeBytes;
      bytes.set(block.subarray(0, Math.min(block.length, this.#sizeBytes - begin)), begin);
    }
    return bytes;
  }

  async read(offsetBytes: number, target: Uint8Array): Promise<boolean> {
    await this.#enter('read', offsetBytes, target.length);
    let holes = false;
    this.#forEachBlock(offsetBytes, target.length, (index, inBlockBytes, stepBytes, targetBytes) => {
      const block = this.#blocks.get(index);
      if (block === undefined) {
        target.fill(0, targetBytes, targetBytes + stepBytes);
        holes = true;
      } else target.set(block.subarray(inBlockBytes, inBlockBytes + stepBytes), targetBytes);
    });
    return holes;
  }

  async write(offsetBytes: number, source: Uint8Array, options: { fua: boolean }): Promise<void> {
    await this.#enter('write', offsetBytes, source.length);
    if (options.fua) this.counts.fua++;
    this.#checkSpace(offsetBytes, source.length, false);
    this.#forEachBlock(offsetBytes, source.length, (index, inBlockBytes, stepBytes, sourceBytes) => {
      this.#blockFor(index).set(source.subarray(sourceBytes, sourceBytes + stepBytes), inBlockBytes);
    });
  }

  async flush(): Promise<void> {
    await this.#enter('flush', 0, 0);
  }

  async trim(offsetBytes: number, lengthBytes: number, options: { fua: boolean }): Promise<void> {
    await this.#enter('trim', offsetBytes, lengthBytes);
    if (options.fua) this.counts.fua++;
    // Whole blocks are dropped; partial ones are left alone (trim is advisory).
    this.#forEachBlock(offsetBytes, lengthBytes, (index, _inBlockBytes, stepBytes) => {
      if (stepBytes === this.blockSizeBytes) this.#blocks.delete(index);
    });
  }

  async zero(
    offsetBytes: number,
    lengthBytes: number,
    options: { noHole: boolean; fua: boolean; fastZero: boolean },
  ): Promise<void> {
    await this.#enter('zero', offsetBytes, lengthBytes);
    if (options.fastZero && this.#fastZeroRefused) throw codedError('ENOTSUP', `memory export ${this.name} cannot zero fast`);
    if (options.fua) this.counts.fua++;
    if (options.noHole) this.#checkSpace(offsetBytes, lengthBytes, true);
    this.#forEachBlock(offsetBytes, lengthBytes, (index, inBlockBytes, stepBytes) => {
      if (stepBytes === this.blockSizeBytes && !options.noHole) this.#blocks.delete(index);
      else if (options.noHole) this.#blockFor(index).fill(0, inBlockBytes, inBlockBytes + stepBytes);
      else this.#blocks.get(index)?.fill(0, inBlockBytes, inBlockBytes + stepBytes);
    });
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<NbdExtent[]> {
    await this.#enter('blockStatus', offsetBytes, lengthBytes);
    const extents: NbdExtent[] = [];
    this.#forEachBlock(offsetBytes, lengthBytes, (index, _inBlockBytes, stepBytes) => {
      const hole = !this.#blocks.has(index);
      const last = extents[extents.length - 1];
      if (last !== undefined && last.hole === hole) last.lengthBytes += stepBytes;
      else extents.push({ lengthBytes: stepBytes, hole, zero: hole });
    });
    return extents;
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    await this.#enter('cache', offsetBytes, lengthBytes);
  }

  async #enter(operation: keyof MemoryExport['counts'], offsetBytes: number, lengthBytes: number): Promise<void> {
    this.counts[operation]++;
    this.inFlight++;
    this.inFlightMax = Math.max(this.inFlightMax, this.inFlight);
    try {
      if (this.#latencyMsMax > 0) {
        await new Promise((resolve) => setTimeout(resolve, Math.random() * this.#latencyMsMax));
      } else {
        await Promise.resolve();
      }
    } finally {
      this.inFlight--;
    }
    if (this.failWith !== undefined) throw codedError(this.failWith, `memory export ${this.name} is set to fail`);
    if (offsetBytes + lengthBytes > this.#sizeBytes) {
      throw codedError('THIN_OUT_OF_RANGE', `${operation} of ${lengthBytes} bytes at ${offsetBytes} passes ${this.#sizeBytes}`);
    }
  }

  #checkSpace(offsetBytes: number, lengthBytes: number, _noHole: boolean): void {
    if (this.#blockCountMax === Infinity) return;
    let needed = 0;
    this.#forEachBlock(offsetBytes, lengthBytes, (index) => {
      if (!this.#blocks.has(index)) needed++;
    });
    if (this.#blocks.size + needed > this.#blockCountMax) {
      throw codedError('THIN_NO_SPACE', `memory export ${this.name} has no free block`);
    }
  }

  #blockFor(index: number): Uint8Array {
    let block = this.#blocks.get(index);
    if (block === undefined) {
      block = new Uint8Array(this.blockSizeBytes);
      this.#blocks.set(index, block);
    }
    return block;
  }

  /** Calls visit(blockIndex, offsetInBlock, bytesInThisBlock, bytesDoneSoFar) over a range. */
  #forEachBlock(
    offsetBytes: number,
    lengthBytes: number,
    visit: (index: number, inBlockBytes: number, stepBytes: number, doneBytes: number) => void,
  ): void {
    let done = 0;
    while (done < lengthBytes) {
      const position = offsetBytes + done;
      const index = Math.floor(position / this.blockSizeBytes);
      const inBlockBytes = position - index * this.blockSizeBytes;
      const stepBytes = Math.min(this.blockSizeBytes - inBlockBytes, lengthBytes - done);
      visit(index, inBlockBytes, stepBytes, done);
      done += stepBytes;
    }
  }
}
