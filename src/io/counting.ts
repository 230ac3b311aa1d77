// Counts what passes through a block file: the figures `pool status` and the benchmarks report.
import type { BlockFile } from './block-file.ts';

export interface IoCounters {
  reads: number;
  readBytes: number;
  writes: number;
  writeBytes: number;
  syncs: number;
}

export function zeroCounters(): IoCounters {
  return { reads: 0, readBytes: 0, writes: 0, writeBytes: 0, syncs: 0 };
}

export class CountingBlockFile implements BlockFile {
  readonly counters: IoCounters = zeroCounters();
  readonly inner: BlockFile;

  constructor(inner: BlockFile) {
    this.inner = inner;
  }

  get description(): string {
    return this.inner.description;
  }

  sizeBytes(): number {
    return this.inner.sizeBytes();
  }

  readSync(target: Uint8Array, offsetBytes: number): void {
    this.counters.reads += 1;
    this.counters.readBytes += target.length;
    this.inner.readSync(target, offsetBytes);
  }

  read(target: Uint8Array, offsetBytes: number): Promise<void> {
    this.counters.reads += 1;
    this.counters.readBytes += target.length;
    return this.inner.read(target, offsetBytes);
  }

  write(source: Uint8Array, offsetBytes: number): Promise<void> {
    this.counters.writes += 1;
    this.counters.writeBytes += source.length;
    return this.inner.write(source, offsetBytes);
  }

  sync(): Promise<void> {
    this.counters.syncs += 1;
    return this.inner.sync();
  }

  allocate(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.inner.allocate?.(offsetBytes, lengthBytes) ?? Promise.resolve();
  }

  grow(sizeBytes: number): Promise<void> {
    return this.inner.grow(sizeBytes);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
