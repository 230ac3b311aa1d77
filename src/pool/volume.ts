// A thin volume: byte-granular block I/O over the pool's engine (core.ts).
//
// Every request checks its range against the volume's size, then holds the range lock of the
// virtual blocks it touches for its whole duration (block-locks.ts), so requests that overlap on a
// block run one after the other and a copy-on-write never races a write.
import { ThinError, assert } from '../errors.ts';
import { DEVICE_FLAG_READ_ONLY } from './codecs.ts';
import type { PoolCore } from './core.ts';
import type { Device } from './devices.ts';
import { touchedBlocks } from './ranges.ts';

export interface WriteOptions {
  /** Durable when the write is acknowledged (NBD FUA). */
  fua?: boolean;
}

export interface WriteZeroesOptions extends WriteOptions {
  /** Keep the blocks allocated: zero them instead of unmapping them (NBD WRITE_ZEROES without NO_HOLE is the opposite). */
  noHole?: boolean;
}

export interface VolumeExtent {
  lengthBytes: number;
  mapped: boolean;
}

/** Virtual blocks [virtualBlock, +lengthBlocks) mapped to data blocks [dataBlock, +lengthBlocks). */
export interface MappedRun {
  virtualBlock: number;
  dataBlock: number;
  lengthBlocks: number;
}

export class Volume {
  readonly id: number;
  #core: PoolCore;
  #device: Device;

  /** Made by Pool; not for callers. */
  constructor(core: PoolCore, device: Device) {
    this.#core = core;
    this.#device = device;
    this.id = device.id;
  }

  /** The volume's name (renameVolume changes it). */
  get name(): string {
    return this.#device.details.name;
  }

  get sizeBytes(): number {
    return this.#device.value.sizeBytes;
  }

  get readOnly(): boolean {
    return (this.#device.value.flags & DEVICE_FLAG_READ_ONLY) !== 0;
  }

  /** False once the volume was removed (or its pool closed). */
  get isOpen(): boolean {
    return !this.#device.removed && !this.#core.closed;
  }

  #checkRange(what: string, offsetBytes: number, lengthBytes: number): void {
    this.#core.assertOpen();
    if (this.#device.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${this.name} was removed`);
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || !Number.isSafeInteger(lengthBytes) || lengthBytes < 0) {
      throw new ThinError('THIN_INVALID', `Cannot ${what} ${lengthBytes} bytes at offset ${offsetBytes} of volume ${this.name}: not byte counts`);
    }
    if (offsetBytes + lengthBytes > this.#device.value.sizeBytes) {
      throw new ThinError(
        'THIN_OUT_OF_RANGE',
        `Cannot ${what} ${lengthBytes} bytes at offset ${offsetBytes}: volume ${this.name} has ${this.#device.value.sizeBytes} bytes`,
      );
    }
  }

  async #locked<T>(offsetBytes: number, lengthBytes: number, work: () => Promise<T>): Promise<T> {
    const { begin, end } = touchedBlocks(offsetBytes, lengthBytes, this.#core.blockSizeBytes);
    assert(end > begin, 'locking an empty range');
    this.#core.beginRequest();
    let release: (() => void) | undefined;
    try {
      release = await this.#core.locks.lock(this.id, begin, end);
      // The volume may have been removed or shrunk while this request waited for its lock.
      if (this.#device.removed) throw new ThinError('THIN_NOT_FOUND', `Volume ${this.name} was removed`);
      if (offsetBytes + lengthBytes > this.#device.value.sizeBytes) {
        throw new ThinError('THIN_OUT_OF_RANGE', `Volume ${this.name} shrank to ${this.#device.value.sizeBytes} bytes under a request`);
      }
      return await work();
    } finally {
      release?.();
      this.#core.endRequest();
    }
  }

  /**
   * Blocks [begin, end) locked and the request counted, when the lock is free now (no waiting, so
   * the volume cannot have changed since #checkRange); undefined when #locked must wait for it.
   */
  #lockedNow(begin: number, end: number): (() => void) | undefined {
    const release = this.#core.locks.tryLock(this.id, begin, end);
    if (release === undefined) return undefined;
    try {
      this.#core.beginRequest();
    } catch (error) {
      release();
      throw error;
    }
    return () => {
      release();
      this.#core.endRequest();
    };
  }

