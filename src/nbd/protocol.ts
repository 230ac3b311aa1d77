// NBD wire constants and codecs. Names and values mirror NetworkBlockDevice/nbd doc/proto.md
// exactly, so a reader can grep the spec for any name used here. All integers are big-endian.
// Extended headers and RESIZE are experimental and spoken by no Debian 12 client: not here.

// Magics (spec "Handshake", "Transmission").
export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server, 16 bit) and client flags (32 bit).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Options.
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

// Option reply types.
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_FLAG_ERROR = 2 ** 31;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

// Info types (inside NBD_REP_INFO).
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// Transmission flags (16 bit).
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Commands.
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

// Command flags.
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured replies.
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = 0x8001;
export const NBD_REPLY_TYPE_ERROR_OFFSET = 0x8002;

// base:allocation status flags.
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

// Error values (spec "Error values"): the wire numbers, not the host's errno.
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** The one metadata context thinbd serves. */
export const BASE_ALLOCATION = 'base:allocation';
/** The id thinbd gives `base:allocation` when a client selects it (any nonzero u32 would do). */
export const BASE_ALLOCATION_CONTEXT_ID = 1;

// Fixed sizes of messages.
export const GREETING_BYTES = 18;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;
export const EXPORT_NAME_REPLY_ZEROES_BYTES = 124;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
/** OFFSET_DATA payload starts with the offset (8 bytes) before the data. */
export const OFFSET_DATA_PREFIX_BYTES = 8;
export const OFFSET_HOLE_PAYLOAD_BYTES = 12;
export const BLOCK_STATUS_EXTENT_BYTES = 8;

const commandNames: Record<number, string> = {
  [NBD_CMD_READ]: 'NBD_CMD_READ',
  [NBD_CMD_WRITE]: 'NBD_CMD_WRITE',
  [NBD_CMD_DISC]: 'NBD_CMD_DISC',
  [NBD_CMD_FLUSH]: 'NBD_CMD_FLUSH',
  [NBD_CMD_TRIM]: 'NBD_CMD_TRIM',
  [NBD_CMD_CACHE]: 'NBD_CMD_CACHE',
  [NBD_CMD_WRITE_ZEROES]: 'NBD_CMD_WRITE_ZEROES',
  [NBD_CMD_BLOCK_STATUS]: 'NBD_CMD_BLOCK_STATUS',
};

/** A command's spec name, for messages. */
export function commandName(type: number): string {
  return commandNames[type] ?? `command ${type}`;
}

export function encodeGreeting(): Buffer {
  const buffer = Buffer.alloc(GREETING_BYTES);
  buffer.writeBigUInt64BE(NBDMAGIC, 0);
  buffer.writeBigUInt64BE(IHAVEOPT, 8);
  buffer.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  return buffer;
}

/** An option reply: header and data in one buffer. */
export function encodeOptionReply(option: number, replyType: number, data: Uint8Array = EMPTY): Buffer {
  const buffer = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + data.length);
  buffer.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  buffer.writeUInt32BE(option >>> 0, 8);
  buffer.writeUInt32BE(replyType >>> 0, 12);
  buffer.writeUInt32BE(data.length, 16);
  buffer.set(data, OPTION_REPLY_HEADER_BYTES);
  return buffer;
}

export function writeSimpleReplyHeader(target: Buffer, offsetBytes: number, error: number, cookie: bigint): void {
  target.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, offsetBytes);
  target.writeUInt32BE(error >>> 0, offsetBytes + 4);
  target.writeBigUInt64BE(cookie, offsetBytes + 8);
}

export function writeStructuredReplyHeader(
  target: Buffer,
  offsetBytes: number,
  flags: number,
  type: number,
  cookie: bigint,
  payloadBytes: number,
): void {
  target.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, offsetBytes);
  target.writeUInt16BE(flags, offsetBytes + 4);
  target.writeUInt16BE(type, offsetBytes + 6);
  target.writeBigUInt64BE(cookie, offsetBytes + 8);
  target.writeUInt32BE(payloadBytes, offsetBytes + 16);
}

/** A structured NBD_REPLY_TYPE_ERROR chunk (always the last: DONE is set). */
export function encodeErrorChunk(cookie: bigint, error: number, message: string, messageBytesMax: number): Buffer {
  const text = truncateUtf8(message, messageBytesMax);
  const buffer = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 6 + text.length);
  writeStructuredReplyHeader(buffer, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, 6 + text.length);
  buffer.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_BYTES);
  buffer.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_BYTES + 4);
  buffer.set(text, STRUCTURED_REPLY_HEADER_BYTES + 6);
  return buffer;
}

/** UTF-8 bytes of `text`, cut at a character boundary so they fit in `bytesMax`. */
export function truncateUtf8(text: string, bytesMax: number): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= bytesMax) return bytes;
  let end = bytesMax;
  // Back up over continuation bytes (10xxxxxx) so the cut never splits a character.
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

/** A parsed request header (spec "Request message"). */
export interface RequestHeader {
  flags: number;
  type: number;
  cookie: bigint;
  offsetBytes: number;
  lengthBytes: number;
}

/**
 * Decodes a 28-byte request header into `into`; returns false when the magic is wrong (the caller
 * must hard-disconnect). Offsets at or past 2^53 cannot be exact numbers: they decode as Infinity
 * so every range check fails them.
 */
export function decodeRequestHeader(source: Buffer, offsetBytes: number, into: RequestHeader): boolean {
  if (source.readUInt32BE(offsetBytes) !== NBD_REQUEST_MAGIC) return false;
  into.flags = source.readUInt16BE(offsetBytes + 4);
  into.type = source.readUInt16BE(offsetBytes + 6);
  into.cookie = source.readBigUInt64BE(offsetBytes + 8);
  const high = source.readUInt32BE(offsetBytes + 16);
  const low = source.readUInt32BE(offsetBytes + 20);
  into.offsetBytes = high >= 0x200000 ? Infinity : high * 2 ** 32 + low;
  into.lengthBytes = source.readUInt32BE(offsetBytes + 24);
  return true;
}

const EMPTY = new Uint8Array(0);
