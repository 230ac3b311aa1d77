// Image sources: a local file, standard input, an http(s) URL or an S3 object, read as a stream of
// chunks with bounded memory (a few chunks in flight), never copied to disk. Compression is told
// from the first bytes (gzip, zstd; xz and bzip2 are named and refused) and undone on the way.
//
// A local uncompressed file is read with positioned reads into two alternating buffers (one is
// parsed while the other fills), the cheapest way through the page cache. Everything else is a
// Node stream. gzip is undone on libuv's thread pool, beside the parser; zstd on the parser's
// thread, pulled a bounded chunk at a time (ZstdChunks). A source stream's error (a download cut
// short) is reported naming the source, and ends the import through its normal failure path.
//
// An http(s) URL may carry secrets: a user name and password (sent as HTTP Basic authentication,
// as curl does; fetch refuses a URL that holds them) or a presigned URL's query string (its
// signature, access key id, session token). Messages, progress and the image's recorded source
// name the URL without them (displayUrl): they would otherwise end up in logs and `image ls`.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { Readable, pipeline } from 'node:stream';
import zlib from 'node:zlib';
import type * as ZstdBinding from 'zstd-napi/binding.js';
import type { DCtx } from 'zstd-napi/binding.js';
import { ThinError } from '../errors.ts';
import { IMAGE_READ_CHUNK_BYTES } from '../constants.ts';
import { SourceReadError, type ChunkSource } from './byte-input.ts';
import { BackgroundHash, type LocalFile } from './background-hash.ts';

const require = createRequire(import.meta.url);

export type Compression = 'none' | 'gzip' | 'zstd';

export interface OpenedSource {
  /** Decompressed bytes. */
  chunks: ChunkSource;
  compression: Compression;
  /** Source bytes in total, when known (a file's size, a Content-Length). */
  totalBytes: number | undefined;
  /** Source (compressed) bytes read so far. */
  readonly bytesRead: () => number;
  /** sha256 of the source bytes read so far, hex (the hash ends: read nothing after). */
  readonly digest: () => Promise<string>;
  /** What the source is, for messages. */
  description: string;
  /** Random access to the source's raw bytes, when it has it (a local file). */
  ranges: RangeReader | undefined;
  /** A local regular file: its path and identity (another thread may open and read it itself, and checks it is this file). */
  localFile?: LocalFile;
  /** A local file: its hash starts reading the file itself (on its own thread); by digest() at the latest. */
  startHash(): void;
  /**
   * The digest is not wanted (an image archive names its own): a local file is never read for it,
   * a stream's chunks are no longer copied to it. digest() may not be called after.
   */
  skipHash(): void;
  close(): Promise<void>;
}

export interface RangeReader {
  sizeBytes: number;
  /** Bytes [begin, end) as chunks (counted in bytesRead). */
  read(beginBytes: number, endBytes: number, chunkBytes: number): ChunkSource;
}

/**
 * Reads bytes [begin, end) of a local file with two alternating buffers and positioned reads (one
 * is parsed while the other fills). `skip` seeks.
 */
export class FileChunks implements ChunkSource {
  readonly #fd: number;
  readonly #buffers: [Uint8Array, Uint8Array];
  #which = 0;
  #positionBytes: number;
  readonly #endBytes: number;
  #pending: Promise<number> | undefined;
  #closed = false;
  readonly #onBytes: ((bytes: Uint8Array) => void | Promise<void>) | undefined;
  readonly #reuse: boolean;

  constructor(fd: number, beginBytes: number, endBytes: number, options: { chunkBytes: number; reuse: boolean; onBytes?: (bytes: Uint8Array) => void | Promise<void> }) {
    this.#fd = fd;
    this.#buffers = [new Uint8Array(options.chunkBytes), new Uint8Array(options.chunkBytes)];
    this.#positionBytes = beginBytes;
    this.#endBytes = endBytes;
    this.#onBytes = options.onBytes;
    this.#reuse = options.reuse;
  }

