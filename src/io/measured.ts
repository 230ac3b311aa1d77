// A block file that measures what passes through it: how many reads, writes and syncs failed, and
// how long each kind took (io/latency.ts). The pool wraps each of its raw files in one, under
// everything else it does with them, so `pool status` reports the device as the pool saw it:
// every failed system call counts, including the retries and the narrowing of a failed request
// (pool/bad-blocks.ts), and a mirrored metadata file counts both copies.
import type { SyncOptions } from './block-file.ts';
import { ForwardingBlockFile } from './forwarding.ts';
import { LatencyStats, type LatencySummary } from './latency.ts';

export interface IoErrorCounts {
  read: number;
  write: number;
  sync: number;
}

export interface IoHealthSummary {
  errors: IoErrorCounts;
  read: LatencySummary;
  write: LatencySummary;
  sync: LatencySummary;
}

export class MeasuredBlockFile extends ForwardingBlockFile {
  readonly errors: IoErrorCounts = { read: 0, write: 0, sync: 0 };
  readonly readLatency = new LatencyStats();
  readonly writeLatency = new LatencyStats();
  readonly syncLatency = new LatencyStats();

  summary(): IoHealthSummary {
    return {
      errors: { ...this.errors },
      read: this.readLatency.summary(),
      write: this.writeLatency.summary(),
      sync: this.syncLatency.summary(),
    };
  }

  override readSync(target: Uint8Array, offsetBytes: number): void {
    const start = performance.now();
    try {
      super.readSync(target, offsetBytes);
    } catch (error) {
      this.errors.read += 1;
      throw error;
    }
    this.readLatency.record((performance.now() - start) * 1000);
  }

  // Each clock is read before the call: an inline sync (SyncOptions.inline) or a write through
  // the page cache does its work inside the call, before the promise exists.
  override read(target: Uint8Array, offsetBytes: number): Promise<void> {
    const start = performance.now();
    return this.#timed(super.read(target, offsetBytes), start, this.readLatency, 'read');
  }

  override write(source: Uint8Array, offsetBytes: number): Promise<void> {
    const start = performance.now();
    return this.#timed(super.write(source, offsetBytes), start, this.writeLatency, 'write');
  }

  override sync(options?: SyncOptions): Promise<void> {
    const start = performance.now();
    return this.#timed(super.sync(options), start, this.syncLatency, 'sync');
  }

  #timed(operation: Promise<void>, start: number, stats: LatencyStats, kind: keyof IoErrorCounts): Promise<void> {
    return operation.then(
      () => {
        stats.record((performance.now() - start) * 1000);
      },
      (error: unknown) => {
        this.errors[kind] += 1;
        throw error;
      },
    );
  }
}
