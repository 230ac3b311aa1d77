// NBD requests: what a request is, the checks the spec asks for before one runs (validateRequest),
// and running it against the export through the connection's ExportBackend (executeRequest),
// replies included. The connection (connection.ts) parses, admits and answers; the backend
// (export-backend.ts) holds the fallbacks and the export contract's checks.
import { NBD_BLOCK_STATUS_ASKS_MAX, NBD_BLOCK_STATUS_EXTENTS_MAX, NBD_READ_CHUNKS_MAX } from '../constants.ts';
import { assert } from '../errors.ts';
import { errorCode, nbdErrorForCode, type NbdExtent } from './backend.ts';
import type { BufferPool } from './buffers.ts';
import type { ExportBackend } from './export-backend.ts';
import type { Negotiated } from './handshake.ts';
import {
  BASE_ALLOCATION_CONTEXT_ID,
  BLOCK_STATUS_EXTENT_BYTES,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  OFFSET_DATA_PREFIX_BYTES,
  OFFSET_HOLE_PAYLOAD_BYTES,
  SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_HEADER_BYTES,
  commandName,
  writeSimpleReplyHeader,
  writeStructuredReplyHeader,
} from './protocol.ts';
import { RequestError } from './request-error.ts';

export { RequestError };

export interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  offsetBytes: number;
  lengthBytes: number;
  /** WRITE data, from the buffer pool. */
  payload: Buffer | undefined;
  /** Bytes of the budgets this request holds until its reply is written. */
  reservedBytes: number;
  released: boolean;
  /** Answered with NBD_ESHUTDOWN, not run: it arrived after the server began to close. */
  refused: boolean;
}

/** What running a request needs from its connection. */
export interface CommandContext {
  readonly negotiated: Negotiated;
  readonly backend: ExportBackend;
  readonly buffers: BufferPool;
  /**
   * Writes one whole message; `pooled` goes back to the buffer pool and `request` is released once
   * the socket has taken the bytes (NbdConnection's send).
   */
  send(bytes: Buffer, pooled: Buffer | undefined, request: Request | undefined): void;
  /** The simple reply that says a request succeeded. */
  replyOk(request: Request): void;
}

/** One chunk of a structured READ reply. */
interface ReadPiece {
  offsetBytes: number;
  lengthBytes: number;
  hole: boolean;
}

/** Flags each command accepts (before export capabilities narrow them). */
const commandFlagsAllowed: Record<number, number> = {
  [NBD_CMD_READ]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF,
  [NBD_CMD_WRITE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_FLUSH]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_TRIM]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_CACHE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
  [NBD_CMD_BLOCK_STATUS]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
};

/**
 * Validates and runs one request and sends its reply. Throws a RequestError (or the export's
 * error) for the caller to answer with failureReply; any other throw is a bug.
 */
