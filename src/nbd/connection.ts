// One client connection: the handshake, then transmission (spec "Transmission phase").
//
// Parsing is a synchronous state machine over the bytes received (no promise per request): a
// request header is decoded, its payload copied once into a pooled buffer, and the command runs
// without being awaited, so many requests are in flight and replies go out in completion order,
// matched by cookie. A reply is written as one buffer (header and data together) and the writes
// of one event-loop turn (up to its check phase) are corked into one writev. What a request means
// and how it runs is commands.ts's; the export is reached through one ExportBackend per
// connection (export-backend.ts), which holds the fallbacks and the export contract's checks.
//
// Bounds, all from src/constants.ts: requests in flight, payload bytes in flight (per connection
// and for the whole server), payload size, handshake options and time, and how long replies may
// sit unread. A request is admitted before its payload is read; when it does not fit, parsing
// stops and the socket is paused (backpressure), so a client that sends without reading replies
// stalls itself and is cut off once its replies stop draining, while others go on.
//
// STARTTLS (tls.ts): the ACK goes out in the clear, then the same socket is wrapped in TLS and the
// option haggling goes on over it; the connection reads and writes through whichever socket is
// current, so everything after the upgrade is encrypted.
//
// States:  clientFlags → optionHeader ⇄ optionData → requestHeader ⇄ (writePayload | skipPayload)
//          optionData → tlsHandshake (STARTTLS acknowledged, waiting for the ACK to be written) → optionHeader
//          any → draining (NBD_CMD_DISC or server close: finish in-flight, then end) → closed
//          any → closed (hard disconnect: protocol violation, timeout, peer gone)

import type { Duplex } from 'node:stream';
import { NBD_BLOCK_STATUS_EXTENTS_MAX, NBD_ERROR_MESSAGE_BYTES_MAX } from '../constants.ts';
import { assert } from '../errors.ts';
import type { NbdExport, NbdExportRegistry } from './backend.ts';
import type { BufferPool, ByteBudget } from './buffers.ts';
import { ByteQueue } from './byte-queue.ts';
import { executeRequest, failureReply, type CommandContext, type Request } from './commands.ts';
import { ExportBackend, type NbdExportFilter } from './export-backend.ts';
import { Handshake, type Negotiated } from './handshake.ts';
import { describeTlsPeer, type NbdTls } from './tls.ts';
import type { LogEntry, LogLevel, LogSink } from '../util/log.ts';
import {
  BLOCK_STATUS_EXTENT_BYTES,
  IHAVEOPT,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  OPTION_HEADER_BYTES,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_HEADER_BYTES,
  commandName,
  decodeRequestHeader,
  encodeErrorChunk,
  encodeGreeting,
  writeSimpleReplyHeader,
  type RequestHeader,
} from './protocol.ts';

/** What all connections of a server add up, for metrics (one shared object, plain additions). */
export interface NbdTrafficStats {
  bytesReceived: number;
  bytesSent: number;
  tlsHandshakes: number;
  tlsFailures: number;
}

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
  /** Wrappers around every export, outermost first (export-backend.ts): test filters. */
  filters?: readonly NbdExportFilter[];
  /** STARTTLS is offered (and under `require`, demanded) with these credentials. */
  tls?: NbdTls;
  /** Server-wide counters this connection adds to (metrics). */
  stats?: NbdTrafficStats;
  /** Who is at the other end, for the log (e.g. `127.0.0.1:51234`). */
  peer?: string;
  /** Called once when the connection enters transmission. */
  onTransmission?: (connection: NbdConnection) => void;
  log?: LogSink;
}

const Phase = {
  clientFlags: 'clientFlags',
  optionHeader: 'optionHeader',
  optionData: 'optionData',
  tlsHandshake: 'tlsHandshake',
  requestHeader: 'requestHeader',
  writePayload: 'writePayload',
  skipPayload: 'skipPayload',
  draining: 'draining',
  closed: 'closed',
} as const;
type Phase = (typeof Phase)[keyof typeof Phase];

