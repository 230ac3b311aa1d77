// What each export was asked to do, for metrics: requests, bytes, errors and latency by command.
// Counted by a filter (export-backend.ts), so it sees exactly the calls the export sees, after the
// protocol checks and the fallbacks (a FUA write to an export without native FUA counts as a write
// and a flush). Latency is the export's time to answer, from the call to its promise settling.
import { Histogram } from '../util/prometheus.ts';
import type { NbdExport, NbdExtent } from './backend.ts';
import type { NbdExportFilter } from './export-backend.ts';

export const MEASURED_COMMANDS = ['read', 'write', 'flush', 'trim', 'zero', 'block_status', 'cache'] as const;
export type MeasuredCommand = (typeof MEASURED_COMMANDS)[number];

export interface ExportStats {
  readonly requests: Record<MeasuredCommand, number>;
  readonly errors: Record<MeasuredCommand, number>;
  /** Bytes the command covered: data moved for read and write, the range for trim and zero. */
  readonly bytes: Record<MeasuredCommand, number>;
  readonly latency: Record<MeasuredCommand, Histogram>;
}

function perCommand<T>(make: () => T): Record<MeasuredCommand, T> {
  return Object.fromEntries(MEASURED_COMMANDS.map((command) => [command, make()])) as Record<MeasuredCommand, T>;
}

function newStats(): ExportStats {
  return { requests: perCommand(() => 0), errors: perCommand(() => 0), bytes: perCommand(() => 0), latency: perCommand(() => new Histogram()) };
}

export class NbdExportStats {
  readonly #byExport = new Map<string, ExportStats>();
  #forgottenErrorCount = 0;

  /** Wraps every export a connection serves (NbdServerOptions.filters). */
  readonly filter: NbdExportFilter = (next) => new MeasuredExport(next, this.#statsOf(next.name));

  /** Exports measured so far, by name. */
  entries(): IterableIterator<[string, ExportStats]> {
    return this.#byExport.entries();
  }

  /**
   * Drops an export's figures (its volume was removed): a scrape then stops showing it. Its
   * errors stay in forgottenErrorCount, so a total over all exports never goes down.
   */
  forget(name: string): void {
    const stats = this.#byExport.get(name);
    if (stats === undefined) return;
    for (const command of MEASURED_COMMANDS) this.#forgottenErrorCount += stats.errors[command];
    this.#byExport.delete(name);
  }

  /** Errors of the exports forgotten so far. */
  get forgottenErrorCount(): number {
    return this.#forgottenErrorCount;
  }

  #statsOf(name: string): ExportStats {
    let stats = this.#byExport.get(name);
    if (stats === undefined) {
      stats = newStats();
      this.#byExport.set(name, stats);
    }
    return stats;
  }
}

class MeasuredExport implements NbdExport {
  readonly #next: NbdExport;
  readonly #stats: ExportStats;

  constructor(next: NbdExport, stats: ExportStats) {
    this.#next = next;
    this.#stats = stats;
  }

  get name(): string { return this.#next.name; }
  get description(): string { return this.#next.description; }
  get readOnly(): boolean { return this.#next.readOnly; }
  get canTrim(): boolean { return this.#next.canTrim; }
  get canZero(): boolean { return this.#next.canZero; }
  get canFastZero(): boolean { return this.#next.canFastZero; }
  get canFua(): boolean { return this.#next.canFua; }
  get canMultiConn(): boolean { return this.#next.canMultiConn; }
  get canCache(): boolean { return this.#next.canCache; }
  get blockSizeMinBytes(): number { return this.#next.blockSizeMinBytes; }
  get blockSizePreferredBytes(): number { return this.#next.blockSizePreferredBytes; }
  get blockSizeMaxBytes(): number { return this.#next.blockSizeMaxBytes; }

  sizeBytes(): number {
    return this.#next.sizeBytes();
  }

  read(offsetBytes: number, target: Uint8Array): Promise<boolean | void> {
    return this.#measure('read', target.length, this.#next.read(offsetBytes, target));
  }

  write(offsetBytes: number, source: Uint8Array, options: { fua: boolean }): Promise<void> {
    return this.#measure('write', source.length, this.#next.write(offsetBytes, source, options));
  }

  flush(): Promise<void> {
    return this.#measure('flush', 0, this.#next.flush());
  }

  trim(offsetBytes: number, lengthBytes: number, options: { fua: boolean }): Promise<void> {
    return this.#measure('trim', lengthBytes, this.#next.trim(offsetBytes, lengthBytes, options));
  }

  zero(offsetBytes: number, lengthBytes: number, options: { noHole: boolean; fua: boolean; fastZero: boolean }): Promise<void> {
    return this.#measure('zero', lengthBytes, this.#next.zero(offsetBytes, lengthBytes, options));
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<NbdExtent[]> {
    return this.#measure('block_status', lengthBytes, this.#next.blockStatus(offsetBytes, lengthBytes));
  }

  get cache(): ((offsetBytes: number, lengthBytes: number) => Promise<void>) | undefined {
    const next = this.#next;
    if (next.cache === undefined) return undefined;
    return (offsetBytes, lengthBytes) => this.#measure('cache', lengthBytes, next.cache!(offsetBytes, lengthBytes));
  }

  #measure<T>(command: MeasuredCommand, lengthBytes: number, operation: Promise<T>): Promise<T> {
    const stats = this.#stats;
    const startedNs = process.hrtime.bigint();
    stats.requests[command]++;
    return operation.then(
      (result) => {
        stats.bytes[command] += lengthBytes;
        stats.latency[command].observe(Number(process.hrtime.bigint() - startedNs) / 1e9);
        return result;
      },
      (error: unknown) => {
        stats.errors[command]++;
        stats.latency[command].observe(Number(process.hrtime.bigint() - startedNs) / 1e9);
        throw error;
      },
    );
  }
}