  #start(buffer: Uint8Array): Promise<number> {
    const position = this.#positionBytes;
    const length = Math.min(buffer.length, this.#endBytes - position);
    if (length <= 0) return Promise.resolve(0);
    return new Promise((resolve, reject) => {
      fs.read(this.#fd, buffer, 0, length, position, (error, bytesRead) => (error ? reject(error) : resolve(bytesRead)));
    });
  }

  async next(): Promise<Uint8Array | undefined> {
    if (this.#closed) return undefined;
    let buffer = this.#buffers[this.#which]!;
    const count = await (this.#pending ?? this.#start(buffer));
    this.#pending = undefined;
    if (count === 0) return undefined;
    this.#positionBytes += count;
    let chunk = buffer.subarray(0, count);
    if (!this.#reuse) chunk = chunk.slice();
    await this.#onBytes?.(chunk);
    // Read ahead into the other buffer while this one is parsed.
    this.#which ^= 1;
    buffer = this.#buffers[this.#which]!;
    this.#pending = this.#start(buffer);
    this.#pending.catch(() => undefined);
    return chunk;
  }

  async skip(count: number): Promise<void> {
    // The read ahead started at the old position: drop it and read from the new one.
    await this.#pending?.catch(() => undefined);
    this.#pending = undefined;
    this.#positionBytes += count;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#pending?.catch(() => undefined);
  }
}

/** Chunks from an async iterable of byte chunks (a Node or web stream). */
export class IterableChunks implements ChunkSource {
  readonly #iterator: AsyncIterator<Uint8Array | string>;
  readonly #onClose: (() => Promise<void> | void) | undefined;
  readonly #describeError: ((error: unknown) => Error) | undefined;
  #done = false;

  /**
   * `describeError` turns the stream's own error (a connection closed early: undici's
   * "terminated", Node's "aborted") into the error the import reports, naming the source.
   */
  constructor(iterable: AsyncIterable<Uint8Array | string>, onClose?: () => Promise<void> | void, describeError?: (error: unknown) => Error) {
    this.#iterator = iterable[Symbol.asyncIterator]();
    this.#onClose = onClose;
    this.#describeError = describeError;
  }

  async next(): Promise<Uint8Array | undefined> {
    if (this.#done) return undefined;
    let result: IteratorResult<Uint8Array | string>;
    try {
      result = await this.#iterator.next();
    } catch (error) {
      throw this.#describeError === undefined || error instanceof ThinError ? error : this.#describeError(error);
    }
    if (result.done === true) {
      this.#done = true;
      return undefined;
    }
    const value = result.value;
    return typeof value === 'string' ? Buffer.from(value) : value;
  }

  async close(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    // The source first (a stream destroyed, a download aborted): a read still waiting then ends.
    // The iterator's return() is not awaited, as it may wait for that very read.
    await this.#onClose?.();
    void Promise.resolve(this.#iterator.return?.()).catch(() => undefined);
  }
}

/**
 * The error for a source stream that failed: a download that ended before the length its server
 * promised says so, with the bytes that came; anything else gives the stream's own reason.
 */
function sourceReadError(description: string, error: unknown, bytesReceived: number, totalBytes: number | undefined): ThinError {
  // What the stream says then ("terminated", "aborted") adds nothing; it stays the cause.
  const problem = totalBytes !== undefined && bytesReceived < totalBytes ? `the download ended after ${bytesReceived} of ${totalBytes} bytes` : error instanceof Error ? error.message : String(error);
  return new SourceReadError(`Cannot read ${description}: ${problem}`, { cause: error });
}

/** Compression from a stream's first bytes; throws for formats named but not supported. */
export function detectCompression(head: Uint8Array, description: string): Compression {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  // A skippable frame (magic 0x184D2A50-0x184D2A5F, little-endian; RFC 8878 section 3.1.2) may
  // come first: pzstd writes one before each frame. The decoder skips them.
  if ((head[0]! & 0xf0) === 0x50 && head[1] === 0x2a && head[2] === 0x4d && head[3] === 0x18) return 'zstd';
  if (head[0] === 0xfd && head[1] === 0x37 && head[2] === 0x7a && head[3] === 0x58 && head[4] === 0x5a) {
    throw new ThinError('THIN_IMAGE_INVALID', `${description} is xz-compressed; thinbd reads tar, gzip and zstd (decompress it first, e.g. xz -dc ... | thinbd image import ... -)`);
  }
  if (head[0] === 0x42 && head[1] === 0x5a && head[2] === 0x68) {
    throw new ThinError('THIN_IMAGE_INVALID', `${description} is bzip2-compressed; thinbd reads tar, gzip and zstd (decompress it first)`);
  }
  return 'none';
}

/** Decompressed chunks of a compressed chunk source; corrupt input is an error naming the compressed offset. */
export function decompressChunks(input: ChunkSource, compression: Exclude<Compression, 'none'>, description: string, bytesRead: () => number): ChunkSource {
  const corrupt = (error: unknown): ThinError => {
    const message = error instanceof Error ? error.message : String(error);
    return new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${description}: the ${compression} data is corrupt or truncated (after ${bytesRead()} compressed bytes): ${message}`, { cause: error });
  };
  return compression === 'gzip' ? gunzipChunks(input, corrupt) : new ZstdChunks(input, IMAGE_READ_CHUNK_BYTES, corrupt);
}

/**
 * gzip through Node's zlib, on libuv's thread pool beside the parser. A source's error (a
 * download cut short) ends the decompressor with that error through pipeline(), and is reported
 * as it is, not as corrupt data.
 */
function gunzipChunks(input: ChunkSource, corrupt: (error: unknown) => ThinError): ChunkSource {
  async function* compressed(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const chunk = await input.next();
      if (chunk === undefined) return;
      // The decompressor keeps chunks past the next pull; the source may reuse its buffers.
      yield chunk.slice();
    }
  }
  // Large output chunks: the default 16 KiB made a chunk (and a parser round trip) per 16 KiB.
  const decompressor = zlib.createGunzip({ chunkSize: IMAGE_READ_CHUNK_BYTES });
  // Every error is read from the decompressor's iterator below; pipeline's own report of it is not needed.
  pipeline(Readable.from(compressed()), decompressor, () => undefined);
  async function* checked(): AsyncGenerator<Uint8Array> {
    try {
      for await (const chunk of decompressor) yield chunk as Uint8Array;
    } catch (error) {
      throw error instanceof ThinError ? error : corrupt(error);
    }
  }
  return new IterableChunks(checked(), async () => {
    decompressor.destroy();
    await input.close?.();
  });
}

/**
 * zstd through the reference library's streaming decoder (zstd-napi's binding of
 * ZSTD_decompressStream; Node 20 has no zstd in zlib), pulled: each next() decodes into one
 * buffer of `chunkBytes` until it holds output, so memory stays bounded whatever the ratio. The
 * package's DecompressStream pushed all the output of an input chunk at once, ignoring
 * backpressure: 2.2 GB of memory for a 512 MB file of zeros (docs/image.md). Skippable frames
 * are skipped by the decoder. A chunk is overwritten by the next call (ChunkSource's contract).
 */
export class ZstdChunks implements ChunkSource {
  readonly #input: ChunkSource;
  readonly #corrupt: (error: unknown) => ThinError;
  readonly #context: DCtx;
  readonly #output: Uint8Array;
  /** The part of the input's last chunk not yet decoded (a view: the input is not pulled again before it is used up). */
  #pending: Uint8Array = new Uint8Array(0);
  #inputEnded = false;
  /** The decoder is inside a frame: the input may not end here. */
  #inFrame = false;
  #closed = false;

  constructor(input: ChunkSource, chunkBytes: number, corrupt: (error: unknown) => ThinError) {
    this.#input = input;
    this.#corrupt = corrupt;
    this.#context = new (zstdBinding().DCtx)();
    this.#output = new Uint8Array(chunkBytes);
  }

  async next(): Promise<Uint8Array | undefined> {
    if (this.#closed) return undefined;
    for (;;) {
      // With input left, or output the decoder still holds (the last call filled the buffer).
      let hint: number;
      let produced: number;
      let consumed: number;
      try {
        [hint, produced, consumed] = this.#context.decompressStream(this.#output, this.#pending);
      } catch (error) {
        throw this.#corrupt(error);
      }
      this.#pending = this.#pending.subarray(consumed);
      if (consumed > 0 || produced > 0) this.#inFrame = hint !== 0;
      if (produced > 0) return this.#output.subarray(0, produced);
      if (this.#pending.length > 0) {
        // zstd always moves on with room for output; not doing so would loop here for ever.
        if (consumed === 0) throw this.#corrupt(new Error('the decoder made no progress'));
        continue;
      }
      if (this.#inputEnded) {
        if (this.#inFrame) throw this.#corrupt(new Error('the input ends inside a frame'));
        return undefined;
      }
      const chunk = await this.#input.next();
      if (chunk === undefined) this.#inputEnded = true;
      else this.#pending = chunk;
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#input.close?.();
  }
}

/** zstd-napi's binding, loaded when first needed (a flat tar's import never loads it). */
function zstdBinding(): typeof ZstdBinding {
  return require('zstd-napi/binding.js') as typeof ZstdBinding;
}

/** A chunk source that counts and hashes the bytes passing through, and can put back its first chunk. */
class TappedChunks implements ChunkSource {
  readonly #inner: ChunkSource;
  #putBack: Uint8Array | undefined;

  constructor(inner: ChunkSource) {
    this.#inner = inner;
  }

  async peek(): Promise<Uint8Array | undefined> {
    this.#putBack ??= await this.#inner.next();
    return this.#putBack;
  }

  async next(): Promise<Uint8Array | undefined> {
    if (this.#putBack !== undefined) {
      const chunk = this.#putBack;
      this.#putBack = undefined;
      return chunk;
    }
    return this.#inner.next();
  }

  async close(): Promise<void> {
    await this.#inner.close?.();
  }
}

/** A remote object: its bytes as a stream, and ranges of them when the server serves ranges. */
export interface RemoteObject {
  stream: AsyncIterable<Uint8Array>;
  totalBytes: number | undefined;
  close: () => void;
  /** Bytes [begin, end) (a ranged GET). */
  readRange?: (beginBytes: number, endBytes: number) => Promise<Uint8Array>;
}

export interface SourceOpeners {
  /** s3://BUCKET/KEY (set by remote.ts). */
  s3?: (url: string) => Promise<RemoteObject>;
}

/** Bytes [begin, end) of a remote object as chunks of ranged reads, one read ahead; `skip` moves without reading. */
class RangeChunks implements ChunkSource {
  readonly #readRange: (beginBytes: number, endBytes: number) => Promise<Uint8Array>;
  readonly #endBytes: number;
  readonly #chunkBytes: number;
  readonly #onBytes: (bytes: Uint8Array) => void;
  #positionBytes: number;
  #ahead: { at: number; read: Promise<Uint8Array> } | undefined;

  constructor(readRange: (beginBytes: number, endBytes: number) => Promise<Uint8Array>, beginBytes: number, endBytes: number, chunkBytes: number, onBytes: (bytes: Uint8Array) => void) {
    this.#readRange = readRange;
    this.#positionBytes = beginBytes;
    this.#endBytes = endBytes;
    this.#chunkBytes = chunkBytes;
    this.#onBytes = onBytes;
  }

  #start(at: number): { at: number; read: Promise<Uint8Array> } | undefined {
    if (at >= this.#endBytes) return undefined;
    const read = this.#readRange(at, Math.min(this.#endBytes, at + this.#chunkBytes));
    read.catch(() => undefined);
    return { at, read };
  }

  async next(): Promise<Uint8Array | undefined> {
    const current = this.#ahead?.at === this.#positionBytes ? this.#ahead : this.#start(this.#positionBytes);
    if (current === undefined) return undefined;
    const chunk = await current.read;
    if (chunk.length === 0) throw new ThinError('THIN_IO', `A ranged read at byte ${current.at} returned nothing: the object is shorter than it said`);
    this.#positionBytes += chunk.length;
    this.#ahead = this.#start(this.#positionBytes);
    this.#onBytes(chunk);
    return chunk;
  }

  async skip(count: number): Promise<void> {
    this.#positionBytes += count;
  }
}

/** Random access through ranged reads. */
function remoteRanges(sizeBytes: number, readRange: (beginBytes: number, endBytes: number) => Promise<Uint8Array>, onBytes: (bytes: Uint8Array) => void): RangeReader {
  return { sizeBytes, read: (beginBytes, endBytes, chunkBytes) => new RangeChunks(readRange, beginBytes, endBytes, chunkBytes, onBytes) };
}

/**
 * A URL as messages and labels show it: user name, password and query string replaced by `***`
 * (they may be credentials or a presigned URL's signature); the rest as given.
 */
export function displayUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    // Not a URL fetch could use; still keep whatever looks like credentials out of the message.
    return text.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/?#]*@/i, '$1***@').replace(/\?[^#]*/, '?***');
  }
  if (url.username === '' && url.password === '' && url.search === '') return text;
  if (url.username !== '' || url.password !== '') {
    url.username = '***';
    url.password = '';
  }
  if (url.search !== '') url.search = '***';
  return url.href;
}

/** What fetch needs for an http(s) URL: the URL without user name and password, and those as a Basic Authorization header. */
function httpRequest(source: string): { url: string; headers: Record<string, string> } {
  const url = new URL(source);
  if (url.username === '' && url.password === '') return { url: source, headers: {} };
  const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  url.username = '';
  url.password = '';
  return { url: url.href, headers: { Authorization: `Basic ${Buffer.from(credentials).toString('base64')}` } };
}

/**
 * Why fetch failed: undici says only "fetch failed" and keeps the reason (connection refused, a
 * certificate not trusted, too many redirects) in its cause.
 */
function fetchFailure(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const cause = error instanceof Error ? error.cause : undefined;
  return cause instanceof Error && cause.message !== '' ? `${message}: ${cause.message}` : message;
}

/** The ranged-GET reader of an http(s) URL whose server says it serves byte ranges. */
function httpRangeReader(source: string): (beginBytes: number, endBytes: number) => Promise<Uint8Array> {
  const { url, headers } = httpRequest(source);
  const shown = displayUrl(source);
  return async (beginBytes, endBytes) => {
    let response: Response;
    try {
      response = await fetch(url, { headers: { ...headers, Range: `bytes=${beginBytes}-${endBytes - 1}` } });
    } catch (error) {
      throw new ThinError('THIN_IO', `Cannot fetch bytes ${beginBytes}-${endBytes - 1} of ${shown}: ${fetchFailure(error)}`, { cause: error });
    }
    if (response.status !== 206) throw new ThinError('THIN_IO', `Cannot fetch bytes ${beginBytes}-${endBytes - 1} of ${shown}: HTTP ${response.status} (expected 206)`);
    try {
      return new Uint8Array(await response.arrayBuffer());
    } catch (error) {
      throw new ThinError('THIN_IO', `Cannot fetch bytes ${beginBytes}-${endBytes - 1} of ${shown}: ${fetchFailure(error)}`, { cause: error });
    }
  };
}

/** Whether SOURCE names a path on this host (not "-" for standard input, nor a URL such as http:// or s3://). */
export function isPathSource(source: string): boolean {
  return source !== '-' && !/^[a-z][a-z0-9+.-]*:\/\//i.test(source);
}

/** Opens SOURCE: a path, "-" for standard input, an http(s) URL, or s3://BUCKET/KEY. */
export async function openSource(source: string, openers: SourceOpeners = {}, stdin: NodeJS.ReadableStream = process.stdin): Promise<OpenedSource> {
  if (!isPathSource(source) && source !== '-' && !/^(https?|s3):\/\//i.test(source)) {
    const scheme = source.slice(0, source.indexOf(':'));
    const hint = /^file$/i.test(scheme) ? ' (for a local file, give its path)' : '';
    throw new ThinError('THIN_INVALID', `Cannot read ${displayUrl(source)}: thinbd does not read ${scheme}:// URLs; a source is a path, - (standard input), an http:// or https:// URL, or s3://BUCKET/KEY${hint}`);
  }
  let bytes = 0;
  const local = isPathSource(source) ? openLocal(source) : undefined;
  // A regular file is read at offsets and hashed by the worker from its own reads; anything else
  // (a named pipe, a character device such as /dev/stdin) is a stream, read once, like "-".
  const isLocal = local?.stat.isFile() === true;
  const localFile = isLocal ? identify(source, local!.fd) : undefined;
  const hash = new BackgroundHash(IMAGE_READ_CHUNK_BYTES, 4, source === '-' ? 'standard input' : isPathSource(source) ? source : displayUrl(source), localFile);
  let hashing = true;
  const tap = (chunk: Uint8Array): Promise<void> | undefined => {
    bytes += chunk.length;
    return hashing ? hash.update(chunk) : undefined;
  };
  let raw: ChunkSource;
  let totalBytes: number | undefined;
  let ranges: RangeReader | undefined;
  let closeFile: (() => void) | undefined;
  let description: string;
  let compression: Compression;
  let chunks: ChunkSource;
  // Until the source is handed back, a failure (a fetch refused, xz, an empty pipe that closes)
  // ends the digest's thread and closes the file here: nobody else holds them yet.
  try {
    if (source === '-') {
      description = 'standard input';
      const stop = (): void => void (stdin as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
      raw = tapped(new IterableChunks(stdin as AsyncIterable<Uint8Array>, stop, (error) => sourceReadError(description, error, bytes, undefined)), tap);
    } else if (/^https?:\/\//i.test(source)) {
      description = displayUrl(source);
      const controller = new AbortController();
      let response: Response;
      try {
        const { url, headers } = httpRequest(source);
        response = await fetch(url, { headers, signal: controller.signal });
      } catch (error) {
        throw new ThinError('THIN_IO', `Cannot fetch ${description}: ${fetchFailure(error)}`, { cause: error });
      }
      if (!response.ok || response.body === null) {
        throw new ThinError(response.status === 404 ? 'THIN_NOT_FOUND' : 'THIN_IO', `Cannot fetch ${description}: HTTP ${response.status} ${response.statusText}`);
      }
      const length = Number(response.headers.get('content-length'));
      totalBytes = Number.isSafeInteger(length) && length > 0 ? length : undefined;
      const body = response.body as unknown as AsyncIterable<Uint8Array>;
      raw = tapped(new IterableChunks(body, () => controller.abort(), (error) => sourceReadError(description, error, bytes, totalBytes)), tap);
      if (totalBytes !== undefined && response.headers.get('accept-ranges') === 'bytes') {
        ranges = remoteRanges(totalBytes, httpRangeReader(source), (chunk) => (bytes += chunk.length));
      }
    } else if (/^s3:\/\//i.test(source)) {
      description = source;
      if (openers.s3 === undefined) throw new ThinError('THIN_INVALID', `Cannot read ${source}: S3 support is not available`);
      const opened = await openers.s3(source);
      totalBytes = opened.totalBytes;
      raw = tapped(new IterableChunks(opened.stream, opened.close, (error) => sourceReadError(description, error, bytes, totalBytes)), tap);
      if (totalBytes !== undefined && opened.readRange !== undefined) ranges = remoteRanges(totalBytes, opened.readRange, (chunk) => (bytes += chunk.length));
    } else if (!isLocal) {
      description = source;
      const stream = fs.createReadStream('', { fd: local!.fd, highWaterMark: IMAGE_READ_CHUNK_BYTES });
      raw = tapped(new IterableChunks(stream, () => void stream.destroy(), (error) => sourceReadError(description, error, bytes, undefined)), tap);
      closeFile = () => void stream.destroy();
    } else {
      description = source;
      const { fd, stat } = local!;
      totalBytes = stat.size;
      // Peek with a small read to know whether the chunks feed a decompressor (which keeps them).
      const head = new Uint8Array(8);
      const headBytes = fs.readSync(fd, head, 0, head.length, 0);
      const reuse = detectCompression(head.subarray(0, headBytes), description) === 'none';
      const sizeBytes = stat.size;
      // The worker hashes the file itself: only count here.
      raw = new FileChunks(fd, 0, sizeBytes, {
        chunkBytes: IMAGE_READ_CHUNK_BYTES,
        reuse,
        onBytes: (chunk) => {
          bytes += chunk.length;
        },
      });
      ranges = {
        sizeBytes,
        read: (beginBytes, endBytes, chunkBytes) => new FileChunks(fd, beginBytes, endBytes, { chunkBytes, reuse: true, onBytes: (chunk) => {
          bytes += chunk.length;
        } }),
      };
      closeFile = () => fs.closeSync(fd);
    }
    const head = new TappedChunks(raw);
    const first = await head.peek();
    compression = first === undefined ? 'none' : detectCompression(first, description);
    chunks = compression === 'none' ? head : decompressChunks(head, compression, description, () => bytes);
  } catch (error) {
    await hash.close().catch(() => undefined);
    if (closeFile !== undefined) closeFile();
    else if (local !== undefined) fs.closeSync(local.fd);
    throw error;
  }
  return {
    chunks,
    compression,
    totalBytes,
    bytesRead: () => bytes,
    digest: () => hash.digest(),
    description,
    ranges,
    ...(localFile === undefined ? {} : { localFile }),
    startHash: () => {
      if (isLocal) hash.readFile();
    },
    skipHash: () => {
      hashing = false;
      void hash.close().catch(() => undefined);
    },
    close: async () => {
      await hash.close();
      await chunks.close?.();
      closeFile?.();
      closeFile = undefined;
    },
  };
}

/** The file open at `fd` as another thread can find it again: by `path`, and its device and inode. */
function identify(path: string, fd: number): LocalFile {
  const { dev, ino } = fs.fstatSync(fd, { bigint: true });
  return { path, dev, ino };
}

/** Opens a local SOURCE path for reading; a directory or a missing file is a named error. */
function openLocal(source: string): { fd: number; stat: fs.Stats } {
  let fd: number;
  try {
    fd = fs.openSync(source, 'r');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new ThinError(code === 'ENOENT' ? 'THIN_NOT_FOUND' : 'THIN_IO', `Cannot read ${source}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`, { cause: error });
  }
  const stat = fs.fstatSync(fd);
  if (stat.isDirectory()) {
    fs.closeSync(fd);
    throw new ThinError('THIN_INVALID', `Cannot import ${source}: it is a directory, not an archive`);
  }
  return { fd, stat };
}

/** A chunk source that shows every chunk to `tap` as it passes. */
function tapped(inner: ChunkSource, tap: (chunk: Uint8Array) => Promise<void> | undefined): ChunkSource {
  return {
    async next() {
      const chunk = await inner.next();
      if (chunk !== undefined) await tap(chunk);
      return chunk;
    },
    close: () => inner.close?.() ?? Promise.resolve(),
  };
}
