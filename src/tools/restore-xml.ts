// Reads thin_dump XML — from thin_dump of a kernel pool (0.9.0 or 1.x), or from `thinbd dump` —
// and produces the dump/restore event stream (dump/events.ts) for a visitor: restore's pool
// builder, or a writer (XML in, JSON out).
//
// The input is untrusted. Unlike thin_restore 0.9.0, which is no validator (it takes duplicate
// mappings, last one winning, and leaks a data block), this reader refuses anything
// that could not have come from a consistent pool, and names the line and the reason:
// ThinError THIN_INVALID "restore: line 12: …". It refuses invalid XML, unknown elements,
// elements in the wrong place, missing or malformed attributes, text between elements, a mapping
// past nr_data_blocks, a duplicate dev_id, a mapping that duplicates or overlaps another of the
// same device, and input that ends before </superblock>. Unknown attributes are ignored, as
// 0.9.0 ignores them.
//
// It streams: the parser (saxes) is fed one chunk at a time and the events of a chunk are
// delivered before the next chunk is read, so memory stays flat however large the dump. What it
// keeps per device is the set of virtual block ranges seen so far (to catch overlaps in any
// order), coalesced, so a device written in long runs costs a few numbers.
//
// thin-provisioning-tools 1.x `<def name>` sections (mapping runs shared by several devices) are
// held in memory and expanded wherever a device says `<ref name/>` (thin-provisioning-tools 1.x
// `dump.rs`), so a 1.x dump
// restores too; 0.9.0 rejects them.
//
// A `thinbd:bad-range` comment directly in <superblock> (dump/xml.ts) is a bad data range: it must
// lie inside one data block below nr_data_blocks, have known flags with a read or write error
// among them, and come after the one before it without overlapping it.
//
// Most of a dump is mapping lines in the one form thin_dump and `thinbd dump` write them, and the
// parser's work on each character was most of a restore's time. So between two elements of a
// device (the parser has just ended a tag or comment, and nothing is pending), such lines are
// matched whole in the input's bytes (MappingLineForm), their numbers read from the digits without
// making strings, and go through the same checks as the parser's elements; anything else, a line
// in any other form included, goes to the parser. Lines read that way are counted, so messages
// still name the right line. A line cut by the end of a chunk waits for the next one.
//
// The mappings of a device go to the visitor in batches of typed arrays (MappingBatch) when it
// takes them (restore's builder), else one call each: an object per mapping of a scattered dump
// was much of the rest.
import { SaxesParser, type SaxesTag } from 'saxes';
import {
  RESTORE_INPUT_CHUNK_BYTES,
  RESTORE_SHARED_RUNS_MAX,
  VOLUME_SIZE_BYTES_MAX,
} from '../constants.ts';
import { ThinError } from '../errors.ts';
import { badRangeProblem, dispatch, isPending, type DeviceBegin, type DumpEvent, type DumpVisitor, type Mapping, type VisitResult, type VolumeExtras } from './dump/events.ts';
import { BAD_RANGE_COMMENT_KEYWORD, VOLUME_COMMENT_KEYWORD } from './dump/xml.ts';
import { doubled } from '../util/typed-array.ts';

const U32_MAX = 0xffff_ffff;

/**
 * A mapping element as thin_dump writes it: fixed text around each attribute's digits (well-formed
 * XML by construction). `texts` has one more entry than `attributes`.
 */
interface MappingLineForm {
  tag: 'single_mapping' | 'range_mapping';
  texts: LineText[];
  attributes: readonly string[];
}

/** Fixed text of a mapping line, also as little-endian 32-bit words (compared four bytes at a time). */
interface LineText {
  bytes: Uint8Array;
  words: Int32Array;
}

function lineText(text: string): LineText {
  const bytes = Buffer.from(text, 'latin1');
  const words = new Int32Array(bytes.length >>> 2);
  for (let index = 0; index < words.length; index++) words[index] = bytes.readInt32LE(4 * index);
  return { bytes, words };
}

function mappingLineForm(tag: MappingLineForm['tag'], attributes: readonly string[]): MappingLineForm {
  const texts = attributes.map((name, index) => lineText(`${index === 0 ? `<${tag} ` : '" '}${name}="`));
  texts.push(lineText('"/>'));
  return { tag, texts, attributes };
}

const SINGLE_MAPPING_LINE = mappingLineForm('single_mapping', ['origin_block', 'data_block', 'time']);
const RANGE_MAPPING_LINE = mappingLineForm('range_mapping', ['origin_begin', 'data_begin', 'length', 'time']);
/** More digits than this in a mapping line's attribute: left to the parser (whose checks name the value). */
const LINE_DIGITS_MAX = 16;
/** matchLine's answers besides the offset after the line. */
const LINE_MISMATCH = -1;
const LINE_CUT = -2;

const NEWLINE = 10;
const SPACE = 32;
const TAB = 9;
const CARRIAGE_RETURN = 13;
const LESS_THAN = 60;
const GREATER_THAN = 62;
const QUOTE = 34;
const DIGIT_0 = 48;
const DIGIT_9 = 57;
const LETTER_R = 114;