  /**
   * Fills target with the bytes at offsetBytes; unmapped blocks read as zeros. Resolves true when
   * some of the range was unmapped (the NBD server then asks for extents to send holes).
   */
  async read(offsetBytes: number, target: Uint8Array): Promise<boolean> {
    this.#checkRange('read', offsetBytes, target.length);
    if (target.length === 0) return false;
    const { begin, end } = touchedBlocks(offsetBytes, target.length, this.#core.blockSizeBytes);
    // The common case takes its lock at once: no waiting promise, no run list (per-request
    // garbage was a large share of the server's CPU on 4 KiB reads: docs/benchmarks.md,
    // "Figures behind code decisions").
    const release = this.#lockedNow(begin, end);
    if (release === undefined) {
      return await this.#locked(offsetBytes, target.length, () => this.#core.dataPath.readRange(this.#device, offsetBytes, target));
    }
    try {
      return await this.#core.dataPath.readRange(this.#device, offsetBytes, target);
    } finally {
      release();
    }
  }

  async write(offsetBytes: number, source: Uint8Array, options: WriteOptions = {}): Promise<void> {
    this.#checkRange('write', offsetBytes, source.length);
    this.#core.assertDeviceWritable(this.#device);
    if (source.length > 0) {
      const { begin, end } = touchedBlocks(offsetBytes, source.length, this.#core.blockSizeBytes);
      // One block, its lock free: straight to the block write, as read() does.
      const release = end - begin === 1 ? this.#lockedNow(begin, end) : undefined;
      if (release === undefined) {
        await this.#locked(offsetBytes, source.length, () => this.#core.dataPath.writeRange(this.#device, offsetBytes, source, source.length));
      } else {
        try {
          await this.#core.dataPath.writeInBlock(this.#device, begin, offsetBytes - begin * this.#core.blockSizeBytes, source, source.length);
        } finally {
          release();
        }
      }
      this.#core.commits.commitIfManyDirty();
    }
    if (options.fua === true) await this.#core.commits.flush();
  }

  /** Afterwards the range reads as zeros; whole blocks are unmapped and their space freed when unshared. */
  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.#checkRange('discard', offsetBytes, lengthBytes);
    this.#core.assertDeviceWritable(this.#device);
    if (lengthBytes === 0) return;
    await this.#locked(offsetBytes, lengthBytes, () => this.#core.dataPath.zeroRange(this.#device, offsetBytes, lengthBytes, false));
    this.#core.commits.commitIfManyDirty();
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: WriteZeroesOptions = {}): Promise<void> {
    this.#checkRange('write zeroes to', offsetBytes, lengthBytes);
    this.#core.assertDeviceWritable(this.#device);
    if (lengthBytes > 0) {
      await this.#locked(offsetBytes, lengthBytes, () => this.#core.dataPath.zeroRange(this.#device, offsetBytes, lengthBytes, options.noHole === true));
      this.#core.commits.commitIfManyDirty();
    }
    if (options.fua === true) await this.#core.commits.flush();
  }

  /** Every write completed before this call is durable when it resolves (the pool's commit). */
  async flush(): Promise<void> {
    this.#core.assertOpen();
    await this.#core.commits.flush();
  }

  /**
   * The volume's mappings in virtual block order, each run mapping consecutive virtual blocks to
   * consecutive data blocks: what the delta walker compares (equal data blocks hold equal bytes,
   * as copy-on-write never writes a block that another volume still maps). A snapshot of the
   * mapping at the time of the call.
   */
  mappedRuns(): MappedRun[] {
    this.#checkRange('list the mappings of', 0, 0);
    const endBlock = Math.ceil(this.#device.value.sizeBytes / this.#core.blockSizeBytes);
    if (endBlock === 0) return [];
    const runs: MappedRun[] = [];
    for (const run of this.#core.mappings.blockRuns(this.#device, 0, endBlock)) {
      if (run.dataBlock !== undefined) runs.push({ virtualBlock: run.begin, dataBlock: run.dataBlock, lengthBlocks: run.end - run.begin });
    }
    return runs;
  }

  /**
   * Mapped and unmapped runs covering [offsetBytes, offsetBytes + lengthBytes), in order, adjacent
   * runs of the same kind joined (for NBD BLOCK_STATUS and sparse export). A snapshot of the
   * mapping at the time of the call.
   */
  extents(offsetBytes: number, lengthBytes: number): VolumeExtent[] {
    this.#checkRange('report extents of', offsetBytes, lengthBytes);
    if (lengthBytes === 0) return [];
    const bs = this.#core.blockSizeBytes;
    const endBytes = offsetBytes + lengthBytes;
    const { begin, end } = touchedBlocks(offsetBytes, lengthBytes, bs);
    if (end - begin === 1) return [{ lengthBytes, mapped: this.#core.mappings.lookup(this.#device, begin) !== undefined }];
    const result: VolumeExtent[] = [];
    for (const run of this.#core.mappings.blockRuns(this.#device, begin, end)) {
      const runBytes = Math.min(run.end * bs, endBytes) - Math.max(run.begin * bs, offsetBytes);
      const mapped = run.dataBlock !== undefined;
      const last = result[result.length - 1];
      if (last !== undefined && last.mapped === mapped) last.lengthBytes += runBytes;
      else result.push({ lengthBytes: runBytes, mapped });
    }
    return result;
  }
}
