// A streaming tar reader: POSIX ustar, pax extended headers (global and per entry: path,
// linkpath, size, uid, gid, times with fractions, SCHILY.xattr.* and LIBARCHIVE.xattr.*,
// SCHILY.devmajor/devminor), GNU long names (L/K), GNU base-256 numbers, GNU volume labels (V,
// skipped), and sparse files in every form GNU tar writes them (old GNU 'S' headers, pax 0.0, 0.1
// and 1.0).
//
// Everything in an archive is untrusted: a bad header checksum, a number that does not parse, a
// size past what a header may hold, a truncated header or data, or an archive that ends without
// its end-of-archive block is a THIN_IMAGE_INVALID error naming the entry and the byte offset of
// its header. Paths are byte strings (see tree.ts).
import { ThinError } from '../errors.ts';
import { IMAGE_TAR_HEADER_BYTES_MAX, IMAGE_SPARSE_SEGMENTS_MAX, IMAGE_TRAILER_BYTES_MAX } from '../constants.ts';
import { SourceReadError, type ByteInput, type ChunkSource, type Truncated } from './byte-input.ts';
import { aclTextToXattr } from './acl.ts';
import { displayPath, type EntryAttributes } from './tree.ts';

export const TAR_BLOCK_BYTES = 512;
/** Extended headers up to this size are read as a view of the input (no allocation); ByteInput's scratch is larger. */
const TAR_SMALL_BODY_BYTES = 32 * 1024;

/** The stream's first header is not a tar header: the stream is not a tar archive at all. */
export class NotTarError extends ThinError {
  constructor(message: string) {
    super('THIN_IMAGE_INVALID', message);
  }
}

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarEntry extends EntryAttributes {
  type: TarEntryType;
  path: string;
  linkPath: string;
  deviceMajor: number;
  deviceMinor: number;
  xattrs: Map<string, Uint8Array>;
  /** The file's size (for a sparse file, with its holes). */
  sizeBytes: number;
  /** Data bytes stored in the archive for this entry (after a pax 1.0 sparse map). */
  storedBytes: number;
  /** Sparse files: [offset, length] pairs of the stored data, in order. */
  sparseMap: number[] | undefined;
  /** Byte offset of the entry's first header (pax and long-name headers included). */
  offsetBytes: number;
}

/** Where readData puts an entry's bytes; a promise only when it must wait. */
export interface DataSink {
  write(offsetBytes: number, piece: Uint8Array): void | Promise<void>;
}

/** Records of pax headers: values are byte strings (xattr values become bytes). */
interface PaxValues {
  records: Map<string, string>;
  xattrs: Map<string, Uint8Array>;
  sparseOffsets: number[];
  sparseLengths: number[];
}

// Buffer's latin1 maps every byte to the same code point (TextDecoder's 'latin1' is windows-1252);
// called on the Uint8Array itself, it makes no Buffer object per field.
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice(this: Uint8Array, begin: number, end: number): string }).latin1Slice;

/** Bytes [begin, end) of `bytes` as a byte string. */
function latin1(bytes: Uint8Array, begin = 0, end = bytes.length): string {
  return latin1Slice.call(bytes, begin, end);
}

/** The NUL-terminated field [begin, end) as a byte string. */
function cString(bytes: Uint8Array, begin = 0, end = bytes.length): string {
  let stop = begin;
  while (stop < end && bytes[stop] !== 0) stop++;
  return latin1(bytes, begin, stop);
}

export class TarReader {
  readonly #input: ByteInput;
  /** Names the stream in messages: "layer 2 (sha256:…)"; empty for the source itself. */
  readonly #stream: string;
  readonly #globals: PaxValues = emptyPax();
  /** Data of the current entry not yet consumed, and the padding after it. */
  #dataLeft = 0;
  #paddingLeft = 0;
  #current: TarEntry | undefined;
  #ended = false;
  readonly #fields: HeaderFields;

  constructor(input: ByteInput, stream = '') {
    this.#input = input;
    this.#stream = stream;
    this.#fields = new HeaderFields(this.#globals, (offsetBytes, path, problem) => this.#error(offsetBytes, path, problem));
  }

  get offsetBytes(): number {
    return this.#input.offsetBytes;
  }