/**
 * Mappings of the open device, in typed arrays: what the reader hands a visitor that has a
 * `mappings` method instead of one `mapping` call each. Valid during the call only.
 */
export interface MappingBatch {
  originBegins: Float64Array<ArrayBuffer>;
  dataBegins: Float64Array<ArrayBuffer>;
  lengths: Float64Array<ArrayBuffer>;
  times: Float64Array<ArrayBuffer>;
  count: number;
}

/** A visitor that takes a device's mappings in batches (restore's pool builder). */
export interface BatchDumpVisitor extends DumpVisitor {
  mappings(batch: MappingBatch): VisitResult;
}

type ReaderEvent = DumpEvent | { kind: 'mappings'; batch: MappingBatch };

const BATCH_CAPACITY_MIN = 256;
/** The shortest mapping line, `<single_mapping origin_block="0" data_block="0" time="0"/>` and a newline. */
const MAPPING_LINE_BYTES_MIN = 58;

function newBatch(capacity: number): MappingBatch {
  return {
    originBegins: new Float64Array(capacity),
    dataBegins: new Float64Array(capacity),
    lengths: new Float64Array(capacity),
    times: new Float64Array(capacity),
    count: 0,
  };
}

function pushMapping(batch: MappingBatch, originBegin: number, dataBegin: number, length: number, time: number): void {
  if (batch.count === batch.originBegins.length) {
    batch.originBegins = doubled(batch.originBegins);
    batch.dataBegins = doubled(batch.dataBegins);
    batch.lengths = doubled(batch.lengths);
    batch.times = doubled(batch.times);
  }
  const index = batch.count;
  batch.originBegins[index] = originBegin;
  batch.dataBegins[index] = dataBegin;
  batch.lengths[index] = length;
  batch.times[index] = time;
  batch.count = index + 1;
}

export interface XmlReadSummary {
  deviceCount: number;
  /** Mapping events delivered (after `<ref>` expansion; ranges, not blocks). */
  mappingCount: number;
  mappedBlockCount: number;
  /** Bad data ranges read (thinbd:bad-range comments). */
  badRangeCount: number;
  /** Line count of the input, as the parser counted it. */
  lineCount: number;
}

/** Reads a whole XML input (a file stream, or any iterable of chunks) into `visitor`. */
export async function readThinXml(
  input: AsyncIterable<string | Uint8Array> | Iterable<string | Uint8Array>,
  visitor: DumpVisitor,
): Promise<XmlReadSummary> {
  const reader = new ThinXmlReader();
  for await (const chunk of input) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    // A chunk may be large (a whole document in a test); feed it in bounded pieces.
    for (let offset = 0; offset < bytes.length; offset += RESTORE_INPUT_CHUNK_BYTES) {
      await deliver(reader.feed(bytes.subarray(offset, offset + RESTORE_INPUT_CHUNK_BYTES)), visitor);
    }
  }
  await deliver(reader.end(), visitor);
  return reader.summary();
}

/** Reads an XML document held in a string (tests, small inputs). */
export function readThinXmlString(text: string, visitor: DumpVisitor): Promise<XmlReadSummary> {
  return readThinXml([text], visitor);
}

async function deliver(events: ReaderEvent[], visitor: DumpVisitor): Promise<void> {
  for (const event of events) {
    if (event.kind !== 'mappings') {
      const result = dispatch(event, visitor);
      if (isPending(result)) await result;
    } else if ('mappings' in visitor && typeof visitor.mappings === 'function') {
      const result = (visitor as BatchDumpVisitor).mappings(event.batch);
      if (isPending(result)) await result;
    } else {
      const { originBegins, dataBegins, lengths, times, count } = event.batch;
      for (let index = 0; index < count; index++) {
        const result = visitor.mapping({ originBegin: originBegins[index]!, dataBegin: dataBegins[index]!, length: lengths[index]!, time: times[index]! });
        if (isPending(result)) await result;
      }
    }
  }
}

type Place = 'document' | 'superblock' | 'device' | 'def' | 'mapping' | 'done';

/**
 * Block ranges of one device seen so far, to catch a mapping that overlaps an earlier one in any
 * order. Those that come in ascending order (all of them, in a dump) are appended to `#ascending`;
 * the others, each below the end of those (they never reach past it), go to `#others`.
 */
class DeviceRanges {
  readonly #ascending = new AscendingRanges();
  #others: RangeSet | undefined;

  /** Adds [begin, end); returns an overlapping range already present instead, if there is one. */
  add(begin: number, end: number): { begin: number; end: number } | undefined {
    if (begin >= this.#ascending.end) {
      this.#ascending.append(begin, end);
      return undefined;
    }
    const overlap = this.#ascending.overlapping(begin, end);
    if (overlap !== undefined) return overlap;
    this.#others ??= new RangeSet();
    return this.#others.add(begin, end);
  }
}

