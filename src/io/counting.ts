// Counts what passes through a block file: the figures `pool status` and the benchmarks report.
import type { SyncOptions } from './block-file.ts';
import { ForwardingBlockFile } from './forwarding.ts';

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

export class CountingBlockFile extends ForwardingBlockFile {
  readonly counters: IoCounters = zeroCounters();

  override readSync(target: Uint8Array, offsetBytes: number): void {
    this.counters.reads += 1;
    this.counters.readBytes += target.length;
    super.readSync(target, offsetBytes);
  }

  override read(target: Uint8Array, offsetBytes: number): Promise<void> {
    this.counters.reads += 1;
    this.counters.readBytes += target.length;
    return super.read(target, offsetBytes);
  }

  override write(source: Uint8Array, offsetBytes: number): Promise<void> {
    this.counters.writes += 1;
    this.counters.writeBytes += source.length;
    return super.write(source, offsetBytes);
  }

  override sync(options?: SyncOptions): Promise<void> {
    this.counters.syncs += 1;
    return super.sync(options);
  }
}
