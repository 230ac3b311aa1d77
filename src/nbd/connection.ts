// One client connection: the handshake, then transmission (spec "Transmission phase").
//
// Parsing is a synchronous state machine over the bytes received (no promise per request): a
// request header is decoded, its payload copied once into a pooled buffer, and the command runs
// without being awaited, so many requests are in flight and replies go out in completion order,
// matched by cookie. A reply is written as one buffer (header and data together) and the writes
// of one event-loop turn (up to its check phase) are corked into one writev.
//
// Bounds, all from src/constants.ts: requests in flight, payload bytes in flight (per connection
// and for the whole server), payload size, handshake options and time, and how long replies may
// sit unread. A request is admitted before its payload is read; when it does not fit, parsing
// stops and the socket is paused (backpressure), so a client that sends without reading replies
// stalls itself and is cut off once its replies stop draining, while others go on.
//
// States:  clientFlags → optionHeader ⇄ optionData → requestHeader ⇄ (writePayload | skipPayload)
//          any → draining (NBD_CMD_DISC or server close: finish in-flight, then end) → closed
//          any → closed (hard disconnect: protocol violation, timeout, peer gone)

import type { Duplex } from 'node:stream';
import { NBD_BLOCK_STATUS_EXTENTS_MAX, NBD_ERROR_MESSAGE_BYTES_MAX, NBD_READ_CHUNKS_MAX } from '../constants.ts';
import { assert } from '../errors.ts';
import { errorCode, nbdErrorForCode, type NbdExport, type NbdExportRegistry, type NbdExtent } from './backend.ts';
import type { BufferPool, ByteBudget } from './buffers.ts';
import { ByteQueue } from './byte-queue.ts';
import { Handshake, type Negotiated } from './handshake.ts';
import {
  BASE_ALLOCATION_CONTEXT_ID,
  BLOCK_STATUS_EXTENT_BYTES,
  IHAVEOPT,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
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
  OPTION_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_HEADER_BYTES,
  STRUCTURED_REPLY_HEADER_BYTES,
  commandName,
  decodeRequestHeader,
  encodeErrorChunk,
  encodeGreeting,
  writeSimpleReplyHeader,
  writeStructuredReplyHeader,
  type RequestHeader,
} from './protocol.ts';

export interface NbdConnectionOptions {
  registry: NbdExportRegistry;
  /**
   * Input arrives through receiveTransient() instead of the stream's 'data' events: the server
   * reads every socket into one reused buffer (see NbdServer.#accept).
   */
  transientReads?: boolean;
  buffers: BufferPool;
  /** Payload bytes in flight across the whole server. */
  serverBudget: ByteBudget;
  handshakeTimeoutMs: number;
  replyStallTimeoutMs: number;
  requestsInFlightMax: number;
  bytesInFlightMax: number;
  handshakeOptionsMax: number;
  optionDataBytesMax: number;
  /** Called once when the connection enters transmission. */
  onTransmission?: (connection: NbdConnection) => void;
  log?: (message: string) => void;
}

const Phase = {
  clientFlags: 'clientFlags',
  optionHeader: 'optionHeader',
  optionData: 'optionData',
  requestHeader: 'requestHeader',
  writePayload: 'writePayload',
  skipPayload: 'skipPayload',
  draining: 'draining',
  closed: 'closed',
} as const;
type Phase = (typeof Phase)[keyof typeof Phase];

interface Request {
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
 * A refusal to send to the client: an NBD error value and a sentence. Deliberately not an Error:
 * refusing a request is an ordinary answer, and capturing a stack trace for each one cost more
 * than serving the request (measured by the fuzzer).
 */
class RequestError {
  readonly nbdError: number;
  readonly message: string;
  constructor(nbdError: number, message: string) {
    this.nbdError = nbdError;
    this.message = message;
  }
}

export class NbdConnection {
  readonly #socket: Duplex;
  readonly #options: NbdConnectionOptions;
  readonly #input = new ByteQueue();
  readonly #handshake: Handshake;
  readonly #header: RequestHeader = { flags: 0, type: 0, cookie: 0n, offsetBytes: 0, lengthBytes: 0 };
  #phase: Phase = Phase.clientFlags;
  #negotiated: Negotiated | undefined;
  #optionCount = 0;
  #optionType = 0;
  #optionDataBytes = 0;
  /** The WRITE whose payload is arriving (writePayload, skipPayload). */
  #current: Request | undefined;
  #currentFilledBytes = 0;
  #inFlightCount = 0;
  #inFlightBytes = 0;
  /** The client will send nothing more (it closed its side of the connection). */
  #inputEnded = false;
  /** The server is closing: new requests are refused with NBD_ESHUTDOWN. */
  #shuttingDown = false;
  /** Parsing is stopped until a request completes or budget frees up. */
  #blocked = false;
  #waitingForBudget = false;
  #corked = false;
  #handshakeTimer: NodeJS.Timeout | undefined;
  #stallTimer: NodeJS.Timeout | undefined;
  /** Reply bytes the socket has taken (write callbacks), for stall detection. */
  #bytesFlushed = 0;
  #bytesFlushedAtLastCheck = 0;
  #closeReason: string | undefined;
  #resolveClosed!: () => void;
  /** Settles when the socket has closed (in-flight backend calls may still be finishing). */
  readonly closed: Promise<void>;