  #error(offsetBytes: number, path: string | undefined, problem: string): ThinError {
    const stream = this.#stream === '' ? '' : `${this.#stream} `;
    const entry = path === undefined ? `the tar header at byte ${offsetBytes}` : `entry '${displayPath(path)}' at byte ${offsetBytes}`;
    return new ThinError('THIN_IMAGE_INVALID', `Invalid image: ${stream}${entry}: ${problem}`);
  }

  #truncated(offsetBytes: number, path: string | undefined, what: string): Truncated {
    return (got) => this.#error(offsetBytes, path, `the archive ends inside ${what}${got === undefined ? '' : ` (${got} bytes read)`}: truncated`);
  }

  /**
   * For skipping the rest of an entry (`dataLeft` bytes of data, then padding): says where the
   * input ended, inside the data or inside the padding after it.
   */
  #truncatedInRest(entry: TarEntry, dataLeft: number): Truncated {
    const beginBytes = this.#input.offsetBytes;
    return (got) => {
      if (got === undefined) return this.#error(entry.offsetBytes, entry.path, `the archive ends inside its data or the padding after it (skipped unread from byte ${beginBytes}): truncated`);
      const where = got < dataLeft ? `inside its data (${entry.storedBytes - dataLeft + got} of ${entry.storedBytes} bytes)` : 'inside the padding after its data';
      return this.#error(entry.offsetBytes, entry.path, `the archive ends at byte ${beginBytes + got}, ${where}: truncated`);
    };
  }

  #headerTruncated(headerOffset: number): (got: number) => Error {
    if (headerOffset !== 0) return this.#truncated(headerOffset, undefined, 'a header');
    return (got) => new NotTarError(this.#error(0, undefined, `not a tar archive (it ends after ${got} bytes)`).message);
  }

  /** A source's failure while reading `entry` says so; other errors pass as they are. */
  #located(error: unknown, entry: TarEntry): unknown {
    if (!(error instanceof SourceReadError)) return error;
    const stream = this.#stream === '' ? '' : `${this.#stream} `;
    return error.inside(`${stream}entry '${displayPath(entry.path)}' (its header at byte ${entry.offsetBytes})`);
  }

  #badNumber(header: Uint8Array, begin: number, end: number, offsetBytes: number, path: string | undefined, what: string): never {
    throw this.#error(offsetBytes, path, `${what}: ${numberProblem(header, begin, end)}`);
  }

  /** The next entry, or undefined after the end-of-archive blocks. Skips what is left of the previous one. */
  async next(): Promise<TarEntry | undefined> {
    if (this.#ended) return undefined;
    const previous = this.#current;
    const finishing = this.#finishCurrent();
    // A promise only while an entry was current: its rest is being skipped.
    if (finishing !== undefined) {
      await finishing.catch((error: unknown) => {
        throw this.#located(error, previous!);
      });
    }
    let entryOffset = this.#input.offsetBytes;
    let pax: PaxValues | undefined;
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const headerOffset = this.#input.offsetBytes;
      // The error callbacks are made only when needed: closures per header were much of the
      // garbage a tar of many small files made.
      const header = this.#input.readNow(TAR_BLOCK_BYTES) ?? (await this.#input.read(TAR_BLOCK_BYTES, this.#headerTruncated(headerOffset)));
      if (header === undefined) {
        throw this.#error(headerOffset, undefined, 'the archive ends without its end-of-archive block: truncated?');
      }
      if (isZeroBlock(header)) {
        if (pax !== undefined || longName !== undefined || longLink !== undefined) {
          throw this.#error(entryOffset, longName, 'an extended header is followed by the end of the archive');
        }
        this.#ended = true;
        return undefined;
      }
      if (!checksumMatches(header)) {
        throw headerOffset === 0
          ? new NotTarError(this.#error(headerOffset, undefined, 'not a tar archive (bad header checksum)').message)
          : this.#error(headerOffset, undefined, 'bad header checksum (corrupt or not a tar archive)');
      }
      const typeFlag = header[156] === 0 ? '0' : String.fromCharCode(header[156]!);
      const path = longName ?? ustarPath(header);
      const storedBytes = parseNumber(header, 124, 136) ?? this.#badNumber(header, 124, 136, headerOffset, path, 'size');
      if (typeFlag === 'x' || typeFlag === 'g' || typeFlag === 'L' || typeFlag === 'K') {
        if (storedBytes > IMAGE_TAR_HEADER_BYTES_MAX) {
          throw this.#error(headerOffset, path, `an extended header of ${storedBytes} bytes (at most ${IMAGE_TAR_HEADER_BYTES_MAX} accepted)`);
        }
        const body = await this.#readPadded(storedBytes, headerOffset, path, 'an extended header');
        if (typeFlag === 'x') pax = parsePax(body, pax ?? emptyPax(), (problem) => this.#error(headerOffset, path, problem));
        else if (typeFlag === 'g') parsePax(body, this.#globals, (problem) => this.#error(headerOffset, path, problem));
        else if (typeFlag === 'L') longName = cString(body);
        else longLink = cString(body);
        continue;
      }
      if (typeFlag === 'V' && pax === undefined && longName === undefined && longLink === undefined) {
        // A GNU volume label (`tar -V LABEL`, GNU format) names the archive, not a file: tar -x skips it.
        const left = storedBytes + padding(storedBytes);
        if (!this.#input.skipNow(left)) await this.#input.skip(left, this.#truncated(headerOffset, path, 'a volume label'));
        entryOffset = this.#input.offsetBytes;
        continue;
      }
      const entry = this.#buildEntry(header, typeFlag, entryOffset, pax, longName, longLink, storedBytes);
      if (typeFlag === 'S') await this.#readOldGnuSparse(header, entry);
      if (pax?.records.get('GNU.sparse.major') === '1') await this.#readSparseMapInData(entry);
      this.#dataLeft = entry.storedBytes;
      this.#paddingLeft = padding(entry.storedBytes);
      this.#current = entry;
      return entry;
    }
  }

  /**
   * Passes the current entry's data to `sink.write` with each piece's offset in the file. Returns
   * a promise only when it must wait (for input, or for the sink): most entries of an image are
   * small files whose data is in the chunk at hand.
   */
  readData(entry: TarEntry, sink: DataSink): void | Promise<void> {
    if (this.#current !== entry) throw new Error('TarReader.readData: not the current entry');
    if (entry.sparseMap === undefined) {
      const whole = this.#input.readNow(entry.storedBytes);
      if (whole !== undefined) {
        this.#dataLeft -= entry.storedBytes;
        const pending = entry.storedBytes === 0 ? undefined : sink.write(0, whole);
        if (pending !== undefined) return pending.then(() => this.#finishCurrent());
        return this.#finishCurrent();
      }
    }
    return this.#readDataSlowly(entry, sink);
  }

  async #readDataSlowly(entry: TarEntry, sink: DataSink): Promise<void> {
    try {
      await this.#readDataSlowlyHere(entry, sink);
    } catch (error) {
      throw this.#located(error, entry);
    }
  }

  async #readDataSlowlyHere(entry: TarEntry, sink: DataSink): Promise<void> {
    const map = entry.sparseMap ?? [0, entry.storedBytes];
    let stored = 0;
    for (let index = 0; index < map.length; index += 2) {
      const segmentOffset = map[index]!;
      const segmentBytes = map[index + 1]!;
      const whole = this.#input.readNow(segmentBytes);
      if (whole !== undefined) {
        const pending = sink.write(segmentOffset, whole);
        if (pending !== undefined) await pending;
        stored += segmentBytes;
        continue;
      }
      let done = 0;
      await this.#input.forward(segmentBytes, (piece) => {
        const at = segmentOffset + done;
        done += piece.length;
        return sink.write(at, piece);
      }, this.#truncated(entry.offsetBytes, entry.path, 'its data'));
      stored += segmentBytes;
    }
    this.#dataLeft -= stored;
    const finishing = this.#finishCurrent();
    if (finishing !== undefined) await finishing;
  }

  /** After the end-of-archive blocks: reads up to `max` more bytes, returns how many (0 at the end). */
  async readTrailer(max: number): Promise<number> {
    if (!this.#ended) throw new Error('TarReader.readTrailer before the end of the archive');
    const piece = await this.#input.readSome(Math.min(max, 1024 * 1024));
    return piece?.length ?? 0;
  }

  /**
   * The current entry's data as a chunk source (for an archive inside the archive: a layer). What
   * the consumer leaves unread is skipped by the next call to next().
   */
  dataChunks(entry: TarEntry): ChunkSource {
    if (this.#current !== entry) throw new Error('TarReader.dataChunks: not the current entry');
    const truncated = this.#truncated(entry.offsetBytes, entry.path, 'its data');
    return {
      next: async () => {
        if (this.#current !== entry || this.#dataLeft === 0) return undefined;
        let piece: Uint8Array | undefined;
        try {
          piece = await this.#input.readSome(Math.min(this.#dataLeft, 1024 * 1024));
        } catch (error) {
          throw this.#located(error, entry);
        }
        if (piece === undefined) throw truncated(entry.storedBytes - this.#dataLeft);
        this.#dataLeft -= piece.length;
        return piece;
      },
    };
  }

  /** Skips what is left of the current entry; a promise only when that means waiting for input. */
  #finishCurrent(): void | Promise<void> {
    const entry = this.#current;
    if (entry === undefined) return undefined;
    this.#current = undefined;
    const dataLeft = this.#dataLeft;
    const left = dataLeft + this.#paddingLeft;
    this.#dataLeft = 0;
    this.#paddingLeft = 0;
    if (left === 0 || this.#input.skipNow(left)) return undefined;
    return this.#input.skip(left, this.#truncatedInRest(entry, dataLeft));
  }

  async #readPadded(count: number, headerOffset: number, path: string | undefined, what: string): Promise<Uint8Array> {
    const padded = count + padding(count);
    if (padded <= TAR_SMALL_BODY_BYTES) {
      // A view valid until the next read: the caller decodes it at once.
      const view = this.#input.readNow(padded) ?? (await this.#input.read(padded, this.#truncated(headerOffset, path, what)));
      if (view === undefined) throw this.#truncated(headerOffset, path, what)(0);
      return view.subarray(0, count);
    }
    const body = new Uint8Array(count);
    let got = 0;
    await this.#input.forward(count, (piece) => {
      body.set(piece, got);
      got += piece.length;
    }, this.#truncated(headerOffset, path, what));
    await this.#input.skip(padding(count), this.#truncated(headerOffset, path, what));
    return body;
  }

  #buildEntry(
    header: Uint8Array,
    typeFlag: string,
    entryOffset: number,
    pax: PaxValues | undefined,
    longName: string | undefined,
    longLink: string | undefined,
    storedBytes: number,
  ): TarEntry {
    const globals = this.#globals;
    let xattrs = pax?.xattrs ?? EMPTY_XATTRS;
    if (globals.xattrs.size > 0) xattrs = new Map([...globals.xattrs, ...xattrs]);
    const fields = this.#fields;
    fields.header = header;
    fields.pax = pax;
    fields.entryOffset = entryOffset;
    fields.path = fields.record('GNU.sparse.name') ?? fields.record('path') ?? longName ?? ustarPath(header);
    const path = fields.path;
    const linkPath = fields.record('linkpath') ?? longLink ?? cString(header, 157, 257);
    let type = entryType(typeFlag);
    if (type === undefined) throw fields.fail(`unsupported tar entry type '${typeFlag}'`);
    // Old tars (V7, early BSD) had no directory type: a regular entry whose name ends in '/' is a
    // directory, as GNU tar reads it (extract.c: "BSD tar uses the convention that a slash suffix
    // means a directory").
    if (type === 'file' && typeFlag !== 'S' && path.charCodeAt(path.length - 1) === 0x2f) type = 'dir';
    const isDevice = type === 'char' || type === 'block';
    const entry: TarEntry = {
      type,
      path,
      linkPath,
      permissions: fields.number(100, 108, 'mode') & 0o7777,
      uid: fields.paxNumber('uid') ?? fields.number(108, 116, 'uid'),
      gid: fields.paxNumber('gid') ?? fields.number(116, 124, 'gid'),
      mtimeSeconds: 0,
      mtimeNanoseconds: 0,
      deviceMajor: fields.paxNumber('SCHILY.devmajor') ?? (isDevice ? fields.number(329, 337, 'devmajor') : 0),
      deviceMinor: fields.paxNumber('SCHILY.devminor') ?? (isDevice ? fields.number(337, 345, 'devminor') : 0),
      xattrs,
      sizeBytes: 0,
      storedBytes: fields.paxNumber('size') ?? storedBytes,
      sparseMap: undefined,
      offsetBytes: entryOffset,
    };
    if (fields.paxTime('mtime')) {
      entry.mtimeSeconds = fields.seconds;
      entry.mtimeNanoseconds = fields.nanoseconds;
    } else {
      entry.mtimeSeconds = fields.time(136, 148, 'mtime');
    }
    if (fields.paxTime('atime')) {
      entry.atimeSeconds = fields.seconds;
      entry.atimeNanoseconds = fields.nanoseconds;
    }
    if (fields.paxTime('ctime')) {
      entry.ctimeSeconds = fields.seconds;
      entry.ctimeNanoseconds = fields.nanoseconds;
    }
    const fail = (problem: string): ThinError => fields.fail(problem);
    for (const [key, name] of ACL_RECORDS) {
      const text = fields.record(key);
      if (text === undefined) continue;
      const value = aclTextToXattr(text);
      if (typeof value === 'string') throw fail(`its ${key}: ${value}`);
      // An access ACL of only the owner, group and other entries is the mode bits: the kernel
      // keeps no attribute for it (tar -x's acl_set_file stores none either).
      if (name === 'system.posix_acl_access' && value.length === 4 + 3 * 8) continue;
      if (entry.xattrs === EMPTY_XATTRS || entry.xattrs === pax?.xattrs) entry.xattrs = new Map(entry.xattrs);
      entry.xattrs.set(name, value);
    }
    // Hard links, symlinks, directories and devices carry no data that belongs to the file.
    entry.sizeBytes = type === 'file' ? entry.storedBytes : 0;
    if (pax !== undefined && pax.sparseOffsets.length > 0) {
      // pax 0.0: GNU.sparse.offset / numbytes records in pairs.
      if (pax.sparseOffsets.length !== pax.sparseLengths.length) throw fail('pax sparse offsets and sizes do not pair up');
      entry.sparseMap = pax.sparseOffsets.flatMap((offset, index) => [offset, pax.sparseLengths[index]!]);
    }
    const map = fields.record('GNU.sparse.map');
    if (map !== undefined) entry.sparseMap = parseSparseList(map, fail);
    const realSize = fields.paxNumber('GNU.sparse.realsize') ?? fields.paxNumber('GNU.sparse.size');
    if (realSize !== undefined) entry.sizeBytes = realSize;
    if (entry.sparseMap !== undefined) validateSparseMap(entry, fail);
    return entry;
  }

  /** Old GNU sparse: four map entries in the header, more in extension blocks. */
  async #readOldGnuSparse(header: Uint8Array, entry: TarEntry): Promise<void> {
    const fail = (problem: string): ThinError => this.#error(entry.offsetBytes, entry.path, problem);
    const map: number[] = [];
    const field = (block: Uint8Array, begin: number, end: number, what: string): number => {
      const value = parseNumber(block, begin, end);
      if (value === undefined) throw fail(`${what}: ${numberProblem(block, begin, end)}`);
      return value;
    };
    const readEntries = (block: Uint8Array, begin: number, count: number): void => {
      for (let index = 0; index < count; index++) {
        const at = begin + index * 24;
        if (block[at] === 0) return;
        map.push(field(block, at, at + 12, 'sparse offset'));
        map.push(field(block, at + 12, at + 24, 'sparse size'));
      }
    };
    readEntries(header, 386, 4);
    let extended = header[482] !== 0;
    entry.sizeBytes = field(header, 483, 495, 'sparse real size');
    while (extended) {
      if (map.length / 2 > IMAGE_SPARSE_SEGMENTS_MAX) throw fail(`more than ${IMAGE_SPARSE_SEGMENTS_MAX} sparse segments`);
      const block = await this.#input.read(TAR_BLOCK_BYTES, this.#truncated(entry.offsetBytes, entry.path, 'a sparse header'));
      if (block === undefined) throw this.#truncated(entry.offsetBytes, entry.path, 'a sparse header')(0);
      readEntries(block, 0, 21);
      extended = block[504] !== 0;
    }
    entry.sparseMap = map;
    validateSparseMap(entry, fail);
  }

  /** pax 1.0 sparse: the map is decimal lines at the start of the data, padded to a block. */
  async #readSparseMapInData(entry: TarEntry): Promise<void> {
    const fail = (problem: string): ThinError => this.#error(entry.offsetBytes, entry.path, problem);
    const truncated = this.#truncated(entry.offsetBytes, entry.path, 'its sparse map');
    let text = '';
    let consumed = 0;
    const numbers: number[] = [];
    let expected: number | undefined;
    while (expected === undefined || numbers.length < 1 + expected * 2) {
      if (consumed >= entry.storedBytes) throw fail('the sparse map runs past the entry');
      const block = await this.#input.read(TAR_BLOCK_BYTES, truncated);
      if (block === undefined) throw truncated(0);
      consumed += TAR_BLOCK_BYTES;
      text += latin1(block);
      const lines = text.split('\n');
      text = lines.pop()!;
      for (const line of lines) {
        if (!/^\d{1,16}$/.test(line)) throw fail(`sparse map line '${line.slice(0, 20)}' is not a number`);
        numbers.push(Number(line));
        if (numbers.length === 1) {
          expected = numbers[0]!;
          if (expected > IMAGE_SPARSE_SEGMENTS_MAX) throw fail(`more than ${IMAGE_SPARSE_SEGMENTS_MAX} sparse segments`);
        }
        if (expected !== undefined && numbers.length === 1 + expected * 2) break;
      }
    }
    entry.sparseMap = numbers.slice(1);
    entry.storedBytes -= consumed;
    validateSparseMap(entry, fail);
  }
}

const EMPTY_XATTRS: Map<string, Uint8Array> = new Map();
/** GNU tar --acls: text ACLs in pax records, stored as the attributes the kernel reads. */
const ACL_RECORDS: ReadonlyArray<[string, string]> = [
  ['SCHILY.acl.access', 'system.posix_acl_access'],
  ['SCHILY.acl.default', 'system.posix_acl_default'],
];

function emptyPax(): PaxValues {
  return { records: new Map(), xattrs: new Map(), sparseOffsets: [], sparseLengths: [] };
}

function padding(bytes: number): number {
  return (TAR_BLOCK_BYTES - (bytes % TAR_BLOCK_BYTES)) % TAR_BLOCK_BYTES;
}

function isZeroBlock(block: Uint8Array): boolean {
  for (let index = 0; index < block.length; index++) if (block[index] !== 0) return false;
  return true;
}

/** The header's checksum field holds its sum (unsigned, or the signed sum of old tars); a 512-byte header. */
export function checksumMatches(header: Uint8Array): boolean {
  const stored = parseNumber(header, 148, 156);
  if (stored === undefined) return false;
  const unsigned = headerByteSum(header);
  if (stored === unsigned) return true;
  // Old tars summed signed chars: each byte >= 128 counts 256 less.
  let high = 0;
  for (let index = 0; index < TAR_BLOCK_BYTES; index++) if (index < 148 || index >= 156) high += header[index]! >> 7;
  return stored === unsigned - 256 * high;
}

/** Sum of the header's bytes with the checksum field counted as spaces. */
function headerByteSum(header: Uint8Array): number {
  let sum = 8 * 0x20;
  if (header.byteOffset % 4 === 0) {
    // Four bytes at a time, in two 16-bit lanes (128 words of at most 2 x 255 per lane cannot overflow).
    const words = new Uint32Array(header.buffer, header.byteOffset, TAR_BLOCK_BYTES / 4);
    let lanes = 0;
    for (let index = 0; index < 37; index++) {
      const word = words[index]!;
      lanes += (word & 0x00ff00ff) + ((word >>> 8) & 0x00ff00ff);
    }
    for (let index = 39; index < 128; index++) {
      const word = words[index]!;
      lanes += (word & 0x00ff00ff) + ((word >>> 8) & 0x00ff00ff);
    }
    return sum + (lanes & 0xffff) + (lanes >>> 16);
  }
  for (let index = 0; index < TAR_BLOCK_BYTES; index++) if (index < 148 || index >= 156) sum += header[index]!;
  return sum;
}

/** ustar name with its prefix (when the magic says POSIX ustar: "ustar\0"; GNU's "ustar " has no prefix field). */
function ustarPath(header: Uint8Array): string {
  const name = cString(header, 0, 100);
  const posix = header[257] === 0x75 && header[258] === 0x73 && header[259] === 0x74 && header[260] === 0x61 && header[261] === 0x72 && header[262] === 0;
  if (posix && header[345] !== 0) return `${cString(header, 345, 500)}/${name}`;
  return name;
}

function entryType(flag: string): TarEntryType | undefined {
  switch (flag) {
    case '0':
    case '7':
    case 'S':
      return 'file';
    case '1':
      return 'hardlink';
    case '2':
      return 'symlink';
    case '3':
      return 'char';
    case '4':
      return 'block';
    case '5':
    case 'D':
      return 'dir';
    case '6':
      return 'fifo';
    default:
      return undefined;
  }
}

/**
 * The octal field [begin, end) (NUL or space terminated), or a GNU base-256 one; undefined when it
 * is not a number (numberProblem says why).
 */
export function parseNumber(bytes: Uint8Array, begin: number, end: number): number | undefined {
  if ((bytes[begin]! & 0x80) !== 0) {
    if (bytes[begin] === 0xff) return undefined;
    let value = bytes[begin]! & 0x7f;
    for (let index = begin + 1; index < end; index++) {
      value = value * 256 + bytes[index]!;
      if (value > Number.MAX_SAFE_INTEGER) return undefined;
    }
    return value;
  }
  let value = 0;
  let index = begin;
  while (index < end && bytes[index] === 0x20) index++;
  for (; index < end; index++) {
    const byte = bytes[index]!;
    if (byte === 0 || byte === 0x20) break;
    if (byte < 0x30 || byte > 0x37) return undefined;
    value = value * 8 + (byte - 0x30);
  }
  for (; index < end; index++) {
    if (bytes[index] !== 0 && bytes[index] !== 0x20) return undefined;
  }
  return value;
}

/**
 * A time field [begin, end): as parseNumber, and also GNU tar's negative base-256 form (a first
 * byte of 0xff, then the rest of the field's two's complement, big-endian), in which GNU tar
 * writes times before 1970 that octal cannot hold.
 */
export function parseTime(bytes: Uint8Array, begin: number, end: number): number | undefined {
  if (bytes[begin] !== 0xff) return parseNumber(bytes, begin, end);
  let value = -1;
  for (let index = begin + 1; index < end; index++) {
    value = value * 256 + bytes[index]!;
    if (value < Number.MIN_SAFE_INTEGER) return undefined;
  }
  return value;
}

/** Why parseNumber refused the field [begin, end). */
export function numberProblem(bytes: Uint8Array, begin: number, end: number): string {
  if (bytes[begin] === 0xff) return 'a negative base-256 number';
  if ((bytes[begin]! & 0x80) !== 0) return 'a base-256 number too large';
  return `'${latin1(bytes, begin, end).replace(/\0/g, '')}' is not an octal number`;
}

/** "seconds[.fraction]", possibly negative: [seconds, nanoseconds], or undefined when it is not a time. */
function parsePaxTime(text: string): [number, number] | undefined {
  let index = 0;
  const negative = text.charCodeAt(0) === 0x2d;
  if (negative) index++;
  let whole = 0;
  const wholeBegin = index;
  for (; index < text.length && index - wholeBegin < 16; index++) {
    const code = text.charCodeAt(index) - 0x30;
    if (code < 0 || code > 9) break;
    whole = whole * 10 + code;
  }
  if (index === wholeBegin) return undefined;
  let nanoseconds = 0;
  if (index < text.length) {
    if (text.charCodeAt(index) !== 0x2e) return undefined;
    index++;
    let digits = 0;
    for (; index < text.length; index++) {
      const code = text.charCodeAt(index) - 0x30;
      if (code < 0 || code > 9 || digits > 20) return undefined;
      if (digits < 9) nanoseconds = nanoseconds * 10 + code;
      digits++;
    }
    for (; digits < 9; digits++) nanoseconds *= 10;
  }
  if (!negative) return [whole, nanoseconds];
  return nanoseconds === 0 ? [-whole, 0] : [-whole - 1, 1_000_000_000 - nanoseconds];
}

/**
 * Reads one header's fields, pax records first; one per reader, reused for every entry (no
 * closures made per entry).
 */
class HeaderFields {
  header: Uint8Array = new Uint8Array(TAR_BLOCK_BYTES);
  pax: PaxValues | undefined;
  entryOffset = 0;
  path = '';
  /** Set by paxTime. */
  seconds = 0;
  nanoseconds = 0;
  readonly #globals: PaxValues;
  readonly #error: (offsetBytes: number, path: string, problem: string) => ThinError;

  constructor(globals: PaxValues, error: (offsetBytes: number, path: string, problem: string) => ThinError) {
    this.#globals = globals;
    this.#error = error;
  }

  fail(problem: string): ThinError {
    return this.#error(this.entryOffset, this.path, problem);
  }

  record(key: string): string | undefined {
    return this.pax?.records.get(key) ?? this.#globals.records.get(key);
  }

  number(begin: number, end: number, what: string): number {
    const value = parseNumber(this.header, begin, end);
    if (value === undefined) throw this.fail(`${what}: ${numberProblem(this.header, begin, end)}`);
    return value;
  }

  /** A header's time field, which may be before 1970 (GNU tar's negative base-256). */
  time(begin: number, end: number, what: string): number {
    const value = parseTime(this.header, begin, end);
    if (value === undefined) throw this.fail(`${what}: ${numberProblem(this.header, begin, end)}`);
    return value;
  }

  paxNumber(key: string): number | undefined {
    const text = this.record(key);
    if (text === undefined) return undefined;
    if (!/^\d{1,16}$/.test(text)) throw this.fail(`pax ${key} '${text}' is not a number`);
    return Number(text);
  }

  /** True when the pax record `key` holds a time (then in seconds/nanoseconds). */
  paxTime(key: string): boolean {
    const text = this.record(key);
    if (text === undefined) return false;
    const time = parsePaxTime(text);
    if (time === undefined) throw this.fail(`pax ${key} '${text}' is not a time`);
    [this.seconds, this.nanoseconds] = time;
    return true;
  }
}

/** pax records: "LENGTH KEY=VALUE\n", LENGTH counting the whole record; values are raw bytes (kept as byte strings). */
function parsePax(body: Uint8Array, into: PaxValues, fail: (problem: string) => ThinError): PaxValues {
  const text = latin1(body);
  let offset = 0;
  while (offset < text.length) {
    if (text.charCodeAt(offset) === 0) break;
    const space = text.indexOf(' ', offset);
    if (space < 0 || space - offset > 20) throw fail('a malformed pax record (no length)');
    const lengthText = text.slice(offset, space);
    if (!/^\d+$/.test(lengthText)) throw fail(`a malformed pax record length '${lengthText}'`);
    const length = Number(lengthText);
    const end = offset + length;
    if (length < space - offset + 3 || end > text.length || text.charCodeAt(end - 1) !== 0x0a) throw fail('a malformed pax record (its length does not match)');
    const equals = text.indexOf('=', space + 1);
    if (equals < 0 || equals >= end) throw fail('a malformed pax record (no =)');
    // Keys and values are byte strings: a path or attribute name that is not UTF-8 survives. A value
    // is decoded on its own rather than sliced from the header's text: a slice would keep the
    // whole header alive for as long as the path's names live in the tree.
    const key = text.slice(space + 1, equals);
    const value = latin1(body, equals + 1, end - 1);
    if (key.startsWith('SCHILY.xattr.')) {
      into.xattrs.set(key.slice('SCHILY.xattr.'.length), Buffer.from(value, 'latin1'));
    } else if (key.startsWith('LIBARCHIVE.xattr.')) {
      into.xattrs.set(percentDecode(key.slice('LIBARCHIVE.xattr.'.length)), Buffer.from(value, 'base64'));
    } else if (key === 'GNU.sparse.offset' || key === 'GNU.sparse.numbytes') {
      if (!/^\d{1,16}$/.test(value)) throw fail(`pax ${key} '${value}' is not a number`);
      (key === 'GNU.sparse.offset' ? into.sparseOffsets : into.sparseLengths).push(Number(value));
    } else {
      into.records.set(key, value);
    }
    offset = end;
  }
  return into;
}

/** libarchive's attribute names: %XX escapes for bytes, as a byte string. */
function percentDecode(text: string): string {
  return text.replace(/%([0-9A-Fa-f]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

function parseSparseList(text: string, fail: (problem: string) => ThinError): number[] {
  if (text === '') return [];
  const parts = text.split(',');
  if (parts.length % 2 !== 0 || parts.length / 2 > IMAGE_SPARSE_SEGMENTS_MAX) throw fail('a malformed GNU.sparse.map');
  return parts.map((part) => {
    if (!/^\d{1,16}$/.test(part)) throw fail('a malformed GNU.sparse.map');
    return Number(part);
  });
}

/** Segments in order, not overlapping, inside the file, adding up to the stored data. */
function validateSparseMap(entry: TarEntry, fail: (problem: string) => ThinError): void {
  const map = entry.sparseMap!;
  let end = 0;
  let total = 0;
  for (let index = 0; index < map.length; index += 2) {
    const offset = map[index]!;
    const length = map[index + 1]!;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < end) throw fail('sparse segments overlap or are out of order');
    end = offset + length;
    total += length;
  }
  if (end > entry.sizeBytes) throw fail(`a sparse segment ends at ${end}, past the file's size ${entry.sizeBytes}`);
  if (total !== entry.storedBytes) throw fail(`the sparse map holds ${total} bytes and the entry stores ${entry.storedBytes}`);
}

/**
 * Reads what follows the end-of-archive blocks (tar pads to 10 KiB records), so that the digest is
 * the source file's and a producer on a pipe is not cut off; at most IMAGE_TRAILER_BYTES_MAX.
 */
export async function drainTrailer(reader: TarReader): Promise<void> {
  let left = IMAGE_TRAILER_BYTES_MAX;
  for (let piece = await reader.readTrailer(left); piece > 0 && left > 0; piece = await reader.readTrailer(left)) left -= piece;
}