/**
 * Ranges appended in ascending order, neighbours joined, in segments of fixed size: appending
 * never copies what is held (a scattered device has a range per mapping, millions of them, and
 * doubling arrays of them was a good part of a restore's time). In 32 bits while every block
 * number fits (volumes below 2^32 blocks: 256 TiB of 64 KiB blocks), else in doubles.
 */
class AscendingRanges {
  /** [begin, end) pairs, SEGMENT_RANGES to a segment. */
  #segments: Array<Uint32Array<ArrayBuffer> | Float64Array<ArrayBuffer>> = [];
  #wide = false;
  #count = 0;
  #end = 0;

  /** The end of the last range (0 when empty). */
  get end(): number {
    return this.#end;
  }

  append(begin: number, end: number): void {
    if (end > U32_MAX && !this.#wide) {
      this.#wide = true;
      this.#segments = this.#segments.map((segment) => Float64Array.from(segment));
    }
    const count = this.#count;
    if (count > 0 && begin === this.#end) {
      const last = count - 1;
      this.#segments[last >>> SEGMENT_BITS]![2 * (last & SEGMENT_MASK) + 1] = end;
    } else {
      if ((count & SEGMENT_MASK) === 0) this.#segments.push(this.#wide ? new Float64Array(2 * SEGMENT_RANGES) : new Uint32Array(2 * SEGMENT_RANGES));
      this.#segments[count >>> SEGMENT_BITS]![2 * (count & SEGMENT_MASK)] = begin;
      this.#segments[count >>> SEGMENT_BITS]![2 * (count & SEGMENT_MASK) + 1] = end;
      this.#count = count + 1;
    }
    this.#end = end;
  }

  /** A range that overlaps [begin, end), if one does. */
  overlapping(begin: number, end: number): { begin: number; end: number } | undefined {
    // The last range starting at or before `begin` (high), or -1; then the one after it.
    let low = 0;
    let high = this.#count - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      if (this.#begin(middle) <= begin) low = middle + 1;
      else high = middle - 1;
    }
    if (high >= 0 && this.#endOf(high) > begin) return { begin: this.#begin(high), end: this.#endOf(high) };
    if (high + 1 < this.#count && this.#begin(high + 1) < end) return { begin: this.#begin(high + 1), end: this.#endOf(high + 1) };
    return undefined;
  }

  #begin(index: number): number {
    return this.#segments[index >>> SEGMENT_BITS]![2 * (index & SEGMENT_MASK)]!;
  }

  #endOf(index: number): number {
    return this.#segments[index >>> SEGMENT_BITS]![2 * (index & SEGMENT_MASK) + 1]!;
  }
}

const SEGMENT_BITS = 14;
const SEGMENT_RANGES = 2 ** SEGMENT_BITS;
const SEGMENT_MASK = SEGMENT_RANGES - 1;

/**
 * Block ranges, coalesced and sorted: begins[i] < ends[i] < begins[i+1]. In typed arrays: there
 * may be many.
 */
class RangeSet {
  #begins = new Float64Array(1024);
  #ends = new Float64Array(1024);
  #count = 0;

  /** Adds [begin, end); returns an overlapping range already present instead, if there is one. */
  add(begin: number, end: number): { begin: number; end: number } | undefined {
    const count = this.#count;
    const begins = this.#begins;
    const ends = this.#ends;
    // The common case: mappings in origin order.
    if (count === 0 || begin >= ends[count - 1]!) {
      if (count > 0 && begin === ends[count - 1]) ends[count - 1] = end;
      else this.#insert(count, begin, end);
      return undefined;
    }
    // Index of the last range starting at or before `begin`, or -1.
    let low = 0;
    let high = count - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      if (begins[middle]! <= begin) low = middle + 1;
      else high = middle - 1;
    }
    const before = high;
    if (before >= 0 && ends[before]! > begin) return { begin: begins[before]!, end: ends[before]! };
    const after = before + 1;
    if (after < count && begins[after]! < end) return { begin: begins[after]!, end: ends[after]! };
    const joinsBefore = before >= 0 && ends[before] === begin;
    const joinsAfter = after < count && begins[after] === end;
    if (joinsBefore && joinsAfter) {
      ends[before] = ends[after]!;
      begins.copyWithin(after, after + 1, count);
      ends.copyWithin(after, after + 1, count);
      this.#count -= 1;
    } else if (joinsBefore) {
      ends[before] = end;
    } else if (joinsAfter) {
      begins[after] = begin;
    } else {
      this.#insert(after, begin, end);
    }
    return undefined;
  }

  #insert(index: number, begin: number, end: number): void {
    if (this.#count === this.#begins.length) {
      this.#begins = doubled(this.#begins);
      this.#ends = doubled(this.#ends);
    }
    if (index < this.#count) {
      this.#begins.copyWithin(index + 1, index, this.#count);
      this.#ends.copyWithin(index + 1, index, this.#count);
    }
    this.#begins[index] = begin;
    this.#ends[index] = end;
    this.#count += 1;
  }
}