  constructor(socket: Duplex, options: NbdConnectionOptions) {
    this.#socket = socket;
    this.#options = options;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.#handshake = new Handshake(options.registry, (bytes) => this.#send(bytes, undefined, undefined));
    if (options.transientReads !== true) socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
    this.#handshakeTimer = setTimeout(
      () => this.#hardClose(`handshake not finished within ${options.handshakeTimeoutMs} ms`),
      options.handshakeTimeoutMs,
    );
    this.#handshakeTimer.unref();
    this.#send(encodeGreeting(), undefined, undefined);
  }

  /** The export being served, once in transmission. */
  get export(): NbdExport | undefined {
    return this.#negotiated?.export;
  }

  get phase(): string {
    return this.#phase;
  }

  /** Why the connection closed, if the server closed it. */
  get closeReason(): string | undefined {
    return this.#closeReason;
  }

  /**
   * Soft close: in the handshake, drop the connection; in transmission, read no more requests,
   * finish those in flight, send their replies, then end. Settles when the socket has closed.
   */
  close(): Promise<void> {
    if (this.#phase === Phase.closed || this.#phase === Phase.draining) return this.closed;
    if (this.#negotiated === undefined) {
      this.#hardClose('server closing');
      return this.closed;
    }
    // Requests already received are answered NBD_ESHUTDOWN; those in flight finish; then end.
    this.#shuttingDown = true;
    this.#parse();
    this.#endIfShutDown();
    return this.closed;
  }

  #endIfShutDown(): void {
    if (this.#shuttingDown && this.#inFlightCount === 0 && this.#current === undefined) this.#startDraining('server closing');
  }

  /** Hard close, now. */
  destroy(reason = 'destroyed by the server'): void {
    this.#hardClose(reason);
  }

  // ---- input ----

  readonly #onData = (chunk: Buffer): void => {
    if (this.#phase === Phase.closed || this.#phase === Phase.draining) return;
    this.#input.push(chunk);
    this.#parse();
  };

  /**
   * Input read into a buffer the caller reuses for its next read: parsed now, and whatever is
   * still unparsed is copied out before returning (handshake and request parsing are synchronous
   * and copy what they keep; WRITE payloads are copied into their pooled buffer). Returns false
   * when the connection wants no more input for now; it resumes the stream itself.
   */
  receiveTransient(bytes: Buffer): boolean {
    if (this.#phase === Phase.closed || this.#phase === Phase.draining) return true;
    this.#input.pushTransient(bytes);
    this.#parse();
    this.#input.detach();
    return !this.#blocked;
  }

  readonly #onEnd = (): void => {
    // The client closed its sending side. What it sent before is still parsed (it may end with
    // NBD_CMD_DISC, waiting behind requests in flight); then, DISC or not, the requests in flight
    // are finished and answered and the connection ends. A client that closed both sides makes
    // those replies fail, which closes the connection at once.
    this.#inputEnded = true;
    this.#parse();
  };

  readonly #onError = (error: Error): void => {
    this.#log(`socket error: ${error.message}`);
    this.#hardClose(`socket error: ${error.message}`);
  };

  readonly #onClose = (): void => {
    this.#phase = Phase.closed;
    this.#clearTimers();
    if (this.#waitingForBudget) this.#options.serverBudget.cancelWait(this.#onBudget);
    this.#waitingForBudget = false;
    this.#input.clear();
    this.#dropPartialWrite();
    this.#resolveClosed();
  };

