// The option haggling of the fixed newstyle handshake (spec "Fixed newstyle negotiation",
// "Option types"). Synchronous by design: every answer depends only on the registry and on what
// this connection negotiated so far, so one option is read, answered in full, and the next is
// read, as the spec's one-option-at-a-time rule wants. The connection owns the bytes; this
// class owns the meaning.
//
// Served: EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT and
// SET_META_CONTEXT (`base:allocation` only), and STARTTLS when TLS is configured (tls.ts).
// Everything else, EXTENDED_HEADERS included, gets NBD_REP_ERR_UNSUP and the haggling goes on (a
// baseline MUST).
//
// TLS (spec "TLS support"): without TLS configured STARTTLS is NBD_REP_ERR_UNSUP; under `require`
// every option before TLS but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD (EXPORT_NAME, which
// cannot carry an error, hard-disconnects), so nothing is listed or opened in the clear; once TLS
// is up, STARTTLS again is NBD_REP_ERR_INVALID and everything negotiated before it is forgotten.

import { NBD_ERROR_MESSAGE_BYTES_MAX, NBD_BLOCK_SIZE_PREFERRED_BYTES_DEFAULT, NBD_PAYLOAD_BYTES_MAX } from '../constants.ts';
import type { NbdExport, NbdExportRegistry } from './backend.ts';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_CONTEXT_ID,
  EXPORT_NAME_REPLY_ZEROES_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  encodeOptionReply,
  truncateUtf8,
} from './protocol.ts';

/** What transmission needs to know, fixed when the handshake ends. */
export interface Negotiated {
  export: NbdExport;
  /** Export size for the life of the connection (growth is seen by new connections). */
  sizeBytes: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** base:allocation was selected for this export: BLOCK_STATUS is allowed. */
  baseAllocation: boolean;
  /** Request offsets and lengths must be multiples of this (1: any). */
  blockSizeMinBytes: number;
  payloadBytesMax: number;
}

export type OptionOutcome =
  | { readonly kind: 'continue' }
  /** NBD_OPT_ABORT was acknowledged: close the connection. */
  | { readonly kind: 'abort' }
  | { readonly kind: 'transmission'; readonly negotiated: Negotiated }
  /** NBD_OPT_STARTTLS was acknowledged: the TLS handshake starts on this connection. */
  | { readonly kind: 'starttls' }
  /** A MUST was broken or EXPORT_NAME named nothing: hard-disconnect. */
  | { readonly kind: 'disconnect'; readonly reason: string };

const CONTINUE: OptionOutcome = { kind: 'continue' };

/** Transmission flags for an export, as this connection negotiated it. */
export function transmissionFlags(exp: NbdExport, structuredReplies: boolean): number {
  let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA;
  if (exp.readOnly) flags |= NBD_FLAG_READ_ONLY;
  else {
    if (exp.canTrim) flags |= NBD_FLAG_SEND_TRIM;
    if (exp.canZero) {
      flags |= NBD_FLAG_SEND_WRITE_ZEROES;
      if (exp.canFastZero) flags |= NBD_FLAG_SEND_FAST_ZERO;
    }
  }
  // DF must stay clear without structured replies (spec "Transmission flags").
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  if (exp.canMultiConn) flags |= NBD_FLAG_CAN_MULTI_CONN;
  if (exp.canCache) flags |= NBD_FLAG_SEND_CACHE;
  return flags;
}

