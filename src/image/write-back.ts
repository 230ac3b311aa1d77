// The disk writes an import's data as it comes, not all at the end: the pool's data file is asked
// to write back (Pool.writeBackData) after every WRITE_BACK_BYTES the import wrote, one at a time.
// Without it nothing starts the disk before the final flush (the kernel's background write-back
// begins at 10% of memory dirty by default), and that flush waited for all of an image's data:
// 0.25 of 1.4 s on a 638 MiB tar (docs/benchmarks.md "Image import").
import type { BlockTarget } from './block-target.ts';

/** Bytes written between two write-backs. */
export const WRITE_BACK_BYTES = 64 * 1024 * 1024;

export interface WriteBackHost {
  /** Starts writing back what was written so far; resolves when done, never rejects. */
  writeBackData(): Promise<void>;
}

export class WriteBackPacer {
  readonly #host: WriteBackHost;
  #bytesSince = 0;
  #running: Promise<void> | undefined;

  constructor(host: WriteBackHost) {
    this.#host = host;
  }

  /** `bytes` more were written (completed). */
  note(bytes: number): void {
    this.#bytesSince += bytes;
    if (this.#bytesSince < WRITE_BACK_BYTES || this.#running !== undefined) return;
    this.#bytesSince = 0;
    this.#running = this.#host.writeBackData().finally(() => {
      this.#running = undefined;
    });
  }

  /** Resolves when no write-back runs (before the pool is flushed, closed or changed). */
  async settled(): Promise<void> {
    await this.#running;
  }

  /** `target`, noting each write it completes. */
  pacing(target: BlockTarget): BlockTarget {
    return {
      write: async (offsetBytes, bytes) => {
        await target.write(offsetBytes, bytes);
        this.note(bytes.length);
      },
      discard: (offsetBytes, lengthBytes) => target.discard(offsetBytes, lengthBytes),
    };
  }
}