/** The parser and its checks; feed() returns the events each chunk completes. */
class ThinXmlReader {
  readonly #parser = new SaxesParser({ position: true });
  readonly #decoder = new TextDecoder('utf-8', { fatal: true });
  /** The start of a mapping line that the end of the last chunk cut: read with the next chunk. */
  #carry: Uint8Array | undefined;
  /** The batch that mappings go to (the last event, while it is one). */
  #batch: MappingBatch | undefined;
  /** Numbers of the line matchLine read last. */
  readonly #lineValues = new Float64Array(4);
  readonly #lineDigitEnds = new Float64Array(4);
  #events: ReaderEvent[] = [];
  /**
   * Batches made so far, reused: the events of one feed() are delivered before the next feed(),
   * and a batch is the visitor's only during its call (a new one per chunk was most of the garbage).
   */
  readonly #batches: MappingBatch[] = [];
  #batchesUsed = 0;
  /** Mappings a new batch starts with room for: about as many as the chunk being read has lines. */
  #batchCapacity = BATCH_CAPACITY_MIN;
  #place: Place = 'document';
  /** Element that `#place === 'mapping'` sits in, to return to on its close tag. */
  #mappingParent: 'device' | 'def' = 'device';
  #nrDataBlocks = 0;
  #dataBlockSizeSectors = 0;
  /** One past the last sector of the bad range read last (they come in order). */
  #badRangesEnd = 0;
  #badRangeCount = 0;
  readonly #devIds = new Set<number>();
  #device: DeviceBegin | undefined;
  /** deviceBegin is held back until the device's first mapping, so the volume comment can join it. */
  #deviceDelivered = false;
  #deviceRanges = new DeviceRanges();
  readonly #defs = new Map<string, Mapping[]>();
  #def: { name: string; mappings: Mapping[] } | undefined;
  #sharedRunCount = 0;
  #deviceCount = 0;
  #mappingCount = 0;
  #mappedBlockCount = 0;
  #lineCount = 0;
  /** Lines of mapping elements read without the parser (its line count lacks them). */
  #linesMatched = 0;
  /** The parser has just ended a tag or a comment: nothing of the input is pending in it. */
  #betweenElements = false;

  constructor() {
    const parser = this.#parser;
    parser.on('opentag', (tag) => {
      this.#betweenElements = true;
      this.#openTag(tag);
    });
    parser.on('closetag', (tag) => {
      this.#betweenElements = true;
      this.#closeTag(tag.name);
    });
    parser.on('text', (text) => {
      if (text.trim() !== '') this.#fail(`unexpected text ${JSON.stringify(abbreviate(text.trim()))} in ${this.#where()}`);
    });
    parser.on('cdata', () => this.#fail(`unexpected CDATA section in ${this.#where()}`));
    parser.on('comment', (text) => {
      this.#betweenElements = true;
      this.#comment(text);
    });
  }

  get line(): number {
    return this.#parser.line + this.#linesMatched;
  }

  feed(chunk: Uint8Array): ReaderEvent[] {
    this.#batchCapacity = Math.max(BATCH_CAPACITY_MIN, Math.ceil(chunk.length / MAPPING_LINE_BYTES_MIN));
    this.#batchesUsed = 0;
    let rest = chunk;
    const carry = this.#carry;
    if (carry !== undefined) {
      // The cut line ends at the chunk's first '>' (if it is a mapping line at all): read the two
      // parts joined, then the rest of the chunk as it is.
      this.#carry = undefined;
      const close = chunk.indexOf(GREATER_THAN);
      const headEnd = close < 0 ? chunk.length : close + 1;
      this.#feedBytes(Buffer.concat([carry, chunk.subarray(0, headEnd)]));
      rest = chunk.subarray(headEnd);
    }
    this.#feedBytes(rest);
    return this.#take();
  }

  #feedBytes(bytes: Uint8Array): void {
    let offset = 0;
    while (offset < bytes.length) {
      if (this.#betweenElements && (this.#place === 'device' || this.#place === 'def')) {
        offset = this.#matchMappingLines(bytes, offset);
        if (offset >= bytes.length || this.#carry !== undefined) break;
      }
      // Up to the next '>': the parser ends at most one tag or comment there, or none when the
      // '>' lies inside an attribute value or a comment (then it is not between elements).
      const close = bytes.indexOf(GREATER_THAN, offset);
      const end = close < 0 ? bytes.length : close + 1;
      this.#betweenElements = false;
      this.#write(bytes.subarray(offset, end), false);
      offset = end;
    }
  }

  /** Gives bytes to the parser (a '>' ends them, or the chunk: the decoder keeps a cut character). */
  #write(bytes: Uint8Array, last: boolean): void {
    let text: string;
    try {
      text = this.#decoder.decode(bytes, { stream: !last });
    } catch (error) {
      throw new ThinError('THIN_INVALID', `restore: line ${this.line}: invalid XML: the input is not UTF-8`, { cause: error });
    }
    try {
      this.#parser.write(text);
    } catch (error) {
      throw this.#translate(error);
    }
  }