export async function executeRequest(request: Request, context: CommandContext): Promise<void> {
  if (request.refused) throw new RequestError(NBD_ESHUTDOWN, 'The server is shutting down.');
  validateRequest(request, context.negotiated);
  const { backend } = context;
  const fua = (request.flags & NBD_CMD_FLAG_FUA) !== 0;
  switch (request.type) {
    case NBD_CMD_READ:
      return await read(request, context);
    case NBD_CMD_WRITE:
      if (request.lengthBytes > 0) {
        assert(request.payload !== undefined, 'WRITE without payload');
        await backend.write(request.offsetBytes, request.payload.subarray(0, request.lengthBytes), fua);
      }
      return context.replyOk(request);
    case NBD_CMD_FLUSH:
      await backend.flush();
      return context.replyOk(request);
    case NBD_CMD_TRIM:
      if (request.lengthBytes > 0) await backend.trim(request.offsetBytes, request.lengthBytes, fua);
      return context.replyOk(request);
    case NBD_CMD_WRITE_ZEROES:
      if (request.lengthBytes > 0) {
        await backend.zero(request.offsetBytes, request.lengthBytes, {
          noHole: (request.flags & NBD_CMD_FLAG_NO_HOLE) !== 0,
          fua,
          fastZero: (request.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
        });
      }
      return context.replyOk(request);
    case NBD_CMD_CACHE:
      if (request.lengthBytes > 0) await backend.cache(request.offsetBytes, request.lengthBytes);
      return context.replyOk(request);
    case NBD_CMD_BLOCK_STATUS:
      return await blockStatus(request, context);
  }
  assert(false, `command ${request.type} passed validation`);
}

/** Throws a RequestError with the error the spec asks for (§ "Error values"). */
export function validateRequest(request: Request, negotiated: Negotiated): void {
  const { type, flags, offsetBytes, lengthBytes } = request;
  const name = commandName(type);
  const allowed = commandFlagsAllowed[type];
  if (allowed === undefined) throw new RequestError(NBD_EINVAL, `Command ${type} is not supported.`);
  let flagsAllowed = allowed;
  if (!negotiated.structuredReplies) flagsAllowed &= ~NBD_CMD_FLAG_DF;
  if ((negotiated.transmissionFlags & NBD_FLAG_SEND_FAST_ZERO) === 0) flagsAllowed &= ~NBD_CMD_FLAG_FAST_ZERO;
  if ((flags & ~flagsAllowed) !== 0) {
    throw new RequestError(NBD_EINVAL, `${name} does not accept flags 0x${(flags & ~flagsAllowed).toString(16)}.`);
  }
  if (type === NBD_CMD_FLUSH) {
    if (offsetBytes !== 0 || lengthBytes !== 0) throw new RequestError(NBD_EINVAL, 'NBD_CMD_FLUSH must have offset and length 0.');
    return;
  }
  const writes = type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES;
  if (writes && negotiated.export.readOnly) throw new RequestError(NBD_EPERM, `${name} on a read-only export.`);
  if (type === NBD_CMD_TRIM && (negotiated.transmissionFlags & NBD_FLAG_SEND_TRIM) === 0) {
    throw new RequestError(NBD_EINVAL, 'NBD_CMD_TRIM is not supported by this export.');
  }
  if (type === NBD_CMD_WRITE_ZEROES && (negotiated.transmissionFlags & NBD_FLAG_SEND_WRITE_ZEROES) === 0) {
    throw new RequestError(NBD_EINVAL, 'NBD_CMD_WRITE_ZEROES is not supported by this export.');
  }
  if (type === NBD_CMD_BLOCK_STATUS && !negotiated.baseAllocation) {
    throw new RequestError(NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS needs base:allocation selected with NBD_OPT_SET_META_CONTEXT.');
  }
  if (offsetBytes > negotiated.sizeBytes || lengthBytes > negotiated.sizeBytes - offsetBytes) {
    // Writes past the end are "no space"; everything else past the end is invalid (spec).
    const error = type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    throw new RequestError(error, `${name} of ${lengthBytes} bytes at ${offsetBytes} passes the end of the export (${negotiated.sizeBytes} bytes).`);
  }
  const minBytes = negotiated.blockSizeMinBytes;
  if (minBytes > 1 && (offsetBytes % minBytes !== 0 || lengthBytes % minBytes !== 0)) {
    throw new RequestError(NBD_EINVAL, `${name} of ${lengthBytes} bytes at ${offsetBytes} is not aligned to ${minBytes} bytes.`);
  }
  if ((type === NBD_CMD_READ || type === NBD_CMD_WRITE) && lengthBytes > negotiated.payloadBytesMax) {
    throw new RequestError(NBD_EINVAL, `${name} of ${lengthBytes} bytes is over the maximum payload of ${negotiated.payloadBytesMax}.`);
  }
  if (type === NBD_CMD_BLOCK_STATUS && lengthBytes === 0) {
    throw new RequestError(NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS of 0 bytes.');
  }
}

/** READ: a simple reply, or structured chunks with holes sent as holes (NBD_REPLY_TYPE_OFFSET_HOLE). */
async function read(request: Request, context: CommandContext): Promise<void> {
  const { negotiated, backend, buffers } = context;
  const { offsetBytes, lengthBytes, cookie } = request;
  if (!negotiated.structuredReplies) {
    const reply = buffers.acquire(SIMPLE_REPLY_HEADER_BYTES + lengthBytes);
    try {
      if (lengthBytes > 0) await backend.read(offsetBytes, reply.subarray(SIMPLE_REPLY_HEADER_BYTES, SIMPLE_REPLY_HEADER_BYTES + lengthBytes));
    } catch (error) {
      buffers.release(reply);
      throw error;
    }
    writeSimpleReplyHeader(reply, 0, 0, cookie);
    context.send(reply.subarray(0, SIMPLE_REPLY_HEADER_BYTES + lengthBytes), reply, request);
    return;
  }

  if (lengthBytes === 0) {
    const reply = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES);
    writeStructuredReplyHeader(reply, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0);
    context.send(reply, undefined, request);
    return;
  }

  // Read first, straight into a reply laid out as one data chunk. When the export says none of
  // the range is a hole (the usual case) that reply goes as it is. Otherwise ranges that read as
  // zeros go as OFFSET_HOLE chunks (no data on the wire) and the rest as OFFSET_DATA chunks.
  // DF asks for one data chunk. Everything is read before any of it is sent, so an error
  // becomes a lone error chunk and DONE is never sent too early.
  const dataStart = STRUCTURED_REPLY_HEADER_BYTES + OFFSET_DATA_PREFIX_BYTES;
  const whole = buffers.acquire(dataStart + lengthBytes);
  let holes: boolean | void;
  try {
    holes = await backend.read(offsetBytes, whole.subarray(dataStart, dataStart + lengthBytes));
  } catch (error) {
    buffers.release(whole);
    throw error;
  }
  const pieces = holes !== false && (request.flags & NBD_CMD_FLAG_DF) === 0 ? await readPieces(backend, offsetBytes, lengthBytes) : undefined;
  if (pieces === undefined) {
    writeStructuredReplyHeader(whole, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie, OFFSET_DATA_PREFIX_BYTES + lengthBytes);
    whole.writeBigUInt64BE(BigInt(offsetBytes), STRUCTURED_REPLY_HEADER_BYTES);
    context.send(whole.subarray(0, dataStart + lengthBytes), whole, request);
    return;
  }
  // The chunks go out as small headers between views of the data already read: no second
  // buffer, no copy. All of it is sent in this turn, so nothing can fail half way; the buffer
  // and the request are released once the socket has taken the last piece.
  for (let i = 0; i < pieces.length; i++) {
    const piece = pieces[i]!;
    const last = i === pieces.length - 1;
    if (piece.hole) {
      const chunk = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + OFFSET_HOLE_PAYLOAD_BYTES);
      writeStructuredReplyHeader(chunk, 0, last ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, OFFSET_HOLE_PAYLOAD_BYTES);
      chunk.writeBigUInt64BE(BigInt(piece.offsetBytes), STRUCTURED_REPLY_HEADER_BYTES);
      chunk.writeUInt32BE(piece.lengthBytes, STRUCTURED_REPLY_HEADER_BYTES + 8);
      context.send(chunk, last ? whole : undefined, last ? request : undefined);
    } else {
      const header = Buffer.allocUnsafe(dataStart);
      writeStructuredReplyHeader(header, 0, last ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_DATA, cookie, OFFSET_DATA_PREFIX_BYTES + piece.lengthBytes);
      header.writeBigUInt64BE(BigInt(piece.offsetBytes), STRUCTURED_REPLY_HEADER_BYTES);
      context.send(header, undefined, undefined);
      const from = dataStart + piece.offsetBytes - offsetBytes;
      context.send(whole.subarray(from, from + piece.lengthBytes), last ? whole : undefined, last ? request : undefined);
    }
  }
}

/**
 * The chunks of a structured READ reply from the export's block status: zero runs as holes,
 * the rest as data, at most NBD_READ_CHUNKS_MAX. undefined when it is one data chunk.
 */
async function readPieces(backend: ExportBackend, offsetBytes: number, lengthBytes: number): Promise<ReadPiece[] | undefined> {
  let extents: NbdExtent[] = [];
  try {
    extents = await backend.blockStatus(offsetBytes, lengthBytes);
  } catch {
    return undefined; // Block status is an optimisation here: send everything as data instead.
  }
  const pieces: ReadPiece[] = [];
  let position = offsetBytes;
  const end = offsetBytes + lengthBytes;
  for (const extent of extents) {
    if (position >= end || pieces.length >= NBD_READ_CHUNKS_MAX - 1) break;
    const pieceBytes = Math.min(extent.lengthBytes, end - position);
    const hole = extent.zero;
    const last = pieces[pieces.length - 1];
    if (last !== undefined && last.hole === hole) last.lengthBytes += pieceBytes;
    else pieces.push({ offsetBytes: position, lengthBytes: pieceBytes, hole });
    position += pieceBytes;
  }
  if (position < end) {
    const last = pieces[pieces.length - 1];
    if (last !== undefined && !last.hole) last.lengthBytes += end - position;
    else pieces.push({ offsetBytes: position, lengthBytes: end - position, hole: false });
  }
  return pieces.length === 1 && !pieces[0]!.hole ? undefined : pieces;
}

/** BLOCK_STATUS for base:allocation: the export's extents, merged and bounded, in one reply. */
async function blockStatus(request: Request, context: CommandContext): Promise<void> {
  const { backend } = context;
  const { offsetBytes, lengthBytes, cookie } = request;
  const reqOne = (request.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
  const extentsMax = reqOne ? 1 : NBD_BLOCK_STATUS_EXTENTS_MAX;
  // Pairs of (length, status), merged when neighbours have the same status.
  const lengths: number[] = [];
  const statuses: number[] = [];
  let covered = 0;
  // The export may answer a part at a time; ask again for the rest, a bounded number of times.
  for (let ask = 0; ask < NBD_BLOCK_STATUS_ASKS_MAX && covered < lengthBytes && lengths.length < extentsMax; ask++) {
    const extents = await backend.blockStatus(offsetBytes + covered, lengthBytes - covered);
    if (extents.length === 0) break;
    for (const extent of extents) {
      if (covered >= lengthBytes || lengths.length >= extentsMax) break;
      const extentBytes = Math.min(extent.lengthBytes, lengthBytes - covered);
      const status = (extent.hole ? NBD_STATE_HOLE : 0) | (extent.zero ? NBD_STATE_ZERO : 0);
      const last = lengths.length - 1;
      if (last >= 0 && statuses[last] === status) lengths[last]! += extentBytes;
      else {
        lengths.push(extentBytes);
        statuses.push(status);
      }
      covered += extentBytes;
    }
  }
  if (lengths.length === 0) {
    // Status 0 ("allocated, contents unknown") is always true.
    lengths.push(lengthBytes);
    statuses.push(0);
  }
  const payloadBytes = 4 + BLOCK_STATUS_EXTENT_BYTES * lengths.length;
  const reply = context.buffers.acquire(STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
  writeStructuredReplyHeader(reply, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, payloadBytes);
  reply.writeUInt32BE(BASE_ALLOCATION_CONTEXT_ID, STRUCTURED_REPLY_HEADER_BYTES);
  let position = STRUCTURED_REPLY_HEADER_BYTES + 4;
  for (let i = 0; i < lengths.length; i++) {
    reply.writeUInt32BE(lengths[i]!, position);
    reply.writeUInt32BE(statuses[i]!, position + 4);
    position += BLOCK_STATUS_EXTENT_BYTES;
  }
  context.send(reply.subarray(0, position), reply, request);
}

/** The NBD error and sentence a failed request is answered with; an NBD_EIO is also logged. */
export function failureReply(request: Request, error: unknown, log: (message: string) => void): { nbdError: number; message: string } {
  let nbdError: number;
  let message: string;
  if (error instanceof RequestError) {
    nbdError = error.nbdError;
    message = error.message;
  } else {
    nbdError = nbdErrorForCode(errorCode(error));
    // ENOTSUP means only "fast zero refused"; anything else claiming it is an I/O failure.
    const fastZero = request.type === NBD_CMD_WRITE_ZEROES && (request.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0;
    if (nbdError === NBD_ENOTSUP && !fastZero) nbdError = NBD_EIO;
    // Past the end of a volume that shrank after the client learnt its size: a write's answer is
    // ENOSPC there, as for any write past the end (the spec's SHOULD; reads and trims keep EINVAL).
    if (errorCode(error) === 'THIN_OUT_OF_RANGE' && (request.type === NBD_CMD_WRITE || request.type === NBD_CMD_WRITE_ZEROES)) nbdError = NBD_ENOSPC;
    const detail = error instanceof Error ? error.message : String(error);
    message = `${commandName(request.type)} of ${request.lengthBytes} bytes at ${request.offsetBytes} failed: ${detail}`;
    if (nbdError === NBD_EIO) log(message);
  }
  return { nbdError, message };
}

