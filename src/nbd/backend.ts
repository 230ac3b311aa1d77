// What the NBD server serves: an export is a small capability-negotiated interface, as nbdkit's
// plugins are, so this layer knows nothing of pools or volumes. The daemon adapts a pool volume
// to it (src/daemon); tests use a sparse memory export (test/nbd/memory-export.ts).
//
// Contract for implementations:
// - Offsets and lengths the server passes are always inside [0, sizeBytes()) as sampled when the
//   connection entered transmission, and a READ/WRITE is never longer than NBD_PAYLOAD_BYTES_MAX.
// - Operations may run concurrently, overlapping or not; the export orders overlapping ones.
// - flush() makes durable every write, trim and zero that *completed* before flush() was called,
//   whichever connection sent it. That is what lets an export set canMultiConn: the spec wants
//   a FLUSH on one connection to cover writes replied to on all of them, and the server replies
//   to a write only after the export's promise resolved.
// - fua: the operation is durable when its promise resolves. The server only passes fua: true
//   when canFua is set; otherwise it calls flush() after the operation itself.
// - zero() with fastZero: true must either do the zeroing faster than writing zeros would, or
//   change nothing and throw an error with code 'ENOTSUP'.
// - Failures are thrown errors with a string `code`; nbdErrorForCode() turns it into the wire
//   error, so ThinError codes from the pool map without this layer importing the pool.

import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from './protocol.ts';

/** One run of a block-status answer; runs are contiguous from the offset asked for. */
export interface NbdExtent {
  lengthBytes: number;
  /** Not allocated: a write here may fail with no space (NBD_STATE_HOLE). */
  hole: boolean;
  /** Reads as zeros (NBD_STATE_ZERO); a read reply sends it as a hole chunk, no data. */
  zero: boolean;
}

export interface NbdExport {
  /** The export name clients ask for: what nbdinfo --list shows. */
  readonly name: string;
  /** Human-readable text for NBD_INFO_DESCRIPTION and NBD_OPT_LIST; may be empty. */
  readonly description: string;
  /** Current size; sampled once per connection when it enters transmission. */
  sizeBytes(): number;
  readonly readOnly: boolean;
  readonly canTrim: boolean;
  readonly canZero: boolean;
  /** zero() honours fastZero (see the contract above). Needs canZero. */
  readonly canFastZero: boolean;
  /** Native FUA; without it the server flushes after a FUA operation. */
  readonly canFua: boolean;
  /** flush() is global across connections (see the contract above). */
  readonly canMultiConn: boolean;
  /** cache() exists and does something useful (prefetch); otherwise CACHE is a no-op. */
  readonly canCache: boolean;
  /** Smallest unit of I/O (power of 2, ≤ 64 KiB); 1 means any alignment. */
  readonly blockSizeMinBytes: number;
  /** Preferred unit (power of 2, ≥ max(min, 512)). */
  readonly blockSizePreferredBytes: number;
  /** Largest READ/WRITE payload (≥ preferred, ≤ NBD_PAYLOAD_BYTES_MAX). */
  readonly blockSizeMaxBytes: number;

  /**
   * Fills target. May resolve false to say none of the range is a hole: a structured reply then
   * goes out as one data chunk without asking blockStatus (one mapping lookup per read instead
   * of two). true or nothing: the server asks blockStatus to find the holes.
   */
  read(offsetBytes: number, target: Uint8Array): Promise<boolean | void>;
  write(offsetBytes: number, source: Uint8Array, options: { fua: boolean }): Promise<void>;
  flush(): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number, options: { fua: boolean }): Promise<void>;
  zero(
    offsetBytes: number,
    lengthBytes: number,
    options: { noHole: boolean; fua: boolean; fastZero: boolean },
  ): Promise<void>;
  /** Extents from offsetBytes; may cover less than asked (the server asks again) or more (clipped). */
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<NbdExtent[]>;
  cache?(offsetBytes: number, lengthBytes: number): Promise<void>;
}

/** Where the server finds exports; it may change while serving (it is asked on every option). */
export interface NbdExportRegistry {
  /** The export for a name; "" is the default export, if there is one. */
  get(name: string): NbdExport | undefined;
  /** Every export, for NBD_OPT_LIST. */
  list(): NbdExport[];
}

/**
 * A registry backed by a Map. Exports come and go at runtime (the daemon adds a volume's export
 * the moment the volume is created). The empty name resolves to `defaultName` when one is set,
 * else to nothing: guessing "the first export" would hand a client a different disk whenever
 * exports are added or removed.
 */
export class MapExportRegistry implements NbdExportRegistry {
  #exports = new Map<string, NbdExport>();
  defaultName: string | undefined;

  constructor(exports: Iterable<NbdExport> = [], options: { defaultName?: string } = {}) {
    for (const exp of exports) this.add(exp);
    this.defaultName = options.defaultName;
  }

  /** Adds or replaces the export under its name. */
  add(exp: NbdExport): void {
    this.#exports.set(exp.name, exp);
  }

  remove(name: string): boolean {
    return this.#exports.delete(name);
  }

  get(name: string): NbdExport | undefined {
    if (name === '' && this.defaultName !== undefined) return this.#exports.get(this.defaultName);
    return this.#exports.get(name);
  }

  list(): NbdExport[] {
    return [...this.#exports.values()];
  }
}

/**
 * The NBD error for a failure, from the error's `code`: ThinError codes of the pool (by string,
 * so this layer needs no import of it) and Node's errno codes of a file-backed export.
 */
export function nbdErrorForCode(code: unknown): number {
  switch (code) {
    case 'THIN_NO_SPACE':
    case 'THIN_NO_METADATA_SPACE':
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NBD_ENOSPC;
    case 'THIN_READ_ONLY':
    case 'EPERM':
    case 'EROFS':
    case 'EACCES':
      return NBD_EPERM;
    case 'THIN_OUT_OF_RANGE':
    case 'THIN_INVALID':
    case 'EINVAL':
      return NBD_EINVAL;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return NBD_ENOTSUP;
    case 'THIN_CLOSED':
      return NBD_ESHUTDOWN;
    default:
      return NBD_EIO;
  }
}

/** The `code` of a thrown value, if it has a string one. */
export function errorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return undefined;
}