  /**
   * Reads the mapping lines in thin_dump's form from offset on, and the whitespace between them;
   * returns where the first other text starts, or the end (then #carry may hold a cut line).
   */
  #matchMappingLines(bytes: Uint8Array, offset: number): number {
    const length = bytes.length;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (;;) {
      let at = offset;
      for (; at < length; at++) {
        const byte = bytes[at]!;
        if (byte === NEWLINE) this.#linesMatched += 1;
        else if (byte !== SPACE && byte !== TAB && byte !== CARRIAGE_RETURN) break;
      }
      if (at === length) return length;
      if (bytes[at] !== LESS_THAN) return at;
      if (at + 1 === length) {
        this.#carry = bytes.slice(at);
        return at;
      }
      const form = bytes[at + 1] === LETTER_R ? RANGE_MAPPING_LINE : SINGLE_MAPPING_LINE;
      const end = this.#matchLine(bytes, view, at, form);
      if (end === LINE_MISMATCH) return at;
      if (end === LINE_CUT) {
        this.#carry = bytes.slice(at);
        return at;
      }
      const values = this.#lineValues;
      const tag = form.tag;
      for (let index = 0; index < form.attributes.length; index++) {
        const max = index === form.attributes.length - 1 ? U32_MAX : Number.MAX_SAFE_INTEGER; // time is the last
        const value = values[index]!;
        if (!Number.isSafeInteger(value) || value > max) {
          const digitsEnd = this.#lineDigitEnds[index]!;
          let digitsBegin = digitsEnd;
          while (digitsBegin > at && bytes[digitsBegin - 1]! >= DIGIT_0 && bytes[digitsBegin - 1]! <= DIGIT_9) digitsBegin -= 1;
          const text = Buffer.from(bytes.buffer, bytes.byteOffset + digitsBegin, digitsEnd - digitsBegin).toString('latin1');
          this.#fail(`<${tag}> attribute ${form.attributes[index]}="${abbreviate(text)}" is larger than ${max}`);
        }
      }
      if (tag === 'single_mapping') this.#checkedMapping(tag, values[0]!, values[1]!, 1, values[2]!);
      else this.#checkedMapping(tag, values[0]!, values[1]!, values[2]!, values[3]!);
      offset = end;
    }
  }

  /** Matches `form` at bytes[at] ('<'): the offset after it (its numbers in #lineValues), LINE_MISMATCH or LINE_CUT. */
  #matchLine(bytes: Uint8Array, view: DataView, at: number, form: MappingLineForm): number {
    const length = bytes.length;
    const texts = form.texts;
    let offset = at;
    for (let part = 0; part < texts.length; part++) {
      const text = texts[part]!;
      const textBytes = text.bytes;
      if (offset + textBytes.length <= length) {
        const words = text.words;
        for (let index = 0; index < words.length; index++) if (view.getInt32(offset + 4 * index, true) !== words[index]) return LINE_MISMATCH;
        for (let index = 4 * words.length; index < textBytes.length; index++) if (bytes[offset + index] !== textBytes[index]) return LINE_MISMATCH;
        offset += textBytes.length;
      } else {
        for (let index = 0; index < textBytes.length; index++, offset++) {
          if (offset === length) return LINE_CUT;
          if (bytes[offset] !== textBytes[index]) return LINE_MISMATCH;
        }
      }
      if (part === texts.length - 1) break;
      let value = 0;
      const digitsBegin = offset;
      for (; offset < length; offset++) {
        const byte = bytes[offset]!;
        if (byte < DIGIT_0 || byte > DIGIT_9) break;
        value = value * 10 + (byte - DIGIT_0);
      }
      if (offset === length) return LINE_CUT;
      const digits = offset - digitsBegin;
      if (digits === 0 || digits > LINE_DIGITS_MAX || bytes[offset] !== QUOTE) return LINE_MISMATCH;
      this.#lineValues[part] = value;
      this.#lineDigitEnds[part] = offset;
    }
    return offset;
  }

  end(): ReaderEvent[] {
    // A line cut by the end of the input: the parser says what is wrong with it.
    const carry = this.#carry;
    this.#carry = undefined;
    this.#betweenElements = false;
    this.#write(carry ?? new Uint8Array(0), true);
    if (this.#place === 'document') this.#fail('the input holds no <superblock> element: not thin_dump XML (empty or truncated?)');
    if (this.#place !== 'done') {
      this.#fail(`the input ends inside ${this.#where()}, before </superblock>: the file is truncated`);
    }
    this.#lineCount = this.line;
    try {
      this.#parser.close();
    } catch (error) {
      throw this.#translate(error);
    }
    return this.#take();
  }

  summary(): XmlReadSummary {
    return {
      deviceCount: this.#deviceCount,
      mappingCount: this.#mappingCount,
      mappedBlockCount: this.#mappedBlockCount,
      badRangeCount: this.#badRangeCount,
      lineCount: this.#lineCount,
    };
  }

  #take(): ReaderEvent[] {
    const events = this.#events;
    this.#events = [];
    this.#batch = undefined;
    return events;
  }

  #translate(error: unknown): unknown {
    if (error instanceof ThinError) return error;
    const message = error instanceof Error ? error.message : String(error);
    const match = /^(\d+):(\d+): (.*)$/s.exec(message);
    const line = match?.[1] === undefined ? this.line : Number(match[1]) + this.#linesMatched;
    const reason = match?.[3] ?? message;
    return new ThinError('THIN_INVALID', `restore: line ${line}: invalid XML: ${reason}`, { cause: error });
  }

  #fail(reason: string): never {
    throw new ThinError('THIN_INVALID', `restore: line ${this.line}: ${reason}`);
  }

  #where(): string {
    switch (this.#place) {
      case 'document':
        return 'the document';
      case 'superblock':
        return '<superblock>';
      case 'device':
        return `<device dev_id="${this.#device?.devId}">`;
      case 'def':
        return `<def name="${this.#def?.name}">`;
      case 'mapping':
        return 'a mapping element';
      case 'done':
        return 'the end of the document';
    }
  }

  #openTag(tag: SaxesTag): void {
    const name = tag.name;
    const attributes = tag.attributes as Record<string, string>;
    const place = this.#place;
    switch (name) {
      case 'superblock':
        if (place !== 'document') this.#fail(`<superblock> inside ${this.#where()}`);
        this.#superblock(attributes);
        this.#place = 'superblock';
        return;
      case 'device':
        if (place !== 'superblock') this.#fail(`<device> inside ${this.#where()}; devices belong directly in <superblock>`);
        this.#deviceBegin(attributes);
        this.#place = 'device';
        return;
      case 'def':
        if (place !== 'superblock') this.#fail(`<def> inside ${this.#where()}; shared mapping sections belong directly in <superblock>`);
        this.#defBegin(attributes);
        this.#place = 'def';
        return;
      case 'single_mapping':
      case 'range_mapping':
        if (place !== 'device' && place !== 'def') this.#fail(`<${name}> inside ${this.#where()}; mappings belong in a <device>`);
        this.#mapping(name, attributes);
        this.#mappingParent = place;
        this.#place = 'mapping';
        return;
      case 'ref':
        if (place !== 'device') this.#fail(`<ref> inside ${this.#where()}; references belong in a <device>`);
        this.#ref(attributes);
        this.#mappingParent = 'device';
        this.#place = 'mapping';
        return;
      default:
        this.#fail(`unknown element <${name}> in ${this.#where()}`);
    }
  }

  #closeTag(name: string): void {
    switch (name) {
      case 'superblock':
        this.#events.push({ kind: 'superblockEnd' });
        this.#place = 'done';
        return;
      case 'device':
        this.#deliverDevice();
        this.#events.push({ kind: 'deviceEnd' });
        this.#device = undefined;
        this.#place = 'superblock';
        return;
      case 'def': {
        const def = this.#def;
        if (def !== undefined) this.#defs.set(def.name, def.mappings);
        this.#def = undefined;
        this.#place = 'superblock';
        return;
      }
      default:
        // A mapping or ref element (saxes has checked that tags nest).
        this.#place = this.#mappingParent;
    }
  }

  #comment(text: string): void {
    const body = text.trim();
    if (body.startsWith(`${BAD_RANGE_COMMENT_KEYWORD} `)) {
      this.#badRange(body.slice(BAD_RANGE_COMMENT_KEYWORD.length + 1));
      return;
    }
    if (!body.startsWith(`${VOLUME_COMMENT_KEYWORD} `)) return; // other comments are ignored, as thin_restore does
    if (this.#place !== 'device' || this.#device === undefined) this.#fail(`a ${VOLUME_COMMENT_KEYWORD} comment outside a <device>`);
    if (this.#deviceDelivered) this.#fail(`the ${VOLUME_COMMENT_KEYWORD} comment must come before the device's mappings`);
    if (this.#device.volume !== undefined) this.#fail(`a second ${VOLUME_COMMENT_KEYWORD} comment in one device`);
    this.#device.volume = this.#volumeExtras(body.slice(VOLUME_COMMENT_KEYWORD.length + 1));
  }

  #badRange(json: string): void {
    const keyword = BAD_RANGE_COMMENT_KEYWORD;
    if (this.#place !== 'superblock') this.#fail(`a ${keyword} comment inside ${this.#where()}; bad ranges belong directly in <superblock>`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(json);
    } catch {
      this.#fail(`the ${keyword} comment does not hold a JSON object`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) this.#fail(`the ${keyword} comment does not hold a JSON object`);
    const record = parsed as Record<string, unknown>;
    const whole = (field: string, min: number): number => {
      const value = record[field];
      if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) this.#fail(`${keyword} field "${field}" is not a whole number from ${min}`);
      return value;
    };
    const beginSector = whole('beginSector', 0);
    const lengthSectors = whole('lengthSectors', 1);
    const flags = whole('flags', 1);
    const range = { beginSector, lengthSectors, flags };
    const problem = badRangeProblem(range, this.#dataBlockSizeSectors, this.#nrDataBlocks, this.#badRangesEnd);
    if (problem !== undefined) this.#fail(`${keyword} of sectors [${beginSector}, ${beginSector + lengthSectors}): ${problem}`);
    this.#badRangesEnd = beginSector + lengthSectors;
    this.#badRangeCount += 1;
    this.#events.push({ kind: 'badRange', beginSector, lengthSectors, flags });
  }

  #volumeExtras(json: string): VolumeExtras {
    let parsed: unknown;
    try {
      parsed = JSON.parse(json);
    } catch {
      this.#fail(`the ${VOLUME_COMMENT_KEYWORD} comment does not hold a JSON object`);
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      this.#fail(`the ${VOLUME_COMMENT_KEYWORD} comment does not hold a JSON object`);
    }
    const record = parsed as Record<string, unknown>;
    const bad = (field: string, expected: string): never => this.#fail(`${VOLUME_COMMENT_KEYWORD} field "${field}" is not ${expected}`);
    const name = record['name'];
    if (typeof name !== 'string' || name === '') bad('name', 'a non-empty string');
    const extras: VolumeExtras = { name: name as string };
    const sizeBytes = record['sizeBytes'];
    if (sizeBytes !== undefined) {
      if (typeof sizeBytes !== 'number' || !Number.isSafeInteger(sizeBytes) || sizeBytes < 1 || sizeBytes > VOLUME_SIZE_BYTES_MAX) {
        bad('sizeBytes', `a whole number of bytes from 1 to ${VOLUME_SIZE_BYTES_MAX}`);
      }
      extras.sizeBytes = sizeBytes as number;
    }
    const origin = record['origin'];
    if (origin !== undefined) {
      if (typeof origin !== 'string') bad('origin', 'a string');
      extras.origin = origin as string;
    }
    const readOnly = record['readOnly'];
    if (readOnly !== undefined) {
      if (typeof readOnly !== 'boolean') bad('readOnly', 'true or false');
      extras.readOnly = readOnly as boolean;
    }
    const labels = record['labels'];
    if (labels !== undefined) {
      if (typeof labels !== 'object' || labels === null || Array.isArray(labels) || Object.values(labels).some((v) => typeof v !== 'string')) {
        bad('labels', 'an object of strings');
      }
      extras.labels = { ...(labels as Record<string, string>) };
    }
    const createdAt = record['createdAt'];
    if (createdAt !== undefined) {
      if (typeof createdAt !== 'string' || Number.isNaN(Date.parse(createdAt))) bad('createdAt', 'a date');
      extras.createdAt = createdAt as string;
    }
    return extras;
  }

  // ---- attributes ----

  #number(tag: string, attributes: Record<string, string>, name: string, max: number, optional?: number): number {
    const text = attributes[name];
    if (text === undefined) {
      if (optional !== undefined) return optional;
      this.#fail(`<${tag}> lacks the required attribute ${name}`);
    }
    if (!/^\d+$/.test(text)) this.#fail(`<${tag}> attribute ${name}="${abbreviate(text)}" is not a whole number`);
    return this.#digits(tag, name, text, max);
  }

  /** An attribute's value known to be decimal digits, at most max. */
  #digits(tag: string, name: string, text: string, max: number): number {
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value > max) this.#fail(`<${tag}> attribute ${name}="${abbreviate(text)}" is larger than ${max}`);
    return value;
  }

  #superblock(attributes: Record<string, string>): void {
    const tag = 'superblock';
    const uuid = attributes['uuid'];
    if (uuid === undefined) this.#fail('<superblock> lacks the required attribute uuid');
    const dataBlockSizeSectors = this.#number(tag, attributes, 'data_block_size', U32_MAX);
    if (dataBlockSizeSectors < 1) this.#fail('<superblock> attribute data_block_size="0": a data block holds at least one sector');
    const metadataSnapText = attributes['metadata_snap'];
    this.#nrDataBlocks = this.#number(tag, attributes, 'nr_data_blocks', Number.MAX_SAFE_INTEGER);
    this.#dataBlockSizeSectors = dataBlockSizeSectors;
    this.#events.push({
      kind: 'superblockBegin',
      uuid,
      time: this.#number(tag, attributes, 'time', U32_MAX),
      transaction: this.#number(tag, attributes, 'transaction', Number.MAX_SAFE_INTEGER),
      flags: this.#number(tag, attributes, 'flags', U32_MAX, 0),
      version: this.#number(tag, attributes, 'version', U32_MAX, 1),
      dataBlockSizeSectors,
      nrDataBlocks: this.#nrDataBlocks,
      ...(metadataSnapText === undefined ? {} : { metadataSnap: this.#number(tag, attributes, 'metadata_snap', Number.MAX_SAFE_INTEGER) }),
    });
  }

  #deviceBegin(attributes: Record<string, string>): void {
    const tag = 'device';
    const devId = this.#number(tag, attributes, 'dev_id', U32_MAX);
    if (this.#devIds.has(devId)) this.#fail(`duplicate device: dev_id="${devId}" appears twice`);
    this.#devIds.add(devId);
    this.#device = {
      devId,
      mappedBlocks: this.#number(tag, attributes, 'mapped_blocks', Number.MAX_SAFE_INTEGER),
      transaction: this.#number(tag, attributes, 'transaction', Number.MAX_SAFE_INTEGER),
      creationTime: this.#number(tag, attributes, 'creation_time', U32_MAX),
      snapTime: this.#number(tag, attributes, 'snap_time', U32_MAX),
    };
    this.#deviceDelivered = false;
    this.#deviceRanges = new DeviceRanges();
    this.#deviceCount += 1;
  }

  #deliverDevice(): void {
    if (this.#deviceDelivered || this.#device === undefined) return;
    this.#events.push({ kind: 'deviceBegin', ...this.#device });
    this.#deviceDelivered = true;
  }

  #defBegin(attributes: Record<string, string>): void {
    const name = attributes['name'];
    if (name === undefined) this.#fail('<def> lacks the required attribute name');
    if (this.#defs.has(name)) this.#fail(`duplicate shared mapping section: <def name="${abbreviate(name)}"> appears twice`);
    this.#def = { name, mappings: [] };
  }

  #mapping(tag: 'single_mapping' | 'range_mapping', attributes: Record<string, string>): void {
    if (tag === 'single_mapping') {
      this.#checkedMapping(
        tag,
        this.#number(tag, attributes, 'origin_block', Number.MAX_SAFE_INTEGER),
        this.#number(tag, attributes, 'data_block', Number.MAX_SAFE_INTEGER),
        1,
        this.#number(tag, attributes, 'time', U32_MAX),
      );
    } else {
      this.#checkedMapping(
        tag,
        this.#number(tag, attributes, 'origin_begin', Number.MAX_SAFE_INTEGER),
        this.#number(tag, attributes, 'data_begin', Number.MAX_SAFE_INTEGER),
        this.#number(tag, attributes, 'length', Number.MAX_SAFE_INTEGER),
        this.#number(tag, attributes, 'time', U32_MAX),
      );
    }
  }

  /** A mapping element's values, checked and delivered (or kept for its <def>). */
  #checkedMapping(tag: 'single_mapping' | 'range_mapping', originBegin: number, dataBegin: number, length: number, time: number): void {
    if (length < 1) this.#fail('<range_mapping> attribute length="0": a range maps at least one block');
    if (!Number.isSafeInteger(originBegin + length) || !Number.isSafeInteger(dataBegin + length)) {
      this.#fail(`<${tag}> ends past the largest block number thinbd handles (2^53)`);
    }
    const dataEnd = dataBegin + length;
    if (dataEnd > this.#nrDataBlocks) {
      const what = length === 1 ? `data block ${dataBegin}` : `data blocks [${dataBegin}, ${dataEnd})`;
      this.#fail(`mapping to ${what} runs past the end of the data device (nr_data_blocks="${this.#nrDataBlocks}")`);
    }
    if (this.#place === 'def') {
      const def = this.#def;
      if (def === undefined) this.#fail('a mapping outside any section');
      this.#sharedRunCount += 1;
      if (this.#sharedRunCount > RESTORE_SHARED_RUNS_MAX) {
        this.#fail(`more than ${RESTORE_SHARED_RUNS_MAX} mapping runs in <def> sections; thinbd holds at most that many in memory`);
      }
      def.mappings.push({ originBegin, dataBegin, length, time });
      return;
    }
    this.#deviceMapping(originBegin, dataBegin, length, time);
  }

  #ref(attributes: Record<string, string>): void {
    const name = attributes['name'];
    if (name === undefined) this.#fail('<ref> lacks the required attribute name');
    const mappings = this.#defs.get(name);
    if (mappings === undefined) this.#fail(`<ref name="${abbreviate(name)}"> names no earlier <def>`);
    for (const mapping of mappings) this.#deviceMapping(mapping.originBegin, mapping.dataBegin, mapping.length, mapping.time);
  }

  #deviceMapping(originBegin: number, dataBegin: number, length: number, time: number): void {
    const device = this.#device;
    if (device === undefined) this.#fail('a mapping outside any device');
    const end = originBegin + length;
    const overlap = this.#deviceRanges.add(originBegin, end);
    if (overlap !== undefined) {
      const first = Math.max(originBegin, overlap.begin);
      const what = length === 1 ? `virtual block ${originBegin}` : `virtual blocks [${originBegin}, ${end})`;
      this.#fail(`device ${device.devId}: the mapping of ${what} duplicates or overlaps an earlier mapping of block ${first}`);
    }
    this.#deliverDevice();
    let batch = this.#batch;
    if (batch === undefined || this.#events[this.#events.length - 1]?.kind !== 'mappings') {
      batch = this.#batches[this.#batchesUsed];
      if (batch === undefined) {
        batch = newBatch(this.#batchCapacity);
        this.#batches.push(batch);
      }
      batch.count = 0;
      this.#batchesUsed += 1;
      this.#batch = batch;
      this.#events.push({ kind: 'mappings', batch });
    }
    pushMapping(batch, originBegin, dataBegin, length, time);
    this.#mappingCount += 1;
    this.#mappedBlockCount += length;
  }
}

function abbreviate(text: string): string {
  return text.length <= 40 ? text : `${text.slice(0, 37)}...`;
}