/** The block sizes an export advertises, made valid whatever it declared. */
export function blockSizes(exp: NbdExport): { minBytes: number; preferredBytes: number; maxBytes: number } {
  const isPowerOfTwo = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
  const minBytes = isPowerOfTwo(exp.blockSizeMinBytes) && exp.blockSizeMinBytes <= 65536 ? exp.blockSizeMinBytes : 1;
  let preferredBytes = isPowerOfTwo(exp.blockSizePreferredBytes)
    ? exp.blockSizePreferredBytes
    : NBD_BLOCK_SIZE_PREFERRED_BYTES_DEFAULT;
  preferredBytes = Math.max(preferredBytes, minBytes, 512);
  let maxBytes = Number.isInteger(exp.blockSizeMaxBytes) ? exp.blockSizeMaxBytes : NBD_PAYLOAD_BYTES_MAX;
  maxBytes = Math.min(Math.max(maxBytes, preferredBytes), NBD_PAYLOAD_BYTES_MAX);
  return { minBytes, preferredBytes, maxBytes };
}

/** TLS as the handshake sees it: whether STARTTLS is offered and whether it is required. */
export type HandshakeTls = 'off' | 'on' | 'require';

export class Handshake {
  readonly #registry: NbdExportRegistry;
  readonly #send: (bytes: Buffer) => void;
  readonly #tls: HandshakeTls;
  #tlsActive = false;
  #noZeroes = false;
  #structuredReplies = false;
  /** Export name the last SET_META_CONTEXT selected base:allocation for, if it did. */
  #metaContextExportName: string | undefined;

  constructor(registry: NbdExportRegistry, send: (bytes: Buffer) => void, tls: HandshakeTls = 'off') {
    this.#registry = registry;
    this.#send = send;
    this.#tls = tls;
  }

  /** TLS is up: options now arrive encrypted, and what was negotiated in the clear is forgotten. */
  tlsStarted(): void {
    this.#tlsActive = true;
    this.#structuredReplies = false;
    this.#metaContextExportName = undefined;
  }

