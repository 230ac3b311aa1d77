// Zstandard compression (the zstd-napi binding of the reference C library), with contexts made
// once and reused: a context costs more to set up than a 64 KiB chunk costs to compress.
//
// Decompression is given the size the caller expects and never allocates more: input comes from
// archives and downloads, and a damaged frame header must not ask for gigabytes. A frame that
// does not decompress to exactly that size is a ZstdFrameError.
import { createRequire } from 'node:module';
import type * as Binding from 'zstd-napi/binding.js';

const require = createRequire(import.meta.url);
// The package's own Compressor wraps the same context and copies out of a scratch buffer; the
// binding is used directly for decompression so the output buffer is ours to size.
const binding = require('zstd-napi/binding.js') as typeof Binding;
const { Compressor } = require('zstd-napi') as typeof import('zstd-napi');

export class ZstdFrameError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ZstdFrameError';
  }
}

export class ZstdCompressor {
  readonly level: number;
  readonly #compressor: InstanceType<typeof Compressor>;

  constructor(level: number) {
    this.level = level;
    this.#compressor = new Compressor();
    // No checksum in the frame: callers that store chunks name them by a cryptographic hash of
    // the raw bytes and check that instead. The content size stays in the header.
    this.#compressor.setParameters({ compressionLevel: level, checksumFlag: false, contentSizeFlag: true });
  }

  compress(raw: Uint8Array): Uint8Array {
    return this.#compressor.compress(raw);
  }
}

export class ZstdDecompressor {
  readonly #context = new binding.DCtx();

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
