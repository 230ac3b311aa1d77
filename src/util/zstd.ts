// Zstandard compression (the zstd-napi binding of the reference C library), with contexts made
// once and reused: a context costs more to set up than a 64 KiB chunk costs to compress.
//
// Compression goes through the binding's context directly, into a buffer the caller gives: the
// package's own Compressor allocates a fresh output buffer per call for incompressible input, and
// on a virtual machine the first touch of fresh memory cost more than compressing into it
// (docs/benchmarks.md, "Archive").
//
// Decompression is given the size the caller expects and never allocates more: input comes from
// archives and downloads, and a damaged frame header must not ask for gigabytes. A frame that
// does not decompress to exactly that size is a ZstdFrameError.
import { createRequire } from 'node:module';
import type * as Binding from 'zstd-napi/binding.js';

const require = createRequire(import.meta.url);
const binding = require('zstd-napi/binding.js') as typeof Binding;

/** ZSTD_getErrorName of ZSTD_error_dstSize_tooSmall: the frame did not fit the target. */
const DESTINATION_TOO_SMALL = 'Destination buffer is too small';

export class ZstdFrameError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ZstdFrameError';
  }
}

export class ZstdCompressor {
  readonly level: number;
  readonly #context = new binding.CCtx();

  constructor(level: number) {
    this.level = level;
    // No checksum in the frame: callers that store chunks name them by a cryptographic hash of
    // the raw bytes and check that instead. The content size stays in the header.
    this.#context.setParameter(binding.CParameter.compressionLevel, level);
    this.#context.setParameter(binding.CParameter.checksumFlag, 0);
    this.#context.setParameter(binding.CParameter.contentSizeFlag, 1);
  }

  /** raw as one frame, in a buffer of its own. */
  compress(raw: Uint8Array): Uint8Array {
    const target = new Uint8Array(binding.compressBound(raw.length));
    return target.subarray(0, this.#context.compress2(target, raw));
  }

  /**
   * Writes raw as one frame at the start of target and returns the frame's length; undefined
   * when the frame does not fit (a target shorter than raw thus keeps only frames worth storing).
   */
  compressInto(raw: Uint8Array, target: Uint8Array): number | undefined {
    try {
      return this.#context.compress2(target, raw);
    } catch (error) {
      if (error instanceof Error && error.message === DESTINATION_TOO_SMALL) return undefined;
      throw error;
    }
  }
}

export class ZstdDecompressor {
  readonly #context = new binding.DCtx();
  /** decompressFrame's output, reused from frame to frame. */
  #scratch = new Uint8Array(0);

  /** The content size a frame's header states, or undefined when it states none or is not a frame header. */
  static contentSize(frame: Uint8Array): number | undefined {
    try {
      return binding.getFrameContentSize(frame) ?? undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * A whole frame's contents, however long its header says they are up to maxBytes (ZstdFrameError
   * otherwise, or when it does not hold what its header says): a view of a buffer reused by the next
   * call. For frames that hold several pieces, which a reader then takes apart.
   */
  decompressFrame(frame: Uint8Array, maxBytes: number): Uint8Array {
    const size = ZstdDecompressor.contentSize(frame);
    if (size === undefined || size > maxBytes) throw new ZstdFrameError(size === undefined ? 'not a zstd frame with its content size' : `a zstd frame claiming ${size} bytes, more than any (${maxBytes})`);
    if (this.#scratch.length < size) this.#scratch = new Uint8Array(Math.min(maxBytes, Math.max(size, 2 * this.#scratch.length)));
    return this.decompress(frame, size, this.#scratch.subarray(0, size));
  }

  /** The frame's contents, which must be exactly rawLengthBytes long (ZstdFrameError otherwise). */
  decompress(frame: Uint8Array, rawLengthBytes: number, into?: Uint8Array): Uint8Array {
    const target = into ?? new Uint8Array(rawLengthBytes);
    if (target.length !== rawLengthBytes) throw new RangeError(`a target of ${target.length} bytes for ${rawLengthBytes}`);
    let written: number;
    try {
      written = this.#context.decompress(target, frame);
    } catch (error) {
      throw new ZstdFrameError(`not a valid zstd frame of ${rawLengthBytes} bytes (${(error as Error).message})`, { cause: error });
    }
    if (written !== rawLengthBytes) throw new ZstdFrameError(`the zstd frame holds ${written} bytes, not ${rawLengthBytes}`);
    return target;
  }
}