  /** The client's 32-bit flags; false means drop the connection (unknown or unoffered bit). */
  clientFlags(flags: number): boolean {
    if ((flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) return false;
    this.#noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
    return true;
  }

  /** Answers one option in full (every reply sent through `send`) and says what comes next. */
  option(option: number, data: Buffer): OptionOutcome {
    if (option === NBD_OPT_STARTTLS) return this.#startTls(data);
    if (this.#tls === 'require' && !this.#tlsActive && option !== NBD_OPT_ABORT) {
      if (option === NBD_OPT_EXPORT_NAME) return { kind: 'disconnect', reason: 'NBD_OPT_EXPORT_NAME before TLS, which this server requires' };
      return this.#error(option, NBD_REP_ERR_TLS_REQD, 'This server requires TLS: send NBD_OPT_STARTTLS first.');
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        return this.#exportName(data);
      case NBD_OPT_ABORT:
        this.#reply(option, NBD_REP_ACK);
        return { kind: 'abort' };
      case NBD_OPT_LIST:
        return this.#list(data);
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.#infoOrGo(option, data);
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return this.#error(option, NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data.');
        this.#structuredReplies = true;
        this.#reply(option, NBD_REP_ACK);
        return CONTINUE;
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        return this.#metaContext(option, data);
      default:
        return this.#error(option, NBD_REP_ERR_UNSUP, `Option ${option} is not supported by this server.`);
    }
  }

  #startTls(data: Buffer): OptionOutcome {
    if (this.#tls === 'off') return this.#error(NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP, 'This server is not configured for TLS.');
    if (this.#tlsActive) return this.#error(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, 'TLS is already in use on this connection.');
    if (data.length !== 0) return this.#error(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data.');
    this.#reply(NBD_OPT_STARTTLS, NBD_REP_ACK);
    return { kind: 'starttls' };
  }

  #exportName(data: Buffer): OptionOutcome {
    const name = data.toString('utf8');
    const exp = this.#registry.get(name);
    // EXPORT_NAME has no way to return an error: the spec says hard-disconnect.
    if (exp === undefined) return { kind: 'disconnect', reason: `no export named ${JSON.stringify(name)}` };
    const negotiated = this.#negotiate(name, exp);
    const reply = Buffer.alloc(10 + (this.#noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES_BYTES));
    reply.writeBigUInt64BE(BigInt(negotiated.sizeBytes), 0);
    reply.writeUInt16BE(negotiated.transmissionFlags, 8);
    this.#send(reply);
    return { kind: 'transmission', negotiated };
  }

  #list(data: Buffer): OptionOutcome {
    if (data.length !== 0) return this.#error(NBD_OPT_LIST, NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data.');
    for (const exp of this.#registry.list()) {
      const name = Buffer.from(exp.name, 'utf8');
      const description = truncateUtf8(exp.description, 4096);
      const body = Buffer.allocUnsafe(4 + name.length + description.length);
      body.writeUInt32BE(name.length, 0);
      body.set(name, 4);
      body.set(description, 4 + name.length);
      this.#reply(NBD_OPT_LIST, NBD_REP_SERVER, body);
    }
    this.#reply(NBD_OPT_LIST, NBD_REP_ACK);
    return CONTINUE;
  }

  #infoOrGo(option: number, data: Buffer): OptionOutcome {
    const optionName = option === NBD_OPT_GO ? 'NBD_OPT_GO' : 'NBD_OPT_INFO';
    if (data.length < 6) return this.#error(option, NBD_REP_ERR_INVALID, `${optionName} data is too short.`);
    const nameBytes = data.readUInt32BE(0);
    if (nameBytes > data.length - 6) return this.#error(option, NBD_REP_ERR_INVALID, `${optionName} export name overruns the option.`);
    const name = data.toString('utf8', 4, 4 + nameBytes);
    const requestCount = data.readUInt16BE(4 + nameBytes);
    if (data.length !== 6 + nameBytes + 2 * requestCount) {
      return this.#error(option, NBD_REP_ERR_INVALID, `${optionName} has ${requestCount} info requests but the wrong length.`);
    }
    const exp = this.#registry.get(name);
    if (exp === undefined) return this.#error(option, NBD_REP_ERR_UNKNOWN, `No export named ${JSON.stringify(name)}.`);
    const requested = new Set<number>();
    for (let i = 0; i < requestCount; i++) requested.add(data.readUInt16BE(6 + nameBytes + 2 * i));

    const negotiated = this.#negotiate(name, exp);
    const info = Buffer.alloc(12);
    info.writeUInt16BE(NBD_INFO_EXPORT, 0);
    info.writeBigUInt64BE(BigInt(negotiated.sizeBytes), 2);
    info.writeUInt16BE(negotiated.transmissionFlags, 10);
    this.#reply(option, NBD_REP_INFO, info);
    if (requested.has(NBD_INFO_NAME)) this.#replyInfoString(option, NBD_INFO_NAME, exp.name);
    if (requested.has(NBD_INFO_DESCRIPTION) && exp.description !== '') {
      this.#replyInfoString(option, NBD_INFO_DESCRIPTION, exp.description);
    }
    // Sent whether asked or not (the spec allows unrequested info): a client that honours it
    // keeps within our limits, and ours are the spec's defaults anyway unless the export differs.
    const sizes = blockSizes(exp);
    const blockSize = Buffer.allocUnsafe(14);
    blockSize.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
    blockSize.writeUInt32BE(sizes.minBytes, 2);
    blockSize.writeUInt32BE(sizes.preferredBytes, 6);
    blockSize.writeUInt32BE(sizes.maxBytes, 10);
    this.#reply(option, NBD_REP_INFO, blockSize);
    this.#reply(option, NBD_REP_ACK);
    if (option === NBD_OPT_INFO) return CONTINUE;
    return { kind: 'transmission', negotiated };
  }

  #replyInfoString(option: number, infoType: number, text: string): void {
    const bytes = truncateUtf8(text, 4096);
    const body = Buffer.allocUnsafe(2 + bytes.length);
    body.writeUInt16BE(infoType, 0);
    body.set(bytes, 2);
    this.#reply(option, NBD_REP_INFO, body);
  }