export class NbdConnection {
  /** The plain stream, or after STARTTLS the TLS socket over it. */
  #socket: Duplex;
  readonly #options: NbdConnectionOptions;
  readonly #input = new ByteQueue();
  readonly #handshake: Handshake;
  readonly #header: RequestHeader = { flags: 0, type: 0, cookie: 0n, offsetBytes: 0, lengthBytes: 0 };
  #phase: Phase = Phase.clientFlags;
  #negotiated: Negotiated | undefined;
  /** What running a request needs (commands.ts), once in transmission. */
  #commands: CommandContext | undefined;
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
  #tlsUpgraded = false;
  #tlsEstablished = false;
  #tlsFailureCounted = false;
  #resolveClosed!: () => void;
  /** Settles when the socket has closed (in-flight backend calls may still be finishing). */
  readonly closed: Promise<void>;
  #resolveFinished!: () => void;
  /**
   * Settles when the server is done with the connection: every request answered and the end of
   * the stream written after the last reply, or the socket closed. The peer may still hold its
   * side open (libnbd does until its next request); #endSoon bounds how long it may.
   */
  readonly finished: Promise<void>;

  constructor(socket: Duplex, options: NbdConnectionOptions) {
    this.#socket = socket;
    this.#options = options;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.finished = new Promise((resolve) => (this.#resolveFinished = resolve));
    this.#handshake = new Handshake(options.registry, (bytes) => this.#send(bytes, undefined, undefined), options.tls?.mode ?? 'off');
    this.#listen(socket, options.transientReads !== true);
    this.#handshakeTimer = setTimeout(
      () => this.#hardClose(`handshake not finished within ${options.handshakeTimeoutMs} ms`),
      options.handshakeTimeoutMs,
    );
    this.#handshakeTimer.unref();
    this.#send(encodeGreeting(), undefined, undefined);
  }

  #listen(socket: Duplex, data: boolean): void {
    if (data) socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
  }

  #unlisten(socket: Duplex): void {
    socket.off('data', this.#onData);
    socket.off('end', this.#onEnd);
    socket.off('error', this.#onError);
    socket.off('close', this.#onClose);
  }

  /** The export being served, once in transmission. */
  get export(): NbdExport | undefined {
    return this.#negotiated?.export;
  }

  /** Requests received and not yet answered. */
  get requestsInFlight(): number {
    return this.#inFlightCount;
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
   * finish those in flight, send their replies, then end. Settles when the connection has
   * finished (see `finished`), without waiting for the peer to close its side.
   */
  close(): Promise<void> {
    if (this.#phase === Phase.closed || this.#phase === Phase.draining) return this.finished;
    if (this.#negotiated === undefined) {
      this.#hardClose('server closing');
      return this.finished;
    }
    // Requests already received are answered NBD_ESHUTDOWN; those in flight finish; then end.
    this.#shuttingDown = true;
    this.#parse();
    this.#endIfShutDown();
    return this.finished;
  }

  /**
   * Closes the socket of a finished connection now, quietly: every reply and the end of the
   * stream are already written, so nothing is lost by not waiting for the peer to close its side.
   */
  release(): void {
    assert(this.#phase === Phase.closed, `release() of a connection still ${this.#phase}`);
    this.#socket.destroy();
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
    if (this.#phase === Phase.tlsHandshake) {
      // The socket is paused for the hand-over; should a chunk still arrive, it is the start of
      // the TLS handshake: back into the stream, where the TLS layer reads it.
      this.#socket.unshift(chunk);
      return;
    }
    if (this.#options.stats !== undefined) this.#options.stats.bytesReceived += chunk.length;
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
    if (this.#options.stats !== undefined) this.#options.stats.bytesReceived += bytes.length;
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
    if (this.#tlsUpgraded && !this.#tlsEstablished) {
      // A client that gives up mid-handshake (it rejected our certificate, or its key was
      // refused and it saw the alert first) is a refusal: logged like one.
      return this.#hardClose('TLS handshake failed: the client closed the connection');
    }
    this.#inputEnded = true;
    this.#parse();
  };

  readonly #onError = (error: Error): void => {
    // A failed TLS handshake (wrong key, untrusted certificate) surfaces here, before 'secure'.
    const what = this.#tlsUpgraded && !this.#tlsEstablished ? 'TLS handshake failed' : 'socket error';
    this.#hardClose(`${what}: ${error.message}`);
  };

  readonly #onClose = (): void => {
    if (this.#tlsUpgraded && !this.#tlsEstablished && this.#closeReason === undefined) {
      this.#closeReason = 'TLS handshake failed: the connection closed';
      this.#log('warn', 'nbd.tls_failed', `closing connection: ${this.#closeReason}`);
    }
    this.#countTlsFailure();
    this.#log('debug', 'nbd.connection_closed', `connection closed${this.#closeReason === undefined ? '' : `: ${this.#closeReason}`}`);
    this.#phase = Phase.closed;
    this.#clearTimers();
    if (this.#waitingForBudget) this.#options.serverBudget.cancelWait(this.#onBudget);
    this.#waitingForBudget = false;
    this.#input.clear();
    this.#dropPartialWrite();
    this.#resolveFinished();
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
          if (outcome.kind === 'starttls') return this.#startTls();
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
        case Phase.tlsHandshake:
        case Phase.draining:
        case Phase.closed:
          return;
      }
    }
  }

  /**
   * STARTTLS was acknowledged: once the ACK has left in the clear, the socket is wrapped in TLS
   * and parsing goes on over it. The client sends nothing until it has read the ACK, so bytes
   * already queued are a protocol violation; what arrives meanwhile (the ClientHello) stays in the
   * paused socket, where the TLS layer picks it up.
   */
  #startTls(): void {
    const tlsConfig = this.#options.tls;
    assert(tlsConfig !== undefined, 'STARTTLS acknowledged without TLS configured');
    if (this.#input.lengthBytes > 0) return this.#hardClose('bytes sent after NBD_OPT_STARTTLS before its reply');
    const plain = this.#socket;
    this.#phase = Phase.tlsHandshake;
    plain.pause();
    if (this.#corked) this.#uncork();
    const wrap = (): void => {
      if (this.#phase !== Phase.tlsHandshake) return;
      this.#unlisten(plain);
      // The TLS socket owns the connection now; the plain one must not report errors as uncaught.
      plain.on('error', () => {});
      let secure;
      try {
        secure = tlsConfig.upgrade(plain);
      } catch (error) {
        this.#listen(plain, false);
        return this.#hardClose(`TLS setup failed: ${error instanceof Error ? error.message : String(error)}`);
      }
      // As for the plain socket (NbdServer.listen): a client may close its sending side after
      // NBD_CMD_DISC and still read the replies before it.
      secure.allowHalfOpen = true;
      this.#socket = secure;
      this.#tlsUpgraded = true;
      secure.once('secure', () => {
        this.#tlsEstablished = true;
        if (this.#options.stats !== undefined) this.#options.stats.tlsHandshakes++;
        this.#log('info', 'nbd.tls_established', `TLS established (${describeTlsPeer(secure)})`);
      });
      this.#listen(secure, true);
      this.#handshake.tlsStarted();
      this.#phase = Phase.optionHeader;
    };
    // The write callback runs once the ACK is handed to the kernel: TLS bytes can only follow it.
    plain.write(Buffer.alloc(0), (error) => (error ? this.#hardClose(`socket error: ${error.message}`) : wrap()));
  }

  #startTransmission(negotiated: Negotiated): void {
    this.#negotiated = negotiated;
    const limits = { sizeBytes: negotiated.sizeBytes, payloadBytesMax: negotiated.payloadBytesMax };
    this.#commands = {
      negotiated,
      backend: new ExportBackend(negotiated.export, limits, this.#options.filters),
      buffers: this.#options.buffers,
      send: (bytes, pooled, request) => this.#send(bytes, pooled, request),
      replyOk: (request) => this.#replyOk(request),
    };
    this.#phase = Phase.requestHeader;
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = undefined;
    this.#stallTimer = setInterval(this.#checkStall, this.#options.replyStallTimeoutMs);
    this.#stallTimer.unref();
    this.#log('debug', 'nbd.connection_opened', `export opened${this.#tlsEstablished ? ' over TLS' : ''}`);
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
    // 'finish' once every reply and the end are written; an error closes the socket instead.
    this.#socket.end(() => this.#resolveFinished());
    const socket = this.#socket;
    const deadline = setTimeout(() => socket.destroy(), this.#options.replyStallTimeoutMs).unref();
    // A peer that closes in time ends the wait: the timer would otherwise hold the socket and
    // this connection for the whole interval after the close.
    socket.once('close', () => clearTimeout(deadline));
  }

  /** Drops the connection now; logged unless it is the ordinary end of a client (quiet). */
  #hardClose(reason: string, options: { quiet?: boolean } = {}): void {
    if (this.#phase === Phase.closed && this.#socket.destroyed) return;
    this.#countTlsFailure();
    this.#closeReason ??= reason;
    if (options.quiet !== true) {
      const tlsFailed = this.#tlsUpgraded && !this.#tlsEstablished;
      this.#log('warn', tlsFailed ? 'nbd.tls_failed' : 'nbd.connection_dropped', `closing connection: ${reason}`);
    }
    this.#phase = Phase.closed;
    this.#clearTimers();
    // What was already written goes out first (the greeting, earlier replies); nothing after.
    if (this.#corked) this.#uncork();
    this.#socket.destroy();
  }

  /** A connection that started TLS and closes before it was established failed its handshake (counted once). */
  #countTlsFailure(): void {
    if (!this.#tlsUpgraded || this.#tlsEstablished || this.#tlsFailureCounted) return;
    this.#tlsFailureCounted = true;
    if (this.#options.stats !== undefined) this.#options.stats.tlsFailures++;
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
      // replies of every completion that arrived in it (less server CPU per 4 KiB read:
      // docs/benchmarks.md, "Figures behind code decisions").
      setImmediate(this.#uncork);
    }
    const lengthBytes = bytes.length;
    socket.write(bytes, () => {
      this.#bytesFlushed += lengthBytes;
      if (this.#options.stats !== undefined) this.#options.stats.bytesSent += lengthBytes;
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
      this.#log('error', 'nbd.internal_error', `internal error serving ${commandName(request.type)}: ${String(error)}`);
      this.#release(request);
      this.#hardClose('internal error');
    });
  }

  async #execute(request: Request): Promise<void> {
    try {
      const context = this.#commands;
      assert(context !== undefined, 'command before transmission');
      await executeRequest(request, context);
    } catch (error) {
      if (!request.released) {
        const { nbdError, message } = failureReply(request, error, this.#logger);
        this.#replyError(request, nbdError, message);
      }
    } finally {
      if (request.payload !== undefined) {
        this.#options.buffers.release(request.payload);
        request.payload = undefined;
      }
    }
  }

  #log(level: LogLevel, event: string, message: string): void {
    const sink = this.#options.log;
    if (sink === undefined) return;
    const entry: LogEntry = { level, event, message };
    if (this.#options.peer !== undefined) entry.client = this.#options.peer;
    const volume = this.#negotiated?.export.name;
    if (volume !== undefined) entry.volume = volume;
    sink(entry);
  }

  readonly #logger = (message: string): void => this.#log('error', 'nbd.io_error', message);
}
