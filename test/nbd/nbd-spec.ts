// The NBD protocol's numbers, written down from the protocol specification (the NetworkBlockDevice
// project's doc/proto.md) for the fuzzer's checker (fuzz-check.ts). Deliberately not imported
// from src/nbd/protocol.ts: a checker that took its constants from the code under test would
// agree with any mistake in them.

// Handshake (newstyle negotiation).
export const SPEC_NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const SPEC_IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const SPEC_OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const SPEC_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const SPEC_FLAG_NO_ZEROES = 1 << 1;
/** The reply to NBD_OPT_EXPORT_NAME: size (8), transmission flags (2), then 124 zero bytes unless NO_ZEROES. */
export const SPEC_EXPORT_NAME_REPLY_BYTES = 10;
export const SPEC_EXPORT_NAME_ZEROES_BYTES = 124;

export const SPEC_OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

export const SPEC_REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
} as const;
/** Option reply types with this bit set are errors. */
export const SPEC_REP_FLAG_ERROR = 2 ** 31;
export const SPEC_REP_ERR = {
  UNSUP: SPEC_REP_FLAG_ERROR + 1,
  POLICY: SPEC_REP_FLAG_ERROR + 2,
  INVALID: SPEC_REP_FLAG_ERROR + 3,
  PLATFORM: SPEC_REP_FLAG_ERROR + 4,
  TLS_REQD: SPEC_REP_FLAG_ERROR + 5,
  UNKNOWN: SPEC_REP_FLAG_ERROR + 6,
  SHUTDOWN: SPEC_REP_FLAG_ERROR + 7,
  BLOCK_SIZE_REQD: SPEC_REP_FLAG_ERROR + 8,
  TOO_BIG: SPEC_REP_FLAG_ERROR + 9,
  EXT_HEADER_REQD: SPEC_REP_FLAG_ERROR + 10,
} as const;

export const SPEC_INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;
/** Payload bytes of NBD_INFO_EXPORT (type, size, flags) and NBD_INFO_BLOCK_SIZE (type, min, preferred, max). */
export const SPEC_INFO_EXPORT_BYTES = 12;
export const SPEC_INFO_BLOCK_SIZE_BYTES = 14;

// Transmission flags (16 bits, in the export's size/flags answer).
export const SPEC_TFLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  BLOCK_STAT_PAYLOAD: 1 << 12,
} as const;

// Transmission.
export const SPEC_REQUEST_MAGIC = 0x25609513;
export const SPEC_SIMPLE_REPLY_MAGIC = 0x67446698;
export const SPEC_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const SPEC_REQUEST_BYTES = 28;
export const SPEC_SIMPLE_REPLY_BYTES = 16;
export const SPEC_STRUCTURED_REPLY_HEADER_BYTES = 20;

export const SPEC_CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

export const SPEC_CMD_FLAG = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
  PAYLOAD_LEN: 1 << 5,
} as const;

export const SPEC_REPLY_FLAG_DONE = 1 << 0;
export const SPEC_REPLY_TYPE = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 2 ** 15 + 1,
  ERROR_OFFSET: 2 ** 15 + 2,
} as const;

/** Error values (the spec's list; a server maps anything else to EINVAL). */
export const SPEC_ERR = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export const SPEC_ERRORS: ReadonlySet<number> = new Set(Object.values(SPEC_ERR));

/** The base:allocation meta context and its status bits. */
export const SPEC_BASE_ALLOCATION = 'base:allocation';
export const SPEC_STATE_HOLE = 1 << 0;
export const SPEC_STATE_ZERO = 1 << 1;

/** Without a negotiated maximum, clients keep READ/WRITE payloads to 32 MiB (spec "Block size constraints"). */
export const SPEC_PAYLOAD_BYTES_DEFAULT_MAX = 32 * 1024 * 1024;
/** Block size constraints: the minimum is a power of two of at most 64 KiB; the preferred at least 512. */
export const SPEC_BLOCK_SIZE_MIN_MAX = 64 * 1024;
export const SPEC_BLOCK_SIZE_PREFERRED_MIN = 512;