  /** A WRITE whose payload will never arrive in full gives back what it holds. */
  #dropPartialWrite(): void {
    const request = this.#current;
    if (request === undefined) return;
    this.#current = undefined;
    if (request.payload !== undefined) this.#options.buffers.release(request.payload);
    request.payload = undefined;
    this.#release(request);
  }

  readonly #onBudget = (): void => {
    this.#waitingForBudget = false;
    this.#unblock();
  };

  /** Parses what it can; once the client's input has ended and all of it is parsed, drains. */
  #parse(): void {
    this.#pump();
    if (this.#inputEnded && !this.#blocked) this.#startDraining('client closed its side');
  }

  /** Parses as much input as the state allows. */
  #pump(): void {
    while (!this.#blocked) {
      switch (this.#phase) {
        case Phase.clientFlags: {
          if (this.#input.lengthBytes < 4) return;
          const flags = this.#input.take(4).readUInt32BE(0);
          if (!this.#handshake.clientFlags(flags)) return this.#hardClose(`client flags 0x${flags.toString(16)} are not offered`);
          this.#phase = Phase.optionHeader;
          break;
        }
        case Phase.optionHeader: {
          if (this.#input.lengthBytes < OPTION_HEADER_BYTES) return;
          const header = this.#input.take(OPTION_HEADER_BYTES);
          if (header.readBigUInt64BE(0) !== IHAVEOPT) return this.#hardClose('option without IHAVEOPT magic');
          this.#optionType = header.readUInt32BE(8);
          this.#optionDataBytes = header.readUInt32BE(12);
          if (++this.#optionCount > this.#options.handshakeOptionsMax) {
            return this.#hardClose(`more than ${this.#options.handshakeOptionsMax} options`);
          }
          if (this.#optionDataBytes > this.#options.optionDataBytesMax) {
            return this.#hardClose(`option data of ${this.#optionDataBytes} bytes is over ${this.#options.optionDataBytesMax}`);
          }
          this.#phase = Phase.optionData;
          break;
        }
        case Phase.optionData: {
          if (this.#input.lengthBytes < this.#optionDataBytes) return;
          const data = this.#input.take(this.#optionDataBytes);
          this.#phase = Phase.optionHeader;
          let outcome;
          try {
            outcome = this.#handshake.option(this.#optionType, data);
          } catch (error) {
            // The registry and the exports' size and flags are someone else's code: a throw there
            // costs this connection, not the server.
            return this.#hardClose(`option ${this.#optionType} failed: ${error instanceof Error ? error.message : String(error)}`);
          }
          if (outcome.kind === 'abort') return this.#endSoon('client aborted the handshake');
          if (outcome.kind === 'disconnect') return this.#hardClose(outcome.reason);
          if (outcome.kind === 'transmission') this.#startTransmission(outcome.negotiated);
          break;
        }
        case Phase.requestHeader:
          if (!this.#parseRequestHeader()) return;
          break;
        case Phase.writePayload: {
          const request = this.#current;
          assert(request?.payload !== undefined, 'writePayload without a request');
          const step = Math.min(this.#input.lengthBytes, request.lengthBytes - this.#currentFilledBytes);
          this.#input.takeInto(request.payload, this.#currentFilledBytes, step);
          this.#currentFilledBytes += step;
          if (this.#currentFilledBytes < request.lengthBytes) return;
          this.#current = undefined;
          this.#phase = Phase.requestHeader;
          this.#dispatch(request);
          break;
        }
        case Phase.skipPayload: {
          const request = this.#current;
          assert(request !== undefined, 'skipPayload without a request');
          const step = Math.min(this.#input.lengthBytes, request.lengthBytes - this.#currentFilledBytes);
          this.#input.skip(step);
          this.#currentFilledBytes += step;
          if (this.#currentFilledBytes < request.lengthBytes) return;
          this.#current = undefined;
          this.#phase = Phase.requestHeader;
          this.#dispatch(request);
          break;
        }
        case Phase.draining:
        case Phase.closed:
          return;
      }
    }
  }

  #startTransmission(negotiated: Negotiated): void {
    this.#negotiated = negotiated;
    this.#phase = Phase.requestHeader;
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = undefined;
    this.#stallTimer = setInterval(this.#checkStall, this.#options.replyStallTimeoutMs);
    this.#stallTimer.unref();
    this.#options.onTransmission?.(this);
  }

  /** Returns false when parsing must wait (more bytes, a slot, or budget). */
  #parseRequestHeader(): boolean {
    const negotiated = this.#negotiated;
    assert(negotiated !== undefined, 'request before transmission');
    if (this.#input.lengthBytes < REQUEST_HEADER_BYTES) return false;
    const header = this.#header;
    if (!decodeRequestHeader(this.#input.peek(REQUEST_HEADER_BYTES), 0, header)) {
      this.#hardClose('request without NBD_REQUEST_MAGIC');
      return false;
    }
    if (header.type === NBD_CMD_DISC) {
      this.#input.skip(REQUEST_HEADER_BYTES);
      this.#startDraining('client sent NBD_CMD_DISC');
      return false;
    }
    const carriesPayload = header.type === NBD_CMD_READ || header.type === NBD_CMD_WRITE;
    const oversized = carriesPayload && header.lengthBytes > negotiated.payloadBytesMax;
    // What the request will hold until its reply is sent: its data, or a block status reply
    // (at most one extent per byte asked about, and never more than the extent limit).
    let reservedBytes = 0;
    if (carriesPayload && !oversized) reservedBytes = header.lengthBytes;
    else if (header.type === NBD_CMD_BLOCK_STATUS) {
      reservedBytes = BLOCK_STATUS_EXTENT_BYTES * Math.min(header.lengthBytes, NBD_BLOCK_STATUS_EXTENTS_MAX);
    }
    // While the server closes, requests still arriving are answered NBD_ESHUTDOWN (the client
    // must then soft-disconnect) instead of being dropped unanswered.
    const refused = this.#shuttingDown;
    if (!this.#admit(refused ? 0 : reservedBytes)) return false;
    this.#input.skip(REQUEST_HEADER_BYTES);
    const request: Request = {
      flags: header.flags,
      type: header.type,
      cookie: header.cookie,
      offsetBytes: header.offsetBytes,
      lengthBytes: header.lengthBytes,
      payload: undefined,
      reservedBytes: refused ? 0 : reservedBytes,
      released: false,
      refused,
    };
    if (header.type !== NBD_CMD_WRITE) {
      this.#dispatch(request);
      return true;
    }
    this.#current = request;
    this.#currentFilledBytes = 0;
    if (oversized || refused) {
      // Too big to hold or refused: its bytes are read and dropped, then it fails. Memory stays flat.
      this.#phase = Phase.skipPayload;
    } else {
      request.payload = this.#options.buffers.acquire(header.lengthBytes);
      this.#phase = Phase.writePayload;
    }
    return true;
  }

  /** Takes a request slot and `bytes` of both budgets, or blocks parsing until they free up. */
  #admit(bytes: number): boolean {
    const options = this.#options;
    const countFits = this.#inFlightCount < options.requestsInFlightMax;
    const bytesFit = this.#inFlightBytes === 0 || this.#inFlightBytes + bytes <= options.bytesInFlightMax;
    if (countFits && bytesFit) {
      if (bytes === 0 || options.serverBudget.tryAcquire(bytes)) {
        this.#inFlightCount++;
        this.#inFlightBytes += bytes;
        return true;
      }
      // The server budget is spent by other connections: wait for any of them to release.
      this.#waitingForBudget = true;
      options.serverBudget.wait(this.#onBudget);
    }
    this.#blocked = true;
    this.#socket.pause();
    return false;
  }

  #unblock(): void {
    if (!this.#blocked || this.#waitingForBudget) return;
    this.#blocked = false;
    if (this.#phase === Phase.closed || this.#phase === Phase.draining) return;
    this.#socket.resume();
    this.#parse();
  }

  /** Gives back a request's slot and budget (once). */
  #release(request: Request): void {
    if (request.released) return;
    request.released = true;
    this.#inFlightCount--;
    this.#inFlightBytes -= request.reservedBytes;
    assert(this.#inFlightCount >= 0 && this.#inFlightBytes >= 0, 'in-flight accounting went negative');
    if (request.reservedBytes > 0) this.#options.serverBudget.release(request.reservedBytes);
    if (this.#phase === Phase.draining && this.#inFlightCount === 0) this.#endSoon(this.#closeReason ?? 'drained');
    else if (this.#blocked) this.#unblock();
    if (this.#phase !== Phase.closed && this.#phase !== Phase.draining) this.#endIfShutDown();
  }

  // ---- closing ----

  #startDraining(reason: string): void {
    if (this.#phase === Phase.closed || this.#phase === Phase.draining) return;
    this.#closeReason = reason;
    this.#phase = Phase.draining;
    this.#input.clear();
    this.#dropPartialWrite();
    // Keep reading (and dropping) so the peer's close is seen; nothing more is parsed.
    this.#socket.resume();
    if (this.#inFlightCount === 0) this.#endSoon(reason);
  }

  /** Ends the socket after what was written; destroys it if the peer does not close in time. */
  #endSoon(reason: string): void {
    if (this.#phase === Phase.closed) return;
    this.#closeReason ??= reason;
    this.#phase = Phase.closed;
    this.#clearTimers();
    this.#socket.end();
    const socket = this.#socket;
    setTimeout(() => socket.destroy(), this.#options.replyStallTimeoutMs).unref();
  }

  /** Drops the connection now; logged unless it is the ordinary end of a client (quiet). */
  #hardClose(reason: string, options: { quiet?: boolean } = {}): void {
    if (this.#phase === Phase.closed && this.#socket.destroyed) return;
    this.#closeReason ??= reason;
    if (options.quiet !== true) this.#log(`closing connection: ${reason}`);
    this.#phase = Phase.closed;
    this.#clearTimers();
    // What was already written goes out first (the greeting, earlier replies); nothing after.
    if (this.#corked) this.#uncork();
    this.#socket.destroy();
  }

  #clearTimers(): void {
    clearTimeout(this.#handshakeTimer);
    clearInterval(this.#stallTimer);
    this.#handshakeTimer = undefined;
    this.#stallTimer = undefined;
  }

  /** Cuts off a client whose replies sit unsent for a whole interval: it is not reading them. */
  readonly #checkStall = (): void => {
    const pending = this.#socket.writableLength > 0;
    if (pending && this.#bytesFlushed === this.#bytesFlushedAtLastCheck) {
      this.#hardClose(`replies unread for ${this.#options.replyStallTimeoutMs} ms`);
      return;
    }
    this.#bytesFlushedAtLastCheck = this.#bytesFlushed;
  };

  // ---- output ----

  /**
   * Writes one whole message. `pooled` goes back to the buffer pool and `request` releases its
   * slot once the socket has taken the bytes. Writes of one turn of the event loop are corked
   * together into one system call.
   */
  #send(bytes: Buffer, pooled: Buffer | undefined, request: Request | undefined): void {
    const socket = this.#socket;
    if (socket.destroyed || socket.writableEnded) {
      if (pooled !== undefined) this.#options.buffers.release(pooled);
      if (request !== undefined) this.#release(request);
      return;
    }
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
      // setImmediate, not nextTick: each fs completion is its own macrotask, so a nextTick uncork
      // sent one writev per reply; the check phase runs after the whole poll phase, gathering the
      // replies of every completion that arrived in it (server CPU per 4 KiB read -8%).
      setImmediate(this.#uncork);
    }
    const lengthBytes = bytes.length;
    socket.write(bytes, () => {
      this.#bytesFlushed += lengthBytes;
      if (pooled !== undefined) this.#options.buffers.release(pooled);
      if (request !== undefined) this.#release(request);
    });
  }

  readonly #uncork = (): void => {
    this.#corked = false;
    this.#socket.uncork();
  };

  #replyOk(request: Request): void {
    const reply = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES);
    writeSimpleReplyHeader(reply, 0, 0, request.cookie);
    this.#send(reply, undefined, request);
  }

  #replyError(request: Request, nbdError: number, message: string): void {
    const negotiated = this.#negotiated;
    assert(negotiated !== undefined, 'reply before transmission');
    if (negotiated.structuredReplies) {
      this.#send(encodeErrorChunk(request.cookie, nbdError, message, NBD_ERROR_MESSAGE_BYTES_MAX), undefined, request);
      return;
    }
    const reply = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES);
    writeSimpleReplyHeader(reply, 0, nbdError, request.cookie);
    this.#send(reply, undefined, request);
  }

  // ---- commands ----

  #dispatch(request: Request): void {
    this.#execute(request).catch((error: unknown) => {
      // Only a bug gets here (#execute answers every failure): drop the connection, not the server.
      this.#log(`internal error serving ${commandName(request.type)}: ${String(error)}`);
      this.#release(request);
      this.#hardClose('internal error');
    });
  }

  async #execute(request: Request): Promise<void> {
    try {
      if (request.refused) throw new RequestError(NBD_ESHUTDOWN, 'The server is shutting down.');
      this.#validate(request);
      switch (request.type) {
        case NBD_CMD_READ:
          return await this.#read(request);
        case NBD_CMD_WRITE:
          return await this.#write(request);
        case NBD_CMD_FLUSH:
          await this.#exp().flush();
          return this.#replyOk(request);
        case NBD_CMD_TRIM:
          return await this.#trim(request);
        case NBD_CMD_WRITE_ZEROES:
          return await this.#zero(request);
        case NBD_CMD_CACHE:
          return await this.#cache(request);
        case NBD_CMD_BLOCK_STATUS:
          return await this.#blockStatus(request);
      }
      assert(false, `command ${request.type} passed validation`);
    } catch (error) {
      this.#fail(request, error);
    } finally {
      if (request.payload !== undefined) {
        this.#options.buffers.release(request.payload);
        request.payload = undefined;
      }
    }
  }

  #fail(request: Request, error: unknown): void {
    if (request.released) return;
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
      const detail = error instanceof Error ? error.message : String(error);
      message = `${commandName(request.type)} of ${request.lengthBytes} bytes at ${request.offsetBytes} failed: ${detail}`;
      if (nbdError === NBD_EIO) this.#log(message);
    }
    this.#replyError(request, nbdError, message);
  }

  #exp(): NbdExport {
    const negotiated = this.#negotiated;
    assert(negotiated !== undefined, 'command before transmission');
    return negotiated.export;
  }

  /** Throws a RequestError with the error the spec asks for (§ "Error values"). */
  #validate(request: Request): void {
    const negotiated = this.#negotiated;
    assert(negotiated !== undefined, 'command before transmission');
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

  #fua(request: Request): boolean {
    return (request.flags & NBD_CMD_FLAG_FUA) !== 0;
  }

  async #write(request: Request): Promise<void> {
    const exp = this.#exp();
    if (request.lengthBytes > 0) {
      assert(request.payload !== undefined, 'WRITE without payload');
      const fua = this.#fua(request);
      await exp.write(request.offsetBytes, request.payload.subarray(0, request.lengthBytes), { fua: fua && exp.canFua });
      if (fua && !exp.canFua) await exp.flush();
    }
    this.#replyOk(request);
  }

  async #trim(request: Request): Promise<void> {
    const exp = this.#exp();
    if (request.lengthBytes > 0) {
      const fua = this.#fua(request);
      await exp.trim(request.offsetBytes, request.lengthBytes, { fua: fua && exp.canFua });
      if (fua && !exp.canFua) await exp.flush();
    }
    this.#replyOk(request);
  }

  async #zero(request: Request): Promise<void> {
    const exp = this.#exp();
    if (request.lengthBytes > 0) {
      const fua = this.#fua(request);
      await exp.zero(request.offsetBytes, request.lengthBytes, {
        noHole: (request.flags & NBD_CMD_FLAG_NO_HOLE) !== 0,
        fua: fua && exp.canFua,
        fastZero: (request.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
      });
      if (fua && !exp.canFua) await exp.flush();
    }
    this.#replyOk(request);
  }

  async #cache(request: Request): Promise<void> {
    // A hint that must not change what anyone reads: without a cache it is done at once.
    const exp = this.#exp();
    if (exp.canCache && exp.cache !== undefined && request.lengthBytes > 0) await exp.cache(request.offsetBytes, request.lengthBytes);
    this.#replyOk(request);
  }

  async #read(request: Request): Promise<void> {
    const negotiated = this.#negotiated;
    assert(negotiated !== undefined, 'READ before transmission');
    const exp = negotiated.export;
    const { offsetBytes, lengthBytes, cookie } = request;
    const buffers = this.#options.buffers;

    if (!negotiated.structuredReplies) {
      const reply = buffers.acquire(SIMPLE_REPLY_HEADER_BYTES + lengthBytes);
      try {
        if (lengthBytes > 0) await exp.read(offsetBytes, reply.subarray(SIMPLE_REPLY_HEADER_BYTES, SIMPLE_REPLY_HEADER_BYTES + lengthBytes));
      } catch (error) {
        buffers.release(reply);
        throw error;
      }
      writeSimpleReplyHeader(reply, 0, 0, cookie);
      this.#send(reply.subarray(0, SIMPLE_REPLY_HEADER_BYTES + lengthBytes), reply, request);
      return;
    }

    if (lengthBytes === 0) {
      const reply = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES);
      writeStructuredReplyHeader(reply, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0);
      this.#send(reply, undefined, request);
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
      holes = await exp.read(offsetBytes, whole.subarray(dataStart, dataStart + lengthBytes));
    } catch (error) {
      buffers.release(whole);
      throw error;
    }
    const pieces = holes !== false && (request.flags & NBD_CMD_FLAG_DF) === 0 ? await this.#readPieces(exp, offsetBytes, lengthBytes) : undefined;
    if (pieces === undefined) {
      writeStructuredReplyHeader(whole, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie, OFFSET_DATA_PREFIX_BYTES + lengthBytes);
      whole.writeBigUInt64BE(BigInt(offsetBytes), STRUCTURED_REPLY_HEADER_BYTES);
      this.#send(whole.subarray(0, dataStart + lengthBytes), whole, request);
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
        this.#send(chunk, last ? whole : undefined, last ? request : undefined);
      } else {
        const header = Buffer.allocUnsafe(dataStart);
        writeStructuredReplyHeader(header, 0, last ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_DATA, cookie, OFFSET_DATA_PREFIX_BYTES + piece.lengthBytes);
        header.writeBigUInt64BE(BigInt(piece.offsetBytes), STRUCTURED_REPLY_HEADER_BYTES);
        this.#send(header, undefined, undefined);
        const from = dataStart + piece.offsetBytes - offsetBytes;
        this.#send(whole.subarray(from, from + piece.lengthBytes), last ? whole : undefined, last ? request : undefined);
      }
    }
  }

  /**
   * The chunks of a structured READ reply from the export's block status: zero runs as holes,
   * the rest as data, at most NBD_READ_CHUNKS_MAX. undefined when it is one data chunk.
   */
  async #readPieces(exp: NbdExport, offsetBytes: number, lengthBytes: number): Promise<ReadPiece[] | undefined> {
    let extents: NbdExtent[] = [];
    try {
      extents = await exp.blockStatus(offsetBytes, lengthBytes);
    } catch {
      return undefined; // Block status is an optimisation here: send everything as data instead.
    }
    const pieces: ReadPiece[] = [];
    let position = offsetBytes;
    const end = offsetBytes + lengthBytes;
    for (const extent of extents) {
      if (position >= end || pieces.length >= NBD_READ_CHUNKS_MAX - 1) break;
      if (!(Number.isSafeInteger(extent.lengthBytes) && extent.lengthBytes > 0)) break;
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

  async #blockStatus(request: Request): Promise<void> {
    const exp = this.#exp();
    const { offsetBytes, lengthBytes, cookie } = request;
    const reqOne = (request.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
    const extentsMax = reqOne ? 1 : NBD_BLOCK_STATUS_EXTENTS_MAX;
    // Pairs of (length, status), merged when neighbours have the same status.
    const lengths: number[] = [];
    const statuses: number[] = [];
    let covered = 0;
    // The export may answer a part at a time; ask again for the rest, a bounded number of times.
    for (let ask = 0; ask < 64 && covered < lengthBytes && lengths.length < extentsMax; ask++) {
      const extents = await exp.blockStatus(offsetBytes + covered, lengthBytes - covered);
      if (extents.length === 0) break;
      for (const extent of extents) {
        if (covered >= lengthBytes || lengths.length >= extentsMax) break;
        if (!(Number.isSafeInteger(extent.lengthBytes) && extent.lengthBytes > 0)) {
          throw new RequestError(NBD_EIO, `The export answered block status with an extent of ${extent.lengthBytes} bytes.`);
        }
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
    const reply = this.#options.buffers.acquire(STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
    writeStructuredReplyHeader(reply, 0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, payloadBytes);
    reply.writeUInt32BE(BASE_ALLOCATION_CONTEXT_ID, STRUCTURED_REPLY_HEADER_BYTES);
    let position = STRUCTURED_REPLY_HEADER_BYTES + 4;
    for (let i = 0; i < lengths.length; i++) {
      reply.writeUInt32BE(lengths[i]!, position);
      reply.writeUInt32BE(statuses[i]!, position + 4);
      position += BLOCK_STATUS_EXTENT_BYTES;
    }
    this.#send(reply.subarray(0, position), reply, request);
  }

  #log(message: string): void {
    this.#options.log?.(message);
  }
}