  #metaContext(option: number, data: Buffer): OptionOutcome {
    const set = option === NBD_OPT_SET_META_CONTEXT;
    const optionName = set ? 'NBD_OPT_SET_META_CONTEXT' : 'NBD_OPT_LIST_META_CONTEXT';
    // A SET replaces the selection even when it fails (spec), so forget it first.
    if (set) this.#metaContextExportName = undefined;
    if (!this.#structuredReplies) {
      return this.#error(option, NBD_REP_ERR_INVALID, `${optionName} needs NBD_OPT_STRUCTURED_REPLY first.`);
    }
    if (data.length < 8) return this.#error(option, NBD_REP_ERR_INVALID, `${optionName} data is too short.`);
    const nameBytes = data.readUInt32BE(0);
    if (nameBytes > data.length - 8) return this.#error(option, NBD_REP_ERR_INVALID, `${optionName} export name overruns the option.`);
    const name = data.toString('utf8', 4, 4 + nameBytes);
    const queryCount = data.readUInt32BE(4 + nameBytes);
    const queries: string[] = [];
    let position = 8 + nameBytes;
    for (let i = 0; i < queryCount; i++) {
      if (data.length - position < 4) return this.#error(option, NBD_REP_ERR_INVALID, `${optionName} query ${i} overruns the option.`);
      const queryBytes = data.readUInt32BE(position);
      position += 4;
      if (queryBytes > data.length - position) return this.#error(option, NBD_REP_ERR_INVALID, `${optionName} query ${i} overruns the option.`);
      queries.push(data.toString('utf8', position, position + queryBytes));
      position += queryBytes;
    }
    if (position !== data.length) return this.#error(option, NBD_REP_ERR_INVALID, `${optionName} has bytes after its queries.`);
    if (this.#registry.get(name) === undefined) {
      return this.#error(option, NBD_REP_ERR_UNKNOWN, `No export named ${JSON.stringify(name)}.`);
    }
    // LIST: no query lists all, and "base:" is a wildcard for the namespace. SET: only the full
    // name selects; "base:" and unknown leaves and namespaces are ignored, never errors.
    const matches = set
      ? queries.includes(BASE_ALLOCATION)
      : queries.length === 0 || queries.includes(BASE_ALLOCATION) || queries.includes('base:');
    if (matches) {
      const contextName = Buffer.from(BASE_ALLOCATION, 'utf8');
      const body = Buffer.allocUnsafe(4 + contextName.length);
      body.writeUInt32BE(set ? BASE_ALLOCATION_CONTEXT_ID : 0, 0);
      body.set(contextName, 4);
      this.#reply(option, NBD_REP_META_CONTEXT, body);
      if (set) this.#metaContextExportName = name;
    }
    this.#reply(option, NBD_REP_ACK);
    return CONTINUE;
  }

  #negotiate(name: string, exp: NbdExport): Negotiated {
    const sizes = blockSizes(exp);
    const sizeBytes = Math.max(0, Math.floor(exp.sizeBytes()));
    return {
      export: exp,
      sizeBytes,
      transmissionFlags: transmissionFlags(exp, this.#structuredReplies),
      structuredReplies: this.#structuredReplies,
      // The selection counts only for the export it was made for (spec NBD_OPT_SET_META_CONTEXT).
      baseAllocation: this.#structuredReplies && this.#metaContextExportName === name,
      blockSizeMinBytes: sizes.minBytes,
      payloadBytesMax: sizes.maxBytes,
    };
  }

  #reply(option: number, replyType: number, data?: Uint8Array): void {
    this.#send(encodeOptionReply(option, replyType, data));
  }

  #error(option: number, replyType: number, message: string): OptionOutcome {
    this.#reply(option, replyType, truncateUtf8(message, NBD_ERROR_MESSAGE_BYTES_MAX));
    return CONTINUE;
  }
}
